//! The gateway's service: key, account, count and permit, upload limit, then the inner
//! service.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
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
    type Future = GatewayFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let started = crate::metrics::Timer::start();
        // Stores that answer at once (the memory stores) are asked here, without a boxed
        // future; any other store says so before it is touched, and the request takes the
        // boxed path below.
        let now = gate_now(&self.config, Head::of(&req));
        let state = match now {
            Ok(admitted) => {
                let (req, after) = pass(req, admitted, started);
                // Called now: the service polled ready serves it, no clone needed.
                match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
                    Ok(future) => State::Inner {
                        future,
                        after: Some(after),
                    },
                    Err(payload) => State::Answer {
                        response: Some(panicked(&*payload, after)),
                    },
                }
            }
            Err(Stop::Refused(refused)) => State::Answer {
                response: Some(refuse(*refused, req.method(), started)),
            },
            Err(Stop::Later) => {
                // Called later, from the future: the service polled ready goes with it, and
                // a clone waits for the next request.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                State::Waiting {
                    future: Box::pin(handle(Arc::clone(&self.config), inner, req, started)),
                }
            }
        };
        GatewayFuture { state }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Gateway`]: the inner service's, when the stores answered at once;
    /// the gateway's own answer; or a boxed future that waits for the stores.
    pub struct GatewayFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        Inner {
            #[pin]
            future: F,
            after: Option<After>,
        },
        Answer {
            response: Option<Response<GatewayBody<B>>>,
        },
        Waiting {
            future: BoxFuture<'static, Result<Response<GatewayBody<B>>, E>>,
        },
    }
}

impl<F, B, E> std::fmt::Debug for GatewayFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for GatewayFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<GatewayBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future, after } => {
                // A panic while the inner future is polled is caught here.
                let response = match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(Poll::Ready(Ok(response))) => Ok(response),
                    Ok(Poll::Ready(Err(err))) => return Poll::Ready(Err(err)),
                    Ok(Poll::Pending) => return Poll::Pending,
                    Err(payload) => Err(payload),
                };
                Poll::Ready(Ok(match (after.take(), response) {
                    (Some(after), Ok(response)) => finish(response, after),
                    (Some(after), Err(payload)) => panicked(&*payload, after),
                    (None, _) => polled_again(),
                }))
            }
            StateProj::Answer { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_else(polled_again)))
            }
            StateProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, a panic while it is polled caught: `Err` with the
    /// panic's payload.
    struct Unwinding<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for Unwinding<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// The answer to a panic of the inner service: the 500 envelope of
/// [`PanicEnvelope`](overten_errors_http::server::PanicEnvelope) (its text is the error's
/// cause, for the log line only), stamped like every response; the run is over, so its
/// permit goes back now.
fn panicked<B>(payload: &(dyn std::any::Any + Send), after: After) -> Response<GatewayBody<B>> {
    let err = overten_errors_http::server::PanicEnvelope::error(payload);
    complete(answer(err), after)
}

/// The answer of a future polled again after it finished (a caller's mistake): a 500
/// envelope rather than a panic.
fn polled_again<B>() -> Response<GatewayBody<B>> {
    answer(ApiError::new(
        ErrorCode::InternalError,
        "The server failed unexpectedly; retry, and contact support if it persists",
    ))
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

/// Step 2: the key's account (as the resolver found it), if it may use this path. A
/// lookup that fails is a 503 whatever the policy: a key that cannot be checked is never
/// let through.
fn checked(
    config: &Config,
    found: Result<Option<Account>, StoreError>,
    path: &str,
) -> Result<Account, Stop> {
    let account = match found {
        Ok(Some(account)) => account,
        Ok(None) => return Err(ApiError::from(ErrorCode::InvalidApiKey).into()),
        Err(err) => {
            config.outage.failed(&err, Instant::now());
            let wait = config.on_store_error.retry_after();
            return Err(unavailable(wait, err).into());
        }
    };
    tracing::Span::current().record("org_id", &*account.org_id);
    if account.status == AccountStatus::Suspended {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "The key's org is suspended; check org status via GET /verify",
        )
        .into());
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
        )
        .into());
    }
    Ok(account)
}

/// The parts of a request the gate reads, borrowed (the request is not taken apart).
#[derive(Clone, Copy)]
struct Head<'a> {
    method: &'a http::Method,
    uri: &'a http::Uri,
    headers: &'a http::HeaderMap,
}

impl<'a> Head<'a> {
    fn of<B>(req: &'a Request<B>) -> Head<'a> {
        Head {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
        }
    }
}

/// Whether the request announces a body over `limit` bytes.
fn announced_over(head: Head<'_>, limit: u64) -> bool {
    head.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > limit)
}

/// After the store's admission: timed (feature `metrics`); a success ends an outage.
fn admitted_by_store(
    config: &Config,
    timer: crate::metrics::Timer,
    admission: &Result<Admission, StoreError>,
) {
    crate::metrics::store_call(
        "gateway",
        "admit",
        admission.as_ref().err(),
        timer.seconds(),
    );
    // The clock is read only when an outage is on (`succeeded` does nothing otherwise).
    if admission.is_ok() && config.outage.is_down() {
        config.outage.succeeded(Instant::now());
    }
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

/// Whether the gate may wait for its stores (`Wait`), or must answer at once or say it
/// cannot (`Now`: a store without a `*_now` answer stops the gate before it is touched).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Now,
    Wait,
}

/// Why the gate did not admit a request.
enum Stop {
    /// Answered here (boxed: the error is large, and refusals are the rarer path).
    Refused(Box<Refused>),
    /// A store cannot answer at once (`Mode::Now` only): nothing was counted.
    Later,
}

impl From<Refused> for Stop {
    fn from(refused: Refused) -> Stop {
        Stop::Refused(Box::new(refused))
    }
}

impl From<ApiError> for Stop {
    fn from(err: ApiError) -> Stop {
        Refused::from(err).into()
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

/// The clock's reading for one request: the second, its window and the window's end.
#[derive(Clone, Copy)]
struct Tick {
    now: u64,
    window: u64,
    reset: u64,
}

/// Step 1: one well-formed key, known from here on by its hash; the clock read once.
fn start(config: &Config, head: Head<'_>) -> Result<(KeyHash, Tick), Stop> {
    let now = unix_seconds((config.clock)());
    let window = now / RATE_LIMIT_WINDOW_SECONDS;
    let reset = window
        .saturating_add(1)
        .saturating_mul(RATE_LIMIT_WINDOW_SECONDS);
    let key = overten_errors_http::live_api_key(head.headers)
        .ok_or_else(|| ApiError::from(ErrorCode::InvalidApiKey))?;
    Ok((KeyHash::of(key), Tick { now, window, reset }))
}

/// What step 3 asks of the store, once the account is known.
struct Plan {
    account: Account,
    limits: TierLimits,
    announced_too_large: bool,
    is_run: bool,
}

/// Step 3 before any store call: the tier's limits, a body announced too large (it asks
/// no permit: it is answered 413 once counted), whether it is a run; a key already over
/// its limit in this window, as this replica saw, is answered 429 here, with no store call.
fn plan(
    config: &Config,
    head: Head<'_>,
    hash: &KeyHash,
    account: Account,
    t: Tick,
) -> Result<Plan, Stop> {
    let tier = account.tier;
    let limits = config.limits_of(tier);
    let announced_too_large = announced_over(head, limits.upload_bytes);
    let limit = limits.requests_per_minute;
    if config
        .near
        .as_ref()
        .is_some_and(|near| near.is_over(hash, t.window, limit))
    {
        crate::metrics::rate_limited("rate", tier, true);
        let count = u64::from(limit) + 1;
        return Err(Refused::of(over_limit(limit, count, t.reset, t.now), tier, false).into());
    }
    let is_run = !announced_too_large && (config.is_run)(head.method, head.uri);
    Ok(Plan {
        account,
        limits,
        announced_too_large,
        is_run,
    })
}

/// The store call of step 3 for `limits`: the count, and a permit for a run.
fn ask<'a>(
    config: &Config,
    hash: &'a KeyHash,
    window: u64,
    limits: &TierLimits,
    is_run: bool,
) -> (Admit<'a>, Option<RunAsk>) {
    let run = is_run.then(|| RunAsk::new(PermitId::new(), limits.concurrent_runs, config.lease));
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
}

/// Whether the shared store is asked. In degraded mode, while the store is down, one
/// request a second probes it; the others are counted locally at once. In `Mode::Now` an
/// outage in degraded mode stops for the waiting path, before the probe's turn is taken.
fn asks_shared(config: &Config, mode: Mode) -> Result<bool, Stop> {
    let down = config.local.is_some()
        && matches!(config.on_store_error, StoreFailure::Local { .. })
        && config.outage.is_down();
    if down && mode == Mode::Now {
        return Err(Stop::Later);
    }
    Ok(!down || config.probe_due())
}

/// Where the request was counted, from the shared store's answer (`None`: not asked):
/// there; or, when it failed or was not asked, what the policy says: an error to answer,
/// `None` to pass uncounted, or (degraded mode) the count of this replica's own store
/// against its share of the limits.
fn counted(
    config: &Config,
    shared: Option<(Result<Admission, StoreError>, Option<RunAsk>)>,
    hash: &KeyHash,
    window: u64,
    plan: &Plan,
) -> Result<Option<Counted>, Box<ApiError>> {
    let failure = match shared {
        Some((Ok(admission), run)) => {
            return Ok(Some(Counted {
                store: Arc::clone(&config.store),
                limits: plan.limits,
                admission,
                run,
                local: false,
            }));
        }
        Some((Err(err), _)) => Some(err),
        None => None,
    };
    let local = match (config.on_store_error, &config.local) {
        (StoreFailure::Local { replicas }, Some(local)) => Some((replicas.max(1), local)),
        _ => None,
    };
    let Some((replicas, store)) = local else {
        let Some(err) = failure else {
            return Ok(None);
        };
        return match store_failed(config, err) {
            Some(answer) => Err(Box::new(answer)),
            None => Ok(None),
        };
    };
    if let Some(err) = failure {
        config.outage.failed(&err, Instant::now());
    }
    let share = |n: u32| (n / replicas).max(1);
    let limits = plan
        .limits
        .requests_per_minute(share(plan.limits.requests_per_minute))
        .concurrent_runs(share(plan.limits.concurrent_runs));
    let (admit_local, run) = ask(config, hash, window, &limits, plan.is_run);
    match store.admit_here(&admit_local) {
        Ok(admission) => Ok(Some(Counted {
            store: Arc::clone(store) as Arc<dyn Store>,
            limits,
            admission,
            run,
            local: true,
        })),
        Err(err) => Err(Box::new(unavailable(
            config.on_store_error.retry_after(),
            err,
        ))),
    }
}

/// Steps 3 (after the store) and 4: the admitted request, or the error to answer.
fn admitted(
    config: &Config,
    plan: Plan,
    hash: KeyHash,
    t: Tick,
    counted: Result<Option<Counted>, Box<ApiError>>,
) -> Result<Admitted, Stop> {
    let Plan {
        account,
        limits: shared_limits,
        announced_too_large,
        is_run: _,
    } = plan;
    let tier = account.tier;
    let counted = counted.map_err(|err| Refused::of(*err, tier, false))?;
    let Some(counted) = counted else {
        // The store failed and the policy lets the request pass uncounted.
        if announced_too_large {
            let err = too_large(&account, shared_limits.upload_bytes);
            return Err(Refused::of(err, tier, false).into());
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
    let refused = |err: ApiError| Stop::from(Refused::of(err, tier, local));
    let limit = limits.requests_per_minute;
    let rate_limit = RateLimit {
        limit,
        remaining: limit.saturating_sub(u32::try_from(admission.count).unwrap_or(u32::MAX)),
        reset: t.reset,
    };
    if admission.count > u64::from(limit) {
        if let Some(near) = config.near.as_ref().filter(|_| !local) {
            near.went_over(&hash, t.window, limit);
        }
        crate::metrics::rate_limited("rate", tier, false);
        return Err(refused(over_limit(limit, admission.count, t.reset, t.now)));
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

/// Steps 1 to 4 of the module docs with stores that answer at once, without a future:
/// the admitted request, the error to answer, or `Stop::Later` (before any store was
/// touched) when a store must be waited for.
fn gate_now(config: &Config, head: Head<'_>) -> Result<Admitted, Stop> {
    let (hash, t) = start(config, head)?;
    let found = config.accounts.resolve_now(&hash).ok_or(Stop::Later)?;
    let account = checked(config, found, head.uri.path())?;
    let plan = plan(config, head, &hash, account, t)?;
    let shared = if asks_shared(config, Mode::Now)? {
        let (admit, run) = ask(config, &hash, t.window, &plan.limits, plan.is_run);
        let timer = crate::metrics::Timer::start();
        let admission = config.store.admit_now(&admit).ok_or(Stop::Later)?;
        admitted_by_store(config, timer, &admission);
        Some((admission, run))
    } else {
        None
    };
    let counted = counted(config, shared, &hash, t.window, &plan);
    admitted(config, plan, hash, t, counted)
}

/// The same, waiting for the stores.
async fn gate(config: &Config, head: Head<'_>) -> Result<Admitted, Stop> {
    let (hash, t) = start(config, head)?;
    let found = match config.accounts.resolve_now(&hash) {
        Some(found) => found,
        None => config.accounts.resolve(&hash).await,
    };
    let account = checked(config, found, head.uri.path())?;
    let plan = plan(config, head, &hash, account, t)?;
    let shared = if asks_shared(config, Mode::Wait)? {
        let (admit, run) = ask(config, &hash, t.window, &plan.limits, plan.is_run);
        let timer = crate::metrics::Timer::start();
        let admission = match config.store.admit_now(&admit) {
            Some(admission) => admission,
            None => config.store.admit(admit).await,
        };
        admitted_by_store(config, timer, &admission);
        Some((admission, run))
    } else {
        None
    };
    let counted = counted(config, shared, &hash, t.window, &plan);
    admitted(config, plan, hash, t, counted)
}

/// The boxed path: the gate waits for its stores, then the inner service.
async fn handle<S, ReqB, ResB>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqB>,
    started: crate::metrics::Timer,
) -> Result<Response<GatewayBody<ResB>>, S::Error>
where
    S: Service<Request<Limited<ReqB>>, Response = Response<ResB>>,
{
    let admitted = match gate(&config, Head::of(&req)).await {
        Ok(admitted) => admitted,
        Err(Stop::Refused(refused)) => return Ok(refuse(*refused, req.method(), started)),
        // `gate` never stops for later; were it to, the request is not let through.
        Err(Stop::Later) => {
            let err = ApiError::new(
                ErrorCode::ServiceUnavailable,
                "Limits cannot be checked right now; retry after the Retry-After delay",
            )
            .with_retry_after(RetryAfter::Seconds(
                config.on_store_error.retry_after().as_secs().max(1),
            ));
            return Ok(refuse(Refused::from(err), req.method(), started));
        }
    };
    let (req, after) = pass(req, admitted, started);
    // If the inner service fails or this future is dropped (the client went away), the
    // permit is dropped with it and goes back.
    let future = match catch_unwind(AssertUnwindSafe(|| inner.call(req))) {
        Ok(future) => future,
        Err(payload) => return Ok(panicked(&*payload, after)),
    };
    match (Unwinding { inner: future }).await {
        Ok(response) => Ok(finish(response?, after)),
        Err(payload) => Ok(panicked(&*payload, after)),
    }
}

/// The answer to a request the gate refused, marked and recorded.
fn refuse<B>(
    refused: Refused,
    method: &http::Method,
    started: crate::metrics::Timer,
) -> Response<GatewayBody<B>> {
    let Refused { err, tier, local } = refused;
    let outage = err.code() == &overten_errors::Code::Known(ErrorCode::ServiceUnavailable);
    let mut response = answer(err);
    if outage {
        response.extensions_mut().insert(OutageAnswer);
    }
    if local {
        mark_local(&mut response);
    }
    record(method, &response, tier, started);
    response
}

/// What the response of an admitted request needs once the inner service answers.
struct After {
    stamp: Option<RateLimit>,
    permit: Option<RunPermit>,
    upload: u64,
    tier: Tier,
    local: bool,
    method: http::Method,
    started: crate::metrics::Timer,
}

/// Step 5: the request passed on, with the account, the key's hash, the tier's limits and
/// the permit in its extensions, and its body limited to the tier's upload limit.
fn pass<ReqB>(
    mut req: Request<ReqB>,
    admitted: Admitted,
    started: crate::metrics::Timer,
) -> (Request<Limited<ReqB>>, After) {
    let upload = admitted.limits.upload_bytes;
    let after = After {
        stamp: admitted.stamp,
        permit: admitted.permit.clone(),
        upload,
        tier: admitted.account.tier,
        local: admitted.local,
        method: req.method().clone(),
        started,
    };
    let extensions = req.extensions_mut();
    extensions.insert(admitted.account);
    extensions.insert(admitted.hash);
    extensions.insert(admitted.limits);
    if let Some(permit) = admitted.permit {
        extensions.insert(permit);
    }
    let limit = usize::try_from(upload).unwrap_or(usize::MAX);
    #[cfg_attr(not(feature = "axum"), allow(unused_mut))]
    let mut req = req.map(|body| Limited::new(body, limit));
    // axum's extractors cap a body at 2 MB of their own unless told otherwise: the tier's
    // limit is the one that holds.
    #[cfg(feature = "axum")]
    axum::extract::DefaultBodyLimit::max(limit).apply(&mut req);
    (req, after)
}

/// The inner service's response, stamped, with the permit held by its body until the body
/// ends.
fn finish<ResB>(response: Response<ResB>, mut after: After) -> Response<GatewayBody<ResB>> {
    let response = if framework_too_large(&response) {
        // A body that streamed past the limit, refused by the framework (axum's
        // extractors) in its own words: the same envelope as an announced one.
        // The handler has returned: its run, and its permit, end here.
        drop(response);
        answer(ApiError::upload_too_large(Some(after.tier), after.upload))
    } else {
        let permit = after.permit.take();
        response.map(|body| GatewayBody::inner(body, permit))
    };
    complete(response, after)
}

/// A response of an admitted request, stamped (`X-RateLimit-*`, the degraded mode's
/// scope) and recorded. A permit still in `after` goes back when this returns.
fn complete<B>(mut response: Response<GatewayBody<B>>, after: After) -> Response<GatewayBody<B>> {
    let After {
        stamp,
        permit,
        tier,
        local,
        method,
        started,
        upload: _,
    } = after;
    if let Some(rate_limit) = &stamp {
        set_rate_limit_headers(response.headers_mut(), rate_limit);
    }
    if local {
        mark_local(&mut response);
    }
    record(&method, &response, Some(tier), started);
    // A run the response does not hold (a panic, a refused upload) is over.
    drop(permit);
    response
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

#[cfg(test)]
mod tests {
    //! The two paths of [`Gateway::call`]: stores that answer at once (served without a
    //! boxed future) and stores that must be waited for answer alike, and a store that
    //! cannot answer at once is asked exactly once a request.

    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::accounts::MemoryAccounts;
    use crate::store::MemoryStore;
    use crate::{GatewayLayer, block_on};
    use tower_layer::Layer;

    /// The inner service: 200, with a body.
    #[derive(Clone)]
    struct Ok200;

    impl Service<Request<Limited<String>>> for Ok200 {
        type Response = Response<String>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<String>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Limited<String>>) -> Self::Future {
            std::future::ready(Ok(Response::new("done".to_owned())))
        }
    }

    /// Accounts that answer only through `resolve`.
    struct WaitingAccounts(MemoryAccounts);

    impl Accounts for WaitingAccounts {
        fn resolve<'a>(
            &'a self,
            key: &'a KeyHash,
        ) -> BoxFuture<'a, Result<Option<Account>, StoreError>> {
            self.0.resolve(key)
        }
    }

    fn accounts() -> MemoryAccounts {
        MemoryAccounts::new()
            .with_key("sk_live_free", Account::new("org_free", Tier::Free))
            .with_key("sk_live_pro", Account::new("org_pro", Tier::Pro))
            .with_key(
                "sk_live_gone",
                Account::new("org_gone", Tier::Pro).suspended(),
            )
    }

    fn fixed() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_010)
    }

    fn layer(accounts: Arc<dyn Accounts>, store: Arc<dyn Store>) -> GatewayLayer {
        GatewayLayer::new(accounts, store)
            .with_clock(fixed)
            .with_limits(
                Tier::Free,
                TierLimits::of(Tier::Free).requests_per_minute(5),
            )
            .with_limits(
                Tier::Pro,
                TierLimits::of(Tier::Pro)
                    .requests_per_minute(100)
                    .concurrent_runs(2),
            )
    }

    /// What a client sees of a response: status and the contract's headers.
    fn seen(response: &Response<GatewayBody<String>>) -> (u16, Vec<(String, String)>) {
        let mut headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(name, _)| {
                name.as_str().starts_with("x-ratelimit") || name.as_str() == "retry-after"
            })
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
            .collect();
        headers.sort();
        (response.status().as_u16(), headers)
    }

    /// The same requests through `layer`: five more free `GET`s than the limit, three pro
    /// runs (two held), no key, an unknown key, a suspended org.
    fn replay(layer: &GatewayLayer) -> Vec<(u16, Vec<(String, String)>)> {
        let mut service = layer.layer(Ok200);
        let mut send = |method: &str, path: &str, key: Option<&str>| {
            let mut req = Request::builder().method(method).uri(path);
            if let Some(key) = key {
                req = req.header("authorization", format!("Bearer {key}"));
            }
            block_on(service.call(req.body(String::new()).unwrap())).unwrap()
        };
        let mut out = Vec::new();
        for _ in 0..10 {
            out.push(seen(&send("GET", "/v1/files", Some("sk_live_free"))));
        }
        // Runs: the first two hold their permits (bodies kept), the third is refused.
        let held: Vec<_> = (0..3)
            .map(|_| send("POST", "/v1/excel/generate", Some("sk_live_pro")))
            .collect();
        out.extend(held.iter().map(seen));
        // A `GET` while both permits are held: not a run, asks none.
        out.push(seen(&send("GET", "/v1/files", Some("sk_live_pro"))));
        drop(held);
        out.push(seen(&send(
            "POST",
            "/v1/excel/generate",
            Some("sk_live_pro"),
        )));
        out.push(seen(&send("GET", "/v1/files", None)));
        out.push(seen(&send("GET", "/v1/files", Some("sk_live_unknown"))));
        out.push(seen(&send("GET", "/v1/files", Some("sk_live_gone"))));
        out
    }

    #[test]
    fn stores_that_answer_at_once_and_stores_that_are_waited_for_answer_alike() {
        let at_once = replay(&layer(Arc::new(accounts()), Arc::new(MemoryStore::new())));
        let waits = Flaky::up();
        let waited = replay(&layer(
            Arc::new(WaitingAccounts(accounts())),
            Arc::clone(&waits) as Arc<dyn Store>,
        ));
        assert_eq!(at_once, waited);
        let statuses: Vec<u16> = at_once.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            statuses,
            [
                200, 200, 200, 200, 200, 429, 429, 429, 429, 429, 200, 200, 429, 200, 200, 401,
                401, 403
            ]
        );
        // Asked once a request that reaches it: the five admitted free requests, the sixth
        // (over: the near-cache answers the next four), four runs, the pro `GET`. Never
        // twice.
        assert_eq!(waits.admits.load(Ordering::SeqCst), 6 + 4 + 1);
        // 1_700_000_010 is in the window ending at 1_700_000_040.
        assert!(
            at_once[0]
                .1
                .contains(&("x-ratelimit-reset".into(), "1700000040".into()))
        );
        assert!(
            at_once[0]
                .1
                .contains(&("x-ratelimit-remaining".into(), "4".into()))
        );
    }

    /// An inner service that panics in `call` (`in_call`) or when its future is polled.
    #[derive(Clone)]
    struct Panics {
        in_call: bool,
    }

    impl Service<Request<Limited<String>>> for Panics {
        type Response = Response<String>;
        type Error = Infallible;
        type Future =
            std::pin::Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Limited<String>>) -> Self::Future {
            assert!(!self.in_call, "secret: call");
            Box::pin(std::future::poll_fn(
                |_| -> Poll<Result<Response<String>, Infallible>> { panic!("secret: poll") },
            ))
        }
    }

    #[test]
    fn a_panic_in_call_or_poll_is_a_stamped_500_and_its_permit_goes_back() {
        let waits = Flaky::up();
        let at_once = Arc::new(MemoryStore::new());
        let hash = KeyHash::of("sk_live_pro");
        for in_call in [true, false] {
            for (store, held) in [
                (Arc::clone(&at_once) as Arc<dyn Store>, &*at_once),
                (Arc::clone(&waits) as Arc<dyn Store>, &waits.inner),
            ] {
                let mut service = layer(Arc::new(accounts()), store).layer(Panics { in_call });
                let req = Request::post("/v1/excel/generate")
                    .header("authorization", "Bearer sk_live_pro")
                    .body(String::new())
                    .unwrap();
                let response = block_on(service.call(req)).unwrap();
                assert_eq!(response.status(), 500);
                let err = response.extensions().get::<ApiError>().unwrap();
                assert_eq!(err.wire_code(), "internal_error");
                assert!(!err.message().contains("secret"));
                assert!(response.headers().contains_key("x-ratelimit-remaining"));
                assert_eq!(held.runs(&hash), 0, "the permit went back ({in_call})");
            }
        }
        assert_eq!(waits.admits.load(Ordering::SeqCst), 2);
    }

    /// A shared store that answers only through `admit` (it must be waited for, as Redis),
    /// down (every admission fails) while `up` is not set; counts the admissions asked of it.
    struct Flaky {
        inner: MemoryStore,
        up: std::sync::atomic::AtomicBool,
        admits: AtomicUsize,
    }

    impl Flaky {
        fn down() -> Arc<Flaky> {
            Arc::new(Flaky {
                inner: MemoryStore::new(),
                up: std::sync::atomic::AtomicBool::new(false),
                admits: AtomicUsize::new(0),
            })
        }

        fn up() -> Arc<Flaky> {
            let store = Flaky::down();
            store.up.store(true, Ordering::SeqCst);
            store
        }
    }

    impl Store for Flaky {
        fn admit<'a>(&'a self, admit: Admit<'a>) -> BoxFuture<'a, Result<Admission, StoreError>> {
            self.admits.fetch_add(1, Ordering::SeqCst);
            if self.up.load(Ordering::SeqCst) {
                self.inner.admit(admit)
            } else {
                Box::pin(std::future::ready(Err(StoreError::Timeout(
                    std::time::Duration::from_millis(250),
                ))))
            }
        }
        fn release(&self, key: &KeyHash, permit: PermitId) {
            self.inner.release(key, permit);
        }
        fn renew<'a>(
            &'a self,
            key: &'a KeyHash,
            permit: PermitId,
            lease: std::time::Duration,
        ) -> BoxFuture<'a, Result<bool, StoreError>> {
            self.inner.renew(key, permit, lease)
        }
    }

    fn get(service: &mut Gateway<Ok200>, key: Option<&str>) -> Response<GatewayBody<String>> {
        let mut req = Request::get("/v1/files");
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        block_on(service.call(req.body(String::new()).unwrap())).unwrap()
    }

    fn header<'a, B>(response: &'a Response<B>, name: &str) -> Option<&'a str> {
        response.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn degraded_mode_counts_a_share_locally_probes_once_a_second_and_ends_with_the_outage() {
        let flaky = Flaky::down();
        let layer = layer(Arc::new(accounts()), Arc::clone(&flaky) as Arc<dyn Store>)
            .with_limits(
                Tier::Free,
                TierLimits::of(Tier::Free).requests_per_minute(6),
            )
            .on_store_error(StoreFailure::local(2));
        // The first probe is due at once (as if the layer had been up for a while).
        let mut config = (*layer.config).clone();
        config.epoch = Instant::now()
            .checked_sub(std::time::Duration::from_secs(5))
            .unwrap();
        let config = Arc::new(config);
        let mut service = Gateway::new(Ok200, Arc::clone(&config));
        // Down: each request counted here against this replica's share, 6 / 2 = 3.
        let started = Instant::now();
        let answers: Vec<_> = (0..5)
            .map(|_| get(&mut service, Some("sk_live_free")))
            .collect();
        let took = started.elapsed().as_secs();
        let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
        assert_eq!(statuses, [200, 200, 200, 429, 429]);
        for r in &answers {
            assert_eq!(header(r, "x-ratelimit-scope"), Some("replica"));
            assert_eq!(header(r, "x-ratelimit-limit"), Some("3"));
        }
        assert_eq!(header(&answers[0], "x-ratelimit-remaining"), Some("2"));
        // Asked by the first request (which found it down) and by the one probe due (one
        // more a second, should a loaded machine make the five requests slow); the others
        // were counted here at once.
        let asked = flaky.admits.load(Ordering::SeqCst);
        let most = usize::try_from(took)
            .unwrap_or(usize::MAX)
            .saturating_add(2);
        assert!(
            (2..=most).contains(&asked) && asked < 5,
            "the store was asked {asked} times in {took} s"
        );
        assert!(config.outage.is_down());
        // Back: the next probe (a second later) is counted in the shared store and ends
        // the outage; what follows is shared again.
        flaky.up.store(true, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        for _ in 0..2 {
            let r = get(&mut service, Some("sk_live_free"));
            assert_eq!(r.status(), 200);
            assert_eq!(header(&r, "x-ratelimit-scope"), None);
            assert_eq!(header(&r, "x-ratelimit-limit"), Some("6"));
        }
        assert!(!config.outage.is_down());
    }

    #[test]
    fn an_outage_under_the_default_policy_is_one_outage_and_its_503s_are_marked() {
        let flaky = Flaky::down();
        let layer = layer(Arc::new(accounts()), Arc::clone(&flaky) as Arc<dyn Store>);
        let mut service = layer.layer(Ok200);
        for _ in 0..3 {
            let r = get(&mut service, Some("sk_live_free"));
            assert_eq!(r.status(), 503);
            assert!(r.extensions().get::<OutageAnswer>().is_some());
            assert_eq!(header(&r, "x-ratelimit-scope"), None);
        }
        let r = get(&mut service, None);
        assert_eq!(r.status(), 401);
        assert!(r.extensions().get::<OutageAnswer>().is_none());
        // Three failures of one outage, not three outages.
        assert_eq!(layer.config.outage.failures(), 3);
        assert!(layer.config.outage.is_down());
    }
}
