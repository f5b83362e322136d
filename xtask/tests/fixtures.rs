//! Replays every golden fixture in `docs/fixtures` through `classify` (or, for a failed
//! task, `TaskFailure`) and the decision, as a client in another language would.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on broken fixtures"
)]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use overten_errors::{
    ApiError, Pacer, RandomSource, RetryBudget, RetryPolicy, SplitMix64, TaskFailure,
};
use overten_errors_http::{Diagnostics, Received, classify, observe_rate_limit_of};
use serde_json::Value;

fn received(f: &Value) -> Received {
    let resp = &f["response"];
    let body = resp["body"].as_str().unwrap();
    if f["kind"] == "task_failure" {
        let failure = TaskFailure::parse(body.as_bytes()).unwrap();
        return Received {
            error: ApiError::from(failure),
            diagnostics: Diagnostics::default(),
        };
    }
    assert_eq!(f["kind"], "http_response");
    let status =
        StatusCode::from_u16(u16::try_from(resp["status"].as_u64().unwrap()).unwrap()).unwrap();
    classify(status, &headers_of(resp), body.as_bytes())
}

fn headers_of(resp: &Value) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for pair in resp["headers"].as_array().unwrap() {
        headers.append(
            HeaderName::from_bytes(pair[0].as_str().unwrap().as_bytes()).unwrap(),
            HeaderValue::from_bytes(pair[1].as_str().unwrap().as_bytes()).unwrap(),
        );
    }
    headers
}

/// A pacing fixture as `docs/README.md` states it: a default pacer in the request's state,
/// the response read with its status and the draws from `rng`, then the whole wait of each
/// of the key's next three requests, sent at `now_unix` one after another (ms or null).
fn pacing_waits(f: &Value, rng: &mut dyn RandomSource) -> Vec<Value> {
    let request = &f["request"];
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(request["now_unix"].as_u64().unwrap());
    let pacer = request["held_until_unix_ms"]
        .as_u64()
        .map_or_else(Pacer::new, |ms| {
            Pacer::holding(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        });
    if request["seen_shared"].as_bool().unwrap() {
        pacer.mark_shared();
    }
    for _ in 0..request["sent_in_window"].as_u64().unwrap() {
        pacer.sent(now);
    }
    let policy = RetryPolicy::default();
    let status =
        StatusCode::from_u16(u16::try_from(f["response"]["status"].as_u64().unwrap()).unwrap())
            .unwrap();
    observe_rate_limit_of(
        &pacer,
        status,
        &headers_of(&f["response"]),
        || now,
        &policy,
        rng,
    );
    (0..3)
        .map(|_| serde_json::json!(pacer.wait_at(now, &policy).map(|d| d.as_millis())))
        .collect()
}

fn replay_pacing(f: &Value, name: &str) {
    let wants = f["expect"]["waits_ms"].as_array().unwrap();
    assert_eq!(wants.len(), 3, "{name}");
    assert_eq!(
        f["expect"]["hold_ms"], wants[0],
        "{name}: hold_ms is the first wait"
    );
    let at_low = pacing_waits(f, &mut || 0);
    let at_high = pacing_waits(f, &mut || u64::MAX);
    let drawn: Vec<Vec<Value>> = (0..50)
        .map(|seed| pacing_waits(f, &mut SplitMix64::new(seed)))
        .collect();
    for (i, want) in wants.iter().enumerate() {
        if let (Some(lo), Some(hi)) = (want["min_ms"].as_u64(), want["max_ms"].as_u64()) {
            // The range's ends are the draws r = 0 and r = 2^64 - 1 (docs/README.md).
            assert_eq!(at_low[i], lo, "{name} [{i}] at r = 0");
            assert_eq!(at_high[i], hi, "{name} [{i}] at r = 2^64 - 1");
            for waits in &drawn {
                let ms = waits[i].as_u64().unwrap();
                assert!(
                    (lo..=hi).contains(&ms),
                    "{name} [{i}]: {ms} not in {lo}..={hi}"
                );
            }
        } else {
            for waits in &drawn {
                assert_eq!(&waits[i], want, "{name} [{i}]");
            }
        }
    }
}

fn budget_of(request: &Value) -> RetryBudget {
    let b = &request["budget"];
    let n = |k: &str| u32::try_from(b[k].as_u64().unwrap()).unwrap();
    RetryBudget::new(n("capacity"), n("retry_cost"), n("success_refill"))
        .with_window_cost(n("window_cost"))
        .with_tokens(n("tokens"))
}

fn matches_action(got: &Value, want: &Value, name: &str) {
    if let (Some(lo), Some(hi)) = (want["min_ms"].as_u64(), want["max_ms"].as_u64()) {
        assert_eq!(got["action"], want["action"], "{name}");
        assert_eq!(got["basis"], want["basis"], "{name}");
        let ms = got["after_ms"].as_u64().unwrap();
        assert!((lo..=hi).contains(&ms), "{name}: {ms} not in {lo}..={hi}");
    } else {
        assert_eq!(got, want, "{name}");
    }
}

fn replay_transport(f: &Value, name: &str, steps: &mut std::collections::BTreeSet<&'static str>) {
    let request = &f["request"];
    let attempt = u32::try_from(request["attempt"].as_u64().unwrap()).unwrap();
    let (sent, safe) = (
        f["failure"]["sent"].as_bool().unwrap(),
        f["failure"]["replay_safe"].as_bool().unwrap(),
    );
    for seed in 0..50 {
        let budget = budget_of(request);
        let d = RetryPolicy::default().decide_transport(
            sent,
            safe,
            attempt,
            &mut SplitMix64::new(seed),
            Some(&budget),
        );
        assert_eq!(f["expect"]["step"], d.step.as_str(), "{name}");
        matches_action(
            &serde_json::to_value(d.advice).unwrap(),
            &f["expect"]["action"],
            name,
        );
        steps.insert(d.step.as_str());
    }
}

#[test]
fn every_fixture_replays() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/fixtures");
    let mut seen = 0;
    let mut steps = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let f: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = f["name"].as_str().unwrap();
        if f["kind"] == "transport_failure" {
            replay_transport(&f, name, &mut steps);
            seen += 1;
            continue;
        }
        if f["kind"] == "pacing" {
            replay_pacing(&f, name);
            seen += 1;
            continue;
        }
        if f["kind"] == "success" {
            let budget = budget_of(&f["request"]);
            budget.record_success_after(
                u32::try_from(f["request"]["attempt"].as_u64().unwrap()).unwrap(),
            );
            assert_eq!(f["expect"]["budget_tokens"], budget.tokens(), "{name}");
            seen += 1;
            continue;
        }
        let r = received(&f);
        let expect = &f["expect"];
        let code = (!r.error.code().as_str().is_empty()).then(|| r.error.code().as_str());
        assert_eq!(expect["code"].as_str(), code, "{name}");
        assert_eq!(expect["status"], r.error.status(), "{name}");
        assert_eq!(expect["message"], r.error.message(), "{name}");
        assert_eq!(
            expect["request_id"].as_str(),
            r.error.request_id(),
            "{name}"
        );
        assert_eq!(
            expect["body_is_envelope"],
            r.diagnostics.body.is_none(),
            "{name}"
        );
        assert_eq!(
            expect["status_mismatch"].as_u64(),
            r.error.status_mismatch().map(u64::from),
            "{name}"
        );

        let request = &f["request"];
        let now =
            SystemTime::UNIX_EPOCH + Duration::from_secs(request["now_unix"].as_u64().unwrap());
        let attempt = u32::try_from(request["attempt"].as_u64().unwrap()).unwrap();
        let want = &expect["action"];
        for seed in 0..50 {
            let budget = budget_of(request);
            let decision = RetryPolicy::default().explain(
                &r.error,
                attempt,
                now,
                &mut SplitMix64::new(seed),
                Some(&budget),
            );
            assert_eq!(expect["step"], decision.step.as_str(), "{name}");
            matches_action(&serde_json::to_value(decision.advice).unwrap(), want, name);
            steps.insert(decision.step.as_str());
        }
        seen += 1;
    }
    assert!(seen >= 16 + 30, "only {seen} fixtures found in {dir}");
    // Every step that can decide is exercised by some fixture.
    for step in &overten_errors::Step::ALL[1..] {
        assert!(
            steps.contains(step.as_str()),
            "no fixture is decided by {step:?}"
        );
    }
}
