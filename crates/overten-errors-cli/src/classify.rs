//! `overten-errors classify`: a fixture or a raw response, read as a client reads it.

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use overten_errors::{ApiError, Decision, RetryBudget, RetryPolicy, SplitMix64, TaskFailure};
use overten_errors_http::{Diagnostics, Received, classify, process_seed};
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
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("malformed header name {:?}", truncate(name)))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("malformed value of {name}"))?;
        headers.append(name, value);
    }
    Ok((status, headers, body.to_vec()))
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Case {
    received: Option<Received>,
    decision: Decision,
    expect: Option<Value>,
}

fn budget_of(request: &Value) -> Option<RetryBudget> {
    let b = request.get("budget")?;
    let n = |k: &str| b.get(k)?.as_u64().and_then(|v| u32::try_from(v).ok());
    Some(
        RetryBudget::new(n("capacity")?, n("retry_cost")?, n("success_refill")?)
            .with_tokens(n("tokens")?),
    )
}

fn fixture_case(f: &Value, rng: &mut SplitMix64) -> Result<Case, String> {
    let request = &f["request"];
    let attempt = request["attempt"]
        .as_u64()
        .and_then(|a| u32::try_from(a).ok())
        .unwrap_or(1);
    let now =
        SystemTime::UNIX_EPOCH + Duration::from_secs(request["now_unix"].as_u64().unwrap_or(0));
    let budget = budget_of(request);
    let policy = RetryPolicy::default();
    let expect = Some(f["expect"].clone());
    if f["kind"] == "transport_failure" {
        let sent = f["failure"]["sent"]
            .as_bool()
            .ok_or("failure.sent is missing")?;
        let safe = f["failure"]["replay_safe"]
            .as_bool()
            .ok_or("failure.replay_safe is missing")?;
        let decision = policy.decide_transport(sent, safe, attempt, rng, budget.as_ref());
        return Ok(Case {
            received: None,
            decision,
            expect,
        });
    }
    let resp = &f["response"];
    let body = resp["body"]
        .as_str()
        .ok_or("response.body is not a string")?;
    let received = if f["kind"] == "task_failure" {
        let failure: TaskFailure =
            serde_json::from_str(body).map_err(|e| format!("not a task failure: {e}"))?;
        Received {
            error: ApiError::from(failure),
            diagnostics: Diagnostics::default(),
        }
    } else {
        let mut headers = HeaderMap::new();
        for pair in resp["headers"]
            .as_array()
            .ok_or("response.headers is not a list")?
        {
            let (Some(k), Some(v)) = (pair[0].as_str(), pair[1].as_str()) else {
                return Err("a header is not a [name, value] pair".to_owned());
            };
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.append(k, v);
            }
        }
        let status = resp["status"]
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or("response.status is not a status")?;
        classify(status, &headers, body.as_bytes())
    };
    let decision = policy.explain(&received.error, attempt, now, rng, budget.as_ref());
    Ok(Case {
        received: Some(received),
        decision,
        expect,
    })
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
    let action = serde_json::to_value(case.decision.advice).unwrap_or_default();
    let mut out = json!({
        "step": case.decision.step.as_str(),
        "action": action,
    });
    if let Some(r) = &case.received {
        let e = &r.error;
        out["status"] = json!(e.status());
        out["code"] = json!((!e.code().as_str().is_empty()).then(|| e.code().as_str()));
        out["known"] = json!(e.code().known().is_some());
        out["message"] = json!(e.message());
        out["request_id"] = json!(e.request_id());
        out["task_id"] = json!(e.task_id());
        out["body_is_envelope"] = json!(r.diagnostics.body.is_none());
        out["status_mismatch"] = json!(e.status_mismatch());
        out["diagnostics"] = json!(format!("{:?}", r.diagnostics));
    }
    if let Some(expect) = &case.expect {
        let mut ok = conforms(&out["action"], &expect["action"]) && out["step"] == expect["step"];
        for field in [
            "status",
            "code",
            "message",
            "request_id",
            "task_id",
            "status_mismatch",
        ] {
            if case.received.is_some() && expect.get(field).is_some() {
                ok &= out[field] == expect[field];
            }
        }
        out["expect"] = expect.clone();
        out["conforms"] = json!(ok);
    }
    out
}

fn text(case: &Case, out: &Value) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if let Some(r) = &case.received {
        let _ = writeln!(s, "error:       {}", r.error);
        let _ = writeln!(s, "known code:  {}", out["known"]);
        let _ = writeln!(s, "diagnostics: {:?}", r.diagnostics);
    }
    let _ = writeln!(
        s,
        "advice:      {} (step {} of docs/retry.md)",
        case.decision.advice,
        case.decision.step.as_str()
    );
    if let Some(ok) = out.get("conforms") {
        let _ = writeln!(s, "expected:    {}", out["expect"]["action"]);
        let verdict = if ok == &json!(true) { "yes" } else { "NO" };
        let _ = writeln!(s, "conforms:    {verdict}");
    }
    s
}

pub(crate) fn main(fixture: Option<&Path>, as_json: bool, attempt: u32) -> ExitCode {
    let mut rng = SplitMix64::new(process_seed());
    let case = match fixture {
        Some(path) => std::fs::File::open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))
            .and_then(read_limited)
            .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| format!("not JSON: {e}")))
            .and_then(|f| fixture_case(&f, &mut rng)),
        None => read_limited(std::io::stdin())
            .and_then(|b| parse_raw(&b))
            .map(|(status, headers, body)| {
                let received = classify(status, &headers, &body);
                let decision = RetryPolicy::default().explain(
                    &received.error,
                    attempt,
                    SystemTime::now(),
                    &mut rng,
                    None,
                );
                Case {
                    received: Some(received),
                    decision,
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
