//! An app behind the gateway stack, for tests/gateway.rs and tests/redis.rs.
#![allow(dead_code, unreachable_pub, reason = "each test file uses a part")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::needless_pass_by_value,
    clippy::single_match_else,
    reason = "test support: a broken server must fail the test loudly"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Extension, Query};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use overten_errors::Tier;
use overten_gateway::{Account, GatewayLayer, RunPermit, stack};

/// 30 s into a minute: no test crosses a window.
pub const NOW: u64 = 60 * 28_000_000 + 30;

pub fn fixed_now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
}

/// Runs in progress right now, and the most seen at once.
#[derive(Debug, Default)]
pub struct Gauge {
    pub now: AtomicUsize,
    pub max: AtomicUsize,
    pub done: AtomicUsize,
}

struct InProgress(Arc<Gauge>);

impl InProgress {
    fn start(g: &Arc<Gauge>) -> InProgress {
        let n = g.now.fetch_add(1, Ordering::SeqCst) + 1;
        g.max.fetch_max(n, Ordering::SeqCst);
        InProgress(Arc::clone(g))
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
        self.0.done.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(serde::Deserialize)]
struct Ms {
    ms: Option<u64>,
}

/// The routes: `GET /ok` (the account's org and tier), `POST /runs?ms=` (a run that takes
/// `ms`, counted in the gauge), `POST /panic`, `POST /async?ms=` (202 at once; a task holds
/// the permit for `ms`), `POST /upload` (reads the body as a stream, answers `{"read":n}`, with
/// 413 when the limit stopped it), `GET /batch/x`.
pub fn app(gateway: GatewayLayer, gauge: Arc<Gauge>) -> Router {
    let runs = Arc::clone(&gauge);
    let held = Arc::clone(&gauge);
    Router::new()
        .route(
            "/ok",
            get(|Extension(a): Extension<Account>| async move {
                format!("{} {}", a.org_id, a.tier)
            }),
        )
        .route(
            "/runs",
            post(move |Query(q): Query<Ms>| {
                let g = Arc::clone(&runs);
                async move {
                    let _in = InProgress::start(&g);
                    tokio::time::sleep(Duration::from_millis(q.ms.unwrap_or(0))).await;
                    "done"
                }
            }),
        )
        .route(
            "/panic",
            post(|| async {
                std::panic::panic_any("secret panic text: db-7 password".to_owned());
                #[allow(unreachable_code, reason = "the handler's return type")]
                "unreachable"
            }),
        )
        .route(
            "/async",
            post(
                move |Extension(permit): Extension<RunPermit>, Query(q): Query<Ms>| {
                    let g = Arc::clone(&held);
                    async move {
                        let task = InProgress::start(&g);
                        tokio::spawn(async move {
                            let _permit = permit;
                            let _task = task;
                            tokio::time::sleep(Duration::from_millis(q.ms.unwrap_or(0))).await;
                        });
                        (http::StatusCode::ACCEPTED, "queued")
                    }
                },
            ),
        )
        .route(
            "/upload",
            post(|body: axum::body::Body| async move {
                let mut body = body;
                let mut read = 0usize;
                let mut status = http::StatusCode::OK;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(f) => read += f.data_ref().map_or(0, bytes::Buf::remaining),
                        Err(_) => {
                            status = http::StatusCode::PAYLOAD_TOO_LARGE;
                            break;
                        }
                    }
                }
                // JSON, so the envelope layer passes it through with the count.
                let json = [(http::header::CONTENT_TYPE, "application/json")];
                (status, json, format!(r#"{{"read":{read}}}"#))
            }),
        )
        .route("/batch/x", get(|| async { "batch" }))
        .layer(stack(gateway))
}

pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

pub async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test took too long")
}

/// Polls `check` every 20 ms until it holds, failing with `what` after `secs`: a wait on
/// an event (a permit's release, a reconnect) that assumes nothing of the machine's speed.
pub async fn eventually<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One answer, as a client sees it.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<u64> {
        self.headers.get(name)?.to_str().ok()?.parse().ok()
    }

    pub fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        v["error"].as_str().unwrap_or("").to_owned()
    }
}

/// A client on a pool of its own.
pub fn client() -> reqwest_like::Client {
    reqwest_like::Client::new()
}

/// A tiny HTTP/1.1 client on hyper, so these tests need no reqwest feature.
pub mod reqwest_like {
    use super::Got;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client as Hyper;
    use hyper_util::rt::TokioExecutor;
    use std::net::SocketAddr;

    #[derive(Clone)]
    pub struct Client(Hyper<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>);

    impl Client {
        pub fn new() -> Client {
            Client(Hyper::builder(TokioExecutor::new()).build_http())
        }

        pub async fn send(
            &self,
            addr: SocketAddr,
            method: http::Method,
            path: &str,
            key: Option<&str>,
            body: Vec<u8>,
        ) -> Got {
            let auth = key.map(|k| ("authorization", format!("Bearer {k}")));
            self.send_with(addr, method, path, auth.as_slice(), body)
                .await
        }

        pub async fn send_with(
            &self,
            addr: SocketAddr,
            method: http::Method,
            path: &str,
            headers: &[(&str, String)],
            body: Vec<u8>,
        ) -> Got {
            let mut req = http::Request::builder()
                .method(method)
                .uri(format!("http://{addr}{path}"));
            for (name, value) in headers {
                req = req.header(*name, value.as_str());
            }
            let resp = self
                .0
                .request(req.body(Full::new(Bytes::from(body))).unwrap())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            Got {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        }

        pub async fn get(&self, addr: SocketAddr, path: &str, key: Option<&str>) -> Got {
            self.send(addr, http::Method::GET, path, key, Vec::new())
                .await
        }

        pub async fn post(&self, addr: SocketAddr, path: &str, key: Option<&str>) -> Got {
            self.send(addr, http::Method::POST, path, key, Vec::new())
                .await
        }
    }
}

/// Accounts for the keys `sk_live_k0` .. `sk_live_k{n-1}`, orgs `org_0` .., on the tiers
/// of [`tier_of`].
pub fn accounts(n: usize) -> Arc<overten_gateway::MemoryAccounts> {
    let accounts = overten_gateway::MemoryAccounts::new();
    for i in 0..n {
        accounts.insert(
            &format!("sk_live_k{i}"),
            Account::new(format!("org_{i}"), tier_of(i)),
        );
    }
    Arc::new(accounts)
}

/// Which tier each of `n` keys is on: free, pro, enterprise in turn.
pub fn tier_of(i: usize) -> Tier {
    Tier::ALL[i % 3]
}
