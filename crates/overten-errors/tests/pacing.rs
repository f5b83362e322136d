//! `Pacer`'s slot mode, the default since issue 27, against its rules as its
//! documentation states them (expected values worked out by hand from those rules: a
//! window of 60 s, `interval = 60000 / Limit` ms, a first slot at the reset plus a uniform
//! point of one interval, or of the whole window after a 429 on a key seen shared).

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use overten_errors::{Pacer, RateLimit, RetryPolicy};

const T0: u64 = 1_000_000; // Unix seconds: a window boundary (T0 % 60 == 40, see `at`)

fn at(ms_after_t0: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(T0 * 1000 + ms_after_t0)
}

fn rl(limit: u32, remaining: u32, reset_after_t0_s: u64) -> RateLimit {
    RateLimit {
        limit,
        remaining,
        reset: T0 + reset_after_t0_s,
    }
}

fn low() -> impl FnMut() -> u64 {
    || 0
}

fn high() -> impl FnMut() -> u64 {
    || u64::MAX
}

/// A slotted pacer whose own request (sent at 0) spent a 10-a-minute window ending at 20 s,
/// the first slot's draw at its low end.
fn own_spent(policy: &RetryPolicy) -> Pacer {
    own_spent_until(policy, 20)
}

/// [`own_spent`] with the window ending `reset_after_t0_s` after `T0`.
fn own_spent_until(policy: &RetryPolicy, reset_after_t0_s: u64) -> Pacer {
    let pacer = Pacer::new();
    pacer.sent(at(0));
    pacer.observe_response(&rl(10, 0, reset_after_t0_s), 200, at(0), policy, &mut low());
    pacer
}

/// The default policy but for a `max_wait` of 60 s, to reach it with a few slots.
fn minute_max_wait() -> RetryPolicy {
    RetryPolicy::builder()
        .max_wait(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// `n` attempts of this process, sent at `t`.
fn send(pacer: &Pacer, n: usize, t: SystemTime) {
    for _ in 0..n {
        pacer.sent(t);
    }
}

/// A hold: two requests at `t` wait the same, some time (every request leaves together).
fn held_alike(pacer: &Pacer, t: SystemTime, policy: &RetryPolicy) -> u64 {
    let first = ms(pacer.take(t, policy)).unwrap();
    assert_eq!(
        ms(pacer.take(t, policy)),
        Some(first),
        "a hold: every request together"
    );
    first
}

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap())
}

#[test]
fn a_window_its_own_requests_spent_gives_slots_one_interval_apart() {
    let policy = RetryPolicy::default();
    // T0 = 1,000,000 s; the window ends at the next minute, 1,000,020 s (20 s ahead).
    assert_eq!((T0 + 20) % 60, 0);
    let pacer = own_spent(&policy);
    // 10 a minute: 6,000 ms apart, the first at the reset (the draw at its low end).
    assert_eq!(ms(pacer.take(at(0), &policy)), Some(20_000));
    assert_eq!(ms(pacer.take(at(0), &policy)), Some(26_000));
    assert_eq!(ms(pacer.take(at(1_000), &policy)), Some(31_000));
    // At the draw's high end, the first slot is one millisecond short of an interval late.
    let late = Pacer::new();
    late.sent(at(0));
    late.observe_response(&rl(10, 0, 20), 200, at(0), &policy, &mut high());
    assert_eq!(ms(late.take(at(0), &policy)), Some(25_999));
    // 60 a minute: one a second.
    let pro = Pacer::new();
    pro.sent(at(0));
    pro.observe_response(&rl(60, 0, 20), 200, at(0), &policy, &mut low());
    assert_eq!(ms(pro.take(at(0), &policy)), Some(20_000));
    assert_eq!(ms(pro.take(at(0), &policy)), Some(21_000));
}

#[test]
fn room_ends_the_slots_only_once_no_slot_is_due() {
    let policy = RetryPolicy::default();
    let pacer = own_spent(&policy);
    assert_eq!(ms(pacer.take(at(0), &policy)), Some(20_000));
    // The next slot is at 26 s: room seen at 21 s keeps the slots going.
    pacer.sent(at(20_000));
    pacer.observe_response(&rl(10, 9, 80), 200, at(21_000), &policy, &mut low());
    assert_eq!(ms(pacer.take(at(21_000), &policy)), Some(5_000));
    // Room seen at 40 s, past the next slot (32 s): requests go at once again.
    pacer.observe_response(&rl(10, 8, 80), 200, at(40_000), &policy, &mut low());
    assert_eq!(pacer.take(at(40_000), &policy), None);
    assert_eq!(pacer.take(at(40_000), &policy), None);
}

#[test]
fn a_429_on_a_key_used_alone_gives_slots_as_its_own_spent_window_does() {
    let policy = RetryPolicy::default();
    let slotted = Pacer::new();
    let hold_mode = Pacer::hold_only();
    // Ten attempts of its own in the window, then a 429 (an eleventh request sent before
    // the tenth's response came back): nobody else used the key.
    send(&slotted, 10, at(0));
    slotted.observe_response(&rl(10, 0, 20), 429, at(1_000), &policy, &mut high());
    hold_mode.observe_response(&rl(10, 0, 20), 429, at(1_000), &policy, &mut high());
    assert!(!slotted.is_shared());
    // Slots, as after its own success with Remaining: 0: the first at the reset (20 s) plus
    // a point of one interval (the draw high: 5,999 ms), then one interval (6 s) apart; no
    // hold that would send them all together when it ends.
    assert_eq!(ms(slotted.take(at(1_000), &policy)), Some(19_000 + 5_999));
    assert_eq!(ms(slotted.take(at(1_000), &policy)), Some(19_000 + 11_999));
    assert_eq!(slotted.held_until(), None);
    // Hold mode holds every request until the reset, spread.
    held_alike(&hold_mode, at(1_000), &policy);
}

#[test]
fn a_key_seen_shared_spreads_its_429s_over_the_next_window() {
    let policy = RetryPolicy::default();
    // A response says 7 of 10 were used, and this process sent none: others use the key.
    let pacer = Pacer::new();
    assert!(!pacer.is_shared());
    pacer.observe_response(&rl(10, 3, 20), 200, at(0), &policy, &mut low());
    assert!(pacer.is_shared(), "7 used, none sent");
    assert_eq!(pacer.take(at(0), &policy), None, "room: sent at once");
    pacer.sent(at(0));
    // Then a 429: the first slot anywhere in the next window (here its middle).
    let mut half = || 1u64 << 63;
    pacer.observe_response(&rl(10, 0, 20), 429, at(2_000), &policy, &mut half);
    assert_eq!(ms(pacer.take(at(2_000), &policy)), Some(18_000 + 30_000));
    assert_eq!(ms(pacer.take(at(2_000), &policy)), Some(18_000 + 36_000));
    // Shared is sticky: a 429 two windows later spreads too (low end: at its reset).
    pacer.observe_response(&rl(10, 0, 140), 429, at(130_000), &policy, &mut low());
    assert_eq!(ms(pacer.take(at(130_000), &policy)), Some(10_000));
}

#[test]
fn only_this_windows_own_attempts_explain_its_used_count() {
    let policy = RetryPolicy::default();
    // Seven attempts in the previous minute (T0 - 50 s is in the window ending at T0 - 40 s).
    let pacer = Pacer::new();
    for _ in 0..7 {
        pacer.sent(SystemTime::UNIX_EPOCH + Duration::from_secs(T0 - 50));
    }
    // This window's used count (7) is not this process's: shared.
    pacer.observe_response(&rl(10, 3, 20), 200, at(0), &policy, &mut low());
    pacer.observe_response(&rl(10, 0, 20), 429, at(1_000), &policy, &mut low());
    assert_eq!(ms(pacer.take(at(1_000), &policy)), Some(19_000), "a slot");
    assert_eq!(
        ms(pacer.take(at(1_000), &policy)),
        Some(25_000),
        "then the next"
    );
    // The same seven in this window explain the used count of 7: not shared. Three more of
    // its own spend the window; a 429 on the eleventh then starts slots within one
    // interval of the reset, as on a key used alone (the draw low: at the reset).
    let alone = Pacer::new();
    send(&alone, 7, at(0));
    alone.observe_response(&rl(10, 3, 20), 200, at(0), &policy, &mut low());
    send(&alone, 4, at(500));
    alone.observe_response(&rl(10, 0, 20), 429, at(1_000), &policy, &mut low());
    assert!(!alone.is_shared());
    assert_eq!(ms(alone.take(at(1_000), &policy)), Some(19_000));
    assert_eq!(ms(alone.take(at(1_000), &policy)), Some(25_000));
}

#[test]
fn a_waiting_request_whose_window_was_seen_spent_waits_again() {
    let policy = RetryPolicy::default();
    let pacer = own_spent(&policy);
    assert_eq!(ms(pacer.take(at(0), &policy)), Some(20_000));
    assert_eq!(ms(pacer.take(at(0), &policy)), Some(26_000));
    // The first wakes at 20 s: nothing new, it goes.
    assert_eq!(pacer.recheck(at(20_000), &policy), None);
    // Then the next window is seen spent (its reset at 80 s) before the second wakes.
    pacer.sent(at(20_000));
    pacer.observe_response(&rl(10, 0, 80), 200, at(21_000), &policy, &mut low());
    let again = ms(pacer.recheck(at(26_000), &policy)).unwrap();
    assert!(again >= 54_000, "not before the reset at 80 s: {again}");
}

#[test]
fn resets_passed_or_past_max_wait_are_not_waited_and_a_request_without_a_slot_waits_max_wait() {
    let policy = minute_max_wait();
    let pacer = Pacer::new();
    pacer.sent(at(0));
    // A reset already passed, or further than max_wait: nothing.
    pacer.observe_response(&rl(10, 0, 0), 200, at(500), &policy, &mut low());
    pacer.observe_response(&rl(10, 0, 80), 200, at(0), &policy, &mut low());
    assert_eq!(pacer.take(at(500), &policy), None);
    // A reset 20 s ahead: slots at 20, 26, ... 56 s; the next, 62 s, is past max_wait
    // from now, so it is not waited, and not taken: a request 3 s later finds it.
    pacer.observe_response(&rl(10, 0, 20), 200, at(0), &policy, &mut low());
    for k in 0..7 {
        assert_eq!(ms(pacer.take(at(0), &policy)), Some(20_000 + k * 6_000));
    }
    // The next, 62 s, is past max_wait from now: not taken, and the request waits all of
    // max_wait (60 s), no more: it is then sent without a slot.
    assert_eq!(ms(pacer.take(at(0), &policy)), Some(60_000));
    assert_eq!(ms(pacer.recheck(at(0), &policy)), Some(60_000));
    // 3 s later the 62 s slot is within max_wait: taken; then 68 s is not, at 7 s.
    assert_eq!(ms(pacer.take(at(3_000), &policy)), Some(59_000));
    assert_eq!(ms(pacer.take(at(7_000), &policy)), Some(60_000));
    // Past the reset too: at 20 s the slots 68, 74 and 80 s are taken, 86 s is not.
    for slot in [68_000, 74_000, 80_000] {
        assert_eq!(ms(pacer.take(at(20_000), &policy)), Some(slot - 20_000));
    }
    assert_eq!(ms(pacer.take(at(20_000), &policy)), Some(60_000));
}

#[test]
fn hold_only_is_the_previous_default() {
    let policy = RetryPolicy::default();
    let pacer = Pacer::hold_only();
    pacer.sent(at(0));
    pacer.observe_response(&rl(10, 0, 20), 200, at(0), &policy, &mut low());
    let held = ms(pacer.hold(at(0), &policy));
    assert_eq!(held, Some(20_000));
    assert_eq!(ms(pacer.take(at(0), &policy)), held);
    assert_eq!(
        ms(pacer.take(at(0), &policy)),
        held,
        "no slots: all together"
    );
    assert_eq!(ms(pacer.recheck(at(0), &policy)), held);
    assert_eq!(pacer.recheck(at(20_000), &policy), None);
}

#[test]
fn threads_taking_slots_never_share_one() {
    let policy = RetryPolicy::default();
    let pacer = Arc::new(Pacer::new());
    pacer.sent(at(0));
    pacer.observe_response(&rl(60, 0, 20), 200, at(0), &policy, &mut low());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let pacer = Arc::clone(&pacer);
            std::thread::spawn(move || {
                (0..50)
                    .map(|_| ms(pacer.take(at(0), &policy)).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    let want: Vec<u64> = (0..200).map(|i| 20_000 + i * 1_000).collect();
    assert_eq!(all, want);
}

#[test]
fn a_429_on_a_window_this_process_did_not_spend_marks_the_key_shared() {
    let policy = RetryPolicy::default();
    // One attempt of its own, a 429 whose count (10 of 10) is not all its own: others used
    // the key, so its requests take slots from a uniform point of the next window (the draw
    // high: 59,999 ms past the reset at 20 s), 6 s apart.
    let pacer = Pacer::new();
    pacer.sent(at(0));
    pacer.observe_response(&rl(10, 0, 20), 429, at(0), &policy, &mut high());
    assert_eq!(ms(pacer.take(at(0), &policy)), Some(20_000 + 59_999));
    assert_eq!(
        ms(pacer.take(at(0), &policy)),
        Some(20_000 + 59_999 + 6_000)
    );
    assert!(pacer.is_shared());
    // Ten of its own explain the ten used: not shared, so slots within one interval of the
    // reset (the draw high: 5,999 ms past it), not over the whole next window.
    let alone = Pacer::new();
    send(&alone, 10, at(0));
    alone.observe_response(&rl(10, 0, 20), 429, at(0), &policy, &mut high());
    assert!(!alone.is_shared(), "ten sent, ten used");
    assert_eq!(ms(alone.take(at(0), &policy)), Some(20_000 + 5_999));
}

#[test]
fn slot_boundaries() {
    let policy = minute_max_wait();
    // A reset exactly max_wait ahead is paced; a slot exactly max_wait ahead is waited.
    let pacer = own_spent_until(&policy, 60);
    assert_eq!(ms(pacer.take(at(0), &policy)), Some(60_000));
    // That slot (60 s) was taken: a request one interval later finds the next, 66 s, which
    // is max_wait ahead of it, and takes it too.
    assert_eq!(ms(pacer.take(at(6_000), &policy)), Some(60_000));
    assert_eq!(ms(pacer.take(at(12_000), &policy)), Some(60_000));
    // The next, 78 s, is 66 s ahead of 12 s: not taken, max_wait waited; at 18 s it is.
    assert_eq!(ms(pacer.take(at(12_000), &policy)), Some(60_000));
    assert_eq!(ms(pacer.take(at(18_000), &policy)), Some(60_000));
    assert_eq!(ms(pacer.take(at(18_000), &policy)), Some(60_000));
    assert_eq!(ms(pacer.take(at(30_000), &policy)), Some(54_000), "84 s");
    // A request at its slot's very moment goes at once, and the next slot moves on.
    let pacer = own_spent(&policy);
    assert_eq!(pacer.take(at(20_000), &policy), None);
    assert_eq!(ms(pacer.take(at(20_000), &policy)), Some(6_000));
}

#[test]
fn a_window_seen_spent_twice_keeps_its_slots_and_a_later_one_moves_them() {
    let policy = RetryPolicy::default();
    let pacer = own_spent(&policy);
    // The same window again, drawn high: the first slot stays at the reset.
    pacer.observe_response(&rl(10, 0, 20), 200, at(100), &policy, &mut high());
    assert_eq!(ms(pacer.take(at(1_000), &policy)), Some(19_000));
    pacer.observe_response(&rl(10, 0, 20), 200, at(1_000), &policy, &mut high());
    assert_eq!(ms(pacer.take(at(1_000), &policy)), Some(25_000));
    // The next window seen spent while slots are pending (the next at 32 s): slots move to
    // its reset (80 s) plus this draw (high: 5,999 ms).
    pacer.sent(at(20_000));
    pacer.observe_response(&rl(10, 0, 80), 200, at(21_000), &policy, &mut high());
    assert_eq!(
        ms(pacer.take(at(21_000), &policy)),
        Some(80_000 + 5_999 - 21_000)
    );
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Sent,
        Observe {
            limit: u32,
            remaining: u32,
            reset_in_s: i64,
            status: u16,
            draw: u64,
        },
        Take,
        Recheck,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Sent),
            (
                prop_oneof![Just(0u32), Just(1), 1..100u32, Just(u32::MAX)],
                prop_oneof![Just(0u32), 0..20u32, Just(u32::MAX)],
                prop_oneof![-100..400i64, Just(i64::MAX / 2_000)],
                prop_oneof![Just(200u16), Just(429), Just(503)],
                any::<u64>(),
            )
                .prop_map(|(limit, remaining, reset_in_s, status, draw)| Op::Observe {
                    limit,
                    remaining,
                    reset_in_s,
                    status,
                    draw,
                }),
            Just(Op::Take),
            Just(Op::Recheck),
            (0..20_000u64).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Whatever a server says (any limit, count, reset, status, in any order), a slotted
        /// pacer never panics and never asks a request to wait past `max_wait`.
        #[test]
        fn a_hostile_server_never_makes_a_slotted_pacer_wait_past_max_wait(
            ops in proptest::collection::vec(op(), 1..200)
        ) {
            let policy = RetryPolicy::default();
            let max_wait = policy.max_wait();
            let pacer = Pacer::new();
            let mut now_ms = 0u64;
            for op in ops {
                let now = at(now_ms);
                match op {
                    Op::Sent => pacer.sent(now),
                    Op::Observe { limit, remaining, reset_in_s, status, draw } => {
                        let reset = (T0 + now_ms / 1000).saturating_add_signed(reset_in_s);
                        let window = RateLimit { limit, remaining, reset };
                        pacer.observe_response(&window, status, now, &policy, &mut || draw);
                    }
                    Op::Take => {
                        if let Some(wait) = pacer.take(now, &policy) {
                            prop_assert!(wait <= max_wait && wait > Duration::ZERO);
                        }
                    }
                    Op::Recheck => {
                        if let Some(wait) = pacer.recheck(now, &policy) {
                            prop_assert!(wait <= max_wait && wait > Duration::ZERO);
                        }
                    }
                    Op::Advance(ms) => now_ms += ms,
                }
            }
        }
    }
}

#[test]
fn a_key_marked_shared_spreads_its_first_429_and_hold_mode_ignores_the_mark() {
    let policy = RetryPolicy::default();
    let pacer = Pacer::new();
    pacer.mark_shared();
    assert!(pacer.is_shared());
    // Ten of its own attempts, then a 429: marked shared, so not a hold but slots from a
    // uniform point of the next window (here its middle), one interval (6 s) apart.
    send(&pacer, 10, at(0));
    let mut half = || 1u64 << 63;
    pacer.observe_response(&rl(10, 0, 20), 429, at(1_000), &policy, &mut half);
    assert_eq!(ms(pacer.take(at(1_000), &policy)), Some(19_000 + 30_000));
    assert_eq!(ms(pacer.take(at(1_000), &policy)), Some(19_000 + 36_000));
    let hold_mode = Pacer::hold_only();
    hold_mode.mark_shared();
    assert!(
        !hold_mode.is_shared(),
        "hold mode keeps no slots, so no mark"
    );
    hold_mode.observe_response(&rl(10, 0, 20), 429, at(1_000), &policy, &mut half);
    held_alike(&hold_mode, at(1_000), &policy);
}

#[test]
fn wait_at_is_the_whole_wait_of_a_paced_request() {
    let policy = RetryPolicy::default();
    // Held 5 s by an earlier hold; its own request spent the window ending at 20 s:
    // a request waits out the hold, then finds the window spent and takes its slot (20 s,
    // the draw low), 20 s in all; the next takes the slot after (26 s).
    let pacer = Pacer::holding(at(5_000));
    pacer.sent(at(0));
    pacer.observe_response(&rl(10, 0, 20), 200, at(0), &policy, &mut low());
    assert_eq!(ms(pacer.wait_at(at(0), &policy)), Some(20_000));
    assert_eq!(ms(pacer.wait_at(at(0), &policy)), Some(26_000));
    // Nothing held, nothing spent: sent at once.
    assert_eq!(Pacer::new().wait_at(at(0), &policy), None);
    // A hold alone is waited once: at its end nothing holds.
    let held = Pacer::holding(at(10_000));
    assert_eq!(ms(held.wait_at(at(0), &policy)), Some(10_000));
}

/// A request on a shared key whose every slot lands in a window the process then sees spent
/// (other requests' 429s, before it wakes) chases windows: new slots after its first,
/// second and third waits, then, after its fourth (the next to last), only as far as the
/// latest spent window's reset, so that its last wait never ends inside a window this
/// process saw spent; after the fifth it is sent. Draws at the middle: a shared key's 429
/// puts the next slot 30 s past the reset.
#[test]
fn a_request_chasing_spent_windows_ends_its_last_wait_at_a_reset() {
    let policy = RetryPolicy::default();
    let pacer = Pacer::new();
    pacer.mark_shared();
    let mut half = || 1u64 << 63;
    pacer.observe_response(&rl(10, 0, 20), 429, at(0), &policy, &mut half);
    assert_eq!(ms(pacer.take(at(0), &policy)), Some(50_000));
    // (a 429 seen at, the window's reset, when the request wakes, its next wait)
    let steps = [
        (30_000, 80, 50_000, 60_000),    // a slot at 110 s
        (90_000, 140, 110_000, 60_000),  // at 170 s
        (150_000, 200, 170_000, 60_000), // at 230 s
        (210_000, 260, 230_000, 30_000), // the next to last: to the reset at 260 s
    ];
    for (waits, (seen, reset, wakes, next)) in (1..).zip(steps) {
        pacer.observe_response(&rl(10, 0, reset), 429, at(seen), &policy, &mut half);
        assert_eq!(
            ms(pacer.recheck_after(waits, at(wakes), &policy)),
            Some(next),
            "after wait {waits}"
        );
    }
    // Before the fix the fourth step took a slot at 290 s, inside the window [260, 320 s)
    // that a 429 at 270 s then showed spent: sent there, it earned a 429.
    assert_eq!(
        pacer.recheck_after(Pacer::MAX_WAITS, at(260_000), &policy),
        None,
        "the fifth wait ends it: sent at the reset, in a window not seen spent"
    );
    assert_eq!(
        pacer.recheck_after(Pacer::MAX_WAITS + 1, at(260_000), &policy),
        None
    );
    // The last wait took no slot: a plain recheck (the steps before it) would still take
    // the one at 290 s.
    assert_eq!(ms(pacer.recheck(at(230_000), &policy)), Some(60_000));
}

/// The last wait is a 429's hold when that is longer than the time to the reset, and none
/// when neither holds; hold mode has no slots, so its last wait is its hold.
#[test]
fn the_last_wait_is_the_longer_of_the_reset_and_a_hold() {
    let policy = RetryPolicy::default();
    let last = Pacer::MAX_WAITS - 1;
    let idle = Pacer::new();
    assert_eq!(idle.recheck_after(last, at(0), &policy), None);
    let held = Pacer::holding(at(45_000));
    assert_eq!(ms(held.recheck_after(last, at(0), &policy)), Some(45_000));
    let both = own_spent(&policy);
    assert_eq!(
        ms(both.recheck_after(last, at(5_000), &policy)),
        Some(15_000)
    );
    let hold_mode = Pacer::hold_only();
    hold_mode.observe(&rl(10, 0, 20), at(0), &policy, &mut low());
    assert_eq!(
        ms(hold_mode.recheck_after(last, at(0), &policy)),
        Some(20_000)
    );
    // At most max_wait.
    let minute = minute_max_wait();
    let far = Pacer::holding(at(90_000));
    assert_eq!(
        far.recheck_after(last, at(0), &minute),
        None,
        "a hold past max_wait is not waited"
    );
    let spent = own_spent_until(&minute, 50);
    assert_eq!(ms(spent.recheck_after(last, at(0), &minute)), Some(50_000));
}
