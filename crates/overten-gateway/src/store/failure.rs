//! [`StoreFailure`]: what the gateway and the idempotency layer do when their store fails.

use std::time::Duration;

/// What the gateway does when its store cannot count (down, slow past its timeout, full).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailure {
    /// Answer 503 `service_unavailable` with this `Retry-After` (the default: 30 s, the
    /// page's "Retry after 30–60 seconds"). Nothing passes uncounted.
    Reject {
        /// The `Retry-After` sent.
        retry_after: Duration,
    },
    /// Let the request through uncounted and without a permit, logging a warning: the API
    /// stays up while limits are off.
    Allow,
}

impl StoreFailure {
    /// The default `Retry-After` of a 503 for a store that failed: 30 s.
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);
}

impl Default for StoreFailure {
    fn default() -> Self {
        StoreFailure::Reject {
            retry_after: Self::DEFAULT_RETRY_AFTER,
        }
    }
}
