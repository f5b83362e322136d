//! How long a `RedisStore` call takes when a burst lands on a fleet at once: `REPLICAS`
//! stores (one connection each, as replicas have) sharing one `redis-server`, and
//! `BURST` admissions spawned together, spread over the stores and over 20 keys, rounds
//! one after another. Prints the latency of every call (p50, p99, max) and how many a
//! given timeout would have cut off; it measures with a 30 s timeout so nothing is cut.
//!
//! ```text
//! cargo run --release -p overten-gateway --features axum,redis --example store_burst -- [BURST] [ROUNDS]
//! ```
//!
//! It starts its own `redis-server` on a free loopback port (the tests' `RedisServer`)
//! and kills it at the end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a measuring binary"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use overten_gateway::{Admit, KeyHash, RedisStore, Store};

#[path = "../tests/support/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

const REPLICAS: usize = 4;
const KEYS: usize = 20;

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (burst, rounds) = (arg(1, 1000), arg(2, 5));
    let redis = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut all: Vec<u128> = rt.block_on(async {
        let mut stores = Vec::new();
        for _ in 0..REPLICAS {
            let store = RedisStore::builder(redis.url())
                .timeout(Duration::from_secs(30))
                .connect()
                .await
                .unwrap();
            stores.push(Arc::new(store));
        }
        let keys: Arc<Vec<KeyHash>> = Arc::new(
            (0..KEYS)
                .map(|k| KeyHash::of(&format!("sk_live_k{k}")))
                .collect(),
        );
        let mut all = Vec::new();
        for round in 0..rounds {
            let mut tasks = Vec::new();
            for i in 0..burst {
                let store = Arc::clone(&stores[i % REPLICAS]);
                let keys = Arc::clone(&keys);
                tasks.push(tokio::spawn(async move {
                    let key = &keys[i % KEYS];
                    let start = Instant::now();
                    let window = 1_000 + u64::try_from(round).unwrap();
                    store
                        .admit(Admit::new(key, window, 60, u32::MAX))
                        .await
                        .unwrap();
                    start.elapsed().as_micros()
                }));
            }
            for t in tasks {
                all.push(t.await.unwrap());
            }
        }
        all
    });
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
    println!(
        "{burst} admissions at once x {rounds} rounds, {REPLICAS} stores on one redis-server: \
         p50 {} us, p99 {} us, max {} us",
        at(0.5),
        at(0.99),
        all.last().copied().unwrap_or(0)
    );
    for cut in [100_u128, 250, 500, 1_000, 2_000] {
        let over = all.iter().filter(|&&us| us > cut * 1_000).count();
        println!(
            "  a {cut} ms timeout would have cut off {over} of {}",
            all.len()
        );
    }
}
