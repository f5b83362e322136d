//! The error type servers raise and clients receive.

use core::fmt;
use std::borrow::Cow;

use crate::code::{Code, ErrorCode};
use crate::envelope::{Envelope, ErrorBody};
use crate::hints::{RateLimit, RetryAfter};
use crate::limits::Tier;
use crate::pointer::{self, JsonPointer};
use crate::rule::RetryRule;
use crate::text::{self, LogSafe};

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;
/// The cause as kept: shared, so that an `ApiError` is `Clone` and can travel in response
/// extensions.
type SharedCause = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

/// An error of the Overten API: what a server raises and what a client receives.
///
/// It holds the code (known, or unknown with its raw string), the HTTP status, the public
/// message, and when known the correlation ids, the rate-limit snapshot and `Retry-After`.
/// A server may attach an internal cause with [`ApiError::with_cause`]: it is reachable
/// through [`std::error::Error::source`] and `Debug` for logs, and never appears in
/// `Display` or in the serialized body.
///
/// Both sides apply the same bounds ([`crate::MAX_MESSAGE_BYTES`], [`crate::check_id`]):
/// a message is cut to the bound when the error is built, and an id that breaks the rule
/// is not kept, so a server never writes what its own client would drop. `Display` is one
/// log-safe line: control characters in the message or an unknown code are escaped.
///
/// ```
/// use overten_errors::{ApiError, ErrorCode};
///
/// let io = std::io::Error::other("db pool timed out after 30s on host db-7");
/// let err = ApiError::from(ErrorCode::InternalError)
///     .with_cause(io)
///     .with_request_id("req_8f2c");
/// assert_eq!(err.status(), 500);
/// assert_eq!(err.to_string(), "internal_error (500): Unhandled server exception [request id: req_8f2c]");
/// assert_eq!(err.to_json(), br#"{"success":false,"error":"internal_error","message":"Unhandled server exception"}"#);
/// assert!(std::error::Error::source(&err).is_some());
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{code} ({status}): {message}{ids}",
    message = LogSafe(.message),
    ids = TicketIds([
        ("request id", .request_id.as_deref()),
        ("run id", .run_id.as_deref()),
        ("task id", .task_id.as_deref()),
    ])
)]
pub struct ApiError {
    code: Code,
    status: u16,
    message: Cow<'static, str>,
    request_id: Option<String>,
    run_id: Option<String>,
    task_id: Option<String>,
    rate_limit: Option<RateLimit>,
    retry_after: Option<RetryAfter>,
    #[source]
    cause: Option<SharedCause>,
}

/// The correlation ids a support ticket needs, as ` [request id: ..., run id: ...]`, or
/// nothing when there are none.
struct TicketIds<'a>([(&'static str, Option<&'a str>); 3]);

impl fmt::Display for TicketIds<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (label, value) in self.0 {
            if let Some(value) = value {
                f.write_str(if first { " [" } else { ", " })?;
                write!(f, "{label}: {}", LogSafe(value))?;
                first = false;
            }
        }
        if !first {
            f.write_str("]")?;
        }
        Ok(())
    }
}

impl ApiError {
    /// An error with a known code, its documented status, and a public message.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError::received(Code::Known(code), code.status(), message)
    }

    /// An error as a client received it: any code, the status it came with, the message
    /// (cut to [`crate::MAX_MESSAGE_BYTES`]).
    pub fn received(code: Code, status: u16, message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError {
            code,
            status,
            message: text::bound_message(message.into()),
            request_id: None,
            run_id: None,
            task_id: None,
            rate_limit: None,
            retry_after: None,
            cause: None,
        }
    }

    /// The error this body describes, as received with `status`: its code and ids, and its
    /// message, or when it had none the page's text for the code (its "when it occurs"),
    /// else the page's scenario for the status.
    ///
    /// ```
    /// use overten_errors::{ApiError, ErrorBody, ErrorCode};
    /// let body = ErrorBody::parse(br#"{"success":false,"error":"upstream_error","message":null,"run_id":"run_1"}"#)?;
    /// let err = ApiError::from_body(body, 502);
    /// assert_eq!(err.code(), &ErrorCode::UpstreamError);
    /// assert_eq!(err.message(), ErrorCode::UpstreamError.when());
    /// assert_eq!(err.run_id(), Some("run_1"));
    /// # Ok::<(), overten_errors::BodyError>(())
    /// ```
    pub fn from_body(body: ErrorBody, status: u16) -> ApiError {
        let message: Cow<'static, str> = match (body.message, body.code.known()) {
            (Some(m), _) => Cow::Owned(m),
            (None, Some(code)) => Cow::Borrowed(code.when()),
            (None, None) => crate::status::fallback_message(status),
        };
        let mut err = ApiError::received(body.code, status, message);
        // Ids from a body are trimmed as header values are (`docs/retry.md`).
        if let Some(id) = body.run_id {
            err.set_run_id(crate::text::trimmed_id(id));
        }
        if let Some(id) = body.task_id {
            err.set_task_id(crate::text::trimmed_id(id));
        }
        err
    }

    /// A 500 `internal_error` whose public message is the page's generic text and whose
    /// `cause` is kept for logs only.
    pub fn internal(cause: impl Into<Cause>) -> ApiError {
        ApiError::from(ErrorCode::InternalError).with_cause(cause)
    }

    /// A 413 `payload_too_large` for a request body over its upload limit: one message for
    /// the condition, wherever it is found (an announced `Content-Length`, a body that
    /// streams past the limit, an idempotency layer that reads it).
    ///
    /// ```
    /// use overten_errors::{ApiError, Tier};
    /// let err = ApiError::upload_too_large(Some(Tier::Free), 10 * 1024 * 1024);
    /// assert_eq!(err.status(), 413);
    /// assert_eq!(
    ///     err.message(),
    ///     "The request body exceeds the free tier's upload limit of 10485760 bytes"
    /// );
    /// let err = ApiError::upload_too_large(None, 1024);
    /// assert_eq!(err.message(), "The request body exceeds the upload limit of 1024 bytes");
    /// ```
    pub fn upload_too_large(tier: Option<Tier>, limit_bytes: u64) -> ApiError {
        let message = match tier {
            Some(tier) => format!(
                "The request body exceeds the {tier} tier's upload limit of {limit_bytes} bytes"
            ),
            None => format!("The request body exceeds the upload limit of {limit_bytes} bytes"),
        };
        ApiError::new(ErrorCode::PayloadTooLarge, message)
    }

    /// A 422 `validation_error` for the field at `pointer`: the message is
    /// `"<detail> (at #<pointer>)"`, the pointer in RFC 6901 fragment form so that
    /// [`ApiError::field_pointer`] reads it back from the message alone.
    ///
    /// ```
    /// use overten_errors::{ApiError, JsonPointer};
    /// let at = JsonPointer::root().push("sheets").push("0").push("name");
    /// let err = ApiError::validation(&at, "must not be empty");
    /// assert_eq!(err.message(), "must not be empty (at #/sheets/0/name)");
    /// assert_eq!(err.field_pointer(), Some(at));
    /// ```
    ///
    /// A message longer than [`crate::MAX_MESSAGE_BYTES`] has its detail cut, never the
    /// pointer (see [`ApiError::at_field`]).
    pub fn validation(pointer: &JsonPointer, detail: &str) -> ApiError {
        ApiError::at_field(ErrorCode::ValidationError, pointer, detail)
    }

    /// An error with `code` about the field at `pointer`, its message
    /// `"<detail> (at #<pointer>)"` as [`ApiError::validation`] writes it: for a 400
    /// `invalid_request` that names a missing field or a bad enum value, say.
    ///
    /// The message stays within [`crate::MAX_MESSAGE_BYTES`] by cutting the detail (it then
    /// ends in `…`), never the pointer; a pointer too long to fit even alone is shortened
    /// to its nearest ancestor that fits, so [`ApiError::field_pointer`] always finds one.
    ///
    /// ```
    /// use overten_errors::{ApiError, ErrorCode, JsonPointer, MAX_MESSAGE_BYTES};
    /// let at = JsonPointer::root().push("format");
    /// let long = format!("unknown variant `{}`", "x".repeat(10_000));
    /// let err = ApiError::at_field(ErrorCode::InvalidRequest, &at, &long);
    /// assert_eq!(err.status(), 400);
    /// assert!(err.message().len() <= MAX_MESSAGE_BYTES);
    /// assert!(err.message().ends_with("… (at #/format)"));
    /// assert_eq!(err.field_pointer(), Some(at));
    /// ```
    pub fn at_field(code: ErrorCode, pointer: &JsonPointer, detail: &str) -> ApiError {
        ApiError::new(code, pointer::message_at(pointer, detail))
    }

    /// Attaches an internal cause, for logs only.
    #[must_use]
    pub fn with_cause(mut self, cause: impl Into<Cause>) -> ApiError {
        self.cause = Some(SharedCause::from(cause.into()));
        self
    }

    /// Sets the `X-Request-Id` value.
    #[must_use]
    pub fn with_request_id(mut self, id: impl Into<String>) -> ApiError {
        self.set_request_id(id);
        self
    }

    /// Sets the `run_id` the error belongs to.
    #[must_use]
    pub fn with_run_id(mut self, id: impl Into<String>) -> ApiError {
        self.set_run_id(id);
        self
    }

    /// Sets the `task_id` the error belongs to.
    #[must_use]
    pub fn with_task_id(mut self, id: impl Into<String>) -> ApiError {
        self.set_task_id(id);
        self
    }

    /// Sets the rate-limit snapshot (`X-RateLimit-*`).
    #[must_use]
    pub fn with_rate_limit(mut self, rate_limit: RateLimit) -> ApiError {
        self.rate_limit = Some(rate_limit);
        self
    }

    /// Sets the `Retry-After` hint.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: RetryAfter) -> ApiError {
        self.retry_after = Some(retry_after);
        self
    }

    /// Sets the `X-Request-Id` value in place; an id that breaks [`crate::check_id`]'s
    /// rule clears it instead (it would be dropped by every reader).
    pub fn set_request_id(&mut self, id: impl Into<String>) {
        self.request_id = valid_id(id.into());
    }

    /// Sets the `run_id` in place (cleared by an id that breaks [`crate::check_id`]'s rule).
    pub fn set_run_id(&mut self, id: impl Into<String>) {
        self.run_id = valid_id(id.into());
    }

    /// Sets the `task_id` in place (cleared by an id that breaks [`crate::check_id`]'s rule).
    pub fn set_task_id(&mut self, id: impl Into<String>) {
        self.task_id = valid_id(id.into());
    }

    /// Sets the rate-limit snapshot in place.
    pub fn set_rate_limit(&mut self, rate_limit: RateLimit) {
        self.rate_limit = Some(rate_limit);
    }

    /// Sets the `Retry-After` hint in place.
    pub fn set_retry_after(&mut self, retry_after: RetryAfter) {
        self.retry_after = Some(retry_after);
    }

    /// The code, known or not.
    pub fn code(&self) -> &Code {
        &self.code
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The public message: safe to show to end users.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `X-Request-Id`, if known.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The `run_id`, if known.
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    /// The `task_id`, if known.
    pub fn task_id(&self) -> Option<&str> {
        self.task_id.as_deref()
    }

    /// The rate-limit snapshot, if known.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.rate_limit
    }

    /// The `Retry-After` hint, if known.
    pub fn retry_after(&self) -> Option<RetryAfter> {
        self.retry_after
    }

    /// The retry rule: the code's row when the code is known and came with its own status;
    /// otherwise (an unknown code, no code, or a status the code is not sent with) the
    /// page's rule for the status, [`RetryRule::for_status`].
    pub fn retry_rule(&self) -> RetryRule {
        self.deciding_rule().0
    }

    /// The rule, and the code whose row gave it (none when the status decided).
    pub(crate) fn deciding_rule(&self) -> (RetryRule, Option<ErrorCode>) {
        match self.code.known() {
            Some(code) if code.status() == self.status => (code.retry(), Some(code)),
            _ => (RetryRule::for_status(self.status), None),
        }
    }

    /// The code's own status when a known code came with another one (a proxy, or a
    /// misbehaving server: a 500 carrying `not_found`). The status then decides.
    pub fn status_mismatch(&self) -> Option<u16> {
        self.code
            .known()
            .map(ErrorCode::status)
            .filter(|&own| own != self.status)
    }

    /// The wire code this error is written with: its own, or for an error that carries no
    /// code, the status's canonical one ([`ErrorCode::canonical`]); never empty.
    pub fn wire_code(&self) -> &str {
        match &self.code {
            Code::Missing => ErrorCode::canonical(self.status).as_str(),
            other => other.as_str(),
        }
    }

    /// The JSON pointer a `validation_error` message carries, read back from the message.
    pub fn field_pointer(&self) -> Option<JsonPointer> {
        pointer::find_in_message(&self.message)
    }

    /// The wire envelope of this error: code and public message, nothing else.
    pub fn envelope(&self) -> Envelope<'_> {
        Envelope::new(self.wire_code(), &self.message)
    }

    /// The envelope as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        self.envelope().to_json()
    }
}

fn valid_id(id: String) -> Option<String> {
    text::check_id(&id).is_ok().then_some(id)
}

impl From<ErrorCode> for ApiError {
    /// An error with the code's status and, as public message, the page's "when it occurs".
    fn from(code: ErrorCode) -> Self {
        ApiError::new(code, code.when())
    }
}

impl serde::Serialize for ApiError {
    /// Serializes as the wire envelope; the cause and the ids are never written.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.envelope().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cause_never_reaches_display_or_body() {
        let secret = "password=hunter2 at db-7.internal";
        let err = ApiError::new(ErrorCode::UpstreamError, "The model provider failed")
            .with_cause(std::io::Error::other(secret));
        assert!(!err.to_string().contains("hunter2"));
        let body = String::from_utf8(err.to_json()).unwrap();
        assert!(!body.contains("hunter2"));
        assert!(
            format!("{err:?}").contains("hunter2"),
            "Debug keeps it for logs"
        );
        assert_eq!(
            std::error::Error::source(&err).map(ToString::to_string),
            Some(secret.to_owned())
        );
    }

    #[test]
    fn display_lists_ids_present() {
        let err = ApiError::new(ErrorCode::NotFound, "No such run")
            .with_run_id("run_1")
            .with_task_id("task_2");
        assert_eq!(
            err.to_string(),
            "not_found (404): No such run [run id: run_1, task id: task_2]"
        );
    }

    #[test]
    fn what_is_set_is_read_back() {
        let rl = RateLimit {
            limit: 10,
            remaining: 3,
            reset: 99,
        };
        let mut err = ApiError::from(ErrorCode::RateLimitExceeded)
            .with_request_id("req_1")
            .with_run_id("run_2")
            .with_task_id("task_3");
        err.set_rate_limit(rl);
        err.set_retry_after(RetryAfter::Seconds(4));
        assert_eq!(
            (err.request_id(), err.run_id(), err.task_id()),
            (Some("req_1"), Some("run_2"), Some("task_3"))
        );
        assert_eq!(err.rate_limit(), Some(rl));
        assert_eq!(err.retry_after(), Some(RetryAfter::Seconds(4)));
        let fresh = ApiError::from(ErrorCode::Gone);
        assert_eq!((fresh.rate_limit(), fresh.retry_after()), (None, None));
    }

    #[test]
    fn display_is_one_log_safe_line() {
        let err = ApiError::received(Code::parse("evil\ncode"), 500, "line\n[FAKE] ok\u{1b}[0m")
            .with_request_id("req_1");
        let shown = err.to_string();
        assert!(
            !shown.contains('\n') && !shown.contains('\u{1b}'),
            "{shown}"
        );
        assert_eq!(
            shown,
            "evil\\u{a}code (500): line\\u{a}[FAKE] ok\\u{1b}[0m [request id: req_1]"
        );
    }

    #[test]
    fn ids_that_break_the_rule_are_not_kept() {
        for bad in ["req 1", "req\n1", "réq", "", &"r".repeat(257)] {
            let err = ApiError::from(ErrorCode::NotFound)
                .with_request_id(bad)
                .with_run_id(bad)
                .with_task_id(bad);
            assert_eq!(
                (err.request_id(), err.run_id(), err.task_id()),
                (None, None, None),
                "{bad:?}"
            );
        }
        let mut err = ApiError::from(ErrorCode::NotFound).with_request_id("req_ok");
        err.set_request_id("bad id");
        assert_eq!(
            err.request_id(),
            None,
            "a bad id replaces, never keeps, the old one"
        );
        let ok = "r".repeat(256);
        assert_eq!(
            ApiError::from(ErrorCode::Gone)
                .with_task_id(ok.clone())
                .task_id(),
            Some(ok.as_str())
        );
    }

    #[test]
    fn messages_are_bounded_when_built() {
        let long = "x".repeat(crate::MAX_MESSAGE_BYTES * 3);
        let err = ApiError::new(ErrorCode::InvalidRequest, long);
        assert!(err.message().len() <= crate::MAX_MESSAGE_BYTES);
        assert!(err.message().ends_with('…'));
        assert!(err.to_json().len() < crate::MAX_MESSAGE_BYTES + 100);
    }

    #[test]
    fn an_error_without_a_code_is_written_with_its_statuss_code() {
        for (status, wire) in [
            (502, "upstream_error"),
            (503, "service_unavailable"),
            (500, "internal_error"),
            (400, "invalid_request"),
            (404, "not_found"),
            (504, "internal_error"),
            (418, "invalid_request"),
            (200, "internal_error"),
        ] {
            let err = ApiError::received(Code::Missing, status, "m");
            assert_eq!(err.wire_code(), wire, "{status}");
            let json = String::from_utf8(err.to_json()).unwrap();
            assert!(json.contains(&format!("\"error\":\"{wire}\"")), "{json}");
        }
        let unknown = ApiError::received(Code::parse("quota_frozen"), 503, "m");
        assert_eq!(unknown.wire_code(), "quota_frozen");
    }

    #[test]
    fn unknown_codes_use_the_status_rule() {
        let err = ApiError::received(Code::parse("quota_frozen"), 502, "x");
        assert_eq!(err.retry_rule(), RetryRule::Backoff);
        // Any 503 waits in the window, whatever its code.
        let err = ApiError::received(Code::parse("quota_frozen"), 503, "x");
        assert_eq!(err.retry_rule(), ErrorCode::ServiceUnavailable.retry());
        let err = ApiError::received(Code::parse("quota_frozen"), 501, "x");
        assert_eq!(err.retry_rule(), RetryRule::Never);
        let err = ApiError::received(Code::parse("quota_frozen"), 418, "x");
        assert_eq!(err.retry_rule(), RetryRule::Never);
    }

    #[test]
    fn ids_from_a_body_are_trimmed_of_spaces_and_tabs_only() {
        let body = crate::ErrorBody::parse(
            br#"{"success":false,"error":"gone","message":"m","run_id":" \trun_1\t ","task_id":"\ntask_1"}"#,
        )
        .unwrap();
        let err = ApiError::from_body(body, 410);
        assert_eq!(err.run_id(), Some("run_1"));
        // A line break is not trimmed, and is no visible ASCII: the id is dropped.
        assert_eq!(err.task_id(), None);
        let failure: crate::TaskFailure = serde_json::from_str(
            r#"{"task_id":"  task_9 ","status":"failed","error":{"code":"gone","message":"m"},"credits_used":0,"duration_ms":1}"#,
        )
        .unwrap();
        assert_eq!(ApiError::from(failure).task_id(), Some("task_9"));
    }
}
