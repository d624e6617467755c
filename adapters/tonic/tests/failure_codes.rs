//! go-zero's failure codes (`zrpc/internal/codes/accept.go` `Acceptable`): DeadlineExceeded,
//! Internal, Unavailable, DataLoss, Unimplemented and ResourceExhausted count against an
//! endpoint; every other status is the application's answer and counts as a success. Checked
//! end to end: a real server answers each of the 16 non-OK codes and the balancer's failure
//! count moves only for those six.

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
    assert_eq!(ours, theirs, "the default list is go-zero's");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(CodeServer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // Outlier detection off: a failure must not eject the only endpoint mid-test.
    let channel = Builder::new()
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
        let want = u64::from(go_zero.contains(&code));
        assert_eq!(counted, want, "{code:?} counted {counted} failures");
    }
    server.abort();
}
