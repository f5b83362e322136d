//! `RetryMiddleware`'s traces, in a process of their own: one global subscriber, so no
//! other test's thread can leave these callsites' interest cached as "never".

#![cfg(feature = "reqwest")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "support/logs.rs"]
mod logs;
#[path = "support/mod.rs"]
mod support;

use logs::Logs;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use overten_errors::{ApiError, ErrorCode, RetryPolicy};
use overten_errors_http::{Retrier, RetryMiddleware, into_response};

type Sleeps = Arc<Mutex<Vec<Duration>>>;

fn client(
    sleeps: &Sleeps,
    seen: Arc<Mutex<Vec<String>>>,
) -> reqwest_middleware::ClientWithMiddleware {
    let log = Arc::clone(sleeps);
    let retrier = Retrier::new(RetryPolicy::default(), move |d| {
        log.lock().unwrap().push(d);
        std::future::ready(())
    });
    let middleware = RetryMiddleware::new(retrier).on_decision(move |e| {
        seen.lock()
            .unwrap()
            .push(format!("{} {} {}", e.method, e.url, e.attempt));
    });
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build()
}

#[tokio::test]
async fn every_attempt_and_decision_is_traced_with_opentelemetry_names() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        // /busy: a 503 with a request id, then 200.
        let served = Arc::new(Mutex::new(0u32));
        let count = Arc::clone(&served);
        let addr = support::serve("127.0.0.1:0".parse().unwrap(), move |_: Request<Bytes>| {
            let mut n = count.lock().unwrap();
            *n += 1;
            let reply: Response<Vec<u8>> = if *n == 1 {
                into_response(
                    &ApiError::from(ErrorCode::ServiceUnavailable).with_request_id("req_traced_1"),
                )
            } else {
                Response::new(br#"{"success":true}"#.to_vec())
            };
            reply.map(|b| Full::new(Bytes::from(b)).boxed_unsync())
        })
        .await
        .unwrap();
        let sleeps: Sleeps = Arc::default();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let c = client(&sleeps, Arc::clone(&seen));
        let url = format!("http://{addr}/busy?token=secret#frag");
        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let redacted = format!("http://{addr}/busy");
        for want in [
            "overten.request".to_owned(),
            "otel.kind=\"client\"".to_owned(),
            "http.request.method=GET".to_owned(),
            format!("url.full={redacted}"),
            "http.response.status_code=503".to_owned(),
            "error.type=service_unavailable".to_owned(),
            "request_id=\"req_traced_1\"".to_owned(),
            "http.request.resend_count=0".to_owned(),
            "http.request.resend_count=1".to_owned(),
            "http.response.status_code=200".to_owned(),
            "basis=\"wait_window\"".to_owned(),
            "wait_ms=".to_owned(),
            "budget.tokens=80".to_owned(),
            "step=\"wait_window\"".to_owned(),
        ] {
            assert!(text.contains(&want), "{want} missing from:\n{text}");
        }
        assert!(!text.contains("secret"), "the query leaked:\n{text}");
        assert_eq!(*seen.lock().unwrap(), vec![format!("GET {redacted} 1")]);

        // A port nothing listens on: refused connections, traced as `connect`, retried
        // (they never reached a server) until max_attempts.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let refused: Sleeps = Arc::default();
        let c = client(&refused, Arc::default());
        assert!(
            c.get(format!("http://127.0.0.1:{port}/x"))
                .send()
                .await
                .is_err()
        );
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("error.type=\"connect\""), "{text}");
        assert!(text.contains("step=\"attempts\""), "{text}");
        assert_eq!(refused.lock().unwrap().len(), 4);
    })
    .await
    .expect("test took longer than 30 s");
}
