//! The HTTP status table of the reference page.

/// The broad class of an HTTP status.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum StatusKind {
    /// 1xx: informational.
    Informational,
    /// 2xx: the request worked.
    Success,
    /// 3xx: look elsewhere.
    Redirect,
    /// 4xx: the request must change before it can succeed (408 and 429 aside).
    ClientError,
    /// 5xx: the server failed; usually transient.
    ServerError,
    /// Outside 100..=599: not a valid HTTP status.
    Invalid,
}

impl StatusKind {
    /// The class of any status number.
    pub const fn of(status: u16) -> StatusKind {
        match status {
            100..=199 => StatusKind::Informational,
            200..=299 => StatusKind::Success,
            300..=399 => StatusKind::Redirect,
            400..=499 => StatusKind::ClientError,
            500..=599 => StatusKind::ServerError,
            _ => StatusKind::Invalid,
        }
    }

    /// A lowercase machine name (`"client_error"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            StatusKind::Informational => "informational",
            StatusKind::Success => "success",
            StatusKind::Redirect => "redirect",
            StatusKind::ClientError => "client_error",
            StatusKind::ServerError => "server_error",
            StatusKind::Invalid => "invalid",
        }
    }
}

/// One row of the page's status table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusInfo {
    /// The HTTP status code.
    pub status: u16,
    /// The page's category label, e.g. `"Rate limited"`.
    pub category: &'static str,
    /// The page's typical scenario, as published.
    pub scenario: &'static str,
}

impl StatusInfo {
    /// The class of this status.
    pub const fn kind(&self) -> StatusKind {
        StatusKind::of(self.status)
    }
}

const fn row(status: u16, category: &'static str, scenario: &'static str) -> StatusInfo {
    StatusInfo {
        status,
        category,
        scenario,
    }
}

/// Every status the API returns, in page order (ascending).
pub const STATUSES: &[StatusInfo] = &[
    row(200, "Success", "Sync result returned"),
    row(
        201,
        "Resource created",
        "File uploaded, key minted, webhook subscribed",
    ),
    row(202, "Accepted (async)", "Task queued; poll /tasks/{id}"),
    row(204, "No content", "Image, key, or webhook deleted"),
    row(302, "Redirect", "GET /runs/{id}/download"),
    row(400, "Bad request", "Validation or preflight error"),
    row(401, "Unauthorized", "Bad or missing API key"),
    row(402, "Payment required", "Out of credits"),
    row(403, "Forbidden", "Key valid but not permitted"),
    row(
        404,
        "Not found",
        "Run, file, or image doesn’t exist or belongs to another org",
    ),
    row(
        408,
        "Timeout",
        "Sync ceiling exceeded; response body tells you to retry async",
    ),
    row(
        409,
        "Conflict",
        "Idempotency key collision or invalid resource state",
    ),
    row(410, "Gone", "Resource existed but was deleted or expired"),
    row(413, "Payload too large", "Upload exceeds tier limit"),
    row(
        422,
        "Validation",
        "Field-level rejection on the request body",
    ),
    row(429, "Rate limited", "See the Retry-After header"),
    row(
        500,
        "Server error",
        "Unhandled exception on our side — gets paged automatically",
    ),
    row(
        501,
        "Not implemented",
        "Endpoint exists but the feature isn’t live yet",
    ),
    row(
        502,
        "Upstream error",
        "A dependency (model provider, storage, or rendering pipeline) failed",
    ),
    row(
        503,
        "Service unavailable",
        "Capacity exhausted or scheduled maintenance",
    ),
];

/// The page's row for a status, if the API documents it.
pub fn status_info(status: u16) -> Option<&'static StatusInfo> {
    STATUSES
        .binary_search_by_key(&status, |s| s.status)
        .ok()
        .and_then(|i| STATUSES.get(i))
}

/// The page's scenario for a status, or `HTTP status N` for one the page does not list: the
/// public message of an error whose body said nothing usable.
#[must_use]
pub fn fallback_message(status: u16) -> std::borrow::Cow<'static, str> {
    match status_info(status) {
        Some(info) => std::borrow::Cow::Borrowed(info.scenario),
        None => std::borrow::Cow::Owned(format!("HTTP status {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn table_is_sorted_unique_and_looked_up() {
        assert!(STATUSES.windows(2).all(|w| w[0].status < w[1].status));
        for s in STATUSES {
            assert_eq!(status_info(s.status), Some(s));
        }
        assert_eq!(status_info(418), None);
        assert_eq!(status_info(0), None);
    }

    #[test]
    fn every_code_status_is_in_the_status_table() {
        for &code in ErrorCode::ALL {
            assert!(status_info(code.status()).is_some(), "{code}");
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(StatusKind::of(204), StatusKind::Success);
        assert_eq!(StatusKind::of(302), StatusKind::Redirect);
        assert_eq!(StatusKind::of(429), StatusKind::ClientError);
        assert_eq!(StatusKind::of(503), StatusKind::ServerError);
        assert_eq!(StatusKind::of(99), StatusKind::Invalid);
        assert_eq!(StatusKind::of(600), StatusKind::Invalid);
    }
}
