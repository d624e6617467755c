//! Per-endpoint state that survives picker rebuilds (the in-flight guard that counts requests on
//! it is in [`inflight`](crate::inflight), the clock helpers in [`time`](crate::time)).
//!
//! Everything is an atomic, so picks take `&self`: no lock, no allocation. Each [`EndpointState`] is
//! aligned to a 64-byte cache line so two threads completing requests on different endpoints never
//! share a line (measured in `benches`: without padding, two threads were ~5x slower per op).
//!
//! Time is the caller's monotonic clock in nanoseconds (`now: u64`). It is stored as wrapping 32-bit
//! millisecond stamps, and every interval is measured as an *unsigned* distance from a stamp, so
//! intervals up to 49 days are exact (ejections of 2^31 ms and more included); [`Pool::sweep`]
//! re-bases stamps older than 2^31 ms, so endpoints idle or not ready for months stay exact too.
//! A clock that steps back by up to 2^20 ms (17 minutes) reads as "no time passed".
//!
//! # Ejection publication
//!
//! `flags` packs readiness, the ejection bits and a 24-bit ejection sequence number in one atomic
//! word. An ejection first claims the `EJECTING` bit, then writes its start and duration, then sets
//! `EJECTED` with a release store; readers load the flags with acquire, so a reader that sees
//! `EJECTED` also sees that ejection's times, and no concurrent pick can mistake a fresh ejection
//! for an expired one. Un-ejection is a compare-and-swap against the exact flags word (sequence
//! included) under which the ejection was seen to be over, so a late un-ejector can never clear a
//! newer ejection (no ABA). `REMOVED` is set by [`Pool::remove`] and is checked in the same
//! atomic steps, so an endpoint's ejection slot is freed exactly once and a removed endpoint is
//! never ejected again. The `loom` model in `tests/loom.rs` checks these interleavings.
//!
//! [`Pool::sweep`]: crate::Pool::sweep
//! [`Pool::remove`]: crate::Pool::remove

use crate::sync::{
    read, AtomicU32, Counter,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use crate::time::{elapsed_ms, millis};
use crate::wrr::{LoadReport, LoadWeight, WrrConfig};

const READY: u32 = 1;
const EJECTED: u32 = 1 << 1;
/// An ejection is writing its times; not yet visible as ejected.
const EJECTING: u32 = 1 << 2;
/// Removed from the pool: never ejected again.
const REMOVED: u32 = 1 << 3;
const SEQ_ONE: u32 = 1 << 8;

/// What [`EndpointState::availability`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Availability {
    Ready,
    NotReady,
    Ejected,
    /// Ejected, but the time is up: available, and the ejection should be cleared under these
    /// exact flags.
    EjectionOver(u32),
}

/// How a request ended, as the caller classifies it ([`outcome`](crate::outcome) maps HTTP
/// statuses, gRPC codes and errors to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Success: resets the consecutive-failure count; its latency updates the estimate.
    Success,
    /// Failure: counts toward ejection and raises the estimate by the failure penalty
    /// ([`PoolConfig::failure_penalty`](crate::PoolConfig::failure_penalty)): a refused
    /// connection or a fast 5xx must never look cheap.
    Failure,
    /// Neither (a local or downstream error: the client went away, sent a malformed request,
    /// cancelled): only releases the in-flight slot; no latency sample, no failure count.
    Neutral,
}

/// Load and health of one endpoint, shared by every picker snapshot that includes it.
///
/// Create it once per endpoint and keep it (e.g. in an `Arc`) across picker rebuilds, so load is
/// not reset when membership changes. Once [`Pool::remove`]d, a state is never ejected again: an
/// endpoint that comes back gets a fresh state.
///
/// Exact under any concurrency: the in-flight count, failure counts and ejection. Approximate when
/// requests on one endpoint race: the latency estimate and the `picks` statistic use plain stores
/// (last writer wins) to keep each request at two atomic read-modify-writes.
///
/// [`Pool::remove`]: crate::Pool::remove
#[derive(Debug)]
#[repr(align(64))]
pub struct EndpointState {
    in_flight: AtomicU32,
    weight: AtomicU32,
    /// Latency estimate in nanoseconds as `f32` bits; 0 = no sample yet (use the default RTT).
    latency: AtomicU32,
    /// Millisecond stamp of the last latency update.
    stamp: AtomicU32,
    /// READY, EJECTED, EJECTING, REMOVED and the ejection sequence; see the module docs.
    flags: AtomicU32,
    /// Start (ms stamp) and length (ms) of the current or last ejection.
    ejected_at: AtomicU32,
    eject_for: AtomicU32,
    /// Stamp of the last ejection-multiplier step (ejection, or decay while healthy).
    backoff_at: AtomicU32,
    consecutive_failures: AtomicU32,
    /// The ejection-time multiplier (Envoy's `ejectTimeBackoff`).
    ejections: AtomicU32,
    /// What started the current or last ejection: 0 a failure streak, 1 an interval algorithm
    /// (read by [`Pool::ejection`](crate::Pool::ejection); the streak itself is reset by the
    /// ejection, so it cannot tell).
    pub(crate) ejected_by: AtomicU32,
    /// Stamp of the last pick that chose this endpoint (go-zero's `forcePick`; GoZero policy only).
    last_pick: AtomicU32,
    /// Successful requests, wrapping; counted only while success-rate or failure-percentage
    /// ejection is configured (gRFC A50's per-interval call counters read its deltas).
    successes: AtomicU32,
    picks: Counter,
    failures: Counter,
    /// Weighted round robin's report-derived weight (gRFC A58).
    load: LoadWeight,
    /// Its id in a Prequal probe pool (0: none yet; [`crate::prequal`]).
    probe_id: AtomicU32,
    /// Millisecond stamp of its last failure (Prequal ignores answers received before it).
    failed_at: AtomicU32,
}

impl Default for EndpointState {
    fn default() -> Self {
        Self::new(1)
    }
}

impl EndpointState {
    /// A ready endpoint with `weight` (0 counts as 1), no load and no latency sample.
    pub fn new(weight: u32) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            weight: AtomicU32::new(if weight == 0 { 1 } else { weight }),
            latency: AtomicU32::new(0),
            stamp: AtomicU32::new(0),
            flags: AtomicU32::new(READY),
            ejected_at: AtomicU32::new(0),
            eject_for: AtomicU32::new(0),
            backoff_at: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_by: AtomicU32::new(0),
            last_pick: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            picks: Counter::new(0),
            failures: Counter::new(0),
            load: LoadWeight::new(),
            probe_id: AtomicU32::new(0),
            failed_at: AtomicU32::new(0),
        }
    }

    /// Requests started and not yet finished or dropped.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// The weight (at least 1).
    #[inline]
    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    /// Sets the weight (0 counts as 1).
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Relaxed);
    }

    /// Whether the caller reports the endpoint connected and usable.
    #[inline]
    pub fn is_ready(&self) -> bool {
        self.flags.load(Relaxed) & READY != 0
    }

    /// Marks the endpoint ready or not (connectivity, active health checks).
    pub fn set_ready(&self, ready: bool) {
        if ready {
            self.flags.fetch_or(READY, Relaxed);
        } else {
            self.flags.fetch_and(!READY, Relaxed);
        }
    }

    /// Whether [`Pool::remove`](crate::Pool::remove) has removed this endpoint.
    pub fn is_removed(&self) -> bool {
        self.flags.load(Relaxed) & REMOVED != 0
    }

    /// Whether passive outlier detection has the endpoint ejected at `now`.
    #[inline]
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_for_ms(now).is_some()
    }

    /// Ready and not ejected at `now`: the only endpoints pickers return while any exists.
    #[inline]
    pub fn is_available(&self, now: u64) -> bool {
        matches!(
            self.availability(now),
            Availability::Ready | Availability::EjectionOver(_)
        )
    }

    /// Ready and not ejected, by the flags alone (no clock: an expired ejection still counts).
    #[inline]
    pub(crate) fn ready_and_not_ejected(&self) -> bool {
        self.flags.load(Acquire) & (READY | EJECTED) == READY
    }

    /// One load of the flags (three loads if ejected): what a picker needs to know.
    #[inline]
    pub(crate) fn availability(&self, now: u64) -> Availability {
        let flags = self.flags.load(Acquire);
        if flags & READY == 0 {
            Availability::NotReady
        } else if flags & EJECTED == 0 {
            Availability::Ready
        } else if self.ejection_left(flags, millis(now)).is_some() {
            Availability::Ejected
        } else {
            Availability::EjectionOver(flags)
        }
    }

    /// Milliseconds of ejection left at `now_ms`, given flags (loaded with acquire) that show
    /// `EJECTED`; `None` if the time is up.
    #[inline]
    fn ejection_left(&self, flags: u32, now_ms: u32) -> Option<u32> {
        if flags & EJECTED == 0 {
            return None;
        }
        let length = self.eject_for.load(Relaxed);
        let spent = elapsed_ms(now_ms, self.ejected_at.load(Relaxed));
        (spent < length).then(|| length - spent)
    }

    /// If ejected, how many milliseconds of ejection remain at `now`.
    pub fn ejected_for_ms(&self, now: u64) -> Option<u32> {
        self.ejection_left(self.flags.load(Acquire), millis(now))
    }

    /// Requests started on this endpoint (wrapping on targets without 64-bit atomics; concurrent
    /// picks may undercount it slightly, see the type docs).
    pub fn picks(&self) -> u64 {
        read(&self.picks)
    }

    /// Requests that ended in [`Outcome::Failure`].
    pub fn failures(&self) -> u64 {
        read(&self.failures)
    }

    /// Failures since the last success (reset by an ejection and by its end, as Envoy does).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    /// The ejection-time multiplier: grows by one per ejection while the ejection time is below
    /// its maximum, shrinks by one per outlier interval spent healthy (Envoy's `ejectTimeBackoff`).
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Relaxed)
    }

    /// The latency estimate in nanoseconds as last stored (not decayed), `None` before the first
    /// sample. [`Pool::estimate`](crate::Pool::estimate) gives the value the cost uses.
    pub fn latency_ns(&self) -> Option<f32> {
        let bits = self.latency.load(Relaxed);
        (bits != 0).then(|| f32::from_bits(bits))
    }

    #[inline]
    pub(crate) fn latency_raw(&self) -> (u32, u32) {
        (self.latency.load(Relaxed), self.stamp.load(Relaxed))
    }

    /// Replaces the estimate with `update(old_estimate_bits)` and stamps `now_ms`.
    ///
    /// A plain load and store, not a compare-and-swap: two completions racing on one endpoint may
    /// lose one sample (last writer wins), which a decaying estimate absorbs, and the pick path
    /// stays at two read-modify-write operations (the in-flight count) per request.
    pub(crate) fn update_latency(&self, now_ms: u32, update: impl Fn(u32) -> f32) {
        let cur = self.latency.load(Relaxed);
        // Never store 0: it means "no sample".
        let next = update(cur).max(1.0).to_bits();
        if next != cur {
            self.latency.store(next, Relaxed);
        }
        if self.stamp.load(Relaxed) != now_ms {
            self.stamp.store(now_ms, Relaxed);
        }
    }

    /// Re-bases the latency stamp to `now_ms` with the estimate `value` (sweep of long-idle states).
    pub(crate) fn rebase_latency(&self, now_ms: u32, value: f32) {
        if self.latency.load(Relaxed) != 0 {
            self.latency.store(value.max(1.0).to_bits(), Relaxed);
        }
        self.stamp.store(now_ms, Relaxed);
    }

    /// Forgets the latency estimate (back to "no sample": the default RTT). For a new connection
    /// after a failed one: errors of the old connection never weigh on its replacement.
    pub fn reset_latency(&self) {
        self.latency.store(0, Relaxed);
    }

    /// A load report from the endpoint at `now` (an ORCA report from a call's trailer, the
    /// out-of-band stream or a response header), for `weighted_round_robin` (gRFC A58). Lock-free;
    /// a report A58 ignores (zero utilization or qps) changes nothing.
    pub fn report_load(&self, now: u64, report: &LoadReport) {
        self.load.report(now, report);
    }

    /// Forgets the load reports: the blackout period starts again with the next one (a new
    /// connection; the [`Balancer`](crate::balancer::Balancer) calls it when the endpoint becomes
    /// READY).
    pub fn reset_load(&self) {
        self.load.reset();
    }

    /// [`reset_load`](Self::reset_load) unless a report arrived after `since` (the caller's
    /// clock, ns): the balancer's reset on READY keeps a first report from the new connection
    /// that raced the READY.
    pub fn reset_load_unless_reported_since(&self, since: u64) {
        self.load.reset_unless_reported_since(since);
    }

    /// Re-bases the load-report stamps (see `Pool::sweep`).
    pub(crate) fn rebase_load(&self, now_ms: u32) {
        self.load.rebase(now_ms);
    }

    /// Keeps an old failure's stamp within the wrapping clock's range (half of it, ~24.9 days):
    /// older stamps would read as recent (Prequal's error aversion and recheck compare it).
    pub(crate) fn rebase_failed_at(&self, now_ms: u32, max_age_ms: u32) {
        let at = self.failed_at.load(Relaxed);
        if now_ms.wrapping_sub(at) >= max_age_ms {
            let _ = self
                .failed_at
                .compare_exchange(at, now_ms.wrapping_sub(max_age_ms), Relaxed, Relaxed);
        }
    }

    /// The weight `weighted_round_robin` schedules this endpoint with at `now` (A58), 0 while it
    /// has none usable (no report, in the blackout, or expired).
    pub fn load_weight(&self, now: u64, config: &WrrConfig) -> f64 {
        self.load.weight(now, config)
    }

    /// [`load_weight`](Self::load_weight) with why it is or is not usable.
    pub fn load_weight_state(&self, now: u64, config: &WrrConfig) -> (f64, crate::wrr::WeightState) {
        self.load.weight_state(now, config)
    }

    /// The utilization of the last load report if it is at most `max_age_ns` old at `now`
    /// (application utilization when the report had it, else CPU).
    #[inline]
    pub fn reported_utilization(&self, now: u64, max_age_ns: u64) -> Option<f32> {
        self.load.utilization(now, max_age_ns)
    }

    #[inline]
    pub(crate) fn last_pick_ms(&self) -> u32 {
        self.last_pick.load(Relaxed)
    }

    /// Stamps a forced pick at `now_ms` if the stamp is still `seen`: true for one caller only.
    #[inline]
    pub(crate) fn claim_pick(&self, seen: u32, now_ms: u32) -> bool {
        self.last_pick
            .compare_exchange(seen, now_ms, Relaxed, Relaxed)
            .is_ok()
    }

    #[inline]
    pub(crate) fn set_last_pick(&self, now_ms: u32) {
        self.last_pick.store(now_ms, Relaxed);
    }

    /// Takes an in-flight slot (exact, atomic) and counts the pick (a statistic: a plain
    /// load and store, so concurrent picks on one endpoint may undercount it slightly).
    #[inline]
    pub(crate) fn acquire(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.picks
            .store(self.picks.load(Relaxed).wrapping_add(1), Relaxed);
    }

    /// Returns an in-flight slot; saturates at 0 so no sequence can underflow.
    #[inline]
    pub(crate) fn release(&self) {
        let _ = self
            .in_flight
            .fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1));
    }

    /// Records a failure at `now_ms`; returns the consecutive count.
    pub(crate) fn record_failure(&self, now_ms: u32) -> u32 {
        self.failures.fetch_add(1, Relaxed);
        if self.failed_at.load(Relaxed) != now_ms {
            self.failed_at.store(now_ms, Relaxed);
        }
        self.consecutive_failures.fetch_add(1, Relaxed).saturating_add(1)
    }

    /// Successful requests (wrapping at 2^32), counted only while success-rate or
    /// failure-percentage ejection is configured; compare two readings with `wrapping_sub`.
    pub fn successes(&self) -> u32 {
        self.successes.load(Relaxed)
    }

    /// Its Prequal probe-pool id (0: none assigned).
    pub(crate) fn probe_id(&self) -> u32 {
        self.probe_id.load(Relaxed)
    }

    /// Sets the probe-pool id unless one is set; returns the id in force.
    pub(crate) fn set_probe_id(&self, id: u32) -> u32 {
        match self.probe_id.compare_exchange(0, id, Relaxed, Relaxed) {
            Ok(_) => id,
            Err(cur) => cur,
        }
    }

    /// Replaces the probe-pool id (a collision found when a picker was built).
    #[cfg(feature = "alloc")]
    pub(crate) fn replace_probe_id(&self, id: u32) {
        self.probe_id.store(id, Relaxed);
    }

    /// Stamp of the last failure (0 before any).
    pub(crate) fn failed_at_ms(&self) -> u32 {
        self.failed_at.load(Relaxed)
    }

    pub(crate) fn count_success(&self) {
        self.successes.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_success(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    /// Whether an ejection could start now (not ejected, not being ejected, not removed).
    #[inline]
    pub(crate) fn ejectable(&self) -> bool {
        self.flags.load(Relaxed) & (EJECTED | EJECTING | REMOVED) == 0
    }

    /// Ejects for `length_ms` from `now_ms` unless already ejected (or being ejected) or removed.
    /// `multiplier` maps the old ejection multiplier to the new one. Returns whether it ejected;
    /// on `false` the caller's reserved slot must be returned.
    pub(crate) fn eject(&self, now_ms: u32, length_ms: impl FnOnce(u32) -> (u32, u32)) -> bool {
        // 1. Claim the ejection.
        let claimed = self.flags.fetch_update(Acquire, Relaxed, |f| {
            (f & (EJECTED | EJECTING | REMOVED) == 0).then_some(f | EJECTING)
        });
        if claimed.is_err() {
            return false;
        }
        // 2. Write its times (nobody reads them until EJECTED is published).
        let (length, multiplier) = length_ms(self.ejections.load(Relaxed));
        self.ejected_at.store(now_ms, Relaxed);
        self.eject_for.store(length, Relaxed);
        self.ejections.store(multiplier, Relaxed);
        self.backoff_at.store(now_ms, Relaxed);
        self.consecutive_failures.store(0, Relaxed);
        // 3. Publish (release), unless the endpoint was removed meanwhile.
        let published = self.flags.fetch_update(Release, Relaxed, |f| {
            let f = f & !EJECTING;
            Some(if f & REMOVED != 0 {
                f
            } else {
                (f | EJECTED).wrapping_add(SEQ_ONE)
            })
        });
        matches!(published, Ok(f) if f & REMOVED == 0)
    }

    /// Ends the ejection seen under `seen` (flags whose ejection is over). True for exactly one
    /// caller per ejection; never clears a newer ejection (the sequence differs).
    pub(crate) fn clear_expired(&self, seen: u32, now_ms: u32) -> bool {
        let mut seen = seen;
        loop {
            match self
                .flags
                .compare_exchange_weak(seen, seen & !EJECTED, Relaxed, Acquire)
            {
                Ok(_) => {
                    // Envoy `checkHostForUneject`: reset the streak so a few failures do not
                    // re-eject at once.
                    self.consecutive_failures.store(0, Relaxed);
                    self.backoff_at.store(now_ms, Relaxed);
                    return true;
                }
                // Only READY changed (or a spurious failure): same ejection, try again.
                Err(f) if (f ^ seen) & !READY == 0 => seen = f,
                Err(_) => return false,
            }
        }
    }

    /// Clears an expired ejection at `now_ms` (loads the flags itself). See [`clear_expired`](Self::clear_expired).
    pub(crate) fn clear_if_expired(&self, now_ms: u32) -> bool {
        let flags = self.flags.load(Acquire);
        flags & EJECTED != 0
            && self.ejection_left(flags, now_ms).is_none()
            && self.clear_expired(flags, now_ms)
    }

    /// Marks the endpoint removed and clears any ejection; true if it was ejected (its slot must
    /// be freed). Idempotent: true at most once.
    pub(crate) fn mark_removed(&self) -> bool {
        // Acquire: the slot this frees was reserved before the ejection was published (release),
        // so the caller's release of the slot must come after that reservation.
        let old = self
            .flags
            .fetch_update(AcqRel, Acquire, |f| Some((f | REMOVED) & !EJECTED));
        matches!(old, Ok(f) if f & EJECTED != 0)
    }

    /// One multiplier decay step per `interval_ms` spent un-ejected (Envoy's interval timer).
    pub(crate) fn decay_ejections(&self, now_ms: u32, interval_ms: u32) {
        if self.ejections.load(Relaxed) == 0 || self.flags.load(Relaxed) & (EJECTED | EJECTING) != 0 {
            return;
        }
        if elapsed_ms(now_ms, self.backoff_at.load(Relaxed)) >= interval_ms.max(1) {
            // A compare-and-swap, so a decay racing with a new ejection's multiplier loses.
            let v = self.ejections.load(Relaxed);
            if v > 0
                && self
                    .ejections
                    .compare_exchange(v, v - 1, Relaxed, Relaxed)
                    .is_ok()
            {
                self.backoff_at.store(now_ms, Relaxed);
            }
        }
    }
}
