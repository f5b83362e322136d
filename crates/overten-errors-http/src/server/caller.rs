//! The caller as the gateway hands it to handlers: its [`Account`] and its tier's
//! [`TierLimits`], in the request's extensions. Any server that speaks the contract reads
//! them (this crate's `Json` sizes its body limit by them); the `overten-gateway` crate
//! puts them there.

use std::sync::Arc;

use overten_errors::Tier;

/// Whether an org may use the API.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountStatus {
    /// In good standing.
    Active,
    /// Suspended: every request is answered 403 `forbidden` ("suspended org").
    Suspended,
}

/// The account a key belongs to. The gateway puts it in the request's extensions, so a
/// handler reads it with `Extension<Account>` (axum) or `request.extensions().get()`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Account {
    /// The org's id (logged, and the scope of everything the org owns).
    pub org_id: Arc<str>,
    /// The org's tier: its rate limit, concurrent runs and upload limit.
    pub tier: Tier,
    /// Active or suspended.
    pub status: AccountStatus,
}

impl Account {
    /// An active account of `org_id` on `tier`.
    pub fn new(org_id: impl Into<Arc<str>>, tier: Tier) -> Account {
        Account {
            org_id: org_id.into(),
            tier,
            status: AccountStatus::Active,
        }
    }

    /// The same account, suspended.
    #[must_use]
    pub fn suspended(mut self) -> Account {
        self.status = AccountStatus::Suspended;
        self
    }
}

/// One tier's limits.
///
/// Requests per minute and concurrent runs are the page's ([`Tier::requests_per_minute`],
/// [`Tier::concurrent_runs`]). The page names no upload sizes ("exceeds the tier limit"):
/// the defaults of [`TierLimits::of`] are this workspace's choice (free 10 MiB, pro 50 MiB,
/// enterprise 250 MiB), and `overten_gateway::GatewayLayer::with_limits` sets others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierLimits {
    /// Requests per key per minute.
    pub requests_per_minute: u32,
    /// Runs per key in progress at once.
    pub concurrent_runs: u32,
    /// The largest request body, in bytes.
    pub upload_bytes: u64,
}

const MIB: u64 = 1024 * 1024;

impl TierLimits {
    /// The limits of `tier`: the page's rates and runs, and this workspace's upload sizes.
    pub fn of(tier: Tier) -> TierLimits {
        let upload_bytes = match tier {
            Tier::Free => 10 * MIB,
            Tier::Pro => 50 * MIB,
            // Enterprise, and any tier newer than this version.
            _ => 250 * MIB,
        };
        TierLimits {
            requests_per_minute: tier.requests_per_minute(),
            concurrent_runs: tier.concurrent_runs(),
            upload_bytes,
        }
    }

    /// These limits with `requests_per_minute`.
    #[must_use]
    pub fn requests_per_minute(mut self, n: u32) -> TierLimits {
        self.requests_per_minute = n;
        self
    }

    /// These limits with `concurrent_runs`.
    #[must_use]
    pub fn concurrent_runs(mut self, n: u32) -> TierLimits {
        self.concurrent_runs = n;
        self
    }

    /// These limits with `upload_bytes`.
    #[must_use]
    pub fn upload_bytes(mut self, n: u64) -> TierLimits {
        self.upload_bytes = n;
        self
    }
}
