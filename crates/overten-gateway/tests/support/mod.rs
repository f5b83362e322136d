//! Loopback HTTP plumbing shared by the integration tests and the examples (hyper + tokio,
//! dev-dependencies only). Servers bind to 127.0.0.1 only.
#![allow(dead_code, reason = "each test or example uses part of it")]
#![allow(unreachable_pub, reason = "included as a module by tests and examples")]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Limited, combinators::UnsyncBoxBody};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

/// The response body type the test servers send.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The largest request body a test server reads; a larger one is answered without it.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;

/// How a server treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A connection that has not sent a whole request head by then is closed.
    pub header_read_timeout: Duration,
    /// The pause after a failed `accept` (descriptors exhausted, a reset in the backlog)
    /// before the next one: the loop goes on, it never ends on an accept error.
    pub accept_pause: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            header_read_timeout: Duration::from_secs(10),
            accept_pause: Duration::from_millis(100),
        }
    }
}

/// Serves `handler` on `addr` with the default [`Options`].
pub async fn serve<F>(addr: SocketAddr, handler: F) -> std::io::Result<SocketAddr>
where
    F: Fn(Request<Bytes>) -> Response<Body> + Send + Sync + 'static,
{
    serve_with(addr, Options::default(), handler).await
}

/// Serves `handler` on `addr` (use `127.0.0.1:0` for any free port); returns the bound
/// address. Each connection is served on its own task until the runtime stops; the request
/// body is read first, up to [`MAX_REQUEST_BODY`] (a longer or broken one is passed as empty).
pub async fn serve_with<F>(
    addr: SocketAddr,
    options: Options,
    handler: F,
) -> std::io::Result<SocketAddr>
where
    F: Fn(Request<Bytes>) -> Response<Body> + Send + Sync + 'static,
{
    assert!(
        addr.ip().is_loopback(),
        "test servers bind to loopback only"
    );
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handler = Arc::new(handler);
    let listener = Arc::new(listener);
    tokio::spawn(accept_forever(
        move || {
            let listener = Arc::clone(&listener);
            async move { listener.accept().await.map(|(stream, _)| stream) }
        },
        move |stream: TcpStream| {
            let handler = Arc::clone(&handler);
            tokio::spawn(serve_connection(stream, options, handler));
        },
        options.accept_pause,
    ));
    Ok(local)
}

/// Accepts connections for ever: an accept error (EMFILE, ECONNABORTED, ...) pauses the loop
/// for `pause`, then it goes on.
pub async fn accept_forever<A, Fut, T, C>(mut accept: A, mut on_connection: C, pause: Duration)
where
    A: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
    C: FnMut(T),
{
    loop {
        match accept().await {
            Ok(conn) => on_connection(conn),
            Err(_) => tokio::time::sleep(pause).await,
        }
    }
}

async fn serve_connection<F>(stream: TcpStream, options: Options, handler: Arc<F>)
where
    F: Fn(Request<Bytes>) -> Response<Body> + Send + Sync + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let handler = Arc::clone(&handler);
        async move {
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => Bytes::new(),
            };
            Ok::<_, Infallible>(handler(Request::from_parts(parts, bytes)))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Sends `GET path` to `addr` over a fresh HTTP/1.1 connection with the given headers.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response<hyper::body::Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    send(addr, http::Method::GET, path, headers, Bytes::new()).await
}

/// Sends one request to `addr` over a fresh HTTP/1.1 connection.
pub async fn send(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Response<hyper::body::Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = if body.is_empty() {
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed()
    } else {
        http_body_util::Full::new(body)
            .map_err(|never| match never {})
            .boxed()
    };
    Ok(sender.send_request(request.body(body)?).await?)
}
