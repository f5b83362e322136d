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
mod ceiling;
#[cfg(feature = "tower")]
mod envelope;
#[cfg(feature = "tower")]
mod gateway;
#[cfg(feature = "tower")]
mod idempotency;
pub mod mock;
#[cfg(feature = "tower")]
mod request_id;
mod response;

#[cfg(feature = "axum")]
pub use self::axum::{HandlerError, Json, Path, Query, from_json_bytes};
pub use crate::names::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
#[cfg(feature = "tower")]
pub use ceiling::{SyncCeiling, SyncCeilingLayer};
#[cfg(feature = "tower")]
pub use envelope::{
    Envelope, EnvelopeBody, EnvelopeFuture, EnvelopeLayer, PanicEnvelope, Panicked, envelope,
};
#[cfg(feature = "tower")]
pub use gateway::{
    Account, AccountStatus, Accounts, Admission, Admit, BoxFuture, Gateway, GatewayBody,
    GatewayLayer, KeyHash, MemoryAccounts, MemoryStore, PermitId, Renewal, RunAdmission, RunAsk,
    RunPermit, Store, StoreError, StoreFailure, TierLimits,
};
#[cfg(feature = "redis")]
pub use gateway::{RedisStore, RedisStoreBuilder};
#[cfg(feature = "tower")]
pub use idempotency::{
    Claim, ClaimToken, Fingerprint, Idempotency, IdempotencyBody, IdempotencyLayer,
    IdempotencyStore, MemoryIdempotencyStore, RecordKey, StoredResponse,
};
#[cfg(feature = "tower")]
pub use request_id::{
    MakeReqId, RequestIdLayers, SanitizeRequestId, SanitizeRequestIdLayer, request_id_layers,
};
pub use response::{into_response, set_rate_limit_headers, set_request_id};

/// The recommended server stack, outermost first: [`request_id_layers`] (drop an invalid
/// incoming id, make one, copy it onto the response), [`EnvelopeLayer`] (one span per
/// request, envelopes for framework-made errors, one log line per 5xx with the request id
/// and the cause chain), `gateway`, then tower-http's `CatchPanicLayer` with
/// [`PanicEnvelope`] (a panic is a 500 envelope and one log line; inside the gateway, so
/// that its response carries `X-RateLimit-*` like every other and its permit goes back when
/// the response is sent). Put your routes (and a timeout, or the idempotency layer) inside.
#[cfg(feature = "tower")]
pub type ServerStack = tower_layer::Stack<
    tower_http::catch_panic::CatchPanicLayer<PanicEnvelope>,
    tower_layer::Stack<GatewayLayer, tower_layer::Stack<EnvelopeLayer, RequestIdLayers>>,
>;

/// [`ServerStack`] around `gateway`: `.layer(stack(gateway))` on an axum `Router`.
///
/// ```
/// use std::sync::Arc;
/// use overten_errors::Tier;
/// use overten_errors_http::server::{stack, Account, GatewayLayer, MemoryAccounts, MemoryStore};
///
/// let accounts = MemoryAccounts::new().with_key("sk_live_1", Account::new("org_1", Tier::Pro));
/// let gateway = GatewayLayer::new(Arc::new(accounts), Arc::new(MemoryStore::new()));
/// let app: axum::Router = axum::Router::new()
///     .route("/v1/excel/generate", axum::routing::post(|| async { "ok" }))
///     .layer(stack(gateway));
/// # let _ = app;
/// ```
#[cfg(feature = "tower")]
pub fn stack(gateway: GatewayLayer) -> ServerStack {
    tower_layer::Stack::new(
        tower_http::catch_panic::CatchPanicLayer::custom(PanicEnvelope),
        tower_layer::Stack::new(
            gateway,
            tower_layer::Stack::new(EnvelopeLayer, request_id_layers()),
        ),
    )
}
