//! The apps the axum bench and the examples built on it share: the routes, the same with the
//! contract's headers written by hand, and the clock.

#![allow(
    dead_code,
    reason = "shared by a bench and examples that each use a part"
)]

use axum::Router;
use axum::routing::{get, post};

/// The routes every contender serves: a `GET` and a run (`POST`).
pub(crate) fn routes() -> Router {
    Router::new()
        .route("/ok", get(|| async { r#"{"success":true}"# }))
        .route("/run", post(|| async { r#"{"success":true}"# }))
}

/// The floor for the contract's headers: a handler that writes `X-Request-Id` and the three
/// `X-RateLimit-*` headers itself (fixed values), with no layer.
pub(crate) fn hand() -> Router {
    Router::new().route(
        "/ok",
        get(|| async {
            (
                [
                    ("x-request-id", "req_0123456789abcdef01234567"),
                    ("x-ratelimit-limit", "600"),
                    ("x-ratelimit-remaining", "599"),
                    ("x-ratelimit-reset", "1700000040"),
                ],
                r#"{"success":true}"#,
            )
        }),
    )
}

/// A clock one second further on at every read: the limiter's windows roll over every 60
/// requests, so a keyed run never reaches the tier's limit and every request is counted.
pub(crate) fn ticking() -> std::time::SystemTime {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NOW: AtomicU64 = AtomicU64::new(1_700_000_000);
    std::time::SystemTime::UNIX_EPOCH
        + std::time::Duration::from_secs(NOW.fetch_add(1, Ordering::Relaxed))
}
