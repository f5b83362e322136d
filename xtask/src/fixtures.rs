//! Golden cases, one per code plus every branch of the decision, with the action a
//! conforming client takes.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use overten_errors::{
    ApiError, Code, ErrorCode, Failed, Pacer, RateLimit, RetryAfter, RetryBudget, RetryPolicy,
    TaskError, TaskFailure,
};
use overten_errors_http::{Received, classify, into_response};
use serde_json::{Value, json};

/// The "now" most fixtures assume: Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's sample).
pub(crate) const NOW: u64 = 784_111_777;

/// What a fixture's response is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An HTTP response to the request that failed.
    Http,
    /// The body of `GET /tasks/{task_id}` for a task that ended `failed`.
    TaskFailure,
    /// No response: a transport failure (`sent`, `replay_safe`).
    Transport { sent: bool, replay_safe: bool },
    /// A success to `attempt`: what the budget holds after it.
    Success,
    /// Pacing: a response read for its `X-RateLimit-*` by the key's pacer (held until
    /// `held_until_ms` before it, if ever; the key seen shared or not; `sent_in_window`
    /// attempts of this process counted at `now`), then how long the key's next three
    /// requests, each sent at `now`, wait.
    Pacing(PacingState),
}

/// A pacing fixture's pacer before the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PacingState {
    pub(crate) held_until_ms: Option<u64>,
    pub(crate) seen_shared: bool,
    pub(crate) sent_in_window: u32,
}

/// How many requests a pacing fixture's `waits_ms` lists.
pub(crate) const PACED_REQUESTS: usize = 3;

/// A pacing fixture's procedure (`docs/README.md`): a default pacer in `state`, the response
/// read at `now` with one draw from `rng`, then the whole wait ([`Pacer::wait_at`]) of each
/// of the key's next [`PACED_REQUESTS`] requests, sent at `now` one after another, in ms.
pub(crate) fn pacing_waits(
    held_until_ms: Option<u64>,
    seen_shared: bool,
    sent_in_window: u32,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
    rng: &mut dyn overten_errors::RandomSource,
) -> Vec<Option<u64>> {
    let policy = RetryPolicy::default();
    let pacer = held_until_ms.map_or_else(Pacer::new, |ms| {
        Pacer::holding(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    });
    if seen_shared {
        pacer.mark_shared();
    }
    for _ in 0..sent_in_window {
        pacer.sent(now);
    }
    overten_errors_http::observe_rate_limit_of(&pacer, status, headers, || now, &policy, rng);
    (0..PACED_REQUESTS)
        .map(|_| {
            pacer
                .wait_at(now, &policy)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        })
        .collect()
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http_response",
            Kind::TaskFailure => "task_failure",
            Kind::Transport { .. } => "transport_failure",
            Kind::Success => "success",
            Kind::Pacing(_) => "pacing",
        }
    }
}

pub(crate) struct Fixture {
    pub(crate) name: String,
    description: String,
    kind: Kind,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    now: u64,
    attempt: u32,
    /// Tokens in the client's budget before the decision.
    tokens: u32,
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

impl Fixture {
    fn from_error(name: &str, description: String, err: &ApiError) -> Fixture {
        let response: http::Response<Vec<u8>> = into_response(err);
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Fixture {
            name: name.to_owned(),
            description,
            kind: Kind::Http,
            status: response.status().as_u16(),
            headers,
            body: String::from_utf8_lossy(response.body()).into_owned(),
            now: NOW,
            attempt: 1,
            tokens: RetryBudget::default().capacity(),
        }
    }

    fn raw(
        name: &str,
        description: &str,
        status: u16,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Fixture {
        Fixture {
            name: name.to_owned(),
            description: description.to_owned(),
            kind: Kind::Http,
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.to_owned(),
            now: NOW,
            attempt: 1,
            tokens: RetryBudget::default().capacity(),
        }
    }

    fn task(name: &str, description: &str, code: &str, message: &str) -> Fixture {
        let failure = TaskFailure {
            task_id: "task_00000000000000000000000001".to_owned(),
            status: Failed,
            error: TaskError {
                code: Code::parse(code),
                message: message.to_owned(),
            },
            credits_used: 0,
            duration_ms: 45_123,
        };
        let mut f = Fixture::raw(
            name,
            description,
            200,
            &[("content-type", "application/json")],
            &serde_json::to_string(&failure).unwrap_or_default(),
        );
        f.kind = Kind::TaskFailure;
        f
    }

    fn transport(name: &str, description: &str, sent: bool, replay_safe: bool) -> Fixture {
        let mut f = Fixture::raw(name, description, 0, &[], "");
        f.kind = Kind::Transport { sent, replay_safe };
        f
    }

    fn success(name: &str, description: &str, attempt: u32, tokens: u32) -> Fixture {
        let mut f = Fixture::raw(name, description, 0, &[], "")
            .attempt(attempt)
            .tokens(tokens);
        f.kind = Kind::Success;
        f
    }

    fn pacing(
        name: &str,
        description: &str,
        status: u16,
        headers: &[(&str, &str)],
        state: PacingState,
    ) -> Fixture {
        let mut f = Fixture::raw(name, description, status, headers, "");
        f.kind = Kind::Pacing(state);
        f
    }

    fn attempt(mut self, attempt: u32) -> Fixture {
        self.attempt = attempt;
        self
    }

    fn now(mut self, now: u64) -> Fixture {
        self.now = now;
        self
    }

    fn tokens(mut self, tokens: u32) -> Fixture {
        self.tokens = tokens;
        self
    }

    fn received(&self) -> Received {
        if self.kind == Kind::TaskFailure {
            return match TaskFailure::parse(self.body.as_bytes()) {
                Ok(failure) => Received {
                    error: ApiError::from(failure),
                    diagnostics: overten_errors_http::Diagnostics::default(),
                },
                Err(_) => classify(StatusCode::OK, &HeaderMap::new(), self.body.as_bytes()),
            };
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        classify(status, &self.header_map(), self.body.as_bytes())
    }

    /// The response's headers as `classify` reads a fixture's: the value's bytes as they
    /// are, obs-text too.
    fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_bytes(v.as_bytes()),
            ) {
                map.append(k, v);
            }
        }
        map
    }

    /// A pacing fixture's waits, in ms, with the draw at its two extremes: for each request
    /// one number (or `null`) when they agree, else the range, `min_ms` at `r = 0`.
    fn waits_ms(&self, state: PacingState) -> Vec<Value> {
        let headers = self.header_map();
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let waits = |bits: u64| {
            pacing_waits(
                state.held_until_ms,
                state.seen_shared,
                state.sent_in_window,
                status,
                &headers,
                at(self.now),
                &mut move || bits,
            )
        };
        waits(0)
            .into_iter()
            .zip(waits(u64::MAX))
            .map(|(lo, hi)| match (lo, hi) {
                (Some(a), Some(b)) if a != b => {
                    assert!(a < b, "{}: the low draw waits longer", self.name);
                    json!({"min_ms": a, "max_ms": b})
                }
                (a, b) => {
                    assert_eq!(a, b, "{}: one draw holds, the other not", self.name);
                    json!(a)
                }
            })
            .collect()
    }

    fn budget(&self) -> RetryBudget {
        RetryBudget::default().with_tokens(self.tokens)
    }

    /// The action and the step that decided it, with the range a jittered delay may fall
    /// in: the decision at the two extremes of the random source, each with a fresh budget.
    fn action(&self, received: &Received) -> (Value, Value) {
        let policy = RetryPolicy::default();
        let decide = |bits: u64| {
            let budget = self.budget();
            match self.kind {
                Kind::Transport { sent, replay_safe } => policy.decide_transport(
                    sent,
                    replay_safe,
                    self.attempt,
                    &mut move || bits,
                    Some(&budget),
                ),
                Kind::Http | Kind::TaskFailure | Kind::Success | Kind::Pacing(_) => policy.explain(
                    &received.error,
                    self.attempt,
                    at(self.now),
                    &mut move || bits,
                    Some(&budget),
                ),
            }
        };
        let (lo, hi) = (decide(0), decide(u64::MAX));
        let step = json!(lo.step.as_str());
        let (a, b) = (
            serde_json::to_value(lo.advice).unwrap_or_default(),
            serde_json::to_value(hi.advice).unwrap_or_default(),
        );
        if a == b {
            return (a, step);
        }
        let (a_ms, b_ms) = (a["after_ms"].as_u64(), b["after_ms"].as_u64());
        let range = json!({
            "action": a["action"],
            "basis": a["basis"],
            "min_ms": a_ms.min(b_ms),
            "max_ms": a_ms.max(b_ms),
        });
        (range, step)
    }

    /// The request object every kind shares.
    fn request_json(&self) -> Value {
        let budget = self.budget();
        json!({
            "now_unix": self.now,
            "attempt": self.attempt,
            "budget": {
                // As stated, above capacity too: what a reader is handed.
                "tokens": self.tokens,
                "capacity": budget.capacity(),
                "retry_cost": budget.retry_cost(),
                "window_cost": budget.window_cost(),
                "success_refill": budget.success_refill(),
                "storm_wait_min_ms": u64::try_from(budget.storm_wait().0.as_millis()).unwrap_or(u64::MAX),
                "storm_wait_max_ms": u64::try_from(budget.storm_wait().1.as_millis()).unwrap_or(u64::MAX),
            },
        })
    }

    pub(crate) fn to_json(&self) -> Value {
        if self.kind == Kind::Success {
            let budget = self.budget();
            budget.record_success_after(self.attempt);
            return json!({
                "name": self.name,
                "description": self.description,
                "kind": self.kind.as_str(),
                "request": self.request_json(),
                "expect": { "budget_tokens": budget.tokens() },
            });
        }
        if let Kind::Pacing(state) = self.kind {
            let mut request = json!({
                "now_unix": self.now,
                "attempt": self.attempt,
                "sent_in_window": state.sent_in_window,
                "seen_shared": state.seen_shared,
            });
            if let Some(ms) = state.held_until_ms {
                request["held_until_unix_ms"] = json!(ms);
            }
            let waits = self.waits_ms(state);
            return json!({
                "name": self.name,
                "description": self.description,
                "kind": self.kind.as_str(),
                "request": request,
                "response": {
                    "status": self.status,
                    "headers": self.headers,
                    "body": self.body,
                },
                "expect": { "hold_ms": waits[0], "waits_ms": waits },
            });
        }
        if let Kind::Transport { sent, replay_safe } = self.kind {
            let (action, step) = self.action(&self.received());
            return json!({
                "name": self.name,
                "description": self.description,
                "kind": self.kind.as_str(),
                "request": self.request_json(),
                "failure": { "sent": sent, "replay_safe": replay_safe },
                "expect": { "step": step, "action": action },
            });
        }
        let received = self.received();
        let (action, step) = self.action(&received);
        // What a client reads (the http crate's one report), less the diagnostics' texts,
        // plus the decision.
        let mut expect = received.report();
        if let Some(fields) = expect.as_object_mut() {
            fields.remove("diagnostics");
            fields.insert("step".to_owned(), json!(step));
            fields.insert("action".to_owned(), action);
        }
        json!({
            "name": self.name,
            "description": self.description,
            "kind": self.kind.as_str(),
            "request": self.request_json(),
            "response": {
                "status": self.status,
                "headers": self.headers,
                "body": self.body,
            },
            "expect": expect,
        })
    }
}

fn request_id(n: usize) -> String {
    format!("req_{n:024x}")
}

fn rate_limit(remaining: u32) -> RateLimit {
    RateLimit {
        limit: 60,
        remaining,
        reset: NOW + 18,
    }
}

/// An envelope as the API writes it, for raw fixtures.
fn envelope(code: ErrorCode) -> String {
    String::from_utf8_lossy(&ApiError::from(code).to_json()).into_owned()
}

/// Every fixture: codes first in page order, then every branch of the decision.
#[allow(clippy::too_many_lines, reason = "one fixture after another")]
pub(crate) fn all() -> Vec<Fixture> {
    let mut out = Vec::new();
    for (i, &code) in ErrorCode::ALL.iter().enumerate() {
        let mut err = ApiError::from(code).with_request_id(request_id(i + 1));
        err = match code {
            ErrorCode::RateLimitExceeded => err
                .with_rate_limit(rate_limit(0))
                .with_retry_after(RetryAfter::Seconds(42)),
            _ => err.with_rate_limit(rate_limit(41)),
        };
        let description = format!("{} {}: {}", code.status(), code.as_str(), code.when());
        out.push(Fixture::from_error(code.as_str(), description, &err));
    }
    let json_type = ("content-type", "application/json");
    let limited = envelope(ErrorCode::RateLimitExceeded);
    let internal = envelope(ErrorCode::InternalError);
    let rl = |remaining: &'static str, reset: &'static str| {
        [
            json_type,
            ("x-ratelimit-limit", "60"),
            ("x-ratelimit-remaining", remaining),
            ("x-ratelimit-reset", reset),
        ]
    };
    out.extend([
        Fixture::raw(
            "unknown-code",
            "A code newer than this version on a 503: keep it; any 503 waits in the 30–60 s window.",
            503,
            &[json_type, ("x-request-id", "req_0000000000000000000000aa")],
            r#"{"success":false,"error":"quota_frozen","message":"Your quota is frozen","task_id":"task_1"}"#,
        ),
        Fixture::raw(
            "unknown-code-500",
            "A code newer than this version on a 500: keep it; 5xx backs off.",
            500,
            &[json_type],
            r#"{"success":false,"error":"agent_loop_exhausted","message":"The agent gave up"}"#,
        ),
        Fixture::raw(
            "unknown-code-429",
            "A code newer than this version on a 429: rate limited by status; Retry-After is honoured.",
            429,
            &[json_type, ("retry-after", "7")],
            r#"{"success":false,"error":"burst_limit_exceeded","message":"Slow down"}"#,
        ),
        Fixture::raw(
            "html-from-proxy",
            "An HTML error page from a proxy: the status decides; the message is never the page.",
            502,
            &[("content-type", "text/html")],
            "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n",
        ),
        Fixture::raw(
            "html-503",
            "An HTML 503 from a load balancer: any 503 waits in the window, body or not.",
            503,
            &[("content-type", "text/html")],
            "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>\n",
        ),
        Fixture::raw(
            "empty-body",
            "An empty 503 from a load balancer: the status decides.",
            503,
            &[],
            "",
        ),
        Fixture::raw(
            "truncated-json",
            "A body cut off mid-string: not an envelope; the status decides.",
            500,
            &[json_type],
            r#"{"success":false,"error":"internal_err"#,
        ),
        Fixture::raw(
            "message-null",
            "A valid code with a null message: the code is kept, the message is the page's text.",
            502,
            &[json_type],
            r#"{"success":false,"error":"upstream_error","message":null}"#,
        ),
        Fixture::raw(
            "message-missing-unknown-code",
            "An unknown code and no message: the code is kept, the message is the status's scenario.",
            500,
            &[json_type],
            r#"{"success":false,"error":"render_crashed"}"#,
        ),
        Fixture::raw(
            "byte-order-mark",
            "A UTF-8 byte order mark before the JSON is skipped (RFC 8259).",
            410,
            &[json_type],
            &format!("\u{feff}{}", envelope(ErrorCode::Gone)),
        ),
        Fixture::raw(
            "status-code-mismatch-retry",
            "A 500 carrying not_found (a proxy or a misbehaving server): the status decides (backoff), the code is kept.",
            500,
            &[json_type],
            &envelope(ErrorCode::NotFound),
        ),
        Fixture::raw(
            "status-code-mismatch-permanent",
            "A 404 carrying internal_error: the status decides (permanent), with the status rule's reason.",
            404,
            &[json_type],
            &internal,
        ),
        Fixture::raw(
            "server-error-retry-after",
            "A 500 with Retry-After: a valid Retry-After is honoured on any retried error.",
            500,
            &[json_type, ("retry-after", "7")],
            &internal,
        ),
        Fixture::raw(
            "service-unavailable-retry-after",
            "A 503 whose Retry-After names the end of maintenance: it wins over the window.",
            503,
            &[json_type, ("retry-after", "120")],
            &envelope(ErrorCode::ServiceUnavailable),
        ),
        Fixture::raw(
            "not-implemented-retry-after",
            "A 501 with Retry-After: never retried, whatever the header says.",
            501,
            &[json_type, ("retry-after", "5")],
            &envelope(ErrorCode::NotImplemented),
        ),
        Fixture::raw(
            "retry-after-http-date",
            "Retry-After as an IMF-fixdate 42 s after `now_unix`.",
            429,
            &[json_type, ("retry-after", "Sun, 06 Nov 1994 08:50:19 GMT")],
            &limited,
        ),
        Fixture::raw(
            "retry-after-rfc850-date",
            "Retry-After in the obsolete RFC 850 form, 42 s after `now_unix`.",
            429,
            &[json_type, ("retry-after", "Sunday, 06-Nov-94 08:50:19 GMT")],
            &limited,
        ),
        Fixture::raw(
            "retry-after-asctime-date",
            "Retry-After in the asctime form, 42 s after `now_unix`.",
            429,
            &[json_type, ("retry-after", "Sun Nov  6 08:50:19 1994")],
            &limited,
        ),
        Fixture::raw(
            "retry-after-leap-second",
            "Retry-After at a leap second, 23:59:60, 120 s after `now_unix` (23:58:00).",
            429,
            &[json_type, ("retry-after", "Thu, 31 Dec 1998 23:59:60 GMT")],
            &limited,
        )
        .now(915_148_680),
        Fixture::raw(
            "retry-after-wrong-weekday",
            "An HTTP-date whose weekday is not the date's is malformed: ignore it.",
            429,
            &[json_type, ("retry-after", "Mon, 06 Nov 1994 08:50:19 GMT")],
            &limited,
        ),
        Fixture::raw(
            "message-too-long",
            "A message over the shared bound is cut at a character boundary and ends with '…'.",
            400,
            &[json_type],
            &format!(
                r#"{{"success":false,"error":"invalid_request","message":"{}"}}"#,
                "é".repeat(overten_errors::MAX_MESSAGE_BYTES)
            ),
        ),
        Fixture::raw(
            "retry-after-past-date",
            "Retry-After as a date already past: wait the minimum, never a hot loop.",
            429,
            &[json_type, ("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")],
            &limited,
        ),
        Fixture::raw(
            "retry-after-hostile-huge",
            "A Retry-After far past the longest wait a client honors: stop, do not hang.",
            429,
            &[json_type, ("retry-after", "99999999999999999999999")],
            &limited,
        ),
        Fixture::raw(
            "retry-after-too-long",
            "A Retry-After one second past the longest wait: stop with wait_too_long.",
            503,
            &[json_type, ("retry-after", "301")],
            &envelope(ErrorCode::ServiceUnavailable),
        ),
        Fixture::raw(
            "retry-after-hostile-negative",
            "A negative Retry-After is malformed: ignore it; a 429 then waits the page's default.",
            429,
            &[json_type, ("retry-after", "-3")],
            &limited,
        ),
        Fixture::raw(
            "retry-after-bare-dash",
            "A Retry-After of a bare '-' is malformed (not negative): ignore it.",
            429,
            &[json_type, ("retry-after", "-")],
            &limited,
        ),
        Fixture::raw(
            "retry-after-zero",
            "Retry-After: 0 never means a hot loop: wait the minimum.",
            429,
            &[json_type, ("retry-after", "0")],
            &limited,
        ),
        Fixture::raw(
            "retry-after-conflicting",
            "Retry-After sent twice with different values is malformed: ignore it.",
            429,
            &[json_type, ("retry-after", "5"), ("retry-after", "50")],
            &limited,
        ),
        Fixture::raw(
            "rate-limit-reset",
            "A 429 without Retry-After, no requests remaining: wait until X-RateLimit-Reset.",
            429,
            &rl("0", "784111795"),
            &limited,
        ),
        Fixture::raw(
            "rate-limit-reset-unrepresentable",
            "A reset past any representable time: too long, never already passed; requested_ms is capped at 2^53 - 1.",
            429,
            &rl("0", "18446744073709551615"),
            &limited,
        ),
        Fixture::raw(
            "rate-limit-default",
            "A bare 429: wait the page's default of 30 s, never a one-second backoff.",
            429,
            &[json_type],
            &limited,
        ),
        Fixture::raw(
            "rate-limit-remaining",
            "A 429 whose headers say requests remain: the reset names no wait; the default does.",
            429,
            &rl("5", "784111795"),
            &limited,
        ),
        Fixture::raw(
            "later-attempt-backoff",
            "A 500 ending attempt 3: the third backoff (base 4 s).",
            500,
            &[json_type],
            &internal,
        )
        .attempt(3),
        Fixture::raw(
            "later-attempt-backoff-4",
            "A 502 ending attempt 4, the last one that is retried with the defaults: base 8 s.",
            502,
            &[json_type],
            &envelope(ErrorCode::UpstreamError),
        )
        .attempt(4),
        Fixture::raw(
            "attempts-exhausted",
            "A 500 ending the last attempt allowed: stop.",
            500,
            &[json_type],
            &internal,
        )
        .attempt(5),
        Fixture::raw(
            "attempts-exhausted-resubmit",
            "A 408 ending the last attempt: the async resubmission is an attempt too, so stop.",
            408,
            &[json_type],
            &envelope(ErrorCode::SyncTimeoutUpgradeAsync),
        )
        .attempt(5),
        Fixture::raw(
            "permanent-at-last-attempt",
            "A 404 at the last attempt: permanence is checked first.",
            404,
            &[json_type],
            &envelope(ErrorCode::NotFound),
        )
        .attempt(5),
        Fixture::raw(
            "budget-exhausted",
            "A 500 when the retry budget holds fewer tokens than a retry costs: stop.",
            500,
            &[json_type],
            &internal,
        )
        .tokens(4),
        Fixture::raw(
            "budget-exact",
            "A 500 when the retry budget holds exactly one retry's cost: retry; the bucket is then empty, a storm, so the backoff waits the storm window (15-30 s).",
            500,
            &[json_type],
            &internal,
        )
        .tokens(5),
        Fixture::raw(
            "budget-storm-backoff",
            "A 500 when paying for the retry leaves 4 tokens, less than a retry costs: a storm's backoff, 15-30 s.",
            500,
            &[json_type],
            &internal,
        )
        .tokens(9),
        Fixture::raw(
            "budget-no-storm",
            "A 500 when paying for the retry leaves 5 tokens, one retry's cost: the plain backoff.",
            500,
            &[json_type],
            &internal,
        )
        .tokens(10),
        Fixture::raw(
            "budget-storm-spares-windows",
            "A 503 without Retry-After when paying for the retry empties the bucket: the wait window is not a backoff, it is unchanged.",
            503,
            &[json_type],
            &envelope(ErrorCode::ServiceUnavailable),
        )
        .tokens(20),
        Fixture::raw(
            "budget-spares-stops",
            "A permanent error with an empty budget: still a permanent stop; stops cost nothing.",
            422,
            &[json_type],
            &envelope(ErrorCode::ValidationError),
        )
        .tokens(0),
        Fixture::raw(
            "not-an-error-status",
            "An error body on a 200: not an error status, nothing to retry.",
            200,
            &[json_type],
            &internal,
        ),
        Fixture::transport(
            "transport-not-connected",
            "The connection was refused: the request never left; retry with backoff, even a POST.",
            false,
            false,
        ),
        Fixture::transport(
            "transport-timeout-not-replay-safe",
            "A POST without an idempotency key timed out after it was sent: it may have been processed; stop.",
            true,
            false,
        ),
        Fixture::transport(
            "transport-timeout-replay-safe",
            "A GET (or a keyed POST) timed out after it was sent, at attempt 2: back off.",
            true,
            true,
        )
        .attempt(2),
        Fixture::transport(
            "transport-attempts-exhausted",
            "A refused connection at the last attempt: stop.",
            false,
            true,
        )
        .attempt(5),
        Fixture::transport(
            "transport-storm-backoff",
            "A refused connection when paying for the retry empties the bucket: a storm's backoff, 15-30 s.",
            false,
            true,
        )
        .tokens(5),
        Fixture::transport(
            "transport-budget-exhausted",
            "A refused connection when the budget cannot pay for a retry: stop.",
            false,
            true,
        )
        .tokens(0),
        Fixture::task(
            "task-failed-known",
            "An async task that failed with upstream_error: decided like a 502.",
            "upstream_error",
            "Provider outage",
        ),
        Fixture::task(
            "task-failed-unknown",
            "An async task that failed with a code newer than this version: decided like a 500.",
            "agent_loop_exhausted",
            "AgentLoopError: max_tool_calls=30 exceeded",
        ),
        Fixture::task(
            "task-failed-permanent",
            "An async task that failed with preflight_failed: permanent.",
            "preflight_failed",
            "Missing assets",
        ),
    ]);
    out.extend(edge_cases());
    out.extend(pacing());
    out
}

/// An envelope of `gone` padded with an extra member to exactly `total` bytes, a byte
/// order mark first.
fn padded_with_bom(total: usize) -> String {
    const BOM: &str = "\u{feff}";
    let head = r#"{"success":false,"error":"gone","message":"Expired","pad":""#;
    let tail = r#""}"#;
    let pad = total.saturating_sub(BOM.len() + head.len() + tail.len());
    format!("{BOM}{head}{}{tail}", "p".repeat(pad))
}

/// One fixture for each case `docs/retry.md` decides where an implementation could
/// otherwise guess: messages of statuses without a scenario, trimming, partial rate-limit
/// headers, task-failure codes, duplicate headers, the body bound and a byte order mark,
/// nesting depth, lone surrogates, and the budget after a success.
#[allow(clippy::too_many_lines, reason = "one fixture after another")]
fn edge_cases() -> Vec<Fixture> {
    let json_type = ("content-type", "application/json");
    let gone = |extra: &str| {
        format!(r#"{{"success":false,"error":"gone","message":"Expired","x":{extra}}}"#)
    };
    let max = overten_errors_http::MAX_BODY_BYTES;
    let depth = overten_errors::MAX_BODY_DEPTH;
    // Arrays inside the top object: `n` of them make `n + 1` levels.
    let nested = |n: usize| gone(&format!("{}{}", "[".repeat(n), "]".repeat(n)));
    vec![
        Fixture::raw(
            "status-without-scenario",
            "A bare 418: no scenario in catalog.json, so the message is 'HTTP status 418', never a reason phrase; 4xx is permanent.",
            418,
            &[],
            "",
        ),
        Fixture::raw(
            "status-without-scenario-unknown-code",
            "A 599 carrying an unknown code and no message: the code is kept, the message is 'HTTP status 599'; 5xx backs off.",
            599,
            &[json_type],
            r#"{"success":false,"error":"edge_melted"}"#,
        ),
        Fixture::raw(
            "body-ids-trimmed",
            "run_id and task_id in a body are trimmed of spaces and tabs, as X-Request-Id is.",
            410,
            &[
                json_type,
                ("x-request-id", "\treq_000000000000000000000001 "),
            ],
            r#"{"success":false,"error":"gone","message":"Expired","run_id":" \trun_1\t ","task_id":"  task_1"}"#,
        ),
        Fixture::raw(
            "body-id-line-break",
            "Only spaces and tabs are trimmed: a task_id ending in a line break is dropped (no header problem).",
            410,
            &[json_type],
            r#"{"success":false,"error":"gone","message":"Expired","task_id":"task_1\n"}"#,
        ),
        Fixture::raw(
            "rate-limit-partial",
            "Two of the three X-RateLimit-* headers: none counts, and the missing one is the header problem; the 429 waits the default.",
            429,
            &[
                json_type,
                ("x-ratelimit-limit", "60"),
                ("x-ratelimit-reset", "784111795"),
            ],
            &envelope(ErrorCode::RateLimitExceeded),
        ),
        Fixture::raw(
            "rate-limit-invalid-before-missing",
            "Limit missing and Reset invalid: the invalid one is named, not the missing one.",
            429,
            &[
                json_type,
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "soon"),
            ],
            &envelope(ErrorCode::RateLimitExceeded),
        ),
        Fixture::raw(
            "retry-after-unicode-space",
            "Trimming removes spaces and tabs only: a Retry-After ending in a no-break space is invalid.",
            503,
            &[json_type, ("retry-after", "7\u{a0}")],
            &envelope(ErrorCode::ServiceUnavailable),
        ),
        Fixture::raw(
            "retry-after-tab-trimmed",
            "A Retry-After with a tab and a space around its digits is trimmed and valid.",
            503,
            &[json_type, ("retry-after", "\t7 ")],
            &envelope(ErrorCode::ServiceUnavailable),
        ),
        Fixture::raw(
            "duplicate-header-untrimmed",
            "X-Request-Id twice, the second with a trailing space: values compare untrimmed, so they differ and the id is dropped.",
            500,
            &[
                json_type,
                ("x-request-id", "req_000000000000000000000001"),
                ("x-request-id", "req_000000000000000000000001 "),
            ],
            &envelope(ErrorCode::InternalError),
        ),
        Fixture::raw(
            "body-bound-with-bom",
            "A body of exactly 65536 bytes counting its byte order mark is read.",
            410,
            &[json_type],
            &padded_with_bom(max),
        ),
        Fixture::raw(
            "body-bound-bom-over",
            "A body of 65537 bytes counting its byte order mark is too large, though the JSON after the mark is 65534: no code.",
            410,
            &[json_type],
            &padded_with_bom(max + 1),
        ),
        Fixture::raw(
            "nesting-at-limit",
            "Arrays 128 levels deep counting the top object, in a member the client ignores: still an envelope.",
            410,
            &[json_type],
            &nested(depth - 1),
        ),
        Fixture::raw(
            "nesting-too-deep",
            "Arrays 129 levels deep counting the top object, in a member the client ignores: not an envelope.",
            410,
            &[json_type],
            &nested(depth),
        ),
        Fixture::raw(
            "lone-surrogate",
            "A lone surrogate escape, even in a member the client ignores: not an envelope.",
            410,
            &[json_type],
            &gone(r#""\ud800""#),
        ),
        Fixture::raw(
            "surrogate-pair",
            "A surrogate pair escape is one character: the message is read.",
            410,
            &[json_type],
            r#"{"success":false,"error":"gone","message":"Expired \ud83d\ude00"}"#,
        ),
        Fixture::task(
            "task-failed-empty-code",
            "A failed task whose code is \"\": no code, decided like a 500.",
            "",
            "Something failed",
        ),
        Fixture::task(
            "task-failed-any-string-code",
            "A failed task whose code is not snake_case: kept as sent, unknown, decided like a 500.",
            "Quota-Frozen",
            "Quota frozen",
        ),
        Fixture::raw(
            "budget-window-cost",
            "A 503 without Retry-After when the budget holds 19 tokens: a retry in the wait window costs 20 (window_cost), so stop.",
            503,
            &[json_type],
            &envelope(ErrorCode::ServiceUnavailable),
        )
        .tokens(19),
        Fixture::raw(
            "budget-window-cost-paid",
            "The same 503 with 20 tokens: the window retry is paid.",
            503,
            &[json_type],
            &envelope(ErrorCode::ServiceUnavailable),
        )
        .tokens(20),
        Fixture::success(
            "success-first-attempt",
            "A success to a first attempt returns success_refill (1) token.",
            1,
            50,
        ),
        Fixture::success(
            "success-after-retries",
            "A success to attempt 3 returns retry_cost (5) tokens: retried_success_refill in catalog.json.",
            3,
            50,
        ),
        Fixture::success(
            "success-refill-capped",
            "A success after retries never fills past capacity.",
            2,
            98,
        ),
        Fixture::success(
            "success-tokens-above-capacity",
            "A budget handed over with 150 tokens holds its capacity (100): a success to a first attempt leaves 100, not 151.",
            1,
            150,
        ),
        Fixture::raw(
            "attempt-zero-counts-as-one",
            "A 500 ending attempt 0: read as attempt 1, the first backoff.",
            500,
            &[json_type],
            &envelope(ErrorCode::InternalError),
        )
        .attempt(0),
        Fixture::raw(
            "retry-after-at-max-wait",
            "Retry-After: 300, exactly max_wait: the spread is cut at max_wait at both ends, so one after_ms, not a range.",
            429,
            &[json_type, ("retry-after", "300")],
            &envelope(ErrorCode::RateLimitExceeded),
        ),
        {
            let mut f = Fixture::task(
                "task-failed-byte-order-mark",
                "A failed task whose body starts with a byte order mark: skipped, as for an envelope.",
                "upstream_error",
                "Provider outage",
            );
            f.body.insert(0, '\u{feff}');
            f
        },
    ]
}

/// Pacing (`docs/retry.md`, *Pacing*): a response read for its `X-RateLimit-*`, then the
/// waits of the key's next three requests, sent at the same moment.
#[allow(clippy::too_many_lines, reason = "one fixture after another")]
fn pacing() -> Vec<Fixture> {
    let json_type = ("content-type", "application/json");
    let reset = |secs: i64| (i128::from(NOW) + i128::from(secs)).to_string();
    let window_of = |limit: &str, remaining: &str, reset: &str| {
        vec![
            json_type,
            ("x-ratelimit-limit", limit),
            ("x-ratelimit-remaining", remaining),
            ("x-ratelimit-reset", reset),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect::<Vec<_>>()
    };
    let window = |remaining: &str, reset: &str| window_of("60", remaining, reset);
    let fixture = |name: &str,
                   description: &str,
                   status: u16,
                   headers: Vec<(String, String)>,
                   state: PacingState| {
        let borrowed: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Fixture::pacing(name, description, status, &borrowed, state)
    };
    let ms = |secs: i64| u64::try_from((i128::from(NOW) + i128::from(secs)) * 1000).unwrap_or(0);
    // Its own 60 attempts in the window (the limit): nobody else used the key.
    let own = PacingState {
        sent_in_window: 60,
        ..PacingState::default()
    };
    let held = |secs: i64| PacingState {
        held_until_ms: Some(ms(secs)),
        ..own
    };
    let in_18 = reset(18);
    let mut duplicate = window("0", &in_18);
    duplicate.push(("x-ratelimit-remaining".to_owned(), "5".to_owned()));
    let mut limited = window("0", &in_18);
    limited.push(("retry-after".to_owned(), "18".to_owned()));
    let just_json = || vec![(json_type.0.to_owned(), json_type.1.to_owned())];
    vec![
        fixture(
            "pacing-window-spent",
            "Remaining 0 on a success, the key's 60 attempts all this process's: its next requests take slots one interval (60 s / Limit = 1 s) apart, the first at the reset (18 s) plus a uniform point of one interval, one draw.",
            200,
            window("0", &in_18),
            own,
        ),
        fixture(
            "pacing-slot-interval-from-limit",
            "Limit 10: the slots are 6 s apart (60 s / 10), the first within 6 s of the reset (18 s).",
            200,
            window_of("10", "0", &in_18),
            PacingState {
                sent_in_window: 10,
                ..own
            },
        ),
        fixture(
            "pacing-window-spent-by-others",
            "Remaining 0 on a success after one attempt of this process's: 59 were someone else's (the key is seen shared), but a success still means slots from the reset, as for pacing-window-spent.",
            200,
            window("0", &in_18),
            PacingState {
                sent_in_window: 1,
                ..own
            },
        ),
        fixture(
            "pacing-window-left",
            "Remaining 1: nothing is held.",
            200,
            window("1", &in_18),
            own,
        ),
        fixture(
            "pacing-on-an-error",
            "A 429 (Remaining 0) on a key never seen shared, whose 60 used are this process's 60 attempts (a request sent before the response that spent the window came back): its own requests spent it, so its next requests take slots 1 s apart from the reset (18 s) plus a point of one interval, as after its own success with Remaining 0, not a hold that would send them all together.",
            429,
            limited.clone(),
            own,
        ),
        fixture(
            "pacing-429-on-a-window-spent-by-others",
            "A 429 after one attempt of this process's: 60 used, 59 not its own, so the key is seen shared and its requests take slots 1 s apart from a uniform point of the whole next window (the reset, 18 s, plus up to 60 s), as pacing-429-on-a-shared-key.",
            429,
            limited.clone(),
            PacingState {
                sent_in_window: 1,
                ..own
            },
        ),
        fixture(
            "pacing-429-on-a-shared-key",
            "A 429 on a key seen shared: its requests take slots 1 s apart from a uniform point of the whole next window (the reset, 18 s, plus up to 60 s), so that the clients sharing it do not meet at the reset.",
            429,
            limited,
            PacingState {
                seen_shared: true,
                sent_in_window: 1,
                ..own
            },
        ),
        fixture(
            "pacing-reset-passed",
            "Remaining 0 with a reset already passed: nothing is held.",
            200,
            window("0", &reset(-2)),
            own,
        ),
        fixture(
            "pacing-reset-now",
            "Remaining 0 with the reset at this very second (w = 0): nothing is held.",
            200,
            window("0", &reset(0)),
            own,
        ),
        fixture(
            "pacing-reset-past-max-wait",
            "Remaining 0 with the reset 301 s away, past max_wait (300 s): nothing is held; the request is sent and a 429 is decided by the steps.",
            200,
            window("0", &reset(301)),
            own,
        ),
        fixture(
            "pacing-reset-at-max-wait",
            "Remaining 0 with the reset exactly max_wait (300 s) away: the first slot is the reset at the draw's low end, and a slot past max_wait is not taken: each request waits all of max_wait, 300 s.",
            200,
            window("0", &reset(300)),
            own,
        ),
        fixture(
            "pacing-no-slot-within-max-wait",
            "Limit 1 a minute, spent by its own request, the reset 250 s away: slots are 60 s apart, the first within 60 s of the reset; a request whose slot would be past max_wait (300 s) takes none and waits all of max_wait.",
            200,
            window_of("1", "0", &reset(250)),
            PacingState {
                sent_in_window: 1,
                ..own
            },
        ),
        fixture(
            "pacing-remaining-trimmed",
            "Remaining \" 0\\t\" is 0 once trimmed: paced as for 0.",
            200,
            window(" 0\t", &in_18),
            own,
        ),
        fixture(
            "pacing-partial-headers",
            "Remaining 0 without X-RateLimit-Limit: the three are not read whole, so nothing is held.",
            200,
            window("0", &in_18)
                .into_iter()
                .filter(|(k, _)| k != "x-ratelimit-limit")
                .collect(),
            own,
        ),
        fixture(
            "pacing-duplicate-remaining",
            "X-RateLimit-Remaining sent twice with different values (0, then 5): not read, so nothing is held.",
            200,
            duplicate,
            own,
        ),
        fixture(
            "pacing-earlier-hold-kept",
            "The key is held 60 s more; a spent window resetting in 18 s never shortens that hold, and its slots are all past when the hold ends.",
            200,
            window("0", &in_18),
            held(60),
        ),
        fixture(
            "pacing-hold-then-slot",
            "The key is held 5 s more, and its own requests spent the window resetting in 18 s: each request waits out the hold, finds the window still spent and takes its slot (18 s plus a point of one interval, then 1 s apart).",
            200,
            window("0", &in_18),
            held(5),
        ),
        fixture(
            "pacing-hold-outlives-the-response",
            "The key is held 10 s more; a response with requests left does not lift the hold.",
            200,
            window("5", &in_18),
            held(10),
        ),
        fixture(
            "pacing-hold-passed",
            "A hold that ended a second ago holds nothing.",
            200,
            just_json(),
            held(-1),
        ),
        fixture(
            "pacing-hold-past-max-wait",
            "A hold 400 s away, past max_wait: the request is sent at once (a 429 is then decided by the steps).",
            200,
            just_json(),
            held(400),
        ),
    ]
}
