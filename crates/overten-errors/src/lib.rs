//! The Overten API's error model as data.
//!
//! This crate is the single source of truth for the errors the Overten API sends: every
//! error code of the published reference (wire string, category, HTTP status, when it
//! occurs, how to fix it, retry rule) is declared once, in [`ErrorCode`]'s table, and
//! everything else — parsing, display, statuses, retry decisions, and the generated docs,
//! schemas and fixtures of the sibling crates — is derived from it.
//!
//! It holds:
//!
//! - the code table: [`ErrorCode`], [`CodeSpec`], [`Category`], and [`Code`] for codes as
//!   received (known, or unknown and kept as sent);
//! - the status table: [`STATUSES`], [`status_info`], [`StatusKind`];
//! - the page's other numbers: [`Tier`], [`headers`], [`SYNC_TIMEOUT_SECONDS`],
//!   [`RETENTION_DAYS`];
//! - the wire types: [`Envelope`] (writing), [`ErrorBody`] (tolerant reading),
//!   [`TaskFailure`];
//! - the error type [`ApiError`], whose public message never carries an internal cause;
//! - retry policy as data ([`RetryRule`], [`FALLBACK`], [`RetryPolicy`]) and one pure
//!   decision function, [`RetryPolicy::decide`] (its steps are [`Step::ALL`], written out
//!   in `docs/retry.md`), plus a [`RetryBudget`] shared through `&self`;
//! - the bounds both sides apply to text on the wire: [`check_id`], [`MAX_MESSAGE_BYTES`].
//!
//! It does not do IO, read clocks or environment variables, or depend on `http`: statuses
//! are `u16`, "now" and randomness are arguments. `overten-errors-http` converts to and from
//! `http` types; `overten-errors-schema` builds JSON Schemas and `OpenAPI` components.
//!
//! # Server
//!
//! ```
//! use overten_errors::{ApiError, ErrorCode, JsonPointer};
//!
//! let err = ApiError::validation(&JsonPointer::root().push("format"), "must be xlsx or csv")
//!     .with_request_id("req_123");
//! assert_eq!(err.status(), 422);
//! assert_eq!(
//!     err.to_json(),
//!     br#"{"success":false,"error":"validation_error","message":"must be xlsx or csv (at #/format)"}"#
//! );
//! ```
//!
//! # Client
//!
//! ```
//! use std::time::SystemTime;
//! use overten_errors::{Advice, ApiError, ErrorBody, RetryPolicy, SplitMix64};
//!
//! let body = ErrorBody::parse(br#"{"success":false,"error":"upstream_error","message":"Provider outage"}"#)?;
//! let err = ApiError::from_body(body, 502);
//! let advice = RetryPolicy::default().decide(&err, 1, SystemTime::now(), &mut SplitMix64::new(1));
//! assert!(matches!(advice, Advice::Retry { .. }));
//! # Ok::<(), overten_errors::BodyError>(())
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod budget;
mod code;
mod envelope;
mod error;
mod fast_body;
mod hints;
mod limits;
mod pointer;
mod retry;
mod rule;
mod status;
mod task;
mod text;

pub use budget::{Cancelled, RetryBudget, RetryTicket};
pub use code::{Category, Code, CodeSpec, ErrorCode, ParseCodeError};
pub use envelope::{BodyError, Envelope, ErrorBody, JsonType, MAX_BODY_BYTES, MAX_BODY_DEPTH};
pub use error::ApiError;
pub use hints::{RateLimit, RetryAfter, RetryAfterError};
pub use limits::{
    HeaderSpec, ParseTierError, RATE_LIMIT_DEFAULT_WAIT_SECONDS, RATE_LIMIT_WINDOW_SECONDS,
    RETENTION_DAYS, SYNC_TIMEOUT_SECONDS, Tier, headers,
};
pub use pointer::{JsonPointer, PointerError};
pub use retry::{
    Advice, Basis, Decision, MAX_SAFE_INTEGER, NOT_REPLAY_SAFE, Pacer, Pacers, PolicyError,
    RandomSource, RetryPolicy, RetryPolicyBuilder, SplitMix64, Step, StopReason,
};
pub use rule::{FALLBACK, FallbackRule, HeaderUse, RetryRule};
pub use status::{STATUSES, StatusInfo, StatusKind, fallback_message, status_info};
pub use task::{
    Failed, MAX_TASK_BODY_BYTES, PollSchedule, TaskBodyError, TaskError, TaskFailure, TaskState,
    TaskStatus, UNKNOWN_TASK_CODE_STATUS, UnknownTaskStatus,
};
pub use text::{IdError, MAX_ID_BYTES, MAX_MESSAGE_BYTES, check_id, trim_ows};

/// This crate's README examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
