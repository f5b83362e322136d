//! `overten-errors mock`: the mock API as an axum app behind `overten-errors-http`'s layers.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use metrics_exporter_prometheus::PrometheusHandle;
use overten_errors::{ApiError, Code, ErrorCode, RATE_LIMIT_WINDOW_SECONDS, RetryAfter, Tier};
use overten_errors_http::mock::{Routed, Routes, task_outcome};
use overten_errors_http::{bearer_key, into_response};
use overten_gateway::{
    Account, Accounts, AccountsFile, BoxFuture, GatewayLayer, IdempotencyLayer, IdempotencyStore,
    KeyHash, MemoryAccounts, MemoryIdempotencyStore, MemoryStore, MemoryTaskStore, RedisStore,
    RunPermit, Store, StoreError, SyncCeilingLayer, TaskStore, Tasks, default_org, stack,
};

/// The request header that names an error to answer with.
pub(crate) const MOCK_ERROR: &str = "x-mock-error";
/// The `Retry-After` (seconds) an injected error carries.
pub(crate) const MOCK_RETRY_AFTER: &str = "x-mock-retry-after";
/// How many requests of a key the injected error answers (default 1).
pub(crate) const MOCK_ERROR_TIMES: &str = "x-mock-error-times";
/// The status an injected code this version does not know is sent with (default 500).
pub(crate) const MOCK_ERROR_STATUS: &str = "x-mock-error-status";

/// The longest request body the mock reads.
const MAX_BODY: usize = 64 * 1024;

struct Mock {
    /// Tasks live in the gateway's task store (shared by every mock on one Redis).
    tasks: Tasks,
    /// Injected errors answered so far, per (key, code).
    injected: HashMap<(String, String), u32>,
    clock: fn() -> SystemTime,
}

type Shared = Arc<Mutex<Mock>>;

fn unix(clock: fn() -> SystemTime) -> u64 {
    clock()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The accounts the mock accepts.
pub(crate) enum MockAccounts {
    /// Any well-formed live key, on this tier.
    Any,
    /// Only these keys (a revoked one has no account).
    Listed(Vec<(KeyHash, Option<Account>)>),
}

/// What `overten-errors mock` was asked for.
pub(crate) struct Options {
    pub(crate) addr: SocketAddr,
    pub(crate) tier: Tier,
    pub(crate) accounts: MockAccounts,
    pub(crate) redis: Option<String>,
    pub(crate) sync_ceiling: Duration,
    pub(crate) header_timeout: Duration,
}

/// Reads `--key KEY:TIER[:ORG]` values and a `--keys` file (`overten_gateway::AccountsFile`:
/// `KEY TIER [ORG] [active|suspended|revoked]` a line).
pub(crate) fn accounts(
    keys: &[String],
    file: Option<&std::path::Path>,
) -> Result<MockAccounts, String> {
    let mut out: Vec<(KeyHash, Option<Account>)> = Vec::new();
    // Where each key was named, to name both places of a duplicate.
    let mut named: HashMap<KeyHash, String> = HashMap::new();
    let mut add = |hash: KeyHash, account: Option<Account>, at: String| -> Result<(), String> {
        if let Some(first) = named.get(&hash) {
            return Err(format!(
                "{at}: the key is named twice (first by {first}); name each key once"
            ));
        }
        named.insert(hash, at);
        out.push((hash, account));
        Ok(())
    };
    for (n, k) in keys.iter().enumerate() {
        let at = format!("--key #{}", n + 1);
        let mut parts = k.splitn(3, ':');
        let (key, tier, org) = (parts.next().unwrap_or(""), parts.next(), parts.next());
        let Some(tier) = tier else {
            return Err(format!("{at}: expected KEY:TIER or KEY:TIER:ORG"));
        };
        if !overten_errors_http::is_live_key(key) {
            return Err(format!(
                "{at}: a key is sk_live_ and 1 to 128 letters, digits or _"
            ));
        }
        let tier: Tier = tier.parse().map_err(|e| format!("{at}: {e}"))?;
        let hash = KeyHash::of(key);
        let org = match org {
            Some(org)
                if !org.is_empty()
                    && org.len() <= 128
                    && org.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                org.to_owned()
            }
            Some(_) => return Err(format!("{at}: an org is 1 to 128 visible ASCII characters")),
            None => default_org(&hash),
        };
        add(hash, Some(Account::new(org.as_str(), tier)), at)?;
    }
    if let Some(path) = file {
        let shown = path.display();
        let lines = AccountsFile::read(path).map_err(|e| format!("--keys {shown}: {e}"))?;
        for line in lines {
            add(
                line.key,
                line.account,
                format!("--keys {shown} line {}", line.line),
            )?;
        }
    }
    Ok(if out.is_empty() {
        MockAccounts::Any
    } else {
        MockAccounts::Listed(out)
    })
}

/// Any well-formed live key is an account of the mock's tier; its org is named after the
/// key's hash, so each key is an org of its own.
struct AnyLiveKey(Tier);

impl Accounts for AnyLiveKey {
    fn resolve<'a>(
        &'a self,
        key: &'a KeyHash,
    ) -> BoxFuture<'a, Result<Option<Account>, StoreError>> {
        Box::pin(std::future::ready(Ok(Some(Account::new(
            default_org(key),
            self.0,
        )))))
    }
}

/// The stores: this process's, or one Redis shared by every mock on it.
pub(crate) struct Stores {
    gateway: Arc<dyn Store>,
    idempotency: Arc<dyn IdempotencyStore>,
    tasks: Arc<dyn TaskStore>,
}

impl Stores {
    pub(crate) fn memory() -> Stores {
        Stores {
            gateway: Arc::new(MemoryStore::new()),
            idempotency: Arc::new(MemoryIdempotencyStore::new()),
            tasks: Arc::new(MemoryTaskStore::new()),
        }
    }

    async fn redis(url: &str) -> Result<Stores, StoreError> {
        let store = Arc::new(RedisStore::connect(url).await?);
        Ok(Stores {
            gateway: store.clone(),
            idempotency: store.clone(),
            tasks: store,
        })
    }
}

/// The app: routes of `overten_errors_http::mock::Routes` behind the server stack
/// (request ids, envelopes and logs, the gateway and its panic answer), the idempotency layer and
/// the sync ceiling, with error injection.
pub(crate) fn app(
    tier: Tier,
    accounts: &MockAccounts,
    stores: Stores,
    sync_ceiling: Duration,
    clock: fn() -> SystemTime,
    metrics: Option<PrometheusHandle>,
) -> Router {
    let state: Shared = Arc::new(Mutex::new(Mock {
        tasks: Tasks::new(stores.tasks),
        injected: HashMap::new(),
        clock,
    }));
    let accounts: Arc<dyn Accounts> = match accounts {
        MockAccounts::Any => Arc::new(AnyLiveKey(tier)),
        MockAccounts::Listed(keys) => {
            let memory = MemoryAccounts::new();
            for (key, account) in keys {
                if let Some(account) = account {
                    memory.insert_hash(*key, account.clone());
                }
            }
            Arc::new(memory)
        }
    };
    let gateway = GatewayLayer::new(accounts, stores.gateway).with_clock(clock);
    let api = Router::new()
        .fallback(answer)
        .with_state(state)
        .layer(SyncCeilingLayer::new(sync_ceiling, |d| {
            tokio::time::sleep(d)
        }))
        .layer(IdempotencyLayer::new(stores.idempotency))
        .layer(stack(gateway));
    match metrics {
        // Outside the gateway: a scraper sends no API key.
        Some(handle) => Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let text = handle.render();
                    async move {
                        (
                            [(
                                http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            text,
                        )
                    }
                }),
            )
            .merge(api),
        None => api,
    }
}

/// Installs this process's Prometheus recorder (once) for the gateway's metrics.
pub(crate) fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .ok()?
                .install_recorder()
                .ok()?;
            overten_gateway::metrics::describe();
            Some(handle)
        })
        .clone()
}

/// Keys and codes whose injected errors are counted at once; past it the counts start
/// over (the map never grows with input beyond this).
const MAX_INJECTED: usize = 10_000;

/// The error `X-Mock-Error` asks for, if this request is one of the first `times` of its
/// key with that code. A value that is not a `snake_case` code of at most 64 bytes is a
/// 400 `invalid_request`.
fn injected(mock: &mut Mock, headers: &HeaderMap) -> Option<ApiError> {
    let code = headers.get(MOCK_ERROR)?.to_str().unwrap_or("").trim();
    let snake = code.len() <= 64
        && code.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !snake {
        return Some(ApiError::new(
            ErrorCode::InvalidRequest,
            "X-Mock-Error must name an error code (snake_case, at most 64 bytes)",
        ));
    }
    if mock.injected.len() >= MAX_INJECTED {
        mock.injected.clear();
    }
    let times: u32 = headers
        .get(MOCK_ERROR_TIMES)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1);
    let key = bearer_key(headers).unwrap_or("").to_owned();
    let used = mock.injected.entry((key, code.to_owned())).or_insert(0);
    if *used >= times {
        return None;
    }
    *used += 1;
    let code = Code::parse(code);
    let status = headers
        .get(MOCK_ERROR_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u16>().ok())
        .filter(|s| (400..=599).contains(s));
    Some(match (code.known(), status) {
        (Some(known), None) => ApiError::from(known),
        (Some(known), Some(s)) => ApiError::received(code, s, known.when()),
        (None, s) => ApiError::received(
            code,
            s.unwrap_or(overten_errors_http::mock::UNKNOWN_CODE_STATUS),
            "An error code newer than this mock's table (injected)",
        ),
    })
}

async fn answer(State(state): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        let err = ApiError::new(
            ErrorCode::PayloadTooLarge,
            "The request body exceeds 64 KiB",
        );
        return overten_errors_http::HandlerError::new(err).into_response();
    };
    let request = http::Request::from_parts(parts, bytes);
    let (routed, tasks) = {
        let mut mock = state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = unix(mock.clock);
        let reset = (now / RATE_LIMIT_WINDOW_SECONDS + 1) * RATE_LIMIT_WINDOW_SECONDS;
        let wait = RetryAfter::Seconds(reset.saturating_sub(now).max(1));
        if let Some(mut err) = injected(&mut mock, request.headers()) {
            let named = request
                .headers()
                .get(MOCK_RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(seconds) = named {
                err = err.with_retry_after(RetryAfter::Seconds(seconds.min(86_400)));
            } else if err.status() == ErrorCode::RateLimitExceeded.status() {
                err = err.with_retry_after(wait);
            }
            let response: http::Response<Vec<u8>> = into_response(&err);
            return response.map(Body::from);
        }
        (Routes::route(&request, wait), mock.tasks.clone())
    };
    // The gateway put the caller's account (and a run's permit) in the extensions.
    let org = request
        .extensions()
        .get::<Account>()
        .map_or_else(String::new, |a| a.org_id.to_string());
    match routed {
        Routed::Answer(response) => response.map(Body::from),
        Routed::Poll(task_id) => tasks.answer(&org, &task_id).await.into_response(),
        Routed::Submit(code) => {
            let permit = request.extensions().get::<RunPermit>().cloned();
            // The task store logs its outage (the gateway's outage story).
            let Ok(run) = tasks.create(&org, permit).await else {
                let err = ApiError::new(
                    ErrorCode::ServiceUnavailable,
                    "Tasks cannot be reached right now; retry after the Retry-After delay",
                )
                .with_retry_after(RetryAfter::Seconds(30));
                let response: http::Response<Vec<u8>> = into_response(&err);
                return response.map(Body::from);
            };
            let accepted = run.accepted();
            // The mock's tasks end at once: as `task_outcome` says.
            // A store that fails here leaves the task to its lease: a reader reaps it.
            match task_outcome(&code) {
                Ok(result) => {
                    let result: serde_json::Value =
                        serde_json::from_str(result).unwrap_or(serde_json::Value::Null);
                    let _ended = run.succeed(&result, 1).await;
                }
                Err(error) => {
                    let status = code.known().map_or(500, ErrorCode::status);
                    let err = ApiError::received(error.code, status, error.message);
                    let _ended = run.fail(&err, 0).await;
                }
            }
            accepted.into_response()
        }
        _ => {
            let response: http::Response<Vec<u8>> =
                into_response(&ApiError::from(ErrorCode::NotFound));
            response.map(Body::from)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            () = terminate => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Serves `app` on `listener` until `shutdown` resolves: each connection gets
/// `header_timeout` to send its request head, a failed accept (descriptors exhausted) pauses
/// the loop instead of ending it, and on shutdown the connections in flight get 5 s to end.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = TowerToHyperService::new(app.clone());
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(TokioIo::new(stream), service);
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
            () = &mut shutdown => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

pub(crate) fn main(options: &Options) -> ExitCode {
    let addr = options.addr;
    if !addr.ip().is_loopback() {
        eprintln!("overten-errors mock: binds to loopback addresses only (127.0.0.0/8, ::1)");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("overten-errors mock: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served: Result<(), String> = runtime.block_on(async {
        let stores = match &options.redis {
            Some(url) => Stores::redis(url)
                .await
                .map_err(|e| format!("--redis: {e}"))?,
            None => Stores::memory(),
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| e.to_string())?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        let who = match &options.accounts {
            MockAccounts::Any => format!(
                "any sk_live_ key: tier {}, {} requests/minute",
                options.tier,
                options.tier.requests_per_minute()
            ),
            MockAccounts::Listed(keys) => format!("{} keys", keys.len()),
        };
        let shared = if options.redis.is_some() {
            ", on Redis"
        } else {
            ""
        };
        let mut stdout = std::io::stdout();
        writeln!(stdout, "mock Overten API on http://{bound} ({who}{shared})")
            .and_then(|()| stdout.flush())
            .map_err(|e| e.to_string())?;
        let app = app(
            options.tier,
            &options.accounts,
            stores,
            options.sync_ceiling,
            SystemTime::now,
            prometheus(),
        );
        serve(listener, app, options.header_timeout, shutdown_signal()).await;
        Ok(())
    });
    // Every error above is a start input the mock could not use (a bad or dead --redis, an
    // address it cannot bind): exit 2, as for every other bad start input.
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overten-errors mock: {e}");
            ExitCode::from(2)
        }
    }
}
