//! `http::HeaderName`s for the core's header names, derived once.

use std::sync::LazyLock;

use http::HeaderName;
use overten_errors::{HeaderSpec, headers};

fn name(spec: &HeaderSpec) -> HeaderName {
    // The core's names are ASCII tokens (a core test checks it). A name made from a static
    // string clones without touching a reference count, and these are cloned into every
    // response: the lowercase copy is leaked once per name (five, a few bytes each).
    let lower: &'static str = Box::leak(spec.name.to_ascii_lowercase().into_boxed_str());
    match HeaderName::from_bytes(lower.as_bytes()) {
        // Valid and already lowercase: `from_static` accepts it (and does not panic).
        Ok(_) => HeaderName::from_static(lower),
        Err(_) => HeaderName::from_static("x-invalid"),
    }
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

/// `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): the header a client sends
/// once per logical request and the server's idempotency layer reads. The page names no
/// such header; it is this workspace's, on both sides, under this one name.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// `Idempotent-Replayed`: `true` on a response the idempotency layer replayed.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The API key of `Authorization: Bearer <key>` (scheme in any case, then spaces), if any.
/// A request with more than one `Authorization` header has none: which one counts would
/// be ambiguous.
pub fn bearer_key(headers: &http::HeaderMap) -> Option<&str> {
    let mut all = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = all.next()?;
    if all.next().is_some() {
        return None;
    }
    let value = value.to_str().ok()?;
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let key = rest.trim_start_matches(' ');
    (!key.is_empty() && !key.contains(' ')).then_some(key)
}

/// The key of a well-formed `Authorization: Bearer sk_live_...` header: `sk_live_` and 1
/// to 128 letters, digits or `_`, after [`bearer_key`]'s RFC 9110 reading of the header
/// (scheme in any case, then one or more spaces; one header only).
pub fn live_api_key(headers: &http::HeaderMap) -> Option<&str> {
    bearer_key(headers).filter(|key| is_live_key(key))
}

/// Whether `key` is a well-formed live key: `sk_live_` and 1 to 128 ASCII letters, digits
/// or `_`.
pub fn is_live_key(key: &str) -> bool {
    key.strip_prefix("sk_live_").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 128
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
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
        let mut two = req("Bearer k1");
        two.headers_mut()
            .append("authorization", "Bearer k2".parse().unwrap());
        assert_eq!(bearer_key(two.headers()), None, "two Authorization headers");
        assert_eq!(live_api_key(two.headers()), None);
        assert_eq!(
            live_api_key(req("Bearer sk_live_a1_B").headers()),
            Some("sk_live_a1_B")
        );
        let long = format!("Bearer sk_live_{}", "k".repeat(129));
        assert_eq!(live_api_key(req(&long).headers()), None);
        assert_eq!(live_api_key(req("Bearer sk_live_").headers()), None);
        assert_eq!(live_api_key(req("Bearer sk_test_a").headers()), None);
        assert_eq!(live_api_key(req("Bearer sk_live_a-b").headers()), None);
    }
}
