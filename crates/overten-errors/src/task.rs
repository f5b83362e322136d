//! The failure object of an async task (`GET /tasks/{task_id}` with `status: "failed"`).

use serde::{Deserialize, Serialize};

use crate::code::Code;
use crate::envelope::BodyError;
use crate::error::ApiError;

/// A task that reached the terminal `failed` state.
///
/// ```
/// use overten_errors::{ApiError, ErrorCode, TaskFailure};
/// let json = br#"{"task_id":"task_1","status":"failed","error":{"code":"upstream_error","message":"Provider down"},"credits_used":0,"duration_ms":812}"#;
/// let failure: TaskFailure = serde_json::from_slice(json)?;
/// let err = ApiError::from(failure);
/// assert_eq!(err.code(), &ErrorCode::UpstreamError);
/// assert_eq!((err.status(), err.task_id()), (502, Some("task_1")));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// The task's id (`task_...`).
    pub task_id: String,
    /// Always `"failed"`.
    pub status: Failed,
    /// The structured failure.
    pub error: TaskError,
    /// Credits charged for the task.
    pub credits_used: u64,
    /// How long the task ran, in milliseconds.
    pub duration_ms: u64,
}

/// The `error` object of a failed task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// The error code, known or not.
    pub code: Code,
    /// The message.
    pub message: String,
}

/// The `status` member of a failed task: the string `"failed"` and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failed;

impl Serialize for Failed {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("failed")
    }
}

impl<'de> Deserialize<'de> for Failed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        if s == "failed" {
            Ok(Failed)
        } else {
            Err(serde::de::Error::custom(
                "task status is not \"failed\": not a task failure",
            ))
        }
    }
}

/// Why a body is not read as a failed task ([`TaskFailure::parse`]).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskBodyError {
    /// Over [`MAX_BODY_BYTES`](crate::MAX_BODY_BYTES), a byte order mark included.
    #[error("the body is larger than {} bytes", crate::MAX_BODY_BYTES)]
    TooLarge,
    /// A whole-body rule of the envelope: nested deeper than
    /// [`MAX_BODY_DEPTH`](crate::MAX_BODY_DEPTH), or a lone surrogate escape.
    #[error(transparent)]
    Body(BodyError),
    /// Not the shape of a failed task (a member missing or of the wrong type, an integer
    /// that is not one from 0 to 2^64 − 1, `status` other than `"failed"`, not JSON).
    #[error("not a failed task: {0}")]
    Shape(String),
}

impl TaskFailure {
    /// Reads a failed task's body with the envelope's whole-body rules (`docs/retry.md`,
    /// *Reading a response*): at most 64 KiB counting a byte order mark, one leading byte
    /// order mark skipped, nesting at most 128 levels deep, no lone surrogate escape in any
    /// string; then the shape. `credits_used` and `duration_ms` are JSON integers written
    /// with digits only, 0 to 2^64 − 1: `-0`, `1.0`, `1e2` and larger values are not.
    ///
    /// ```
    /// use overten_errors::{TaskBodyError, TaskFailure};
    /// let body = b"\xEF\xBB\xBF{\"task_id\":\"task_1\",\"status\":\"failed\",\"error\":{\"code\":\"gone\",\"message\":\"Expired\"},\"credits_used\":0,\"duration_ms\":5}";
    /// assert_eq!(TaskFailure::parse(body)?.task_id, "task_1");
    /// let negative_zero = br#"{"task_id":"t","status":"failed","error":{"code":"gone","message":""},"credits_used":-0,"duration_ms":5}"#;
    /// assert!(matches!(TaskFailure::parse(negative_zero), Err(TaskBodyError::Shape(_))));
    /// # Ok::<(), TaskBodyError>(())
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<TaskFailure, TaskBodyError> {
        if bytes.len() > crate::MAX_BODY_BYTES {
            return Err(TaskBodyError::TooLarge);
        }
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        crate::envelope::screen(bytes).map_err(TaskBodyError::Body)?;
        serde_json::from_slice(bytes).map_err(|e| TaskBodyError::Shape(e.to_string()))
    }
}

/// The status a task failure with an unknown code is given: the task ran and failed on
/// the API's side, so it is treated as a server error.
pub const UNKNOWN_TASK_CODE_STATUS: u16 = 500;

impl From<TaskFailure> for ApiError {
    /// The same error a sync request with this code would have produced, with the task id.
    fn from(failure: TaskFailure) -> Self {
        let status = failure
            .error
            .code
            .known()
            .map_or(UNKNOWN_TASK_CODE_STATUS, crate::ErrorCode::status);
        ApiError::received(failure.error.code, status, failure.error.message)
            .with_task_id(crate::text::trimmed_id(failure.task_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(extra: &str, credits: &str) -> String {
        format!(
            r#"{{"task_id":"task_1","status":"failed","error":{{"code":"upstream_error","message":"down"}},"credits_used":{credits},"duration_ms":9{extra}}}"#
        )
    }

    #[test]
    fn a_task_body_follows_the_envelopes_whole_body_rules() {
        let plain = body("", "0");
        assert!(TaskFailure::parse(plain.as_bytes()).is_ok());
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(plain.as_bytes());
        assert!(
            TaskFailure::parse(&bom).is_ok(),
            "one byte order mark is skipped"
        );
        let mut two = b"\xEF\xBB\xBF".to_vec();
        two.extend_from_slice(&bom);
        assert!(TaskFailure::parse(&two).is_err(), "only one");
        // 128 levels in all (the top object is level 1) pass; 129 do not.
        let ok = body(
            &format!(",\"x\":{}{}", "[".repeat(127), "]".repeat(127)),
            "0",
        );
        assert!(TaskFailure::parse(ok.as_bytes()).is_ok());
        let deep = body(
            &format!(",\"x\":{}{}", "[".repeat(128), "]".repeat(128)),
            "0",
        );
        assert_eq!(
            TaskFailure::parse(deep.as_bytes()),
            Err(TaskBodyError::Body(BodyError::TooDeep))
        );
        let lone = body(r#","x":"\ud800""#, "0");
        assert_eq!(
            TaskFailure::parse(lone.as_bytes()),
            Err(TaskBodyError::Body(BodyError::LoneSurrogate))
        );
        let pair = body(r#","x":"\ud83d\ude00""#, "0");
        assert!(TaskFailure::parse(pair.as_bytes()).is_ok());
        // Counting the byte order mark: 64 KiB in all.
        let pad = |n: usize| body(&format!(",\"p\":\"{}\"", "a".repeat(n)), "0");
        let at_limit = pad(crate::MAX_BODY_BYTES - pad(0).len());
        assert_eq!(at_limit.len(), crate::MAX_BODY_BYTES);
        assert!(TaskFailure::parse(at_limit.as_bytes()).is_ok());
        let mut over = b"\xEF\xBB\xBF".to_vec();
        over.extend_from_slice(at_limit.as_bytes());
        assert_eq!(TaskFailure::parse(&over), Err(TaskBodyError::TooLarge));
    }

    #[test]
    fn task_integers_are_digits_from_0_to_2_pow_64_minus_1() {
        for ok in ["0", "7", "18446744073709551615"] {
            let got = TaskFailure::parse(body("", ok).as_bytes());
            assert_eq!(got.map(|t| t.credits_used.to_string()), Ok(ok.to_owned()));
        }
        for bad in [
            "-0",
            "-1",
            "0.0",
            "1e2",
            "18446744073709551616",
            "\"1\"",
            "null",
        ] {
            let got = TaskFailure::parse(body("", bad).as_bytes());
            assert!(
                matches!(got, Err(TaskBodyError::Shape(_))),
                "{bad}: {got:?}"
            );
        }
    }
}
