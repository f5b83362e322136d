//! Retry policy as data, and one pure decision function.
//!
//! [`RetryPolicy::decide`] never reads a clock or an entropy source: "now" and a
//! [`RandomSource`] are arguments, so every decision can be reproduced in a test. The
//! decision's steps, in the order the code takes them, are [`Step::ALL`]; `docs/retry.md`
//! (written by `cargo xtask docs`) describes each with the default numbers.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use std::time::SystemTime;

use crate::budget::{RetryBudget, RetryTicket};
use crate::error::ApiError;
use crate::rule::{FallbackRule, NOT_AN_ERROR, RetryRule};

/// The largest integer a JavaScript `Number` (an IEEE 754 double) holds exactly:
/// 2^53 − 1. Every duration this crate serializes is capped here, so that SDKs in any
/// language read it exactly; a capped value means "this many milliseconds or more".
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A source of uniformly distributed random bits, passed to [`RetryPolicy::decide`].
///
/// Any `FnMut() -> u64` is one; [`SplitMix64`] is a small seeded one.
pub trait RandomSource {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64;
}

impl<F: FnMut() -> u64> RandomSource for F {
    fn next_u64(&mut self) -> u64 {
        self()
    }
}

/// SplitMix64: a tiny, fast, seeded generator, good enough for jitter (not for secrets).
///
/// Seed it differently in every process (a clock, a process id, an OS random value): two
/// clients with the same seed jitter in lockstep.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`; the caller picks the seed.
    pub const fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }
}

impl RandomSource for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Whole milliseconds of `d`, saturating at `u64::MAX`.
pub(crate) fn whole_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Serializes a duration as whole milliseconds, capped at [`MAX_SAFE_INTEGER`].
fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(whole_millis(*d).min(MAX_SAFE_INTEGER))
}

/// `u = (bits >> 11) / 2^53`: a number in `[0, 1)` from the top 53 of 64 random bits.
#[allow(
    clippy::cast_precision_loss,
    reason = "53-bit integers convert to f64 exactly"
)]
pub(crate) fn unit<R: RandomSource + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The knobs of the retry decision, valid by construction: build one with
/// [`RetryPolicy::builder`] (or take [`RetryPolicy::default`]); no field can be set
/// without the checks of [`RetryPolicyBuilder::build`]. Durations are whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    initial_delay_ms: u64,
    multiplier: f64,
    max_delay_ms: u64,
    jitter: f64,
    max_attempts: u32,
    min_wait_ms: u64,
    max_wait_ms: u64,
    wait_spread: f64,
    wait_spread_max_ms: u64,
}

impl RetryPolicy {
    /// The defaults, and where they come from:
    ///
    /// - `initial_delay` 1 s, `multiplier` 2, `max_delay` 32 s: the truncated exponential
    ///   backoff that Google Cloud's client libraries and docs recommend (1, 2, 4, ... capped
    ///   at 32 s).
    /// - `jitter` 0.5: "equal jitter" from AWS's architecture note on backoff and jitter; it
    ///   spreads clients apart like full jitter but never retries near-instantly.
    /// - `max_attempts` 5: gRPC's retry policy caps `maxAttempts` at 5.
    /// - `min_wait` 1 s: the smallest whole delta-seconds above zero.
    /// - `max_wait` 300 s: the API's own sync ceiling; a wait longer than that is an outage.
    /// - `wait_spread` 0.5, `wait_spread_max` 30 s: a wait the server (or the page) names is
    ///   lengthened by a random share of up to half of it, at most 30 s, never shortened, so
    ///   that clients told the same moment (every key's rate-limit window opens together) do
    ///   not all come back in that one second. `docs/retry-storms.md` measures why.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        initial_delay_ms: 1_000,
        multiplier: 2.0,
        max_delay_ms: 32_000,
        jitter: 0.5,
        max_attempts: 5,
        min_wait_ms: 1_000,
        max_wait_ms: crate::SYNC_TIMEOUT_SECONDS * 1000,
        wait_spread: 0.5,
        wait_spread_max_ms: 30_000,
    };

    /// A builder starting from [`RetryPolicy::DEFAULT`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use overten_errors::{PolicyError, RetryPolicy};
    /// let policy = RetryPolicy::builder().max_attempts(3).max_wait(Duration::from_secs(60)).build()?;
    /// assert_eq!(policy.max_attempts(), 3);
    /// assert_eq!(RetryPolicy::builder().jitter(f64::NAN).build(), Err(PolicyError::Jitter));
    /// # Ok::<(), PolicyError>(())
    /// ```
    pub const fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder(RetryPolicy::DEFAULT)
    }

    /// A builder starting from this policy.
    pub const fn to_builder(self) -> RetryPolicyBuilder {
        RetryPolicyBuilder(self)
    }

    /// The first backoff delay (before jitter).
    pub const fn initial_delay(&self) -> Duration {
        Duration::from_millis(self.initial_delay_ms)
    }

    /// How much each backoff delay grows over the one before it (at least 1).
    pub const fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The longest backoff delay (before jitter).
    pub const fn max_delay(&self) -> Duration {
        Duration::from_millis(self.max_delay_ms)
    }

    /// The random share of each backoff delay, from 0 (none) to 1 ("full jitter").
    pub const fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The most attempts in all, the first request and any async resubmission included.
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The shortest wait when a server or the page names one (`Retry-After: 0`, a date
    /// in the past, a reset already passed): never retry in a hot loop.
    pub const fn min_wait(&self) -> Duration {
        Duration::from_millis(self.min_wait_ms)
    }

    /// The longest wait ever advised. A server asking for more gets
    /// [`StopReason::WaitTooLong`] rather than a client that hangs.
    pub const fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }

    /// The most a wait named by the server or the page is lengthened, as a share of it
    /// (in `[0, 1]`; 0 waits exactly what was named).
    pub const fn wait_spread(&self) -> f64 {
        self.wait_spread
    }

    /// The most a named wait is lengthened, whatever its length.
    pub const fn wait_spread_max(&self) -> Duration {
        Duration::from_millis(self.wait_spread_max_ms)
    }
}

impl Default for RetryPolicy {
    /// [`RetryPolicy::DEFAULT`].
    fn default() -> Self {
        RetryPolicy::DEFAULT
    }
}

/// Builds a [`RetryPolicy`]; [`build`](RetryPolicyBuilder::build) checks it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct RetryPolicyBuilder(RetryPolicy);

impl RetryPolicyBuilder {
    /// The first backoff delay (at least 1 ms, at most `max_delay`).
    pub const fn initial_delay(mut self, d: Duration) -> Self {
        self.0.initial_delay_ms = millis_of(d);
        self
    }

    /// The growth of each delay over the one before (finite, at least 1).
    pub const fn multiplier(mut self, m: f64) -> Self {
        self.0.multiplier = m;
        self
    }

    /// The longest backoff delay (at most `max_wait`).
    pub const fn max_delay(mut self, d: Duration) -> Self {
        self.0.max_delay_ms = millis_of(d);
        self
    }

    /// The random share of each backoff delay, in `[0, 1]`.
    pub const fn jitter(mut self, j: f64) -> Self {
        self.0.jitter = j;
        self
    }

    /// The most attempts in all (at least 1; 1 means never retry).
    pub const fn max_attempts(mut self, n: u32) -> Self {
        self.0.max_attempts = n;
        self
    }

    /// The floor of server-named waits (at least 1 ms, at most `max_wait`).
    pub const fn min_wait(mut self, d: Duration) -> Self {
        self.0.min_wait_ms = millis_of(d);
        self
    }

    /// The longest wait ever advised (at most [`MAX_SAFE_INTEGER`] ms).
    pub const fn max_wait(mut self, d: Duration) -> Self {
        self.0.max_wait_ms = millis_of(d);
        self
    }

    /// The most a named wait is lengthened, as a share of it, in `[0, 1]` (0: exact waits).
    pub const fn wait_spread(mut self, share: f64) -> Self {
        self.0.wait_spread = share;
        self
    }

    /// The most a named wait is lengthened (a longer wait never passes `max_wait`).
    pub const fn wait_spread_max(mut self, d: Duration) -> Self {
        self.0.wait_spread_max_ms = millis_of(d);
        self
    }

    /// Checks the policy: a typed error names the first rule it breaks.
    pub fn build(self) -> Result<RetryPolicy, PolicyError> {
        let p = self.0;
        if p.max_attempts == 0 {
            return Err(PolicyError::NoAttempts);
        }
        if p.initial_delay_ms == 0 || p.max_delay_ms == 0 || p.min_wait_ms == 0 {
            return Err(PolicyError::ZeroDelay);
        }
        if !(p.multiplier.is_finite() && p.multiplier >= 1.0) {
            return Err(PolicyError::Multiplier);
        }
        if !(0.0..=1.0).contains(&p.jitter) {
            return Err(PolicyError::Jitter);
        }
        if p.max_wait_ms > MAX_SAFE_INTEGER {
            return Err(PolicyError::MaxWaitTooLarge);
        }
        if p.initial_delay_ms > p.max_delay_ms || p.max_delay_ms > p.max_wait_ms {
            return Err(PolicyError::DelayOrder);
        }
        if p.min_wait_ms > p.max_wait_ms {
            return Err(PolicyError::WaitOrder);
        }
        if !(0.0..=1.0).contains(&p.wait_spread) {
            return Err(PolicyError::WaitSpread);
        }
        Ok(p)
    }
}

/// Whole milliseconds, saturating (`const`, for the builder).
#[allow(
    clippy::cast_possible_truncation,
    reason = "checked against u64::MAX first"
)]
const fn millis_of(d: Duration) -> u64 {
    let ms = d.as_millis();
    if ms > u64::MAX as u128 {
        u64::MAX
    } else {
        ms as u64
    }
}

/// Why a [`RetryPolicy`] cannot be built.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `max_attempts` is 0: not even the first request would be sent.
    #[error("max_attempts must be at least 1")]
    NoAttempts,
    /// A delay or `min_wait` is under one millisecond.
    #[error("initial_delay, max_delay and min_wait must each be at least 1 ms")]
    ZeroDelay,
    /// `multiplier` is below 1, infinite or NaN.
    #[error("multiplier must be a finite number of at least 1")]
    Multiplier,
    /// `jitter` is outside `[0, 1]` or NaN.
    #[error("jitter must lie in [0, 1]")]
    Jitter,
    /// `max_wait` exceeds 2^53 − 1 ms, past what JSON readers hold exactly.
    #[error("max_wait must be at most 2^53 - 1 ms")]
    MaxWaitTooLarge,
    /// Not `initial_delay <= max_delay <= max_wait`.
    #[error("delays must satisfy initial_delay <= max_delay <= max_wait")]
    DelayOrder,
    /// Not `min_wait <= max_wait`.
    #[error("min_wait must not exceed max_wait")]
    WaitOrder,
    /// `wait_spread` outside `[0, 1]` (or NaN).
    #[error("wait_spread must lie in [0, 1]")]
    WaitSpread,
}

/// Where the delay of an advised retry came from.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Computed exponential backoff with jitter.
    Backoff,
    /// The server's `Retry-After` header.
    RetryAfter,
    /// The server's `X-RateLimit-Reset` header (with no requests remaining).
    RateLimitReset,
    /// A 429 that named no usable wait: the page's default of
    /// [`RATE_LIMIT_DEFAULT_WAIT_SECONDS`](crate::RATE_LIMIT_DEFAULT_WAIT_SECONDS).
    RateLimitDefault,
    /// A random point in the rule's documented wait window.
    WaitWindow,
}

impl Basis {
    /// Every basis.
    pub const ALL: &'static [Basis] = &[
        Basis::Backoff,
        Basis::RetryAfter,
        Basis::RateLimitReset,
        Basis::RateLimitDefault,
        Basis::WaitWindow,
    ];

    /// A lowercase machine name, the same as its serialized form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Basis::Backoff => "backoff",
            Basis::RetryAfter => "retry_after",
            Basis::RateLimitReset => "rate_limit_reset",
            Basis::RateLimitDefault => "rate_limit_default",
            Basis::WaitWindow => "wait_window",
        }
    }
}

/// Why a client should stop.
///
/// Serialized with a `reason` tag: `{"reason": "wait_too_long", "requested_ms": ..., "max_ms": ...}`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum StopReason {
    /// Retrying the same request will not help; `fix` says what to do instead.
    Permanent {
        /// The page's "how to fix it" for the code that decided, or the general rule's
        /// reason when the status decided.
        fix: &'static str,
    },
    /// The attempts allowed by [`RetryPolicy::max_attempts`] are spent.
    AttemptsExhausted {
        /// Attempts made.
        attempts: u32,
    },
    /// A wait longer than [`RetryPolicy::max_wait`] was asked for.
    WaitTooLong {
        /// The wait asked for (serialized capped at [`MAX_SAFE_INTEGER`] ms).
        #[serde(rename = "requested_ms", serialize_with = "millis")]
        requested: Duration,
        /// The policy's maximum.
        #[serde(rename = "max_ms", serialize_with = "millis")]
        max: Duration,
    },
    /// The [`RetryBudget`] cannot pay for a retry: too many retries lately, so stop
    /// adding load.
    BudgetExhausted,
}

impl StopReason {
    /// Every reason's machine name, as serialized in `reason`.
    pub const NAMES: &'static [&'static str] = &[
        "permanent",
        "attempts_exhausted",
        "wait_too_long",
        "budget_exhausted",
    ];
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Permanent { fix } => write!(f, "not retryable: {fix}"),
            StopReason::AttemptsExhausted { attempts } => {
                write!(f, "gave up after {attempts} attempts")
            }
            StopReason::WaitTooLong { requested, max } => write!(
                f,
                "asked to wait {} s, more than the {} s this client waits",
                requested.as_secs(),
                max.as_secs()
            ),
            StopReason::BudgetExhausted => f.write_str("retry budget exhausted"),
        }
    }
}

/// The one action a client should take next.
///
/// Serialized with an `action` tag, as the golden fixtures write it:
/// `{"action": "retry", "after_ms": 42000, "basis": "retry_after"}`,
/// `{"action": "resubmit_async"}`, `{"action": "stop", "reason": "permanent", "fix": "..."}`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Advice {
    /// Send the same request again after `after`.
    Retry {
        /// How long to wait first (whole milliseconds).
        #[serde(rename = "after_ms", serialize_with = "millis")]
        after: Duration,
        /// Where that delay came from.
        basis: Basis,
    },
    /// Resubmit the work with `async: true` and poll `/tasks/{id}`.
    ResubmitAsync,
    /// Do not send the request again.
    Stop(StopReason),
}

impl fmt::Display for Advice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Advice::Retry { after, basis } => write!(
                f,
                "retry in {:.3} s ({})",
                after.as_secs_f64(),
                basis.as_str()
            ),
            Advice::ResubmitAsync => f.write_str("resubmit with async: true and poll /tasks/{id}"),
            Advice::Stop(reason) => write!(f, "stop: {reason}"),
        }
    }
}

/// One step of the decision, in the order [`RetryPolicy::explain`] takes them. The first
/// step that returns an [`Advice`] decides; `docs/retry.md` is written from this list.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// 1. Choose the rule: the code's row when the code is known and came with its own
    ///    status; else the status rule ([`RetryRule::for_status`]). Decides nothing.
    Rule,
    /// 2. Rule `never`: stop, permanent.
    Permanent,
    /// 3. The attempt that failed is the last one allowed: stop, attempts exhausted.
    Attempts,
    /// 4. Rule `resubmit_async`: resubmit with `async: true`.
    ResubmitAsync,
    /// 5. A valid `Retry-After`: wait what it says, bounded.
    RetryAfter,
    /// 6. Rule `retry_after` with `X-RateLimit-Remaining: 0`: wait until the reset, bounded.
    RateLimitReset,
    /// 7. Rule `retry_after` otherwise: wait the page's default, bounded.
    RateLimitDefault,
    /// 8. Rule `wait`: a uniform draw in the window, capped at `max_wait`.
    WaitWindow,
    /// 9. Rule `backoff`: exponential backoff with jitter.
    Backoff,
    /// 10. A retry must be paid from the retry budget, when the caller keeps one; a
    ///     backoff that leaves the bucket with less than one retry's cost waits the
    ///     budget's storm window at least.
    Budget,
}

impl Step {
    /// Every step, in order.
    pub const ALL: &'static [Step] = &[
        Step::Rule,
        Step::Permanent,
        Step::Attempts,
        Step::ResubmitAsync,
        Step::RetryAfter,
        Step::RateLimitReset,
        Step::RateLimitDefault,
        Step::WaitWindow,
        Step::Backoff,
        Step::Budget,
    ];

    /// The step's number, from 1.
    pub const fn number(self) -> u8 {
        match self {
            Step::Rule => 1,
            Step::Permanent => 2,
            Step::Attempts => 3,
            Step::ResubmitAsync => 4,
            Step::RetryAfter => 5,
            Step::RateLimitReset => 6,
            Step::RateLimitDefault => 7,
            Step::WaitWindow => 8,
            Step::Backoff => 9,
            Step::Budget => 10,
        }
    }

    /// A lowercase machine name, the same as its serialized form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Step::Rule => "rule",
            Step::Permanent => "permanent",
            Step::Attempts => "attempts",
            Step::ResubmitAsync => "resubmit_async",
            Step::RetryAfter => "retry_after",
            Step::RateLimitReset => "rate_limit_reset",
            Step::RateLimitDefault => "rate_limit_default",
            Step::WaitWindow => "wait_window",
            Step::Backoff => "backoff",
            Step::Budget => "budget",
        }
    }

    /// The inputs the step reads.
    pub const fn inputs(self) -> &'static [&'static str] {
        match self {
            Step::Rule => &["status", "code"],
            Step::Permanent => &["rule", "code", "status"],
            Step::Attempts => &["attempt", "max_attempts"],
            Step::ResubmitAsync => &["rule"],
            Step::RetryAfter => &[
                "Retry-After",
                "now",
                "min_wait",
                "max_wait",
                "wait_spread",
                "random",
            ],
            Step::RateLimitReset => &[
                "rule",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
                "now",
                "min_wait",
                "max_wait",
                "wait_spread",
                "random",
            ],
            Step::RateLimitDefault => &["rule", "min_wait", "max_wait", "wait_spread", "random"],
            Step::WaitWindow => &["rule", "random", "max_wait"],
            Step::Backoff => &[
                "attempt",
                "initial_delay",
                "multiplier",
                "max_delay",
                "jitter",
                "random",
            ],
            Step::Budget => &["budget", "random", "max_wait"],
        }
    }

    /// The advice the step can return.
    pub const fn returns(self) -> &'static str {
        match self {
            Step::Rule => "nothing: the next steps read the rule",
            Step::Permanent => "stop (permanent)",
            Step::Attempts => "stop (attempts_exhausted)",
            Step::ResubmitAsync => "resubmit_async",
            Step::RetryAfter => "retry (basis retry_after) or stop (wait_too_long)",
            Step::RateLimitReset => "retry (basis rate_limit_reset) or stop (wait_too_long)",
            Step::RateLimitDefault => "retry (basis rate_limit_default) or stop (wait_too_long)",
            Step::WaitWindow => "retry (basis wait_window) or stop (wait_too_long)",
            Step::Backoff => "retry (basis backoff)",
            Step::Budget => {
                "the retry (a backoff in a storm waits the budget's storm window at least), or stop (budget_exhausted)"
            }
        }
    }
}

/// An advice and the step that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What to do.
    pub advice: Advice,
    /// Which step of [`Step::ALL`] decided.
    pub step: Step,
}

impl Decision {
    /// The decision that ends a request whose retry, waiting, was cancelled so that a newer
    /// failure's retry could be paid (newest first, see [`RetryBudget`]): stop,
    /// [`StopReason::BudgetExhausted`], decided by the budget.
    pub const RETRY_CANCELLED: Decision = Decision {
        advice: Advice::Stop(StopReason::BudgetExhausted),
        step: Step::Budget,
    };
}

impl RetryPolicy {
    /// Decides what to do after `err` ended attempt number `attempt` (1 for the first
    /// request; 0 counts as 1). The steps, in order, are [`Step::ALL`], written out with
    /// every number in `docs/retry.md`. Pure: the same arguments give the same advice.
    ///
    /// The rule comes from the code's row when the code is known and came with its own
    /// status, else from the status ([`RetryRule::for_status`]). Server hints are the
    /// ones on `err` ([`ApiError::retry_after`], [`ApiError::rate_limit`]); `now` resolves
    /// HTTP-dates and resets; `rng` draws jitter (one draw, only for a window or a
    /// backoff; with a budget, one more for a storm's backoff, step 10). Keep a
    /// [`RetryBudget`] with [`RetryPolicy::explain`] or
    /// [`RetryPolicy::explain_reserving`].
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use overten_errors::{Advice, ApiError, ErrorCode, RetryAfter, RetryPolicy, SplitMix64};
    ///
    /// let err = ApiError::new(ErrorCode::RateLimitExceeded, "Slow down")
    ///     .with_retry_after(RetryAfter::Seconds(42));
    /// let advice = RetryPolicy::default().decide(&err, 1, SystemTime::UNIX_EPOCH, &mut SplitMix64::new(7));
    /// // Never earlier than named, and spread by up to half of it (`wait_spread`).
    /// assert!(matches!(advice, Advice::Retry { after, .. }
    ///     if after >= Duration::from_secs(42) && after <= Duration::from_secs(63)));
    /// ```
    pub fn decide<R: RandomSource + ?Sized>(
        &self,
        err: &ApiError,
        attempt: u32,
        now: SystemTime,
        rng: &mut R,
    ) -> Advice {
        self.explain(err, attempt, now, rng, None).advice
    }

    /// [`RetryPolicy::decide`], with the step that decided, and charging `budget` (when
    /// given) for an advised retry (step 10).
    pub fn explain<R: RandomSource + ?Sized>(
        &self,
        err: &ApiError,
        attempt: u32,
        now: SystemTime,
        rng: &mut R,
        budget: Option<&RetryBudget>,
    ) -> Decision {
        let decision = self.unbudgeted(err, attempt, now, rng);
        self.charge(budget, decision, rng)
    }

    /// [`RetryPolicy::explain`] paying an advised retry from `budget` with a [`RetryTicket`]
    /// ([`RetryBudget::reserve`]): the retry waits with it and is sent with
    /// [`RetryTicket::send`], unless a newer failure's retry took its tokens first (newest
    /// first: the request then ends with `err`).
    pub fn explain_reserving<R: RandomSource + ?Sized>(
        &self,
        err: &ApiError,
        attempt: u32,
        now: SystemTime,
        rng: &mut R,
        budget: &RetryBudget,
    ) -> (Decision, Option<RetryTicket>) {
        let decision = self.unbudgeted(err, attempt, now, rng);
        self.reserve(budget, decision, rng)
    }

    /// [`RetryPolicy::decide_transport`] paying an advised retry with a [`RetryTicket`], as
    /// [`RetryPolicy::explain_reserving`] does.
    pub fn decide_transport_reserving<R: RandomSource + ?Sized>(
        &self,
        sent: bool,
        replay_safe: bool,
        attempt: u32,
        rng: &mut R,
        budget: &RetryBudget,
    ) -> (Decision, Option<RetryTicket>) {
        let decision = self.decide_transport(sent, replay_safe, attempt, rng, None);
        self.reserve(budget, decision, rng)
    }

    /// Decides what to do when no response came back (a transport failure), after attempt
    /// number `attempt`. `docs/retry.md` ("When no response came back") writes it out:
    ///
    /// - a failure after the request was sent (a timeout or a reset while waiting for the
    ///   answer) may have been processed: unless the request is `replay_safe` (an idempotent
    ///   method, or one that carries an idempotency key) it **stops** as permanent (step 2);
    /// - then the attempts are counted (step 3);
    /// - then it backs off like a 5xx (step 9), paid from `budget` when given (step 10).
    ///
    /// A connection that was never established (`sent: false`: refused, DNS, a connect
    /// timeout) never reached the server, so it is always safe to retry.
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use overten_errors::{Advice, RetryPolicy, SplitMix64, Step};
    /// let policy = RetryPolicy::default();
    /// let refused = policy.decide_transport(false, false, 1, &mut SplitMix64::new(1), None);
    /// assert!(matches!(refused.advice, Advice::Retry { .. }));
    /// let timed_out_post = policy.decide_transport(true, false, 1, &mut SplitMix64::new(1), None);
    /// assert_eq!(timed_out_post.step, Step::Permanent);
    /// ```
    pub fn decide_transport<R: RandomSource + ?Sized>(
        &self,
        sent: bool,
        replay_safe: bool,
        attempt: u32,
        rng: &mut R,
        budget: Option<&RetryBudget>,
    ) -> Decision {
        let decision = if sent && !replay_safe {
            Decision {
                advice: Advice::Stop(StopReason::Permanent {
                    fix: NOT_REPLAY_SAFE,
                }),
                step: Step::Permanent,
            }
        } else if attempt.max(1) >= self.max_attempts {
            Decision {
                advice: Advice::Stop(StopReason::AttemptsExhausted {
                    attempts: attempt.max(1),
                }),
                step: Step::Attempts,
            }
        } else {
            Decision {
                advice: self.backoff(attempt.max(1), rng),
                step: Step::Backoff,
            }
        };
        self.charge(budget, decision, rng)
    }

    fn unbudgeted<R: RandomSource + ?Sized>(
        &self,
        err: &ApiError,
        attempt: u32,
        now: SystemTime,
        rng: &mut R,
    ) -> Decision {
        let decided = |advice, step| Decision { advice, step };
        // Step 1.
        let (rule, deciding_code) = err.deciding_rule();
        // Step 2.
        if rule == RetryRule::Never {
            let fix = match deciding_code {
                Some(code) => code.fix(),
                None => FallbackRule::find(err.status()).map_or(NOT_AN_ERROR, |r| r.why),
            };
            return decided(Advice::Stop(StopReason::Permanent { fix }), Step::Permanent);
        }
        // Step 3.
        let attempt = attempt.max(1);
        if attempt >= self.max_attempts {
            return decided(
                Advice::Stop(StopReason::AttemptsExhausted { attempts: attempt }),
                Step::Attempts,
            );
        }
        // Step 4.
        if rule == RetryRule::ResubmitAsync {
            return decided(Advice::ResubmitAsync, Step::ResubmitAsync);
        }
        // Step 5.
        if let Some(ra) = err.retry_after() {
            let wait = whole_millis(ra.delay_from(now));
            return decided(self.bounded(wait, Basis::RetryAfter, rng), Step::RetryAfter);
        }
        match rule {
            RetryRule::RetryAfter => {
                // Step 6.
                if let Some(rl) = err.rate_limit().filter(|rl| rl.remaining == 0) {
                    let wait = whole_millis(rl.reset_in(now));
                    return decided(
                        self.bounded(wait, Basis::RateLimitReset, rng),
                        Step::RateLimitReset,
                    );
                }
                // Step 7.
                let wait = crate::RATE_LIMIT_DEFAULT_WAIT_SECONDS.saturating_mul(1000);
                decided(
                    self.bounded(wait, Basis::RateLimitDefault, rng),
                    Step::RateLimitDefault,
                )
            }
            // Step 8.
            RetryRule::Wait { min_ms, max_ms } => {
                decided(self.window(min_ms, max_ms, rng), Step::WaitWindow)
            }
            // Step 9.
            _ => decided(self.backoff(attempt, rng), Step::Backoff),
        }
    }

    /// A wait named by the server or the page: more than `max_wait` stops; otherwise
    /// `base = max(wait, min_wait)`, lengthened by `min(floor((spread + 1) * u), spread)` ms
    /// with `spread = min(floor(base * wait_spread), wait_spread_max)`, and never past
    /// `max_wait`.
    fn bounded<R: RandomSource + ?Sized>(&self, wait_ms: u64, basis: Basis, rng: &mut R) -> Advice {
        if wait_ms > self.max_wait_ms {
            return Advice::Stop(StopReason::WaitTooLong {
                requested: Duration::from_millis(wait_ms),
                max: self.max_wait(),
            });
        }
        let base = wait_ms.max(self.min_wait_ms);
        Advice::Retry {
            after: Duration::from_millis(self.spread(base, rng)),
            basis,
        }
    }

    /// `base` (at most `max_wait`) lengthened by the named-wait spread, never past
    /// `max_wait`: see [`RetryPolicy::bounded`].
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "base is at most max_wait, below 2^53; the share lies in [0, 1]"
    )]
    fn spread<R: RandomSource + ?Sized>(&self, base: u64, rng: &mut R) -> u64 {
        let spread = ((base as f64 * self.wait_spread).floor() as u64).min(self.wait_spread_max_ms);
        let extra = if spread == 0 {
            0
        } else {
            (((spread + 1) as f64 * unit(rng)).floor() as u64).min(spread)
        };
        base.saturating_add(extra).min(self.max_wait_ms)
    }

    /// `lo + min(floor((span + 1) * u), span)` ms, where the window's top is capped at
    /// `max_wait` and `span = hi - lo`; a window that starts past `max_wait` stops.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "the draw lies in [0, span + 1), span below 2^53"
    )]
    fn window<R: RandomSource + ?Sized>(&self, min_ms: u64, max_ms: u64, rng: &mut R) -> Advice {
        let (lo, hi) = (min_ms.min(max_ms), min_ms.max(max_ms));
        if lo > self.max_wait_ms {
            return Advice::Stop(StopReason::WaitTooLong {
                requested: Duration::from_millis(lo),
                max: self.max_wait(),
            });
        }
        let span = hi.min(self.max_wait_ms) - lo;
        let extra = ((span + 1) as f64 * unit(rng)).floor() as u64;
        Advice::Retry {
            after: Duration::from_millis(lo + extra.min(span)),
            basis: Basis::WaitWindow,
        }
    }

    /// `base = min(max_delay, floor(initial_delay * multiplier^(attempt - 1)))` ms, then
    /// `after = floor(base * (1 - jitter * u))` ms.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "values are checked against max_delay (below 2^53) before converting back"
    )]
    fn backoff<R: RandomSource + ?Sized>(&self, attempt: u32, rng: &mut R) -> Advice {
        let exponent = i32::try_from(attempt.saturating_sub(1).min(1024)).unwrap_or(1024);
        let grown = self.initial_delay_ms as f64 * self.multiplier.powi(exponent);
        let base = if grown >= self.max_delay_ms as f64 {
            self.max_delay_ms
        } else {
            grown.floor() as u64
        };
        let after = (base as f64 * (1.0 - self.jitter * unit(rng))).floor() as u64;
        Advice::Retry {
            after: Duration::from_millis(after.min(base)),
            basis: Basis::Backoff,
        }
    }
}

impl RetryPolicy {
    /// Step 10: a retry is paid from the budget, when there is one, and a storm's backoff
    /// stretched ([`RetryBudget::storm_wait`]).
    fn charge<R: RandomSource + ?Sized>(
        &self,
        budget: Option<&RetryBudget>,
        decision: Decision,
        rng: &mut R,
    ) -> Decision {
        match (budget, decision.advice) {
            (Some(budget), Advice::Retry { basis, .. }) => match budget.spend(basis) {
                None => Decision::RETRY_CANCELLED,
                Some(left) => self.storm(budget, left, decision, rng),
            },
            _ => decision,
        }
    }

    /// Step 10 with a ticket: a retry is paid from the budget and waits with a
    /// [`RetryTicket`]; a storm's backoff is stretched.
    fn reserve<R: RandomSource + ?Sized>(
        &self,
        budget: &RetryBudget,
        decision: Decision,
        rng: &mut R,
    ) -> (Decision, Option<RetryTicket>) {
        match budget.reserve_left(decision.advice) {
            (advice, ticket, left) if advice == decision.advice => {
                (self.storm(budget, left, decision, rng), ticket)
            }
            (advice, _, _) => (
                Decision {
                    advice,
                    step: Step::Budget,
                },
                None,
            ),
        }
    }

    /// A backoff retry paid from a bucket it left with less than one retry's cost waits at
    /// least `lo + min(floor((span + 1) * u), span)` ms of the budget's storm window (its top
    /// and bottom capped at `max_wait`), `u` one more draw; the basis stays `backoff`.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "the draw lies in [0, span + 1), span below 2^53"
    )]
    fn storm<R: RandomSource + ?Sized>(
        &self,
        budget: &RetryBudget,
        left: u32,
        decision: Decision,
        rng: &mut R,
    ) -> Decision {
        match decision.advice {
            Advice::Retry {
                after,
                basis: Basis::Backoff,
            } if left < budget.retry_cost() => {
                let (min, max) = budget.storm_wait();
                let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                let lo = ms(min).min(self.max_wait_ms);
                let span = ms(max).min(self.max_wait_ms) - lo;
                let extra = (((span + 1) as f64 * unit(rng)).floor() as u64).min(span);
                Decision {
                    advice: Advice::Retry {
                        after: after.max(Duration::from_millis(lo + extra)),
                        basis: Basis::Backoff,
                    },
                    step: decision.step,
                }
            }
            _ => decision,
        }
    }
}

/// Paces a key's requests to its rate limit (`docs/retry.md`, *Pacing*), so that a client
/// does not earn a 429 once it has seen the key's window spent. One `Pacer` serves every
/// request of a key in a process (share it; [`Pacers`] keeps one per key).
///
/// By default ([`Pacer::new`]) it is in slot mode: once a window is spent, the key's
/// requests take slots one `window / X-RateLimit-Limit` apart instead of leaving together
/// at the reset:
///
/// - a response with `Remaining: 0` on a key this process uses alone (its own requests
///   spent the window: a success, or a 429 to a request sent before the success that spent
///   it had come back) puts the first slot at the reset plus a uniform point of one
///   interval;
/// - a 429 on a key seen shared (a response, a 429 included, whose used count,
///   `Limit - Remaining`, is above the attempts this process [`sent`](Pacer::sent) in that
///   window; it stays shared) puts its first slot at a uniform point of the whole next
///   window, so that the clients sharing it do not meet at the reset;
/// - a request ([`take`](Pacer::take)) takes the next slot, never before the latest reset
///   seen spent; after its wait, [`recheck`](Pacer::recheck) holds it again if its window
///   was seen spent meanwhile; a response with room ends the slots once no slot is due;
/// - when no slot is free within `max_wait`, a request waits all of `max_wait` and takes
///   no slot (a request is never paced longer, and its wait never shrinks as its slot
///   moves away); a reset further than `max_wait` starts no slots at all.
///
/// [`Pacer::hold_only`] is the previous default: a spent window holds the key until its
/// reset (spread), and every held request leaves then.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use overten_errors::{Pacer, RateLimit, RetryPolicy};
/// let (policy, now) = (RetryPolicy::default(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
/// let pacer = Pacer::new();
/// pacer.sent(now);
/// // Its own request spent a 10-a-minute window ending at 1,020 s.
/// let spent = RateLimit { limit: 10, remaining: 0, reset: 1_020 };
/// pacer.observe_response(&spent, 200, now, &policy, &mut || 0);
/// assert_eq!(pacer.take(now, &policy), Some(Duration::from_secs(20)));
/// assert_eq!(pacer.take(now, &policy), Some(Duration::from_secs(26)));
/// ```
#[derive(Debug)]
pub struct Pacer {
    /// Unix milliseconds until which requests are held (0: none).
    until_ms: AtomicU64,
    /// Slot mode (the default); `None`: the hold alone ([`Pacer::hold_only`]).
    slots: Option<std::sync::Mutex<Slots>>,
}

/// The state of a slotted [`Pacer`]: the key's requests go one per `interval` from
/// `next_ms`, and none before `spent_until_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slots {
    /// Requests are taking slots.
    active: bool,
    /// Unix ms of the next free slot.
    next_ms: u64,
    /// `window / Limit`, ms.
    interval_ms: u64,
    /// The latest reset of a window seen spent, Unix ms: no slot before it.
    spent_until_ms: u64,
    /// Seen used by others: a response's used count (`Limit - Remaining`) above this
    /// process's own attempts in that window. Sticky.
    shared: bool,
    /// The window (Unix ms / window length) of `sent`, and this process's attempts in it.
    sent_window: u64,
    sent: u64,
}

impl Slots {
    /// No window seen spent, no slot.
    const IDLE: Slots = Slots {
        active: false,
        next_ms: 0,
        interval_ms: 0,
        spent_until_ms: 0,
        shared: false,
        sent_window: 0,
        sent: 0,
    };
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new()
    }
}

/// The rate-limit window, ms (the page's per-minute limits; the gateway's windows start on
/// the Unix minute).
const WINDOW_MS: u64 = crate::RATE_LIMIT_WINDOW_SECONDS * 1000;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, whole_millis)
}

impl Pacer {
    /// A pacer in slot mode (the default: see [`Pacer`]), nothing held.
    pub const fn new() -> Pacer {
        Pacer {
            until_ms: AtomicU64::new(0),
            slots: Some(std::sync::Mutex::new(Slots::IDLE)),
        }
    }

    /// The previous default, hold mode: a spent window (any response with `Remaining: 0`)
    /// holds every request of the key until its reset, spread by one draw, and they all
    /// leave then ([`observe`](Pacer::observe), [`hold`](Pacer::hold)); [`take`](Pacer::take)
    /// and [`recheck`](Pacer::recheck) read the hold alone, [`sent`](Pacer::sent) does
    /// nothing.
    pub const fn hold_only() -> Pacer {
        Pacer {
            until_ms: AtomicU64::new(0),
            slots: None,
        }
    }

    /// Marks the key as shared by other processes (slot mode; nothing in hold mode), as if
    /// a response had reported more requests used than this process sent: a 429 then
    /// spreads the key's requests over the next window instead of starting their slots
    /// within one interval of its reset. For a key the caller knows is shared (workers of
    /// one service), and for the `pacing` fixtures' `seen_shared`.
    pub fn mark_shared(&self) {
        if let Some(mut slots) = self.slots() {
            slots.shared = true;
        }
    }

    /// Whether the key was seen shared (slot mode; never in hold mode): a response reported
    /// more of its window used than this process [`sent`](Pacer::sent) in it, or
    /// [`mark_shared`](Pacer::mark_shared) said so. Sticky. For logs and metrics (a key
    /// whose workers compete for one window), and for policies that treat a shared key's
    /// 429s apart.
    pub fn is_shared(&self) -> bool {
        self.slots().is_some_and(|s| s.shared)
    }

    /// Whether this pacer is in slot mode (the default; not [`Pacer::hold_only`]).
    pub fn is_slotted(&self) -> bool {
        self.slots.is_some()
    }

    /// Whether requests at `now_ms` may still be held: a hold not yet over, a window seen
    /// spent not yet reset, or a slot still ahead (a pacer that may not is dropped first
    /// when [`Pacers`] makes room; its slots, if any, are all due).
    fn holds_at(&self, now_ms: u64) -> bool {
        self.until_ms.load(Ordering::Acquire) > now_ms
            || self
                .slots()
                .is_some_and(|s| s.spent_until_ms > now_ms || (s.active && s.next_ms > now_ms))
    }

    fn slots(&self) -> Option<std::sync::MutexGuard<'_, Slots>> {
        self.slots
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Counts an attempt sent at `now` with this key (slot mode: to tell a shared key from
    /// one this process spends alone). Nothing in hold mode.
    pub fn sent(&self, now: SystemTime) {
        if let Some(mut slots) = self.slots() {
            let window = unix_ms(now) / WINDOW_MS;
            if slots.sent_window != window {
                slots.sent_window = window;
                slots.sent = 0;
            }
            slots.sent = slots.sent.saturating_add(1);
        }
    }

    /// Reads a response's rate-limit snapshot with its status: [`observe`](Pacer::observe)
    /// in hold mode; the rules of slot mode ([`Pacer`]) otherwise.
    pub fn observe_response<R: RandomSource + ?Sized>(
        &self,
        rate_limit: &crate::RateLimit,
        status: u16,
        now: SystemTime,
        policy: &RetryPolicy,
        rng: &mut R,
    ) {
        let Some(mut slots) = self.slots() else {
            self.observe(rate_limit, now, policy, rng);
            return;
        };
        let now_ms = unix_ms(now);
        let reset_ms = rate_limit.reset.saturating_mul(1000);
        let window = reset_ms.saturating_sub(1) / WINDOW_MS;
        let own = if window == slots.sent_window {
            slots.sent
        } else {
            0
        };
        // More used than this process sent in the window: others use the key. A 429 counts
        // too (its Remaining is 0: the whole limit used); a process that restarted within
        // the window and meets its own earlier requests' 429 is read as shared as well:
        // its next requests then spread over the next window (measured: issue 27).
        if u64::from(rate_limit.limit.saturating_sub(rate_limit.remaining)) > own {
            slots.shared = true;
        }
        if rate_limit.remaining != 0 {
            if slots.active && slots.next_ms <= now_ms {
                slots.active = false;
            }
            return;
        }
        let wait = reset_ms.saturating_sub(now_ms);
        if wait == 0 || wait > policy.max_wait_ms {
            return;
        }
        let interval = (WINDOW_MS / u64::from(rate_limit.limit.max(1))).max(1);
        let phase = if status == 429 && slots.shared {
            WINDOW_MS
        } else {
            interval
        };
        slots.spent_until_ms = slots.spent_until_ms.max(reset_ms);
        if !slots.active || slots.next_ms < reset_ms {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "a uniform point of at most one window, in ms"
            )]
            let point = ((phase as f64 * unit(rng)).floor() as u64).min(phase - 1);
            slots.next_ms = slots.next_ms.max(reset_ms + point);
        }
        slots.active = true;
        slots.interval_ms = interval;
    }

    /// How long a request about to be sent at `now` waits, taking its slot in slot mode
    /// (a hold first: [`holding`](Pacer::holding), [`observe`](Pacer::observe));
    /// [`hold`](Pacer::hold) in hold mode. `None`: sent at once.
    pub fn take(&self, now: SystemTime, policy: &RetryPolicy) -> Option<Duration> {
        if let Some(held) = self.hold(now, policy) {
            return Some(held);
        }
        let mut slots = self.slots()?;
        let now_ms = unix_ms(now);
        if !slots.active && now_ms >= slots.spent_until_ms {
            return None;
        }
        let slot = slots.next_ms.max(now_ms).max(slots.spent_until_ms);
        let left = slot - now_ms;
        if left > policy.max_wait_ms {
            // No slot within max_wait: wait all of max_wait, taking no slot (a request is
            // never paced longer, and waits never shrink as its slot moves away).
            return Some(Duration::from_millis(policy.max_wait_ms));
        }
        slots.next_ms = slot.saturating_add(slots.interval_ms);
        (left > 0).then(|| Duration::from_millis(left))
    }

    /// The most waits one request makes while pacing: its slot (or hold), then at most
    /// four more when its window was seen spent meanwhile
    /// ([`recheck_after`](Pacer::recheck_after): new slots, the last one to the window's
    /// reset).
    pub const MAX_WAITS: usize = 5;

    /// How long in all a request about to be sent at `now` waits, as a client paces it:
    /// [`take`](Pacer::take), then, at the end of each wait,
    /// [`recheck_after`](Pacer::recheck_after), at most [`MAX_WAITS`](Pacer::MAX_WAITS)
    /// waits (the clock is assumed to move by the waits alone: what the `pacing` fixtures
    /// state). `None`: sent at once.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use overten_errors::{Pacer, RetryPolicy};
    /// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    /// let pacer = Pacer::holding(now + Duration::from_secs(5));
    /// assert_eq!(pacer.wait_at(now, &RetryPolicy::default()), Some(Duration::from_secs(5)));
    /// assert_eq!(Pacer::new().wait_at(now, &RetryPolicy::default()), None);
    /// ```
    pub fn wait_at(&self, now: SystemTime, policy: &RetryPolicy) -> Option<Duration> {
        let mut wait = self.take(now, policy)?;
        let mut total = Duration::ZERO;
        for waits in 1..=Self::MAX_WAITS {
            total = total.saturating_add(wait);
            match now
                .checked_add(total)
                .and_then(|at| self.recheck_after(waits, at, policy))
            {
                Some(again) => wait = again,
                None => break,
            }
        }
        Some(total)
    }

    /// For a request whose `waits`-th pacing wait (its [`take`](Pacer::take) is the first)
    /// ended at `now`: how long it waits again, the step of every client's pacing loop.
    /// After each of the first `MAX_WAITS - 2` waits, [`recheck`](Pacer::recheck) (a new
    /// slot when its window was seen spent meanwhile); after the next to last, the time to
    /// the reset of the latest window seen spent, taking no slot (or a hold's end, the
    /// later), so that the last wait never ends inside a window this process saw spent;
    /// after the last, none: the request is sent.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use overten_errors::{Pacer, RateLimit, RetryPolicy};
    /// let (policy, now) = (RetryPolicy::default(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
    /// let pacer = Pacer::new();
    /// pacer.sent(now);
    /// pacer.observe_response(&RateLimit { limit: 10, remaining: 0, reset: 1_020 }, 200, now, &policy, &mut || 0);
    /// assert_eq!(pacer.take(now, &policy), Some(Duration::from_secs(20)));
    /// // Still inside the spent window after a wait: the next slot (26 s away); as the
    /// // next to last wait, only as far as the reset (20 s).
    /// assert_eq!(pacer.recheck_after(1, now, &policy), Some(Duration::from_secs(26)));
    /// assert_eq!(pacer.recheck_after(Pacer::MAX_WAITS - 1, now, &policy), Some(Duration::from_secs(20)));
    /// assert_eq!(pacer.recheck_after(Pacer::MAX_WAITS, now, &policy), None);
    /// ```
    pub fn recheck_after(
        &self,
        waits: usize,
        now: SystemTime,
        policy: &RetryPolicy,
    ) -> Option<Duration> {
        if waits >= Self::MAX_WAITS {
            return None;
        }
        if waits + 1 < Self::MAX_WAITS {
            return self.recheck(now, policy);
        }
        let now_ms = unix_ms(now);
        let to_reset = self
            .slots()
            .map_or(0, |slots| slots.spent_until_ms.saturating_sub(now_ms));
        let held = self.hold(now, policy).map_or(0, whole_millis);
        let wait = to_reset.max(held).min(policy.max_wait_ms);
        (wait > 0).then(|| Duration::from_millis(wait))
    }

    /// For a request whose wait from [`take`](Pacer::take) ended at `now`: how long it
    /// waits again (its window was seen spent meanwhile, or a hold came), taking a new
    /// slot only then; [`hold`](Pacer::hold) in hold mode.
    pub fn recheck(&self, now: SystemTime, policy: &RetryPolicy) -> Option<Duration> {
        let spent = self
            .slots()
            .is_some_and(|slots| unix_ms(now) < slots.spent_until_ms);
        if spent {
            self.take(now, policy)
        } else {
            self.hold(now, policy)
        }
    }

    /// A pacer (in slot mode, as [`Pacer::new`]) already holding until `until` (a hold
    /// carried over, or a fixture's earlier hold); a moment at or before the Unix epoch
    /// holds nothing.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use overten_errors::{Pacer, RetryPolicy};
    /// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    /// let pacer = Pacer::holding(now + Duration::from_secs(5));
    /// assert_eq!(pacer.hold(now, &RetryPolicy::default()), Some(Duration::from_secs(5)));
    /// assert_eq!(pacer.take(now, &RetryPolicy::default()), Some(Duration::from_secs(5)));
    /// ```
    pub fn holding(until: SystemTime) -> Pacer {
        let pacer = Pacer::new();
        pacer.until_ms.store(unix_ms(until), Ordering::Release);
        pacer
    }

    /// Reads a response's rate-limit snapshot (of any response, success or not): with
    /// `remaining` 0, the key is held until its reset plus the spread of a named wait
    /// (`policy`'s `wait_spread`, one draw); an earlier hold never shortens a later one. A
    /// reset past `max_wait` holds nothing: requests are sent and a 429 decides.
    pub fn observe<R: RandomSource + ?Sized>(
        &self,
        rate_limit: &crate::RateLimit,
        now: SystemTime,
        policy: &RetryPolicy,
        rng: &mut R,
    ) {
        if rate_limit.remaining != 0 {
            return;
        }
        let wait = whole_millis(rate_limit.reset_in(now));
        if wait == 0 || wait > policy.max_wait_ms {
            return;
        }
        let until = unix_ms(now).saturating_add(policy.spread(wait, rng));
        self.until_ms.fetch_max(until, Ordering::AcqRel);
    }

    /// How long a request sent at `now` waits first: `None` when the key is not held, or
    /// when the hold would pass `policy`'s `max_wait` (the request is then sent at once).
    pub fn hold(&self, now: SystemTime, policy: &RetryPolicy) -> Option<Duration> {
        let until = self.until_ms.load(Ordering::Acquire);
        let left = until.saturating_sub(unix_ms(now));
        (left > 0 && left <= policy.max_wait_ms).then(|| Duration::from_millis(left))
    }

    /// The moment the hold ends, for metrics (`None`: never held).
    pub fn held_until(&self) -> Option<SystemTime> {
        match self.until_ms.load(Ordering::Acquire) {
            0 => None,
            ms => SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms)),
        }
    }
}

/// One [`Pacer`] per API key (`docs/retry.md`, *Pacing*: a spent window holds *that key's*
/// requests), for a client that sends with several keys: a key whose window is spent never
/// holds another key's requests.
///
/// Keys are kept only as a 128-bit keyed hash (`SipHash` with this process's random keys):
/// never in clear, so nothing here can leak one to a log or a dump. At most
/// [`Pacers::MAX_KEYS`] keys are tracked; a new key past that drops the keys that hold
/// nothing (one pass over at most that many), and if every tracked key is holding, the new
/// key gets a pacer of its own that is not kept (it is not paced until there is room: the
/// steps still decide its 429s).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use overten_errors::{Pacers, RateLimit, RetryPolicy};
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
/// let pacers = Pacers::new();
/// let spent = RateLimit { limit: 10, remaining: 0, reset: 1_015 };
/// pacers.for_key(Some("sk_live_a"), now).observe(&spent, now, &RetryPolicy::default(), &mut || 0);
/// assert!(pacers.for_key(Some("sk_live_a"), now).hold(now, &RetryPolicy::default()).is_some());
/// assert_eq!(pacers.for_key(Some("sk_live_b"), now).hold(now, &RetryPolicy::default()), None);
/// ```
#[derive(Debug)]
pub struct Pacers {
    keyless: std::sync::Arc<Pacer>,
    keys: std::sync::Mutex<std::collections::HashMap<u128, std::sync::Arc<Pacer>>>,
    hashers: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
}

impl Default for Pacers {
    fn default() -> Self {
        Pacers::new()
    }
}

impl Pacers {
    /// The most keys tracked at once.
    pub const MAX_KEYS: usize = 1024;

    /// No key tracked; every pacer in slot mode (the default, [`Pacer::new`]).
    pub fn new() -> Pacers {
        Pacers::with_keyless(std::sync::Arc::new(Pacer::new()))
    }

    /// No key tracked; every pacer in hold mode (the previous default, [`Pacer::hold_only`]).
    pub fn hold_only() -> Pacers {
        Pacers::with_keyless(std::sync::Arc::new(Pacer::hold_only()))
    }

    /// Pacers whose requests without a key share `keyless`; each key's pacer is in
    /// `keyless`'s mode (slots, or hold: [`Pacer::hold_only`]).
    pub fn with_keyless(keyless: std::sync::Arc<Pacer>) -> Pacers {
        Pacers {
            keyless,
            keys: std::sync::Mutex::new(std::collections::HashMap::new()),
            hashers: Default::default(),
        }
    }

    fn id(&self, key: &str) -> u128 {
        use std::hash::{BuildHasher, Hasher};
        let mut a = self.hashers.0.build_hasher();
        let mut b = self.hashers.1.build_hasher();
        a.write(key.as_bytes());
        b.write(key.as_bytes());
        u128::from(a.finish()) << 64 | u128::from(b.finish())
    }

    /// The pacer of requests sent with `key` (`None`: requests without a key, which share
    /// one). `now` decides which tracked keys still hold, when room must be made.
    pub fn for_key(&self, key: Option<&str>, now: SystemTime) -> std::sync::Arc<Pacer> {
        let Some(key) = key else {
            return std::sync::Arc::clone(&self.keyless);
        };
        let id = self.id(key);
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(pacer) = keys.get(&id) {
            return std::sync::Arc::clone(pacer);
        }
        // New keys' pacers take the keyless one's mode.
        let fresh = || {
            if self.keyless.is_slotted() {
                Pacer::new()
            } else {
                Pacer::hold_only()
            }
        };
        if keys.len() >= Self::MAX_KEYS {
            let now = unix_ms(now);
            keys.retain(|_, p| p.holds_at(now));
            if keys.len() >= Self::MAX_KEYS {
                return std::sync::Arc::new(fresh());
            }
        }
        std::sync::Arc::clone(
            keys.entry(id)
                .or_insert_with(|| std::sync::Arc::new(fresh())),
        )
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// No key tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The reason a request that was sent but got no answer is not sent again.
pub const NOT_REPLAY_SAFE: &str = "the request was sent and may have been processed: it is not replayed without an idempotent method or an idempotency key";

#[cfg(test)]
mod pacers_tests {
    use super::*;
    use crate::RateLimit;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn spend(pacer: &Pacer, now: u64, reset: u64) {
        let spent = RateLimit {
            limit: 10,
            remaining: 0,
            reset,
        };
        // One attempt of its own, then its success says the window is spent: a hold in
        // hold mode, slots (the first at the reset, the draw at its low end) in slot mode.
        pacer.sent(at(now));
        pacer.observe_response(&spent, 200, at(now), &RetryPolicy::default(), &mut || 0);
    }

    #[test]
    fn a_spent_key_holds_only_its_own_requests() {
        let pacers = Pacers::new();
        let policy = RetryPolicy::default();
        spend(&pacers.for_key(Some("sk_live_a"), at(1_000)), 1_000, 1_015);
        let a = pacers.for_key(Some("sk_live_a"), at(1_000));
        assert_eq!(a.take(at(1_000), &policy), Some(Duration::from_secs(15)));
        assert_eq!(
            pacers
                .for_key(Some("sk_live_b"), at(1_000))
                .take(at(1_000), &policy),
            None
        );
        assert_eq!(
            pacers.for_key(None, at(1_000)).take(at(1_000), &policy),
            None
        );
        // The keyless pacer is one, shared by every request without a key.
        spend(&pacers.for_key(None, at(1_000)), 1_000, 1_010);
        assert!(
            pacers
                .for_key(None, at(1_000))
                .take(at(1_000), &policy)
                .is_some()
        );
        assert_eq!(
            pacers
                .for_key(Some("sk_live_b"), at(1_000))
                .take(at(1_000), &policy),
            None
        );
        assert_eq!(pacers.len(), 2, "a and b; the keyless one is not counted");
        // Two Pacers never share keys' hashes: each has its own hasher keys.
        let other = Pacers::new();
        assert_ne!(pacers.id("sk_live_a"), other.id("sk_live_a"));
        assert_eq!(pacers.id("sk_live_a"), pacers.id("sk_live_a"));
    }

    #[test]
    fn tracked_keys_are_bounded_and_only_holding_ones_are_kept_when_full() {
        let pacers = Pacers::new();
        let policy = RetryPolicy::default();
        for i in 0..Pacers::MAX_KEYS {
            spend(
                &pacers.for_key(Some(&format!("k{i}")), at(1_000)),
                1_000,
                1_000 + 10 + (i as u64 % 2) * 100,
            );
        }
        assert_eq!(pacers.len(), Pacers::MAX_KEYS);
        // Every key holds: a new one is paced by a pacer that is not kept.
        let extra = pacers.for_key(Some("new"), at(1_001));
        spend(&extra, 1_001, 1_050);
        assert_eq!(pacers.len(), Pacers::MAX_KEYS);
        assert_eq!(
            pacers
                .for_key(Some("new"), at(1_001))
                .take(at(1_001), &policy),
            None
        );
        // 20 s later half the keys no longer hold: they make room, the rest are kept.
        let later = at(1_020);
        let _ = pacers.for_key(Some("new"), later);
        assert_eq!(pacers.len(), Pacers::MAX_KEYS / 2 + 1);
        assert!(
            pacers
                .for_key(Some("k1"), later)
                .take(later, &policy)
                .is_some(),
            "a holding key is kept"
        );
    }

    #[test]
    fn a_pacer_holds_until_its_last_moment_and_not_at_it() {
        let policy = RetryPolicy::default();
        let held = Pacer::holding(at(1_000));
        assert!(held.holds_at(999_999) && !held.holds_at(1_000_000));
        assert!(
            Pacer::new().is_slotted()
                && Pacer::default().is_slotted()
                && Pacers::new().for_key(Some("k"), at(0)).is_slotted()
                && !Pacer::hold_only().is_slotted()
                && !Pacers::hold_only().for_key(Some("k"), at(0)).is_slotted()
        );
        // Slots: the window seen spent resets at 1,020 s, the first slot is then, the next
        // (after one is taken) at 1,026 s.
        let slotted = Pacer::new();
        spend(&slotted, 1_000, 1_020);
        assert!(slotted.holds_at(1_019_999) && !slotted.holds_at(1_020_000));
        assert!(slotted.take(at(1_000), &policy).is_some());
        assert!(slotted.holds_at(1_025_999) && !slotted.holds_at(1_026_000));
    }

    #[test]
    fn slotted_keys_are_kept_while_a_slot_or_a_spent_window_is_ahead() {
        let pacers = Pacers::new();
        let policy = RetryPolicy::default();
        // 1,020 s is a window's end. Odd keys spend their own window (10 a minute) and
        // take two slots (1,020 and 1,026 s; the next at 1,032 s); even keys are idle.
        for i in 0..Pacers::MAX_KEYS {
            let pacer = pacers.for_key(Some(&format!("k{i}")), at(1_000));
            assert!(pacer.is_slotted());
            if i % 2 == 1 {
                spend(&pacer, 1_000, 1_020);
                assert!(pacer.take(at(1_000), &policy).is_some());
                assert!(pacer.take(at(1_000), &policy).is_some());
            }
        }
        // Full: the idle keys make room, the slotted ones stay.
        let _ = pacers.for_key(Some("new"), at(1_001));
        assert_eq!(pacers.len(), Pacers::MAX_KEYS / 2 + 1);
        // At 1,031 s the window has reset but a slot (1,032 s) is still ahead: kept. At
        // 1,032 s every slot is due: the next full map drops them.
        for i in 0..Pacers::MAX_KEYS / 2 - 1 {
            let _ = pacers.for_key(Some(&format!("fill{i}")), at(1_001));
        }
        assert_eq!(pacers.len(), Pacers::MAX_KEYS);
        let _ = pacers.for_key(Some("one more"), at(1_031));
        assert_eq!(pacers.len(), Pacers::MAX_KEYS / 2 + 1, "slots ahead: kept");
        for i in 0..Pacers::MAX_KEYS / 2 - 1 {
            let _ = pacers.for_key(Some(&format!("fill again {i}")), at(1_031));
        }
        assert_eq!(pacers.len(), Pacers::MAX_KEYS);
        let _ = pacers.for_key(Some("last"), at(1_032));
        assert_eq!(pacers.len(), 1, "every slot due: all make room");
    }
}
