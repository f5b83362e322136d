//! Client side: any response -> [`ApiError`](overten_errors::ApiError) and one advised
//! action ([`classify`]); the retry loop ([`Retrier`]); the retrying `reqwest` middleware
//! (feature `reqwest`).

mod classify;
#[cfg(feature = "reqwest")]
mod reqwest;
mod retrier;
#[cfg(feature = "reqwest")]
mod tasks;

pub use crate::names::IDEMPOTENCY_KEY;
#[cfg(feature = "tokio")]
pub use crate::runtime::TokioSleep;
pub use crate::runtime::{Sleep, process_seed};
pub use classify::{
    BodyIssue, Diagnostics, HeaderError, MAX_BODY_BYTES, MAX_REQUEST_ID_BYTES, Received, classify,
    classify_parts, classify_response, observe_rate_limit, observe_rate_limit_of,
    rate_limit_headers, read_body_limited, request_id_header, retry_after_header,
};
#[cfg(feature = "reqwest")]
pub use reqwest::{
    DecisionEvent, Observer, Resubmission, RetryMiddleware, RetryOutcome, STREAMING_BODY,
    received_from_reqwest,
};
pub use retrier::{Attempt, GaveUp, Retrier};
#[cfg(feature = "reqwest")]
pub use tasks::{CallError, MAX_RESULT_BYTES, TaskClient, json_or_error};
