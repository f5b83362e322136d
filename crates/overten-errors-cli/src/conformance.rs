//! `overten-errors conformance`: a scripted mock that grades a client against the rules of
//! `docs/retry.md` that a wire can show.
//!
//! The client's test program reads the plan (`GET /conformance`), sends each scenario's
//! request through the client under test (as many at once as the scenario's `clients`),
//! lets the client retry, resubmit and poll as it decides, and exits (or `POST
//! /conformance/done`). Every request is recorded (time, method, path, idempotency key,
//! body hash, answer) and each scenario's rules graded from the record.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use overten_errors::{ApiError, ErrorCode, RateLimit, RetryAfter, RetryPolicy};
use overten_errors_http::into_response;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::sync::Notify;

/// The key the plan tells clients to send (any `sk_live_` key works: none is checked).
const API_KEY: &str = "sk_live_conformance";
/// How many clients the burst scenario expects at once.
const BURST_CLIENTS: usize = 8;
/// How long the burst's first requests wait for one another before they are answered.
const BURST_GATHER: Duration = Duration::from_secs(5);
/// The least spread of the burst's retries that passes: their arrivals must not all fall
/// within this much of one another.
const BURST_SPREAD: Duration = Duration::from_millis(50);
/// Slack for timers and clocks when a wait is checked: a retry this much early still passes.
const SLACK: Duration = Duration::from_millis(20);
/// The longest request body read.
const MAX_BODY: usize = 64 * 1024;
/// The most requests recorded; past it, requests are answered 503 and the run fails.
const MAX_RECORDED: usize = 10_000;
/// The most task ids handed out in one run (a conforming client needs one).
const MAX_TASKS: usize = 1_000;
/// The largest request body kept parsed in the record (its SHA-256 is always kept): the
/// scenarios' bodies are a few dozen bytes, and 10,000 bodies of 64 KiB would hold
/// hundreds of MB.
const MAX_RECORDED_BODY: usize = 8 * 1024;

/// A rule of `docs/retry.md` that the wire can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    Retried,
    WaitedAsNamed,
    WaitedWindow,
    Backoff,
    MaxAttempts,
    NoRetryPermanent,
    NoRetry501,
    OneIdempotencyKey,
    SameBody,
    ResubmitAsync,
    PolledTask,
    Spread,
}

impl Rule {
    pub(crate) fn id(self) -> &'static str {
        match self {
            Rule::Retried => "retried-transient",
            Rule::WaitedAsNamed => "waited-as-named",
            Rule::WaitedWindow => "waited-503-window",
            Rule::Backoff => "backoff",
            Rule::MaxAttempts => "max-attempts",
            Rule::NoRetryPermanent => "no-retry-permanent",
            Rule::NoRetry501 => "no-retry-501",
            Rule::OneIdempotencyKey => "one-idempotency-key",
            Rule::SameBody => "same-body",
            Rule::ResubmitAsync => "resubmit-async",
            Rule::PolledTask => "polled-task",
            Rule::Spread => "spread",
        }
    }

    /// The rule, as `docs/retry.md` states it.
    pub(crate) fn text(self) -> &'static str {
        match self {
            Rule::Retried => "a transient error (429, 5xx but 501) is retried",
            Rule::WaitedAsNamed => {
                "a retry waits at least what the server named (Retry-After, or X-RateLimit-Reset with Remaining 0), and at least min_wait"
            }
            Rule::WaitedWindow => "a 503 without Retry-After waits in the 30-60 s window",
            Rule::Backoff => {
                "a 5xx without Retry-After backs off: the delay after attempt n is at least (1 - jitter) * min(initial * multiplier^(n-1), max_delay)"
            }
            Rule::MaxAttempts => "at most max_attempts (5) attempts in all",
            Rule::NoRetryPermanent => "a 4xx other than 408 and 429 is never retried",
            Rule::NoRetry501 => "a 501 is never retried, Retry-After or not",
            Rule::OneIdempotencyKey => {
                "a POST is sent again only with an Idempotency-Key, the same on every attempt"
            }
            Rule::SameBody => "a retry sends the same body",
            Rule::ResubmitAsync => {
                "a 408 is not replayed: the same work is sent again with async: true"
            }
            Rule::PolledTask => "after the async resubmission, /tasks/{id} is polled until it ends",
            Rule::Spread => {
                "the retries of clients that failed together are spread, not sent in one instant"
            }
        }
    }
}

/// One scripted scenario.
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    method: Method,
    clients: usize,
    body: Option<&'static str>,
    what: &'static str,
    pub(crate) rules: &'static [Rule],
}

/// Every scenario, in the plan's order.
pub(crate) fn scenarios() -> Vec<Scenario> {
    use Rule::{
        Backoff, MaxAttempts, NoRetry501, NoRetryPermanent, OneIdempotencyKey, PolledTask,
        ResubmitAsync, Retried, SameBody, Spread, WaitedAsNamed, WaitedWindow,
    };
    let get = |name, what, rules| Scenario {
        name,
        method: Method::GET,
        clients: 1,
        body: None,
        what,
        rules,
    };
    vec![
        get(
            "rate-limit-retry-after",
            "429 with Retry-After: 2, then 200",
            &[Retried, WaitedAsNamed, MaxAttempts],
        ),
        get(
            "rate-limit-headers",
            "429 with X-RateLimit-Remaining: 0 and a Reset 2-3 s ahead, no Retry-After, then 200",
            &[Retried, WaitedAsNamed, MaxAttempts],
        ),
        get(
            "unavailable-retry-after",
            "503 with Retry-After: 3, then 200",
            &[Retried, WaitedAsNamed, MaxAttempts],
        ),
        get(
            "unavailable-window",
            "503 without Retry-After, then 200 (the page's window: 30-60 s)",
            &[Retried, WaitedWindow, MaxAttempts],
        ),
        get(
            "server-errors-then-success",
            "500, 502, 500, then 200",
            &[Retried, Backoff, MaxAttempts],
        ),
        get(
            "server-errors-forever",
            "500 on every attempt",
            &[Retried, Backoff, MaxAttempts],
        ),
        get("permanent", "404 not_found", &[NoRetryPermanent]),
        get(
            "not-implemented",
            "501 not_implemented with Retry-After: 1",
            &[NoRetry501],
        ),
        Scenario {
            name: "sync-timeout",
            method: Method::POST,
            clients: 1,
            body: Some(r#"{"prompt":"conformance: a sync run past the ceiling"}"#),
            what: "POST answered 408 sync_timeout_upgrade_async; the same body with \"async\": true is answered 202 with a task_id; GET /tasks/{task_id} is running once, then succeeded",
            rules: &[ResubmitAsync, PolledTask],
        },
        Scenario {
            name: "idempotent-post",
            method: Method::POST,
            clients: 1,
            body: Some(r#"{"prompt":"conformance: one run, whatever the retries"}"#),
            what: "POST answered 503 with Retry-After: 1, then 500, then 201",
            rules: &[
                OneIdempotencyKey,
                SameBody,
                Retried,
                WaitedAsNamed,
                MaxAttempts,
            ],
        },
        Scenario {
            name: "burst",
            method: Method::GET,
            clients: BURST_CLIENTS,
            body: None,
            what: "8 clients at once: their first requests are held until all 8 arrived (5 s at most), answered 500 together, then 200",
            rules: &[Spread, Retried],
        },
    ]
}

/// What the server named with an answer.
#[derive(Debug, Clone, Copy)]
enum Named {
    /// `Retry-After: N`.
    After(Duration),
    /// `X-RateLimit-Reset` (Unix seconds) with `Remaining: 0`.
    Until(u64),
    /// A 503 without `Retry-After`: the page's window.
    Window,
    /// A 5xx without `Retry-After`: backoff.
    Backoff,
    /// Nothing to wait for (a success, a permanent error, an async acceptance).
    Nothing,
}

/// One request, as the mock saw and answered it.
#[derive(Debug, Clone)]
struct Attempt {
    scenario: Option<&'static str>,
    arrived: Instant,
    arrived_unix_ms: u128,
    answered: Instant,
    method: String,
    path: String,
    key: Option<String>,
    body_sha256: String,
    body: Option<Value>,
    status: u16,
    named: Named,
}

#[derive(Default)]
struct Burst {
    arrived: usize,
    released: bool,
}

struct Run {
    start: Instant,
    attempts: Vec<Attempt>,
    /// Requests answered per scenario (async resubmissions and polls apart).
    counts: HashMap<&'static str, usize>,
    /// Task ids handed out, with how often each was polled.
    tasks: HashMap<String, u32>,
    burst: Burst,
    overflow: bool,
}

struct Shared {
    run: Mutex<Run>,
    burst_ready: Notify,
    done: Notify,
}

impl Shared {
    /// A run that starts now, with nothing recorded.
    fn new() -> Shared {
        Shared {
            run: Mutex::new(Run {
                start: Instant::now(),
                attempts: Vec::new(),
                counts: HashMap::new(),
                tasks: HashMap::new(),
                burst: Burst::default(),
                overflow: false,
            }),
            burst_ready: Notify::new(),
            done: Notify::new(),
        }
    }
}

type App = Arc<Shared>;

fn lock(app: &App) -> std::sync::MutexGuard<'_, Run> {
    app.run.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn success(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(err: &ApiError) -> Response {
    into_response::<Body>(err).into_response()
}

/// Each scenario's own API key: a client that paces per key (`docs/retry.md`, *Pacing*)
/// must not let one scenario's spent window hold another's requests.
fn scenario_key(name: &str) -> String {
    format!("{API_KEY}_{}", name.replace('-', "_"))
}

fn plan(base: &str) -> Value {
    let list: Vec<Value> = scenarios()
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "method": s.method.as_str(),
                "path": format!("/conformance/{}", s.name),
                "url": format!("{base}/conformance/{}", s.name),
                "clients": s.clients,
                "body": s.body.and_then(|b| serde_json::from_str::<Value>(b).ok()),
                "what": s.what,
                "rules": s.rules.iter().map(|r| r.id()).collect::<Vec<_>>(),
                "api_key": scenario_key(s.name),
            })
        })
        .collect();
    json!({
        "base_url": base,
        "api_key": API_KEY,
        "done": format!("{base}/conformance/done"),
        "scenarios": list,
    })
}

/// The answer to the `n`-th request (from 0) of a scenario, and what it named. (The async
/// resubmission of `sync-timeout` and the task polls are answered by [`handle`].)
fn scripted(name: &str, n: usize) -> (Response, Named) {
    let ok = |status| {
        (
            success(status, &json!({"success": true, "scenario": name})),
            Named::Nothing,
        )
    };
    let with_retry_after = |code: ErrorCode, secs: u64| {
        (
            error(&ApiError::from(code).with_retry_after(RetryAfter::Seconds(secs))),
            Named::After(Duration::from_secs(secs)),
        )
    };
    match (name, n) {
        ("rate-limit-retry-after", 0) => with_retry_after(ErrorCode::RateLimitExceeded, 2),
        ("rate-limit-headers", 0) => {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let reset = now + 3;
            let err = ApiError::from(ErrorCode::RateLimitExceeded).with_rate_limit(RateLimit {
                limit: 60,
                remaining: 0,
                reset,
            });
            let mut response = error(&err);
            response.headers_mut().remove(http::header::RETRY_AFTER);
            (response, Named::Until(reset))
        }
        ("unavailable-retry-after", 0) => with_retry_after(ErrorCode::ServiceUnavailable, 3),
        ("unavailable-window", 0) => (
            error(&ApiError::from(ErrorCode::ServiceUnavailable)),
            Named::Window,
        ),
        ("server-errors-then-success", 0 | 2)
        | ("server-errors-forever", _)
        | ("idempotent-post", 1) => (
            error(&ApiError::from(ErrorCode::InternalError)),
            Named::Backoff,
        ),
        ("burst", n) if n < BURST_CLIENTS => (
            error(&ApiError::from(ErrorCode::InternalError)),
            Named::Backoff,
        ),
        ("server-errors-then-success", 1) => (
            error(&ApiError::from(ErrorCode::UpstreamError)),
            Named::Backoff,
        ),
        ("permanent", _) => (error(&ApiError::from(ErrorCode::NotFound)), Named::Nothing),
        ("not-implemented", _) => with_retry_after(ErrorCode::NotImplemented, 1),
        ("idempotent-post", 0) => with_retry_after(ErrorCode::ServiceUnavailable, 1),
        ("idempotent-post", _) => ok(StatusCode::CREATED),
        ("sync-timeout", _) => (
            error(&ApiError::from(ErrorCode::SyncTimeoutUpgradeAsync)),
            Named::Nothing,
        ),
        _ => ok(StatusCode::OK),
    }
}

async fn handle(State(app): State<App>, request: Request) -> Response {
    let arrived = Instant::now();
    let arrived_unix_ms = unix_ms(SystemTime::now());
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return error(&ApiError::from(ErrorCode::PayloadTooLarge));
    };
    let path = parts.uri.path().to_owned();
    let method = parts.method.clone();
    let key = parts
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Past the record's bound nothing is answered, handed out or kept: a flood costs no
    // memory (every map of the run is bounded).
    if lock(&app).attempts.len() >= MAX_RECORDED {
        lock(&app).overflow = true;
        return error(&ApiError::from(ErrorCode::ServiceUnavailable));
    }
    let json_body = serde_json::from_slice::<Value>(&bytes).ok();
    let base = format!(
        "http://{}",
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1")
    );
    if path == "/conformance" || path == "/conformance/" {
        return success(StatusCode::OK, &plan(&base));
    }
    if path == "/conformance/done" {
        app.done.notify_one();
        return success(StatusCode::OK, &json!({"success": true}));
    }
    let scenario = path
        .strip_prefix("/conformance/")
        .and_then(|name| scenarios().into_iter().find(|s| s.name == name));
    let (response, named, scenario_name) = if let Some(task) = path.strip_prefix("/tasks/") {
        (poll(&app, task), Named::Nothing, Some("sync-timeout"))
    } else if let Some(s) = scenario {
        let (response, named) = answer(&app, &s, &method, json_body.as_ref()).await;
        (response, named, Some(s.name))
    } else {
        (
            error(&ApiError::from(ErrorCode::NotFound)),
            Named::Nothing,
            None,
        )
    };
    let mut run = lock(&app);
    if run.attempts.len() >= MAX_RECORDED {
        run.overflow = true;
        return error(&ApiError::from(ErrorCode::ServiceUnavailable));
    }
    run.attempts.push(Attempt {
        scenario: scenario_name,
        arrived,
        arrived_unix_ms,
        answered: Instant::now(),
        method: method.to_string(),
        path,
        key,
        body_sha256: hex(&sha2::Sha256::digest(&bytes)),
        body: json_body.filter(|_| bytes.len() <= MAX_RECORDED_BODY),
        status: response.status().as_u16(),
        named,
    });
    response
}

/// `GET /tasks/{task}`: running at the first poll, succeeded after; 404 for an id never
/// handed out.
fn poll(app: &App, task: &str) -> Response {
    let polls = lock(app).tasks.get_mut(task).map(|p| {
        *p += 1;
        *p
    });
    match polls {
        Some(1) => success(
            StatusCode::OK,
            &json!({"task_id": task, "status": "running"}),
        ),
        Some(_) => success(
            StatusCode::OK,
            &json!({"task_id": task, "status": "succeeded", "result": {"file_id": "file_conformance"}, "credits_used": 1, "duration_ms": 1200}),
        ),
        None => error(&ApiError::from(ErrorCode::NotFound)),
    }
}

/// A scenario's request: the async resubmission of `sync-timeout` gets a task id, the
/// others their script (the burst's first requests after [`gather`]).
async fn answer(
    app: &App,
    s: &Scenario,
    method: &Method,
    body: Option<&Value>,
) -> (Response, Named) {
    if *method != s.method {
        return (
            error(&ApiError::from(ErrorCode::InvalidRequest)),
            Named::Nothing,
        );
    }
    if s.name == "sync-timeout" && body.and_then(|b| b.get("async")) == Some(&json!(true)) {
        let id = {
            let mut run = lock(app);
            if run.tasks.len() >= MAX_TASKS {
                run.overflow = true;
                return (
                    error(&ApiError::from(ErrorCode::ServiceUnavailable)),
                    Named::Nothing,
                );
            }
            let id = format!("task_conformance_{}", run.tasks.len() + 1);
            run.tasks.insert(id.clone(), 0);
            id
        };
        return (
            success(
                StatusCode::ACCEPTED,
                &json!({"task_id": id, "status": "queued"}),
            ),
            Named::Nothing,
        );
    }
    let n = {
        let mut run = lock(app);
        let n = run.counts.entry(s.name).or_insert(0);
        *n += 1;
        *n - 1
    };
    if s.name == "burst" && n < BURST_CLIENTS {
        gather(app).await;
    }
    scripted(s.name, n)
}

/// Holds a first burst request until all of them arrived (or [`BURST_GATHER`] passed).
async fn gather(app: &App) {
    // Registered before the count is read, so a release in between is not missed.
    let notified = app.burst_ready.notified();
    let mut notified = std::pin::pin!(notified);
    notified.as_mut().enable();
    let released = {
        let mut run = lock(app);
        run.burst.arrived += 1;
        if run.burst.arrived >= BURST_CLIENTS {
            run.burst.released = true;
        }
        run.burst.released
    };
    if released {
        app.burst_ready.notify_waiters();
        return;
    }
    let _ = tokio::time::timeout(BURST_GATHER, notified).await;
    lock(app).burst.released = true;
    app.burst_ready.notify_waiters();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One rule's verdict.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    pub(crate) rule: Rule,
    pub(crate) pass: bool,
    pub(crate) detail: String,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// The time from one answer to the next request.
fn gap(prev: &Attempt, next: &Attempt) -> Duration {
    next.arrived.saturating_duration_since(prev.answered)
}

fn grade_rule(rule: Rule, s: &Scenario, attempts: &[&Attempt], polls: &[&Attempt]) -> Verdict {
    let n = attempts.len();
    let (pass, detail) = if n == 0 {
        (false, "never requested".to_owned())
    } else if matches!(
        rule,
        Rule::Retried | Rule::WaitedAsNamed | Rule::WaitedWindow | Rule::Backoff
    ) && n == 1
        && s.method == Method::POST
        && attempts[0].key.is_none()
    {
        (
            true,
            "not retried: a POST without an Idempotency-Key is never sent twice".to_owned(),
        )
    } else {
        match rule {
            Rule::Retried => retried(s, attempts),
            Rule::MaxAttempts => {
                let per_client = RetryPolicy::default().max_attempts() as usize;
                let limit = per_client * s.clients;
                (n <= limit, format!("{n} attempt(s), at most {limit}"))
            }
            Rule::NoRetryPermanent | Rule::NoRetry501 => (n == 1, format!("{n} attempt(s)")),
            Rule::WaitedAsNamed => waited_as_named(attempts),
            Rule::WaitedWindow => waited_window(attempts),
            Rule::Backoff => backoff(attempts),
            Rule::OneIdempotencyKey => one_key(attempts),
            Rule::SameBody => {
                let same = attempts
                    .iter()
                    .all(|a| a.body_sha256 == attempts[0].body_sha256);
                let what = if same { "one body" } else { "different bodies" };
                (same, format!("{n} attempt(s) with {what}"))
            }
            Rule::ResubmitAsync => resubmitted(attempts),
            Rule::PolledTask => (
                polls.len() >= 2 && polls.iter().all(|p| p.status == 200),
                format!("{} poll(s) of /tasks/{{task_id}}", polls.len()),
            ),
            Rule::Spread => spread(attempts),
        }
    };
    Verdict { rule, pass, detail }
}

/// A verdict and its detail.
type Check = (bool, String);

fn retried(s: &Scenario, attempts: &[&Attempt]) -> Check {
    let n = attempts.len();
    let ok = attempts
        .iter()
        .filter(|a| (200..300).contains(&a.status))
        .count();
    match s.name {
        "server-errors-forever" => (n >= 2, format!("{n} attempts")),
        "burst" => (
            ok >= BURST_CLIENTS,
            format!("{ok} of {BURST_CLIENTS} clients got their success ({n} requests)"),
        ),
        _ if ok >= 1 => (true, format!("succeeded at attempt {n}")),
        _ => (
            false,
            format!("gave up after {n} attempt(s) without the success that followed"),
        ),
    }
}

fn waited_as_named(attempts: &[&Attempt]) -> Check {
    let policy = RetryPolicy::default();
    let mut details = Vec::new();
    let mut pass = true;
    for pair in attempts.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        let waited = gap(prev, next);
        match prev.named {
            Named::After(d) => {
                pass &= waited + SLACK >= d.max(policy.min_wait());
                details.push(format!(
                    "waited {} after Retry-After: {}",
                    secs(waited),
                    d.as_secs()
                ));
            }
            Named::Until(reset) => {
                let at = u128::from(reset) * 1000;
                pass &= next.arrived_unix_ms + SLACK.as_millis() >= at
                    && waited + SLACK >= policy.min_wait();
                let early = at.saturating_sub(next.arrived_unix_ms);
                details.push(if early > 0 {
                    format!("retried {early} ms before X-RateLimit-Reset")
                } else {
                    format!(
                        "retried at or after X-RateLimit-Reset (waited {})",
                        secs(waited)
                    )
                });
            }
            _ => {}
        }
    }
    if details.is_empty() {
        return (false, format!("not retried ({} attempt)", attempts.len()));
    }
    (pass, details.join("; "))
}

fn waited_window(attempts: &[&Attempt]) -> Check {
    let need = Duration::from_secs(30);
    let mut details = Vec::new();
    let mut pass = true;
    for pair in attempts.windows(2) {
        if matches!(pair[0].named, Named::Window) {
            let waited = gap(pair[0], pair[1]);
            pass &= waited + SLACK >= need;
            details.push(format!("waited {} (at least 30 s)", secs(waited)));
        }
    }
    if details.is_empty() {
        return (false, "not retried".into());
    }
    (pass, details.join("; "))
}

fn backoff(attempts: &[&Attempt]) -> Check {
    let policy = RetryPolicy::default();
    let mut details = Vec::new();
    let mut pass = true;
    for (i, pair) in attempts.windows(2).enumerate() {
        if matches!(pair[0].named, Named::Backoff) {
            let attempt = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let need = least_backoff(&policy, attempt);
            let waited = gap(pair[0], pair[1]);
            pass &= waited + SLACK >= need;
            details.push(format!(
                "after attempt {attempt}: waited {} (at least {})",
                secs(waited),
                secs(need)
            ));
        }
    }
    if details.is_empty() {
        return (false, "not retried".into());
    }
    (pass, details.join("; "))
}

fn one_key(attempts: &[&Attempt]) -> Check {
    let n = attempts.len();
    if n == 1 {
        return (true, "not retried".into());
    }
    let first = attempts[0].key.as_deref();
    let same =
        first.is_some_and(|k| !k.is_empty()) && attempts.iter().all(|a| a.key.as_deref() == first);
    if same {
        return (true, format!("{n} attempts, one key"));
    }
    let keys: Vec<&str> = attempts
        .iter()
        .map(|a| a.key.as_deref().unwrap_or("(none)"))
        .collect();
    (false, format!("{n} attempts with keys {}", keys.join(", ")))
}

fn spread(attempts: &[&Attempt]) -> Check {
    if attempts.len() < BURST_CLIENTS {
        return (
            false,
            format!(
                "only {} of {BURST_CLIENTS} clients sent a request",
                attempts.len()
            ),
        );
    }
    let retries: Vec<Instant> = attempts
        .iter()
        .skip(BURST_CLIENTS)
        .map(|a| a.arrived)
        .collect();
    let (Some(lo), Some(hi)) = (retries.iter().min(), retries.iter().max()) else {
        return (false, "no retries".into());
    };
    let spread = hi.saturating_duration_since(*lo);
    (
        retries.len() >= 2 && spread >= BURST_SPREAD,
        format!(
            "{} retries over {} ms (at least {} ms)",
            retries.len(),
            spread.as_millis(),
            BURST_SPREAD.as_millis()
        ),
    )
}

/// The least delay the default policy's backoff allows after `attempt` failed.
fn least_backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = i32::try_from(attempt.saturating_sub(1).min(1024)).unwrap_or(1024);
    let grown = policy.initial_delay().as_secs_f64() * policy.multiplier().powi(exp);
    let base = grown.min(policy.max_delay().as_secs_f64());
    Duration::from_secs_f64((base * (1.0 - policy.jitter())).max(0.0))
}

fn resubmitted(attempts: &[&Attempt]) -> Check {
    let verdict = |pass: bool, detail: String| (pass, detail);
    let is_async = |a: &Attempt| a.body.as_ref().and_then(|b| b.get("async")) == Some(&json!(true));
    let Some(first) = attempts.iter().position(|a| a.status == 408) else {
        return verdict(false, "no request was answered 408".into());
    };
    let after = &attempts[first + 1..];
    let replays = after.iter().filter(|a| !is_async(a)).count();
    let Some(resubmitted) = after.iter().find(|a| is_async(a)) else {
        return verdict(
            false,
            format!("no resubmission with async: true ({replays} plain replays)"),
        );
    };
    let without_async = |a: &Attempt| {
        a.body.clone().map(|mut b| {
            if let Some(o) = b.as_object_mut() {
                o.remove("async");
            }
            b
        })
    };
    let same_work = without_async(resubmitted) == without_async(attempts[first]);
    verdict(
        replays == 0 && same_work,
        format!(
            "resubmitted with async: true{}{}",
            if same_work { "" } else { ", but other work" },
            if replays == 0 {
                String::new()
            } else {
                format!(", after {replays} plain replay(s) of the sync request")
            }
        ),
    )
}

/// A scenario's verdicts.
pub(crate) struct Graded {
    pub(crate) name: &'static str,
    what: &'static str,
    attempts: Vec<Value>,
    pub(crate) verdicts: Vec<Verdict>,
}

fn grade(run: &Run) -> Vec<Graded> {
    scenarios()
        .iter()
        .map(|s| {
            let mine: Vec<&Attempt> = run
                .attempts
                .iter()
                .filter(|a| a.scenario == Some(s.name))
                .collect();
            let (polls, attempts): (Vec<&Attempt>, Vec<&Attempt>) =
                mine.iter().partition(|a| a.path.starts_with("/tasks/"));
            let verdicts = s
                .rules
                .iter()
                .map(|&r| grade_rule(r, s, &attempts, &polls))
                .collect();
            Graded {
                name: s.name,
                what: s.what,
                attempts: mine
                    .iter()
                    .map(|a| {
                        json!({
                            "at_ms": millis(a.arrived.saturating_duration_since(run.start)),
                            "method": a.method,
                            "path": a.path,
                            "idempotency_key": a.key,
                            "body_sha256": a.body_sha256,
                            "status": a.status,
                        })
                    })
                    .collect(),
                verdicts,
            }
        })
        .collect()
}

/// The report's formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
    Junit,
}

pub(crate) fn report_json(graded: &[Graded], elapsed: Duration, problems: &[String]) -> Value {
    let (passed, failed) = tally(graded);
    json!({
        "passed": failed == 0 && problems.is_empty(),
        "duration_ms": millis(elapsed),
        "rules_passed": passed,
        "rules_failed": failed,
        "problems": problems,
        "scenarios": graded.iter().map(|g| json!({
            "name": g.name,
            "what": g.what,
            "attempts": g.attempts,
            "rules": g.verdicts.iter().map(|v| json!({
                "rule": v.rule.id(),
                "text": v.rule.text(),
                "verdict": if v.pass { "pass" } else { "fail" },
                "detail": v.detail,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn tally(graded: &[Graded]) -> (usize, usize) {
    let all = graded.iter().flat_map(|g| &g.verdicts);
    let passed = all.clone().filter(|v| v.pass).count();
    (passed, all.count() - passed)
}

pub(crate) fn report_text(graded: &[Graded], elapsed: Duration, problems: &[String]) -> String {
    let (passed, failed) = tally(graded);
    let mut s = String::new();
    for g in graded {
        let _ = writeln!(s, "{} ({} requests): {}", g.name, g.attempts.len(), g.what);
        for v in &g.verdicts {
            let _ = writeln!(
                s,
                "  {} {:<20} {}",
                if v.pass { "PASS" } else { "FAIL" },
                v.rule.id(),
                v.detail
            );
        }
    }
    for p in problems {
        let _ = writeln!(s, "problem: {p}");
    }
    let _ = writeln!(
        s,
        "conformance: {passed} passed, {failed} failed, in {:.1} s: {}",
        elapsed.as_secs_f64(),
        if failed == 0 && problems.is_empty() {
            "PASS"
        } else {
            "FAIL"
        }
    );
    s
}

fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c < ' ' && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn report_junit(graded: &[Graded], elapsed: Duration, problems: &[String]) -> String {
    let (passed, failed) = tally(graded);
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"overten-errors conformance\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{:.3}\">",
        passed + failed,
        failed,
        problems.len(),
        elapsed.as_secs_f64()
    );
    for g in graded {
        let fails = g.verdicts.iter().filter(|v| !v.pass).count();
        let _ = writeln!(
            s,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{fails}\">",
            xml(g.name),
            g.verdicts.len()
        );
        for v in &g.verdicts {
            let _ = write!(
                s,
                "    <testcase classname=\"conformance.{}\" name=\"{}\"",
                xml(g.name),
                v.rule.id()
            );
            if v.pass {
                let _ = writeln!(s, "/>");
            } else {
                let _ = writeln!(
                    s,
                    ">\n      <failure message=\"{}\">{}: {}</failure>\n    </testcase>",
                    xml(&v.detail),
                    xml(v.rule.text()),
                    xml(&v.detail)
                );
            }
        }
        let _ = writeln!(s, "  </testsuite>");
    }
    if !problems.is_empty() {
        let _ = writeln!(
            s,
            "  <testsuite name=\"run\" tests=\"{}\" errors=\"{}\">",
            problems.len(),
            problems.len()
        );
        for p in problems {
            let _ = writeln!(
                s,
                "    <testcase classname=\"conformance.run\" name=\"run\">\n      <error message=\"{}\"/>\n    </testcase>",
                xml(p)
            );
        }
        let _ = writeln!(s, "  </testsuite>");
    }
    let _ = writeln!(s, "</testsuites>");
    s
}

/// What `overten-errors conformance` was asked for.
pub(crate) struct Options {
    pub(crate) addr: SocketAddr,
    pub(crate) format: Format,
    pub(crate) json: Option<PathBuf>,
    pub(crate) junit: Option<PathBuf>,
    pub(crate) timeout: Duration,
    pub(crate) command: Vec<String>,
}

fn router(app: App) -> Router {
    Router::new().fallback(handle).with_state(app)
}

pub(crate) fn main(options: &Options) -> ExitCode {
    if !options.addr.ip().is_loopback() {
        eprintln!(
            "overten-errors conformance: binds to loopback addresses only (127.0.0.0/8, ::1)"
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("overten-errors conformance: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(options)) {
        Ok(pass) if pass => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("overten-errors conformance: {e}");
            ExitCode::from(2)
        }
    }
}

/// Stops `child` and every process of its group (SIGKILL to the group the child leads).
/// `group` is the child's pid, read while it ran: the group outlives its leader while any
/// member is left.
async fn stop_group(child: &mut tokio::process::Child, group: Option<u32>) {
    #[cfg(unix)]
    if let Some(pid) = group {
        // This crate forbids `unsafe`, so no `kill(2)` here: the shell's `kill` takes a
        // negative pid as a group, and its exit status does not matter (the group may be
        // gone already).
        let _ = tokio::process::Command::new("sh")
            .args(["-c", &format!("kill -KILL -{pid} 2>/dev/null")])
            .status()
            .await;
    }
    let _ = child.kill().await;
}

async fn run(options: &Options) -> Result<bool, String> {
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.addr))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let base = format!("http://{bound}");
    let app: App = Arc::new(Shared::new());
    let server = {
        let router = router(app.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        })
    };
    // Progress goes to stderr: stdout is the report's.
    eprintln!(
        "conformance mock on {base}: plan at {base}/conformance, {} scenarios",
        scenarios().len()
    );
    let mut problems = Vec::new();
    let done = app.done.notified();
    if options.command.is_empty() {
        eprintln!(
            "waiting for POST {base}/conformance/done (at most {} s)",
            options.timeout.as_secs()
        );
        if tokio::time::timeout(options.timeout, done).await.is_err() {
            problems.push(format!(
                "no POST /conformance/done within {} s",
                options.timeout.as_secs()
            ));
        }
    } else {
        let mut command = tokio::process::Command::new(&options.command[0]);
        // A process group of its own, so that what the program started goes with it.
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command
            .args(&options.command[1..])
            .env("OVERTEN_BASE_URL", &base)
            .env("OVERTEN_API_KEY", API_KEY)
            .env("OVERTEN_CONFORMANCE_PLAN", format!("{base}/conformance"))
            .stdout(std::io::stderr())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", options.command[0]))?;
        let group = child.id();
        tokio::select! {
            status = child.wait() => match status {
                Ok(s) if s.success() => {}
                Ok(s) => problems.push(format!("the client program exited with {s}")),
                Err(e) => problems.push(format!("the client program: {e}")),
            },
            () = done => {
                let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            }
            () = tokio::time::sleep(options.timeout) => {
                problems.push(format!("the client program ran past {} s and was stopped", options.timeout.as_secs()));
            }
        }
        // Whatever of the program's group is still running (the program itself past its
        // timeout, or children it left behind) is stopped with it.
        stop_group(&mut child, group).await;
    }
    let (graded, elapsed) = {
        let run = lock(&app);
        if run.overflow {
            problems.push(format!(
                "more than {MAX_RECORDED} requests or {MAX_TASKS} async resubmissions: the rest were answered 503 and not recorded"
            ));
        }
        (grade(&run), run.start.elapsed())
    };
    server.abort();
    let pass = problems.is_empty() && tally(&graded).1 == 0;
    if let Some(path) = &options.json {
        write_file(
            path,
            &format!("{:#}\n", report_json(&graded, elapsed, &problems)),
        )?;
    }
    if let Some(path) = &options.junit {
        write_file(path, &report_junit(&graded, elapsed, &problems))?;
    }
    let out = match options.format {
        Format::Text => report_text(&graded, elapsed, &problems),
        Format::Json => format!("{:#}\n", report_json(&graded, elapsed, &problems)),
        Format::Junit => report_junit(&graded, elapsed, &problems),
    };
    let mut stdout = std::io::stdout();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| e.to_string())?;
    Ok(pass)
}

fn write_file(path: &std::path::Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attempts of a scenario: each `(ms after the start it arrived, ms its answer took,
    /// status, named)`.
    fn record(specs: &[(u64, u64, u16, Named)]) -> Vec<Attempt> {
        let start = Instant::now();
        specs
            .iter()
            .map(|&(at, took, status, named)| {
                let arrived = start + Duration::from_millis(at);
                Attempt {
                    scenario: Some("x"),
                    arrived,
                    arrived_unix_ms: 1_000_000 + u128::from(at),
                    answered: arrived + Duration::from_millis(took),
                    method: "GET".into(),
                    path: "/conformance/x".into(),
                    key: None,
                    body_sha256: String::new(),
                    body: None,
                    status,
                    named,
                }
            })
            .collect()
    }

    fn refs(v: &[Attempt]) -> Vec<&Attempt> {
        v.iter().collect()
    }

    fn scenario(name: &str) -> Scenario {
        scenarios().into_iter().find(|s| s.name == name).unwrap()
    }

    fn verdict(rule: Rule, name: &str, v: &[Attempt]) -> bool {
        grade_rule(rule, &scenario(name), &refs(v), &[]).pass
    }

    #[test]
    fn a_named_wait_passes_at_the_wait_and_fails_21_ms_short() {
        let after = Named::After(Duration::from_secs(2));
        // Answered at 10 ms; the retry 2000 ms later passes, 1979 ms later does not (20 ms
        // of slack), and 1980 still does.
        for (retry_at, pass) in [(2010, true), (1990, true), (1989, false), (500, false)] {
            let v = record(&[(0, 10, 429, after), (retry_at, 1, 200, Named::Nothing)]);
            assert_eq!(
                verdict(Rule::WaitedAsNamed, "rate-limit-retry-after", &v),
                pass,
                "{retry_at}"
            );
        }
        // Retry-After: 0 still means min_wait (1 s).
        let zero = Named::After(Duration::ZERO);
        let v = record(&[(0, 0, 503, zero), (500, 1, 200, Named::Nothing)]);
        assert!(!verdict(Rule::WaitedAsNamed, "unavailable-retry-after", &v));
        let v = record(&[(0, 0, 503, zero), (1000, 1, 200, Named::Nothing)]);
        assert!(verdict(Rule::WaitedAsNamed, "unavailable-retry-after", &v));
        // Not retried at all: fails.
        let v = record(&[(0, 0, 429, after)]);
        assert!(!verdict(Rule::WaitedAsNamed, "rate-limit-retry-after", &v));
    }

    #[test]
    fn a_reset_is_a_moment_on_the_clock_not_a_duration() {
        // The record's clock: arrived_unix_ms = 1_000_000 + at. A reset at 1003 s is
        // 1_003_000 ms: the retry must arrive at `at` >= 3000 (less 20 ms of slack).
        let until = Named::Until(1003);
        for (retry_at, pass) in [(3000, true), (2980, true), (2979, false), (1500, false)] {
            let v = record(&[(0, 0, 429, until), (retry_at, 1, 200, Named::Nothing)]);
            assert_eq!(
                verdict(Rule::WaitedAsNamed, "rate-limit-headers", &v),
                pass,
                "{retry_at}"
            );
        }
        // A reset already past still means min_wait.
        let past = Named::Until(999);
        let v = record(&[(0, 0, 429, past), (100, 1, 200, Named::Nothing)]);
        assert!(!verdict(Rule::WaitedAsNamed, "rate-limit-headers", &v));
    }

    #[test]
    fn the_503_window_is_30_seconds_at_least() {
        for (retry_at, pass) in [
            (30_000, true),
            (29_980, true),
            (29_979, false),
            (1000, false),
        ] {
            let v = record(&[
                (0, 0, 503, Named::Window),
                (retry_at, 1, 200, Named::Nothing),
            ]);
            assert_eq!(
                verdict(Rule::WaitedWindow, "unavailable-window", &v),
                pass,
                "{retry_at}"
            );
        }
    }

    #[test]
    fn backoff_floors_are_half_of_1_2_4_8_seconds() {
        // retry.md step 9 with the defaults: bases 1000, 2000, 4000, 8000 ms, jitter 0.5.
        assert_eq!(
            least_backoff(&RetryPolicy::default(), 1),
            Duration::from_millis(500)
        );
        assert_eq!(
            least_backoff(&RetryPolicy::default(), 2),
            Duration::from_secs(1)
        );
        assert_eq!(
            least_backoff(&RetryPolicy::default(), 4),
            Duration::from_secs(4)
        );
        assert_eq!(
            least_backoff(&RetryPolicy::default(), 9),
            Duration::from_secs(16)
        );
        assert_eq!(
            least_backoff(&RetryPolicy::default(), 60),
            Duration::from_secs(16)
        );
        let b = Named::Backoff;
        let ok = record(&[
            (0, 0, 500, b),
            (500, 0, 502, b),
            (1500, 0, 500, b),
            (3500, 0, 200, Named::Nothing),
        ]);
        assert!(verdict(Rule::Backoff, "server-errors-then-success", &ok));
        // A fixed second fails after attempt 3 (needs 2 s).
        let fixed = record(&[
            (0, 0, 500, b),
            (1000, 0, 502, b),
            (2000, 0, 500, b),
            (3000, 0, 200, Named::Nothing),
        ]);
        assert!(!verdict(
            Rule::Backoff,
            "server-errors-then-success",
            &fixed
        ));
        // An immediate first retry fails.
        let hot = record(&[(0, 0, 500, b), (5, 0, 200, Named::Nothing)]);
        assert!(!verdict(Rule::Backoff, "server-errors-then-success", &hot));
        assert!(!verdict(
            Rule::Backoff,
            "server-errors-then-success",
            &record(&[(0, 0, 500, b)])
        ));
    }

    #[test]
    fn attempts_are_counted_against_max_attempts_and_permanent_errors_once() {
        let five: Vec<(u64, u64, u16, Named)> =
            (0..5).map(|i| (i * 10, 0, 500, Named::Backoff)).collect();
        assert!(verdict(
            Rule::MaxAttempts,
            "server-errors-forever",
            &record(&five)
        ));
        let six: Vec<(u64, u64, u16, Named)> =
            (0..6).map(|i| (i * 10, 0, 500, Named::Backoff)).collect();
        assert!(!verdict(
            Rule::MaxAttempts,
            "server-errors-forever",
            &record(&six)
        ));
        // Eight clients may make 40.
        let forty: Vec<(u64, u64, u16, Named)> =
            (0..40).map(|i| (i, 0, 500, Named::Backoff)).collect();
        assert!(verdict(Rule::MaxAttempts, "burst", &record(&forty)));
        let once = record(&[(0, 0, 404, Named::Nothing)]);
        let twice = record(&[(0, 0, 404, Named::Nothing), (10, 0, 404, Named::Nothing)]);
        assert!(verdict(Rule::NoRetryPermanent, "permanent", &once));
        assert!(!verdict(Rule::NoRetryPermanent, "permanent", &twice));
        assert!(!verdict(Rule::NoRetry501, "not-implemented", &twice));
        assert!(!verdict(Rule::NoRetry501, "not-implemented", &[]));
    }

    #[test]
    fn retried_means_reaching_the_success_that_followed() {
        let b = Named::Backoff;
        let gave_up = record(&[(0, 0, 500, b), (600, 0, 502, b)]);
        assert!(!verdict(
            Rule::Retried,
            "server-errors-then-success",
            &gave_up
        ));
        let reached = record(&[(0, 0, 500, b), (600, 0, 200, Named::Nothing)]);
        assert!(verdict(
            Rule::Retried,
            "server-errors-then-success",
            &reached
        ));
        assert!(!verdict(
            Rule::Retried,
            "server-errors-forever",
            &record(&[(0, 0, 500, b)])
        ));
        assert!(verdict(
            Rule::Retried,
            "server-errors-forever",
            &record(&[(0, 0, 500, b), (600, 0, 500, b)])
        ));
    }

    #[test]
    fn one_key_and_one_body_across_a_posts_retries() {
        let mut v = record(&[
            (0, 0, 503, Named::After(Duration::from_secs(1))),
            (1000, 0, 500, Named::Backoff),
            (2000, 0, 201, Named::Nothing),
        ]);
        for a in &mut v {
            a.key = Some("k1".into());
            a.body_sha256 = "aa".into();
            a.method = "POST".into();
        }
        assert!(verdict(Rule::OneIdempotencyKey, "idempotent-post", &v));
        assert!(verdict(Rule::SameBody, "idempotent-post", &v));
        v[2].key = Some("k2".into());
        v[1].body_sha256 = "bb".into();
        assert!(!verdict(Rule::OneIdempotencyKey, "idempotent-post", &v));
        assert!(!verdict(Rule::SameBody, "idempotent-post", &v));
        // Replayed without any key: fails.
        for a in &mut v {
            a.key = None;
        }
        assert!(!verdict(Rule::OneIdempotencyKey, "idempotent-post", &v));
        // Sent once without a key: the rule against replays holds; retry rules pass too.
        let single = vec![v[0].clone()];
        assert!(verdict(Rule::OneIdempotencyKey, "idempotent-post", &single));
        assert!(verdict(Rule::WaitedAsNamed, "idempotent-post", &single));
        assert!(verdict(Rule::Retried, "idempotent-post", &single));
        // But sent once *with* a key and given up: not retried.
        let mut keyed = single;
        keyed[0].key = Some("k1".into());
        assert!(!verdict(Rule::Retried, "idempotent-post", &keyed));
    }

    #[test]
    fn a_408_is_resubmitted_with_async_true_not_replayed() {
        let work = json!({"prompt": "p"});
        let mut v = record(&[(0, 0, 408, Named::Nothing), (10, 0, 202, Named::Nothing)]);
        v[0].body = Some(work.clone());
        v[1].body = Some(json!({"prompt": "p", "async": true}));
        assert!(resubmitted(&refs(&v)).0);
        // Other work with async: true fails; so does a replay before it.
        v[1].body = Some(json!({"prompt": "q", "async": true}));
        assert!(!resubmitted(&refs(&v)).0);
        let mut replayed = record(&[
            (0, 0, 408, Named::Nothing),
            (10, 0, 408, Named::Nothing),
            (20, 0, 202, Named::Nothing),
        ]);
        replayed[0].body = Some(work.clone());
        replayed[1].body = Some(work.clone());
        replayed[2].body = Some(json!({"prompt": "p", "async": true}));
        assert!(!resubmitted(&refs(&replayed)).0);
        replayed.remove(1);
        assert!(resubmitted(&refs(&replayed)).0);
        // "async": "true" (a string) is not a resubmission.
        replayed[1].body = Some(json!({"prompt": "p", "async": "true"}));
        assert!(!resubmitted(&refs(&replayed)).0);
        assert!(!resubmitted(&refs(&record(&[(0, 0, 202, Named::Nothing)]))).0);
    }

    #[test]
    fn polling_needs_two_answers_of_the_task() {
        let s = scenario("sync-timeout");
        let first = record(&[(0, 0, 408, Named::Nothing)]);
        let polls = record(&[(10, 0, 200, Named::Nothing), (20, 0, 200, Named::Nothing)]);
        assert!(grade_rule(Rule::PolledTask, &s, &refs(&first), &refs(&polls)).pass);
        assert!(!grade_rule(Rule::PolledTask, &s, &refs(&first), &refs(&polls[..1])).pass);
        let lost = record(&[(10, 0, 404, Named::Nothing), (20, 0, 404, Named::Nothing)]);
        assert!(!grade_rule(Rule::PolledTask, &s, &refs(&first), &refs(&lost)).pass);
    }

    #[test]
    fn burst_retries_must_spread_over_50_ms() {
        let b = Named::Backoff;
        let mut specs: Vec<(u64, u64, u16, Named)> = (0..8).map(|_| (0, 0, 500, b)).collect();
        let together: Vec<(u64, u64, u16, Named)> = (0..8)
            .map(|i| (1000 + i * 7, 0, 200, Named::Nothing))
            .collect();
        let spread_out: Vec<(u64, u64, u16, Named)> = (0..8)
            .map(|i| (600 + i * 60, 0, 200, Named::Nothing))
            .collect();
        let mut a = specs.clone();
        a.extend(&together); // 49 ms from first to last
        assert!(!verdict(Rule::Spread, "burst", &record(&a)));
        specs.extend(&spread_out);
        assert!(verdict(Rule::Spread, "burst", &record(&specs)));
        let exactly: Vec<(u64, u64, u16, Named)> = (0..8)
            .map(|_| (0, 0, 500, b))
            .chain([(600, 0, 200, Named::Nothing), (650, 0, 200, Named::Nothing)])
            .collect();
        assert!(verdict(Rule::Spread, "burst", &record(&exactly)));
        // Fewer than 8 clients, or no retries: fails.
        assert!(!verdict(Rule::Spread, "burst", &record(&spread_out[..7])));
        let no_retries: Vec<(u64, u64, u16, Named)> = (0..8).map(|_| (0, 0, 500, b)).collect();
        assert!(!verdict(Rule::Spread, "burst", &record(&no_retries)));
        let ok: Vec<(u64, u64, u16, Named)> = (0..16)
            .map(|i| (i, 0, if i < 8 { 500 } else { 200 }, b))
            .collect();
        assert!(verdict(Rule::Retried, "burst", &record(&ok)));
        assert!(!verdict(Rule::Retried, "burst", &record(&ok[..15])));
    }

    #[test]
    fn scripts_answer_as_the_plan_says() {
        let status = |name: &str, n: usize| scripted(name, n).0.status().as_u16();
        assert_eq!(
            (0..4)
                .map(|n| status("server-errors-then-success", n))
                .collect::<Vec<_>>(),
            [500, 502, 500, 200]
        );
        assert_eq!(
            (0..3)
                .map(|n| status("idempotent-post", n))
                .collect::<Vec<_>>(),
            [503, 500, 201]
        );
        assert_eq!(status("server-errors-forever", 7), 500);
        assert_eq!((status("burst", 7), status("burst", 8)), (500, 200));
        assert_eq!(
            (status("permanent", 0), status("not-implemented", 3)),
            (404, 501)
        );
        let (r, named) = scripted("rate-limit-headers", 0);
        assert!(r.headers().get("retry-after").is_none());
        assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
        assert!(matches!(named, Named::Until(_)));
        let (r, _) = scripted("unavailable-window", 0);
        assert!(r.headers().get("retry-after").is_none());
        assert_eq!(
            scripted("unavailable-retry-after", 0).0.headers()["retry-after"],
            "3"
        );
        assert_eq!(
            scripted("not-implemented", 0).0.headers()["retry-after"],
            "1"
        );
        assert_eq!(status("sync-timeout", 0), 408);
    }

    #[test]
    fn xml_is_escaped_and_controls_dropped() {
        assert_eq!(xml("a<b>&\"'\u{1}\n"), "a&lt;b&gt;&amp;&quot;&apos; \n");
    }

    #[test]
    fn details_say_what_was_measured() {
        let after = Named::After(Duration::from_secs(2));
        let v = record(&[(0, 10, 429, after), (2010, 1, 200, Named::Nothing)]);
        let got = grade_rule(
            Rule::WaitedAsNamed,
            &scenario("rate-limit-retry-after"),
            &refs(&v),
            &[],
        );
        assert_eq!(got.detail, "waited 2.000 s after Retry-After: 2");
        let until = Named::Until(1003);
        let early = record(&[(0, 0, 429, until), (2500, 1, 200, Named::Nothing)]);
        let got = grade_rule(
            Rule::WaitedAsNamed,
            &scenario("rate-limit-headers"),
            &refs(&early),
            &[],
        );
        assert_eq!(got.detail, "retried 500 ms before X-RateLimit-Reset");
        let late = record(&[(0, 0, 429, until), (3000, 1, 200, Named::Nothing)]);
        let got = grade_rule(
            Rule::WaitedAsNamed,
            &scenario("rate-limit-headers"),
            &refs(&late),
            &[],
        );
        assert_eq!(
            got.detail,
            "retried at or after X-RateLimit-Reset (waited 3.000 s)"
        );
        assert_eq!(hex(&[0x0f, 0xa0, 0x00]), "0fa000");
        assert_eq!(millis(Duration::from_millis(1234)), 1234);
        assert!(Rule::Spread.text().contains("spread"));
    }

    /// A flood past the record's bound adds nothing: no attempt, no task id, no body. On
    /// the main of issue 25 every async resubmission past 10,000 requests still added a
    /// task id.
    #[tokio::test]
    async fn a_flood_is_bounded_in_every_map() {
        let app: App = Arc::new(Shared::new());
        let post = |body: String| {
            Request::builder()
                .method("POST")
                .uri("/conformance/sync-timeout")
                .body(Body::from(body))
                .unwrap()
        };
        // A body of a few KiB (a long prompt) is kept parsed, for the rules that read it.
        let prompt = format!(r#"{{"async":true,"prompt":"{}"}}"#, "x".repeat(4000));
        let r = handle(State(Arc::clone(&app)), post(prompt)).await;
        assert_eq!(r.status(), 202);
        assert!(
            lock(&app).attempts[0].body.is_some(),
            "a 4 KB body is kept parsed"
        );
        let big = format!(
            r#"{{"async":true,"pad":"{}"}}"#,
            "x".repeat(MAX_RECORDED_BODY)
        );
        let r = handle(State(Arc::clone(&app)), post(big)).await;
        assert_eq!(r.status(), 202);
        assert!(
            lock(&app).attempts[1].body.is_none(),
            "a large body is not kept parsed"
        );
        let mut statuses = HashMap::new();
        for _ in 0..(MAX_RECORDED + 200) {
            let r = handle(State(Arc::clone(&app)), post(r#"{"async":true}"#.into())).await;
            *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
        }
        let run = lock(&app);
        assert!(run.tasks.len() <= MAX_TASKS, "{} tasks", run.tasks.len());
        assert_eq!(run.attempts.len(), MAX_RECORDED);
        assert!(run.overflow);
        assert_eq!(statuses.get(&202), Some(&(MAX_TASKS - 2)));
        assert_eq!(
            statuses.get(&503),
            Some(&(MAX_RECORDED + 200 - (MAX_TASKS - 2)))
        );
    }

    /// The burst's first requests are held until all 8 arrived, then answered together,
    /// however staggered they came: a client with a fixed delay then retries in one instant.
    #[tokio::test]
    async fn the_burst_answers_its_first_requests_together() {
        let app: App = Arc::new(Shared::new());
        let burst = scenario("burst");
        let mut answered = Vec::new();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..BURST_CLIENTS {
            let app = Arc::clone(&app);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(40 * i as u64)).await;
                let s = scenario("burst");
                let (r, _) = answer(&app, &s, &Method::GET, None).await;
                (r.status().as_u16(), Instant::now())
            }));
        }
        for t in tasks {
            answered.push(t.await.unwrap());
        }
        let last_arrival = Duration::from_millis(40 * (BURST_CLIENTS as u64 - 1));
        for (status, at) in &answered {
            assert_eq!(*status, 500);
            // None answered before the last one arrived (280 ms in).
            assert!(at.duration_since(start) + Duration::from_millis(5) >= last_arrival);
        }
        let first = answered.iter().map(|a| a.1).min().unwrap();
        let last = answered.iter().map(|a| a.1).max().unwrap();
        assert!(last.duration_since(first) < Duration::from_millis(30));
        // The ninth request is not held and succeeds.
        let (r, _) = answer(&app, &burst, &Method::GET, None).await;
        assert_eq!(r.status(), 200);
        // A method the scenario does not use is refused.
        let (r, _) = answer(&app, &burst, &Method::DELETE, None).await;
        assert_eq!(r.status(), 400);
    }
}
