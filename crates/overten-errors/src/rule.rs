//! Retry rules: what the code table and the page's general rule say a client does.
//!
//! This module sits below the code table and the error type: it depends on neither, so the
//! table can name rules and the decision ([`crate::RetryPolicy::decide`]) can read them.

use core::fmt;

/// What a client should do with an error, per code.
///
/// Serialized as the catalog writes it: `{"action": "wait", "min_ms": 30000,
/// "max_ms": 60000}`, the action being [`RetryRule::action`]. Every duration is in
/// milliseconds.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum RetryRule {
    /// Do not retry: the request has to change first.
    Never,
    /// Retry with exponential backoff and jitter (a `Retry-After` that is sent wins).
    Backoff,
    /// Honor `Retry-After`; else `X-RateLimit-Reset` when no request remains; else wait the
    /// page's default of [`RATE_LIMIT_DEFAULT_WAIT_SECONDS`](crate::RATE_LIMIT_DEFAULT_WAIT_SECONDS).
    RetryAfter,
    /// Wait somewhere in a window before retrying; a `Retry-After` that is sent wins.
    Wait {
        /// Shortest wait, in milliseconds.
        min_ms: u64,
        /// Longest wait, in milliseconds (included).
        max_ms: u64,
    },
    /// Not a retry: resubmit the same work with `async: true` and poll `/tasks/{id}`.
    ResubmitAsync,
}

/// The `service_unavailable` row's "Retry after 30–60 seconds", in milliseconds. The code
/// table and the 503 row of [`FALLBACK`] both name it, so that any 503 is decided alike.
pub(crate) const UNAVAILABLE_WINDOW: RetryRule = RetryRule::Wait {
    min_ms: 30_000,
    max_ms: 60_000,
};

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

    /// Whether a response with this rule always carries `Retry-After` when the server sets
    /// none itself. A server writes a `Retry-After` it was given on any error.
    pub const fn retry_after_header(self) -> HeaderUse {
        match self {
            RetryRule::RetryAfter => HeaderUse::Always,
            RetryRule::Wait { .. } => HeaderUse::WhenKnown,
            RetryRule::Never | RetryRule::Backoff | RetryRule::ResubmitAsync => HeaderUse::Never,
        }
    }

    /// The rule for a response status alone: the first row of [`FALLBACK`] whose range
    /// holds the status; a status in none of them (1xx, 2xx, 3xx, nonsense) is
    /// [`RetryRule::Never`].
    ///
    /// For every code of the table, `RetryRule::for_status(code.status()) == code.retry()`:
    /// a client that sees only the status and headers decides as one that read the body.
    pub fn for_status(status: u16) -> RetryRule {
        FallbackRule::find(status).map_or(RetryRule::Never, |r| r.rule)
    }
}

impl fmt::Display for RetryRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryRule::Wait { min_ms, max_ms } => {
                write!(f, "wait {}–{} s", Seconds(*min_ms), Seconds(*max_ms))
            }
            other => f.write_str(other.action()),
        }
    }
}

/// Milliseconds written as seconds, with a fraction only when there is one.
struct Seconds(u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, ms) = (self.0 / 1000, self.0 % 1000);
        if ms == 0 {
            write!(f, "{s}")
        } else {
            write!(f, "{s}.{ms:03}")
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

/// One row of the page's general rule, used when the code does not decide (a code this
/// version does not know, no code at all, or a code sent with another status than its own).
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
/// with 501 made permanent as the page's `not_implemented` row says and 503 given the
/// `service_unavailable` row's wait window. First match wins.
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
        from: 503,
        to: 503,
        rule: UNAVAILABLE_WINDOW,
        why: "503 means capacity is exhausted or maintenance is under way: wait 30–60 s",
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

/// The reason given for a status that is not an error status.
pub(crate) const NOT_AN_ERROR: &str = "the status is not an error status: nothing to retry";
