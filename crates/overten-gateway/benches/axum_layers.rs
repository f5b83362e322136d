//! The server stack's cost: a successful request through an axum router behind
//! `overten_gateway::stack` (request ids, the envelope layer's span, the gateway: key hash, account,
//! count, permit for a run, catch-panic) vs the bare router, in one run: over real HTTP on
//! loopback (a keep-alive reqwest client, `loopback`), and in process
//! (`tower::ServiceExt::oneshot`, no sockets, so only the layers differ). With the `redis`
//! feature, the same stack on a `RedisStore` (a `redis-server` this bench starts on a free
//! loopback port and stops by PID): the added latency of the store's round trip.
//!
//! Run: `cargo bench -p overten-gateway --features axum[,redis] --bench axum_layers`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark binary: a broken contender must abort the run"
)]

use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use http::Request;
use overten_errors::Tier;
use overten_gateway::{Account, GatewayLayer, MemoryAccounts, MemoryStore, Store, stack};
use tower::ServiceExt;

struct World {
    rt: tokio::runtime::Runtime,
    bare: Router,
    layered: Router,
    floor: Router,
    client: reqwest::Client,
    bare_url: String,
    layered_url: String,
    hand_url: String,
    floor_url: String,
    #[cfg(feature = "redis")]
    redis_url: String,
    /// Stopped explicitly at the end of `main`: a static is never dropped.
    #[cfg(feature = "redis")]
    redis: std::sync::Mutex<Option<RedisServer>>,
}

/// A `redis-server` of the bench's own, on a free loopback port, killed by PID at exit.
#[cfg(feature = "redis")]
struct RedisServer(std::process::Child, u16);

#[cfg(feature = "redis")]
impl RedisServer {
    fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install -y redis-server)");
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        RedisServer(child, port)
    }
}

#[cfg(feature = "redis")]
impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The full stack on `store`; the bench's key is an enterprise account with the page's
/// limits (600 a minute). The clock ticks a second a request, so a window holds 60 requests
/// and every request is admitted and counted. (Rounds before 2026-12-03 set the limit to
/// `u32::MAX`, whose ten-digit values no deployment sends and no cache holds.)
fn layered_on(store: std::sync::Arc<dyn Store>) -> Router {
    let accounts = MemoryAccounts::new()
        .with_key("sk_live_bench", Account::new("org_bench", Tier::Enterprise));
    let gateway = GatewayLayer::new(std::sync::Arc::new(accounts), store).with_clock(ticking);
    routes().layer(stack(gateway))
}

#[path = "support/apps.rs"]
mod apps;
#[path = "support/floor.rs"]
mod floor;

use apps::{hand, routes, ticking};

fn floored() -> Router {
    routes().layer(floor::layer())
}

fn layered() -> Router {
    layered_on(std::sync::Arc::new(MemoryStore::new()))
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        #[cfg(feature = "redis")]
        let redis = RedisServer::start();
        #[cfg(feature = "redis")]
        let redis_app = rt.block_on(async {
            let store =
                overten_gateway::RedisStore::connect(format!("redis://127.0.0.1:{}/", redis.1))
                    .await
                    .unwrap();
            layered_on(std::sync::Arc::new(store))
        });
        #[cfg(not(feature = "redis"))]
        let redis_app = layered();
        let (bare_url, layered_url, hand_url, redis_url, floor_url) = rt.block_on(async {
            let mut urls = Vec::new();
            for app in [routes(), layered(), hand(), redis_app, floored()] {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                urls.push(format!("http://{}/ok", listener.local_addr().unwrap()));
                tokio::spawn(async move { axum::serve(listener, app).await });
            }
            (
                urls[0].clone(),
                urls[1].clone(),
                urls[2].clone(),
                urls[3].clone(),
                urls[4].clone(),
            )
        });
        #[cfg(not(feature = "redis"))]
        let _ = redis_url;
        World {
            rt,
            bare: routes(),
            layered: layered(),
            floor: floored(),
            client: reqwest::Client::new(),
            bare_url,
            layered_url,
            hand_url,
            floor_url,
            #[cfg(feature = "redis")]
            redis_url,
            #[cfg(feature = "redis")]
            redis: std::sync::Mutex::new(Some(redis)),
        }
    })
}

fn over_http(url: &str, keyed: bool) -> u16 {
    send(url, keyed, false)
}

/// A `POST /run` (a run: the gateway takes a permit and gives it back when the body ends).
fn run_over_http(url: &str) -> u16 {
    send(&url.replace("/ok", "/run"), true, true)
}

fn send(url: &str, keyed: bool, run: bool) -> u16 {
    let w = world();
    w.rt.block_on(async {
        let mut request = if run {
            w.client.post(url)
        } else {
            w.client.get(url)
        };
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
    assert_eq!(call(&w.layered, false), 401, "no key");
    assert_eq!(call(&w.floor, false), 401, "no key");
    for router in [&w.layered, &w.floor] {
        let r =
            w.rt.block_on(router.clone().oneshot(request(true)))
                .unwrap();
        assert_eq!(r.status(), 200);
        for name in [
            "x-request-id",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(r.headers().contains_key(name), "{name}");
        }
    }
    assert_eq!(over_http(&w.floor_url, true), 200);
    let r =
        w.rt.block_on(w.layered.clone().oneshot(request(true)))
            .unwrap();
    assert!(r.headers().contains_key("x-request-id"));
    assert!(r.headers().contains_key("x-ratelimit-remaining"));
    for _ in 0..200 {
        assert_eq!(
            call(&w.layered, true),
            200,
            "the gateway admits every keyed request"
        );
        assert_eq!(run_over_http(&w.layered_url), 200, "and every run");
    }
    #[cfg(feature = "redis")]
    for _ in 0..200 {
        assert_eq!(over_http(&w.redis_url, true), 200);
        assert_eq!(run_over_http(&w.redis_url), 200);
    }
    divan::main();
    // The world is a static, never dropped: stop its redis-server by hand.
    #[cfg(feature = "redis")]
    drop(w.redis.lock().map(|mut r| r.take()));
}

mod loopback {
    /// The bare router, sent the same request as the stack (with its `Authorization`
    /// header, which the router ignores): the baseline.
    #[divan::bench]
    fn bare_router() -> u16 {
        super::over_http(&super::world().bare_url, true)
    }

    /// The bare router sent no `Authorization` header (the baseline of earlier rounds).
    #[divan::bench]
    fn bare_router_no_key() -> u16 {
        super::over_http(&super::world().bare_url, false)
    }

    /// The bare router whose handler writes the four contract headers by hand (the same
    /// request as the stack's).
    #[divan::bench]
    fn hand_headers() -> u16 {
        super::over_http(&super::world().hand_url, true)
    }

    /// The equal-work floor (`floor` above): the work the contract needs, by hand.
    #[divan::bench]
    fn floor() -> u16 {
        super::over_http(&super::world().floor_url, true)
    }

    /// The full stack on the memory store, with a key: hashed, resolved, counted, an id
    /// made, headers stamped.
    #[divan::bench]
    fn stack_memory_get() -> u16 {
        super::over_http(&super::world().layered_url, true)
    }

    /// The same for a run (`POST`): a permit taken and given back.
    #[divan::bench]
    fn stack_memory_run() -> u16 {
        super::run_over_http(&super::world().layered_url)
    }

    /// The full stack on Redis: one round trip for the count.
    #[cfg(feature = "redis")]
    #[divan::bench]
    fn stack_redis_get() -> u16 {
        super::over_http(&super::world().redis_url, true)
    }

    /// A run on Redis: one round trip for the count and the permit (the release runs in
    /// the background after the response).
    #[cfg(feature = "redis")]
    #[divan::bench]
    fn stack_redis_run() -> u16 {
        super::run_over_http(&super::world().redis_url)
    }
}

#[divan::bench]
fn bare_router() -> u16 {
    call(&world().bare, false)
}

/// The equal-work floor in process, a keyed `GET`.
#[divan::bench]
fn floor() -> u16 {
    call(&world().floor, true)
}

/// The full stack in process, a keyed `GET`.
#[divan::bench]
fn stack_memory_get() -> u16 {
    call(&world().layered, true)
}
