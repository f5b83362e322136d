//! `http::HeaderName`s for the core's header names, derived once.

use std::sync::LazyLock;

use http::HeaderName;
use overten_errors::{HeaderSpec, headers};

fn name(spec: &HeaderSpec) -> HeaderName {
    // The core's names are ASCII tokens (a core test checks it); `from_bytes` lowercases.
    HeaderName::from_bytes(spec.name.as_bytes()).unwrap_or(HeaderName::from_static("x-invalid"))
}

/// `X-RateLimit-Limit`.
pub static RATE_LIMIT_LIMIT: LazyLock<HeaderName> =
    LazyLock::new(|| name(&headers::RATE_LIMIT_LIMIT));
/// `X-RateLimit-Remaining`.
pub static RATE_LIMIT_REMAINING: LazyLock<HeaderName> =
    LazyLock::new(|| name(&headers::RATE_LIMIT_REMAINING));
/// `X-RateLimit-Reset`.
pub static RATE_LIMIT_RESET: LazyLock<HeaderName> =
    LazyLock::new(|| name(&headers::RATE_LIMIT_RESET));
/// `Retry-After`.
pub static RETRY_AFTER: LazyLock<HeaderName> = LazyLock::new(|| name(&headers::RETRY_AFTER));
/// `X-Request-Id`.
pub static REQUEST_ID: LazyLock<HeaderName> = LazyLock::new(|| name(&headers::REQUEST_ID));

/// The API key of `Authorization: Bearer <key>` (scheme in any case, then spaces), if any.
pub fn bearer_key(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let key = rest.trim_start_matches(' ');
    (!key.is_empty() && !key.contains(' ')).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_core() {
        let ours = [
            &*RATE_LIMIT_LIMIT,
            &*RATE_LIMIT_REMAINING,
            &*RATE_LIMIT_RESET,
            &*RETRY_AFTER,
            &*REQUEST_ID,
        ];
        assert_eq!(ours.len(), headers::ALL.len());
        for (name, spec) in ours.iter().zip(headers::ALL) {
            assert_eq!(name.as_str(), spec.name.to_ascii_lowercase());
        }
        assert_eq!(*RETRY_AFTER, http::header::RETRY_AFTER);
    }

    #[test]
    fn bearer_keys() {
        let req = |v: &str| {
            http::Request::get("/")
                .header("authorization", v)
                .body(())
                .unwrap()
        };
        assert_eq!(bearer_key(req("Bearer k1").headers()), Some("k1"));
        assert_eq!(bearer_key(req("bearer   k1 ").headers()), Some("k1"));
        assert_eq!(bearer_key(req("Basic k1").headers()), None);
        assert_eq!(bearer_key(req("Bearer k1 k2").headers()), None);
        assert_eq!(bearer_key(req("Bearer").headers()), None);
    }
}
