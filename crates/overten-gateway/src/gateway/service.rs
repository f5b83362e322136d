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
    Admission, Admit, BoxFuture, PermitId, RunAdmission, RunAsk, StoreError, StoreFailure,
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
        StoreFailure::Reject { retry_after } => Some(unavailable(retry_after, err)),
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
            let wait = match config.on_store_error {
                StoreFailure::Reject { retry_after } => retry_after,
                StoreFailure::Allow => StoreFailure::DEFAULT_RETRY_AFTER,
            };
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
    let started = Instant::now();
    let admission = config.store.admit(ask).await;
    crate::metrics::store_call(
        "gateway",
        "admit",
        admission.as_ref().err(),
        started.elapsed().as_secs_f64(),
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

/// A request the gate answers: the error, and the caller's tier once it is known.
struct Refused {
    err: ApiError,
    tier: Option<Tier>,
}

impl From<ApiError> for Refused {
    fn from(err: ApiError) -> Refused {
        Refused { err, tier: None }
    }
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
    let limits = config.limits_of(account.tier);
    let tier = account.tier;
    let refused = |err: ApiError| Refused {
        err,
        tier: Some(tier),
    };

    // 3. Count, and a permit for a run, in one store call. A body announced too large
    // asks no permit: it is answered 413 once counted.
    let announced_too_large = announced_over(head, limits.upload_bytes);
    let limit = limits.requests_per_minute;
    let over_limit = |count: u64| over_limit(limit, count, reset, now);
    // Already over its limit in this window, as this replica saw: the same 429, no store
    // call.
    if config
        .near
        .as_ref()
        .is_some_and(|near| near.is_over(&hash, window, limit))
    {
        crate::metrics::rate_limited("rate", tier, true);
        return Err(refused(over_limit(u64::from(limit).saturating_add(1))));
    }
    let run = (!announced_too_large && (config.is_run)(&head.method, &head.uri))
        .then(|| RunAsk::new(PermitId::new(), limits.concurrent_runs, config.lease));
    let mut ask = Admit::new(
        &hash,
        window,
        RATE_LIMIT_WINDOW_SECONDS,
        limits.requests_per_minute,
    );
    if let Some(run) = run {
        ask = ask.with_run(run);
    }
    let admission = match admit(config, ask).await {
        Ok(admission) => admission,
        Err(err) => {
            if let Some(answer) = store_failed(config, err) {
                return Err(refused(answer));
            }
            if announced_too_large {
                return Err(refused(too_large(&account, limits.upload_bytes)));
            }
            return Ok(Admitted {
                account,
                hash,
                stamp: None,
                permit: None,
                limits,
            });
        }
    };
    let rate_limit = RateLimit {
        limit,
        remaining: limit.saturating_sub(u32::try_from(admission.count).unwrap_or(u32::MAX)),
        reset,
    };
    if admission.count > u64::from(limit) {
        if let Some(near) = &config.near {
            near.went_over(&hash, window, limit);
        }
        crate::metrics::rate_limited("rate", tier, false);
        return Err(refused(over_limit(admission.count)));
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
            Arc::clone(&config.store),
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
    })
}

async fn handle<S, ReqB, ResB>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqB>,
) -> Result<Response<GatewayBody<ResB>>, S::Error>
where
    S: Service<Request<Limited<ReqB>>, Response = Response<ResB>>,
{
    let started = Instant::now();
    let (mut head, body) = req.into_parts();
    let method = head.method.clone();
    let admitted = match gate(&config, &head).await {
        Ok(admitted) => admitted,
        Err(Refused { err, tier }) => {
            let outage = err.code() == &overten_errors::Code::Known(ErrorCode::ServiceUnavailable);
            let mut response = answer(err);
            if outage {
                response.extensions_mut().insert(OutageAnswer);
            }
            record(&method, &response, tier, started);
            return Ok(response);
        }
    };
    // 5. Pass, with the account, the key's hash, the tier's limits and the permit; the body
    // limited to the tier's upload limit.
    let upload = admitted.limits.upload_bytes;
    let tier = admitted.account.tier;
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
    record(&method, &response, Some(tier), started);
    Ok(response)
}

/// `http.server.request.duration` for a response head (feature `metrics`).
fn record<B>(method: &http::Method, response: &Response<B>, tier: Option<Tier>, started: Instant) {
    crate::metrics::request(
        method,
        response.status(),
        tier,
        response.extensions().get::<ApiError>(),
        started.elapsed().as_secs_f64(),
    );
}

/// A 413 the inner service did not write as an envelope (no `ApiError` in its extensions,
/// not JSON): the framework's own answer to a body over its limit.
fn framework_too_large<B>(response: &Response<B>) -> bool {
    response.status() == http::StatusCode::PAYLOAD_TOO_LARGE
        && response.extensions().get::<ApiError>().is_none()
        && !overten_errors_http::server::is_json(response)
}
