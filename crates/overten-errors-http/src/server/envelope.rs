//! Envelopes for framework-made errors, and one log line per server error (feature `tower`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::{Either, Full};
use overten_errors::{ApiError, Code, ErrorCode, check_id};
use tower_layer::Layer;
use tower_service::Service;

use super::{MakeReqId, into_response};
use crate::names;

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
/// Each request runs in one `tracing` span, `request`, with the fields `request_id`,
/// `method`, `path` and `org_id` (recorded by the gateway once the key is resolved). Each
/// 5xx is logged once, at error, with the request id, code, status and the cause chain
/// when the response carries its `ApiError` (as `HandlerError`, the gateway's answers and
/// [`PanicEnvelope`] do); 4xx at debug. The request id is read from the request, so place
/// this layer inside the request-id layers (as `overten_gateway::stack` does).
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
        let request_id = Id::new(
            req.headers()
                .get(&*names::REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
        );
        let span = request_span(request_id.as_str(), &req);
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        EnvelopeFuture {
            inner,
            span,
            request_id,
        }
    }
}

/// The span each request runs in: `request`, with `request_id`, `method`, `path`, and
/// `org_id` empty until the gateway records it.
fn request_span<B>(request_id: &str, req: &Request<B>) -> tracing::Span {
    tracing::error_span!(
        "request",
        request_id,
        method = %req.method(),
        path = req.uri().path(),
        org_id = tracing::field::Empty,
    )
}

/// Request ids and envelopes in one layer: what [`RequestIdLayer`](super::RequestIdLayer)
/// outside [`EnvelopeLayer`] does, in one service and one future (the recommended stack,
/// `overten_gateway::stack`, uses it). An incoming `X-Request-Id` that follows the core's
/// id rule is kept, any other is replaced by one made here; the request runs in the
/// `request` span; a framework-made error response becomes an envelope and each error is
/// logged once; the response carries the request's id unless it has one of its own.
#[derive(Debug, Clone, Default)]
pub struct ContractLayer {
    make: MakeReqId,
}

impl<S> Layer<S> for ContractLayer {
    type Service = Contract<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Contract {
            inner,
            make: self.make.clone(),
        }
    }
}

/// The service of [`ContractLayer`].
#[derive(Debug, Clone)]
pub struct Contract<S> {
    inner: S,
    make: MakeReqId,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Contract<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<EnvelopeBody<ResB>>;
    type Error = S::Error;
    type Future = ContractFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let kept = req
            .headers()
            .get(&*names::REQUEST_ID)
            .filter(|v| v.to_str().is_ok_and(|id| check_id(id).is_ok()))
            .cloned();
        let request_id = kept.unwrap_or_else(|| {
            let made = super::request_id::made_id(&self.make);
            req.headers_mut()
                .insert(names::REQUEST_ID.clone(), made.clone());
            made
        });
        let span = request_span(request_id.to_str().unwrap_or("-"), &req);
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ContractFuture {
            inner,
            span,
            request_id,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Contract`].
    pub struct ContractFuture<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        // Visible ASCII: a kept id passed `check_id`, a made one is `req_` and hex digits.
        request_id: HeaderValue,
    }
}

impl<F, ResB, E> Future for ContractFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<EnvelopeBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let response = match this.inner.poll(cx) {
            Poll::Ready(Ok(r)) => r,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let mut response = rewrite(response, this.request_id.to_str().unwrap_or("-"));
        if !response.headers().contains_key(&*names::REQUEST_ID) {
            response
                .headers_mut()
                .insert(names::REQUEST_ID.clone(), this.request_id.clone());
        }
        Poll::Ready(Ok(response))
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Envelope`].
    pub struct EnvelopeFuture<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        request_id: Id,
    }
}

/// A request id kept for the log line: inline when short (ours are 28 bytes), so the
/// common case allocates nothing.
enum Id {
    Inline { len: u8, buf: [u8; 48] },
    Heap(Box<str>),
}

impl Id {
    fn new(id: &str) -> Id {
        let mut buf = [0; 48];
        match (buf.get_mut(..id.len()), u8::try_from(id.len())) {
            (Some(head), Ok(len)) => {
                head.copy_from_slice(id.as_bytes());
                Id::Inline { len, buf }
            }
            _ => Id::Heap(id.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str` whole: valid UTF-8.
            Id::Inline { len, buf } => {
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or("-")
            }
            Id::Heap(id) => id,
        }
    }
}

impl<F, ResB, E> Future for EnvelopeFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<EnvelopeBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let response = match this.inner.poll(cx) {
            Poll::Ready(Ok(r)) => r,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        Poll::Ready(Ok(rewrite(response, this.request_id.as_str())))
    }
}

/// Marks a response answered by a store-failure policy whose outage is already logged by
/// the layer that saw it (once when it starts, a count every few seconds, once when it
/// ends): [`EnvelopeLayer`] logs such a response at debug, not once per request at error.
/// Insert it in the response's extensions.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutageAnswer;

/// Whether `response` says its body is `application/json` (any case, parameters allowed).
pub fn is_json(response: &Response<impl Sized>) -> bool {
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

/// Rewrites a framework-made error response into an envelope; logs server errors with the
/// response's `X-Request-Id`.
pub fn envelope<B>(response: Response<B>) -> Response<EnvelopeBody<B>> {
    let request_id = response
        .headers()
        .get(&*names::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    rewrite(response, &request_id)
}

fn rewrite<B>(response: Response<B>, request_id: &str) -> Response<EnvelopeBody<B>> {
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response.map(Either::Left);
    }
    if is_json(&response) {
        // A store outage is logged by the layer that saw it, once: its requests at debug.
        let quiet = response.extensions().get::<OutageAnswer>().is_some();
        log(
            request_id,
            status.as_u16(),
            response.extensions().get::<ApiError>(),
            None,
            quiet,
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
    log(request_id, status.as_u16(), None, Some(&err), false);
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

/// One log line per error response: request id, code, status, and the cause chain. A
/// `quiet` 5xx (answered during a store outage that is logged on its own) is at debug.
fn log(
    request_id: &str,
    status: u16,
    sent: Option<&ApiError>,
    rewritten: Option<&ApiError>,
    quiet: bool,
) {
    let err = sent.or(rewritten);
    let code = err.map_or("-", ApiError::wire_code);
    let chain = cause_chain(err.and_then(std::error::Error::source));
    if status >= 500 && quiet {
        tracing::debug!(request_id, code, status, cause = %chain, "server error during a store outage");
    } else if status >= 500 {
        tracing::error!(request_id, code, status, cause = %chain, "server error");
    } else {
        tracing::debug!(request_id, code, status, "client error");
    }
}

/// The texts of `cause` and its sources, joined by `": "`, each said once.
///
/// Errors differ on whether a wrapper prints its source: many (`redis::RedisError`, an
/// `io::Error` inside, a `thiserror` variant with `{0}` and `#[source]`) both print it and
/// return it from `source()`. A text the chain already ends with is not repeated, so
/// `a: b` followed by `b` stays `a: b`.
pub(crate) fn cause_chain(mut cause: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut chain = String::new();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !chain.ends_with(text.as_str()) {
            if !chain.is_empty() {
                chain.push_str(": ");
            }
            chain.push_str(&text);
        }
        cause = c.source();
    }
    chain
}

/// A handler's panic, as the cause of the 500 [`PanicEnvelope`] answers with: its text is
/// for the log line only.
#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {0}")]
pub struct Panicked(String);

/// tower-http's `CatchPanicLayer::custom(PanicEnvelope)`: a panic becomes the 500
/// `internal_error` envelope, the panic's text kept as the error's cause, so that
/// [`EnvelopeLayer`] logs it once with the request id. The text never reaches the client.
#[derive(Debug, Clone, Copy, Default)]
pub struct PanicEnvelope;

impl tower_http::catch_panic::ResponseForPanic for PanicEnvelope {
    type ResponseBody = Full<Bytes>;

    fn response_for_panic(
        &mut self,
        err: Box<dyn std::any::Any + Send + 'static>,
    ) -> Response<Full<Bytes>> {
        crate::server::response::answer(PanicEnvelope::error(&*err), |b| Full::new(Bytes::from(b)))
    }
}

impl PanicEnvelope {
    /// The error a panic is answered with: 500 `internal_error`, the panic's text (from
    /// its payload, as `std::panic::catch_unwind` gives it) kept as the cause for the log
    /// line only.
    ///
    /// ```
    /// use overten_errors_http::server::PanicEnvelope;
    /// let payload = std::panic::catch_unwind(|| panic!("secret detail")).unwrap_err();
    /// let err = PanicEnvelope::error(&*payload);
    /// assert_eq!(err.status(), 500);
    /// assert!(!err.message().contains("secret detail"));
    /// assert!(std::error::Error::source(&err).unwrap().to_string().contains("secret detail"));
    /// ```
    pub fn error(payload: &(dyn std::any::Any + Send)) -> ApiError {
        let text = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a value that is not text".to_owned()
        };
        ApiError::internal(Panicked(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wraps(&'static str, Option<Box<Wraps>>);
    impl std::fmt::Display for Wraps {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wraps {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn a_cause_chain_says_each_text_once() {
        // The store error prints its source, which prints its own: the log line of issue 25.
        let io = Wraps("Connection refused (os error 111)", None);
        let redis = Wraps("Connection refused (os error 111)", Some(Box::new(io)));
        let store = Wraps(
            "the store failed: Connection refused (os error 111)",
            Some(Box::new(redis)),
        );
        assert_eq!(
            cause_chain(Some(&store)),
            "the store failed: Connection refused (os error 111)"
        );
        // Sources that add something new are all kept, in order.
        let inner = Wraps("disk full", None);
        let outer = Wraps("write failed", Some(Box::new(inner)));
        assert_eq!(cause_chain(Some(&outer)), "write failed: disk full");
        assert_eq!(cause_chain(None), "");
        // An empty text adds no separator.
        let empty = Wraps("", Some(Box::new(Wraps("x", None))));
        assert_eq!(cause_chain(Some(&empty)), "x");
    }

    #[test]
    fn ids_are_kept_whole_inline_or_not() {
        for id in [
            "-",
            "req_0123456789abcdef01234567",
            &"r".repeat(48),
            &"r".repeat(49),
            &"r".repeat(256),
        ] {
            assert_eq!(Id::new(id).as_str(), id);
        }
        assert!(matches!(Id::new(&"r".repeat(48)), Id::Inline { .. }));
        assert!(matches!(Id::new(&"r".repeat(49)), Id::Heap(_)));
    }

    /// An inner service answering `status` with `content_type` (and its own id when
    /// `own_id`), echoing the id its request carried in `seen`.
    #[derive(Clone, Copy)]
    struct Inner {
        status: u16,
        content_type: &'static str,
        own_id: bool,
    }

    impl Service<Request<()>> for Inner {
        type Response = Response<Full<Bytes>>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: Request<()>) -> Self::Future {
            let mut response = Response::new(Full::new(Bytes::from_static(b"{\"a\":1}")));
            *response.status_mut() = http::StatusCode::from_u16(self.status).unwrap();
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
            if let Some(seen) = req.headers().get("x-request-id") {
                response.headers_mut().insert("seen", seen.clone());
            }
            if self.own_id {
                response
                    .headers_mut()
                    .insert("x-request-id", HeaderValue::from_static("req_own"));
            }
            std::future::ready(Ok(response))
        }
    }

    /// Status, headers (a made id written as `made`) and body, after `service`.
    fn outcome<S, B>(mut service: S, id: Option<&[u8]>) -> (u16, Vec<(String, String)>, Vec<u8>)
    where
        S: Service<Request<()>, Response = Response<B>>,
        S::Error: std::fmt::Debug,
        B: http_body::Body,
        B::Error: std::fmt::Debug,
    {
        use http_body_util::BodyExt;
        let mut req = Request::new(());
        if let Some(id) = id {
            req.headers_mut()
                .insert("x-request-id", HeaderValue::from_bytes(id).unwrap());
        }
        let response = crate::block_on(service.call(req)).unwrap();
        let status = response.status().as_u16();
        // An id made by the layer (`req_` and 24 hex digits) differs from run to run.
        let made = |v: &str| {
            v.len() == 28 && v.starts_with("req_") && v[4..].bytes().all(|b| b.is_ascii_hexdigit())
        };
        let mut headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(n, v)| {
                let v = v.to_str().unwrap_or("?");
                (n.to_string(), if made(v) { "made" } else { v }.to_owned())
            })
            .collect();
        // Whether the handler saw the id the response carries, compared before the made
        // ids are blanked.
        let agree = response.headers().get("seen") == response.headers().get("x-request-id");
        headers.push(("agree".to_owned(), agree.to_string()));
        headers.sort();
        let body = crate::block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        (status, headers, body.to_vec())
    }

    #[test]
    fn the_contract_layer_answers_as_request_ids_outside_envelopes_do() {
        let ids: [Option<&[u8]>; 4] = [None, Some(b"client-42"), Some(b"a b"), Some(b"req_\xe9")];
        let mut compared = 0;
        for (status, content_type) in [
            (200, "text/plain"),
            (404, "text/plain"),
            (413, "text/html"),
            (500, "text/plain"),
            (429, "application/json"),
            (503, "application/json; charset=utf-8"),
        ] {
            for own_id in [false, true] {
                for id in ids {
                    let service = Inner {
                        status,
                        content_type,
                        own_id,
                    };
                    let fused = outcome(ContractLayer::default().layer(service), id);
                    let two = outcome(
                        super::super::RequestIdLayer::default().layer(EnvelopeLayer.layer(service)),
                        id,
                    );
                    assert_eq!(fused, two, "{status} {content_type} {own_id} {id:?}");
                    // The handler saw the id the response carries (own ids aside).
                    if !own_id {
                        let get = |name: &str| {
                            fused
                                .1
                                .iter()
                                .find(|(n, _)| n == name)
                                .map(|(_, v)| v.clone())
                        };
                        assert_eq!(get("seen"), get("x-request-id"));
                    }
                    compared += 1;
                }
            }
        }
        assert_eq!(compared, 6 * 2 * 4);
    }
}
