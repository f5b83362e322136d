//! The hot paths of both sides, each beside its baselines, on the same data in one run.
//!
//! Run: `cargo bench -p overten-errors-http --bench hot_paths`. Before timing anything,
//! `verify()` proves every contender produces the same bytes or the same decision, so no
//! contender skips work. Allocations are counted by divan's `AllocProfiler`, a counting
//! global allocator.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::wildcard_imports,
    reason = "a benchmark binary: a broken contender must abort the run; each group uses all of the shared data"
)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use baselines::{
    HandBody, X_LIMIT, X_REMAINING, X_REQUEST_ID, X_RESET, hand_classify, hand_code, header_num,
};
use divan::Bencher;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_api_problem::HttpApiProblem;
use overten_errors::{
    Advice, ApiError, Envelope, ErrorCode, RateLimit, RetryAfter, RetryPolicy, SplitMix64,
};
use overten_errors_http::{classify, into_response, retry_after_header};

mod baselines;

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

// The data every contender works on: a 429 with a 40-character message, Retry-After 42,
// the three X-RateLimit-* headers and a 28-character X-Request-Id.
const CODE: &str = "rate_limit_exceeded";
const MESSAGE: &str = "Too many requests; retry in 42 seconds.."; // 40 characters
const REQUEST_ID: &str = "req_8f2c61d0a9b34e7f5c1d2e3f"; // 28 characters
const LIMIT: u32 = 60;
const REMAINING: u32 = 0;
const RESET: u64 = 1_713_312_345;
const RETRY_SECS: u64 = 42;
const DATE: &str = "Sun, 06 Nov 1994 08:50:19 GMT";

fn main() {
    verify();
    divan::main();
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
}

fn our_error() -> ApiError {
    ApiError::new(ErrorCode::RateLimitExceeded, MESSAGE)
        .with_request_id(REQUEST_ID)
        .with_rate_limit(RateLimit {
            limit: LIMIT,
            remaining: REMAINING,
            reset: RESET,
        })
        .with_retry_after(RetryAfter::Seconds(RETRY_SECS))
}

// ---------------------------------------------------------------- hand-written baselines

/// JSON string escaping by hand (RFC 8259 section 7).
fn escape_into(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

fn hand_envelope(out: &mut Vec<u8>, code: &str, message: &str) {
    out.extend_from_slice(br#"{"success":false,"error":""#);
    escape_into(out, code);
    out.extend_from_slice(br#"","message":""#);
    escape_into(out, message);
    out.extend_from_slice(br#""}"#);
}

#[derive(serde::Serialize)]
struct DerivedEnvelope<'a> {
    success: bool,
    error: &'a str,
    message: &'a str,
}

/// The six headers by hand: `HeaderMap::with_capacity`, integers via itoa.
fn hand_headers(content_type: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(6);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        X_REQUEST_ID.clone(),
        HeaderValue::from_str(REQUEST_ID).unwrap(),
    );
    let mut n = itoa::Buffer::new();
    headers.insert(
        X_LIMIT.clone(),
        HeaderValue::from_str(n.format(LIMIT)).unwrap(),
    );
    headers.insert(
        X_REMAINING.clone(),
        HeaderValue::from_str(n.format(REMAINING)).unwrap(),
    );
    headers.insert(
        X_RESET.clone(),
        HeaderValue::from_str(n.format(RESET)).unwrap(),
    );
    headers.insert(
        RETRY_AFTER,
        HeaderValue::from_str(n.format(RETRY_SECS)).unwrap(),
    );
    headers
}

/// The floor: body by hand into a Vec, `HeaderMap::with_capacity`, integers via itoa.
fn floor_response() -> Response<Vec<u8>> {
    let mut body = Vec::with_capacity(CODE.len() + MESSAGE.len() + 48);
    hand_envelope(&mut body, CODE, MESSAGE);
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    *response.headers_mut() = hand_headers("application/json");
    response
}

/// The same problem, built and serialized by http-api-problem, with the same headers.
fn problem_response() -> Response<Vec<u8>> {
    let problem = HttpApiProblem::new(StatusCode::TOO_MANY_REQUESTS)
        .title("Rate limited")
        .detail(MESSAGE)
        .value("error", &CODE);
    let mut response = Response::new(problem.json_bytes());
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    *response.headers_mut() = hand_headers("application/problem+json");
    response
}

fn ours_classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> (overten_errors_http::Received, Advice) {
    let received = classify(status, headers, body);
    let advice = received.advise(&RetryPolicy::default(), 1, now(), &mut SplitMix64::new(1));
    (received, advice)
}

const WIRE: [&str; 17] = [
    "invalid_api_key",
    "forbidden",
    "insufficient_credits",
    "invalid_request",
    "validation_error",
    "preflight_failed",
    "payload_too_large",
    "not_found",
    "gone",
    "conflict",
    "sync_timeout_upgrade_async",
    "rate_limit_exceeded",
    "internal_error",
    "upstream_error",
    "service_unavailable",
    "not_implemented",
    "quota_frozen",
];

// ------------------------------------------------------------------------- verification

fn verify() {
    assert_eq!(MESSAGE.chars().count(), 40);
    assert_eq!(REQUEST_ID.len(), 28);

    // Server: the same status, headers and bytes.
    let ours: Response<Vec<u8>> = into_response(&our_error());
    let floor = floor_response();
    assert_eq!(ours.status(), floor.status());
    assert_eq!(ours.headers(), floor.headers());
    assert_eq!(ours.headers().len(), 6);
    assert_eq!(ours.body(), floor.body());
    let problem = problem_response();
    let problem_json: serde_json::Value = serde_json::from_slice(problem.body()).unwrap();
    assert_eq!(
        (
            problem_json["status"].as_u64(),
            problem_json["detail"].as_str(),
            problem_json["error"].as_str()
        ),
        (Some(429), Some(MESSAGE), Some(CODE))
    );
    assert_eq!(problem.headers().len(), 6);

    // Envelope into a buffer: three writers, one output.
    let (mut ours_buf, mut hand_buf, mut serde_buf) = (Vec::new(), Vec::new(), Vec::new());
    Envelope::new(CODE, MESSAGE)
        .write_json(&mut ours_buf)
        .unwrap();
    hand_envelope(&mut hand_buf, CODE, MESSAGE);
    serde_json::to_writer(
        &mut serde_buf,
        &DerivedEnvelope {
            success: false,
            error: CODE,
            message: MESSAGE,
        },
    )
    .unwrap();
    assert_eq!(ours_buf, hand_buf);
    assert_eq!(ours_buf, serde_buf);
    let (mut ours_buf, mut hand_buf) = (Vec::new(), Vec::new());
    let tricky = "quote \" backslash \\ newline \n tab \t bell \u{7} é";
    Envelope::new(CODE, tricky)
        .write_json(&mut ours_buf)
        .unwrap();
    hand_envelope(&mut hand_buf, CODE, tricky);
    assert_eq!(
        ours_buf, hand_buf,
        "the hand writer escapes like serde_json"
    );

    // Client: the same code, message, ids, limits and decision.
    let (r, advice) = ours_classify(floor.status(), floor.headers(), floor.body());
    let hand = hand_classify(floor.status(), floor.headers(), floor.body()).unwrap();
    assert!(r.diagnostics.is_clean());
    assert_eq!(hand.code, hand_code(r.error.code().as_str()));
    assert_eq!(hand.code, Some(11));
    assert_eq!(hand.message, r.error.message());
    assert_eq!(hand.request_id.as_deref(), r.error.request_id());
    let rl = r.error.rate_limit().unwrap();
    assert_eq!(hand.rate_limit, Some((rl.limit, rl.remaining, rl.reset)));
    let Advice::Retry { after, .. } = advice else {
        panic!("{advice:?}")
    };
    assert_eq!(hand.retry_in, Some(after));
    let parsed: HttpApiProblem = serde_json::from_slice(problem.body()).unwrap();
    assert_eq!(parsed.detail.as_deref(), Some(MESSAGE));

    // Retry-After as an HTTP-date.
    let at = httpdate::parse_http_date(DATE).unwrap();
    assert_eq!(RetryAfter::parse(DATE), Ok(RetryAfter::At(at)));
    let mut h = HeaderMap::new();
    h.insert(RETRY_AFTER, HeaderValue::from_static(DATE));
    assert_eq!(retry_after_header(&h), Ok(Some(RetryAfter::At(at))));

    // Codes from wire strings.
    for s in WIRE {
        assert_eq!(
            ErrorCode::from_wire(s).map(ErrorCode::as_str),
            hand_code(s).map(|i| WIRE[usize::from(i)])
        );
    }
}

// ---------------------------------------------------------------------------- benchmarks

mod server_response {
    use super::*;

    /// `into_response(&err)`: the handler already holds the error.
    #[divan::bench]
    fn ours(bencher: Bencher<'_, '_>) {
        let err = our_error();
        bencher.bench_local(|| into_response::<Vec<u8>>(black_box(&err)));
    }

    /// Building the `ApiError` too, as http-api-problem builds its problem.
    #[divan::bench]
    fn ours_building_the_error(bencher: Bencher<'_, '_>) {
        bencher.bench_local(|| into_response::<Vec<u8>>(&black_box(our_error())));
    }

    #[divan::bench]
    fn floor_by_hand(bencher: Bencher<'_, '_>) {
        bencher.bench_local(floor_response);
    }

    #[divan::bench]
    fn http_api_problem(bencher: Bencher<'_, '_>) {
        bencher.bench_local(problem_response);
    }
}

mod envelope_into_buffer {
    use super::*;

    #[divan::bench]
    fn ours(bencher: Bencher<'_, '_>) {
        let mut buf = Vec::with_capacity(256);
        bencher.bench_local(|| {
            buf.clear();
            Envelope::new(black_box(CODE), black_box(MESSAGE))
                .write_json(&mut buf)
                .unwrap();
            buf.len()
        });
    }

    #[divan::bench]
    fn hand_writer(bencher: Bencher<'_, '_>) {
        let mut buf = Vec::with_capacity(256);
        bencher.bench_local(|| {
            buf.clear();
            hand_envelope(&mut buf, black_box(CODE), black_box(MESSAGE));
            buf.len()
        });
    }

    #[divan::bench]
    fn serde_derived(bencher: Bencher<'_, '_>) {
        let mut buf = Vec::with_capacity(256);
        bencher.bench_local(|| {
            buf.clear();
            let e = DerivedEnvelope {
                success: false,
                error: black_box(CODE),
                message: black_box(MESSAGE),
            };
            serde_json::to_writer(&mut buf, &e).unwrap();
            buf.len()
        });
    }
}

mod client_classify {
    use super::*;

    #[divan::bench]
    fn ours(bencher: Bencher<'_, '_>) {
        let r = floor_response();
        bencher.bench_local(|| {
            ours_classify(
                black_box(r.status()),
                black_box(r.headers()),
                black_box(r.body()),
            )
        });
    }

    #[divan::bench]
    fn by_hand(bencher: Bencher<'_, '_>) {
        let r = floor_response();
        bencher.bench_local(|| {
            hand_classify(
                black_box(r.status()),
                black_box(r.headers()),
                black_box(r.body()),
            )
        });
    }

    #[divan::bench]
    fn http_api_problem(bencher: Bencher<'_, '_>) {
        let r = problem_response();
        bencher
            .bench_local(|| serde_json::from_slice::<HttpApiProblem>(black_box(r.body())).unwrap());
    }
}

mod retry_after_date {
    use super::*;

    /// The core's parser on the value.
    #[divan::bench]
    fn ours_value(bencher: Bencher<'_, '_>) {
        bencher.bench_local(|| RetryAfter::parse(black_box(DATE)));
    }

    #[divan::bench]
    fn httpdate_value(bencher: Bencher<'_, '_>) {
        bencher.bench_local(|| httpdate::parse_http_date(black_box(DATE)));
    }

    /// The http crate's header reader (lookup, duplicate check, parse).
    #[divan::bench]
    fn ours_header(bencher: Bencher<'_, '_>) {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static(DATE));
        bencher.bench_local(|| retry_after_header(black_box(&h)));
    }

    #[divan::bench]
    fn httpdate_header(bencher: Bencher<'_, '_>) {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static(DATE));
        bencher.bench_local(|| {
            black_box(&h)
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| httpdate::parse_http_date(s).ok())
        });
    }
}

mod code_from_wire {
    use super::*;

    #[divan::bench]
    fn ours(bencher: Bencher<'_, '_>) {
        bencher.bench_local(|| {
            black_box(WIRE)
                .iter()
                .filter_map(|s| ErrorCode::from_wire(s))
                .count()
        });
    }

    #[divan::bench]
    fn hand_match(bencher: Bencher<'_, '_>) {
        bencher.bench_local(|| black_box(WIRE).iter().filter_map(|s| hand_code(s)).count());
    }
}

mod client_parts {
    use super::*;

    #[divan::bench]
    fn ours_body(bencher: Bencher<'_, '_>) {
        let r = floor_response();
        bencher.bench_local(|| overten_errors::ErrorBody::parse(black_box(r.body())).unwrap());
    }

    #[divan::bench]
    fn hand_body(bencher: Bencher<'_, '_>) {
        let r = floor_response();
        bencher.bench_local(|| {
            let b: HandBody<'_> = serde_json::from_slice(black_box(r.body())).unwrap();
            (hand_code(b.error), b.message.into_owned())
        });
    }

    #[divan::bench]
    fn ours_headers(bencher: Bencher<'_, '_>) {
        let r = floor_response();
        bencher.bench_local(|| {
            let h = black_box(r.headers());
            (
                overten_errors_http::request_id_header(h),
                overten_errors_http::retry_after_header(h),
                overten_errors_http::rate_limit_headers(h),
            )
        });
    }

    #[divan::bench]
    fn hand_headers(bencher: Bencher<'_, '_>) {
        let r = floor_response();
        bencher.bench_local(|| {
            let h = black_box(r.headers());
            (
                h.get(&X_REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                header_num::<u64>(h, &RETRY_AFTER),
                header_num::<u32>(h, &X_LIMIT),
                header_num::<u32>(h, &X_REMAINING),
                header_num::<u64>(h, &X_RESET),
            )
        });
    }
}
