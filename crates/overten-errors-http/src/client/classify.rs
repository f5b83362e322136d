//! Client side: any response -> `ApiError` + one advised action.

use std::borrow::Cow;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, response};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use overten_errors::{
    Advice, ApiError, BodyError, Code, ErrorBody, IdError, MAX_ID_BYTES, Pacer, RandomSource,
    RateLimit, RetryAfter, RetryAfterError, RetryPolicy, check_id,
};

use crate::names;

/// The largest body [`classify`] parses and [`read_body_limited`] reads: the core's
/// [`overten_errors::MAX_BODY_BYTES`], 64 KiB, a byte order mark included. An error
/// envelope is a few hundred bytes; anything near this size is not one.
pub const MAX_BODY_BYTES: usize = overten_errors::MAX_BODY_BYTES;

/// The longest `X-Request-Id` kept: the core's [`MAX_ID_BYTES`] (256), the same bound the
/// server side writes under. Longer values are dropped, not truncated, since a truncated
/// id would point at the wrong trace.
pub const MAX_REQUEST_ID_BYTES: usize = MAX_ID_BYTES;

/// What is wrong with one header.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The header was sent more than once with different values.
    #[error("sent more than once with different values")]
    Duplicate,
    /// The value is not visible ASCII text (for `X-Request-Id`: it holds a space, a
    /// control character or non-ASCII text).
    #[error("not visible ASCII text")]
    NotText,
    /// The value is longer than this crate keeps.
    #[error("too long")]
    TooLong,
    /// The value is not a non-negative integer.
    #[error("not a non-negative integer")]
    NotANumber,
    /// The value is an integer too large for its field.
    #[error("too large")]
    Overflow,
    /// Only some of the `X-RateLimit-*` headers were sent.
    #[error("only some X-RateLimit-* headers were sent")]
    Incomplete,
    /// `Retry-After` is neither delta-seconds nor an HTTP-date.
    #[error(transparent)]
    RetryAfter(RetryAfterError),
}

/// Why the body could not say what happened.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyIssue {
    /// The body is larger than [`MAX_BODY_BYTES`]; it was not parsed (or read past the cap).
    #[error("body larger than {} bytes", MAX_BODY_BYTES)]
    TooLarge,
    /// The body is not an error envelope.
    #[error("not an error envelope: {0}")]
    NotAnEnvelope(BodyError),
}

/// Every malformed part of a response, each typed; the error is built regardless.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// Why the body did not give the code and message, if it did not.
    pub body: Option<BodyIssue>,
    /// The body gave a code but no usable message (missing, `null`, not a string): the
    /// code is kept and the message is the page's text for it.
    pub message: Option<BodyError>,
    /// A known code came with another status than its own (which this holds): the status
    /// decided the retry rule, and the code was kept.
    pub status_mismatch: Option<u16>,
    /// A malformed `Retry-After` (ignored for the decision, which then backs off).
    pub retry_after: Option<HeaderError>,
    /// A malformed `X-RateLimit-*` header: which one, and what is wrong.
    pub rate_limit: Option<(&'static HeaderName, HeaderError)>,
    /// A malformed `X-Request-Id` (left off the error).
    pub request_id: Option<HeaderError>,
}

impl Diagnostics {
    /// True when nothing was malformed.
    pub fn is_clean(&self) -> bool {
        *self == Diagnostics::default()
    }

    /// The headers that were malformed, and so counted as not sent, lowercase, in the order
    /// `retry-after`, the `x-ratelimit-*` one, `x-request-id` (a fixture's
    /// `header_problems`).
    pub fn header_problems(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.retry_after.is_some() {
            out.push("retry-after");
        }
        if let Some((name, _)) = self.rate_limit {
            out.push(name.as_str());
        }
        if self.request_id.is_some() {
            out.push("x-request-id");
        }
        out
    }

    /// Whether the message came from the body (an envelope with a string message), not
    /// from the page's text (a fixture's `message_from_body`).
    pub fn message_from_body(&self) -> bool {
        self.body.is_none() && self.message.is_none()
    }

    /// Every field as JSON: each problem as its text, or `null`.
    pub fn to_json(&self) -> serde_json::Value {
        let text = |e: Option<String>| e.map_or(serde_json::Value::Null, serde_json::Value::String);
        serde_json::json!({
            "body": text(self.body.as_ref().map(ToString::to_string)),
            "message": text(self.message.as_ref().map(ToString::to_string)),
            "status_mismatch": self.status_mismatch,
            "retry_after": text(self.retry_after.map(|e| e.to_string())),
            "rate_limit": self.rate_limit.map(|(name, e)| serde_json::json!({
                "header": name.as_str(),
                "problem": e.to_string(),
            })),
            "request_id": text(self.request_id.map(|e| e.to_string())),
        })
    }
}

/// A response read as an error.
#[derive(Debug, Clone)]
pub struct Received {
    /// The error, with the ids and hints the response carried.
    pub error: ApiError,
    /// What was malformed, if anything.
    pub diagnostics: Diagnostics,
}

impl Received {
    /// What a client read, as JSON: the fields of a golden fixture's `expect` (`status`,
    /// `code`, `known`, `message`, `request_id`, `task_id`, `body_is_envelope`,
    /// `message_from_body`, `status_mismatch`, `header_problems`; see `docs/README.md`),
    /// and `diagnostics` with every problem's text.
    pub fn report(&self) -> serde_json::Value {
        let e = &self.error;
        let d = &self.diagnostics;
        serde_json::json!({
            "status": e.status(),
            "code": (!e.code().as_str().is_empty()).then(|| e.code().as_str()),
            "known": e.code().known().is_some(),
            "message": e.message(),
            "request_id": e.request_id(),
            "run_id": e.run_id(),
            "task_id": e.task_id(),
            "body_is_envelope": d.body.is_none(),
            "message_from_body": d.message_from_body(),
            "status_mismatch": e.status_mismatch(),
            "header_problems": d.header_problems(),
            "diagnostics": d.to_json(),
        })
    }
}

impl Received {
    /// The one action to take next: the core's [`RetryPolicy::decide`] for this error.
    pub fn advise<R: RandomSource + ?Sized>(
        &self,
        policy: &RetryPolicy,
        attempt: u32,
        now: SystemTime,
        rng: &mut R,
    ) -> Advice {
        policy.decide(&self.error, attempt, now, rng)
    }
}

/// Reads a response's status, headers and body into an error.
///
/// The envelope gives the code and message (and `run_id` / `task_id`); a code this version
/// does not know is kept. Where the body cannot say — an HTML page from a proxy, an empty,
/// truncated, non-UTF-8 or deeply nested body, one over [`MAX_BODY_BYTES`] — the code is
/// [`Code::Missing`], the status decides the retry rule, and the public message is the
/// reference page's text for the status (or `HTTP status N`), never the body.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Received {
    classify_read(status, headers, Ok(body))
}

/// [`classify`] for `http::response::Parts`.
pub fn classify_parts(parts: &response::Parts, body: &[u8]) -> Received {
    classify(parts.status, &parts.headers, body)
}

/// Reads a whole response, body capped at [`MAX_BODY_BYTES`], and classifies it.
///
/// The outer error is the transport's (the connection broke while reading the body).
pub async fn classify_response<B>(
    response: http::Response<B>,
) -> Result<Received, Box<dyn std::error::Error + Send + Sync>>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = response.into_parts();
    let read = read_body_limited(&parts.headers, body).await?;
    Ok(classify_read(
        parts.status,
        &parts.headers,
        read.as_deref().map_err(Clone::clone),
    ))
}

pub(crate) fn classify_read(
    status: StatusCode,
    headers: &HeaderMap,
    body: Result<&[u8], BodyIssue>,
) -> Received {
    let mut diagnostics = Diagnostics::default();
    let status_u16 = status.as_u16();
    let mut error = match body.and_then(parse_body) {
        Ok(mut parsed) => {
            diagnostics.message = parsed.message_issue.take();
            ApiError::from_body(parsed, status_u16)
        }
        Err(issue) => {
            diagnostics.body = Some(issue);
            ApiError::received(Code::Missing, status_u16, status_message(status))
        }
    };
    diagnostics.status_mismatch = error.status_mismatch();
    let found = scan(headers);
    // The setter applies the id rule; only an id it refuses is checked again, to name why.
    match trimmed_request_id(found.request_id) {
        Ok(Some(id)) => {
            error.set_request_id(id);
            if error.request_id().is_none() {
                diagnostics.request_id = id_error(id).err();
            }
        }
        Ok(None) => {}
        Err(e) => diagnostics.request_id = Some(e),
    }
    match retry_after_value(found.retry_after) {
        Ok(Some(ra)) => error.set_retry_after(ra),
        Ok(None) => {}
        Err(e) => diagnostics.retry_after = Some(e),
    }
    match rate_limit_values(&found) {
        Ok(Some(rl)) => error.set_rate_limit(rl),
        Ok(None) => {}
        Err(e) => diagnostics.rate_limit = Some(e),
    }
    Received { error, diagnostics }
}

fn parse_body(body: &[u8]) -> Result<ErrorBody, BodyIssue> {
    if body.len() > MAX_BODY_BYTES {
        return Err(BodyIssue::TooLarge);
    }
    ErrorBody::parse(body).map_err(BodyIssue::NotAnEnvelope)
}

/// The public message for a response whose body said nothing usable.
/// The page's scenario for the status, else `HTTP status N`: never a reason phrase, whose
/// table differs between HTTP libraries, so every client writes the same text.
fn status_message(status: StatusCode) -> Cow<'static, str> {
    overten_errors::fallback_message(status.as_u16())
}

/// One header's value as found: absent, one value (several identical values count as
/// one), or [`HeaderError::Duplicate`].
type Slot<'h> = Result<Option<&'h HeaderValue>, HeaderError>;

/// The five headers a client reads, each found once.
#[derive(Debug, Clone, Copy)]
struct Found<'h> {
    request_id: Slot<'h>,
    retry_after: Slot<'h>,
    limit: Slot<'h>,
    remaining: Slot<'h>,
    reset: Slot<'h>,
}

/// Adds a value to its slot: the first is kept, a different second one makes it a
/// duplicate (compared byte for byte, untrimmed, as `docs/retry.md` says).
fn record<'h>(slot: &mut Slot<'h>, value: &'h HeaderValue) {
    match slot {
        Ok(None) => *slot = Ok(Some(value)),
        Ok(Some(first)) if *first != value => *slot = Err(HeaderError::Duplicate),
        _ => {}
    }
}

/// The five names as text, and a mask of their lengths (bit `n` set when one is `n` bytes
/// long), made once from the core's table.
struct ClientNames {
    request_id: &'static str,
    retry_after: &'static str,
    limit: &'static str,
    remaining: &'static str,
    reset: &'static str,
    lengths: u64,
}

static CLIENT_NAMES: std::sync::LazyLock<ClientNames> = std::sync::LazyLock::new(|| {
    let text = |name: &'static HeaderName| -> &'static str { name.as_str() };
    let names = ClientNames {
        request_id: text(&names::REQUEST_ID),
        retry_after: text(&names::RETRY_AFTER),
        limit: text(&names::RATE_LIMIT_LIMIT),
        remaining: text(&names::RATE_LIMIT_REMAINING),
        reset: text(&names::RATE_LIMIT_RESET),
        lengths: 0,
    };
    let lengths = [
        names.request_id,
        names.retry_after,
        names.limit,
        names.remaining,
        names.reset,
    ]
    .iter()
    .fold(0u64, |mask, n| mask | length_bit(n.len()));
    ClientNames { lengths, ..names }
});

/// Bit `len` of a length mask; names of 64 bytes or more share bit 63.
fn length_bit(len: usize) -> u64 {
    1u64 << len.min(63)
}

/// Finds the five headers in one pass over the map (a hash lookup for each would cost
/// more than comparing every name of a response's few headers). The map is bounded by the
/// transport (hyper accepts 100 headers by default); the pass is linear in it, and a name
/// whose length none of the five has is passed over after one mask test.
fn scan(headers: &HeaderMap) -> Found<'_> {
    let mut found = Found {
        request_id: Ok(None),
        retry_after: Ok(None),
        limit: Ok(None),
        remaining: Ok(None),
        reset: Ok(None),
    };
    let names = &*CLIENT_NAMES;
    for (name, value) in headers {
        let name = name.as_str();
        if names.lengths & length_bit(name.len()) == 0 {
            continue;
        }
        let slot = if name == names.retry_after {
            &mut found.retry_after
        } else if name == names.request_id {
            &mut found.request_id
        } else if name == names.limit {
            &mut found.limit
        } else if name == names.remaining {
            &mut found.remaining
        } else if name == names.reset {
            &mut found.reset
        } else {
            continue;
        };
        record(slot, value);
    }
    found
}

fn text(value: &HeaderValue) -> Result<&str, HeaderError> {
    value.to_str().map_err(|_| HeaderError::NotText)
}

/// Reads `X-Request-Id`: the value with the whitespace around it trimmed, under the core's
/// one rule for ids ([`check_id`]: 1 to [`MAX_REQUEST_ID_BYTES`] bytes of visible ASCII),
/// the rule the server side writes under. A blank value is no id.
pub fn request_id_header(headers: &HeaderMap) -> Result<Option<String>, HeaderError> {
    match trimmed_request_id(scan(headers).request_id)? {
        Some(id) => id_error(id).map(|id| id.map(str::to_owned)),
        None => Ok(None),
    }
}

/// The `X-Request-Id` value with the whitespace around it trimmed, as text, not yet checked
/// against the id rule (`None` when absent or blank).
fn trimmed_request_id(slot: Slot<'_>) -> Result<Option<&str>, HeaderError> {
    let Some(value) = slot? else {
        return Ok(None);
    };
    let trimmed = value.as_bytes().trim_ascii();
    if trimmed.len() > MAX_REQUEST_ID_BYTES {
        return Err(HeaderError::TooLong);
    }
    match std::str::from_utf8(trimmed) {
        Ok("") => Ok(None),
        Ok(id) => Ok(Some(id)),
        Err(_) => Err(HeaderError::NotText),
    }
}

/// The id rule as a header error.
fn id_error(id: &str) -> Result<Option<&str>, HeaderError> {
    match check_id(id) {
        Ok(id) => Ok(Some(id)),
        Err(IdError::Empty) => Ok(None),
        Err(IdError::TooLong) => Err(HeaderError::TooLong),
        Err(_) => Err(HeaderError::NotText),
    }
}

/// Reads `Retry-After` in any RFC 9110 form (delta-seconds, IMF-fixdate, RFC 850, asctime).
pub fn retry_after_header(headers: &HeaderMap) -> Result<Option<RetryAfter>, HeaderError> {
    retry_after_value(scan(headers).retry_after)
}

fn retry_after_value(slot: Slot<'_>) -> Result<Option<RetryAfter>, HeaderError> {
    let Some(value) = slot? else {
        return Ok(None);
    };
    RetryAfter::parse(text(value)?)
        .map(Some)
        .map_err(HeaderError::RetryAfter)
}

/// A non-negative integer, optional whitespace around it, in one pass over the bytes.
fn number<T: TryFrom<u64>>(value: &HeaderValue) -> Result<T, HeaderError> {
    // A header value holds no CR or LF, so ASCII trimming is exactly OWS trimming.
    let digits = value.as_bytes().trim_ascii();
    if digits.is_empty() {
        return Err(HeaderError::NotANumber);
    }
    // Nineteen digits cannot overflow a u64: no overflow check per digit.
    if digits.len() <= 19 {
        let mut n: u64 = 0;
        for &b in digits {
            let digit = b.wrapping_sub(b'0');
            if digit > 9 {
                return Err(HeaderError::NotANumber);
            }
            n = n * 10 + u64::from(digit);
        }
        return T::try_from(n).map_err(|_| HeaderError::Overflow);
    }
    let mut n: u64 = 0;
    let mut overflow = false;
    for &b in digits {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return Err(HeaderError::NotANumber);
        }
        match n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(digit)))
        {
            Some(next) => n = next,
            None => overflow = true,
        }
    }
    if overflow {
        return Err(HeaderError::Overflow);
    }
    T::try_from(n).map_err(|_| HeaderError::Overflow)
}

/// False when `X-RateLimit-Remaining` is absent, or its (first) value is not 0 once
/// trimmed: then no reading of the three headers can give `remaining == 0`. True otherwise
/// (the three are then read in full, duplicates and all).
fn remaining_may_be_zero(headers: &HeaderMap) -> bool {
    // A pass comparing names as text costs less than hashing a custom name for `get`.
    let wanted = CLIENT_NAMES.remaining;
    headers
        .iter()
        .find(|(name, _)| name.as_str() == wanted)
        .is_some_and(|(_, v)| number::<u64>(v).is_ok_and(|n| n == 0))
}

/// Hold mode's reading of a response, success or not (`docs/retry.md`, *Pacing*, the
/// previous default; slot pacing needs the status too: [`observe_rate_limit_of`]): when its
/// three `X-RateLimit-*` headers, read whole as [`rate_limit_headers`] reads them, say
/// `Remaining` 0, `pacer` holds the key until the reset, spread with one draw from `rng`
/// ([`Pacer::observe`]). `now` is read only then. [`crate::Retrier::observe`] calls this
/// with its own pacer, clock and random source.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, HeaderValue};
/// use overten_errors::{Pacer, RetryPolicy};
/// let mut headers = HeaderMap::new();
/// headers.insert("x-ratelimit-limit", HeaderValue::from_static("60"));
/// headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
/// headers.insert("x-ratelimit-reset", HeaderValue::from_static("1020"));
/// let now = || SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
/// let (pacer, policy) = (Pacer::new(), RetryPolicy::default());
/// overten_errors_http::observe_rate_limit(&pacer, &headers, now, &policy, &mut || 0);
/// assert_eq!(pacer.hold(now(), &policy), Some(Duration::from_secs(20)));
/// ```
pub fn observe_rate_limit<R: RandomSource + ?Sized>(
    pacer: &Pacer,
    headers: &HeaderMap,
    now: impl FnOnce() -> SystemTime,
    policy: &RetryPolicy,
    rng: &mut R,
) {
    // Only a spent window holds anything: one pass settles every response whose
    // `X-RateLimit-Remaining` is absent or not 0 (nearly all), before the three are read.
    if !remaining_may_be_zero(headers) {
        return;
    }
    if let Ok(Some(rate_limit)) = rate_limit_headers(headers) {
        pacer.observe(&rate_limit, now(), policy, rng);
    }
}

/// Pacing's reading of a response with its status (`docs/retry.md`, *Pacing*): a pacer in
/// slot mode (the default) reads every response's window, a 429's apart; a
/// [`Pacer::hold_only`] pacer reads it exactly as [`observe_rate_limit`] does.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, HeaderValue, StatusCode};
/// use overten_errors::{Pacer, RetryPolicy};
/// let mut headers = HeaderMap::new();
/// headers.insert("x-ratelimit-limit", HeaderValue::from_static("10"));
/// headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
/// headers.insert("x-ratelimit-reset", HeaderValue::from_static("1020"));
/// let now = || SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
/// let (pacer, policy) = (Pacer::new(), RetryPolicy::default());
/// pacer.sent(now());
/// overten_errors_http::observe_rate_limit_of(&pacer, StatusCode::OK, &headers, now, &policy, &mut || 0);
/// assert_eq!(pacer.take(now(), &policy), Some(Duration::from_secs(20)));
/// assert_eq!(pacer.take(now(), &policy), Some(Duration::from_secs(26)));
/// ```
pub fn observe_rate_limit_of<R: RandomSource + ?Sized>(
    pacer: &Pacer,
    status: http::StatusCode,
    headers: &HeaderMap,
    now: impl FnOnce() -> SystemTime,
    policy: &RetryPolicy,
    rng: &mut R,
) {
    if !pacer.is_slotted() {
        observe_rate_limit(pacer, headers, now, policy, rng);
        return;
    }
    if let Ok(Some(rate_limit)) = rate_limit_headers(headers) {
        pacer.observe_response(&rate_limit, status.as_u16(), now(), policy, rng);
    }
}

type RateLimitResult = Result<Option<RateLimit>, (&'static HeaderName, HeaderError)>;

/// Reads `X-RateLimit-Limit`, `-Remaining` and `-Reset` together: all three or none.
/// The error names the header at fault.
pub fn rate_limit_headers(headers: &HeaderMap) -> RateLimitResult {
    rate_limit_values(&scan(headers))
}

fn rate_limit_values(found: &Found<'_>) -> RateLimitResult {
    fn field<T: TryFrom<u64>>(
        slot: Slot<'_>,
        name: &'static HeaderName,
    ) -> Result<Option<T>, (&'static HeaderName, HeaderError)> {
        slot.and_then(|v| v.map(number).transpose())
            .map_err(|e| (name, e))
    }
    let limit = field::<u32>(found.limit, &names::RATE_LIMIT_LIMIT)?;
    let remaining = field::<u32>(found.remaining, &names::RATE_LIMIT_REMAINING)?;
    let reset = field::<u64>(found.reset, &names::RATE_LIMIT_RESET)?;
    match (limit, remaining, reset) {
        (Some(limit), Some(remaining), Some(reset)) => Ok(Some(RateLimit {
            limit,
            remaining,
            reset,
        })),
        (None, None, None) => Ok(None),
        (None, ..) => Err((&names::RATE_LIMIT_LIMIT, HeaderError::Incomplete)),
        (_, None, _) => Err((&names::RATE_LIMIT_REMAINING, HeaderError::Incomplete)),
        (.., None) => Err((&names::RATE_LIMIT_RESET, HeaderError::Incomplete)),
    }
}

/// Reads a body, but no further than [`MAX_BODY_BYTES`].
///
/// A `Content-Length` over the cap is refused before any byte is read. Returns
/// [`BodyIssue::TooLarge`] past the cap; a transport error while reading is returned as the
/// body's own error type, boxed.
pub async fn read_body_limited<B>(
    headers: &HeaderMap,
    body: B,
) -> Result<Result<Bytes, BodyIssue>, Box<dyn std::error::Error + Send + Sync>>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Ok(Err(BodyIssue::TooLarge));
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(Ok(collected.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Ok(Err(BodyIssue::TooLarge)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn header_errors_are_typed() {
        fn rl(
            pairs: &[(&'static str, &str)],
        ) -> Result<Option<RateLimit>, (&'static str, HeaderError)> {
            rate_limit_headers(&map(pairs)).map_err(|(n, e)| (n.as_str(), e))
        }
        let full = [
            ("x-ratelimit-limit", "60"),
            ("x-ratelimit-remaining", " 7\t"),
            ("x-ratelimit-reset", "1713312345"),
        ];
        assert_eq!(
            rl(&full),
            Ok(Some(RateLimit {
                limit: 60,
                remaining: 7,
                reset: 1_713_312_345
            }))
        );
        let mut dup = full.to_vec();
        dup.push(("x-ratelimit-remaining", "8"));
        assert_eq!(
            rl(&dup),
            Err(("x-ratelimit-remaining", HeaderError::Duplicate))
        );
        assert_eq!(
            rl(&full[..2]),
            Err(("x-ratelimit-reset", HeaderError::Incomplete))
        );
        assert_eq!(rl(&[]), Ok(None));
        let big = [("x-ratelimit-limit", "4294967296"), full[1], full[2]];
        assert_eq!(rl(&big), Err(("x-ratelimit-limit", HeaderError::Overflow)));
        let big = [
            full[0],
            full[1],
            ("x-ratelimit-reset", "18446744073709551616"),
        ];
        assert_eq!(rl(&big), Err(("x-ratelimit-reset", HeaderError::Overflow)));
        for bad in ["", " ", "-1", "1.5", "0x10", "六"] {
            let h = [("x-ratelimit-limit", bad), full[1], full[2]];
            assert_eq!(
                rl(&h),
                Err(("x-ratelimit-limit", HeaderError::NotANumber)),
                "{bad:?}"
            );
        }

        let ra = |v: &[(&'static str, &str)]| retry_after_header(&map(v));
        assert_eq!(
            ra(&[("retry-after", "5"), ("retry-after", "6")]),
            Err(HeaderError::Duplicate)
        );
        assert_eq!(
            ra(&[("retry-after", "soon")]),
            Err(HeaderError::RetryAfter(RetryAfterError::Invalid))
        );

        let long = "r".repeat(MAX_REQUEST_ID_BYTES + 1);
        assert_eq!(
            request_id_header(&map(&[("x-request-id", &long)])),
            Err(HeaderError::TooLong)
        );
        assert_eq!(request_id_header(&map(&[("x-request-id", "  ")])), Ok(None));
        assert_eq!(
            request_id_header(&map(&[("x-request-id", " req_1 ")])),
            Ok(Some("req_1".to_owned()))
        );
    }

    #[test]
    fn numbers_at_the_digit_bounds() {
        let reset = |v: &str| {
            rate_limit_headers(&map(&[
                ("x-ratelimit-limit", "60"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", v),
            ]))
            .map(|rl| rl.map(|rl| rl.reset))
            .map_err(|(_, e)| e)
        };
        // 19 digits (no overflow check needed), 20 (checked), zeros that pad past 19.
        assert_eq!(
            reset("9999999999999999999"),
            Ok(Some(9_999_999_999_999_999_999))
        );
        assert_eq!(reset("18446744073709551615"), Ok(Some(u64::MAX)));
        assert_eq!(reset("18446744073709551616"), Err(HeaderError::Overflow));
        assert_eq!(reset("99999999999999999999"), Err(HeaderError::Overflow));
        assert_eq!(reset("000000000000000000000000042"), Ok(Some(42)));
        assert_eq!(reset("1234567890123456789x"), Err(HeaderError::NotANumber));
        assert_eq!(reset("123456789012345678/"), Err(HeaderError::NotANumber));
        assert_eq!(reset("12345678901234567890:"), Err(HeaderError::NotANumber));
    }

    #[test]
    fn names_of_the_same_length_are_told_apart() {
        // Each name shares its length with one of the five (or is far longer).
        let h = map(&[
            ("content-type", "text/html"),
            ("x-request-ie", "no"),
            ("retry-aftex", "5"),
            ("x-ratelimit-lima", "1"),
            ("x-ratelimit-remainder", "1"),
            ("x-ratelimit-rese7", "1"),
            (
                "x-a-header-name-much-longer-than-sixty-four-bytes-of-anything-at-all",
                "1",
            ),
        ]);
        let r = classify(StatusCode::TOO_MANY_REQUESTS, &h, b"");
        assert_eq!(r.error.request_id(), None);
        assert_eq!(r.error.retry_after(), None);
        assert_eq!(r.error.rate_limit(), None);
        assert!(r.diagnostics.header_problems().is_empty());
        // The five themselves, each found, with another header between them.
        let h = map(&[
            ("x-request-id", "req_1"),
            ("content-type", "application/json"),
            ("retry-after", "5"),
            ("x-ratelimit-limit", "60"),
            ("date", "x"),
            ("x-ratelimit-remaining", "7"),
            ("x-ratelimit-reset", "9"),
        ]);
        let r = classify(StatusCode::TOO_MANY_REQUESTS, &h, b"");
        assert_eq!(r.error.request_id(), Some("req_1"));
        assert_eq!(r.error.retry_after(), Some(RetryAfter::Seconds(5)));
        assert_eq!(
            r.error.rate_limit(),
            Some(RateLimit {
                limit: 60,
                remaining: 7,
                reset: 9
            })
        );
        // A repeated header with the same value counts once; with another value it is a
        // duplicate, whichever of the five it is.
        for name in ["x-request-id", "retry-after", "x-ratelimit-limit"] {
            let mut pairs = vec![
                ("x-request-id", "1"),
                ("retry-after", "1"),
                ("x-ratelimit-limit", "1"),
                ("x-ratelimit-remaining", "1"),
                ("x-ratelimit-reset", "1"),
            ];
            pairs.push((name, "1"));
            let r = classify(StatusCode::TOO_MANY_REQUESTS, &map(&pairs), b"");
            assert!(r.diagnostics.header_problems().is_empty(), "{name}");
            pairs.push((name, "2"));
            let r = classify(StatusCode::TOO_MANY_REQUESTS, &map(&pairs), b"");
            assert_eq!(r.diagnostics.header_problems(), vec![name], "{name}");
        }
    }

    #[test]
    fn what_a_body_does_say_is_kept() {
        let body = br#"{"success":false,"error":"upstream_error","message":null}"#;
        let r = classify(StatusCode::BAD_GATEWAY, &HeaderMap::new(), body);
        assert_eq!(r.error.code(), &overten_errors::ErrorCode::UpstreamError);
        assert_eq!(
            r.error.message(),
            overten_errors::ErrorCode::UpstreamError.when()
        );
        assert!(matches!(
            r.diagnostics.message,
            Some(BodyError::WrongType { .. })
        ));
        assert_eq!(r.diagnostics.body, None);
        // An unknown code without a message: the page's scenario for the status.
        let body = br#"{"success":false,"error":"quota_frozen"}"#;
        let r = classify(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), body);
        assert_eq!(r.error.code().as_str(), "quota_frozen");
        assert_eq!(
            r.error.message(),
            "Capacity exhausted or scheduled maintenance"
        );
        assert_eq!(r.diagnostics.message, Some(BodyError::Missing("message")));
        // A byte order mark is skipped.
        let body = b"\xEF\xBB\xBF{\"success\":false,\"error\":\"gone\",\"message\":\"m\"}";
        let r = classify(StatusCode::GONE, &HeaderMap::new(), body);
        assert!(r.diagnostics.is_clean(), "{:?}", r.diagnostics);
        assert_eq!(r.error.code(), &overten_errors::ErrorCode::Gone);
    }

    #[test]
    fn a_status_the_code_is_not_sent_with_is_recorded() {
        let body = br#"{"success":false,"error":"not_found","message":"m"}"#;
        let r = classify(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new(), body);
        assert_eq!(r.diagnostics.status_mismatch, Some(404));
        assert_eq!(r.error.code(), &overten_errors::ErrorCode::NotFound);
        let r = classify(StatusCode::NOT_FOUND, &HeaderMap::new(), body);
        assert!(r.diagnostics.is_clean());
    }

    #[test]
    fn request_ids_follow_the_one_rule() {
        for (value, want) in [
            ("req 1", Err(HeaderError::NotText)),
            ("\treq_1 ", Ok(Some("req_1".to_owned()))),
            ("", Ok(None)),
        ] {
            assert_eq!(
                request_id_header(&map(&[("x-request-id", value)])),
                want,
                "{value:?}"
            );
        }
        let v = HeaderValue::from_bytes("réq".as_bytes()).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-request-id", v);
        assert_eq!(request_id_header(&h), Err(HeaderError::NotText));
    }

    #[test]
    fn the_bounds_are_inclusive() {
        // A body of exactly the cap is parsed; one byte more is not.
        let body = vec![b' '; MAX_BODY_BYTES];
        let r = classify(StatusCode::BAD_GATEWAY, &HeaderMap::new(), &body);
        assert_eq!(
            r.diagnostics.body,
            Some(BodyIssue::NotAnEnvelope(BodyError::Empty))
        );
        // An id of exactly the bound is kept.
        let id = "r".repeat(MAX_REQUEST_ID_BYTES);
        assert_eq!(
            request_id_header(&map(&[("x-request-id", &id)])),
            Ok(Some(id.clone()))
        );
        // Diagnostics name what was malformed.
        let r = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &map(&[("retry-after", "soon")]),
            b"",
        );
        assert!(!r.diagnostics.is_clean());
        let r = classify(
            StatusCode::GONE,
            &HeaderMap::new(),
            br#"{"success":false,"error":"gone","message":"m"}"#,
        );
        assert!(r.diagnostics.is_clean());
    }

    /// A body whose second frame is a transport error.
    struct Broken(u8);

    impl Body for Broken {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            self.0 += 1;
            std::task::Poll::Ready(Some(if self.0 == 1 {
                Ok(http_body::Frame::data(Bytes::from_static(b"{")))
            } else {
                Err(std::io::Error::other("connection reset"))
            }))
        }
    }

    #[test]
    fn reading_stops_at_the_cap_and_keeps_transport_errors() {
        use crate::block_on as run;
        // A transport error is the transport's, not "too large".
        let got = run(read_body_limited(&HeaderMap::new(), Broken(0)));
        assert!(got.is_err());
        // A declared length of exactly the cap is read; one more is refused unread.
        let exact = http_body_util::Full::new(Bytes::from(vec![b' '; MAX_BODY_BYTES]));
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from(MAX_BODY_BYTES));
        assert_eq!(
            run(read_body_limited(&h, exact)).unwrap().map(|b| b.len()),
            Ok(MAX_BODY_BYTES)
        );
        // Undeclared and one byte over: read up to the cap, then refused as too large (not
        // as a transport error).
        let over = http_body_util::Full::new(Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]));
        assert_eq!(
            run(read_body_limited(&HeaderMap::new(), over)).unwrap(),
            Err(BodyIssue::TooLarge)
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from(MAX_BODY_BYTES + 1));
        let small = http_body_util::Full::new(Bytes::from_static(b"{}"));
        assert_eq!(
            run(read_body_limited(&h, small)).unwrap(),
            Err(BodyIssue::TooLarge)
        );
    }

    #[test]
    fn oversized_bodies_are_not_parsed() {
        let body = vec![b' '; MAX_BODY_BYTES + 1];
        let r = classify(StatusCode::BAD_GATEWAY, &HeaderMap::new(), &body);
        assert_eq!(r.diagnostics.body, Some(BodyIssue::TooLarge));
        assert_eq!(r.error.code(), &Code::Missing);
        let r = classify(StatusCode::from_u16(599).unwrap(), &HeaderMap::new(), b"");
        assert_eq!(r.error.message(), "HTTP status 599");
    }
}
