//! The server's hints about when to retry: `Retry-After` and the `X-RateLimit-*` headers.

use core::time::Duration;
use std::time::SystemTime;

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
        parse_http_date(value)
            .map(RetryAfter::At)
            .ok_or(RetryAfterError::Invalid)
    }

    /// How long from `now` this value asks to wait; a date in the past is zero.
    ///
    /// `Seconds` past what a [`Duration`] holds cannot occur (`u64` seconds always fit).
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
    /// How long from `now` until the window resets: zero if it has already, and
    /// [`Duration::MAX`] when the reset lies past any time this platform can represent
    /// (such a reset is "too long", never "already passed").
    pub fn reset_in(&self, now: SystemTime) -> Duration {
        match SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(self.reset)) {
            Some(reset) => reset.duration_since(now).unwrap_or(Duration::ZERO),
            None => Duration::MAX,
        }
    }
}

/// An HTTP-date in any of RFC 9110's three forms (section 5.6.7), the leap second
/// `23:59:60` included: it names the instant one second after `23:59:59`.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    // `httpdate` stops at second 59; RFC 9110 allows 60 after 23:59. The time of day is
    // the only `23:59:60` in any of the three forms.
    const LEAP: &str = "23:59:60";
    if let Ok(at) = httpdate::parse_http_date(value) {
        return Some(at);
    }
    let at = value.find(LEAP)?;
    let mut text = String::with_capacity(value.len());
    text.push_str(&value[..at]);
    text.push_str("23:59:59");
    text.push_str(&value[at + LEAP.len()..]);
    httpdate::parse_http_date(&text)
        .ok()?
        .checked_add(Duration::from_secs(1))
}
