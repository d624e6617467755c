//! The client side of ORCA's out-of-band reporting (feature `client`): [`OobStream`] opens
//! `OpenRcaService/StreamCoreMetrics` on an endpoint's own connection and yields its reports,
//! as grpc-go's ORCA producer (`orca/producer.go`) does for one subchannel.
//!
//! The stream ends quietly (`None`) only when the server answers `UNIMPLEMENTED` (it does not
//! serve ORCA; grpc-go stops listening then too). Any other status, and a server that closes
//! the stream cleanly (grpc-go's producer retries after EOF too), is yielded once as `Err` and
//! ends the stream: reopen it with backoff, as grpc-go's producer does (the tonic adapter
//! does).
//!
//! # Examples
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use futures_util::StreamExt;
//! use pickwise_orca::client::OobStream;
//!
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect().await?;
//! let mut reports = OobStream::open(channel, Duration::from_secs(10));
//! while let Some(report) = reports.next().await {
//!     let report = report?; // pickwise::wrr::LoadReport
//!     println!("qps {} utilization {}", report.qps, report.utilization());
//! }
//! # Ok(())
//! # }
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use pickwise::wrr::LoadReport;
use tonic::client::GrpcService;
use tonic::codegen::StdError;
use tonic::{Code, Status};

use crate::proto::{OrcaLoadReport, OrcaLoadReportRequest, STREAM_CORE_METRICS_PATH};

type RawStream = Pin<Box<dyn Stream<Item = Result<OrcaLoadReport, Status>> + Send>>;

/// The reports of one `StreamCoreMetrics` call, converted to the core's [`LoadReport`]
/// (see the [module docs](self) for how it ends).
pub struct OobStream {
    inner: RawStream,
}

impl std::fmt::Debug for OobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OobStream").finish_non_exhaustive()
    }
}

enum State<T> {
    Start(T, OrcaLoadReportRequest),
    Streaming(tonic::Streaming<OrcaLoadReport>),
    Done,
}

impl OobStream {
    /// Opens `StreamCoreMetrics` on `service` (typically the endpoint's `Channel`) asking for
    /// a report every `interval` (the server may use a longer one: grpc-go's minimum is 30 s).
    /// The call starts when the stream is first polled.
    pub fn open<T>(service: T, interval: Duration) -> Self
    where
        T: GrpcService<tonic::body::Body> + Send + 'static,
        T::Future: Send,
        T::Error: Into<StdError>,
        T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
    {
        let request = OrcaLoadReportRequest {
            report_interval: Some(interval.into()),
            request_cost_names: Vec::new(),
        };
        Self::open_with_request(service, request)
    }

    /// Like [`open`](Self::open) with a full request (e.g. `request_cost_names`).
    pub fn open_with_request<T>(service: T, request: OrcaLoadReportRequest) -> Self
    where
        T: GrpcService<tonic::body::Body> + Send + 'static,
        T::Future: Send,
        T::Error: Into<StdError>,
        T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
    {
        let inner = futures_util::stream::unfold(State::Start(service, request), |state| async move {
            let mut stream = match state {
                State::Done => return None,
                State::Streaming(s) => s,
                State::Start(service, request) => {
                    let mut grpc = tonic::client::Grpc::new(service);
                    if let Err(e) = grpc.ready().await {
                        let e: StdError = e.into();
                        return Some((Err(Status::unavailable(e.to_string())), State::Done));
                    }
                    let path = http::uri::PathAndQuery::from_static(STREAM_CORE_METRICS_PATH);
                    let codec = tonic_prost::ProstCodec::<OrcaLoadReportRequest, OrcaLoadReport>::default();
                    match grpc
                        .server_streaming(tonic::Request::new(request), path, codec)
                        .await
                    {
                        Ok(response) => response.into_inner(),
                        Err(status) => return end_or_error(status),
                    }
                }
            };
            match stream.message().await {
                Ok(Some(report)) => Some((Ok(report), State::Streaming(stream))),
                // A clean end: the caller reopens it (grpc-go retries everything but
                // UNIMPLEMENTED).
                Ok(None) => Some((
                    Err(Status::unavailable("the server ended the load report stream")),
                    State::Done,
                )),
                Err(status) => end_or_error(status),
            }
        });
        Self {
            inner: Box::pin(inner),
        }
    }

    /// The wire messages instead of the core's [`LoadReport`] (named metrics, utilization
    /// maps and all).
    pub fn into_raw(self) -> impl Stream<Item = Result<OrcaLoadReport, Status>> + Send {
        self.inner
    }
}

fn end_or_error<S>(status: Status) -> Option<(Result<OrcaLoadReport, Status>, State<S>)> {
    (status.code() != Code::Unimplemented).then_some((Err(status), State::Done))
}

impl Stream for OobStream {
    type Item = Result<LoadReport, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner
            .as_mut()
            .poll_next(cx)
            .map(|item| item.map(|r| r.map(|r| LoadReport::from(&r))))
    }
}
