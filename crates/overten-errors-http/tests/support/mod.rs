//! Loopback HTTP plumbing shared by the integration tests and the examples (hyper + tokio,
//! dev-dependencies only). Servers bind to 127.0.0.1 only.
#![allow(dead_code, reason = "each test or example uses part of it")]
#![allow(unreachable_pub, reason = "included as a module by tests and examples")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Empty, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The response body type the test servers send.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serves `handler` on `addr` (use `127.0.0.1:0` for any free port); returns the bound
/// address. Each connection is served on its own task until the runtime stops.
pub async fn serve<F>(addr: SocketAddr, handler: F) -> std::io::Result<SocketAddr>
where
    F: Fn(Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    assert!(
        addr.ip().is_loopback(),
        "test servers bind to loopback only"
    );
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = handler(req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

/// Sends `GET path` to `addr` over a fresh HTTP/1.1 connection with the given headers.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut request = Request::get(path).header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Ok(sender
        .send_request(request.body(Empty::<Bytes>::new())?)
        .await?)
}
