//! Checks every Redis deployment must pass, shared by `tests/redis.rs` (one node) and
//! `tests/deployments.rs` (a Cluster, Sentinel).
#![allow(dead_code, unreachable_pub, reason = "each test file uses a part")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use overten_errors::Tier;
use overten_gateway::{GatewayLayer, MemoryAccounts, RedisStore, TierLimits};

use super::support::{self, Gauge, NOW, accounts, app, client, fixed_now, serve, within};

/// `n` gateways, each on its own connection to `url`.
pub async fn fleet(
    url: &str,
    n: usize,
    accounts: &Arc<MemoryAccounts>,
    gauge: &Arc<Gauge>,
    edit: impl Fn(GatewayLayer) -> GatewayLayer,
) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for _ in 0..n {
        // A generous timeout: these tests count admissions exactly, and a thousand requests
        // at once on a loaded two-core machine (a debug build, CI's other jobs) can keep a
        // call past the default 250 ms; the timeout policy has tests of its own.
        let store = RedisStore::builder(url)
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
        let gateway =
            edit(GatewayLayer::new(accounts.clone(), Arc::new(store)).with_clock(fixed_now));
        addrs.push(serve(app(gateway, gauge.clone())).await);
    }
    addrs
}

/// 4 gateways on `url`, 1,000 concurrent requests over 20 keys of every tier: each key is
/// admitted exactly its tier's limit, `X-RateLimit-Remaining` never repeated.
pub async fn admits_exactly_each_tiers_limit(url: &str) {
    within(120, async {
        let accounts = accounts(20);
        let gauge = Arc::new(Gauge::default());
        let addrs = fleet(url, 4, &accounts, &gauge, |g| g).await;
        // 20 keys: free, pro, enterprise in turn. 1,000 requests: free keys 30 each, pro
        // keys 70 each, enterprise keys 34 or so each; round-robin over the 4 gateways.
        let mut plan = Vec::new();
        for k in 0..20 {
            let n = match support::tier_of(k) {
                Tier::Free => 30,
                Tier::Pro => 70,
                _ => 0,
            };
            plan.extend(std::iter::repeat_n(k, n));
        }
        let enterprise: Vec<usize> = (0..20)
            .filter(|k| support::tier_of(*k) == Tier::Enterprise)
            .collect();
        let mut e = 0;
        while plan.len() < 1000 {
            plan.push(enterprise[e % enterprise.len()]);
            e += 1;
        }
        let c = client();
        let mut tasks = Vec::new();
        for (i, k) in plan.iter().copied().enumerate() {
            let c = c.clone();
            let addr = addrs[i % addrs.len()];
            tasks.push(tokio::spawn(async move {
                (k, c.get(addr, "/ok", Some(&format!("sk_live_k{k}"))).await)
            }));
        }
        let mut admitted: Vec<Vec<u64>> = vec![Vec::new(); 20];
        let mut sent = [0usize; 20];
        for t in tasks {
            let (k, got) = t.await.unwrap();
            sent[k] += 1;
            let remaining = got.header("x-ratelimit-remaining").unwrap_or_else(|| {
                panic!(
                    "no X-RateLimit-Remaining on a {} {} (a store timeout on a loaded machine?)",
                    got.status,
                    got.code().as_str()
                )
            });
            if got.status == 200 {
                admitted[k].push(remaining);
            } else {
                assert_eq!(
                    (got.status, got.code().as_str()),
                    (429, "rate_limit_exceeded"),
                    "{}",
                    got.body
                );
                assert_eq!(remaining, 0);
                assert_eq!(
                    got.header("retry-after"),
                    Some(60 - NOW % 60),
                    "to the window's end"
                );
            }
        }
        for k in 0..20 {
            let limit = u64::from(support::tier_of(k).requests_per_minute());
            let want = limit.min(sent[k] as u64);
            let mut got = std::mem::take(&mut admitted[k]);
            got.sort_unstable();
            let expect: Vec<u64> = (limit - want..limit).collect();
            assert_eq!(
                got, expect,
                "key {k}: exactly the limit across 4 replicas, Remaining never repeated"
            );
        }
    })
    .await;
}

/// 4 gateways on `url`, 50 runs of one free key: never more than 2 in progress fleet-wide,
/// and permits held by a panic or by async tasks come back.
pub async fn runs_are_exact_across_replicas(url: &str) {
    within(120, async {
        let accounts = accounts(1);
        let gauge = Arc::new(Gauge::default());
        let roomy = |g: GatewayLayer| {
            g.with_limits(
                Tier::Free,
                TierLimits::of(Tier::Free).requests_per_minute(100_000),
            )
        };
        let addrs = fleet(url, 4, &accounts, &gauge, roomy).await;
        let c = client();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let c = c.clone();
            let addr = addrs[i % addrs.len()];
            tasks.push(tokio::spawn(async move {
                for _ in 0..3_000 {
                    let got = c.post(addr, "/runs?ms=30", Some("sk_live_k0")).await;
                    if got.status == 200 {
                        return;
                    }
                    assert_eq!(got.status, 429, "{}", got.body);
                    assert!(got.body.contains("runs in progress"), "{}", got.body);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                panic!("a run never got a permit");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(gauge.done.load(Ordering::SeqCst), 50);
        assert_eq!(
            gauge.max.load(Ordering::SeqCst),
            2,
            "exactly 2 in progress at the peak, fleet-wide"
        );
        // Panic and async holds, on Redis: the permits come back.
        let got = c.post(addrs[0], "/panic", Some("sk_live_k0")).await;
        assert_eq!(got.status, 500);
        // The last runs' permits go back in the background (a release never blocks a
        // response): each task is admitted once they have landed.
        for addr in [addrs[1], addrs[2]] {
            support::eventually("a permit for the async task", 10, || {
                let c = c.clone();
                async move {
                    c.post(addr, "/async?ms=300", Some("sk_live_k0"))
                        .await
                        .status
                        == 202
                }
            })
            .await;
        }
        assert_eq!(
            c.post(addrs[3], "/runs", Some("sk_live_k0")).await.status,
            429,
            "held by tasks"
        );
        support::eventually("the tasks' permits came back", 20, || {
            let c = c.clone();
            let addr = addrs[3];
            async move { c.post(addr, "/runs", Some("sk_live_k0")).await.status == 200 }
        })
        .await;
    })
    .await;
}

/// Two replicas' `Tasks` on `url` (each its own connection): 40 tasks (spread over every
/// slot of a Cluster) made on one are read on the other, another org's read finds nothing,
/// finished tasks stay finished, and a task whose lease nobody renews (its replica died)
/// reads `failed` on the other replica once the lease has run out.
pub async fn tasks_are_shared_and_reaped(url: &str) {
    use overten_gateway::{RedisStore, TaskKey, TaskRecord, TaskStore, Tasks};
    within(60, async {
        let connect = || async {
            Arc::new(
                RedisStore::builder(url)
                    .timeout(Duration::from_secs(10))
                    .connect()
                    .await
                    .unwrap(),
            )
        };
        let (one, two) = (connect().await, connect().await);
        let lease = Duration::from_millis(300);
        let (a, b) = (
            Tasks::new(one.clone()).lease(lease),
            Tasks::new(two).lease(lease),
        );
        let read = |tasks: &Tasks, org: &'static str, id: String| {
            let tasks = tasks.clone();
            async move {
                tasks
                    .read(org, &id)
                    .await
                    .unwrap()
                    .map(|b| serde_json::from_slice::<serde_json::Value>(&b).unwrap())
            }
        };
        let mut ids = Vec::new();
        for i in 0..40 {
            let mut run = a.create("org_t", None).await.unwrap();
            let id = run.id().to_owned();
            assert_eq!(
                read(&b, "org_t", id.clone()).await.unwrap()["status"],
                "queued"
            );
            assert_eq!(read(&b, "org_other", id.clone()).await, None);
            assert!(run.start().await.unwrap());
            if i % 2 == 0 {
                assert!(run.succeed(&serde_json::json!({"i": i}), 1).await.unwrap());
            } else {
                let err = overten_errors::ApiError::new(overten_errors::ErrorCode::Gone, "gone");
                assert!(run.fail(&err, 0).await.unwrap());
            }
            ids.push(id);
        }
        for (i, id) in ids.iter().enumerate() {
            let got = read(&b, "org_t", id.clone()).await.unwrap();
            if i % 2 == 0 {
                assert_eq!(
                    (&got["status"], &got["result"]["i"]),
                    (&"succeeded".into(), &i.into())
                );
            } else {
                assert_eq!(
                    (&got["status"], &got["error"]["code"]),
                    (&"failed".into(), &"gone".into())
                );
            }
        }
        // A task's lease starts when it is made (a replica that dies at once still frees it).
        let now_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        // (A long lease here: the abandonment below must be told from a reaping.)
        let patient = Tasks::new(one.clone()).lease(Duration::from_secs(10));
        let fresh = patient.create("org_t", None).await.unwrap();
        let raw = one
            .read_task(&TaskKey::new("org_t", fresh.id()))
            .await
            .unwrap()
            .unwrap();
        let ahead = raw.lease_until_ms.saturating_sub(now_ms());
        assert!(
            (9_000..=10_000).contains(&ahead),
            "lease ends {ahead} ms ahead"
        );
        // A run dropped unfinished (its work panicked, was cancelled): failed at once, by
        // its own replica, not at its lease's end.
        let id = fresh.id().to_owned();
        drop(fresh);
        let mut abandoned = None;
        for _ in 0..1_000 {
            let got = read(&b, "org_t", id.clone()).await.unwrap();
            if got["status"] == "failed" {
                abandoned = Some(got);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let abandoned = abandoned.expect("the dropped run's task failed");
        assert_eq!(
            abandoned["error"]["message"],
            overten_gateway::ABANDONED_MESSAGE
        );
        // A live task renews its lease: still running after several leases.
        let live = a.create("org_t", None).await.unwrap();
        tokio::time::sleep(lease * 3).await;
        assert_eq!(
            read(&b, "org_t", live.id().to_owned()).await.unwrap()["status"],
            "queued"
        );
        drop(live);
        // A dead replica's task: written with a lease, never renewed.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let key = TaskKey::new("org_t", "task_dead");
        let view = bytes::Bytes::from_static(br#"{"task_id":"task_dead","status":"running"}"#);
        let record = TaskRecord::new(overten_errors::TaskStatus::Running, now + 300, now, view);
        one.create_task(&key, &record, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            read(&b, "org_t", "task_dead".into()).await.unwrap()["status"],
            "running"
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        let got = read(&b, "org_t", "task_dead".into()).await.unwrap();
        assert_eq!(
            (&got["status"], &got["error"]["code"]),
            (&"failed".into(), &"internal_error".into())
        );
        assert_eq!(
            read(&a, "org_t", "task_dead".into()).await.unwrap(),
            got,
            "one story"
        );
    })
    .await;
}
