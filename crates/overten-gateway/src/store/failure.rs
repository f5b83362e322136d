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
    /// Degraded mode: while the store fails, each replica counts on its own, each key's
    /// requests per minute and concurrent runs divided by `replicas` (the fleet's size;
    /// at least 1 of each), and marks its responses `X-RateLimit-Scope: replica`. The store
    /// is tried again at most once a second (one request probes; the others are counted
    /// locally without waiting for it), and counting is shared again from the first call
    /// that succeeds. `docs/gateway.md` states what this guarantees. The idempotency layer
    /// reads it as [`StoreFailure::Reject`]: a keyed request is never run twice because its
    /// record could not be read.
    Local {
        /// Replicas in the fleet: each enforces `limit / replicas` of every key's limits.
        replicas: u32,
    },
}

impl StoreFailure {
    /// The default `Retry-After` of a 503 for a store that failed: 30 s.
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

    /// [`StoreFailure::Local`] for a fleet of `replicas` (0 is read as 1).
    pub fn local(replicas: u32) -> StoreFailure {
        StoreFailure::Local {
            replicas: replicas.max(1),
        }
    }

    /// The `Retry-After` of a 503 under this policy (the default for those that pass or
    /// count locally, when they must refuse).
    pub fn retry_after(&self) -> Duration {
        match self {
            StoreFailure::Reject { retry_after } => *retry_after,
            _ => Self::DEFAULT_RETRY_AFTER,
        }
    }
}

impl Default for StoreFailure {
    fn default() -> Self {
        StoreFailure::Reject {
            retry_after: Self::DEFAULT_RETRY_AFTER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_reads_zero_as_one_and_retry_after_is_the_policys_or_the_default() {
        assert_eq!(StoreFailure::local(0), StoreFailure::Local { replicas: 1 });
        assert_eq!(StoreFailure::local(3), StoreFailure::Local { replicas: 3 });
        let five = Duration::from_secs(5);
        assert_eq!(
            StoreFailure::Reject { retry_after: five }.retry_after(),
            five
        );
        assert_eq!(
            StoreFailure::local(3).retry_after(),
            StoreFailure::DEFAULT_RETRY_AFTER
        );
        assert_eq!(StoreFailure::Allow.retry_after(), Duration::from_secs(30));
    }
}
