//! A deterministic discrete-event simulation of retry storms: a fleet of clients, one API
//! with a capacity, an incident, and a retry policy per run. Pure: a seed gives the same
//! result on every machine, so `cargo xtask docs --check` guards the published figures.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, SystemTime};

use overten_errors::{
    Advice, ApiError, Code, RandomSource, RateLimit, RetryAfter, RetryBudget, RetryPolicy,
    SplitMix64, Tier,
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
    },
}

/// One scenario of `docs/retry-storms.md`.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Its short name (file names).
    pub name: &'static str,
    /// Its title.
    pub title: &'static str,
    /// The incident.
    pub incident: Incident,
    /// Requests per second each client offers (overrides the fleet's).
    pub rate_per_client: f64,
    /// The API's normal capacity, as a multiple of the fleet's offered rate.
    pub headroom: f64,
    /// Simulated seconds.
    pub horizon: u64,
}

impl Scenario {
    /// When the trigger ends (none for rate limits).
    pub fn trigger_end(&self) -> Option<u64> {
        match self.incident {
            Incident::Outage { at, secs, .. }
            | Incident::Brownout { at, secs, .. }
            | Incident::Overload { at, secs, .. } => Some(at + secs),
            Incident::RateLimit { .. } => None,
        }
    }
}

/// The scenarios.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "outage",
        title: "Hard outage, 60 s of 503 service_unavailable",
        incident: Incident::Outage {
            at: 60,
            secs: 60,
            html: false,
        },
        rate_per_client: 1.0,
        headroom: 1.5,
        horizon: 300,
    },
    Scenario {
        name: "outage-html",
        title: "Hard outage, 60 s of HTML 502 from a proxy",
        incident: Incident::Outage {
            at: 60,
            secs: 60,
            html: true,
        },
        rate_per_client: 1.0,
        headroom: 1.5,
        horizon: 300,
    },
    Scenario {
        name: "rate-limit-free",
        title: "Rate limits, free tier (10/min per key; each client offers 15/min)",
        incident: Incident::RateLimit { tier: Tier::Free },
        rate_per_client: 0.25,
        headroom: 4.0,
        horizon: 300,
    },
    Scenario {
        name: "rate-limit-pro",
        title: "Rate limits, pro tier (60/min per key; each client offers 75/min)",
        incident: Incident::RateLimit { tier: Tier::Pro },
        rate_per_client: 1.25,
        headroom: 4.0,
        horizon: 300,
    },
    Scenario {
        name: "brownout",
        title: "Brown-out, 30% of requests fail with 500 for 5 minutes",
        incident: Incident::Brownout {
            at: 60,
            secs: 300,
            share: 0.3,
        },
        rate_per_client: 1.0,
        headroom: 1.5,
        horizon: 480,
    },
    Scenario {
        name: "overload",
        title: "Overload, capacity drops to 40% for 60 s (the metastable case)",
        incident: Incident::Overload {
            at: 60,
            secs: 60,
            factor: 0.4,
        },
        rate_per_client: 1.0,
        headroom: 1.25,
        horizon: 420,
    },
];

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
struct Ours {
    policy: RetryPolicy,
    budget: Option<RetryBudget>,
    /// Whether a success after retries returns the retry's cost (this workspace's rule
    /// since the simulation; the previous default returned 1).
    refund: bool,
}

impl Policy for Ours {
    fn next(&mut self, r: &Resp, attempts: u32, now_ms: u64, rng: &mut SplitMix64) -> Option<u64> {
        let code = r.code.map_or(Code::Missing, Code::parse);
        let mut err = ApiError::received(code, r.status, "simulated");
        if let Some(s) = r.retry_after {
            err.set_retry_after(RetryAfter::Seconds(s));
        }
        if let Some(rl) = r.rate_limit {
            err.set_rate_limit(rl);
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms);
        match self
            .policy
            .explain(&err, attempts, now, rng, self.budget.as_ref())
            .advice
        {
            Advice::Retry { after, .. } => {
                Some(u64::try_from(after.as_millis()).unwrap_or(u64::MAX))
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
}

/// AWS SDKs, standard mode (retry behaviour 2.0, the default): 3 attempts, full jitter
/// `U * min(1 s * 2^(n-1), 20 s)`, a 500-token quota costing 5 a retry (a success after
/// retries returns the last retry's cost, a first-attempt success 1); retries 500, 502, 503,
/// 504; a bare 429 is not retried; `Retry-After` is not read.
struct Aws {
    tokens: u32,
}

impl Policy for Aws {
    fn next(&mut self, r: &Resp, attempts: u32, _: u64, rng: &mut SplitMix64) -> Option<u64> {
        if attempts >= 3 || ![500, 502, 503, 504].contains(&r.status) || self.tokens < 5 {
            return None;
        }
        self.tokens -= 5;
        let cap = (1000.0 * 2f64.powi(i32::try_from(attempts - 1).unwrap_or(30))).min(20_000.0);
        Some(ms(unit(rng) * cap))
    }
    fn success(&mut self, attempts: u32) {
        let back = if attempts > 1 { 5 } else { 1 };
        self.tokens = (self.tokens + back).min(500);
    }
}

/// Stainless-generated SDKs (openai-python, anthropic-sdk-python): 2 retries; retries 408,
/// 409, 429 and 5xx; a `Retry-After` in (0, 60] s is waited exactly; otherwise
/// `min(0.5 s * 2^n, 8 s) * (1 - 0.25 U)` with `n` the retries taken.
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

/// reqwest-retry 0.9 with retry-policies' `ExponentialBackoff` defaults (1 s to 30 min,
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

/// The policies compared, in table order.
pub const POLICIES: &[&str] = &[
    "overten (default + budget)",
    "overten (default, no budget)",
    "overten (previous budget: 500 tokens, no refund)",
    "AWS standard",
    "Stainless",
    "reqwest-retry",
    "naive 1 s x5",
    "no retries",
];

fn policy(name: &str) -> Box<dyn Policy> {
    match name {
        "overten (default + budget)" => Box::new(Ours {
            policy: RetryPolicy::default(),
            budget: Some(RetryBudget::default()),
            refund: true,
        }),
        "overten (default, no budget)" => Box::new(Ours {
            policy: RetryPolicy::default(),
            budget: None,
            refund: true,
        }),
        "overten (previous budget: 500 tokens, no refund)" => Box::new(Ours {
            policy: RetryPolicy::default(),
            budget: Some(RetryBudget::new(500, 5, 1)),
            refund: false,
        }),
        "AWS standard" => Box::new(Aws { tokens: 500 }),
        "Stainless" => Box::new(Stainless),
        "reqwest-retry" => Box::new(ReqwestRetry),
        "naive 1 s x5" => Box::new(Naive),
        _ => Box::new(NoRetry),
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Requests offered.
    pub offered: u64,
    /// Attempts the API received.
    pub attempts: u64,
    /// Requests that eventually succeeded.
    pub succeeded: u64,
    /// The most attempts in one second, as a multiple of the normal capacity.
    pub peak_load: f64,
    /// Median latency of successful requests, ms (first attempt to success).
    pub p50_ms: u64,
    /// 99th percentile latency of successful requests, ms.
    pub p99_ms: u64,
    /// Seconds after the trigger ended until the API answered at least 95% of attempts
    /// successfully for 10 s in a row (`None`: no trigger, or never within the run).
    pub recovery_s: Option<u64>,
    /// Attempts per second, per second of the run.
    pub load: Vec<u64>,
    /// Successful requests per second (goodput), per second of the run.
    pub goodput: Vec<u64>,
}

impl Outcome {
    /// Attempts per request offered.
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
    pub fn amplification(&self) -> f64 {
        self.attempts as f64 / self.offered.max(1) as f64
    }

    /// Successful requests per second of the run.
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
    pub fn goodput_per_second(&self) -> f64 {
        self.succeeded as f64 / self.load.len().max(1) as f64
    }

    /// Share of requests that succeeded.
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
}

/// Runs one scenario with one policy.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    clippy::too_many_lines,
    reason = "counts and times are far below the limits of each type"
)]
pub fn run(fleet: Fleet, scenario: &Scenario, policy_name: &str) -> Outcome {
    let mut rng = SplitMix64::new(fleet.seed);
    let rate = scenario.rate_per_client;
    let offered_rate = f64::from(fleet.clients) * rate;
    let capacity = offered_rate * scenario.headroom;
    let horizon_ms = scenario.horizon * 1000;
    let mut queue = BinaryHeap::new();
    let mut seq = 0;
    let mut offered = 0;
    // Poisson arrivals per client.
    for client in 0..fleet.clients {
        let mut t = 0.0;
        loop {
            t += -(1.0 - unit(&mut rng)).ln() / rate * 1000.0;
            let at = t as u64;
            if at >= horizon_ms {
                break;
            }
            seq += 1;
            offered += 1;
            queue.push(Reverse(Event {
                at,
                seq,
                client,
                started: at,
                attempts: 0,
            }));
        }
    }
    let mut policies: Vec<Box<dyn Policy>> =
        (0..fleet.clients).map(|_| policy(policy_name)).collect();
    let seconds = scenario.horizon as usize + 120;
    let mut load = vec![0u64; seconds];
    let mut failed = vec![0u64; seconds];
    let mut goodput = vec![0u64; seconds];
    let mut windows: Vec<(u64, u32)> = vec![(u64::MAX, 0); fleet.clients as usize];
    let mut latencies = Vec::new();
    let (mut attempts_total, mut succeeded) = (0u64, 0u64);
    while let Some(Reverse(mut e)) = queue.pop() {
        let sec = (e.at / 1000) as usize;
        if sec >= seconds {
            continue;
        }
        e.attempts += 1;
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
                    Resp {
                        status: 503,
                        code: Some("service_unavailable"),
                        ..ok
                    }
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
            Incident::RateLimit { tier } => {
                let window = t / 60;
                let w = &mut windows[e.client as usize];
                if w.0 != window {
                    *w = (window, 0);
                }
                let limit = tier.requests_per_minute();
                let reset = (window + 1) * 60;
                if w.1 >= limit {
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
                } else {
                    w.1 += 1;
                }
            }
            _ => {}
        }
        if resp.status == 200 {
            // Capacity: beyond it, goodput collapses as (capacity / load)^2 of attempts.
            let cap = match scenario.incident {
                Incident::Overload { at, secs, factor } if (at..at + secs).contains(&t) => {
                    capacity * factor
                }
                _ => capacity,
            };
            let recent = if sec > 0 { load[sec - 1] as f64 } else { 0.0 };
            if recent > cap {
                let p = (cap / recent).powi(2);
                if unit(&mut rng) >= p {
                    resp = Resp {
                        status: 503,
                        code: Some("service_unavailable"),
                        ..ok
                    };
                }
            }
        }
        let done = e.at + SERVICE_MS;
        let policy = &mut policies[e.client as usize];
        if resp.status == 200 {
            succeeded += 1;
            latencies.push(done - e.started);
            if let Some(g) = goodput.get_mut((done / 1000) as usize) {
                *g += 1;
            }
            policy.success(e.attempts);
            continue;
        }
        failed[sec] += 1;
        if let Some(delay) = policy.next(&resp, e.attempts, done, &mut rng) {
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
    let recovery_s = scenario.trigger_end().and_then(|end| {
        let healthy = |s: usize| load[s] == 0 || failed[s] * 20 <= load[s];
        (end as usize..scenario.horizon as usize)
            .find(|&s| (s..s + 10).all(|x| x < seconds && healthy(x)))
            .map(|s| s as u64 - end)
    });
    let peak = load.iter().copied().max().unwrap_or(0) as f64 / capacity;
    load.truncate(scenario.horizon as usize);
    goodput.truncate(scenario.horizon as usize);
    Outcome {
        offered,
        attempts: attempts_total,
        succeeded,
        peak_load: peak,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        recovery_s,
        load,
        goodput,
    }
}
