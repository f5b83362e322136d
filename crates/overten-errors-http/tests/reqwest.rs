//! The `reqwest` feature over real HTTP on loopback: a real reqwest client through
//! `RetryMiddleware`, against a scripted server, with a recording sleeper (no real waits).

#![cfg(feature = "reqwest")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "support/mod.rs"]
mod support;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use overten_errors::{
    Advice, ApiError, ErrorCode, RateLimit, RetryAfter, RetryBudget, RetryPolicy, StopReason,
};
use overten_errors_http::{
    Retrier, RetryMiddleware, RetryOutcome, STREAMING_BODY, into_response, received_from_reqwest,
};
use reqwest_middleware::ClientWithMiddleware;

const NOW: u64 = 1_700_000_000;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
}

type Reply = Response<Vec<u8>>;

/// A server that answers each path from a script (then 200), and records every request.
#[derive(Default)]
struct Script {
    replies: HashMap<String, VecDeque<Reply>>,
    seen: Vec<(String, http::HeaderMap)>,
}

type Shared = Arc<Mutex<Script>>;

#[allow(clippy::needless_pass_by_value, reason = "built inline at every call")]
fn error(err: ApiError) -> Reply {
    into_response(&err)
}

fn html(status: u16) -> Reply {
    let mut r = Response::new(b"<html><body>busy</body></html>".to_vec());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

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
            st.seen
                .push((req.uri().path().to_owned(), req.headers().clone()));
            let reply = st
                .replies
                .get_mut(req.uri().path())
                .and_then(VecDeque::pop_front)
                .unwrap_or_else(|| Response::new(br#"{"success":true}"#.to_vec()));
            reply.map(|b| Full::new(Bytes::from(b)).boxed_unsync())
        },
    )
    .await
    .unwrap();
    (addr, state)
}

type Sleeps = Arc<Mutex<Vec<Duration>>>;

/// The default policy with named waits exact (`wait_spread` 0), so each path's sleep is the
/// wait the server named; the spread is tested in the core.
fn retrier(sleeps: &Sleeps) -> Retrier<impl overten_errors_http::Sleep + use<>> {
    let log = Arc::clone(sleeps);
    let exact = RetryPolicy::builder().wait_spread(0.0).build().unwrap();
    Retrier::new(exact, move |d| {
        log.lock().unwrap().push(d);
        std::future::ready(())
    })
    .with_clock(now)
    .with_seed(7)
}

/// [`retrier`] on a clock that starts at `NOW` and that each sleep moves forward, as time
/// moves for a paced request.
fn moving_retrier(sleeps: &Sleeps) -> Retrier<impl overten_errors_http::Sleep + use<>> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let clock = Arc::new(AtomicU64::new(NOW * 1000));
    let (advanced, read) = (Arc::clone(&clock), clock);
    let log = Arc::clone(sleeps);
    let exact = RetryPolicy::builder().wait_spread(0.0).build().unwrap();
    Retrier::new(exact, move |d: Duration| {
        log.lock().unwrap().push(d);
        advanced.fetch_add(u64::try_from(d.as_millis()).unwrap(), Ordering::SeqCst);
        std::future::ready(())
    })
    .with_clock(move || SystemTime::UNIX_EPOCH + Duration::from_millis(read.load(Ordering::SeqCst)))
    .with_seed(7)
}

fn client(
    middleware: RetryMiddleware<impl overten_errors_http::Sleep + 'static>,
) -> ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build()
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test took longer than 30 s")
}

fn hits(state: &Shared, path: &str) -> usize {
    state
        .lock()
        .unwrap()
        .seen
        .iter()
        .filter(|(p, _)| p == path)
        .count()
}

#[tokio::test]
#[allow(clippy::too_many_lines, reason = "one path after another")]
async fn every_advice_path() {
    within(async {
        let limited = |rl: Option<RateLimit>, ra: Option<RetryAfter>| {
            let mut e = ApiError::from(ErrorCode::RateLimitExceeded);
            if let Some(rl) = rl {
                e = e.with_rate_limit(rl);
            }
            if let Some(ra) = ra {
                e = e.with_retry_after(ra);
            }
            // A 429 without a hint would get the server's default Retry-After: write it raw.
            let mut r = error(e);
            if ra.is_none() {
                r.headers_mut().remove("retry-after");
            }
            r
        };
        let (addr, state) = server(vec![
            (
                "/backoff",
                vec![error(ApiError::from(ErrorCode::InternalError))],
            ),
            (
                "/seconds",
                vec![limited(None, Some(RetryAfter::Seconds(2)))],
            ),
            (
                "/date",
                vec![limited(
                    None,
                    Some(RetryAfter::At(now() + Duration::from_secs(3))),
                )],
            ),
            (
                "/reset",
                vec![limited(
                    Some(RateLimit {
                        limit: 10,
                        remaining: 0,
                        reset: NOW + 5,
                    }),
                    None,
                )],
            ),
            ("/html-503", vec![html(503)]),
            (
                "/async",
                vec![error(ApiError::from(ErrorCode::SyncTimeoutUpgradeAsync))],
            ),
            ("/gone", vec![error(ApiError::from(ErrorCode::Gone))]),
            (
                "/always",
                (0..10)
                    .map(|_| error(ApiError::from(ErrorCode::UpstreamError)))
                    .collect(),
            ),
        ])
        .await;
        let sleeps: Sleeps = Arc::default();
        let c = client(RetryMiddleware::new(retrier(&sleeps)));
        let get = |path: &'static str| {
            let c = c.clone();
            async move { c.get(format!("http://{addr}{path}")).send().await.unwrap() }
        };
        let last_sleep = || *sleeps.lock().unwrap().last().unwrap();

        assert_eq!(get("/backoff").await.status(), 200);
        assert!((Duration::from_millis(500)..=Duration::from_secs(1)).contains(&last_sleep()));
        assert_eq!(get("/seconds").await.status(), 200);
        assert_eq!(last_sleep(), Duration::from_secs(2));
        assert_eq!(get("/date").await.status(), 200);
        assert_eq!(last_sleep(), Duration::from_secs(3));
        assert_eq!(get("/html-503").await.status(), 200);
        assert!((Duration::from_secs(30)..=Duration::from_secs(60)).contains(&last_sleep()));
        let slept = sleeps.lock().unwrap().len();
        assert_eq!(slept, 4);
        // The reset, through a client of its own whose clock the sleeps move: the 429's
        // spent window holds the key until the reset, which the decision's wait reaches.
        let reset_sleeps: Sleeps = Arc::default();
        let held = client(RetryMiddleware::new(moving_retrier(&reset_sleeps)));
        let reset = held
            .get(format!("http://{addr}/reset"))
            .send()
            .await
            .unwrap();
        assert_eq!(reset.status(), 200);
        // The decision's 5 s (the reset); then, the 429 reporting ten used where this client
        // sent one (others use the key), the pacer's slot at a point of the next window.
        let waits = reset_sleeps.lock().unwrap().clone();
        assert_eq!(waits.len(), 2, "{waits:?}");
        assert_eq!(waits[0], Duration::from_secs(5));
        assert!(waits[1] < Duration::from_secs(60), "{waits:?}");

        // 408: surfaced, body intact, with the advice to resubmit async; no sleep.
        let r = get("/async").await;
        assert_eq!(r.status(), 408);
        let outcome = r.extensions().get::<RetryOutcome>().unwrap().clone();
        assert_eq!(outcome.advice, Advice::ResubmitAsync);
        let body = r.text().await.unwrap();
        assert!(body.contains("sync_timeout_upgrade_async"), "{body}");
        // Permanent: one attempt.
        let r = get("/gone").await;
        assert_eq!(r.status(), 410);
        let outcome = r.extensions().get::<RetryOutcome>().unwrap();
        assert!(matches!(
            outcome.advice,
            Advice::Stop(StopReason::Permanent { .. })
        ));
        assert_eq!(hits(&state, "/gone"), 1);
        // Attempts exhausted: 5 attempts, 4 sleeps.
        let r = get("/always").await;
        assert_eq!(r.status(), 502);
        let outcome = r.extensions().get::<RetryOutcome>().unwrap();
        assert_eq!(
            outcome.advice,
            Advice::Stop(StopReason::AttemptsExhausted { attempts: 5 })
        );
        assert_eq!(outcome.received.error.code(), &ErrorCode::UpstreamError);
        assert_eq!(hits(&state, "/always"), 5);
        assert_eq!(sleeps.lock().unwrap().len(), slept + 4);
    })
    .await;
}

#[tokio::test]
async fn a_shared_budget_stops_the_storm() {
    within(async {
        // 50 concurrent requests against an API that always fails; one budget of 100
        // tokens at 5 a retry allows 20 retries in all, not 50 * 4.
        let failures = (0..400)
            .map(|_| error(ApiError::from(ErrorCode::InternalError)))
            .collect();
        let (addr, state) = server(vec![("/down", failures)]).await;
        let sleeps: Sleeps = Arc::default();
        let budget = Arc::new(RetryBudget::new(100, 5, 1));
        let c = client(RetryMiddleware::new(
            retrier(&sleeps).with_budget(Arc::clone(&budget)),
        ));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move {
                    let r = c.get(format!("http://{addr}/down")).send().await.unwrap();
                    r.extensions().get::<RetryOutcome>().unwrap().advice
                })
            })
            .collect();
        let mut stopped_by_budget = 0;
        for t in tasks {
            if t.await.unwrap() == Advice::Stop(StopReason::BudgetExhausted) {
                stopped_by_budget += 1;
            }
        }
        assert_eq!(hits(&state, "/down"), 50 + 20);
        assert_eq!(budget.tokens(), 0);
        assert!(stopped_by_budget >= 30, "{stopped_by_budget}");
    })
    .await;
}

#[tokio::test]
async fn a_streaming_body_is_never_replayed() {
    within(async {
        let (addr, state) = server(vec![(
            "/upload",
            vec![error(ApiError::from(ErrorCode::InternalError))],
        )])
        .await;
        let sleeps: Sleeps = Arc::default();
        let c = client(RetryMiddleware::new(retrier(&sleeps)));
        let body = reqwest::Body::wrap(Full::new(Bytes::from_static(b"payload")));
        let r = c
            .put(format!("http://{addr}/upload"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        let outcome = r.extensions().get::<RetryOutcome>().unwrap();
        assert_eq!(
            outcome.advice,
            Advice::Stop(StopReason::Permanent {
                fix: STREAMING_BODY
            })
        );
        assert_eq!(hits(&state, "/upload"), 1);
        assert!(sleeps.lock().unwrap().is_empty());
        // A request that will not be sent again costs nothing and takes nothing, even from a
        // budget whose last retry is waiting: it still stops for its body, not the budget.
        let (addr, state) = server(vec![(
            "/upload",
            vec![error(ApiError::from(ErrorCode::InternalError))],
        )])
        .await;
        let budget = Arc::new(RetryBudget::new(5, 5, 1));
        let waiting = budget.reserve(Advice::Retry {
            after: Duration::from_secs(1),
            basis: overten_errors::Basis::Backoff,
        });
        let c = client(RetryMiddleware::new(
            retrier(&sleeps).with_budget(Arc::clone(&budget)),
        ));
        let body = reqwest::Body::wrap(Full::new(Bytes::from_static(b"payload")));
        let r = c
            .put(format!("http://{addr}/upload"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.extensions().get::<RetryOutcome>().unwrap().advice,
            Advice::Stop(StopReason::Permanent {
                fix: STREAMING_BODY
            })
        );
        assert_eq!(hits(&state, "/upload"), 1);
        assert_eq!((budget.tokens(), budget.reserved()), (0, 5));
        assert!(waiting.1.is_some_and(|t| !t.is_cancelled()));
    })
    .await;
}

#[tokio::test]
async fn the_idempotency_key_is_the_same_on_every_attempt() {
    within(async {
        let (addr, state) = server(vec![(
            "/generate",
            vec![
                error(ApiError::from(ErrorCode::UpstreamError)),
                error(ApiError::from(ErrorCode::InternalError)),
            ],
        )])
        .await;
        let sleeps: Sleeps = Arc::default();
        let c = client(RetryMiddleware::new(retrier(&sleeps)));
        let r = c
            .post(format!("http://{addr}/generate"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let keys: Vec<_> = state
            .lock()
            .unwrap()
            .seen
            .iter()
            .map(|(_, h)| h.get("idempotency-key").unwrap().clone())
            .collect();
        assert_eq!(keys.len(), 3);
        assert!(keys.iter().all(|k| *k == keys[0]));
        assert_eq!(keys[0].len(), 32);
        // A caller's own key is kept, not replaced.
        let r = c
            .post(format!("http://{addr}/generate"))
            .header("idempotency-key", "mine")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let st = state.lock().unwrap();
        assert_eq!(st.seen.last().unwrap().1["idempotency-key"], "mine");
    })
    .await;
}

#[tokio::test]
async fn a_post_without_a_key_is_not_replayed() {
    within(async {
        let (addr, state) = server(vec![(
            "/generate",
            vec![error(ApiError::from(ErrorCode::UpstreamError))],
        )])
        .await;
        let sleeps: Sleeps = Arc::default();
        let c = client(RetryMiddleware::new(retrier(&sleeps)).idempotency_key(None));
        let r = c
            .post(format!("http://{addr}/generate"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        assert_eq!(
            r.extensions().get::<RetryOutcome>().unwrap().advice,
            Advice::Stop(StopReason::Permanent {
                fix: overten_errors::NOT_REPLAY_SAFE
            })
        );
        assert_eq!(hits(&state, "/generate"), 1);
    })
    .await;
}

#[tokio::test]
async fn a_refused_connection_is_retried_with_backoff() {
    within(async {
        // A port with nothing listening: bind, learn it, close it.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let sleeps: Sleeps = Arc::default();
        let c = client(RetryMiddleware::new(retrier(&sleeps)));
        let err = c.get(format!("http://{addr}/")).send().await.unwrap_err();
        assert!(err.is_connect(), "{err}");
        let sleeps = sleeps.lock().unwrap();
        assert_eq!(sleeps.len(), 4, "5 attempts, 4 backoffs");
        assert!(sleeps[3] >= Duration::from_secs(4) && sleeps[3] <= Duration::from_secs(8));
        // A POST that never connected is safe to send again too.
    })
    .await;
}

#[tokio::test]
async fn a_timed_out_post_without_a_key_is_not_retried() {
    within(async {
        // A server that reads the request and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = Arc::clone(&accepted);
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                open.push(stream);
            }
        });
        let sleeps: Sleeps = Arc::default();
        let inner = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let c = reqwest_middleware::ClientBuilder::new(inner.clone())
            .with(RetryMiddleware::new(retrier(&sleeps)).idempotency_key(None))
            .build();
        let err = c
            .post(format!("http://{addr}/generate"))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(sleeps.lock().unwrap().is_empty());
        // The same timeout on a GET (idempotent) is retried.
        let c = reqwest_middleware::ClientBuilder::new(inner)
            .with(RetryMiddleware::new(retrier(&sleeps)))
            .build();
        let err = c
            .get(format!("http://{addr}/status"))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout());
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1 + 5);
    })
    .await;
}

#[tokio::test]
async fn received_from_reqwest_reads_any_response() {
    within(async {
        let (addr, _) = server(vec![
            ("/html", vec![html(502)]),
            (
                "/big",
                vec![{
                    let mut r = Response::new(vec![b' '; 200_000]);
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    r
                }],
            ),
        ])
        .await;
        let r = reqwest::get(format!("http://{addr}/html")).await.unwrap();
        let received = received_from_reqwest(r).await.unwrap();
        assert_eq!(received.error.status(), 502);
        assert_eq!(received.error.code(), &overten_errors::Code::Missing);
        let r = reqwest::get(format!("http://{addr}/big")).await.unwrap();
        let received = received_from_reqwest(r).await.unwrap();
        assert_eq!(
            received.diagnostics.body,
            Some(overten_errors_http::BodyIssue::TooLarge)
        );
        // Through the middleware, a large error body still reaches the caller whole.
        let (addr, _) = server(vec![(
            "/big-gone",
            vec![{
                let mut r = Response::new(vec![b'x'; 200_000]);
                *r.status_mut() = StatusCode::GONE;
                r.headers_mut().remove("content-length");
                r
            }],
        )])
        .await;
        let sleeps: Sleeps = Arc::default();
        let c = client(RetryMiddleware::new(retrier(&sleeps)));
        let r = c
            .get(format!("http://{addr}/big-gone"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 410);
        assert_eq!(r.url().as_str(), format!("http://{addr}/big-gone"));
        assert!(r.extensions().get::<RetryOutcome>().is_some());
        assert_eq!(r.bytes().await.unwrap().len(), 200_000);
    })
    .await;
}

#[tokio::test]
async fn an_error_body_cut_short_is_a_transport_failure_of_a_sent_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&served);
        tokio::spawn(async move {
            for i in 0..4 {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0; 4096];
                let _ = stream.read(&mut buf).await;
                if i == 0 {
                    // A 503 whose body stops after 11 of the 100 bytes promised.
                    let _ = stream
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"success\":")
                        .await;
                    drop(stream);
                } else {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\nConnection: close\r\n\r\n{\"success\":true}")
                        .await;
                }
            }
        });
        let sleeps: Sleeps = Arc::default();
        let c = client(RetryMiddleware::new(retrier(&sleeps)));
        let response = c.get(format!("http://{addr}/status")).send().await.unwrap();
        assert_eq!(response.status(), 200, "a GET (replay-safe) backs off and retries");
        assert_eq!(sleeps.lock().unwrap().len(), 1);
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
    })
    .await;
}

#[tokio::test]
async fn a_post_carrying_its_own_key_is_replay_safe_when_the_middleware_adds_none() {
    within(async {
        let (addr, state) = server(vec![(
            "/own",
            vec![error(
                ApiError::from(ErrorCode::ServiceUnavailable)
                    .with_retry_after(RetryAfter::Seconds(1)),
            )],
        )])
        .await;
        let sleeps: Sleeps = Arc::default();
        let c = client(RetryMiddleware::new(retrier(&sleeps)).idempotency_key(None));
        let response = c
            .post(format!("http://{addr}/own"))
            .header("idempotency-key", "mine-1")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let seen = state.lock().unwrap().seen.clone();
        assert_eq!(seen.len(), 2, "retried");
        assert!(
            seen.iter().all(|(_, h)| h["idempotency-key"] == "mine-1"),
            "the caller's key, kept"
        );
        // Without a key of its own, and none added, the POST is not replayed.
        let (addr, state) = server(vec![(
            "/bare",
            vec![error(
                ApiError::from(ErrorCode::ServiceUnavailable)
                    .with_retry_after(RetryAfter::Seconds(1)),
            )],
        )])
        .await;
        let c = client(RetryMiddleware::new(retrier(&sleeps)).idempotency_key(None));
        let response = c
            .post(format!("http://{addr}/bare"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(state.lock().unwrap().seen.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_resubmission_after_408_continues_the_attempt_count() {
    within(async {
        let internal = || error(ApiError::from(ErrorCode::InternalError));
        let timeout = error(ApiError::from(ErrorCode::SyncTimeoutUpgradeAsync));
        // Three 500s and a 408 end the sync request at attempt 4; then the async
        // resubmission meets a 500 at attempt 5 = max_attempts: no sixth attempt.
        let (addr, state) = server(vec![(
            "/run",
            vec![
                internal(),
                internal(),
                internal(),
                timeout,
                internal(),
                internal(),
            ],
        )])
        .await;
        let sleeps: Sleeps = Arc::default();
        let c = client(RetryMiddleware::new(retrier(&sleeps)));
        let url = format!("http://{addr}/run");
        let first = c.post(&url).body(r#"{"p":1}"#).send().await.unwrap();
        assert_eq!(first.status(), 408);
        let outcome = first.extensions().get::<RetryOutcome>().unwrap().clone();
        assert_eq!(
            (outcome.advice, outcome.attempts),
            (Advice::ResubmitAsync, 4)
        );
        let again = c
            .post(&url)
            .body(r#"{"p":1,"async":true}"#)
            .with_extension(overten_errors_http::Resubmission::after(&outcome))
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 500);
        let end = again.extensions().get::<RetryOutcome>().unwrap();
        assert_eq!(
            end.advice,
            Advice::Stop(StopReason::AttemptsExhausted { attempts: 5 })
        );
        assert_eq!(hits(&state, "/run"), 5);
        // Without it, the count would start again at 1 and the 500 be retried.
        let (addr, state) = server(vec![("/run", vec![internal()])]).await;
        let fresh = c
            .post(format!("http://{addr}/run"))
            .body(r#"{"p":1,"async":true}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(fresh.status(), 200);
        assert_eq!(hits(&state, "/run"), 2);
    })
    .await;
}

#[tokio::test]
async fn what_is_not_retried_is_not_charged_and_gets_are_sent_without_a_key() {
    within(async {
        let (addr, state) = server(vec![
            (
                "/post",
                vec![error(ApiError::from(ErrorCode::InternalError))],
            ),
            (
                "/get",
                vec![error(ApiError::from(ErrorCode::InternalError))],
            ),
        ])
        .await;
        let sleeps: Sleeps = Arc::default();
        let shared = Arc::new(retrier(&sleeps));
        let c = client(RetryMiddleware::shared(Arc::clone(&shared)).idempotency_key(None));
        // A keyless POST that may not be replayed: stopped, and the budget is not charged.
        let r = c
            .post(format!("http://{addr}/post"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        assert_eq!(shared.budget().tokens(), 100);
        assert_eq!(shared.pacer().held_until(), None);
        // A GET is replay-safe by its method: retried (charged 5, refunded 5 on success),
        // and it never gets an Idempotency-Key.
        let r = c.get(format!("http://{addr}/get")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(shared.budget().tokens(), 100);
        let st = state.lock().unwrap();
        let gets: Vec<_> = st.seen.iter().filter(|(p, _)| p == "/get").collect();
        assert_eq!(gets.len(), 2);
        assert!(gets.iter().all(|(_, h)| !h.contains_key("idempotency-key")));
    })
    .await;
}

/// A success whose window (10 a minute) is spent: `Remaining: 0`, the reset 15 s ahead.
fn spent_success() -> Reply {
    let mut r = Response::new(br#"{"success":true}"#.to_vec());
    for (k, v) in [
        ("x-ratelimit-limit", "10".to_owned()),
        ("x-ratelimit-remaining", "0".to_owned()),
        ("x-ratelimit-reset", (NOW + 15).to_string()),
    ] {
        r.headers_mut().insert(k, v.parse().unwrap());
    }
    r
}

/// Issue 27's defect: a spent window held every key of the client. Two keys through one
/// client: the key whose window is spent waits for its reset; the other key's requests,
/// and requests with no key, go at once.
#[tokio::test]
async fn a_spent_window_holds_only_its_own_key() {
    let (addr, _) = server(vec![("/a", vec![spent_success()])]).await;
    let sleeps = Sleeps::default();
    let http = client(RetryMiddleware::new(moving_retrier(&sleeps)));
    within(async {
        let send = |path: &'static str, key: Option<&'static str>| {
            let mut request = http.get(format!("http://{addr}{path}"));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            request.send()
        };
        assert_eq!(send("/a", Some("sk_live_a")).await.unwrap().status(), 200);
        assert!(sleeps.lock().unwrap().is_empty());
        // Another key, and no key: not held.
        assert_eq!(send("/b", Some("sk_live_b")).await.unwrap().status(), 200);
        assert_eq!(send("/b", None).await.unwrap().status(), 200);
        assert!(
            sleeps.lock().unwrap().is_empty(),
            "{:?}",
            sleeps.lock().unwrap()
        );
        // The spent key: its next request takes the first slot, within one interval (6 s,
        // 10 a minute) of the reset, 15 s ahead.
        assert_eq!(send("/b", Some("sk_live_a")).await.unwrap().status(), 200);
        let waits = sleeps.lock().unwrap().clone();
        assert_eq!(waits.len(), 1, "{waits:?}");
        assert!(
            (Duration::from_secs(15)..Duration::from_secs(21)).contains(&waits[0]),
            "{waits:?}"
        );
    })
    .await;
}

/// Slot mode through the middleware (the default): after its own success
/// said `Remaining: 0` (10 a minute), the key's next requests go one slot (6 s) apart from
/// the reset, not together; another key is not held. The clock moves with each sleep.
#[tokio::test]
async fn slotted_pacers_space_a_spent_keys_requests_one_slot_apart() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (addr, _) = server(vec![("/a", vec![spent_success()])]).await;
    let clock = Arc::new(AtomicU64::new(NOW * 1000));
    let (advanced, read) = (Arc::clone(&clock), Arc::clone(&clock));
    let sleeps = Sleeps::default();
    let log = Arc::clone(&sleeps);
    let retrier = Retrier::new(RetryPolicy::default(), move |wait: Duration| {
        log.lock().unwrap().push(wait);
        advanced.fetch_add(u64::try_from(wait.as_millis()).unwrap(), Ordering::SeqCst);
        std::future::ready(())
    })
    .with_clock(move || SystemTime::UNIX_EPOCH + Duration::from_millis(read.load(Ordering::SeqCst)))
    .with_seed(7)
    .with_pacers(Arc::new(overten_errors::Pacers::new()));
    let http = client(RetryMiddleware::new(retrier));
    within(async {
        let send = |path: &'static str, key: &'static str| {
            http.get(format!("http://{addr}{path}"))
                .bearer_auth(key)
                .send()
        };
        assert_eq!(send("/a", "sk_live_a").await.unwrap().status(), 200);
        assert_eq!(send("/b", "sk_live_b").await.unwrap().status(), 200);
        assert!(sleeps.lock().unwrap().is_empty());
        for _ in 0..3 {
            assert_eq!(send("/b", "sk_live_a").await.unwrap().status(), 200);
        }
        let waits = sleeps.lock().unwrap().clone();
        assert_eq!(waits.len(), 3, "{waits:?}");
        // The first slot: the reset (15 s) plus a point of one interval; then 6 s each.
        assert!(
            waits[0] >= Duration::from_secs(15) && waits[0] < Duration::from_secs(21),
            "{waits:?}"
        );
        assert_eq!(waits[1..], [Duration::from_secs(6), Duration::from_secs(6)]);
        assert_eq!(send("/b", "sk_live_b").await.unwrap().status(), 200);
        assert_eq!(sleeps.lock().unwrap().len(), 3, "key b is not held");
    })
    .await;
}

/// A client whose budget pays one retry (5 tokens) and whose waits end only when the test
/// adds permits to the gate.
fn gated() -> (
    ClientWithMiddleware,
    Arc<RetryBudget>,
    Arc<tokio::sync::Semaphore>,
) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let opener = Arc::clone(&gate);
    let budget = Arc::new(RetryBudget::new(5, 5, 1));
    let retrier = Retrier::new(RetryPolicy::default(), move |_: Duration| {
        let opener = Arc::clone(&opener);
        async move { opener.acquire().await.unwrap().forget() }
    })
    .with_budget(Arc::clone(&budget));
    (client(RetryMiddleware::new(retrier)), budget, gate)
}

/// Waits (at most 3 s) until `tokens` are held by waiting retries.
async fn until_reserved(budget: &RetryBudget, tokens: u32) {
    for _ in 0..3000 {
        if budget.reserved() == tokens {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(budget.reserved(), tokens);
}

#[tokio::test]
async fn a_waiting_retry_is_cancelled_by_a_newer_failure_and_answers_its_last_error() {
    within(async {
        // One retry's worth of tokens; a wait ends only when the test opens the gate.
        let (addr, state) = server(vec![
            ("/a", vec![error(ApiError::from(ErrorCode::InternalError))]),
            ("/b", vec![error(ApiError::from(ErrorCode::UpstreamError))]),
        ])
        .await;
        let (c, budget, gate) = gated();
        let ca = c.clone();
        let a = tokio::spawn(async move { ca.get(format!("http://{addr}/a")).send().await });
        // a's retry waits holding the budget's 5 tokens.
        until_reserved(&budget, 5).await;
        let cb = c.clone();
        let b = tokio::spawn(async move { cb.get(format!("http://{addr}/b")).send().await });
        // b's failure takes a's tokens: a answers its 500 at once, without a second attempt.
        let a = a.await.unwrap().unwrap();
        assert_eq!(a.status(), 500);
        let outcome = a.extensions().get::<RetryOutcome>().unwrap().clone();
        assert_eq!(outcome.advice, Advice::Stop(StopReason::BudgetExhausted));
        assert_eq!(outcome.attempts, 1);
        assert_eq!(outcome.received.error.code().as_str(), "internal_error");
        assert_eq!(hits(&state, "/a"), 1);
        // b's retry goes when its wait ends, and succeeds.
        gate.add_permits(1);
        let b = b.await.unwrap().unwrap();
        assert_eq!(b.status(), 200);
        assert_eq!(hits(&state, "/b"), 2);
        assert_eq!(
            (budget.tokens(), budget.reserved()),
            (5, 0),
            "b's success paid back"
        );
    })
    .await;
}

#[tokio::test]
async fn a_refused_request_whose_retry_a_newer_failure_took_ends_with_its_error() {
    within(async {
        // A port nobody listens on: every attempt is refused (never sent, always retryable).
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let (c, budget, _gate) = gated();
        let ca = c.clone();
        let a = tokio::spawn(async move { ca.get(format!("http://{addr}/a")).send().await });
        until_reserved(&budget, 5).await;
        let cb = c.clone();
        let b = tokio::spawn(async move { cb.get(format!("http://{addr}/b")).send().await });
        // a ends with its refusal while every wait is still closed: it was not sent again.
        let a = tokio::time::timeout(Duration::from_secs(10), a)
            .await
            .expect("a ends once a newer failure takes its retry's tokens")
            .unwrap();
        assert!(a.is_err());
        assert_eq!(budget.reserved(), 5, "b's retry waits");
        b.abort();
    })
    .await;
}

#[tokio::test]
async fn a_refused_streamed_request_takes_nothing_from_the_budget() {
    within(async {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let (c, budget, _gate) = gated();
        let (_, waiting) = budget.reserve(Advice::Retry {
            after: Duration::from_secs(1),
            basis: overten_errors::Basis::Backoff,
        });
        let body = reqwest::Body::wrap(Full::new(Bytes::from_static(b"payload")));
        let r = c
            .put(format!("http://{addr}/upload"))
            .body(body)
            .send()
            .await;
        assert!(
            r.is_err(),
            "refused, and a streamed body is never sent twice"
        );
        assert_eq!((budget.tokens(), budget.reserved()), (0, 5));
        assert!(waiting.is_some_and(|t| !t.is_cancelled()));
    })
    .await;
}
