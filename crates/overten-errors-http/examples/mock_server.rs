//! A mock Overten API for SDK tests in any language.
//!
//! ```text
//! cargo run -p overten-errors-http --example mock_server -- --addr 127.0.0.1:8080 --tier free
//! curl -i -H 'Authorization: Bearer sk_live_demo' http://127.0.0.1:8080/errors/rate_limit_exceeded
//! ```
//!
//! Routes and gateway behaviour: see `overten_errors_http::mock`. Binds to loopback only.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http_body_util::{BodyExt, Full};
use overten_errors::Tier;
use overten_errors_http::mock::Gateway;

fn usage() -> ! {
    eprintln!("usage: mock_server [--addr 127.0.0.1:PORT] [--tier free|pro|enterprise]");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080));
    let mut tier = Tier::Free;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--addr" => addr = value.parse().unwrap_or_else(|_| usage()),
            "--tier" => tier = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if !addr.ip().is_loopback() {
        eprintln!("mock_server binds to loopback addresses only");
        std::process::exit(2);
    }
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let gateway = Arc::new(Mutex::new(Gateway::new(tier, seed)));
    let bound = support::serve(addr, move |req| {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let response = match gateway.lock() {
            Ok(mut gw) => gw.handle(&req, now),
            Err(poisoned) => poisoned.into_inner().handle(&req, now),
        };
        eprintln!(
            "{} {} -> {} {}",
            req.method(),
            req.uri(),
            response.status().as_u16(),
            response
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
        );
        response.map(|b| Full::new(b.into()).boxed_unsync())
    })
    .await?;
    println!(
        "mock Overten API on http://{bound} (tier {tier}: {} requests/minute)",
        tier.requests_per_minute()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
