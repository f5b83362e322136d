//! A per-key, per-minute rate limiter by tier (feature `tower`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use overten_errors::{ApiError, ErrorCode, RATE_LIMIT_WINDOW_SECONDS, RateLimit, RetryAfter, Tier};
use tower_layer::Layer;
use tower_service::Service;

use super::envelope::EnvelopeBody;
use super::{into_response, set_rate_limit_headers};
use crate::names::bearer_key;

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
