//! The task store: async tasks' records, for `GET /tasks/{task_id}` ([`TaskStore`],
//! [`MemoryTaskStore`]; `RedisStore` keeps them too, feature `redis`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use overten_errors::TaskStatus;
use sha2::{Digest, Sha256};

use super::{BoxFuture, Renewal, StoreError};

/// A task's key in a store: the first 128 bits of SHA-256 over the org id and the task id,
/// so another org's id finds nothing (its `GET /tasks/{id}` is a 404) and ids are not kept
/// in clear as keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TaskKey(pub(crate) [u8; 16]);

impl TaskKey {
    /// The key of task `task_id` of `org`.
    pub fn new(org: &str, task_id: &str) -> TaskKey {
        let mut h = Sha256::new();
        h.update(b"task\0");
        h.update((org.len() as u64).to_be_bytes());
        h.update(org.as_bytes());
        h.update(task_id.as_bytes());
        let mut out = [0; 16];
        out.copy_from_slice(&h.finalize()[..16]);
        TaskKey(out)
    }

    /// 32 hex digits.
    pub fn hex(&self) -> String {
        crate::key::hex(&self.0)
    }
}

/// A task as a store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskRecord {
    /// Its state.
    pub status: TaskStatus,
    /// Until when its owner's lease runs, in ms since the Unix epoch: an unfinished task
    /// whose lease has passed belongs to a replica that stopped, and whoever reads it next
    /// marks it failed. `u64::MAX`: no lease (the memory store: its owner is this process).
    pub lease_until_ms: u64,
    /// When it was created, in ms since the Unix epoch.
    pub created_ms: u64,
    /// The body `GET /tasks/{task_id}` answers with (JSON).
    pub view: Bytes,
}

impl TaskRecord {
    /// A record.
    pub fn new(status: TaskStatus, lease_until_ms: u64, created_ms: u64, view: Bytes) -> Self {
        TaskRecord {
            status,
            lease_until_ms,
            created_ms,
            view,
        }
    }
}

/// Where async tasks are kept: one record a task, scoped by org ([`TaskKey`]), expiring
/// after a time the caller names. Every call is atomic, and no call moves a task out of a
/// final state (`succeeded`, `failed`): a task reaped by one replica cannot be finished by
/// another, nor the other way round.
///
/// [`Tasks`](crate::Tasks) is what handlers use; this trait is for stores.
pub trait TaskStore: Send + Sync + 'static {
    /// Creates a task, kept for `ttl`. A key already there: [`StoreError::Failed`].
    fn create_task<'a>(
        &'a self,
        key: &'a TaskKey,
        record: &'a TaskRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Replaces a task that is not in a final state with `record`, kept `ttl` from now.
    /// `Ok(false)`: the task is gone or already final, and nothing changed.
    fn update_task<'a>(
        &'a self,
        key: &'a TaskKey,
        record: &'a TaskRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Moves an unfinished task's lease to `lease_until_ms`, kept `ttl` from now.
    /// `Ok(false)`: gone or final.
    fn renew_task<'a>(
        &'a self,
        key: &'a TaskKey,
        lease_until_ms: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Replaces an unfinished task whose lease ran out before `now_ms` with `record` (the
    /// reaper's `failed`). `Ok(false)`: gone, final, or its lease was renewed meanwhile.
    fn reap_task<'a>(
        &'a self,
        key: &'a TaskKey,
        record: &'a TaskRecord,
        now_ms: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Reads a task.
    fn read_task<'a>(
        &'a self,
        key: &'a TaskKey,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>, StoreError>>;

    /// [`TaskStore::update_task`] without waiting for the answer (a task's owner dropped
    /// it unfinished: the task is marked failed). Never blocks: a store that must do IO
    /// does it in the background; if that fails, the lease runs out and a reader reaps it.
    fn abandon_task(&self, key: &TaskKey, record: TaskRecord, ttl: Duration);

    /// Whether tasks here have leases that run out (a store shared by a fleet: a replica
    /// may die and leave its tasks). `false` (the default): the store lives and dies with
    /// the tasks' owner, and leases are not kept.
    fn leases(&self) -> bool {
        false
    }

    /// Starts moving a task's lease forward (every third of `lease`) until the returned
    /// [`Renewal`] is dropped. `None` (the default): nothing to renew, or no runtime to
    /// renew on.
    fn keep_task_renewed(&self, key: &TaskKey, lease: Duration, ttl: Duration) -> Option<Renewal> {
        let _ = (key, lease, ttl);
        None
    }
}

impl<S: TaskStore + ?Sized> TaskStore for std::sync::Arc<S> {
    fn create_task<'a>(
        &'a self,
        key: &'a TaskKey,
        record: &'a TaskRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        (**self).create_task(key, record, ttl)
    }
    fn update_task<'a>(
        &'a self,
        key: &'a TaskKey,
        record: &'a TaskRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        (**self).update_task(key, record, ttl)
    }
    fn renew_task<'a>(
        &'a self,
        key: &'a TaskKey,
        lease_until_ms: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        (**self).renew_task(key, lease_until_ms, ttl)
    }
    fn reap_task<'a>(
        &'a self,
        key: &'a TaskKey,
        record: &'a TaskRecord,
        now_ms: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        (**self).reap_task(key, record, now_ms, ttl)
    }
    fn read_task<'a>(
        &'a self,
        key: &'a TaskKey,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>, StoreError>> {
        (**self).read_task(key)
    }
    fn abandon_task(&self, key: &TaskKey, record: TaskRecord, ttl: Duration) {
        (**self).abandon_task(key, record, ttl);
    }
    fn leases(&self) -> bool {
        (**self).leases()
    }
    fn keep_task_renewed(&self, key: &TaskKey, lease: Duration, ttl: Duration) -> Option<Renewal> {
        (**self).keep_task_renewed(key, lease, ttl)
    }
}

#[derive(Debug)]
struct Held {
    record: TaskRecord,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Map {
    tasks: HashMap<TaskKey, Held>,
    /// `(expiry, key)` for every record written; an item whose record has since been
    /// written again (another expiry) is stale and skipped when it comes up.
    expiry: BinaryHeap<Reverse<(Instant, TaskKey)>>,
    /// The same for finished records: the ones a full store may drop before they expire.
    finished: BinaryHeap<Reverse<(Instant, TaskKey)>>,
    bytes: usize,
}

/// The longest a memory record is kept, whatever the ttl asked (an `Instant` far ahead
/// would overflow): 400 days.
const MAX_TTL: Duration = Duration::from_secs(400 * 24 * 60 * 60);

/// Items of the expiry heap a write looks at.
const SWEEP_EACH: usize = 2;
/// Items a write into a full store looks at before it answers [`StoreError::Full`].
const SWEEP_WHEN_FULL: usize = 64;

impl Map {
    fn remove(&mut self, key: &TaskKey) {
        if let Some(held) = self.tasks.remove(key) {
            self.bytes -= held.record.view.len();
        }
    }

    /// Whether a heap item still names its record as it is.
    fn current(&self, at: Instant, key: &TaskKey) -> bool {
        self.tasks.get(key).is_some_and(|h| h.expires == at)
    }

    /// Drops expired records, looking at up to `budget` heap items.
    fn sweep(&mut self, now: Instant, budget: usize) {
        for _ in 0..budget {
            let Some(&Reverse((at, key))) = self.expiry.peek() else {
                break;
            };
            if self.current(at, &key) && at > now {
                break;
            }
            self.expiry.pop();
            if self.current(at, &key) {
                self.remove(&key);
            }
        }
    }

    /// Drops finished records, soonest to expire first, until `adding` bytes fit or
    /// `budget` heap items were looked at (never an unfinished one: its owner is at work).
    fn evict(&mut self, adding: usize, budget: usize) {
        for _ in 0..budget {
            if !self.full(adding) {
                break;
            }
            let Some(Reverse((at, key))) = self.finished.pop() else {
                break;
            };
            if self.current(at, &key) {
                self.remove(&key);
            }
        }
    }

    fn full(&self, adding: usize) -> bool {
        self.tasks.len() >= MemoryTaskStore::MAX_TASKS
            || self.bytes + adding > MemoryTaskStore::MAX_BYTES
    }

    fn put(&mut self, key: TaskKey, record: TaskRecord, ttl: Duration, now: Instant) {
        let expires = now + ttl.min(MAX_TTL);
        self.remove(&key);
        self.bytes += record.view.len();
        if record.status.is_final() {
            self.finished.push(Reverse((expires, key)));
        }
        self.tasks.insert(key, Held { record, expires });
        self.expiry.push(Reverse((expires, key)));
        // Stale items (records written again) are dropped when they come up; should they
        // pile up (renewals of long tasks), the heaps are rebuilt: amortized O(1) a write.
        let bound = 4 * MemoryTaskStore::MAX_TASKS;
        if self.expiry.len() > bound || self.finished.len() > bound {
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        self.expiry = self
            .tasks
            .iter()
            .map(|(k, h)| Reverse((h.expires, *k)))
            .collect();
        self.finished = self
            .tasks
            .iter()
            .filter(|(_, h)| h.record.status.is_final())
            .map(|(k, h)| Reverse((h.expires, *k)))
            .collect();
    }

    fn live(&self, key: &TaskKey, now: Instant) -> Option<&Held> {
        self.tasks.get(key).filter(|h| h.expires > now)
    }
}

/// Tasks in this process's memory, for one replica (or tests). Leases are not kept: a task's
/// owner is this process, and when it stops the store goes with it. (So a `TaskRun` leaked
/// with `mem::forget`, which neither ends nor drops, leaves its task `running` until the
/// retention ends; dropping one marks it failed.) At most
/// [`MemoryTaskStore::MAX_TASKS`] records and [`MemoryTaskStore::MAX_BYTES`] of bodies;
/// when full, finished tasks closest to their expiry make room, a few a call; a store full
/// of unfinished tasks answers [`StoreError::Full`]. Every call does a bounded amount of
/// work under the lock.
#[derive(Debug, Default)]
pub struct MemoryTaskStore {
    map: Mutex<Map>,
}

impl MemoryTaskStore {
    /// The most records held at once.
    pub const MAX_TASKS: usize = 100_000;
    /// The most body bytes held at once: 256 MiB.
    pub const MAX_BYTES: usize = 256 * 1024 * 1024;

    /// An empty store.
    pub fn new() -> MemoryTaskStore {
        MemoryTaskStore::default()
    }

    /// Records held (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.lock().tasks.len()
    }

    /// No records held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update_now(
        &self,
        key: &TaskKey,
        record: &TaskRecord,
        ttl: Duration,
        lease_before: Option<u64>,
    ) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        map.sweep(now, SWEEP_EACH);
        let open = map.live(key, now).is_some_and(|h| {
            !h.record.status.is_final()
                && lease_before.is_none_or(|before| h.record.lease_until_ms < before)
        });
        if open {
            map.put(*key, record.clone(), ttl, now);
        }
        open
    }
}

impl TaskStore for MemoryTaskStore {
    fn create_task<'a>(
        &'a self,
        key: &'a TaskKey,
        record: &'a TaskRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let now = Instant::now();
        let mut map = self.lock();
        map.sweep(now, SWEEP_EACH);
        let answer = if map.live(key, now).is_some() {
            Err(StoreError::Failed("a task with this id exists".into()))
        } else {
            if map.full(record.view.len()) {
                map.sweep(now, SWEEP_WHEN_FULL);
                map.evict(record.view.len(), SWEEP_WHEN_FULL);
            }
            if map.full(record.view.len()) {
                Err(StoreError::Full)
            } else {
                map.put(*key, record.clone(), ttl, now);
                Ok(())
            }
        };
        Box::pin(std::future::ready(answer))
    }

    fn update_task<'a>(
        &'a self,
        key: &'a TaskKey,
        record: &'a TaskRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::ready(Ok(
            self.update_now(key, record, ttl, None)
        )))
    }

    fn reap_task<'a>(
        &'a self,
        key: &'a TaskKey,
        record: &'a TaskRecord,
        now_ms: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let reaped = self.update_now(key, record, ttl, Some(now_ms));
        Box::pin(std::future::ready(Ok(reaped)))
    }

    fn renew_task<'a>(
        &'a self,
        key: &'a TaskKey,
        lease_until_ms: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let now = Instant::now();
        let mut map = self.lock();
        let record = map
            .live(key, now)
            .filter(|h| !h.record.status.is_final())
            .map(|h| TaskRecord {
                lease_until_ms,
                ..h.record.clone()
            });
        let renewed = record.is_some();
        if let Some(record) = record {
            map.put(*key, record, ttl, now);
        }
        Box::pin(std::future::ready(Ok(renewed)))
    }

    fn read_task<'a>(
        &'a self,
        key: &'a TaskKey,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>, StoreError>> {
        let now = Instant::now();
        let record = self.lock().live(key, now).map(|h| h.record.clone());
        Box::pin(std::future::ready(Ok(record)))
    }

    fn abandon_task(&self, key: &TaskKey, record: TaskRecord, ttl: Duration) {
        self.update_now(key, &record, ttl, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_on;

    fn record(status: TaskStatus, view: &'static str) -> TaskRecord {
        TaskRecord::new(status, u64::MAX, 1, Bytes::from_static(view.as_bytes()))
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn keys_are_per_org_and_task() {
        assert_eq!(
            TaskKey::new("org_a", "task_1"),
            TaskKey::new("org_a", "task_1")
        );
        assert_ne!(
            TaskKey::new("org_a", "task_1"),
            TaskKey::new("org_b", "task_1")
        );
        assert_ne!(
            TaskKey::new("org_a", "task_1"),
            TaskKey::new("org_a", "task_2")
        );
        // The org's length is hashed: "ab"+"c" is not "a"+"bc".
        assert_ne!(TaskKey::new("ab", "c"), TaskKey::new("a", "bc"));
        assert_eq!(TaskKey::new("o", "t").hex().len(), 32);
    }

    #[test]
    fn a_task_moves_forward_and_never_out_of_a_final_state() {
        let store = MemoryTaskStore::new();
        let key = TaskKey::new("org", "task_1");
        block_on(store.create_task(&key, &record(TaskStatus::Queued, "q"), HOUR)).unwrap();
        assert!(
            block_on(store.create_task(&key, &record(TaskStatus::Queued, "again"), HOUR)).is_err(),
            "an id is created once"
        );
        assert!(
            block_on(store.update_task(&key, &record(TaskStatus::Running, "r"), HOUR)).unwrap()
        );
        assert!(block_on(store.renew_task(&key, 99, HOUR)).unwrap());
        let read = block_on(store.read_task(&key)).unwrap().unwrap();
        assert_eq!(
            (read.status, read.lease_until_ms, &read.view[..]),
            (TaskStatus::Running, 99, &b"r"[..])
        );
        assert!(block_on(store.update_task(&key, &record(TaskStatus::Failed, "f"), HOUR)).unwrap());
        // Final: nothing moves it, not an update, a renewal nor an abandonment.
        assert!(
            !block_on(store.update_task(&key, &record(TaskStatus::Succeeded, "s"), HOUR)).unwrap()
        );
        assert!(!block_on(store.renew_task(&key, 5, HOUR)).unwrap());
        store.abandon_task(&key, record(TaskStatus::Failed, "abandoned"), HOUR);
        let read = block_on(store.read_task(&key)).unwrap().unwrap();
        assert_eq!(
            (read.status, &read.view[..]),
            (TaskStatus::Failed, &b"f"[..])
        );
        let other = TaskKey::new("org", "task_2");
        assert_eq!(block_on(store.read_task(&other)).unwrap(), None);
        assert!(
            !block_on(store.update_task(&other, &record(TaskStatus::Running, "r"), HOUR)).unwrap()
        );
        assert!(!store.leases());
    }

    #[test]
    fn only_a_lease_that_ran_out_is_reaped() {
        let store = MemoryTaskStore::new();
        let key = TaskKey::new("org", "task_1");
        let leased = TaskRecord::new(TaskStatus::Running, 1_000, 1, Bytes::from_static(b"r"));
        block_on(store.create_task(&key, &leased, HOUR)).unwrap();
        let reaper = record(TaskStatus::Failed, "reaped");
        assert!(
            !block_on(store.reap_task(&key, &reaper, 1_000, HOUR)).unwrap(),
            "not before the lease ends"
        );
        assert!(!block_on(store.reap_task(&key, &reaper, 999, HOUR)).unwrap());
        assert!(block_on(store.reap_task(&key, &reaper, 1_001, HOUR)).unwrap());
        assert_eq!(
            block_on(store.read_task(&key)).unwrap().unwrap().view,
            "reaped"
        );
        assert!(
            !block_on(store.reap_task(&key, &reaper, 5_000, HOUR)).unwrap(),
            "final"
        );
        let gone = TaskKey::new("org", "task_2");
        assert!(!block_on(store.reap_task(&gone, &reaper, 5_000, HOUR)).unwrap());
    }

    #[test]
    fn tasks_expire_after_their_ttl() {
        let store = MemoryTaskStore::new();
        let key = TaskKey::new("org", "task_1");
        block_on(store.create_task(
            &key,
            &record(TaskStatus::Succeeded, "s"),
            Duration::from_millis(20),
        ))
        .unwrap();
        assert!(block_on(store.read_task(&key)).unwrap().is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(block_on(store.read_task(&key)).unwrap(), None);
        // Its id can be used again once it expired (never in practice: ids are random).
        block_on(store.create_task(&key, &record(TaskStatus::Queued, "q"), HOUR)).unwrap();
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn expired_records_are_dropped_by_later_writes_and_rewritten_ones_kept() {
        let store = MemoryTaskStore::new();
        let short = Duration::from_millis(20);
        let (gone, kept) = (TaskKey::new("org", "gone"), TaskKey::new("org", "kept"));
        block_on(store.create_task(&gone, &record(TaskStatus::Succeeded, "s"), short)).unwrap();
        // Written with a short expiry, then again with a long one: the first heap item is
        // stale, and must not take the record with it.
        block_on(store.create_task(&kept, &record(TaskStatus::Queued, "q"), short)).unwrap();
        assert!(
            block_on(store.update_task(&kept, &record(TaskStatus::Running, "r"), HOUR)).unwrap()
        );
        std::thread::sleep(Duration::from_millis(30));
        let other = TaskKey::new("org", "other");
        block_on(store.create_task(&other, &record(TaskStatus::Queued, "o"), HOUR)).unwrap();
        assert_eq!(
            store.len(),
            2,
            "the expired record was dropped, not just hidden"
        );
        assert_eq!(block_on(store.read_task(&kept)).unwrap().unwrap().view, "r");
        assert_eq!(store.lock().bytes, 2);
    }

    #[test]
    fn a_full_store_makes_room_from_finished_tasks_and_refuses_when_none_is() {
        let store = MemoryTaskStore::new();
        {
            let mut map = store.lock();
            let now = Instant::now();
            for i in 0..MemoryTaskStore::MAX_TASKS {
                let key = TaskKey::new("org", &i.to_string());
                let status = if i < 10 {
                    TaskStatus::Succeeded
                } else {
                    TaskStatus::Running
                };
                // The finished ones expire last: eviction, not expiry, must find them.
                let ttl = if i < 10 { HOUR * 2 } else { HOUR };
                map.put(key, record(status, "x"), ttl, now);
            }
        }
        let new = |i: usize| TaskKey::new("org", &format!("new{i}"));
        // Ten finished tasks make room for ten new ones...
        for i in 0..10 {
            block_on(store.create_task(&new(i), &record(TaskStatus::Queued, "q"), HOUR))
                .unwrap_or_else(|e| panic!("{i}: {e}"));
        }
        assert_eq!(store.len(), MemoryTaskStore::MAX_TASKS);
        // ...then only unfinished ones are left: full, and none of them was dropped.
        assert!(matches!(
            block_on(store.create_task(&new(10), &record(TaskStatus::Queued, "q"), HOUR)),
            Err(StoreError::Full)
        ));
        assert!(
            block_on(store.read_task(&TaskKey::new("org", "10")))
                .unwrap()
                .is_some()
        );
        assert_eq!(store.lock().bytes, MemoryTaskStore::MAX_TASKS);
    }

    proptest::proptest! {
        /// Any sequence of writes, in any order, with any statuses: a task that reached a
        /// final state keeps it and its body, whatever comes after (updates, renewals,
        /// abandonments, reaps), and a write answers `true` exactly when the task was open.
        #[test]
        fn no_write_moves_a_task_out_of_a_final_state(
            ops in proptest::collection::vec((0u8..4, 0usize..4, 0u64..4), 1..40)
        ) {
            let store = MemoryTaskStore::new();
            let key = TaskKey::new("org", "task_p");
            let start = TaskRecord::new(TaskStatus::Queued, 2, 1, Bytes::from_static(b"q"));
            block_on(store.create_task(&key, &start, HOUR)).unwrap();
            let mut model = start;
            for (op, status, at) in ops {
                let status = TaskStatus::ALL[status];
                let next = TaskRecord::new(status, at, 1, Bytes::from(format!("{status}{at}")));
                let open = !model.status.is_final();
                let wrote = match op {
                    0 => block_on(store.update_task(&key, &next, HOUR)).unwrap(),
                    1 => {
                        let renewed = block_on(store.renew_task(&key, at, HOUR)).unwrap();
                        if renewed {
                            model.lease_until_ms = at;
                        }
                        proptest::prop_assert_eq!(renewed, open);
                        continue;
                    }
                    2 => {
                        store.abandon_task(&key, next.clone(), HOUR);
                        open
                    }
                    _ => {
                        let reaped = block_on(store.reap_task(&key, &next, at, HOUR)).unwrap();
                        proptest::prop_assert_eq!(reaped, open && model.lease_until_ms < at);
                        reaped
                    }
                };
                proptest::prop_assert!(!wrote || open, "a write after the end");
                if wrote {
                    model = next;
                }
                let read = block_on(store.read_task(&key)).unwrap().unwrap();
                proptest::prop_assert_eq!(&read, &model);
            }
        }
    }

    #[test]
    fn the_byte_bound_is_exact_and_a_ttl_is_capped() {
        let store = MemoryTaskStore::new();
        // One MiB shared by every record (`Bytes` clones share memory): the count is what
        // the records declare.
        let mib = Bytes::from(vec![b'x'; 1024 * 1024]);
        let running = |view: Bytes| TaskRecord::new(TaskStatus::Running, u64::MAX, 1, view);
        for i in 0..255 {
            let key = TaskKey::new("org", &i.to_string());
            block_on(store.create_task(&key, &running(mib.clone()), HOUR)).unwrap();
        }
        // 255 MiB held: one more MiB less a byte fits, then one byte more, and no more.
        let almost = mib.slice(1..);
        block_on(store.create_task(&TaskKey::new("org", "a"), &running(almost), HOUR)).unwrap();
        block_on(store.create_task(&TaskKey::new("org", "b"), &running(mib.slice(..1)), HOUR))
            .unwrap();
        assert_eq!(store.lock().bytes, MemoryTaskStore::MAX_BYTES);
        assert!(matches!(
            block_on(store.create_task(&TaskKey::new("org", "c"), &running(mib.slice(..1)), HOUR)),
            Err(StoreError::Full)
        ));
        // An empty body still fits: the bound is on bytes (and records), not on calls.
        block_on(store.create_task(&TaskKey::new("org", "d"), &running(Bytes::new()), HOUR))
            .unwrap();
        // A ttl past 400 days is kept 400 days, and never overflows.
        let now = Instant::now();
        let key = TaskKey::new("org", "forever");
        store
            .lock()
            .put(key, running(Bytes::new()), Duration::MAX, now);
        assert_eq!(
            store.lock().tasks[&key].expires - now,
            Duration::from_secs(400 * 86_400)
        );
    }

    #[test]
    fn heaps_stay_bounded_however_often_a_task_is_written() {
        let store = MemoryTaskStore::new();
        assert!(store.is_empty());
        let key = TaskKey::new("org", "busy");
        block_on(store.create_task(&key, &record(TaskStatus::Running, "r"), HOUR)).unwrap();
        assert!(!store.is_empty());
        // Each renewal leaves a stale heap item behind; past four per record allowed, the
        // heaps are rebuilt from the records.
        let bound = 4 * MemoryTaskStore::MAX_TASKS;
        for i in 0..=bound as u64 {
            assert!(block_on(store.renew_task(&key, i, HOUR)).unwrap());
        }
        let map = store.lock();
        assert!(map.expiry.len() <= bound, "{}", map.expiry.len());
        assert_eq!(map.tasks.len(), 1);
    }
}
