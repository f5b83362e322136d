//! The equal-work floor: one hand-written layer that does only what the page and the
//! handlers' contract need of a keyed `GET`, with no tracing, no envelope check, no
//! catch-panic, no near-cache or outage bookkeeping, and no boxed future: the bearer key
//! read and checked as the gateway checks it, its SHA-256 ([`KeyHash::of`]), the account
//! looked up under a read lock and cloned, the window counted under a mutex, a request id
//! made, the `Account` and `TierLimits` put in the request's extensions, the four headers
//! written. What the full stack costs above it is the price of everything else it does.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use axum::body::Body;
use http::{HeaderValue, Request, Response};
use overten_errors::{RateLimit, Tier};
use overten_errors_http::server::MakeReqId;
use overten_gateway::{Account, KeyHash, TierLimits};
use tower::Service;
use tower_http::request_id::MakeRequestId;

pub(crate) struct State {
    accounts: RwLock<HashMap<KeyHash, Account>>,
    counts: Mutex<HashMap<KeyHash, (u64, u64)>>,
    make: Mutex<MakeReqId>,
}

#[derive(Clone)]
pub(crate) struct Floor<S> {
    pub(crate) inner: S,
    pub(crate) state: Arc<State>,
}

pub(crate) fn state() -> Arc<State> {
    let mut accounts = HashMap::new();
    accounts.insert(
        KeyHash::of("sk_live_bench"),
        Account::new("org_bench", Tier::Enterprise),
    );
    Arc::new(State {
        accounts: RwLock::new(accounts),
        counts: Mutex::new(HashMap::new()),
        make: Mutex::new(MakeReqId::default()),
    })
}

pin_project_lite::pin_project! {
    #[project = FloorProj]
    pub(crate) enum FloorFuture<F> {
        Inner { #[pin] inner: F, stamp: RateLimit, id: Option<HeaderValue> },
        Refused { status: u16 },
    }
}

impl<F, E> Future for FloorFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FloorProj::Inner { inner, stamp, id } => {
                let mut response = std::task::ready!(inner.poll(cx))?;
                overten_errors_http::set_rate_limit_headers(response.headers_mut(), stamp);
                if let Some(id) = id.take() {
                    response.headers_mut().insert("x-request-id", id);
                }
                Poll::Ready(Ok(response))
            }
            FloorProj::Refused { status } => {
                let mut response = Response::new(Body::empty());
                *response.status_mut() = http::StatusCode::from_u16(*status).unwrap();
                Poll::Ready(Ok(response))
            }
        }
    }
}

impl<S> Service<Request<Body>> for Floor<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = FloorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(key) = overten_errors_http::live_api_key(req.headers()) else {
            return FloorFuture::Refused { status: 401 };
        };
        let hash = KeyHash::of(key);
        let Some(account) = self.state.accounts.read().unwrap().get(&hash).cloned() else {
            return FloorFuture::Refused { status: 401 };
        };
        let limits = TierLimits::of(account.tier);
        let now = crate::apps::ticking()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let window = now / 60;
        let count = {
            let mut counts = self.state.counts.lock().unwrap();
            let entry = counts.entry(hash).or_insert((window, 0));
            if entry.0 != window {
                *entry = (window, 0);
            }
            entry.1 += 1;
            entry.1
        };
        let limit = limits.requests_per_minute;
        if count > u64::from(limit) {
            return FloorFuture::Refused { status: 429 };
        }
        let id = self
            .state
            .make
            .lock()
            .unwrap()
            .make_request_id(&req)
            .map(|id| id.header_value().clone());
        if let Some(id) = &id {
            req.headers_mut().insert("x-request-id", id.clone());
        }
        req.extensions_mut().insert(account);
        req.extensions_mut().insert(limits);
        let stamp = RateLimit {
            limit,
            remaining: limit.saturating_sub(u32::try_from(count).unwrap_or(u32::MAX)),
            reset: (window + 1) * 60,
        };
        FloorFuture::Inner {
            inner: self.inner.call(req),
            stamp,
            id,
        }
    }
}

/// The floor as a layer for `Router::layer`.
pub(crate) fn layer<S>() -> impl tower::Layer<S, Service = Floor<S>> + Clone {
    let state = state();
    tower::layer::layer_fn(move |inner| Floor {
        inner,
        state: state.clone(),
    })
}
