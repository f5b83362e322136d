//! tower layers (feature `tower`) for any `http` service (axum, plain hyper, tonic's HTTP
//! side): request ids, envelopes for framework-made errors with one log line, and a
//! per-key, per-minute rate limiter by tier.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::{Either, Full};
use overten_errors::{
    ApiError, Code, ErrorCode, RATE_LIMIT_WINDOW_SECONDS, RandomSource, RateLimit, RetryAfter,
    SplitMix64, Tier, check_id,
};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_layer::{Layer, Stack};
use tower_service::Service;

use crate::names::{self, bearer_key};
use crate::retrier::process_seed;
use crate::server::{into_response, set_rate_limit_headers};

// ----------------------------------------------------------------------------- request ids

/// Makes request ids `req_` + 24 hex digits (28 characters), from a per-process seed.
#[derive(Debug, Clone)]
pub struct MakeReqId {
    state: Arc<AtomicU64>,
}

impl Default for MakeReqId {
    fn default() -> Self {
        MakeReqId {
            state: Arc::new(AtomicU64::new(process_seed())),
        }
    }
}

impl MakeReqId {
    /// The next id's 28 bytes: `req_` and 24 lowercase hex digits.
    fn next_bytes(&self) -> [u8; 28] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let seed = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let mut rng = SplitMix64::new(seed);
        let digits = u128::from(rng.next_u64()) << 32 | u128::from(rng.next_u64() >> 32);
        let mut out = *b"req_000000000000000000000000";
        for (i, byte) in out[4..].iter_mut().enumerate() {
            let shift = (23 - i) * 4;
            *byte = HEX[usize::try_from((digits >> shift) & 0xf).unwrap_or(0)];
        }
        out
    }

    /// The next id.
    pub fn next_id(&self) -> String {
        String::from_utf8_lossy(&self.next_bytes()).into_owned()
    }
}

impl MakeRequestId for MakeReqId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        // One allocation: the header value's own copy of the 28 bytes.
        HeaderValue::from_bytes(&self.next_bytes())
            .ok()
            .map(RequestId::new)
    }
}

/// Drops an incoming `X-Request-Id` that breaks the core's id rule ([`check_id`]), so that
/// the next layer makes a new one and no response echoes what a client would drop.
#[derive(Debug, Clone, Copy, Default)]
pub struct SanitizeRequestIdLayer;

impl<S> Layer<S> for SanitizeRequestIdLayer {
    type Service = SanitizeRequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SanitizeRequestId { inner }
    }
}

/// The service of [`SanitizeRequestIdLayer`].
#[derive(Debug, Clone)]
pub struct SanitizeRequestId<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for SanitizeRequestId<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let valid = req
            .headers()
            .get(&*names::REQUEST_ID)
            .is_some_and(|v| std::str::from_utf8(v.as_bytes()).is_ok_and(|s| check_id(s).is_ok()));
        if !valid {
            req.headers_mut().remove(&*names::REQUEST_ID);
        }
        self.inner.call(req)
    }
}

/// The request-id layers, outermost first: drop an invalid incoming `X-Request-Id`, set one
/// when absent (`req_` + 24 hex digits; a valid incoming id is reused), and copy it onto
/// every response. Built from tower-http's `SetRequestIdLayer` and `PropagateRequestIdLayer`.
pub type RequestIdLayers =
    Stack<Stack<PropagateRequestIdLayer, SetRequestIdLayer<MakeReqId>>, SanitizeRequestIdLayer>;

/// [`RequestIdLayers`], ready to `.layer(...)`.
pub fn request_id_layers() -> RequestIdLayers {
    Stack::new(
        Stack::new(
            PropagateRequestIdLayer::new(names::REQUEST_ID.clone()),
            SetRequestIdLayer::new(names::REQUEST_ID.clone(), MakeReqId::default()),
        ),
        SanitizeRequestIdLayer,
    )
}

// ------------------------------------------------------------------------------- envelopes

/// The body of a response that went through [`EnvelopeLayer`]: the inner service's, or an
/// envelope it wrote.
pub type EnvelopeBody<B> = Either<B, Full<Bytes>>;

/// Makes every error response an envelope, and logs each server error once.
///
/// An error response (4xx, 5xx) whose `Content-Type` is not `application/json` was made by
/// the framework or another layer (axum's 404 fallback and 405, a 408 from a timeout layer,
/// a 413 from a body limit, the empty 500 of tower-http's catch-panic): its body is replaced
/// by the envelope of the status's canonical code (`ErrorCode::canonical`) with the page's
/// text; its headers (`Retry-After`, `X-RateLimit-*`, `X-Request-Id`) are kept. A panic's
/// message never reaches the body. JSON error responses are passed through.
///
/// Each 5xx is logged once with `tracing` (request id, code, status, and the cause chain
/// when the response carries its `ApiError`, as `HandlerError` responses do); 4xx at debug.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvelopeLayer;

impl<S> Layer<S> for EnvelopeLayer {
    type Service = Envelope<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Envelope { inner }
    }
}

/// The service of [`EnvelopeLayer`].
#[derive(Debug, Clone)]
pub struct Envelope<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Envelope<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<EnvelopeBody<ResB>>;
    type Error = S::Error;
    type Future = EnvelopeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        EnvelopeFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Envelope`].
    pub struct EnvelopeFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, ResB, E> Future for EnvelopeFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<EnvelopeBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match self.project().inner.poll(cx) {
            Poll::Ready(Ok(r)) => r,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        Poll::Ready(Ok(envelope(response)))
    }
}

fn is_json(response: &Response<impl Sized>) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        })
}

/// Rewrites a framework-made error response into an envelope; logs server errors.
pub fn envelope<B>(response: Response<B>) -> Response<EnvelopeBody<B>> {
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response.map(Either::Left);
    }
    let request_id = response
        .headers()
        .get(&*names::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    if is_json(&response) {
        log(
            &request_id,
            status.as_u16(),
            response.extensions().get::<ApiError>(),
            None,
        );
        return response.map(Either::Left);
    }
    let code = ErrorCode::canonical(status.as_u16());
    let message = if code.status() == status.as_u16() {
        code.when()
    } else {
        status.canonical_reason().unwrap_or("Error")
    };
    let err = ApiError::received(Code::Known(code), status.as_u16(), message);
    log(&request_id, status.as_u16(), None, Some(&err));
    let (mut parts, _) = response.into_parts();
    let written: Response<Vec<u8>> = into_response(&err);
    let (written, body) = written.into_parts();
    parts
        .headers
        .insert(CONTENT_TYPE, written.headers[CONTENT_TYPE].clone());
    parts.headers.remove(CONTENT_LENGTH);
    for (name, value) in &written.headers {
        if !parts.headers.contains_key(name) {
            parts.headers.insert(name.clone(), value.clone());
        }
    }
    Response::from_parts(parts, Either::Right(Full::new(Bytes::from(body))))
}

/// One log line per error response: request id, code, status, and the cause chain.
fn log(request_id: &str, status: u16, sent: Option<&ApiError>, rewritten: Option<&ApiError>) {
    let err = sent.or(rewritten);
    let code = err.map_or("-", ApiError::wire_code);
    let mut chain = String::new();
    let mut cause = err.and_then(std::error::Error::source);
    while let Some(c) = cause {
        if !chain.is_empty() {
            chain.push_str(": ");
        }
        chain.push_str(&c.to_string());
        cause = c.source();
    }
    if status >= 500 {
        tracing::error!(request_id, code, status, cause = %chain, "server error");
    } else {
        tracing::debug!(request_id, code, status, "client error");
    }
}

// ---------------------------------------------------------------------------- rate limits

/// Where the rate limiter counts requests: per key, per window (minute).
///
/// The in-memory [`MemoryStore`] is per process: a fleet of servers behind a load balancer
/// needs a shared store (Redis, a database), plugged in here.
pub trait CounterStore: Send + Sync + 'static {
    /// Counts one request of `key` in `window` (minutes since the epoch) and returns the
    /// count so far, this one included; `None` when the store cannot count (full, down).
    fn hit(&self, key: &str, window: u64) -> Option<u32>;
}

/// The longest part of a key the rate limiter counts by.
pub const MAX_KEY_BYTES: usize = 256;

/// Counters in this process's memory, at most [`MemoryStore::MAX_KEYS`] keys (windows that
/// have ended are dropped first; past that, new keys cannot be counted).
#[derive(Debug, Default)]
pub struct MemoryStore {
    counts: Mutex<HashMap<String, (u64, u32)>>,
}

impl MemoryStore {
    /// The most keys counted at once.
    pub const MAX_KEYS: usize = 100_000;
}

impl CounterStore for MemoryStore {
    fn hit(&self, key: &str, window: u64) -> Option<u32> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if !counts.contains_key(key) && counts.len() >= Self::MAX_KEYS {
            counts.retain(|_, (w, _)| *w == window);
            if counts.len() >= Self::MAX_KEYS {
                return None;
            }
        }
        // A key seen before costs no allocation.
        let entry = match counts.get_mut(key) {
            Some(entry) => entry,
            None => counts.entry(key.to_owned()).or_insert((window, 0)),
        };
        if entry.0 != window {
            *entry = (window, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        Some(entry.1)
    }
}

/// A per-key, per-minute rate limiter by [`Tier`], as the API's gateway does: a request
/// over the tier's limit gets 429 `rate_limit_exceeded` with `Retry-After` (the seconds to
/// the window's end) and is not passed on; every response to a keyed request carries
/// `X-RateLimit-Limit`, `-Remaining` and `-Reset`. Requests without a bearer key pass
/// uncounted (authentication is another layer's job). A store that cannot count answers
/// 503 `service_unavailable`.
pub struct RateLimitLayer<S = MemoryStore> {
    tier: Tier,
    store: Arc<S>,
    clock: fn() -> SystemTime,
}

impl<S> std::fmt::Debug for RateLimitLayer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("tier", &self.tier)
            .finish_non_exhaustive()
    }
}

impl<S> Clone for RateLimitLayer<S> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            tier: self.tier,
            store: Arc::clone(&self.store),
            clock: self.clock,
        }
    }
}

impl RateLimitLayer<MemoryStore> {
    /// A limiter for `tier` counting in this process's memory.
    pub fn new(tier: Tier) -> Self {
        RateLimitLayer::with_store(tier, Arc::new(MemoryStore::default()))
    }
}

impl<S: CounterStore> RateLimitLayer<S> {
    /// A limiter for `tier` counting in `store`.
    pub fn with_store(tier: Tier, store: Arc<S>) -> Self {
        RateLimitLayer {
            tier,
            store,
            clock: SystemTime::now,
        }
    }

    /// Reads "now" from `clock` (for tests).
    #[must_use]
    pub fn with_clock(mut self, clock: fn() -> SystemTime) -> Self {
        self.clock = clock;
        self
    }
}

impl<Svc, S> Layer<Svc> for RateLimitLayer<S> {
    type Service = RateLimited<Svc, S>;
    fn layer(&self, inner: Svc) -> Self::Service {
        RateLimited {
            inner,
            limits: self.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
pub struct RateLimited<Svc, S = MemoryStore> {
    inner: Svc,
    limits: RateLimitLayer<S>,
}

impl<Svc: Clone, S> Clone for RateLimited<Svc, S> {
    fn clone(&self) -> Self {
        RateLimited {
            inner: self.inner.clone(),
            limits: self.limits.clone(),
        }
    }
}

impl<Svc, S> std::fmt::Debug for RateLimited<Svc, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimited").finish_non_exhaustive()
    }
}

impl<Svc, S, ReqB, ResB> Service<Request<ReqB>> for RateLimited<Svc, S>
where
    Svc: Service<Request<ReqB>, Response = Response<ResB>>,
    S: CounterStore,
{
    type Response = Response<EnvelopeBody<ResB>>;
    type Error = Svc::Error;
    type Future = RateLimitFuture<Svc::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let Some(key) = bearer_key(req.headers()) else {
            return RateLimitFuture::pass(self.inner.call(req), None);
        };
        // A key is counted by its first `MAX_KEY_BYTES` (header values are visible ASCII,
        // so any byte is a boundary): what a client sends cannot grow the store's memory
        // past `MAX_KEYS` times this.
        let key = key.get(..key.len().min(MAX_KEY_BYTES)).unwrap_or(key);
        let now = (self.limits.clock)()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let window = now / RATE_LIMIT_WINDOW_SECONDS;
        let reset = window
            .saturating_add(1)
            .saturating_mul(RATE_LIMIT_WINDOW_SECONDS);
        let limit = self.limits.tier.requests_per_minute();
        let Some(count) = self.limits.store.hit(key, window) else {
            let err = ApiError::from(ErrorCode::ServiceUnavailable);
            return RateLimitFuture::answer(into_response(&err));
        };
        let rate_limit = RateLimit {
            limit,
            remaining: limit.saturating_sub(count),
            reset,
        };
        if count > limit {
            let err = ApiError::from(ErrorCode::RateLimitExceeded)
                .with_rate_limit(rate_limit)
                .with_retry_after(RetryAfter::Seconds(reset.saturating_sub(now).max(1)));
            return RateLimitFuture::answer(into_response(&err));
        }
        RateLimitFuture::pass(self.inner.call(req), Some(rate_limit))
    }
}

pin_project_lite::pin_project! {
    /// The future of [`RateLimited`].
    pub struct RateLimitFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Passed on; stamp the headers on the way out.
        Pass { #[pin] inner: F, stamp: Option<RateLimit> },
        // Answered here (429, or 503 when the store cannot count).
        Answer { response: Option<Response<Vec<u8>>> },
    }
}

impl<F> RateLimitFuture<F> {
    fn pass(inner: F, stamp: Option<RateLimit>) -> Self {
        RateLimitFuture {
            state: State::Pass { inner, stamp },
        }
    }

    fn answer(response: Response<Vec<u8>>) -> Self {
        RateLimitFuture {
            state: State::Answer {
                response: Some(response),
            },
        }
    }
}

impl<F, ResB, E> Future for RateLimitFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<EnvelopeBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Pass { inner, stamp } => match inner.poll(cx) {
                Poll::Ready(Ok(mut response)) => {
                    if let Some(rl) = stamp {
                        set_rate_limit_headers(response.headers_mut(), rl);
                    }
                    Poll::Ready(Ok(response.map(Either::Left)))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            StateProj::Answer { response } => {
                let response = response
                    .take()
                    .unwrap_or_else(|| into_response(&ApiError::from(ErrorCode::InternalError)));
                Poll::Ready(Ok(
                    response.map(|b| Either::Right(Full::new(Bytes::from(b))))
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_follow_the_rule_and_differ() {
        let make = MakeReqId::default();
        let (a, b) = (make.next_id(), make.next_id());
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 28);
            assert!(id.starts_with("req_"));
            assert_eq!(check_id(&id), Ok(id.as_str()));
        }
    }

    #[test]
    fn the_memory_store_counts_per_key_and_window() {
        let store = MemoryStore::default();
        assert_eq!(store.hit("a", 1), Some(1));
        assert_eq!(store.hit("a", 1), Some(2));
        assert_eq!(store.hit("b", 1), Some(1));
        assert_eq!(store.hit("a", 2), Some(1), "a new window starts afresh");
    }

    #[test]
    fn bearer_keys() {
        let req = |v: &str| {
            Request::get("/")
                .header("authorization", v)
                .body(())
                .unwrap()
        };
        assert_eq!(bearer_key(req("Bearer k1").headers()), Some("k1"));
        assert_eq!(bearer_key(req("bearer   k1 ").headers()), Some("k1"));
        assert_eq!(bearer_key(req("Basic k1").headers()), None);
        assert_eq!(bearer_key(req("Bearer k1 k2").headers()), None);
        assert_eq!(bearer_key(req("Bearer").headers()), None);
    }
}
