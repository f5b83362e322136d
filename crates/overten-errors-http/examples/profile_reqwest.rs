//! Sends 2,000 GETs answered 200 over loopback, for instruction counts under callgrind:
//! bare reqwest, reqwest-middleware with a pass-through middleware, and `RetryMiddleware`.
//! The difference between two runs is what one layer adds per request.
//!
//! ```text
//! cargo build --release -p overten-errors-http --features reqwest,tokio --example profile_reqwest
//! for p in bare passthrough ours; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$p target/release/examples/profile_reqwest $p
//! done
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a profiling program: a failed request must abort it"
)]

#[path = "../benches/passthrough/mod.rs"]
mod passthrough;
#[path = "../tests/support/mod.rs"]
mod support;
use passthrough::PassThrough;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use overten_errors::{RateLimit, RetryPolicy};
use overten_errors_http::{Retrier, RetryMiddleware, set_rate_limit_headers, set_request_id};

const REQUESTS: usize = 2_000;

fn no_sleep(_: Duration) -> std::future::Ready<()> {
    std::future::ready(())
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(async {
        support::serve("127.0.0.1:0".parse().unwrap(), |_| {
            // The page: "Every response includes rate-limit headers"; and an id.
            let mut ok = http::Response::new(
                Full::new(Bytes::from_static(br#"{"success":true}"#)).boxed_unsync(),
            );
            let rate_limit = RateLimit {
                limit: 60,
                remaining: 42,
                reset: 1_713_312_345,
            };
            set_rate_limit_headers(ok.headers_mut(), &rate_limit);
            set_request_id(ok.headers_mut(), "req_8f2c61d0a9b34e7f5c1d2e3f");
            ok
        })
        .await
        .unwrap()
    });
    let url = format!("http://{addr}/ok");
    let builder = || reqwest_middleware::ClientBuilder::new(reqwest::Client::new());
    let client = match which.as_str() {
        "bare" => None,
        "passthrough" => Some(builder().with(PassThrough).build()),
        "ours" => Some(
            builder()
                .with(RetryMiddleware::new(Retrier::new(
                    RetryPolicy::default(),
                    no_sleep,
                )))
                .build(),
        ),
        _ => {
            eprintln!("usage: profile_reqwest bare|passthrough|ours");
            std::process::exit(2);
        }
    };
    let bare = reqwest::Client::new();
    let ok = rt.block_on(async {
        let mut ok = 0;
        for _ in 0..REQUESTS {
            let response = match &client {
                Some(c) => c.get(&url).send().await.unwrap(),
                None => bare.get(&url).send().await.unwrap(),
            };
            ok += usize::from(response.status() == 200);
            response.bytes().await.unwrap();
        }
        ok
    });
    println!("{which}: {ok} of {REQUESTS} answered 200");
}
