//! No panic on any header value or body; bounds hold.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on broken fixtures"
)]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use overten_errors::{Advice, ApiError, Code, ErrorCode, RetryPolicy, SplitMix64};
use overten_errors_http::{MAX_REQUEST_ID_BYTES, classify, into_response};
use proptest::prelude::*;

const NAMES: [&str; 5] = [
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-request-id",
];

fn headers() -> impl Strategy<Value = HeaderMap> {
    let value = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        "[0-9]{0,25}".prop_map(String::into_bytes),
        "-?[0-9 ]{0,6}".prop_map(String::into_bytes),
    ];
    proptest::collection::vec((0..NAMES.len(), value), 0..8).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (i, bytes) in pairs {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                map.append(HeaderName::from_static(NAMES[i]), v);
            }
        }
        map
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        ("[a-z_]{0,20}", any::<String>()).prop_map(|(c, m)| {
            format!(
                r#"{{"success":false,"error":"{c}","message":{}}}"#,
                serde_json::Value::String(m)
            )
            .into_bytes()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn classify_is_total_and_bounded(status in 100u16..1000, headers in headers(), body in body(), attempt in any::<u32>(), seed in any::<u64>()) {
        let status = StatusCode::from_u16(status).unwrap();
        let r = classify(status, &headers, &body);
        prop_assert_eq!(r.error.status(), status.as_u16());
        if let Some(id) = r.error.request_id() {
            prop_assert!(id.len() <= MAX_REQUEST_ID_BYTES);
        }
        if r.diagnostics.body.is_some() {
            prop_assert_eq!(r.error.code(), &Code::Missing);
            // The message is ours, never bytes of the body.
            let msg = r.error.message();
            prop_assert!(body.is_empty() || msg.len() < 8 || !String::from_utf8_lossy(&body).contains(msg));
        }
        let policy = RetryPolicy::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        if let Advice::Retry { after, .. } = r.advise(&policy, attempt, now, &mut SplitMix64::new(seed)) {
            prop_assert!(after <= policy.max_wait());
        }
    }

    #[test]
    fn server_round_trip(code_index in 0..ErrorCode::ALL.len(), message in any::<String>(), id in "[ -~]{0,40}") {
        let code = ErrorCode::ALL[code_index];
        let err = ApiError::new(code, message.clone()).with_request_id(id.clone());
        let resp: http::Response<Vec<u8>> = into_response(&err);
        let r = classify(resp.status(), resp.headers(), resp.body());
        prop_assert_eq!(r.error.code(), &code);
        // Both sides bound the message alike, and the server writes only ids its client keeps.
        prop_assert_eq!(r.error.message(), err.message());
        prop_assert_eq!(r.error.request_id(), overten_errors::check_id(&id).ok());
        prop_assert_eq!(r.error.request_id(), err.request_id());
    }
}
