//! Golden HTTP responses, one per code plus the hard cases, with the action a conforming
//! client takes.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use overten_errors::{ApiError, ErrorCode, RateLimit, RetryAfter, RetryPolicy};
use overten_errors_http::{Received, classify, into_response};
use serde_json::{Value, json};

/// The "now" every fixture assumes: Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's sample).
pub(crate) const NOW: u64 = 784_111_777;
/// The attempt every fixture's response ended.
pub(crate) const ATTEMPT: u32 = 1;

pub(crate) struct Fixture {
    pub(crate) name: String,
    description: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
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
            status: response.status().as_u16(),
            headers,
            body: String::from_utf8_lossy(response.body()).into_owned(),
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
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.to_owned(),
        }
    }

    fn received(&self) -> Received {
        let mut map = HeaderMap::new();
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                map.append(k, v);
            }
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        classify(status, &map, self.body.as_bytes())
    }

    /// The action, with the range a jittered delay may fall in: the decision at the two
    /// extremes of the random source.
    fn action(received: &Received) -> Value {
        let policy = RetryPolicy::default();
        let at = |bits: u64| {
            serde_json::to_value(received.advise(&policy, ATTEMPT, now(), &mut move || bits))
                .unwrap_or_default()
        };
        let (a, b) = (at(0), at(u64::MAX));
        if a == b {
            return a;
        }
        let (a_ms, b_ms) = (a["after_ms"].as_u64(), b["after_ms"].as_u64());
        json!({
            "action": a["action"],
            "basis": a["basis"],
            "min_ms": a_ms.min(b_ms),
            "max_ms": a_ms.max(b_ms),
        })
    }

    pub(crate) fn to_json(&self) -> Value {
        let received = self.received();
        let err = &received.error;
        let d = &received.diagnostics;
        let mut header_problems = Vec::new();
        if d.retry_after.is_some() {
            header_problems.push("retry-after".to_owned());
        }
        if let Some((name, _)) = d.rate_limit {
            header_problems.push(name.as_str().to_owned());
        }
        if d.request_id.is_some() {
            header_problems.push("x-request-id".to_owned());
        }
        json!({
            "name": self.name,
            "description": self.description,
            "request": { "now_unix": NOW, "attempt": ATTEMPT },
            "response": {
                "status": self.status,
                "headers": self.headers,
                "body": self.body,
            },
            "expect": {
                "status": err.status(),
                "code": (!err.code().as_str().is_empty()).then(|| err.code().as_str()),
                "known": err.code().known().is_some(),
                "message": err.message(),
                "request_id": err.request_id(),
                "task_id": err.task_id(),
                "body_is_envelope": d.body.is_none(),
                "header_problems": header_problems,
                "action": Fixture::action(&received),
            },
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

/// Every fixture, codes first in page order, then the hard cases.
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
    let limited = ApiError::from(ErrorCode::RateLimitExceeded).to_json();
    let limited = String::from_utf8_lossy(&limited);
    out.extend([
        Fixture::raw(
            "unknown-code",
            "A code newer than this version: keep it, classify by status (503: back off).",
            503,
            &[json_type, ("x-request-id", "req_0000000000000000000000aa")],
            r#"{"success":false,"error":"quota_frozen","message":"Your quota is frozen","task_id":"task_1"}"#,
        ),
        Fixture::raw(
            "html-from-proxy",
            "An HTML error page from a proxy: the status decides; the message is never the page.",
            502,
            &[("content-type", "text/html")],
            "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n",
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
            "retry-after-http-date",
            "Retry-After as an IMF-fixdate 42 s after `now_unix`.",
            429,
            &[json_type, ("retry-after", "Sun, 06 Nov 1994 08:50:19 GMT")],
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
            "retry-after-hostile-negative",
            "A negative Retry-After is malformed: ignore it and back off.",
            429,
            &[json_type, ("retry-after", "-3")],
            &limited,
        ),
        Fixture::raw(
            "retry-after-zero",
            "Retry-After: 0 never means a hot loop: wait the minimum.",
            429,
            &[json_type, ("retry-after", "0")],
            &limited,
        ),
    ]);
    out
}
