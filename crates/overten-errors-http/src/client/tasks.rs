//! The async flow in one call (feature `reqwest`): send work, resubmit it with
//! `"async": true` after a 408 `sync_timeout_upgrade_async`, poll `GET /tasks/{task_id}`,
//! and return the result or a typed error ([`TaskClient`]); and "my JSON type or a typed
//! [`ApiError`]" for any response ([`json_or_error`]).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use overten_errors::{
    Advice, ApiError, ErrorCode, PollSchedule, RandomSource, RetryAfter, SplitMix64, TaskFailure,
    TaskState,
};
use reqwest_middleware::ClientWithMiddleware;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::classify::{MAX_BODY_BYTES, retry_after_header};
use super::reqwest::{Resubmission, RetryOutcome, received_from_reqwest};
use crate::names::IDEMPOTENCY_KEY;
use crate::runtime::{Sleep, process_seed};

/// The largest success body [`json_or_error`] and [`TaskClient`] read by default: 16 MiB
/// ([`overten_errors::MAX_TASK_BODY_BYTES`]).
pub const MAX_RESULT_BYTES: usize = overten_errors::MAX_TASK_BODY_BYTES;

/// Why a call did not return its result. Messages never carry a response body.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The API answered an error (after the retry middleware's retries, if any): the
    /// error as read, with its code, status, message and request id.
    #[error(transparent)]
    Api(Box<ApiError>),
    /// The task ended `failed`: the page's failure object.
    #[error("task {} failed: {} ({})", .0.task_id, .0.error.code, .0.error.message)]
    TaskFailed(Box<TaskFailure>),
    /// The task was still `queued` or `running` when the poll schedule gave up
    /// ([`PollSchedule::give_up_after_ms`]): poll it later with [`TaskClient::poll`].
    #[error("task {task_id} still running after {polls} polls")]
    StillRunning {
        /// The task's id.
        task_id: String,
        /// Polls made.
        polls: u32,
        /// Where it is polled.
        url: reqwest::Url,
    },
    /// No response (connection refused, reset, timed out), after the middleware's
    /// retries.
    #[error("transport: {0}")]
    Transport(#[from] reqwest_middleware::Error),
    /// A response the page does not describe: a success body that is not the JSON
    /// expected, too large, a 202 without a `task_id`, a task body of the wrong shape.
    #[error("unexpected response: {0}")]
    Unexpected(String),
    /// The request cannot be sent as asked (its body is not a JSON object, so
    /// `"async": true` cannot be added to it; a URL that cannot be joined).
    #[error("bad request: {0}")]
    Request(&'static str),
}

impl CallError {
    /// The error as an [`ApiError`] when the API or the task gave one (a failed task is
    /// `ApiError::from(TaskFailure)`, with its task id).
    pub fn api_error(&self) -> Option<ApiError> {
        match self {
            CallError::Api(e) => Some((**e).clone()),
            CallError::TaskFailed(f) => Some(ApiError::from((**f).clone())),
            _ => None,
        }
    }
}

/// A serde error without the input it quotes: its category, line and column.
fn shape(what: &str, e: &serde_json::Error) -> CallError {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "not the expected shape",
        serde_json::error::Category::Eof => "cut short",
    };
    CallError::Unexpected(format!(
        "{what} is {kind} (line {}, column {})",
        e.line(),
        e.column()
    ))
}

/// A path segment with its `%XX` escapes decoded (an escape that is not one, or bytes that
/// are not UTF-8, are kept as they are).
fn percent_decoded(segment: &str) -> String {
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            if let (Some(h), Some(l)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| segment.to_owned())
}

/// Reads a body up to `max` bytes (a `Content-Length` over it is not read at all).
async fn body_limited(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, CallError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(CallError::Unexpected(format!(
            "the body is larger than {max} bytes"
        )));
    }
    let mut out = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| CallError::Transport(e.into()))?
    {
        if out.len() + chunk.len() > max {
            return Err(CallError::Unexpected(format!(
                "the body is larger than {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A success as `T` (its JSON body, at most [`MAX_RESULT_BYTES`]), or the error response
/// read as a typed [`ApiError`] (its body capped at 64 KiB as `docs/retry.md` reads it).
/// A `204` reads as JSON `null`.
///
/// ```no_run
/// # async fn run() -> Result<(), overten_errors_http::CallError> {
/// #[derive(serde::Deserialize)]
/// struct Verify { org_id: String }
/// let response = reqwest::Client::new()
///     .get("http://127.0.0.1:8080/verify")
///     .bearer_auth("sk_live_example")
///     .send()
///     .await
///     .map_err(|e| overten_errors_http::CallError::Transport(e.into()))?;
/// let verify: Verify = overten_errors_http::json_or_error(response).await?;
/// # let _ = verify.org_id;
/// # Ok(()) }
/// ```
pub async fn json_or_error<T: DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, CallError> {
    json_or_error_limited(response, MAX_RESULT_BYTES).await
}

async fn json_or_error_limited<T: DeserializeOwned>(
    response: reqwest::Response,
    max: usize,
) -> Result<T, CallError> {
    let status = response.status();
    if status.is_success() {
        let body = body_limited(response, max).await?;
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&body);
        if body.iter().all(u8::is_ascii_whitespace) {
            return serde_json::from_value(serde_json::Value::Null)
                .map_err(|e| shape("the empty body", &e));
        }
        return serde_json::from_slice(body).map_err(|e| shape("the body", &e));
    }
    Err(api_error(response).await)
}

async fn api_error(response: reqwest::Response) -> CallError {
    match received_from_reqwest(response).await {
        Ok(received) => CallError::Api(Box::new(received.error)),
        Err(e) => CallError::Transport(e.into()),
    }
}

/// Sends work that may outlast the page's sync ceiling and returns its result whichever way
/// it ran, in one call ([`TaskClient::post`]):
///
/// 1. `POST` the body with an `Idempotency-Key` (one per call, unless the request has one);
///    a `200` is the result.
/// 2. A `408 sync_timeout_upgrade_async` (`docs/retry.md` step 4: resubmit, do not replay):
///    the same body with `"async": true` added, the same key (the gateway gave the key back
///    with the 408), marked as the next attempt ([`Resubmission`]) for the retry middleware.
/// 3. A `202` with a `task_id`: poll `GET /tasks/{task_id}` on the [`PollSchedule`] (1 s,
///    doubling, at most 30 s, a quarter of jitter; a `Retry-After` on a poll is waited at
///    least; a key whose window is spent is held by the middleware's pacer) until the task
///    is final: `succeeded` returns its `result` as `T`, `failed` is
///    [`CallError::TaskFailed`]; after `give_up_after_ms`, [`CallError::StillRunning`].
///
/// Errors are typed ([`CallError`]). Put a [`RetryMiddleware`](crate::RetryMiddleware) in the
/// client for retries: each request of the flow (the submit, the resubmission, every poll)
/// is retried as `docs/retry.md` decides, sharing one budget and one pacer.
///
/// ```no_run
/// use overten_errors::RetryPolicy;
/// use overten_errors_http::{Retrier, RetryMiddleware, TaskClient, TokioSleep};
/// # async fn run() -> Result<(), overten_errors_http::CallError> {
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(RetryMiddleware::new(Retrier::new(RetryPolicy::default(), TokioSleep)))
///     .build();
/// let tasks = TaskClient::new(client, TokioSleep);
/// let sheet: serde_json::Value = tasks
///     .post("https://api.overten.example/v1/excel/generate", &serde_json::json!({"prompt": "Q3 revenue"}))
///     .await?;
/// # let _ = sheet;
/// # Ok(()) }
/// ```
pub struct TaskClient<S> {
    client: ClientWithMiddleware,
    sleep: S,
    schedule: PollSchedule,
    tasks_base: Option<reqwest::Url>,
    max_result_bytes: usize,
    rng: Mutex<SplitMix64>,
}

impl<S> std::fmt::Debug for TaskClient<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskClient")
            .field("schedule", &self.schedule)
            .field(
                "tasks_base",
                &self.tasks_base.as_ref().map(reqwest::Url::as_str),
            )
            .field("max_result_bytes", &self.max_result_bytes)
            .finish_non_exhaustive()
    }
}

/// The 202's body.
#[derive(serde::Deserialize)]
struct Accepted {
    task_id: String,
}

impl<S: Sleep> TaskClient<S> {
    /// A task client sending with `client` and waiting between polls with `sleep`.
    pub fn new(client: ClientWithMiddleware, sleep: S) -> TaskClient<S> {
        TaskClient {
            client,
            sleep,
            schedule: PollSchedule::default(),
            tasks_base: None,
            max_result_bytes: MAX_RESULT_BYTES,
            rng: Mutex::new(SplitMix64::new(process_seed())),
        }
    }

    /// Polls on `schedule` (default [`PollSchedule::default`]).
    #[must_use]
    pub fn poll_schedule(mut self, schedule: PollSchedule) -> TaskClient<S> {
        self.schedule = schedule;
        self
    }

    /// Where `/tasks/{task_id}` is: `base` joined with `tasks/{task_id}` (so
    /// `https://api.example/v1/` polls `https://api.example/v1/tasks/{id}`). Default: the
    /// origin of the request that made the task (`https://api.example/tasks/{id}`).
    #[must_use]
    pub fn tasks_at(mut self, base: reqwest::Url) -> TaskClient<S> {
        self.tasks_base = Some(base);
        self
    }

    /// The largest result read (default [`MAX_RESULT_BYTES`]).
    #[must_use]
    pub fn max_result_bytes(mut self, max: usize) -> TaskClient<S> {
        self.max_result_bytes = max;
        self
    }

    /// The client it sends with (for requests of your own through the same middleware).
    pub fn client(&self) -> &ClientWithMiddleware {
        &self.client
    }

    fn new_key(&self) -> HeaderValue {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64());
        HeaderValue::from_str(&key).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }

    fn task_url(&self, made_by: &reqwest::Url, task_id: &str) -> Result<reqwest::Url, CallError> {
        // A task id goes in one path segment, percent-encoded.
        let mut url = if let Some(base) = &self.tasks_base {
            base.clone()
        } else {
            let mut origin = made_by.clone();
            origin.set_path("/");
            origin
        };
        url.set_query(None);
        url.set_fragment(None);
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| CallError::Request("the tasks URL cannot have a path"))?;
            segments.pop_if_empty().push("tasks").push(task_id);
        }
        Ok(url)
    }

    /// Sends `body` (a JSON object) as a `POST` to `url` and returns the result as `T`,
    /// whether the API answered it sync or it ran as a task (see [`TaskClient`]).
    pub async fn post<T, B>(&self, url: impl reqwest::IntoUrl, body: &B) -> Result<T, CallError>
    where
        T: DeserializeOwned,
        B: Serialize + ?Sized,
    {
        self.post_with(self.client.post(url), body).await
    }

    /// [`TaskClient::post`] with a request of your own (headers, auth, a timeout): its
    /// body is set to `body`.
    pub async fn post_with<T, B>(
        &self,
        request: reqwest_middleware::RequestBuilder,
        body: &B,
    ) -> Result<T, CallError>
    where
        T: DeserializeOwned,
        B: Serialize + ?Sized,
    {
        let Ok(serde_json::Value::Object(mut work)) = serde_json::to_value(body) else {
            return Err(CallError::Request("the body is not a JSON object"));
        };
        let Some(template) = request.try_clone() else {
            return Err(CallError::Request("the request's body is a stream"));
        };
        // The polls carry the submit's credentials (`Authorization`): a task belongs to an
        // org, and the gateway answers its GET for that org's keys only.
        let auth = template
            .try_clone()
            .and_then(|b| b.build().ok())
            .and_then(|r| r.headers().get(http::header::AUTHORIZATION).cloned());
        let key = self.new_key();
        let keyed = |builder: reqwest_middleware::RequestBuilder| {
            builder
                .header(IDEMPOTENCY_KEY, key.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
        };
        let sync_body = serde_json::to_vec(&work).unwrap_or_default();
        let first = keyed(request).body(sync_body).send().await?;
        let made_by = first.url().clone();
        let response = if first.status().is_success() {
            first
        } else {
            let resubmit = match first.extensions().get::<RetryOutcome>() {
                Some(outcome) if outcome.advice == Advice::ResubmitAsync => {
                    Resubmission::after(outcome)
                }
                // The middleware decided otherwise (a stop: attempts spent, a permanent
                // error): its answer stands.
                Some(_) => return Err(api_error(first).await),
                // No retry middleware: the 408 is read here.
                None => match api_error(first).await {
                    CallError::Api(e) if e.code() == &ErrorCode::SyncTimeoutUpgradeAsync => {
                        Resubmission { attempts: 1 }
                    }
                    other => return Err(other),
                },
            };
            tracing::info!(
                attempt = resubmit.attempts + 1,
                "sync ceiling: resubmitting as an async task"
            );
            work.insert("async".to_owned(), serde_json::Value::Bool(true));
            let async_body = serde_json::to_vec(&work).unwrap_or_default();
            keyed(template)
                .body(async_body)
                .with_extension(resubmit)
                .send()
                .await?
        };
        if response.status() == http::StatusCode::ACCEPTED {
            let body = body_limited(response, MAX_BODY_BYTES).await?;
            let accepted: Accepted =
                serde_json::from_slice(&body).map_err(|e| shape("the 202's body", &e))?;
            let task_url = self.task_url(&made_by, &accepted.task_id)?;
            let mut poll = self.client.get(task_url);
            if let Some(auth) = auth {
                poll = poll.header(http::header::AUTHORIZATION, auth);
            }
            return self.poll_task(poll, accepted.task_id).await;
        }
        json_or_error_limited(response, self.max_result_bytes).await
    }

    /// Polls the task at `task_url` (`…/tasks/{task_id}`) until it is final (see
    /// [`TaskClient`], step 3), with no headers of its own (a key set as a default header of
    /// the `reqwest::Client` is sent); [`TaskClient::poll_with`] takes a request of yours.
    pub async fn poll<T: DeserializeOwned>(&self, task_url: reqwest::Url) -> Result<T, CallError> {
        self.poll_with(self.client.get(task_url)).await
    }

    /// Polls with `request` (a `GET` of `…/tasks/{task_id}` with your headers, e.g.
    /// `client.get(url).bearer_auth(key)`), sent again for every poll.
    pub async fn poll_with<T: DeserializeOwned>(
        &self,
        request: reqwest_middleware::RequestBuilder,
    ) -> Result<T, CallError> {
        let task_id = request
            .try_clone()
            .and_then(|b| b.build().ok())
            .and_then(|r| {
                r.url()
                    .path_segments()
                    .and_then(Iterator::last)
                    .map(percent_decoded)
            })
            .unwrap_or_default();
        self.poll_task(request, task_id).await
    }

    async fn poll_task<T: DeserializeOwned>(
        &self,
        request: reqwest_middleware::RequestBuilder,
        task_id: String,
    ) -> Result<T, CallError> {
        let task_url = request
            .try_clone()
            .and_then(|b| b.build().ok())
            .map(|r| r.url().clone())
            .ok_or(CallError::Request("the poll request cannot be built"))?;
        let started = Instant::now();
        let give_up = Duration::from_millis(self.schedule.give_up_after_ms);
        // Time spent polling: the waits taken or the clock, whichever is further (a sleep
        // that returns early cannot make the loop poll for ever).
        let mut waited = Duration::ZERO;
        let mut polls: u32 = 0;
        let mut at_least = Duration::ZERO;
        loop {
            let mut wait = {
                let mut rng = self
                    .rng
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                self.schedule.delay(polls.saturating_add(1), &mut *rng)
            };
            wait = wait.max(at_least);
            let left = give_up.saturating_sub(started.elapsed().max(waited));
            if polls > 0 && left.is_zero() {
                return Err(CallError::StillRunning {
                    task_id,
                    polls,
                    url: task_url,
                });
            }
            waited = waited.saturating_add(wait.min(left));
            self.sleep.sleep(wait.min(left)).await;
            polls = polls.saturating_add(1);
            let Some(poll) = request.try_clone() else {
                return Err(CallError::Request("the poll request cannot be sent again"));
            };
            let response = poll.send().await?;
            if !response.status().is_success() {
                return Err(api_error(response).await);
            }
            at_least = match retry_after_header(response.headers()) {
                Ok(Some(RetryAfter::Seconds(s))) => Duration::from_secs(s),
                Ok(Some(RetryAfter::At(date))) => date
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
                _ => Duration::ZERO,
            };
            let body = body_limited(response, self.max_result_bytes).await?;
            match TaskState::parse_limited(&body, self.max_result_bytes) {
                Ok(TaskState::Pending { .. }) => {}
                Ok(TaskState::Succeeded { result, .. }) => {
                    return serde_json::from_value(result)
                        .map_err(|e| shape("the task's result", &e));
                }
                Ok(TaskState::Failed(failure)) => {
                    return Err(CallError::TaskFailed(Box::new(failure)));
                }
                Ok(_) => {
                    return Err(CallError::Unexpected(
                        "a task state this version does not know".into(),
                    ));
                }
                Err(overten_errors::TaskBodyError::Shape(_)) => {
                    return Err(CallError::Unexpected(
                        "the task's body is not a task".into(),
                    ));
                }
                Err(e) => return Err(CallError::Unexpected(format!("the task's body: {e}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_decoded_and_broken_escapes_kept() {
        for (raw, decoded) in [
            ("task_1", "task_1"),
            ("a%2Fb", "a/b"),
            ("%41%42c", "ABc"),
            ("%c3%A9", "é"),
            ("%zz%4", "%zz%4"),
            ("%", "%"),
            ("x%2", "x%2"),
            ("%2F%", "/%"),
            ("%FF", "%FF"),
        ] {
            assert_eq!(percent_decoded(raw), decoded, "{raw}");
        }
    }

    /// A body of `chunks`, without a length (chunked), as a reqwest response.
    fn streamed(chunks: &[&'static [u8]]) -> reqwest::Response {
        struct Chunks(std::collections::VecDeque<&'static [u8]>);
        impl http_body::Body for Chunks {
            type Data = bytes::Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>>
            {
                std::task::Poll::Ready(
                    self.0
                        .pop_front()
                        .map(|c| Ok(http_body::Frame::data(bytes::Bytes::from_static(c)))),
                )
            }
        }
        let body = reqwest::Body::wrap(Chunks(chunks.iter().copied().collect()));
        reqwest::Response::from(http::Response::new(body))
    }

    fn sized(body: &'static [u8]) -> reqwest::Response {
        let mut r = http::Response::new(reqwest::Body::from(body));
        r.headers_mut()
            .insert(http::header::CONTENT_LENGTH, body.len().into());
        reqwest::Response::from(r)
    }

    #[test]
    fn bodies_are_read_up_to_the_limit_and_not_a_byte_more() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let read =
                |r, max| async move { body_limited(r, max).await.map_err(|e| e.to_string()) };
            assert_eq!(read(streamed(&[b"abc", b"de"]), 5).await.unwrap(), b"abcde");
            assert_eq!(
                read(streamed(&[b"abc", b"def"]), 5).await.unwrap_err(),
                "unexpected response: the body is larger than 5 bytes"
            );
            assert_eq!(read(streamed(&[b"ab", b"c"]), 3).await.unwrap(), b"abc");
            assert_eq!(read(sized(b"abcde"), 5).await.unwrap(), b"abcde");
            assert!(
                read(sized(b"abcdef"), 5).await.is_err(),
                "a Content-Length over the limit"
            );
        });
    }

    #[test]
    fn a_task_client_shows_its_settings_not_its_client() {
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).build();
        let tasks = TaskClient::new(client, |_: Duration| std::future::ready(()))
            .tasks_at("http://127.0.0.1:1/v1/".parse().unwrap())
            .max_result_bytes(7);
        let shown = format!("{tasks:?}");
        assert!(shown.starts_with("TaskClient {"), "{shown}");
        assert!(
            shown.contains("http://127.0.0.1:1/v1/") && shown.contains("max_result_bytes: 7"),
            "{shown}"
        );
    }
}
