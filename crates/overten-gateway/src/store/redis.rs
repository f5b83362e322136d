//! The gateway's store on Redis (feature `redis`): counts and run permits shared by every
//! replica of a fleet.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::redis_link::{Conn, Link, Target};
use super::{Admission, Admit, BoxFuture, PermitId, Renewal, RunAdmission, Store, StoreError};
use crate::key::KeyHash;

/// One round trip a request: count in the window, and (for a run that is within its rate
/// limit) drop expired leases and take a permit if fewer than the limit are held. Leases
/// are timed by Redis's own clock (`TIME`), so replicas whose clocks differ agree on them.
///
/// KEYS: the window's counter, the key's permit set. ARGV: limit, window seconds, 1 if a
/// run, run limit, permit id, lease in ms. Returns `{count, state}`: state -1 no permit
/// asked, -2 granted, n >= 0 full with n held.
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) * 2) end
if ARGV[3] ~= '1' or n > tonumber(ARGV[1]) then return {n, -1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local held = redis.call('ZCARD', KEYS[2])
if held >= tonumber(ARGV[4]) then return {n, held} end
local lease = tonumber(ARGV[6])
redis.call('ZADD', KEYS[2], now + lease, ARGV[5])
if redis.call('PTTL', KEYS[2]) < lease then redis.call('PEXPIRE', KEYS[2], lease) end
return {n, -2}
",
    )
});

/// KEYS: the permit set. ARGV: permit id, lease in ms. Returns 1 renewed, 0 gone.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s then return 0 end
if tonumber(s) <= now then redis.call('ZREM', KEYS[1], ARGV[1]) return 0 end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return 1
",
    )
});

/// The gateway's [`Store`] on Redis, for a fleet of replicas: every replica connected to
/// one Redis admits exactly the tier's limit per key per window between them, and holds
/// at most the tier's concurrent runs.
///
/// - **Atomic.** One Lua script a request (`INCR` the window's counter; for a run, drop
///   expired leases, count, `ZADD` the permit), so concurrent requests from any replica
///   never share a count or overrun the permits.
/// - **Everything expires.** A window's counter lives two windows; a permit is a lease in
///   a sorted set scored by its expiry on Redis's clock, renewed by its holder while the
///   run is alive ([`Store::keep_renewed`]), so a replica that dies without releasing loses
///   its permits within one lease ([`GatewayLayer::lease`](crate::GatewayLayer::lease),
///   default 30 s).
/// - **Bounded time.** Every call is cut off after [`RedisStoreBuilder::timeout`] (default
///   250 ms) and reported as [`StoreError::Timeout`]; the gateway's [`StoreFailure`](super::StoreFailure)
///   policy then answers. The connection is a `redis::aio::ConnectionManager`, which
///   reconnects by itself: counting resumes when Redis is back (a restarted Redis without
///   persistence starts every window afresh).
/// - **Keys.** `{prefix}{{key hash}}:rl:{window}` and `{prefix}{{key hash}}:runs` (the key
///   hash in braces is a hash tag: one API key's keys share one cluster slot, so each script
///   touches one slot); idempotency records `{prefix}idem:{record hash}` (one key a
///   script). The bearer key itself never reaches Redis. The prefix defaults to `overten:`;
///   keep braces out of it, or every key lands in one slot.
/// - **Deployments.** [`RedisStore::builder`] takes one node (`redis://HOST:PORT/DB`), a
///   Redis Cluster (`redis+cluster://HOST:PORT[,HOST:PORT…]`, any reachable seeds) or the
///   primary Sentinels name (`redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE`);
///   `docs/gateway.md` says how each behaves through a failover, with the windows measured.
///
/// Needs a tokio runtime (timers, and releases run as spawned tasks).
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) link: Link,
    kind: &'static str,
    pub(crate) prefix: Arc<str>,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("deployment", &self.kind)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Settings for [`RedisStore`], then [`RedisStoreBuilder::connect`].
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    pub(crate) timeout: Duration,
    connect_timeout: Duration,
}

impl RedisStoreBuilder {
    /// The prefix of every key (default `overten:`), to share one Redis between deployments.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest any call may take (default 250 ms).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest the first connection may take (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects. Fails when the URL is malformed ([`UrlError`](super::UrlError) inside
    /// [`StoreError::Failed`]) or Redis cannot be reached in time.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let target = Target::parse(&self.url).map_err(|e| StoreError::Failed(Box::new(e)))?;
        let link = tokio::time::timeout(self.connect_timeout, target.connect(self.timeout))
            .await
            .map_err(|_| StoreError::Timeout(self.connect_timeout))?
            .map_err(failed)?;
        Ok(RedisStore {
            link,
            kind: target.kind(),
            prefix: self.prefix.into(),
            timeout: self.timeout,
        })
    }
}

fn failed(e: redis::RedisError) -> StoreError {
    StoreError::Failed(Box::new(e))
}

/// Calls `renew` every third of `lease` (at least every 50 ms) on the current tokio runtime
/// until the returned [`Renewal`] is dropped or `renew` answers `Ok(false)` (the lease is
/// gone: no longer renewed); an error is tried again at the next tick (two more chances
/// within the lease). Outside a runtime, `None`: the lease runs out by itself.
pub(crate) fn renew_every<F, Fut>(lease: Duration, mut renew: F) -> Option<Renewal>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<bool, StoreError>> + Send,
{
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let every = (lease / 3).max(Duration::from_millis(50));
    let task = handle.spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match renew().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => tracing::debug!(%error, "lease not renewed: trying again"),
            }
        }
    });
    Some(Renewal::new(move || task.abort()))
}

/// Whole milliseconds for Redis (`PX`, `PEXPIRE`), at least 1 (0 would mean "no expiry"
/// or an error), at most `u64::MAX`.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStore {
    /// Settings for a store on `url`: one node (`redis://127.0.0.1:6379/0`), a cluster
    /// (`redis+cluster://10.0.0.1:7000,10.0.0.2:7000`) or a Sentinel-managed primary
    /// (`redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: "overten:".to_owned(),
            timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Connects to `url` with the default settings.
    pub async fn connect(url: impl Into<String>) -> Result<RedisStore, StoreError> {
        RedisStore::builder(url).connect().await
    }

    /// Which deployment: `"node"`, `"cluster"` or `"sentinel"`.
    pub fn deployment(&self) -> &'static str {
        self.kind
    }

    fn runs_key(&self, key: &KeyHash) -> String {
        format!("{}{{{key}}}:runs", self.prefix)
    }

    fn counter_key(&self, key: &KeyHash, window: u64) -> String {
        format!("{}{{{key}}}:rl:{window}", self.prefix)
    }

    /// Runs `call` on a connection, the whole of it (a Sentinel asked for the primary
    /// included) bounded by the store's timeout.
    pub(crate) async fn bounded<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let mut generation = 0;
        let work = async {
            let (conn, g) = self.link.conn().await?;
            generation = g;
            call(conn).await
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                self.link.failed(generation, Some(&e));
                Err(failed(e))
            }
            Err(_) => {
                self.link.failed(generation, None);
                Err(StoreError::Timeout(self.timeout))
            }
        }
    }
}

impl Store for RedisStore {
    fn admit<'a>(&'a self, admit: Admit<'a>) -> BoxFuture<'a, Result<Admission, StoreError>> {
        Box::pin(async move {
            let counter = self.counter_key(admit.key, admit.window);
            let runs = self.runs_key(admit.key);
            let mut invocation = ADMIT.prepare_invoke();
            invocation
                .key(counter)
                .key(runs)
                .arg(admit.limit)
                .arg(admit.window_seconds.max(1));
            match admit.run {
                Some(run) => invocation
                    .arg(1)
                    .arg(run.limit)
                    .arg(run.permit.hex())
                    .arg(millis(run.lease)),
                None => invocation.arg(0).arg(0).arg("").arg(1),
            };
            let (count, state): (i64, i64) = self
                .bounded(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                .await?;
            let run = match state {
                -2 => RunAdmission::Granted,
                n if n >= 0 => RunAdmission::Full {
                    in_progress: u32::try_from(n).unwrap_or(u32::MAX),
                },
                _ => RunAdmission::NotAsked,
            };
            Ok(Admission::new(u64::try_from(count).unwrap_or(0), run))
        })
    }

    fn release(&self, key: &KeyHash, permit: PermitId) {
        // Dropped outside a runtime (a test's teardown, say): the lease expires instead.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.clone();
        let runs = self.runs_key(key);
        handle.spawn(async move {
            let removed: Result<i64, _> = store
                .bounded(|mut conn| async move {
                    redis::cmd("ZREM")
                        .arg(&runs)
                        .arg(permit.hex())
                        .query_async(&mut conn)
                        .await
                })
                .await;
            if let Err(error) = removed {
                // At debug: an outage is logged once by the layers that saw it.
                tracing::debug!(%error, "run permit not released: it expires with its lease");
            }
        });
    }

    /// A task on the current tokio runtime renews the lease every third of it (at least
    /// every 50 ms) until the [`Renewal`] is dropped. A renewal that fails is tried again at
    /// the next tick (two more chances within the lease); a permit found gone (it expired:
    /// the store was away longer than the lease, or restarted empty) is logged at warn and
    /// no longer renewed. Outside a runtime, `None`: the lease runs out by itself.
    fn keep_renewed(&self, key: &KeyHash, permit: PermitId, lease: Duration) -> Option<Renewal> {
        let store = self.clone();
        let key = *key;
        renew_every(lease, move || {
            let store = store.clone();
            async move {
                let renewed = store.renew(&key, permit, lease).await;
                if let Ok(false) = renewed {
                    tracing::warn!(
                        key = %key,
                        "run permit expired before it was renewed: the run goes on uncounted"
                    );
                }
                renewed
            }
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a KeyHash,
        permit: PermitId,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut invocation = RENEW.prepare_invoke();
            invocation
                .key(self.runs_key(key))
                .arg(permit.hex())
                .arg(millis(lease));
            let renewed: i64 = self
                .bounded(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                .await?;
            Ok(renewed == 1)
        })
    }
}
