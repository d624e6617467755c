//! Weighted round robin on backend load reports (gRFC A58, grpc-go
//! `balancer/weightedroundrobin`): each endpoint's weight is `qps / (utilization + eps / qps *
//! error_utilization_penalty)` from the ORCA reports it sends (per call in a trailer or on an
//! out-of-band stream; adapters parse them, the core never sees protobuf).

/// The fields of one ORCA load report (`xds.data.orca.v3.OrcaLoadReport`) that balancing reads.
/// Adapters convert from the wire (the `endpoint-load-metrics-bin` trailer, the out-of-band
/// stream, Envoy's `endpoint-load-metrics` header).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// CPU utilization (`cpu_utilization`), normally in [0, 1] (may exceed 1 on some systems).
    pub cpu_utilization: f64,
    /// Application-specific utilization (`application_utilization`); preferred over CPU when > 0.
    pub application_utilization: f64,
    /// Queries per second (`rps_fractional`).
    pub qps: f64,
    /// Errors per second (`eps`).
    pub eps: f64,
}
