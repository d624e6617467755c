//! [`OpenRcaServer`]: `xds.service.orca.v3.OpenRcaService`, written as tonic-build would
//! generate it (a `NamedService` and a `Service<http::Request<B>>` over
//! `tonic::server::Grpc::server_streaming`), behaving as grpc-go's `orca.Service`
//! (`orca/service.go`): the first report at once, then one every reporting interval, where the
//! interval is the request's `report_interval` unless it is absent or below the configured
//! minimum (then the minimum).
//!
//! Deviation: grpc-go raises a configured minimum below 30 s to 30 s (only its tests may go
//! lower); here [`OpenRcaServer::with_min_report_interval`] is taken as given (floored at 1 ms),
//! and the default is grpc-go's 30 s.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::IntervalStream;
use tokio_stream::StreamExt as _;
use tonic::codegen::{http, Body, BoxFuture, BoxStream, Context, Poll, Service, StdError};

use super::metrics::ServerMetricsProvider;
use crate::proto::{OrcaLoadReport, OrcaLoadReportRequest, OPEN_RCA_SERVICE, STREAM_CORE_METRICS_PATH};

/// The ORCA out-of-band service (grpc-go `orca.Register`). Add it to a tonic server with
/// `add_service`. Cheap to clone.
#[derive(Clone)]
pub struct OpenRcaServer {
    provider: Arc<dyn ServerMetricsProvider>,
    min_interval: Duration,
}

impl std::fmt::Debug for OpenRcaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRcaServer")
            .field("min_interval", &self.min_interval)
            .finish_non_exhaustive()
    }
}

impl OpenRcaServer {
    /// grpc-go's minimum reporting interval (`minReportingInterval`), the default here.
    pub const DEFAULT_MIN_REPORT_INTERVAL: Duration = Duration::from_secs(30);

    /// Serves `provider`'s snapshots with the default 30 s minimum interval.
    pub fn new(provider: impl ServerMetricsProvider + 'static) -> Self {
        Self {
            provider: Arc::new(provider),
            min_interval: Self::DEFAULT_MIN_REPORT_INTERVAL,
        }
    }

    /// Sets the minimum reporting interval (floored at 1 ms).
    #[must_use]
    pub fn with_min_report_interval(mut self, min: Duration) -> Self {
        self.min_interval = min.max(Duration::from_millis(1));
        self
    }

    /// The interval a stream opened with `req` reports at (grpc-go
    /// `determineReportingInterval`): the requested one unless absent, negative or below the
    /// minimum.
    pub fn report_interval(&self, req: &OrcaLoadReportRequest) -> Duration {
        match req.report_interval.and_then(|d| d.to_std()) {
            Some(d) if d >= self.min_interval => d,
            _ => self.min_interval,
        }
    }

    fn stream(&self, req: &OrcaLoadReportRequest) -> BoxStream<OrcaLoadReport> {
        let mut interval = tokio::time::interval(self.report_interval(req));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let provider = Arc::clone(&self.provider);
        // The interval's first tick is immediate: the first report goes out at once.
        Box::pin(IntervalStream::new(interval).map(move |_| Ok(provider.server_metrics().to_proto())))
    }
}

impl tonic::server::NamedService for OpenRcaServer {
    const NAME: &'static str = OPEN_RCA_SERVICE;
}

struct StreamCoreMetrics(OpenRcaServer);

impl tonic::server::ServerStreamingService<OrcaLoadReportRequest> for StreamCoreMetrics {
    type Response = OrcaLoadReport;
    type ResponseStream = BoxStream<OrcaLoadReport>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<OrcaLoadReportRequest>) -> Self::Future {
        let stream = self.0.stream(request.get_ref());
        Box::pin(async move { Ok(tonic::Response::new(stream)) })
    }
}

impl<B> Service<http::Request<B>> for OpenRcaServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == STREAM_CORE_METRICS_PATH {
            let method = StreamCoreMetrics(self.clone());
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.server_streaming(method, req).await)
            })
        } else {
            Box::pin(async move { Ok(unimplemented()) })
        }
    }
}

/// The trailers-only `UNIMPLEMENTED` answer to a method a service does not have, as
/// tonic-build's generated services send it.
pub(crate) fn unimplemented() -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::default());
    let headers = response.headers_mut();
    headers.insert(
        tonic::Status::GRPC_STATUS,
        (tonic::Code::Unimplemented as i32).into(),
    );
    headers.insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;
    use crate::server::ServerMetricsRecorder;

    #[test]
    fn interval_as_grpc_go() {
        let s = OpenRcaServer::new(ServerMetricsRecorder::new());
        let req = |d: Option<proto::Duration>| OrcaLoadReportRequest {
            report_interval: d,
            ..Default::default()
        };
        assert_eq!(s.report_interval(&req(None)), Duration::from_secs(30));
        assert_eq!(
            s.report_interval(&req(Some(Duration::from_secs(5).into()))),
            Duration::from_secs(30)
        );
        assert_eq!(
            s.report_interval(&req(Some(Duration::from_secs(45).into()))),
            Duration::from_secs(45)
        );
        let neg = proto::Duration {
            seconds: -5,
            nanos: 0,
        };
        assert_eq!(s.report_interval(&req(Some(neg))), Duration::from_secs(30));
        let s = s.with_min_report_interval(Duration::ZERO);
        assert_eq!(s.report_interval(&req(None)), Duration::from_millis(1));
    }
}
