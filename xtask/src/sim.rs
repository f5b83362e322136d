//! A deterministic discrete-event simulation of retry storms: a fleet of clients, one API
//! with a capacity, an incident, and a retry policy per run. Pure: a seed gives the same
//! result on every machine, so `cargo xtask docs --check` guards the published figures.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, SystemTime};

use overten_errors::{
    Advice, ApiError, Code, RandomSource, RateLimit, RetryAfter, RetryBudget, RetryPolicy,
    RetryTicket, SplitMix64, Tier,
};

/// The simulated time it takes the API to answer an attempt.
pub const SERVICE_MS: u64 = 50;

/// The fleet and the API.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    /// Clients (each one process, with its own retry budget, and for the rate-limit
    /// scenarios its own API key).
    pub clients: u32,
    /// Requests each client offers per second (Poisson).
    pub rate_per_client: f64,
    /// The seed of every random draw.
    pub seed: u64,
    /// The queue model's depth: the longest it holds work, in ms of service at capacity.
    pub queue_ms: u64,
}

impl Fleet {
    /// Requests offered per second by the whole fleet.
    pub fn offered(&self) -> f64 {
        f64::from(self.clients) * self.rate_per_client
    }
}

/// What goes wrong, and when (times in seconds from the start of the run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Incident {
    /// Every attempt fails: 503 `service_unavailable`, or (`html`) a proxy's HTML 502.
    Outage {
        /// Start.
        at: u64,
        /// Length.
        secs: u64,
        /// A proxy's HTML 502 with no code instead of the API's 503.
        html: bool,
    },
    /// A share of attempts fails with 500 `internal_error`.
    Brownout {
        /// Start.
        at: u64,
        /// Length.
        secs: u64,
        /// The share of attempts that fail.
        share: f64,
    },
    /// The API's capacity drops; beyond capacity goodput collapses (the metastable case).
    Overload {
        /// Start.
        at: u64,
        /// Length.
        secs: u64,
        /// The capacity left, as a share of normal.
        factor: f64,
    },
    /// Per-key, per-minute limits of a tier for the whole run (429 with `Retry-After`).
    RateLimit {
        /// The tier.
        tier: Tier,
        /// One key for every client (a service whose workers share one API key), instead
        /// of a key per client.
        shared: bool,
    },
    /// A key per client, its tier free, pro and enterprise in turn, each client offering
    /// 1.25× its key's limit (the scenario's `rate_per_client` is ignored).
    MixedTiers,
}

impl Incident {
    /// The tier of `client`'s key, in a rate-limit scenario.
    fn tier(self, client: u32) -> Option<Tier> {
        match self {
            Incident::RateLimit { tier, .. } => Some(tier),
            Incident::MixedTiers => Some(Tier::ALL[client as usize % Tier::ALL.len()]),
            _ => None,
        }
    }

    /// Whether every client shares one key.
    pub fn shared(self) -> bool {
        matches!(self, Incident::RateLimit { shared: true, .. })
    }
}

/// The shared-key scenarios' demand, as a multiple of the key's limit (at the page's 100
/// clients: 0.15/min each on a free key, 0.9/min on a pro key).
pub const SHARED_DEMAND: f64 = 1.5;

/// A mixed fleet's demand, as a multiple of each key's limit.
const MIXED_DEMAND: f64 = 1.25;

/// One scenario of `docs/retry-storms.md`.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its short name (file names).
    pub name: String,
    /// Its title.
    pub title: String,
    /// The incident.
    pub incident: Incident,
    /// Requests per second each client offers (overrides the fleet's).
    pub rate_per_client: f64,
    /// The API's normal capacity, as a multiple of the fleet's offered rate.
    pub headroom: f64,
    /// Seconds during which requests arrive; the run goes on 120 s more for the drain.
    pub horizon: u64,
}

impl Scenario {
    /// A hard outage of `secs` from 60 s into the run: 503 `service_unavailable`, or
    /// (`html`) a proxy's HTML 502.
    pub fn outage(secs: u64, html: bool) -> Scenario {
        let (name, title) = if html {
            (
                format!("outage-html-{secs}"),
                format!("Hard outage, {secs} s of HTML 502 from a proxy"),
            )
        } else {
            (
                format!("outage-{secs}"),
                format!("Hard outage, {secs} s of 503 service_unavailable"),
            )
        };
        Scenario {
            name,
            title,
            incident: Incident::Outage { at: 60, secs, html },
            rate_per_client: 1.0,
            headroom: 1.5,
            horizon: 60 + secs + 240,
        }
    }

    /// Capacity down to 40% for `secs` from 60 s into the run.
    pub fn overload(secs: u64) -> Scenario {
        Scenario {
            name: format!("overload-{secs}"),
            title: format!("Overload, capacity drops to 40% for {secs} s"),
            incident: Incident::Overload {
                at: 60,
                secs,
                factor: 0.4,
            },
            rate_per_client: 1.0,
            headroom: 1.25,
            horizon: 420,
        }
    }

    /// A shared-key scenario at another load: demand `demand` times the key's limit (the
    /// page's is [`SHARED_DEMAND`]) on an API `capacity` times as large as the page's (in
    /// requests a second, whatever the demand). Named after the page's scenario, with
    /// `-demand-{demand}x` and `-capacity-{headroom}x` where they differ from it.
    #[must_use]
    pub fn shared_at(&self, demand: f64, capacity: f64) -> Scenario {
        let headroom = self.headroom * capacity * SHARED_DEMAND / demand;
        let mut name = self.name.clone();
        #[allow(clippy::float_cmp, reason = "constants compared with themselves")]
        if demand != SHARED_DEMAND {
            name = format!("{name}-demand-{demand:.1}x");
        }
        #[allow(clippy::float_cmp, reason = "constants compared with themselves")]
        if capacity != 1.0 {
            name = format!("{name}-capacity-{headroom}x");
        }
        Scenario {
            name,
            rate_per_client: self.rate_per_client * demand / SHARED_DEMAND,
            headroom,
            ..self.clone()
        }
    }

    /// When the trigger ends (none for rate limits).
    pub fn trigger_end(&self) -> Option<u64> {
        match self.incident {
            Incident::Outage { at, secs, .. }
            | Incident::Brownout { at, secs, .. }
            | Incident::Overload { at, secs, .. } => Some(at + secs),
            Incident::RateLimit { .. } | Incident::MixedTiers => None,
        }
    }
}

/// How the API behaves past its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerModel {
    /// Goodput collapses with the previous second's load: past capacity, each attempt
    /// succeeds with probability `(capacity / load)^2` (metastable failure).
    Collapse,
    /// A bounded queue: the API serves `capacity` attempts a second in arrival order, queues
    /// up to 2 s of work and sheds the rest at once with 503 `service_unavailable`.
    Queue,
}

impl ServerModel {
    /// Both, in table order.
    pub const ALL: [ServerModel; 2] = [ServerModel::Collapse, ServerModel::Queue];

    /// Its short name.
    pub fn name(self) -> &'static str {
        match self {
            ServerModel::Collapse => "collapse",
            ServerModel::Queue => "queue",
        }
    }
}

/// The page's queue depth: the longest the bounded queue holds work, in ms of service at
/// capacity ([`Fleet::queue_ms`]; the held-out runs vary it).
pub const QUEUE_MS: u64 = 2000;

/// Every scenario of `docs/retry-storms.md`: outages of 15 to 300 s (and one of a proxy's HTML
/// 502), overloads of 30 to 60 s, a brown-out, and per-key rate limits with demand over and
/// under the limit.
#[allow(clippy::too_many_lines, reason = "one scenario after another")]
pub fn scenarios() -> Vec<Scenario> {
    let mut out = Vec::new();
    for secs in [15, 30, 60, 120, 300] {
        out.push(Scenario::outage(secs, false));
    }
    out.push(Scenario::outage(60, true));
    for secs in [30, 45, 60] {
        out.push(Scenario::overload(secs));
    }
    out.push(Scenario {
        name: "brownout".into(),
        title: "Brown-out, 30% of requests fail with 500 for 5 minutes".into(),
        incident: Incident::Brownout {
            at: 60,
            secs: 300,
            share: 0.3,
        },
        rate_per_client: 1.0,
        headroom: 1.5,
        horizon: 480,
    });
    for (name, title, tier, per_minute) in [
        (
            "rate-limit-free-over",
            "Rate limits, free tier (10/min per key), each client offering 15/min",
            Tier::Free,
            15.0,
        ),
        (
            "rate-limit-free-under",
            "Rate limits, free tier (10/min per key), each client offering 8/min",
            Tier::Free,
            8.0,
        ),
        (
            "rate-limit-pro-over",
            "Rate limits, pro tier (60/min per key), each client offering 75/min",
            Tier::Pro,
            75.0,
        ),
        (
            "rate-limit-pro-under",
            "Rate limits, pro tier (60/min per key), each client offering 50/min",
            Tier::Pro,
            50.0,
        ),
    ] {
        out.push(Scenario {
            name: name.into(),
            title: title.into(),
            incident: Incident::RateLimit {
                tier,
                shared: false,
            },
            rate_per_client: per_minute / 60.0,
            headroom: 4.0,
            horizon: 300,
        });
    }
    // One key shared by every client (the page's 100 clients: 15/min and 90/min in all,
    // 1.5x the key's limit), each client pacing itself on what its own responses say.
    for (name, title, tier, per_minute_each) in [
        (
            "rate-limit-free-shared",
            "Rate limits, one free key (10/min) shared by every client, each offering 0.15/min",
            Tier::Free,
            0.15,
        ),
        (
            "rate-limit-pro-shared",
            "Rate limits, one pro key (60/min) shared by every client, each offering 0.9/min",
            Tier::Pro,
            0.9,
        ),
    ] {
        out.push(Scenario {
            name: name.into(),
            title: title.into(),
            incident: Incident::RateLimit { tier, shared: true },
            rate_per_client: per_minute_each / 60.0,
            headroom: 4.0,
            horizon: 300,
        });
    }
    out
}

/// A response as a client sees it.
#[derive(Debug, Clone, Copy)]
struct Resp {
    status: u16,
    code: Option<&'static str>,
    retry_after: Option<u64>,
    rate_limit: Option<RateLimit>,
}

/// A retry policy, as each peer implements its published defaults.
trait Policy {
    /// The delay before the next attempt, or `None` to give up, after `attempts` attempts.
    fn next(
        &mut self,
        resp: &Resp,
        attempts: u32,
        now_ms: u64,
        rng: &mut SplitMix64,
    ) -> Option<u64>;
    /// A request succeeded after `attempts` attempts.
    fn success(&mut self, attempts: u32);
    /// Reads any response's rate-limit snapshot (for pacing).
    fn observe(&mut self, _resp: &Resp, _now_ms: u64, _rng: &mut SplitMix64) {}
    /// How long a request about to be sent at `now_ms` is held first (pacing).
    fn hold(&mut self, _now_ms: u64, _rng: &mut SplitMix64) -> Option<u64> {
        None
    }
    /// The most pacing waits a request makes before it is sent: its hold, then
    /// [`Policy::recheck`] at the end of each wait while that holds it again.
    fn max_waits(&self) -> u8 {
        1
    }
    /// For a request at the end of its `waits`-th pacing wait: hold it again (a window it
    /// would land in is known spent).
    fn recheck(&mut self, waits: u8, now_ms: u64, rng: &mut SplitMix64) -> Option<u64> {
        let _ = (waits, now_ms, rng);
        None
    }
    /// The ticket of the retry `next` just advised, when the budget pays newest first.
    fn ticket(&mut self) -> Option<RetryTicket> {
        None
    }
    /// An attempt goes out at `now_ms`.
    fn sent(&mut self, _now_ms: u64) {}
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "delays are small positive milliseconds"
)]
fn ms(x: f64) -> u64 {
    x.max(0.0).round() as u64
}

fn unit(rng: &mut SplitMix64) -> f64 {
    #[allow(
        clippy::cast_precision_loss,
        reason = "53-bit integers convert exactly"
    )]
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    u
}

/// This workspace: `RetryPolicy::default()`, with or without a per-client `RetryBudget`.
#[allow(
    clippy::struct_excessive_bools,
    reason = "each switch is one variant's departure from the default"
)]
struct Ours {
    policy: RetryPolicy,
    budget: Option<RetryBudget>,
    /// The client's key's pacer (`docs/retry.md`, *Pacing*): the default's slot mode, or
    /// hold mode for the variants that model the previous default or their own pacing.
    pacer: overten_errors::Pacer,
    /// Whether a success after retries returns the retry's cost (this workspace's rule
    /// since the simulation; the previous default returned 1).
    refund: bool,
    /// A variant under study (issue 27, item 3), not the default: a spent window's requests
    /// (held by pacing, or retried after a 429) go at a uniform point of the next window
    /// rather than at its opening plus at most 30 s.
    window_spread: bool,
    /// The variant's hold, in Unix ms.
    held_until: u64,
    /// Retries wait with a ticket a newer retry may take (newest first, the default since
    /// issue 27); `false`: paid at once, never cancelled (the previous default).
    newest_first: bool,
    /// The ticket of the retry last advised.
    ticket: Option<RetryTicket>,
    /// A 429 on a key the pacer saw shared is retried as any 429 (the default); `false`:
    /// it ends the request (a variant, to measure what those retries cost the window).
    retry_shared_429: bool,
}

/// One window of the page's rate limits, in ms.
const WINDOW_MS: f64 = 60_000.0;

impl Policy for Ours {
    fn next(&mut self, r: &Resp, attempts: u32, now_ms: u64, rng: &mut SplitMix64) -> Option<u64> {
        if r.status == 429 && !self.retry_shared_429 {
            // The client reads this response before it decides (its arrival reads it again,
            // which changes nothing more: the window is already recorded).
            self.observe(r, now_ms, rng);
            if self.pacer.is_shared() {
                return None;
            }
        }
        let code = r.code.map_or(Code::Missing, Code::parse);
        let mut err = ApiError::received(code, r.status, "simulated");
        if let Some(s) = r.retry_after {
            err.set_retry_after(RetryAfter::Seconds(s));
        }
        if let Some(rl) = r.rate_limit {
            err.set_rate_limit(rl);
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms);
        let advice = match &self.budget {
            Some(budget) if self.newest_first => {
                let (decision, ticket) = self
                    .policy
                    .explain_reserving(&err, attempts, now, rng, budget);
                self.ticket = ticket;
                decision.advice
            }
            budget => {
                self.policy
                    .explain(&err, attempts, now, rng, budget.as_ref())
                    .advice
            }
        };
        match advice {
            Advice::Retry { after, .. } => {
                let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                match r
                    .rate_limit
                    .filter(|rl| self.window_spread && rl.remaining == 0)
                {
                    Some(rl) => {
                        let to_reset = (rl.reset * 1000).saturating_sub(now_ms);
                        Some(to_reset + ms(unit(rng) * WINDOW_MS))
                    }
                    None => Some(after),
                }
            }
            _ => None,
        }
    }
    fn success(&mut self, attempts: u32) {
        if let Some(b) = &self.budget {
            if self.refund {
                b.record_success_after(attempts);
            } else {
                b.record_success();
            }
        }
    }
    fn observe(&mut self, r: &Resp, now_ms: u64, rng: &mut SplitMix64) {
        let Some(rl) = r.rate_limit else { return };
        if self.window_spread {
            let reset = rl.reset * 1000;
            // One draw per spent window: a later hold in the same window stays.
            if rl.remaining == 0 && reset > now_ms && self.held_until < reset {
                self.held_until = reset + ms(unit(rng) * WINDOW_MS);
            }
            return;
        }
        // The library's reading: slots by default, the hold in hold mode.
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms);
        self.pacer
            .observe_response(&rl, r.status, now, &self.policy, rng);
    }
    fn ticket(&mut self) -> Option<RetryTicket> {
        self.ticket.take()
    }
    fn sent(&mut self, now_ms: u64) {
        self.pacer
            .sent(SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms));
    }
    fn max_waits(&self) -> u8 {
        // As the library's `Retrier::pace_on`: up to `Pacer::MAX_WAITS` in slot mode, one
        // wait (the hold) in hold mode.
        if self.pacer.is_slotted() && !self.window_spread {
            u8::try_from(overten_errors::Pacer::MAX_WAITS).unwrap_or(u8::MAX)
        } else {
            1
        }
    }
    fn recheck(&mut self, waits: u8, now_ms: u64, _rng: &mut SplitMix64) -> Option<u64> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms);
        self.pacer
            .recheck_after(usize::from(waits), now, &self.policy)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    fn hold(&mut self, now_ms: u64, _rng: &mut SplitMix64) -> Option<u64> {
        if self.window_spread {
            return (self.held_until > now_ms).then(|| self.held_until - now_ms);
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms);
        self.pacer
            .take(now, &self.policy)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The AWS SDK for Rust (smithy-rs `release-2026-08-21`, aws-smithy-runtime 1.14.0), standard
/// mode, retry behaviour 2.0 (the default), which a Rust user gets: 3 attempts, full jitter
/// `U * min(1 s * 2^(n-1), 20 s)`, a 500-token quota per partition; a 500, 502, 503 or 504 is
/// a *transient* error and costs 10 tokens (`LEGACY_RETRY_TIMEOUT_COST`; botocore charges 5);
/// a success after retries returns the last retry's cost, a first-attempt success 1; a 429
/// whose code is not in AWS's throttling list is not retried; `Retry-After` is not read
/// (smithy-rs reads `x-amz-retry-after` only).
struct Aws {
    tokens: u32,
    last_cost: u32,
}

/// smithy-rs' cost of a retry after a transient error (`LEGACY_RETRY_TIMEOUT_COST`).
const AWS_TRANSIENT_COST: u32 = 10;

impl Policy for Aws {
    fn next(&mut self, r: &Resp, attempts: u32, _: u64, rng: &mut SplitMix64) -> Option<u64> {
        if attempts >= 3
            || ![500, 502, 503, 504].contains(&r.status)
            || self.tokens < AWS_TRANSIENT_COST
        {
            return None;
        }
        self.tokens -= AWS_TRANSIENT_COST;
        self.last_cost = AWS_TRANSIENT_COST;
        let cap = (1000.0 * 2f64.powi(i32::try_from(attempts - 1).unwrap_or(30))).min(20_000.0);
        Some(ms(unit(rng) * cap))
    }
    fn success(&mut self, attempts: u32) {
        let back = if attempts > 1 { self.last_cost } else { 1 };
        self.tokens = (self.tokens + back).min(500);
    }
}

/// Stainless-generated SDKs (anthropic-sdk-python v0.121.0; openai-python up to v2.51.0):
/// 2 retries; retries 408, 409, 429 and 5xx; a `Retry-After` in (0, 60] s is waited exactly;
/// otherwise (a longer one is ignored) `min(0.5 s * 2^n, 8 s) * (1 - 0.25 U)` with `n` the
/// retries taken.
struct Stainless;

impl Policy for Stainless {
    fn next(&mut self, r: &Resp, attempts: u32, _: u64, rng: &mut SplitMix64) -> Option<u64> {
        if attempts >= 3 || !(matches!(r.status, 408 | 409 | 429) || r.status >= 500) {
            return None;
        }
        if let Some(s) = r.retry_after.filter(|s| (1..=60).contains(s)) {
            return Some(s * 1000);
        }
        let n = i32::try_from(attempts - 1).unwrap_or(30);
        Some(ms(
            (500.0 * 2f64.powi(n)).min(8000.0) * (1.0 - 0.25 * unit(rng))
        ))
    }
    fn success(&mut self, _: u32) {}
}

/// reqwest-retry 0.9.1 with retry-policies 0.5.1's `ExponentialBackoff` defaults (1 s to 30 min,
/// base 2, full jitter) and the documented `build_with_max_retries(3)`; retries 5xx, 408,
/// 429; no `Retry-After`.
struct ReqwestRetry;

impl Policy for ReqwestRetry {
    fn next(&mut self, r: &Resp, attempts: u32, _: u64, rng: &mut SplitMix64) -> Option<u64> {
        if attempts > 3 || !(matches!(r.status, 408 | 429) || r.status >= 500) {
            return None;
        }
        let n = i32::try_from(attempts - 1).unwrap_or(30);
        let unjittered = (1000.0 * 2f64.powi(n)).min(1_800_000.0);
        Some(ms(unjittered * unit(rng)))
    }
    fn success(&mut self, _: u32) {}
}

/// A naive client: any error retried after a fixed 1 s, 5 times.
struct Naive;

impl Policy for Naive {
    fn next(&mut self, _: &Resp, attempts: u32, _: u64, _: &mut SplitMix64) -> Option<u64> {
        (attempts <= 5).then_some(1000)
    }
    fn success(&mut self, _: u32) {}
}

/// No retries.
struct NoRetry;

impl Policy for NoRetry {
    fn next(&mut self, _: &Resp, _: u32, _: u64, _: &mut SplitMix64) -> Option<u64> {
        None
    }
    fn success(&mut self, _: u32) {}
}

/// A variant under study, not on the page (`run` takes its name): the default with a spent
/// window's requests spread over the whole next window (issue 27, item 3).
pub const VARIANT_WINDOW_SPREAD: &str = "overten (window spread, variant)";

/// A variant, not on the page: the default before issue 27, its budget paying each retry
/// when it is decided and never taking it back (oldest first), no storm wait.
pub const VARIANT_OLDEST_FIRST: &str = "overten (oldest-first budget, previous default)";

/// A variant, not on the page: newest first without the storm's backoff wait (a budget
/// whose `storm_wait` is 0), to measure what that wait adds.
pub const VARIANT_NO_STORM_WAIT: &str = "overten (newest first, no storm wait, variant)";

/// The default before slot pacing: `Pacer::hold_only`, a spent window holds the key until
/// its reset (spread by one draw) and its held requests leave together.
pub const VARIANT_HOLD_PACING: &str = "overten (hold pacing, previous default)";

/// A variant, not on the page: the default, except that a 429 on a key seen shared
/// (`Pacer::is_shared`) ends its request instead of being retried.
pub const VARIANT_NO_SHARED_RETRY: &str = "overten (no retry of a shared key's 429, variant)";

/// Every variant `cargo xtask simulate --held-out --variant NAME` runs.
pub const VARIANTS: &[&str] = &[
    VARIANT_HOLD_PACING,
    VARIANT_NO_SHARED_RETRY,
    VARIANT_WINDOW_SPREAD,
    VARIANT_OLDEST_FIRST,
    VARIANT_NO_STORM_WAIT,
];

/// The policies compared, in table order.
pub const POLICIES: &[&str] = &[
    "overten (default + budget)",
    "overten (default, no budget)",
    "AWS SDK for Rust",
    "Stainless",
    "reqwest-retry",
    "naive 1 s x5",
    "no retries",
];

/// The default budget without the storm's backoff wait.
fn no_storm_wait() -> RetryBudget {
    RetryBudget::default().with_storm_wait(Duration::ZERO, Duration::ZERO)
}

impl Ours {
    /// The default policy with `budget`; the rest as the default unless a variant says.
    fn with(budget: Option<RetryBudget>) -> Ours {
        Ours {
            policy: RetryPolicy::default(),
            budget,
            pacer: overten_errors::Pacer::new(),
            refund: true,
            window_spread: false,
            held_until: 0,
            newest_first: true,
            ticket: None,
            retry_shared_429: true,
        }
    }

    /// [`Ours::with`] paced in hold mode (`Pacer::hold_only`, the previous default).
    fn holding(budget: Option<RetryBudget>) -> Ours {
        Ours {
            pacer: overten_errors::Pacer::hold_only(),
            ..Ours::with(budget)
        }
    }
}

fn policy(name: &str) -> Box<dyn Policy> {
    match name {
        "overten (default + budget)" => Box::new(Ours::with(Some(RetryBudget::default()))),
        VARIANT_WINDOW_SPREAD => Box::new(Ours {
            window_spread: true,
            ..Ours::holding(Some(RetryBudget::default()))
        }),
        VARIANT_OLDEST_FIRST => Box::new(Ours {
            newest_first: false,
            ..Ours::holding(Some(no_storm_wait()))
        }),
        VARIANT_HOLD_PACING => Box::new(Ours::holding(Some(RetryBudget::default()))),
        VARIANT_NO_STORM_WAIT => Box::new(Ours::with(Some(no_storm_wait()))),
        VARIANT_NO_SHARED_RETRY => Box::new(Ours {
            retry_shared_429: false,
            ..Ours::with(Some(RetryBudget::default()))
        }),
        "overten (default, no budget)" => Box::new(Ours::with(None)),
        "AWS SDK for Rust" => Box::new(Aws {
            tokens: 500,
            last_cost: 0,
        }),
        "Stainless" => Box::new(Stainless),
        "reqwest-retry" => Box::new(ReqwestRetry),
        "naive 1 s x5" => Box::new(Naive),
        _ => Box::new(NoRetry),
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Requests offered (all arrive before the scenario's horizon).
    pub offered: u64,
    /// Attempts the API received.
    pub attempts: u64,
    /// Requests that eventually succeeded, the drain after the horizon included.
    pub succeeded: u64,
    /// Requests that succeeded before the horizon (while requests still arrived).
    pub succeeded_in_run: u64,
    /// Requests that succeeded within 10 s of their arrival.
    pub succeeded_within_10s: u64,
    /// Requests that succeeded within 60 s of their arrival.
    pub succeeded_within_60s: u64,
    /// 429 answers the clients received.
    pub rejected_429: u64,
    /// 429 answers to a client that had already seen `X-RateLimit-Remaining: 0` in the same
    /// window (pacing should have held it): the rate-limit goal's measure. With a key per
    /// client every 429 is one; with a shared key, a client's first 429 of a window is not.
    pub rejected_after_seen: u64,
    /// The most attempts in one second, as a multiple of the normal capacity.
    pub peak_load: f64,
    /// The most attempts in one second, as a multiple of what the keys' limits allow in a
    /// second on average (`clients * limit / 60`); rate-limit scenarios only.
    pub peak_over_limits: Option<f64>,
    /// Median latency of successful requests, ms (arrival to success).
    pub p50_ms: u64,
    /// 99th percentile latency of successful requests, ms.
    pub p99_ms: u64,
    /// The API's side: seconds after the trigger ended until it answered at least 95% of
    /// attempts successfully for 10 s in a row (`None`: no trigger, or never within the run).
    pub recovery_s: Option<u64>,
    /// The users' side: seconds after the trigger ended until, for 10 s in a row, at least
    /// 95% of the requests arriving each second succeeded within 5 s.
    pub user_recovery_s: Option<u64>,
    /// Attempts per second, per second of the run.
    pub load: Vec<u64>,
    /// Successful requests per second (goodput), per second of the run.
    pub goodput: Vec<u64>,
    /// Seconds during which requests arrived.
    pub horizon: u64,
}

impl Outcome {
    /// Attempts per request offered.
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
    pub fn amplification(&self) -> f64 {
        self.attempts as f64 / self.offered.max(1) as f64
    }

    /// Successful requests per second while requests arrived (the drain after excluded).
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
    pub fn goodput_in_run(&self) -> f64 {
        self.succeeded_in_run as f64 / self.horizon.max(1) as f64
    }

    /// Requests that succeeded after arrivals stopped, per request offered.
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
    pub fn drain_share(&self) -> f64 {
        (self.succeeded - self.succeeded_in_run) as f64 / self.offered.max(1) as f64
    }

    /// Share of requests that succeeded within 10 s of arriving.
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
    pub fn success_within_10s(&self) -> f64 {
        self.succeeded_within_10s as f64 / self.offered.max(1) as f64
    }

    /// Share of requests that succeeded within 60 s of arriving.
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
    pub fn success_within_60s(&self) -> f64 {
        self.succeeded_within_60s as f64 / self.offered.max(1) as f64
    }

    /// Share of requests that succeeded (the drain included).
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
    pub fn success_share(&self) -> f64 {
        self.succeeded as f64 / self.offered.max(1) as f64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    at: u64,
    seq: u64,
    client: u32,
    started: u64,
    attempts: u32,
    /// The index of the retry's ticket in the run's tickets (`u32::MAX`: none).
    ticket: u32,
    /// Pacing waits made so far (the next send asks `recheck` below `max_waits`).
    waits: u8,
}

/// A response on its way back to its client (read for pacing when it arrives).
#[derive(Debug, Clone, Copy)]
struct Arrival {
    at: u64,
    seq: u64,
    client: u32,
    resp: Resp,
}

impl PartialEq for Arrival {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Arrival {}

impl PartialOrd for Arrival {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Arrival {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The bounded queue: when the API is next free, in ms.
struct Queue {
    free_at: f64,
}

/// An event's ticket index when it has none.
const NO_TICKET: u32 = u32::MAX;

/// How long the users' recovery allows a request to take.
const USER_OK_MS: u64 = 5000;

/// Runs one scenario with one policy on one server model.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    clippy::too_many_lines,
    reason = "counts and times are far below the limits of each type"
)]
pub fn run(fleet: Fleet, scenario: &Scenario, model: ServerModel, policy_name: &str) -> Outcome {
    let mut rng = SplitMix64::new(fleet.seed);
    let rate_of = |client: u32| match scenario.incident {
        Incident::MixedTiers => scenario.incident.tier(client).map_or(0.0, |t| {
            f64::from(t.requests_per_minute()) / 60.0 * MIXED_DEMAND
        }),
        _ => scenario.rate_per_client,
    };
    let offered_rate: f64 = (0..fleet.clients).map(rate_of).sum();
    let capacity = offered_rate * scenario.headroom;
    let horizon_ms = scenario.horizon * 1000;
    let mut queue = BinaryHeap::new();
    let mut seq = 0;
    let mut offered = 0;
    let seconds = scenario.horizon as usize + 120;
    let mut arrived = vec![0u64; seconds];
    let mut arrived_ok = vec![0u64; seconds];
    // Poisson arrivals per client.
    for client in 0..fleet.clients {
        let rate = rate_of(client);
        let mut t = 0.0;
        loop {
            t += -(1.0 - unit(&mut rng)).ln() / rate * 1000.0;
            let at = t as u64;
            if at >= horizon_ms {
                break;
            }
            seq += 1;
            offered += 1;
            arrived[(at / 1000) as usize] += 1;
            queue.push(Reverse(Event {
                at,
                seq,
                client,
                started: at,
                attempts: 0,
                ticket: NO_TICKET,
                waits: 0,
            }));
        }
    }
    let mut policies: Vec<Box<dyn Policy>> =
        (0..fleet.clients).map(|_| policy(policy_name)).collect();
    let mut load = vec![0u64; seconds];
    let mut failed = vec![0u64; seconds];
    let mut goodput = vec![0u64; seconds];
    let mut windows: Vec<(u64, u32)> = vec![(u64::MAX, 0); fleet.clients as usize];
    let mut latencies = Vec::new();
    let (mut within_10s, mut within_60s) = (0u64, 0u64);
    let (mut attempts_total, mut succeeded, mut in_run, mut rejected) = (0u64, 0u64, 0u64, 0u64);
    // The window in which each client last saw `Remaining: 0` (u64::MAX: never), with the
    // moment that response reached it (a request sent before then could not have known).
    let mut seen_spent = vec![(u64::MAX, 0u64); fleet.clients as usize];
    let mut rejected_after_seen = 0u64;
    let mut server = Queue { free_at: 0.0 };
    // Tickets of retries waiting to be sent, and the slots free for reuse.
    let mut tickets: Vec<Option<RetryTicket>> = Vec::new();
    let mut free_tickets: Vec<u32> = Vec::new();
    // Responses on their way back: a client reads a response's window (pacing) when it
    // arrives, not when the API answers it.
    let mut on_the_way: BinaryHeap<Reverse<Arrival>> = BinaryHeap::new();
    while let Some(Reverse(mut e)) = queue.pop() {
        while let Some(Reverse(a)) = on_the_way.peek().copied() {
            if a.at > e.at {
                break;
            }
            on_the_way.pop();
            policies[a.client as usize].observe(&a.resp, a.at, &mut rng);
        }
        let sec = (e.at / 1000) as usize;
        if sec >= seconds {
            continue;
        }
        // A held key's request waits for its window's reset before it is sent.
        let policy = &mut policies[e.client as usize];
        let held = match e.waits {
            0 => policy.hold(e.at, &mut rng),
            n if n < policy.max_waits() => policy.recheck(n, e.at, &mut rng),
            _ => None,
        };
        if let Some(hold) = held {
            seq += 1;
            e.at += hold;
            e.seq = seq;
            e.waits += 1;
            queue.push(Reverse(e));
            continue;
        }
        e.waits = 0;
        // A retry waiting with a ticket is sent only if no newer retry took its tokens.
        if e.ticket != NO_TICKET {
            let ticket = tickets[e.ticket as usize].take();
            free_tickets.push(e.ticket);
            e.ticket = NO_TICKET;
            if !ticket.is_some_and(RetryTicket::send) {
                continue;
            }
        }
        e.attempts += 1;
        policies[e.client as usize].sent(e.at);
        attempts_total += 1;
        load[sec] += 1;
        let t = e.at / 1000;
        // The API's answer.
        let ok = Resp {
            status: 200,
            code: None,
            retry_after: None,
            rate_limit: None,
        };
        let unavailable = Resp {
            status: 503,
            code: Some("service_unavailable"),
            ..ok
        };
        let mut resp = ok;
        match scenario.incident {
            Incident::Outage { at, secs, html } if (at..at + secs).contains(&t) => {
                resp = if html {
                    Resp {
                        status: 502,
                        code: None,
                        ..ok
                    }
                } else {
                    unavailable
                };
            }
            Incident::Brownout { at, secs, share }
                if (at..at + secs).contains(&t) && unit(&mut rng) < share =>
            {
                resp = Resp {
                    status: 500,
                    code: Some("internal_error"),
                    ..ok
                };
            }
            Incident::RateLimit { .. } | Incident::MixedTiers => {
                let tier = scenario.incident.tier(e.client).unwrap_or(Tier::Free);
                let shared = scenario.incident.shared();
                let window = t / 60;
                let w = &mut windows[if shared { 0 } else { e.client as usize }];
                if w.0 != window {
                    *w = (window, 0);
                }
                let limit = tier.requests_per_minute();
                let reset = (window + 1) * 60;
                if w.1 < limit {
                    // Every answer carries the window (the gateway's X-RateLimit-*).
                    w.1 += 1;
                    resp.rate_limit = Some(RateLimit {
                        limit,
                        remaining: limit - w.1,
                        reset,
                    });
                } else {
                    rejected += 1;
                    let (seen_window, seen_at) = seen_spent[e.client as usize];
                    if seen_window == window && seen_at <= e.at {
                        rejected_after_seen += 1;
                    }
                    resp = Resp {
                        status: 429,
                        code: Some("rate_limit_exceeded"),
                        retry_after: Some((reset - t).max(1)),
                        rate_limit: Some(RateLimit {
                            limit,
                            remaining: 0,
                            reset,
                        }),
                    };
                }
            }
            _ => {}
        }
        let mut done = e.at + SERVICE_MS;
        if resp.status == 200 {
            let cap = match scenario.incident {
                Incident::Overload { at, secs, factor } if (at..at + secs).contains(&t) => {
                    capacity * factor
                }
                _ => capacity,
            };
            match model {
                ServerModel::Collapse => {
                    // Beyond capacity, goodput collapses as (capacity / load)^2 of attempts.
                    let recent = if sec > 0 { load[sec - 1] as f64 } else { 0.0 };
                    if recent > cap {
                        let p = (cap / recent).powi(2);
                        if unit(&mut rng) >= p {
                            // The gateway's X-RateLimit-* ride on every answer.
                            resp = Resp {
                                rate_limit: resp.rate_limit,
                                ..unavailable
                            };
                        }
                    }
                }
                ServerModel::Queue => {
                    let now = e.at as f64;
                    let start = server.free_at.max(now);
                    if start - now > fleet.queue_ms as f64 {
                        resp = Resp {
                            rate_limit: resp.rate_limit,
                            ..unavailable
                        };
                    } else {
                        server.free_at = start + 1000.0 / cap;
                        done = start as u64 + SERVICE_MS;
                    }
                }
            }
        }
        if resp.rate_limit.is_some() {
            seq += 1;
            on_the_way.push(Reverse(Arrival {
                at: done,
                seq,
                client: e.client,
                resp,
            }));
        }
        let policy = &mut policies[e.client as usize];
        if let Some(rl) = resp.rate_limit.filter(|rl| rl.remaining == 0) {
            let window = (rl.reset / 60).saturating_sub(1);
            let seen = &mut seen_spent[e.client as usize];
            // The earliest arrival of a response saying this window is spent.
            if seen.0 != window || done < seen.1 {
                *seen = (window, done);
            }
        }
        if resp.status == 200 {
            succeeded += 1;
            if done < horizon_ms {
                in_run += 1;
            }
            let took = done - e.started;
            latencies.push(took);
            within_10s += u64::from(took <= 10_000);
            within_60s += u64::from(took <= 60_000);
            if took <= USER_OK_MS {
                arrived_ok[(e.started / 1000) as usize] += 1;
            }
            if let Some(g) = goodput.get_mut((done / 1000) as usize) {
                *g += 1;
            }
            policy.success(e.attempts);
            continue;
        }
        failed[sec] += 1;
        if let Some(delay) = policy.next(&resp, e.attempts, done, &mut rng) {
            if let Some(ticket) = policy.ticket() {
                e.ticket = if let Some(i) = free_tickets.pop() {
                    tickets[i as usize] = Some(ticket);
                    i
                } else {
                    tickets.push(Some(ticket));
                    (tickets.len() - 1) as u32
                };
            }
            seq += 1;
            e.at = done + delay;
            e.seq = seq;
            queue.push(Reverse(e));
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((latencies.len() - 1) as f64 * p).round() as usize;
        latencies[i]
    };
    let recover = |healthy: &dyn Fn(usize) -> bool| {
        scenario.trigger_end().and_then(|end| {
            (end as usize..scenario.horizon as usize)
                .find(|&s| (s..s + 10).all(|x| x < seconds && healthy(x)))
                .map(|s| s as u64 - end)
        })
    };
    let recovery_s = recover(&|s| load[s] == 0 || failed[s] * 20 <= load[s]);
    let user_recovery_s = recover(&|s| arrived[s] == 0 || arrived_ok[s] * 20 >= arrived[s] * 19);
    let peak = load.iter().copied().max().unwrap_or(0) as f64;
    let allowed: f64 = if scenario.incident.shared() {
        scenario
            .incident
            .tier(0)
            .map_or(0.0, |t| f64::from(t.requests_per_minute()))
    } else {
        (0..fleet.clients)
            .filter_map(|c| scenario.incident.tier(c))
            .map(|t| f64::from(t.requests_per_minute()))
            .sum()
    };
    let peak_over_limits = (allowed > 0.0).then(|| peak / (allowed / 60.0));
    load.truncate(scenario.horizon as usize);
    goodput.truncate(scenario.horizon as usize);
    Outcome {
        offered,
        attempts: attempts_total,
        succeeded,
        succeeded_in_run: in_run,
        succeeded_within_10s: within_10s,
        succeeded_within_60s: within_60s,
        rejected_429: rejected,
        rejected_after_seen,
        peak_load: peak / capacity,
        peak_over_limits,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        recovery_s,
        user_recovery_s,
        load,
        goodput,
        horizon: scenario.horizon,
    }
}
