//! The Overten API's gateway for a fleet of replicas, as tower layers: accounts and tiers,
//! per-key rate limits, concurrent runs and upload limits ([`GatewayLayer`]), idempotency
//! keys ([`IdempotencyLayer`]), the sync ceiling ([`SyncCeilingLayer`]) and async tasks
//! ([`Tasks`]), counted on a per-process store ([`MemoryStore`],
//! [`MemoryIdempotencyStore`], [`MemoryTaskStore`]) or on Redis (`RedisStore`, feature
//! `redis`) that every replica shares.
//!
//! Responses, request ids, envelopes for framework-made errors and the extractors handlers
//! use are `overten-errors-http`'s: this crate answers with them, and puts the caller's
//! [`Account`] and [`TierLimits`] in each request's extensions for handlers to read.
//! `docs/gateway.md` in the repository has the whole contract.
//!
//! # Features
//!
//! | feature | adds | pulls in |
//! |---|---|---|
//! | (default) | the layers above on the memory stores, [`stack`] | `overten-errors-http` (`tower`), `tower-layer`, `tower-service`, `tracing`, `sha2` |
//! | `axum` | the gateway sets axum's `DefaultBodyLimit` to the caller's tier's upload limit | `axum` |
//! | `redis` | `RedisStore`: counts, permits, idempotency records and tasks shared by a fleet, on one node, a Cluster or Sentinel (turns on `tokio`) | `redis` (tokio, cluster, sentinel) |
//! | `tokio` | `Tasks::spawn`: a task's work on the tokio runtime | `tokio` (`rt`, `time`, `sync`) |
//! | `metrics` | the [`metrics`](mod@metrics) this crate records, through the `metrics` facade | `metrics` |
//!
//! One room a concern: `key.rs` ([`KeyHash`]), `accounts.rs` (and the accounts file),
//! `store/` (every store and what they share), `outage.rs` (a store outage logged as one
//! story), `gateway/`, `idempotency/`, `ceiling.rs`, `tasks.rs` (async tasks).
//!
//! ```
//! use std::sync::Arc;
//! use overten_errors::Tier;
//! use overten_gateway::{stack, Account, GatewayLayer, MemoryAccounts, MemoryStore};
//!
//! let accounts = MemoryAccounts::new().with_key("sk_live_1", Account::new("org_1", Tier::Pro));
//! let gateway = GatewayLayer::new(Arc::new(accounts), Arc::new(MemoryStore::new()));
//! let app: axum::Router = axum::Router::new()
//!     .route("/v1/excel/generate", axum::routing::post(|| async { "ok" }))
//!     .layer(stack(gateway));
//! # let _ = app;
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod accounts;
mod ceiling;
mod gateway;
mod idempotency;
mod key;
pub mod metrics;
mod outage;
pub mod store;
mod tasks;

pub use accounts::{
    AccountLine, Accounts, AccountsFile, AccountsFileError, MAX_ACCOUNTS_FILE_BYTES,
    MemoryAccounts, default_org,
};
pub use ceiling::{SyncCeiling, SyncCeilingLayer};
pub use gateway::{
    Gateway, GatewayBody, GatewayFuture, GatewayLayer, NOT_RUN_SEGMENTS, RunPermit,
    is_run_by_default,
};
pub use idempotency::{Idempotency, IdempotencyBody, IdempotencyLayer};
pub use key::KeyHash;
pub use overten_errors_http::server::{Account, AccountStatus, TierLimits};
pub use store::{
    Admission, Admit, BoxFuture, Claim, ClaimToken, Fingerprint, IdempotencyStore,
    MemoryIdempotencyStore, MemoryStore, MemoryTaskStore, PermitId, RecordKey, Renewal,
    RunAdmission, RunAsk, Store, StoreError, StoreFailure, StoredResponse, TaskKey, TaskRecord,
    TaskStore,
};
#[cfg(feature = "redis")]
pub use store::{RedisStore, RedisStoreBuilder};
pub use tasks::{
    ABANDONED_MESSAGE, FinishError, MAX_TASK_ID_BYTES, Outcome, REAPED_MESSAGE, TaskResponse,
    TaskRun, Tasks,
};

use overten_errors_http::server::ContractLayer;

/// The recommended server stack, outermost first: `ContractLayer` (request ids: drop an
/// invalid incoming id, make one, copy it onto the response; one span per request;
/// envelopes for framework-made errors; one log line per 5xx with the request id and the
/// cause chain), then `gateway`, which answers a panic of what it wraps with a 500
/// envelope (`PanicEnvelope`'s: its text logged once, never sent) carrying `X-RateLimit-*`
/// like every response, the run's permit given back. Put your routes (and a timeout, or the
/// idempotency layer) inside.
pub type ServerStack = tower_layer::Stack<GatewayLayer, ContractLayer>;

/// [`ServerStack`] around `gateway`: `.layer(stack(gateway))` on an axum `Router`.
pub fn stack(gateway: GatewayLayer) -> ServerStack {
    tower_layer::Stack::new(gateway, ContractLayer::default())
}

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
