//! The retry budget: a token bucket shared by every request of a client, paid newest first.
//!
//! A retry is paid when it is decided and sent after its wait. While it waits it holds a
//! [`RetryTicket`]: when the bucket cannot pay for a newer failure's retry, the oldest retry
//! still waiting is cancelled (its request ends now, with its last error) and its tokens pay
//! for the newer one. In an outage the budget then buys the retries most likely to land
//! after it ends, instead of spending itself on the first failures (`docs/retry-storms.md`).

use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicU8, Ordering};
use core::task::{Context, Poll, Waker};
use core::time::Duration;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::retry::{Advice, Basis, StopReason};

/// A token bucket that stops retry storms: every retry spends tokens, every success
/// returns some. Shared through `&self` (one short lock), so one budget can serve every
/// task of a client; clone the `Arc` it lives in, not the budget.
///
/// The default, 100 tokens, 5 a retry, 1 back a first-attempt success and the retry's cost
/// back for a success after retries, was chosen by the retry-storm simulation of
/// `docs/retry-storms.md`: the AWS SDKs' standard retry quota (500 tokens, 5 a retry; a
/// success after retries returns the last retry's cost) lets each client send 100 retries
/// into an outage, 1.39× the load offered in the simulated hard outage; 100 tokens keep it
/// near 1.07× while a brown-out's retried successes, paid back, keep their success rate. A
/// retry in a 503's wait window (the API out of capacity) costs 20: in the study's overloads
/// the 5-token window retries kept the API failing for up to 139 s after the trigger ended.
///
/// **Newest first.** A retry paid with [`RetryBudget::reserve`] holds a [`RetryTicket`]
/// until it is sent. When the bucket cannot pay for a new retry, the oldest waiting tickets
/// are cancelled, oldest first, until their tokens and the bucket's pay for it (none is
/// cancelled when even all of them could not): a cancelled request ends with its last error
/// ([`StopReason::BudgetExhausted`]). No token is created or lost: the bucket's tokens plus
/// the waiting tickets' ([`RetryBudget::reserved`]) only change by a retry sent (spent), a
/// success (refilled, up to the capacity, reserved tokens included) or a ticket dropped
/// unsent (its tokens return to the bucket).
///
/// ```
/// use std::time::Duration;
/// use overten_errors::{Advice, Basis, RetryBudget, StopReason};
/// let budget = RetryBudget::new(10, 5, 1);
/// let retry = Advice::Retry { after: Duration::from_secs(1), basis: Basis::Backoff };
/// let (_, first) = budget.reserve(retry);
/// let (_, second) = budget.reserve(retry);
/// assert_eq!((budget.tokens(), budget.reserved()), (0, 10));
/// // A third failure's retry is paid by cancelling the oldest waiting one.
/// let (advice, third) = budget.reserve(retry);
/// assert_eq!(advice, retry);
/// let first = first.unwrap();
/// assert!(first.is_cancelled());
/// assert!(!first.send(), "a cancelled retry is not sent: its request ends");
/// assert!(second.unwrap().send(), "the next oldest still goes");
/// assert!(third.is_some());
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    capacity: u32,
    retry_cost: u32,
    window_cost: u32,
    success_refill: u32,
    storm_wait_ms: (u64, u64),
    ledger: Arc<Ledger>,
}

/// The default storm wait ([`RetryBudget::storm_wait`]): 15 to 30 s, chosen by
/// `docs/retry-storms.md` (5–10 s lost the HTML 502 outages on the queue model to
/// reqwest-retry; 10–20, 15–30 and 30–60 s all won them, the brown-out's p99 latency
/// growing with the window: 19, 28 and 43 s; 15–30 s keeps a margin on both).
pub(crate) const STORM_WAIT_MS: (u64, u64) = (15_000, 30_000);

/// The bucket and the retries waiting on it, under one lock.
#[derive(Debug)]
struct Ledger {
    state: Mutex<State>,
    capacity: u32,
}

#[derive(Debug, Default)]
struct State {
    tokens: u32,
    /// Tokens held by waiting tickets (the sum of `waiting`'s costs).
    reserved: u32,
    /// Waiting tickets, oldest first.
    waiting: VecDeque<Arc<Ticket>>,
}

const WAITING: u8 = 0;
const SENT: u8 = 1;
const CANCELLED: u8 = 2;
const RETURNED: u8 = 3;

#[derive(Debug)]
struct Ticket {
    cost: u32,
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

impl Ticket {
    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }
}

impl State {
    /// Pays `cost` from the bucket, cancelling the oldest waiting tickets when the bucket
    /// alone cannot; `false` (and nothing cancelled) when even they could not. The
    /// cancelled tickets' wakers are returned, to be woken outside the lock.
    fn pay(&mut self, cost: u32, wake: &mut Vec<Waker>) -> bool {
        if self.tokens < cost {
            if self.tokens.saturating_add(self.reserved) < cost {
                return false;
            }
            while self.tokens < cost {
                let Some(oldest) = self.waiting.pop_front() else {
                    // `reserved` is the sum of the queue's costs: unreachable, but a budget
                    // that cannot pay says so rather than panicking.
                    return false;
                };
                oldest.state.store(CANCELLED, Ordering::Release);
                self.reserved -= oldest.cost;
                self.tokens += oldest.cost;
                if let Some(w) = oldest
                    .waker
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                {
                    wake.push(w);
                }
            }
        }
        self.tokens -= cost;
        true
    }
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement that can panic (none do): a
        // poisoned lock is still a good ledger.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes `ticket` from the waiting queue (under the lock) and moves it to `to`.
    fn settle(&self, ticket: &Arc<Ticket>, to: u8) -> bool {
        let mut state = self.lock();
        if ticket.state() != WAITING {
            return false;
        }
        ticket.state.store(to, Ordering::Release);
        if let Some(i) = state.waiting.iter().position(|t| Arc::ptr_eq(t, ticket)) {
            state.waiting.remove(i);
        }
        state.reserved -= ticket.cost;
        if to == RETURNED {
            state.tokens += ticket.cost;
        }
        true
    }
}

impl Default for RetryBudget {
    /// 100 tokens, 5 a retry, 20 a retry in a 503's wait window, 1 back a success, a storm's
    /// backoff 15–30 s (see [`RetryBudget`] for why).
    fn default() -> Self {
        RetryBudget::new(100, 5, 1).with_window_cost(20)
    }
}

impl Clone for RetryBudget {
    /// A new budget with the same settings and, at the moment of cloning, the same free
    /// tokens (waiting tickets stay with the original).
    fn clone(&self) -> Self {
        RetryBudget {
            capacity: self.capacity,
            retry_cost: self.retry_cost,
            window_cost: self.window_cost,
            success_refill: self.success_refill,
            storm_wait_ms: self.storm_wait_ms,
            ledger: Arc::new(Ledger {
                state: Mutex::new(State {
                    tokens: self.tokens(),
                    ..State::default()
                }),
                capacity: self.capacity,
            }),
        }
    }
}

impl RetryBudget {
    /// A full bucket of `capacity` tokens; a retry costs `retry_cost` (a retry in a 503's
    /// wait window too, unless [`RetryBudget::with_window_cost`] says otherwise), a success
    /// returns `success_refill`.
    pub fn new(capacity: u32, retry_cost: u32, success_refill: u32) -> RetryBudget {
        RetryBudget {
            capacity,
            retry_cost,
            window_cost: retry_cost,
            success_refill,
            storm_wait_ms: STORM_WAIT_MS,
            ledger: Arc::new(Ledger {
                state: Mutex::new(State {
                    tokens: capacity,
                    ..State::default()
                }),
                capacity,
            }),
        }
    }

    /// This budget with a retry in a wait window (step 8: a 503 without `Retry-After`, the
    /// API saying its capacity is exhausted) costing `cost` tokens instead of `retry_cost`.
    #[must_use]
    pub const fn with_window_cost(mut self, cost: u32) -> RetryBudget {
        self.window_cost = cost;
        self
    }

    /// Tokens a retry in a wait window costs.
    pub const fn window_cost(&self) -> u32 {
        self.window_cost
    }

    /// This budget with a storm's backoff waiting between `min` and `max` (in either order;
    /// whole milliseconds): see [`RetryBudget::storm_wait`].
    #[must_use]
    pub fn with_storm_wait(mut self, min: Duration, max: Duration) -> RetryBudget {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (a, b) = (ms(min), ms(max));
        self.storm_wait_ms = (a.min(b), a.max(b));
        self
    }

    /// The wait of a backoff retry in a storm: when paying for a retry whose basis is
    /// `backoff` leaves the bucket with fewer free tokens than a retry costs (every token
    /// spent or held by waiting retries), the retry waits at least a uniform point of this
    /// window (`docs/retry.md`, step 10). Its tokens then stay where a newer failure can take
    /// them, and the retries waiting when an outage ends are its last failures'.
    pub fn storm_wait(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.storm_wait_ms.0),
            Duration::from_millis(self.storm_wait_ms.1),
        )
    }

    /// This budget holding `tokens` (at most its capacity) instead of a full bucket.
    #[must_use]
    pub fn with_tokens(self, tokens: u32) -> RetryBudget {
        {
            let mut state = self.ledger.lock();
            state.tokens = tokens.min(self.capacity.saturating_sub(state.reserved));
        }
        self
    }

    /// The most tokens the bucket holds, waiting tickets' included.
    pub const fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Tokens a retry costs.
    pub const fn retry_cost(&self) -> u32 {
        self.retry_cost
    }

    /// Tokens a success returns.
    pub const fn success_refill(&self) -> u32 {
        self.success_refill
    }

    /// Free tokens (a gauge for metrics).
    pub fn tokens(&self) -> u32 {
        self.ledger.lock().tokens
    }

    /// Tokens held by retries paid and still waiting to be sent (a newer retry may take them).
    pub fn reserved(&self) -> u32 {
        self.ledger.lock().reserved
    }

    /// Retries holding tokens and still waiting to be sent (a free retry, `retry_cost` 0,
    /// holds none and is not counted).
    pub fn waiting(&self) -> usize {
        self.ledger.lock().waiting.len()
    }

    /// The cost of a retry on `basis`.
    pub const fn cost(&self, basis: Basis) -> u32 {
        match basis {
            Basis::WaitWindow => self.window_cost,
            _ => self.retry_cost,
        }
    }

    /// Pays for a retry on `basis` that is sent at once (no ticket): `false` when the
    /// bucket, with every waiting ticket cancelled, cannot.
    pub(crate) fn spend(&self, basis: Basis) -> Option<u32> {
        let mut wake = Vec::new();
        let left = {
            let mut state = self.ledger.lock();
            state
                .pay(self.cost(basis), &mut wake)
                .then_some(state.tokens)
        };
        wake.into_iter().for_each(Waker::wake);
        left
    }

    /// Passes `advice` through, spending tokens for a retry that is taken to be sent at
    /// once (it holds no ticket and is never cancelled); turns a retry into
    /// [`StopReason::BudgetExhausted`] when the bucket cannot pay for it, even with every
    /// waiting ticket cancelled. Other advice (resubmit, stop) costs nothing. A loop that
    /// waits before it sends should [`RetryBudget::reserve`] instead.
    pub fn admit(&self, advice: Advice) -> Advice {
        match advice {
            Advice::Retry { basis, .. } if self.spend(basis).is_none() => {
                Advice::Stop(StopReason::BudgetExhausted)
            }
            other => other,
        }
    }

    /// Passes `advice` through, paying for a retry with a [`RetryTicket`] that waits until
    /// it is sent ([`RetryTicket::send`]); when the bucket cannot pay, the oldest waiting
    /// tickets are cancelled to pay for this one, and when even all of them could not, the
    /// advice becomes [`StopReason::BudgetExhausted`] (no ticket). Other advice costs
    /// nothing and gets no ticket.
    pub fn reserve(&self, advice: Advice) -> (Advice, Option<RetryTicket>) {
        let (advice, ticket, _) = self.reserve_left(advice);
        (advice, ticket)
    }

    /// [`RetryBudget::reserve`], with the free tokens left after paying.
    pub(crate) fn reserve_left(&self, advice: Advice) -> (Advice, Option<RetryTicket>, u32) {
        let Advice::Retry { basis, .. } = advice else {
            return (advice, None, self.tokens());
        };
        let cost = self.cost(basis);
        let mut wake = Vec::new();
        let (ticket, left) = {
            let mut state = self.ledger.lock();
            let ticket = if state.pay(cost, &mut wake) {
                let ticket = Arc::new(Ticket {
                    cost,
                    state: AtomicU8::new(WAITING),
                    waker: Mutex::new(None),
                });
                state.reserved += cost;
                // A free retry holds nothing a newer one could take: it is not queued (the
                // queue stays bounded by capacity / cost).
                if cost > 0 {
                    state.waiting.push_back(Arc::clone(&ticket));
                }
                Some(ticket)
            } else {
                None
            };
            (ticket, state.tokens)
        };
        wake.into_iter().for_each(Waker::wake);
        match ticket {
            Some(ticket) => (
                advice,
                Some(RetryTicket {
                    ticket,
                    ledger: Arc::clone(&self.ledger),
                }),
                left,
            ),
            None => (Advice::Stop(StopReason::BudgetExhausted), None, left),
        }
    }

    /// Records a successful response to a first attempt: returns `success_refill` tokens,
    /// up to the capacity.
    pub fn record_success(&self) {
        self.refill(self.success_refill);
    }

    /// Records a success that came after retries: the last retry's cost comes back (as the
    /// AWS SDKs' retry quota does), so retries that work cost nothing in the end.
    pub fn record_retried_success(&self) {
        self.refill(self.retry_cost);
    }

    /// Records the success of a request that took `attempts` attempts in all.
    pub fn record_success_after(&self, attempts: u32) {
        if attempts > 1 {
            self.record_retried_success();
        } else {
            self.record_success();
        }
    }

    fn refill(&self, tokens: u32) {
        let mut state = self.ledger.lock();
        let room = self.ledger.capacity.saturating_sub(state.reserved);
        state.tokens = state
            .tokens
            .saturating_add(tokens)
            .min(room.max(state.tokens));
    }
}

/// A retry paid from a [`RetryBudget`] and waiting to be sent; see
/// [`RetryBudget::reserve`]. Send it with [`RetryTicket::send`] when its wait ends (race the
/// wait against [`RetryTicket::cancelled`]); dropped unsent, its tokens return to the bucket.
#[derive(Debug)]
pub struct RetryTicket {
    ticket: Arc<Ticket>,
    ledger: Arc<Ledger>,
}

impl RetryTicket {
    /// Tokens this retry was paid.
    pub fn cost(&self) -> u32 {
        self.ticket.cost
    }

    /// Whether a newer retry took this one's tokens: the request must end with its last
    /// error instead of being sent.
    pub fn is_cancelled(&self) -> bool {
        self.ticket.state() == CANCELLED
    }

    /// The retry is being sent: its tokens are spent and it can no longer be cancelled.
    /// `false` when it was cancelled first (do not send it).
    pub fn send(self) -> bool {
        self.ledger.settle(&self.ticket, SENT)
    }

    /// A future that completes when this retry is cancelled (never, once sent). Race it
    /// against the retry's wait to end a cancelled request at once.
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled { ticket: self }
    }
}

impl Drop for RetryTicket {
    /// A retry that was neither sent nor cancelled returns its tokens to the bucket.
    fn drop(&mut self) {
        self.ledger.settle(&self.ticket, RETURNED);
    }
}

/// The future of [`RetryTicket::cancelled`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Cancelled<'a> {
    ticket: &'a RetryTicket,
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let ticket = &self.ticket.ticket;
        if ticket.state() == CANCELLED {
            return Poll::Ready(());
        }
        *ticket.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        // Cancelled between the first look and the waker's registration: not missed.
        if ticket.state() == CANCELLED {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
