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
//! | `GET` or `POST /errors/{code}` | that error, as the API sends it |
//! | `GET /errors/{code}?status=NNN` | that error with another status (400 to 599), to test a status/code mismatch |
//! | `GET /errors/{new_code}` | a `snake_case` code the table does not have, with status 500 or `?status=NNN`: for forward-compatibility tests |
//! | `GET /errors/{code}?async=true`, or `POST` with the JSON body `{"async": true}` | 202 with a `task_id` (the work resubmitted async) |
//! | `GET /tasks/{task_id}` | the task: `succeeded` with the result `{"success":true}` for a resubmitted `sync_timeout_upgrade_async`, else the task-failure object with the code ([`task_outcome`]) |
//! | `GET /ok` | 200 `{"success":true}` |
//! | a path with broken percent-encoding, a bad `status`, a `POST` body that is not JSON | 400 `invalid_request` |
//! | anything else | 404 `not_found` |
//!
//! Paths are percent-decoded before routing. The `Authorization` scheme is matched without
//! regard to case, followed by one or more spaces (RFC 9110 section 11.4).
//!
//! It does no IO: the `overten-errors mock` command (crate `overten-errors-cli`) serves
//! [`Routes`] behind this crate's axum and tower layers.

use std::collections::HashMap;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use overten_errors::{
    ApiError, Code, ErrorCode, Failed, RATE_LIMIT_WINDOW_SECONDS, RandomSource, RateLimit,
    RetryAfter, SplitMix64, TaskError, TaskFailure, Tier,
};

use super::{into_response, set_rate_limit_headers, set_request_id};

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
    routes: Routes,
    ids: SplitMix64,
}

impl Gateway {
    /// A gateway enforcing `tier`'s limits; `seed` makes its request ids reproducible.
    pub fn new(tier: Tier, seed: u64) -> Gateway {
        Gateway {
            tier,
            windows: HashMap::new(),
            routes: Routes::new(seed ^ 0x5bd1_e995),
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

    /// Answers one request at `now` (Unix seconds); the request's body (for a `POST`) is
    /// its bytes.
    pub fn handle<B: AsRef<[u8]>>(&mut self, request: &Request<B>, now: u64) -> Response<Vec<u8>> {
        let request_id = self.id("req_");
        let limit = self.tier.requests_per_minute();
        let minute = now / RATE_LIMIT_WINDOW_SECONDS;
        let reset = minute
            .saturating_add(1)
            .saturating_mul(RATE_LIMIT_WINDOW_SECONDS);
        let Some(key) = live_api_key(request.headers()) else {
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
        // The pure gateway has no accounts: each key is an org of its own.
        let mut response = self.routes.answer_as(key, request, wait);
        set_request_id(response.headers_mut(), &request_id);
        set_rate_limit_headers(response.headers_mut(), &rate_limit);
        response
    }
}

/// The routes of the mock API (`/ok`, `/errors/{code}`, `/tasks/{task_id}`), as pure logic
/// with no gateway: what [`Gateway`] serves after its key check and rate limit, and what
/// the `overten-errors mock` command serves behind its layers.
#[derive(Debug)]
pub struct Routes {
    /// Task id -> (the org that made it, its code).
    tasks: HashMap<String, (String, Code)>,
    ids: SplitMix64,
}

impl Routes {
    /// Routes whose task ids come from `seed`.
    pub fn new(seed: u64) -> Routes {
        Routes {
            tasks: HashMap::new(),
            ids: SplitMix64::new(seed),
        }
    }

    fn id(&mut self, prefix: &str) -> String {
        let (a, b) = (self.ids.next_u64(), self.ids.next_u64());
        // 4 + 24 hex digits: 28 characters.
        format!("{prefix}{a:016x}{:08x}", b >> 32)
    }

    /// Answers one request that the gateway let through: the routes of the module's table,
    /// without `X-Request-Id` or `X-RateLimit-*` (the caller's layers add them). `wait` is
    /// the `Retry-After` of a 429 (the seconds left in the caller's rate-limit window).
    ///
    /// Tasks belong to the org that made them: the org of the gateway's `Account` in the
    /// request's extensions (feature `tower`), else everyone's. Another org's task is a 404
    /// `not_found`, as the page says ("doesn't exist or belongs to another org").
    pub fn answer<B: AsRef<[u8]>>(
        &mut self,
        request: &Request<B>,
        wait: RetryAfter,
    ) -> Response<Vec<u8>> {
        #[cfg(feature = "tower")]
        let org = request
            .extensions()
            .get::<crate::server::Account>()
            .map_or(String::new(), |a| a.org_id.to_string());
        #[cfg(not(feature = "tower"))]
        let org = String::new();
        self.answer_as(&org, request, wait)
    }

    /// [`Routes::answer`] for the org `org`.
    pub fn answer_as<B: AsRef<[u8]>>(
        &mut self,
        org: &str,
        request: &Request<B>,
        wait: RetryAfter,
    ) -> Response<Vec<u8>> {
        match Routes::route(request, wait) {
            Routed::Answer(response) => response,
            Routed::Submit(code) => {
                let task_id = self.id("task_");
                if self.tasks.len() >= MAX_TASKS {
                    self.tasks.clear();
                }
                self.tasks.insert(task_id.clone(), (org.to_owned(), code));
                let body = format!(r#"{{"success":true,"task_id":"{task_id}","status":"queued"}}"#);
                json(StatusCode::ACCEPTED, body.into_bytes())
            }
            Routed::Poll(task_id) => {
                let Some(code) = self
                    .tasks
                    .get(&task_id)
                    .filter(|(owner, _)| owner == org)
                    .map(|(_, code)| code)
                else {
                    return respond(ApiError::from(ErrorCode::NotFound), None);
                };
                let body = match task_outcome(code) {
                    Ok(result) => format!(
                        r#"{{"task_id":"{task_id}","status":"succeeded","result":{result},"credits_used":1}}"#
                    )
                    .into_bytes(),
                    Err(error) => {
                        let failure = TaskFailure {
                            task_id: task_id.clone(),
                            status: Failed,
                            error,
                            credits_used: 0,
                            duration_ms: 1200,
                        };
                        serde_json::to_vec(&failure).unwrap_or_default()
                    }
                };
                json(StatusCode::OK, body)
            }
        }
    }

    /// Routes one request without its tasks: a response, or the task to submit or poll,
    /// for a server that keeps tasks elsewhere (`overten-errors mock` keeps them in the
    /// gateway's task store).
    pub fn route<B: AsRef<[u8]>>(request: &Request<B>, wait: RetryAfter) -> Routed {
        let bad_request = |why: &'static str| {
            let err = ApiError::new(ErrorCode::InvalidRequest, why);
            Routed::Answer(respond(err, None))
        };
        let Some(path) = percent_decode(request.uri().path()) else {
            return bad_request("The path's percent-encoding is malformed");
        };
        let query = Query(request.uri().query().unwrap_or(""));
        let method = request.method();
        if method != Method::GET && method != Method::POST {
            return Routed::Answer(respond(ApiError::from(ErrorCode::NotFound), None));
        }
        let mut wants_async = query.get("async").as_deref() == Some("true");
        if method == Method::POST {
            match async_in_body(request.body().as_ref()) {
                Ok(in_body) => wants_async |= in_body,
                Err(()) => return bad_request("The request body is not JSON"),
            }
        }
        if path == "/ok" {
            return Routed::Answer(json(StatusCode::OK, br#"{"success":true}"#.to_vec()));
        }
        if let Some(wire) = path.strip_prefix("/errors/") {
            let code = match ErrorCode::from_wire(wire) {
                Some(code) => Code::Known(code),
                None if is_code(wire) => Code::parse(wire),
                None => return Routed::Answer(respond(ApiError::from(ErrorCode::NotFound), None)),
            };
            let status = match query.get("status") {
                None => code.known().map_or(UNKNOWN_CODE_STATUS, ErrorCode::status),
                Some(s) => match s.parse::<u16>() {
                    Ok(s) if (400..=599).contains(&s) => s,
                    _ => return bad_request("status must be a number from 400 to 599"),
                },
            };
            if wants_async {
                return Routed::Submit(code);
            }
            let message = match code.known() {
                Some(known) => known.when(),
                None => "An error code newer than this mock's table (forward-compatibility test)",
            };
            let err = ApiError::received(code, status, message);
            let hint = (status == ErrorCode::RateLimitExceeded.status()).then_some(wait);
            return Routed::Answer(respond(err, hint));
        }
        if let Some(task_id) = path.strip_prefix("/tasks/") {
            return Routed::Poll(task_id.to_owned());
        }
        Routed::Answer(respond(ApiError::from(ErrorCode::NotFound), None))
    }
}

/// Where [`Routes::route`] sends a request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Routed {
    /// Answer with this.
    Answer(Response<Vec<u8>>),
    /// Submit a task (`/errors/{code}` asked async) that ends as [`task_outcome`] says.
    Submit(Code),
    /// `GET /tasks/{task_id}`: answer with the caller's org's task of this id.
    Poll(String),
}

/// How a mock task submitted for `/errors/{code}` ends: a resubmitted
/// `sync_timeout_upgrade_async` succeeds with the result `{"success":true}` (what `/ok`
/// answers sync); any other code fails with it and the code's "when" (or a fixed message
/// for a code newer than the table).
pub fn task_outcome(code: &Code) -> Result<&'static str, TaskError> {
    if *code == ErrorCode::SyncTimeoutUpgradeAsync {
        return Ok(r#"{"success":true}"#);
    }
    let message = code.known().map_or(
        "A task failure with a code newer than this mock's table",
        ErrorCode::when,
    );
    Err(TaskError {
        code: code.clone(),
        message: message.to_owned(),
    })
}
/// The status `/errors/{code}` answers a code the table does not have with, unless the
/// query names one.
pub const UNKNOWN_CODE_STATUS: u16 = 500;

/// The longest code `/errors/{code}` accepts.
const MAX_CODE_BYTES: usize = 64;

/// A `snake_case` code: the shape every code of the table has.
fn is_code(s: &str) -> bool {
    s.len() <= MAX_CODE_BYTES
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether a `POST` body asks for async: `{"async": true}`. An empty body is a sync
/// request; a body that is not JSON is an error.
fn async_in_body(body: &[u8]) -> Result<bool, ()> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(false);
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| ())?;
    Ok(value.get("async") == Some(&serde_json::Value::Bool(true)))
}

/// A query string's `name=value` pairs, values percent-decoded.
struct Query<'a>(&'a str);

impl Query<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| percent_decode(v))
    }
}

/// Percent-decodes a path or query value; `None` for a broken escape or bytes that are not
/// UTF-8 once decoded.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

pub use crate::names::live_api_key;

fn error(
    code: ErrorCode,
    request_id: &str,
    rate_limit: RateLimit,
    retry_after: Option<RetryAfter>,
) -> Response<Vec<u8>> {
    let mut response = respond(ApiError::from(code), retry_after);
    set_request_id(response.headers_mut(), request_id);
    set_rate_limit_headers(response.headers_mut(), &rate_limit);
    response
}

fn respond(err: ApiError, retry_after: Option<RetryAfter>) -> Response<Vec<u8>> {
    match retry_after {
        Some(ra) => into_response(&err.with_retry_after(ra)),
        None => into_response(&err),
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify;
    use http::header::AUTHORIZATION;

    fn get(path: &str, key: Option<&str>) -> Request<Vec<u8>> {
        let mut b = Request::get(path);
        if let Some(key) = key {
            b = b.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        b.body(Vec::new()).unwrap()
    }

    fn with_auth(path: &str, auth: &str) -> Request<Vec<u8>> {
        Request::get(path)
            .header(AUTHORIZATION, auth)
            .body(Vec::new())
            .unwrap()
    }

    #[test]
    fn the_auth_scheme_is_case_insensitive_and_spaced_as_rfc9110_says() {
        let mut gw = Gateway::new(Tier::Enterprise, 1);
        for ok in [
            "Bearer sk_live_a",
            "bearer sk_live_a",
            "BEARER sk_live_a",
            "bEaReR    sk_live_a",
            " Bearer sk_live_a\t",
        ] {
            assert_eq!(gw.handle(&with_auth("/ok", ok), 0).status(), 200, "{ok:?}");
        }
        for bad in [
            "Bearer\tsk_live_a",
            "Bearersk_live_a",
            "Basic sk_live_a",
            "Bearer sk_live_a extra",
            "Bearer",
        ] {
            assert_eq!(
                gw.handle(&with_auth("/ok", bad), 0).status(),
                401,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_gateway_bounds_its_keys_and_tasks() {
        let mut gw = Gateway::new(Tier::Enterprise, 1);
        let minute = 60 * 1_000;
        for i in 0..MAX_KEYS {
            let key = format!("sk_live_k{i}");
            assert_eq!(gw.handle(&get("/ok", Some(&key)), minute).status(), 200);
        }
        // Every key's window is current: a new key cannot be counted.
        assert_eq!(
            gw.handle(&get("/ok", Some("sk_live_new")), minute).status(),
            503
        );
        // A known key still can.
        assert_eq!(
            gw.handle(&get("/ok", Some("sk_live_k7")), minute).status(),
            200
        );
        // In the next minute the ended windows are dropped and new keys are counted again.
        assert_eq!(
            gw.handle(&get("/ok", Some("sk_live_new")), minute + 60)
                .status(),
            200
        );

        let mut routes = Routes::new(3);
        let mut ids = std::collections::HashSet::new();
        for _ in 0..=MAX_TASKS {
            let resp = routes.answer(
                &get("/errors/gone?async=true", None),
                RetryAfter::Seconds(1),
            );
            let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
            let id = v["task_id"].as_str().unwrap().to_owned();
            assert!(id.starts_with("task_") && id.len() == 29, "{id}");
            ids.insert(id);
        }
        assert_eq!(ids.len(), MAX_TASKS + 1, "task ids are distinct");
        assert!(routes.tasks.len() <= MAX_TASKS, "the oldest are forgotten");
    }

    #[test]
    fn the_rate_limit_route_says_when_the_window_ends() {
        let mut gw = Gateway::new(Tier::Enterprise, 1);
        let resp = gw.handle(
            &get("/errors/rate_limit_exceeded", Some("sk_live_k")),
            60 * 100 + 20,
        );
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "40");
        // Other routes carry no Retry-After.
        let resp = gw.handle(
            &get("/errors/internal_error", Some("sk_live_k")),
            60 * 100 + 20,
        );
        assert!(resp.headers().get("retry-after").is_none());
    }

    #[test]
    fn live_keys_allow_letters_digits_and_underscores() {
        let req = |v: &str| Request::get("/").header(AUTHORIZATION, v).body(()).unwrap();
        assert_eq!(
            live_api_key(req("Bearer sk_live_a_1").headers()),
            Some("sk_live_a_1")
        );
        assert_eq!(live_api_key(req("Bearer sk_live_a-1").headers()), None);
        assert_eq!(live_api_key(req("Bearer sk_live_a.1").headers()), None);
        let long = format!("Bearer sk_live_{}", "a".repeat(129));
        assert_eq!(live_api_key(req(&long).headers()), None);
        let ok = format!("Bearer sk_live_{}", "a".repeat(128));
        assert!(live_api_key(req(&ok).headers()).is_some());
    }

    #[test]
    fn paths_are_percent_decoded() {
        let mut gw = Gateway::new(Tier::Enterprise, 1);
        // Digits and letters in either nibble, either case.
        let resp = gw.handle(&get("/errors/%67%6F%6ee", Some("sk_live_k")), 0);
        assert_eq!(resp.status(), 410);
        let mut gw = Gateway::new(Tier::Enterprise, 1);
        let key = Some("sk_live_k");
        let resp = gw.handle(&get("/errors/rate%5flimit%5Fexceeded", key), 0);
        assert_eq!(resp.status(), 429);
        let resp = gw.handle(&get("/errors/gone%zz", key), 0);
        assert_eq!(resp.status(), 400);
        let resp = gw.handle(&get("/errors/gone%", key), 0);
        assert_eq!(resp.status(), 400);
        let resp = gw.handle(&get("/errors/%ff", key), 0);
        assert_eq!(resp.status(), 400, "not UTF-8 once decoded");
        assert_eq!(gw.handle(&get("/%6Fk", key), 0).status(), 200);
    }

    #[test]
    fn unknown_codes_are_answered_for_forward_compatibility_tests() {
        let mut gw = Gateway::new(Tier::Enterprise, 1);
        let key = Some("sk_live_k");
        let resp = gw.handle(&get("/errors/quota_frozen", key), 0);
        assert_eq!(resp.status(), UNKNOWN_CODE_STATUS);
        let r = classify(resp.status(), resp.headers(), resp.body());
        assert_eq!(r.error.code().as_str(), "quota_frozen");
        assert_eq!(r.error.code().known(), None);
        let resp = gw.handle(&get("/errors/quota_frozen?status=503", key), 0);
        assert_eq!(resp.status(), 503);
        let resp = gw.handle(&get("/errors/quota_frozen?status=429", key), 0);
        assert_eq!(resp.status(), 429);
        assert!(resp.headers().contains_key("retry-after"));
        // A known code with another status, for status/code mismatch tests.
        let resp = gw.handle(&get("/errors/not_found?status=500", key), 0);
        assert_eq!(resp.status(), 500);
        let r = classify(resp.status(), resp.headers(), resp.body());
        assert_eq!(r.diagnostics.status_mismatch, Some(404));
        for bad in ["?status=200", "?status=abc", "?status=99999", "?status="] {
            let resp = gw.handle(&get(&format!("/errors/quota_frozen{bad}"), key), 0);
            assert_eq!(resp.status(), 400, "{bad}");
        }
        for not_a_code in ["Quota", "9x", "a-b", &"a".repeat(65)] {
            let resp = gw.handle(&get(&format!("/errors/{not_a_code}"), key), 0);
            assert_eq!(resp.status(), 404, "{not_a_code}");
        }
    }

    #[test]
    fn a_task_of_another_org_is_not_found() {
        let mut gw = Gateway::new(Tier::Enterprise, 1);
        let made = gw.handle(
            &get("/errors/upstream_error?async=true", Some("sk_live_a")),
            0,
        );
        assert_eq!(made.status(), 202);
        let v: serde_json::Value = serde_json::from_slice(made.body()).unwrap();
        let task = format!("/tasks/{}", v["task_id"].as_str().unwrap());
        assert_eq!(gw.handle(&get(&task, Some("sk_live_a")), 0).status(), 200);
        let other = gw.handle(&get(&task, Some("sk_live_b")), 0);
        assert_eq!(
            other.status(),
            404,
            "another org's task does not exist for it"
        );
        // The routes alone scope by the org they are given.
        let mut routes = Routes::new(1);
        let req = get("/errors/gone?async=true", None);
        let made = routes.answer_as("org_1", &req, RetryAfter::Seconds(1));
        let v: serde_json::Value = serde_json::from_slice(made.body()).unwrap();
        let task = get(&format!("/tasks/{}", v["task_id"].as_str().unwrap()), None);
        assert_eq!(
            routes
                .answer_as("org_1", &task, RetryAfter::Seconds(1))
                .status(),
            200
        );
        assert_eq!(
            routes
                .answer_as("org_2", &task, RetryAfter::Seconds(1))
                .status(),
            404
        );
        assert_eq!(
            routes.answer(&task, RetryAfter::Seconds(1)).status(),
            404,
            "no account: no org"
        );
    }

    #[test]
    fn async_is_also_accepted_as_a_json_body() {
        let mut gw = Gateway::new(Tier::Enterprise, 1);
        let post = |body: &str| {
            Request::post("/errors/sync_timeout_upgrade_async")
                .header(AUTHORIZATION, "Bearer sk_live_k")
                .body(body.as_bytes().to_vec())
                .unwrap()
        };
        let resp = gw.handle(&post(r#"{"async": true, "prompt": "x"}"#), 0);
        assert_eq!(resp.status(), 202);
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        let task = v["task_id"].as_str().unwrap();
        let resp = gw.handle(&get(&format!("/tasks/{task}"), Some("sk_live_k")), 0);
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["status"], "succeeded");
        assert_eq!(gw.handle(&post(r#"{"async": false}"#), 0).status(), 408);
        assert_eq!(gw.handle(&post(""), 0).status(), 408);
        assert_eq!(gw.handle(&post("{not json"), 0).status(), 400);
        // An unknown code resubmitted async fails as a task with that code.
        let resp = gw.handle(
            &get("/errors/quota_frozen?async=true", Some("sk_live_k")),
            0,
        );
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        let task = v["task_id"].as_str().unwrap();
        let resp = gw.handle(&get(&format!("/tasks/{task}"), Some("sk_live_k")), 0);
        let failure: TaskFailure = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(failure.error.code.as_str(), "quota_frozen");
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
        assert_eq!(gw.handle(&get("/errors/No-pe", key), 0).status(), 404);
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
