//! [`CallMetricsLayer`]: per-call ORCA reports as the `endpoint-load-metrics-bin` trailer.
//!
//! For each request the service inserts a fresh [`CallMetricsRecorder`] into the request's
//! extensions (tonic hands them to the handler: `request.extensions().get::<CallMetricsRecorder>()`).
//! When the call ends, if the handler recorded something, the report (server-wide metrics with
//! the call's values merged over them, as grpc-go's `recorderWrapper.setTrailerMetadata`) is
//! added, base64 without padding:
//!
//! - to the trailers the response body yields (normal gRPC responses), read when the body
//!   yields them, so values recorded while a response stream runs are included;
//! - to the response headers when the response is trailers-only (its headers already carry
//!   `grpc-status`, as tonic's error responses do).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::metrics::{CallMetricsRecorder, ServerMetricsProvider};
use crate::header::{encode_bin_value, ENDPOINT_LOAD_METRICS_BIN};

/// A tower `Layer` for tonic servers (`Server::builder().layer(..)`) sending per-call ORCA
/// reports (grpc-go `orca.CallMetricsServerOption`). Cheap to clone.
#[derive(Clone, Default)]
pub struct CallMetricsLayer {
    provider: Option<Arc<dyn ServerMetricsProvider>>,
}

impl std::fmt::Debug for CallMetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallMetricsLayer")
            .field("server_metrics", &self.provider.is_some())
            .finish()
    }
}

impl CallMetricsLayer {
    /// Reports only what each call records.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports each call's values merged over `provider`'s server-wide metrics (call values
    /// win), as grpc-go does with a non-nil `ServerMetricsProvider`.
    pub fn with_server_metrics(provider: impl ServerMetricsProvider + 'static) -> Self {
        Self {
            provider: Some(Arc::new(provider)),
        }
    }
}

impl<S> Layer<S> for CallMetricsLayer {
    type Service = CallMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallMetricsService {
            inner,
            provider: self.provider.clone(),
        }
    }
}

/// The service [`CallMetricsLayer`] wraps around a server's routes.
#[derive(Clone)]
pub struct CallMetricsService<S> {
    inner: S,
    provider: Option<Arc<dyn ServerMetricsProvider>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for CallMetricsService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallMetricsService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CallMetricsService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<CallMetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let recorder = CallMetricsRecorder::new();
        req.extensions_mut().insert(recorder.clone());
        ResponseFuture {
            inner: self.inner.call(req),
            reporter: Some(Reporter {
                recorder,
                provider: self.provider.clone(),
            }),
        }
    }
}

/// What turns a call's recorder into the trailer value.
struct Reporter {
    recorder: CallMetricsRecorder,
    provider: Option<Arc<dyn ServerMetricsProvider>>,
}

impl Reporter {
    fn value(&self) -> Option<HeaderValue> {
        if !self.recorder.is_recorded() {
            return None;
        }
        let mut metrics = self
            .provider
            .as_ref()
            .map(|p| p.server_metrics())
            .unwrap_or_default();
        metrics.merge(&self.recorder.snapshot());
        HeaderValue::try_from(encode_bin_value(&metrics.to_proto())).ok()
    }

    fn add_to(self, headers: &mut HeaderMap) {
        if let Some(v) = self.value() {
            headers.insert(ENDPOINT_LOAD_METRICS_BIN, v);
        }
    }
}

pin_project! {
    /// The future of [`CallMetricsService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        reporter: Option<Reporter>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<CallMetricsBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx))?;
        let reporter = this.reporter.take();
        let (mut parts, body) = res.into_parts();
        let reporter = if parts.headers.contains_key("grpc-status") {
            // Trailers-only: the status is in the headers, the call is over.
            if let Some(r) = reporter {
                r.add_to(&mut parts.headers);
            }
            None
        } else {
            reporter
        };
        Poll::Ready(Ok(http::Response::from_parts(
            parts,
            CallMetricsBody {
                inner: body,
                reporter,
            },
        )))
    }
}

pin_project! {
    /// A response body adding the call's report to the trailers it yields.
    pub struct CallMetricsBody<B> {
        #[pin]
        inner: B,
        reporter: Option<Reporter>,
    }
}

impl<B> std::fmt::Debug for CallMetricsBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallMetricsBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for CallMetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        if let Some(r) = this.reporter.take() {
                            r.add_to(&mut trailers);
                        }
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
