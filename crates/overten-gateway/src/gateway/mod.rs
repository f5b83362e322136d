//! The API's gateway as one tower layer: see [`GatewayLayer`].

mod body;
mod near;
mod permit;
mod service;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::{Method, Uri};
use overten_errors::Tier;
use overten_errors_http::server::TierLimits;

use crate::accounts::Accounts;
#[cfg(doc)]
use crate::key::KeyHash;
use crate::outage::Outage;
use crate::store::{MemoryStore, Store, StoreFailure};
#[cfg(doc)]
use overten_errors_http::server::Account;

pub use body::GatewayBody;
pub use permit::RunPermit;
pub use service::{Gateway, GatewayFuture};

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;
type IsRun = Arc<dyn Fn(&Method, &Uri) -> bool + Send + Sync>;

/// The API's gateway as one tower layer: accounts and tiers, per-key rate limits,
/// concurrent runs and upload limits, counted in a [`Store`] that a fleet of replicas can
/// share (`RedisStore`, feature `redis`). `docs/gateway.md` has the whole contract.
///
/// For each request, in this order (the page: "at the gateway layer, before any agent or
/// pool work starts"):
///
/// 1. **Key.** `Authorization: Bearer sk_live_…` (one header, one well-formed key: `sk_live_`
///    and 1 to 128 letters, digits or `_`), else 401 `invalid_api_key`. From here on the
///    key is known only by its [`KeyHash`].
/// 2. **Account.** [`Accounts::resolve`]: unknown or revoked, 401 `invalid_api_key`;
///    suspended org, or a route that needs a higher tier ([`GatewayLayer::require_tier`]),
///    403 `forbidden`. The org id goes into the request's span (`org_id`).
/// 3. **Count, and a permit for a run**, in one [`Store::admit`] call. Over the tier's
///    requests per minute: 429 `rate_limit_exceeded` with `Retry-After` to the window's end.
///    A run (by default a `POST` that creates no upload, key, webhook or image:
///    [`is_run_by_default`]; [`GatewayLayer::runs_when`]) over the tier's
///    concurrent runs: 429 `rate_limit_exceeded` whose message names the concurrency limit,
///    with `Retry-After` of [`GatewayLayer::concurrency_retry_after`] (the page names no code
///    for this; this workspace reads it as a rate limit, see `docs/errors.md`). Every request
///    is counted, including those answered 429 or 413, but for a key this replica already
///    saw over its limit in this window: the near-cache answers its 429 without a store
///    call ([`GatewayLayer::near_cache`]).
/// 4. **Upload limit.** A `Content-Length` over the tier's [`TierLimits::upload_bytes`] is
///    answered 413 `payload_too_large` before anything is read; a body without one is
///    passed on wrapped in [`http_body_util::Limited`], so reading past the limit fails
///    (axum answers 413, and this crate's `Json` extractor too) and nothing is buffered past
///    it.
/// 5. **Pass.** The handler finds [`Account`], [`KeyHash`] and (for a run) [`RunPermit`] in
///    the request's extensions; every response carries `X-RateLimit-Limit`, `-Remaining` and
///    `-Reset`.
///
/// When the store fails (Redis down, slow, restarted) the [`StoreFailure`] policy decides:
/// by default 503 `service_unavailable` with `Retry-After`; or the request passes uncounted,
/// with a warning. An account lookup that fails is always a 503: a key that cannot be
/// checked is never let through.
///
/// A panic of the service this layer wraps (in its `call`, or while its future is polled)
/// is answered here: the 500 `internal_error` envelope of
/// [`PanicEnvelope`](overten_errors_http::server::PanicEnvelope) (the panic's text is the
/// error's cause, logged once by the envelope layer, never sent), stamped with
/// `X-RateLimit-*` like every response; the run's permit goes back at once.
///
/// The recommended stack, outermost first, is [`crate::stack`]: request ids, the request
/// span and envelopes in one layer (`ContractLayer`), then this layer.
///
/// ```
/// use std::sync::Arc;
/// use overten_errors::Tier;
/// use overten_gateway::{Account, GatewayLayer, MemoryAccounts, MemoryStore};
///
/// let accounts = MemoryAccounts::new()
///     .with_key("sk_live_free1", Account::new("org_a", Tier::Free))
///     .with_key("sk_live_ent1", Account::new("org_b", Tier::Enterprise));
/// let gateway = GatewayLayer::new(Arc::new(accounts), Arc::new(MemoryStore::new()))
///     .require_tier("/v1/batch", Tier::Pro);
/// # let _ = gateway;
/// ```
#[derive(Clone)]
pub struct GatewayLayer {
    pub(crate) config: Arc<Config>,
}

pub(crate) struct Config {
    pub(crate) accounts: Arc<dyn Accounts>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) limits: Vec<(Tier, TierLimits)>,
    pub(crate) routes: Vec<(String, Tier)>,
    pub(crate) is_run: IsRun,
    pub(crate) on_store_error: StoreFailure,
    pub(crate) clock: Clock,
    pub(crate) concurrency_retry_after: Duration,
    pub(crate) lease: Duration,
    /// The store's outage, as this layer's requests saw it (shared by every clone).
    pub(crate) outage: Arc<Outage>,
    /// Keys over their limit in this window (shared by every clone); `None`: off.
    pub(crate) near: Option<Arc<near::NearCache>>,
    /// Degraded mode's own store (with [`StoreFailure::Local`]).
    pub(crate) local: Option<Arc<MemoryStore>>,
    /// When the shared store was last probed in degraded mode, in ms since `epoch`.
    pub(crate) probed: Arc<AtomicU64>,
    pub(crate) epoch: Instant,
}

impl Config {
    /// Degraded mode: whether this request should probe the store that is down (at most
    /// one a second, on this replica).
    pub(crate) fn probe_due(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.probed.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 1_000
            && self
                .probed
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Clone for Config {
    fn clone(&self) -> Self {
        Config {
            accounts: Arc::clone(&self.accounts),
            store: Arc::clone(&self.store),
            limits: self.limits.clone(),
            routes: self.routes.clone(),
            is_run: Arc::clone(&self.is_run),
            on_store_error: self.on_store_error,
            clock: Arc::clone(&self.clock),
            concurrency_retry_after: self.concurrency_retry_after,
            lease: self.lease,
            outage: Arc::clone(&self.outage),
            near: self.near.clone(),
            local: self.local.clone(),
            probed: Arc::clone(&self.probed),
            epoch: self.epoch,
        }
    }
}

impl std::fmt::Debug for GatewayLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayLayer")
            .field("limits", &self.config.limits)
            .field("routes", &self.config.routes)
            .field("on_store_error", &self.config.on_store_error)
            .field(
                "concurrency_retry_after",
                &self.config.concurrency_retry_after,
            )
            .field("lease", &self.config.lease)
            .field("near_cache", &self.config.near.is_some())
            .finish_non_exhaustive()
    }
}

impl GatewayLayer {
    /// The default `Retry-After` of a 429 for the concurrent-runs limit.
    pub const DEFAULT_CONCURRENCY_RETRY_AFTER: Duration = Duration::from_secs(5);

    /// The default lease of a run permit in a shared store: 30 s. A held permit renews
    /// itself every third of its lease ([`RunPermit`]), so a run may last as long as it
    /// needs, and a replica that dies frees its runs within about 30 s (it was 360 s,
    /// the sync ceiling and a minute, before permits renewed themselves).
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

    /// A gateway resolving keys with `accounts` and counting in `store`, with the page's
    /// limits, runs as [`is_run_by_default`] reads them, and the default [`StoreFailure`].
    pub fn new(accounts: Arc<dyn Accounts>, store: Arc<dyn Store>) -> GatewayLayer {
        GatewayLayer {
            config: Arc::new(Config {
                accounts,
                store,
                limits: Tier::ALL.iter().map(|&t| (t, TierLimits::of(t))).collect(),
                routes: Vec::new(),
                is_run: Arc::new(is_run_by_default),
                on_store_error: StoreFailure::default(),
                clock: Arc::new(SystemTime::now),
                concurrency_retry_after: Self::DEFAULT_CONCURRENCY_RETRY_AFTER,
                lease: Self::DEFAULT_LEASE,
                outage: Arc::new(Outage::new("gateway")),
                near: Some(Arc::new(near::NearCache::default())),
                local: None,
                probed: Arc::new(AtomicU64::new(0)),
                epoch: Instant::now(),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> GatewayLayer {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Uses `limits` for `tier`.
    #[must_use]
    pub fn with_limits(self, tier: Tier, limits: TierLimits) -> GatewayLayer {
        self.edit(|c| {
            c.limits.retain(|(t, _)| *t != tier);
            c.limits.push((tier, limits));
        })
    }

    /// Paths that start with `prefix` need at least `tier`: a lower tier's key is answered
    /// 403 `forbidden` ("wrong tier").
    #[must_use]
    pub fn require_tier(self, prefix: impl Into<String>, tier: Tier) -> GatewayLayer {
        let prefix = prefix.into();
        self.edit(|c| c.routes.push((prefix, tier)))
    }

    /// Which requests are runs (take a concurrent-runs permit). Default:
    /// [`is_run_by_default`]: a `POST`, except to the page's resources that are created,
    /// not run (uploads, keys, webhooks, images) and to tasks.
    #[must_use]
    pub fn runs_when(
        self,
        f: impl Fn(&Method, &Uri) -> bool + Send + Sync + 'static,
    ) -> GatewayLayer {
        self.edit(|c| c.is_run = Arc::new(f))
    }

    /// What to do when the store fails.
    #[must_use]
    pub fn on_store_error(self, policy: StoreFailure) -> GatewayLayer {
        self.edit(|c| {
            c.on_store_error = policy;
            c.local =
                matches!(policy, StoreFailure::Local { .. }).then(|| Arc::new(MemoryStore::new()));
        })
    }

    /// Reads "now" from `clock` (tests pass one they own).
    #[must_use]
    pub fn with_clock(
        self,
        clock: impl Fn() -> SystemTime + Send + Sync + 'static,
    ) -> GatewayLayer {
        self.edit(|c| c.clock = Arc::new(clock))
    }

    /// The `Retry-After` of a 429 for the concurrent-runs limit (default 5 s).
    #[must_use]
    pub fn concurrency_retry_after(self, wait: Duration) -> GatewayLayer {
        self.edit(|c| c.concurrency_retry_after = wait)
    }

    /// A run permit's lease in a shared store (default [`GatewayLayer::DEFAULT_LEASE`]):
    /// how long the permits of a replica that died outlive it. Held permits renew
    /// themselves, so this bounds no run.
    #[must_use]
    pub fn lease(self, lease: Duration) -> GatewayLayer {
        self.edit(|c| c.lease = lease)
    }

    /// Whether this replica answers a key already over its rate limit in the current
    /// window by itself, without a store call, until the window's reset (default: on).
    /// The answer is the same 429, with the same headers; what changes is that those
    /// requests are not counted in the store, so they cost it nothing (an over-limit
    /// client hammering the API costs one store call a window a replica). The cache holds
    /// at most 65,536 keys; past that, keys go to the store as before.
    #[must_use]
    pub fn near_cache(self, on: bool) -> GatewayLayer {
        self.edit(|c| c.near = on.then(|| Arc::new(near::NearCache::default())))
    }

    /// The limits in force for `tier`.
    pub fn limits(&self, tier: Tier) -> TierLimits {
        self.config.limits_of(tier)
    }
}

impl Config {
    pub(crate) fn limits_of(&self, tier: Tier) -> TierLimits {
        self.limits
            .iter()
            .find(|(t, _)| *t == tier)
            .map_or_else(|| TierLimits::of(tier), |(_, l)| *l)
    }
}

impl<S> tower_layer::Layer<S> for GatewayLayer {
    type Service = Gateway<S>;
    fn layer(&self, inner: S) -> Gateway<S> {
        Gateway::new(inner, Arc::clone(&self.config))
    }
}

/// Path segments of resources the page creates rather than runs: its 201 row ("File
/// uploaded, key minted, webhook subscribed") and 204 row ("Image, key, or webhook
/// deleted"), and `tasks` (a task is polled, its run was counted when it was submitted).
pub const NOT_RUN_SEGMENTS: [&str; 8] = [
    "files", "uploads", "keys", "api-keys", "api_keys", "webhooks", "images", "tasks",
];

/// The gateway's default [`GatewayLayer::runs_when`]: a `POST` whose path has none of
/// [`NOT_RUN_SEGMENTS`] as a segment (compared without regard to case). The page names no
/// run endpoint; it says what its `POST`s that are not runs create (uploads, keys,
/// webhooks: 201), and that the rest are run sync (200) or as tasks (202). So
/// `POST /v1/excel/generate` is a run and `POST /v1/files` or `POST /v1/webhooks/{id}/test`
/// is not. An API whose routes differ names its own with `runs_when`.
///
/// ```
/// use http::{Method, Uri};
/// use overten_gateway::is_run_by_default;
/// let run = |m: Method, p: &'static str| is_run_by_default(&m, &Uri::from_static(p));
/// assert!(run(Method::POST, "/v1/excel/generate"));
/// assert!(!run(Method::POST, "/v1/files"));
/// assert!(!run(Method::POST, "/v1/Webhooks/wh_1/test"));
/// assert!(!run(Method::GET, "/v1/excel/generate"));
/// ```
pub fn is_run_by_default(method: &Method, uri: &Uri) -> bool {
    method == Method::POST
        && !uri
            .path()
            .split('/')
            .any(|seg| NOT_RUN_SEGMENTS.iter().any(|n| seg.eq_ignore_ascii_case(n)))
}

/// A tier's place in [`Tier::ALL`] (free < pro < enterprise).
pub(crate) fn rank(tier: Tier) -> usize {
    Tier::ALL
        .iter()
        .position(|t| *t == tier)
        .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::MemoryAccounts;

    fn layer() -> GatewayLayer {
        GatewayLayer::new(
            Arc::new(MemoryAccounts::new()),
            Arc::new(MemoryStore::new()),
        )
    }

    fn earlier(t: Instant, by: Duration) -> Instant {
        t.checked_sub(by).unwrap()
    }

    /// Degraded mode probes the store that is down at most once a second.
    #[test]
    fn the_store_is_probed_at_most_once_a_second() {
        let mut config = (*layer().config).clone();
        config.epoch = earlier(config.epoch, Duration::from_secs(5));
        assert!(config.probe_due(), "the first probe");
        assert!(!config.probe_due(), "not again within the second");
        assert!(!config.probe_due());
        // A second later (as the clock sees it): due again, once.
        config.epoch = earlier(config.epoch, Duration::from_secs(1));
        assert!(config.probe_due());
        assert!(!config.probe_due());
        // Just under a second: not yet.
        config.epoch = earlier(config.epoch, Duration::from_millis(990));
        assert!(!config.probe_due());
    }

    #[test]
    fn the_local_store_exists_with_the_local_policy_only_and_debug_says_what_is_on() {
        let plain = layer();
        assert!(plain.config.local.is_none());
        let local = layer().on_store_error(StoreFailure::local(3));
        assert!(local.config.local.is_some());
        let back = local.on_store_error(StoreFailure::Allow);
        assert!(back.config.local.is_none());
        let shown = format!("{:?}", layer().near_cache(false));
        assert!(
            shown.contains("near_cache: false") && shown.contains("lease: 30s"),
            "{shown}"
        );
        assert!(format!("{:?}", layer()).contains("near_cache: true"));
    }
}

#[cfg(test)]
mod run_tests {
    use super::*;

    #[test]
    fn posts_are_runs_but_for_the_pages_created_resources_and_tasks() {
        let run = |m: &Method, p: &str| is_run_by_default(m, &p.parse::<Uri>().unwrap());
        for path in [
            "/v1/excel/generate",
            "/v1/runs",
            "/generate?async=true",
            "/",
            "/v1/filesystem",
        ] {
            assert!(run(&Method::POST, path), "{path}");
            for other in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
                assert!(!run(&other, path), "{other} {path}");
            }
        }
        for path in [
            "/v1/files",
            "/files/",
            "/v1/uploads/big",
            "/v1/keys",
            "/v1/API-KEYS",
            "/v1/api_keys",
            "/v1/webhooks",
            "/v1/webhooks/wh_1/test",
            "/v1/images",
            "/tasks/task_1",
            "/v1/Files?x=1",
        ] {
            assert!(!run(&Method::POST, path), "{path}");
        }
    }
}
