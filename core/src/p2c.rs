//! Power of two choices (Mitzenmacher 2001; tower's `p2c`, Envoy's least-request): sample two
//! distinct available endpoints with caller randomness, take the one with the lower
//! [`Pool::cost`], break ties randomly.
//!
//! A pick is O(1) in the number of endpoints: one random draw for the pair, one more only on a tie.
//! Endpoints that are not ready or are ejected are never returned while an available one exists:
//! an unavailable sample is redrawn twice, then a scan draws two uniformly among what is left.
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
use crate::pool::{Policy, Pool, FORCE_PICK_MS};
use crate::rng::{two_distinct, Rng};
use crate::time::{elapsed_ms, millis};

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

    /// The cheaper of `a` and `b`; a tie goes to a random one. Under [`Policy::GoZero`] the
    /// loser is picked instead when it has not been picked for a second (go-zero's `forcePick`,
    /// which probes endpoints whose lag went stale).
    #[inline]
    pub fn cheaper(&self, a: usize, b: usize, now: u64, rng: &mut impl Rng) -> usize {
        // cost = unweighted / weight; cross-multiplied, so no division on the pick path.
        let (ua, wa) = self.pool.cost_parts(self.endpoints[a].borrow(), now);
        let (ub, wb) = self.pool.cost_parts(self.endpoints[b].borrow(), now);
        let (ca, cb) = (ua * wb, ub * wa);
        let (win, lose) = if ca < cb || (ca == cb && rng.next_u64() & 1 == 0) {
            (a, b)
        } else {
            (b, a)
        };
        if self.pool.policy() == Policy::GoZero {
            return self.force_pick(win, lose, now);
        }
        win
    }

    /// go-zero's `choose`: stamp the winner's pick time, or take a loser idle for `forcePick`.
    #[cold]
    fn force_pick(&self, win: usize, lose: usize, now: u64) -> usize {
        let now_ms = millis(now);
        let loser = self.endpoints[lose].borrow();
        let seen = loser.last_pick_ms();
        // A compare-and-swap (go-zero's `atomic.CompareAndSwapInt64`): of concurrent picks that
        // all see a stale loser, one forces it; the others take their winner.
        if elapsed_ms(now_ms, seen) > FORCE_PICK_MS && loser.claim_pick(seen, now_ms) {
            return lose;
        }
        self.endpoints[win].borrow().set_last_pick(now_ms);
        win
    }

    /// Slow path: two endpoints drawn uniformly among the available ones (two passes, no
    /// allocation), so no endpoint is favoured by where the unavailable ones sit.
    #[cold]
    fn scan(&self, now: u64, rng: &mut impl Rng) -> Result<usize, PickError> {
        let avail = |i: &usize| self.pool.available(self.endpoints[*i].borrow(), now);
        let n = self.endpoints.len();
        let k = (0..n).filter(avail).count();
        let nth = |j: usize| (0..n).filter(avail).nth(j);
        match k {
            0 => Err(PickError::NoneAvailable),
            1 => nth(0).ok_or(PickError::NoneAvailable),
            k => {
                let (x, y) = two_distinct(rng.next_u64(), k);
                match (nth(x), nth(y)) {
                    (Some(a), Some(b)) => Ok(self.cheaper(a, b, now, rng)),
                    // Availability changed between the passes: take what is there.
                    (Some(a), None) | (None, Some(a)) => Ok(a),
                    (None, None) => nth(0).ok_or(PickError::NoneAvailable),
                }
            }
        }
    }
}
