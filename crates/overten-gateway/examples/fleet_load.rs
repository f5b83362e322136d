//! Throughput of a fleet: 4 gateway replicas (axum on 127.0.0.1, one process) sharing one
//! `redis-server`, and sharing a Redis Cluster (3 primaries, 3 replicas), against the same 4
//! replicas on per-process memory stores and 4 bare routers, under the same closed-loop load: `CLIENTS` concurrent keep-alive clients sending
//! keyed `GET`s (and, in a second round, runs: `POST`s that take and give back a permit)
//! round-robin over the replicas for `SECONDS` each. Every contender serves the same number
//! of clients for the same time; the count is of successful (200) answers only.
//!
//! ```text
//! cargo run --release -p overten-gateway --features axum,redis --example fleet_load -- [SECONDS] [CLIENTS]
//! ```
//!
//! It starts its own `redis-server` and cluster on free loopback ports and kills them by PID
//! at the end.
//! Client and servers share the machine's cores: the figures are ratios within one run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a measuring binary"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use overten_errors::Tier;
#[path = "../tests/support/redis_deploy.rs"]
mod redis_deploy;
#[path = "../tests/support/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

use overten_gateway::{
    Account, GatewayLayer, MemoryAccounts, MemoryStore, RedisStore, Store, TierLimits, stack,
};

const REPLICAS: usize = 4;
const KEYS: usize = 20;

fn routes() -> Router {
    Router::new()
        .route("/ok", get(|| async { r#"{"success":true}"# }))
        .route("/run", post(|| async { r#"{"success":true}"# }))
}

/// 20 enterprise keys with limits out of reach: every request is counted and admitted.
fn gateway(store: Arc<dyn Store>) -> GatewayLayer {
    let accounts = MemoryAccounts::new();
    for k in 0..KEYS {
        accounts.insert(
            &format!("sk_live_k{k}"),
            Account::new(format!("org_{k}"), Tier::Enterprise),
        );
    }
    GatewayLayer::new(Arc::new(accounts), store).with_limits(
        Tier::Enterprise,
        TierLimits::of(Tier::Enterprise)
            .requests_per_minute(u32::MAX)
            .concurrent_runs(u32::MAX),
    )
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// What one load run measured.
struct Measured {
    /// Successful answers per second.
    rate: f64,
    /// Latency percentiles of the successful answers, in microseconds: p50, p99.
    p50_us: u64,
    p99_us: u64,
}

/// `clients` closed-loop clients over `seconds`: successful answers per second, and their
/// latency percentiles.
async fn load(addrs: &[SocketAddr], clients: usize, seconds: u64, run: bool) -> Measured {
    let ok = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let addr = addrs[c % addrs.len()];
        let ok = Arc::clone(&ok);
        let key = format!("Bearer sk_live_k{}", c % KEYS);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            // Bounded by the deadline.
            while Instant::now() < deadline {
                let req = http::Request::builder()
                    .method(if run { "POST" } else { "GET" })
                    .uri(format!("http://{addr}/{}", if run { "run" } else { "ok" }))
                    .header("authorization", &key)
                    .body(Empty::new())
                    .unwrap();
                let sent = Instant::now();
                let Ok(resp) = client.request(req).await else {
                    continue;
                };
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                if status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                    latencies.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let at = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into a sorted list"
        )]
        let i = ((all.len().saturating_sub(1)) as f64 * q).round() as usize;
        all.get(i).copied().unwrap_or(0)
    };
    #[allow(clippy::cast_precision_loss, reason = "a rate")]
    let rate = ok.load(Ordering::Relaxed) as f64 / seconds as f64;
    Measured {
        rate,
        p50_us: at(0.50),
        p99_us: at(0.99),
    }
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let clients: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let redis = RedisServer::start();
    let cluster = redis_deploy::RedisCluster::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut fleets: Vec<(&str, Vec<SocketAddr>)> = Vec::new();
        let mut bare = Vec::new();
        let mut memory = Vec::new();
        let mut shared = Vec::new();
        let mut clustered = Vec::new();
        for _ in 0..REPLICAS {
            bare.push(serve(routes()).await);
            memory.push(serve(routes().layer(stack(gateway(Arc::new(MemoryStore::new()))))).await);
            let store = RedisStore::connect(redis.url()).await.unwrap();
            shared.push(serve(routes().layer(stack(gateway(Arc::new(store))))).await);
            let store = RedisStore::connect(cluster.url()).await.unwrap();
            clustered.push(serve(routes().layer(stack(gateway(Arc::new(store))))).await);
        }
        fleets.push(("bare routers", bare));
        fleets.push(("stack, memory stores (each replica alone)", memory));
        fleets.push(("stack, one Redis (shared)", shared));
        fleets.push(("stack, Redis Cluster 3+3 (shared)", clustered));
        println!("{REPLICAS} replicas, {clients} clients, {seconds} s each: successful answers per second, latency p50 and p99:");
        for run in [false, true] {
            for (name, addrs) in &fleets {
                if run && *name == "bare routers" {
                    continue;
                }
                let m = load(addrs, clients, seconds, run).await;
                let what = if run { "runs (POST)" } else { "GET" };
                println!(
                    "  {name:45} {what:12} {:>8.0}/s  p50 {:>6} µs  p99 {:>6} µs",
                    m.rate, m.p50_us, m.p99_us
                );
            }
        }
    });
    drop(redis);
    drop(cluster);
}
