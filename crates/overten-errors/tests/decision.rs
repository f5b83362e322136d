//! The decision algorithm as `docs/retry.md` writes it: which step decides each class of
//! input, and the laws that hold whatever the input.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on broken fixtures"
)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use overten_errors::{
    Advice, ApiError, Basis, Code, ErrorCode, FALLBACK, PolicyError, RateLimit, RetryAfter,
    RetryAfterError, RetryBudget, RetryPolicy, RetryRule, SplitMix64, Step, StopReason,
};
use proptest::prelude::*;

const NOW: u64 = 784_111_777;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn err(code: &str, status: u16) -> ApiError {
    ApiError::received(Code::parse(code), status, "m")
}

/// The default policy with waits exactly as named (`wait_spread` 0), so that tests of the
/// steps see the named wait itself; the spread has its own test.
fn exact() -> RetryPolicy {
    RetryPolicy::builder().wait_spread(0.0).build().unwrap()
}

fn explain(e: &ApiError, attempt: u32, budget: Option<&RetryBudget>) -> (Advice, Step) {
    let d = exact().explain(e, attempt, now(), &mut SplitMix64::new(9), budget);
    (d.advice, d.step)
}

fn limited(remaining: u32, reset: u64) -> RateLimit {
    RateLimit {
        limit: 60,
        remaining,
        reset,
    }
}

/// One row per class of input, with the step that must decide it. A reordering of the
/// checks in the code (or in `docs/retry.md`, which is written from `Step::ALL`) moves
/// some row to another step and fails here.
#[test]
#[allow(clippy::too_many_lines, reason = "one row per class of input")]
fn each_class_of_input_is_decided_by_its_step() {
    let empty_budget = RetryBudget::default().with_tokens(4);
    let rows: Vec<(&str, ApiError, u32, Option<&RetryBudget>, Step)> = vec![
        (
            "permanent code",
            err("not_found", 404),
            1,
            None,
            Step::Permanent,
        ),
        // Permanence is checked before attempts: a 404 at the last attempt is permanent.
        (
            "permanent at last attempt",
            err("not_found", 404),
            5,
            None,
            Step::Permanent,
        ),
        (
            "501 never retried",
            err("not_implemented", 501),
            1,
            None,
            Step::Permanent,
        ),
        (
            "2xx is not an error",
            err("x", 200),
            1,
            None,
            Step::Permanent,
        ),
        (
            "attempts spent",
            err("internal_error", 500),
            5,
            None,
            Step::Attempts,
        ),
        (
            "attempts before resubmit",
            err("sync_timeout_upgrade_async", 408),
            5,
            None,
            Step::Attempts,
        ),
        (
            "attempts before Retry-After",
            err("rate_limit_exceeded", 429).with_retry_after(RetryAfter::Seconds(1)),
            5,
            None,
            Step::Attempts,
        ),
        (
            "408 resubmits",
            err("sync_timeout_upgrade_async", 408),
            1,
            None,
            Step::ResubmitAsync,
        ),
        (
            "408 resubmits whatever Retry-After says",
            err("x", 408).with_retry_after(RetryAfter::Seconds(3)),
            1,
            None,
            Step::ResubmitAsync,
        ),
        (
            "Retry-After on 429",
            err("rate_limit_exceeded", 429).with_retry_after(RetryAfter::Seconds(7)),
            1,
            None,
            Step::RetryAfter,
        ),
        (
            "Retry-After beats the reset",
            err("rate_limit_exceeded", 429)
                .with_retry_after(RetryAfter::Seconds(7))
                .with_rate_limit(limited(0, NOW + 20)),
            1,
            None,
            Step::RetryAfter,
        ),
        (
            "Retry-After beats the window",
            err("service_unavailable", 503).with_retry_after(RetryAfter::Seconds(7)),
            1,
            None,
            Step::RetryAfter,
        ),
        (
            "Retry-After beats the backoff",
            err("internal_error", 500).with_retry_after(RetryAfter::Seconds(7)),
            1,
            None,
            Step::RetryAfter,
        ),
        (
            "reset with none remaining",
            err("rate_limit_exceeded", 429).with_rate_limit(limited(0, NOW + 20)),
            1,
            None,
            Step::RateLimitReset,
        ),
        (
            "reset with some remaining is no wait",
            err("rate_limit_exceeded", 429).with_rate_limit(limited(3, NOW + 20)),
            1,
            None,
            Step::RateLimitDefault,
        ),
        (
            "bare 429",
            err("rate_limit_exceeded", 429),
            1,
            None,
            Step::RateLimitDefault,
        ),
        (
            "503 window",
            err("service_unavailable", 503),
            1,
            None,
            Step::WaitWindow,
        ),
        (
            "500 backoff",
            err("internal_error", 500),
            1,
            None,
            Step::Backoff,
        ),
        (
            "502 backoff",
            err("upstream_error", 502),
            2,
            None,
            Step::Backoff,
        ),
        (
            "budget cannot pay",
            err("internal_error", 500),
            1,
            Some(&empty_budget),
            Step::Budget,
        ),
        (
            "budget not charged for a stop",
            err("not_found", 404),
            1,
            Some(&empty_budget),
            Step::Permanent,
        ),
    ];
    let mut decided = std::collections::HashSet::new();
    for (name, e, attempt, budget, want) in rows {
        let (advice, step) = explain(&e, attempt, budget);
        assert_eq!(step, want, "{name}: {advice:?}");
        decided.insert(step);
    }
    // Every step but the first (which only chooses the rule) decides some input.
    for step in &Step::ALL[1..] {
        assert!(decided.contains(step), "no row exercises {step:?}");
    }
    // Steps are numbered 1.. in the order of `ALL`.
    for (i, step) in Step::ALL.iter().enumerate() {
        assert_eq!(usize::from(step.number()), i + 1);
    }
}

#[test]
fn status_and_code_disagreeing_lets_the_status_decide() {
    // A 500 carrying not_found (a proxy's doing): transient by status; the code is kept.
    let e = err("not_found", 500);
    assert_eq!(e.code(), &ErrorCode::NotFound);
    assert_eq!(e.status_mismatch(), Some(404));
    assert_eq!(e.retry_rule(), RetryRule::Backoff);
    assert!(matches!(
        explain(&e, 1, None).0,
        Advice::Retry {
            basis: Basis::Backoff,
            ..
        }
    ));
    // A 404 carrying internal_error: permanent by status, with the status rule's reason
    // (internal_error's own fix is about tickets, not about retrying).
    let e = err("internal_error", 404);
    assert_eq!(e.status_mismatch(), Some(500));
    let why = FALLBACK.iter().find(|r| r.from == 400).unwrap().why;
    assert_eq!(
        explain(&e, 1, None).0,
        Advice::Stop(StopReason::Permanent { fix: why })
    );
    // A 429 carrying internal_error is still rate limiting.
    assert_eq!(
        explain(&err("internal_error", 429), 1, None).1,
        Step::RateLimitDefault
    );
    // Agreement is no mismatch.
    assert_eq!(err("not_found", 404).status_mismatch(), None);
    assert_eq!(err("brand_new", 404).status_mismatch(), None);
}

#[test]
fn any_503_waits_in_the_window_whatever_its_body() {
    let window = secs(30)..=secs(60);
    for e in [
        err("service_unavailable", 503),
        err("quota_frozen", 503),
        ApiError::received(
            Code::Missing,
            503,
            "Capacity exhausted or scheduled maintenance",
        ),
        err("internal_error", 503),
    ] {
        for seed in 0..200 {
            let advice = RetryPolicy::default().decide(&e, 1, now(), &mut SplitMix64::new(seed));
            match advice {
                Advice::Retry {
                    after,
                    basis: Basis::WaitWindow,
                } => assert!(window.contains(&after), "{after:?}"),
                other => panic!("{}: {other:?}", e.code()),
            }
        }
        // A valid Retry-After names the wait instead.
        let told = e.with_retry_after(RetryAfter::Seconds(12));
        assert_eq!(
            explain(&told, 1, None).0,
            Advice::Retry {
                after: secs(12),
                basis: Basis::RetryAfter
            }
        );
    }
}

#[test]
fn retry_after_is_honoured_whenever_the_decision_is_to_retry() {
    for (code, status) in [
        ("internal_error", 500),
        ("upstream_error", 502),
        ("brand_new", 504),
        ("brand_new", 500),
        ("rate_limit_exceeded", 429),
        ("brand_new", 429),
    ] {
        let e = err(code, status).with_retry_after(RetryAfter::Seconds(17));
        assert_eq!(
            explain(&e, 2, None).0,
            Advice::Retry {
                after: secs(17),
                basis: Basis::RetryAfter
            },
            "{code} {status}"
        );
    }
    // Codes that are never retried still stop.
    for (code, status) in [
        ("not_implemented", 501),
        ("brand_new", 501),
        ("not_found", 404),
        ("validation_error", 422),
    ] {
        let e = err(code, status).with_retry_after(RetryAfter::Seconds(17));
        assert!(
            matches!(
                explain(&e, 1, None).0,
                Advice::Stop(StopReason::Permanent { .. })
            ),
            "{code} {status}"
        );
    }
}

#[test]
fn a_429_without_a_usable_wait_waits_the_pages_default() {
    let want = Advice::Retry {
        after: secs(overten_errors::RATE_LIMIT_DEFAULT_WAIT_SECONDS),
        basis: Basis::RateLimitDefault,
    };
    assert_eq!(
        want,
        Advice::Retry {
            after: secs(30),
            basis: Basis::RateLimitDefault
        }
    );
    for attempt in 1..5 {
        // Never a growing one-second backoff inside a per-minute window.
        assert_eq!(
            explain(&err("rate_limit_exceeded", 429), attempt, None).0,
            want
        );
    }
    let some_left = err("rate_limit_exceeded", 429).with_rate_limit(limited(5, NOW + 50));
    assert_eq!(explain(&some_left, 1, None).0, want);
    // None remaining: the reset decides; a reset already passed waits the floor.
    let reset = err("rate_limit_exceeded", 429).with_rate_limit(limited(0, NOW + 50));
    assert_eq!(
        explain(&reset, 1, None).0,
        Advice::Retry {
            after: secs(50),
            basis: Basis::RateLimitReset
        }
    );
    let passed = err("rate_limit_exceeded", 429).with_rate_limit(limited(0, NOW - 5));
    assert_eq!(
        explain(&passed, 1, None).0,
        Advice::Retry {
            after: secs(1),
            basis: Basis::RateLimitReset
        }
    );
}

#[test]
fn a_reset_past_any_representable_time_is_too_long() {
    for reset in [u64::MAX, u64::MAX / 2, i64::MAX as u64] {
        let e = err("rate_limit_exceeded", 429).with_rate_limit(limited(0, reset));
        assert!(
            matches!(
                explain(&e, 1, None).0,
                Advice::Stop(StopReason::WaitTooLong { .. })
            ),
            "{reset}"
        );
        assert!(limited(0, reset).reset_in(now()) > secs(300));
    }
}

#[test]
fn policies_are_validated() {
    let b = RetryPolicy::builder;
    let ms = Duration::from_millis;
    let cases = [
        (b().max_attempts(0).build(), PolicyError::NoAttempts),
        (
            b().initial_delay(Duration::ZERO).build(),
            PolicyError::ZeroDelay,
        ),
        (
            b().initial_delay(Duration::from_micros(999)).build(),
            PolicyError::ZeroDelay,
        ),
        (b().min_wait(Duration::ZERO).build(), PolicyError::ZeroDelay),
        (b().multiplier(0.5).build(), PolicyError::Multiplier),
        (b().multiplier(f64::NAN).build(), PolicyError::Multiplier),
        (
            b().multiplier(f64::INFINITY).build(),
            PolicyError::Multiplier,
        ),
        (b().jitter(-0.1).build(), PolicyError::Jitter),
        (b().jitter(1.01).build(), PolicyError::Jitter),
        (b().jitter(f64::NAN).build(), PolicyError::Jitter),
        (b().initial_delay(secs(33)).build(), PolicyError::DelayOrder),
        (b().max_wait(secs(20)).build(), PolicyError::DelayOrder),
        (b().max_delay(secs(301)).build(), PolicyError::DelayOrder),
        (b().min_wait(secs(301)).build(), PolicyError::WaitOrder),
        (
            b().max_wait(Duration::MAX).build(),
            PolicyError::MaxWaitTooLarge,
        ),
    ];
    for (i, (got, want)) in cases.into_iter().enumerate() {
        assert_eq!(got, Err(want), "case {i}");
    }
    // The edges are allowed.
    let edge = b()
        .max_attempts(1)
        .initial_delay(ms(1))
        .max_delay(ms(1))
        .min_wait(ms(1))
        .max_wait(ms(1))
        .multiplier(1.0)
        .jitter(0.0)
        .build()
        .unwrap();
    assert_eq!(edge.max_wait(), ms(1));
    assert!(b().jitter(1.0).build().is_ok());
    assert_eq!(b().build(), Ok(RetryPolicy::default()));
    assert_eq!(
        RetryPolicy::default().to_builder().build(),
        Ok(RetryPolicy::DEFAULT)
    );
    // One attempt means no retry at all, even of a 408.
    let once = b().max_attempts(1).build().unwrap();
    let e = err("sync_timeout_upgrade_async", 408);
    assert_eq!(
        once.decide(&e, 1, now(), &mut SplitMix64::new(1)),
        Advice::Stop(StopReason::AttemptsExhausted { attempts: 1 })
    );
}

#[test]
fn a_named_wait_is_spread_upward_by_up_to_half_at_most_30_s() {
    let p = RetryPolicy::default();
    let wait = |e: &ApiError, bits: u64| match p.decide(e, 1, now(), &mut || bits) {
        Advice::Retry { after, .. } => after,
        other => panic!("{other:?}"),
    };
    // Retry-After: 10: spread = floor(10000 * 0.5) = 5000 ms; u = 0 gives the named wait,
    // the top draw 10000 + min(floor(5001 * u), 5000) = 15000.
    let ten = err("rate_limit_exceeded", 429).with_retry_after(RetryAfter::Seconds(10));
    assert_eq!(wait(&ten, 0), secs(10));
    assert_eq!(wait(&ten, u64::MAX), secs(15));
    // u = 1/2 (bits 2^63): floor(5001 / 2) = 2500.
    assert_eq!(wait(&ten, 1 << 63), Duration::from_millis(12_500));
    // 100 s: half would be 50 s, capped at 30 s.
    let long = err("rate_limit_exceeded", 429).with_retry_after(RetryAfter::Seconds(100));
    assert_eq!(wait(&long, u64::MAX), secs(130));
    // Never past max_wait: 290 s + up to 30 s stops at 300 s; a wait of exactly 300 s is
    // not lengthened; Retry-After: 0 spreads from the floor (1 s up to 1.5 s).
    let near = err("internal_error", 500).with_retry_after(RetryAfter::Seconds(290));
    assert_eq!(wait(&near, u64::MAX), secs(300));
    let zero = err("internal_error", 500).with_retry_after(RetryAfter::Seconds(0));
    assert_eq!(wait(&zero, u64::MAX), Duration::from_millis(1500));
    // The reset and the page's 30 s are spread the same way.
    let reset = err("rate_limit_exceeded", 429).with_rate_limit(limited(0, NOW + 20));
    assert_eq!(wait(&reset, u64::MAX), secs(30));
    assert_eq!(wait(&err("rate_limit_exceeded", 429), u64::MAX), secs(45));
    // Never earlier than named, over many draws.
    for seed in 0..500 {
        let d = p.decide(&ten, 1, now(), &mut SplitMix64::new(seed));
        assert!(matches!(d, Advice::Retry { after, .. } if after >= secs(10) && after <= secs(15)));
    }
    // A spread of 0 waits exactly; a share outside [0, 1] is refused.
    assert_eq!(
        exact().decide(&ten, 1, now(), &mut || u64::MAX),
        Advice::Retry {
            after: secs(10),
            basis: Basis::RetryAfter
        }
    );
    for bad in [-0.1, 1.5, f64::NAN] {
        assert_eq!(
            RetryPolicy::builder().wait_spread(bad).build(),
            Err(PolicyError::WaitSpread)
        );
    }
    let capped = RetryPolicy::builder()
        .wait_spread(1.0)
        .wait_spread_max(secs(2))
        .build()
        .unwrap();
    assert_eq!(
        capped.decide(&ten, 1, now(), &mut || u64::MAX),
        Advice::Retry {
            after: secs(12),
            basis: Basis::RetryAfter
        }
    );
}

#[test]
fn a_spent_window_holds_until_its_reset_spread_like_a_named_wait() {
    use overten_errors::Pacer;
    let p = RetryPolicy::default();
    let at = |s: u64| SystemTime::UNIX_EPOCH + secs(s);
    let pacer = Pacer::new();
    assert_eq!((pacer.hold(now(), &p), pacer.held_until()), (None, None));
    // Requests remain: nothing held.
    pacer.observe(&limited(3, NOW + 20), now(), &p, &mut || u64::MAX);
    assert_eq!(pacer.hold(now(), &p), None);
    // Spent, reset in 20 s: held 20 s at u = 0, 30 s at the top draw (half of 20 s more).
    pacer.observe(&limited(0, NOW + 20), now(), &p, &mut || 0);
    assert_eq!(pacer.hold(now(), &p), Some(secs(20)));
    pacer.observe(&limited(0, NOW + 20), now(), &p, &mut || u64::MAX);
    assert_eq!(pacer.hold(now(), &p), Some(secs(30)));
    // A later, shorter hold never shortens it; time passing does.
    pacer.observe(&limited(0, NOW + 5), now(), &p, &mut || 0);
    assert_eq!(pacer.hold(now(), &p), Some(secs(30)));
    assert_eq!(pacer.hold(at(NOW + 29), &p), Some(secs(1)));
    assert_eq!(pacer.hold(at(NOW + 30), &p), None);
    assert_eq!(pacer.held_until(), Some(at(NOW + 30)));
    // A reset already passed, or past max_wait, holds nothing.
    let fresh = Pacer::new();
    fresh.observe(&limited(0, NOW - 1), now(), &p, &mut || 0);
    fresh.observe(&limited(0, NOW + 301), now(), &p, &mut || 0);
    fresh.observe(&limited(0, u64::MAX), now(), &p, &mut || 0);
    assert_eq!((fresh.hold(now(), &p), fresh.held_until()), (None, None));
    // A hold of exactly max_wait is kept.
    fresh.observe(&limited(0, NOW + 300), now(), &p, &mut || u64::MAX);
    assert_eq!(fresh.hold(now(), &p), Some(secs(300)));
    // A policy with a shorter max_wait does not wait a longer hold.
    let short = RetryPolicy::builder()
        .max_delay(secs(10))
        .max_wait(secs(10))
        .build()
        .unwrap();
    assert_eq!(fresh.hold(now(), &short), None);
}

#[test]
fn a_window_is_capped_at_max_wait() {
    let e = err("service_unavailable", 503);
    let short = RetryPolicy::builder().max_wait(secs(45)).build().unwrap();
    for bits in [0, u64::MAX / 2, u64::MAX] {
        let Advice::Retry { after, .. } = short.decide(&e, 1, now(), &mut || bits) else {
            panic!()
        };
        assert!(after >= secs(30) && after <= secs(45), "{after:?}");
    }
    let shorter = RetryPolicy::builder()
        .max_delay(secs(20))
        .max_wait(secs(20))
        .build()
        .unwrap();
    assert_eq!(
        shorter.decide(&e, 1, now(), &mut SplitMix64::new(1)),
        Advice::Stop(StopReason::WaitTooLong {
            requested: secs(30),
            max: secs(20)
        })
    );
}

#[test]
fn http_dates_take_every_rfc9110_form_and_the_leap_second() {
    let at = |s: &str| match RetryAfter::parse(s) {
        Ok(RetryAfter::At(t)) => t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
        other => panic!("{s}: {other:?}"),
    };
    // 1998-12-31T23:59:59Z = 915148799.
    assert_eq!(at("Thu, 31 Dec 1998 23:59:59 GMT"), 915_148_799);
    assert_eq!(at("Thu, 31 Dec 1998 23:59:60 GMT"), 915_148_800);
    assert_eq!(at("Thursday, 31-Dec-98 23:59:60 GMT"), 915_148_800);
    assert_eq!(at("Thu Dec 31 23:59:60 1998"), 915_148_800);
    assert_eq!(at("Sun Nov  6 08:49:37 1994"), NOW);
    // Only 23:59 may have a 60th second, and only 60.
    for bad in [
        "Thu, 31 Dec 1998 12:00:60 GMT",
        "Thu, 31 Dec 1998 23:59:61 GMT",
        "Thu, 31 Dec 1998 23:59:60 UTC",
        "thu, 31 dec 1998 23:59:59 gmt",
        "Mon, 31 Dec 1998 23:59:59 GMT",
        "Wed, 31 Dec 1969 23:59:59 GMT",
    ] {
        assert_eq!(
            RetryAfter::parse(bad),
            Err(RetryAfterError::Invalid),
            "{bad}"
        );
    }
}

#[test]
fn a_bare_dash_is_invalid_not_negative() {
    assert_eq!(RetryAfter::parse("-"), Err(RetryAfterError::Invalid));
    assert_eq!(RetryAfter::parse(" - "), Err(RetryAfterError::Invalid));
    assert_eq!(RetryAfter::parse("--1"), Err(RetryAfterError::Invalid));
    assert_eq!(RetryAfter::parse("-1"), Err(RetryAfterError::Negative));
    assert_eq!(RetryAfter::parse("-0"), Err(RetryAfterError::Negative));
}

#[test]
fn one_budget_serves_many_threads() {
    // 500 tokens at 5 a retry: exactly 100 retries are admitted, however the 8 threads
    // interleave, and the bucket never goes below zero.
    let budget = Arc::new(RetryBudget::new(500, 5, 1));
    let retry = Advice::Retry {
        after: secs(1),
        basis: Basis::Backoff,
    };
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || (0..50).filter(|_| budget.admit(retry) == retry).count())
        })
        .collect();
    let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(admitted, 100);
    assert_eq!(budget.tokens(), 0);
    // Successes from many threads refill it, never past capacity.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || {
                for _ in 0..100 {
                    budget.record_success();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(budget.tokens(), 500);
}

fn policies() -> impl Strategy<Value = RetryPolicy> {
    (
        1u64..5_000,
        1.0f64..10.0,
        1u64..100_000,
        0.0f64..=1.0,
        1u32..10,
        1u64..5_000,
        1u64..1_000_000,
    )
        .prop_filter_map("valid", |(init, mult, max_d, jit, att, min_w, max_w)| {
            RetryPolicy::builder()
                .initial_delay(Duration::from_millis(init))
                .multiplier(mult)
                .max_delay(Duration::from_millis(max_d))
                .jitter(jit)
                .max_attempts(att)
                .min_wait(Duration::from_millis(min_w))
                .max_wait(Duration::from_millis(max_w))
                .build()
                .ok()
        })
}

fn any_error() -> impl Strategy<Value = ApiError> {
    (
        prop_oneof![
            proptest::sample::select(
                ErrorCode::ALL
                    .iter()
                    .map(|c| c.as_str().to_owned())
                    .collect::<Vec<_>>()
            ),
            "[a-z_]{1,12}",
            Just(String::new()),
        ],
        prop_oneof![100u16..600, Just(429u16), Just(503u16)],
        proptest::option::of(prop_oneof![
            any::<u64>().prop_map(RetryAfter::Seconds),
            (0u64..20_000_000_000)
                .prop_map(|s| RetryAfter::At(SystemTime::UNIX_EPOCH + Duration::from_secs(s))),
        ]),
        proptest::option::of((any::<u32>(), 0u32..3, any::<u64>())),
    )
        .prop_map(|(code, status, ra, rl)| {
            let mut e = ApiError::received(Code::parse(&code), status, "m");
            if let Some(ra) = ra {
                e = e.with_retry_after(ra);
            }
            if let Some((limit, remaining, reset)) = rl {
                e = e.with_rate_limit(RateLimit {
                    limit,
                    remaining,
                    reset,
                });
            }
            e
        })
}

proptest! {
    /// No advised wait ever exceeds `max_wait`, whatever its source; waits named by the
    /// server or the page are at least `min_wait`; a stop for length names more than the max.
    #[test]
    fn no_wait_exceeds_max_wait(policy in policies(), e in any_error(), attempt in any::<u32>(), seed in any::<u64>()) {
        let d = policy.explain(&e, attempt, now(), &mut SplitMix64::new(seed), None);
        match d.advice {
            Advice::Retry { after, basis } => {
                prop_assert!(after <= policy.max_wait(), "{:?} {:?}", d, policy);
                match basis {
                    Basis::Backoff => prop_assert!(after <= policy.max_delay()),
                    Basis::RetryAfter | Basis::RateLimitReset | Basis::RateLimitDefault => {
                        prop_assert!(after >= policy.min_wait());
                    }
                    _ => {}
                }
            }
            Advice::Stop(StopReason::WaitTooLong { requested, max }) => {
                prop_assert!(requested > max);
                prop_assert_eq!(max, policy.max_wait());
            }
            _ => {}
        }
    }

    /// A later Retry-After never yields a shorter wait, up to the stop.
    #[test]
    fn waits_are_monotone_in_retry_after(policy in policies(), a in 0u64..2_000, b in 0u64..2_000, status in prop_oneof![Just(429u16), Just(500), Just(503)]) {
        let (a, b) = (a.min(b), a.max(b));
        let wait = |s: u64| policy.decide(
            &err("x", status).with_retry_after(RetryAfter::Seconds(s)),
            1, now(), &mut SplitMix64::new(1),
        );
        match (wait(a), wait(b)) {
            (Advice::Retry { after: x, .. }, Advice::Retry { after: y, .. }) => prop_assert!(x <= y),
            (Advice::Stop(StopReason::WaitTooLong { .. }), Advice::Retry { .. }) => {
                prop_assert!(false, "a shorter ask stopped but a longer one was honoured");
            }
            _ => {}
        }
    }

    /// The same for a later `X-RateLimit-Reset`.
    #[test]
    fn waits_are_monotone_in_reset(policy in policies(), a in any::<u64>(), b in any::<u64>()) {
        let (a, b) = (a.min(b), a.max(b));
        let wait = |reset: u64| policy.decide(
            &err("rate_limit_exceeded", 429).with_rate_limit(limited(0, reset)),
            1, now(), &mut SplitMix64::new(1),
        );
        match (wait(a), wait(b)) {
            (Advice::Retry { after: x, .. }, Advice::Retry { after: y, .. }) => prop_assert!(x <= y),
            (Advice::Stop(StopReason::WaitTooLong { .. }), Advice::Retry { .. }) => {
                prop_assert!(false, "an earlier reset stopped but a later one was honoured");
            }
            _ => {}
        }
    }

    /// Status-only deciding equals reading the body: for an error whose code agrees with
    /// its status, the decision is the one for the status with no code at all.
    #[test]
    fn the_body_changes_nothing_when_it_agrees(i in 0..ErrorCode::ALL.len(), attempt in 1u32..6, seed in any::<u64>()) {
        let code = ErrorCode::ALL[i];
        let with = ApiError::from(code);
        let without = ApiError::received(Code::Missing, code.status(), "m");
        let p = RetryPolicy::default();
        let a = p.decide(&with, attempt, now(), &mut SplitMix64::new(seed));
        let b = p.decide(&without, attempt, now(), &mut SplitMix64::new(seed));
        match (a, b) {
            // Only the reason text differs: the page's fix for the code, the rule's why.
            (Advice::Stop(StopReason::Permanent { .. }), Advice::Stop(StopReason::Permanent { .. })) => {}
            (a, b) => prop_assert_eq!(a, b),
        }
    }
}

/// SplitMix64's published reference outputs for seed 0 (Vigna's `splitmix64.c`).
#[test]
fn splitmix64_matches_the_reference_generator() {
    use overten_errors::RandomSource;
    let mut rng = SplitMix64::new(0);
    assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
    assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    assert_eq!(rng.next_u64(), 0x06c4_5d18_8009_454f);
}

/// `Number.MAX_SAFE_INTEGER` of ECMA-262: the last integer a double holds exactly.
#[test]
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the point of the test"
)]
fn the_json_cap_is_javascripts_max_safe_integer() {
    use overten_errors::MAX_SAFE_INTEGER;
    assert_eq!(MAX_SAFE_INTEGER, 9_007_199_254_740_991);
    let next = MAX_SAFE_INTEGER + 1;
    assert_eq!((next as f64) as u64, next);
    assert_eq!(
        ((next + 1) as f64) as u64,
        next,
        "past it, doubles lose integers"
    );
    let stop = Advice::Stop(StopReason::WaitTooLong {
        requested: Duration::MAX,
        max: secs(300),
    });
    assert_eq!(
        serde_json::to_value(stop).unwrap()["requested_ms"],
        9_007_199_254_740_991_u64
    );
}

/// The defaults `RetryPolicy::DEFAULT` documents, from their sources: Google Cloud's
/// truncated exponential backoff (1 s, x2, 32 s), AWS's equal jitter (0.5), gRPC's cap of 5
/// attempts, the API's 300 s sync ceiling; the budget is the one `docs/retry-storms.md`
/// chose (100 tokens, the AWS SDKs' 5 a retry and 1 back a first-attempt success, from
/// `shared/reference/retry-policies.md`).
#[test]
#[allow(
    clippy::float_cmp,
    clippy::many_single_char_names,
    reason = "exact constants; one letter per policy or budget"
)]
fn the_defaults_are_the_documented_ones() {
    let p = RetryPolicy::default();
    assert_eq!(
        (p.initial_delay(), p.max_delay(), p.min_wait(), p.max_wait()),
        (secs(1), secs(32), secs(1), secs(300))
    );
    assert_eq!(
        (p.multiplier(), p.jitter(), p.max_attempts()),
        (2.0, 0.5, 5)
    );
    assert_eq!((p.wait_spread(), p.wait_spread_max()), (0.5, secs(30)));
    let b = RetryBudget::default();
    assert_eq!(
        (b.capacity(), b.retry_cost(), b.success_refill()),
        (100, 5, 1)
    );
    assert_eq!(b.tokens(), 100, "a budget starts full");
    assert_eq!(
        b.window_cost(),
        20,
        "docs/retry.md: a retry in a 503's window costs 20"
    );
    assert_eq!(
        RetryBudget::new(40, 7, 3).window_cost(),
        7,
        "a custom budget: retry_cost"
    );
    // A window retry spends 20, a backoff 5; 19 tokens cannot pay for the window.
    let window = err("service_unavailable", 503);
    let spent = RetryBudget::default();
    assert!(matches!(
        explain(&window, 1, Some(&spent)).0,
        Advice::Retry {
            basis: Basis::WaitWindow,
            ..
        }
    ));
    assert_eq!(spent.tokens(), 80);
    assert!(matches!(
        explain(&err("internal_error", 500), 1, Some(&spent)).0,
        Advice::Retry {
            basis: Basis::Backoff,
            ..
        }
    ));
    assert_eq!(spent.tokens(), 75);
    let poor = RetryBudget::default().with_tokens(19);
    assert_eq!(
        explain(&window, 1, Some(&poor)),
        (Advice::Stop(StopReason::BudgetExhausted), Step::Budget)
    );
    assert_eq!(poor.tokens(), 19, "a refused retry spends nothing");
    assert!(matches!(
        poor.admit(Advice::Retry {
            after: secs(1),
            basis: Basis::Backoff
        }),
        Advice::Retry { .. }
    ));
    assert_eq!(poor.tokens(), 14);
    assert_eq!(
        RetryBudget::default().with_tokens(19).admit(Advice::Retry {
            after: secs(30),
            basis: Basis::WaitWindow
        }),
        Advice::Stop(StopReason::BudgetExhausted)
    );
    // A success after retries pays the retry's cost back; a first-attempt success 1.
    let b = RetryBudget::default().with_tokens(50);
    b.record_success_after(1);
    assert_eq!(b.tokens(), 51);
    b.record_success_after(3);
    assert_eq!(b.tokens(), 56);
    b.record_retried_success();
    assert_eq!(b.tokens(), 61);
    // A builder's values are the ones read back.
    let q = RetryPolicy::builder()
        .multiplier(3.0)
        .jitter(0.25)
        .max_attempts(7)
        .build()
        .unwrap();
    assert_eq!(
        (q.multiplier(), q.jitter(), q.max_attempts()),
        (3.0, 0.25, 7)
    );
    let c = RetryBudget::new(40, 7, 3).with_tokens(12);
    assert_eq!(
        (c.capacity(), c.retry_cost(), c.success_refill(), c.tokens()),
        (40, 7, 3, 12)
    );
    assert_eq!(RetryBudget::new(40, 7, 3).with_tokens(99).tokens(), 40);
    // A clone keeps the settings and the tokens of the moment, then goes its own way.
    let d = c.clone();
    assert_eq!(
        (d.capacity(), d.retry_cost(), d.success_refill(), d.tokens()),
        (40, 7, 3, 12)
    );
    d.record_success();
    assert_eq!((c.tokens(), d.tokens()), (12, 15));
}

#[test]
fn a_budget_that_can_pay_lets_the_retry_through_and_is_charged() {
    let budget = RetryBudget::default();
    let (advice, step) = explain(&err("internal_error", 500), 1, Some(&budget));
    assert!(matches!(advice, Advice::Retry { .. }));
    assert_eq!(step, Step::Backoff);
    assert_eq!(budget.tokens(), 95);
    // A stop or a resubmission costs nothing.
    explain(&err("not_found", 404), 1, Some(&budget));
    explain(&err("sync_timeout_upgrade_async", 408), 1, Some(&budget));
    assert_eq!(budget.tokens(), 95);
    let exact = RetryBudget::default().with_tokens(5);
    assert!(matches!(
        explain(&err("internal_error", 500), 1, Some(&exact)).0,
        Advice::Retry { .. }
    ));
    assert_eq!(exact.tokens(), 0);
}

#[test]
fn the_edges_of_max_wait_are_allowed() {
    // A window that starts exactly at max_wait is still a wait.
    let at_edge = RetryPolicy::builder()
        .max_delay(secs(30))
        .max_wait(secs(30))
        .build()
        .unwrap();
    assert_eq!(
        at_edge.decide(&err("service_unavailable", 503), 1, now(), &mut || u64::MAX),
        Advice::Retry {
            after: secs(30),
            basis: Basis::WaitWindow
        }
    );
    // max_wait may be exactly 2^53 - 1 ms.
    let ms = Duration::from_millis(overten_errors::MAX_SAFE_INTEGER);
    assert!(RetryPolicy::builder().max_wait(ms).build().is_ok());
    assert_eq!(
        RetryPolicy::builder()
            .max_wait(ms + Duration::from_millis(1))
            .build(),
        Err(PolicyError::MaxWaitTooLarge)
    );
    // Durations past u64 milliseconds saturate rather than wrap around to small ones:
    // 2^64 + 40 000 ms would wrap to a valid 40 s.
    let past = Duration::new(18_446_744_073_709_591, 616_000_000);
    assert_eq!(past.as_millis(), (1u128 << 64) + 40_000);
    assert_eq!(
        RetryPolicy::builder().max_wait(past).build(),
        Err(PolicyError::MaxWaitTooLarge)
    );
    // Durations past u64 milliseconds saturate rather than wrap around to small ones.
    assert_eq!(
        RetryPolicy::builder()
            .max_wait(Duration::from_secs(u64::MAX / 500))
            .build(),
        Err(PolicyError::MaxWaitTooLarge)
    );
}

#[test]
fn steps_name_themselves_as_they_serialize() {
    for step in Step::ALL {
        assert_eq!(serde_json::to_value(step).unwrap(), step.as_str());
        assert!(!step.inputs().is_empty(), "{step:?}");
    }
    // What each step says it can return is what it returns.
    let cases = [
        (err("not_found", 404), "stop (permanent)"),
        (err("sync_timeout_upgrade_async", 408), "resubmit_async"),
        (err("service_unavailable", 503), "retry (basis wait_window)"),
        (err("internal_error", 500), "retry (basis backoff)"),
        (
            err("rate_limit_exceeded", 429),
            "retry (basis rate_limit_default)",
        ),
    ];
    for (e, says) in cases {
        let (_, step) = explain(&e, 1, None);
        assert!(
            step.returns().contains(says),
            "{step:?}: {}",
            step.returns()
        );
    }
}

#[test]
fn rules_read_as_the_page_writes_them() {
    // The page: "Retry after 30–60 seconds".
    assert_eq!(
        ErrorCode::ServiceUnavailable.retry().to_string(),
        "wait 30–60 s"
    );
    assert_eq!(
        RetryRule::Wait {
            min_ms: 1_250,
            max_ms: 500
        }
        .to_string(),
        "wait 1.250–0.500 s"
    );
    assert_eq!(RetryRule::Backoff.to_string(), "backoff");
    assert_eq!(RetryRule::ResubmitAsync.to_string(), "resubmit_async");
}

#[test]
fn transport_failures_follow_their_steps() {
    let p = RetryPolicy::default();
    let t = |sent, safe, attempt, budget: Option<&RetryBudget>| {
        p.decide_transport(sent, safe, attempt, &mut || 0, budget)
    };
    // Never connected: safe to send again, whatever the method.
    let d = t(false, false, 1, None);
    assert_eq!(
        (d.advice, d.step),
        (
            Advice::Retry {
                after: secs(1),
                basis: Basis::Backoff
            },
            Step::Backoff
        )
    );
    // Sent, not replay-safe: permanent, before the attempt count.
    for attempt in [1, 5] {
        let d = t(true, false, attempt, None);
        assert_eq!(d.step, Step::Permanent);
        assert_eq!(
            d.advice,
            Advice::Stop(StopReason::Permanent {
                fix: overten_errors::NOT_REPLAY_SAFE
            })
        );
    }
    // Sent and replay-safe: backoff by attempt.
    let d = t(true, true, 3, None);
    assert_eq!(
        d.advice,
        Advice::Retry {
            after: secs(4),
            basis: Basis::Backoff
        }
    );
    // Attempts: 4 is retried, 5 is the last; 0 counts as 1.
    assert_eq!(t(false, true, 4, None).step, Step::Backoff);
    let d = t(false, true, 5, None);
    assert_eq!(
        (d.advice, d.step),
        (
            Advice::Stop(StopReason::AttemptsExhausted { attempts: 5 }),
            Step::Attempts
        )
    );
    assert_eq!(
        t(false, true, 0, None).advice,
        Advice::Retry {
            after: secs(1),
            basis: Basis::Backoff
        }
    );
    // The budget pays for a retry, and refuses when it cannot.
    let budget = RetryBudget::default().with_tokens(5);
    assert_eq!(t(false, true, 1, Some(&budget)).step, Step::Backoff);
    assert_eq!(budget.tokens(), 0);
    let d = t(false, true, 1, Some(&budget));
    assert_eq!(
        (d.advice, d.step),
        (Advice::Stop(StopReason::BudgetExhausted), Step::Budget)
    );
}
