//! The idempotency service: key, fingerprint, claim, then run, replay or refuse.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, HeaderName, TRANSFER_ENCODING};
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use overten_errors::{ApiError, ErrorCode, RetryAfter};
use tower_service::Service;

use super::Config;
use overten_errors_http::server::{Account, OutageAnswer, TierLimits};
use overten_errors_http::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};

use crate::key::KeyHash;
use crate::store::{
    BoxFuture, Claim, ClaimToken, Fingerprint, IdempotencyStore, RecordKey, StoreFailure,
    StoredResponse,
};

/// The service of [`IdempotencyLayer`](super::IdempotencyLayer).
#[derive(Clone)]
pub struct Idempotency<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> std::fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency").finish_non_exhaustive()
    }
}

impl<S> Idempotency<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Idempotency<S> {
        Idempotency { inner, config }
    }
}

type InnerBody<B> = Either<B, Full<Bytes>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for Idempotency<S>
where
    S: Service<Request<InnerBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send,
{
    type Response = Response<IdempotencyBody<ResB>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        Box::pin(handle(config, inner, req))
    }
}

fn answer<B: Body>(err: ApiError) -> Response<IdempotencyBody<B>> {
    overten_errors_http::server::answer(err, |b| IdempotencyBody::full(Bytes::from(b)))
}

/// The key of the request: `None` if absent, `Err` if malformed.
fn idempotency_key(headers: &http::HeaderMap) -> Option<Result<&str, ApiError>> {
    let mut all = headers.get_all(IDEMPOTENCY_KEY).iter();
    let first = all.next()?;
    let bad = || {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "Idempotency-Key must be one header of 1 to 255 visible ASCII characters",
        )
    };
    if all.next().is_some() {
        return Some(Err(bad()));
    }
    let ok = (1..=255).contains(&first.len()) && first.as_bytes().iter().all(u8::is_ascii_graphic);
    // Visible ASCII is valid UTF-8.
    Some(match first.to_str() {
        Ok(key) if ok => Ok(key),
        _ => Err(bad()),
    })
}

/// Request-body bytes a keyed request holds, counted in the layer's total until dropped.
struct Held {
    total: Arc<AtomicUsize>,
    bytes: usize,
}

impl Held {
    /// Counts `n` more bytes, unless the total would pass `max`.
    fn grow(&mut self, n: usize, max: usize) -> bool {
        let before = self.total.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > max {
            self.total.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        self.bytes += n;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Why a keyed request's body was not read.
#[derive(Debug, PartialEq, Eq)]
enum Unread {
    /// Past the upload limit (this layer's, or the gateway's `Limited` below it).
    TooLarge,
    /// Past the layer's bound on bytes held at once.
    Busy,
    /// The body failed to arrive.
    Broken,
}

/// Reads a keyed request's body whole, at most `limit` bytes, each byte counted in `held`
/// against `max_held` before it is kept.
async fn read_keyed<B>(
    body: B,
    limit: usize,
    max_held: usize,
    held: &mut Held,
) -> Result<Bytes, Unread>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut len = 0_usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let e: Box<dyn std::error::Error + Send + Sync> = e.into();
            // The limit's error may come wrapped (axum's `Body` boxes it in its own error).
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
            while let Some(c) = cause {
                if c.is::<http_body_util::LengthLimitError>() {
                    return Unread::TooLarge;
                }
                cause = c.source();
            }
            Unread::Broken
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len = len.saturating_add(data.len());
        if len > limit {
            return Err(Unread::TooLarge);
        }
        if !held.grow(data.len(), max_held) {
            return Err(Unread::Busy);
        }
        // One frame (the common case) is kept as it came, without a copy.
        match first.take() {
            None if rest.is_empty() => first = Some(data),
            None => rest.extend_from_slice(&data),
            Some(f) => {
                rest.extend_from_slice(&f);
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

/// Headers that belong to one response, not to the record: they are made afresh.
fn kept(name: &HeaderName) -> bool {
    !(name == CONTENT_LENGTH
        || name == TRANSFER_ENCODING
        || name == CONNECTION
        || name == DATE
        || name == *overten_errors_http::REQUEST_ID
        || name == *overten_errors_http::RATE_LIMIT_LIMIT
        || name == *overten_errors_http::RATE_LIMIT_REMAINING
        || name == *overten_errors_http::RATE_LIMIT_RESET)
}

/// Gives the claim back unless completed: on a 5xx, a cancellation or a panic.
struct ClaimGuard {
    store: Arc<dyn IdempotencyStore>,
    key: RecordKey,
    token: ClaimToken,
    armed: bool,
}

impl ClaimGuard {
    /// Gives the claim back now and waits for the store to have it (bounded by the store's
    /// timeout); the guard is then spent. Cancelled half-way, the drop gives it back again
    /// (a release is token-checked, so twice is harmless).
    async fn give_back(&mut self) {
        self.store.give_back(&self.key, self.token).await;
        self.armed = false;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if self.armed {
            self.store.release(&self.key, self.token);
        }
    }
}

#[allow(clippy::too_many_lines, reason = "one request's story, in order")]
async fn handle<S, ReqB, ResB>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqB>,
) -> Result<Response<IdempotencyBody<ResB>>, S::Error>
where
    S: Service<Request<InnerBody<ReqB>>, Response = Response<ResB>>,
    ReqB: Body<Data = Bytes>,
    ReqB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResB: Body<Data = Bytes>,
{
    let key = match idempotency_key(req.headers()) {
        None => {
            let response = inner.call(req.map(Either::Left)).await?;
            return Ok(response.map(IdempotencyBody::inner));
        }
        Some(Err(err)) => return Ok(answer(err)),
        Some(Ok(key)) => key.to_owned(),
    };
    let scope = match (
        req.extensions().get::<Account>(),
        req.extensions().get::<KeyHash>(),
    ) {
        (Some(account), _) => account.org_id.to_string(),
        (None, Some(hash)) => hash.to_string(),
        (None, None) => String::new(),
    };
    let record = RecordKey::new(&scope, &key);
    // Behind the gateway the limit is the tier's upload limit, as for any request.
    let tier = req.extensions().get::<Account>().map(|a| a.tier);
    let limit = req
        .extensions()
        .get::<TierLimits>()
        .map_or(config.max_request_bytes, |l| {
            usize::try_from(l.upload_bytes).unwrap_or(usize::MAX)
        });
    let (head, body) = req.into_parts();
    let mut holding = Held {
        total: Arc::clone(&config.buffered),
        bytes: 0,
    };
    let bytes = match read_keyed(body, limit, config.max_buffered_bytes, &mut holding).await {
        Ok(bytes) => bytes,
        Err(Unread::TooLarge) => {
            let limit = u64::try_from(limit).unwrap_or(u64::MAX);
            return Ok(answer(ApiError::upload_too_large(tier, limit)));
        }
        Err(Unread::Busy) => {
            return Ok(answer(
                ApiError::new(
                    ErrorCode::ServiceUnavailable,
                    "Too many large uploads are in progress; retry after the Retry-After delay",
                )
                .with_retry_after(RetryAfter::Seconds(
                    StoreFailure::DEFAULT_RETRY_AFTER.as_secs(),
                )),
            ));
        }
        Err(Unread::Broken) => {
            return Ok(answer(ApiError::new(
                ErrorCode::InvalidRequest,
                "The request body could not be read",
            )));
        }
    };
    let path = head
        .uri
        .path_and_query()
        .map_or(head.uri.path(), |p| p.as_str());
    let fingerprint = Fingerprint::new(&head.method, path, &bytes);
    let token = ClaimToken::new();
    let stopwatch = crate::metrics::Timer::start();
    let claim = config
        .store
        .claim(&record, &fingerprint, token, config.lease)
        .await;
    crate::metrics::store_call(
        "idempotency",
        "claim",
        claim.as_ref().err(),
        stopwatch.seconds(),
    );
    crate::metrics::idempotency(match &claim {
        Err(_) => "refused",
        Ok(Claim::Claimed) => "first",
        Ok(Claim::InProgress { same_request: true }) => "in_progress",
        Ok(Claim::Done {
            same_request: true,
            response: Some(_),
        }) => "replayed",
        Ok(_) => "conflict",
    });
    let request = Request::from_parts(head, Either::Right(Full::new(bytes)));
    let _reported = match &claim {
        Ok(_) => config.outage.succeeded(std::time::Instant::now()),
        Err(err) => config.outage.failed(err, std::time::Instant::now()),
    };
    match claim {
        Err(err) => match config.on_store_error {
            // Degraded mode counts requests locally, but a record cannot be: refused.
            StoreFailure::Reject { .. } | StoreFailure::Local { .. } => {
                let retry_after = config.on_store_error.retry_after();
                let mut response = answer(
                    ApiError::new(
                        ErrorCode::ServiceUnavailable,
                        "Idempotency keys cannot be checked right now; retry after the Retry-After delay",
                    )
                    .with_retry_after(RetryAfter::Seconds(retry_after.as_secs().max(1)))
                    .with_cause(err),
                );
                response.extensions_mut().insert(OutageAnswer);
                return Ok(response);
            }
            StoreFailure::Allow => {
                tracing::debug!(error = %err, "idempotency store failed: request runs without a record");
                let response = inner.call(request).await?;
                return Ok(response.map(IdempotencyBody::inner));
            }
        },
        Ok(Claim::InProgress { same_request: true }) => {
            return Ok(answer(
                ApiError::new(
                    ErrorCode::Conflict,
                    "A request with this Idempotency-Key is still in progress; retry after the Retry-After delay",
                )
                .with_retry_after(RetryAfter::Seconds(
                    config.in_progress_retry_after.as_secs().max(1),
                )),
            ));
        }
        Ok(
            Claim::InProgress {
                same_request: false,
            }
            | Claim::Done {
                same_request: false,
                ..
            },
        ) => {
            return Ok(answer(ApiError::new(
                ErrorCode::Conflict,
                "This Idempotency-Key was used with a different request; use a new key",
            )));
        }
        Ok(Claim::Done { response: None, .. }) => {
            return Ok(answer(ApiError::new(
                ErrorCode::Conflict,
                "This Idempotency-Key was used, and its response was too large to keep for replay; use a new key",
            )));
        }
        Ok(Claim::Done {
            response: Some(stored),
            ..
        }) => return Ok(replay(&stored)),
        Ok(Claim::Claimed) => {}
    }

    let mut guard = ClaimGuard {
        store: Arc::clone(&config.store),
        key: record,
        token,
        armed: true,
    };
    let response = inner.call(request).await?;
    let status = response.status();
    if status.is_server_error() || status == http::StatusCode::REQUEST_TIMEOUT {
        // The key goes back before the answer does: the client's retry (or its resubmission
        // as a task after a 408), sent the moment it reads this, finds the key free.
        guard.give_back().await;
        return Ok(response.map(IdempotencyBody::inner));
    }
    let (parts, body) = response.into_parts();
    let mut body = Box::pin(body);
    // Read the whole body (up to the bound) before sending it: kept even if the client
    // has gone by the time it is sent.
    let mut buf = BytesMut::new();
    let mut too_large = false;
    while !body.is_end_stream() {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > config.max_response_bytes {
                        too_large = true;
                        break;
                    }
                }
            }
            Some(Err(error)) => {
                // Not kept: the key goes back.
                guard.give_back().await;
                let prefix = buf.freeze();
                return Ok(Response::from_parts(
                    parts,
                    IdempotencyBody::failed(prefix, error),
                ));
            }
        }
    }
    let buf = buf.freeze();
    let stored = StoredResponse {
        status,
        headers: parts
            .headers
            .iter()
            .filter(|(n, _)| kept(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
        body: buf.clone(),
    };
    let stopwatch = crate::metrics::Timer::start();
    let saved = config
        .store
        .complete(
            &record,
            &fingerprint,
            token,
            (!too_large).then_some(&stored),
            config.retention,
        )
        .await;
    crate::metrics::store_call(
        "idempotency",
        "complete",
        saved.as_ref().err(),
        stopwatch.seconds(),
    );
    match saved {
        Ok(()) => guard.armed = false,
        Err(error) => {
            config.outage.failed(&error, std::time::Instant::now());
            tracing::debug!(%error, "idempotency record not saved: the key is given back");
            guard.give_back().await;
        }
    }
    let body = if too_large {
        IdempotencyBody::prefixed(buf, body)
    } else {
        IdempotencyBody::full(buf)
    };
    Ok(Response::from_parts(parts, body))
}

fn replay<B: Body>(stored: &StoredResponse) -> Response<IdempotencyBody<B>> {
    let mut response = Response::new(IdempotencyBody::full(stored.body.clone()));
    *response.status_mut() = stored.status;
    for (name, value) in &stored.headers {
        response.headers_mut().append(name.clone(), value.clone());
    }
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}

pin_project_lite::pin_project! {
    /// The body of a response that went through the idempotency layer.
    pub struct IdempotencyBody<B: Body> {
        #[pin]
        state: State<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<B: Body> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
        Prefixed { prefix: Option<Bytes>, rest: Pin<Box<B>> },
        Failed { prefix: Option<Bytes>, error: Option<B::Error> },
    }
}

impl<B: Body> IdempotencyBody<B> {
    fn inner(body: B) -> Self {
        IdempotencyBody {
            state: State::Inner { body },
        }
    }
    fn full(data: Bytes) -> Self {
        IdempotencyBody {
            state: State::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
    fn prefixed(prefix: Bytes, rest: Pin<Box<B>>) -> Self {
        IdempotencyBody {
            state: State::Prefixed {
                prefix: Some(prefix),
                rest,
            },
        }
    }
    fn failed(prefix: Bytes, error: B::Error) -> Self {
        IdempotencyBody {
            state: State::Failed {
                prefix: (!prefix.is_empty()).then_some(prefix),
                error: Some(error),
            },
        }
    }
}

impl<B> Body for IdempotencyBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().state.project() {
            StateProj::Inner { body } => body.poll_frame(cx),
            StateProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            StateProj::Prefixed { prefix, rest } => match prefix.take() {
                Some(p) => Poll::Ready(Some(Ok(Frame::data(p)))),
                None => rest.as_mut().poll_frame(cx),
            },
            StateProj::Failed { prefix, error } => match prefix.take() {
                Some(p) => Poll::Ready(Some(Ok(Frame::data(p)))),
                None => Poll::Ready(error.take().map(Err)),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Inner { body } => body.is_end_stream(),
            State::Full { data } => data.is_none(),
            State::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            State::Failed { prefix, error } => prefix.is_none() && error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Inner { body } => body.size_hint(),
            State::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            State::Prefixed { .. } | State::Failed { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::IdempotencyLayer;
    use crate::store::MemoryIdempotencyStore;

    /// A service that is never ready.
    #[derive(Clone)]
    struct NotReady;

    impl<B> Service<Request<B>> for NotReady {
        type Response = Response<Full<Bytes>>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
        fn call(&mut self, _: Request<B>) -> Self::Future {
            std::future::ready(Ok(Response::new(Full::new(Bytes::new()))))
        }
    }

    #[test]
    fn readiness_is_the_inner_services_and_debug_shows_the_settings() {
        let layer = IdempotencyLayer::new(Arc::new(MemoryIdempotencyStore::new()));
        assert!(format!("{layer:?}").contains("max_response_bytes"));
        let mut svc = tower_layer::Layer::layer(&layer, NotReady);
        assert!(format!("{svc:?}").starts_with("Idempotency"));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let ready = Service::<Request<Full<Bytes>>>::poll_ready(&mut svc, &mut cx);
        assert!(ready.is_pending());
    }

    /// A body that yields "ab" then fails.
    struct Breaks(u8);

    impl Body for Breaks {
        type Data = Bytes;
        type Error = &'static str;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            self.0 += 1;
            Poll::Ready(Some(match self.0 {
                1 => Ok(Frame::data(Bytes::from_static(b"ab"))),
                _ => Err("reset"),
            }))
        }
    }

    fn frames(mut body: IdempotencyBody<Breaks>) -> Vec<Result<Bytes, &'static str>> {
        let mut out = Vec::new();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..10 {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(f))) => out.push(Ok(f.into_data().unwrap_or_default())),
                Poll::Ready(Some(Err(e))) => {
                    out.push(Err(e));
                    break;
                }
                Poll::Ready(None) | Poll::Pending => break,
            }
            if body.is_end_stream() {
                break;
            }
        }
        out
    }

    #[test]
    fn bodies_yield_what_they_hold_and_say_when_they_end() {
        let full = IdempotencyBody::<Breaks>::full(Bytes::from_static(b"abc"));
        assert_eq!(full.size_hint().exact(), Some(3));
        assert!(!full.is_end_stream());
        assert_eq!(frames(full), vec![Ok(Bytes::from_static(b"abc"))]);
        let empty = IdempotencyBody::<Breaks>::full(Bytes::new());
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
        // The part read ahead, then the error, never dropped.
        let failed = IdempotencyBody::<Breaks>::failed(Bytes::from_static(b"xy"), "reset");
        assert!(!failed.is_end_stream());
        assert_eq!(
            frames(failed),
            vec![Ok(Bytes::from_static(b"xy")), Err("reset")]
        );
        let failed = IdempotencyBody::<Breaks>::failed(Bytes::new(), "reset");
        assert_eq!(frames(failed), vec![Err("reset")]);
        // Read ahead, then the rest of the stream.
        let prefixed = IdempotencyBody::prefixed(Bytes::from_static(b"12"), Box::pin(Breaks(0)));
        assert!(!prefixed.is_end_stream());
        assert_eq!(
            frames(prefixed),
            vec![
                Ok(Bytes::from_static(b"12")),
                Ok(Bytes::from_static(b"ab")),
                Err("reset")
            ]
        );
    }

    #[test]
    fn per_response_headers_are_not_kept() {
        for name in [
            CONTENT_LENGTH,
            TRANSFER_ENCODING,
            CONNECTION,
            DATE,
            overten_errors_http::REQUEST_ID.clone(),
            overten_errors_http::RATE_LIMIT_LIMIT.clone(),
            overten_errors_http::RATE_LIMIT_REMAINING.clone(),
            overten_errors_http::RATE_LIMIT_RESET.clone(),
        ] {
            assert!(!kept(&name), "{name}");
        }
        for name in [
            http::header::CONTENT_TYPE,
            http::header::LOCATION,
            http::header::ETAG,
        ] {
            assert!(kept(&name), "{name}");
        }
    }
}

#[cfg(test)]
mod body_tests {
    use super::*;

    /// A body of these frames, then `Err` if `fails`.
    struct Frames(std::collections::VecDeque<Bytes>, bool);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            match self.0.pop_front() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None if self.1 => {
                    self.1 = false;
                    Poll::Ready(Some(Err(std::io::Error::other("reset"))))
                }
                None => Poll::Ready(None),
            }
        }
    }

    fn read(frames: &[&str], fails: bool, limit: usize, max: usize) -> Result<Bytes, Unread> {
        let body = Frames(
            frames
                .iter()
                .map(|f| Bytes::copy_from_slice(f.as_bytes()))
                .collect(),
            fails,
        );
        let mut held = Held {
            total: Arc::new(AtomicUsize::new(0)),
            bytes: 0,
        };
        crate::block_on(read_keyed(body, limit, max, &mut held))
    }

    #[test]
    fn a_keyed_body_is_read_whole_within_both_bounds() {
        assert_eq!(read(&[], false, 10, 10).unwrap(), "");
        assert_eq!(read(&["abc"], false, 10, 10).unwrap(), "abc");
        assert_eq!(read(&["ab", "cd", "ef"], false, 10, 10).unwrap(), "abcdef");
        assert_eq!(read(&["ab", "", "cd"], false, 10, 10).unwrap(), "abcd");
        assert_eq!(
            read(&["abcde", "fghij"], false, 10, 10).unwrap(),
            "abcdefghij"
        );
        assert_eq!(
            read(&["abcde", "fghijk"], false, 10, 100),
            Err(Unread::TooLarge)
        );
        assert_eq!(
            read(&["abcde", "fghijk"], false, 100, 10),
            Err(Unread::Busy)
        );
        assert_eq!(read(&["ab"], true, 10, 10), Err(Unread::Broken));
        // The gateway's limit below, wrapped as axum wraps it: too large, not broken.
        let limited =
            http_body_util::Limited::new(Frames([Bytes::from_static(b"abcdef")].into(), false), 3);
        let mut held = Held {
            total: Arc::new(AtomicUsize::new(0)),
            bytes: 0,
        };
        let got = crate::block_on(read_keyed(limited, 10, 10, &mut held));
        assert_eq!(got, Err(Unread::TooLarge));
    }

    #[test]
    fn held_bytes_are_counted_bounded_and_given_back() {
        let total = Arc::new(AtomicUsize::new(0));
        let mut a = Held {
            total: Arc::clone(&total),
            bytes: 0,
        };
        assert!(a.grow(6, 10));
        assert!(!a.grow(5, 10), "6 + 5 > 10");
        assert!(a.grow(4, 10), "6 + 4 = 10 is within");
        let mut b = Held {
            total: Arc::clone(&total),
            bytes: 0,
        };
        assert!(!b.grow(1, 10));
        assert_eq!(total.load(Ordering::SeqCst), 10);
        drop(a);
        assert_eq!(total.load(Ordering::SeqCst), 0);
        assert!(b.grow(1, 10));
        drop(b);
        assert_eq!(total.load(Ordering::SeqCst), 0);
    }
}
