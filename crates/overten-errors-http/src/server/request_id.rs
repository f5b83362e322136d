//! Request ids (feature `tower`): tower-http's set and propagate layers, with ids that
//! follow the core's rule.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::Request;
use http::header::HeaderValue;
use overten_errors::{RandomSource, SplitMix64, check_id};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_layer::{Layer, Stack};
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
}
