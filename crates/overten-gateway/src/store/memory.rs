//! [`MemoryStore`]: counts and permits in this process's memory.

use std::collections::{HashMap, VecDeque};
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
    /// An item of the expiry queue names this entry's window.
    queued: bool,
}

/// The keys and their expiry queue: `(window, key)` in the order keys entered a window, so
/// the ended ones are at the front. An item whose key has since moved to another window is
/// stale and skipped when it comes up.
#[derive(Debug, Default)]
struct Keys {
    map: HashMap<KeyHash, Entry>,
    queue: VecDeque<(u64, KeyHash)>,
    /// The most queue items one call has looked at (tests read it).
    #[cfg(test)]
    max_swept: usize,
}

/// Queue items every admission looks at, ended windows or not: the queue drains as fast as
/// it fills (one item a new key or a new window).
const SWEEP_EACH: usize = 2;
/// Queue items an admission of a new key into a full store looks at before it answers
/// [`StoreError::Full`].
const SWEEP_WHEN_FULL: usize = 64;

impl Keys {
    /// Drops up to `budget` entries whose window ended before `window` and that hold no
    /// permit. An entry that still holds permits leaves the queue; it comes back when its
    /// last permit does.
    fn sweep(&mut self, window: u64, budget: usize) {
        let mut looked = 0;
        while looked < budget {
            let Some(&(w, key)) = self.queue.front() else {
                break;
            };
            if w >= window {
                break;
            }
            self.queue.pop_front();
            looked += 1;
            if let Some(entry) = self.map.get_mut(&key).filter(|e| e.window == w) {
                if entry.runs.is_empty() {
                    self.map.remove(&key);
                } else {
                    entry.queued = false;
                }
            }
        }
        #[cfg(test)]
        {
            self.max_swept = self.max_swept.max(looked);
        }
    }
}

/// Counts and permits in this process's memory: exact for one process, never shared (N
/// replicas each admit the whole limit). At most [`MemoryStore::MAX_KEYS`] keys; keys whose
/// window has ended and that hold no permit are dropped as new ones come, a few a call; a
/// new key that finds the store full of keys of the current window gets
/// [`StoreError::Full`]. Every call does a bounded amount of work under the store's lock
/// (a few dozen steps at most, never a scan of the keys), so a flood of new keys cannot
/// slow the keys already held. Permits live until released (a process that dies takes
/// them with it), so they have no lease here.
#[derive(Debug, Default)]
pub struct MemoryStore {
    keys: Mutex<Keys>,
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
        self.lock().map.get(key).map_or(0, |e| e.runs.len())
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// No keys held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn admit_here(&self, admit: &Admit<'_>) -> Result<Admission, StoreError> {
        let mut keys = self.lock();
        keys.sweep(admit.window, SWEEP_EACH);
        if keys.map.len() >= Self::MAX_KEYS && !keys.map.contains_key(admit.key) {
            keys.sweep(admit.window, SWEEP_WHEN_FULL);
            if keys.map.len() >= Self::MAX_KEYS {
                return Err(StoreError::Full);
            }
        }
        let Keys { map, queue, .. } = &mut *keys;
        let entry = map.entry(*admit.key).or_insert_with(|| Entry {
            // Not `admit.window`: the check below starts the window and queues it.
            window: admit.window.wrapping_add(1),
            ..Entry::default()
        });
        if entry.window != admit.window {
            entry.window = admit.window;
            entry.count = 0;
            entry.queued = true;
            queue.push_back((admit.window, *admit.key));
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
        Box::pin(std::future::ready(self.admit_here(&admit)))
    }

    fn admit_now(&self, admit: &Admit<'_>) -> Option<Result<Admission, StoreError>> {
        Some(self.admit_here(admit))
    }

    fn release(&self, key: &KeyHash, permit: PermitId) {
        let mut keys = self.lock();
        let Keys { map, queue, .. } = &mut *keys;
        if let Some(entry) = map.get_mut(key) {
            entry.runs.retain(|p| *p != permit);
            // Its window may have ended while the run went on: queued again, it is dropped
            // when its turn comes.
            if entry.runs.is_empty() && !entry.queued {
                entry.queued = true;
                queue.push_back((entry.window, *key));
            }
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
            .map
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
    fn admit_now_counts_as_admit_does_and_an_arc_forwards_it() {
        let store = std::sync::Arc::new(MemoryStore::new());
        let a = KeyHash::of("a");
        let ask = Admit::new(&a, 1, 60, 3);
        assert_eq!(admit(&store, &a, 1, None).count, 1);
        // Through the `Arc`: the same store, counted once more.
        let now = Store::admit_now(&store, &ask).unwrap().unwrap();
        assert_eq!(now.count, 2);
        assert_eq!(admit(&store, &a, 1, None).count, 3);
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
        // In the next window the ended ones make room, a few a call.
        assert_eq!(admit(&store, &new, 2, None).count, 1);
        assert!(store.len() <= MemoryStore::MAX_KEYS);
        assert_eq!(admit(&store, &KeyHash::of("7"), 2, None).count, 1, "afresh");
        // New keys keep coming: the ended ones drain, two or more a call, none refused.
        for i in 0..MemoryStore::MAX_KEYS / 2 {
            admit(&store, &KeyHash::of(&format!("w2-{i}")), 2, None);
        }
        assert!(
            store.len() <= MemoryStore::MAX_KEYS / 2 + 3,
            "{}",
            store.len()
        );
        assert!(store.lock().max_swept <= SWEEP_EACH + SWEEP_WHEN_FULL);
    }

    /// The flood of the issue: a store full of keys of the current window, then 10,000
    /// admissions of new keys. Each is refused after looking at no more than a fixed number
    /// of queue items (the old store scanned all 100,000 keys, under its one lock, for each),
    /// and a known key is counted between them as before.
    #[test]
    fn a_flood_of_new_keys_into_a_full_store_costs_each_a_bounded_step() {
        let store = MemoryStore::new();
        for i in 0..MemoryStore::MAX_KEYS {
            admit(&store, &KeyHash::of(&i.to_string()), 5, None);
        }
        let known = KeyHash::of("0");
        for i in 0..10_000 {
            let new = KeyHash::of(&format!("flood-{i}"));
            let got = crate::block_on(store.admit(Admit::new(&new, 5, 60, 3)));
            assert!(matches!(got, Err(StoreError::Full)));
            if i % 1000 == 0 {
                assert!(admit(&store, &known, 5, None).count >= 2);
            }
        }
        assert_eq!(store.len(), MemoryStore::MAX_KEYS);
        assert!(
            store.lock().max_swept <= SWEEP_EACH + SWEEP_WHEN_FULL,
            "{}",
            store.lock().max_swept
        );
    }

    /// The full sweep looks at exactly its budget: a store full of keys of an ended window
    /// that all still hold permits can free none, and a new key is refused after 2 + 64
    /// steps.
    #[test]
    fn a_sweep_looks_at_its_budget_exactly() {
        let store = MemoryStore::new();
        for i in 0..MemoryStore::MAX_KEYS {
            let key = KeyHash::of(&i.to_string());
            let ask = Admit::new(&key, 1, 60, 3).with_run(RunAsk::new(
                PermitId::new(),
                2,
                Duration::from_secs(1),
            ));
            crate::block_on(store.admit(ask)).unwrap();
        }
        let new = KeyHash::of("new");
        let full = crate::block_on(store.admit(Admit::new(&new, 2, 60, 3)));
        assert!(matches!(full, Err(StoreError::Full)));
        assert_eq!(store.lock().max_swept, SWEEP_WHEN_FULL);
        assert!(!store.is_empty());
        assert!(MemoryStore::new().is_empty());
    }

    /// A key first seen in window 0 is queued like any other, and dropped when it ends.
    #[test]
    fn a_key_of_window_zero_is_dropped_when_it_ends() {
        let store = MemoryStore::new();
        let zero = KeyHash::of("zero");
        assert_eq!(admit(&store, &zero, 0, None).count, 1);
        for i in 0..4 {
            admit(&store, &KeyHash::of(&format!("n{i}")), 1, None);
        }
        assert!(!store.lock().map.contains_key(&zero));
    }

    /// A permit given back while its key is still queued queues it no second time.
    #[test]
    fn a_release_queues_a_key_only_when_it_left_the_queue() {
        let store = MemoryStore::new();
        let a = KeyHash::of("a");
        let p = PermitId::new();
        assert_eq!(admit(&store, &a, 1, Some(p)).run, RunAdmission::Granted);
        store.release(&a, p);
        assert_eq!(store.lock().queue.len(), 1);
    }

    /// A key whose window ended while it held a permit stays (its run goes on) and is
    /// dropped once the permit comes back and its turn comes.
    #[test]
    fn an_ended_key_with_a_permit_stays_until_the_permit_comes_back() {
        let store = MemoryStore::new();
        let a = KeyHash::of("a");
        let p = PermitId::new();
        assert_eq!(admit(&store, &a, 1, Some(p)).run, RunAdmission::Granted);
        // Window 2: other keys sweep the queue; `a` holds its permit and stays.
        for i in 0..10 {
            admit(&store, &KeyHash::of(&format!("b{i}")), 2, None);
        }
        assert_eq!(store.runs(&a), 1);
        store.release(&a, p);
        assert_eq!(store.len(), 11);
        for i in 0..10 {
            admit(&store, &KeyHash::of(&format!("c{i}")), 3, None);
        }
        assert_eq!(store.runs(&a), 0);
        assert!(
            !store.lock().map.contains_key(&a),
            "dropped after its permit came back"
        );
    }
}
