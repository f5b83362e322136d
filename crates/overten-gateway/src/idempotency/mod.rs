//! Idempotency keys: see [`IdempotencyLayer`].

mod service;

use std::sync::Arc;
use std::time::Duration;

use crate::store::IdempotencyStore;

use overten_errors::SYNC_TIMEOUT_SECONDS;

pub use service::{Idempotency, IdempotencyBody};

/// Idempotency keys, as draft-ietf-httpapi-idempotency-key-header describes and the page's
/// 409 `conflict` ("Idempotency key reused with a different request body") names.
///
/// A request that carries `Idempotency-Key` (one header, 1 to 255 visible ASCII characters,
/// else 400 `invalid_request`) is fingerprinted (SHA-256 over its method, path and query,
/// and body; a body over the caller's tier's upload limit, or without a gateway over
/// [`IdempotencyLayer::max_request_bytes`] (default 1 MiB), is 413 `payload_too_large`, and
/// keyed bodies held at once are bounded by [`IdempotencyLayer::max_buffered_bytes`]) and claimed in the store under the caller's org (from the gateway's
/// `Account`; without one, the key's hash) and the key, so two orgs never see each other's
/// records:
///
/// - **first**: the request runs. A response that is a 5xx or a 408 (the sync ceiling), a
///   request cancelled (the client went away) or a handler that panics gives the key back,
///   so the client's retry runs. Any other response (a 4xx too) is kept for
///   [`IdempotencyLayer::retention`] (default 24 h): status, headers (less the request id,
///   rate-limit headers and framing) and the whole body, read up to
///   [`IdempotencyLayer::max_response_bytes`] (default 1 MiB) before it is sent, so a client
///   that gives up waiting does not lose it;
/// - **the same key and the same request again**: the kept response is replayed, marked
///   `Idempotent-Replayed: true`; the handler does not run;
/// - **the same key with another request**: 409 `conflict`;
/// - **the same key while the first is still running**: 409 `conflict` with `Retry-After`
///   ([`IdempotencyLayer::in_progress_retry_after`], default 1 s);
/// - **a response too large to keep** is sent as it is (its first
///   `max_response_bytes` read ahead, the rest streamed, never buffered) and the key is
///   recorded as used: a replay is answered 409 `conflict` saying so, never run twice.
///
/// A claim in progress is a lease (default 360 s: the sync ceiling and a minute), so a
/// replica that died frees its keys. When the store fails, [`StoreFailure`](crate::store::StoreFailure)
/// decides as for the gateway: by default 503 `service_unavailable` with `Retry-After`, or
/// (`Allow`) the request runs without idempotency, with a warning.
///
/// Place it inside the gateway (so it sees the `Account`) and outside the sync ceiling:
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use overten_errors::Tier;
/// use overten_gateway::{
///     stack, Account, GatewayLayer, IdempotencyLayer, MemoryAccounts, MemoryIdempotencyStore,
///     MemoryStore, SyncCeilingLayer,
/// };
///
/// let accounts = MemoryAccounts::new().with_key("sk_live_1", Account::new("org_1", Tier::Pro));
/// let gateway = GatewayLayer::new(Arc::new(accounts), Arc::new(MemoryStore::new()));
/// let app: axum::Router = axum::Router::new()
///     .route("/v1/excel/generate", axum::routing::post(|| async { "done" }))
///     .layer(SyncCeilingLayer::new(Duration::from_secs(300), |d| tokio::time::sleep(d)))
///     .layer(IdempotencyLayer::new(Arc::new(MemoryIdempotencyStore::new())))
///     .layer(stack(gateway));
/// # let _ = app;
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    pub(crate) config: Arc<Config>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) store: Arc<dyn IdempotencyStore>,
    pub(crate) retention: Duration,
    pub(crate) lease: Duration,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_buffered_bytes: usize,
    /// Request bytes held by this layer's requests right now, across every clone.
    pub(crate) buffered: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) max_response_bytes: usize,
    pub(crate) in_progress_retry_after: Duration,
    pub(crate) on_store_error: crate::store::StoreFailure,
    /// The store's outage, as this layer's requests saw it (shared by every clone).
    pub(crate) outage: Arc<crate::outage::Outage>,
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("retention", &self.config.retention)
            .field("lease", &self.config.lease)
            .field("max_request_bytes", &self.config.max_request_bytes)
            .field("max_buffered_bytes", &self.config.max_buffered_bytes)
            .field("max_response_bytes", &self.config.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// Records in `store`, with the defaults above.
    pub fn new(store: Arc<dyn IdempotencyStore>) -> IdempotencyLayer {
        IdempotencyLayer {
            config: Arc::new(Config {
                store,
                retention: Duration::from_secs(24 * 60 * 60),
                lease: Duration::from_secs(SYNC_TIMEOUT_SECONDS + 60),
                max_request_bytes: 1024 * 1024,
                max_buffered_bytes: Self::DEFAULT_MAX_BUFFERED_BYTES,
                buffered: Arc::default(),
                max_response_bytes: 1024 * 1024,
                in_progress_retry_after: Duration::from_secs(1),
                on_store_error: crate::store::StoreFailure::default(),
                outage: Arc::new(crate::outage::Outage::new("idempotency")),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> IdempotencyLayer {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// How long a completed response is kept for replay (default 24 h).
    #[must_use]
    pub fn retention(self, d: Duration) -> IdempotencyLayer {
        self.edit(|c| c.retention = d)
    }

    /// How long a claim in progress holds its key if never completed (default 360 s).
    #[must_use]
    pub fn lease(self, d: Duration) -> IdempotencyLayer {
        self.edit(|c| c.lease = d)
    }

    /// The largest request body fingerprinted when no gateway is in front (default 1 MiB);
    /// a larger one with a key is 413 `payload_too_large`. Behind the gateway, the limit is
    /// the caller's tier's upload limit ([`TierLimits`](overten_errors_http::server::TierLimits) in the
    /// request's extensions) and this setting is not used.
    #[must_use]
    pub fn max_request_bytes(self, n: usize) -> IdempotencyLayer {
        self.edit(|c| c.max_request_bytes = n)
    }

    /// The default of [`IdempotencyLayer::max_buffered_bytes`]: 256 MiB.
    pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;

    /// The most request-body bytes that keyed requests may hold in memory at once, across
    /// every request through this layer (default 256 MiB). A keyed body is read whole before
    /// it is fingerprinted and claimed; one that would take the total past this bound is
    /// answered 503 `service_unavailable` with `Retry-After` (capacity exhausted, as the
    /// page names it), so many large uploads at once cannot exhaust the process's memory.
    #[must_use]
    pub fn max_buffered_bytes(self, n: usize) -> IdempotencyLayer {
        self.edit(|c| c.max_buffered_bytes = n)
    }

    /// The largest response body kept (default 1 MiB).
    #[must_use]
    pub fn max_response_bytes(self, n: usize) -> IdempotencyLayer {
        self.edit(|c| c.max_response_bytes = n)
    }

    /// The `Retry-After` of the 409 for a key still in progress (default 1 s).
    #[must_use]
    pub fn in_progress_retry_after(self, d: Duration) -> IdempotencyLayer {
        self.edit(|c| c.in_progress_retry_after = d)
    }

    /// What to do when the store fails (as the gateway's policy).
    #[must_use]
    pub fn on_store_error(self, policy: crate::store::StoreFailure) -> IdempotencyLayer {
        self.edit(|c| c.on_store_error = policy)
    }
}

impl<S> tower_layer::Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;
    fn layer(&self, inner: S) -> Idempotency<S> {
        Idempotency::new(inner, Arc::clone(&self.config))
    }
}
