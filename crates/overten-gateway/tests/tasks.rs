//! Async tasks end to end on a real `redis-server` (Debian's package, started here on a
//! free loopback port and stopped by PID): three gateway replicas, each a process of its
//! own (this test binary again, running the ignored `replica_serving_tasks`), behind which
//! the app is the few lines a user writes; the client is `overten_errors_http::TaskClient`.
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

#[path = "support/redis_server.rs"]
mod redis_server;

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use overten_errors::{ApiError, Code, ErrorCode, RetryPolicy, Tier};
use overten_errors_http::{CallError, Retrier, RetryMiddleware, TaskClient, TokioSleep};
use overten_gateway::{
    Account, GatewayLayer, IdempotencyLayer, MemoryAccounts, Outcome, RedisStore, RunPermit,
    SyncCeilingLayer, Tasks, stack,
};
use redis_server::RedisServer;
use serde_json::{Value, json};

/// The lease of tasks and permits: short, so a dead replica's work comes back fast.
const LEASE: Duration = Duration::from_secs(1);
/// The sync ceiling of the test replicas (the page's is 300 s).
const CEILING: Duration = Duration::from_millis(400);

/// The app's one route: `{"ms": N, "fail": bool, "async": bool}` works for N ms, then
/// answers `{"file": "sheet.xlsx", "ms": N}` or fails with `upstream_error`.
async fn work(ms: u64, fail: bool) -> Result<Outcome<Value>, ApiError> {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    if fail {
        return Err(ApiError::new(
            ErrorCode::UpstreamError,
            "The model provider is down",
        ));
    }
    Ok(Outcome::new(json!({"file": "sheet.xlsx", "ms": ms})).credits_used(3))
}

async fn generate(
    State(tasks): State<Tasks>,
    Extension(account): Extension<Account>,
    permit: Option<Extension<RunPermit>>,
    Json(body): Json<Value>,
) -> Response {
    let ms = body["ms"].as_u64().unwrap_or(0).min(120_000);
    let fail = body["fail"] == true;
    if body["async"] == true {
        let permit = permit.map(|Extension(p)| p);
        return tasks
            .spawn(&account.org_id, permit, work(ms, fail))
            .await
            .into_response();
    }
    match work(ms, fail).await {
        Ok(done) => Json(done.result).into_response(),
        Err(e) => overten_errors_http::HandlerError::new(e).into_response(),
    }
}

/// The replica: the gateway on Redis, the idempotency layer, the sync ceiling, the app's
/// route and the tasks route. Prints `PORT n` when it listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of the tests below"]
async fn replica_serving_tasks() {
    let url = std::env::var("OVERTEN_TEST_REDIS").expect("run by its parent test only");
    let store = Arc::new(RedisStore::connect(url).await.unwrap());
    let accounts = MemoryAccounts::new()
        .with_key("sk_live_a", Account::new("org_a", Tier::Enterprise))
        .with_key("sk_live_p", Account::new("org_p", Tier::Pro))
        // The same org on another key (its own rate limit): reads org_p's tasks.
        .with_key("sk_live_p_reader", Account::new("org_p", Tier::Enterprise))
        .with_key("sk_live_b", Account::new("org_b", Tier::Enterprise));
    let gateway = GatewayLayer::new(Arc::new(accounts), store.clone()).lease(LEASE);
    let tasks = Tasks::new(store.clone()).lease(LEASE);
    let app = Router::new()
        .route("/v1/excel/generate", axum::routing::post(generate))
        .with_state(tasks.clone())
        .layer(SyncCeilingLayer::new(CEILING, tokio::time::sleep))
        .layer(IdempotencyLayer::new(store))
        .merge(tasks.router())
        .layer(stack(gateway));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("PORT {}", listener.local_addr().unwrap().port());
    // Killed by its parent, or stopped when the parent's pipe closes.
    let _ = tokio::time::timeout(Duration::from_secs(120), async {
        axum::serve(listener, app).await
    })
    .await;
}

struct Replica {
    child: Child,
    base: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replica(redis: &RedisServer) -> Replica {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "replica_serving_tasks",
            "--nocapture",
        ])
        .env("OVERTEN_TEST_REDIS", redis.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let port = std::io::BufReader::new(stdout)
        .lines()
        .take(50)
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("PORT ").map(str::to_owned))
        .expect("the replica said its port");
    Replica {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// The codes of the error responses the middleware decided on, in order.
type Seen = Arc<std::sync::Mutex<Vec<String>>>;

fn task_client(poll_at: &str, seen: &Seen) -> TaskClient<TokioSleep> {
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(
            RetryMiddleware::new(Retrier::new(RetryPolicy::default(), TokioSleep)).on_decision({
                let seen = Arc::clone(seen);
                move |event| {
                    let code = event.received.error.code().as_str().to_owned();
                    seen.lock().unwrap().push(code);
                }
            }),
        )
        .build();
    // Polls go to another replica than the one that made the task.
    TaskClient::new(client, TokioSleep)
        .poll_schedule(overten_errors::PollSchedule::new(100, 2.0, 400))
        .tasks_at(poll_at.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_run_past_the_ceiling_becomes_a_task_polled_through_other_replicas() {
    let redis = RedisServer::start();
    let fleet = [replica(&redis), replica(&redis), replica(&redis)];
    let url = format!("{}/v1/excel/generate", fleet[0].base);
    let seen = Seen::default();
    let tasks = task_client(&fleet[1].base, &seen);
    // The key on each request (not a client default): the polls must carry it themselves.
    let post = |body: Value| {
        let submit = tasks.client().post(&url).bearer_auth("sk_live_a");
        let tasks = &tasks;
        async move { tasks.post_with::<Value, _>(submit, &body).await }
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        // Within the ceiling: the sync answer, no task.
        let quick: Value = post(json!({"ms": 10})).await.unwrap();
        assert_eq!(quick, json!({"file": "sheet.xlsx", "ms": 10}));
        assert!(seen.lock().unwrap().is_empty(), "no error on the way");
        // Past it: 408, resubmitted async, polled on replica 2, the task's result.
        let started = Instant::now();
        let slow: Value = post(json!({"ms": 1_500})).await.unwrap();
        assert_eq!(slow, json!({"file": "sheet.xlsx", "ms": 1_500}));
        assert!(started.elapsed() >= Duration::from_millis(1_500));
        assert_eq!(
            *seen.lock().unwrap(),
            ["sync_timeout_upgrade_async"],
            "one 408, resubmitted"
        );
        // A task that fails: the page's failure object, typed.
        match post(json!({"ms": 800, "fail": true})).await {
            Err(CallError::TaskFailed(failure)) => {
                assert_eq!(failure.error.code, Code::Known(ErrorCode::UpstreamError));
                assert_eq!(failure.error.message, "The model provider is down");
                assert!(failure.task_id.starts_with("task_"));
                let as_api = ApiError::from((*failure).clone());
                assert_eq!(
                    (as_api.status(), as_api.task_id()),
                    (502, Some(failure.task_id.as_str()))
                );
            }
            other => panic!("{other:?}"),
        }
        // A sync failure is a typed API error, not a task.
        match post(json!({"ms": 10, "fail": true})).await {
            Err(CallError::Api(e)) => assert_eq!(e.code(), &ErrorCode::UpstreamError),
            other => panic!("{other:?}"),
        }
        // Another org polling the task of org_a, on the third replica: 404.
        let plain = reqwest::Client::new();
        let accepted: Value = plain
            .post(&url)
            .bearer_auth("sk_live_a")
            .header("content-type", "application/json")
            .body(json!({"ms": 50, "async": true}).to_string())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap();
        let task = format!(
            "{}/tasks/{}",
            fleet[2].base,
            accepted["task_id"].as_str().unwrap()
        );
        let theirs = plain
            .get(&task)
            .bearer_auth("sk_live_b")
            .send()
            .await
            .unwrap();
        assert_eq!(theirs.status(), 404);
        let ours = plain
            .get(&task)
            .bearer_auth("sk_live_a")
            .send()
            .await
            .unwrap();
        assert_eq!(ours.status(), 200);
    })
    .await
    .expect("the async flow within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_tasks_fail_and_its_permits_come_back_within_a_lease() {
    let redis = RedisServer::start();
    let mut doomed = replica(&redis);
    let survivor = replica(&redis);
    let plain = reqwest::Client::new();
    let submit = |base: String| {
        let plain = plain.clone();
        async move {
            plain
                .post(format!("{base}/v1/excel/generate"))
                .bearer_auth("sk_live_p")
                .header("content-type", "application/json")
                .body(json!({"ms": 60_000, "async": true}).to_string())
                .send()
                .await
                .unwrap()
        }
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        // Pro: 10 runs at once. The doomed replica takes all ten, as long tasks.
        let mut ids = Vec::new();
        for _ in 0..10 {
            let r = submit(doomed.base.clone()).await;
            assert_eq!(r.status(), 202);
            let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            ids.push(v["task_id"].as_str().unwrap().to_owned());
        }
        let full = submit(survivor.base.clone()).await;
        assert_eq!(full.status(), 429, "the tier's ten runs are held");
        // Renewed while the replica lives: still full after several leases.
        tokio::time::sleep(LEASE * 3).await;
        assert_eq!(submit(survivor.base.clone()).await.status(), 429);
        let read = |id: String| {
            let plain = plain.clone();
            let base = survivor.base.clone();
            async move {
                let r = plain
                    .get(format!("{base}/tasks/{id}"))
                    .bearer_auth("sk_live_p_reader")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()
            }
        };
        assert_eq!(read(ids[0].clone()).await["status"], "running");
        doomed.child.kill().unwrap();
        doomed.child.wait().unwrap();
        let killed = Instant::now();
        // The tasks read failed (internal_error) once their lease ran out, and no sooner
        // than the lease allows.
        // Each task was renewed every third of the lease, each at its own moment: each
        // reads `running` until its own lease has run out, then `failed` (internal_error),
        // and all of them within one lease of the kill.
        let mut open: Vec<String> = ids.clone();
        let mut failed_after = Duration::ZERO;
        while !open.is_empty() && killed.elapsed() < Duration::from_secs(10) {
            // Every open task read at once, so a pass takes one round trip even on a
            // loaded machine (the time measured is the reaping's, not the reading's).
            let mut reads = tokio::task::JoinSet::new();
            for id in open {
                let read = read(id.clone());
                reads.spawn(async move { (id, read.await) });
            }
            let mut still = Vec::new();
            while let Some(done) = reads.join_next().await {
                let (id, v) = done.unwrap();
                if v["status"] == "failed" {
                    assert_eq!(v["error"]["code"], "internal_error", "{v}");
                    assert_eq!(v["error"]["message"], overten_gateway::REAPED_MESSAGE);
                    failed_after = killed.elapsed();
                } else {
                    assert_eq!(v["status"], "running", "{v}");
                    still.push(id);
                }
            }
            open = still;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(open.is_empty(), "tasks of the dead replica never reaped: {open:?}");
        assert!(failed_after <= LEASE + Duration::from_millis(800), "{failed_after:?}");
        // Failed for good: read again, they stay failed.
        for id in &ids {
            assert_eq!(read(id.clone()).await["status"], "failed");
        }
        // The permits came back too: a run is admitted on the survivor.
        let mut admitted_after = None;
        while killed.elapsed() < Duration::from_secs(10) {
            let r = submit(survivor.base.clone()).await;
            if r.status() == 202 {
                admitted_after = Some(killed.elapsed());
                break;
            }
            assert_eq!(r.status(), 429);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let admitted_after = admitted_after.expect("the dead replica's permits came back");
        assert!(admitted_after <= LEASE + Duration::from_millis(1_500), "{admitted_after:?}");
        println!("killed replica: its last task read failed after {failed_after:?}, permits back after {admitted_after:?}");
    })
    .await
    .expect("within 60 s");
}
