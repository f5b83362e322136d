//! [`MemoryStore`]: counts and permits in this process's memory.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::{Admission, Admit, BoxFuture, PermitId, RunAdmission, Store, StoreError};
use crate::key::KeyHash;

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
    use crate::store::{Renewal, RunAsk};
    use std::sync::atomic::Ordering;

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
