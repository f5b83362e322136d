//! The server layers' cost: a successful request through an axum router behind every layer
//! of the `tower` feature (request ids, envelopes, the rate limiter) vs the bare router, in
//! one run: over real HTTP on loopback (a keep-alive reqwest client, `loopback`), and in
//! process (`tower::ServiceExt::oneshot`, no sockets, so only the layers differ).
//!
//! Run: `cargo bench -p overten-errors-http --features axum,tower,reqwest --bench axum_layers`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark binary: a broken contender must abort the run"
)]

use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use overten_errors::Tier;
use overten_errors_http::{EnvelopeLayer, RateLimitLayer, request_id_layers};
use tower::{ServiceBuilder, ServiceExt};

struct World {
    rt: tokio::runtime::Runtime,
    bare: Router,
    layered: Router,
    client: reqwest::Client,
    bare_url: String,
    layered_url: String,
    hand_url: String,
}

/// The floor for the contract's headers: a handler that writes `X-Request-Id` and the three
/// `X-RateLimit-*` headers itself (fixed values), with no layer.
fn hand() -> Router {
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
fn ticking() -> std::time::SystemTime {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NOW: AtomicU64 = AtomicU64::new(1_700_000_000);
    std::time::SystemTime::UNIX_EPOCH
        + std::time::Duration::from_secs(NOW.fetch_add(1, Ordering::Relaxed))
}

fn routes() -> Router {
    Router::new().route("/ok", get(|| async { r#"{"success":true}"# }))
}

fn layered() -> Router {
    routes().layer(
        ServiceBuilder::new()
            .layer(request_id_layers())
            .layer(EnvelopeLayer)
            .layer(RateLimitLayer::new(Tier::Enterprise).with_clock(ticking)),
    )
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (bare_url, layered_url, hand_url) = rt.block_on(async {
            let mut urls = Vec::new();
            for app in [routes(), layered(), hand()] {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                urls.push(format!("http://{}/ok", listener.local_addr().unwrap()));
                tokio::spawn(async move { axum::serve(listener, app).await });
            }
            (urls[0].clone(), urls[1].clone(), urls[2].clone())
        });
        World {
            rt,
            bare: routes(),
            layered: layered(),
            client: reqwest::Client::new(),
            bare_url,
            layered_url,
            hand_url,
        }
    })
}

fn over_http(url: &str, keyed: bool) -> u16 {
    let w = world();
    w.rt.block_on(async {
        let mut request = w.client.get(url);
        if keyed {
            request = request.header("authorization", "Bearer sk_live_bench");
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        response.bytes().await.unwrap();
        status
    })
}

fn request(keyed: bool) -> Request<Body> {
    let mut b = Request::get("/ok");
    if keyed {
        b = b.header("authorization", "Bearer sk_live_bench");
    }
    b.body(Body::empty()).unwrap()
}

fn call(router: &Router, keyed: bool) -> u16 {
    let w = world();
    w.rt.block_on(async {
        let response = router.clone().oneshot(request(keyed)).await.unwrap();
        response.status().as_u16()
    })
}

fn main() {
    let w = world();
    assert_eq!(call(&w.bare, false), 200);
    assert_eq!(call(&w.layered, false), 200);
    let r =
        w.rt.block_on(w.layered.clone().oneshot(request(false)))
            .unwrap();
    assert!(r.headers().contains_key("x-request-id"));
    for _ in 0..200 {
        assert_eq!(
            call(&w.layered, true),
            200,
            "the limiter never refuses a keyed run"
        );
    }
    divan::main();
}

mod loopback {
    #[divan::bench]
    fn bare_router() -> u16 {
        super::over_http(&super::world().bare_url, false)
    }

    /// The bare router whose handler writes the four contract headers by hand.
    #[divan::bench]
    fn hand_headers() -> u16 {
        super::over_http(&super::world().hand_url, false)
    }

    /// Every layer, with a key: counted by the limiter, an id made, headers stamped.
    #[divan::bench]
    fn all_layers_keyed() -> u16 {
        super::over_http(&super::world().layered_url, true)
    }
}

#[divan::bench]
fn bare_router() -> u16 {
    call(&world().bare, false)
}

/// Request ids, envelopes, and the rate limiter (an unkeyed request: the limiter looks for
/// a key and passes it on).
#[divan::bench]
fn all_layers() -> u16 {
    call(&world().layered, false)
}

/// The same with a key: the limiter counts it and stamps `X-RateLimit-*`.
#[divan::bench]
fn all_layers_keyed() -> u16 {
    call(&world().layered, true)
}
