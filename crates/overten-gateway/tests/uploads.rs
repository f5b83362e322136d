//! Upload limits as a user sets them up (the README's axum stack, a `Bytes` handler, the
//! idempotency layer): the tier's limit is the one that holds, one 413 message for one
//! condition, keyed uploads up to the tier's limit with replay and conflict intact.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines,
    reason = "tests fail loudly, and read as one story"
)]

#[path = "support/gateway_app.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use http::Method;
use overten_errors::Tier;
use overten_gateway::{GatewayLayer, IdempotencyLayer, MemoryIdempotencyStore, MemoryStore, stack};
use support::{Got, accounts, client, fixed_now, serve, within};

const MIB: usize = 1024 * 1024;
/// The free tier's upload limit: 10 MiB (`TierLimits::of`).
const FREE_LIMIT: usize = 10 * MIB;

/// The README's server: a `Bytes` handler behind the idempotency layer and the stack.
fn app(idempotency: Option<IdempotencyLayer>) -> Router {
    // sk_live_k0 is free, sk_live_k1 pro.
    let gateway = GatewayLayer::new(accounts(2), Arc::new(MemoryStore::new()))
        .with_clock(fixed_now)
        .runs_when(|_, _| false);
    let router = Router::new()
        .route(
            "/v1/files",
            post(|body: Bytes| async move { format!("{{\"read\":{}}}", body.len()) }),
        )
        .route(
            "/v1/json",
            post(
                |overten_errors_http::Json(v): overten_errors_http::Json<serde_json::Value>| async move {
                    format!("{{\"read\":{}}}", v.as_str().map_or(0, str::len))
                },
            ),
        );
    let router = match idempotency {
        Some(layer) => router.layer(layer),
        None => router,
    };
    router.layer(stack(gateway))
}

async fn upload(addr: SocketAddr, key: &str, body: Vec<u8>, idem: Option<&str>) -> Got {
    let mut headers = vec![("authorization", format!("Bearer {key}"))];
    if let Some(k) = idem {
        headers.push(("idempotency-key", k.to_owned()));
    }
    client()
        .send_with(addr, Method::POST, "/v1/files", &headers, body)
        .await
}

/// `len` bytes sent chunked (no `Content-Length`): the status and the body of the answer.
async fn streamed(addr: SocketAddr, key: &str, len: usize, idem: Option<&str>) -> (u16, String) {
    let idem = idem.map_or(String::new(), |k| format!("Idempotency-Key: {k}\r\n"));
    send_chunked(addr, "/v1/files", key, &idem, len).await
}

/// `len` bytes of a JSON string sent chunked to `path`.
async fn streamed_to(addr: SocketAddr, path: &str, key: &str, len: usize) -> (u16, String) {
    send_chunked(addr, path, key, "Content-Type: application/json\r\n", len).await
}

async fn send_chunked(
    addr: SocketAddr,
    path: &str,
    key: &str,
    extra: &str,
    len: usize,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n{extra}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        let mut frame = format!("{n:x}\r\n").into_bytes();
        frame.extend_from_slice(&chunk[..n]);
        frame.extend_from_slice(b"\r\n");
        if s.write_all(&frame).await.is_err() {
            break;
        }
        sent += n;
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.rsplit("\r\n\r\n").next().unwrap_or("").to_owned();
    (status, body)
}

fn message(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["message"].as_str().unwrap_or("").to_owned()
}

/// The free tier's documented 10 MiB holds in an axum app: a 3 MiB body is read whole,
/// announced or streamed (on the main of issue 25, axum's own 2 MB limit answered 413).
#[tokio::test]
async fn the_tiers_upload_limit_is_the_one_that_holds() {
    within(60, async {
        let addr = serve(app(None)).await;
        let got = upload(addr, "sk_live_k0", vec![b'a'; 3 * MIB], None).await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (200, r#"{"read":3145728}"#)
        );
        let (status, body) = streamed(addr, "sk_live_k0", 3 * MIB, None).await;
        assert_eq!((status, body.as_str()), (200, r#"{"read":3145728}"#));
        // Exactly the limit passes; one byte more does not.
        let got = upload(addr, "sk_live_k0", vec![b'a'; FREE_LIMIT], None).await;
        assert_eq!(got.status, 200, "{}", got.body);
        let got = upload(addr, "sk_live_k0", vec![b'a'; FREE_LIMIT + 1], None).await;
        assert_eq!(got.status, 413);
        // The pro tier's 50 MiB.
        let got = upload(addr, "sk_live_k1", vec![b'a'; 12 * MIB], None).await;
        assert_eq!(got.status, 200, "{}", got.body);
    })
    .await;
}

/// One condition, one message: an announced body over the limit and one that streams past
/// it get the same 413 envelope, with or without an idempotency key.
#[tokio::test]
async fn one_413_message_for_one_condition() {
    within(60, async {
        let want = "The request body exceeds the free tier's upload limit of 10485760 bytes";
        for idempotency in [
            None,
            Some(IdempotencyLayer::new(Arc::new(
                MemoryIdempotencyStore::new(),
            ))),
        ] {
            let keyed = idempotency.is_some();
            let addr = serve(app(idempotency)).await;
            let idem = keyed.then_some("k-413");
            let got = upload(addr, "sk_live_k0", vec![b'a'; FREE_LIMIT + 1], idem).await;
            assert_eq!(got.status, 413, "keyed {keyed}");
            assert_eq!(got.code(), "payload_too_large");
            assert_eq!(message(&got.body), want, "announced, keyed {keyed}");
            let (status, body) = streamed(addr, "sk_live_k0", FREE_LIMIT + MIB, idem).await;
            assert_eq!(status, 413, "keyed {keyed}: {body}");
            assert_eq!(message(&body), want, "streamed, keyed {keyed}");
        }
    })
    .await;
}

/// This crate's `Json` extractor reads up to the tier's limit too, and past it answers the
/// same 413 as the gateway.
#[tokio::test]
async fn the_json_extractor_reads_up_to_the_tier_limit_and_says_the_same_413() {
    within(60, async {
        let addr = serve(app(None)).await;
        let json = |n: usize| format!("\"{}\"", "a".repeat(n)).into_bytes();
        let headers = [
            ("authorization", "Bearer sk_live_k0".to_owned()),
            ("content-type", "application/json".to_owned()),
        ];
        let got = client()
            .send_with(addr, Method::POST, "/v1/json", &headers, json(3 * MIB))
            .await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (200, r#"{"read":3145728}"#)
        );
        let got = client()
            .send_with(addr, Method::POST, "/v1/json", &headers, json(FREE_LIMIT))
            .await;
        assert_eq!(got.status, 413);
        assert_eq!(
            message(&got.body),
            "The request body exceeds the free tier's upload limit of 10485760 bytes"
        );
        // Streamed past the limit (no Content-Length for the gateway to read first): the
        // extractor's own 413, with the tier's message.
        let (status, body) = streamed_to(addr, "/v1/json", "sk_live_k0", FREE_LIMIT + MIB).await;
        assert_eq!(status, 413, "{body}");
        assert_eq!(
            message(&body),
            "The request body exceeds the free tier's upload limit of 10485760 bytes"
        );
    })
    .await;
}

/// A keyed upload within its tier's limit (3 MiB, on main capped at 1 MiB for every tier)
/// runs once, is replayed to the same request, and is 409 to another body with that key.
#[tokio::test]
async fn a_keyed_upload_up_to_the_tier_limit_keeps_replay_and_conflict() {
    within(60, async {
        let layer = IdempotencyLayer::new(Arc::new(MemoryIdempotencyStore::new()));
        let addr = serve(app(Some(layer))).await;
        let body = vec![b'a'; 3 * MIB];
        let first = upload(addr, "sk_live_k0", body.clone(), Some("up-1")).await;
        assert_eq!(
            (first.status, first.body.as_str()),
            (200, r#"{"read":3145728}"#)
        );
        assert!(first.headers.get("idempotent-replayed").is_none());
        let again = upload(addr, "sk_live_k0", body.clone(), Some("up-1")).await;
        assert_eq!(
            (again.status, again.body.as_str()),
            (200, r#"{"read":3145728}"#)
        );
        assert_eq!(again.headers["idempotent-replayed"], "true");
        // Streamed, the same bytes are the same request.
        let (status, replayed) = streamed(addr, "sk_live_k0", 3 * MIB, Some("up-1")).await;
        assert_eq!((status, replayed.as_str()), (200, r#"{"read":3145728}"#));
        let mut other = body;
        other[2 * MIB] = b'b';
        let conflict = upload(addr, "sk_live_k0", other, Some("up-1")).await;
        assert_eq!(
            (conflict.status, conflict.code().as_str()),
            (409, "conflict")
        );
        // The pro tier's larger limit, keyed.
        let pro = upload(addr, "sk_live_k1", vec![b'a'; 12 * MIB], Some("up-2")).await;
        assert_eq!(pro.status, 200, "{}", pro.body);
    })
    .await;
}

/// Memory held by keyed bodies is bounded across requests: one that would take the total
/// past `max_buffered_bytes` is 503 with `Retry-After`, and the bytes go back after each
/// request, so the next one passes.
#[tokio::test]
async fn keyed_bodies_held_at_once_are_bounded() {
    within(60, async {
        let layer = IdempotencyLayer::new(Arc::new(MemoryIdempotencyStore::new()))
            .max_buffered_bytes(4 * MIB);
        let addr = serve(app(Some(layer))).await;
        let got = upload(addr, "sk_live_k0", vec![b'a'; 5 * MIB], Some("big")).await;
        assert_eq!(
            (got.status, got.code().as_str()),
            (503, "service_unavailable")
        );
        assert_eq!(got.header("retry-after"), Some(30));
        for i in 0..3 {
            let got = upload(
                addr,
                "sk_live_k0",
                vec![b'a'; 3 * MIB],
                Some(&format!("ok-{i}")),
            )
            .await;
            assert_eq!(
                got.status, 200,
                "{i}: the bytes of the last one were given back"
            );
        }
    })
    .await;
}

#[test]
fn the_free_tier_limit_is_the_documented_one() {
    let limits = overten_gateway::TierLimits::of(Tier::Free);
    assert_eq!(limits.upload_bytes, FREE_LIMIT as u64);
}
