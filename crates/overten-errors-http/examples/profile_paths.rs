//! Runs one hot path 10,000 times, for instruction counts under callgrind (repeatable on a
//! shared, noisy machine, unlike wall time). Used to find where the client's time goes:
//!
//! ```text
//! cargo build --release -p overten-errors-http --example profile_paths
//! for p in client-ours client-hand; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$p target/release/examples/profile_paths $p
//! done
//! callgrind_annotate cg.client-ours | head -30
//! ```
//!
//! Paths: `client-ours`, `client-hand` (classify + decision), `body-ours`, `body-hand`,
//! `headers-ours`, `headers-hand`.

use std::hint::black_box;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

#[path = "../benches/baselines/mod.rs"]
mod baselines;
use baselines::{HandBody, X_LIMIT, X_REMAINING, X_REQUEST_ID, X_RESET, header_num};
use overten_errors::{Advice, ErrorBody, RetryPolicy, SplitMix64};
use overten_errors_http::{classify, rate_limit_headers, request_id_header, retry_after_header};

const BODY: &[u8] = br#"{"success":false,"error":"rate_limit_exceeded","message":"Too many requests; retry in 42 seconds.."}"#;
#[inline(never)]
fn client_ours(h: &HeaderMap) -> usize {
    let r = classify(StatusCode::TOO_MANY_REQUESTS, h, BODY);
    let now = SystemTime::UNIX_EPOCH;
    let advice = r.advise(&RetryPolicy::default(), 1, now, &mut SplitMix64::new(1));
    r.error.message().len() + usize::from(matches!(advice, Advice::Retry { .. }))
}

#[inline(never)]
fn client_hand(h: &HeaderMap) -> usize {
    baselines::hand_classify(StatusCode::TOO_MANY_REQUESTS, h, BODY)
        .map_or(0, |r| r.message.len() + usize::from(r.retry_in.is_some()))
}

#[inline(never)]
fn body_ours() -> usize {
    ErrorBody::parse(BODY).map_or(0, |b| b.message.map_or(0, |m| m.len()))
}

#[inline(never)]
fn body_hand() -> usize {
    serde_json::from_slice::<HandBody<'_>>(BODY)
        .map_or(0, |b| b.message.into_owned().len() + b.error.len())
}

#[inline(never)]
fn headers_ours(h: &HeaderMap) -> usize {
    let id = request_id_header(h).ok().flatten().map_or(0, |s| s.len());
    id + usize::from(retry_after_header(h).is_ok()) + usize::from(rate_limit_headers(h).is_ok())
}

#[inline(never)]
fn headers_hand(h: &HeaderMap) -> usize {
    let id = h
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    id.map_or(0, |s| s.len())
        + usize::from(header_num::<u64>(h, &http::header::RETRY_AFTER).is_some())
        + usize::from(header_num::<u32>(h, &X_LIMIT).is_some())
        + usize::from(header_num::<u32>(h, &X_REMAINING).is_some())
        + usize::from(header_num::<u64>(h, &X_RESET).is_some())
}

fn main() {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("x-request-id", "req_8f2c61d0a9b34e7f5c1d2e3f"),
        ("x-ratelimit-limit", "60"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1713312345"),
        ("retry-after", "42"),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let path = std::env::args().nth(1).unwrap_or_default();
    let run: fn(&HeaderMap) -> usize = match path.as_str() {
        "client-ours" => client_ours,
        "client-hand" => client_hand,
        "body-ours" => |_| body_ours(),
        "body-hand" => |_| body_hand(),
        "headers-ours" => headers_ours,
        "headers-hand" => headers_hand,
        _ => {
            eprintln!(
                "usage: profile_paths client-ours|client-hand|body-ours|body-hand|headers-ours|headers-hand"
            );
            std::process::exit(2);
        }
    };
    let total: usize = (0..10_000).map(|_| run(black_box(&h))).sum();
    println!("{path}: {total}");
}
