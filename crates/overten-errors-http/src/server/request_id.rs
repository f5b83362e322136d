//! Request ids (feature `tower`): one layer that keeps a valid incoming id, makes one
//! otherwise and copies it onto the response; ids follow the core's rule.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use std::future::Future;
use std::pin::Pin;

use http::header::HeaderValue;
use http::{Request, Response};
use overten_errors::{RandomSource, SplitMix64, check_id};
use tower_http::request_id::{MakeRequestId, RequestId};
use tower_layer::Layer;
use tower_service::Service;

use crate::client::process_seed;
use crate::names;

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
    pub(crate) fn next_bytes(&self) -> [u8; 28] {
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

/// Request ids in one layer: an incoming `X-Request-Id` that follows the core's id rule
/// ([`check_id`]) is kept; one that breaks it is dropped; a request without a valid one gets
/// a new id (`req_` + 24 hex digits, [`MakeReqId`]) in its headers, where handlers and
/// [`EnvelopeLayer`](super::EnvelopeLayer) read it. The response gets the request's id
/// unless it already carries an `X-Request-Id` of its own.
///
/// It does what tower-http's `SetRequestIdLayer` and `PropagateRequestIdLayer` do behind
/// [`SanitizeRequestIdLayer`] (which stay usable, with [`MakeReqId`]), in one service and
/// one future, and without tower-http's `RequestId` extensions: at most one allocation a
/// request (a made id's bytes, shared by the request's header and the response's).
#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer {
    make: MakeReqId,
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService {
            inner,
            make: self.make.clone(),
        }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
    make: MakeReqId,
}

/// Whether `value` is an id a client would keep.
fn valid_id(value: &HeaderValue) -> bool {
    std::str::from_utf8(value.as_bytes()).is_ok_and(|s| check_id(s).is_ok())
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequestIdService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let id = match req.headers().get(&*names::REQUEST_ID) {
            // The client's own: the response echoes the same value (a shared copy).
            Some(value) if valid_id(value) => value.clone(),
            _ => {
                let made = made_id(&self.make);
                req.headers_mut()
                    .insert(names::REQUEST_ID.clone(), made.clone());
                made
            }
        };
        RequestIdFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

/// A new id as a header value: one allocation, shared by the request's header and the
/// response's.
pub(crate) fn made_id(make: &MakeReqId) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(make.next_bytes()))
        // `req_` and hex digits: always a valid header value.
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

pin_project_lite::pin_project! {
    /// The future of [`RequestIdService`].
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, ResB, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.inner.poll(cx) {
            Poll::Ready(Ok(response)) => response,
            other => return other,
        };
        if !response.headers().contains_key(&*names::REQUEST_ID) {
            if let Some(value) = this.id.take() {
                response
                    .headers_mut()
                    .insert(names::REQUEST_ID.clone(), value);
            }
        }
        Poll::Ready(Ok(response))
    }
}

/// The request-id layer of the recommended stack: [`RequestIdLayer`].
pub type RequestIdLayers = RequestIdLayer;

/// [`RequestIdLayers`], ready to `.layer(...)`.
pub fn request_id_layers() -> RequestIdLayers {
    RequestIdLayer::default()
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

    /// Answers with the id its request carried (`seen`), and with an id of its own when
    /// `own` is set.
    fn answer(own: Option<&'static str>, req: &Request<()>) -> Response<()> {
        let mut response = Response::new(());
        if let Some(seen) = req.headers().get("x-request-id") {
            response.headers_mut().insert("seen", seen.clone());
        }
        if let Some(own) = own {
            response
                .headers_mut()
                .insert("x-request-id", HeaderValue::from_static(own));
        }
        response
    }

    fn send(own: Option<&'static str>, incoming: &[&[u8]]) -> Response<()> {
        let mut req = Request::new(());
        for id in incoming {
            req.headers_mut()
                .append("x-request-id", HeaderValue::from_bytes(id).unwrap());
        }
        let inner = tower::service_fn(move |req: Request<()>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(answer(own, &req)))
        });
        let mut future = std::pin::pin!(RequestIdLayer::default().layer(inner).call(req));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(response)) => response,
            _ => panic!("the inner service answers at once"),
        }
    }

    #[test]
    fn a_valid_incoming_id_is_kept_and_echoed() {
        let response = send(None, &[b"client-42"]);
        assert_eq!(response.headers()["seen"], "client-42");
        assert_eq!(response.headers()["x-request-id"], "client-42");
        // Several: the first decides, as before (tower-http's layers read the first).
        let response = send(None, &[b"first", b"second"]);
        assert_eq!(response.headers()["x-request-id"], "first");
    }

    #[test]
    fn a_missing_or_invalid_id_is_replaced_by_one_made_here_on_both_sides() {
        let long = [b'x'; 300];
        for incoming in [
            &[][..],
            &[&b"a b"[..]][..],
            &[&b"req_\xe9"[..]][..],
            &[&long[..]][..],
        ] {
            let response = send(None, incoming);
            let sent = response.headers()["x-request-id"].to_str().unwrap();
            assert_eq!(
                response.headers()["seen"],
                sent,
                "the handler saw the same id"
            );
            assert_eq!(sent.len(), 28, "{sent}");
            assert_eq!(check_id(sent), Ok(sent));
            assert!(sent.starts_with("req_"));
        }
        let (a, b) = (send(None, &[]), send(None, &[]));
        assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
    }

    #[test]
    fn a_response_with_its_own_id_keeps_it() {
        let response = send(Some("req_from_the_handler"), &[b"client-42"]);
        assert_eq!(response.headers()["x-request-id"], "req_from_the_handler");
        assert_eq!(response.headers().get_all("x-request-id").iter().count(), 1);
        let response = send(Some("req_from_the_handler"), &[]);
        assert_eq!(response.headers()["x-request-id"], "req_from_the_handler");
    }

    #[test]
    fn the_standalone_pieces_still_do_their_part() {
        // `MakeReqId` as tower-http's id maker: an id that follows the rule.
        let mut make = MakeReqId::default();
        let id = make.make_request_id(&Request::new(())).unwrap();
        let id = id.header_value().to_str().unwrap();
        assert_eq!((id.len(), check_id(id)), (28, Ok(id)));
        // `SanitizeRequestIdLayer`: a valid id passes, an invalid one is dropped.
        for (incoming, kept) in [(&b"client-42"[..], true), (&b"a b"[..], false)] {
            let inner = tower::service_fn(|req: Request<()>| {
                std::future::ready(Ok::<_, std::convert::Infallible>(answer(None, &req)))
            });
            let mut req = Request::new(());
            req.headers_mut()
                .insert("x-request-id", HeaderValue::from_bytes(incoming).unwrap());
            let mut future = std::pin::pin!(SanitizeRequestIdLayer.layer(inner).call(req));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
                panic!("the inner service answers at once");
            };
            assert_eq!(
                response.headers().contains_key("seen"),
                kept,
                "{incoming:?}"
            );
        }
    }
}
