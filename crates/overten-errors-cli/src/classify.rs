//! `overten-errors classify`: a fixture or a raw response, read as a client reads it.

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use overten_errors::{
    ApiError, Decision, Pacer, RetryBudget, RetryPolicy, SplitMix64, TaskFailure,
};
use overten_errors_http::{Diagnostics, Received, classify, observe_rate_limit_of, process_seed};
use serde_json::{Value, json};

/// The most bytes read from stdin or a fixture file.
const MAX_INPUT: u64 = 1024 * 1024;

fn read_limited(mut source: impl std::io::Read) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    (&mut source)
        .take(MAX_INPUT + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the input: {e}"))?;
    if buf.len() as u64 > MAX_INPUT {
        return Err("the input is larger than 1 MiB".to_owned());
    }
    Ok(buf)
}

/// A raw HTTP/1.x response: status line, headers, blank line, body.
fn parse_raw(bytes: &[u8]) -> Result<(StatusCode, HeaderMap, Vec<u8>), String> {
    let (head, body) = match find(bytes, b"\r\n\r\n") {
        Some(at) => (&bytes[..at], &bytes[at + 4..]),
        None => match find(bytes, b"\n\n") {
            Some(at) => (&bytes[..at], &bytes[at + 2..]),
            None => (bytes, &[][..]),
        },
    };
    let head = std::str::from_utf8(head).map_err(|_| "the response head is not UTF-8")?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let mut words = status_line.split_whitespace();
    let version = words.next().unwrap_or("");
    if !version.starts_with("HTTP/") {
        return Err("the input does not start with an HTTP status line (HTTP/1.1 503 ...)".into());
    }
    let status = words
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or("the status line has no valid status code")?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("malformed header line {:?}", truncate(line)));
        };
        let name = HeaderName::from_bytes(ows(name).as_bytes())
            .map_err(|_| format!("malformed header name {:?}", truncate(name)))?;
        let value =
            HeaderValue::from_str(ows(value)).map_err(|_| format!("malformed value of {name}"))?;
        headers.append(name, value);
    }
    Ok((status, headers, body.to_vec()))
}

/// `s` without the optional white space around it: U+0020 and U+0009 and nothing else
/// (RFC 9110 OWS, as `docs/retry.md` reads a trimmed value): a no-break space, a vertical
/// tab or a form feed stays, and the value is read with it.
fn ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Case {
    received: Option<Received>,
    /// The decision; `None` for a `success` fixture, which decides nothing.
    decision: Option<Decision>,
    /// For a `success` fixture: the budget's tokens after the success.
    budget_tokens: Option<u32>,
    /// For a `pacing` fixture: how long in all the key's next request waits, in ms, or
    /// `null` when it is sent at once.
    hold_ms: Option<Value>,
    /// For a `pacing` fixture: the same for each of the key's next three requests.
    waits_ms: Option<Vec<Value>>,
    expect: Option<Value>,
}

/// What `classify` is told on the command line: each overrides a fixture's value.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Overrides {
    /// "Now", Unix seconds.
    pub(crate) now: Option<u64>,
    /// The 64-bit random draw every jitter reads.
    pub(crate) random: Option<u64>,
    /// The retry budget's tokens (the default budget's capacity, cost and refill).
    pub(crate) budget: Option<u32>,
    /// The attempt that just failed.
    pub(crate) attempt: Option<u32>,
}

/// The latest "now" accepted: 9999-12-31T23:59:59Z, as far as HTTP-dates go.
const MAX_NOW: u64 = 253_402_300_799;

/// `v` as an integer in `lo..=hi`, or an error naming `path`. A JSON integer only: `"5"`,
/// `5.0` and `-1` are refused, never coerced.
fn integer(v: &Value, path: &str, lo: u64, hi: u64) -> Result<u64, String> {
    v.as_u64()
        .filter(|n| (lo..=hi).contains(n) && !v.is_f64())
        .ok_or_else(|| {
            format!(
                "{path}: expected an integer from {lo} to {hi}, found {}",
                shown(v)
            )
        })
}

fn shown(v: &Value) -> String {
    match v {
        Value::Null => "nothing".to_owned(),
        other => truncate(&other.to_string()),
    }
}

fn boolean(v: &Value, path: &str) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("{path}: expected true or false, found {}", shown(v)))
}

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{path}: expected a string, found {}", shown(v)))
}

fn u32_of(v: &Value, path: &str, lo: u32) -> Result<u32, String> {
    integer(v, path, u64::from(lo), u64::from(u32::MAX))
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

fn budget_of(request: &Value) -> Result<Option<RetryBudget>, String> {
    let b = &request["budget"];
    if b.is_null() && request.get("budget").is_none() {
        return Ok(None);
    }
    if !b.is_object() {
        return Err(format!(
            "request.budget: expected an object, found {}",
            shown(b)
        ));
    }
    let n = |k: &str| u32_of(&b[k], &format!("request.budget.{k}"), 0);
    let budget = RetryBudget::new(n("capacity")?, n("retry_cost")?, n("success_refill")?)
        .with_window_cost(n("window_cost")?)
        .with_tokens(n("tokens")?);
    // The storm wait came with the newest-first budget: a request without it has the
    // default's.
    let (min, max) = budget.storm_wait();
    let ms = |k: &str, default: Duration| -> Result<Duration, String> {
        match b.get(k) {
            None => Ok(default),
            Some(v) => integer(
                v,
                &format!("request.budget.{k}"),
                0,
                overten_errors::MAX_SAFE_INTEGER,
            )
            .map(Duration::from_millis),
        }
    };
    Ok(Some(budget.with_storm_wait(
        ms("storm_wait_min_ms", min)?,
        ms("storm_wait_max_ms", max)?,
    )))
}

/// The draws: always `u` (the CLI's `--random`), or fresh ones.
enum Draws {
    Fixed(u64),
    Fresh(SplitMix64),
}

impl overten_errors::RandomSource for Draws {
    fn next_u64(&mut self) -> u64 {
        match self {
            Draws::Fixed(u) => *u,
            Draws::Fresh(rng) => rng.next_u64(),
        }
    }
}

fn rng_of(o: &Overrides) -> Draws {
    match o.random {
        Some(u) => Draws::Fixed(u),
        None => Draws::Fresh(SplitMix64::new(process_seed())),
    }
}

fn budget_override(o: &Overrides, from_fixture: Option<RetryBudget>) -> Option<RetryBudget> {
    match o.budget {
        Some(tokens) => Some(RetryBudget::default().with_tokens(tokens)),
        None => from_fixture,
    }
}

fn time_of(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A fixture's `response.headers`: `[name, value]` pairs, each a header `http` accepts.
fn headers_of(v: &Value) -> Result<HeaderMap, String> {
    let pairs = v.as_array().ok_or_else(|| {
        format!(
            "response.headers: expected a list of [name, value], found {}",
            shown(v)
        )
    })?;
    let mut headers = HeaderMap::new();
    for (i, pair) in pairs.iter().enumerate() {
        let at = format!("response.headers[{i}]");
        let (Some(k), Some(v), Some(2)) = (
            pair[0].as_str(),
            pair[1].as_str(),
            pair.as_array().map(Vec::len),
        ) else {
            return Err(format!("{at}: expected [name, value], two strings"));
        };
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("{at}: {:?} is not a header name", truncate(k)))?;
        let value = HeaderValue::from_bytes(v.as_bytes())
            .map_err(|_| format!("{at}: the value of {name} holds a control character"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A `pacing` fixture (`docs/README.md`): a default pacer held until the earlier hold, if
/// any, marked shared if the key was seen shared, with `sent_in_window` attempts counted at
/// `now`; the response read with its status; then the whole wait of each of the key's next
/// three requests, sent at `now` one after another.
fn pacing_case(
    f: &Value,
    now: u64,
    policy: &RetryPolicy,
    rng: &mut Draws,
    expect: Option<Value>,
) -> Result<Case, String> {
    let request = &f["request"];
    let held_until = match request.get("held_until_unix_ms") {
        None => None,
        Some(v) => Some(integer(
            v,
            "request.held_until_unix_ms",
            0,
            MAX_NOW.saturating_mul(1000),
        )?),
    };
    let sent_in_window = match request.get("sent_in_window") {
        None => 0,
        Some(v) => integer(v, "request.sent_in_window", 0, u64::from(u32::MAX))?,
    };
    let seen_shared = match request.get("seen_shared") {
        None => false,
        Some(v) => boolean(v, "request.seen_shared")?,
    };
    let resp = &f["response"];
    let status = integer(&resp["status"], "response.status", 100, 999)?;
    string(&resp["body"], "response.body")?;
    let headers = headers_of(&resp["headers"])?;
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| "response.status: not an HTTP status".to_owned())?;
    let pacer = held_until.map_or_else(Pacer::new, |ms| {
        Pacer::holding(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    });
    if seen_shared {
        pacer.mark_shared();
    }
    // At most the limit's worth matters; a count past any limit is not looped over.
    for _ in 0..sent_in_window.min(u64::from(u16::MAX)) {
        pacer.sent(time_of(now));
    }
    observe_rate_limit_of(&pacer, status, &headers, || time_of(now), policy, rng);
    let waits: Vec<Value> = (0..3)
        .map(|_| {
            json!(
                pacer
                    .wait_at(time_of(now), policy)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            )
        })
        .collect();
    Ok(Case {
        received: None,
        decision: None,
        budget_tokens: None,
        hold_ms: waits.first().cloned(),
        waits_ms: Some(waits),
        expect,
    })
}

/// Reads a fixture as `docs/README.md` describes it:
/// every field of the kind checked, none coerced; an error names the field.
fn fixture_case(f: &Value, o: &Overrides) -> Result<Case, String> {
    if !f.is_object() {
        return Err("a fixture is a JSON object".to_owned());
    }
    let kind = string(&f["kind"], "kind")?;
    if !matches!(
        kind,
        "http_response" | "task_failure" | "transport_failure" | "success" | "pacing"
    ) {
        return Err(format!(
            "kind: expected http_response, task_failure, transport_failure, success or pacing, found {}",
            shown(&f["kind"])
        ));
    }
    let request = &f["request"];
    if !request.is_object() {
        return Err(format!(
            "request: expected an object, found {}",
            shown(request)
        ));
    }
    let attempt = match o.attempt {
        Some(a) => a,
        // 0 is read as 1 (docs/retry.md, Inputs).
        None => u32_of(&request["attempt"], "request.attempt", 0)?,
    };
    let now = match o.now {
        Some(n) => n,
        None => integer(&request["now_unix"], "request.now_unix", 0, MAX_NOW)?,
    };
    let budget = budget_override(o, budget_of(request)?);
    let expect = match f.get("expect") {
        None => None,
        Some(e) if e.is_object() => Some(e.clone()),
        Some(e) => return Err(format!("expect: expected an object, found {}", shown(e))),
    };
    let policy = RetryPolicy::default();
    let mut rng = rng_of(o);
    if kind == "success" {
        let budget = budget.ok_or("request.budget: a success fixture needs a budget")?;
        budget.record_success_after(attempt);
        return Ok(Case {
            received: None,
            decision: None,
            budget_tokens: Some(budget.tokens()),
            hold_ms: None,
            waits_ms: None,
            expect,
        });
    }
    if kind == "pacing" {
        return pacing_case(f, now, &policy, &mut rng, expect);
    }
    if kind == "transport_failure" {
        let sent = boolean(&f["failure"]["sent"], "failure.sent")?;
        let safe = boolean(&f["failure"]["replay_safe"], "failure.replay_safe")?;
        let decision = policy.decide_transport(sent, safe, attempt, &mut rng, budget.as_ref());
        return Ok(Case {
            received: None,
            decision: Some(decision),
            budget_tokens: None,
            hold_ms: None,
            waits_ms: None,
            expect,
        });
    }
    let resp = &f["response"];
    let body = string(&resp["body"], "response.body")?;
    let received = if kind == "task_failure" {
        let failure = TaskFailure::parse(body.as_bytes())
            .map_err(|e| format!("response.body: not a task failure: {e}"))?;
        Received {
            error: ApiError::from(failure),
            diagnostics: Diagnostics::default(),
        }
    } else {
        let status = integer(&resp["status"], "response.status", 100, 999)?;
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or("response.status: not a status")?;
        let headers = headers_of(&resp["headers"])?;
        classify(status, &headers, body.as_bytes())
    };
    let decision = policy.explain(
        &received.error,
        attempt,
        time_of(now),
        &mut rng,
        budget.as_ref(),
    );
    Ok(Case {
        received: Some(received),
        decision: Some(decision),
        budget_tokens: None,
        hold_ms: None,
        waits_ms: None,
        expect,
    })
}

/// Whether `got` is the expected hold: the same (a number, or `null` for none), or for a
/// spread one, a number in the range.
fn hold_conforms(got: &Value, want: &Value) -> bool {
    match (
        want.get("min_ms").and_then(Value::as_u64),
        want.get("max_ms").and_then(Value::as_u64),
    ) {
        (Some(lo), Some(hi)) => got.as_u64().is_some_and(|ms| (lo..=hi).contains(&ms)),
        _ => got == want,
    }
}

/// Whether `got` is the expected action: the same, or for a jittered one, in the range.
fn conforms(got: &Value, want: &Value) -> bool {
    match (
        want.get("min_ms").and_then(Value::as_u64),
        want.get("max_ms").and_then(Value::as_u64),
    ) {
        (Some(lo), Some(hi)) => {
            got["action"] == want["action"]
                && got["basis"] == want["basis"]
                && got["after_ms"]
                    .as_u64()
                    .is_some_and(|ms| (lo..=hi).contains(&ms))
        }
        _ => got == want,
    }
}

fn report(case: &Case) -> Value {
    let mut out = match &case.received {
        Some(r) => r.report(),
        None => json!({}),
    };
    if let Some(decision) = &case.decision {
        out["step"] = json!(decision.step.as_str());
        out["action"] = serde_json::to_value(decision.advice).unwrap_or_default();
    }
    if let Some(tokens) = case.budget_tokens {
        out["budget_tokens"] = json!(tokens);
    }
    if let Some(hold) = &case.hold_ms {
        out["hold_ms"] = hold.clone();
    }
    if let Some(waits) = &case.waits_ms {
        out["waits_ms"] = json!(waits);
    }
    if let Some(expect) = &case.expect {
        let mut differs: Vec<String> = Vec::new();
        if case.decision.is_some() {
            if !conforms(&out["action"], &expect["action"]) {
                differs.push("action".to_owned());
            }
            if out["step"] != expect["step"] {
                differs.push("step".to_owned());
            }
        }
        if case.budget_tokens.is_some() && out["budget_tokens"] != expect["budget_tokens"] {
            differs.push("budget_tokens".to_owned());
        }
        if case.hold_ms.is_some() && !hold_conforms(&out["hold_ms"], &expect["hold_ms"]) {
            differs.push("hold_ms".to_owned());
        }
        // waits_ms is judged when the fixture states it (fixtures from before it did not).
        if let (Some(waits), Some(want)) = (&case.waits_ms, expect.get("waits_ms")) {
            let same = want.as_array().is_some_and(|want| {
                want.len() == waits.len()
                    && waits
                        .iter()
                        .zip(want)
                        .all(|(got, want)| hold_conforms(got, want))
            });
            if !same {
                differs.push("waits_ms".to_owned());
            }
        }
        // Every field the client's report has (`Received::report`, the one list of them),
        // but the diagnostics' texts, which a fixture does not carry.
        let read: Vec<String> = match &case.received {
            Some(r) => r
                .report()
                .as_object()
                .map(|o| o.keys().filter(|k| *k != "diagnostics").cloned().collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        for field in &read {
            if expect.get(field).is_some() && out[field] != expect[field] {
                differs.push(field.clone());
            }
        }
        out["expect"] = expect.clone();
        out["conforms"] = json!(differs.is_empty());
        out["differs"] = json!(differs);
    }
    out
}

fn text(case: &Case, out: &Value) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if let Some(r) = &case.received {
        let _ = writeln!(s, "error:       {}", r.error);
        let _ = writeln!(s, "known code:  {}", out["known"]);
        let _ = writeln!(s, "diagnostics: {}", out["diagnostics"]);
    }
    if let Some(decision) = &case.decision {
        let _ = writeln!(
            s,
            "advice:      {} (step {} of docs/retry.md)",
            decision.advice,
            decision.step.as_str()
        );
    }
    if let Some(tokens) = case.budget_tokens {
        let _ = writeln!(s, "budget:      {tokens} tokens after the success");
    }
    match case.hold_ms.as_ref().map(Value::as_u64) {
        Some(Some(ms)) => {
            let _ = writeln!(s, "hold:        the key's next request waits {ms} ms");
            if let Some(waits) = &case.waits_ms {
                let shown: Vec<String> = waits.iter().map(Value::to_string).collect();
                let _ = writeln!(s, "next three:  {} ms", shown.join(", "));
            }
        }
        Some(None) => {
            let _ = writeln!(
                s,
                "hold:        none (the key's next request is sent at once)"
            );
        }
        None => {}
    }
    if let Some(ok) = out.get("conforms") {
        let shown = if case.decision.is_some() {
            &out["expect"]["action"]
        } else if case.hold_ms.is_some() {
            &out["expect"]["hold_ms"]
        } else {
            &out["expect"]["budget_tokens"]
        };
        let _ = writeln!(s, "expected:    {shown}");
        let verdict = if ok == &json!(true) {
            "yes".to_owned()
        } else {
            format!("NO ({})", out["differs"])
        };
        let _ = writeln!(s, "conforms:    {verdict}");
    }
    s
}

/// Exit status: 0 read (and conforms, when the fixture has `expect`), 1 differs from
/// `expect`, 2 bad input (the message names the field).
pub(crate) fn main(fixture: Option<&Path>, as_json: bool, o: &Overrides) -> ExitCode {
    let case = match fixture {
        Some(path) => std::fs::File::open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))
            .and_then(read_limited)
            .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| format!("not JSON: {e}")))
            .and_then(|f| fixture_case(&f, o)),
        None => read_limited(std::io::stdin())
            .and_then(|b| parse_raw(&b))
            .map(|(status, headers, body)| {
                let received = classify(status, &headers, &body);
                let now = o.now.map_or_else(SystemTime::now, time_of);
                let budget = budget_override(o, None);
                let decision = RetryPolicy::default().explain(
                    &received.error,
                    o.attempt.unwrap_or(1),
                    now,
                    &mut rng_of(o),
                    budget.as_ref(),
                );
                Case {
                    received: Some(received),
                    decision: Some(decision),
                    budget_tokens: None,
                    hold_ms: None,
                    waits_ms: None,
                    expect: None,
                }
            }),
    };
    let case = match case {
        Ok(c) => c,
        Err(e) => {
            eprintln!("overten-errors classify: {e}");
            return ExitCode::from(2);
        }
    };
    let out = report(&case);
    if as_json {
        println!("{out}");
    } else {
        print!("{}", text(&case, &out));
    }
    if out.get("conforms") == Some(&json!(false)) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_responses_parse() {
        let (status, headers, body) =
            parse_raw(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\n\r\n{}").unwrap();
        assert_eq!(status, 429);
        assert_eq!(headers["retry-after"], "7");
        assert_eq!(body, b"{}");
        let (status, _, body) = parse_raw(b"HTTP/1.1 502 Bad Gateway\n\n<html>").unwrap();
        assert_eq!((status.as_u16(), body.as_slice()), (502, &b"<html>"[..]));
        for bad in [
            &b"hello"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200\r\nno colon\r\n\r\n",
        ] {
            assert!(parse_raw(bad).is_err());
        }
    }
}
