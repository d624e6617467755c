//! The probe method's messages, derived by hand with `prost` (no `protoc` needed), and its
//! names. The service, as a `.proto` file would declare it:
//!
//! ```proto
//! syntax = "proto3";
//! package pickwise.prequal.v1;
//!
//! service Prequal {
//!   rpc Probe(ProbeRequest) returns (ProbeResponse);
//! }
//! message ProbeRequest {}
//! message ProbeResponse {
//!   uint32 rif = 1;         // requests in flight
//!   uint32 latency_us = 2;  // latency estimate at that RIF, microseconds
//! }
//! ```
//!
//! # Examples
//!
//! ```
//! use prost::Message;
//! use pickwise_orca::prequal::proto::ProbeResponse;
//!
//! let bytes = ProbeResponse { rif: 3, latency_us: 1500 }.encode_to_vec();
//! assert_eq!(bytes, [0x08, 3, 0x10, 0xdc, 0x0b]);
//! ```

use super::report::ProbeReport;

/// `pickwise.prequal.v1.ProbeRequest`: empty.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ProbeRequest {}

/// `pickwise.prequal.v1.ProbeResponse`: a [`ProbeReport`] on the wire.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ProbeResponse {
    /// Requests in flight.
    #[prost(uint32, tag = "1")]
    pub rif: u32,
    /// Latency estimate at `rif` in microseconds (0: none, or the server reports RIF only).
    #[prost(uint32, tag = "2")]
    pub latency_us: u32,
}

impl From<ProbeReport> for ProbeResponse {
    fn from(r: ProbeReport) -> Self {
        Self {
            rif: r.rif,
            latency_us: r.latency_us,
        }
    }
}

impl From<ProbeResponse> for ProbeReport {
    fn from(r: ProbeResponse) -> Self {
        Self {
            rif: r.rif,
            latency_us: r.latency_us,
        }
    }
}

/// The full name of the probe service.
pub const PREQUAL_SERVICE: &str = "pickwise.prequal.v1.Prequal";
/// The HTTP/2 path of `Prequal/Probe`.
pub const PROBE_GRPC_PATH: &str = "/pickwise.prequal.v1.Prequal/Probe";

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn wire_bytes() {
        assert!(ProbeRequest {}.encode_to_vec().is_empty());
        assert!(ProbeResponse::default().encode_to_vec().is_empty());
        let r = ProbeResponse {
            rif: 300,
            latency_us: u32::MAX,
        };
        let bytes = r.encode_to_vec();
        assert_eq!(bytes, [0x08, 0xac, 0x02, 0x10, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(ProbeResponse::decode(&bytes[..]).unwrap(), r);
        // Unknown fields (a future version) are skipped.
        assert_eq!(
            ProbeResponse::decode(&[0x08, 1, 0x18, 7][..]).unwrap(),
            ProbeResponse {
                rif: 1,
                latency_us: 0
            }
        );
    }
}
