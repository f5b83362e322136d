//! Rate-limit tiers, header names and the other numbers the page states.

use core::fmt;
use core::str::FromStr;

/// How long a sync request may run before the API answers 408 `sync_timeout_upgrade_async`.
pub const SYNC_TIMEOUT_SECONDS: u64 = 300;

/// How long a resource is kept before it answers 410 `gone`.
pub const RETENTION_DAYS: u64 = 30;

/// How long a client waits after a 429 that names no usable wait (no valid `Retry-After`,
/// and no `X-RateLimit-Reset` with nothing remaining): the page's own sample client reads
/// `int(resp.headers.get("Retry-After", "30"))`.
pub const RATE_LIMIT_DEFAULT_WAIT_SECONDS: u64 = 30;

/// Rate limits are counted over windows of this many seconds (per key, per minute).
pub const RATE_LIMIT_WINDOW_SECONDS: u64 = 60;

/// An account tier and its limits.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// 10 requests per minute, 2 concurrent runs.
    Free,
    /// 60 requests per minute, 10 concurrent runs.
    Pro,
    /// 600 requests per minute, 50 concurrent runs.
    Enterprise,
}

impl Tier {
    /// Every tier, in page order.
    pub const ALL: &'static [Tier] = &[Tier::Free, Tier::Pro, Tier::Enterprise];

    /// The tier's name as the page writes it (`"free"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }

    /// Requests allowed per key per minute.
    pub const fn requests_per_minute(self) -> u32 {
        match self {
            Tier::Free => 10,
            Tier::Pro => 60,
            Tier::Enterprise => 600,
        }
    }

    /// Runs that may be in progress at once.
    pub const fn concurrent_runs(self) -> u32 {
        match self {
            Tier::Free => 2,
            Tier::Pro => 10,
            Tier::Enterprise => 50,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string names no tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier: expected one of free, pro, enterprise")]
pub struct ParseTierError;

impl FromStr for Tier {
    type Err = ParseTierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or(ParseTierError)
    }
}

/// A response header the API documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSpec {
    /// The name as the page writes it, e.g. `"X-RateLimit-Limit"`.
    pub name: &'static str,
    /// What the header carries.
    pub description: &'static str,
    /// When the API sends it.
    pub sent: &'static str,
}

impl HeaderSpec {
    /// The lowercase form that HTTP/2 and the `http` crate use. Header names are ASCII.
    pub fn lowercase(&self) -> String {
        self.name.to_ascii_lowercase()
    }
}

/// The header names the API documents.
pub mod headers {
    use super::HeaderSpec;

    /// Requests allowed per minute for the key's tier.
    pub const RATE_LIMIT_LIMIT: HeaderSpec = HeaderSpec {
        name: "X-RateLimit-Limit",
        description: "Requests allowed per minute for the key's tier",
        sent: "every response",
    };
    /// Requests left in the current minute.
    pub const RATE_LIMIT_REMAINING: HeaderSpec = HeaderSpec {
        name: "X-RateLimit-Remaining",
        description: "Requests left in the current minute",
        sent: "every response",
    };
    /// When the window resets: a Unix timestamp in seconds (UTC).
    pub const RATE_LIMIT_RESET: HeaderSpec = HeaderSpec {
        name: "X-RateLimit-Reset",
        description: "When the current window resets, as a Unix timestamp in seconds (UTC)",
        sent: "every response",
    };
    /// Seconds to wait before retrying (or an HTTP-date).
    pub const RETRY_AFTER: HeaderSpec = HeaderSpec {
        name: "Retry-After",
        description: "Seconds to wait before retrying (delta-seconds, or an HTTP-date per RFC 9110)",
        sent: "429 responses; 503 when a delay is known",
    };
    /// The server-side trace id of the request; quote it in support tickets.
    pub const REQUEST_ID: HeaderSpec = HeaderSpec {
        name: "X-Request-Id",
        description: "Identifies the request's server-side trace; include it in support tickets",
        sent: "every response",
    };

    /// All of them, in the order the page introduces them.
    pub const ALL: &[HeaderSpec] = &[
        RATE_LIMIT_LIMIT,
        RATE_LIMIT_REMAINING,
        RATE_LIMIT_RESET,
        RETRY_AFTER,
        REQUEST_ID,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse_and_print() {
        for &t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!("Free".parse::<Tier>(), Err(ParseTierError));
    }

    #[test]
    fn header_names_are_unique_tokens() {
        let mut seen = std::collections::HashSet::new();
        for h in headers::ALL {
            assert!(seen.insert(h.lowercase()));
            assert!(
                h.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            );
            assert!(!h.description.is_empty());
        }
    }
}
