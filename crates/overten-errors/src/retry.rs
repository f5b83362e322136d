//! Retry policy as data, and one pure decision function.
//!
//! [`RetryPolicy::decide`] never reads a clock or an entropy source: "now" and a
//! [`RandomSource`] are arguments, so every decision can be reproduced in a test.

use core::fmt;
use core::time::Duration;
use std::time::SystemTime;

use crate::error::ApiError;

/// What a client should do with an error, per code.
///
/// Serialized as the catalog writes it: `{"action": "wait", "min_seconds": 30,
/// "max_seconds": 60}`, the action being [`RetryRule::action`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum RetryRule {
    /// Do not retry: the request has to change first.
    Never,
    /// Retry with exponential backoff and jitter.
    Backoff,
    /// Honor `Retry-After` (or `X-RateLimit-Reset`); back off when neither is sent.
    RetryAfter,
    /// Wait somewhere in a window before retrying; a `Retry-After` that is sent wins.
    Wait {
        /// Shortest wait, in seconds.
        min_seconds: u64,
        /// Longest wait, in seconds.
        max_seconds: u64,
    },
    /// Not a retry: resubmit the same work with `async: true` and poll `/tasks/{id}`.
    ResubmitAsync,
}

impl RetryRule {
    /// The rule's machine name, as in the catalog's `retry.action`.
    pub const fn action(self) -> &'static str {
        match self {
            RetryRule::Never => "never",
            RetryRule::Backoff => "backoff",
            RetryRule::RetryAfter => "retry_after",
            RetryRule::Wait { .. } => "wait",
            RetryRule::ResubmitAsync => "resubmit_async",
        }
    }

    /// Whether a response with this rule carries `Retry-After`.
    pub const fn retry_after_header(self) -> HeaderUse {
        match self {
            RetryRule::RetryAfter => HeaderUse::Always,
            RetryRule::Wait { .. } => HeaderUse::WhenKnown,
            RetryRule::Never | RetryRule::Backoff | RetryRule::ResubmitAsync => HeaderUse::Never,
        }
    }

    /// The rule for a code this version does not know, from its HTTP status alone.
    ///
    /// The first row of [`FALLBACK`] whose range holds the status wins; a status in none of
    /// them (1xx, 2xx, 3xx, nonsense) is [`RetryRule::Never`].
    pub fn for_status(status: u16) -> RetryRule {
        FallbackRule::find(status).map_or(RetryRule::Never, |r| r.rule)
    }
}

impl fmt::Display for RetryRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryRule::Wait {
                min_seconds,
                max_seconds,
            } => write!(f, "wait {min_seconds}–{max_seconds} s"),
            other => f.write_str(other.action()),
        }
    }
}

/// Whether a response sends a header. Closed: every header is sent always, sometimes or
/// never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderUse {
    /// On every such response.
    Always,
    /// When the server knows a value (a 503 with a known end of maintenance).
    WhenKnown,
    /// Never.
    Never,
}

/// One row of the page's general rule, used for codes this version does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackRule {
    /// First status the row covers.
    pub from: u16,
    /// Last status the row covers (inclusive).
    pub to: u16,
    /// What to do.
    pub rule: RetryRule,
    /// Why, in one line.
    pub why: &'static str,
}

impl FallbackRule {
    /// The first row that covers `status`.
    pub fn find(status: u16) -> Option<&'static FallbackRule> {
        FALLBACK.iter().find(|r| (r.from..=r.to).contains(&status))
    }
}

/// The reference page's general rule, "5xx transient, 4xx permanent except 408 and 429",
/// with 501 made permanent as the page's `not_implemented` row says. First match wins.
pub const FALLBACK: &[FallbackRule] = &[
    FallbackRule {
        from: 408,
        to: 408,
        rule: RetryRule::ResubmitAsync,
        why: "408 means the sync ceiling was hit: resubmit with async: true",
    },
    FallbackRule {
        from: 429,
        to: 429,
        rule: RetryRule::RetryAfter,
        why: "429 means rate limited: honor Retry-After",
    },
    FallbackRule {
        from: 501,
        to: 501,
        rule: RetryRule::Never,
        why: "501 means the feature is not available here: retrying will not help",
    },
    FallbackRule {
        from: 500,
        to: 599,
        rule: RetryRule::Backoff,
        why: "5xx is transient: retry with exponential backoff",
    },
    FallbackRule {
        from: 400,
        to: 499,
        rule: RetryRule::Never,
        why: "4xx is permanent: retrying without changing the request will not help",
    },
];

const NOT_AN_ERROR: &str = "the status is not an error status: nothing to retry";

/// A `Retry-After` value, in either RFC 9110 form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryAfter {
    /// `delta-seconds`. Values past `u64::MAX` saturate.
    Seconds(u64),
    /// An HTTP-date (IMF-fixdate, obsolete RFC 850 or asctime form).
    At(SystemTime),
}

/// Why a `Retry-After` value could not be read.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetryAfterError {
    /// The value is empty or only whitespace.
    #[error("Retry-After is empty")]
    Empty,
    /// The value is a negative number, which RFC 9110 does not allow.
    #[error("Retry-After is negative")]
    Negative,
    /// The value is neither delta-seconds nor an HTTP-date.
    #[error("Retry-After is neither delta-seconds nor an HTTP-date")]
    Invalid,
}

impl RetryAfter {
    /// Parses a header value: delta-seconds, or an HTTP-date in any of the three forms.
    ///
    /// ```
    /// use overten_errors::RetryAfter;
    /// assert_eq!(RetryAfter::parse("42"), Ok(RetryAfter::Seconds(42)));
    /// assert!(matches!(RetryAfter::parse("Sun, 06 Nov 1994 08:49:37 GMT"), Ok(RetryAfter::At(_))));
    /// assert!(RetryAfter::parse("-1").is_err());
    /// ```
    pub fn parse(value: &str) -> Result<RetryAfter, RetryAfterError> {
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if value.is_empty() {
            return Err(RetryAfterError::Empty);
        }
        let bytes = value.as_bytes();
        if bytes.iter().all(u8::is_ascii_digit) {
            let mut secs: u64 = 0;
            for &b in bytes {
                secs = secs.saturating_mul(10).saturating_add(u64::from(b - b'0'));
            }
            return Ok(RetryAfter::Seconds(secs));
        }
        if let Some(rest) = value.strip_prefix('-') {
            if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
                return Err(RetryAfterError::Negative);
            }
        }
        httpdate::parse_http_date(value)
            .map(RetryAfter::At)
            .map_err(|_| RetryAfterError::Invalid)
    }

    /// How long from `now` this value asks to wait; a date in the past is zero.
    pub fn delay_from(self, now: SystemTime) -> Duration {
        match self {
            RetryAfter::Seconds(s) => Duration::from_secs(s),
            RetryAfter::At(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
        }
    }
}

/// The rate-limit headers of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// `X-RateLimit-Limit`: requests allowed per minute.
    pub limit: u32,
    /// `X-RateLimit-Remaining`: requests left in this window.
    pub remaining: u32,
    /// `X-RateLimit-Reset`: when the window resets, in Unix seconds (UTC).
    pub reset: u64,
}

impl RateLimit {
    /// How long from `now` until the window resets; zero if it has already.
    pub fn reset_in(&self, now: SystemTime) -> Duration {
        let reset = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(self.reset));
        reset
            .and_then(|r| r.duration_since(now).ok())
            .unwrap_or(Duration::ZERO)
    }
}

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
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`; the caller picks the seed (a clock, a counter).
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

/// Serializes a duration as whole milliseconds (saturating).
fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A number in `[0, 1)` from 53 random bits.
#[allow(
    clippy::cast_precision_loss,
    reason = "53-bit integers convert to f64 exactly"
)]
fn unit<R: RandomSource + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The knobs of the retry decision. Every field is public; [`RetryPolicy::default`] documents
/// where each default comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The first backoff delay (before jitter).
    pub initial_delay: Duration,
    /// How much each backoff delay grows over the one before it. Values below 1 or not
    /// finite count as 1.
    pub multiplier: f64,
    /// The longest backoff delay (before jitter).
    pub max_delay: Duration,
    /// The share of each backoff delay that is random, from 0 (none) to 1 ("full jitter").
    /// The delay is drawn uniformly from `[(1 - jitter) * d, d]`.
    pub jitter: f64,
    /// The most attempts in all, the first included. Once `attempt` reaches it, stop.
    pub max_attempts: u32,
    /// The shortest wait when the server names one (`Retry-After: 0`, a date in the past,
    /// a reset already passed): never retry in a hot loop.
    pub min_wait: Duration,
    /// The longest wait a client honors. A server asking for more gets
    /// [`StopReason::WaitTooLong`] rather than a client that hangs.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
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
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(32),
            jitter: 0.5,
            max_attempts: 5,
            min_wait: Duration::from_secs(1),
            max_wait: Duration::from_secs(crate::SYNC_TIMEOUT_SECONDS),
        }
    }
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
    /// A random point in the code's documented wait window.
    WaitWindow,
}

impl Basis {
    /// Every basis.
    pub const ALL: &'static [Basis] = &[
        Basis::Backoff,
        Basis::RetryAfter,
        Basis::RateLimitReset,
        Basis::WaitWindow,
    ];

    /// A lowercase machine name, the same as its serialized form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Basis::Backoff => "backoff",
            Basis::RetryAfter => "retry_after",
            Basis::RateLimitReset => "rate_limit_reset",
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
        /// The page's "how to fix it" for a known code, or the general rule's reason.
        fix: &'static str,
    },
    /// The attempts allowed by [`RetryPolicy::max_attempts`] are spent.
    AttemptsExhausted {
        /// Attempts made.
        attempts: u32,
    },
    /// The server asked for a wait longer than [`RetryPolicy::max_wait`].
    WaitTooLong {
        /// The wait the server asked for (saturated).
        #[serde(rename = "requested_ms", serialize_with = "millis")]
        requested: Duration,
        /// The policy's maximum.
        #[serde(rename = "max_ms", serialize_with = "millis")]
        max: Duration,
    },
    /// The [`RetryBudget`] is empty: too many retries lately, so stop adding load.
    BudgetExhausted,
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
                "server asked to wait {} s, more than the {} s this client waits",
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
        /// How long to wait first.
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

impl RetryPolicy {
    /// Decides what to do after `err` ended attempt number `attempt` (1 for the first request).
    ///
    /// The rule comes from the code's row, or for an unknown code from its status
    /// ([`RetryRule::for_status`]). Server hints are the ones on `err`
    /// ([`ApiError::retry_after`], [`ApiError::rate_limit`]); `now` resolves HTTP-dates and
    /// resets; `rng` draws jitter. Pure: the same arguments give the same advice.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use overten_errors::{Advice, ApiError, ErrorCode, RetryAfter, RetryPolicy, SplitMix64};
    ///
    /// let err = ApiError::new(ErrorCode::RateLimitExceeded, "Slow down")
    ///     .with_retry_after(RetryAfter::Seconds(42));
    /// let advice = RetryPolicy::default().decide(&err, 1, SystemTime::UNIX_EPOCH, &mut SplitMix64::new(7));
    /// assert!(matches!(advice, Advice::Retry { after, .. } if after == Duration::from_secs(42)));
    /// ```
    pub fn decide<R: RandomSource + ?Sized>(
        &self,
        err: &ApiError,
        attempt: u32,
        now: SystemTime,
        rng: &mut R,
    ) -> Advice {
        let rule = err.retry_rule();
        let retrying = match rule {
            RetryRule::Never => {
                let fix = match err.code().known() {
                    Some(code) => code.fix(),
                    None => FallbackRule::find(err.status()).map_or(NOT_AN_ERROR, |r| r.why),
                };
                return Advice::Stop(StopReason::Permanent { fix });
            }
            RetryRule::ResubmitAsync => return Advice::ResubmitAsync,
            RetryRule::Backoff | RetryRule::RetryAfter | RetryRule::Wait { .. } => rule,
        };
        let attempt = attempt.max(1);
        if attempt >= self.max_attempts {
            return Advice::Stop(StopReason::AttemptsExhausted { attempts: attempt });
        }
        let retry_after = err.retry_after().map(|r| r.delay_from(now));
        match retrying {
            RetryRule::RetryAfter => {
                if let Some(wait) = retry_after {
                    return self.server_wait(wait, Basis::RetryAfter);
                }
                if let Some(rl) = err.rate_limit().filter(|rl| rl.remaining == 0) {
                    return self.server_wait(rl.reset_in(now), Basis::RateLimitReset);
                }
                self.backoff(attempt, rng)
            }
            RetryRule::Wait {
                min_seconds,
                max_seconds,
            } => match retry_after {
                Some(wait) => self.server_wait(wait, Basis::RetryAfter),
                None => Advice::Retry {
                    after: window(min_seconds, max_seconds, rng),
                    basis: Basis::WaitWindow,
                },
            },
            _ => self.backoff(attempt, rng),
        }
    }

    /// Bounds a wait the server asked for: at least `min_wait`, at most `max_wait`.
    fn server_wait(&self, wait: Duration, basis: Basis) -> Advice {
        if wait > self.max_wait {
            return Advice::Stop(StopReason::WaitTooLong {
                requested: wait,
                max: self.max_wait,
            });
        }
        Advice::Retry {
            after: wait.max(self.min_wait),
            basis,
        }
    }

    /// The jittered exponential backoff delay before attempt `attempt + 1`.
    fn backoff<R: RandomSource + ?Sized>(&self, attempt: u32, rng: &mut R) -> Advice {
        let multiplier = if self.multiplier.is_finite() && self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        let exponent = i32::try_from(attempt.saturating_sub(1).min(1024)).unwrap_or(1024);
        let cap = self.max_delay.as_secs_f64();
        let base = self.initial_delay.as_secs_f64() * multiplier.powi(exponent);
        let base = if base.is_finite() { base.min(cap) } else { cap };
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let secs = base * (1.0 - jitter * unit(rng));
        Advice::Retry {
            after: Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay),
            basis: Basis::Backoff,
        }
    }
}

/// A uniform draw from `[min, max]` seconds, both ends included, in whole milliseconds
/// (bounds swapped if given backwards).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "the draw lies in [0, span], span a u64 of milliseconds"
)]
fn window<R: RandomSource + ?Sized>(min: u64, max: u64, rng: &mut R) -> Duration {
    let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
    let lo_ms = lo.saturating_mul(1000);
    let span = hi.saturating_mul(1000).saturating_sub(lo_ms);
    // Scaling by span + 1 makes both ends reachable: a draw near 1 gives `max` itself.
    let extra = ((span.saturating_add(1) as f64) * unit(rng)) as u64;
    Duration::from_millis(lo_ms.saturating_add(extra.min(span)))
}

/// A token bucket that stops retry storms: every retry spends tokens, every success
/// returns some. Modelled on the AWS SDKs' standard retry quota (500 tokens, 5 a retry,
/// 1 back a success).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryBudget {
    capacity: u32,
    tokens: u32,
    retry_cost: u32,
    success_refill: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(500, 5, 1)
    }
}

impl RetryBudget {
    /// A full bucket of `capacity` tokens; a retry costs `retry_cost`, a success returns
    /// `success_refill`.
    pub const fn new(capacity: u32, retry_cost: u32, success_refill: u32) -> RetryBudget {
        RetryBudget {
            capacity,
            tokens: capacity,
            retry_cost,
            success_refill,
        }
    }

    /// The most tokens the bucket holds.
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

    /// Tokens left.
    pub const fn tokens(&self) -> u32 {
        self.tokens
    }

    /// Passes `advice` through, spending tokens for a retry; turns a retry into
    /// [`StopReason::BudgetExhausted`] when the bucket cannot pay for it.
    pub fn admit(&mut self, advice: Advice) -> Advice {
        match advice {
            Advice::Retry { .. } => match self.tokens.checked_sub(self.retry_cost) {
                Some(left) => {
                    self.tokens = left;
                    advice
                }
                None => Advice::Stop(StopReason::BudgetExhausted),
            },
            other => other,
        }
    }

    /// Records a successful response: returns some tokens, up to the capacity.
    pub fn record_success(&mut self) {
        self.tokens = self
            .tokens
            .saturating_add(self.success_refill)
            .min(self.capacity);
    }
}
