//! From the wire message to the core's [`LoadReport`], the fields `weighted_round_robin` and
//! ORCA-aware P2C read.
//!
//! `qps` is `rps_fractional` (gRFC A58 reads `rps_fractional`, never the deprecated integer
//! `rps`), as grpc-go's `weightedroundrobin` balancer does.
//!
//! # Examples
//!
//! ```
//! use pickwise::wrr::LoadReport;
//! use pickwise_orca::proto::OrcaLoadReport;
//!
//! let wire = OrcaLoadReport { cpu_utilization: 0.5, rps_fractional: 100.0, ..Default::default() };
//! let core = LoadReport::from(&wire);
//! assert_eq!(core.qps, 100.0);
//! assert_eq!(core.cpu_utilization, 0.5);
//! ```

use crate::proto::OrcaLoadReport;
use pickwise::wrr::LoadReport;

impl From<&OrcaLoadReport> for LoadReport {
    fn from(r: &OrcaLoadReport) -> Self {
        Self {
            cpu_utilization: r.cpu_utilization,
            application_utilization: r.application_utilization,
            qps: r.rps_fractional,
            eps: r.eps,
        }
    }
}

impl From<OrcaLoadReport> for LoadReport {
    fn from(r: OrcaLoadReport) -> Self {
        Self::from(&r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)]
    fn maps_rps_fractional_not_rps() {
        let wire = OrcaLoadReport {
            cpu_utilization: 0.25,
            application_utilization: 0.75,
            rps: 7,
            rps_fractional: 12.5,
            eps: 1.5,
            mem_utilization: 0.9,
            ..Default::default()
        };
        assert_eq!(
            LoadReport::from(&wire),
            LoadReport {
                cpu_utilization: 0.25,
                application_utilization: 0.75,
                qps: 12.5,
                eps: 1.5
            }
        );
    }
}
