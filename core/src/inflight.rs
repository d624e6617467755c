//! The in-flight guard ([`InFlight`]): one request's slot on an endpoint, released on drop (tower's
//! `PendingRequests` handle), and what completing it recorded ([`Completion`]). It sits above both
//! [`endpoint`](crate::endpoint) (the counters it holds) and [`pool`](crate::pool) (where the
//! outcome is recorded), so `endpoint.rs` need not import `pool.rs`.

use core::borrow::Borrow;

use crate::endpoint::{EndpointState, Outcome};
use crate::pool::Pool;

/// An in-flight request: holds one slot of an endpoint's in-flight count until dropped.
///
/// [`complete`](Self::complete) records the latency and outcome; dropping without completing (a
/// cancelled request) only releases the slot. Either way the count is decremented exactly once.
/// For streams, call [`responded`](Self::responded) when the response headers arrive: the latency
/// sample is taken then (tower's `CompleteOnResponse`), while the slot stays held until the stream
/// ends, so a long stream does not make its endpoint look slow. `E` and `P` are anything that
/// borrows the endpoint state and the pool: references, or `Arc`s for guards that move into futures.
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
    /// The latency sampled at response headers, if [`responded`](Self::responded) was called.
    sampled: Option<u64>,
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
            sampled: None,
        }
    }

    /// The endpoint this request runs on.
    pub fn endpoint(&self) -> &E {
        &self.endpoint
    }

    /// The pool this request counts in.
    pub fn pool(&self) -> &P {
        &self.pool
    }

    /// When the request started.
    pub fn started_at(&self) -> u64 {
        self.start
    }

    /// The response has begun at `now` (headers arrived) and looks successful so far: records
    /// the latency sample now, as a success sample (call it only for a success: not for an
    /// informational 1xx, not for a 5xx). The slot stays held; [`complete`](Self::complete) then
    /// records only the outcome, and a failure there (a `grpc-status` in trailers) the failure
    /// penalty on this header latency. Later calls do nothing.
    pub fn responded(&mut self, now: u64) {
        if self.sampled.is_none() {
            let latency_ns = now.saturating_sub(self.start);
            self.sampled = Some(latency_ns);
            self.pool
                .borrow()
                .record_latency(self.endpoint.borrow(), now, latency_ns, false);
        }
    }

    /// Ends the request at `now` with `outcome`; releases the slot.
    #[inline]
    pub fn complete(self, now: u64, outcome: Outcome) -> Completion {
        let latency_ns = now.saturating_sub(self.start);
        let sample = match (self.sampled, outcome) {
            (None, _) => Some(latency_ns),
            // Sampled as a success at headers, failed after: the penalty, on the header latency
            // (a long stream's duration is no latency).
            (Some(at_headers), Outcome::Failure) => Some(at_headers),
            (Some(_), _) => None,
        };
        let ejected = self
            .pool
            .borrow()
            .record(self.endpoint.borrow(), now, sample, outcome);
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
