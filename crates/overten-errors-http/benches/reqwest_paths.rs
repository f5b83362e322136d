//! The reqwest middleware's cost, beside bare reqwest, over real HTTP on loopback in one run.
//!
//! Run: `cargo bench -p overten-errors-http --features reqwest,tokio --bench reqwest_paths`.
//! `verify()` first proves each pair does the same work (same status, same decision).
//!
//! - `success`: a 200 through the middleware (default policy) vs the same request with bare reqwest, and
//!   through reqwest-middleware with a middleware that only passes it on (the framework's
//!   own cost);
//! - `error_429`: a 429 read into a typed error and decided: by the middleware (a policy of
//!   one attempt, so it decides and stops) vs bare reqwest + `received_from_reqwest` +
//!   `Retrier::decide_unpaid`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark binary: a broken contender must abort the run"
)]

mod passthrough;
#[path = "../tests/support/mod.rs"]
mod support;
use passthrough::PassThrough;

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use overten_errors::{Advice, ApiError, ErrorCode, RateLimit, RetryAfter, RetryPolicy, StopReason};
use overten_errors_http::{
    Retrier, RetryMiddleware, RetryOutcome, into_response, received_from_reqwest,
    set_rate_limit_headers, set_request_id,
};

/// The rate-limit headers of the 200 (a window with budget left: nothing is held).
const RATE_LIMIT: RateLimit = RateLimit {
    limit: 60,
    remaining: 42,
    reset: 1_713_312_345,
};

type Sleeper = fn(Duration) -> std::future::Ready<()>;

fn no_sleep(_: Duration) -> std::future::Ready<()> {
    std::future::ready(())
}

struct World {
    rt: tokio::runtime::Runtime,
    ok: String,
    limited: String,
    bare: reqwest::Client,
    /// `RetryMiddleware` with the default policy, as a user runs it (a retry stays possible,
    /// so every attempt keeps a copy of the request).
    wrapped: reqwest_middleware::ClientWithMiddleware,
    /// The same with the previous default's pacers (`Pacers::hold_only`): what slot pacing
    /// (a count per attempt, every response's window read) costs against the hold.
    wrapped_hold: reqwest_middleware::ClientWithMiddleware,
    /// `RetryMiddleware` with a policy of one attempt: a 429 is decided, then stopped.
    one_attempt: reqwest_middleware::ClientWithMiddleware,
    /// reqwest-middleware with one middleware that only passes the request on: what the
    /// framework itself costs, apart from ours.
    passthrough: reqwest_middleware::ClientWithMiddleware,
    retrier: Retrier<Sleeper>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr = rt.block_on(async {
            support::serve("127.0.0.1:0".parse().unwrap(), |req| {
                let body: http::Response<Vec<u8>> = if req.uri().path() == "/limited" {
                    into_response(
                        &ApiError::from(ErrorCode::RateLimitExceeded)
                            .with_request_id("req_8f2c61d0a9b34e7f5c1d2e3f")
                            .with_retry_after(RetryAfter::Seconds(42)),
                    )
                } else {
                    // The page: "Every response includes rate-limit headers"; and an id.
                    let mut ok = http::Response::new(br#"{"success":true}"#.to_vec());
                    set_rate_limit_headers(ok.headers_mut(), &RATE_LIMIT);
                    set_request_id(ok.headers_mut(), "req_8f2c61d0a9b34e7f5c1d2e3f");
                    ok
                };
                body.map(|b| Full::new(Bytes::from(b)).boxed_unsync())
            })
            .await
            .unwrap()
        });
        let one_attempt = RetryPolicy::builder().max_attempts(1).build().unwrap();
        World {
            rt,
            ok: format!("http://{addr}/ok"),
            limited: format!("http://{addr}/limited"),
            bare: reqwest::Client::new(),
            wrapped: reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(RetryMiddleware::new(Retrier::new(
                    RetryPolicy::default(),
                    no_sleep as Sleeper,
                )))
                .build(),
            wrapped_hold: reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(RetryMiddleware::new(
                    Retrier::new(RetryPolicy::default(), no_sleep as Sleeper)
                        .with_pacer(std::sync::Arc::new(overten_errors::Pacer::hold_only()))
                        .with_pacers(std::sync::Arc::new(overten_errors::Pacers::hold_only())),
                ))
                .build(),
            one_attempt: reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(RetryMiddleware::new(Retrier::new(
                    one_attempt,
                    no_sleep as Sleeper,
                )))
                .build(),
            passthrough: reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(PassThrough)
                .build(),
            retrier: Retrier::new(one_attempt, no_sleep as Sleeper),
        }
    })
}

/// A GET of the 200 through `client`, its body read: the status.
fn through(w: &World, client: &reqwest_middleware::ClientWithMiddleware) -> u16 {
    w.rt.block_on(async {
        let r = client.get(&w.ok).send().await.unwrap();
        let status = r.status().as_u16();
        r.bytes().await.unwrap();
        status
    })
}

fn passthrough_success(w: &World) -> u16 {
    through(w, &w.passthrough)
}

fn bare_success(w: &World) -> u16 {
    w.rt.block_on(async {
        let r = w.bare.get(&w.ok).send().await.unwrap();
        let status = r.status().as_u16();
        r.bytes().await.unwrap();
        status
    })
}

fn middleware_success(w: &World) -> u16 {
    through(w, &w.wrapped)
}

fn middleware_hold_success(w: &World) -> u16 {
    through(w, &w.wrapped_hold)
}

fn bare_429(w: &World) -> Advice {
    w.rt.block_on(async {
        let r = w.bare.get(&w.limited).send().await.unwrap();
        let received = received_from_reqwest(r).await.unwrap();
        w.retrier.decide_unpaid(&received.error, 1).advice
    })
}

fn middleware_429(w: &World) -> Advice {
    w.rt.block_on(async {
        let r = w.one_attempt.get(&w.limited).send().await.unwrap();
        let advice = r.extensions().get::<RetryOutcome>().unwrap().advice;
        r.bytes().await.unwrap();
        advice
    })
}

fn verify() {
    let w = world();
    assert_eq!(bare_success(w), 200);
    assert_eq!(middleware_success(w), 200);
    assert_eq!(passthrough_success(w), 200);
    assert_eq!(middleware_hold_success(w), 200);
    let stop = Advice::Stop(StopReason::AttemptsExhausted { attempts: 1 });
    assert_eq!(bare_429(w), stop);
    assert_eq!(middleware_429(w), stop);
}

fn main() {
    verify();
    divan::main();
}

mod success {
    #[divan::bench]
    fn bare_reqwest() -> u16 {
        super::bare_success(super::world())
    }

    #[divan::bench]
    fn retry_middleware() -> u16 {
        super::middleware_success(super::world())
    }

    #[divan::bench]
    fn retry_middleware_hold_pacing() -> u16 {
        super::middleware_hold_success(super::world())
    }

    #[divan::bench]
    fn passthrough_middleware() -> u16 {
        super::passthrough_success(super::world())
    }
}

mod error_429 {
    #[divan::bench]
    fn bare_reqwest_classify_decide() -> overten_errors::Advice {
        super::bare_429(super::world())
    }

    #[divan::bench]
    fn retry_middleware() -> overten_errors::Advice {
        super::middleware_429(super::world())
    }
}
