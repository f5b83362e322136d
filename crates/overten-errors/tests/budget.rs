//! The retry budget's newest-first mechanics: cancellation order, conservation of tokens,
//! one budget for every holder of its `Arc`, and the cancellation's wake-up.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, SystemTime};

use overten_errors::{
    Advice, ApiError, Basis, ErrorCode, RetryBudget, RetryPolicy, RetryTicket, StopReason,
};
use proptest::prelude::*;

fn retry(basis: Basis) -> Advice {
    Advice::Retry {
        after: Duration::from_secs(1),
        basis,
    }
}

const BACKOFF: Basis = Basis::Backoff;
const WINDOW: Basis = Basis::WaitWindow;

fn ticket(budget: &RetryBudget, basis: Basis) -> RetryTicket {
    let (advice, ticket) = budget.reserve(retry(basis));
    assert_eq!(advice, retry(basis));
    ticket.expect("a paid retry holds a ticket")
}

#[test]
fn the_oldest_waiting_retries_are_cancelled_first_and_only_as_many_as_needed() {
    // 100 tokens, 5 a retry, 20 in a wait window.
    let budget = RetryBudget::default();
    let tickets: Vec<RetryTicket> = (0..20).map(|_| ticket(&budget, BACKOFF)).collect();
    assert_eq!(
        (budget.tokens(), budget.reserved(), budget.waiting()),
        (0, 100, 20)
    );
    // A window retry costs 20: the four oldest pay for it, the rest wait on.
    let newest = ticket(&budget, WINDOW);
    let cancelled: Vec<bool> = tickets.iter().map(RetryTicket::is_cancelled).collect();
    assert_eq!(cancelled[..4], [true; 4]);
    assert_eq!(cancelled[4..], [false; 16]);
    assert_eq!(
        (budget.tokens(), budget.reserved(), budget.waiting()),
        (0, 100, 17)
    );
    // A backoff retry now takes the fifth oldest, not the window retry just paid.
    let _later = ticket(&budget, BACKOFF);
    assert!(tickets[4].is_cancelled());
    assert!(!tickets[5].is_cancelled());
    assert!(!newest.is_cancelled());
    // Sending: a cancelled retry is refused, a waiting one spends its tokens for good.
    let mut tickets = tickets.into_iter();
    assert!(!tickets.next().unwrap().send());
    let rest: Vec<RetryTicket> = tickets.skip(4).collect();
    for t in rest {
        assert!(t.send());
    }
    // 15 sent (75 tokens spent), the window retry and the later one (25) still wait.
    assert_eq!(
        (budget.tokens(), budget.reserved(), budget.waiting()),
        (0, 25, 2)
    );
}

#[test]
fn nothing_is_cancelled_when_even_every_waiting_retry_could_not_pay() {
    let budget = RetryBudget::new(30, 5, 1).with_window_cost(40);
    let a = ticket(&budget, BACKOFF);
    let b = ticket(&budget, BACKOFF);
    assert_eq!(budget.tokens(), 20);
    assert_eq!(
        budget.reserve(retry(WINDOW)).0,
        Advice::Stop(StopReason::BudgetExhausted),
        "20 free and 10 waiting cannot pay 40"
    );
    assert!(!a.is_cancelled() && !b.is_cancelled());
    assert_eq!((budget.tokens(), budget.reserved()), (20, 10));
    // Free tokens are spent before any ticket is cancelled.
    let c = ticket(&budget, BACKOFF);
    assert_eq!((a.cost(), c.cost()), (5, 5));
    assert!(!a.is_cancelled());
    assert_eq!((budget.tokens(), budget.reserved()), (15, 15));
    drop(c);
}

#[test]
fn waiting_retries_that_exactly_pay_are_all_taken() {
    // 5 free and 25 waiting pay exactly for a 30-token retry.
    let budget = RetryBudget::new(30, 5, 1).with_window_cost(30);
    let waiting: Vec<RetryTicket> = (0..5).map(|_| ticket(&budget, BACKOFF)).collect();
    let window = ticket(&budget, WINDOW);
    assert_eq!(window.cost(), 30);
    assert!(waiting.iter().all(RetryTicket::is_cancelled));
    assert_eq!(
        (budget.tokens(), budget.reserved(), budget.waiting()),
        (0, 30, 1)
    );
}

#[test]
fn resubmit_and_stop_advice_cost_nothing_and_hold_no_ticket() {
    let budget = RetryBudget::new(10, 5, 1);
    for advice in [
        Advice::ResubmitAsync,
        Advice::Stop(StopReason::BudgetExhausted),
    ] {
        let (same, ticket) = budget.reserve(advice);
        assert_eq!(same, advice);
        assert!(ticket.is_none());
    }
    assert_eq!((budget.tokens(), budget.reserved()), (10, 0));
}

#[test]
fn a_ticket_dropped_unsent_returns_its_tokens_and_a_sent_one_never_does() {
    let budget = RetryBudget::new(10, 5, 1);
    let a = ticket(&budget, BACKOFF);
    let b = ticket(&budget, BACKOFF);
    drop(a);
    assert_eq!((budget.tokens(), budget.reserved()), (5, 5));
    assert!(b.send());
    assert_eq!((budget.tokens(), budget.reserved()), (5, 0));
}

#[test]
fn an_admitted_retry_is_sent_at_once_and_takes_waiting_tickets_newest_first() {
    // `admit` (and `explain` with a budget) pays a retry sent at once: it can take a
    // waiting ticket's tokens, and never holds any itself.
    let budget = RetryBudget::new(10, 5, 1);
    let a = ticket(&budget, BACKOFF);
    let b = ticket(&budget, BACKOFF);
    assert_eq!(budget.admit(retry(BACKOFF)), retry(BACKOFF));
    assert!(a.is_cancelled() && !b.is_cancelled());
    assert_eq!(
        (budget.tokens(), budget.reserved(), budget.waiting()),
        (0, 5, 1)
    );
}

#[test]
fn successes_refill_up_to_the_capacity_counting_waiting_tickets() {
    let budget = RetryBudget::new(20, 5, 1);
    let a = ticket(&budget, BACKOFF);
    budget.record_retried_success();
    budget.record_success();
    assert_eq!(
        (budget.tokens(), budget.reserved()),
        (15, 5),
        "15 + 5 = capacity"
    );
    assert!(a.send());
    budget.record_success();
    assert_eq!(budget.tokens(), 16);
}

#[test]
fn every_holder_of_the_arc_sees_one_budget_across_threads() {
    // 8 threads reserve and send or drop retries at once: at the end every token is
    // accounted for, and no more retries were sent than the bucket could pay.
    let budget = Arc::new(RetryBudget::new(1_000, 5, 1));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || {
                let mut sent = 0u32;
                let mut held = Vec::new();
                for i in 0..200 {
                    if let (_, Some(ticket)) = budget.reserve(retry(BACKOFF)) {
                        held.push(ticket);
                    }
                    if i % 3 == t % 3 {
                        if let Some(ticket) = held.pop() {
                            sent += u32::from(ticket.send());
                        }
                    }
                    if i % 7 == 0 && !held.is_empty() {
                        held.remove(0);
                    }
                }
                // The rest are dropped: tokens back.
                sent
            })
        })
        .collect();
    let sent: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(sent > 0);
    assert_eq!(budget.reserved(), 0);
    assert_eq!(budget.waiting(), 0);
    assert_eq!(budget.tokens() + 5 * sent, 1_000);
}

/// Counts wake-ups.
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_waiting_retry_is_woken_when_it_is_cancelled_and_never_after_it_was_sent() {
    let budget = RetryBudget::new(5, 5, 1);
    let old = ticket(&budget, BACKOFF);
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&count));
    let mut cx = Context::from_waker(&waker);
    {
        let mut cancelled = pin!(old.cancelled());
        assert_eq!(cancelled.as_mut().poll(&mut cx), Poll::Pending);
        let new = ticket(&budget, BACKOFF);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "woken by the cancellation"
        );
        assert_eq!(cancelled.as_mut().poll(&mut cx), Poll::Ready(()));
        // The new one, sent, is never cancelled.
        let mut watch = pin!(new.cancelled());
        assert_eq!(watch.as_mut().poll(&mut cx), Poll::Pending);
    }
    assert!(!old.send());
}

/// One operation of the model test.
#[derive(Debug, Clone)]
enum Op {
    Reserve(bool),
    Admit(bool),
    Send(usize),
    Drop(usize),
    Success(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(Op::Reserve),
        1 => any::<bool>().prop_map(Op::Admit),
        2 => (0usize..64).prop_map(Op::Send),
        1 => (0usize..64).prop_map(Op::Drop),
        2 => any::<bool>().prop_map(Op::Success),
    ]
}

proptest! {
    /// Against a model written from the rules (a queue of waiting costs, oldest first): the
    /// same tickets are cancelled, tokens + reserved never exceed the capacity, and only a
    /// send spends tokens, only a success adds them.
    #[test]
    fn the_budget_follows_its_model(ops in proptest::collection::vec(op(), 1..200)) {
        let (capacity, cost, window) = (50u32, 5u32, 20u32);
        let budget = RetryBudget::new(capacity, cost, 1).with_window_cost(window);
        // The model: free tokens, and the waiting tickets' (id, cost), oldest first.
        let mut free = capacity;
        let mut queue: Vec<(usize, u32)> = Vec::new();
        let mut cancelled_model: Vec<usize> = Vec::new();
        let mut held: Vec<(usize, RetryTicket)> = Vec::new();
        let mut next_id = 0usize;
        for op in ops {
            match op {
                Op::Reserve(w) | Op::Admit(w) => {
                    let c = if w { window } else { cost };
                    let reserved: u32 = queue.iter().map(|q| q.1).sum();
                    let pays = free + reserved >= c;
                    if pays {
                        while free < c {
                            let (id, qc) = queue.remove(0);
                            free += qc;
                            cancelled_model.push(id);
                        }
                        free -= c;
                    }
                    let basis = if w { WINDOW } else { BACKOFF };
                    if let Op::Reserve(_) = op {
                        let (advice, t) = budget.reserve(retry(basis));
                        prop_assert_eq!(t.is_some(), pays);
                        prop_assert_eq!(advice == retry(basis), pays);
                        if let Some(t) = t {
                            queue.push((next_id, c));
                            held.push((next_id, t));
                            next_id += 1;
                        }
                    } else {
                        prop_assert_eq!(budget.admit(retry(basis)) == retry(basis), pays);
                    }
                }
                Op::Send(i) | Op::Drop(i) if !held.is_empty() => {
                    let (id, t) = held.remove(i % held.len());
                    let was_waiting = queue.iter().position(|q| q.0 == id);
                    prop_assert_eq!(t.is_cancelled(), was_waiting.is_none());
                    if let Some(p) = was_waiting {
                        let (_, c) = queue.remove(p);
                        if let Op::Drop(_) = op {
                            free += c;
                        }
                    }
                    if let Op::Send(_) = op {
                        prop_assert_eq!(t.send(), was_waiting.is_some());
                    } else {
                        drop(t);
                    }
                }
                Op::Send(_) | Op::Drop(_) => {}
                Op::Success(retried) => {
                    let reserved: u32 = queue.iter().map(|q| q.1).sum();
                    let back = if retried { cost } else { 1 };
                    free = (free + back).min(capacity - reserved).max(free);
                    budget.record_success_after(if retried { 2 } else { 1 });
                }
            }
            let reserved: u32 = queue.iter().map(|q| q.1).sum();
            prop_assert_eq!(budget.tokens(), free);
            prop_assert_eq!(budget.reserved(), reserved);
            prop_assert_eq!(budget.waiting(), queue.len());
            prop_assert!(free + reserved <= capacity);
            for (id, t) in &held {
                prop_assert_eq!(t.is_cancelled(), cancelled_model.contains(id));
            }
        }
    }
}

/// A 500 at attempt 1 decided with the draw `bits` against `budget`.
fn decide_500(policy: &RetryPolicy, budget: &RetryBudget, bits: u64) -> Advice {
    let err = ApiError::from(ErrorCode::InternalError);
    policy
        .explain(
            &err,
            1,
            SystemTime::UNIX_EPOCH,
            &mut move || bits,
            Some(budget),
        )
        .advice
}

fn backoff(ms: u64) -> Advice {
    Advice::Retry {
        after: Duration::from_millis(ms),
        basis: BACKOFF,
    }
}

#[test]
fn a_backoff_that_leaves_less_than_a_retry_waits_the_storm_window() {
    // docs/retry.md, step 10, with the defaults: attempt 1's backoff is
    // floor(1000 * (1 - 0.5 u)); paying it from 9 tokens leaves 4 < 5, so the wait becomes
    // max(backoff, 15000 + min(floor(15001 u), 15000)).
    let policy = RetryPolicy::default();
    let top = u64::MAX;
    assert_eq!(
        decide_500(&policy, &RetryBudget::default().with_tokens(9), 0),
        backoff(15_000)
    );
    assert_eq!(
        decide_500(&policy, &RetryBudget::default().with_tokens(9), top),
        backoff(30_000)
    );
    assert_eq!(
        decide_500(&policy, &RetryBudget::default().with_tokens(5), 0),
        backoff(15_000)
    );
    // 10 tokens leave 5, one retry's cost: the plain backoff, 1000 ms at u = 0, 500 at the top.
    assert_eq!(
        decide_500(&policy, &RetryBudget::default().with_tokens(10), 0),
        backoff(1_000)
    );
    assert_eq!(
        decide_500(&policy, &RetryBudget::default().with_tokens(10), top),
        backoff(500)
    );
    // Without a budget there is no storm.
    let err = ApiError::from(ErrorCode::InternalError);
    assert_eq!(
        policy.decide(&err, 1, SystemTime::UNIX_EPOCH, &mut || 0),
        backoff(1_000)
    );
}

#[test]
fn the_storm_window_is_capped_at_max_wait_and_never_shortens_a_backoff() {
    let top = u64::MAX;
    // max_wait 20 s: the window is 15-20 s.
    let capped = RetryPolicy::builder()
        .max_wait(Duration::from_secs(20))
        .max_delay(Duration::from_secs(20))
        .build()
        .unwrap();
    assert_eq!(
        decide_500(&capped, &RetryBudget::default().with_tokens(5), top),
        backoff(20_000)
    );
    // max_wait 10 s: both ends are 10 s.
    let short = RetryPolicy::builder()
        .max_wait(Duration::from_secs(10))
        .max_delay(Duration::from_secs(10))
        .build()
        .unwrap();
    assert_eq!(
        decide_500(&short, &RetryBudget::default().with_tokens(5), 0),
        backoff(10_000)
    );
    // A storm window below the backoff leaves the backoff as it is (never shorter), and
    // the window's ends may come in either order.
    let low = RetryBudget::default()
        .with_tokens(5)
        .with_storm_wait(Duration::from_millis(300), Duration::from_millis(200));
    assert_eq!(
        low.storm_wait(),
        (Duration::from_millis(200), Duration::from_millis(300))
    );
    assert_eq!(decide_500(&RetryPolicy::default(), &low, 0), backoff(1_000));
}

#[test]
fn a_storm_spares_wait_windows_and_named_waits() {
    // A 503 without Retry-After paid from exactly 20 tokens empties the bucket, but its
    // window (30-60 s) is not a backoff: unchanged.
    let policy = RetryPolicy::default();
    let err = ApiError::from(ErrorCode::ServiceUnavailable);
    let budget = RetryBudget::default().with_tokens(20);
    assert_eq!(
        policy
            .explain(&err, 1, SystemTime::UNIX_EPOCH, &mut || 0, Some(&budget))
            .advice,
        Advice::Retry {
            after: Duration::from_secs(30),
            basis: WINDOW
        }
    );
}

#[test]
fn reserving_and_transport_failures_stretch_a_storms_backoff_too() {
    let policy = RetryPolicy::default();
    let budget = RetryBudget::default().with_tokens(5);
    let err = ApiError::from(ErrorCode::InternalError);
    let (decision, ticket) =
        policy.explain_reserving(&err, 1, SystemTime::UNIX_EPOCH, &mut || 0, &budget);
    assert_eq!(decision.advice, backoff(15_000));
    assert!(ticket.is_some());
    let refused = RetryBudget::default().with_tokens(5);
    let d = policy.decide_transport(false, true, 1, &mut || u64::MAX, Some(&refused));
    assert_eq!(d.advice, backoff(30_000));
    let (d, ticket) =
        policy.decide_transport_reserving(false, true, 1, &mut || 0, &RetryBudget::default());
    assert_eq!(d.advice, backoff(1_000), "a full bucket is no storm");
    assert!(ticket.is_some());
}

#[test]
fn reserving_from_a_budget_that_cannot_pay_stops() {
    let policy = RetryPolicy::default();
    let err = ApiError::from(ErrorCode::InternalError);
    let empty = RetryBudget::default().with_tokens(4);
    let (d, ticket) = policy.explain_reserving(&err, 1, SystemTime::UNIX_EPOCH, &mut || 0, &empty);
    assert_eq!(d, overten_errors::Decision::RETRY_CANCELLED);
    assert_eq!(d.step, overten_errors::Step::Budget);
    assert!(ticket.is_none());
    let (d, ticket) = policy.decide_transport_reserving(false, true, 1, &mut || 0, &empty);
    assert_eq!(d.advice, Advice::Stop(StopReason::BudgetExhausted));
    assert!(ticket.is_none());
    assert_eq!(empty.tokens(), 4, "nothing spent");
}

#[test]
fn free_retries_are_never_queued_or_cancelled() {
    let budget = RetryBudget::new(5, 0, 1);
    let free: Vec<RetryTicket> = (0..1000).map(|_| ticket(&budget, BACKOFF)).collect();
    assert_eq!(
        (budget.tokens(), budget.reserved(), budget.waiting()),
        (5, 0, 0)
    );
    assert!(free.into_iter().all(RetryTicket::send));
}
