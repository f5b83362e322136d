//! The sync ceiling (feature `tower`): see [`SyncCeilingLayer`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use overten_errors::{ApiError, ErrorCode, SYNC_TIMEOUT_SECONDS};
use tower_service::Service;

use overten_errors_http::Sleep;

use crate::gateway::GatewayBody;
use crate::store::BoxFuture;

/// The page's sync ceiling: "Sync request hit the 300-second ceiling". A request still
/// running after the ceiling is answered 408 `sync_timeout_upgrade_async` ("Resubmit with
/// `async: true` and poll /tasks/{id}"), and its work is cancelled: the inner future is
/// dropped, so the run's permit (held by the gateway's body) and an idempotency claim (the
/// idempotency layer gives a 408 back) are released.
///
/// The timer is a [`Sleep`], so the layer needs no runtime of its own: with tokio,
/// `|d| tokio::time::sleep(d)` (or `TokioSleep`, feature `tokio`). A request answered 202
/// (accepted as a task) returns well within the ceiling, so the layer can wrap every route.
///
/// ```
/// use std::time::Duration;
/// use overten_gateway::SyncCeilingLayer;
/// let ceiling = SyncCeilingLayer::new(Duration::from_secs(300), |d| tokio::time::sleep(d));
/// # let _ = ceiling;
/// ```
#[derive(Clone)]
pub struct SyncCeilingLayer {
    ceiling: Duration,
    sleep: Arc<dyn Sleep>,
}

impl std::fmt::Debug for SyncCeilingLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncCeilingLayer")
            .field("ceiling", &self.ceiling)
            .finish_non_exhaustive()
    }
}

impl SyncCeilingLayer {
    /// The page's ceiling, [`SYNC_TIMEOUT_SECONDS`] (300 s).
    pub const DEFAULT: Duration = Duration::from_secs(SYNC_TIMEOUT_SECONDS);

    /// A ceiling of `ceiling` (tests shorten it), timed with `sleep`.
    pub fn new(ceiling: Duration, sleep: impl Sleep + 'static) -> SyncCeilingLayer {
        SyncCeilingLayer {
            ceiling,
            sleep: Arc::new(sleep),
        }
    }
}

impl<S> tower_layer::Layer<S> for SyncCeilingLayer {
    type Service = SyncCeiling<S>;
    fn layer(&self, inner: S) -> SyncCeiling<S> {
        SyncCeiling {
            inner,
            ceiling: self.ceiling,
            sleep: Arc::clone(&self.sleep),
        }
    }
}

/// The service of [`SyncCeilingLayer`].
#[derive(Clone)]
pub struct SyncCeiling<S> {
    inner: S,
    ceiling: Duration,
    sleep: Arc<dyn Sleep>,
}

impl<S> std::fmt::Debug for SyncCeiling<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncCeiling")
            .field("ceiling", &self.ceiling)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for SyncCeiling<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Future: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<GatewayBody<ResB>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let work = self.inner.call(req);
        let sleep = Arc::clone(&self.sleep);
        let ceiling = self.ceiling;
        Box::pin(async move {
            let work = std::pin::pin!(work);
            let timer = sleep.sleep(ceiling);
            if let Some(result) = first(work, timer).await {
                return result.map(|r| r.map(|b| GatewayBody::inner(b, None)));
            }
            let err = ApiError::new(
                ErrorCode::SyncTimeoutUpgradeAsync,
                format!(
                    "Sync request hit the {}-second ceiling; resubmit with async: true and poll /tasks/{{id}}",
                    seconds(ceiling)
                ),
            );
            Ok(overten_errors_http::server::answer(
                err,
                GatewayBody::answer,
            ))
        })
    }
}

/// A ceiling in seconds as the message writes it: `300`, or `0.4` for one shorter than a
/// second's multiple (tests).
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        d.as_secs().to_string()
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        s.trim_end_matches('0').to_owned()
    }
}

/// The work's output if it finishes first, `None` if the timer does (the work is dropped).
async fn first<W>(mut work: Pin<&mut W>, timer: BoxFuture<'_, ()>) -> Option<W::Output>
where
    W: std::future::Future,
{
    let mut timer = timer;
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_read_in_seconds() {
        assert_eq!(seconds(Duration::from_secs(300)), "300");
        assert_eq!(seconds(Duration::from_millis(400)), "0.4");
        assert_eq!(seconds(Duration::from_millis(1_250)), "1.25");
        assert_eq!(seconds(Duration::from_millis(1_001)), "1.001");
    }

    #[derive(Clone)]
    struct NotReady;

    impl<B> Service<Request<B>> for NotReady {
        type Response = Response<Vec<u8>>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
        fn call(&mut self, _: Request<B>) -> Self::Future {
            std::future::ready(Ok(Response::new(Vec::new())))
        }
    }

    #[test]
    fn readiness_is_the_inner_services_and_debug_shows_the_ceiling() {
        let layer = SyncCeilingLayer::new(Duration::from_secs(7), |_| std::future::ready(()));
        assert!(format!("{layer:?}").contains("7s"), "{layer:?}");
        let mut svc = tower_layer::Layer::layer(&layer, NotReady);
        assert!(format!("{svc:?}").contains("7s"));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Service::<Request<()>>::poll_ready(&mut svc, &mut cx).is_pending());
    }
}
