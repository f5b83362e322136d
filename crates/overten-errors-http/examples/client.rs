//! A client of the mock server built on `RetryMiddleware`: the middleware follows every
//! advised action (sleeps and retries, or stops), the example prints each decision with its
//! request id, and does the one thing a middleware cannot: resubmitting a 408's work async.
//!
//! ```text
//! overten-errors mock --addr 127.0.0.1:8080 --tier pro &
//! cargo run -p overten-errors-http --features reqwest,tokio --example client -- --addr 127.0.0.1:8080
//! ```
//!
//! Waits longer than `--max-sleep` seconds (default 5) are capped by the policy's
//! `max_wait`, so that the example ends quickly; the decision printed is the real one.

use std::net::SocketAddr;
use std::time::Duration;

use overten_errors::{Advice, ApiError, ErrorCode, RetryPolicy, TaskFailure};
use overten_errors_http::{Retrier, RetryMiddleware, RetryOutcome, TokioSleep};

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
    let max_sleep = max_sleep.max(Duration::from_secs(1));
    let policy = RetryPolicy::builder()
        .max_delay(max_sleep.min(Duration::from_secs(32)))
        .max_wait(max_sleep)
        .build()?;
    let middleware = RetryMiddleware::new(Retrier::new(policy, TokioSleep)).on_decision(|event| {
        let err = &event.received.error;
        println!(
            "  {} {} attempt {}: {} {} [request id {}] -> {} (step {})",
            event.method,
            event.url,
            event.attempt,
            err.status(),
            err.code(),
            err.request_id().unwrap_or("-"),
            event.decision.advice,
            event.decision.step.as_str(),
        );
    });
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build();

    for code in codes {
        let url = format!("http://{addr}/errors/{code}");
        println!("GET {url}");
        let response = client.get(&url).header("authorization", KEY).send().await?;
        let outcome = response.extensions().get::<RetryOutcome>().cloned();
        match outcome {
            None => println!("  {}", response.status()),
            Some(outcome) if outcome.advice == Advice::ResubmitAsync => {
                resubmit_async(&client, addr, &url).await?;
            }
            Some(outcome) => println!("  gave up after {} attempts", outcome.attempts),
        }
    }
    Ok(())
}

/// Resubmits with `{"async": true}` and polls the task once.
async fn resubmit_async(
    client: &reqwest_middleware::ClientWithMiddleware,
    addr: SocketAddr,
    url: &str,
) -> Result<(), BoxError> {
    let task: serde_json::Value = client
        .post(url)
        .header("authorization", KEY)
        .body(r#"{"async": true}"#)
        .send()
        .await?
        .json_value()
        .await?;
    let Some(task_id) = task["task_id"].as_str() else {
        println!("  resubmitted async, but no task id came back");
        return Ok(());
    };
    println!("  resubmitted async: task {task_id}; polling /tasks/{task_id}");
    let body = client
        .get(format!("http://{addr}/tasks/{task_id}"))
        .header("authorization", KEY)
        .send()
        .await?
        .bytes()
        .await?;
    match serde_json::from_slice::<TaskFailure>(&body) {
        Ok(failure) => println!("  task failed: {}", ApiError::from(failure)),
        Err(_) => println!("  task status: {}", String::from_utf8_lossy(&body)),
    }
    Ok(())
}

/// JSON of a response body, without reqwest's `json` feature.
trait JsonValue {
    async fn json_value(self) -> Result<serde_json::Value, BoxError>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Result<serde_json::Value, BoxError> {
        Ok(serde_json::from_slice(&self.bytes().await?)?)
    }
}
