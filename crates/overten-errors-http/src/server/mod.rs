//! Server side: [`into_response`] (an [`ApiError`](overten_errors::ApiError) as the API
//! sends it); the caller as the gateway hands it to handlers ([`Account`], [`TierLimits`]);
//! axum extractors and the handler error (feature `axum`); request ids and envelopes for
//! framework-made errors as tower layers (feature `tower`).
//!
//! The gateway itself (accounts, rate limits, concurrent runs, idempotency, the sync
//! ceiling, their stores) is the `overten-gateway` crate, built on these.
//!
//! One file a concern: `response.rs` (errors into responses), `caller.rs`, `axum.rs`
//! (extractors), `request_id.rs`, `envelope.rs` (framework-made errors, spans and logs),
//! `mock.rs` (the mock API's routes as pure logic).

#[cfg(feature = "axum")]
mod axum;
mod caller;
#[cfg(feature = "tower")]
mod envelope;
pub mod mock;
#[cfg(feature = "tower")]
mod request_id;
mod response;

#[cfg(feature = "axum")]
pub use self::axum::{HandlerError, Json, Path, Query, from_json_bytes};
pub use crate::names::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
pub use caller::{Account, AccountStatus, TierLimits};
#[cfg(feature = "tower")]
pub use envelope::{
    Contract, ContractFuture, ContractLayer, Envelope, EnvelopeBody, EnvelopeFuture, EnvelopeLayer,
    OutageAnswer, PanicEnvelope, Panicked, envelope, is_json,
};
#[cfg(feature = "tower")]
pub use request_id::{
    MakeReqId, RequestIdFuture, RequestIdLayer, RequestIdLayers, RequestIdService,
    SanitizeRequestId, SanitizeRequestIdLayer, request_id_layers,
};
pub use response::{answer, into_response, set_rate_limit_headers, set_request_id};
