//! The machine-readable catalog.

use std::time::Duration;

use overten_errors::{
    Category, ErrorCode, FALLBACK, MAX_ID_BYTES, MAX_MESSAGE_BYTES,
    RATE_LIMIT_DEFAULT_WAIT_SECONDS, RATE_LIMIT_WINDOW_SECONDS, RETENTION_DAYS, RetryBudget,
    RetryPolicy, RetryRule, STATUSES, SYNC_TIMEOUT_SECONDS, StatusKind, Tier, headers,
};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

/// Everything a client in another language needs to know about the error model. Every
/// duration is in milliseconds (members end in `_ms`), and every number is at most
/// 2^53 − 1, exact in a JavaScript `Number`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Catalog {
    /// The version of `overten-errors` that wrote it.
    pub version: String,
    /// Every error code, in the reference page's order.
    pub codes: Vec<CodeEntry>,
    /// Every HTTP status the API returns.
    pub statuses: Vec<StatusEntry>,
    /// The rate-limit tiers.
    pub tiers: Vec<TierEntry>,
    /// The headers the API documents.
    pub headers: Vec<HeaderEntry>,
    /// What to do with a code this version does not know.
    pub fallback: Fallback,
    /// The default backoff a conforming client uses.
    pub backoff: BackoffDefaults,
    /// The default retry budget (token bucket).
    pub retry_budget: BudgetDefaults,
    /// The default pacing (`docs/retry.md`, *Pacing*).
    pub pacing: PacingDefaults,
    /// The other numbers the page states.
    pub limits: Limits,
}

/// One error code.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CodeEntry {
    /// The wire string.
    pub code: String,
    /// The page's category.
    pub category: Category,
    /// The HTTP status sent with it.
    pub status: u16,
    /// When it occurs, as published.
    pub when: String,
    /// How to fix it, as published.
    pub fix: String,
    /// What a client does on receiving it.
    pub retry: RetryRule,
}

/// One HTTP status.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StatusEntry {
    /// The status code.
    pub status: u16,
    /// The page's category label.
    pub category: String,
    /// The page's typical scenario.
    pub scenario: String,
    /// The status class.
    pub kind: StatusKind,
}

/// One tier.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TierEntry {
    /// The tier's name.
    pub tier: String,
    /// Requests allowed per key per minute.
    pub requests_per_minute: u32,
    /// Runs allowed at once.
    pub concurrent_runs: u32,
}

/// One header.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HeaderEntry {
    /// The name as the page writes it.
    pub name: String,
    /// What it carries.
    pub description: String,
    /// When the API sends it.
    pub sent: String,
}

/// The rule for unknown codes: the first row whose range holds the status wins.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Fallback {
    /// The rows, in order.
    pub rules: Vec<FallbackEntry>,
    /// The rule for a status in no row.
    pub otherwise: RetryRule,
}

/// One row of the fallback rule.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FallbackEntry {
    /// First status covered.
    pub from: u16,
    /// Last status covered (inclusive).
    pub to: u16,
    /// What to do.
    pub retry: RetryRule,
    /// Why.
    pub why: String,
}

/// The default retry policy (see `RetryPolicy::default` for the sources).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BackoffDefaults {
    /// The first backoff delay, in milliseconds.
    pub initial_delay_ms: u64,
    /// Growth factor of each delay over the one before.
    pub multiplier: f64,
    /// The longest backoff delay, in milliseconds.
    pub max_delay_ms: u64,
    /// The random share of each delay: drawn uniformly from `[(1 - jitter) * d, d]`.
    pub jitter: f64,
    /// Most attempts in all, the first included.
    pub max_attempts: u32,
    /// Shortest wait when the server or the page names one, in milliseconds.
    pub min_wait_ms: u64,
    /// Longest wait ever advised; a longer server-named wait stops, in milliseconds.
    pub max_wait_ms: u64,
    /// The wait after a 429 that names no usable wait (the page's sample client's
    /// default), in milliseconds.
    pub rate_limit_default_wait_ms: u64,
    /// The most a wait named by the server or the page is lengthened, as a share of it.
    pub wait_spread: f64,
    /// The most a named wait is lengthened, in milliseconds.
    pub wait_spread_max_ms: u64,
}

/// The default retry budget.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BudgetDefaults {
    /// Tokens the bucket holds when full.
    pub capacity: u32,
    /// Tokens one retry spends.
    pub retry_cost: u32,
    /// Tokens a retry in a wait window (step 8: a 503 without `Retry-After`) costs.
    pub window_cost: u32,
    /// Tokens a success to a first attempt returns.
    pub success_refill: u32,
    /// Tokens a success after retries returns (the last retry's cost).
    pub retried_success_refill: u32,
    /// A storm's backoff (a backoff retry that leaves the bucket with less than one retry's
    /// cost) waits at least a uniform point from here...
    pub storm_wait_min_ms: u64,
    /// ...to here (step 10).
    pub storm_wait_max_ms: u64,
}

/// The default pacing of a key's requests (`docs/retry.md`, *Pacing*).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PacingDefaults {
    /// `slots`: once a window is spent, a key's requests go one `window / Limit` apart
    /// (the default since issue 27); `hold`: every held request goes at the reset.
    pub mode: PacingMode,
    /// The most waits one request makes while pacing (its slot or hold, then re-checks).
    pub max_waits: u32,
}

/// How a spent window paces a key's requests.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PacingMode {
    /// One `window / Limit` apart from the reset (spread over the next window after a 429
    /// on a key seen shared).
    Slots,
    /// All at the reset, spread by one draw.
    Hold,
}

/// The page's other numbers, and the bounds both sides apply to text on the wire.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Limits {
    /// The sync ceiling, in milliseconds: past it, 408 `sync_timeout_upgrade_async`.
    pub sync_timeout_ms: u64,
    /// How long resources are kept before 410 `gone`, in milliseconds (30 days).
    pub retention_ms: u64,
    /// The rate-limit window, in milliseconds.
    pub rate_limit_window_ms: u64,
    /// The longest public message written or kept, in bytes of UTF-8; longer ones are cut
    /// and end with `…`.
    pub max_message_bytes: u64,
    /// The longest id (`X-Request-Id`, `run_id`, `task_id`) written or kept, in bytes; ids
    /// are visible ASCII (`!` to `~`) only.
    pub max_id_bytes: u64,
    /// The largest body a client reads as an envelope, in bytes, a byte order mark
    /// included.
    pub max_body_bytes: u64,
    /// The deepest nesting of arrays and objects in a body read as an envelope, the top
    /// object counting as level 1.
    pub max_body_depth: u64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The catalog, from the core's tables.
pub fn catalog() -> Catalog {
    let policy = RetryPolicy::default();
    let budget = RetryBudget::default();
    Catalog {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        codes: ErrorCode::ALL
            .iter()
            .map(|c| CodeEntry {
                code: c.as_str().to_owned(),
                category: c.category(),
                status: c.status(),
                when: c.when().to_owned(),
                fix: c.fix().to_owned(),
                retry: c.retry(),
            })
            .collect(),
        statuses: STATUSES
            .iter()
            .map(|s| StatusEntry {
                status: s.status,
                category: s.category.to_owned(),
                scenario: s.scenario.to_owned(),
                kind: s.kind(),
            })
            .collect(),
        tiers: Tier::ALL
            .iter()
            .map(|t| TierEntry {
                tier: t.as_str().to_owned(),
                requests_per_minute: t.requests_per_minute(),
                concurrent_runs: t.concurrent_runs(),
            })
            .collect(),
        headers: headers::ALL
            .iter()
            .map(|h| HeaderEntry {
                name: h.name.to_owned(),
                description: h.description.to_owned(),
                sent: h.sent.to_owned(),
            })
            .collect(),
        fallback: Fallback {
            rules: FALLBACK
                .iter()
                .map(|r| FallbackEntry {
                    from: r.from,
                    to: r.to,
                    retry: r.rule,
                    why: r.why.to_owned(),
                })
                .collect(),
            otherwise: RetryRule::for_status(0),
        },
        backoff: BackoffDefaults {
            initial_delay_ms: millis(policy.initial_delay()),
            multiplier: policy.multiplier(),
            max_delay_ms: millis(policy.max_delay()),
            jitter: policy.jitter(),
            max_attempts: policy.max_attempts(),
            min_wait_ms: millis(policy.min_wait()),
            max_wait_ms: millis(policy.max_wait()),
            rate_limit_default_wait_ms: RATE_LIMIT_DEFAULT_WAIT_SECONDS * 1000,
            wait_spread: policy.wait_spread(),
            wait_spread_max_ms: millis(policy.wait_spread_max()),
        },
        retry_budget: BudgetDefaults {
            capacity: budget.capacity(),
            retry_cost: budget.retry_cost(),
            window_cost: budget.window_cost(),
            success_refill: budget.success_refill(),
            retried_success_refill: budget.retry_cost(),
            storm_wait_min_ms: millis(budget.storm_wait().0),
            storm_wait_max_ms: millis(budget.storm_wait().1),
        },
        pacing: PacingDefaults {
            mode: if overten_errors::Pacer::new().is_slotted() {
                PacingMode::Slots
            } else {
                PacingMode::Hold
            },
            max_waits: u32::try_from(overten_errors::Pacer::MAX_WAITS).unwrap_or(u32::MAX),
        },
        limits: Limits {
            sync_timeout_ms: SYNC_TIMEOUT_SECONDS * 1000,
            retention_ms: RETENTION_DAYS * 86_400_000,
            rate_limit_window_ms: RATE_LIMIT_WINDOW_SECONDS * 1000,
            max_message_bytes: MAX_MESSAGE_BYTES as u64,
            max_id_bytes: MAX_ID_BYTES as u64,
            max_body_bytes: overten_errors::MAX_BODY_BYTES as u64,
            max_body_depth: overten_errors::MAX_BODY_DEPTH as u64,
        },
    }
}

/// The JSON Schema (2020-12) of [`Catalog`], derived by schemars.
pub fn catalog_schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    generator.into_root_schema_for::<Catalog>().to_value()
}
