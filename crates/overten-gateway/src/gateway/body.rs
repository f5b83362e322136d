//! The gateway's response body: the inner service's, holding the run permit until it ends,
//! or an envelope the gateway wrote.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use super::permit::RunPermit;

pin_project_lite::pin_project! {
    /// The body of a response that went through the gateway: the inner service's (holding
    /// the run's permit until it ends), or an envelope the gateway answered with.
    pub struct GatewayBody<B> {
        #[pin]
        state: State<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<B> {
        Inner { #[pin] body: B, permit: Option<RunPermit> },
        Answer { #[pin] body: Full<Bytes> },
    }
}

impl<B> GatewayBody<B> {
    pub(crate) fn inner(body: B, permit: Option<RunPermit>) -> Self {
        GatewayBody {
            state: State::Inner { body, permit },
        }
    }

    pub(crate) fn answer(bytes: Vec<u8>) -> Self {
        GatewayBody {
            state: State::Answer {
                body: Full::new(Bytes::from(bytes)),
            },
        }
    }
}

impl<B> Body for GatewayBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().state.project() {
            StateProj::Inner { body, permit } => {
                let polled = body.poll_frame(cx);
                // The run ends with its body: give the permit back at once, not when the
                // connection gets round to dropping the body.
                if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
                    permit.take();
                }
                polled
            }
            StateProj::Answer { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Inner { body, .. } => body.is_end_stream(),
            State::Answer { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Inner { body, .. } => body.size_hint(),
            State::Answer { body } => body.size_hint(),
        }
    }
}
