//! `reqwest` (feature `reqwest`): a response read into a [`Received`], and a retrying
//! [`reqwest_middleware::Middleware`] that reads the error body, decides, sleeps and
//! retries.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use http::{Extensions, Method};
use http_body::{Body, Frame, SizeHint};
use overten_errors::{Advice, Decision, NOT_REPLAY_SAFE, RandomSource, SplitMix64, StopReason};
use reqwest::ResponseBuilderExt;
use reqwest_middleware::{Middleware, Next};

use super::classify::{BodyIssue, MAX_BODY_BYTES, Received, classify_read};
use super::retrier::Retrier;
use crate::runtime::{Sleep, process_seed};

/// The reason a request whose body is a stream is not sent again.
pub const STREAMING_BODY: &str =
    "the request body is a stream: it cannot be sent again, so it is not retried";

use crate::names::IDEMPOTENCY_KEY;

/// Reads a `reqwest::Response` into a [`Received`] (body capped at [`MAX_BODY_BYTES`]; a
/// `Content-Length` over it is not read at all). The error is the transport's, when the
/// connection broke while reading the body.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let response = reqwest::get("http://127.0.0.1:8080/errors/gone").await?;
/// if !response.status().is_success() {
///     let received = overten_errors_http::received_from_reqwest(response).await?;
///     eprintln!("{}", received.error);
/// }
/// # Ok(()) }
/// ```
pub async fn received_from_reqwest(
    response: reqwest::Response,
) -> Result<Received, reqwest::Error> {
    read_reqwest(response).await.map(|(received, _)| received)
}

/// Reads the body (up to the cap) and classifies, returning the response rebuilt with its
/// body intact: the bytes read, then whatever was left unread.
async fn read_reqwest(
    mut response: reqwest::Response,
) -> Result<(Received, reqwest::Response), reqwest::Error> {
    let declared_too_large = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY_BYTES as u64);
    let mut read = Vec::new();
    let mut too_large = declared_too_large;
    while !too_large {
        match response.chunk().await? {
            Some(chunk) => {
                read.extend_from_slice(&chunk);
                too_large = read.len() > MAX_BODY_BYTES;
            }
            None => break,
        }
    }
    let body: Result<&[u8], BodyIssue> = if too_large {
        Err(BodyIssue::TooLarge)
    } else {
        Ok(&read)
    };
    let received = classify_read(response.status(), response.headers(), body);
    let url = response.url().clone();
    let done = !too_large;
    let (parts, rest) = http::Response::<reqwest::Body>::from(response).into_parts();
    let prefixed = Prefixed {
        prefix: (!read.is_empty()).then(|| Bytes::from(read)),
        rest: (!done).then_some(rest),
    };
    let mut builder = http::Response::builder()
        .status(parts.status)
        .version(parts.version)
        .url(url);
    if let Some(headers) = builder.headers_mut() {
        *headers = parts.headers;
    }
    if let Some(extensions) = builder.extensions_mut() {
        extensions.extend(parts.extensions);
    }
    let rebuilt = match builder.body(reqwest::Body::wrap(prefixed)) {
        Ok(r) => reqwest::Response::from(r),
        // The parts came from a valid response: building them again cannot fail.
        Err(_) => reqwest::Response::from(http::Response::new(reqwest::Body::from(Vec::new()))),
    };
    Ok((received, rebuilt))
}

/// A body that yields the bytes already read, then the rest of the original body.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: Option<reqwest::Body>,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, reqwest::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = self
            .rest
            .as_ref()
            .map_or(SizeHint::with_exact(0), Body::size_hint);
        hint.set_lower(hint.lower() + prefix);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + prefix);
        }
        hint
    }
}

/// Why the middleware returned a non-success response: put in the response's extensions.
#[derive(Debug, Clone)]
pub struct RetryOutcome {
    /// The response read as an error.
    pub received: Received,
    /// The advice that ended the loop: a stop with its reason, or `resubmit_async` (408),
    /// which the caller does by sending the work again with `async: true`.
    pub advice: Advice,
    /// The step of `docs/retry.md` that decided.
    pub step: overten_errors::Step,
    /// Attempts made.
    pub attempts: u32,
}

/// RFC 9110 section 9.2.2: methods whose repetition has the effect of one request.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A `reqwest_middleware` middleware that follows the decision of `docs/retry.md` for every
/// request: on a non-success response it reads the body (capped), classifies, decides (paid
/// from the shared budget), sleeps and sends the request again. When it stops, or when the
/// request cannot be replayed, it returns the response with its body intact and a
/// [`RetryOutcome`] in the response's extensions.
///
/// - Non-idempotent requests (`POST`, `PATCH`) are sent again only with an idempotency key;
///   the middleware adds one (`Idempotency-Key: <32 hex digits>`, the same on every
///   attempt) unless the request has one or [`RetryMiddleware::idempotency_key`] is `None`.
/// - A request whose body is a stream is never sent twice.
/// - Transport errors: a connection never established is retried with backoff; a timeout or
///   reset after the request was sent only for an idempotent or keyed request.
///
/// ```
/// use std::time::Duration;
/// use overten_errors::RetryPolicy;
/// use overten_errors_http::{Retrier, RetryMiddleware};
///
/// # fn sleep(_: Duration) -> std::future::Ready<()> { std::future::ready(()) }
/// // With the `tokio` feature, `TokioSleep` instead of `sleep`.
/// let retrier = Retrier::new(RetryPolicy::default(), sleep);
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(RetryMiddleware::new(retrier))
///     .build();
/// # let _ = client;
/// ```
pub struct RetryMiddleware<S> {
    retrier: Arc<Retrier<S>>,
    key_header: Option<HeaderName>,
    keys: std::sync::Mutex<SplitMix64>,
    observer: Option<Observer>,
}

/// Called with every error response the middleware decides on, and its decision.
pub type Observer = Arc<dyn Fn(&DecisionEvent<'_>) + Send + Sync>;

/// One decision of [`RetryMiddleware`], for [`RetryMiddleware::on_decision`].
#[derive(Debug)]
#[non_exhaustive]
pub struct DecisionEvent<'a> {
    /// The request's method.
    pub method: &'a Method,
    /// The request's URL without its query, fragment or credentials (`url.full` in the
    /// OpenTelemetry HTTP conventions, redacted).
    pub url: &'a str,
    /// The attempt that just failed (the first is 1; a [`Resubmission`] continues the count).
    pub attempt: u32,
    /// The response read as an error.
    pub received: &'a Received,
    /// The decision, with the step of `docs/retry.md` that took it.
    pub decision: &'a Decision,
}

/// Put on a request that resubmits work after a 408 `sync_timeout_upgrade_async`
/// ([`Advice::ResubmitAsync`]), with
/// `reqwest_middleware::RequestBuilder::with_extension`: the middleware continues the
/// attempt count (`docs/retry.md`: the resubmission is the next attempt) instead of
/// starting again at 1, so `max_attempts` bounds the whole logical request.
///
/// ```
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), reqwest_middleware::Error> {
/// use overten_errors::Advice;
/// use overten_errors_http::{Resubmission, RetryOutcome};
/// let response = client.post("http://127.0.0.1:8080/v1/runs").body(r#"{"prompt":"p"}"#).send().await?;
/// if let Some(outcome) = response.extensions().get::<RetryOutcome>() {
///     if outcome.advice == Advice::ResubmitAsync {
///         let accepted = client
///             .post("http://127.0.0.1:8080/v1/runs")
///             .body(r#"{"prompt":"p","async":true}"#)
///             .with_extension(Resubmission::after(outcome))
///             .send()
///             .await?;
///         # let _ = accepted;
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resubmission {
    /// Attempts the logical request has made so far.
    pub attempts: u32,
}

impl Resubmission {
    /// The resubmission that follows `outcome` (its attempts so far).
    pub fn after(outcome: &RetryOutcome) -> Resubmission {
        Resubmission {
            attempts: outcome.attempts,
        }
    }
}

/// The URL for traces and observers: scheme, host, port and path, never the query (which
/// may carry secrets), the fragment or credentials.
fn redacted(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// `error.type` of a response: its code, or its status when it carries none.
fn error_type(received: &Received) -> String {
    let code = received.error.code().as_str();
    if code.is_empty() {
        received.error.status().to_string()
    } else {
        code.to_owned()
    }
}

/// `error.type` of a transport failure.
fn transport_error_type(error: &reqwest::Error) -> &'static str {
    if error.is_connect() {
        "connect"
    } else if error.is_timeout() {
        "timeout"
    } else if error.is_body() || error.is_decode() {
        "body"
    } else {
        "transport"
    }
}

/// One event for a decision, with the wait and its basis or the stop's reason.
fn trace_decision(attempt: u32, decision: &Decision, tokens: u32) {
    match decision.advice {
        Advice::Retry { after, basis } => tracing::info!(
            http.request.resend_count = attempt - 1,
            step = decision.step.as_str(),
            wait_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            basis = basis.as_str(),
            budget.tokens = tokens,
            "retry decided"
        ),
        advice => tracing::info!(
            http.request.resend_count = attempt - 1,
            step = decision.step.as_str(),
            advice = %advice,
            budget.tokens = tokens,
            "no retry"
        ),
    }
}

impl<S> std::fmt::Debug for RetryMiddleware<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryMiddleware")
            .field("retrier", &self.retrier)
            .field("key_header", &self.key_header)
            .finish_non_exhaustive()
    }
}

impl<S: Sleep> RetryMiddleware<S> {
    /// A middleware around `retrier`, adding `Idempotency-Key` to non-idempotent requests.
    pub fn new(retrier: Retrier<S>) -> RetryMiddleware<S> {
        RetryMiddleware::shared(Arc::new(retrier))
    }

    /// A middleware around a shared `retrier` (its budget then serves every client that
    /// shares it).
    pub fn shared(retrier: Arc<Retrier<S>>) -> RetryMiddleware<S> {
        RetryMiddleware {
            retrier,
            key_header: Some(IDEMPOTENCY_KEY),
            keys: std::sync::Mutex::new(SplitMix64::new(process_seed())),
            observer: None,
        }
    }

    /// Calls `observer` with the attempt number, the response read as an error and the
    /// decision, for every error response (to log each decision with its request id).
    #[must_use]
    pub fn on_decision(
        mut self,
        observer: impl Fn(&DecisionEvent<'_>) + Send + Sync + 'static,
    ) -> RetryMiddleware<S> {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The header that carries idempotency keys, or `None` to add none (a `POST` or
    /// `PATCH` is then never sent twice unless it carries a key already).
    #[must_use]
    pub fn idempotency_key(mut self, header: Option<HeaderName>) -> RetryMiddleware<S> {
        self.key_header = header;
        self
    }

    /// The retry loop's state (policy, budget).
    pub fn retrier(&self) -> &Arc<Retrier<S>> {
        &self.retrier
    }

    fn new_key(&self) -> HeaderValue {
        let mut rng = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (a, b) = (rng.next_u64(), rng.next_u64());
        HeaderValue::from_str(&format!("{a:016x}{b:016x}")).unwrap_or(HeaderValue::from_static("0"))
    }
}

fn stop(fix: &'static str) -> Advice {
    Advice::Stop(StopReason::Permanent { fix })
}

#[async_trait::async_trait]
impl<S: Sleep + 'static> Middleware for RetryMiddleware<S> {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        use tracing::Instrument as _;
        // The redacted URL costs a copy of the URL: made only for a subscriber or observer.
        let traced = tracing::enabled!(tracing::Level::INFO);
        let url = if traced || self.observer.is_some() {
            redacted(req.url())
        } else {
            String::new()
        };
        if !traced {
            // No subscriber: no span to enter on every poll.
            return self.run(req, extensions, next, &url).await;
        }
        let span = tracing::info_span!(
            "overten.request",
            otel.kind = "client",
            http.request.method = %req.method(),
            url.full = %url,
        );
        self.run(req, extensions, next, &url).instrument(span).await
    }
}

impl<S: Sleep + 'static> RetryMiddleware<S> {
    /// The retry loop of one logical request (inside its span).
    #[allow(
        clippy::too_many_lines,
        reason = "one loop, each outcome handled in place"
    )]
    async fn run(
        &self,
        mut req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
        url: &str,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        // Replay-safe: an idempotent method, or any request that carries an idempotency
        // key (the caller's own, even when this middleware is told to add none).
        let mut replay_safe =
            idempotent(req.method()) || req.headers().contains_key(IDEMPOTENCY_KEY);
        if !replay_safe {
            if let Some(name) = &self.key_header {
                if !req.headers().contains_key(name) {
                    let key = self.new_key();
                    req.headers_mut().insert(name.clone(), key);
                }
                replay_safe = true;
            }
        }
        let method = req.method().clone();
        // One pacer per API key (as the gateway keys it: the bearer key), so a key whose
        // window is spent holds its own requests only. Looked up once: the pacers keep only
        // a keyed hash of the key, and no copy of it is made here.
        let pacer = self.retrier.pacer_for(crate::bearer_key(req.headers()));
        // A resubmission after a 408 is the next attempt of the same logical request.
        let mut attempt: u32 = extensions
            .get::<Resubmission>()
            .map_or(1, |r| r.attempts.saturating_add(1));
        loop {
            // A spent rate-limit window paces the key's requests: each takes its slot.
            if let Some(hold) = self.retrier.pace_on(&pacer).await {
                tracing::info!(
                    http.request.resend_count = attempt - 1,
                    hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
                    "paced: waited for the key's slot in its rate-limit window"
                );
            }
            let replay = req.try_clone();
            self.retrier.sent_on(&pacer);
            let answered = next.clone().run(req, extensions).await;
            if let Ok(response) = &answered {
                self.retrier
                    .observe_status_on(&pacer, response.status(), response.headers());
            }
            match answered {
                Ok(response)
                    if !response.status().is_client_error()
                        && !response.status().is_server_error() =>
                {
                    if response.status().is_success() {
                        self.retrier.record_success(attempt);
                    }
                    tracing::debug!(
                        http.request.resend_count = attempt - 1,
                        http.response.status_code = response.status().as_u16(),
                        "attempt answered"
                    );
                    return Ok(response);
                }
                Ok(response) => {
                    // A body cut short (the connection reset mid-body) is a transport
                    // failure of a request that was sent: decided as docs/retry.md says.
                    let (received, mut response) = match read_reqwest(response).await {
                        Ok(read) => read,
                        Err(error) => {
                            tracing::info!(
                                http.request.resend_count = attempt - 1,
                                error.type = "body",
                                "the error body was cut short"
                            );
                            let (decision, ticket) = if replay.is_some() {
                                self.retrier
                                    .decide_transport_reserving(true, replay_safe, attempt)
                            } else {
                                let unpaid = self.retrier.decide_transport_unpaid(
                                    true,
                                    replay_safe,
                                    attempt,
                                );
                                (unpaid, None)
                            };
                            trace_decision(attempt, &decision, self.retrier.budget().tokens());
                            match (decision.advice, replay) {
                                (Advice::Retry { after, .. }, Some(again))
                                    if self.retrier.wait_retry(after, ticket).await =>
                                {
                                    req = again;
                                    attempt = attempt.saturating_add(1);
                                    continue;
                                }
                                _ => return Err(reqwest_middleware::Error::Reqwest(error)),
                            }
                        }
                    };
                    // Only a retry that will happen is paid from the budget.
                    let (mut decision, ticket) = if replay.is_some() && replay_safe {
                        self.retrier.decide_reserving(&received.error, attempt)
                    } else {
                        (self.retrier.decide_unpaid(&received.error, attempt), None)
                    };
                    if matches!(decision.advice, Advice::Retry { .. }) {
                        if replay.is_none() {
                            decision.advice = stop(STREAMING_BODY);
                        } else if !replay_safe {
                            decision.advice = stop(NOT_REPLAY_SAFE);
                        }
                    }
                    tracing::info!(
                        http.request.resend_count = attempt - 1,
                        http.response.status_code = received.error.status(),
                        error.type = %error_type(&received),
                        request_id = received.error.request_id().unwrap_or(""),
                        "attempt failed"
                    );
                    trace_decision(attempt, &decision, self.retrier.budget().tokens());
                    if let Some(observe) = &self.observer {
                        observe(&DecisionEvent {
                            method: &method,
                            url,
                            attempt,
                            received: &received,
                            decision: &decision,
                        });
                    }
                    if let (Advice::Retry { after, .. }, Some(again)) = (decision.advice, replay) {
                        if self.retrier.wait_retry(after, ticket).await {
                            req = again;
                            attempt = attempt.saturating_add(1);
                            continue;
                        }
                        // A newer failure's retry took this one's tokens: it ends here.
                        decision = Decision::RETRY_CANCELLED;
                        trace_decision(attempt, &decision, self.retrier.budget().tokens());
                    }
                    response.extensions_mut().insert(RetryOutcome {
                        received,
                        advice: decision.advice,
                        step: decision.step,
                        attempts: attempt,
                    });
                    return Ok(response);
                }
                Err(error) => {
                    let sent = match &error {
                        reqwest_middleware::Error::Reqwest(e) => {
                            tracing::info!(
                                http.request.resend_count = attempt - 1,
                                error.type = transport_error_type(e),
                                "attempt got no response"
                            );
                            !e.is_connect()
                        }
                        reqwest_middleware::Error::Middleware(_) => return Err(error),
                    };
                    // Only a retry that can happen is paid (a streamed body is never sent
                    // twice): paying could take a waiting retry's tokens for nothing.
                    let (decision, ticket) = if replay.is_some() {
                        self.retrier
                            .decide_transport_reserving(sent, replay_safe, attempt)
                    } else {
                        let unpaid =
                            self.retrier
                                .decide_transport_unpaid(sent, replay_safe, attempt);
                        (unpaid, None)
                    };
                    trace_decision(attempt, &decision, self.retrier.budget().tokens());
                    match (decision.advice, replay) {
                        (Advice::Retry { after, .. }, Some(again))
                            if self.retrier.wait_retry(after, ticket).await =>
                        {
                            req = again;
                            attempt = attempt.saturating_add(1);
                        }
                        _ => return Err(error),
                    }
                }
            }
        }
    }
}
