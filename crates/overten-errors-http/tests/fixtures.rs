//! Replays every golden fixture in `docs/fixtures` through `classify` and the decision,
//! as a client in another language would.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on broken fixtures"
)]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use overten_errors::{RetryPolicy, SplitMix64};
use overten_errors_http::classify;
use serde_json::Value;

#[test]
fn every_fixture_replays() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/fixtures");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let f: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = f["name"].as_str().unwrap();
        let resp = &f["response"];
        let mut headers = HeaderMap::new();
        for pair in resp["headers"].as_array().unwrap() {
            headers.append(
                HeaderName::from_bytes(pair[0].as_str().unwrap().as_bytes()).unwrap(),
                HeaderValue::from_str(pair[1].as_str().unwrap()).unwrap(),
            );
        }
        let status =
            StatusCode::from_u16(u16::try_from(resp["status"].as_u64().unwrap()).unwrap()).unwrap();
        let r = classify(status, &headers, resp["body"].as_str().unwrap().as_bytes());
        let expect = &f["expect"];
        let code = (!r.error.code().as_str().is_empty()).then(|| r.error.code().as_str());
        assert_eq!(expect["code"].as_str(), code, "{name}");
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

        let now = SystemTime::UNIX_EPOCH
            + Duration::from_secs(f["request"]["now_unix"].as_u64().unwrap());
        let attempt = u32::try_from(f["request"]["attempt"].as_u64().unwrap()).unwrap();
        let want = &expect["action"];
        for seed in 0..50 {
            let advice = r.advise(
                &RetryPolicy::default(),
                attempt,
                now,
                &mut SplitMix64::new(seed),
            );
            let got = serde_json::to_value(advice).unwrap();
            if let (Some(lo), Some(hi)) = (want["min_ms"].as_u64(), want["max_ms"].as_u64()) {
                assert_eq!(got["action"], want["action"], "{name}");
                assert_eq!(got["basis"], want["basis"], "{name}");
                let ms = got["after_ms"].as_u64().unwrap();
                assert!((lo..=hi).contains(&ms), "{name}: {ms} not in {lo}..={hi}");
            } else {
                assert_eq!(&got, want, "{name}");
            }
        }
        seen += 1;
    }
    assert!(seen >= 16 + 5, "only {seen} fixtures found in {dir}");
}
