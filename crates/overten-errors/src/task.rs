//! The failure object of an async task (`GET /tasks/{task_id}` with `status: "failed"`).

use serde::{Deserialize, Serialize};

use crate::code::Code;
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
