//! Where the gateway counts requests and holds run permits: the [`Store`] trait and the
//! per-process [`MemoryStore`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use overten_errors::{RandomSource, SplitMix64};

use super::accounts::KeyHash;
use crate::client::process_seed;

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

#[derive(Debug, Default)]
struct Entry {
    window: u64,
    count: u64,
    /// At most the tier's concurrent runs (50 for enterprise).
    runs: Vec<PermitId>,
}

/// Counts and permits in this process's memory: exact for one process, never shared (N
/// replicas each admit the whole limit). At most [`MemoryStore::MAX_KEYS`] keys: past it,
/// keys whose window has ended and that hold no permit are dropped, and if none can be,
/// `admit` fails with [`StoreError::Full`]. Permits live until released (a process that
/// dies takes them with it), so they have no lease here.
#[derive(Debug, Default)]
pub struct MemoryStore {
    keys: Mutex<HashMap<KeyHash, Entry>>,
}

impl MemoryStore {
    /// The most keys held at once.
    pub const MAX_KEYS: usize = 100_000;

    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Runs in progress for `key`.
    pub fn runs(&self, key: &KeyHash) -> usize {
        self.lock().get(key).map_or(0, |e| e.runs.len())
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No keys held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyHash, Entry>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn admit_now(&self, admit: &Admit<'_>) -> Result<Admission, StoreError> {
        let mut keys = self.lock();
        if !keys.contains_key(admit.key) && keys.len() >= Self::MAX_KEYS {
            keys.retain(|_, e| e.window >= admit.window || !e.runs.is_empty());
            if keys.len() >= Self::MAX_KEYS {
                return Err(StoreError::Full);
            }
        }
        let entry = keys.entry(*admit.key).or_default();
        if entry.window != admit.window {
            entry.window = admit.window;
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        let count = entry.count;
        let run = match admit.run {
            Some(_) if count > u64::from(admit.limit) => RunAdmission::NotAsked,
            None => RunAdmission::NotAsked,
            Some(ask) => {
                let held = u32::try_from(entry.runs.len()).unwrap_or(u32::MAX);
                if held >= ask.limit {
                    RunAdmission::Full { in_progress: held }
                } else {
                    entry.runs.push(ask.permit);
                    RunAdmission::Granted
                }
            }
        };
        Ok(Admission { count, run })
    }
}

impl Store for MemoryStore {
    fn admit<'a>(&'a self, admit: Admit<'a>) -> BoxFuture<'a, Result<Admission, StoreError>> {
        Box::pin(std::future::ready(self.admit_now(&admit)))
    }

    fn release(&self, key: &KeyHash, permit: PermitId) {
        if let Some(entry) = self.lock().get_mut(key) {
            entry.runs.retain(|p| *p != permit);
        }
    }

    fn renew<'a>(
        &'a self,
        key: &'a KeyHash,
        permit: PermitId,
        _lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let held = self
            .lock()
            .get(key)
            .is_some_and(|e| e.runs.contains(&permit));
        Box::pin(std::future::ready(Ok(held)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(store: &MemoryStore, key: &KeyHash, window: u64, run: Option<PermitId>) -> Admission {
        let mut ask = Admit::new(key, window, 60, 3);
        if let Some(p) = run {
            ask = ask.with_run(RunAsk::new(p, 2, Duration::from_secs(1)));
        }
        crate::block_on(store.admit(ask)).unwrap()
    }

    #[test]
    fn counts_per_key_and_window_and_permits_up_to_the_limit() {
        let store = MemoryStore::new();
        let (a, b) = (KeyHash::of("a"), KeyHash::of("b"));
        assert_eq!(admit(&store, &a, 1, None).count, 1);
        assert_eq!(admit(&store, &a, 1, None).count, 2);
        assert_eq!(admit(&store, &b, 1, None).count, 1);
        assert_eq!(
            admit(&store, &a, 2, None).count,
            1,
            "a new window starts afresh"
        );
        let (p1, p2, p3) = (PermitId::new(), PermitId::new(), PermitId::new());
        assert_eq!(admit(&store, &a, 2, Some(p1)).run, RunAdmission::Granted);
        assert_eq!(admit(&store, &a, 2, Some(p2)).run, RunAdmission::Granted);
        // Count 4 > limit 3: counted, no permit asked.
        assert_eq!(
            admit(&store, &a, 2, Some(p3)),
            Admission::new(4, RunAdmission::NotAsked)
        );
        assert_eq!(
            admit(&store, &a, 3, Some(p3)).run,
            RunAdmission::Full { in_progress: 2 }
        );
        assert!(crate::block_on(store.renew(&a, p1, Duration::from_secs(1))).unwrap());
        store.release(&a, p1);
        assert!(!crate::block_on(store.renew(&a, p1, Duration::from_secs(1))).unwrap());
        assert_eq!(store.runs(&a), 1);
        assert_eq!(admit(&store, &a, 3, Some(p3)).run, RunAdmission::Granted);
    }

    #[test]
    fn a_renewal_stops_when_dropped_and_says_what_it_is() {
        let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stopped);
        let renewal = Renewal::new(move || flag.store(true, Ordering::SeqCst));
        assert!(format!("{renewal:?}").starts_with("Renewal"));
        assert!(!stopped.load(Ordering::SeqCst));
        drop(renewal);
        assert!(
            stopped.load(Ordering::SeqCst),
            "dropping it stops the renewals"
        );
        // The memory store's permits do not expire: nothing to renew.
        let store = MemoryStore::new();
        let none = store.keep_renewed(&KeyHash::of("k"), PermitId::new(), Duration::from_secs(1));
        assert!(none.is_none());
    }

    #[test]
    fn permit_ids_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| PermitId::new()).collect();
        assert_eq!(ids.len(), 1000);
        assert_eq!(PermitId::new().hex().len(), 32);
    }

    #[test]
    fn the_key_bound_holds_and_frees_ended_windows() {
        let store = MemoryStore::new();
        for i in 0..MemoryStore::MAX_KEYS {
            admit(&store, &KeyHash::of(&i.to_string()), 1, None);
        }
        let new = KeyHash::of("new");
        let full = crate::block_on(store.admit(Admit::new(&new, 1, 60, 3)));
        assert!(matches!(full, Err(StoreError::Full)));
        assert_eq!(store.len(), MemoryStore::MAX_KEYS);
        // A key already held is still counted when the store is full.
        assert_eq!(admit(&store, &KeyHash::of("7"), 1, None).count, 2);
        // In the next window the ended ones make room.
        assert_eq!(admit(&store, &new, 2, None).count, 1);
        assert_eq!(store.len(), 1);
    }
}
