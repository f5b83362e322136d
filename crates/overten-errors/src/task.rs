//! The failure object of an async task (`GET /tasks/{task_id}` with `status: "failed"`).

use std::time::Duration;

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

/// A task's state, as `GET /tasks/{task_id}` names it in `status`: `queued` (the 202's
/// state), `running`, then one final state, `succeeded` or `failed` (the page's "terminal
/// failed state").
///
/// The moves a task may make are [`TaskStatus::may_become`]'s: forward only, and never
/// out of a final state.
///
/// ```
/// use overten_errors::TaskStatus;
/// assert!(TaskStatus::Queued.may_become(TaskStatus::Running));
/// assert!(!TaskStatus::Failed.may_become(TaskStatus::Running));
/// assert_eq!("succeeded".parse::<TaskStatus>(), Ok(TaskStatus::Succeeded));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskStatus {
    /// Accepted, not started (`queued`).
    Queued,
    /// In progress (`running`).
    Running,
    /// Final: the result is there (`succeeded`).
    Succeeded,
    /// Final: the task failed; the body is a [`TaskFailure`] (`failed`).
    Failed,
}

impl TaskStatus {
    /// Every state, in the order a task moves through them.
    pub const ALL: [TaskStatus; 4] = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
    ];

    /// The wire string.
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
        }
    }

    /// The state of a wire string, exactly as written (no case folding, no spaces).
    pub fn from_wire(s: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// `succeeded` or `failed`: the task will not change again.
    pub const fn is_final(self) -> bool {
        matches!(self, TaskStatus::Succeeded | TaskStatus::Failed)
    }

    /// Whether a task in this state may move to `next`: `queued` to `running`,
    /// `succeeded` or `failed`; `running` to `succeeded` or `failed`. Nothing moves out of
    /// a final state, nothing moves back, and a state does not "move" to itself.
    pub const fn may_become(self, next: TaskStatus) -> bool {
        matches!(
            (self, next),
            (
                TaskStatus::Queued,
                TaskStatus::Running | TaskStatus::Succeeded | TaskStatus::Failed
            ) | (
                TaskStatus::Running,
                TaskStatus::Succeeded | TaskStatus::Failed
            )
        )
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a task state ([`TaskStatus`]'s `FromStr`). The input is not echoed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a task status: expected queued, running, succeeded or failed")]
pub struct UnknownTaskStatus;

impl std::str::FromStr for TaskStatus {
    type Err = UnknownTaskStatus;
    fn from_str(s: &str) -> Result<TaskStatus, UnknownTaskStatus> {
        TaskStatus::from_wire(s).ok_or(UnknownTaskStatus)
    }
}

impl Serialize for TaskStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TaskStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        TaskStatus::from_wire(&s).ok_or_else(|| serde::de::Error::custom(UnknownTaskStatus))
    }
}

/// The largest task body [`TaskState::parse`] reads by default: 16 MiB (a succeeded task
/// carries its result, which may be much larger than an error envelope's 64 KiB).
pub const MAX_TASK_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A task as `GET /tasks/{task_id}` answers it (status 200).
///
/// - `{"task_id": "task_…", "status": "queued" | "running"}`: not done yet; poll again.
/// - `{"task_id": "task_…", "status": "succeeded", "result": …, "credits_used": n,
///   "duration_ms": n}`: `result` is what the sync request would have answered (absent
///   reads as `null`; the two counts are optional and read as 0).
/// - `{"task_id": "task_…", "status": "failed", "error": {"code", "message"}, …}`: a
///   [`TaskFailure`], read as strictly as [`TaskFailure::parse`] reads it.
///
/// ```
/// use overten_errors::{TaskState, TaskStatus};
/// let running = TaskState::parse(br#"{"task_id":"task_1","status":"running"}"#)?;
/// assert_eq!(running.status(), TaskStatus::Running);
/// let done = TaskState::parse(br#"{"task_id":"task_1","status":"succeeded","result":{"file":"q3.xlsx"},"credits_used":4,"duration_ms":61000}"#)?;
/// match done {
///     TaskState::Succeeded { result, credits_used, .. } => {
///         assert_eq!(result["file"], "q3.xlsx");
///         assert_eq!(credits_used, 4);
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), overten_errors::TaskBodyError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TaskState {
    /// `queued` or `running`.
    Pending {
        /// The task's id.
        task_id: String,
        /// [`TaskStatus::Queued`] or [`TaskStatus::Running`].
        status: TaskStatus,
    },
    /// `succeeded`.
    Succeeded {
        /// The task's id.
        task_id: String,
        /// What the sync request would have answered.
        result: serde_json::Value,
        /// Credits charged (0 when absent).
        credits_used: u64,
        /// How long the task ran, in milliseconds (0 when absent).
        duration_ms: u64,
    },
    /// `failed`.
    Failed(TaskFailure),
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    task_id: std::borrow::Cow<'a, str>,
    status: TaskStatus,
}

#[derive(Deserialize)]
struct Done {
    task_id: String,
    #[serde(default)]
    result: serde_json::Value,
    #[serde(default)]
    credits_used: u64,
    #[serde(default)]
    duration_ms: u64,
}

impl TaskState {
    /// Reads a task body of at most [`MAX_TASK_BODY_BYTES`] with the envelope's whole-body
    /// rules (one leading byte order mark skipped, nesting at most 128 levels, no lone
    /// surrogate escape). A `status` other than the four states, or a member of the wrong
    /// type, is [`TaskBodyError::Shape`].
    pub fn parse(bytes: &[u8]) -> Result<TaskState, TaskBodyError> {
        TaskState::parse_limited(bytes, MAX_TASK_BODY_BYTES)
    }

    /// [`TaskState::parse`] with another size limit (counting a byte order mark).
    pub fn parse_limited(bytes: &[u8], max_bytes: usize) -> Result<TaskState, TaskBodyError> {
        if bytes.len() > max_bytes {
            return Err(TaskBodyError::TooLarge);
        }
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        crate::envelope::screen(bytes).map_err(TaskBodyError::Body)?;
        let shape = |e: serde_json::Error| TaskBodyError::Shape(e.to_string());
        let head: Head<'_> = serde_json::from_slice(bytes).map_err(shape)?;
        Ok(match head.status {
            TaskStatus::Queued | TaskStatus::Running => TaskState::Pending {
                task_id: head.task_id.into_owned(),
                status: head.status,
            },
            TaskStatus::Succeeded => {
                let done: Done = serde_json::from_slice(bytes).map_err(shape)?;
                TaskState::Succeeded {
                    task_id: done.task_id,
                    result: done.result,
                    credits_used: done.credits_used,
                    duration_ms: done.duration_ms,
                }
            }
            TaskStatus::Failed => TaskState::Failed(serde_json::from_slice(bytes).map_err(shape)?),
        })
    }

    /// The task's state.
    pub fn status(&self) -> TaskStatus {
        match self {
            TaskState::Pending { status, .. } => *status,
            TaskState::Succeeded { .. } => TaskStatus::Succeeded,
            TaskState::Failed(_) => TaskStatus::Failed,
        }
    }

    /// The task's id.
    pub fn task_id(&self) -> &str {
        match self {
            TaskState::Pending { task_id, .. } | TaskState::Succeeded { task_id, .. } => task_id,
            TaskState::Failed(failure) => &failure.task_id,
        }
    }
}

/// How a client paces its polls of `GET /tasks/{task_id}` after a 202 (`docs/retry.md`,
/// *Polling a task*): the `n`th poll (the first is 1) waits
/// `base = min(first_ms × multiplier^(n−1), max_ms)` ms, less up to `jitter` of it:
/// `floor(base × (1 − jitter × u))`, `u` in `[0, 1)` from the top 53 random bits. A poll
/// answered with a `Retry-After` waits at least that long; a key whose window is spent is
/// held by the pacer like any request. The client stops polling after `give_up_after_ms`
/// and reports the task as still pending (its id, to poll later).
///
/// The defaults (1 s, doubling, at most 30 s, 25 % jitter, an hour) keep a task's polls
/// within the free tier's 10 requests a minute: five or six in the first minute, two or
/// three a minute after that; a task that ends in seconds is seen within about a second of
/// it.
///
/// ```
/// use std::time::Duration;
/// use overten_errors::PollSchedule;
/// let schedule = PollSchedule::default();
/// let mut top = || 0u64; // u = 0: no jitter
/// let waits: Vec<Duration> = (1..=7).map(|n| schedule.delay(n, &mut top)).collect();
/// assert_eq!(waits.iter().map(|d| d.as_secs()).collect::<Vec<_>>(), [1, 2, 4, 8, 16, 30, 30]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct PollSchedule {
    /// The first poll's wait, in ms (1000).
    pub first_ms: u64,
    /// Each next wait's growth (2).
    pub multiplier: f64,
    /// The longest wait, in ms (30000).
    pub max_ms: u64,
    /// The share of a wait taken off at random, 0 to 1 (0.25).
    pub jitter: f64,
    /// How long the client polls before it gives up, in ms (3600000: an hour).
    pub give_up_after_ms: u64,
}

impl Default for PollSchedule {
    fn default() -> Self {
        PollSchedule {
            first_ms: 1_000,
            multiplier: 2.0,
            max_ms: 30_000,
            jitter: 0.25,
            give_up_after_ms: 3_600_000,
        }
    }
}

impl PollSchedule {
    /// A schedule with these waits (the jitter and give-up time are the defaults').
    /// Out-of-range values are brought in range: `multiplier` at least 1 (a NaN is 1),
    /// `max_ms` at least `first_ms`.
    pub fn new(first_ms: u64, multiplier: f64, max_ms: u64) -> PollSchedule {
        PollSchedule {
            first_ms,
            multiplier: if multiplier >= 1.0 { multiplier } else { 1.0 },
            max_ms: max_ms.max(first_ms),
            ..PollSchedule::default()
        }
    }

    /// The jitter, brought into `[0, 1]` (a NaN is 0).
    #[must_use]
    pub fn with_jitter(mut self, jitter: f64) -> PollSchedule {
        self.jitter = if jitter > 0.0 { jitter.min(1.0) } else { 0.0 };
        self
    }

    /// How long the client polls before giving up.
    #[must_use]
    pub fn give_up_after(mut self, after: Duration) -> PollSchedule {
        self.give_up_after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// The wait before poll `poll` (1 for the first; 0 reads as 1).
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "waits are far below 2^53 ms; a float at or over max_ms is max_ms, and the jittered value is in [0, base]"
    )]
    pub fn delay<R: crate::RandomSource + ?Sized>(&self, poll: u32, rng: &mut R) -> Duration {
        let exponent = i32::try_from(poll.max(1) - 1).unwrap_or(i32::MAX);
        let grown = self.first_ms as f64 * self.multiplier.powi(exponent);
        let base = if grown.is_nan() || grown >= self.max_ms as f64 {
            self.max_ms
        } else {
            grown as u64
        };
        let jitter = if self.jitter > 0.0 {
            self.jitter.min(1.0)
        } else {
            0.0
        };
        let after = (base as f64 * (1.0 - jitter * crate::retry::unit(rng))).floor() as u64;
        Duration::from_millis(after)
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

#[cfg(test)]
mod state_tests {
    use super::*;
    use proptest::prelude::*;

    /// The moves written out by hand, from the states' meaning (not from `may_become`).
    const MOVES: [(&str, &str); 5] = [
        ("queued", "running"),
        ("queued", "succeeded"),
        ("queued", "failed"),
        ("running", "succeeded"),
        ("running", "failed"),
    ];

    #[test]
    fn the_moves_are_exactly_forward_and_none_out_of_a_final_state() {
        for from in TaskStatus::ALL {
            for to in TaskStatus::ALL {
                let listed = MOVES.contains(&(from.as_str(), to.as_str()));
                assert_eq!(from.may_become(to), listed, "{from} -> {to}");
            }
        }
        let finals: Vec<&str> = TaskStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .map(TaskStatus::as_str)
            .collect();
        assert_eq!(finals, ["succeeded", "failed"]);
    }

    #[test]
    fn statuses_are_their_exact_wire_strings() {
        for (s, wire) in
            TaskStatus::ALL
                .into_iter()
                .zip(["queued", "running", "succeeded", "failed"])
        {
            assert_eq!(s.as_str(), wire);
            assert_eq!(s.to_string(), wire);
            assert_eq!(wire.parse::<TaskStatus>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{wire}\""));
            assert_eq!(
                serde_json::from_str::<TaskStatus>(&format!("\"{wire}\"")).unwrap(),
                s
            );
        }
        for bad in ["", "Queued", " running", "done", "cancelled", "FAILED"] {
            assert_eq!(bad.parse::<TaskStatus>(), Err(UnknownTaskStatus), "{bad:?}");
            let err = serde_json::from_str::<TaskStatus>(&format!("\"{bad}\"")).unwrap_err();
            assert!(err.to_string().contains("not a task status"), "{err}");
        }
        assert!(serde_json::from_str::<TaskStatus>("1").is_err());
    }

    proptest! {
        /// Whatever moves are tried, in any order, a task that reached a final state stays
        /// there, and it never goes back to an earlier state.
        #[test]
        fn no_move_leaves_a_final_state(tries in proptest::collection::vec(0usize..4, 0..40)) {
            let mut state = TaskStatus::Queued;
            let mut finished: Option<TaskStatus> = None;
            for t in tries {
                let next = TaskStatus::ALL[t];
                if state.may_become(next) {
                    prop_assert!(finished.is_none(), "{state} -> {next} after the end");
                    prop_assert!(next > state, "{state} -> {next} goes back");
                    state = next;
                    if state.is_final() {
                        finished = Some(state);
                    }
                }
            }
            if let Some(end) = finished {
                prop_assert_eq!(state, end);
            }
        }

        /// Any bytes: `TaskState::parse` answers a value or a typed error, never panics.
        #[test]
        fn any_bytes_parse_or_fail_typed(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = TaskState::parse(&bytes);
        }
    }

    #[test]
    fn task_bodies_read_by_state() {
        let pending = TaskState::parse(br#"{"task_id":"task_1","status":"queued"}"#).unwrap();
        assert_eq!(
            pending,
            TaskState::Pending {
                task_id: "task_1".into(),
                status: TaskStatus::Queued
            }
        );
        assert_eq!(pending.task_id(), "task_1");
        let bare = TaskState::parse(br#"{"task_id":"task_2","status":"succeeded"}"#).unwrap();
        assert_eq!(
            bare,
            TaskState::Succeeded {
                task_id: "task_2".into(),
                result: serde_json::Value::Null,
                credits_used: 0,
                duration_ms: 0
            }
        );
        assert_eq!(bare.status(), TaskStatus::Succeeded);
        let failed = TaskState::parse(
            br#"{"task_id":"task_3","status":"failed","error":{"code":"internal_error","message":"AgentLoopError: max_tool_calls=30 exceeded"},"credits_used":0,"duration_ms":45123}"#,
        )
        .unwrap();
        assert_eq!(failed.status(), TaskStatus::Failed);
        assert_eq!(failed.task_id(), "task_3");
        // A failed task is read as strictly as `TaskFailure::parse` reads it.
        for bad in [
            &br#"{"task_id":"t","status":"failed"}"#[..],
            br#"{"task_id":"t","status":"failed","error":{"code":"gone","message":"m"},"credits_used":-0,"duration_ms":1}"#,
            br#"{"task_id":"t","status":"done"}"#,
            br#"{"task_id":7,"status":"queued"}"#,
            br#"{"status":"queued"}"#,
            br#"{"task_id":"t","status":"succeeded","credits_used":1.5}"#,
            b"[]",
            b"",
        ] {
            assert!(
                matches!(TaskState::parse(bad), Err(TaskBodyError::Shape(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let big = format!(
            r#"{{"task_id":"t","status":"succeeded","result":"{}"}}"#,
            "a".repeat(100)
        );
        assert_eq!(
            TaskState::parse_limited(big.as_bytes(), 50),
            Err(TaskBodyError::TooLarge)
        );
        assert!(TaskState::parse_limited(big.as_bytes(), big.len()).is_ok());
        // The default limit is 16 MiB (docs/retry.md, Polling a task), a byte order mark
        // counted.
        let pad = |n: usize| {
            format!(
                r#"{{"task_id":"t","status":"running","p":"{}"}}"#,
                "a".repeat(n)
            )
        };
        let at_limit = pad(16 * 1024 * 1024 - pad(0).len());
        assert_eq!(at_limit.len(), 16 * 1024 * 1024);
        assert!(TaskState::parse(at_limit.as_bytes()).is_ok());
        let mut over = b"\xEF\xBB\xBF".to_vec();
        over.extend_from_slice(at_limit.as_bytes());
        assert_eq!(TaskState::parse(&over), Err(TaskBodyError::TooLarge));
        assert_eq!(
            TaskState::parse(b"{\"task_id\":\"t\",\"status\":\"queued\",\"x\":\"\\ud800\"}"),
            Err(TaskBodyError::Body(BodyError::LoneSurrogate))
        );
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(br#"{"task_id":"t","status":"running"}"#);
        assert_eq!(
            TaskState::parse(&bom).unwrap().status(),
            TaskStatus::Running
        );
    }
}

#[cfg(test)]
mod poll_tests {
    use super::*;

    #[test]
    fn polls_double_from_a_second_to_thirty_less_up_to_a_quarter() {
        let s = PollSchedule::default();
        let ms = |n: u32, bits: u64| {
            let mut r = move || bits;
            u64::try_from(s.delay(n, &mut r).as_millis()).unwrap()
        };
        // u = 0: the base; the top draw takes a quarter off (less a rounding step).
        let bases = [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000];
        for (n, base) in (1..=7).zip(bases) {
            assert_eq!(ms(n, 0), base, "poll {n}");
            let low = ms(n, u64::MAX);
            assert!(
                low >= base * 3 / 4 && low < base * 3 / 4 + 2,
                "poll {n}: {low}"
            );
        }
        assert_eq!(ms(0, 0), 1_000, "poll 0 reads as the first");
        assert_eq!(ms(u32::MAX, 0), 30_000, "no overflow far out");
        // Five polls in the first minute at the longest waits, under free's 10.
        let first_minute = (1..=10)
            .scan(0, |t, n| {
                *t += ms(n, 0);
                Some(*t)
            })
            .take_while(|t| *t <= 60_000)
            .count();
        assert_eq!(first_minute, 5);
        assert_eq!(s.give_up_after_ms, 3_600_000);
    }

    #[test]
    fn odd_settings_are_brought_in_range() {
        let s = PollSchedule::new(500, f64::NAN, 100).with_jitter(f64::NAN);
        assert_eq!((s.multiplier, s.max_ms, s.jitter), (1.0, 500, 0.0));
        let mut top = || u64::MAX;
        assert_eq!(s.delay(9, &mut top), Duration::from_millis(500));
        let s = PollSchedule::new(100, 3.0, 10_000).with_jitter(7.0);
        assert!((s.jitter - 1.0).abs() < f64::EPSILON);
        let mut zero = || 0;
        assert_eq!(s.delay(3, &mut zero), Duration::from_millis(900));
        let s = s.give_up_after(Duration::from_secs(5));
        assert_eq!(s.give_up_after_ms, 5_000);
    }
}
