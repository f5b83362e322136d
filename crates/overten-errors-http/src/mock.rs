//! The API gateway's behaviour as pure logic, for mock servers in tests and SDK CI.
//!
//! [`Gateway::handle`] takes a request and "now" and returns the response the Overten API
//! would send: it requires `Authorization: Bearer sk_live_...` (else 401
//! `invalid_api_key`), counts requests per key per minute against its [`Tier`]'s limit
//! (429 `rate_limit_exceeded` with `Retry-After` once spent), and sends `X-RateLimit-*`
//! and `X-Request-Id` on every response. Routes:
//!
//! | request | response |
//! |---|---|
//! | `GET /errors/{code}` | that error, as the API sends it |
//! | `GET /errors/{code}?async=true` | 202 with a `task_id` (the work resubmitted async) |
//! | `GET /tasks/{task_id}` | the task: `succeeded` for a resubmitted `sync_timeout_upgrade_async`, else the task-failure object with the code |
//! | `GET /ok` | 200 `{"success":true}` |
//! | anything else, or an unknown code | 404 `not_found` |
//!
//! It does no IO: the `mock_server` example serves it over HTTP with hyper.

use std::collections::HashMap;

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use overten_errors::{
    ApiError, ErrorCode, Failed, RATE_LIMIT_WINDOW_SECONDS, RandomSource, RateLimit, RetryAfter,
    SplitMix64, TaskError, TaskFailure, Tier,
};

use crate::server::{into_response, set_rate_limit_headers, set_request_id};

/// Keys tracked at once; past it, windows that have ended are dropped, and if none has,
/// new keys are answered 503 `service_unavailable` rather than growing without bound.
pub const MAX_KEYS: usize = 10_000;

/// Tasks remembered at once; the oldest are forgotten past it.
pub const MAX_TASKS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    minute: u64,
    used: u32,
}

/// The gateway of one mock API server.
#[derive(Debug)]
pub struct Gateway {
    tier: Tier,
    windows: HashMap<String, Window>,
    tasks: HashMap<String, ErrorCode>,
    ids: SplitMix64,
}

impl Gateway {
    /// A gateway enforcing `tier`'s limits; `seed` makes its request ids reproducible.
    pub fn new(tier: Tier, seed: u64) -> Gateway {
        Gateway {
            tier,
            windows: HashMap::new(),
            tasks: HashMap::new(),
            ids: SplitMix64::new(seed),
        }
    }

    /// The tier it enforces.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    fn id(&mut self, prefix: &str) -> String {
        let (a, b) = (self.ids.next_u64(), self.ids.next_u64());
        // 4 + 24 hex digits: 28 characters.
        format!("{prefix}{a:016x}{:08x}", b >> 32)
    }

    /// Answers one request at `now` (Unix seconds).
    pub fn handle<B>(&mut self, request: &Request<B>, now: u64) -> Response<Vec<u8>> {
        let request_id = self.id("req_");
        let limit = self.tier.requests_per_minute();
        let minute = now / RATE_LIMIT_WINDOW_SECONDS;
        let reset = minute
            .saturating_add(1)
            .saturating_mul(RATE_LIMIT_WINDOW_SECONDS);
        let Some(key) = api_key(request) else {
            let full = RateLimit {
                limit,
                remaining: limit,
                reset,
            };
            return error(ErrorCode::InvalidApiKey, &request_id, full, None);
        };
        if !self.windows.contains_key(key) && self.windows.len() >= MAX_KEYS {
            self.windows.retain(|_, w| w.minute == minute);
            if self.windows.len() >= MAX_KEYS {
                let none = RateLimit {
                    limit,
                    remaining: 0,
                    reset,
                };
                return error(ErrorCode::ServiceUnavailable, &request_id, none, None);
            }
        }
        let window = self
            .windows
            .entry(key.to_owned())
            .or_insert(Window { minute, used: 0 });
        if window.minute != minute {
            *window = Window { minute, used: 0 };
        }
        let wait = RetryAfter::Seconds(reset.saturating_sub(now).max(1));
        if window.used >= limit {
            let spent = RateLimit {
                limit,
                remaining: 0,
                reset,
            };
            return error(ErrorCode::RateLimitExceeded, &request_id, spent, Some(wait));
        }
        window.used += 1;
        let rate_limit = RateLimit {
            limit,
            remaining: limit - window.used,
            reset,
        };
        self.route(request, &request_id, rate_limit, wait)
    }

    fn route<B>(
        &mut self,
        request: &Request<B>,
        request_id: &str,
        rate_limit: RateLimit,
        wait: RetryAfter,
    ) -> Response<Vec<u8>> {
        let path = request.uri().path();
        let wants_async = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "async=true"));
        if request.method() != Method::GET {
            return error(ErrorCode::NotFound, request_id, rate_limit, None);
        }
        if path == "/ok" {
            return json(
                StatusCode::OK,
                br#"{"success":true}"#.to_vec(),
                request_id,
                rate_limit,
            );
        }
        if let Some(wire) = path.strip_prefix("/errors/") {
            let Some(code) = ErrorCode::from_wire(wire) else {
                return error(ErrorCode::NotFound, request_id, rate_limit, None);
            };
            if wants_async {
                let task_id = self.id("task_");
                if self.tasks.len() >= MAX_TASKS {
                    self.tasks.clear();
                }
                self.tasks.insert(task_id.clone(), code);
                let body = format!(r#"{{"success":true,"task_id":"{task_id}","status":"queued"}}"#);
                return json(
                    StatusCode::ACCEPTED,
                    body.into_bytes(),
                    request_id,
                    rate_limit,
                );
            }
            let hint = (code == ErrorCode::RateLimitExceeded).then_some(wait);
            return error(code, request_id, rate_limit, hint);
        }
        if let Some(task_id) = path.strip_prefix("/tasks/") {
            let Some(&code) = self.tasks.get(task_id) else {
                return error(ErrorCode::NotFound, request_id, rate_limit, None);
            };
            let body = if code == ErrorCode::SyncTimeoutUpgradeAsync {
                format!(r#"{{"task_id":"{task_id}","status":"succeeded","credits_used":1}}"#)
                    .into_bytes()
            } else {
                let failure = TaskFailure {
                    task_id: task_id.to_owned(),
                    status: Failed,
                    error: TaskError {
                        code: code.into(),
                        message: code.when().to_owned(),
                    },
                    credits_used: 0,
                    duration_ms: 1200,
                };
                serde_json::to_vec(&failure).unwrap_or_default()
            };
            return json(StatusCode::OK, body, request_id, rate_limit);
        }
        error(ErrorCode::NotFound, request_id, rate_limit, None)
    }
}

/// The key of a well-formed `Authorization: Bearer sk_live_...` header.
fn api_key<B>(request: &Request<B>) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let key = value.strip_prefix("Bearer ")?;
    let rest = key.strip_prefix("sk_live_")?;
    let ok = !rest.is_empty()
        && rest.len() <= 128
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    ok.then_some(key)
}

fn error(
    code: ErrorCode,
    request_id: &str,
    rate_limit: RateLimit,
    retry_after: Option<RetryAfter>,
) -> Response<Vec<u8>> {
    let mut err = ApiError::from(code)
        .with_request_id(request_id)
        .with_rate_limit(rate_limit);
    if let Some(ra) = retry_after {
        err = err.with_retry_after(ra);
    }
    into_response(&err)
}

fn json(status: StatusCode, body: Vec<u8>, request_id: &str, rl: RateLimit) -> Response<Vec<u8>> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    set_request_id(headers, request_id);
    set_rate_limit_headers(headers, &rl);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify;

    fn get(path: &str, key: Option<&str>) -> Request<()> {
        let mut b = Request::get(path);
        if let Some(key) = key {
            b = b.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        b.body(()).unwrap()
    }

    #[test]
    fn requires_a_live_key() {
        let mut gw = Gateway::new(Tier::Free, 1);
        for key in [
            None,
            Some("sk_test_abc"),
            Some("sk_live_"),
            Some("sk_live_a b"),
        ] {
            let resp = gw.handle(&get("/ok", key), 1_000_000);
            assert_eq!(resp.status(), 401, "{key:?}");
            let r = classify(resp.status(), resp.headers(), resp.body());
            assert_eq!(r.error.code(), &ErrorCode::InvalidApiKey);
            assert!(r.error.request_id().is_some_and(|id| id.len() == 28));
            assert!(r.error.rate_limit().is_some());
        }
    }

    #[test]
    fn counts_per_key_per_minute() {
        let mut gw = Gateway::new(Tier::Free, 1);
        let t0 = 60 * 1000 + 15;
        for i in 0..10 {
            let resp = gw.handle(&get("/ok", Some("sk_live_a")), t0);
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-ratelimit-remaining"], (9 - i).to_string());
        }
        let resp = gw.handle(&get("/ok", Some("sk_live_a")), t0);
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "45");
        assert_eq!(resp.headers()["x-ratelimit-reset"], (60 * 1001).to_string());
        // Another key has its own budget; the next minute starts afresh.
        assert_eq!(gw.handle(&get("/ok", Some("sk_live_b")), t0).status(), 200);
        assert_eq!(
            gw.handle(&get("/ok", Some("sk_live_a")), t0 + 45).status(),
            200
        );
    }

    #[test]
    fn routes() {
        let mut gw = Gateway::new(Tier::Enterprise, 1);
        let key = Some("sk_live_k");
        for &code in ErrorCode::ALL {
            let resp = gw.handle(&get(&format!("/errors/{code}"), key), 0);
            assert_eq!(resp.status(), code.status());
        }
        assert_eq!(gw.handle(&get("/errors/nope", key), 0).status(), 404);
        assert_eq!(gw.handle(&get("/elsewhere", key), 0).status(), 404);
        let resp = gw.handle(&get("/errors/internal_error?async=true", key), 0);
        assert_eq!(resp.status(), 202);
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        let task = v["task_id"].as_str().unwrap();
        let resp = gw.handle(&get(&format!("/tasks/{task}"), key), 0);
        let failure: TaskFailure = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(failure.error.code, ErrorCode::InternalError);
    }
}
