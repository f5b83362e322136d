//! The gateway's service: key, account, count and permit, upload limit, then the inner
//! service.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use http::header::CONTENT_LENGTH;
use http::{Request, Response};
use http_body_util::Limited;
use overten_errors::{ApiError, ErrorCode, RATE_LIMIT_WINDOW_SECONDS, RateLimit, RetryAfter, Tier};
use tower_service::Service;

use overten_errors_http::server::{Account, AccountStatus, OutageAnswer, TierLimits};

use super::body::GatewayBody;
use super::permit::RunPermit;
use super::{Config, rank};
use crate::accounts::Accounts;
use crate::key::KeyHash;
use crate::store::{
    Admission, Admit, BoxFuture, PermitId, RunAdmission, RunAsk, Store, StoreError, StoreFailure,
};
use overten_errors_http::set_rate_limit_headers;

/// The service of [`GatewayLayer`](super::GatewayLayer).
#[derive(Clone)]
pub struct Gateway<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> std::fmt::Debug for Gateway<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl<S> Gateway<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Gateway<S> {
        Gateway { inner, config }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Gateway<S>
where
    S: Service<Request<Limited<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    ReqB: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<GatewayBody<ResB>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The service that was polled ready serves this request; a clone waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        Box::pin(handle(config, inner, req))
    }
}

/// An envelope the gateway answers with, the error in its extensions.
fn answer<B>(err: ApiError) -> Response<GatewayBody<B>> {
    overten_errors_http::server::answer(err, GatewayBody::answer)
}

fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The answer for a store that failed, or `None` to pass the request uncounted. The outage
/// is logged as one story ([`Outage`](crate::outage::Outage)); this request at debug.
fn store_failed(config: &Config, err: StoreError) -> Option<ApiError> {
    config.outage.failed(&err, Instant::now());
    match config.on_store_error {
        StoreFailure::Allow => {
            tracing::debug!(error = %err, "gateway store failed: request passed uncounted");
            None
        }
        StoreFailure::Reject { .. } | StoreFailure::Local { .. } => {
            Some(unavailable(config.on_store_error.retry_after(), err))
        }
    }
}

fn unavailable(retry_after: std::time::Duration, err: StoreError) -> ApiError {
    ApiError::new(
        ErrorCode::ServiceUnavailable,
        "Limits cannot be checked right now; retry after the Retry-After delay",
    )
    .with_retry_after(RetryAfter::Seconds(retry_after.as_secs().max(1)))
    .with_cause(err)
}

/// What the gate let through: the account, the key's hash, the rate-limit headers to
/// stamp (none when the store failed and the policy let the request pass), the permit.
struct Admitted {
    account: Account,
    hash: KeyHash,
    stamp: Option<RateLimit>,
    permit: Option<RunPermit>,
    limits: TierLimits,
    /// Counted on this replica alone (degraded mode).
    local: bool,
}

fn too_large(account: &Account, limit: u64) -> ApiError {
    ApiError::upload_too_large(Some(account.tier), limit)
}

/// Step 2: the key's account, if it may use this path. A lookup that fails is a 503
/// whatever the policy: a key that cannot be checked is never let through.
async fn account(config: &Config, hash: &KeyHash, path: &str) -> Result<Account, ApiError> {
    let account = match config.accounts.resolve(hash).await {
        Ok(Some(account)) => account,
        Ok(None) => return Err(ApiError::from(ErrorCode::InvalidApiKey)),
        Err(err) => {
            config.outage.failed(&err, Instant::now());
            let wait = config.on_store_error.retry_after();
            return Err(unavailable(wait, err));
        }
    };
    tracing::Span::current().record("org_id", &*account.org_id);
    if account.status == AccountStatus::Suspended {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "The key's org is suspended; check org status via GET /verify",
        ));
    }
    if let Some((_, needs)) = config.routes.iter().find(|(prefix, needs)| {
        path.starts_with(prefix.as_str()) && rank(account.tier) < rank(*needs)
    }) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "This route needs the {needs} tier or higher; the key's org is on {}",
                account.tier
            ),
        ));
    }
    Ok(account)
}

/// Whether the request announces a body over `limit` bytes.
fn announced_over(head: &http::request::Parts, limit: u64) -> bool {
    head.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > limit)
}

/// The store's admission, timed (feature `metrics`); a success ends an outage.
async fn admit(config: &Config, ask: Admit<'_>) -> Result<Admission, StoreError> {
    let timer = crate::metrics::Timer::start();
    let admission = config.store.admit(ask).await;
    crate::metrics::store_call(
        "gateway",
        "admit",
        admission.as_ref().err(),
        timer.seconds(),
    );
    if admission.is_ok() {
        config.outage.succeeded(Instant::now());
    }
    admission
}

/// The 429 of a key over its rate limit (`count` requests in the window ending at `reset`).
fn over_limit(limit: u32, count: u64, reset: u64, now: u64) -> ApiError {
    ApiError::from(ErrorCode::RateLimitExceeded)
        .with_rate_limit(RateLimit {
            limit,
            remaining: limit.saturating_sub(u32::try_from(count).unwrap_or(u32::MAX)),
            reset,
        })
        .with_retry_after(RetryAfter::Seconds(reset.saturating_sub(now).max(1)))
}

/// The 429 of a run over the tier's concurrent runs.
fn runs_full(
    config: &Config,
    account: &Account,
    limits: &TierLimits,
    in_progress: u32,
) -> ApiError {
    ApiError::new(
        ErrorCode::RateLimitExceeded,
        format!(
            "Concurrent runs limit reached: the {} tier allows {} runs in progress at once ({in_progress} now)",
            account.tier, limits.concurrent_runs
        ),
    )
    .with_retry_after(RetryAfter::Seconds(
        config.concurrency_retry_after.as_secs().max(1),
    ))
}

/// A request the gate answers: the error, the caller's tier once it is known, and whether
/// it was counted on this replica alone (degraded mode).
struct Refused {
    err: ApiError,
    tier: Option<Tier>,
    local: bool,
}

impl Refused {
    fn of(err: ApiError, tier: Tier, local: bool) -> Refused {
        Refused {
            err,
            tier: Some(tier),
            local,
        }
    }
}

impl From<ApiError> for Refused {
    fn from(err: ApiError) -> Refused {
        Refused {
            err,
            tier: None,
            local: false,
        }
    }
}

/// Where a request was counted.
struct Counted {
    store: Arc<dyn Store>,
    limits: TierLimits,
    admission: Admission,
    run: Option<RunAsk>,
    local: bool,
}

/// Steps 1 to 4 of the module docs: the admitted request, or the error to answer.
async fn gate(config: &Config, head: &http::request::Parts) -> Result<Admitted, Refused> {
    let now = unix_seconds((config.clock)());
    let window = now / RATE_LIMIT_WINDOW_SECONDS;
    let reset = window
        .saturating_add(1)
        .saturating_mul(RATE_LIMIT_WINDOW_SECONDS);

    // 1. One well-formed key.
    let key = overten_errors_http::live_api_key(&head.headers)
        .ok_or_else(|| ApiError::from(ErrorCode::InvalidApiKey))?;
    let hash = KeyHash::of(key);

    let account = account(config, &hash, head.uri.path()).await?;
    let tier = account.tier;
    let shared_limits = config.limits_of(tier);

    // 3. Count, and a permit for a run, in one store call. A body announced too large
    // asks no permit: it is answered 413 once counted.
    let announced_too_large = announced_over(head, shared_limits.upload_bytes);
    // Already over its limit in this window, as this replica saw: the same 429, no store
    // call.
    let shared_limit = shared_limits.requests_per_minute;
    if config
        .near
        .as_ref()
        .is_some_and(|near| near.is_over(&hash, window, shared_limit))
    {
        crate::metrics::rate_limited("rate", tier, true);
        let count = u64::from(shared_limit) + 1;
        return Err(Refused::of(
            over_limit(shared_limit, count, reset, now),
            tier,
            false,
        ));
    }
    let is_run = !announced_too_large && (config.is_run)(&head.method, &head.uri);
    let Some(counted) = count(config, &hash, window, shared_limits, is_run)
        .await
        .map_err(|err| Refused::of(err, tier, false))?
    else {
        // The store failed and the policy lets the request pass uncounted.
        if announced_too_large {
            let err = too_large(&account, shared_limits.upload_bytes);
            return Err(Refused::of(err, tier, false));
        }
        return Ok(Admitted {
            account,
            hash,
            stamp: None,
            permit: None,
            limits: shared_limits,
            local: false,
        });
    };
    let Counted {
        store,
        limits,
        admission,
        run,
        local,
    } = counted;
    let refused = |err: ApiError| Refused::of(err, tier, local);
    let limit = limits.requests_per_minute;
    let rate_limit = RateLimit {
        limit,
        remaining: limit.saturating_sub(u32::try_from(admission.count).unwrap_or(u32::MAX)),
        reset,
    };
    if admission.count > u64::from(limit) {
        if let Some(near) = config.near.as_ref().filter(|_| !local) {
            near.went_over(&hash, window, limit);
        }
        crate::metrics::rate_limited("rate", tier, false);
        return Err(refused(over_limit(limit, admission.count, reset, now)));
    }
    if announced_too_large {
        return Err(refused(
            too_large(&account, limits.upload_bytes).with_rate_limit(rate_limit),
        ));
    }
    let permit = match (admission.run, run) {
        (RunAdmission::Full { in_progress }, _) => {
            crate::metrics::rate_limited("runs", tier, false);
            return Err(refused(
                runs_full(config, &account, &limits, in_progress).with_rate_limit(rate_limit),
            ));
        }
        (RunAdmission::Granted, Some(run)) => Some(RunPermit::new(
            store,
            hash,
            run.permit,
            config.lease,
            Some(tier),
        )),
        _ => None,
    };
    Ok(Admitted {
        account,
        hash,
        stamp: Some(rate_limit),
        permit,
        limits,
        local,
    })
}

/// Counts the request (and asks a permit for a run) in the shared store; when it fails,
/// what the policy says: an error to answer, `None` to pass uncounted, or (degraded mode)
/// the count of this replica's own store against its share of the limits.
async fn count(
    config: &Config,
    hash: &KeyHash,
    window: u64,
    limits: TierLimits,
    is_run: bool,
) -> Result<Option<Counted>, ApiError> {
    let ask = |limits: &TierLimits| {
        let run =
            is_run.then(|| RunAsk::new(PermitId::new(), limits.concurrent_runs, config.lease));
        let mut admit = Admit::new(
            hash,
            window,
            RATE_LIMIT_WINDOW_SECONDS,
            limits.requests_per_minute,
        );
        if let Some(run) = run {
            admit = admit.with_run(run);
        }
        (admit, run)
    };
    let local = match (config.on_store_error, &config.local) {
        (StoreFailure::Local { replicas }, Some(local)) => Some((replicas.max(1), local)),
        _ => None,
    };
    // In degraded mode, while the store is down, one request a second probes it; the
    // others are counted locally at once.
    let skip = local.is_some() && config.outage.is_down() && !config.probe_due();
    let failure = if skip {
        None
    } else {
        let (admit_shared, run) = ask(&limits);
        match admit(config, admit_shared).await {
            Ok(admission) => {
                return Ok(Some(Counted {
                    store: Arc::clone(&config.store),
                    limits,
                    admission,
                    run,
                    local: false,
                }));
            }
            Err(err) => Some(err),
        }
    };
    let Some((replicas, store)) = local else {
        let Some(err) = failure else {
            return Ok(None);
        };
        return match store_failed(config, err) {
            Some(answer) => Err(answer),
            None => Ok(None),
        };
    };
    if let Some(err) = failure {
        config.outage.failed(&err, Instant::now());
    }
    let share = |n: u32| (n / replicas).max(1);
    let limits = limits
        .requests_per_minute(share(limits.requests_per_minute))
        .concurrent_runs(share(limits.concurrent_runs));
    let (admit_local, run) = ask(&limits);
    let store: Arc<dyn Store> = store.clone();
    match store.admit(admit_local).await {
        Ok(admission) => Ok(Some(Counted {
            store,
            limits,
            admission,
            run,
            local: true,
        })),
        Err(err) => Err(unavailable(config.on_store_error.retry_after(), err)),
    }
}

async fn handle<S, ReqB, ResB>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqB>,
) -> Result<Response<GatewayBody<ResB>>, S::Error>
where
    S: Service<Request<Limited<ReqB>>, Response = Response<ResB>>,
{
    let started = crate::metrics::Timer::start();
    let (mut head, body) = req.into_parts();
    let method = head.method.clone();
    let admitted = match gate(&config, &head).await {
        Ok(admitted) => admitted,
        Err(Refused { err, tier, local }) => {
            let outage = err.code() == &overten_errors::Code::Known(ErrorCode::ServiceUnavailable);
            let mut response = answer(err);
            if outage {
                response.extensions_mut().insert(OutageAnswer);
            }
            if local {
                mark_local(&mut response);
            }
            record(&method, &response, tier, started);
            return Ok(response);
        }
    };
    // 5. Pass, with the account, the key's hash, the tier's limits and the permit; the body
    // limited to the tier's upload limit.
    let upload = admitted.limits.upload_bytes;
    let tier = admitted.account.tier;
    let local = admitted.local;
    head.extensions.insert(admitted.account);
    head.extensions.insert(admitted.hash);
    head.extensions.insert(admitted.limits);
    if let Some(permit) = &admitted.permit {
        head.extensions.insert(permit.clone());
    }
    #[cfg_attr(not(feature = "axum"), allow(unused_mut))]
    let mut req = Request::from_parts(
        head,
        Limited::new(body, usize::try_from(upload).unwrap_or(usize::MAX)),
    );
    // axum's extractors cap a body at 2 MB of their own unless told otherwise: the tier's
    // limit is the one that holds.
    #[cfg(feature = "axum")]
    axum::extract::DefaultBodyLimit::max(usize::try_from(upload).unwrap_or(usize::MAX))
        .apply(&mut req);
    // If the inner service fails or this future is dropped (the client went away), the
    // permit is dropped with it and goes back.
    let response = inner.call(req).await?;
    let mut response = if framework_too_large(&response) {
        // A body that streamed past the limit, refused by the framework (axum's
        // extractors) in its own words: the same envelope as an announced one.
        // The handler has returned: its run, and its permit, end here.
        drop(response);
        answer(ApiError::upload_too_large(Some(tier), upload))
    } else {
        response.map(|body| GatewayBody::inner(body, admitted.permit))
    };
    if let Some(rate_limit) = &admitted.stamp {
        set_rate_limit_headers(response.headers_mut(), rate_limit);
    }
    if local {
        mark_local(&mut response);
    }
    record(&method, &response, Some(tier), started);
    Ok(response)
}

/// `X-RateLimit-Scope: replica`: this response's limits were counted on this replica
/// alone, the store being away (degraded mode).
fn mark_local<B>(response: &mut Response<B>) {
    response.headers_mut().insert(
        http::HeaderName::from_static("x-ratelimit-scope"),
        http::HeaderValue::from_static("replica"),
    );
}

/// `http.server.request.duration` for a response head (feature `metrics`; without it,
/// nothing).
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
fn record<B>(
    method: &http::Method,
    response: &Response<B>,
    tier: Option<Tier>,
    started: crate::metrics::Timer,
) {
    #[cfg(feature = "metrics")]
    crate::metrics::request(
        method,
        response.status(),
        tier,
        response.extensions().get::<ApiError>(),
        started.seconds(),
    );
}

/// A 413 the inner service did not write as an envelope (no `ApiError` in its extensions,
/// not JSON): the framework's own answer to a body over its limit.
fn framework_too_large<B>(response: &Response<B>) -> bool {
    response.status() == http::StatusCode::PAYLOAD_TOO_LARGE
        && response.extensions().get::<ApiError>().is_none()
        && !overten_errors_http::server::is_json(response)
}
