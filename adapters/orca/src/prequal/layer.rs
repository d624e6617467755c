//! [`PrequalLayer`]: counts every request a tower/tonic/hyper server handles in a
//! [`ProbeState`], and piggybacks the server's report on its responses.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::http::{is_probe_at, PROBE_PATH};
use super::proto::PROBE_GRPC_PATH;
use super::state::{InFlight, ProbeState};

/// A tower `Layer` counting requests in flight in a [`ProbeState`]. Add it to a tonic server
/// with `Server::builder().layer(..)`, or wrap any `Service<http::Request<_>>`. Cheap to clone.
///
/// A request counts from the moment the layer's service is called until its response body
/// ends (it yields trailers, reports end of stream, or fails) or until the response future or
/// body is dropped, whichever comes first: a cancelled request (the client resets the stream,
/// the server drops the future) stops counting too. The count is an RAII guard
/// ([`InFlight`](super::InFlight)), so nothing can leak it.
///
/// Probes are not counted, and get no piggybacked headers: the gRPC probe
/// ([`PROBE_GRPC_PATH`], any method) and the HTTP probe (`GET`/`HEAD` on the layer's HTTP probe
/// path, [`PROBE_PATH`] by default) pass straight through.
///
/// Piggybacking (on by default): every other response's head gets `x-prequal-rif` and
/// `x-prequal-latency-us` (for gRPC, response initial metadata with the same names; in a
/// trailers-only error response too). The RIF reported excludes the request being answered,
/// which is over from the client's point of view.
#[derive(Clone, Debug)]
pub struct PrequalLayer {
    config: Config,
}

#[derive(Clone, Debug)]
struct Config {
    state: ProbeState,
    piggyback: bool,
    http_probe_path: Arc<str>,
}

impl PrequalLayer {
    /// Counts requests in `state`, piggybacking reports on responses.
    pub fn new(state: ProbeState) -> Self {
        Self {
            config: Config {
                state,
                piggyback: true,
                http_probe_path: PROBE_PATH.into(),
            },
        }
    }

    /// Whether responses carry the report headers (default `true`).
    #[must_use]
    pub fn piggyback(mut self, on: bool) -> Self {
        self.config.piggyback = on;
        self
    }

    /// The HTTP probe path to leave uncounted (default [`PROBE_PATH`]).
    #[must_use]
    pub fn http_probe_path(mut self, path: impl Into<Arc<str>>) -> Self {
        self.config.http_probe_path = path.into();
        self
    }

    /// The state requests are counted in.
    pub fn state(&self) -> &ProbeState {
        &self.config.state
    }
}

impl<S> Layer<S> for PrequalLayer {
    type Service = PrequalService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PrequalService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`PrequalLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct PrequalService<S> {
    inner: S,
    config: Config,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for PrequalService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<PrequalBody<ResBody>>;
    type Error = S::Error;
    type Future = PrequalFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let probe = req.uri().path() == PROBE_GRPC_PATH || is_probe_at(&req, &self.config.http_probe_path);
        let guard = (!probe).then(|| self.config.state.start());
        PrequalFuture {
            inner: self.inner.call(req),
            guard,
            piggyback: self.config.piggyback,
        }
    }
}

pin_project! {
    /// The future of [`PrequalService`]: holds the request's count until the response head
    /// is ready, then hands it to the [`PrequalBody`].
    pub struct PrequalFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
        piggyback: bool,
    }
}

impl<F> std::fmt::Debug for PrequalFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrequalFuture")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for PrequalFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<PrequalBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        // An error ends the request here: `guard` drops on return.
        let mut response = result?;
        if let (true, Some(guard)) = (*this.piggyback, &guard) {
            guard
                .state()
                .report_excluding(guard)
                .to_headers(response.headers_mut());
        }
        // An empty body is dropped (not polled) once the head is sent: the guard drops then.
        Poll::Ready(Ok(response.map(|inner| PrequalBody { inner, guard })))
    }
}

pin_project! {
    /// A response body holding its request's count until it ends or is dropped.
    pub struct PrequalBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B> std::fmt::Debug for PrequalBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrequalBody")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for PrequalBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            Some(Ok(f)) => f.is_trailers() || this.inner.is_end_stream(),
            Some(Err(_)) | None => true,
        };
        if ended {
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::task::Waker;

    use super::*;
    use crate::prequal::ProbeReport;

    /// Answers at once with its path as a one-chunk `String` body.
    #[derive(Clone)]
    struct Echo;

    impl Service<http::Request<()>> for Echo {
        type Response = http::Response<String>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(req.uri().path().to_string())))
        }
    }

    fn get(path: &str) -> http::Request<()> {
        http::Request::get(path).body(()).unwrap()
    }

    #[test]
    fn counts_until_the_body_ends() {
        let state = ProbeState::new();
        let mut svc = PrequalLayer::new(state.clone()).layer(Echo);
        let mut cx = Context::from_waker(Waker::noop());
        let mut fut = Box::pin(svc.call(get("/work")));
        let other = Box::pin(svc.call(get("/other")));
        assert_eq!(state.rif(), 2);
        let Poll::Ready(Ok(response)) = fut.as_mut().poll(&mut cx) else {
            panic!("not ready")
        };
        // Piggybacked: the other request is still in flight, this one is not counted.
        assert_eq!(
            ProbeReport::from_headers(response.headers()).map(|r| r.rif),
            Some(1)
        );
        assert_eq!(state.rif(), 2);
        let mut body = Box::pin(response.into_body());
        assert!(matches!(
            body.as_mut().poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        // A `String` body is over after its one chunk.
        assert_eq!(state.rif(), 1);
        drop(body);
        // Dropping the future (a cancelled request) ends the count.
        drop(other);
        assert_eq!(state.rif(), 0);
    }

    #[test]
    fn dropped_body_ends_the_count() {
        let state = ProbeState::new();
        let mut svc = PrequalLayer::new(state.clone()).piggyback(false).layer(Echo);
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready(Ok(response)) = Box::pin(svc.call(get("/work"))).as_mut().poll(&mut cx) else {
            panic!("not ready")
        };
        assert!(ProbeReport::from_headers(response.headers()).is_none());
        assert_eq!(state.rif(), 1);
        drop(response);
        assert_eq!(state.rif(), 0);
    }

    #[test]
    fn probes_are_not_counted() {
        let state = ProbeState::new();
        let layer = PrequalLayer::new(state.clone()).http_probe_path("/load");
        let mut svc = layer.layer(Echo);
        let mut cx = Context::from_waker(Waker::noop());
        for path in ["/load", PROBE_GRPC_PATH] {
            let mut fut = Box::pin(svc.call(get(path)));
            assert_eq!(state.rif(), 0, "{path}");
            let Poll::Ready(Ok(response)) = fut.as_mut().poll(&mut cx) else {
                panic!("not ready")
            };
            assert!(ProbeReport::from_headers(response.headers()).is_none(), "{path}");
        }
        // The default probe path counts once another is configured.
        let _counted = svc.call(get(PROBE_PATH));
        assert_eq!(state.rif(), 1);
    }
}
