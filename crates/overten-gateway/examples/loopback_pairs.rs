//! Over loopback, the bench's contenders (the bare router, the same with the contract's
//! headers by hand, the equal-work floor, the full stack on the memory store) sent one
//! request each in turn, round after round, so that every contender meets the same
//! moments of a shared, noisy machine. Prints each contender's median and the median of
//! its per-round ratio to the bare router: a paired check of `benches/axum_layers.rs`,
//! whose contenders run one after the other.
//!
//! ```text
//! cargo run --release -p overten-gateway --features axum --example loopback_pairs -- 20000
//! ```
//!
//! `ONLY=i` sends to contender `i` alone (for a profiler); `VARIANT` (below) swaps the full
//! stack for one of its parts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a measuring binary: a broken contender must abort the run"
)]

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use overten_errors::Tier;
use overten_gateway::{Account, GatewayLayer, MemoryAccounts, MemoryStore, stack};

#[path = "../benches/support/apps.rs"]
mod apps;
#[path = "../benches/support/floor.rs"]
mod floor;

use apps::{hand, routes, ticking};

fn layered() -> Router {
    let accounts = MemoryAccounts::new()
        .with_key("sk_live_bench", Account::new("org_bench", Tier::Enterprise));
    // The page's enterprise limits; a second a request keeps every window under them.
    let gateway =
        GatewayLayer::new(Arc::new(accounts), Arc::new(MemoryStore::new())).with_clock(ticking);
    match std::env::var("VARIANT").as_deref() {
        Ok("gateway") => routes().layer(gateway),
        Ok("noop") => routes().layer(tower::util::MapResponseLayer::new(
            |r: axum::response::Response| r,
        )),
        Ok("ids") => routes().layer(overten_errors_http::server::RequestIdLayer::default()),
        Ok("envelope") => routes().layer(overten_errors_http::server::EnvelopeLayer),
        Ok("contract") => routes().layer(overten_errors_http::server::ContractLayer::default()),
        _ => routes().layer(stack(gateway)),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
        .clamp(100, 1_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let names = ["bare_router", "hand_headers", "floor", "stack_memory_get"];
    rt.block_on(async {
        let mut urls = Vec::new();
        for app in [routes(), hand(), routes().layer(floor::layer()), layered()] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(format!("http://{}/ok", listener.local_addr().unwrap()));
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        let client = reqwest::Client::new();
        let send = |url: &str| {
            let request = client
                .get(url)
                .header("authorization", "Bearer sk_live_bench");
            async move {
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
            }
        };
        for url in &urls {
            for _ in 0..200 {
                send(url).await;
            }
        }
        // `ONLY=i`: send to contender `i` alone (for a profiler).
        let only: Option<usize> = std::env::var("ONLY").ok().and_then(|v| v.parse().ok());
        if only.is_some() {
            let i = only.unwrap_or(0) % urls.len();
            for _ in 0..rounds {
                send(&urls[i]).await;
            }
            return;
        }
        let mut times = vec![Vec::with_capacity(rounds); urls.len()];
        for round in 0..rounds {
            // A different contender goes first each round.
            for k in 0..urls.len() {
                let i = (round + k) % urls.len();
                let t = Instant::now();
                send(&urls[i]).await;
                times[i].push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        let mut ratios: Vec<Vec<f64>> = times
            .iter()
            .map(|t| t.iter().zip(&times[0]).map(|(a, b)| a / b).collect())
            .collect();
        println!("{rounds} rounds; per contender: median µs, median of per-round ratios to the bare router");
        for (i, name) in names.iter().enumerate() {
            let m = median(&mut times[i].clone());
            let r = median(&mut ratios[i]);
            println!("{name:>18}: {m:8.2} µs  {r:.3}×");
        }
    });
}
