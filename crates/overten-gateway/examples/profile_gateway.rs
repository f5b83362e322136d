//! Runs a keyed `GET` through the bare router or the full server stack (memory store)
//! 10,000 times in process (or as many times as
//! the second argument says), for instruction counts under callgrind (repeatable on a shared,
//! noisy machine, unlike wall time):
//!
//! ```text
//! cargo build --release -p overten-gateway --features axum --example profile_gateway
//! for p in bare stack; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$p target/release/examples/profile_gateway $p
//! done
//! callgrind_annotate --inclusive=yes cg.stack | head -60
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a profiling binary"
)]

use std::sync::Arc;

use axum::body::Body;
use overten_errors::Tier;
use overten_gateway::{Account, GatewayLayer, MemoryAccounts, MemoryStore, stack};
use tower::ServiceExt;

#[path = "../benches/support/apps.rs"]
mod apps;
#[path = "../benches/support/floor.rs"]
mod floor;

use apps::{routes, ticking};

fn main() {
    let which = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "stack".to_owned());
    let accounts = MemoryAccounts::new()
        .with_key("sk_live_bench", Account::new("org_bench", Tier::Enterprise));
    let gateway =
        GatewayLayer::new(Arc::new(accounts), Arc::new(MemoryStore::new())).with_clock(ticking);
    // One layer at a time, to see what each costs: `bare`, `ids` (the request-id layers),
    // `envelope` (those and the envelope layer), `gateway` (the gateway layer alone), `floor` (the benchmark's equal-work floor), `no_catch_panic`
    // (the stack without its catch-panic layer),
    // `stack` (the whole `stack`).
    let app = match which.as_str() {
        "bare" => routes(),
        "ids" => routes().layer(overten_errors_http::server::request_id_layers()),
        "envelope" => routes()
            .layer(overten_errors_http::server::EnvelopeLayer)
            .layer(overten_errors_http::server::request_id_layers()),
        "gateway" => routes().layer(gateway),
        "floor" => routes().layer(floor::layer()),
        "no_catch_panic" => routes().layer(tower_layer::Stack::new(
            gateway,
            tower_layer::Stack::new(
                overten_errors_http::server::EnvelopeLayer,
                overten_errors_http::server::request_id_layers(),
            ),
        )),
        _ => routes().layer(stack(gateway)),
    };
    // An optional second argument: how many requests (10,000 by default; more for `perf`).
    let count: u32 = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..count {
            let req = http::Request::get("/ok")
                .header("authorization", "Bearer sk_live_bench")
                .body(Body::empty())
                .unwrap();
            let fut = app.clone().oneshot(req);
            if std::env::var_os("SIZES").is_some() {
                eprintln!("oneshot future: {} bytes", std::mem::size_of_val(&fut));
            }
            let resp = fut.await.unwrap();
            assert_eq!(resp.status(), 200);
        }
    });
}
