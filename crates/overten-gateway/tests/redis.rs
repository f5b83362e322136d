//! The gateway on a real `redis-server` (Debian's package), started here on a free loopback
//! port in a temp dir and stopped by PID: a fleet of gateways sharing one Redis, concurrent
//! runs across replicas, leases that expire, and Redis killed and restarted mid-run.
//!
//! These tests fail (they never skip) when `redis-server` cannot start: install it with
//! `apt-get install -y redis-server`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines,
    clippy::cast_possible_truncation,
    reason = "tests fail loudly, and read as one story"
)]

#[path = "support/fleet_checks.rs"]
mod fleet_checks;
#[path = "support/redis_server.rs"]
mod redis_server;
#[path = "support/gateway_app.rs"]
mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_checks::fleet;
use overten_errors::Tier;
use overten_gateway::{
    Admit, GatewayLayer, KeyHash, PermitId, RedisStore, RunAdmission, RunAsk, Store, StoreFailure,
    TierLimits,
};
use redis_server::RedisServer;
use support::{Gauge, accounts, app, client, fixed_now, serve, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_gateways_on_one_redis_admit_exactly_each_tiers_limit() {
    let redis = RedisServer::start();
    fleet_checks::admits_exactly_each_tiers_limit(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_shared_between_replicas_and_reaped_after_a_lease() {
    let redis = RedisServer::start();
    fleet_checks::tasks_are_shared_and_reaped(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_across_replicas_never_exceed_the_tier_and_permits_come_back() {
    let redis = RedisServer::start();
    fleet_checks::runs_are_exact_across_replicas(&redis.url()).await;
}

/// The child process of `a_lease_left_by_a_killed_replica_expires`: takes both of a free
/// key's permits on the Redis named by `OVERTEN_TEST_REDIS`, says so, and hangs until it is
/// killed. Run only as that child (`--ignored --exact`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_lease_left_by_a_killed_replica_expires"]
async fn replica_that_holds_two_permits_until_killed() {
    let url = std::env::var("OVERTEN_TEST_REDIS").expect("run by its parent test only");
    let store = RedisStore::connect(url).await.unwrap();
    let key = KeyHash::of("sk_live_k0");
    for _ in 0..2 {
        let ask = Admit::new(&key, 1, 60, 100).with_run(RunAsk::new(
            PermitId::new(),
            2,
            Duration::from_millis(LEASE_MS),
        ));
        assert_eq!(store.admit(ask).await.unwrap().run, RunAdmission::Granted);
    }
    println!("HOLDING");
    // Killed long before this ends.
    tokio::time::sleep(Duration::from_secs(60)).await;
}

const LEASE_MS: u64 = 400;

/// This test binary again, running only the ignored test `name` (a replica in a process of
/// its own, on `redis`), once it has said `HOLDING`: SIGKILL gives it no chance to release.
fn replica(redis: &RedisServer, name: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", name, "--nocapture"])
        .env("OVERTEN_TEST_REDIS", redis.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let holding = std::io::BufReader::new(stdout)
        .lines()
        .take(50)
        .any(|l| l.is_ok_and(|l| l.contains("HOLDING")));
    assert!(holding, "the child replica {name} took its permits");
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_left_by_a_killed_replica_expires() {
    let redis = RedisServer::start();
    // A replica in a process of its own takes both permits; SIGKILL gives it no chance to
    // release them.
    let mut child = replica(&redis, "replica_that_holds_two_permits_until_killed");
    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = Instant::now();
    within(60, async {
        let lease = Duration::from_millis(LEASE_MS);
        let key = KeyHash::of("sk_live_k0");
        let b = RedisStore::builder(redis.url())
            .prefix("overten:")
            .timeout(Duration::from_millis(250))
            .connect()
            .await
            .unwrap();
        let shown = format!("{b:?}");
        assert!(
            shown.contains(r#"prefix: "overten:""#) && shown.contains("250ms"),
            "{shown}"
        );
        assert!(
            !shown.contains("redis://"),
            "the URL (it may hold a password) is not shown"
        );
        let ask = |p| Admit::new(&key, 1, 60, 100).with_run(RunAsk::new(p, 2, lease));
        let first = b.admit(ask(PermitId::new())).await.unwrap().run;
        assert_eq!(
            first,
            RunAdmission::Full { in_progress: 2 },
            "held by the killed replica"
        );
        loop {
            let run = b.admit(ask(PermitId::new())).await.unwrap().run;
            if run == RunAdmission::Granted {
                break;
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(10),
                "the leases did not expire"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Within the lease of the kill (the permits were taken just before it).
        let waited = killed_at.elapsed();
        assert!(
            // The lease, and slack for a loaded machine's polling: far below any lease
            // that would outlive the kill by design.
            waited <= lease + Duration::from_secs(2),
            "expired after {waited:?}"
        );
        // A renewed permit outlives its first lease; a released one is gone. A lease long
        // enough that a loaded machine's late wake-up (up to a second) stays inside it.
        let lease = Duration::from_secs(3);
        let p = PermitId::new();
        let key2 = KeyHash::of("sk_live_k1");
        let ask2 = Admit::new(&key2, 1, 60, 100).with_run(RunAsk::new(p, 1, lease));
        assert_eq!(b.admit(ask2).await.unwrap().run, RunAdmission::Granted);
        tokio::time::sleep(lease / 2).await;
        assert!(b.renew(&key2, p, lease).await.unwrap());
        tokio::time::sleep(lease * 2 / 3).await;
        assert!(
            b.renew(&key2, p, lease).await.unwrap(),
            "still held after its first lease"
        );
        b.release(&key2, p);
        support::eventually("the released permit is gone", 20, || {
            let b = b.clone();
            async move { !b.renew(&key2, p, lease).await.unwrap() }
        })
        .await;
    })
    .await;
}

/// The lease of the self-renewing permit tests: short, so that an expiry would show.
const RENEWED_LEASE: Duration = Duration::from_secs(2);

/// The child process of `a_crashed_replicas_renewed_runs_come_back_within_a_lease`: a
/// gateway on the Redis named by `OVERTEN_TEST_REDIS`, lease 1 s, whose two async runs of a
/// free key hold both permits for a minute; it says so and hangs until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_crashed_replicas_renewed_runs_come_back_within_a_lease"]
async fn replica_whose_runs_renew_their_permits_until_killed() {
    let url = std::env::var("OVERTEN_TEST_REDIS").expect("run by its parent test only");
    let store = RedisStore::builder(url)
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let gateway = GatewayLayer::new(accounts(1), Arc::new(store))
        .lease(RENEWED_LEASE)
        .with_clock(fixed_now);
    let addr = serve(app(gateway, Arc::default())).await;
    for _ in 0..2 {
        let got = client()
            .post(addr, "/async?ms=60000", Some("sk_live_k0"))
            .await;
        assert_eq!(got.status, 202);
    }
    println!("HOLDING");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Permits renew themselves while their runs are alive, so a short lease bounds how long a
/// crashed replica keeps a key's runs: held three leases and more while the replica lives,
/// back within about one lease of its SIGKILL (on the main of issue 25 the lease was 360 s
/// and nothing renewed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_replicas_renewed_runs_come_back_within_a_lease() {
    let redis = RedisServer::start();
    let mut child = replica(
        &redis,
        "replica_whose_runs_renew_their_permits_until_killed",
    );
    let held_at = Instant::now();
    let key = KeyHash::of("sk_live_k0");
    let result = within(60, async {
        let b = RedisStore::builder(redis.url())
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        let ask = |p| Admit::new(&key, 1, 60, 1000).with_run(RunAsk::new(p, 2, RENEWED_LEASE));
        // Three leases and more: still held (renewed), checked each 100 ms.
        while held_at.elapsed() < RENEWED_LEASE * 7 / 2 {
            let run = b.admit(ask(PermitId::new())).await.unwrap().run;
            assert_eq!(
                run,
                RunAdmission::Full { in_progress: 2 },
                "after {:?} the live replica's runs were renewed",
                held_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let killed_at = Instant::now();
        // Polled to a deadline: back within the lease (the last renewal was at most a
        // lease before the kill), with slack for a loaded machine.
        loop {
            if b.admit(ask(PermitId::new())).await.unwrap().run == RunAdmission::Granted {
                break;
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(15),
                "the killed replica's permits never came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        killed_at.elapsed()
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "a crashed replica's runs came back {result:?} after its SIGKILL (lease {RENEWED_LEASE:?})"
    );
    assert!(
        result <= RENEWED_LEASE + Duration::from_secs(3),
        "came back after {result:?}, lease {RENEWED_LEASE:?}"
    );
}

/// A live replica's permits outlive their lease while the runs go on, and go back when the
/// runs end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_runs_permit_renews_itself_and_goes_back_when_it_ends() {
    let redis = RedisServer::start();
    within(60, async {
        let accounts = accounts(1);
        let gauge = Arc::new(Gauge::default());
        let lease = Duration::from_secs(1);
        // The free tier's two runs, and a rate limit the polling below cannot reach.
        let roomy = TierLimits::of(Tier::Free).requests_per_minute(100_000);
        let addrs = fleet(&redis.url(), 1, &accounts, &gauge, |g| {
            g.lease(lease).with_limits(Tier::Free, roomy)
        })
        .await;
        let c = client();
        for _ in 0..2 {
            assert_eq!(
                c.post(addrs[0], "/async?ms=5000", Some("sk_live_k0"))
                    .await
                    .status,
                202
            );
        }
        // Three leases on: both permits still held by the runs.
        tokio::time::sleep(lease * 3).await;
        let full = c.post(addrs[0], "/runs", Some("sk_live_k0")).await;
        assert_eq!(full.status, 429, "{}", full.body);
        // The runs end at 5 s; their permits go back (polled to a deadline).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = c.post(addrs[0], "/runs", Some("sk_live_k0")).await;
            if got.status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "the permits never came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_then_restarted() {
    let mut redis = RedisServer::start();
    within(120, async {
        let accounts = accounts(3);
        let gauge = Arc::new(Gauge::default());
        let timeout = Duration::from_millis(250);
        let mut addrs = Vec::new();
        for policy in [StoreFailure::default(), StoreFailure::Allow] {
            let store = RedisStore::builder(redis.url())
                .timeout(timeout)
                .connect()
                .await
                .unwrap();
            let gateway = GatewayLayer::new(accounts.clone(), Arc::new(store))
                .on_store_error(policy)
                .with_clock(fixed_now);
            addrs.push(serve(app(gateway, gauge.clone())).await);
        }
        let (reject, allow) = (addrs[0], addrs[1]);
        let c = client();
        let got = c.get(reject, "/ok", Some("sk_live_k1")).await;
        assert_eq!(
            (got.status, got.header("x-ratelimit-remaining")),
            (200, Some(59))
        );
        // A run in progress when Redis dies.
        let run = {
            let c = c.clone();
            tokio::spawn(async move { c.post(reject, "/runs?ms=300", Some("sk_live_k2")).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        redis.kill();
        let mut slowest = Duration::ZERO;
        for _ in 0..10 {
            let t = Instant::now();
            let got = c.get(reject, "/ok", Some("sk_live_k1")).await;
            slowest = slowest.max(t.elapsed());
            assert_eq!(
                (got.status, got.code().as_str()),
                (503, "service_unavailable")
            );
            assert_eq!(got.header("retry-after"), Some(30));
            let t = Instant::now();
            let got = c.get(allow, "/ok", Some("sk_live_k1")).await;
            slowest = slowest.max(t.elapsed());
            assert_eq!(got.status, 200, "passed uncounted");
            assert!(!got.headers.contains_key("x-ratelimit-remaining"));
        }
        // No request waited past the store's timeout (and some slack for the machine).
        assert!(
            slowest < timeout + Duration::from_millis(400),
            "slowest {slowest:?}"
        );
        assert_eq!(
            run.await.unwrap().status,
            200,
            "the run in progress finished"
        );
        // Back: counting resumes by itself (this Redis kept nothing, so the window starts
        // afresh).
        redis.spawn();
        let started = Instant::now();
        let resumed = loop {
            let got = c.get(reject, "/ok", Some("sk_live_k1")).await;
            if got.status == 200 {
                break got;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "counting did not resume"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(resumed.header("x-ratelimit-remaining"), Some(59));
        // The other replica reconnects on its own schedule: polled to a deadline (it passes
        // requests uncounted, without the headers, until then; those count nothing).
        let next = loop {
            let got = c.get(allow, "/ok", Some("sk_live_k1")).await;
            assert_eq!(got.status, 200);
            if got.headers.contains_key("x-ratelimit-remaining") {
                break got;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the second replica did not count again"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            next.header("x-ratelimit-remaining"),
            Some(58),
            "both replicas count again, in one window"
        );
    })
    .await;
}

/// Commands the gateway sends Redis itself (a script's own commands are counted by Redis
/// under their names too, and are not round trips): `INFO commandstats`, summed.
fn round_trips(redis: &RedisServer) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "info", "commandstats"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0;
    for line in text.lines() {
        let Some((name, stats)) = line.trim().split_once(':') else {
            continue;
        };
        let top_level = matches!(
            name,
            "cmdstat_evalsha"
                | "cmdstat_eval"
                | "cmdstat_zrem"
                | "cmdstat_script|load"
                | "cmdstat_ping"
                | "cmdstat_get"
                | "cmdstat_set"
                | "cmdstat_del"
        );
        if top_level {
            let calls = stats
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap();
            total += calls;
        }
    }
    total
}

/// Waits (up to 10 s) until no command reaches Redis for 300 ms (background releases of
/// earlier requests landed), then zeroes its counters.
async fn quiet_then_reset(redis: &RedisServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = round_trips(redis);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = round_trips(redis);
        if now == last || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    reset_stats(redis);
}

fn reset_stats(redis: &RedisServer) {
    let ok = Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "config", "resetstat"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Round trips a request costs Redis, counted by Redis itself: a GET one, a run two (its
/// admission, and its release when the response is sent), and a key over its limit one for
/// its first 429 in the window and none after (the near-cache answers). Without the
/// near-cache, every refused request costs one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_per_request_get_run_and_over_limit() {
    let redis = RedisServer::start();
    within(60, async {
        let accounts = accounts(3);
        let gauge = Arc::new(Gauge::default());
        let near = fleet(&redis.url(), 1, &accounts, &gauge, |g| g).await[0];
        let far = fleet(&redis.url(), 1, &accounts, &gauge, |g| g.near_cache(false)).await[0];
        let c = client();
        // The scripts loaded first (a fresh Redis answers the first EVALSHA `NOSCRIPT`).
        assert_eq!(c.get(near, "/ok", Some("sk_live_k1")).await.status, 200);
        assert_eq!(c.post(near, "/runs", Some("sk_live_k1")).await.status, 200);
        support::eventually("the warm-up run's permit went back", 10, || {
            let c = c.clone();
            async move { c.post(near, "/runs", Some("sk_live_k1")).await.status == 200 }
        })
        .await;

        quiet_then_reset(&redis).await;
        for _ in 0..10 {
            assert_eq!(c.get(near, "/ok", Some("sk_live_k0")).await.status, 200);
        }
        assert_eq!(round_trips(&redis), 10, "a GET: one script call");

        quiet_then_reset(&redis).await;
        for _ in 0..20 {
            let got = c.get(near, "/ok", Some("sk_live_k0")).await;
            assert_eq!(got.status, 429);
            assert_eq!(got.header("x-ratelimit-remaining"), Some(0));
            assert_eq!(got.header("x-ratelimit-limit"), Some(10));
            assert_eq!(got.header("retry-after"), Some(60 - support::NOW % 60));
        }
        assert_eq!(round_trips(&redis), 1, "over the limit: the first 429 only");

        quiet_then_reset(&redis).await;
        for _ in 0..20 {
            assert_eq!(c.get(far, "/ok", Some("sk_live_k0")).await.status, 429);
        }
        assert_eq!(round_trips(&redis), 20, "without the near-cache: one each");

        quiet_then_reset(&redis).await;
        assert_eq!(c.post(near, "/runs", Some("sk_live_k2")).await.status, 200);
        support::eventually("the release was sent", 10, || async {
            round_trips(&redis) >= 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(round_trips(&redis), 2, "a run: admission and release");
    })
    .await;
}

/// Degraded mode (`StoreFailure::local(3)`) on 3 replicas: Redis killed (`SIGKILL`) under load.
/// While it is away each replica counts a key on its own against a third of the limit,
/// marking its answers `X-RateLimit-Scope: replica`, so the key's admitted count in the
/// window stays within the documented bound (what the shared store admitted, plus at most
/// the limit across the replicas); no request waits past the store timeout; once Redis is
/// back, counting is shared again within seconds, by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_mode_counts_locally_within_the_bound_and_shares_again_after_a_restart() {
    let mut redis = RedisServer::start();
    within(120, async {
        let accounts = accounts(4);
        let gauge = Arc::new(Gauge::default());
        let timeout = Duration::from_millis(250);
        let limit = 30;
        let mut addrs = Vec::new();
        for _ in 0..3 {
            let store = RedisStore::builder(redis.url())
                .timeout(timeout)
                .connect()
                .await
                .unwrap();
            let gateway = GatewayLayer::new(accounts.clone(), Arc::new(store))
                .with_limits(
                    Tier::Free,
                    TierLimits::of(Tier::Free).requests_per_minute(limit),
                )
                .on_store_error(StoreFailure::local(3))
                .with_clock(fixed_now);
            addrs.push(serve(app(gateway, gauge.clone())).await);
        }
        let c = client();
        let key = Some("sk_live_k0");
        // Shared: 12 admitted across the fleet, counted in Redis.
        for i in 0..12 {
            let got = c.get(addrs[i % 3], "/ok", key).await;
            assert_eq!(got.status, 200);
            assert!(!got.headers.contains_key("x-ratelimit-scope"));
            assert_eq!(got.header("x-ratelimit-remaining"), Some(u64::from(limit) - 1 - i as u64));
        }
        redis.kill();
        // Degraded: 90 requests round-robin; each replica admits a third of the limit.
        let (mut admitted, mut slowest) = (0, Duration::ZERO);
        for i in 0..90 {
            let t = Instant::now();
            let got = c.get(addrs[i % 3], "/ok", key).await;
            slowest = slowest.max(t.elapsed());
            assert_eq!(
                got.headers.get("x-ratelimit-scope").map(|v| v.to_str().unwrap()),
                Some("replica"),
                "{} {}",
                got.status,
                got.body
            );
            match got.status {
                200 => admitted += 1,
                429 => {
                    assert_eq!(got.code(), "rate_limit_exceeded");
                    assert_eq!(got.header("x-ratelimit-limit"), Some(u64::from(limit / 3)));
                }
                other => panic!("{other}: {}", got.body),
            }
        }
        assert_eq!(admitted, limit / 3 * 3, "a third of the limit on each of 3 replicas");
        assert!(
            12 + admitted <= 2 * limit,
            "within the bound: shared 12 + local {admitted} <= twice the limit"
        );
        assert!(
            slowest < timeout + Duration::from_millis(400),
            "no request waited past the store timeout: slowest {slowest:?}"
        );
        // Back (empty: this Redis keeps nothing): shared again within seconds, by itself.
        redis.spawn();
        let back = Instant::now();
        loop {
            let got = c.get(addrs[0], "/ok", key).await;
            if !got.headers.contains_key("x-ratelimit-scope") {
                assert_eq!(got.status, 200);
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "still counting locally 10 s after the restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let shared_after = back.elapsed();
        // Every replica shares the count again: one Remaining sequence across them.
        support::eventually("every replica counts in Redis again", 10, || {
            let c = c.clone();
            let addrs = addrs.clone();
            async move {
                let mut scoped = false;
                for addr in &addrs {
                    scoped |= c.get(*addr, "/ok", key).await.headers.contains_key("x-ratelimit-scope");
                }
                !scoped
            }
        })
        .await;
        // A key not used yet (free too): one count across the replicas.
        let remaining: Vec<u64> = {
            let mut r = Vec::new();
            for addr in &addrs {
                let got = c.get(*addr, "/ok", Some("sk_live_k3")).await;
                r.push(got.header("x-ratelimit-remaining").unwrap());
            }
            r
        };
        assert_eq!(remaining[0], u64::from(limit) - 1);
        assert!(
            remaining.windows(2).all(|w| w[1] + 1 == w[0]),
            "one shared count: {remaining:?}"
        );
        eprintln!(
            "degraded mode: admitted {admitted} locally while Redis was away (limit {limit}, 3 replicas), \
             slowest request {slowest:?}, shared again {shared_after:?} after the restart"
        );
    })
    .await;
}
