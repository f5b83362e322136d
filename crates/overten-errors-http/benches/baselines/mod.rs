//! The hand-written client baseline, shared by the `hot_paths` benchmark and the
//! `profile_paths` example so both measure the same code.
#![allow(dead_code, reason = "each includer uses part of it")]
#![allow(unreachable_pub, reason = "included as a module")]

use std::borrow::Cow;
use std::time::Duration;

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, RETRY_AFTER};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

#[derive(serde::Deserialize)]
pub struct HandBody<'a> {
    pub success: bool,
    pub error: &'a str,
    #[serde(borrow)]
    pub message: Cow<'a, str>,
}

/// A code by hand: the 16 wire strings in a `match`.
pub fn hand_code(s: &str) -> Option<u8> {
    Some(match s {
        "invalid_api_key" => 0,
        "forbidden" => 1,
        "insufficient_credits" => 2,
        "invalid_request" => 3,
        "validation_error" => 4,
        "preflight_failed" => 5,
        "payload_too_large" => 6,
        "not_found" => 7,
        "gone" => 8,
        "conflict" => 9,
        "sync_timeout_upgrade_async" => 10,
        "rate_limit_exceeded" => 11,
        "internal_error" => 12,
        "upstream_error" => 13,
        "service_unavailable" => 14,
        "not_implemented" => 15,
        _ => return None,
    })
}

#[derive(Debug, PartialEq)]
pub struct HandResult {
    pub code: Option<u8>,
    pub message: String,
    pub request_id: Option<String>,
    pub rate_limit: Option<(u32, u32, u64)>,
    pub retry_in: Option<Duration>,
}

/// `SplitMix64::new(1)`'s first draw, which the decision in the benchmark takes.
const SPREAD_DRAW: u64 = 0x910a_2dec_8902_5cc1;

pub fn header_num<T: std::str::FromStr>(headers: &HeaderMap, name: &HeaderName) -> Option<T> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

/// The client's work by hand: borrowed serde, a code match, `str::parse` of the headers,
/// the message and request id copied out, and the 429 decision.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "53-bit draws and millisecond waits below 2^53"
)]
pub fn hand_classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Option<HandResult> {
    let parsed: HandBody<'_> = serde_json::from_slice(body).ok()?;
    if parsed.success {
        return None;
    }
    let code = hand_code(parsed.error);
    let retry_after: Option<u64> = header_num(headers, &RETRY_AFTER);
    let rate_limit = match (
        header_num(headers, &X_LIMIT),
        header_num(headers, &X_REMAINING),
        header_num(headers, &X_RESET),
    ) {
        (Some(l), Some(r), Some(t)) => Some((l, r, t)),
        _ => None,
    };
    // The 429's named wait, spread upward as docs/retry.md's `bound()` says (one draw, the
    // same the decision takes from `SplitMix64::new(1)`).
    let retry_in = (status == StatusCode::TOO_MANY_REQUESTS)
        .then(|| {
            retry_after.map(|s| {
                let base = s.clamp(1, 300) * 1000;
                let spread = (base / 2).min(30_000);
                let u = (SPREAD_DRAW >> 11) as f64 / (1u64 << 53) as f64;
                let extra = (((spread + 1) as f64 * u) as u64).min(spread);
                Duration::from_millis((base + extra).min(300_000))
            })
        })
        .flatten();
    Some(HandResult {
        code,
        message: parsed.message.into_owned(),
        request_id: headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        rate_limit,
        retry_in,
    })
}
