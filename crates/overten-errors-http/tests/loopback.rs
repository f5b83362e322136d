//! Every error and some successes through a real HTTP server and client on 127.0.0.1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on broken fixtures"
)]

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use overten_errors::{
    Advice, ApiError, Basis, BodyError, Code, ErrorCode, RateLimit, RetryAfter, RetryAfterError,
    RetryPolicy, SplitMix64, StopReason, Tier,
};
use overten_errors_http::mock::Gateway;
use overten_errors_http::{
    BodyIssue, HeaderError, MAX_BODY_BYTES, Received, classify_response, into_response,
    set_rate_limit_headers, set_request_id,
};
use support::Body;

const RESET: u64 = 1_713_312_345;
const DATE_42S_AFTER_NOW: &str = "Sun, 06 Nov 1994 08:50:19 GMT";

/// RFC 9110's sample date, 42 s before `DATE_42S_AFTER_NOW`.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A body sent in chunks with no length known up front (HTTP/1.1 chunked encoding).
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fn raw(status: u16, headers: &[(&str, &[u8])], body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        r.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    r
}

#[allow(
    clippy::needless_pass_by_value,
    reason = "the serve() handler signature"
)]
fn handler(req: Request<Bytes>) -> Response<Body> {
    let path = req.uri().path();
    let rl = RateLimit {
        limit: 60,
        remaining: 41,
        reset: RESET,
    };
    if let Some(wire) = path.strip_prefix("/errors/") {
        let Some(code) = ErrorCode::from_wire(wire) else {
            return into_response::<Vec<u8>>(&ApiError::from(ErrorCode::NotFound)).map(full);
        };
        let mut err = ApiError::from(code)
            .with_request_id(format!("req_{wire}"))
            .with_rate_limit(rl)
            .with_cause(std::io::Error::other("SECRET internal detail"));
        match code {
            ErrorCode::RateLimitExceeded => err = err.with_retry_after(RetryAfter::Seconds(42)),
            ErrorCode::ServiceUnavailable => err = err.with_retry_after(RetryAfter::Seconds(30)),
            _ => {}
        }
        return into_response::<Vec<u8>>(&err).map(full);
    }
    match path {
        "/ok" => {
            let mut r = Response::new(full(&br#"{"success":true,"run_id":"run_1"}"#[..]));
            set_rate_limit_headers(r.headers_mut(), &rl);
            set_request_id(r.headers_mut(), "req_ok");
            r
        }
        "/html" => raw(
            502,
            &[("content-type", b"text/html")],
            full(&b"<html><body><h1>502 Bad Gateway</h1>nginx/1.25 upstream 10.0.0.7</body></html>"[..]),
        ),
        "/empty" => raw(503, &[], full(Bytes::new())),
        "/truncated" => raw(500, &[], full(&br#"{"success":false,"error":"inter"#[..])),
        "/not-utf8" => raw(500, &[], full(&b"\xff\xfe\x00{"[..])),
        "/deep" => raw(
            500,
            &[],
            full(format!(
                r#"{{"success":false,"error":"internal_error","message":{}1{}}}"#,
                "[".repeat(20_000),
                "]".repeat(20_000)
            )),
        ),
        "/huge" => raw(500, &[], full(vec![b' '; MAX_BODY_BYTES + 1])),
        "/huge-chunked" => raw(
            500,
            &[],
            Chunks((0..40).map(|_| Bytes::from(vec![b' '; 4096])).collect()).boxed_unsync(),
        ),
        "/unknown" => raw(
            503,
            &[("x-request-id", b"req_new")],
            full(&br#"{"success":false,"error":"quota_frozen","message":"Quota frozen","task_id":"task_7"}"#[..]),
        ),
        "/date" => raw(
            429,
            &[("retry-after", DATE_42S_AFTER_NOW.as_bytes())],
            full(ApiError::from(ErrorCode::RateLimitExceeded).to_json()),
        ),
        "/hostile" => raw(
            429,
            &[
                ("retry-after", b"-3"),
                ("x-ratelimit-limit", b"abc"),
                ("x-ratelimit-remaining", b"0"),
                ("x-ratelimit-reset", b"1"),
                ("x-request-id", b"req_\xe9"),
            ],
            full(ApiError::from(ErrorCode::RateLimitExceeded).to_json()),
        ),
        "/dup" => raw(
            503,
            &[
                ("retry-after", b"5"),
                ("retry-after", b"5"),
                ("x-ratelimit-limit", b"99999999999"),
                ("x-ratelimit-remaining", b"1"),
                ("x-ratelimit-remaining", b"2"),
                ("x-ratelimit-reset", b"1"),
            ],
            full(ApiError::from(ErrorCode::ServiceUnavailable).to_json()),
        ),
        "/huge-retry-after" => raw(
            429,
            &[("retry-after", b"99999999999999999999999")],
            full(ApiError::from(ErrorCode::RateLimitExceeded).to_json()),
        ),
        _ => into_response::<Vec<u8>>(&ApiError::from(ErrorCode::NotFound)).map(full),
    }
}

type Check = fn(&Option<BodyIssue>) -> bool;

async fn fetch(addr: std::net::SocketAddr, path: &str) -> (http::response::Parts, Received) {
    let response = support::get(addr, path, &[]).await.unwrap();
    // Keep the raw parts for header checks, and classify a rebuilt response from the
    // same bytes as they crossed the wire.
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let rebuilt = Response::from_parts(parts.clone(), Full::new(bytes));
    (parts, classify_response(rebuilt).await.unwrap())
}

/// The default decision with named waits exact (`wait_spread` 0): these tests check what
/// crossed the wire; the spread is tested in the core.
fn advise(r: &Received, attempt: u32) -> Advice {
    r.advise(
        &RetryPolicy::builder().wait_spread(0.0).build().unwrap(),
        attempt,
        now(),
        &mut SplitMix64::new(3),
    )
}

/// The test server of this file on a free loopback port.
async fn start() -> std::net::SocketAddr {
    support::serve("127.0.0.1:0".parse().unwrap(), handler)
        .await
        .unwrap()
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test finished within its time bound")
}

#[tokio::test]
async fn every_error_crosses_the_wire_intact() {
    within(async {
        let addr = start().await;
        for &code in ErrorCode::ALL {
            let (parts, received) = fetch(addr, &format!("/errors/{code}")).await;
            let h = &parts.headers;
            assert_eq!(parts.status.as_u16(), code.status(), "{code}");
            assert_eq!(h["content-type"], "application/json");
            assert_eq!(h["x-request-id"], format!("req_{code}").as_str());
            assert_eq!(h["x-ratelimit-limit"], "60");
            assert_eq!(h["x-ratelimit-remaining"], "41");
            assert_eq!(h["x-ratelimit-reset"], RESET.to_string().as_str());
            let retry_after = h.get("retry-after").map(|v| v.to_str().unwrap());
            match code.status() {
                429 => assert_eq!(retry_after, Some("42")),
                503 => assert_eq!(retry_after, Some("30")),
                _ => assert_eq!(retry_after, None, "{code}"),
            }

            let err = &received.error;
            assert!(
                received.diagnostics.is_clean(),
                "{code}: {:?}",
                received.diagnostics
            );
            assert_eq!(err.code(), &code);
            assert_eq!(err.message(), code.when());
            assert_eq!(err.request_id(), Some(format!("req_{code}").as_str()));
            assert!(!err.to_string().contains("SECRET"));
            assert_eq!(
                err.rate_limit(),
                Some(RateLimit {
                    limit: 60,
                    remaining: 41,
                    reset: RESET
                })
            );

            let advice = advise(&received, 1);
            let expected = match code.status() {
                408 => Advice::ResubmitAsync,
                429 => Advice::Retry {
                    after: Duration::from_secs(42),
                    basis: Basis::RetryAfter,
                },
                503 => Advice::Retry {
                    after: Duration::from_secs(30),
                    basis: Basis::RetryAfter,
                },
                500 | 502 => {
                    assert!(
                        matches!(
                            advice,
                            Advice::Retry {
                                basis: Basis::Backoff,
                                ..
                            }
                        ),
                        "{code}"
                    );
                    advice
                }
                _ => Advice::Stop(StopReason::Permanent { fix: code.fix() }),
            };
            assert_eq!(advice, expected, "{code}");
        }
    })
    .await;
}

#[tokio::test]
async fn bodies_that_cannot_say_leave_it_to_the_status() {
    within(async {
        let addr = start().await;
        let cases: &[(&str, u16, Check)] = &[
            ("/html", 502, |b| {
                matches!(b, Some(BodyIssue::NotAnEnvelope(BodyError::Json { .. })))
            }),
            ("/empty", 503, |b| {
                matches!(b, Some(BodyIssue::NotAnEnvelope(BodyError::Empty)))
            }),
            ("/truncated", 500, |b| {
                matches!(b, Some(BodyIssue::NotAnEnvelope(BodyError::Json { .. })))
            }),
            ("/not-utf8", 500, |b| {
                matches!(b, Some(BodyIssue::NotAnEnvelope(BodyError::Json { .. })))
            }),
            ("/huge", 500, |b| matches!(b, Some(BodyIssue::TooLarge))),
            ("/huge-chunked", 500, |b| {
                matches!(b, Some(BodyIssue::TooLarge))
            }),
        ];
        for (path, status, body_check) in cases {
            let (_, received) = fetch(addr, path).await;
            let err = &received.error;
            assert!(
                body_check(&received.diagnostics.body),
                "{path}: {:?}",
                received.diagnostics
            );
            assert_eq!(err.status(), *status, "{path}");
            assert_eq!(err.code(), &Code::Missing);
            // The public message is the page's text for the status, never the body.
            let info = overten_errors::status_info(*status).unwrap();
            assert_eq!(err.message(), info.scenario, "{path}");
            assert!(!err.message().contains("nginx"));
            // 5xx: transient by the page's rule.
            assert!(
                matches!(advise(&received, 1), Advice::Retry { .. }),
                "{path}"
            );
        }
        // A body nested past 128 levels is no envelope, even one that names a code, so that
        // clients with recursive parsers read it the same way (docs/retry.md).
        let (_, received) = fetch(addr, "/deep").await;
        assert!(matches!(
            received.diagnostics.body,
            Some(BodyIssue::NotAnEnvelope(BodyError::TooDeep))
        ));
        assert_eq!(received.error.code(), &Code::Missing);
        assert_eq!(
            received.error.message(),
            overten_errors::status_info(500).unwrap().scenario
        );
    })
    .await;
}

#[tokio::test]
async fn unknown_codes_and_hard_headers() {
    within(async {
        let addr = start().await;

        let (_, r) = fetch(addr, "/unknown").await;
        assert_eq!(r.error.code(), &Code::Unknown("quota_frozen".into()));
        assert_eq!(
            (r.error.message(), r.error.request_id()),
            ("Quota frozen", Some("req_new"))
        );
        assert_eq!(r.error.task_id(), Some("task_7"));
        // A 503 waits in the window whatever its code.
        assert!(matches!(
            advise(&r, 1),
            Advice::Retry {
                basis: Basis::WaitWindow,
                ..
            }
        ));

        let (_, r) = fetch(addr, "/date").await;
        assert!(r.diagnostics.is_clean());
        assert_eq!(
            advise(&r, 1),
            Advice::Retry {
                after: Duration::from_secs(42),
                basis: Basis::RetryAfter
            }
        );

        let (_, r) = fetch(addr, "/hostile").await;
        assert_eq!(
            r.diagnostics.retry_after,
            Some(HeaderError::RetryAfter(RetryAfterError::Negative))
        );
        let (name, e) = r.diagnostics.rate_limit.unwrap();
        assert_eq!(
            (name.as_str(), e),
            ("x-ratelimit-limit", HeaderError::NotANumber)
        );
        assert_eq!(r.diagnostics.request_id, Some(HeaderError::NotText));
        assert_eq!(r.error.request_id(), None);
        // With every hint unusable, a 429 waits the page's 30 s rather than spinning,
        // hanging, or backing off for a second inside a per-minute window.
        assert_eq!(
            advise(&r, 1),
            Advice::Retry {
                after: Duration::from_secs(30),
                basis: Basis::RateLimitDefault
            }
        );

        let (_, r) = fetch(addr, "/dup").await;
        assert_eq!(
            r.diagnostics.retry_after, None,
            "identical duplicates are one value"
        );
        assert_eq!(r.error.retry_after(), Some(RetryAfter::Seconds(5)));
        let (name, e) = r.diagnostics.rate_limit.unwrap();
        assert_eq!(
            (name.as_str(), e),
            ("x-ratelimit-limit", HeaderError::Overflow)
        );

        let (_, r) = fetch(addr, "/huge-retry-after").await;
        assert!(matches!(
            advise(&r, 1),
            Advice::Stop(StopReason::WaitTooLong { .. })
        ));

        let (parts, _) = fetch(addr, "/ok").await;
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers["x-request-id"], "req_ok");
        assert_eq!(parts.headers["x-ratelimit-remaining"], "41");
    })
    .await;
}

#[tokio::test]
async fn mock_gateway_over_http() {
    within(async {
        let gateway = Arc::new(Mutex::new(Gateway::new(Tier::Free, 9)));
        let gw = Arc::clone(&gateway);
        let addr = support::serve("127.0.0.1:0".parse().unwrap(), move |req| {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let response = gw.lock().unwrap().handle(&req, now);
            response.map(full)
        })
        .await
        .unwrap();

        let r = support::get(addr, "/errors/gone", &[]).await.unwrap();
        let r = classify_response(r).await.unwrap();
        assert_eq!(r.error.code(), &ErrorCode::InvalidApiKey);

        let auth = [("authorization", "Bearer sk_live_test")];
        let mut statuses = Vec::new();
        for _ in 0..=Tier::Free.requests_per_minute() {
            let r = support::get(addr, "/errors/gone", &auth).await.unwrap();
            let r = classify_response(r).await.unwrap();
            assert!(r.error.request_id().is_some_and(|id| id.len() == 28));
            assert!(r.error.rate_limit().is_some());
            statuses.push((r.error.status(), r.error.retry_after()));
        }
        // A minute boundary can fall inside the loop; then the count restarts once.
        let gone = statuses.iter().filter(|(s, _)| *s == 410).count();
        assert!(gone >= 10, "{statuses:?}");
        if let Some((429, ra)) = statuses.last() {
            assert!(matches!(ra, Some(RetryAfter::Seconds(1..=60))), "{ra:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn an_idle_connection_is_dropped_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(async {
        let options = support::Options {
            header_read_timeout: Duration::from_millis(200),
            ..support::Options::default()
        };
        let addr = support::serve_with("127.0.0.1:0".parse().unwrap(), options, handler)
            .await
            .unwrap();
        // Half a request head, then nothing: the server hangs up (408 or a bare close).
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        // Closed cleanly or reset: either ends the read; only a hang fails the timeout.
        let _closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
            .await
            .expect("the server closes an idle connection");
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(!buf.starts_with(b"HTTP/1.1 200"), "no request was answered");
        // The server is still up for the next client.
        let r = support::get(addr, "/unknown", &[]).await.unwrap();
        assert_eq!(r.status(), 503);
    })
    .await;
}

#[tokio::test]
async fn accept_errors_pause_the_loop_but_never_end_it() {
    within(async {
        // An acceptor that fails like a process out of descriptors, then recovers.
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (c, a) = (Arc::clone(&calls), Arc::clone(&accepted));
        let run = support::accept_forever(
            move || {
                let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if n < 3 {
                        Err(std::io::Error::from_raw_os_error(24)) // EMFILE
                    } else {
                        // A real accept waits for a client.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Ok(n)
                    }
                }
            },
            move |_| {
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            },
            Duration::from_millis(10),
        );
        // It runs for ever; stop it after a while and look at what it did.
        let _ = tokio::time::timeout(Duration::from_millis(300), async {
            run.await;
        })
        .await;
        assert!(calls.load(std::sync::atomic::Ordering::SeqCst) > 3);
        assert!(
            accepted.load(std::sync::atomic::Ordering::SeqCst) > 0,
            "it recovered"
        );
    })
    .await;
}

#[tokio::test]
async fn the_mock_takes_async_as_a_post_body_over_http() {
    within(async {
        let gateway = Arc::new(Mutex::new(Gateway::new(Tier::Enterprise, 5)));
        let addr = support::serve("127.0.0.1:0".parse().unwrap(), move |req| {
            gateway.lock().unwrap().handle(&req, 1_000).map(full)
        })
        .await
        .unwrap();
        let auth = [("authorization", "bearer  sk_live_post")];
        let r = support::send(
            addr,
            http::Method::POST,
            "/errors/sync_timeout_upgrade_async",
            &auth,
            Bytes::from_static(br#"{"async": true}"#),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 202);
        let r = support::get(addr, "/errors/rate%5Flimit%5Fexceeded", &auth)
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        let r = support::get(addr, "/errors/brand_new_code?status=503", &auth)
            .await
            .unwrap();
        let r = classify_response(r).await.unwrap();
        assert_eq!(
            (r.error.status(), r.error.code().as_str()),
            (503, "brand_new_code")
        );
    })
    .await;
}
