//! `http` 1.x conversions for the Overten API's error model.
//!
//! For servers: [`into_response`] turns an [`ApiError`] into an `http::Response` with the
//! right status, `Content-Type: application/json`, the envelope body, `X-Request-Id`,
//! `X-RateLimit-*` and `Retry-After`; [`set_rate_limit_headers`] and [`set_request_id`] put
//! the headers the API sends on every response onto success responses too.
//!
//! For clients: [`classify`] turns any response — an envelope, a code newer than this
//! version, an HTML page from a proxy, an empty or truncated body — into an [`ApiError`]
//! plus [`Diagnostics`] that name every malformed part, and [`Received::advise`] gives the
//! one advised action from the core's pure decision function. [`read_body_limited`] reads a
//! body no further than [`MAX_BODY_BYTES`].
//!
//! [`Retrier`] is one retry loop for any async runtime (policy, shared budget, random
//! source seeded per process, injectable [`Sleep`]); with the `reqwest` feature,
//! `received_from_reqwest` reads a `reqwest::Response` and `RetryMiddleware` retries inside
//! a `reqwest_middleware` client, reading the error body a status-only middleware never sees.
//!
//! # Features
//!
//! | feature | adds | pulls in |
//! |---|---|---|
//! | (default) | everything above but the two below | `http`, `http-body`, the core |
//! | `reqwest` | `received_from_reqwest`, `RetryMiddleware`, `RetryOutcome`, `TaskClient` (the async flow in one call), `json_or_error` | `reqwest` (no default features), `reqwest-middleware`, `async-trait` |
//! | `tokio` | `TokioSleep` | `tokio` with `time` only |
//! | `axum` | `HandlerError` (any error with `?`), `Json` / `Path` / `Query` whose rejections are envelopes | `axum` (no default features but `json`, `query`), `serde_path_to_error`, `tracing` |
//! | `tower` | `server`: `RequestIdLayer`, `EnvelopeLayer`, `ContractLayer` (both in one), `PanicEnvelope` | `tower-http` (`request-id`, `catch-panic`), `tower-layer`, `tower-service`, `tracing` |
//!
//! The gateway (accounts and tiers, rate limits, concurrent runs, idempotency, the sync
//! ceiling, on a per-process store or on Redis) is the `overten-gateway` crate, built on
//! this one's responses and layers.
//!
//! [`mock::Gateway`] is the API's gateway behaviour (key check, per-key per-minute limits,
//! `/errors/{code}`) as pure logic; the `overten-errors mock` command serves its routes
//! behind the gateway. The two sides live in [`client`] and [`server`]; what both use
//! ([`Sleep`], [`process_seed`]) is at the root.
//!
//! The default build does no IO of its own and depends on no runtime: it converts between
//! `overten-errors` values and `http` values, and runs the retry loop with a sleep you
//! give it. The `reqwest` and `tokio` features add the client integration and tokio's
//! timer, and pull those crates in only when asked for.
//!
//! ```
//! use overten_errors::{ApiError, ErrorCode, RateLimit, RetryAfter};
//! use overten_errors_http::{classify, into_response};
//!
//! // Server side.
//! let err = ApiError::from(ErrorCode::RateLimitExceeded)
//!     .with_request_id("req_1")
//!     .with_rate_limit(RateLimit { limit: 10, remaining: 0, reset: 1_713_312_345 })
//!     .with_retry_after(RetryAfter::Seconds(42));
//! let resp: http::Response<Vec<u8>> = into_response(&err);
//! assert_eq!(resp.status(), 429);
//! assert_eq!(resp.headers()["retry-after"], "42");
//!
//! // Client side.
//! let received = classify(resp.status(), resp.headers(), resp.body());
//! assert_eq!(received.error.code(), &ErrorCode::RateLimitExceeded);
//! assert_eq!(received.error.request_id(), Some("req_1"));
//! assert!(received.diagnostics.is_clean());
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(doc)]
use overten_errors::ApiError;

pub mod client;
mod names;
mod runtime;
pub mod server;

pub use server::mock;

pub use client::{
    Attempt, BodyIssue, Diagnostics, GaveUp, HeaderError, MAX_BODY_BYTES, MAX_REQUEST_ID_BYTES,
    Received, Retrier, classify, classify_parts, classify_response, observe_rate_limit,
    observe_rate_limit_of, rate_limit_headers, read_body_limited, request_id_header,
    retry_after_header,
};
pub use names::{
    IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, RATE_LIMIT_LIMIT, RATE_LIMIT_REMAINING, RATE_LIMIT_RESET,
    REQUEST_ID, RETRY_AFTER, bearer_key, is_live_key, live_api_key,
};
pub use runtime::{Sleep, process_seed};
pub use server::{into_response, set_rate_limit_headers, set_request_id};

#[cfg(feature = "reqwest")]
pub use client::{
    CallError, DecisionEvent, MAX_RESULT_BYTES, Observer, Resubmission, RetryMiddleware,
    RetryOutcome, STREAMING_BODY, TaskClient, json_or_error, received_from_reqwest,
};
#[cfg(feature = "tokio")]
pub use runtime::TokioSleep;
pub use server::{Account, AccountStatus, TierLimits};
#[cfg(feature = "tower")]
pub use server::{
    Contract, ContractFuture, ContractLayer, Envelope, EnvelopeBody, EnvelopeFuture, EnvelopeLayer,
    MakeReqId, PanicEnvelope, RequestIdFuture, RequestIdLayer, RequestIdLayers, RequestIdService,
    SanitizeRequestId, SanitizeRequestIdLayer, envelope, request_id_layers,
};
#[cfg(feature = "axum")]
pub use server::{HandlerError, Json, Path, Query, from_json_bytes};

/// Polls a future that needs no runtime (every wait in it is ready) to completion.
#[cfg(test)]
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// This crate's README examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
