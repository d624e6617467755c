//! What every subchannel and the picker share: the pool, the resolved configuration and the
//! balancer's clock. The bottom layer of the adapter (with [`config`](crate::config) and
//! [`error`](crate::error)): it imports nothing above it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pickwise::{EndpointState, LbPolicy, Pool};
use tokio::time::Instant;

use crate::config::Config;

/// What requests need after the pick (pool, config, clock). Every subchannel holds an `Arc` of it,
/// so an in-flight request reaches it through its endpoint and clones no balancer-wide `Arc`
/// (a refcount every core would write on every request).
#[derive(Debug)]
pub(crate) struct Common {
    pub(crate) pool: Arc<Pool>,
    pub(crate) config: Arc<Config>,
    pub(crate) epoch: Instant,
    /// Per-call ORCA reports (`endpoint-load-metrics-bin` trailers) feed the endpoints' load
    /// state: off only while `weighted_round_robin` takes its reports out of band (grpc-go
    /// listens to one source or the other).
    pub(crate) per_call_reports: AtomicBool,
    /// `weighted_round_robin`'s out-of-band reporting period in nanoseconds (0: no stream).
    /// Every READY connection watches it: it opens, restarts or closes its own
    /// `StreamCoreMetrics` stream when the policy changes.
    pub(crate) oob_period: tokio::sync::watch::Sender<u64>,
}

impl Common {
    /// Monotonic nanoseconds since the balancer started: the core's `now`.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Follows the policy in force (see `per_call_reports`).
    pub(crate) fn set_policy(&self, policy: &LbPolicy) {
        let period = match policy {
            LbPolicy::WeightedRoundRobin(w) if w.oob => w.oob_period_ns.max(1),
            _ => 0,
        };
        self.per_call_reports.store(period == 0, Ordering::Relaxed);
        self.oob_period
            .send_if_modified(|p| std::mem::replace(p, period) != period);
    }

    /// Reads a per-call load report from a response's trailers (or trailers-only headers) into
    /// `endpoint`'s load state. A malformed report is ignored (logged), as grpc-go drops it.
    pub(crate) fn record_report(&self, endpoint: &EndpointState, headers: &http::HeaderMap) {
        if !self.per_call_reports.load(Ordering::Relaxed) {
            return;
        }
        let mut values = headers
            .get_all(pickwise_orca::header::ENDPOINT_LOAD_METRICS_BIN)
            .iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            // None, or several: grpc-go rejects a call with more than one report.
            return;
        };
        match pickwise_orca::header::decode_bin_value(v.as_bytes()) {
            Ok(r) => endpoint.report_load(self.now(), &pickwise::wrr::LoadReport::from(&r)),
            Err(e) => tracing::debug!(error = %e, "malformed endpoint-load-metrics-bin trailer"),
        }
    }
}
