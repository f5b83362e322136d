//! The gateway on the per-process store, over loopback: keys and accounts, per-tier limits
//! in one stack, concurrent runs, permits on every path, upload limits, store failures,
//! hostile keys. Every test is bounded in time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines,
    clippy::cast_possible_truncation,
    reason = "tests fail loudly, and read as one story"
)]

#[path = "support/gateway_app.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use overten_errors::Tier;
use overten_gateway::{
    Account, Accounts, Admission, Admit, BoxFuture, GatewayLayer, KeyHash, MemoryStore, PermitId,
    Store, StoreError, StoreFailure, TierLimits,
};
use support::{Gauge, NOW, accounts, app, client, fixed_now, serve, within};

#[tokio::test]
async fn keys_accounts_and_tiers_answer_401_and_403_as_the_page_says() {
    within(30, async {
        let accounts = accounts(3);
        accounts.insert(
            "sk_live_suspended",
            Account::new("org_s", Tier::Pro).suspended(),
        );
        let gateway = GatewayLayer::new(accounts.clone(), Arc::new(MemoryStore::new()))
            .require_tier("/batch", Tier::Pro)
            .with_clock(fixed_now);
        let addr = serve(app(gateway, Arc::default())).await;
        let c = client();
        // The handler gets the account.
        let got = c.get(addr, "/ok", Some("sk_live_k1")).await;
        assert_eq!((got.status, got.body.as_str()), (200, "org_1 pro"));
        for (key, why) in [
            (None, "missing"),
            (Some("sk_test_k1"), "not live"),
            (Some("sk_live_"), "empty"),
            (Some("sk_live_unknown"), "unknown"),
        ] {
            let got = c.get(addr, "/ok", key).await;
            assert_eq!(
                (got.status, got.code().as_str()),
                (401, "invalid_api_key"),
                "{why}"
            );
            assert!(got.headers.contains_key("x-request-id"), "{why}");
        }
        let long = format!("sk_live_{}", "k".repeat(10 * 1024));
        let got = c.get(addr, "/ok", Some(&long)).await;
        assert_eq!(got.status, 401, "10 KB key");
        // Revoked: 401 from then on.
        assert_eq!(c.get(addr, "/ok", Some("sk_live_k2")).await.status, 200);
        accounts.revoke("sk_live_k2");
        assert_eq!(c.get(addr, "/ok", Some("sk_live_k2")).await.status, 401);
        // Suspended org, and a route above the key's tier: 403.
        let got = c.get(addr, "/ok", Some("sk_live_suspended")).await;
        assert_eq!((got.status, got.code().as_str()), (403, "forbidden"));
        assert!(got.body.contains("suspended"), "{}", got.body);
        let got = c.get(addr, "/batch/x", Some("sk_live_k0")).await;
        assert_eq!(
            (got.status, got.code().as_str()),
            (403, "forbidden"),
            "free on a pro route"
        );
        assert!(got.body.contains("pro tier"), "{}", got.body);
        assert_eq!(
            c.get(addr, "/batch/x", Some("sk_live_k1")).await.status,
            200,
            "pro"
        );
        assert_eq!(
            c.get(addr, "/batch/x", Some("sk_live_k2")).await.status,
            401,
            "revoked"
        );
    })
    .await;
}

#[tokio::test]
async fn duplicate_authorization_and_raw_hostile_keys_are_401_never_a_crash() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(30, async {
        let gateway =
            GatewayLayer::new(accounts(3), Arc::new(MemoryStore::new())).with_clock(fixed_now);
        let addr = serve(app(gateway, Arc::default())).await;
        let raw = |head: &'static [u8]| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(head).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        let two = raw(
            b"GET /ok HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_live_k0\r\n\
                        Authorization: Bearer sk_live_k1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(two.starts_with("HTTP/1.1 401"), "{two}");
        assert!(two.contains("invalid_api_key"), "{two}");
        // A bare CR inside the value: hyper refuses the request before any layer.
        let cr = raw(
            b"GET /ok HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_live_k0\rX\r\n\
                       Connection: close\r\n\r\n",
        )
        .await;
        assert!(cr.is_empty() || cr.starts_with("HTTP/1.1 4"), "{cr}");
        // Non-ASCII bytes in the key.
        let utf = raw(
            "GET /ok HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_live_ké\r\n\
                       Connection: close\r\n\r\n"
                .as_bytes()
                .to_vec()
                .leak(),
        )
        .await;
        assert!(utf.starts_with("HTTP/1.1 401"), "{utf}");
        // The server is still up.
        assert_eq!(
            client().get(addr, "/ok", Some("sk_live_k0")).await.status,
            200
        );
    })
    .await;
}

#[tokio::test]
async fn one_stack_counts_every_tier_exactly_under_concurrency() {
    within(60, async {
        let store = Arc::new(MemoryStore::new());
        let gateway = GatewayLayer::new(accounts(6), store).with_clock(fixed_now);
        let addr = serve(app(gateway, Arc::default())).await;
        let c = client();
        // Keys 0..6 are free, pro, enterprise, free, pro, enterprise; each gets 70 requests.
        let mut tasks = Vec::new();
        for i in 0..420 {
            let c = c.clone();
            let key = format!("sk_live_k{}", i % 6);
            tasks.push(tokio::spawn(async move {
                let got = c.get(addr, "/ok", Some(&key)).await;
                (i % 6, got)
            }));
        }
        let mut per_key: Vec<(Vec<u64>, usize)> = vec![(Vec::new(), 0); 6];
        for t in tasks {
            let (k, got) = t.await.unwrap();
            let remaining = got.header("x-ratelimit-remaining").unwrap();
            assert_eq!(got.header("x-ratelimit-reset"), Some(NOW - 30 + 60));
            if got.status == 200 {
                per_key[k].0.push(remaining);
            } else {
                assert_eq!(
                    (got.status, got.code().as_str()),
                    (429, "rate_limit_exceeded")
                );
                assert_eq!(remaining, 0);
                // To the window's end: 30 s into the minute.
                assert_eq!(got.header("retry-after"), Some(30));
                per_key[k].1 += 1;
            }
        }
        for (k, (mut remaining, limited)) in per_key.into_iter().enumerate() {
            let limit = support::tier_of(k).requests_per_minute();
            let admitted = limit.min(70);
            remaining.sort_unstable();
            let want: Vec<u64> = (u64::from(limit - admitted)..u64::from(limit)).collect();
            assert_eq!(
                remaining, want,
                "key {k}: each Remaining once, none negative"
            );
            assert_eq!(limited, 70 - admitted as usize, "key {k}");
            let limit_header = c.get(addr, "/ok", Some(&format!("sk_live_k{k}"))).await;
            assert_eq!(
                limit_header.header("x-ratelimit-limit"),
                Some(u64::from(limit))
            );
        }
    })
    .await;
}

fn roomy(tier: Tier) -> TierLimits {
    TierLimits::of(tier).requests_per_minute(10_000)
}

#[tokio::test]
async fn fifty_slow_runs_on_a_free_key_never_exceed_two_at_once() {
    within(60, async {
        let store = Arc::new(MemoryStore::new());
        let gauge = Arc::new(Gauge::default());
        let gateway = GatewayLayer::new(accounts(1), store.clone())
            .with_limits(Tier::Free, roomy(Tier::Free))
            .with_clock(fixed_now);
        let addr = serve(app(gateway, gauge.clone())).await;
        let c = client();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                // Bounded: 2 runs of 30 ms at a time finish 50 runs well within this.
                for refused in 0..2_000 {
                    let got = c.post(addr, "/runs?ms=30", Some("sk_live_k0")).await;
                    if got.status == 200 {
                        return refused;
                    }
                    assert_eq!(
                        (got.status, got.code().as_str()),
                        (429, "rate_limit_exceeded")
                    );
                    assert!(
                        got.body.contains("allows 2 runs in progress"),
                        "{}",
                        got.body
                    );
                    assert_eq!(got.header("retry-after"), Some(5));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                panic!("a run never got a permit");
            }));
        }
        let mut refused = 0;
        for t in tasks {
            refused += t.await.unwrap();
        }
        assert_eq!(gauge.done.load(Ordering::SeqCst), 50);
        assert_eq!(gauge.max.load(Ordering::SeqCst), 2, "exactly 2 at the peak");
        assert!(refused > 0, "the limit was reached");
        support::eventually("every permit came back", 20, || {
            let held = store.runs(&KeyHash::of("sk_live_k0"));
            async move { held == 0 }
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn permits_come_back_after_success_panic_disconnect_and_async_tasks() {
    use tokio::io::AsyncWriteExt;
    within(30, async {
        let store = Arc::new(MemoryStore::new());
        let gauge = Arc::new(Gauge::default());
        let gateway = GatewayLayer::new(accounts(1), store.clone())
            .with_limits(Tier::Free, roomy(Tier::Free))
            .with_clock(fixed_now);
        let addr = serve(app(gateway, gauge.clone())).await;
        let c = client();
        let key = KeyHash::of("sk_live_k0");
        let runs = || store.runs(&key);
        // Success.
        assert_eq!(c.post(addr, "/runs", Some("sk_live_k0")).await.status, 200);
        assert_eq!(runs(), 0);
        // Panic: one 500 envelope, the text kept out of it, the permit back.
        let got = c.post(addr, "/panic", Some("sk_live_k0")).await;
        assert_eq!((got.status, got.code().as_str()), (500, "internal_error"));
        assert!(!got.body.contains("secret"), "{}", got.body);
        assert!(got.headers.contains_key("x-ratelimit-remaining"));
        assert_eq!(runs(), 0);
        // The client goes away mid-run.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /runs?ms=10000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_live_k0\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..200 {
            if runs() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(runs(), 1, "the run is in progress");
        drop(s);
        for _ in 0..200 {
            if runs() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(runs(), 0, "a client that went away gave its permit back");
        // An async task holds its permit past the response, then gives it back.
        let got = c.post(addr, "/async?ms=300", Some("sk_live_k0")).await;
        assert_eq!(got.status, 202);
        assert_eq!(runs(), 1, "held by the task after the response");
        assert_eq!(c.post(addr, "/async?ms=300", Some("sk_live_k0")).await.status, 202);
        let full = c.post(addr, "/runs", Some("sk_live_k0")).await;
        assert_eq!(full.status, 429, "both of the free tier's runs are held by tasks");
        support::eventually("the tasks ended", 20, || {
            let held = runs();
            async move { held == 0 }
        })
        .await;
        assert_eq!(c.post(addr, "/runs", Some("sk_live_k0")).await.status, 200);
    })
    .await;
}

#[tokio::test]
async fn uploads_over_the_tier_limit_are_413_and_never_read_past_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(60, async {
        const LIMIT: u64 = 1024 * 1024;
        let gateway = GatewayLayer::new(accounts(2), Arc::new(MemoryStore::new()))
            .with_limits(Tier::Free, roomy(Tier::Free).upload_bytes(LIMIT))
            .with_clock(fixed_now);
        let addr = serve(app(gateway, Arc::default())).await;
        // 10 MB announced: answered before a byte of the body is read.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_live_k0\r\nContent-Length: 10000000\r\n\r\n")
            .await
            .unwrap();
        let mut head = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut head))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&head[..n]);
        assert!(head.starts_with("HTTP/1.1 413"), "{head}");
        assert!(head.contains("payload_too_large"), "{head}");
        assert!(head.contains("1048576 bytes"), "{head}");
        // 10 MB streamed (chunked, no length): the handler reads at most the limit.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_live_k0\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0u64;
        let writer = async {
            for _ in 0..160 {
                let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
                frame.extend_from_slice(&chunk);
                frame.extend_from_slice(b"\r\n");
                if s.write_all(&frame).await.is_err() {
                    break;
                }
                sent += chunk.len() as u64;
            }
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        let answer = writer.await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        let json = answer.rsplit("\r\n\r\n").next().unwrap().trim();
        let read = serde_json::from_str::<serde_json::Value>(json).unwrap()["read"]
            .as_u64()
            .unwrap();
        assert!(read > 0, "the handler read up to the limit");
        assert!(read <= LIMIT, "read {read} bytes past the {LIMIT}-byte limit");
        // A pro key's larger default limit takes the same 2 MB body.
        let body = vec![b'a'; 2 * 1024 * 1024];
        let got = client()
            .send(addr, http::Method::POST, "/upload", Some("sk_live_k1"), body)
            .await;
        assert_eq!((got.status, got.body.as_str()), (200, r#"{"read":2097152}"#));
    })
    .await;
}

/// A store that always fails, counting its calls.
#[derive(Default)]
struct Broken(std::sync::atomic::AtomicUsize);

impl Store for Broken {
    fn admit<'a>(&'a self, _: Admit<'a>) -> BoxFuture<'a, Result<Admission, StoreError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(StoreError::Timeout(Duration::from_millis(250))) })
    }
    fn release(&self, _: &KeyHash, _: PermitId) {}
    fn renew<'a>(
        &'a self,
        _: &'a KeyHash,
        _: PermitId,
        _: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async { Ok(false) })
    }
}

struct BrokenAccounts;

impl Accounts for BrokenAccounts {
    fn resolve<'a>(&'a self, _: &'a KeyHash) -> BoxFuture<'a, Result<Option<Account>, StoreError>> {
        Box::pin(async { Err(StoreError::Failed("connection refused".into())) })
    }
}

#[tokio::test]
async fn a_failing_store_follows_the_stated_policy() {
    within(30, async {
        let c = client();
        // Default: 503 with Retry-After, the cause kept out of the body.
        let gateway =
            GatewayLayer::new(accounts(1), Arc::new(Broken::default())).with_clock(fixed_now);
        let addr = serve(app(gateway, Arc::default())).await;
        let got = c.get(addr, "/ok", Some("sk_live_k0")).await;
        assert_eq!(
            (got.status, got.code().as_str()),
            (503, "service_unavailable")
        );
        assert_eq!(got.header("retry-after"), Some(30));
        assert!(!got.body.contains("250ms"), "{}", got.body);
        // Allow: through, uncounted, no rate-limit headers and no permit.
        let broken = Arc::new(Broken::default());
        let gateway = GatewayLayer::new(accounts(1), broken.clone())
            .on_store_error(StoreFailure::Allow)
            .with_clock(fixed_now);
        let addr = serve(app(gateway, Arc::default())).await;
        let got = c.get(addr, "/ok", Some("sk_live_k0")).await;
        assert_eq!(got.status, 200);
        assert!(!got.headers.contains_key("x-ratelimit-remaining"));
        assert_eq!(c.post(addr, "/runs", Some("sk_live_k0")).await.status, 200);
        assert_eq!(broken.0.load(Ordering::SeqCst), 2);
        // Accounts that cannot be read: 503 whatever the policy.
        let gateway = GatewayLayer::new(Arc::new(BrokenAccounts), Arc::new(MemoryStore::new()))
            .on_store_error(StoreFailure::Allow)
            .on_store_error(StoreFailure::Reject {
                retry_after: Duration::from_secs(7),
            });
        let addr = serve(app(gateway, Arc::default())).await;
        let got = c.get(addr, "/ok", Some("sk_live_k0")).await;
        assert_eq!((got.status, got.header("retry-after")), (503, Some(7)));
        let gateway = GatewayLayer::new(Arc::new(BrokenAccounts), Arc::new(MemoryStore::new()))
            .on_store_error(StoreFailure::Allow);
        let addr = serve(app(gateway, Arc::default())).await;
        assert_eq!(c.get(addr, "/ok", Some("sk_live_k0")).await.status, 503);
    })
    .await;
}

#[tokio::test]
async fn a_million_distinct_keys_leave_memory_bounded() {
    use tower::{Service, ServiceExt};
    within(300, async {
        let store = Arc::new(MemoryStore::new());
        let accounts = accounts(3);
        let gateway = GatewayLayer::new(accounts.clone(), store.clone()).with_clock(fixed_now);
        let mut svc = app(gateway, Arc::default()).into_service::<axum::body::Body>();
        for i in 0..1_000_000u32 {
            let req = http::Request::get("/ok")
                .header("authorization", format!("Bearer sk_live_x{i}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let resp = svc.ready().await.unwrap().call(req).await.unwrap();
            assert_eq!(resp.status(), 401);
        }
        // Unknown keys never reach the store; the accounts are as they were.
        assert_eq!(store.len(), 0);
        assert_eq!(accounts.len(), 3);
    })
    .await;
}
