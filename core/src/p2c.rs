//! Power of two choices (Mitzenmacher 2001; tower's `p2c`, Envoy's least-request): sample two
//! distinct available endpoints with caller randomness, take the one with the lower
//! [`Pool::cost`], break ties randomly.
//!
//! A pick is O(1) in the number of endpoints: one random draw for the pair, one more only on a tie.
//! Endpoints that are not ready or are ejected are never returned while an available one exists:
//! an unavailable sample is redrawn twice, then a scan from a random start finds what is left.
//!
//! # Examples
//!
//! ```
//! use pickwise::{EndpointState, InFlight, Outcome, P2c, Pool, PoolConfig, Policy, SplitMix64};
//!
//! let pool = Pool::new(PoolConfig::with_policy(Policy::LeastRequest));
//! let endpoints: Vec<EndpointState> = (0..3).map(|_| EndpointState::new(1)).collect();
//! pool.set_endpoints(endpoints.len());
//! let mut rng = SplitMix64::new(1);
//!
//! let p2c = P2c::new(&endpoints, &pool);
//! let now = 0; // the caller's monotonic clock, in nanoseconds
//! let i = p2c.pick(now, &mut rng).unwrap();
//! let guard = InFlight::start(&endpoints[i], &pool, now);
//! // ... send the request ...
//! guard.complete(now + 2_000_000, Outcome::Success);
//! ```

use core::borrow::Borrow;
use core::fmt;

use crate::endpoint::EndpointState;
use crate::pool::Pool;
use crate::rng::{one, two_distinct, Rng};

/// Why a picker returned no endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PickError {
    /// The picker has no endpoints at all.
    NoEndpoints,
    /// Endpoints exist but none is ready and un-ejected.
    NoneAvailable,
}

impl fmt::Display for PickError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoEndpoints => "no endpoints",
            Self::NoneAvailable => "no endpoint is ready (all failing, connecting or ejected)",
        })
    }
}

impl core::error::Error for PickError {}

/// A P2C picker over a slice of endpoint states. Cheap to build (two references), so build one per
/// snapshot or even per pick.
#[derive(Debug)]
pub struct P2c<'a, E> {
    endpoints: &'a [E],
    pool: &'a Pool,
}

impl<E> Clone for P2c<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for P2c<'_, E> {}

impl<'a, E: Borrow<EndpointState>> P2c<'a, E> {
    /// A picker over `endpoints`, with costs and ejection from `pool`.
    pub const fn new(endpoints: &'a [E], pool: &'a Pool) -> Self {
        Self { endpoints, pool }
    }

    /// Index of the chosen endpoint at `now`. Allocates nothing, takes no lock.
    #[inline]
    pub fn pick(&self, now: u64, rng: &mut impl Rng) -> Result<usize, PickError> {
        let n = self.endpoints.len();
        let avail = |i: usize| self.pool.available(self.endpoints[i].borrow(), now);
        match n {
            0 => return Err(PickError::NoEndpoints),
            1 => {
                return if avail(0) {
                    Ok(0)
                } else {
                    Err(PickError::NoneAvailable)
                }
            }
            _ => {}
        }
        for _ in 0..3 {
            let (a, b) = two_distinct(rng.next_u64(), n);
            match (avail(a), avail(b)) {
                (true, true) => return Ok(self.cheaper(a, b, now, rng)),
                // One side unavailable: draw again so the survivor still competes.
                _ => continue,
            }
        }
        self.scan(now, rng)
    }

    /// The cheaper of `a` and `b`; a tie goes to a random one.
    #[inline]
    pub fn cheaper(&self, a: usize, b: usize, now: u64, rng: &mut impl Rng) -> usize {
        // cost = unweighted / weight; cross-multiplied, so no division on the pick path.
        let (ua, wa) = self.pool.cost_parts(self.endpoints[a].borrow(), now);
        let (ub, wb) = self.pool.cost_parts(self.endpoints[b].borrow(), now);
        let (ca, cb) = (ua * wb, ub * wa);
        if ca < cb {
            a
        } else if cb < ca {
            b
        } else if rng.next_u64() & 1 == 0 {
            a
        } else {
            b
        }
    }

    /// Slow path: the first two available endpoints from a random start.
    #[cold]
    fn scan(&self, now: u64, rng: &mut impl Rng) -> Result<usize, PickError> {
        let n = self.endpoints.len();
        let start = one(rng.next_u64(), n);
        let mut found = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| self.pool.available(self.endpoints[i].borrow(), now));
        match (found.next(), found.next()) {
            (Some(a), Some(b)) => Ok(self.cheaper(a, b, now, rng)),
            (Some(a), None) => Ok(a),
            _ => Err(PickError::NoneAvailable),
        }
    }
}
