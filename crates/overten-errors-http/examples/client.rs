//! A client that calls the mock server and follows each advised action.
//!
//! ```text
//! cargo run -p overten-errors-http --example mock_server -- --addr 127.0.0.1:8080 --tier pro &
//! cargo run -p overten-errors-http --example client -- --addr 127.0.0.1:8080
//! ```
//!
//! For each error code it requests `/errors/{code}`, classifies the response, asks the
//! core's retry policy what to do, and does it: sleeps and retries, resubmits async and
//! polls the task, or stops. Every decision is printed with its request id. Waits longer
//! than `--max-sleep` seconds (default 5) are reported and not slept.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http_body_util::BodyExt;
use overten_errors::{
    Advice, ApiError, ErrorCode, RetryBudget, RetryPolicy, SplitMix64, TaskFailure,
};
use overten_errors_http::classify_response;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const KEY: &str = "Bearer sk_live_example";

fn usage() -> ! {
    eprintln!("usage: client [--addr 127.0.0.1:PORT] [--max-sleep SECONDS] [CODE ...]");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let mut addr = SocketAddr::from(([127, 0, 0, 1], 8080));
    let mut max_sleep = Duration::from_secs(5);
    let mut codes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                addr = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage());
            }
            "--max-sleep" => {
                let secs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage());
                max_sleep = Duration::from_secs(secs);
            }
            code => codes.push(code.parse::<ErrorCode>().unwrap_or_else(|_| usage())),
        }
    }
    if !addr.ip().is_loopback() {
        eprintln!("this example talks to a loopback mock server only");
        std::process::exit(2);
    }
    if codes.is_empty() {
        codes = ErrorCode::ALL.to_vec();
    }
    let policy = RetryPolicy::default();
    let budget = RetryBudget::default();
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut rng = SplitMix64::new(seed);

    for code in codes {
        let path = format!("/errors/{code}");
        for attempt in 1u32.. {
            let response = support::get(addr, &path, &[("authorization", KEY)]).await?;
            let received = classify_response(response).await?;
            let err = &received.error;
            let advice =
                budget.admit(received.advise(&policy, attempt, SystemTime::now(), &mut rng));
            println!(
                "{path} attempt {attempt}: {} {} [request id {}] -> {advice}",
                err.status(),
                err.code(),
                err.request_id().unwrap_or("-"),
            );
            match advice {
                Advice::Retry { after, .. } if after <= max_sleep => {
                    tokio::time::sleep(after).await;
                }
                Advice::Retry { after, .. } => {
                    println!(
                        "  giving up: would wait {:.1} s, over --max-sleep",
                        after.as_secs_f64()
                    );
                    break;
                }
                Advice::ResubmitAsync => {
                    resubmit_async(addr, &path).await?;
                    break;
                }
                _ => break,
            }
        }
    }
    Ok(())
}

/// The whole body of `GET path`, with the example's key.
async fn get_body(addr: SocketAddr, path: &str) -> Result<bytes::Bytes, BoxError> {
    let response = support::get(addr, path, &[("authorization", KEY)]).await?;
    Ok(response.into_body().collect().await?.to_bytes())
}

/// Resubmits with `async=true` and polls the task once.
async fn resubmit_async(addr: SocketAddr, path: &str) -> Result<(), BoxError> {
    let body = get_body(addr, &format!("{path}?async=true")).await?;
    let task: serde_json::Value = serde_json::from_slice(&body)?;
    let Some(task_id) = task["task_id"].as_str() else {
        println!("  resubmitted async, but no task id came back");
        return Ok(());
    };
    println!("  resubmitted async: task {task_id}; polling /tasks/{task_id}");
    let body = get_body(addr, &format!("/tasks/{task_id}")).await?;
    match serde_json::from_slice::<TaskFailure>(&body) {
        Ok(failure) => println!("  task failed: {}", ApiError::from(failure)),
        Err(_) => println!("  task status: {}", String::from_utf8_lossy(&body)),
    }
    Ok(())
}
