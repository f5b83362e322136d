//! Server side: [`into_response`] (an [`ApiError`](overten_errors::ApiError) as the API
//! sends it); axum extractors and the handler error (feature `axum`); the gateway as tower
//! layers (feature `tower`): request ids, envelopes and logs, accounts and tiers, rate
//! limits, concurrent runs and upload limits, on a per-process store or on Redis (feature
//! `redis`).
//!
//! One file a concern: `response.rs` (errors into responses), `axum.rs` (extractors),
//! `request_id.rs`, `envelope.rs` (framework-made errors, spans and logs), `gateway/`
//! (accounts, limits, stores), `mock.rs` (the mock API's routes as pure logic).

#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "tower")]
mod envelope;
pub mod mock;
#[cfg(feature = "tower")]
mod request_id;
mod response;

#[cfg(feature = "axum")]
pub use self::axum::{HandlerError, Json, Path, Query, from_json_bytes};
#[cfg(feature = "tower")]
pub use envelope::{Envelope, EnvelopeBody, EnvelopeFuture, EnvelopeLayer, envelope};
#[cfg(feature = "tower")]
pub use request_id::{
    MakeReqId, RequestIdLayers, SanitizeRequestId, SanitizeRequestIdLayer, request_id_layers,
};
pub use response::{into_response, set_rate_limit_headers, set_request_id};
#[cfg(feature = "tower")]
mod rate_limit;
#[cfg(feature = "tower")]
pub use rate_limit::{
    CounterStore, MAX_KEY_BYTES, MemoryStore, RateLimitFuture, RateLimitLayer, RateLimited,
};
