//! [`PrequalServer`]: the gRPC probe method `pickwise.prequal.v1.Prequal/Probe`, written as
//! tonic-build would generate it (a `NamedService` and a `Service<http::Request<B>>` over
//! `tonic::server::Grpc::unary`), answering from a [`ProbeState`].
//!
//! Probes do not count as requests in flight: the service never touches the counter, and
//! [`PrequalLayer`](super::PrequalLayer) lets the probe path through uncounted.

use std::convert::Infallible;

use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};

use super::proto::{ProbeRequest, ProbeResponse, PREQUAL_SERVICE, PROBE_GRPC_PATH};
use super::state::ProbeState;
use crate::server::unimplemented;

/// The gRPC probe service. Add it to a tonic server with `add_service`, beside the
/// [`PrequalLayer`](super::PrequalLayer) counting the same [`ProbeState`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PrequalServer {
    state: ProbeState,
}

impl PrequalServer {
    /// Answers probes with `state`'s report.
    pub fn new(state: ProbeState) -> Self {
        Self { state }
    }
}

impl tonic::server::NamedService for PrequalServer {
    const NAME: &'static str = PREQUAL_SERVICE;
}

struct Probe(ProbeState);

impl tonic::server::UnaryService<ProbeRequest> for Probe {
    type Response = ProbeResponse;
    type Future = BoxFuture<tonic::Response<ProbeResponse>, tonic::Status>;

    fn call(&mut self, _request: tonic::Request<ProbeRequest>) -> Self::Future {
        let response = ProbeResponse::from(self.0.report());
        Box::pin(async move { Ok(tonic::Response::new(response)) })
    }
}

impl<B> Service<http::Request<B>> for PrequalServer
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
        if req.uri().path() == PROBE_GRPC_PATH {
            let method = Probe(self.state.clone());
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(method, req).await)
            })
        } else {
            Box::pin(async move { Ok(unimplemented()) })
        }
    }
}
