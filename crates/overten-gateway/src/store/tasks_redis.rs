//! Async tasks on Redis (feature `redis`): the gateway's `RedisStore` keeps them too, on
//! the same connection, with the same timeout.
//!
//! A task is one hash, `{prefix}task:<TaskKey hex>` (one key a script: one slot in a
//! Cluster), with fields `s` (the status's wire string), `l` (lease, ms since the Unix
//! epoch), `c` (created, ms) and `v` (the body `GET /tasks/{id}` answers with).

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use overten_errors::TaskStatus;
use redis::Script;

use super::redis::millis;
use super::{BoxFuture, RedisStore, Renewal, StoreError, TaskKey, TaskRecord, TaskStore};

/// KEYS: the task. ARGV: status, lease, created, view, ttl ms. Creates it if absent.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'l', ARGV[2], 'c', ARGV[3], 'v', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
",
    )
});

/// KEYS: the task. ARGV: as [`CREATE`]. Replaces a task that exists and is not final.
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local s = redis.call('HGET', KEYS[1], 's')
if (not s) or s == 'succeeded' or s == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'l', ARGV[2], 'c', ARGV[3], 'v', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
",
    )
});

/// KEYS: the task. ARGV: lease, ttl ms. Moves a task's lease if it exists and is not final.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local s = redis.call('HGET', KEYS[1], 's')
if (not s) or s == 'succeeded' or s == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'l', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
",
    )
});

/// KEYS: the task. ARGV: as [`CREATE`], then now (ms). Replaces an unfinished task whose
/// lease ran out before now.
static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local h = redis.call('HMGET', KEYS[1], 's', 'l')
local s, l = h[1], tonumber(h[2])
if (not s) or s == 'succeeded' or s == 'failed' then return 0 end
if l and l >= tonumber(ARGV[6]) then return 0 end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'l', ARGV[2], 'c', ARGV[3], 'v', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
",
    )
});

impl RedisStore {
    fn task_key(&self, key: &TaskKey) -> String {
        format!("{}task:{}", self.prefix, key.hex())
    }

    fn write_task<'a>(
        &'a self,
        script: &'static Script,
        key: &'a TaskKey,
        record: &'a TaskRecord,
        ttl: Duration,
        now_ms: Option<u64>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'a {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.task_key(key))
            .arg(record.status.as_str())
            .arg(record.lease_until_ms)
            .arg(record.created_ms)
            .arg(record.view.as_ref())
            .arg(millis(ttl));
        if let Some(now) = now_ms {
            invocation.arg(now);
        }
        async move {
            let done: i64 = self
                .bounded(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                .await?;
            Ok(done == 1)
        }
    }
}

/// Reads the four fields back; a record this version cannot read is no record.
fn record_of(fields: Vec<Option<Vec<u8>>>) -> Option<TaskRecord> {
    let number = |f: &Option<Vec<u8>>| -> Option<u64> {
        std::str::from_utf8(f.as_deref()?).ok()?.parse().ok()
    };
    let [status, lease, created, view] = <[Option<Vec<u8>>; 4]>::try_from(fields).ok()?;
    Some(TaskRecord::new(
        TaskStatus::from_wire(std::str::from_utf8(status.as_deref()?).ok()?)?,
        number(&lease)?,
        number(&created)?,
        Bytes::from(view?),
    ))
}

impl TaskStore for RedisStore {
    fn create_task<'a>(
        &'a self,
        key: &'a TaskKey,
        record: &'a TaskRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if self.write_task(&CREATE, key, record, ttl, None).await? {
                Ok(())
            } else {
                Err(StoreError::Failed("a task with this id exists".into()))
            }
        })
    }

    fn update_task<'a>(
        &'a self,
        key: &'a TaskKey,
        record: &'a TaskRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.write_task(&UPDATE, key, record, ttl, None))
    }

    fn reap_task<'a>(
        &'a self,
        key: &'a TaskKey,
        record: &'a TaskRecord,
        now_ms: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.write_task(&REAP, key, record, ttl, Some(now_ms)))
    }

    fn renew_task<'a>(
        &'a self,
        key: &'a TaskKey,
        lease_until_ms: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut invocation = RENEW.prepare_invoke();
            invocation
                .key(self.task_key(key))
                .arg(lease_until_ms)
                .arg(millis(ttl));
            let done: i64 = self
                .bounded(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                .await?;
            Ok(done == 1)
        })
    }

    fn read_task<'a>(
        &'a self,
        key: &'a TaskKey,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>, StoreError>> {
        Box::pin(async move {
            let name = self.task_key(key);
            let fields: Vec<Option<Vec<u8>>> = self
                .bounded(|mut conn| async move {
                    redis::cmd("HMGET")
                        .arg(&name)
                        .arg("s")
                        .arg("l")
                        .arg("c")
                        .arg("v")
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            Ok(record_of(fields))
        })
    }

    fn abandon_task(&self, key: &TaskKey, record: TaskRecord, ttl: Duration) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.clone();
        let key = *key;
        handle.spawn(async move {
            if let Err(error) = store.write_task(&UPDATE, &key, &record, ttl, None).await {
                // At debug: an outage is logged once by the layers that saw it.
                tracing::debug!(%error, "abandoned task not marked failed: a reader reaps it after its lease");
            }
        });
    }

    fn leases(&self) -> bool {
        true
    }

    /// A task on the current tokio runtime moves the lease every third of it (at least
    /// every 50 ms) until the [`Renewal`] is dropped; a renewal that fails is tried at the
    /// next tick; a task found final (reaped by a reader: the store was away longer than
    /// the lease) is no longer renewed. Outside a runtime, `None`.
    fn keep_task_renewed(&self, key: &TaskKey, lease: Duration, ttl: Duration) -> Option<Renewal> {
        let store = self.clone();
        let key = *key;
        super::redis::renew_every(lease, move || {
            let store = store.clone();
            async move {
                let until = crate::tasks::unix_ms(std::time::SystemTime::now())
                    .saturating_add(millis(lease));
                let renewed = store.renew_task(&key, until, ttl).await;
                if let Ok(false) = renewed {
                    tracing::warn!(
                        "task found finished or gone while renewing its lease: no longer renewed"
                    );
                }
                renewed
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_unreadable_ones_are_none() {
        let f = |s: &str| Some(s.as_bytes().to_vec());
        assert_eq!(
            record_of(vec![f("running"), f("5"), f("1"), f("{}")]),
            Some(TaskRecord::new(
                TaskStatus::Running,
                5,
                1,
                Bytes::from_static(b"{}")
            ))
        );
        assert_eq!(record_of(vec![None, None, None, None]), None);
        assert_eq!(record_of(vec![f("done"), f("5"), f("1"), f("")]), None);
        assert_eq!(record_of(vec![f("queued"), None, f("1"), f("")]), None);
        assert_eq!(record_of(vec![f("queued"), f("x"), f("1"), f("")]), None);
        assert_eq!(record_of(vec![f("queued"), f("5"), f("-1"), f("")]), None);
        assert_eq!(record_of(vec![f("queued"), f("5"), f("1")]), None);
        assert_eq!(record_of(vec![f("queued"), f("5"), f("1"), None]), None);
    }
}
