//! [`Pool`]: what all endpoints of one balancer share: the cost policy, passive outlier detection
//! (ejection) and, for bounded-load hashing, the total in-flight count.
//!
//! Cost policies (lower is better; every cost is divided by the endpoint's weight):
//!
//! | [`Policy`] | cost | from |
//! |---|---|---|
//! | `LeastRequest` | `in_flight + 1` | Envoy least-request (`active_request_bias` 1) |
//! | `PeakEwma` | `rtt_estimate * (in_flight + 1)`; a slower sample replaces the estimate at once, faster ones decay in | tower / linkerd (default RTT 30 ms, decay 10 s) |
//! | `GoZero` | `sqrt(lag + 1) * (in_flight + 1)`, `lag` an EWMA of latency (ns) | go-zero `p2c_ewma` |
//!
//! **Peak-EWMA** (tower's `PeakEwma`): the estimate decays toward 0 while the endpoint is idle,
//! so an idle endpoint is probed again; each sample is folded into the *decayed* estimate, so a
//! sample faster than the current estimate never raises the cost. Deviation from tower, on
//! purpose: while requests are in flight the estimate does not decay. An endpoint whose requests
//! stopped completing (paused process, lost packets) would otherwise look cheaper with every
//! second of silence and attract the traffic that then hangs; here its cost only grows with its
//! in-flight count.
//!
//! **go-zero** (`zrpc/internal/balancer/p2c/p2c.go`): the lag EWMA weighs the old value by
//! `exp(-elapsed / 10 s)` and takes the first sample as is; a fresh endpoint has lag 0 (cost
//! `in_flight + 1`, so it is tried at once); the lag does not decay while idle; instead, when the
//! pair's loser has not been picked for a second, it is picked (`forcePick`), which probes idle
//! endpoints. Deviations: a failure never lowers the lag (go-zero blends it in, so a fast
//! "connection refused" made a dead endpoint look cheap), and go-zero's success-rate EWMA
//! (`throttleSuccess`) is replaced by outlier ejection below.
//!
//! Least-request keeps no latency estimate (its cost ignores latency, and skipping it makes its
//! pick and completion the cheapest).
//!
//! **Outcomes** ([`outcome`](crate::outcome) classifies them): only a success is a latency
//! sample. A failure is a *penalty* sample, `max(shown, rtt, penalty * base)` with `shown` the
//! estimate picks saw, `base = max(min(rtt, shown), min(shown, default_rtt))` and `penalty`
//! [`PoolConfig::failure_penalty`]: it replaces the estimate like any peak, so a backend
//! answering fast errors (a 503 in microseconds) costs `penalty` times what its requests cost
//! when they succeed — not times the error's own few microseconds, which under load would be
//! cheaper than a healthy endpoint's queue — and is avoided until the estimate decays back (time
//! constant `decay_ns`); failures that come faster than that keep it avoided, so a partly failing
//! backend loses traffic according to how often it fails. The base is bounded by
//! `max(rtt, default_rtt)`, so failures in a row do not compound: an endpoint whose every request
//! fails settles at `penalty` times that. A slow failure
//! (a timeout) is its own peak. Linkerd's balancer penalises failures the same way; go-zero blends
//! the penalty sample into its lag. A neutral outcome (the client's doing) is no sample at all.
//!
//! # Outlier detection
//!
//! Envoy's `consecutive_5xx` (`source/common/upstream/outlier_detection_impl.cc`, gRFC A50):
//! - after `consecutive_failures` failures in a row an endpoint is ejected; the ejection resets
//!   the streak, and so does its end (`unejectHost`), so failures that completed while it was out
//!   do not re-eject it on the first failure after it returns;
//! - the ejection time is `min(base_ejection * multiplier, max(max_ejection, base_ejection))`; the
//!   multiplier grows by one per ejection while `multiplier * base < max + base` and shrinks by one
//!   per `interval` spent un-ejected (Envoy's interval timer);
//! - at most `max_ejection_percent` of the endpoints are ejected at once (`floor(n * pct / 100)`,
//!   Envoy's rule); [`OutlierConfig::always_eject_one`] (default on, as in gRFC A50) lets one
//!   endpoint be ejected even when that share rounds down to 0 — Envoy's `always_eject_one_host`
//!   defaults to off, so a 10% cap there ejects nothing below 10 endpoints; a lone endpoint is
//!   never ejected (that only turns its errors into "unavailable");
//! - ejection is bound to membership: [`Pool::remove`] frees the endpoint's slot, and outcomes of
//!   its requests still in flight never eject it again (Envoy drops a removed host's monitor).
//!
//! Un-ejection happens exactly when the time is up (at the next pick that looks, or
//! [`Pool::sweep`]), not at the next interval tick as in Envoy; a deliberate improvement.

use crate::endpoint::{Availability, EndpointState, Outcome};
use crate::math::{exp_neg, sqrt};
use crate::sync::{
    AtomicU32,
    Ordering::{Acquire, Relaxed, Release},
};
use crate::time::{elapsed_ms, millis};

/// Stamps older than this are re-based by [`Pool::sweep`], so 32-bit stamps never wrap.
const REBASE_MS: u32 = 1 << 31;

/// How P2C compares two endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// Fewest requests in flight.
    LeastRequest,
    /// Peak-EWMA latency times in-flight (tower / linkerd / Finagle).
    #[default]
    PeakEwma,
    /// go-zero's `sqrt(lag + 1) * (inflight + 1)`.
    GoZero,
}

/// Passive outlier detection settings. Defaults are Envoy's (and gRFC A50's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint (Envoy: 5). 0 disables ejection.
    pub consecutive_failures: u32,
    /// Ejection time for the first ejection, in milliseconds (Envoy: 30 s).
    pub base_ejection_ms: u32,
    /// Upper bound of the ejection time, in milliseconds (Envoy: 300 s).
    pub max_ejection_ms: u32,
    /// At most this share of endpoints is ejected at once, in percent (Envoy: 10).
    pub max_ejection_percent: u8,
    /// The ejection multiplier decays by one per this many milliseconds un-ejected (Envoy's
    /// `interval`: 10 s).
    pub interval_ms: u32,
    /// Allow one ejection even when `max_ejection_percent` of the endpoints rounds down to 0
    /// (gRFC A50's behaviour; Envoy's `always_eject_one_host`, which defaults to false there).
    pub always_eject_one: bool,
    /// Success-rate ejection (gRFC A50, Envoy `success_rate_*`), run once per `interval_ms` by
    /// the core [`Balancer`](crate::balancer::Balancer); `None`: off.
    pub success_rate: Option<SuccessRateEjection>,
    /// Failure-percentage ejection (gRFC A50, Envoy `failure_percentage_*`), run once per
    /// `interval_ms`; `None`: off.
    pub failure_percentage: Option<FailurePercentageEjection>,
}

/// gRFC A50 success-rate ejection: among endpoints with at least `request_volume` calls in the
/// interval (and at least `minimum_hosts` of them), eject those whose success rate is below
/// `mean - stdev * stdev_factor / 1000`, each with probability `enforcement_percentage`%.
/// Defaults are A50's (and Envoy's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuccessRateEjection {
    /// 1900 = 1.9 standard deviations.
    pub stdev_factor: u32,
    /// Chance, in percent, that a detected outlier is ejected.
    pub enforcement_percentage: u8,
    /// Endpoints with enough volume needed before the algorithm runs.
    pub minimum_hosts: u32,
    /// Calls in the interval for an endpoint to count.
    pub request_volume: u32,
}

impl Default for SuccessRateEjection {
    fn default() -> Self {
        Self {
            stdev_factor: 1900,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 100,
        }
    }
}

/// gRFC A50 failure-percentage ejection: among endpoints with at least `request_volume` calls in
/// the interval (and at least `minimum_hosts` of them), eject those whose failure percentage is
/// above `threshold`, each with probability `enforcement_percentage`%. Defaults are A50's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailurePercentageEjection {
    /// Failure percentage above which an endpoint is an outlier.
    pub threshold: u8,
    /// Chance, in percent, that a detected outlier is ejected.
    pub enforcement_percentage: u8,
    /// Endpoints with enough volume needed before the algorithm runs.
    pub minimum_hosts: u32,
    /// Calls in the interval for an endpoint to count.
    pub request_volume: u32,
}

impl Default for FailurePercentageEjection {
    fn default() -> Self {
        Self {
            threshold: 85,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 50,
        }
    }
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejection_percent: 10,
            interval_ms: 10_000,
            always_eject_one: true,
            success_rate: None,
            failure_percentage: None,
        }
    }
}

impl OutlierConfig {
    /// No ejection at all.
    pub const fn disabled() -> Self {
        Self {
            consecutive_failures: 0,
            base_ejection_ms: 0,
            max_ejection_ms: 0,
            max_ejection_percent: 0,
            interval_ms: 10_000,
            always_eject_one: false,
            success_rate: None,
            failure_percentage: None,
        }
    }

    /// Whether per-interval call counts are kept (an interval algorithm is configured).
    #[inline]
    pub(crate) fn counts_calls(&self) -> bool {
        self.success_rate.is_some() || self.failure_percentage.is_some()
    }

    /// The multiplier after one more ejection, and that ejection's length in milliseconds.
    pub(crate) fn next_ejection(&self, multiplier: u32) -> (u32, u32) {
        let base = u64::from(self.base_ejection_ms);
        let max = u64::from(self.max_ejection_ms.max(self.base_ejection_ms));
        // Envoy `ejectHost`: grow only while `multiplier * base < max + base`.
        let m = if u64::from(multiplier) * base < max + base {
            multiplier.saturating_add(1)
        } else {
            multiplier
        };
        let length = (base * u64::from(m.max(1))).min(max);
        (length.min(u64::from(u32::MAX)) as u32, m)
    }
}

/// Settings of a [`Pool`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolConfig {
    /// The cost policy.
    pub policy: Policy,
    /// Latency assumed before the first sample, in nanoseconds (linkerd: 30 ms). Peak-EWMA only:
    /// go-zero starts a fresh endpoint at lag 0.
    pub default_rtt_ns: f32,
    /// EWMA decay time constant, in nanoseconds (linkerd and go-zero: 10 s).
    pub decay_ns: f32,
    /// Passive outlier detection.
    pub outlier: OutlierConfig,
    /// Keep a pool-wide in-flight total (needed by bounded-load hashing; one more shared atomic per
    /// request, so off unless used).
    pub track_total: bool,
    /// A failed request's latency sample is this multiple of its latency (at most of the
    /// estimate), so fast errors never look cheap (see the [module docs](self)). Values below 1
    /// (and NaN) count as 1: a failure then only never lowers the estimate.
    pub failure_penalty: f32,
    /// P2C only: how much the endpoint's own reported utilization (ORCA, [`crate::wrr`]) raises
    /// its cost: `cost × (1 + utilization_weight × utilization)`, from a report no older than
    /// [`decay_ns`](Self::decay_ns). 0 (the default) ignores reports. Two backends with the same
    /// requests in flight and latency, one at 90% CPU, then differ — a tie P2C cannot see.
    pub utilization_weight: f32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            policy: Policy::PeakEwma,
            default_rtt_ns: 30e6,
            decay_ns: 10e9,
            outlier: OutlierConfig::default(),
            track_total: false,
            failure_penalty: DEFAULT_FAILURE_PENALTY,
            utilization_weight: 0.0,
        }
    }
}

impl PoolConfig {
    /// Default settings with `policy`.
    pub fn with_policy(policy: Policy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }
}

/// [`PoolConfig::failure_penalty`]'s default.
pub const DEFAULT_FAILURE_PENALTY: f32 = 30.0;

/// Keeps the pool-wide counters off the configuration's cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicU32);

/// `now` for picks that read no clock (see [`Pool::available`]).
pub(crate) const NO_CLOCK: u64 = u64::MAX;

/// go-zero's `forcePick`: a pair's loser not picked for this long is picked.
pub(crate) const FORCE_PICK_MS: u32 = 1000;

/// Shared state of one balancer's endpoints. See the [module docs](self).
#[derive(Debug)]
pub struct Pool {
    config: PoolConfig,
    /// The cost policy and whether the in-flight total is kept, changeable at runtime
    /// ([`set_policy`](Self::set_policy), [`set_track_total`](Self::set_track_total)).
    policy: AtomicU32,
    track_total: AtomicU32,
    endpoints: AtomicU32,
    ejected: Padded,
    total: Padded,
    /// Prequal probe ids of endpoints whose request just failed (0: empty): a failure makes
    /// the endpoint's pooled answers unusable, so Prequal's next owed probe rechecks it
    /// ([`take_failed`](Self::take_failed)). Endpoints without an id (other policies) are not
    /// queued.
    failed: [AtomicU32; FAILED_QUEUE],
}

/// A single failure is rechecked only if the endpoint had not failed for this long (ms).
const RECHECK_QUIET_MS: u32 = 1_000;

/// How many just-failed endpoints wait for a Prequal recheck; more at once overwrite one.
const FAILED_QUEUE: usize = 8;

impl Pool {
    /// A pool with `config` and no endpoints counted yet (see [`set_endpoints`](Self::set_endpoints)).
    pub fn new(config: PoolConfig) -> Self {
        Self {
            config,
            policy: AtomicU32::new(config.policy as u32),
            track_total: AtomicU32::new(config.track_total as u32),
            endpoints: AtomicU32::new(0),
            ejected: Padded(AtomicU32::new(0)),
            total: Padded(AtomicU32::new(0)),
            failed: core::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    /// Queues `e` for a Prequal recheck after a failure (no-op without a probe id).
    fn note_failed(&self, e: &EndpointState) {
        let id = e.probe_id();
        if id == 0 || self.failed.iter().any(|s| s.load(Relaxed) == id) {
            return;
        }
        // Release: the prober that takes the id (Acquire) sees the failure streak recorded
        // before it. Two failures racing here may queue the id twice; the prober dedups within
        // a call, and a duplicate only spends one more probe owed.
        if !self
            .failed
            .iter()
            .any(|s| s.compare_exchange(0, id, Release, Relaxed).is_ok())
        {
            // Full: the newest failure replaces one (which one does not matter; a recheck is
            // a hint, and the displaced endpoint still gets random probes).
            self.failed[id as usize % FAILED_QUEUE].store(id, Release);
        }
    }

    /// Takes the probe id of an endpoint queued by a failure, if any (Prequal's recheck).
    #[cfg(feature = "alloc")]
    pub(crate) fn take_failed(&self) -> Option<u32> {
        self.failed.iter().find_map(|s| match s.load(Relaxed) {
            0 => None,
            _ => Some(s.swap(0, Acquire)).filter(|&id| id != 0),
        })
    }

    /// The configuration as built (the policy and total tracking may have changed since: see
    /// [`policy`](Self::policy)).
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// The cost policy now in force.
    #[inline]
    pub fn policy(&self) -> Policy {
        match self.policy.load(Relaxed) {
            0 => Policy::LeastRequest,
            2 => Policy::GoZero,
            _ => Policy::PeakEwma,
        }
    }

    /// Switches the cost policy at runtime (a policy change from the control plane). Endpoint
    /// state is kept: in-flight counts carry over; a latency estimate the new policy reads is
    /// whatever the old one left (none after least-request, which keeps none).
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(policy as u32, Relaxed);
    }

    /// Starts or stops keeping the pool-wide in-flight total (bounded-load hashing needs it).
    /// Requests already in flight release what they took, so the total never underflows.
    pub fn set_track_total(&self, on: bool) {
        self.track_total.store(u32::from(on), Relaxed);
    }

    /// Tells the pool how many endpoints exist (the base of the ejection cap). Call on every rebuild.
    pub fn set_endpoints(&self, n: usize) {
        self.endpoints.store(n.min(u32::MAX as usize) as u32, Relaxed);
    }

    /// Whether `e` is ejected at `now`, and by which rule: a failure streak at the
    /// consecutive-failures threshold, or an interval algorithm (gRFC A50), as recorded when the
    /// ejection started. A plain reading
    /// for instruments (adapters label ejections with [`EjectionReason::as_str`]); not for the
    /// pick path.
    pub fn ejection(&self, e: &EndpointState, now: u64) -> Option<EjectionReason> {
        e.ejected_for_ms(now)?;
        Some(if e.ejected_by.load(Relaxed) == 0 {
            EjectionReason::ConsecutiveFailures
        } else {
            EjectionReason::OutlierStatistics
        })
    }

    /// Endpoints currently counted as ejected.
    pub fn ejected(&self) -> u32 {
        self.ejected.0.load(Relaxed)
    }

    #[inline]
    pub(crate) fn ejected_acquire(&self) -> u32 {
        self.ejected.0.load(Acquire)
    }

    /// Requests in flight across the pool (only with [`PoolConfig::track_total`], else 0).
    pub fn total_in_flight(&self) -> u32 {
        self.total.0.load(Relaxed)
    }

    /// Whether an ejection could start now (Prequal's recheck and error aversion ask): a slot
    /// is free under [`ejection_cap`](Self::ejection_cap) (consecutive failures), or an interval
    /// algorithm (A50: success rate, failure percentage) is configured and fewer than
    /// `max_ejection_percent` of the endpoints are ejected.
    #[inline]
    pub(crate) fn ejection_slot_free(&self) -> bool {
        let ejected = self.ejected.0.load(Relaxed);
        if ejected < self.ejection_cap() {
            return true;
        }
        let o = &self.config.outlier;
        o.counts_calls() && {
            let n = u64::from(self.endpoints.load(Relaxed));
            u64::from(ejected) * 100 < u64::from(o.max_ejection_percent.min(100)) * n
        }
    }

    /// How many endpoints may be ejected at once.
    pub fn ejection_cap(&self) -> u32 {
        let n = self.endpoints.load(Relaxed);
        let o = &self.config.outlier;
        if n < 2 || o.consecutive_failures == 0 {
            return 0;
        }
        let pct = u64::from(o.max_ejection_percent.min(100));
        let cap = (u64::from(n) * pct / 100) as u32;
        if o.always_eject_one && pct > 0 {
            cap.max(1)
        } else {
            cap
        }
    }

    #[inline]
    pub(crate) fn acquire_total(&self) -> bool {
        let on = self.track_total.load(Relaxed) != 0;
        if on {
            self.total.0.fetch_add(1, Relaxed);
        }
        on
    }

    #[inline]
    pub(crate) fn release_total(&self) {
        let _ = self.total.0.fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1));
    }

    /// Returns an ejection slot; saturating, so a state un-ejected through a pool that did not
    /// eject it can never wrap the count.
    fn release_slot(&self) {
        let _ = self
            .ejected
            .0
            .fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1));
    }

    /// The endpoint's cost at `now` under the policy, divided by its weight. Lower is better.
    #[inline]
    pub fn cost(&self, e: &EndpointState, now: u64) -> f32 {
        let (unweighted, weight) = self.cost_parts(e, now);
        unweighted / weight
    }

    /// `(cost before weighting, weight)`: comparing `a.0 * b.1` with `b.0 * a.1` orders two
    /// endpoints like [`cost`](Self::cost) without dividing.
    #[inline]
    pub(crate) fn cost_parts(&self, e: &EndpointState, now: u64) -> (f32, f32) {
        let load = e.in_flight() as f32 + 1.0;
        let mut unweighted = match self.policy() {
            Policy::LeastRequest => load,
            Policy::PeakEwma => self.estimate(e, now) * load,
            Policy::GoZero => sqrt(self.estimate(e, now) + 1.0) * load,
        };
        let w = self.config.utilization_weight;
        if w > 0.0 {
            if let Some(u) = e.reported_utilization(now, self.config.decay_ns as u64) {
                unweighted *= 1.0 + w * u;
            }
        }
        (unweighted, e.weight() as f32)
    }

    /// The latency estimate the cost uses at `now`: peak-EWMA's decayed toward 0 while idle (the
    /// default RTT before any sample), go-zero's lag as stored (0 before any sample).
    #[inline]
    pub fn estimate(&self, e: &EndpointState, now: u64) -> f32 {
        self.estimate_with(e, now, e.in_flight())
    }

    /// [`estimate`](Self::estimate) as it looks with `in_flight` requests outstanding.
    #[inline]
    fn estimate_with(&self, e: &EndpointState, now: u64, in_flight: u32) -> f32 {
        let (bits, stamp) = e.latency_raw();
        match self.policy() {
            Policy::GoZero => f32::from_bits(bits), // 0 bits = 0.0
            _ if bits == 0 => self.config.default_rtt_ns,
            // Requests outstanding: no decay (see the module docs).
            _ if in_flight > 0 => f32::from_bits(bits),
            _ => f32::from_bits(bits) * self.decay(elapsed_ms(millis(now), stamp)),
        }
    }

    /// `exp(-elapsed / decay)`.
    #[inline]
    fn decay(&self, elapsed_ms: u32) -> f32 {
        exp_neg(elapsed_ms as f32 * 1e6 / self.config.decay_ns)
    }

    /// Records a finished request: latency (a success's sample unless already taken at response
    /// headers; a failure's penalty; nothing for a neutral outcome), outcome, ejection. Returns
    /// whether it ejected.
    pub(crate) fn record(
        &self,
        e: &EndpointState,
        now: u64,
        latency_ns: Option<u64>,
        outcome: Outcome,
    ) -> bool {
        if let Some(latency) = latency_ns {
            match outcome {
                Outcome::Success => self.record_latency(e, now, latency, false),
                Outcome::Failure => self.record_latency(e, now, latency, true),
                Outcome::Neutral => {}
            }
        }
        match outcome {
            Outcome::Success => {
                e.record_success();
                if self.config.outlier.counts_calls() {
                    e.count_success();
                }
                false
            }
            Outcome::Neutral => false,
            Outcome::Failure => {
                let now_ms = millis(now);
                // Whether this failure is the endpoint's first in RECHECK_QUIET_MS (read before
                // recording it).
                let isolated = e.failures() == 0 || elapsed_ms(now_ms, e.failed_at_ms()) >= RECHECK_QUIET_MS;
                let streak = e.record_failure(now_ms);
                let threshold = self.config.outlier.consecutive_failures;
                if threshold == 0 {
                    return false;
                }
                if streak >= threshold {
                    return self.try_eject(e, now_ms);
                }
                // Prequal recheck: the answer makes a server failing fast (and so looking idle)
                // win the next picks, which ends its streak in an ejection within a few round
                // trips. Only while a slot under the cap is free (with none, or no ejection,
                // rechecks would feed a failing server for good), and for a single failure only
                // when the endpoint had not failed in the last second: a server failing a share
                // of requests would otherwise draw more traffic from each failure's recheck.
                if (streak >= 2 || isolated) && self.ejection_slot_free() {
                    self.note_failed(e);
                }
                false
            }
        }
    }

    /// Folds one latency sample into the estimate (peak-EWMA or go-zero's EWMA); a `failed`
    /// request's sample is the failure penalty. Least-request costs ignore latency: nothing to do
    /// (the pick path's fastest policy).
    pub(crate) fn record_latency(&self, e: &EndpointState, now: u64, latency_ns: u64, failed: bool) {
        if self.policy() == Policy::LeastRequest {
            return;
        }
        let now_ms = millis(now);
        let rtt = latency_ns as f32;
        let (_, stamp) = e.latency_raw();
        let w = self.decay(elapsed_ms(now_ms, stamp));
        // The estimate as picks saw it just before, this request not counted.
        let shown = self.estimate_with(e, now, e.in_flight().saturating_sub(1));
        // The failure penalty: a multiple of what a request on this endpoint costs — its latency
        // as the estimate shows it (capped at the default RTT), or this request's own if slower
        // (capped by the estimate) — so a fast error costs as much as a slow one, and failures
        // in a row do not compound (see the module docs). Never below `shown` or `rtt`.
        let penalty = if failed {
            let k = self.config.failure_penalty;
            let k = if k >= 1.0 { k } else { 1.0 };
            let base = rtt.min(shown).max(shown.min(self.config.default_rtt_ns));
            shown.max(rtt).max(k * base)
        } else {
            0.0
        };
        match self.policy() {
            Policy::GoZero => e.update_latency(now_ms, |bits| {
                let sample = if failed { penalty } else { rtt };
                // go-zero: the first sample is taken as is (`if olag == 0 { w = 0 }`).
                let blended = if bits == 0 {
                    sample
                } else {
                    shown * w + sample * (1.0 - w)
                };
                if failed {
                    blended.max(shown) // a failure never lowers the lag
                } else {
                    blended
                }
            }),
            _ => e.update_latency(now_ms, |bits| {
                if failed {
                    // Before the first sample `shown` is the default RTT: a fast failure must not
                    // make a fresh endpoint look cheap either.
                    return penalty;
                }
                if bits == 0 {
                    return rtt; // first sample
                }
                if rtt > shown {
                    rtt // a peak replaces at once
                } else {
                    shown * w + rtt * (1.0 - w) // <= shown: a faster sample never raises the cost
                }
            }),
        }
    }

    fn try_eject(&self, e: &EndpointState, now_ms: u32) -> bool {
        // Already out, being ejected, or removed: no slot, no new ejection.
        if !e.ejectable() {
            return false;
        }
        let cap = self.ejection_cap();
        // Reserve a slot under the cap first, so concurrent ejections can never exceed it.
        if self
            .ejected
            .0
            .fetch_update(Relaxed, Relaxed, |v| (v < cap).then_some(v + 1))
            .is_err()
        {
            return false;
        }
        let outlier = self.config.outlier;
        if e.eject(now_ms, |m| outlier.next_ejection(m)) {
            e.ejected_by.store(0, Relaxed);
            true
        } else {
            self.release_slot(); // someone else ejected it first, or it was removed
            false
        }
    }

    /// Ejects `e` at `now` as an interval algorithm decided (gRFC A50 success rate or failure
    /// percentage), if the ejected share stays within `max_ejection_percent` (A50's rule: an
    /// ejection may start while fewer than that percentage of the endpoints are ejected).
    /// Returns whether it ejected.
    pub fn eject_outlier(&self, e: &EndpointState, now: u64) -> bool {
        if !e.ejectable() {
            return false;
        }
        let n = u64::from(self.endpoints.load(Relaxed));
        let pct = u64::from(self.config.outlier.max_ejection_percent.min(100));
        if self
            .ejected
            .0
            .fetch_update(Relaxed, Relaxed, |v| {
                (u64::from(v) * 100 < pct * n).then_some(v + 1)
            })
            .is_err()
        {
            return false;
        }
        let outlier = self.config.outlier;
        if e.eject(millis(now), |m| outlier.next_ejection(m)) {
            e.ejected_by.store(1, Relaxed);
            true
        } else {
            self.release_slot();
            false
        }
    }

    /// Whether `e` can take a request at `now` (ready, not ejected), returning an expired
    /// ejection's slot on the way, as picks do.
    pub fn is_available(&self, e: &EndpointState, now: u64) -> bool {
        self.available(e, now)
    }

    /// Availability check for pickers: also un-ejects an endpoint whose time is up (once).
    /// With `now == NO_CLOCK` (a pick that did not read the clock because nothing was ejected),
    /// an ejected endpoint is simply unavailable: it can only be a concurrent fresh ejection.
    #[inline]
    pub(crate) fn available(&self, e: &EndpointState, now: u64) -> bool {
        if now == NO_CLOCK {
            return e.ready_and_not_ejected();
        }
        match e.availability(now) {
            Availability::Ready => true,
            Availability::NotReady | Availability::Ejected => false,
            Availability::EjectionOver(seen) => {
                if e.clear_expired(seen, millis(now)) {
                    self.release_slot();
                }
                true
            }
        }
    }

    /// Periodic upkeep (Envoy's interval timer; call it at least every few seconds): returns
    /// expired ejections, decays each un-ejected endpoint's multiplier by one per
    /// [`OutlierConfig::interval_ms`], and re-bases time stamps older than 2^31 ms so 32-bit
    /// stamps stay exact for endpoints idle or not ready for weeks (load-report stamps too).
    pub fn sweep<'a, I>(&self, now: u64, endpoints: I)
    where
        I: IntoIterator<Item = &'a EndpointState>,
    {
        let now_ms = millis(now);
        for e in endpoints {
            if e.clear_if_expired(now_ms) {
                self.release_slot();
            }
            e.decay_ejections(now_ms, self.config.outlier.interval_ms);
            let (_, stamp) = e.latency_raw();
            if elapsed_ms(now_ms, stamp) >= REBASE_MS && e.in_flight() == 0 {
                e.rebase_latency(now_ms, self.estimate(e, now));
            }
            e.rebase_load(now_ms);
            e.rebase_failed_at(now_ms, REBASE_MS);
        }
    }

    /// Forgets an endpoint that is being removed: frees its ejection slot if it holds one, and
    /// makes sure outcomes of its requests still in flight never eject it again.
    pub fn remove(&self, e: &EndpointState) {
        if e.mark_removed() {
            self.release_slot();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InFlight;

    const MS: u64 = 1_000_000;

    fn fail(e: &EndpointState, pool: &Pool, now: u64) -> bool {
        InFlight::start(e, pool, now)
            .complete(now + MS, Outcome::Failure)
            .ejected
    }

    #[test]
    fn an_old_failure_stays_old_across_the_clock_wrap() {
        let pool = Pool::new(PoolConfig {
            outlier: OutlierConfig::disabled(),
            ..PoolConfig::default()
        });
        let e = EndpointState::new(1);
        pool.set_endpoints(2);
        fail(&e, &pool, 0);
        // 49.7 days later the u32 millisecond clock is back just before the stamp: without the
        // sweep's rebase the failure would read as just now (elapsed 0).
        let day = 86_400_000 * MS;
        for d in 1..=49u64 {
            pool.sweep(d * day, [&e]);
        }
        let now = (u64::from(u32::MAX) - 60_000) * MS;
        pool.sweep(now, [&e]);
        assert!(elapsed_ms(millis(now), e.failed_at_ms()) >= REBASE_MS);
    }

    #[test]
    fn five_consecutive_failures_eject_for_base_time() {
        let pool = Pool::new(PoolConfig::default());
        let es: [EndpointState; 10] = core::array::from_fn(|_| EndpointState::new(1));
        pool.set_endpoints(10);
        for i in 0..4 {
            assert!(!fail(&es[0], &pool, i * MS));
        }
        assert!(fail(&es[0], &pool, 4 * MS));
        assert!(es[0].is_ejected(5 * MS));
        // Envoy BasicFlow5xx: not back at 9,999 ms after, back at 30,001 ms.
        assert!(es[0].is_ejected(5 * MS + 29_999 * MS));
        assert!(!es[0].is_ejected(5 * MS + 30_001 * MS));
        assert_eq!(pool.ejected(), 1);
        assert!(pool.available(&es[0], 5 * MS + 30_001 * MS));
        assert_eq!(pool.ejected(), 0);
    }

    #[test]
    fn ejection_reports_what_started_it() {
        let pool = Pool::new(PoolConfig::default());
        let es: [EndpointState; 10] = core::array::from_fn(|_| EndpointState::new(1));
        pool.set_endpoints(10);
        assert_eq!(pool.ejection(&es[0], 0), None);
        for i in 0..5 {
            fail(&es[0], &pool, i * MS);
        }
        // The streak is reset by the ejection; the reason is still the streak.
        assert_eq!(es[0].consecutive_failures(), 0);
        assert_eq!(
            pool.ejection(&es[0], 6 * MS),
            Some(EjectionReason::ConsecutiveFailures)
        );
        // (A second pool: the first's 10% cap is taken.)
        let other = Pool::new(PoolConfig::default());
        other.set_endpoints(10);
        assert!(other.eject_outlier(&es[1], 6 * MS));
        assert_eq!(
            other.ejection(&es[1], 7 * MS),
            Some(EjectionReason::OutlierStatistics)
        );
        assert_eq!(EjectionReason::OutlierStatistics.as_str(), "outlier_statistics");
        // Over: no reason.
        assert_eq!(pool.ejection(&es[0], 5 * MS + 30_001 * MS), None);
    }

    #[test]
    fn success_resets_the_streak() {
        let pool = Pool::new(PoolConfig::default());
        pool.set_endpoints(10);
        let e = EndpointState::new(1);
        for round in 0..3u64 {
            for i in 0..4 {
                assert!(!fail(&e, &pool, (round * 10 + i) * MS));
            }
            let _ = InFlight::start(&e, &pool, 0).complete(MS, Outcome::Success);
        }
        assert!(!e.is_ejected(100 * MS));
    }

    #[test]
    fn ejection_cap_holds_and_at_least_one() {
        let pool = Pool::new(PoolConfig::default());
        let es: [EndpointState; 4] = core::array::from_fn(|_| EndpointState::new(1));
        pool.set_endpoints(4);
        assert_eq!(pool.ejection_cap(), 1);
        for e in &es {
            for _ in 0..5 {
                fail(e, &pool, 0);
            }
        }
        assert_eq!(es.iter().filter(|e| e.is_ejected(MS)).count(), 1);
        pool.set_endpoints(1);
        assert_eq!(pool.ejection_cap(), 0);
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let cfg = PoolConfig {
            outlier: OutlierConfig {
                max_ejection_ms: 70_000,
                ..Default::default()
            },
            ..Default::default()
        };
        let pool = Pool::new(cfg);
        pool.set_endpoints(2);
        let e = EndpointState::new(1);
        let mut now = 0;
        for expected in [30_000, 60_000, 70_000, 70_000] {
            for _ in 0..5 {
                fail(&e, &pool, now);
            }
            assert_eq!(e.ejected_for_ms(now + MS), Some(expected), "{expected}");
            now += u64::from(expected) * MS + MS;
            assert!(pool.available(&e, now));
        }
    }

    #[test]
    fn sweep_returns_and_decays() {
        let pool = Pool::new(PoolConfig::default());
        pool.set_endpoints(2);
        let e = EndpointState::new(1);
        for _ in 0..5 {
            fail(&e, &pool, 0);
        }
        assert_eq!(e.ejections(), 1);
        pool.sweep(31_000 * MS, [&e]);
        assert_eq!(pool.ejected(), 0);
        assert_eq!(e.ejections(), 1);
        pool.sweep(70_000 * MS, [&e]);
        assert_eq!(e.ejections(), 0);
    }

    #[test]
    fn peak_ewma_takes_peaks_at_once_and_decays() {
        let pool = Pool::new(PoolConfig::default());
        let e = EndpointState::new(1);
        assert_eq!(pool.estimate(&e, 0), 30e6);
        let _ = InFlight::start(&e, &pool, 0).complete(10 * MS, Outcome::Success);
        assert_eq!(pool.estimate(&e, 10 * MS), 10e6);
        let _ = InFlight::start(&e, &pool, 10 * MS).complete(60 * MS, Outcome::Success);
        assert_eq!(pool.estimate(&e, 60 * MS), 50e6); // slower sample replaces
        let _ = InFlight::start(&e, &pool, 1060 * MS).complete(1061 * MS, Outcome::Success);
        let est = pool.estimate(&e, 1061 * MS);
        // Idle for 1 s: the estimate shown was 50 * w = 45.24 ms (w = exp(-1 s / 10 s)); the 1 ms
        // sample blends into that: 45.24 * w + 1 * (1 - w) = 41.03 ms.
        assert!((est - 41.03e6).abs() < 0.1e6, "{est}");
        // Idle decay: after another 10 s the estimate is e^-1 of itself.
        let later = pool.estimate(&e, 11_061 * MS);
        assert!((later / est - (-1.0f32).exp()).abs() < 1e-3);
    }

    #[test]
    fn fast_failures_never_lower_the_estimate() {
        let pool = Pool::new(PoolConfig::default());
        let e = EndpointState::new(1);
        let _ = InFlight::start(&e, &pool, 0).complete(20 * MS, Outcome::Success);
        for i in 0..3 {
            let t = 100 * MS + i * MS;
            let _ = InFlight::start(&e, &pool, t).complete(t + 1000, Outcome::Failure);
        }
        assert!(pool.estimate(&e, 103 * MS) >= 19.8e6);
    }

    #[test]
    fn a_fast_first_failure_does_not_look_cheap() {
        let pool = Pool::new(PoolConfig::default());
        let e = EndpointState::new(1);
        let _ = InFlight::start(&e, &pool, 0).complete(1000, Outcome::Failure);
        assert!(pool.estimate(&e, 1000) >= 30e6);
    }

    #[test]
    fn weights_scale_cost() {
        let pool = Pool::new(PoolConfig::with_policy(Policy::LeastRequest));
        let (a, b) = (EndpointState::new(1), EndpointState::new(4));
        assert!(pool.cost(&b, 0) < pool.cost(&a, 0));
        let go = Pool::new(PoolConfig::with_policy(Policy::GoZero));
        // go-zero: a fresh endpoint has lag 0, cost sqrt(0 + 1) * (0 + 1).
        assert_eq!(go.cost(&a, 0), 1.0);
    }

    #[test]
    fn go_zero_uses_plain_ewma() {
        let pool = Pool::new(PoolConfig::with_policy(Policy::GoZero));
        let e = EndpointState::new(1);
        let _ = InFlight::start(&e, &pool, 0).complete(10 * MS, Outcome::Success);
        let _ = InFlight::start(&e, &pool, 1010 * MS).complete(1110 * MS, Outcome::Success);
        // not replaced by the 100 ms peak: 10 * w + 100 * (1 - w), w = exp(-1.1 s / 10 s)
        let w = (-0.11f32).exp();
        let want = 10e6 * w + 100e6 * (1.0 - w);
        assert!((pool.estimate(&e, 1110 * MS) - want).abs() / want < 1e-3);
    }
}

/// Why an endpoint is ejected ([`Pool::ejection`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EjectionReason {
    /// Its failure streak reached [`OutlierConfig::consecutive_failures`].
    ConsecutiveFailures,
    /// An interval algorithm (success rate or failure percentage, gRFC A50) ejected it.
    OutlierStatistics,
}

impl EjectionReason {
    /// `consecutive_failures` or `outlier_statistics` (the instruments' `reason` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConsecutiveFailures => "consecutive_failures",
            Self::OutlierStatistics => "outlier_statistics",
        }
    }
}
