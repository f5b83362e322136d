//! Server side: `ApiError` -> `http::Response`.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

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
/// - `Retry-After` whenever the error carries one, whatever its code (a 503 with a code
///   newer than this version included); and on a 429 always (a whole rate-limit window,
///   60 s, when the error has none). A delay is written as delta-seconds; a date as an
///   IMF-fixdate.
///
/// An error that carries no code (a response re-served after [`crate::classify`] found no
/// envelope) is written with its status's canonical code
/// ([`overten_errors::ErrorCode::canonical`]), never `"error":""`.
///
/// The body type is anything built from a `Vec<u8>`: `Vec<u8>`, `Full<Bytes>`, axum's `Body`.
/// In a hyper handler, nothing else is needed:
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use overten_errors::{ApiError, ErrorCode};
/// use overten_errors_http::into_response;
///
/// async fn handler(req: http::Request<hyper::body::Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
///     let err = ApiError::from(ErrorCode::NotFound).with_request_id("req_1");
///     Ok(into_response(&err))
/// }
/// # let _ = hyper::service::service_fn(handler);
/// ```
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
    let retry_after = match (err.retry_after(), err.retry_rule().retry_after_header()) {
        (Some(hint), _) => Some(hint),
        (None, HeaderUse::Always) => Some(RetryAfter::Seconds(RATE_LIMIT_WINDOW_SECONDS)),
        (None, HeaderUse::WhenKnown | HeaderUse::Never) => None,
    };
    if let Some(value) = retry_after {
        let value = match value {
            RetryAfter::Seconds(s) => integer(s),
            RetryAfter::At(at) => http_date(at),
        };
        headers.insert(names::RETRY_AFTER.clone(), value);
    }
    response
}

/// The last second an HTTP-date can name: 9999-12-31T23:59:59Z.
const LAST_HTTP_DATE: u64 = 253_402_300_799;

/// `at` as an IMF-fixdate. `httpdate` panics outside 1970..=9999, so a date before 1970
/// (already past) is written as `0` seconds and one after 9999 as the last date there is.
fn http_date(at: SystemTime) -> HeaderValue {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Err(_) => integer(0u64),
        Ok(since) => {
            let clamped = Duration::from_secs(since.as_secs().min(LAST_HTTP_DATE));
            let text = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + clamped);
            HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("0"))
        }
    }
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

/// [`into_response`] with the body made by `body`, and the error itself in the response's
/// extensions, so that the envelope layer logs it (and its cause) once. Layers that answer
/// for the handler (the gateway's 429s, 503s and 413s) use it.
///
/// ```
/// use overten_errors::{ApiError, ErrorCode};
/// let response = overten_errors_http::server::answer(ApiError::from(ErrorCode::Forbidden), |b| b);
/// assert_eq!(response.status(), 403);
/// assert!(response.extensions().get::<ApiError>().is_some());
/// ```
pub fn answer<B>(err: ApiError, body: impl FnOnce(Vec<u8>) -> B) -> Response<B> {
    let response: Response<Vec<u8>> = into_response(&err);
    let mut response = response.map(body);
    response.extensions_mut().insert(err);
    response
}

/// Integers up to this are served from [`SMALL_INTEGERS`].
const SMALL_MAX: u64 = 1024;

/// Header values for 0..=1024, built once on first use (about 64 KiB). Rate-limit counts
/// and `Retry-After` seconds are small and go on every response; a cached value is cloned
/// by reference count instead of allocated.
static SMALL_INTEGERS: LazyLock<Box<[HeaderValue]>> =
    LazyLock::new(|| (0..=SMALL_MAX).map(format_integer).collect());

/// An integer header value: cached when small, else one exact-size allocation.
fn integer(n: impl Into<u64>) -> HeaderValue {
    let n = n.into();
    let cached = usize::try_from(n)
        .ok()
        .filter(|_| n <= SMALL_MAX)
        .and_then(|i| SMALL_INTEGERS.get(i));
    match cached {
        Some(value) => value.clone(),
        None => LAST_LARGE.with(|last| {
            // `X-RateLimit-Reset` is large and changes once a minute: keep the last one
            // each thread wrote.
            let mut last = last.borrow_mut();
            match &*last {
                Some((m, value)) if *m == n => value.clone(),
                _ => {
                    let value = format_integer(n);
                    *last = Some((n, value.clone()));
                    value
                }
            }
        }),
    }
}

thread_local! {
    static LAST_LARGE: std::cell::RefCell<Option<(u64, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// One allocation (`HeaderValue::from(u64)` takes two: a `BytesMut` and, on `freeze`, a
/// shared header for its spare capacity).
fn format_integer(n: u64) -> HeaderValue {
    let mut buf = itoa::Buffer::new();
    HeaderValue::from_str(buf.format(n)).unwrap_or(HeaderValue::from_static("0"))
}

/// Sets `X-Request-Id`. Returns `false`, and sets nothing, when `id` breaks the core's one
/// rule for ids ([`overten_errors::check_id`]: 1 to 256 bytes of visible ASCII), which
/// [`crate::request_id_header`] would drop on the client side.
pub fn set_request_id(headers: &mut HeaderMap, id: &str) -> bool {
    if overten_errors::check_id(id).is_err() {
        return false;
    }
    match HeaderValue::from_str(id) {
        Ok(value) => {
            headers.insert(names::REQUEST_ID.clone(), value);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overten_errors::ErrorCode;

    fn retry_after_of(at: SystemTime) -> HeaderValue {
        let err = ApiError::from(ErrorCode::RateLimitExceeded).with_retry_after(RetryAfter::At(at));
        let response: http::Response<Vec<u8>> = into_response(&err);
        response.headers()[http::header::RETRY_AFTER].clone()
    }

    #[test]
    fn any_date_is_written_without_panicking() {
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(
            retry_after_of(epoch + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(retry_after_of(epoch - Duration::from_secs(1)), "0");
        let far = epoch + Duration::from_secs(LAST_HTTP_DATE * 4);
        assert_eq!(retry_after_of(far), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(
            retry_after_of(epoch + Duration::from_secs(LAST_HTTP_DATE)),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
    }

    #[test]
    fn integers_are_written_exactly_cached_or_not() {
        for n in [
            0,
            1,
            9,
            10,
            42,
            999,
            1023,
            1024,
            1025,
            65_535,
            1_713_312_345,
            u64::MAX,
        ] {
            assert_eq!(integer(n), n.to_string().as_str(), "{n}");
        }
    }

    #[test]
    fn a_429_always_carries_retry_after() {
        let response: http::Response<Vec<u8>> =
            into_response(&ApiError::from(ErrorCode::RateLimitExceeded));
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "60");
        let response: http::Response<Vec<u8>> =
            into_response(&ApiError::from(ErrorCode::ServiceUnavailable));
        assert!(
            response.headers().get(http::header::RETRY_AFTER).is_none(),
            "503 only when a delay is known"
        );
    }

    #[test]
    fn retry_after_is_written_whenever_the_error_carries_it() {
        for (code, status) in [
            ("quota_frozen", 503),
            ("service_unavailable", 503),
            ("internal_error", 500),
            ("brand_new", 504),
        ] {
            let err = ApiError::received(overten_errors::Code::parse(code), status, "m")
                .with_retry_after(RetryAfter::Seconds(120));
            let response: http::Response<Vec<u8>> = into_response(&err);
            assert_eq!(
                response.headers()[http::header::RETRY_AFTER],
                "120",
                "{code}"
            );
        }
        // A 429 with a code newer than this version still always carries it.
        let err = ApiError::received(overten_errors::Code::parse("brand_new"), 429, "m");
        let response: http::Response<Vec<u8>> = into_response(&err);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "60");
    }

    #[test]
    fn a_received_error_without_a_code_is_reserved_with_the_statuss_code() {
        let html = b"<html>502 Bad Gateway</html>";
        let received = crate::classify(StatusCode::BAD_GATEWAY, &HeaderMap::new(), html);
        let response: http::Response<Vec<u8>> = into_response(&received.error);
        let body = String::from_utf8(response.into_body()).unwrap();
        assert!(body.contains(r#""error":"upstream_error""#), "{body}");
        assert!(!body.contains(r#""error":"""#));
    }

    #[test]
    fn ids_the_client_would_drop_are_never_written() {
        let mut headers = HeaderMap::new();
        for bad in ["req 1", "req\t1", "", &"r".repeat(257)] {
            assert!(!set_request_id(&mut headers, bad), "{bad:?}");
        }
        assert!(headers.is_empty());
        assert!(set_request_id(&mut headers, "req_1"));
        assert_eq!(
            crate::request_id_header(&headers),
            Ok(Some("req_1".to_owned()))
        );
    }

    #[test]
    fn bad_request_ids_and_statuses_are_contained() {
        let err = ApiError::received(overten_errors::Code::parse("x"), 1000, "m")
            .with_request_id("bad\nid");
        let response: http::Response<Vec<u8>> = into_response(&err);
        assert_eq!(response.status(), 500);
        assert!(response.headers().get("x-request-id").is_none());
    }
}
