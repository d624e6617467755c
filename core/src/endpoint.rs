//! Per-endpoint state that survives picker rebuilds, and the in-flight guard.
//!
//! Everything is an atomic, so picks take `&self`: no lock, no allocation. Each [`EndpointState`] is
//! aligned to a 64-byte cache line so two threads completing requests on different endpoints never
//! share a line (measured in `benches`: without padding, two threads were ~5x slower per op).
//!
//! Time is the caller's monotonic clock in nanoseconds (`now: u64`); it is stored as wrapping 32-bit
//! milliseconds, which is exact for intervals under 24 days.

use core::borrow::Borrow;

use crate::pool::Pool;
use crate::sync::{read, AtomicU32, Counter, Ordering::Relaxed};

const READY: u32 = 1;
const EJECTED: u32 = 2;

/// Caller's clock in nanoseconds to the wrapping millisecond stamp stored in atomics.
#[inline]
pub(crate) fn millis(now_ns: u64) -> u32 {
    (now_ns / 1_000_000) as u32
}

/// `a - b` in wrapping milliseconds, as a signed distance.
#[inline]
pub(crate) fn ms_diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

/// What [`EndpointState::availability`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Availability {
    Ready,
    NotReady,
    Ejected,
    /// Ejected, but the time is up: available, and the ejection should be cleared.
    EjectionOver,
}

/// How a request ended, as the caller classifies it (the tonic adapter maps gRPC codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Success: resets the consecutive-failure count; its latency updates the estimate.
    Success,
    /// Failure: counts toward ejection; its latency can only raise the estimate, never lower it
    /// (a refused connection is fast, and a failure must never look cheap).
    Failure,
    /// Neither (e.g. a client-side error): only releases the in-flight slot and records latency.
    Neutral,
}

/// Load and health of one endpoint, shared by every picker snapshot that includes it.
///
/// Create it once per endpoint and keep it (e.g. in an `Arc`) across picker rebuilds, so load is
/// not reset when membership changes.
///
/// Exact under any concurrency: the in-flight count, failure counts and ejection. Approximate when
/// requests on one endpoint race: the latency estimate and the `picks` statistic use plain stores
/// (last writer wins) to keep each request at two atomic read-modify-writes.
#[derive(Debug)]
#[repr(align(64))]
pub struct EndpointState {
    in_flight: AtomicU32,
    weight: AtomicU32,
    /// Latency estimate in nanoseconds as `f32` bits; 0 = no sample yet (use the default RTT).
    latency: AtomicU32,
    /// Millisecond stamp of the last latency update.
    stamp: AtomicU32,
    flags: AtomicU32,
    ejected_until: AtomicU32,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    picks: Counter,
    failures: Counter,
}

impl Default for EndpointState {
    fn default() -> Self {
        Self::new(1)
    }
}

impl EndpointState {
    /// A ready endpoint with `weight` (0 counts as 1), no load and no latency sample.
    pub const fn new(weight: u32) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            weight: AtomicU32::new(if weight == 0 { 1 } else { weight }),
            latency: AtomicU32::new(0),
            stamp: AtomicU32::new(0),
            flags: AtomicU32::new(READY),
            ejected_until: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            picks: Counter::new(0),
            failures: Counter::new(0),
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
            Availability::Ready | Availability::EjectionOver
        )
    }

    /// One load of the flags (two if ejected): what a picker needs to know.
    #[inline]
    pub(crate) fn availability(&self, now: u64) -> Availability {
        let flags = self.flags.load(Relaxed);
        if flags & READY == 0 {
            Availability::NotReady
        } else if flags & EJECTED == 0 {
            Availability::Ready
        } else if ms_diff(self.ejected_until.load(Relaxed), millis(now)) > 0 {
            Availability::Ejected
        } else {
            Availability::EjectionOver
        }
    }

    /// If ejected, how many milliseconds of ejection remain at `now`.
    pub fn ejected_for_ms(&self, now: u64) -> Option<u32> {
        let left = ms_diff(self.ejected_until.load(Relaxed), millis(now));
        (self.flags.load(Relaxed) & EJECTED != 0 && left > 0).then_some(left as u32)
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

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    /// Times this endpoint has been ejected, less decays (the ejection-time multiplier).
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Relaxed)
    }

    /// The latency estimate in nanoseconds, `None` before the first sample.
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

    /// Records a failure; returns the consecutive count.
    pub(crate) fn record_failure(&self) -> u32 {
        self.failures.fetch_add(1, Relaxed);
        self.consecutive_failures.fetch_add(1, Relaxed).saturating_add(1)
    }

    pub(crate) fn record_success(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    /// Sets the ejected flag until `until_ms`, unless already ejected. Returns whether it did.
    pub(crate) fn eject(&self, until_ms: u32) -> bool {
        if self.flags.fetch_or(EJECTED, Relaxed) & EJECTED != 0 {
            return false;
        }
        self.ejected_until.store(until_ms, Relaxed);
        self.ejections.fetch_add(1, Relaxed);
        self.consecutive_failures.store(0, Relaxed);
        true
    }

    /// Clears an expired ejection; true for exactly one caller per ejection.
    pub(crate) fn clear_expired(&self, now_ms: u32) -> bool {
        let flags = self.flags.load(Relaxed);
        if flags & EJECTED == 0 || ms_diff(self.ejected_until.load(Relaxed), now_ms) > 0 {
            return false;
        }
        self.flags.fetch_and(!EJECTED, Relaxed) & EJECTED != 0
    }

    /// Clears the ejection now (endpoint removed or reset); true if it was ejected.
    pub(crate) fn clear_ejection(&self) -> bool {
        self.flags.fetch_and(!EJECTED, Relaxed) & EJECTED != 0
    }

    /// The `ejected_until` stamp (wrapping ms).
    pub(crate) fn ejected_until_ms(&self) -> u32 {
        self.ejected_until.load(Relaxed)
    }

    pub(crate) fn decay_ejections(&self) {
        let _ = self
            .ejections
            .fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1));
    }

    pub(crate) fn set_ejected_until(&self, until_ms: u32) {
        self.ejected_until.store(until_ms, Relaxed);
    }
}

/// An in-flight request: holds one slot of an endpoint's in-flight count until dropped.
///
/// [`complete`](Self::complete) records the latency and outcome; dropping without completing (a
/// cancelled request) only releases the slot. Either way the count is decremented exactly once.
/// `E` and `P` are anything that borrows the endpoint state and the pool: references, or `Arc`s
/// for guards that move into futures.
///
/// ```
/// use pickwise::{EndpointState, InFlight, Outcome, Pool, PoolConfig};
///
/// let pool = Pool::new(PoolConfig::default());
/// let endpoint = EndpointState::new(1);
/// let guard = InFlight::start(&endpoint, &pool, 0);
/// assert_eq!(endpoint.in_flight(), 1);
/// guard.complete(5_000_000, Outcome::Success); // 5 ms later
/// assert_eq!(endpoint.in_flight(), 0);
/// assert_eq!(endpoint.latency_ns(), Some(5_000_000.0));
/// ```
#[derive(Debug)]
#[must_use = "dropping the guard ends the request at once"]
pub struct InFlight<E: Borrow<EndpointState>, P: Borrow<Pool>> {
    endpoint: E,
    pool: P,
    start: u64,
    counted_total: bool,
}

/// What [`InFlight::complete`] recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// `now - start`, saturating at 0 if time went backwards.
    pub latency_ns: u64,
    /// Whether this completion ejected the endpoint.
    pub ejected: bool,
}

impl<E: Borrow<EndpointState>, P: Borrow<Pool>> InFlight<E, P> {
    /// Takes an in-flight slot on `endpoint` at time `now` (nanoseconds).
    #[inline]
    pub fn start(endpoint: E, pool: P, now: u64) -> Self {
        endpoint.borrow().acquire();
        let counted_total = pool.borrow().acquire_total();
        Self {
            endpoint,
            pool,
            start: now,
            counted_total,
        }
    }

    /// The endpoint this request runs on.
    pub fn endpoint(&self) -> &E {
        &self.endpoint
    }

    /// When the request started.
    pub fn started_at(&self) -> u64 {
        self.start
    }

    /// Ends the request at `now` with `outcome`; releases the slot.
    #[inline]
    pub fn complete(self, now: u64, outcome: Outcome) -> Completion {
        let latency_ns = now.saturating_sub(self.start);
        let ejected = self
            .pool
            .borrow()
            .record(self.endpoint.borrow(), now, latency_ns, outcome);
        Completion { latency_ns, ejected }
        // Drop releases the slot.
    }
}

impl<E: Borrow<EndpointState>, P: Borrow<Pool>> Drop for InFlight<E, P> {
    #[inline]
    fn drop(&mut self) {
        self.endpoint.borrow().release();
        if self.counted_total {
            self.pool.borrow().release_total();
        }
    }
}
