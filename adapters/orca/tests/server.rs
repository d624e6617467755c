//! Both ends over real tonic servers on loopback: the per-call trailer written by
//! `CallMetricsLayer` and read back by a tonic client, and the out-of-band
//! `StreamCoreMetrics` stream read by `OobStream`.
//!
//! Waits are on the stream or call itself, each bounded by `DEADLINE`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pickwise::wrr::LoadReport;
use pickwise_orca::client::OobStream;
use pickwise_orca::header::ENDPOINT_LOAD_METRICS_BIN;
use pickwise_orca::proto::OrcaLoadReport;
use pickwise_orca::server::{CallMetricsLayer, CallMetricsRecorder, OpenRcaServer, ServerMetricsRecorder};
use prost::Message;
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};

const DEADLINE: Duration = Duration::from_secs(10);
const RECORD_PATH: &str = "/test.Recorder/Record";

// ===== a test service: records the values it is sent =====

/// `test.Recorder/Record`: records every non-zero field of the request into the call's
/// `CallMetricsRecorder` (nothing for an empty request), then answers OK, or
/// `RESOURCE_EXHAUSTED` (a trailers-only response) when `mem_utilization` is 1.
#[derive(Clone)]
struct Recorder;

impl tonic::server::NamedService for Recorder {
    const NAME: &'static str = "test.Recorder";
}

struct Record;

impl tonic::server::UnaryService<OrcaLoadReport> for Record {
    type Response = OrcaLoadReport;
    type Future = BoxFuture<tonic::Response<OrcaLoadReport>, Status>;

    fn call(&mut self, request: tonic::Request<OrcaLoadReport>) -> Self::Future {
        let recorder = request.extensions().get::<CallMetricsRecorder>().cloned();
        let want = request.into_inner();
        Box::pin(async move {
            let recorder = recorder.ok_or_else(|| Status::internal("no CallMetricsRecorder"))?;
            if want != OrcaLoadReport::default() {
                let set = |v: f64, f: &dyn Fn(f64)| {
                    if v != 0.0 {
                        f(v)
                    }
                };
                set(want.cpu_utilization, &|v| recorder.set_cpu_utilization(v));
                set(want.application_utilization, &|v| {
                    recorder.set_application_utilization(v)
                });
                set(want.rps_fractional, &|v| recorder.set_qps(v));
                set(want.eps, &|v| recorder.set_eps(v));
                for (k, v) in &want.named_metrics {
                    recorder.set_named_metric(k.clone(), *v);
                }
                for (k, v) in &want.request_cost {
                    recorder.set_request_cost(k.clone(), *v);
                }
                for (k, v) in &want.utilization {
                    recorder.set_utilization(k.clone(), *v);
                }
            }
            if want.mem_utilization == 1.0 {
                return Err(Status::resource_exhausted("recorded, then refused"));
            }
            Ok(tonic::Response::new(OrcaLoadReport::default()))
        })
    }
}

impl<B> Service<http::Request<B>> for Recorder
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
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Record, req).await)
        })
    }
}

// ===== harness =====

/// Starts a server on 127.0.0.1:0 with the layer over `server_metrics`, the test service and,
/// when `oob_min` is set, the OOB service with that minimum interval.
async fn start(server_metrics: ServerMetricsRecorder, oob_min: Option<Duration>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let oob = oob_min.map(|min| OpenRcaServer::new(server_metrics.clone()).with_min_report_interval(min));
    let router = Server::builder()
        .layer(CallMetricsLayer::with_server_metrics(server_metrics))
        .add_service(Recorder)
        .add_optional_service(oob);
    tokio::spawn(async move { router.serve_with_incoming(incoming).await.unwrap() });
    addr
}

async fn connect(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    tokio::time::timeout(DEADLINE, endpoint.connect())
        .await
        .expect("connect timed out")
        .unwrap()
}

/// Calls `Record` with `want`; returns the response metadata (headers + trailers) or the status.
async fn record(channel: Channel, want: OrcaLoadReport) -> Result<tonic::metadata::MetadataMap, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(RECORD_PATH);
    let codec = tonic_prost::ProstCodec::<OrcaLoadReport, OrcaLoadReport>::default();
    let call = grpc.unary(tonic::Request::new(want), path, codec);
    let response = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("call timed out")?;
    Ok(response.metadata().clone())
}

fn report_in(metadata: &tonic::metadata::MetadataMap) -> Option<OrcaLoadReport> {
    let value = metadata.get_bin(ENDPOINT_LOAD_METRICS_BIN)?;
    Some(OrcaLoadReport::decode(value.to_bytes().unwrap()).unwrap())
}

async fn next_report(stream: &mut OobStream) -> LoadReport {
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("no OOB report before the deadline")
        .expect("OOB stream ended")
        .expect("OOB stream failed")
}

// ===== per-call trailer =====

#[tokio::test]
async fn unary_trailer_carries_recorded_values_over_server_metrics() {
    let server_metrics = ServerMetricsRecorder::new();
    server_metrics.set_cpu_utilization(0.5);
    server_metrics.set_qps(10.0);
    server_metrics.set_named_utilization("shared", 0.2);
    let channel = connect(start(server_metrics, None).await).await;

    let want = OrcaLoadReport {
        application_utilization: 0.3,
        rps_fractional: 42.0,
        eps: 1.5,
        named_metrics: [("n".to_string(), 7.0)].into(),
        request_cost: [("db".to_string(), 2.0)].into(),
        utilization: [("u".to_string(), 0.6)].into(),
        ..Default::default()
    };
    let metadata = record(channel, want.clone()).await.unwrap();
    let got = report_in(&metadata).expect("no endpoint-load-metrics-bin trailer");

    // Call values win; server-wide values fill the rest (grpc-go's merge).
    let expected = OrcaLoadReport {
        cpu_utilization: 0.5,
        utilization: [("shared".to_string(), 0.2), ("u".to_string(), 0.6)].into(),
        ..want
    };
    assert_eq!(got, expected);
    let core = LoadReport::from(&got);
    assert_eq!((core.qps, core.eps, core.utilization()), (42.0, 1.5, 0.3));
}

#[tokio::test]
async fn no_trailer_when_the_handler_records_nothing() {
    let server_metrics = ServerMetricsRecorder::new();
    server_metrics.set_cpu_utilization(0.5);
    let channel = connect(start(server_metrics, None).await).await;
    let metadata = record(channel, OrcaLoadReport::default()).await.unwrap();
    assert!(report_in(&metadata).is_none(), "unexpected trailer: {metadata:?}");
}

#[tokio::test]
async fn trailers_only_error_response_carries_the_report_in_its_headers() {
    let channel = connect(start(ServerMetricsRecorder::new(), None).await).await;
    let want = OrcaLoadReport {
        mem_utilization: 1.0,
        eps: 3.0,
        ..Default::default()
    };
    let status = record(channel, want).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let got = report_in(status.metadata()).expect("no endpoint-load-metrics-bin in the error");
    // The handler recorded eps; mem_utilization is not a field it records.
    assert_eq!(
        got,
        OrcaLoadReport {
            eps: 3.0,
            ..Default::default()
        }
    );
}

// ===== out-of-band stream =====

#[tokio::test]
async fn oob_stream_reports_at_the_requested_interval() {
    let server_metrics = ServerMetricsRecorder::new();
    server_metrics.set_qps(1.0);
    server_metrics.set_cpu_utilization(0.25);
    let addr = start(server_metrics.clone(), Some(Duration::from_millis(20))).await;
    let interval = Duration::from_millis(200);
    let mut stream = OobStream::open(connect(addr).await, interval);

    // The first report goes out at once.
    let opened = Instant::now();
    let first = next_report(&mut stream).await;
    let first_at = Instant::now();
    assert!(
        first_at - opened < interval,
        "first report took {:?}",
        first_at - opened
    );
    assert_eq!((first.qps, first.cpu_utilization), (1.0, 0.25));

    // Later reports carry the values current when they are sent.
    server_metrics.set_qps(2.0);
    let second = next_report(&mut stream).await;
    assert_eq!(second.qps, 2.0);
    // Time from the second report: the first one's arrival includes connecting.
    let second_at = Instant::now();
    next_report(&mut stream).await;
    next_report(&mut stream).await;
    let elapsed = second_at.elapsed();
    // Two intervals between the second and the fourth report (20 ms of timer slack allowed).
    assert!(
        elapsed >= 2 * interval - Duration::from_millis(20),
        "2 intervals took {elapsed:?}"
    );
    assert!(
        elapsed < 2 * interval + Duration::from_secs(2),
        "2 intervals took {elapsed:?}"
    );
}

#[tokio::test]
async fn oob_interval_is_raised_to_the_server_minimum() {
    let min = Duration::from_millis(150);
    let addr = start(ServerMetricsRecorder::new(), Some(min)).await;
    let mut stream = OobStream::open(connect(addr).await, Duration::from_millis(1));
    // The first report's arrival includes connecting: time the second to the third.
    next_report(&mut stream).await;
    next_report(&mut stream).await;
    let start = Instant::now();
    next_report(&mut stream).await;
    assert!(
        start.elapsed() >= min - Duration::from_millis(20),
        "second report after {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn oob_stream_ends_cleanly_on_unimplemented() {
    let addr = start(ServerMetricsRecorder::new(), None).await;
    let mut stream = OobStream::open(connect(addr).await, Duration::from_secs(1));
    let item = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("stream neither ended nor yielded");
    assert!(item.is_none(), "expected the stream to end, got {item:?}");
}

#[tokio::test]
async fn oob_raw_stream_keeps_the_wire_message() {
    let server_metrics = ServerMetricsRecorder::new();
    server_metrics.set_named_utilization("gpu", 0.75);
    server_metrics.set_memory_utilization(0.5);
    let addr = start(server_metrics, Some(Duration::from_millis(20))).await;
    let mut raw = Box::pin(OobStream::open(connect(addr).await, Duration::from_millis(50)).into_raw());
    let report = tokio::time::timeout(DEADLINE, raw.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.utilization["gpu"], 0.75);
    assert_eq!(report.mem_utilization, 0.5);
}
