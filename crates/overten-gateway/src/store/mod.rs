//! The store room: where the gateway counts requests and holds run permits ([`Store`]),
//! where the idempotency layer keeps its records ([`IdempotencyStore`]), on this process's
//! memory ([`MemoryStore`], [`MemoryIdempotencyStore`]) or on Redis (`RedisStore`, feature
//! `redis`, one connection for all three), where async tasks are kept ([`TaskStore`],
//! [`MemoryTaskStore`]); what they share ([`BoxFuture`], [`StoreError`],
//! [`StoreFailure`], [`PermitId`], [`Renewal`]).

mod failure;
mod idempotency;
#[cfg(feature = "redis")]
mod idempotency_redis;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_link;
mod tasks;
#[cfg(feature = "redis")]
mod tasks_redis;

pub use failure::StoreFailure;
pub use idempotency::{
    Claim, ClaimToken, Fingerprint, IdempotencyStore, MemoryIdempotencyStore, RecordKey,
    StoredResponse,
};
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::{RedisStore, RedisStoreBuilder};
#[cfg(feature = "redis")]
pub use redis_link::UrlError;
pub use tasks::{MemoryTaskStore, TaskKey, TaskRecord, TaskStore};

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use overten_errors::{RandomSource, SplitMix64};

use overten_errors_http::process_seed;

use crate::key::KeyHash;

/// A boxed, sendable future: what the async store and resolver traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a store (or an account lookup) could not answer. The text is for logs: the gateway
/// never sends it to a client.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No answer within the store's timeout.
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    /// The store is full (the memory store's key bound).
    #[error("the store is full")]
    Full,
    /// The store failed (connection refused or reset, an error reply).
    #[error("the store failed: {0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One run permit's id: 128 random bits, unique across a fleet.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PermitId(u128);

static PERMIT_SEQ: AtomicU64 = AtomicU64::new(0);

impl PermitId {
    /// A new id (a per-process seed and a counter through SplitMix64).
    pub fn new() -> PermitId {
        let n = PERMIT_SEQ.fetch_add(1, Ordering::Relaxed);
        let mut rng = SplitMix64::new(process_seed() ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        PermitId(u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()))
    }

    /// The id as 32 hex digits.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

impl Default for PermitId {
    fn default() -> Self {
        PermitId::new()
    }
}

impl fmt::Debug for PermitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PermitId({:032x})", self.0)
    }
}

/// What one request asks of the store: count it, and take a run permit when it is a run.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Admit<'a> {
    /// The key's hash.
    pub key: &'a KeyHash,
    /// The window: Unix seconds / `window_seconds`.
    pub window: u64,
    /// The window's length (the page: a minute).
    pub window_seconds: u64,
    /// Requests the key's tier may make in a window.
    pub limit: u32,
    /// For a run: the permit to take and the tier's concurrent-runs limit.
    pub run: Option<RunAsk>,
}

impl<'a> Admit<'a> {
    /// Counts one request of `key` in `window` against `limit`, asking no permit.
    pub fn new(key: &'a KeyHash, window: u64, window_seconds: u64, limit: u32) -> Admit<'a> {
        Admit {
            key,
            window,
            window_seconds,
            limit,
            run: None,
        }
    }

    /// Asks a run permit too.
    #[must_use]
    pub fn with_run(mut self, run: RunAsk) -> Admit<'a> {
        self.run = Some(run);
        self
    }
}

/// A run permit asked for.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RunAsk {
    /// The permit's id.
    pub permit: PermitId,
    /// Runs the key's tier may have in progress.
    pub limit: u32,
    /// How long the permit lives unless released or renewed (a store shared by a fleet
    /// lets permits of a replica that died expire after this).
    pub lease: Duration,
}

impl RunAsk {
    /// Asks `permit` under `limit` runs, leased for `lease`.
    pub fn new(permit: PermitId, limit: u32, lease: Duration) -> RunAsk {
        RunAsk {
            permit,
            limit,
            lease,
        }
    }
}

/// The store's answer to [`Admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Admission {
    /// This request's number in its key's window, counting itself: 1 for the first. Every
    /// request is counted, whether admitted or not; over the limit, no permit is taken.
    pub count: u64,
    /// What became of the run permit.
    pub run: RunAdmission,
}

/// What became of a run permit asked for.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAdmission {
    /// None was asked, or the request was over its rate limit (then none is taken).
    NotAsked,
    /// Taken: it must be released (or it expires after its lease).
    Granted,
    /// The key already has `in_progress` runs, its tier's limit.
    Full {
        /// Runs in progress.
        in_progress: u32,
    },
}

impl Admission {
    /// An admission: the request is number `count` in its window, and the permit `run`.
    pub fn new(count: u64, run: RunAdmission) -> Admission {
        Admission { count, run }
    }
}

/// A permit's lease kept renewed in the background while the permit is held; dropping it
/// stops the renewals (see [`Store::keep_renewed`]).
pub struct Renewal {
    stop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Renewal {
    /// A renewal that runs `stop` when dropped (a store aborts its renewing task there).
    pub fn new(stop: impl FnOnce() + Send + Sync + 'static) -> Renewal {
        Renewal {
            stop: Some(Box::new(stop)),
        }
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

impl fmt::Debug for Renewal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renewal").finish_non_exhaustive()
    }
}

/// Where the gateway counts requests and holds run permits: one call a request.
///
/// [`MemoryStore`] counts in this process (every replica alone); `RedisStore` (feature
/// `redis`) shares counts and permits across a fleet. A store bounds the time of its own
/// calls (the gateway waits for `admit`), and is atomic per call: concurrent `admit`s of
/// one key never give two requests the same count, nor more permits than the limit.
pub trait Store: Send + Sync + 'static {
    /// Counts one request and, when asked, takes a run permit, atomically.
    fn admit<'a>(&'a self, admit: Admit<'a>) -> BoxFuture<'a, Result<Admission, StoreError>>;

    /// [`admit`](Store::admit) without a future, for a store that never waits
    /// ([`MemoryStore`]): the gateway then serves the request with no boxed future. `None`
    /// (the default) means "ask `admit`", and must leave the store untouched; `Some` must be
    /// exactly what `admit` would have answered, and counted.
    fn admit_now(&self, admit: &Admit<'_>) -> Option<Result<Admission, StoreError>> {
        let _ = admit;
        None
    }

    /// Gives back a permit. Never blocks: a store that must do IO does it in the background,
    /// and a permit whose release fails expires with its lease.
    fn release(&self, key: &KeyHash, permit: PermitId);

    /// Extends a permit's lease to `lease` from now (a task that outlives the lease renews
    /// it). `Ok(false)`: the permit is gone (released, or expired).
    fn renew<'a>(
        &'a self,
        key: &'a KeyHash,
        permit: PermitId,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Starts renewing a granted permit's lease (`lease` from each renewal) until the
    /// returned [`Renewal`] is dropped; [`RunPermit`](super::RunPermit) holds it for as long
    /// as the run holds the permit, so leases can be short and a replica that dies frees
    /// its runs within about one lease. `None` (the default): this store's permits do not
    /// expire, or it cannot renew in the background.
    fn keep_renewed(&self, key: &KeyHash, permit: PermitId, lease: Duration) -> Option<Renewal> {
        let _ = (key, permit, lease);
        None
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn admit<'a>(&'a self, admit: Admit<'a>) -> BoxFuture<'a, Result<Admission, StoreError>> {
        (**self).admit(admit)
    }
    fn admit_now(&self, admit: &Admit<'_>) -> Option<Result<Admission, StoreError>> {
        (**self).admit_now(admit)
    }
    fn release(&self, key: &KeyHash, permit: PermitId) {
        (**self).release(key, permit);
    }
    fn renew<'a>(
        &'a self,
        key: &'a KeyHash,
        permit: PermitId,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        (**self).renew(key, permit, lease)
    }
    fn keep_renewed(&self, key: &KeyHash, permit: PermitId, lease: Duration) -> Option<Renewal> {
        (**self).keep_renewed(key, permit, lease)
    }
}
