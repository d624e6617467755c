//! Which gRPC codes count against an endpoint, end to end: a real server answers each of the 16
//! non-OK codes and the balancer's failure count moves only for the failing ones. By default the
//! core's classification, Envoy's gRPC-to-HTTP mapping (`source/common/grpc/status.cc`: 5xx
//! fail: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS); with
//! `Builder::failure_codes(GO_ZERO_FAILURE_CODES)` go-zero's list (`zrpc/internal/codes/accept.go`
//! `Acceptable`: DeadlineExceeded, Internal, Unavailable, DataLoss, Unimplemented,
//! ResourceExhausted).

use std::time::Duration;

use pickwise_tonic::{Builder, OutlierConfig, GO_ZERO_FAILURE_CODES};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Answers `Check` with the status code named by the request's `service` field.
struct CodeServer;

#[tonic::async_trait]
impl Health for CodeServer {
    async fn check(&self, req: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let code: i32 = req.into_inner().service.parse().expect("a code");
        Err(Status::new(Code::from_i32(code), "as asked"))
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(&self, _req: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_mapping_by_default() {
    let envoy = [
        Code::Unknown,
        Code::DeadlineExceeded,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
    ];
    counted_failures(Builder::new(), &envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_zero_failure_codes_count_and_the_others_do_not() {
    let go_zero = [
        Code::DeadlineExceeded,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unimplemented,
        Code::ResourceExhausted,
    ];
    let mut ours = GO_ZERO_FAILURE_CODES.to_vec();
    ours.sort_by_key(|c| *c as i32);
    let mut theirs = go_zero.to_vec();
    theirs.sort_by_key(|c| *c as i32);
    assert_eq!(ours, theirs, "GO_ZERO_FAILURE_CODES is go-zero's list");
    counted_failures(Builder::new().failure_codes(GO_ZERO_FAILURE_CODES), &go_zero).await;
}

/// Each non-OK code once through `builder`'s channel: only `failing` codes count.
async fn counted_failures(builder: Builder, failing: &[Code]) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(CodeServer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // Outlier detection off: a failure must not eject the only endpoint mid-test.
    let channel = builder
        .outlier(OutlierConfig::disabled())
        .build_static([addr.to_string()]);
    assert_eq!(channel.wait_ready(1, Duration::from_secs(10)).await, 1);
    for code in 1..=16 {
        let code = Code::from_i32(code);
        let before = channel.stats()[0].failures;
        let err = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: (code as i32).to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        let counted = channel.stats()[0].failures - before;
        let want = u64::from(failing.contains(&code));
        assert_eq!(counted, want, "{code:?} counted {counted} failures");
    }
    server.abort();
}
