//! The server side of ORCA for tonic servers (feature `server`), as grpc-go's `orca` package:
//!
//! - [`CallMetricsLayer`]: a tower `Layer` giving each call a [`CallMetricsRecorder`] (a
//!   request extension) and sending what the handler recorded as the
//!   `endpoint-load-metrics-bin` trailer, merged over the server-wide metrics of a
//!   [`ServerMetricsProvider`] (grpc-go `orca.CallMetricsServerOption`, `orca/call_metrics.go`).
//! - [`OpenRcaServer`]: `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`, sending the
//!   provider's snapshot at once and then every max(requested interval, minimum interval)
//!   (grpc-go `orca.Register`, `orca/service.go`).
//! - [`ServerMetricsRecorder`]: the server-wide values (grpc-go `orca.NewServerMetricsRecorder`,
//!   `orca/server_metrics.go`), with [`CpuSampler`] to keep its CPU utilization current from
//!   the OS.
//!
//! # Examples
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use pickwise_orca::server::{CallMetricsLayer, CpuSampler, OpenRcaServer, ServerMetricsRecorder};
//!
//! let server_metrics = ServerMetricsRecorder::new();
//! server_metrics.set_qps(120.0);
//! let _cpu = CpuSampler::start(server_metrics.clone(), Duration::from_secs(1));
//! tonic::transport::Server::builder()
//!     .layer(CallMetricsLayer::with_server_metrics(server_metrics.clone()))
//!     .add_service(OpenRcaServer::new(server_metrics))
//!     // .add_service(MyServer::new(my_impl)) — handlers record per call:
//!     // request.extensions().get::<CallMetricsRecorder>().map(|r| r.set_application_utilization(0.3));
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # Ok(())
//! # }
//! ```

mod cpu;
mod layer;
mod metrics;
mod service;

pub use cpu::{CpuSampler, CpuTimes};
pub use layer::{CallMetricsBody, CallMetricsLayer, CallMetricsService, ResponseFuture};
pub use metrics::{CallMetricsRecorder, ServerMetrics, ServerMetricsProvider, ServerMetricsRecorder};
pub(crate) use service::unimplemented;
pub use service::OpenRcaServer;
