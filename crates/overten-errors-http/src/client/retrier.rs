//! One retry loop for any async runtime: policy, shared budget, random source, injectable
//! sleep.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use crate::runtime::{Sleep, process_seed};

use overten_errors::{
    Advice, ApiError, Decision, Pacer, Pacers, RandomSource, RetryBudget, RetryPolicy, RetryTicket,
    SplitMix64,
};

/// One attempt of [`Retrier::run`]: its number (the first is 1) and whether the work is
/// to be sent as an async task (`async: true`), which the loop asks for after a 408
/// `sync_timeout_upgrade_async`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The attempt's number, from 1.
    pub number: u32,
    /// Send the work with `async: true` and poll `/tasks/{id}` for its result.
    pub asynchronous: bool,
}

/// Why [`Retrier::run`] gave up: the last error and the advice that stopped the loop.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error} ({advice}, after {attempts} attempts)")]
pub struct GaveUp {
    /// The last error.
    #[source]
    pub error: ApiError,
    /// The advice that ended the loop (a stop, with its reason).
    pub advice: Advice,
    /// Attempts made.
    pub attempts: u32,
}

/// A retry loop: the core's [`RetryPolicy`], a [`RetryBudget`] shared through an `Arc`
/// (clone the `Arc` into every client of a process, so that in an outage retries stop for
/// all of them), a random source seeded per process, and an injectable [`Sleep`].
///
/// It is `Send + Sync`: share one behind an `Arc` across tasks.
pub struct Retrier<S> {
    policy: RetryPolicy,
    budget: Arc<RetryBudget>,
    pacer: Arc<Pacer>,
    pacers: Arc<Pacers>,
    rng: Mutex<SplitMix64>,
    sleep: S,
    clock: Clock,
}

/// Where a [`Retrier`] reads "now".
type Clock = Box<dyn Fn() -> SystemTime + Send + Sync>;

impl<S> std::fmt::Debug for Retrier<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retrier")
            .field("policy", &self.policy)
            .field("budget", &self.budget)
            .field("pacer", &self.pacer)
            .field("keys_paced", &self.pacers.len())
            .finish_non_exhaustive()
    }
}

impl<S: Sleep> Retrier<S> {
    /// A loop with `policy`, a fresh default budget, a per-process seed and the system clock.
    pub fn new(policy: RetryPolicy, sleep: S) -> Retrier<S> {
        Retrier {
            policy,
            budget: Arc::new(RetryBudget::default()),
            pacer: Arc::new(Pacer::new()),
            pacers: Arc::new(Pacers::new()),
            rng: Mutex::new(SplitMix64::new(process_seed())),
            sleep,
            clock: Box::new(SystemTime::now),
        }
    }

    /// Shares `budget` (the same `Arc` in every loop of a client).
    #[must_use]
    pub fn with_budget(mut self, budget: Arc<RetryBudget>) -> Retrier<S> {
        self.budget = budget;
        self
    }

    /// Shares `pacer` for the loops that name no key ([`Retrier::observe`],
    /// [`Retrier::pace`]): the same `Arc` in every loop of one API key, a spent window holds
    /// them all.
    #[must_use]
    pub fn with_pacer(mut self, pacer: Arc<Pacer>) -> Retrier<S> {
        self.pacer = pacer;
        self
    }

    /// Shares `pacers`, one pacer per API key ([`Retrier::observe_key`],
    /// [`Retrier::pace_key`], and `RetryMiddleware`), between retriers.
    #[must_use]
    pub fn with_pacers(mut self, pacers: Arc<Pacers>) -> Retrier<S> {
        self.pacers = pacers;
        self
    }

    /// Seeds the random source (for reproducible tests; production keeps the process seed).
    #[must_use]
    pub fn with_seed(self, seed: u64) -> Retrier<S> {
        Retrier {
            rng: Mutex::new(SplitMix64::new(seed)),
            ..self
        }
    }

    /// Reads "now" from `clock` instead of the system clock: a function, or a closure over
    /// a clock the caller moves (tests).
    #[must_use]
    pub fn with_clock(
        mut self,
        clock: impl Fn() -> SystemTime + Send + Sync + 'static,
    ) -> Retrier<S> {
        self.clock = Box::new(clock);
        self
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The shared budget (its `tokens()` are a gauge for metrics).
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.budget
    }

    /// The pacer of loops that name no key (its `held_until()` is a gauge for metrics).
    pub fn pacer(&self) -> &Arc<Pacer> {
        &self.pacer
    }

    /// The pacers of keyed requests, one per API key.
    pub fn pacers(&self) -> &Arc<Pacers> {
        &self.pacers
    }

    /// The pacer of requests sent with the API key `key` (`None`: [`Retrier::pacer`]).
    /// Take it once per logical request: the key itself is then no longer needed.
    pub fn pacer_for(&self, key: Option<&str>) -> Arc<Pacer> {
        match key {
            None => Arc::clone(&self.pacer),
            Some(_) => self.pacers.for_key(key, (self.clock)()),
        }
    }

    /// [`Retrier::observe`] into `pacer` (from [`Retrier::pacer_for`]). Without the
    /// response's status a spent window is read as a hold ([`Pacer::observe`], the
    /// previous default); a loop that has the status calls
    /// [`Retrier::observe_status_on`], which slot pacing needs.
    pub fn observe_on(&self, pacer: &Pacer, headers: &http::HeaderMap) {
        super::classify::observe_rate_limit(pacer, headers, &self.clock, &self.policy, &mut || {
            self.draw()
        });
    }

    /// [`Retrier::observe_on`] with the response's status: what a pacer in slot mode (the
    /// default) needs (a [`Pacer::hold_only`] pacer reads it as `observe_on` does).
    pub fn observe_status_on(
        &self,
        pacer: &Pacer,
        status: http::StatusCode,
        headers: &http::HeaderMap,
    ) {
        super::classify::observe_rate_limit_of(
            pacer,
            status,
            headers,
            &self.clock,
            &self.policy,
            &mut || self.draw(),
        );
    }

    /// Counts an attempt about to be sent with `pacer`'s key (slot mode: how a shared key is
    /// told from one this process spends alone; nothing in hold mode, no clock read).
    pub fn sent_on(&self, pacer: &Pacer) {
        if pacer.is_slotted() {
            pacer.sent((self.clock)());
        }
    }

    /// [`Retrier::pace`] on `pacer` (from [`Retrier::pacer_for`]). In slot mode the request
    /// takes its slot ([`Pacer::take`]) and, after its wait, waits again while its window
    /// was seen spent meanwhile ([`Pacer::recheck_after`]: at most four more waits, the
    /// last to the window's reset).
    pub async fn pace_on(&self, pacer: &Pacer) -> Option<Duration> {
        if !pacer.is_slotted() {
            // A key never held needs no clock read (the common case, on every request).
            pacer.held_until()?;
            let hold = pacer.hold((self.clock)(), &self.policy)?;
            self.sleep.sleep(hold).await;
            return Some(hold);
        }
        let mut wait = pacer.take((self.clock)(), &self.policy)?;
        let mut total = Duration::ZERO;
        for waits in 1..=Pacer::MAX_WAITS {
            self.sleep.sleep(wait).await;
            total = total.saturating_add(wait);
            match pacer.recheck_after(waits, (self.clock)(), &self.policy) {
                Some(again) => wait = again,
                None => break,
            }
        }
        Some(total)
    }

    /// Reads a response's `X-RateLimit-*` (of any response) for a loop that names no key:
    /// a spent window holds the next requests of [`Retrier::pacer`] ([`Pacer::observe`]).
    pub fn observe(&self, headers: &http::HeaderMap) {
        self.observe_on(&self.pacer, headers);
    }

    /// Waits while [`Retrier::pacer`] holds (`docs/retry.md`, *Pacing*); returns the wait,
    /// if any. A hold past `max_wait` is not waited.
    pub async fn pace(&self) -> Option<Duration> {
        self.pace_on(&self.pacer).await
    }

    /// [`Retrier::observe`] for a response to a request sent with the API key `key`: a
    /// spent window holds that key's requests only.
    pub fn observe_key(&self, key: Option<&str>, headers: &http::HeaderMap) {
        self.observe_on(&self.pacer_for(key), headers);
    }

    /// [`Retrier::pace`] for a request about to be sent with the API key `key`: waits only
    /// while that key is held.
    pub async fn pace_key(&self, key: Option<&str>) -> Option<Duration> {
        self.pace_on(&self.pacer_for(key)).await
    }

    fn draw(&self) -> u64 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_u64()
    }

    /// The decision for `err` after attempt `attempt`, paid from the budget.
    pub fn decide(&self, err: &ApiError, attempt: u32) -> Decision {
        let bits = self.draw();
        self.policy.explain(
            err,
            attempt,
            (self.clock)(),
            &mut move || bits,
            Some(&self.budget),
        )
    }

    /// The decision for `err` after attempt `attempt`, a retry paid with a [`RetryTicket`]
    /// (newest first: a newer failure's retry may take its tokens while it waits; wait with
    /// [`Retrier::wait_retry`]).
    pub fn decide_reserving(
        &self,
        err: &ApiError,
        attempt: u32,
    ) -> (Decision, Option<RetryTicket>) {
        let bits = self.draw();
        self.policy.explain_reserving(
            err,
            attempt,
            (self.clock)(),
            &mut move || bits,
            &self.budget,
        )
    }

    /// [`Retrier::decide_transport`], a retry paid with a [`RetryTicket`].
    pub fn decide_transport_reserving(
        &self,
        sent: bool,
        replay_safe: bool,
        attempt: u32,
    ) -> (Decision, Option<RetryTicket>) {
        let bits = self.draw();
        self.policy.decide_transport_reserving(
            sent,
            replay_safe,
            attempt,
            &mut move || bits,
            &self.budget,
        )
    }

    /// Waits `after` for a retry paid with `ticket`, and sends the ticket: `true` when the
    /// retry is to be sent, `false` when a newer retry took its tokens first (the wait ends
    /// at that moment; the request ends with its last error and
    /// [`Decision::RETRY_CANCELLED`]).
    pub async fn wait_retry(&self, after: Duration, ticket: Option<RetryTicket>) -> bool {
        let Some(ticket) = ticket else {
            self.sleep(after).await;
            return true;
        };
        let mut slept = pin!(self.sleep.sleep(after));
        let mut cancelled = pin!(ticket.cancelled());
        let woke = poll_fn(|cx| {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            slept.as_mut().poll(cx).map(|()| true)
        })
        .await;
        woke && ticket.send()
    }

    /// The decision for `err` without paying for a retry (for a request that will not be
    /// sent again whatever the decision says).
    pub fn decide_unpaid(&self, err: &ApiError, attempt: u32) -> Decision {
        let bits = self.draw();
        self.policy
            .explain(err, attempt, (self.clock)(), &mut move || bits, None)
    }

    /// [`Retrier::decide_transport`] without paying for a retry (for a request that will not
    /// be sent again whatever the decision says: a streamed body).
    pub fn decide_transport_unpaid(&self, sent: bool, replay_safe: bool, attempt: u32) -> Decision {
        let bits = self.draw();
        self.policy
            .decide_transport(sent, replay_safe, attempt, &mut move || bits, None)
    }

    /// The decision when no response came back: see [`RetryPolicy::decide_transport`].
    pub fn decide_transport(&self, sent: bool, replay_safe: bool, attempt: u32) -> Decision {
        let bits = self.draw();
        self.policy.decide_transport(
            sent,
            replay_safe,
            attempt,
            &mut move || bits,
            Some(&self.budget),
        )
    }

    /// Records a successful response after `attempts` attempts (refills the budget: 1 for a
    /// first attempt, a retry's cost after retries).
    pub fn record_success(&self, attempts: u32) {
        self.budget.record_success_after(attempts);
    }

    /// Waits `duration` with the loop's [`Sleep`].
    pub async fn sleep(&self, duration: Duration) {
        self.sleep.sleep(duration).await;
    }

    /// Runs `op` until it succeeds or the decision stops: after an error it waits what the
    /// decision says and calls `op` again; after a 408 `sync_timeout_upgrade_async` it calls
    /// `op` again at once with [`Attempt::asynchronous`] set, for `op` to submit the work
    /// as an async task and poll it (a task that ends `failed` is an `ApiError` like any
    /// other: `ApiError::from(TaskFailure)`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use overten_errors::{ApiError, ErrorCode, RetryPolicy, TaskFailure};
    /// use overten_errors_http::{Attempt, Retrier};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// // A fake API: the sync call hits the ceiling; the async task then succeeds.
    /// async fn generate(attempt: Attempt) -> Result<&'static str, ApiError> {
    ///     if attempt.asynchronous {
    ///         // POST {"async": true}, then poll GET /tasks/{id}; a failed task would be
    ///         // `Err(ApiError::from(task_failure))`.
    ///         Ok("sheet.xlsx")
    ///     } else {
    ///         Err(ApiError::from(ErrorCode::SyncTimeoutUpgradeAsync))
    ///     }
    /// }
    /// let retrier = Retrier::new(RetryPolicy::default(), |_: Duration| async {});
    /// assert_eq!(retrier.run(generate).await.unwrap(), "sheet.xlsx");
    /// # });
    /// ```
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, GaveUp>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut attempt = Attempt {
            number: 1,
            asynchronous: false,
        };
        loop {
            match op(attempt).await {
                Ok(value) => {
                    self.record_success(attempt.number);
                    return Ok(value);
                }
                Err(error) => {
                    let (decision, ticket) = self.decide_reserving(&error, attempt.number);
                    match decision.advice {
                        Advice::Retry { after, .. } => {
                            if !self.wait_retry(after, ticket).await {
                                return Err(GaveUp {
                                    error,
                                    advice: Decision::RETRY_CANCELLED.advice,
                                    attempts: attempt.number,
                                });
                            }
                        }
                        Advice::ResubmitAsync => attempt.asynchronous = true,
                        advice => {
                            return Err(GaveUp {
                                error,
                                advice,
                                attempts: attempt.number,
                            });
                        }
                    }
                    attempt.number = attempt.number.saturating_add(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_on;
    use overten_errors::{Basis, ErrorCode, StopReason};

    fn recorder() -> (
        Arc<Mutex<Vec<Duration>>>,
        impl Fn(Duration) -> std::future::Ready<()> + Send + Sync,
    ) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&log);
        (log, move |d| {
            l.lock().unwrap().push(d);
            std::future::ready(())
        })
    }

    /// A clock (Unix ms) that starts at `start_ms`, and a sleep that records each wait and
    /// moves that clock forward by it: time as a paced request sees it.
    #[allow(
        clippy::type_complexity,
        reason = "a test helper's four parts, named where used"
    )]
    fn moving_clock(
        start_ms: u64,
    ) -> (
        Arc<Mutex<Vec<Duration>>>,
        impl Fn(Duration) -> std::future::Ready<()> + Send + Sync,
        impl Fn() -> SystemTime + Send + Sync + Clone + 'static,
        Arc<std::sync::atomic::AtomicU64>,
    ) {
        use std::sync::atomic::{AtomicU64, Ordering};
        let clock = Arc::new(AtomicU64::new(start_ms));
        let (advanced, read) = (Arc::clone(&clock), Arc::clone(&clock));
        let log = Arc::new(Mutex::new(Vec::new()));
        let logged = Arc::clone(&log);
        let sleep = move |wait: Duration| {
            logged.lock().unwrap().push(wait);
            advanced.fetch_add(u64::try_from(wait.as_millis()).unwrap(), Ordering::SeqCst);
            std::future::ready(())
        };
        let now =
            move || SystemTime::UNIX_EPOCH + Duration::from_millis(read.load(Ordering::SeqCst));
        (log, sleep, now, clock)
    }

    #[test]
    fn each_key_has_its_own_pacer_and_clones_share_them() {
        let mut spent = http::HeaderMap::new();
        for (k, v) in [
            ("x-ratelimit-limit", "10"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1713312330"),
        ] {
            spent.insert(k, v.parse().unwrap());
        }
        let (log, sleep, now, _) = moving_clock(1_713_312_300_000);
        let exact = RetryPolicy::builder().wait_spread(0.0).build().unwrap();
        let r = Retrier::new(exact, sleep).with_clock(now.clone());
        r.observe_key(Some("sk_live_a"), &spent);
        assert_eq!(block_on(r.pace_key(Some("sk_live_b"))), None);
        assert_eq!(
            block_on(r.pace_key(None)),
            None,
            "no key: the keyless pacer"
        );
        assert_eq!(block_on(r.pace()), None);
        // Another retrier sharing the pacers sees the same hold; one that does not, none.
        let policy = RetryPolicy::default();
        let (_, sleep) = recorder();
        let shared = Retrier::new(RetryPolicy::default(), sleep)
            .with_clock(now.clone())
            .with_pacers(Arc::clone(r.pacers()));
        let seen = |r: &Retrier<_>| r.pacer_for(Some("sk_live_a")).hold(now(), &policy);
        assert_eq!(seen(&shared), Some(Duration::from_secs(30)));
        let (_, sleep) = recorder();
        let alone = Retrier::new(RetryPolicy::default(), sleep).with_clock(now.clone());
        assert_eq!(seen(&alone), None);
        assert_eq!(
            block_on(r.pace_key(Some("sk_live_a"))),
            Some(Duration::from_secs(30))
        );
        assert_eq!(*log.lock().unwrap(), [Duration::from_secs(30)]);
        // The keyless loop's hold holds no key.
        spent.insert("x-ratelimit-reset", "1713312345".parse().unwrap());
        r.observe(&spent);
        assert_eq!(block_on(r.pace()), Some(Duration::from_secs(15)));
        assert_eq!(block_on(r.pace_key(Some("sk_live_b"))), None);
        assert!(Arc::ptr_eq(&r.pacer_for(None), r.pacer()));
        assert!(format!("{r:?}").contains("keys_paced: 2"), "a and b");
    }

    /// Slot mode through the retrier: a clock that the sleeps move forward, two keys, and
    /// the status read with the window.
    #[test]
    fn slotted_pacers_give_a_spent_keys_requests_slots_and_leave_other_keys_alone() {
        const T0: u64 = 1_713_312_300_000; // ms; the window ends 30 s later
        let (log, sleep, now, clock) = moving_clock(T0);
        let retrier = Retrier::new(RetryPolicy::default(), sleep)
            .with_seed(7)
            .with_clock(now)
            .with_pacers(Arc::new(Pacers::new()));
        let window_to = |remaining: &str, reset: &str| {
            let mut h = http::HeaderMap::new();
            for (k, v) in [
                ("x-ratelimit-limit", "10"),
                ("x-ratelimit-remaining", remaining),
                ("x-ratelimit-reset", reset),
            ] {
                h.insert(k, v.parse().unwrap());
            }
            h
        };
        let window = |remaining: &str| window_to(remaining, "1713312330");
        let a = retrier.pacer_for(Some("sk_live_a"));
        assert!(a.is_slotted());
        // Key a's own ten requests spend its window (the last success says Remaining: 0).
        for left in (0..10).rev() {
            assert_eq!(block_on(retrier.pace_on(&a)), None);
            retrier.sent_on(&a);
            retrier.observe_status_on(&a, http::StatusCode::OK, &window(&left.to_string()));
        }
        // Its next three requests take slots 6 s apart from the reset (30 s; the first
        // within one interval of it); key b is not held at all.
        let b = retrier.pacer_for(Some("sk_live_b"));
        assert_eq!(block_on(retrier.pace_on(&b)), None);
        let first = block_on(retrier.pace_on(&a)).unwrap();
        assert!(
            first >= Duration::from_secs(30) && first < Duration::from_secs(36),
            "{first:?}"
        );
        let second = block_on(retrier.pace_on(&a)).unwrap();
        assert_eq!(
            second,
            Duration::from_secs(6),
            "one slot later, from the first's end"
        );
        assert_eq!(log.lock().unwrap().len(), 2);
        // The window the clock is in when called: it ends on the next minute.
        let next = |remaining| {
            let secs = now_of(&clock)
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            window_to(remaining, &(secs / 60 * 60 + 60).to_string())
        };
        // A 429 on a key whose ten used are this process's ten attempts in that window:
        // not shared, so slots from within one interval of the reset, one interval apart
        // (no hold that would send them together).
        let c = retrier.pacer_for(Some("sk_live_c"));
        for _ in 0..10 {
            retrier.sent_on(&c);
        }
        retrier.observe_status_on(&c, http::StatusCode::TOO_MANY_REQUESTS, &next("0"));
        assert!(!c.is_shared());
        assert_eq!(c.held_until(), None);
        let at = now_of(&clock);
        let first = c.take(at, retrier.policy()).unwrap();
        assert_eq!(
            c.take(at, retrier.policy()),
            Some(first + Duration::from_secs(6))
        );
        // Three requests of key d counted as sent explain the three used its next response
        // reports: not shared. Its 429 then reports ten used, seven not its own: shared,
        // so its requests take slots (two requests, two waits one interval apart).
        let d = retrier.pacer_for(Some("sk_live_d"));
        for _ in 0..3 {
            retrier.sent_on(&d);
        }
        retrier.observe_status_on(&d, http::StatusCode::OK, &next("7"));
        retrier.observe_status_on(&d, http::StatusCode::TOO_MANY_REQUESTS, &next("0"));
        let at = now_of(&clock);
        let first = d.take(at, retrier.policy()).unwrap();
        assert_eq!(
            d.take(at, retrier.policy()),
            Some(first + Duration::from_secs(6))
        );
    }

    /// A request on a shared key whose slot lands, each time, in a window another
    /// request's 429 shows spent before it wakes: new slots after its first three waits,
    /// then only as far as the reset, so that it is sent at a reset, never inside a window
    /// seen spent (worked by hand as `pacing.rs`'s chasing test: draws at the middle put
    /// each slot 30 s past a reset).
    #[test]
    fn a_request_chasing_spent_windows_is_sent_at_a_reset() {
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        const T0: u64 = 1_713_312_280_000; // ms; 20 s before a minute
        let clock = Arc::new(AtomicU64::new(T0));
        let pacer = Arc::new(Pacer::new());
        pacer.mark_shared();
        let policy = RetryPolicy::default();
        let half = || 1u64 << 63;
        let seen_spent = |pacer: &Pacer, at_ms: u64| {
            let reset = (at_ms / 60_000 + 1) * 60;
            let spent = overten_errors::RateLimit {
                limit: 10,
                remaining: 0,
                reset,
            };
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms);
            pacer.observe_response(&spent, 429, at, &RetryPolicy::default(), &mut { half });
        };
        seen_spent(&pacer, T0);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (logged, advanced, observed) =
            (Arc::clone(&log), Arc::clone(&clock), Arc::clone(&pacer));
        let sleeps = Arc::new(AtomicUsize::new(0));
        let sleep = move |wait: Duration| {
            logged.lock().unwrap().push(wait);
            let woke = advanced
                .fetch_add(u64::try_from(wait.as_millis()).unwrap(), Ordering::SeqCst)
                + u64::try_from(wait.as_millis()).unwrap();
            // Before each of its first four wakes, the window it wakes in is seen spent.
            if sleeps.fetch_add(1, Ordering::SeqCst) < 4 {
                seen_spent(&observed, woke - 1);
            }
            std::future::ready(())
        };
        let read = Arc::clone(&clock);
        let retrier = Retrier::new(policy, sleep)
            .with_clock(move || {
                SystemTime::UNIX_EPOCH + Duration::from_millis(read.load(Ordering::SeqCst))
            })
            .with_pacer(Arc::clone(&pacer));
        let waited = block_on(retrier.pace()).unwrap();
        let secs = |s: u64| Duration::from_secs(s);
        assert_eq!(
            *log.lock().unwrap(),
            [secs(50), secs(60), secs(60), secs(60), secs(30)]
        );
        assert_eq!(waited, secs(260));
        // Sent at T0 + 260 s: the reset of the last window seen spent, a minute boundary.
        assert_eq!((T0 + 260_000) % 60_000, 0);
        assert_eq!(clock.load(Ordering::SeqCst), T0 + 260_000);
    }

    fn now_of(clock: &std::sync::atomic::AtomicU64) -> SystemTime {
        SystemTime::UNIX_EPOCH
            + Duration::from_millis(clock.load(std::sync::atomic::Ordering::SeqCst))
    }

    #[test]
    fn only_a_spent_window_read_whole_holds_the_key() {
        fn now() -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_713_312_300)
        }
        let reset = now() + Duration::from_secs(45);
        let held = |pairs: &[(&'static str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_str(v).unwrap(),
                );
            }
            let r = Retrier::new(RetryPolicy::default(), |_| std::future::ready(()))
                .with_seed(1)
                .with_clock(now);
            r.observe(&h);
            r.pacer().held_until()
        };
        let window = |remaining: &'static str| {
            [
                ("x-ratelimit-limit", "60"),
                ("x-ratelimit-remaining", remaining),
                ("x-ratelimit-reset", "1713312345"),
            ]
        };
        for spent in ["0", " 0\t", "00"] {
            let until = held(&window(spent)).expect(spent);
            // Held until the reset, spread upward by at most half of the 45 s.
            assert!(
                until >= reset && until <= reset + Duration::from_millis(22_500),
                "{spent:?}"
            );
        }
        for not_spent in ["1", "5", "", "-0", "0x0", "99999999999999999999999"] {
            assert_eq!(held(&window(not_spent)), None, "{not_spent:?}");
        }
        assert_eq!(held(&[]), None);
        // A spent window that is not read whole (one of the three missing, a second
        // different value) holds nothing, whichever value comes first.
        assert_eq!(held(&window("0")[..2]), None);
        assert_eq!(held(&window("0")[1..]), None);
        let mut twice = window("0").to_vec();
        twice.push(("x-ratelimit-remaining", "5"));
        assert_eq!(held(&twice), None);
        let mut twice = window("5").to_vec();
        twice.push(("x-ratelimit-remaining", "0"));
        assert_eq!(held(&twice), None);
        let mut same = window("0").to_vec();
        same.push(("x-ratelimit-remaining", "0"));
        assert!(held(&same).is_some());
    }

    #[test]
    fn pace_waits_out_a_hold_and_nothing_else() {
        let (log, sleep, now, _) = moving_clock(1_000_000);
        let free = Retrier::new(RetryPolicy::default(), sleep).with_clock(now.clone());
        assert_eq!(block_on(free.pace()), None);
        assert!(log.lock().unwrap().is_empty());
        let (log, sleep, now, _) = moving_clock(1_000_000);
        let held = Retrier::new(RetryPolicy::default(), sleep)
            .with_clock(now.clone())
            .with_pacer(Arc::new(Pacer::holding(now() + Duration::from_secs(5))));
        assert_eq!(block_on(held.pace()), Some(Duration::from_secs(5)));
        assert_eq!(*log.lock().unwrap(), vec![Duration::from_secs(5)]);
        // A hold past max_wait is not waited.
        let (log, sleep, now, _) = moving_clock(1_000_000);
        let far = Retrier::new(RetryPolicy::default(), sleep)
            .with_clock(now.clone())
            .with_pacer(Arc::new(Pacer::holding(now() + Duration::from_secs(301))));
        assert_eq!(block_on(far.pace()), None);
        assert!(log.lock().unwrap().is_empty());
        // Hold mode waits once, whatever the clock says after it.
        let (log, sleep) = recorder();
        let frozen = Retrier::new(RetryPolicy::default(), sleep)
            .with_clock(|| SystemTime::UNIX_EPOCH + Duration::from_secs(1_000))
            .with_pacer(Arc::new(Pacer::hold_only()));
        frozen.pacer().observe(
            &overten_errors::RateLimit {
                limit: 10,
                remaining: 0,
                reset: 1_005,
            },
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
            &RetryPolicy::builder().wait_spread(0.0).build().unwrap(),
            &mut || 0,
        );
        assert_eq!(block_on(frozen.pace()), Some(Duration::from_secs(5)));
        assert_eq!(*log.lock().unwrap(), vec![Duration::from_secs(5)]);
    }

    #[test]
    fn a_clock_the_caller_moves_ends_a_hold() {
        use std::sync::atomic::Ordering;
        let policy = RetryPolicy::builder().wait_spread(0.0).build().unwrap();
        let (log, sleep, now, secs) = moving_clock(1_000_000);
        let r = Retrier::new(policy, sleep).with_clock(now);
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("x-ratelimit-limit", "60"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1020"),
        ] {
            h.insert(k, http::HeaderValue::from_static(v));
        }
        r.observe(&h);
        assert_eq!(block_on(r.pace()), Some(Duration::from_secs(20)));
        secs.store(1_015_000, Ordering::SeqCst);
        assert_eq!(block_on(r.pace()), Some(Duration::from_secs(5)));
        secs.store(1_020_000, Ordering::SeqCst);
        assert_eq!(block_on(r.pace()), None);
        assert_eq!(
            *log.lock().unwrap(),
            vec![Duration::from_secs(20), Duration::from_secs(5)]
        );
    }

    #[test]
    fn retries_until_success_and_sleeps_what_was_decided() {
        let (log, sleep) = recorder();
        let retrier = Retrier::new(RetryPolicy::default(), sleep).with_seed(1);
        let mut calls = 0;
        let out = block_on(retrier.run(|a| {
            calls += 1;
            let n = a.number;
            async move {
                if n < 3 {
                    Err(ApiError::from(ErrorCode::InternalError))
                } else {
                    Ok(n)
                }
            }
        }));
        assert_eq!(out.unwrap(), 3);
        assert_eq!(calls, 3);
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2);
        assert!(log[0] >= Duration::from_millis(500) && log[0] <= Duration::from_secs(1));
        assert!(log[1] >= Duration::from_secs(1) && log[1] <= Duration::from_secs(2));
        // Two retries paid, the last one's cost back on the success after them.
        assert_eq!(retrier.budget().tokens(), 100 - 2 * 5 + 5);
    }

    #[test]
    fn stops_with_the_reason() {
        let (log, sleep) = recorder();
        let retrier = Retrier::new(RetryPolicy::default(), sleep);
        let out: Result<(), _> =
            block_on(retrier.run(|_| async { Err(ApiError::from(ErrorCode::UpstreamError)) }));
        let gave_up = out.unwrap_err();
        assert_eq!(gave_up.attempts, 5);
        assert_eq!(
            gave_up.advice,
            Advice::Stop(StopReason::AttemptsExhausted { attempts: 5 })
        );
        assert_eq!(log.lock().unwrap().len(), 4);
        let out: Result<(), _> =
            block_on(retrier.run(|_| async { Err(ApiError::from(ErrorCode::Gone)) }));
        assert!(matches!(
            out.unwrap_err().advice,
            Advice::Stop(StopReason::Permanent { .. })
        ));
    }

    #[test]
    fn a_408_resubmits_async_at_once() {
        let (log, sleep) = recorder();
        let retrier = Retrier::new(RetryPolicy::default(), sleep);
        let mut seen = Vec::new();
        let out = block_on(retrier.run(|a| {
            seen.push(a);
            async move {
                if a.asynchronous {
                    Ok(())
                } else {
                    Err(ApiError::from(ErrorCode::SyncTimeoutUpgradeAsync))
                }
            }
        }));
        assert!(out.is_ok());
        assert_eq!(
            seen,
            vec![
                Attempt {
                    number: 1,
                    asynchronous: false
                },
                Attempt {
                    number: 2,
                    asynchronous: true
                }
            ]
        );
        assert!(
            log.lock().unwrap().is_empty(),
            "no wait before resubmitting"
        );
    }

    #[test]
    fn the_clock_resolves_dates() {
        let (log, sleep) = recorder();
        // Named waits exact (no spread): the clock is what is tested.
        let exact = RetryPolicy::builder().wait_spread(0.0).build().unwrap();
        let retrier = Retrier::new(exact, sleep)
            .with_clock(|| SystemTime::UNIX_EPOCH + Duration::from_secs(1000));
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1007);
        let err = ApiError::from(ErrorCode::RateLimitExceeded)
            .with_retry_after(overten_errors::RetryAfter::At(at));
        assert_eq!(
            retrier.decide(&err, 1).advice,
            Advice::Retry {
                after: Duration::from_secs(7),
                basis: Basis::RetryAfter
            }
        );
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn a_seed_reproduces_the_jitter_and_draws_vary() {
        let err = ApiError::from(ErrorCode::InternalError);
        let delays = |seed| {
            let r = Retrier::new(RetryPolicy::default(), |_: Duration| std::future::ready(()))
                .with_seed(seed);
            (0..20)
                .map(|_| r.decide_unpaid(&err, 1).advice)
                .collect::<Vec<_>>()
        };
        assert_eq!(delays(3), delays(3));
        assert_ne!(delays(3), delays(4));
        let distinct: std::collections::HashSet<_> =
            delays(3).into_iter().map(|a| format!("{a:?}")).collect();
        assert!(distinct.len() > 10, "every decision draws afresh");
        let policy = RetryPolicy::builder().max_attempts(2).build().unwrap();
        let r = Retrier::new(policy, |_: Duration| std::future::ready(()));
        assert_eq!(r.policy(), &policy);
        assert!(format!("{r:?}").starts_with("Retrier"));
    }

    #[test]
    fn a_waiting_retry_is_cancelled_by_a_newer_failure_and_ends_with_its_last_error() {
        use std::task::{Context, Poll, Waker};
        // One retry's worth of tokens; waits never end by themselves.
        let retrier = Retrier::new(RetryPolicy::default(), |_: Duration| {
            std::future::pending::<()>()
        })
        .with_budget(Arc::new(RetryBudget::new(5, 5, 1)))
        .with_seed(1);
        let failing = |code: ErrorCode, calls: Arc<Mutex<u32>>| {
            move |_: Attempt| {
                *calls.lock().unwrap() += 1;
                std::future::ready(Err::<(), _>(ApiError::new(code, "failed")))
            }
        };
        let (a_calls, b_calls) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(0)));
        let mut a = Box::pin(retrier.run(failing(ErrorCode::InternalError, Arc::clone(&a_calls))));
        let mut b = Box::pin(retrier.run(failing(ErrorCode::UpstreamError, Arc::clone(&b_calls))));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(a.as_mut().poll(&mut cx).is_pending(), "a's retry waits");
        assert_eq!(retrier.budget().reserved(), 5);
        assert!(
            b.as_mut().poll(&mut cx).is_pending(),
            "b's retry takes a's tokens"
        );
        let Poll::Ready(Err(gave_up)) = a.as_mut().poll(&mut cx) else {
            panic!("a ends once its retry is cancelled");
        };
        assert_eq!(gave_up.error.code().as_str(), "internal_error");
        assert_eq!(gave_up.advice, Advice::Stop(StopReason::BudgetExhausted));
        assert_eq!(gave_up.attempts, 1);
        assert_eq!(*a_calls.lock().unwrap(), 1, "a was not sent again");
        assert_eq!(*b_calls.lock().unwrap(), 1);
        assert_eq!(
            (retrier.budget().tokens(), retrier.budget().reserved()),
            (0, 5)
        );
        // b dropped while waiting: its tokens come back.
        drop(b);
        assert_eq!(
            (retrier.budget().tokens(), retrier.budget().reserved()),
            (5, 0)
        );
    }
}
