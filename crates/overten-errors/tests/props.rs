//! Property tests: parsers and the decision never panic and stay within their bounds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on broken fixtures"
)]

use std::time::{Duration, SystemTime};

use overten_errors::{
    Advice, ApiError, Basis, Code, Envelope, ErrorBody, JsonPointer, RateLimit, RetryAfter,
    RetryPolicy, SplitMix64, StopReason,
};
use proptest::prelude::*;

fn header_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,30}",
        "-[0-9]{1,5}",
        "[ \t]{0,2}[0-9]{1,3}[ \t]{0,2}",
        "(Mon|Sun|Sunday), [0-9]{2}[ -](Nov|Foo)[ -][0-9]{2,4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn retry_after_parse_is_total(s in header_like()) {
        if let Ok(RetryAfter::Seconds(_)) = RetryAfter::parse(&s) {
            let t = s.trim_matches(|c| c == ' ' || c == '\t');
            prop_assert!(t.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn body_parse_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = ErrorBody::parse(&bytes);
    }

    #[test]
    fn body_round_trips(code in "[a-z_]{1,30}|.{1,10}", message in any::<String>()) {
        let json = Envelope::new(&code, &message).to_json();
        let body = ErrorBody::parse(&json).unwrap();
        prop_assert_eq!(body.code.as_str(), code.as_str());
        prop_assert_eq!(body.message, Some(message));
    }

    #[test]
    fn code_parse_keeps_the_string(s in any::<String>()) {
        let code = Code::parse(&s);
        prop_assert_eq!(code.as_str(), s.as_str());
    }

    #[test]
    fn pointers_round_trip(tokens in proptest::collection::vec(any::<String>(), 0..5), detail in any::<String>()) {
        let p = tokens.iter().fold(JsonPointer::root(), |p, t| p.push(t));
        let back: Vec<String> = p.tokens().map(std::borrow::Cow::into_owned).collect();
        prop_assert_eq!(&back, &tokens);
        prop_assert_eq!(JsonPointer::parse(p.as_str()), Ok(p.clone()));
        prop_assert_eq!(JsonPointer::from_fragment(&p.to_fragment()), Ok(p.clone()));
        prop_assert_eq!(ApiError::validation(&p, &detail).field_pointer(), Some(p));
    }

    #[test]
    fn decisions_stay_in_bounds(
        code in prop_oneof!["[a-z_]{1,30}", Just("rate_limit_exceeded".to_owned()), Just("service_unavailable".to_owned())],
        status in any::<u16>(),
        retry_after in proptest::option::of(header_like()),
        rate_limit in proptest::option::of((any::<u32>(), any::<u32>(), any::<u64>())),
        attempt in any::<u32>(),
        now_secs in 0u64..8_000_000_000,
        seed in any::<u64>(),
    ) {
        let mut err = ApiError::received(Code::parse(&code), status, "m");
        if let Some(Ok(ra)) = retry_after.as_deref().map(RetryAfter::parse) {
            err = err.with_retry_after(ra);
        }
        if let Some((limit, remaining, reset)) = rate_limit {
            err = err.with_rate_limit(RateLimit { limit, remaining, reset });
        }
        let policy = RetryPolicy::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs);
        let advice = policy.decide(&err, attempt, now, &mut SplitMix64::new(seed));
        match advice {
            Advice::Retry { after, basis } => {
                prop_assert!(attempt < policy.max_attempts());
                match basis {
                    Basis::Backoff => prop_assert!(after <= policy.max_delay()),
                    Basis::WaitWindow => prop_assert!(after >= Duration::from_secs(30) && after <= Duration::from_secs(60)),
                    _ => prop_assert!(after >= policy.min_wait() && after <= policy.max_wait()),
                }
            }
            Advice::Stop(StopReason::WaitTooLong { requested, max }) => prop_assert!(requested > max),
            _ => {}
        }
    }
}
