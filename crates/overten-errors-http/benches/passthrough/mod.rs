//! A reqwest middleware that only passes the request on: the framework's own cost, shared
//! by the `reqwest_paths` benchmark and the `profile_reqwest` example.
#![allow(unreachable_pub, reason = "included as a module")]

/// Passes every request to the next middleware, unchanged.
pub struct PassThrough;

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for PassThrough {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        next.run(req, extensions).await
    }
}
