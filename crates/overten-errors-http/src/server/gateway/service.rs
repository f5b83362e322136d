//! The gateway's service: key, account, count and permit, upload limit, then the inner
//! service.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use http::header::CONTENT_LENGTH;
use http::{Request, Response};
use http_body_util::Limited;
use overten_errors::{ApiError, ErrorCode, RATE_LIMIT_WINDOW_SECONDS, RateLimit, RetryAfter};
use tower_service::Service;

use super::accounts::{AccountStatus, KeyHash};
use super::body::GatewayBody;
use super::permit::RunPermit;
use super::store::{Admit, BoxFuture, PermitId, RunAdmission, RunAsk, StoreError};
use super::{Config, StoreFailure, rank};
use crate::server::{into_response, set_rate_limit_headers};

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

/// An envelope the gateway answers with; the error rides in the response's extensions, so
/// the envelope layer logs it (and its cause) once.
fn answer<B>(err: ApiError) -> Response<GatewayBody<B>> {
    let response: Response<Vec<u8>> = into_response(&err);
    let mut response = response.map(GatewayBody::answer);
    response.extensions_mut().insert(err);
    response
}

fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The answer for a store that failed, or `None` to pass the request uncounted.
fn store_failed(policy: StoreFailure, err: StoreError) -> Option<ApiError> {
    match policy {
        StoreFailure::Allow => {
            tracing::warn!(error = %err, "gateway store failed: request passed uncounted");
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

async fn handle<S, ReqB, ResB>(
    config: Arc<Config>,
    mut inner: S,
    mut req: Request<ReqB>,
) -> Result<Response<GatewayBody<ResB>>, S::Error>
where
    S: Service<Request<Limited<ReqB>>, Response = Response<ResB>>,
{
    let now = unix_seconds((config.clock)());
    let window = now / RATE_LIMIT_WINDOW_SECONDS;
    let reset = window
        .saturating_add(1)
        .saturating_mul(RATE_LIMIT_WINDOW_SECONDS);

    // 1. One well-formed key.
    let Some(key) = crate::mock::live_api_key(req.headers()) else {
        return Ok(answer(ApiError::from(ErrorCode::InvalidApiKey)));
    };
    let hash = KeyHash::of(key);

    // 2. Its account. A lookup that fails is a 503 whatever the policy: a key that cannot
    // be checked is never let through.
    let account = match config.accounts.resolve(&hash).await {
        Ok(Some(account)) => account,
        Ok(None) => return Ok(answer(ApiError::from(ErrorCode::InvalidApiKey))),
        Err(err) => {
            let wait = match config.on_store_error {
                StoreFailure::Reject { retry_after } => retry_after,
                StoreFailure::Allow => super::StoreFailure::default_wait(),
            };
            return Ok(answer(unavailable(wait, err)));
        }
    };
    tracing::Span::current().record("org_id", &*account.org_id);
    if account.status == AccountStatus::Suspended {
        return Ok(answer(ApiError::new(
            ErrorCode::Forbidden,
            "The key's org is suspended; check org status via GET /verify",
        )));
    }
    let path = req.uri().path();
    if let Some((_, needs)) = config.routes.iter().find(|(prefix, needs)| {
        path.starts_with(prefix.as_str()) && rank(account.tier) < rank(*needs)
    }) {
        return Ok(answer(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "This route needs the {needs} tier or higher; the key's org is on {}",
                account.tier
            ),
        )));
    }
    let limits = config.limits_of(account.tier);

    // 3. Count, and a permit for a run, in one store call.
    let too_large = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > limits.upload_bytes);
    let run = (!too_large && (config.is_run)(req.method(), req.uri()))
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
    let admission = match config.store.admit(ask).await {
        Ok(admission) => Some(admission),
        Err(err) => match store_failed(config.on_store_error, err) {
            Some(err) => return Ok(answer(err)),
            None => None,
        },
    };
    let mut stamp = None;
    let mut permit = None;
    if let Some(admission) = admission {
        let limit = limits.requests_per_minute;
        let used = u32::try_from(admission.count).unwrap_or(u32::MAX);
        let rate_limit = RateLimit {
            limit,
            remaining: limit.saturating_sub(used),
            reset,
        };
        if admission.count > u64::from(limit) {
            return Ok(answer(
                ApiError::from(ErrorCode::RateLimitExceeded)
                    .with_rate_limit(rate_limit)
                    .with_retry_after(RetryAfter::Seconds(reset.saturating_sub(now).max(1))),
            ));
        }
        if too_large {
            return Ok(answer(
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "The request body exceeds the {} tier's upload limit of {} bytes",
                        account.tier, limits.upload_bytes
                    ),
                )
                .with_rate_limit(rate_limit),
            ));
        }
        match (admission.run, run) {
            (RunAdmission::Full { in_progress }, _) => {
                return Ok(answer(
                    ApiError::new(
                        ErrorCode::RateLimitExceeded,
                        format!(
                            "Concurrent runs limit reached: the {} tier allows {} runs in progress at once ({in_progress} now)",
                            account.tier, limits.concurrent_runs
                        ),
                    )
                    .with_rate_limit(rate_limit)
                    .with_retry_after(RetryAfter::Seconds(
                        config.concurrency_retry_after.as_secs().max(1),
                    )),
                ));
            }
            (RunAdmission::Granted, Some(run)) => {
                permit = Some(RunPermit::new(Arc::clone(&config.store), hash, run.permit));
            }
            _ => {}
        }
        stamp = Some(rate_limit);
    } else if too_large {
        return Ok(answer(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "The request body exceeds the {} tier's upload limit of {} bytes",
                account.tier, limits.upload_bytes
            ),
        )));
    }

    // 4. Pass, with the account, the key's hash and the permit; the body limited.
    let upload = usize::try_from(limits.upload_bytes).unwrap_or(usize::MAX);
    req.extensions_mut().insert(account);
    req.extensions_mut().insert(hash);
    if let Some(permit) = &permit {
        req.extensions_mut().insert(permit.clone());
    }
    let req = req.map(|body| Limited::new(body, upload));
    // If the inner service fails or this future is dropped (the client went away, a
    // panic), `permit` is dropped with it and the permit goes back.
    let mut response = inner.call(req).await?;
    if let Some(rate_limit) = &stamp {
        set_rate_limit_headers(response.headers_mut(), rate_limit);
    }
    Ok(response.map(|body| GatewayBody::inner(body, permit)))
}
