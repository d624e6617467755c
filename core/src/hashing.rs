//! Load-aware consistent hashing: ring picks that look at endpoint state.
//!
//! - [`HashPolicy::Plain`]: the first available endpoint clockwise from the key (grpc-go, Envoy).
//! - [`HashPolicy::Bounded`]: consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam
//!   2016), Envoy's `hash_balance_factor`: with `total` requests in flight pool-wide, an endpoint of
//!   weight share `w` gets `slots = max(ceil(ceil((total + 1) * factor / 100) * w), 1)` and is skipped
//!   while its in-flight count is above `slots`. Shares are of the weight of the endpoints that can
//!   take traffic (Envoy normalises over the healthy hosts in the ring): pass
//!   [`available_weight`] to [`RingPicker::new`]. When every available endpoint is over its bound,
//!   the least overloaded one (lowest `in_flight / slots`, the first such clockwise) serves, as in
//!   Envoy's `BoundedLoadHashingLoadBalancer`. Deviation: Envoy probes past an overloaded host with
//!   random jumps; pickwise walks clockwise, so the spill of a key is deterministic (cache-friendly)
//!   and a pick stays one lap at most. Needs [`PoolConfig::track_total`](crate::PoolConfig::track_total).
//! - [`HashPolicy::Affinity`]: pickwise's own. The key's home endpoint and the next distinct available
//!   endpoint clockwise compete by [`Pool::cost`], with hysteresis: the request goes to the second only
//!   when `cost(home) > ratio * cost(second)`. With `ratio = 2` and least-request costs, a key leaves home
//!   only when home has more than twice the second's in-flight (plus one). Keys stay put under even
//!   load (cache affinity) and spill to a fixed neighbour under skew, so a hot key's overflow stays
//!   on two endpoints instead of spreading over the ring.
//!
//! # Examples
//!
//! ```
//! use pickwise::{hash, EndpointState, HashPolicy, Pool, PoolConfig, Ring, RingConfig, RingPicker};
//!
//! let hosts = [("a:1", 1), ("b:1", 1), ("c:1", 1)];
//! let ring = Ring::build(&hosts, &RingConfig::native(100)).unwrap();
//! let states: Vec<EndpointState> = hosts.iter().map(|(_, w)| EndpointState::new(*w)).collect();
//! let pool = Pool::new(PoolConfig { track_total: true, ..PoolConfig::default() });
//! let picker = RingPicker::new(ring.view(), &states, &pool, 3);
//! let i = picker.pick(0, hash::native(b"user-1"), HashPolicy::Bounded { factor_percent: 125 }).unwrap();
//! assert!(i < 3);
//! ```

use core::borrow::Borrow;

use crate::endpoint::EndpointState;
use crate::math::ceil;
use crate::p2c::PickError;
use crate::pool::Pool;
use crate::ring::RingView;

/// How a ring pick treats load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HashPolicy {
    /// First available endpoint clockwise.
    Plain,
    /// Skip endpoints over `factor_percent`% of their fair share (Envoy `hash_balance_factor`, >= 100).
    Bounded {
        /// 125 = 1.25x the average load.
        factor_percent: u32,
    },
    /// Home or the next endpoint clockwise, by cost with hysteresis `ratio` (>= 1).
    Affinity {
        /// Switch only when `cost(home) > ratio * cost(next)`.
        ratio: f32,
    },
}

/// A ring pick over endpoint states. `ring` owners index `endpoints`.
#[derive(Debug, Clone, Copy)]
pub struct RingPicker<'a, E> {
    ring: RingView<'a>,
    endpoints: &'a [E],
    pool: &'a Pool,
    total_weight: u64,
}

/// Sum of the endpoints' weights.
pub fn total_weight<E: Borrow<EndpointState>>(endpoints: &[E]) -> u64 {
    endpoints.iter().map(|e| u64::from(e.borrow().weight())).sum()
}

/// Sum of the weights of the endpoints that can take traffic at `now` (ready, not ejected): the
/// base of bounded-load shares. Compute it when the picker snapshot is built and pass it to
/// [`RingPicker::new`].
pub fn available_weight<E: Borrow<EndpointState>>(endpoints: &[E], now: u64) -> u64 {
    endpoints
        .iter()
        .map(Borrow::borrow)
        .filter(|e| e.is_available(now))
        .map(|e| u64::from(e.weight()))
        .sum()
}

impl<'a, E: Borrow<EndpointState>> RingPicker<'a, E> {
    /// A picker; `total_weight` is the weight that bounded-load shares divide, normally
    /// [`available_weight`]`(endpoints, now)` kept by the caller per snapshot (only
    /// [`HashPolicy::Bounded`] uses it).
    pub const fn new(ring: RingView<'a>, endpoints: &'a [E], pool: &'a Pool, total_weight: u64) -> Self {
        Self {
            ring,
            endpoints,
            pool,
            total_weight,
        }
    }

    #[inline]
    fn state(&self, i: u32) -> Option<&EndpointState> {
        self.endpoints.get(i as usize).map(Borrow::borrow)
    }

    #[inline]
    fn available(&self, i: u32, now: u64) -> bool {
        self.state(i).is_some_and(|e| self.pool.available(e, now))
    }

    /// `(in_flight, slots)` of endpoint `e` under Envoy's bounded-load formula.
    fn load_slots(&self, e: &EndpointState, factor_percent: u32) -> (u64, u64) {
        let total = u64::from(self.pool.total_in_flight()) + 1;
        let total_slots = (total * u64::from(factor_percent.max(100))).div_ceil(100);
        let share = f64::from(e.weight()) / self.total_weight.max(1) as f64;
        let slots = (ceil(total_slots as f64 * share) as u64).max(1);
        (u64::from(e.in_flight()), slots)
    }

    /// Whether endpoint `e` is over its bounded-load share (Envoy's formula).
    pub fn overloaded(&self, e: &EndpointState, factor_percent: u32) -> bool {
        let (load, slots) = self.load_slots(e, factor_percent);
        load > slots
    }

    /// The endpoint for request hash `hash` at `now`. Allocates nothing, takes no lock; walks at most
    /// one lap of the ring.
    pub fn pick(&self, now: u64, hash: u64, policy: HashPolicy) -> Result<usize, PickError> {
        if self.ring.is_empty() || self.endpoints.is_empty() {
            return Err(PickError::NoEndpoints);
        }
        let found = match policy {
            HashPolicy::Plain => self.ring.find(hash, |i| self.available(i, now)),
            HashPolicy::Bounded { factor_percent } => {
                // The least overloaded so far, as (endpoint, in_flight, slots).
                let mut least: Option<(u32, u64, u64)> = None;
                let within = self.ring.find(hash, |i| {
                    let Some(e) = self.state(i).filter(|e| self.pool.available(e, now)) else {
                        return false;
                    };
                    let (load, slots) = self.load_slots(e, factor_percent);
                    if load <= slots {
                        return true;
                    }
                    // load / slots < best_load / best_slots, without dividing.
                    if least.is_none_or(|(_, l, s)| {
                        u128::from(load) * u128::from(s) < u128::from(l) * u128::from(slots)
                    }) {
                        least = Some((i, load, slots));
                    }
                    false
                });
                within.or(least.map(|(i, _, _)| i))
            }
            HashPolicy::Affinity { ratio } => match self.ring.find_two(hash, |i| self.available(i, now)) {
                (Some(home), Some(next)) => {
                    let cost = |i: u32| self.state(i).map_or(f32::INFINITY, |e| self.pool.cost(e, now));
                    Some(if cost(home) > ratio.max(1.0) * cost(next) {
                        next
                    } else {
                        home
                    })
                }
                (home, _) => home,
            },
        };
        found.map(|i| i as usize).ok_or(PickError::NoneAvailable)
    }
}
