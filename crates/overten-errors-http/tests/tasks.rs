//! `TaskClient` and `json_or_error` over real HTTP on loopback, against scripted servers
//! (honest ones and hostile ones), with a recording sleeper (no real waits).

#![cfg(feature = "reqwest")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines,
    reason = "tests fail loudly"
)]

#[path = "support/mod.rs"]
mod support;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use overten_errors::{ApiError, Code, ErrorCode, PollSchedule, RetryPolicy};
use overten_errors_http::{
    CallError, Retrier, RetryMiddleware, TaskClient, into_response, json_or_error,
};
use serde_json::{Value, json};

type Reply = Response<Vec<u8>>;

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    key: Option<String>,
    auth: Option<String>,
    body: Vec<u8>,
}

#[derive(Default)]
struct Script {
    replies: HashMap<String, VecDeque<Reply>>,
    seen: Vec<Seen>,
}

type Shared = Arc<Mutex<Script>>;

/// A server's script: each path's replies.
type ScriptOf<'a> = Vec<(&'a str, Vec<Reply>)>;

#[derive(serde::Deserialize, Debug)]
#[allow(dead_code, reason = "the shape asked for")]
struct Sheet {
    file: u32,
}

fn reply(status: u16, body: &str) -> Reply {
    let mut r = Response::new(body.as_bytes().to_vec());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

#[allow(clippy::needless_pass_by_value, reason = "built inline at every call")]
fn error(err: ApiError) -> Reply {
    into_response(&err)
}

/// Each path answers from its script (then 404 `not_found`); every request is recorded.
async fn server(script: Vec<(&str, Vec<Reply>)>) -> (SocketAddr, Shared) {
    let state: Shared = Arc::default();
    for (path, replies) in script {
        state
            .lock()
            .unwrap()
            .replies
            .insert(path.to_owned(), replies.into());
    }
    let s = Arc::clone(&state);
    let addr = support::serve(
        "127.0.0.1:0".parse().unwrap(),
        move |req: Request<Bytes>| {
            let mut st = s.lock().unwrap();
            st.seen.push(Seen {
                method: req.method().to_string(),
                path: req.uri().path().to_owned(),
                key: req
                    .headers()
                    .get("idempotency-key")
                    .map(|v| v.to_str().unwrap().to_owned()),
                auth: req
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned()),
                body: req.body().to_vec(),
            });
            let reply = st
                .replies
                .get_mut(req.uri().path())
                .and_then(VecDeque::pop_front)
                .unwrap_or_else(|| error(ApiError::from(ErrorCode::NotFound)));
            reply.map(|b| Full::new(Bytes::from(b)).boxed_unsync())
        },
    )
    .await
    .unwrap();
    (addr, state)
}

type Sleeps = Arc<Mutex<Vec<Duration>>>;

fn sleeper() -> (
    Sleeps,
    impl Fn(Duration) -> std::future::Ready<()> + Send + Sync + Clone,
) {
    let log: Sleeps = Arc::default();
    let l = Arc::clone(&log);
    (log, move |d| {
        l.lock().unwrap().push(d);
        std::future::ready(())
    })
}

/// A task client through the retry middleware (with `policy`), waiting with a recorder;
/// polls on the default schedule with no jitter.
fn tasks_with(
    policy: RetryPolicy,
) -> (
    TaskClient<impl Fn(Duration) -> std::future::Ready<()> + Send + Sync + Clone>,
    Sleeps,
) {
    let (sleeps, sleep) = sleeper();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RetryMiddleware::new(
            Retrier::new(policy, sleep.clone()).with_seed(7),
        ))
        .build();
    let schedule = PollSchedule::default().with_jitter(0.0);
    (
        TaskClient::new(client, sleep).poll_schedule(schedule),
        sleeps,
    )
}

fn tasks() -> (
    TaskClient<impl Fn(Duration) -> std::future::Ready<()> + Send + Sync + Clone>,
    Sleeps,
) {
    tasks_with(RetryPolicy::default())
}

fn ceiling() -> Reply {
    error(ApiError::from(ErrorCode::SyncTimeoutUpgradeAsync))
}

const ACCEPTED: &str = r#"{"success":true,"task_id":"task_1","status":"queued"}"#;
const RUNNING: &str = r#"{"task_id":"task_1","status":"running"}"#;
const DONE: &str = r#"{"task_id":"task_1","status":"succeeded","result":{"file":"q3.xlsx"},"credits_used":2,"duration_ms":9}"#;

fn seen(state: &Shared) -> Vec<Seen> {
    state.lock().unwrap().seen.clone()
}

#[tokio::test]
async fn a_sync_answer_is_the_result_in_one_request() {
    let (addr, state) = server(vec![("/gen", vec![reply(200, r#"{"file":"a.xlsx"}"#)])]).await;
    let (tasks, sleeps) = tasks();
    let got: Value = tasks
        .post(format!("http://{addr}/gen"), &json!({"prompt": "p"}))
        .await
        .unwrap();
    assert_eq!(got, json!({"file": "a.xlsx"}));
    let seen = seen(&state);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    let key = seen[0].key.clone().expect("an idempotency key");
    assert!(
        key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&seen[0].body).unwrap(),
        json!({"prompt": "p"})
    );
    assert!(sleeps.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_408_is_resubmitted_async_with_the_same_key_then_polled_to_its_result() {
    let (addr, state) = server(vec![
        ("/gen", vec![ceiling(), reply(202, ACCEPTED)]),
        (
            "/tasks/task_1",
            vec![reply(200, RUNNING), reply(200, RUNNING), reply(200, DONE)],
        ),
    ])
    .await;
    let (tasks, sleeps) = tasks();
    let submit = tasks
        .client()
        .post(format!("http://{addr}/gen"))
        .bearer_auth("sk_live_k1");
    let got: Value = tasks
        .post_with(submit, &json!({"prompt": "p", "n": 1}))
        .await
        .unwrap();
    assert_eq!(got, json!({"file": "q3.xlsx"}));
    let seen = seen(&state);
    let shape: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            ("POST", "/gen"),
            ("POST", "/gen"),
            ("GET", "/tasks/task_1"),
            ("GET", "/tasks/task_1"),
            ("GET", "/tasks/task_1"),
        ]
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&seen[1].body).unwrap(),
        json!({"prompt": "p", "n": 1, "async": true}),
        "the same work plus async: true"
    );
    assert!(seen[0].key.is_some());
    assert_eq!(seen[0].key, seen[1].key, "one key for the logical request");
    // Every request, the polls included, carries the caller's credentials: a task is
    // answered only to its org's keys.
    for s in &seen {
        assert_eq!(
            s.auth.as_deref(),
            Some("Bearer sk_live_k1"),
            "{} {}",
            s.method,
            s.path
        );
    }
    // No wait before the resubmission; the polls wait 1 s, 2 s, 4 s (no jitter).
    assert_eq!(*sleeps.lock().unwrap(), [1, 2, 4].map(Duration::from_secs));
}

#[tokio::test]
async fn a_failed_task_is_the_typed_failure_and_a_failed_sync_call_the_typed_error() {
    let failed = r#"{"task_id":"task_1","status":"failed","error":{"code":"upstream_error","message":"Provider down"},"credits_used":0,"duration_ms":812}"#;
    let (addr, _) = server(vec![
        ("/gen", vec![ceiling(), reply(202, ACCEPTED)]),
        ("/tasks/task_1", vec![reply(200, failed)]),
        (
            "/bad",
            vec![error(ApiError::new(
                ErrorCode::ValidationError,
                "/prompt: too long",
            ))],
        ),
    ])
    .await;
    let (tasks, _) = tasks();
    match tasks
        .post::<Value, _>(format!("http://{addr}/gen"), &json!({}))
        .await
    {
        Err(CallError::TaskFailed(f)) => {
            assert_eq!(f.task_id, "task_1");
            assert_eq!(f.error.code, Code::Known(ErrorCode::UpstreamError));
            let err = CallError::TaskFailed(f).api_error().unwrap();
            assert_eq!((err.status(), err.task_id()), (502, Some("task_1")));
        }
        other => panic!("{other:?}"),
    }
    match tasks
        .post::<Value, _>(format!("http://{addr}/bad"), &json!({}))
        .await
    {
        Err(e @ CallError::Api(_)) => {
            let api = e.api_error().unwrap();
            assert_eq!(
                (api.code(), api.status()),
                (&Code::Known(ErrorCode::ValidationError), 422)
            );
            assert_eq!(api.message(), "/prompt: too long");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn polling_waits_a_polls_retry_after_and_gives_up_after_the_schedules_time() {
    let mut slow = reply(200, RUNNING);
    slow.headers_mut()
        .insert("retry-after", "20".parse().unwrap());
    let (addr, _) = server(vec![
        ("/gen", vec![reply(202, ACCEPTED)]),
        (
            "/tasks/task_1",
            vec![slow; 1]
                .into_iter()
                .chain((0..50).map(|_| reply(200, RUNNING)))
                .collect(),
        ),
    ])
    .await;
    let (tasks, sleeps) = tasks();
    let tasks = tasks.poll_schedule(
        PollSchedule::default()
            .with_jitter(0.0)
            .give_up_after(Duration::from_secs(60)),
    );
    match tasks
        .post::<Value, _>(format!("http://{addr}/gen"), &json!({}))
        .await
    {
        Err(CallError::StillRunning {
            task_id,
            polls,
            url,
        }) => {
            assert_eq!(task_id, "task_1");
            assert_eq!(url.path(), "/tasks/task_1");
            // 1 s, then the poll's Retry-After of 20 s over the schedule's 2 s, then 4, 8,
            // 16: 49 s; the last wait is cut to the minute's remaining 11 s.
            assert_eq!(
                *sleeps.lock().unwrap(),
                [1, 20, 4, 8, 16, 11].map(Duration::from_secs)
            );
            assert_eq!(polls, 6);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_polls_http_date_is_waited_and_a_schedule_of_no_time_still_polls_once() {
    let mut far = reply(200, RUNNING);
    far.headers_mut().insert(
        "retry-after",
        "Thu, 31 Dec 2099 23:59:59 GMT".parse().unwrap(),
    );
    let (addr, _) = server(vec![
        ("/gen", vec![reply(202, ACCEPTED), reply(202, ACCEPTED)]),
        (
            "/tasks/task_1",
            vec![far, reply(200, RUNNING), reply(200, RUNNING)],
        ),
    ])
    .await;
    let (tasks, sleeps) = tasks();
    let minute = tasks.poll_schedule(
        PollSchedule::default()
            .with_jitter(0.0)
            .give_up_after(Duration::from_secs(60)),
    );
    match minute
        .post::<Value, _>(format!("http://{addr}/gen"), &json!({}))
        .await
    {
        Err(CallError::StillRunning { polls, .. }) => assert_eq!(polls, 2),
        other => panic!("{other:?} {:?}", sleeps.lock().unwrap()),
    }
    // The date is decades away: the wait is what is left of the minute.
    assert_eq!(*sleeps.lock().unwrap(), [1, 59].map(Duration::from_secs));
    let (tasks, sleeps) = self::tasks();
    let none = tasks.poll_schedule(PollSchedule::default().give_up_after(Duration::ZERO));
    match none
        .post::<Value, _>(format!("http://{addr}/gen"), &json!({}))
        .await
    {
        Err(CallError::StillRunning { polls, .. }) => assert_eq!(polls, 1, "one look first"),
        other => panic!("{other:?}"),
    }
    assert_eq!(*sleeps.lock().unwrap(), [Duration::ZERO]);
}

#[tokio::test]
async fn a_408_the_middleware_stops_on_is_not_resubmitted() {
    let (addr, state) = server(vec![("/gen", vec![ceiling()])]).await;
    // One attempt allowed: step 3 stops before step 4 would resubmit.
    let policy = RetryPolicy::builder().max_attempts(1).build().unwrap();
    let (tasks, _) = tasks_with(policy);
    match tasks
        .post::<Value, _>(format!("http://{addr}/gen"), &json!({}))
        .await
    {
        Err(CallError::Api(e)) => assert_eq!(e.code(), &ErrorCode::SyncTimeoutUpgradeAsync),
        other => panic!("{other:?}"),
    }
    assert_eq!(seen(&state).len(), 1, "no resubmission");
}

#[tokio::test]
async fn without_the_retry_middleware_the_408_is_read_here() {
    let (addr, state) = server(vec![
        ("/gen", vec![ceiling(), reply(202, ACCEPTED)]),
        ("/tasks/task_1", vec![reply(200, DONE)]),
    ])
    .await;
    let (_, sleep) = sleeper();
    let bare = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).build();
    let tasks = TaskClient::new(bare, sleep);
    let got: Value = tasks
        .post(format!("http://{addr}/gen"), &json!({"a": 1}))
        .await
        .unwrap();
    assert_eq!(got["file"], "q3.xlsx");
    let first = seen(&state);
    assert_eq!(first.len(), 3);
    assert_eq!(
        serde_json::from_slice::<Value>(&first[1].body).unwrap(),
        json!({"a": 1, "async": true})
    );
    // Any other error is the typed error, never a resubmission.
    let (addr, state) = server(vec![(
        "/gen",
        vec![
            error(ApiError::from(ErrorCode::InternalError)),
            reply(202, ACCEPTED),
        ],
    )])
    .await;
    match tasks
        .post::<Value, _>(format!("http://{addr}/gen"), &json!({"a": 1}))
        .await
    {
        Err(CallError::Api(e)) => assert_eq!(e.code(), &ErrorCode::InternalError),
        other => panic!("{other:?}"),
    }
    assert_eq!(seen(&state).len(), 1);
}

#[tokio::test]
async fn the_client_it_hands_out_is_the_one_with_the_middleware() {
    let (addr, _) = server(vec![(
        "/gone",
        vec![error(ApiError::from(ErrorCode::Gone))],
    )])
    .await;
    let decided = Arc::new(Mutex::new(0));
    let (_, sleep) = sleeper();
    let d = Arc::clone(&decided);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(
            RetryMiddleware::new(Retrier::new(RetryPolicy::default(), sleep.clone()))
                .on_decision(move |_| *d.lock().unwrap() += 1),
        )
        .build();
    let tasks = TaskClient::new(client, sleep);
    let r = tasks
        .client()
        .get(format!("http://{addr}/gone"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    assert_eq!(
        *decided.lock().unwrap(),
        1,
        "the middleware decided on the 410"
    );
}

#[tokio::test]
async fn tasks_are_polled_where_the_client_is_told_and_ids_stay_one_segment() {
    let accepted = r#"{"success":true,"task_id":"task/../x?y","status":"queued"}"#;
    let done = r#"{"task_id":"task/../x?y","status":"succeeded","result":7}"#;
    let (addr, state) = server(vec![
        ("/v1/gen", vec![reply(202, accepted)]),
        ("/v1/tasks/task%2F..%2Fx%3Fy", vec![reply(200, done)]),
    ])
    .await;
    let (tasks, _) = tasks();
    let tasks = tasks.tasks_at(format!("http://{addr}/v1/").parse().unwrap());
    let got: u32 = tasks
        .post(format!("http://{addr}/v1/gen"), &json!({}))
        .await
        .unwrap();
    assert_eq!(got, 7);
    assert_eq!(seen(&state)[1].path, "/v1/tasks/task%2F..%2Fx%3Fy");
}

#[tokio::test]
async fn hostile_answers_are_typed_errors_that_do_not_echo_the_body() {
    let secret = "SECRET-IN-BODY";
    let cases: Vec<(&str, ScriptOf<'_>)> = vec![
        (
            "a 202 without a task id",
            vec![("/gen", vec![reply(202, r#"{"success":true}"#)])],
        ),
        (
            "a 202 that is not JSON",
            vec![("/gen", vec![reply(202, secret)])],
        ),
        (
            "a task in a state no version knows",
            vec![
                ("/gen", vec![reply(202, ACCEPTED)]),
                (
                    "/tasks/task_1",
                    vec![reply(
                        200,
                        &format!(r#"{{"task_id":"task_1","status":"{secret}"}}"#),
                    )],
                ),
            ],
        ),
        (
            "a task body too deep",
            vec![
                ("/gen", vec![reply(202, ACCEPTED)]),
                (
                    "/tasks/task_1",
                    vec![reply(
                        200,
                        &format!("{}{}", "[".repeat(200), "]".repeat(200)),
                    )],
                ),
            ],
        ),
        (
            "a result that is not the type asked",
            vec![(
                "/gen",
                vec![reply(200, &format!(r#"{{"file":"{secret}"}}"#))],
            )],
        ),
        (
            "a task result that is not the type asked",
            vec![
                ("/gen", vec![reply(202, ACCEPTED)]),
                (
                    "/tasks/task_1",
                    vec![reply(
                        200,
                        &format!(
                            r#"{{"task_id":"task_1","status":"succeeded","result":"{secret}"}}"#
                        ),
                    )],
                ),
            ],
        ),
        (
            "a success body over the limit",
            vec![(
                "/gen",
                vec![reply(200, &format!("[{}]", "1,".repeat(600) + "1"))],
            )],
        ),
    ];
    for (what, script) in cases {
        let (addr, _) = server(script).await;
        let (tasks, _) = tasks();
        let tasks = tasks.max_result_bytes(1_000);
        let got = tasks
            .post::<Sheet, _>(format!("http://{addr}/gen"), &json!({}))
            .await;
        match got {
            Err(e @ CallError::Unexpected(_)) => {
                assert!(!e.to_string().contains(secret), "{what}: {e}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // A body that is not a JSON object cannot take "async": nothing is sent.
    let (addr, state) = server(vec![]).await;
    let (tasks, _) = tasks();
    for body in [json!([1]), json!("x"), json!(null)] {
        assert!(matches!(
            tasks
                .post::<Value, _>(format!("http://{addr}/gen"), &body)
                .await,
            Err(CallError::Request(_))
        ));
    }
    assert!(seen(&state).is_empty());
    // A poll answered 404 (the task expired): the typed error.
    let (addr, _) = server(vec![("/gen", vec![reply(202, ACCEPTED)])]).await;
    match tasks
        .post::<Value, _>(format!("http://{addr}/gen"), &json!({}))
        .await
    {
        Err(CallError::Api(e)) => assert_eq!(e.code(), &ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn json_or_error_reads_a_success_as_t_and_anything_else_as_the_typed_error() {
    let (addr, _) = server(vec![
        ("/ok", vec![reply(200, "\u{feff}{\"org_id\":\"org_1\"}")]),
        ("/none", vec![reply(204, "")]),
        ("/gone", vec![error(ApiError::from(ErrorCode::Gone))]),
        ("/html", vec![reply(502, "<html>bad gateway</html>")]),
    ])
    .await;
    let get = |path: &str| reqwest::get(format!("http://{addr}{path}"));
    let v: Value = json_or_error(get("/ok").await.unwrap()).await.unwrap();
    assert_eq!(v["org_id"], "org_1", "a byte order mark is skipped");
    let none: Option<u8> = json_or_error(get("/none").await.unwrap()).await.unwrap();
    assert_eq!(none, None, "an empty success is null");
    match json_or_error::<Value>(get("/gone").await.unwrap()).await {
        Err(CallError::Api(e)) => {
            assert_eq!((e.code(), e.status()), (&Code::Known(ErrorCode::Gone), 410));
        }
        other => panic!("{other:?}"),
    }
    match json_or_error::<Value>(get("/html").await.unwrap()).await {
        Err(CallError::Api(e)) => {
            assert_eq!(e.status(), 502);
            assert!(!e.message().contains("<html>"), "{}", e.message());
        }
        other => panic!("{other:?}"),
    }
}
