//! Server side: `ApiError` -> `http::Response`.

use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use overten_errors::{ApiError, HeaderUse, RATE_LIMIT_WINDOW_SECONDS, RateLimit, RetryAfter};

use crate::names;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Builds the response the API sends for `err`.
///
/// - status: the error's status (a status `http` rejects becomes 500);
/// - `Content-Type: application/json` and the envelope body (code and public message only:
///   the internal cause and ids are never written into it);
/// - `X-Request-Id` when the error has one (a value that is not a valid header value is
///   left out rather than sent mangled);
/// - `X-RateLimit-Limit`, `-Remaining`, `-Reset` when it has a rate-limit snapshot;
/// - `Retry-After` where the code calls for it: a 429 always (the error's hint, or a whole
///   rate-limit window, 60 s, when it has none), and a code with a wait window (503) when a
///   delay is known. A delay is written as delta-seconds; a date as an IMF-fixdate.
///
/// The body type is anything built from a `Vec<u8>`: `Vec<u8>`, `Full<Bytes>`, axum's `Body`.
pub fn into_response<B: From<Vec<u8>>>(err: &ApiError) -> Response<B> {
    let mut response = Response::new(B::from(err.to_json()));
    *response.status_mut() =
        StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.reserve(6);
    headers.insert(CONTENT_TYPE, JSON);
    if let Some(id) = err.request_id() {
        set_request_id(headers, id);
    }
    if let Some(rl) = err.rate_limit() {
        set_rate_limit_headers(headers, &rl);
    }
    let retry_after = match (err.retry_rule().retry_after_header(), err.retry_after()) {
        (HeaderUse::Always, None) => Some(RetryAfter::Seconds(RATE_LIMIT_WINDOW_SECONDS)),
        (HeaderUse::Always | HeaderUse::WhenKnown, hint) => hint,
        _ => None,
    };
    if let Some(value) = retry_after {
        let value = match value {
            RetryAfter::Seconds(s) => integer(s),
            RetryAfter::At(at) => HeaderValue::try_from(httpdate::fmt_http_date(at))
                .unwrap_or(HeaderValue::from_static("60")),
        };
        headers.insert(names::RETRY_AFTER.clone(), value);
    }
    response
}

/// Sets `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`; the API
/// sends them on every response, successes included.
pub fn set_rate_limit_headers(headers: &mut HeaderMap, rate_limit: &RateLimit) {
    headers.insert(names::RATE_LIMIT_LIMIT.clone(), integer(rate_limit.limit));
    headers.insert(
        names::RATE_LIMIT_REMAINING.clone(),
        integer(rate_limit.remaining),
    );
    headers.insert(names::RATE_LIMIT_RESET.clone(), integer(rate_limit.reset));
}

/// An integer header value in one allocation (`HeaderValue::from(u64)` takes two: a
/// `BytesMut` and, on `freeze`, a shared header for its spare capacity).
fn integer(n: impl itoa::Integer) -> HeaderValue {
    let mut buf = itoa::Buffer::new();
    HeaderValue::from_str(buf.format(n)).unwrap_or(HeaderValue::from_static("0"))
}

/// Sets `X-Request-Id`. Returns `false`, and sets nothing, when `id` is not a valid header
/// value (control characters, non-ASCII).
pub fn set_request_id(headers: &mut HeaderMap, id: &str) -> bool {
    match HeaderValue::from_str(id) {
        Ok(value) => {
            headers.insert(names::REQUEST_ID.clone(), value);
            true
        }
        Err(_) => false,
    }
}
