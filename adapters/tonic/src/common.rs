//! What every subchannel and the picker share: the pool, the resolved configuration and the
//! balancer's clock. The bottom layer of the adapter (with [`config`](crate::config) and
//! [`error`](crate::error)): it imports nothing above it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use futures_util::task::AtomicWaker;
use pickwise::prequal::ProbePool;
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
    /// Prequal: the prober's wake-up, the current probe pool (for piggybacked answers) and the
    /// counters.
    pub(crate) probing: Probing,
}

/// What the pick path, the response path and the Prequal prober share.
#[derive(Debug)]
pub(crate) struct Probing {
    /// Set by a pick that left probes owed; the prober clears it when it wakes.
    pub(crate) owed: AtomicBool,
    pub(crate) waker: AtomicWaker,
    /// The probe pool of the current picker (`None` unless the policy is Prequal): answers
    /// piggybacked on responses are recorded into it.
    pub(crate) pool: ArcSwapOption<ProbePool>,
    pub(crate) sent: AtomicU64,
    pub(crate) answered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) unimplemented: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) piggybacked: AtomicU64,
    #[cfg(feature = "metrics")]
    pub(crate) instruments: crate::telemetry::ProbeInstruments,
}

impl Probing {
    pub(crate) fn new(config: &Config) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = config;
        Self {
            owed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            pool: ArcSwapOption::empty(),
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            unimplemented: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            piggybacked: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            instruments: crate::telemetry::ProbeInstruments::new(&config.labels),
        }
    }

    /// From the pick path, after a pick: wakes the prober if `pool` owes probes. Lock-free: a
    /// relaxed load while the prober is already woken, else one swap and an `AtomicWaker` wake.
    #[inline]
    pub(crate) fn after_pick(&self, pool: &ProbePool) {
        if pool.probes_owed() > 0
            && !self.owed.load(Ordering::Relaxed)
            && !self.owed.swap(true, Ordering::AcqRel)
        {
            self.waker.wake();
        }
    }

    /// Waits for [`after_pick`](Self::after_pick)'s wake.
    pub(crate) fn woken(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.owed.swap(false, Ordering::AcqRel) {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.owed.swap(false, Ordering::AcqRel) {
                return std::task::Poll::Ready(());
            }
            std::task::Poll::Pending
        })
    }
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

    /// Prequal: records a report piggybacked on a response (`x-prequal-rif` and
    /// `x-prequal-latency-us` in its headers or trailers) as a free probe answer from `endpoint`.
    /// Nothing unless the policy is Prequal and both headers are there.
    pub(crate) fn record_piggyback(&self, endpoint: &EndpointState, headers: &http::HeaderMap) {
        if headers.is_empty() {
            return;
        }
        let pool = self.probing.pool.load();
        let Some(pool) = pool.as_deref() else { return };
        let Some(r) = pickwise_orca::prequal::ProbeReport::from_headers(headers) else {
            return;
        };
        pool.record(endpoint, r.into(), self.now(), &mut || fastrand::u64(..));
        self.probing.piggybacked.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.probing.instruments.piggybacked.increment(1);
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
