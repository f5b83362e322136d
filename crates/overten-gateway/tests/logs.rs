//! The gateway's logs, in a process of their own (a thread-local subscriber would race
//! other tests on tracing's callsite cache): one ERROR line per 5xx with its request id, org
//! id and cause chain; a panic's text logged and never sent; the key never logged.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "support/logs.rs"]
mod logs;
#[path = "support/gateway_app.rs"]
mod support;

use logs::Logs;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use overten_gateway::{
    Admission, Admit, BoxFuture, GatewayLayer, KeyHash, MemoryStore, PermitId, Store, StoreError,
};
use support::{accounts, app, client, fixed_now, serve, within};

/// Lines at INFO and above, written into the returned buffer while the guard lives (on
/// this thread: the tests' runtimes are one thread).
fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

/// A store that always fails, counting its calls.
#[derive(Default)]
struct Broken(std::sync::atomic::AtomicUsize);

impl Store for Broken {
    fn admit<'a>(&'a self, _: Admit<'a>) -> BoxFuture<'a, Result<Admission, StoreError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(StoreError::Timeout(Duration::from_millis(250))) })
    }
    fn release(&self, _: &KeyHash, _: PermitId) {}
    fn renew<'a>(
        &'a self,
        _: &'a KeyHash,
        _: PermitId,
        _: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async { Ok(false) })
    }
}

#[tokio::test]
async fn one_error_line_per_5xx_with_its_request_id_and_org_and_never_the_panic_text_sent() {
    // This test's runtime is one thread: the server's tasks log through this subscriber.
    let (logs, _guard) = capture();
    within(30, async {
        let store_down =
            GatewayLayer::new(accounts(1), Arc::new(Broken::default())).with_clock(fixed_now);
        let down = serve(app(store_down, Arc::default())).await;
        let gateway =
            GatewayLayer::new(accounts(1), Arc::new(MemoryStore::new())).with_clock(fixed_now);
        let addr = serve(app(gateway, Arc::default())).await;
        let c = client();
        let panicked = c.post(addr, "/panic", Some("sk_live_k0")).await;
        let unavailable = c.get(down, "/ok", Some("sk_live_k0")).await;
        let ok = c.get(addr, "/ok", Some("sk_live_k0")).await;
        let unauthorized = c.get(addr, "/ok", None).await;
        assert_eq!(
            (
                panicked.status,
                unavailable.status,
                ok.status,
                unauthorized.status
            ),
            (500, 503, 200, 401)
        );
        assert!(!panicked.body.contains("secret"), "{}", panicked.body);
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(
            errors.len(),
            2,
            "one line per 5xx, none for 200 or 401:\n{text}"
        );
        let id = |g: &support::Got| g.headers["x-request-id"].to_str().unwrap().to_owned();
        let line = |id: &str| errors.iter().find(|l| l.contains(id)).copied();
        let panic_line = line(&id(&panicked)).expect("the panic's line names its request id");
        assert!(panic_line.contains("secret panic text"), "{panic_line}");
        assert!(panic_line.contains(r#"org_id="org_0""#), "{panic_line}");
        assert!(panic_line.contains("status=500"), "{panic_line}");
        // The store's 503 is the outage's first: one ERROR line for the outage, in the
        // request's span (so it names the request id), with the cause.
        let store_line = line(&id(&unavailable)).expect("the outage's line names its request id");
        assert!(store_line.contains("store outage started"), "{store_line}");
        assert!(
            store_line.contains("did not answer"),
            "the cause chain: {store_line}"
        );
        // The key never reaches a log line.
        assert!(!text.contains("sk_live_k0"), "{text}");
    })
    .await;
}

/// A store that fails while `down`, and counts in memory otherwise.
#[derive(Default)]
struct Flaky {
    down: std::sync::atomic::AtomicBool,
    memory: MemoryStore,
}

impl Store for Flaky {
    fn admit<'a>(&'a self, admit: Admit<'a>) -> BoxFuture<'a, Result<Admission, StoreError>> {
        if self.down.load(Ordering::SeqCst) {
            let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
            return Box::pin(async move { Err(StoreError::Failed(Box::new(refused))) });
        }
        self.memory.admit(admit)
    }
    fn release(&self, key: &KeyHash, permit: PermitId) {
        self.memory.release(key, permit);
    }
    fn renew<'a>(
        &'a self,
        key: &'a KeyHash,
        permit: PermitId,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.memory.renew(key, permit, lease)
    }
}

/// A store outage is one story in the log: one ERROR line when it starts, one WARN line
/// when it ends, and each request's 503 at debug; not one ERROR line a request (on the
/// main of issue 25, 200 requests in an outage wrote 200 ERROR lines).
#[tokio::test]
async fn a_store_outage_is_logged_once_not_once_a_request() {
    let (logs, _guard) = capture();
    within(60, async {
        let store = Arc::new(Flaky::default());
        let gateway = GatewayLayer::new(accounts(3), store.clone()).with_clock(fixed_now);
        let addr = serve(app(gateway, Arc::default())).await;
        let c = client();
        assert_eq!(c.get(addr, "/ok", Some("sk_live_k2")).await.status, 200);
        store.down.store(true, Ordering::SeqCst);
        for _ in 0..200 {
            assert_eq!(c.get(addr, "/ok", Some("sk_live_k2")).await.status, 503);
        }
        store.down.store(false, Ordering::SeqCst);
        assert_eq!(c.get(addr, "/ok", Some("sk_live_k2")).await.status, 200);
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "one line for the outage:\n{text}");
        assert!(errors[0].contains("store outage started"), "{}", errors[0]);
        // The cause once, not repeated down its chain.
        assert_eq!(errors[0].matches("refused").count(), 1, "{}", errors[0]);
        let warns: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warns.len(), 1, "one line for its end:\n{text}");
        assert!(warns[0].contains("store outage ended"), "{}", warns[0]);
        assert!(warns[0].contains("failures=200"), "{}", warns[0]);
    })
    .await;
}
