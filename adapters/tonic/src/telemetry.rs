//! Instruments (feature `metrics`): gRFC A94's `grpc.subchannel.*`, gRFC A78's `grpc.lb.wrr.*`
//! and pickwise's own `pickwise.*`, recorded through the [`metrics`] facade. Without a recorder
//! installed (`metrics::set_global_recorder`, e.g. `metrics-exporter-prometheus`) every handle is
//! a no-op.
//!
//! Why `metrics` rather than OpenTelemetry's API: a recorder is process-global and optional, so a
//! library registers handles and never configures an exporter; a registered [`Counter`] is an
//! `Arc` to an atomic, so the pick path does one relaxed `fetch_add` per instrument, with no
//! allocation, lock or attribute lookup (OpenTelemetry's bound instruments were removed from its
//! Rust API; each `add` carries its attributes). OpenTelemetry users bridge with
//! `metrics-exporter-opentelemetry`; the names and units are gRPC's either way.
//!
//! Where each is recorded:
//! - **On the pick path** (allocation- and lock-free): `pickwise.picks` (the snapshot's handle
//!   for its policy), `pickwise.endpoint.picks` (the endpoint's handle, registered when discovery
//!   inserts it) and `pickwise.picks.panic` (the pick went to an ejected endpoint: panic routing).
//! - **By the connection task**: A94's attempts, disconnections (with `grpc.disconnect_error`)
//!   and open connections.
//! - **By the balancer task** on each published picker: A78's WRR counters and weights.
//! - **By the Prequal prober** (`pickwise.prequal.*`): probes sent, their results, probes owed
//!   but dropped at the concurrency bound; on the response path, answers piggybacked on
//!   responses. The sampler adds the picks the P2C fallback decided, from the core's count.
//! - **By a sampler** every [`SAMPLE_PERIOD`]: per-endpoint in-flight and cost gauges, and
//!   ejections (with their reason; each ejection is seen by the sampler, as ejections last at
//!   least the base ejection time).
//! - **On the slow path** (a request queued for a picker): `pickwise.pick.queued` with its
//!   outcome and `pickwise.pick.queue_duration`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, SharedString};

use crate::snapshot::Shared;

/// How often the sampler sets the per-endpoint gauges.
pub(crate) const SAMPLE_PERIOD: Duration = Duration::from_millis(250);

/// The channel's labels (gRFC A66's `grpc.target`, A89's `grpc.lb.backend_service`).
#[derive(Clone, Debug, Default)]
pub(crate) struct ChannelLabels {
    pub(crate) target: SharedString,
    pub(crate) backend_service: SharedString,
}

/// One endpoint's handles, registered once when discovery inserts it.
#[derive(Debug)]
pub(crate) struct EndpointInstruments {
    labels: ChannelLabels,
    pub(crate) picks: Counter,
    in_flight: Gauge,
    cost: Gauge,
    attempts_succeeded: Counter,
    attempts_failed: Counter,
    open_connections: Gauge,
    /// The endpoint was ejected when the sampler last looked.
    was_ejected: AtomicBool,
}

impl EndpointInstruments {
    pub(crate) fn new(labels: &ChannelLabels, addr: &str) -> Self {
        let (t, b) = (labels.target.clone(), labels.backend_service.clone());
        let ep = SharedString::from(addr.to_string());
        let a94 = |name: &'static str| counter!(name, "grpc.target" => t.clone(), "grpc.lb.backend_service" => b.clone(), "grpc.lb.locality" => "");
        Self {
            picks: counter!("pickwise.endpoint.picks", "grpc.target" => t.clone(), "pickwise.endpoint" => ep.clone()),
            in_flight: gauge!("pickwise.endpoint.in_flight", "grpc.target" => t.clone(), "pickwise.endpoint" => ep.clone()),
            cost: gauge!("pickwise.endpoint.cost_estimate", "grpc.target" => t.clone(), "pickwise.endpoint" => ep),
            attempts_succeeded: a94("grpc.subchannel.connection_attempts_succeeded"),
            attempts_failed: a94("grpc.subchannel.connection_attempts_failed"),
            open_connections: gauge!("grpc.subchannel.open_connections", "grpc.target" => t, "grpc.lb.backend_service" => b, "grpc.lb.locality" => ""),
            labels: labels.clone(),
            was_ejected: AtomicBool::new(false),
        }
    }

    pub(crate) fn attempt_failed(&self) {
        self.attempts_failed.increment(1);
    }

    /// A connection attempt succeeded: counts it and returns the open connection, which counts its
    /// disconnection when dropped (also when the connection task is aborted: "subchannel shutdown").
    pub(crate) fn connected(&self) -> OpenConnection<'_> {
        self.attempts_succeeded.increment(1);
        self.open_connections.increment(1.0);
        OpenConnection {
            instruments: self,
            error: "subchannel shutdown",
        }
    }
}

/// An open connection (`grpc.subchannel.open_connections` counts it while it lives).
#[derive(Debug)]
pub(crate) struct OpenConnection<'a> {
    instruments: &'a EndpointInstruments,
    error: &'static str,
}

impl OpenConnection<'_> {
    /// The reason the connection ended, as A94's `grpc.disconnect_error` values.
    pub(crate) fn lost(&mut self, error: &'static str) {
        self.error = error;
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        let i = self.instruments;
        i.open_connections.decrement(1.0);
        counter!("grpc.subchannel.disconnections",
            "grpc.target" => i.labels.target.clone(),
            "grpc.lb.backend_service" => i.labels.backend_service.clone(),
            "grpc.lb.locality" => "",
            "grpc.disconnect_error" => self.error)
        .increment(1);
    }
}

/// The handles a published picker carries (its policy's pick counters).
#[derive(Debug)]
pub(crate) struct PickerInstruments {
    pub(crate) picks: Counter,
    pub(crate) panic_picks: Counter,
}

impl Default for PickerInstruments {
    fn default() -> Self {
        Self {
            picks: Counter::noop(),
            panic_picks: Counter::noop(),
        }
    }
}

impl PickerInstruments {
    pub(crate) fn new(labels: &ChannelLabels, policy: &'static str) -> Self {
        let t = labels.target.clone();
        Self {
            picks: counter!("pickwise.picks", "grpc.target" => t.clone(), "pickwise.policy" => policy),
            panic_picks: counter!("pickwise.picks.panic", "grpc.target" => t, "pickwise.policy" => policy),
        }
    }
}

/// Prequal's probing counters of one channel, registered once.
#[derive(Debug)]
pub(crate) struct ProbeInstruments {
    pub(crate) sent: Counter,
    pub(crate) answered: Counter,
    pub(crate) failed: Counter,
    pub(crate) unimplemented: Counter,
    pub(crate) dropped: Counter,
    pub(crate) piggybacked: Counter,
    /// Picks the P2C fallback decided (fewer than two usable answers), sampled from the pool.
    fallbacks: Counter,
    fallback_meter: std::sync::Mutex<pickwise::prequal::FallbackMeter>,
}

impl ProbeInstruments {
    pub(crate) fn new(labels: &ChannelLabels) -> Self {
        let t = labels.target.clone();
        let result = |r: &'static str| counter!("pickwise.prequal.probe_results", "grpc.target" => t.clone(), "result" => r);
        Self {
            sent: counter!("pickwise.prequal.probes_sent", "grpc.target" => t.clone()),
            answered: result("answered"),
            failed: result("failed"),
            unimplemented: result("unimplemented"),
            dropped: counter!("pickwise.prequal.probes_dropped", "grpc.target" => t.clone()),
            piggybacked: counter!("pickwise.prequal.piggybacked", "grpc.target" => t.clone()),
            fallbacks: counter!("pickwise.prequal.fallback_picks", "grpc.target" => t.clone()),
            fallback_meter: Default::default(),
        }
    }
}

/// gRFC A78's WRR instruments for one scheduler build.
pub(crate) fn record_wrr(labels: &ChannelLabels, stats: &pickwise::wrr::WrrStats) {
    let t = &labels.target;
    let b = &labels.backend_service;
    let c = |name: &'static str| counter!(name, "grpc.target" => t.clone(), "grpc.lb.backend_service" => b.clone(), "grpc.lb.locality" => "");
    c("grpc.lb.wrr.rr_fallback").increment(u64::from(stats.rr_fallback));
    c("grpc.lb.wrr.endpoint_weight_not_yet_usable").increment(u64::from(stats.not_yet_usable));
    c("grpc.lb.wrr.endpoint_weight_stale").increment(u64::from(stats.stale));
    let h = histogram!("grpc.lb.wrr.endpoint_weights", "grpc.target" => t.clone(), "grpc.lb.backend_service" => b.clone(), "grpc.lb.locality" => "");
    for w in &stats.weights {
        h.record(*w);
    }
}

/// A request that waited for a picker, and how that ended.
pub(crate) fn record_queued(labels: &ChannelLabels, waited: Duration, outcome: &'static str) {
    let t = labels.target.clone();
    counter!("pickwise.pick.queued", "grpc.target" => t.clone(), "outcome" => outcome).increment(1);
    histogram!("pickwise.pick.queue_duration", "grpc.target" => t, "outcome" => outcome)
        .record(waited.as_secs_f64());
}

/// Describes every instrument once (units and help text for exporters).
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        describe_counter!(
            "grpc.subchannel.connection_attempts_succeeded",
            "Number of successful connection attempts (gRFC A94)."
        );
        describe_counter!(
            "grpc.subchannel.connection_attempts_failed",
            "Number of failed connection attempts (gRFC A94)."
        );
        describe_counter!(
            "grpc.subchannel.disconnections",
            "Number of times a subchannel became disconnected (gRFC A94)."
        );
        describe_gauge!(
            "grpc.subchannel.open_connections",
            "Number of open connections (gRFC A94)."
        );
        describe_counter!(
            "grpc.lb.wrr.rr_fallback",
            "Scheduler updates that fell back to round robin (gRFC A78)."
        );
        describe_counter!(
            "grpc.lb.wrr.endpoint_weight_not_yet_usable",
            "Endpoints without a usable weight at a scheduler update (gRFC A78)."
        );
        describe_counter!(
            "grpc.lb.wrr.endpoint_weight_stale",
            "Endpoints whose weight expired at a scheduler update (gRFC A78)."
        );
        describe_histogram!(
            "grpc.lb.wrr.endpoint_weights",
            "Endpoint weights at each scheduler update (gRFC A78)."
        );
        describe_counter!("pickwise.picks", "Picks by the channel's policy.");
        describe_counter!(
            "pickwise.prequal.probes_sent",
            "Prequal probes sent, each on its endpoint's own connection."
        );
        describe_counter!(
            "pickwise.prequal.probe_results",
            "Prequal probes ended, by result (answered, failed or timed out, unimplemented: no probe service)."
        );
        describe_counter!(
            "pickwise.prequal.probes_dropped",
            "Prequal probes owed but not sent (the concurrency bound was reached, or the target has no probe service)."
        );
        describe_counter!(
            "pickwise.prequal.piggybacked",
            "Prequal answers read from responses (x-prequal-rif / x-prequal-latency-us)."
        );
        describe_counter!(
            "pickwise.prequal.fallback_picks",
            "Prequal picks decided by the P2C fallback (fewer than two usable answers; the rest by the hot-cold rule)."
        );
        describe_counter!(
            "pickwise.picks.panic",
            "Picks of an ejected endpoint (panic routing: every ready endpoint ejected)."
        );
        describe_counter!("pickwise.endpoint.picks", "Picks of one endpoint.");
        describe_gauge!(
            "pickwise.endpoint.in_flight",
            "Requests in flight on one endpoint."
        );
        describe_gauge!(
            "pickwise.endpoint.cost_estimate",
            Unit::Seconds,
            "The cost policy's latency estimate of one endpoint."
        );
        describe_counter!(
            "pickwise.endpoint.ejections",
            "Outlier ejections of one endpoint, by reason."
        );
        describe_counter!(
            "pickwise.pick.queued",
            "Requests that waited for a picker, by outcome."
        );
        describe_histogram!(
            "pickwise.pick.queue_duration",
            Unit::Seconds,
            "Time requests waited for a picker, by outcome."
        );
    });
}

/// Sets the per-endpoint gauges and counts new ejections every [`SAMPLE_PERIOD`] until the
/// channel is gone. Off the pick path: reads the endpoints' atomics.
pub(crate) async fn sample(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(SAMPLE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        sample_once(&shared);
    }
}

fn sample_once(shared: &Arc<Shared>) {
    let common = &shared.common;
    let now = common.now();
    let snap = shared.snapshot.load();
    let Some(picker) = &snap.picker else { return };
    let i = &common.probing.instruments;
    // A poisoned meter only lost a sample's count: keep counting.
    let fallbacks = i
        .fallback_meter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .advance(picker.probes());
    if fallbacks > 0 {
        i.fallbacks.increment(u64::from(fallbacks));
    }
    for m in picker.all() {
        let e = &m.sub.core;
        let i = &m.sub.instruments;
        i.in_flight.set(f64::from(e.in_flight()));
        if e.latency_ns().is_some() {
            i.cost.set(f64::from(common.pool.estimate(e, now)) / 1e9);
        }
        let ejection = common.pool.ejection(e, now);
        let ejected = ejection.is_some();
        if let Some(reason) = ejection.filter(|_| !i.was_ejected.swap(true, Ordering::Relaxed)) {
            counter!("pickwise.endpoint.ejections",
                "grpc.target" => i.labels.target.clone(),
                "pickwise.endpoint" => m.sub.addr.clone(),
                "reason" => reason.as_str())
            .increment(1);
        } else if !ejected {
            i.was_ejected.store(false, Ordering::Relaxed);
        }
    }
}
