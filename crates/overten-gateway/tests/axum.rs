//! A real axum app over loopback behind the `tower` layers: every error the framework or a
//! layer makes is an envelope with `X-Request-Id`; panics and causes never reach a client;
//! the rate limiter counts exactly under concurrency.

#![cfg(feature = "axum")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use overten_errors::{ApiError, Code, ErrorCode, JsonPointer, Tier};
use overten_errors_http::{HandlerError, Json, Path, Query, Received, classify_response};
use overten_gateway::{Account, GatewayLayer, MemoryAccounts, MemoryStore, stack};

const SECRET: &str = "password=hunter2 on db-7.internal";

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code, reason = "read by serde only")]
struct Job {
    name: String,
    sheets: Vec<u32>,
}

#[derive(Debug, serde::Deserialize)]
struct Search {
    limit: u32,
}

async fn gone() -> Result<&'static str, HandlerError> {
    Err(ApiError::from(ErrorCode::Gone).into())
}

async fn io() -> Result<&'static str, HandlerError> {
    Err(std::io::Error::other(SECRET))?;
    Ok("unreachable")
}

async fn job(Json(job): Json<Job>) -> String {
    job.name
}

async fn run(Path(id): Path<u64>) -> String {
    id.to_string()
}

async fn search(Query(q): Query<Search>) -> String {
    q.limit.to_string()
}

#[allow(clippy::unused_async, reason = "an axum handler")]
async fn boom() -> &'static str {
    panic!("{SECRET}");
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(5)).await;
    "late"
}

fn fixed_now() -> SystemTime {
    // 30 s into a minute, so no test crosses a window.
    SystemTime::UNIX_EPOCH + Duration::from_secs(60 * 28_000_000 + 30)
}

fn app(tier: Tier) -> Router {
    Router::new()
        .route(
            "/ok",
            get(|| async { axum::Json(serde_json::json!({"success": true})) }),
        )
        .route("/gone", get(gone))
        .route("/io", get(io))
        .route("/jobs", post(job))
        .route("/runs/{id}", get(run))
        .route("/search", get(search))
        .route("/panic", get(boom))
        .route("/slow", get(slow))
        // A body limit made by another layer: its 413 is plain text until EnvelopeLayer.
        .route(
            "/upload",
            post(|body: String| async move { body.len().to_string() })
                .layer(tower_http::limit::RequestBodyLimitLayer::new(100)),
        )
        .layer(DefaultBodyLimit::max(1024))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(200),
        ))
        .layer(stack(gateway(tier)))
}

/// The gateway, with the test's key on `tier`.
fn gateway(tier: Tier) -> GatewayLayer {
    let key = KEY.1.strip_prefix("Bearer ").unwrap();
    let accounts = MemoryAccounts::new().with_key(key, Account::new("org_test", tier));
    GatewayLayer::new(Arc::new(accounts), Arc::new(MemoryStore::new())).with_clock(fixed_now)
}

async fn serve(tier: Tier) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app(tier)).await });
    addr
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test took longer than 30 s")
}

struct Got {
    status: u16,
    headers: http::HeaderMap,
    body: String,
    received: Received,
}

async fn call(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Got {
    let response = support::send(addr, method, path, headers, Bytes::from_static(body))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&bytes).into_owned();
    let mut rebuilt = http::Response::new(http_body_util::Full::new(bytes));
    *rebuilt.status_mut() = StatusCode::from_u16(status).unwrap();
    *rebuilt.headers_mut() = headers.clone();
    let received = classify_response(rebuilt).await.unwrap();
    Got {
        status,
        headers,
        body,
        received,
    }
}

const KEY: (&str, &str) = ("authorization", "Bearer sk_live_test");

/// A request and the status and code it must be answered with.
type Case<'a> = (
    http::Method,
    &'a str,
    Vec<(&'a str, &'a str)>,
    &'static [u8],
    u16,
    &'a str,
);

#[tokio::test]
#[allow(clippy::too_many_lines, reason = "one case per row")]
async fn every_framework_made_error_is_an_envelope_with_a_request_id() {
    within(async {
        let addr = serve(Tier::Enterprise).await;
        let json = ("content-type", "application/json");
        let cases: Vec<Case<'_>> = vec![
            (
                http::Method::GET,
                "/nowhere",
                vec![KEY],
                b"",
                404,
                "not_found",
            ),
            (
                http::Method::DELETE,
                "/ok",
                vec![KEY],
                b"",
                405,
                "invalid_request",
            ),
            (
                http::Method::GET,
                "/slow",
                vec![KEY],
                b"",
                408,
                "sync_timeout_upgrade_async",
            ),
            (
                http::Method::GET,
                "/panic",
                vec![KEY],
                b"",
                500,
                "internal_error",
            ),
            (http::Method::GET, "/gone", vec![KEY], b"", 410, "gone"),
            (
                http::Method::GET,
                "/io",
                vec![KEY],
                b"",
                500,
                "internal_error",
            ),
            (
                http::Method::POST,
                "/jobs",
                vec![KEY],
                br#"{"name":"a","sheets":[]}"#,
                400,
                "invalid_request",
            ),
            (
                http::Method::POST,
                "/jobs",
                vec![KEY, json],
                b"{not json",
                400,
                "invalid_request",
            ),
            (
                http::Method::POST,
                "/jobs",
                vec![KEY, json],
                br#"{"name":"a","sheets":[1,"x"]}"#,
                422,
                "validation_error",
            ),
            (
                http::Method::POST,
                "/jobs",
                vec![KEY, json],
                &[b' '; 2048],
                413,
                "payload_too_large",
            ),
            (
                http::Method::GET,
                "/runs/abc",
                vec![KEY],
                b"",
                400,
                "invalid_request",
            ),
            (
                http::Method::GET,
                "/search?limit=many",
                vec![KEY],
                b"",
                400,
                "invalid_request",
            ),
            (
                http::Method::GET,
                "/search",
                vec![KEY],
                b"",
                400,
                "invalid_request",
            ),
        ];
        for (method, path, headers, body, status, code) in cases {
            let got = call(addr, method.clone(), path, &headers, body).await;
            assert_eq!(got.status, status, "{method} {path}: {}", got.body);
            assert_eq!(
                got.received.error.code(),
                &Code::parse(code),
                "{method} {path}"
            );
            assert!(
                got.received.diagnostics.body.is_none(),
                "{method} {path}: {}",
                got.body
            );
            assert_eq!(got.headers["content-type"], "application/json", "{path}");
            let id = got.received.error.request_id().unwrap();
            assert!(id.starts_with("req_") && id.len() == 28, "{path}: {id}");
            assert!(got.headers.contains_key("x-ratelimit-remaining"), "{path}");
            // Neither a panic's message nor a cause reaches the client.
            let all_headers = format!("{:?}", got.headers);
            assert!(
                !got.body.contains("hunter2") && !all_headers.contains("hunter2"),
                "{path}"
            );
        }
        // The field's pointer is in the 422's message.
        let got = call(
            addr,
            http::Method::POST,
            "/jobs",
            &[KEY, json],
            br#"{"name":"a","sheets":[1,"x"]}"#,
        )
        .await;
        let at = JsonPointer::root().push("sheets").push("1");
        assert_eq!(got.received.error.field_pointer(), Some(at));
        let got = call(
            addr,
            http::Method::POST,
            "/jobs",
            &[KEY, json],
            br#"{"sheets":[]}"#,
        )
        .await;
        assert_eq!(
            got.received.error.field_pointer(),
            Some(JsonPointer::root().push("name"))
        );
    })
    .await;
}

#[tokio::test]
async fn successes_carry_the_ids_and_rate_limit_headers() {
    within(async {
        let addr = serve(Tier::Pro).await;
        let got = call(addr, http::Method::GET, "/ok", &[KEY], b"").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.headers["x-ratelimit-limit"], "60");
        assert_eq!(got.headers["x-ratelimit-remaining"], "59");
        assert!(
            got.headers["x-request-id"]
                .to_str()
                .unwrap()
                .starts_with("req_")
        );
        // A valid incoming id is reused; an invalid one is replaced.
        let got = call(
            addr,
            http::Method::GET,
            "/ok",
            &[KEY, ("x-request-id", "client-42")],
            b"",
        )
        .await;
        assert_eq!(got.headers["x-request-id"], "client-42");
        let long = "x".repeat(300);
        let headers = [KEY, ("x-request-id", long.as_str())];
        let got = call(addr, http::Method::GET, "/ok", &headers, b"").await;
        let id = got.headers["x-request-id"].to_str().unwrap();
        assert!(id.starts_with("req_") && id.len() == 28, "{id}");
        let got = call(
            addr,
            http::Method::GET,
            "/ok",
            &[KEY, ("x-request-id", "a b")],
            b"",
        )
        .await;
        assert!(
            got.headers["x-request-id"]
                .to_str()
                .unwrap()
                .starts_with("req_")
        );
        let got = call(
            addr,
            http::Method::POST,
            "/jobs",
            &[KEY, ("content-type", "application/json")],
            br#"{"name":"sheet","sheets":[1]}"#,
        )
        .await;
        assert_eq!((got.status, got.body.as_str()), (200, "sheet"));
        let got = call(addr, http::Method::GET, "/runs/7", &[KEY], b"").await;
        assert_eq!((got.status, got.body.as_str()), (200, "7"));
        let got = call(addr, http::Method::GET, "/search?limit=3", &[KEY], b"").await;
        assert_eq!((got.status, got.body.as_str()), (200, "3"));
    })
    .await;
}

#[tokio::test]
async fn a_body_cut_short_is_an_invalid_request_not_too_large() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(async {
        let addr = serve(Tier::Enterprise).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Content-Length promises 100 bytes; 10 come, then the client stops writing.
        s.write_all(
            b"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_live_test\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":\"a",
        )
        .await
        .unwrap();
        s.shutdown().await.unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw);
        // The extractor answers: the body could not be read, which is not "too large".
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(text.contains(r#""error":"invalid_request""#), "{text}");
        assert!(text.contains("could not be read"), "{text}");
    })
    .await;
}
