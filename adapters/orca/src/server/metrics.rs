//! Recorded metrics: [`ServerMetrics`] (one snapshot), [`ServerMetricsRecorder`] (server-wide)
//! and [`CallMetricsRecorder`] (one call), after grpc-go `orca/server_metrics.go` and
//! `orca/call_metrics.go`.
//!
//! Range checks are grpc-go's: CPU, application utilization, QPS and EPS must be >= 0, memory
//! and named utilizations in [0, 1]; out-of-range values are ignored (grpc-go logs them). NaN is
//! ignored too (grpc-go's `val < 0` lets it through; a NaN report is useless to every client).
//! Request costs and named metrics take any value.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::proto::OrcaLoadReport;

/// One snapshot of recorded metrics; `None` is "not set" (grpc-go's `-1`), which is sent as
/// the proto default 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerMetrics {
    /// CPU utilization, >= 0.
    pub cpu_utilization: Option<f64>,
    /// Memory utilization, in [0, 1].
    pub mem_utilization: Option<f64>,
    /// Application utilization, >= 0.
    pub application_utilization: Option<f64>,
    /// Queries per second (`rps_fractional`), >= 0.
    pub qps: Option<f64>,
    /// Errors per second, >= 0.
    pub eps: Option<f64>,
    /// Named utilizations, each in [0, 1].
    pub utilization: BTreeMap<String, f64>,
    /// Request costs (per call).
    pub request_cost: BTreeMap<String, f64>,
    /// Named metrics (per call).
    pub named_metrics: BTreeMap<String, f64>,
}

impl ServerMetrics {
    /// The wire message (grpc-go `toLoadReportProto`).
    pub fn to_proto(&self) -> OrcaLoadReport {
        OrcaLoadReport {
            cpu_utilization: self.cpu_utilization.unwrap_or(0.0),
            mem_utilization: self.mem_utilization.unwrap_or(0.0),
            application_utilization: self.application_utilization.unwrap_or(0.0),
            rps_fractional: self.qps.unwrap_or(0.0),
            eps: self.eps.unwrap_or(0.0),
            utilization: self.utilization.clone(),
            request_cost: self.request_cost.clone(),
            named_metrics: self.named_metrics.clone(),
            ..Default::default()
        }
    }

    /// Merges `other` into `self`, `other` winning where both are set (grpc-go `merge`).
    pub fn merge(&mut self, other: &Self) {
        for (dst, src) in [
            (&mut self.cpu_utilization, other.cpu_utilization),
            (&mut self.mem_utilization, other.mem_utilization),
            (&mut self.application_utilization, other.application_utilization),
            (&mut self.qps, other.qps),
            (&mut self.eps, other.eps),
        ] {
            if src.is_some() {
                *dst = src;
            }
        }
        for (dst, src) in [
            (&mut self.utilization, &other.utilization),
            (&mut self.request_cost, &other.request_cost),
            (&mut self.named_metrics, &other.named_metrics),
        ] {
            dst.extend(src.iter().map(|(k, v)| (k.clone(), *v)));
        }
    }
}

fn non_negative(v: f64) -> Option<f64> {
    (v >= 0.0).then_some(v)
}

fn unit(v: f64) -> Option<f64> {
    (0.0..=1.0).contains(&v).then_some(v)
}

/// Sets `slot` to `v` when it passes `check` (NaN never does).
fn set_checked(slot: &mut Option<f64>, v: f64, check: fn(f64) -> Option<f64>) {
    if let Some(v) = check(v) {
        *slot = Some(v);
    }
}

/// Something that provides the server-wide metrics, read for each trailer and each
/// out-of-band report (grpc-go `ServerMetricsProvider`). It should return a consistent copy.
pub trait ServerMetricsProvider: Send + Sync {
    /// The current server-wide metrics.
    fn server_metrics(&self) -> ServerMetrics;
}

// ===== impl ServerMetricsRecorder =====

/// The server-wide metrics, shared by cheap clones (grpc-go `NewServerMetricsRecorder`):
/// read by [`OpenRcaServer`](super::OpenRcaServer) for out-of-band reports and merged under
/// every per-call report by [`CallMetricsLayer`](super::CallMetricsLayer).
#[derive(Clone, Debug, Default)]
pub struct ServerMetricsRecorder {
    state: Arc<Mutex<ServerMetrics>>,
}

impl ServerMetricsRecorder {
    /// An empty recorder (nothing set).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, ServerMetrics> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets CPU utilization (ignored unless >= 0).
    pub fn set_cpu_utilization(&self, v: f64) {
        set_checked(&mut self.lock().cpu_utilization, v, non_negative);
    }
    /// Unsets CPU utilization.
    pub fn delete_cpu_utilization(&self) {
        self.lock().cpu_utilization = None;
    }
    /// Sets memory utilization (ignored unless in [0, 1]).
    pub fn set_memory_utilization(&self, v: f64) {
        set_checked(&mut self.lock().mem_utilization, v, unit);
    }
    /// Unsets memory utilization.
    pub fn delete_memory_utilization(&self) {
        self.lock().mem_utilization = None;
    }
    /// Sets application utilization (ignored unless >= 0).
    pub fn set_application_utilization(&self, v: f64) {
        set_checked(&mut self.lock().application_utilization, v, non_negative);
    }
    /// Unsets application utilization.
    pub fn delete_application_utilization(&self) {
        self.lock().application_utilization = None;
    }
    /// Sets queries per second (ignored unless >= 0).
    pub fn set_qps(&self, v: f64) {
        set_checked(&mut self.lock().qps, v, non_negative);
    }
    /// Unsets queries per second.
    pub fn delete_qps(&self) {
        self.lock().qps = None;
    }
    /// Sets errors per second (ignored unless >= 0).
    pub fn set_eps(&self, v: f64) {
        set_checked(&mut self.lock().eps, v, non_negative);
    }
    /// Unsets errors per second.
    pub fn delete_eps(&self) {
        self.lock().eps = None;
    }
    /// Sets the named utilization `name` (ignored unless in [0, 1]).
    pub fn set_named_utilization(&self, name: impl Into<String>, v: f64) {
        if let Some(v) = unit(v) {
            self.lock().utilization.insert(name.into(), v);
        }
    }
    /// Unsets the named utilization `name`.
    pub fn delete_named_utilization(&self, name: &str) {
        self.lock().utilization.remove(name);
    }
    /// A copy of the current metrics.
    pub fn snapshot(&self) -> ServerMetrics {
        self.lock().clone()
    }
}

impl ServerMetricsProvider for ServerMetricsRecorder {
    fn server_metrics(&self) -> ServerMetrics {
        self.snapshot()
    }
}

// ===== impl CallMetricsRecorder =====

/// The metrics of one call, found in the request's extensions when the server runs
/// [`CallMetricsLayer`](super::CallMetricsLayer) (grpc-go `CallMetricsRecorderFromContext`).
/// Clones share the call's state.
///
/// The trailer is sent only when the handler called at least one `set_*`/`delete_*` method
/// (grpc-go sends it once the handler fetched the recorder); values then merge over the
/// server-wide metrics, call values winning.
#[derive(Clone, Debug, Default)]
pub struct CallMetricsRecorder {
    inner: Arc<CallState>,
}

#[derive(Debug, Default)]
struct CallState {
    metrics: Mutex<ServerMetrics>,
    recorded: AtomicBool,
}

impl CallMetricsRecorder {
    /// A fresh recorder (the layer makes one per call; handy in handler unit tests).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, ServerMetrics> {
        self.inner.recorded.store(true, Ordering::Relaxed);
        self.inner.metrics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets CPU utilization (ignored unless >= 0).
    pub fn set_cpu_utilization(&self, v: f64) {
        set_checked(&mut self.lock().cpu_utilization, v, non_negative);
    }
    /// Sets memory utilization (ignored unless in [0, 1]).
    pub fn set_memory_utilization(&self, v: f64) {
        set_checked(&mut self.lock().mem_utilization, v, unit);
    }
    /// Sets application utilization (ignored unless >= 0).
    pub fn set_application_utilization(&self, v: f64) {
        set_checked(&mut self.lock().application_utilization, v, non_negative);
    }
    /// Sets queries per second, sent as `rps_fractional` (ignored unless >= 0).
    pub fn set_qps(&self, v: f64) {
        set_checked(&mut self.lock().qps, v, non_negative);
    }
    /// Sets errors per second (ignored unless >= 0).
    pub fn set_eps(&self, v: f64) {
        set_checked(&mut self.lock().eps, v, non_negative);
    }
    /// Sets the named utilization `name` (ignored unless in [0, 1]).
    pub fn set_utilization(&self, name: impl Into<String>, v: f64) {
        let mut m = self.lock();
        if let Some(v) = unit(v) {
            m.utilization.insert(name.into(), v);
        }
    }
    /// Sets the request cost `name`.
    pub fn set_request_cost(&self, name: impl Into<String>, v: f64) {
        self.lock().request_cost.insert(name.into(), v);
    }
    /// Sets the named metric `name`.
    pub fn set_named_metric(&self, name: impl Into<String>, v: f64) {
        self.lock().named_metrics.insert(name.into(), v);
    }
    /// Unsets the request cost `name`.
    pub fn delete_request_cost(&self, name: &str) {
        self.lock().request_cost.remove(name);
    }
    /// Unsets the named metric `name`.
    pub fn delete_named_metric(&self, name: &str) {
        self.lock().named_metrics.remove(name);
    }
    /// Whether the handler recorded anything (then the trailer is sent).
    pub fn is_recorded(&self) -> bool {
        self.inner.recorded.load(Ordering::Relaxed)
    }
    /// A copy of what this call recorded.
    pub fn snapshot(&self) -> ServerMetrics {
        self.inner
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_as_grpc_go() {
        let s = ServerMetricsRecorder::new();
        s.set_cpu_utilization(-0.1);
        s.set_memory_utilization(1.5);
        s.set_qps(f64::NAN);
        s.set_named_utilization("a", 2.0);
        assert_eq!(s.snapshot(), ServerMetrics::default());
        s.set_cpu_utilization(1.5);
        s.set_memory_utilization(1.0);
        assert_eq!(s.snapshot().cpu_utilization, Some(1.5));
        s.delete_cpu_utilization();
        assert_eq!(s.snapshot().cpu_utilization, None);
    }

    #[test]
    fn call_values_win_over_server_values() {
        let mut base = ServerMetrics {
            cpu_utilization: Some(0.5),
            qps: Some(10.0),
            ..Default::default()
        };
        base.utilization.insert("x".into(), 0.1);
        let call = CallMetricsRecorder::new();
        assert!(!call.is_recorded());
        call.set_qps(20.0);
        call.set_utilization("x", 0.9);
        call.set_named_metric("n", -3.0);
        assert!(call.is_recorded());
        base.merge(&call.snapshot());
        let p = base.to_proto();
        assert_eq!((p.cpu_utilization, p.rps_fractional), (0.5, 20.0));
        assert_eq!(p.utilization["x"], 0.9);
        assert_eq!(p.named_metrics["n"], -3.0);
    }
}
