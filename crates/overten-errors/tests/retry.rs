//! The retry decision, case by case.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on broken fixtures"
)]

use std::time::{Duration, SystemTime};

use overten_errors::{
    Advice, ApiError, Basis, Code, ErrorCode, RateLimit, RetryAfter, RetryAfterError, RetryBudget,
    RetryPolicy, SplitMix64, StopReason,
};

/// Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's sample date.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
}

/// The default policy with named waits exact (`wait_spread` 0): these tests read headers;
/// `tests/decision.rs` tests the spread.
fn exact() -> RetryPolicy {
    RetryPolicy::builder().wait_spread(0.0).build().unwrap()
}

fn decide(err: &ApiError, attempt: u32) -> Advice {
    exact().decide(err, attempt, now(), &mut SplitMix64::new(42))
}

fn retry_after(err: ErrorCode, value: &str) -> ApiError {
    ApiError::from(err).with_retry_after(RetryAfter::parse(value).unwrap())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn rate_limit_honors_retry_after_in_every_rfc9110_form() {
    for value in [
        "42",
        " 42\t",
        "Sun, 06 Nov 1994 08:50:19 GMT",  // IMF-fixdate
        "Sunday, 06-Nov-94 08:50:19 GMT", // obsolete RFC 850
        "Sun Nov  6 08:50:19 1994",       // asctime
    ] {
        let advice = decide(&retry_after(ErrorCode::RateLimitExceeded, value), 1);
        assert_eq!(
            advice,
            Advice::Retry {
                after: secs(42),
                basis: Basis::RetryAfter
            },
            "{value:?}"
        );
    }
}

#[test]
fn retry_after_parse_errors_are_typed() {
    assert_eq!(RetryAfter::parse(""), Err(RetryAfterError::Empty));
    assert_eq!(RetryAfter::parse("  "), Err(RetryAfterError::Empty));
    assert_eq!(RetryAfter::parse("-5"), Err(RetryAfterError::Negative));
    assert_eq!(RetryAfter::parse("1.5"), Err(RetryAfterError::Invalid));
    assert_eq!(RetryAfter::parse("soon"), Err(RetryAfterError::Invalid));
    assert_eq!(RetryAfter::parse("4 2"), Err(RetryAfterError::Invalid));
    assert_eq!(
        RetryAfter::parse("99999999999999999999999999"),
        Ok(RetryAfter::Seconds(u64::MAX))
    );
}

#[test]
fn hostile_retry_after_never_hot_loops_or_hangs() {
    let policy = exact();
    // Zero and dates in the past wait the floor.
    for value in ["0", "Thu, 01 Jan 1970 00:00:00 GMT"] {
        assert_eq!(
            decide(&retry_after(ErrorCode::RateLimitExceeded, value), 1),
            Advice::Retry {
                after: policy.min_wait(),
                basis: Basis::RetryAfter
            }
        );
    }
    // The maximum is honored; one second more is refused, as is anything enormous.
    assert_eq!(
        decide(&retry_after(ErrorCode::RateLimitExceeded, "300"), 1),
        Advice::Retry {
            after: secs(300),
            basis: Basis::RetryAfter
        }
    );
    for value in [
        "301",
        "18446744073709551615",
        "999999999999999999999",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ] {
        let advice = decide(&retry_after(ErrorCode::RateLimitExceeded, value), 1);
        assert!(
            matches!(advice, Advice::Stop(StopReason::WaitTooLong { max, .. }) if max == policy.max_wait()),
            "{value}: {advice:?}"
        );
    }
}

#[test]
fn rate_limit_reset_is_used_when_retry_after_is_absent() {
    let reset = 784_111_777 + 17;
    let err = ApiError::from(ErrorCode::RateLimitExceeded).with_rate_limit(RateLimit {
        limit: 10,
        remaining: 0,
        reset,
    });
    assert_eq!(
        decide(&err, 1),
        Advice::Retry {
            after: secs(17),
            basis: Basis::RateLimitReset
        }
    );
    // Retry-After wins over the reset.
    let err = err.with_retry_after(RetryAfter::Seconds(3));
    assert_eq!(
        decide(&err, 1),
        Advice::Retry {
            after: secs(3),
            basis: Basis::RetryAfter
        }
    );
    // Without either, a 429 waits the page's default of 30 s, never a one-second backoff.
    assert_eq!(
        decide(&ApiError::from(ErrorCode::RateLimitExceeded), 1),
        Advice::Retry {
            after: secs(30),
            basis: Basis::RateLimitDefault
        }
    );
}

#[test]
fn service_unavailable_waits_in_its_window_unless_told() {
    let err = ApiError::from(ErrorCode::ServiceUnavailable);
    let policy = exact();
    let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
    for seed in 0..2000 {
        match policy.decide(&err, 1, now(), &mut SplitMix64::new(seed)) {
            Advice::Retry {
                after,
                basis: Basis::WaitWindow,
            } => {
                assert!((secs(30)..=secs(60)).contains(&after), "{after:?}");
                lo = lo.min(after);
                hi = hi.max(after);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        lo < secs(31) && hi > secs(59),
        "draws cover the window: {lo:?}..{hi:?}"
    );
    // Both ends are reachable.
    let at = |bits: u64| policy.decide(&err, 1, now(), &mut move || bits);
    assert!(matches!(at(0), Advice::Retry { after, .. } if after == secs(30)));
    assert!(matches!(at(u64::MAX), Advice::Retry { after, .. } if after == secs(60)));
    assert_eq!(
        decide(&retry_after(ErrorCode::ServiceUnavailable, "5"), 1),
        Advice::Retry {
            after: secs(5),
            basis: Basis::RetryAfter
        }
    );
}

#[test]
fn permanent_codes_stop_with_the_pages_fix() {
    for &code in ErrorCode::ALL {
        let advice = decide(&ApiError::from(code), 1);
        if code.status() < 500 && ![408, 429].contains(&code.status()) {
            assert_eq!(
                advice,
                Advice::Stop(StopReason::Permanent { fix: code.fix() }),
                "{code}"
            );
        }
    }
    assert_eq!(
        decide(&ApiError::from(ErrorCode::NotImplemented), 1),
        Advice::Stop(StopReason::Permanent {
            fix: "Contact support@overten.ai"
        })
    );
}

#[test]
fn sync_timeout_is_resubmitted_async_not_retried() {
    for attempt in [1, 2, 4] {
        assert_eq!(
            decide(&ApiError::from(ErrorCode::SyncTimeoutUpgradeAsync), attempt),
            Advice::ResubmitAsync
        );
    }
    // The resubmission is an attempt too.
    assert_eq!(
        decide(&ApiError::from(ErrorCode::SyncTimeoutUpgradeAsync), 5),
        Advice::Stop(StopReason::AttemptsExhausted { attempts: 5 })
    );
}

#[test]
fn backoff_grows_doubles_and_caps() {
    let policy = RetryPolicy::builder().max_attempts(100).build().unwrap();
    let err = ApiError::from(ErrorCode::UpstreamError);
    // A draw of zero gives the whole base delay; the largest draw takes off the jitter share.
    let mut zero = || 0u64;
    let mut top = || u64::MAX;
    for (attempt, base) in [
        (1, 1),
        (2, 2),
        (3, 4),
        (4, 8),
        (6, 32),
        (7, 32),
        (60, 32),
        (99, 32),
    ] {
        assert_eq!(
            policy.decide(&err, attempt, now(), &mut zero),
            Advice::Retry {
                after: secs(base),
                basis: Basis::Backoff
            },
            "attempt {attempt}"
        );
        let Advice::Retry { after, .. } = policy.decide(&err, attempt, now(), &mut top) else {
            panic!()
        };
        let half = Duration::from_millis(base * 500);
        assert!(
            after >= half && after < half + Duration::from_millis(1),
            "{after:?}"
        );
    }
}

#[test]
fn attempts_are_bounded() {
    let err = ApiError::from(ErrorCode::InternalError);
    assert!(matches!(decide(&err, 4), Advice::Retry { .. }));
    assert_eq!(
        decide(&err, 5),
        Advice::Stop(StopReason::AttemptsExhausted { attempts: 5 })
    );
    assert_eq!(
        decide(&err, u32::MAX),
        Advice::Stop(StopReason::AttemptsExhausted { attempts: u32::MAX })
    );
}

#[test]
fn unknown_codes_fall_back_to_the_status_rule() {
    let unknown = |status| ApiError::received(Code::parse("brand_new_code"), status, "m");
    assert!(matches!(
        decide(&unknown(599), 1),
        Advice::Retry {
            basis: Basis::Backoff,
            ..
        }
    ));
    assert!(matches!(
        decide(&unknown(501), 1),
        Advice::Stop(StopReason::Permanent { .. })
    ));
    assert!(matches!(
        decide(&unknown(404), 1),
        Advice::Stop(StopReason::Permanent { .. })
    ));
    assert!(matches!(
        decide(&unknown(200), 1),
        Advice::Stop(StopReason::Permanent { .. })
    ));
    assert_eq!(decide(&unknown(408), 1), Advice::ResubmitAsync);
    let with_hint = unknown(429).with_retry_after(RetryAfter::Seconds(9));
    assert_eq!(
        decide(&with_hint, 1),
        Advice::Retry {
            after: secs(9),
            basis: Basis::RetryAfter
        }
    );
}

#[test]
fn extreme_policy_values_stay_bounded() {
    let policy = RetryPolicy::builder()
        .multiplier(f64::MAX)
        .jitter(1.0)
        .max_attempts(u32::MAX)
        .build()
        .unwrap();
    let err = ApiError::from(ErrorCode::UpstreamError);
    for attempt in [1, 2, 1000, u32::MAX - 1] {
        for bits in [0, 1 << 40, u64::MAX] {
            let Advice::Retry { after, .. } = policy.decide(&err, attempt, now(), &mut || bits)
            else {
                panic!()
            };
            assert!(after <= policy.max_delay(), "{attempt} {bits}: {after:?}");
        }
    }
}

#[test]
fn budget_stops_retry_storms_and_refills_on_success() {
    let budget = RetryBudget::new(500, 5, 1);
    let retry = Advice::Retry {
        after: secs(1),
        basis: Basis::Backoff,
    };
    let admitted = (0..1000)
        .take_while(|_| budget.admit(retry) == retry)
        .count();
    assert_eq!(admitted, 100, "500 tokens at 5 a retry");
    assert_eq!(
        budget.admit(retry),
        Advice::Stop(StopReason::BudgetExhausted)
    );
    // Stops and resubmits pass untouched and cost nothing.
    assert_eq!(budget.admit(Advice::ResubmitAsync), Advice::ResubmitAsync);
    for _ in 0..5 {
        budget.record_success();
    }
    assert_eq!(budget.admit(retry), retry);
    assert_eq!(
        budget.admit(retry),
        Advice::Stop(StopReason::BudgetExhausted)
    );
    for _ in 0..10_000 {
        budget.record_success();
    }
    assert_eq!(budget.tokens(), 500, "never above capacity");
}

#[test]
fn advice_reads_well() {
    assert_eq!(
        Advice::Retry {
            after: Duration::from_millis(1500),
            basis: Basis::Backoff
        }
        .to_string(),
        "retry in 1.500 s (backoff)"
    );
    assert_eq!(
        decide(&ApiError::from(ErrorCode::Gone), 1).to_string(),
        "stop: not retryable: Start a new run"
    );
}

#[test]
fn advice_serializes_with_an_action_tag() {
    let json = |a: Advice| serde_json::to_value(a).unwrap();
    assert_eq!(
        json(decide(&retry_after(ErrorCode::RateLimitExceeded, "42"), 1)),
        serde_json::json!({"action": "retry", "after_ms": 42000, "basis": "retry_after"})
    );
    assert_eq!(
        json(Advice::ResubmitAsync),
        serde_json::json!({"action": "resubmit_async"})
    );
    assert_eq!(
        json(decide(&ApiError::from(ErrorCode::Gone), 1)),
        serde_json::json!({"action": "stop", "reason": "permanent", "fix": "Start a new run"})
    );
    assert_eq!(
        json(decide(&retry_after(ErrorCode::RateLimitExceeded, "301"), 1)),
        serde_json::json!({"action": "stop", "reason": "wait_too_long", "requested_ms": 301_000, "max_ms": 300_000})
    );
}
