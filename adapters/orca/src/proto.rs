//! The ORCA protobuf messages, derived by hand with `prost` (no `protoc` needed).
//!
//! Field numbers and types follow `xds/data/orca/v3/orca_load_report.proto` and
//! `xds/service/orca/v3/orca.proto` of cncf/xds, checked against the descriptors the Python
//! package `xds-protos` ships (`tests/golden.rs` compares the wire bytes with it):
//!
//! | field                     | number | type                  |
//! |---------------------------|--------|-----------------------|
//! | `cpu_utilization`         | 1      | `double`              |
//! | `mem_utilization`         | 2      | `double`              |
//! | `rps` (deprecated)        | 3      | `uint64`              |
//! | `request_cost`            | 4      | `map<string, double>` |
//! | `utilization`             | 5      | `map<string, double>` |
//! | `rps_fractional`          | 6      | `double`              |
//! | `eps`                     | 7      | `double`              |
//! | `named_metrics`           | 8      | `map<string, double>` |
//! | `application_utilization` | 9      | `double`              |
//!
//! Maps are `BTreeMap`s so that encoding is deterministic (entries in key order, as the
//! Python implementation's deterministic serialization writes them).
//!
//! # Examples
//!
//! ```
//! use prost::Message;
//! use pickwise_orca::proto::OrcaLoadReport;
//!
//! let report = OrcaLoadReport { cpu_utilization: 0.5, ..Default::default() };
//! let bytes = report.encode_to_vec();
//! assert_eq!(bytes, [0x09, 0, 0, 0, 0, 0, 0, 0xe0, 0x3f]);
//! assert_eq!(OrcaLoadReport::decode(&bytes[..]).unwrap(), report);
//! ```

use std::collections::BTreeMap;

/// `xds.data.orca.v3.OrcaLoadReport`: one load report, sent per call (trailer/header) or out of
/// band (`StreamCoreMetrics`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrcaLoadReport {
    /// CPU utilization, normally in [0, 1] (may exceed 1 where the platform allows it).
    #[prost(double, tag = "1")]
    pub cpu_utilization: f64,
    /// Memory utilization in [0, 1].
    #[prost(double, tag = "2")]
    pub mem_utilization: f64,
    /// Deprecated integer requests per second; use `rps_fractional`.
    #[deprecated]
    #[prost(uint64, tag = "3")]
    pub rps: u64,
    /// Application-specific request costs (per-call reports only).
    #[prost(btree_map = "string, double", tag = "4")]
    pub request_cost: BTreeMap<String, f64>,
    /// Named resource utilizations, each in [0, 1].
    #[prost(btree_map = "string, double", tag = "5")]
    pub utilization: BTreeMap<String, f64>,
    /// Requests per second.
    #[prost(double, tag = "6")]
    pub rps_fractional: f64,
    /// Errors per second.
    #[prost(double, tag = "7")]
    pub eps: f64,
    /// Application-specific opaque metrics.
    #[prost(btree_map = "string, double", tag = "8")]
    pub named_metrics: BTreeMap<String, f64>,
    /// Application-specific utilization, preferred over CPU by `weighted_round_robin` when > 0.
    #[prost(double, tag = "9")]
    pub application_utilization: f64,
}

/// `xds.service.orca.v3.OrcaLoadReportRequest`: the client's request opening
/// `StreamCoreMetrics`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrcaLoadReportRequest {
    /// How often the client wants a report; the server may send them less often.
    #[prost(message, optional, tag = "1")]
    pub report_interval: Option<Duration>,
    /// Request cost names the client is interested in (empty: all).
    #[prost(string, repeated, tag = "2")]
    pub request_cost_names: Vec<String>,
}

/// `google.protobuf.Duration` (seconds, nanos), declared here to avoid a `prost-types`
/// dependency.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Duration {
    /// Signed seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Signed fractions of a second at nanosecond resolution, same sign as `seconds`.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Duration {
    /// This duration as a `std::time::Duration`, `None` when negative or out of range.
    pub fn to_std(&self) -> Option<std::time::Duration> {
        if self.seconds < 0 || self.nanos < 0 || self.nanos >= 1_000_000_000 {
            return None;
        }
        Some(std::time::Duration::new(self.seconds as u64, self.nanos as u32))
    }
}

impl From<std::time::Duration> for Duration {
    /// Saturates at `i64::MAX` seconds.
    fn from(d: std::time::Duration) -> Self {
        Self {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos() as i32,
        }
    }
}

/// The full name of the out-of-band service.
pub const OPEN_RCA_SERVICE: &str = "xds.service.orca.v3.OpenRcaService";
/// The HTTP/2 path of `OpenRcaService/StreamCoreMetrics`.
pub const STREAM_CORE_METRICS_PATH: &str = "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics";
