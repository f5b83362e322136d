//! The error-code table: every code of the reference page, declared once.

use core::fmt;
use core::str::FromStr;

use crate::rule::RetryRule;

/// The five groups the reference page sorts its error codes into.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum Category {
    /// API key problems: missing, revoked or not permitted.
    Authentication,
    /// Credits and payment.
    Billing,
    /// The request itself is malformed or rejected.
    Validation,
    /// The addressed run, file, image or webhook.
    Resources,
    /// Timeouts, rate limits and server-side failures.
    Runtime,
}

impl Category {
    /// Every category, in the order the reference page lists them.
    pub const ALL: &'static [Category] = &[
        Category::Authentication,
        Category::Billing,
        Category::Validation,
        Category::Resources,
        Category::Runtime,
    ];

    /// The heading the reference page uses for this category.
    pub const fn title(self) -> &'static str {
        match self {
            Category::Authentication => "Authentication",
            Category::Billing => "Billing",
            Category::Validation => "Validation",
            Category::Resources => "Resources",
            Category::Runtime => "Runtime",
        }
    }

    /// A lowercase machine name, as used in the catalog (`"authentication"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Category::Authentication => "authentication",
            Category::Billing => "billing",
            Category::Validation => "validation",
            Category::Resources => "resources",
            Category::Runtime => "runtime",
        }
    }

    /// The codes in this category, in page order.
    pub fn codes(self) -> impl Iterator<Item = ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .filter(move |c| c.category() == self)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

/// Everything the reference page says about one error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeSpec {
    /// The wire string sent in the envelope's `error` member.
    pub wire: &'static str,
    /// The page's category heading for the code.
    pub category: Category,
    /// The HTTP status the API answers with.
    pub status: u16,
    /// "When it occurs", exactly as published.
    pub when: &'static str,
    /// "How to fix it", exactly as published.
    pub fix: &'static str,
    /// What a client should do when it receives the code.
    pub retry: RetryRule,
}

macro_rules! error_codes {
    ($(
        $variant:ident = $wire:literal, $category:ident, $status:literal, $retry:expr,
            when: $when:literal,
            fix: $fix:literal;
    )*) => {
        /// An error code of the Overten API, as sent in the envelope's `error` member.
        ///
        /// Every variant comes from one row of the reference page; each variant's
        /// documentation is the page's "when it occurs" text. The enum is
        /// `#[non_exhaustive]`: servers may add codes before clients update, and a client
        /// keeps such a code as [`Code::Unknown`](crate::Code::Unknown).
        #[non_exhaustive]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(clippy::doc_markdown, reason = "variant docs are the page's text, verbatim")]
        pub enum ErrorCode {
            $(
                #[doc = $when]
                $variant,
            )*
        }

        impl ErrorCode {
            /// Every code, in the order the reference page lists them.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// Everything the reference page says about this code.
            pub const fn spec(self) -> &'static CodeSpec {
                match self {
                    $(ErrorCode::$variant => &CodeSpec {
                        wire: $wire,
                        category: Category::$category,
                        status: $status,
                        when: $when,
                        fix: $fix,
                        retry: $retry,
                    },)*
                }
            }

            /// Looks a code up by its wire string, exactly (case-sensitive), without allocating.
            pub fn from_wire(wire: &str) -> Option<ErrorCode> {
                match wire {
                    $($wire => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    InvalidApiKey = "invalid_api_key", Authentication, 401, RetryRule::Never,
        when: "Missing, malformed, or revoked sk_live_* key",
        fix: "Check your Authorization header; rotate the key if it may be compromised";
    Forbidden = "forbidden", Authentication, 403, RetryRule::Never,
        when: "Key is valid but lacks permission — suspended org or wrong tier",
        fix: "Check org status via GET /verify";
    InsufficientCredits = "insufficient_credits", Billing, 402, RetryRule::Never,
        when: "Org balance is below the minimum required for the requested format",
        fix: "Top up via the dashboard or contact sales";
    InvalidRequest = "invalid_request", Validation, 400, RetryRule::Never,
        when: "Missing required field or bad enum value",
        fix: "Fix the payload according to the error message";
    ValidationError = "validation_error", Validation, 422, RetryRule::Never,
        when: "Field-level rejection on the request body",
        fix: "The message contains a JSON pointer to the exact failing field";
    PreflightFailed = "preflight_failed", Validation, 400, RetryRule::Never,
        when: "LLM validator rejected the request due to missing assets",
        fix: "Attach the missing assets or rephrase the prompt";
    PayloadTooLarge = "payload_too_large", Validation, 413, RetryRule::Never,
        when: "Uploaded file exceeds the tier limit",
        fix: "Compress the file or upgrade your tier";
    NotFound = "not_found", Resources, 404, RetryRule::Never,
        when: "Run, file, image, or webhook ID doesn’t exist or belongs to another org",
        fix: "Check the ID spelling; confirm it was created under the same org";
    Gone = "gone", Resources, 410, RetryRule::Never,
        when: "Resource existed but passed the 30-day retention window",
        fix: "Start a new run";
    Conflict = "conflict", Resources, 409, RetryRule::Never,
        when: "Idempotency key reused with a different request body, or resource is in an invalid state",
        fix: "Use a different idempotency key, or wait for the resource to reach a terminal state";
    SyncTimeoutUpgradeAsync = "sync_timeout_upgrade_async", Runtime, 408, RetryRule::ResubmitAsync,
        when: "Sync request hit the 300-second ceiling",
        fix: "Resubmit with async: true and poll /tasks/{id}";
    RateLimitExceeded = "rate_limit_exceeded", Runtime, 429, RetryRule::RetryAfter,
        when: "Exceeded the per-key, per-minute limit for your tier",
        fix: "Retry after the number of seconds in the Retry-After header";
    InternalError = "internal_error", Runtime, 500, RetryRule::Backoff,
        when: "Unhandled server exception",
        fix: "Include the X-Request-Id header value in your support ticket";
    UpstreamError = "upstream_error", Runtime, 502, RetryRule::Backoff,
        when: "LLM provider, storage, or rendering pipeline outage",
        fix: "Retry with exponential backoff";
    ServiceUnavailable = "service_unavailable", Runtime, 503,
        crate::rule::UNAVAILABLE_WINDOW,
        when: "Worker pool saturated or scheduled maintenance window",
        fix: "Retry after 30–60 seconds";
    NotImplemented = "not_implemented", Runtime, 501, RetryRule::Never,
        when: "Endpoint exists for shape compatibility but the feature isn’t available on your tier or deployment",
        fix: "Contact support@overten.ai";
}

impl ErrorCode {
    /// The wire string, e.g. `"rate_limit_exceeded"`.
    pub const fn as_str(self) -> &'static str {
        self.spec().wire
    }

    /// The HTTP status the API sends with this code.
    pub const fn status(self) -> u16 {
        self.spec().status
    }

    /// The page's category for this code.
    pub const fn category(self) -> Category {
        self.spec().category
    }

    /// "When it occurs", as published.
    pub const fn when(self) -> &'static str {
        self.spec().when
    }

    /// "How to fix it", as published.
    pub const fn fix(self) -> &'static str {
        self.spec().fix
    }

    /// What a client should do on receiving this code with its own status.
    pub const fn retry(self) -> RetryRule {
        self.spec().retry
    }

    /// The first code of the table (in page order) sent with `status`, if any:
    /// 502 -> `upstream_error`, 400 -> `invalid_request`.
    pub fn for_status(status: u16) -> Option<ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.status() == status)
    }

    /// The code to write for an error that has none (re-serving a response whose body
    /// carried no code): [`ErrorCode::for_status`], else `internal_error` for a 5xx or any
    /// other status and `invalid_request` for a 4xx. Never an empty string.
    pub fn canonical(status: u16) -> ErrorCode {
        ErrorCode::for_status(status).unwrap_or(if (400..500).contains(&status) {
            ErrorCode::InvalidRequest
        } else {
            ErrorCode::InternalError
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not the wire string of any code this version knows.
///
/// It carries no copy of the input, so parsing never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an error code known to this version of overten-errors")]
pub struct ParseCodeError;

impl FromStr for ErrorCode {
    type Err = ParseCodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::from_wire(s).ok_or(ParseCodeError)
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Exactly a wire string this version knows: `Option<ErrorCode>` in a request type reads
/// `"not_found"` and refuses `"Not_Found"` or a code newer than this version, with an error
/// that does not repeat the input (use [`Code`] to keep codes you do not know).
///
/// ```
/// use overten_errors::ErrorCode;
/// let code: ErrorCode = serde_json::from_str(r#""rate_limit_exceeded""#).unwrap();
/// assert_eq!(code, ErrorCode::RateLimitExceeded);
/// assert!(serde_json::from_str::<ErrorCode>(r#""quota_frozen""#).is_err());
/// ```
impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ErrorCodeVisitor;
        impl serde::de::Visitor<'_> for ErrorCodeVisitor {
            type Value = ErrorCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an error code string this version knows")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ErrorCode, E> {
                // The input is not echoed: it may be long, or not meant for a log.
                ErrorCode::from_wire(v).ok_or_else(|| E::custom(ParseCodeError))
            }
        }
        deserializer.deserialize_str(ErrorCodeVisitor)
    }
}

/// A code as received: one this version knows, or the raw string of a newer one.
///
/// Clients parse with [`Code::parse`], which never fails: a server deployed ahead of its
/// clients may send codes they have not heard of, and those are classified by HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Code {
    /// A code of the reference page.
    Known(ErrorCode),
    /// A code this version does not know, kept as sent.
    Unknown(Box<str>),
    /// The response carried no code at all (an HTML page from a proxy, an empty body):
    /// only its HTTP status can say what happened. Its wire string is empty.
    Missing,
}

impl Code {
    /// Parses a wire string; an unknown one is kept (the only case that allocates). An
    /// empty string is no code at all: [`Code::Missing`].
    pub fn parse(wire: &str) -> Code {
        match ErrorCode::from_wire(wire) {
            Some(code) => Code::Known(code),
            None if wire.is_empty() => Code::Missing,
            None => Code::Unknown(wire.into()),
        }
    }

    /// The wire string, known or not.
    pub fn as_str(&self) -> &str {
        match self {
            Code::Known(code) => code.as_str(),
            Code::Unknown(raw) => raw,
            Code::Missing => "",
        }
    }

    /// The known code, if this version knows it.
    pub const fn known(&self) -> Option<ErrorCode> {
        match self {
            Code::Known(code) => Some(*code),
            Code::Unknown(_) | Code::Missing => None,
        }
    }
}

impl From<ErrorCode> for Code {
    fn from(code: ErrorCode) -> Self {
        Code::Known(code)
    }
}

impl PartialEq<ErrorCode> for Code {
    fn eq(&self, other: &ErrorCode) -> bool {
        self.known() == Some(*other)
    }
}

impl fmt::Display for Code {
    /// The wire string, control characters escaped; `(no code)` for [`Code::Missing`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Code::Missing => f.write_str("(no code)"),
            Code::Known(code) => f.write_str(code.as_str()),
            Code::Unknown(raw) => fmt::Display::fmt(&crate::text::LogSafe(raw), f),
        }
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CodeVisitor;
        impl serde::de::Visitor<'_> for CodeVisitor {
            type Value = Code;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an error code string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Code, E> {
                Ok(Code::parse(v))
            }
        }
        deserializer.deserialize_str(CodeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate wire string {code}");
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
            assert_eq!(code.to_string(), code.as_str());
            assert_eq!(Code::parse(code.as_str()), Code::Known(code));
        }
    }

    #[test]
    fn error_codes_deserialize_from_their_wire_strings_only() {
        for &code in ErrorCode::ALL {
            let json = format!("\"{}\"", code.as_str());
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        let long = format!("\"{}\"", "x".repeat(10_000));
        for bad in [
            r#""Not_Found""#,
            r#""quota_frozen""#,
            r#""""#,
            "42",
            "null",
            &long,
        ] {
            let err = serde_json::from_str::<ErrorCode>(bad)
                .unwrap_err()
                .to_string();
            assert!(err.len() < 200, "the input is not echoed: {err}");
        }
        let not_a_string = serde_json::from_str::<ErrorCode>("42")
            .unwrap_err()
            .to_string();
        assert!(
            not_a_string.contains("an error code string this version knows"),
            "{not_a_string}"
        );
        let optional: Option<ErrorCode> = serde_json::from_str("null").unwrap();
        assert_eq!(optional, None);
    }

    #[test]
    fn parsing_is_exact() {
        assert_eq!("Not_Found".parse::<ErrorCode>(), Err(ParseCodeError));
        assert_eq!(" not_found".parse::<ErrorCode>(), Err(ParseCodeError));
        assert_eq!("".parse::<ErrorCode>(), Err(ParseCodeError));
        assert_eq!(Code::parse("quota_frozen").as_str(), "quota_frozen");
        assert_eq!(Code::parse("quota_frozen").known(), None);
    }

    #[test]
    fn every_row_has_text_and_a_sensible_status() {
        for &code in ErrorCode::ALL {
            let spec = code.spec();
            assert!(!spec.when.trim().is_empty() && !spec.fix.trim().is_empty());
            assert!((400..600).contains(&spec.status), "{code}");
            assert!(
                spec.wire
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
        }
    }

    #[test]
    fn categories_partition_the_codes() {
        let total: usize = Category::ALL.iter().map(|c| c.codes().count()).sum();
        assert_eq!(total, ErrorCode::ALL.len());
        for &c in Category::ALL {
            assert!(c.codes().count() > 0, "{c} has no codes");
        }
    }
}
