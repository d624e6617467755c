//! [`Pool`]: what all endpoints of one balancer share: the cost policy, passive outlier detection
//! (ejection) and, for bounded-load hashing, the total in-flight count.
//!
//! Cost policies (lower is better; every cost is divided by the endpoint's weight):
//!
//! | [`Policy`] | cost | from |
//! |---|---|---|
//! | `LeastRequest` | `in_flight + 1` | Envoy least-request (`active_request_bias` 1) |
//! | `PeakEwma` | `rtt_estimate * (in_flight + 1)`; a slower sample replaces the estimate at once, faster ones decay in | tower / linkerd (default RTT 30 ms, decay 10 s) |
//! | `GoZero` | `sqrt(lag + 1) * (in_flight + 1)`, `lag` a time-decayed EWMA of latency (ns) | go-zero `p2c_ewma` |
//!
//! Least-request keeps no latency estimate (its cost ignores latency, and skipping it makes its pick
//! and completion the cheapest). An estimate also decays toward 0 while no sample arrives (tower's semantics), so an idle endpoint
//! is probed again. Failures never lower an estimate.
//!
//! Passive outlier detection (Envoy's `consecutive_5xx`): after `consecutive_failures` failures in a
//! row an endpoint is ejected for `base_ejection * ejections` (capped at `max_ejection`), unless that
//! would eject more than `max_ejection_percent` of the endpoints (at least one may always be ejected
//! when there are two or more; a lone endpoint is never ejected, since ejecting it only turns errors
//! into "unavailable"). Ejected endpoints return when their time is up; the multiplier decays by one
//! per `base_ejection` spent healthy ([`Pool::sweep`]).

use crate::endpoint::{millis, ms_diff, Availability, EndpointState, Outcome};
use crate::math::{exp_neg, sqrt};
use crate::sync::{AtomicU32, Ordering::Relaxed};

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

/// Passive outlier detection settings. Defaults are Envoy's.
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
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejection_percent: 10,
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
        }
    }
}

/// Settings of a [`Pool`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolConfig {
    /// The cost policy.
    pub policy: Policy,
    /// Latency assumed before the first sample, in nanoseconds (linkerd: 30 ms).
    pub default_rtt_ns: f32,
    /// EWMA decay time constant, in nanoseconds (linkerd and go-zero: 10 s).
    pub decay_ns: f32,
    /// Passive outlier detection.
    pub outlier: OutlierConfig,
    /// Keep a pool-wide in-flight total (needed by bounded-load hashing; one more shared atomic per
    /// request, so off unless used).
    pub track_total: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            policy: Policy::PeakEwma,
            default_rtt_ns: 30e6,
            decay_ns: 10e9,
            outlier: OutlierConfig::default(),
            track_total: false,
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

/// Keeps the pool-wide counters off the configuration's cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicU32);

/// Shared state of one balancer's endpoints. See the [module docs](self).
#[derive(Debug)]
pub struct Pool {
    config: PoolConfig,
    endpoints: AtomicU32,
    ejected: Padded,
    total: Padded,
}

impl Pool {
    /// A pool with `config` and no endpoints counted yet (see [`set_endpoints`](Self::set_endpoints)).
    pub const fn new(config: PoolConfig) -> Self {
        Self {
            config,
            endpoints: AtomicU32::new(0),
            ejected: Padded(AtomicU32::new(0)),
            total: Padded(AtomicU32::new(0)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Tells the pool how many endpoints exist (the base of the ejection cap). Call on every rebuild.
    pub fn set_endpoints(&self, n: usize) {
        self.endpoints.store(n.min(u32::MAX as usize) as u32, Relaxed);
    }

    /// Endpoints currently counted as ejected.
    pub fn ejected(&self) -> u32 {
        self.ejected.0.load(Relaxed)
    }

    /// Requests in flight across the pool (only with [`PoolConfig::track_total`], else 0).
    pub fn total_in_flight(&self) -> u32 {
        self.total.0.load(Relaxed)
    }

    /// How many endpoints may be ejected at once.
    pub fn ejection_cap(&self) -> u32 {
        let n = self.endpoints.load(Relaxed);
        if n < 2 || self.config.outlier.consecutive_failures == 0 {
            return 0;
        }
        let pct = u64::from(self.config.outlier.max_ejection_percent.min(100));
        ((u64::from(n) * pct / 100) as u32).max(u32::from(pct > 0))
    }

    #[inline]
    pub(crate) fn acquire_total(&self) -> bool {
        if self.config.track_total {
            self.total.0.fetch_add(1, Relaxed);
        }
        self.config.track_total
    }

    #[inline]
    pub(crate) fn release_total(&self) {
        let _ = self.total.0.fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1));
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
        let unweighted = match self.config.policy {
            Policy::LeastRequest => load,
            Policy::PeakEwma => self.estimate(e, now) * load,
            Policy::GoZero => sqrt(self.estimate(e, now) + 1.0) * load,
        };
        (unweighted, e.weight() as f32)
    }

    /// The latency estimate decayed to `now` (the default RTT before any sample).
    #[inline]
    pub fn estimate(&self, e: &EndpointState, now: u64) -> f32 {
        let (bits, stamp) = e.latency_raw();
        if bits == 0 {
            return self.config.default_rtt_ns;
        }
        let elapsed_ms = ms_diff(millis(now), stamp).max(0) as f32;
        f32::from_bits(bits) * exp_neg(elapsed_ms * 1e6 / self.config.decay_ns)
    }

    /// Records a finished request: latency estimate, outcome, ejection. Returns whether it ejected.
    pub(crate) fn record(&self, e: &EndpointState, now: u64, latency_ns: u64, outcome: Outcome) -> bool {
        let now_ms = millis(now);
        // Least-request costs ignore latency: skip the estimate (the pick path's fastest policy).
        if self.config.policy != Policy::LeastRequest {
            self.update_estimate(e, now_ms, latency_ns, outcome == Outcome::Failure);
        }
        match outcome {
            Outcome::Success => {
                e.record_success();
                false
            }
            Outcome::Neutral => false,
            Outcome::Failure => {
                let streak = e.record_failure();
                let threshold = self.config.outlier.consecutive_failures;
                threshold != 0 && streak >= threshold && self.try_eject(e, now_ms)
            }
        }
    }

    /// Folds one latency sample into the estimate (peak-EWMA or go-zero's plain EWMA).
    fn update_estimate(&self, e: &EndpointState, now_ms: u32, latency_ns: u64, failed: bool) {
        let rtt = latency_ns as f32;
        let decay_ns = self.config.decay_ns;
        let default_rtt = self.config.default_rtt_ns;
        let peak = self.config.policy == Policy::PeakEwma;
        let (_, stamp) = e.latency_raw();
        // The decay weight is needed only when a sample blends in; computed then.
        let w = || exp_neg(ms_diff(now_ms, stamp).max(0) as f32 * 1e6 / decay_ns);
        e.update_latency(now_ms, |bits| {
            if bits == 0 {
                // First sample. A fast failure must not make a fresh endpoint look cheap.
                return if failed { rtt.max(default_rtt) } else { rtt };
            }
            let est = f32::from_bits(bits);
            if failed {
                est.max(rtt) // a failure may raise the estimate, never lower it
            } else if peak && rtt > est {
                rtt
            } else {
                let w = w();
                est * w + rtt * (1.0 - w)
            }
        });
    }

    fn try_eject(&self, e: &EndpointState, now_ms: u32) -> bool {
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
        let o = &self.config.outlier;
        let times = u64::from(e.ejections()) + 1;
        let ms =
            (u64::from(o.base_ejection_ms) * times).min(u64::from(o.max_ejection_ms.max(o.base_ejection_ms)));
        if e.eject(now_ms.wrapping_add(ms as u32)) {
            true
        } else {
            self.ejected.0.fetch_sub(1, Relaxed); // someone else ejected it first
            false
        }
    }

    /// Availability check for pickers: also un-ejects an endpoint whose time is up (once).
    #[inline]
    pub(crate) fn available(&self, e: &EndpointState, now: u64) -> bool {
        match e.availability(now) {
            Availability::Ready => true,
            Availability::NotReady | Availability::Ejected => false,
            Availability::EjectionOver => {
                if e.clear_expired(millis(now)) {
                    self.ejected.0.fetch_sub(1, Relaxed);
                }
                true
            }
        }
    }

    /// Periodic upkeep (Envoy's interval timer): returns expired ejections, and decays each
    /// un-ejected endpoint's ejection multiplier by one per `base_ejection` spent healthy.
    pub fn sweep<'a, I>(&self, now: u64, endpoints: I)
    where
        I: IntoIterator<Item = &'a EndpointState>,
    {
        let now_ms = millis(now);
        let base = self.config.outlier.base_ejection_ms;
        for e in endpoints {
            if e.clear_expired(now_ms) {
                self.ejected.0.fetch_sub(1, Relaxed);
            }
            if !e.is_ejected(now) && e.ejections() > 0 && ms_diff(now_ms, e.ejected_until_ms()) >= base as i32
            {
                e.decay_ejections();
                e.set_ejected_until(now_ms);
            }
        }
    }

    /// Forgets an endpoint that is being removed: if it was ejected, frees its ejection slot.
    pub fn remove(&self, e: &EndpointState) {
        if e.clear_ejection() {
            let _ = self
                .ejected
                .0
                .fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1));
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
        // decayed toward 1 ms by exp(-1s/10s) weight: 50*0.905 + 1*0.095 = 45.3 ms
        assert!((est - 45.34e6).abs() < 0.1e6, "{est}");
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
        assert!((go.cost(&a, 0) - sqrt(30e6 + 1.0)).abs() < 1.0);
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
