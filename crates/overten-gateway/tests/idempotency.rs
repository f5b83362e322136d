//! Idempotency keys and the sync ceiling behind the gateway, over loopback: one run for a
//! hundred concurrent retries, 409 for another request, orgs apart, keys given back after a
//! 5xx, a cancellation or the ceiling, bounded bodies, and the Rust client end to end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines,
    reason = "tests fail loudly, and read as one story"
)]

#[cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
mod redis_server;
#[path = "support/gateway_app.rs"]
mod support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::routing::post;
use bytes::Bytes;
use http_body::Frame;
use overten_errors::Tier;
use overten_gateway::{
    Account, GatewayLayer, IdempotencyLayer, MemoryAccounts, MemoryIdempotencyStore, MemoryStore,
    Store, SyncCeilingLayer, TierLimits, stack,
};
use support::{Got, fixed_now, serve, within};

#[derive(Default)]
struct Work {
    runs: AtomicUsize,
    finished: AtomicUsize,
}

#[derive(serde::Deserialize)]
struct Params {
    ms: Option<u64>,
    bytes: Option<usize>,
    status: Option<u16>,
}

fn accounts() -> Arc<MemoryAccounts> {
    let accounts = MemoryAccounts::new();
    for (key, org) in [
        ("sk_live_a", "org_a"),
        ("sk_live_a2", "org_a"),
        ("sk_live_b", "org_b"),
    ] {
        accounts.insert(key, Account::new(org, Tier::Enterprise));
    }
    Arc::new(accounts)
}

/// A body that never ends.
struct Endless;

static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
    }
}

/// `POST /work?ms=&status=&bytes=`: counts a run, takes `ms`, answers `{"run":n,...}` (or
/// `bytes` bytes) with `status`; `POST /endless`: a body that never ends.
fn app(
    work: &Arc<Work>,
    idem: IdempotencyLayer,
    ceiling: Duration,
    store: Arc<dyn Store>,
) -> Router {
    let w = Arc::clone(work);
    let roomy = TierLimits::of(Tier::Enterprise)
        .requests_per_minute(1_000_000)
        .concurrent_runs(1_000);
    let gateway = GatewayLayer::new(accounts(), store)
        .with_limits(Tier::Enterprise, roomy)
        .with_clock(fixed_now);
    Router::new()
        .route(
            "/work",
            post(move |Query(p): Query<Params>, body: String| {
                let w = Arc::clone(&w);
                async move {
                    let n = w.runs.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(p.ms.unwrap_or(0))).await;
                    w.finished.fetch_add(1, Ordering::SeqCst);
                    let status = http::StatusCode::from_u16(p.status.unwrap_or(201)).unwrap();
                    let body = match p.bytes {
                        Some(n) => "x".repeat(n),
                        None => format!(r#"{{"run":{n},"body_bytes":{}}}"#, body.len()),
                    };
                    (
                        status,
                        [(http::header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                }
            }),
        )
        .route(
            "/panic",
            post({
                let w = Arc::clone(work);
                move || {
                    let w = Arc::clone(&w);
                    async move {
                        w.runs.fetch_add(1, Ordering::SeqCst);
                        std::panic::panic_any("handler failed".to_owned());
                        #[allow(unreachable_code, reason = "the handler's return type")]
                        "unreachable"
                    }
                }
            }),
        )
        .route(
            "/endless",
            post(|| async {
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    axum::body::Body::new(Endless),
                )
            }),
        )
        .layer(SyncCeilingLayer::new(ceiling, |d| tokio::time::sleep(d)))
        .layer(idem)
        .layer(stack(gateway))
}

async fn start(
    idem: IdempotencyLayer,
    ceiling: Duration,
) -> (SocketAddr, Arc<Work>, Arc<MemoryStore>) {
    let work = Arc::new(Work::default());
    let store = Arc::new(MemoryStore::new());
    let addr = serve(app(&work, idem, ceiling, store.clone())).await;
    (addr, work, store)
}

async fn post_with(addr: SocketAddr, key: &str, idem: Option<&str>, path: &str, body: &str) -> Got {
    let mut headers = vec![("authorization", format!("Bearer {key}"))];
    if let Some(k) = idem {
        headers.push(("idempotency-key", k.to_owned()));
    }
    support::client()
        .send_with(
            addr,
            http::Method::POST,
            path,
            &headers,
            body.as_bytes().to_vec(),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_retries_run_the_handler_once() {
    within(60, async {
        let store = Arc::new(MemoryIdempotencyStore::new());
        let (addr, work, _) = start(IdempotencyLayer::new(store), Duration::from_secs(30)).await;
        let mut tasks = Vec::new();
        for _ in 0..100 {
            tasks.push(tokio::spawn(async move {
                post_with(
                    addr,
                    "sk_live_a",
                    Some("key-1"),
                    "/work?ms=200",
                    r#"{"sheet":"q3"}"#,
                )
                .await
            }));
        }
        let (mut first, mut replays, mut in_progress) = (0, 0, 0);
        for t in tasks {
            let got = t.await.unwrap();
            match (got.status, got.headers.contains_key("idempotent-replayed")) {
                (201, false) => first += 1,
                (201, true) => {
                    replays += 1;
                    assert_eq!(got.body, r#"{"run":1,"body_bytes":14}"#);
                }
                (409, _) => {
                    assert_eq!(got.code(), "conflict");
                    assert_eq!(got.header("retry-after"), Some(1));
                    assert!(got.body.contains("still in progress"), "{}", got.body);
                    in_progress += 1;
                }
                other => panic!("{other:?}: {}", got.body),
            }
        }
        assert_eq!(first, 1, "one request ran");
        assert_eq!(first + replays + in_progress, 100);
        assert_eq!(work.runs.load(Ordering::SeqCst), 1, "the handler ran once");
        // After it finished: the replay, with fresh per-response headers.
        let got = post_with(
            addr,
            "sk_live_a",
            Some("key-1"),
            "/work?ms=200",
            r#"{"sheet":"q3"}"#,
        )
        .await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (201, r#"{"run":1,"body_bytes":14}"#)
        );
        assert_eq!(got.headers["idempotent-replayed"], "true");
        assert_eq!(got.headers["content-type"], "application/json");
        // Its own request id, not the first response's.
        let again = post_with(
            addr,
            "sk_live_a",
            Some("key-1"),
            "/work?ms=200",
            r#"{"sheet":"q3"}"#,
        )
        .await;
        assert_ne!(got.headers["x-request-id"], again.headers["x-request-id"]);
        assert!(got.headers.contains_key("x-ratelimit-remaining"));
        // The same key with another body, or another path: 409.
        let other = post_with(
            addr,
            "sk_live_a",
            Some("key-1"),
            "/work?ms=200",
            r#"{"sheet":"q4"}"#,
        )
        .await;
        assert_eq!((other.status, other.code().as_str()), (409, "conflict"));
        assert!(other.body.contains("different request"), "{}", other.body);
        let other = post_with(
            addr,
            "sk_live_a",
            Some("key-1"),
            "/work",
            r#"{"sheet":"q3"}"#,
        )
        .await;
        assert_eq!(other.status, 409);
        // Another key of the same org shares its records; another org does not.
        let same_org = post_with(
            addr,
            "sk_live_a2",
            Some("key-1"),
            "/work?ms=200",
            r#"{"sheet":"q3"}"#,
        )
        .await;
        assert_eq!(
            same_org
                .headers
                .get("idempotent-replayed")
                .map(http::HeaderValue::as_bytes),
            Some(&b"true"[..])
        );
        let other_org = post_with(
            addr,
            "sk_live_b",
            Some("key-1"),
            "/work?ms=200",
            r#"{"sheet":"q3"}"#,
        )
        .await;
        assert_eq!(
            (other_org.status, other_org.body.as_str()),
            (201, r#"{"run":2,"body_bytes":14}"#)
        );
        assert!(!other_org.headers.contains_key("idempotent-replayed"));
        assert_eq!(work.runs.load(Ordering::SeqCst), 2);
        // A request without a key runs every time.
        post_with(addr, "sk_live_a", None, "/work", "").await;
        post_with(addr, "sk_live_a", None, "/work", "").await;
        assert_eq!(work.runs.load(Ordering::SeqCst), 4);
    })
    .await;
}

#[tokio::test]
async fn failures_cancellations_and_the_ceiling_give_the_key_back() {
    use tokio::io::AsyncWriteExt;
    within(60, async {
        let store = Arc::new(MemoryIdempotencyStore::new());
        let (addr, work, permits) = start(IdempotencyLayer::new(store), Duration::from_millis(300)).await;
        // A 5xx: the retry runs; a 4xx is kept and replayed like a success.
        assert_eq!(post_with(addr, "sk_live_a", Some("k5"), "/work?status=503", "").await.status, 503);
        let retry = post_with(addr, "sk_live_a", Some("k5"), "/work?status=503", "").await;
        assert!(!retry.headers.contains_key("idempotent-replayed"));
        assert_eq!(work.runs.load(Ordering::SeqCst), 2);
        assert_eq!(post_with(addr, "sk_live_a", Some("k4"), "/work?status=422", "").await.status, 422);
        let again = post_with(addr, "sk_live_a", Some("k4"), "/work?status=422", "").await;
        assert_eq!((again.status, again.headers.contains_key("idempotent-replayed")), (422, true));
        assert_eq!(work.runs.load(Ordering::SeqCst), 3);
        // A panic: a 500, and the key comes back.
        let runs = work.runs.load(Ordering::SeqCst);
        assert_eq!(post_with(addr, "sk_live_a", Some("kp"), "/panic", "").await.status, 500);
        assert_eq!(post_with(addr, "sk_live_a", Some("kp"), "/panic", "").await.status, 500);
        assert_eq!(work.runs.load(Ordering::SeqCst), runs + 2, "the retry ran");
        // The client goes away mid-handler: the key comes back, the retry runs and succeeds.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /work?ms=250 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_live_a\r\nIdempotency-Key: kc\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        support::eventually("the first attempt started", 20, || {
            let n = work.runs.load(Ordering::SeqCst);
            async move { n == 6 }
        })
        .await;
        drop(s);
        // The server sees the client go only when it next polls the connection: retried
        // until the key is given back (each 409 runs nothing).
        let mut retry = post_with(addr, "sk_live_a", Some("kc"), "/work?ms=250", "").await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while retry.status == 409 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            retry = post_with(addr, "sk_live_a", Some("kc"), "/work?ms=250", "").await;
        }
        assert_eq!((retry.status, retry.headers.contains_key("idempotent-replayed")), (201, false));
        assert_eq!(work.runs.load(Ordering::SeqCst), 7);
        assert_eq!(work.finished.load(Ordering::SeqCst), 4, "the dropped handler never finished");
        // The ceiling: 408 with the page's code, the handler dropped, the permit and the key
        // given back.
        let before = work.finished.load(Ordering::SeqCst);
        let late = post_with(addr, "sk_live_a", Some("kt"), "/work?ms=5000", "").await;
        assert_eq!((late.status, late.code().as_str()), (408, "sync_timeout_upgrade_async"));
        assert!(late.body.contains("async: true"), "{}", late.body);
        support::eventually("the permit came back", 20, || {
            let held = permits.runs(&overten_gateway::KeyHash::of("sk_live_a"));
            async move { held == 0 }
        })
        .await;
        let runs = work.runs.load(Ordering::SeqCst);
        let again = post_with(addr, "sk_live_a", Some("kt"), "/work?ms=5000", "").await;
        assert_eq!(again.status, 408, "given back, not kept: the same request runs again");
        assert_eq!(work.runs.load(Ordering::SeqCst), runs + 1);
        assert_eq!(work.finished.load(Ordering::SeqCst), before, "cut off, never finished");
    })
    .await;
}

#[tokio::test]
async fn hostile_keys_and_bodies_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(60, async {
        let store = Arc::new(MemoryIdempotencyStore::new());
        let idem = IdempotencyLayer::new(store.clone()).max_response_bytes(1024 * 1024);
        let (addr, work, _) = start(idem, Duration::from_secs(30)).await;
        // Keys of 10 KB, non-ASCII, empty, or two of them: 400, and nothing ran.
        for key in ["k".repeat(10 * 1024), "clé".to_owned(), String::new()] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut req = b"POST /work HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_live_a\r\nConnection: close\r\nContent-Length: 0\r\nIdempotency-Key: ".to_vec();
            req.extend_from_slice(key.as_bytes());
            req.extend_from_slice(b"\r\n\r\n");
            s.write_all(&req).await.unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            let out = String::from_utf8_lossy(&out);
            assert!(out.starts_with("HTTP/1.1 400"), "{key:.20}: {out}");
            assert!(out.contains("invalid_request"), "{out}");
        }
        // A body cut short (promised 100 bytes, 10 sent): 400, not 413.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /work HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_live_a\r\nIdempotency-Key: cut\r\nContent-Length: 100\r\n\r\n{\"sheet\":")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(out.contains("could not be read"), "{out}");
        // A bare CR inside the key: refused before any layer, and nothing ran.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /work HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_live_a\r\nIdempotency-Key: a\rb\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");
        let two = support::client()
            .send_with(
                addr,
                http::Method::POST,
                "/work",
                &[
                    ("authorization", "Bearer sk_live_a".to_owned()),
                    ("idempotency-key", "a".to_owned()),
                    ("idempotency-key", "b".to_owned()),
                ],
                Vec::new(),
            )
            .await;
        assert_eq!(two.status, 400);
        assert_eq!(work.runs.load(Ordering::SeqCst), 0);
        // A 50 MB response: sent whole, never kept; the key is used up (409 on replay).
        let big = post_with(addr, "sk_live_a", Some("big"), "/work?bytes=50000000", "").await;
        assert_eq!((big.status, big.body.len()), (201, 50_000_000));
        assert!(store.bytes() < 2 * 1024 * 1024, "kept {} bytes", store.bytes());
        let replay = post_with(addr, "sk_live_a", Some("big"), "/work?bytes=50000000", "").await;
        assert_eq!(replay.status, 409);
        assert!(replay.body.contains("too large"), "{}", replay.body);
        assert_eq!(work.runs.load(Ordering::SeqCst), 1);
        // A response of exactly the bound is kept and replayed.
        let exact = post_with(addr, "sk_live_a", Some("exact"), "/work?bytes=1048576", "").await;
        let replay = post_with(addr, "sk_live_a", Some("exact"), "/work?bytes=1048576", "").await;
        assert_eq!((exact.status, replay.status), (201, 201));
        assert_eq!(replay.headers["idempotent-replayed"], "true");
        assert_eq!(replay.body.len(), 1_048_576);
        // A response that never ends: the head comes, memory stays bounded.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /endless HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_live_a\r\nIdempotency-Key: endless\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut got = vec![0; 4 * 1024 * 1024];
        let mut read = 0;
        while read < got.len() {
            let n = s.read(&mut got[read..]).await.unwrap();
            assert!(n > 0);
            read += n;
        }
        assert!(String::from_utf8_lossy(&got[..64]).starts_with("HTTP/1.1 200"));
        drop(s);
        assert!(store.bytes() < 2 * 1024 * 1024);
        // Behind the gateway a keyed body is bounded by the tier's upload limit, not by
        // `max_request_bytes` (the bound without a gateway): tests/uploads.rs has the 413s.
        let idem = IdempotencyLayer::new(Arc::new(MemoryIdempotencyStore::new())).max_request_bytes(1024);
        let (addr, _, _) = start(idem, Duration::from_secs(30)).await;
        let body = "x".repeat(2048);
        let got = post_with(addr, "sk_live_a", Some("k"), "/work", &body).await;
        assert_eq!(got.status, 201, "{}", got.body);
    })
    .await;
}

#[tokio::test]
async fn a_million_distinct_keys_stay_within_the_stores_bounds() {
    use overten_gateway::{
        Claim, ClaimToken, Fingerprint, IdempotencyStore, RecordKey, StoredResponse,
    };
    within(300, async {
        let store = MemoryIdempotencyStore::new();
        let fp = Fingerprint::new(&http::Method::POST, "/work", b"{}");
        // 1 KiB a response: the byte bound (64 MiB) bites before the record bound.
        let response = StoredResponse {
            status: http::StatusCode::CREATED,
            headers: Vec::new(),
            body: Bytes::from(vec![b'x'; 1024]),
        };
        let day = Duration::from_secs(86_400);
        for i in 0..1_000_000u32 {
            let key = RecordKey::new("org_a", &format!("k{i}"));
            let token = ClaimToken::new();
            let claim = store.claim(&key, &fp, token, day).await.unwrap();
            assert!(matches!(claim, Claim::Claimed), "{i}");
            store
                .complete(&key, &fp, token, Some(&response), day)
                .await
                .unwrap();
            if i % 100_000 == 0 {
                assert!(store.len() <= MemoryIdempotencyStore::MAX_RECORDS);
                assert!(store.bytes() <= MemoryIdempotencyStore::MAX_BYTES);
            }
        }
        assert!(
            store.len() <= MemoryIdempotencyStore::MAX_RECORDS,
            "{}",
            store.len()
        );
        assert!(
            store.bytes() <= MemoryIdempotencyStore::MAX_BYTES,
            "{}",
            store.bytes()
        );
        // The newest are kept, the oldest made room.
        let newest = RecordKey::new("org_a", "k999999");
        let got = store
            .claim(&newest, &fp, ClaimToken::new(), day)
            .await
            .unwrap();
        assert!(matches!(
            got,
            Claim::Done {
                same_request: true,
                response: Some(_)
            }
        ));
        let oldest = RecordKey::new("org_a", "k0");
        let got = store
            .claim(&oldest, &fp, ClaimToken::new(), day)
            .await
            .unwrap();
        assert!(matches!(got, Claim::Claimed), "evicted");
    })
    .await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_run_the_handler_once() {
    use overten_gateway::RedisStore;
    let redis = redis_server::RedisServer::start();
    within(60, async {
        let work = Arc::new(Work::default());
        let mut addrs = Vec::new();
        for _ in 0..2 {
            // Each replica on its own connection: counts, permits and records all shared.
            let store = Arc::new(RedisStore::connect(redis.url()).await.unwrap());
            let idem = IdempotencyLayer::new(store.clone());
            addrs.push(serve(app(&work, idem, Duration::from_secs(2), store)).await);
        }
        let mut tasks = Vec::new();
        for i in 0..100 {
            let addr = addrs[i % 2];
            tasks.push(tokio::spawn(async move {
                post_with(addr, "sk_live_a", Some("fleet-1"), "/work?ms=200", "{}").await
            }));
        }
        let (mut ran, mut replayed, mut busy) = (0, 0, 0);
        for t in tasks {
            let got = t.await.unwrap();
            match (got.status, got.headers.contains_key("idempotent-replayed")) {
                (201, false) => ran += 1,
                (201, true) => replayed += 1,
                (409, _) => busy += 1,
                other => panic!("{other:?}: {}", got.body),
            }
        }
        assert_eq!((ran, ran + replayed + busy), (1, 100));
        assert_eq!(work.runs.load(Ordering::SeqCst), 1, "once across the fleet");
        // The other replica replays it; another body is a conflict; another org runs.
        let got = post_with(addrs[1], "sk_live_a", Some("fleet-1"), "/work?ms=200", "{}").await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (201, r#"{"run":1,"body_bytes":2}"#)
        );
        assert_eq!(got.headers["idempotent-replayed"], "true");
        assert_eq!(
            post_with(addrs[0], "sk_live_a", Some("fleet-1"), "/work?ms=200", "[]")
                .await
                .status,
            409
        );
        assert_eq!(
            post_with(addrs[0], "sk_live_b", Some("fleet-1"), "/work?ms=200", "{}")
                .await
                .status,
            201
        );
        // A 5xx gives the key back, on Redis too.
        assert_eq!(
            post_with(addrs[0], "sk_live_a", Some("f5"), "/work?status=500", "")
                .await
                .status,
            500
        );
        // The key is back before the 500 is answered: the retry, sent at once through the
        // other replica, runs (never a 409), every time.
        for i in 0..20 {
            let key = format!("f5-{i}");
            let first = post_with(addrs[0], "sk_live_a", Some(&key), "/work?status=500", "").await;
            assert_eq!(first.status, 500);
            let retry = post_with(addrs[1], "sk_live_a", Some(&key), "/work?status=500", "").await;
            assert_eq!(
                (
                    retry.status,
                    retry.headers.contains_key("idempotent-replayed")
                ),
                (500, false),
                "round {i}: {}",
                retry.body
            );
        }
        let retry = post_with(addrs[1], "sk_live_a", Some("f5"), "/work?status=500", "").await;
        assert_eq!(retry.status, 500);
        assert_eq!(work.runs.load(Ordering::SeqCst), 44);
        // A run cut off by the ceiling (408) is resubmitted at once as another request (as a
        // task would be): the key is free for it.
        let late = post_with(addrs[0], "sk_live_a", Some("f8"), "/work?ms=5000", "").await;
        assert_eq!(late.status, 408);
        let other = post_with(addrs[1], "sk_live_a", Some("f8"), "/work?ms=0", "").await;
        assert_eq!(other.status, 201, "{}", other.body);
    })
    .await;
}

/// The Rust client end to end: its first attempt times out after the server did the work
/// (a slow hop between the gateway and the idempotency layer holds fresh responses past
/// the client's timeout); the middleware retries with the same `Idempotency-Key` and gets
/// the kept result, and the work ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_gets_the_kept_result_after_a_timeout_and_the_work_runs_once() {
    use overten_errors::RetryPolicy;
    use overten_errors_http::{Retrier, RetryMiddleware, TokioSleep};
    within(60, async {
        let work = Arc::new(Work::default());
        let w = Arc::clone(&work);
        let roomy = TierLimits::of(Tier::Enterprise).requests_per_minute(1_000);
        let gateway = GatewayLayer::new(accounts(), Arc::new(MemoryStore::new()))
            .with_limits(Tier::Enterprise, roomy)
            .with_clock(fixed_now);
        let attempts = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&attempts);
        let slow_hop = axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let response = next.run(req).await;
                    if !response.headers().contains_key("idempotent-replayed") {
                        tokio::time::sleep(Duration::from_millis(800)).await;
                    }
                    response
                }
            },
        );
        let app = Router::new()
            .route(
                "/v1/excel/generate",
                post(move || {
                    let w = Arc::clone(&w);
                    async move {
                        let n = w.runs.fetch_add(1, Ordering::SeqCst) + 1;
                        (
                            http::StatusCode::CREATED,
                            format!(r#"{{"run_id":"run_{n}"}}"#),
                        )
                    }
                }),
            )
            .layer(IdempotencyLayer::new(Arc::new(
                MemoryIdempotencyStore::new(),
            )))
            .layer(slow_hop)
            .layer(stack(gateway));
        let addr = serve(app).await;
        let inner = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let client = reqwest_middleware::ClientBuilder::new(inner)
            .with(RetryMiddleware::new(Retrier::new(
                RetryPolicy::default(),
                TokioSleep,
            )))
            .build();
        let response = client
            .post(format!("http://{addr}/v1/excel/generate"))
            .header("authorization", "Bearer sk_live_a")
            .body(r#"{"prompt":"q3 report"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(response.headers()["idempotent-replayed"], "true");
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            2,
            "the timeout, then the replay"
        );
        assert_eq!(response.text().await.unwrap(), r#"{"run_id":"run_1"}"#);
        assert_eq!(work.runs.load(Ordering::SeqCst), 1, "the work ran once");
    })
    .await;
}

/// An idempotency store that always fails.
struct Down;

impl overten_gateway::IdempotencyStore for Down {
    fn claim<'a>(
        &'a self,
        _: &'a overten_gateway::RecordKey,
        _: &'a overten_gateway::Fingerprint,
        _: overten_gateway::ClaimToken,
        _: Duration,
    ) -> overten_gateway::BoxFuture<'a, Result<overten_gateway::Claim, overten_gateway::StoreError>>
    {
        Box::pin(async {
            Err(overten_gateway::StoreError::Timeout(Duration::from_millis(
                250,
            )))
        })
    }
    fn complete<'a>(
        &'a self,
        _: &'a overten_gateway::RecordKey,
        _: &'a overten_gateway::Fingerprint,
        _: overten_gateway::ClaimToken,
        _: Option<&'a overten_gateway::StoredResponse>,
        _: Duration,
    ) -> overten_gateway::BoxFuture<'a, Result<(), overten_gateway::StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn release(&self, _: &overten_gateway::RecordKey, _: overten_gateway::ClaimToken) {}
}

#[tokio::test]
async fn a_failing_idempotency_store_follows_the_stated_policy() {
    use overten_gateway::StoreFailure;
    within(30, async {
        let (addr, work, _) = start(
            IdempotencyLayer::new(Arc::new(Down)),
            Duration::from_secs(30),
        )
        .await;
        let got = post_with(addr, "sk_live_a", Some("k"), "/work", "").await;
        assert_eq!(
            (got.status, got.code().as_str()),
            (503, "service_unavailable")
        );
        assert_eq!(got.header("retry-after"), Some(30));
        assert!(
            !got.body.contains("250"),
            "the cause stays in the log: {}",
            got.body
        );
        assert_eq!(work.runs.load(Ordering::SeqCst), 0);
        // Requests without a key never touch the store.
        assert_eq!(
            post_with(addr, "sk_live_a", None, "/work", "").await.status,
            201
        );
        let idem = IdempotencyLayer::new(Arc::new(Down)).on_store_error(StoreFailure::Allow);
        let (addr, work, _) = start(idem, Duration::from_secs(30)).await;
        assert_eq!(
            post_with(addr, "sk_live_a", Some("k"), "/work", "")
                .await
                .status,
            201
        );
        assert_eq!(
            post_with(addr, "sk_live_a", Some("k"), "/work", "")
                .await
                .status,
            201
        );
        assert_eq!(
            work.runs.load(Ordering::SeqCst),
            2,
            "run without a record, each time"
        );
    })
    .await;
}

/// A store whose release takes 300 ms to land (as a round trip to a store over the network
/// can): fire-and-forget releases land late, awaited ones before the answer.
struct SlowRelease(Arc<MemoryIdempotencyStore>);

impl overten_gateway::IdempotencyStore for SlowRelease {
    fn claim<'a>(
        &'a self,
        key: &'a overten_gateway::RecordKey,
        fingerprint: &'a overten_gateway::Fingerprint,
        token: overten_gateway::ClaimToken,
        lease: Duration,
    ) -> overten_gateway::BoxFuture<'a, Result<overten_gateway::Claim, overten_gateway::StoreError>>
    {
        self.0.claim(key, fingerprint, token, lease)
    }
    fn complete<'a>(
        &'a self,
        key: &'a overten_gateway::RecordKey,
        fingerprint: &'a overten_gateway::Fingerprint,
        token: overten_gateway::ClaimToken,
        response: Option<&'a overten_gateway::StoredResponse>,
        retention: Duration,
    ) -> overten_gateway::BoxFuture<'a, Result<(), overten_gateway::StoreError>> {
        self.0
            .complete(key, fingerprint, token, response, retention)
    }
    fn release(&self, key: &overten_gateway::RecordKey, token: overten_gateway::ClaimToken) {
        let (store, key) = (Arc::clone(&self.0), *key);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            store.release(&key, token);
        });
    }
    fn give_back<'a>(
        &'a self,
        key: &'a overten_gateway::RecordKey,
        token: overten_gateway::ClaimToken,
    ) -> overten_gateway::BoxFuture<'a, ()> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.0.release(key, token);
        })
    }
}

/// The client's retry goes out the moment a 5xx or a 408 arrives; the key must be free by
/// then, however long the store takes to give it back.
#[tokio::test]
async fn a_key_is_free_when_the_answer_that_gave_it_back_arrives() {
    within(60, async {
        let store = Arc::new(SlowRelease(Arc::new(MemoryIdempotencyStore::new())));
        let (addr, work, _) = start(IdempotencyLayer::new(store), Duration::from_millis(300)).await;
        for status in [500, 503] {
            let path = format!("/work?status={status}");
            let key = format!("slow-{status}");
            assert_eq!(
                post_with(addr, "sk_live_a", Some(&key), &path, "")
                    .await
                    .status,
                status
            );
            let retry = post_with(addr, "sk_live_a", Some(&key), &path, "").await;
            assert_eq!(retry.status, status, "the retry ran: {}", retry.body);
        }
        assert_eq!(work.runs.load(Ordering::SeqCst), 4);
        // Cut off by the ceiling, then resubmitted at once as another request (a task's
        // resubmission differs by its query): not "used with a different request".
        let late = post_with(addr, "sk_live_a", Some("slow-t"), "/work?ms=5000", "").await;
        assert_eq!(
            (late.status, late.code().as_str()),
            (408, "sync_timeout_upgrade_async")
        );
        let other = post_with(addr, "sk_live_a", Some("slow-t"), "/work?ms=0", "").await;
        assert_eq!(other.status, 201, "{}", other.body);
        assert_eq!(work.runs.load(Ordering::SeqCst), 6);
    })
    .await;
}
