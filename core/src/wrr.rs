//! Weighted round robin on backend load reports (gRFC A58; grpc-go
//! `balancer/weightedroundrobin`, C-core `weighted_round_robin`): each endpoint's weight is
//! `qps / (utilization + eps / qps * error_utilization_penalty)` from the ORCA reports it sends,
//! per call in a trailer or on an out-of-band stream. Adapters parse the reports; the core never
//! sees protobuf.
//!
//! - A report feeds [`EndpointState::report_load`](crate::EndpointState::report_load) on the data
//!   path (atomics, no lock). A report with zero utilization or zero qps is ignored (A58).
//! - The [`Balancer`](crate::balancer::Balancer) recomputes the weights every
//!   [`WrrConfig::update_ns`] and publishes a new picker: an endpoint's weight counts only after
//!   [`WrrConfig::blackout_ns`] of reports (since its first report on the current connection) and
//!   until [`WrrConfig::expiration_ns`] without one (then the blackout applies again). Endpoints
//!   without a usable weight take the mean of the others'; while fewer than two have one, plain
//!   round robin.
//! - [`scale`] turns the weights into the stride scheduler's ([`crate::schedule`]), with C-core's
//!   clamps: the largest weight is at most 10× the mean, the smallest at least 0.01× the scaled
//!   mean.
//!
//! ```
//! use pickwise::wrr::{self, LoadReport};
//!
//! let r = LoadReport { cpu_utilization: 0.5, qps: 100.0, eps: 10.0, ..LoadReport::default() };
//! // 100 / (0.5 + 10/100 × 1.0)
//! assert!((wrr::weight_of(&r, 1.0).unwrap() - 166.666).abs() < 0.01);
//! // Application utilization wins over CPU when set.
//! let r = LoadReport { application_utilization: 0.25, ..r };
//! assert!((wrr::weight_of(&r, 0.0).unwrap() - 400.0).abs() < 1e-9);
//! ```

use crate::schedule::MAX_SCALED;
use crate::sync::{AtomicU32, Ordering::Relaxed};
use crate::time::{elapsed_ms, millis};

const SECOND: u64 = 1_000_000_000;

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

impl LoadReport {
    /// The utilization A58 uses: application utilization when positive, else CPU utilization.
    pub fn utilization(&self) -> f64 {
        if self.application_utilization > 0.0 {
            self.application_utilization
        } else {
            self.cpu_utilization
        }
    }
}

/// The weight of an endpoint reporting `r` (A58: `qps / (utilization + eps / qps * penalty)`),
/// `None` for a report A58 ignores (utilization or qps not positive, or not finite).
pub fn weight_of(r: &LoadReport, error_utilization_penalty: f64) -> Option<f64> {
    let (u, qps) = (r.utilization(), r.qps);
    if !(u > 0.0 && qps > 0.0 && u.is_finite() && qps.is_finite()) {
        return None;
    }
    let eps = if r.eps.is_finite() && r.eps > 0.0 {
        r.eps
    } else {
        0.0
    };
    let w = qps / (u + eps / qps * error_utilization_penalty.max(0.0));
    (w.is_finite() && w > 0.0).then_some(w)
}

/// `weighted_round_robin`'s settings (gRFC A58 `WeightedRoundRobinLbConfig`). Defaults are A58's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WrrConfig {
    /// Load reports from the out-of-band stream (`enable_oob_load_report`) instead of per call.
    pub oob: bool,
    /// The out-of-band reporting interval asked of the server (`oob_reporting_period`, 10 s).
    pub oob_period_ns: u64,
    /// How long an endpoint must have been reporting before its weight counts
    /// (`blackout_period`, 10 s; 0 disables).
    pub blackout_ns: u64,
    /// How long a weight lasts without a new report (`weight_expiration_period`, 3 min).
    pub expiration_ns: u64,
    /// How often weights are recomputed (`weight_update_period`, 1 s; at least 100 ms).
    pub update_ns: u64,
    /// Errors per second count as this much utilization per qps (`error_utilization_penalty`, 1.0).
    pub error_utilization_penalty: f32,
}

impl Default for WrrConfig {
    fn default() -> Self {
        Self {
            oob: false,
            oob_period_ns: 10 * SECOND,
            blackout_ns: 10 * SECOND,
            expiration_ns: 180 * SECOND,
            update_ns: SECOND,
            error_utilization_penalty: 1.0,
        }
    }
}

impl WrrConfig {
    /// The weight update period after A58's lower bound (100 ms).
    pub fn update_period_ns(&self) -> u64 {
        self.update_ns.max(SECOND / 10)
    }
}

/// Stamp meaning "never" (a real stamp equal to it is stored 1 ms early: once per 49 days).
const NEVER: u32 = u32::MAX;

/// One endpoint's report-derived weight state (inside [`EndpointState`](crate::EndpointState)):
/// lock-free; the last report's figures as `f32` bits, so a report racing another may mix their
/// fields for one update, which A58's smoothing (weights recomputed every period) absorbs.
#[derive(Debug)]
pub(crate) struct LoadWeight {
    qps: AtomicU32,
    utilization: AtomicU32,
    eps: AtomicU32,
    last_updated: AtomicU32,
    non_empty_since: AtomicU32,
}

impl LoadWeight {
    pub(crate) fn new() -> Self {
        Self {
            qps: AtomicU32::new(0),
            utilization: AtomicU32::new(0),
            eps: AtomicU32::new(0),
            last_updated: AtomicU32::new(NEVER),
            non_empty_since: AtomicU32::new(NEVER),
        }
    }

    /// A report at `now` (grpc-go `OnLoadReport`); ignored when A58 ignores it.
    pub(crate) fn report(&self, now: u64, r: &LoadReport) {
        if weight_of(r, 0.0).is_none() {
            return;
        }
        let eps = if r.eps.is_finite() && r.eps > 0.0 {
            r.eps
        } else {
            0.0
        };
        self.qps.store((r.qps as f32).to_bits(), Relaxed);
        self.utilization
            .store((r.utilization() as f32).to_bits(), Relaxed);
        self.eps.store((eps as f32).to_bits(), Relaxed);
        let stamp = millis(now).min(NEVER - 1);
        self.last_updated.store(stamp, Relaxed);
        let _ = self
            .non_empty_since
            .compare_exchange(NEVER, stamp, Relaxed, Relaxed);
    }

    /// The last report's utilization if it is at most `max_age_ns` old (for P2C's cost).
    #[inline]
    pub(crate) fn utilization(&self, now: u64, max_age_ns: u64) -> Option<f32> {
        let last = self.last_updated.load(Relaxed);
        if last == NEVER || u64::from(elapsed_ms(millis(now), last)) * 1_000_000 > max_age_ns {
            return None;
        }
        let u = f32::from_bits(self.utilization.load(Relaxed));
        (u.is_finite() && u > 0.0).then_some(u)
    }

    /// [`reset`](Self::reset) unless a report arrived after `since` (ns): a report from the new
    /// connection that raced the READY it follows is kept (its stream opened at connect).
    pub(crate) fn reset_unless_reported_since(&self, since: u64) {
        let last = self.last_updated.load(Relaxed);
        if last == NEVER || elapsed_ms(last, millis(since)) == 0 {
            self.reset();
        }
    }

    /// Keeps the 32-bit stamps exact over long runs (called from `Pool::sweep`): a report time
    /// more than 2^31 ms old is forgotten (long expired), a reporting streak longer than that is
    /// re-based to 2^31 ms (longer than any blackout).
    pub(crate) fn rebase(&self, now_ms: u32) {
        const LIMIT: u32 = 1 << 31;
        let last = self.last_updated.load(Relaxed);
        if last != NEVER && elapsed_ms(now_ms, last) >= LIMIT {
            self.reset();
            return;
        }
        let since = self.non_empty_since.load(Relaxed);
        if since != NEVER && elapsed_ms(now_ms, since) >= LIMIT {
            let rebased = now_ms.wrapping_sub(LIMIT).min(NEVER - 1);
            let _ = self
                .non_empty_since
                .compare_exchange(since, rebased, Relaxed, Relaxed);
        }
    }

    /// Forgets the reports (a new connection: the blackout starts again).
    pub(crate) fn reset(&self) {
        self.last_updated.store(NEVER, Relaxed);
        self.non_empty_since.store(NEVER, Relaxed);
    }

    /// The weight to schedule with at `now`, 0 when not usable (grpc-go `endpointWeight.weight`):
    /// no report yet, stale (which restarts the blackout), or still in the blackout.
    pub(crate) fn weight(&self, now: u64, cfg: &WrrConfig) -> f64 {
        self.weight_state(now, cfg).0
    }

    /// [`weight`](Self::weight) with why it is or is not usable (gRFC A78's counters).
    pub(crate) fn weight_state(&self, now: u64, cfg: &WrrConfig) -> (f64, WeightState) {
        let last = self.last_updated.load(Relaxed);
        if last == NEVER {
            return (0.0, WeightState::NotYetUsable);
        }
        let now_ms = millis(now);
        if u64::from(elapsed_ms(now_ms, last)) * 1_000_000 >= cfg.expiration_ns {
            self.non_empty_since.store(NEVER, Relaxed);
            return (0.0, WeightState::Stale);
        }
        if cfg.blackout_ns != 0 {
            let since = self.non_empty_since.load(Relaxed);
            if since == NEVER || u64::from(elapsed_ms(now_ms, since)) * 1_000_000 < cfg.blackout_ns {
                return (0.0, WeightState::NotYetUsable);
            }
        }
        let f = |a: &AtomicU32| f64::from(f32::from_bits(a.load(Relaxed)));
        let r = LoadReport {
            cpu_utilization: f(&self.utilization),
            application_utilization: 0.0,
            qps: f(&self.qps),
            eps: f(&self.eps),
        };
        match weight_of(&r, f64::from(cfg.error_utilization_penalty)) {
            Some(w) => (w, WeightState::Usable),
            None => (0.0, WeightState::NotYetUsable),
        }
    }
}

/// Why an endpoint's report weight is or is not used (grpc-go `endpointWeight.weight`), as gRFC
/// A78 counts them: `grpc.lb.wrr.endpoint_weight_not_yet_usable` (no report yet, or still in the
/// blackout) and `grpc.lb.wrr.endpoint_weight_stale` (the last report expired).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightState {
    /// A weight from a recent report, past the blackout.
    Usable,
    /// No report yet, or still in the blackout period.
    NotYetUsable,
    /// The last report is older than the expiration period.
    Stale,
}

#[cfg(feature = "alloc")]
/// What one `weighted_round_robin` scheduler build saw (one per picker the
/// [`Balancer`](crate::balancer::Balancer) publishes): plain data an adapter records as gRFC
/// A78's instruments (the core records nothing itself).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WrrStats {
    /// Localities whose scheduler fell back to plain round robin because fewer than two of its
    /// (two or more) READY endpoints had a usable weight (`grpc.lb.wrr.rr_fallback`).
    pub rr_fallback: u32,
    /// READY endpoints without a usable weight yet (`grpc.lb.wrr.endpoint_weight_not_yet_usable`).
    pub not_yet_usable: u32,
    /// READY endpoints whose weight expired (`grpc.lb.wrr.endpoint_weight_stale`).
    pub stale: u32,
    /// Every READY endpoint's weight, 0 for one not usable (`grpc.lb.wrr.endpoint_weights`).
    pub weights: alloc::vec::Vec<f64>,
}

/// C-core's clamps (`static_stride_scheduler.cc`): the largest weight is scheduled at most
/// this many times the mean…
const MAX_RATIO: f64 = 10.0;
/// …and the smallest at least this fraction of it (C-core `kMinRatio`).
const MIN_RATIO: f64 = 0.01;

/// Scales report weights into the stride scheduler's `out` (same length), A58's rules with
/// C-core's `StaticStrideScheduler::Make`: 0 (or NaN, infinite) = no usable weight, scheduled at
/// the mean of the others'; a negative weight = excluded (an endpoint ejected by outlier
/// detection, which gRPC reports to the policy as TRANSIENT_FAILURE): not in the mean or the
/// clamps, scheduled at the minimum (its turns are skipped anyway). The largest weight is
/// clamped to 10× the mean, the smallest raised to 0.01× the scaled mean. Returns `false`
/// (plain round robin) when fewer than two endpoints have a weight or all scale equal.
pub fn scale(weights: &[f64], out: &mut [u16]) -> bool {
    let n = weights.len().min(out.len());
    let usable = |w: f64| w.is_finite() && w > 0.0;
    let excluded = |w: f64| w < 0.0;
    let (mut sum, mut max, mut count) = (0.0f64, 0.0f64, 0usize);
    for &w in &weights[..n] {
        if usable(w) {
            sum += w;
            max = max.max(w);
            count += 1;
        }
    }
    if count < 2 || n < 2 {
        out[..n].fill(MAX_SCALED);
        return false;
    }
    let mean = sum / count as f64;
    let max = max.min(mean * MAX_RATIO);
    let factor = f64::from(MAX_SCALED) / max;
    let scaled_mean = round(factor * mean).clamp(1.0, f64::from(MAX_SCALED));
    let lower = round(scaled_mean * MIN_RATIO).max(1.0);
    let mut equal = true;
    let mut first = None;
    for (w, o) in weights[..n].iter().zip(out.iter_mut()) {
        let s = if excluded(*w) {
            1.0
        } else if usable(*w) {
            round(factor * w).clamp(lower, f64::from(MAX_SCALED))
        } else {
            scaled_mean
        };
        *o = s as u16;
        if !excluded(*w) {
            equal &= *first.get_or_insert(*o) == *o;
        }
    }
    !equal
}

/// Round half away from zero without `std` (weights are positive and below 2^16).
fn round(x: f64) -> f64 {
    ((x + 0.5) as u64) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn report(qps: f64, cpu: f64) -> LoadReport {
        LoadReport {
            qps,
            cpu_utilization: cpu,
            ..LoadReport::default()
        }
    }

    #[test]
    fn a58_formula_and_ignored_reports() {
        assert_eq!(weight_of(&report(10.0, 0.5), 1.0), Some(20.0));
        assert_eq!(weight_of(&report(0.0, 0.5), 1.0), None);
        assert_eq!(weight_of(&report(10.0, 0.0), 1.0), None);
        assert_eq!(weight_of(&report(f64::NAN, 0.5), 1.0), None);
        assert_eq!(weight_of(&report(f64::INFINITY, 0.5), 1.0), None);
        let r = LoadReport {
            eps: 5.0,
            ..report(10.0, 0.5)
        };
        // 10 / (0.5 + 0.5 × 2)
        assert_eq!(weight_of(&r, 2.0), Some(10.0 / 1.5));
    }

    #[test]
    fn blackout_then_weight_then_expiry_restarts_blackout() {
        let cfg = WrrConfig {
            blackout_ns: 1_000 * MS,
            expiration_ns: 5_000 * MS,
            ..WrrConfig::default()
        };
        let w = LoadWeight::new();
        assert_eq!(w.weight(0, &cfg), 0.0, "no report yet");
        w.report(100 * MS, &report(10.0, 1.0));
        assert_eq!(w.weight(1_000 * MS, &cfg), 0.0, "in blackout");
        assert_eq!(w.weight(1_100 * MS, &cfg), 10.0);
        // Stale at 5 s after the last report: weight 0 and the blackout starts over.
        assert_eq!(w.weight(5_100 * MS, &cfg), 0.0);
        w.report(5_200 * MS, &report(20.0, 1.0));
        assert_eq!(w.weight(5_300 * MS, &cfg), 0.0, "blackout again");
        assert_eq!(w.weight(6_200 * MS, &cfg), 20.0);
        w.reset();
        assert_eq!(w.weight(6_300 * MS, &cfg), 0.0, "a new connection reports afresh");
        let no_blackout = WrrConfig {
            blackout_ns: 0,
            ..cfg
        };
        w.report(6_400 * MS, &report(4.0, 1.0));
        assert_eq!(w.weight(6_400 * MS, &no_blackout), 4.0);
    }

    #[test]
    fn scaling_follows_grpc_rules() {
        let mut out = [0u16; 3];
        // Fewer than two weights: round robin.
        assert!(!scale(&[0.0, 5.0, 0.0], &mut out));
        assert!(!scale(&[5.0], &mut out[..1]));
        // Unweighted endpoints take the mean.
        assert!(scale(&[1.0, 3.0, 0.0], &mut out));
        assert_eq!(out, [21_845, 65_535, 43_690]);
        // Equal weights: round robin.
        assert!(!scale(&[2.0, 2.0, 0.0], &mut out));
        // Clamped to 10× the mean (509.5 here, so 1000 scales as 509.5); factor 65535 / 509.5 =
        // 128.6: 1.0 scales to 129, above the floor round(6554 × 0.01) = 66.
        let mut w = [1.0f64; 20];
        w[19] = 1000.0;
        let mut out = [0u16; 20];
        assert!(scale(&w, &mut out));
        assert_eq!(out[19], 65_535);
        assert_eq!(out[0], 129);
        // A tiny weight is raised to 0.01× the scaled mean: [1e-6, 1, 1]: mean 0.67, factor
        // 65535, scaled mean 43690, floor 437.
        let mut out = [0u16; 3];
        assert!(scale(&[1e-6, 1.0, 1.0], &mut out));
        assert_eq!(out, [437, 65_535, 65_535]);
        // An excluded (ejected) endpoint counts in neither the mean nor the clamps.
        assert!(scale(&[-1.0, 1.0, 3.0], &mut out));
        assert_eq!(out, [1, 21_845, 65_535]);
        assert!(
            !scale(&[-1.0, 2.0, 2.0], &mut out),
            "equal among the rest: round robin"
        );
        let mut out = [0u16; 4];
        // Garbage is "no weight".
        assert!(!scale(&[f64::NAN, f64::INFINITY, -1.0, 1.0], &mut out));
    }
}
