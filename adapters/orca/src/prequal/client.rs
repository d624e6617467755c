//! [`probe`]: one gRPC probe, `pickwise.prequal.v1.Prequal/Probe`, on any tonic
//! `GrpcService` (typically the endpoint's own `Channel`, so the probe travels on the
//! connection the queries use).

use bytes::Bytes;
use tonic::client::GrpcService;
use tonic::codegen::StdError;
use tonic::Status;

use super::proto::{ProbeRequest, ProbeResponse, PROBE_GRPC_PATH};
use super::report::ProbeReport;

/// Probes the server behind `service` once. A server without the probe service answers
/// `UNIMPLEMENTED`; a service that fails to become ready is `UNAVAILABLE`. Put a deadline
/// around it (`tokio::time::timeout`): a probe that is late is worth nothing.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect().await?;
/// let report = pickwise_orca::prequal::probe(channel).await?;
/// println!("rif {} latency {} µs", report.rif, report.latency_us);
/// # Ok(())
/// # }
/// ```
pub async fn probe<T>(service: T) -> Result<ProbeReport, Status>
where
    T: GrpcService<tonic::body::Body> + Send + 'static,
    T::Future: Send,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(service);
    grpc.ready().await.map_err(|e| {
        let e: StdError = e.into();
        Status::unavailable(e.to_string())
    })?;
    let path = http::uri::PathAndQuery::from_static(PROBE_GRPC_PATH);
    let codec = tonic_prost::ProstCodec::<ProbeRequest, ProbeResponse>::default();
    let response = grpc
        .unary(tonic::Request::new(ProbeRequest {}), path, codec)
        .await?;
    Ok(response.into_inner().into())
}
