//! [`Picker`]: the one decision every adapter needs — which endpoint serves this request — as a
//! sans-IO value built from a [`LbPolicy`] (named as gRPC service config names policies), the
//! endpoints of a snapshot, their ring and the [`Pool`].
//!
//! Adapters translate their world (a tonic snapshot, a Pingora backend set, an xDS cluster) into
//! these inputs and call [`Picker::pick`]; none decides on its own. A pick allocates nothing and
//! takes no lock.
//!
//! Rules, in order:
//! 1. **Ring hash** with a request hash (or, without one, a random hash when
//!    [`NoKey::RandomHash`]): the ring pick of [`RingPicker`] with the policy's load rule.
//! 2. Otherwise **P2C** ([`P2c`]) over the candidates, or **round robin** over them.
//! 3. **Panic routing** (Envoy's behaviour below its healthy-panic threshold): when every ready
//!    endpoint is ejected by outlier detection, ejection is ignored — the ring walks to the first
//!    ready endpoint, P2C and round robin take a ready candidate at random — so an outlier
//!    detector can never take the whole set down.
//! 4. Nothing ready: [`PickError`]; the adapter decides between waiting and failing fast.
//!
//! # Example
//!
//! ```
//! use pickwise::picker::{LbPolicy, Picker};
//! use pickwise::{EndpointState, Policy, Pool, PoolConfig, SplitMix64};
//!
//! let endpoints: Vec<EndpointState> = (0..3).map(|_| EndpointState::new(1)).collect();
//! let pool = Pool::new(PoolConfig::with_policy(Policy::LeastRequest));
//! pool.set_endpoints(endpoints.len());
//! let policy = LbPolicy::from_name("least_request_experimental").unwrap();
//! let picker = Picker::new(&policy, &endpoints, &pool);
//! let chosen = picker.pick(0, None, &mut SplitMix64::new(1)).unwrap();
//! assert!(chosen.is_ready());
//! ```

use core::borrow::Borrow;

use crate::endpoint::EndpointState;
use crate::hashing::{HashPolicy, RingPicker};
use crate::p2c::{P2c, PickError};
use crate::pool::{Policy, Pool};
use crate::prequal::PrequalConfig;
use crate::ring::{RingConfig, RingView};
use crate::rng::Rng;
use crate::schedule::Stride;
use crate::sync::{AtomicU32, Ordering::Relaxed};
use crate::wrr::WrrConfig;

/// What a ring-hash policy does with a request that carries no hash key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NoKey {
    /// Pick by P2C with the pool's cost policy (default).
    #[default]
    P2c,
    /// Pick a random hash on the ring (grpc-go's behaviour, gRFC A76).
    RandomHash,
}

impl NoKey {
    /// The hash a hashing policy uses: the request's `key`, else a random one
    /// ([`RandomHash`](Self::RandomHash)) or none (P2C decides).
    fn hash(self, key: Option<u64>, rng: &mut impl Rng) -> Option<u64> {
        match (key, self) {
            (Some(h), _) => Some(h),
            (None, Self::RandomHash) => Some(rng.next_u64()),
            (None, Self::P2c) => None,
        }
    }
}

/// A balancing policy. [`name`](Self::name) and [`from_name`](Self::from_name) use gRPC's
/// service-config names where gRPC has the policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LbPolicy {
    /// Power of two choices with a cost policy. gRPC's `least_request_experimental` (choice
    /// count 2) is `P2c(Policy::LeastRequest)`; peak-EWMA and go-zero are pickwise's.
    P2c(Policy),
    /// Round robin over the ready endpoints (gRPC `round_robin`).
    RoundRobin,
    /// Weighted round robin on the endpoints' own load reports (gRPC `weighted_round_robin`,
    /// gRFC A58): weights from ORCA reports ([`crate::wrr`]), recomputed by the balancer.
    WeightedRoundRobin(WrrConfig),
    /// Prequal (NSDI '24): the hot-cold lexicographic rule over probe answers (requests in
    /// flight, latency), P2C while fewer than two are usable ([`crate::prequal`]). Picks through
    /// a [`Balancer`](crate::balancer::Balancer)'s prepared picker, which holds the probe pool;
    /// a bare [`Picker`] runs the fallback P2C.
    Prequal(PrequalConfig),
    /// Maglev table lookups (Envoy `envoy.load_balancing_policies.maglev`; gRPC has none): an
    /// owner that cannot take the request hands it to the owner of the next slot.
    Maglev {
        /// Table size (a prime; Envoy's default is 65,537).
        table_size: u64,
        /// Requests without a hash key.
        no_key: NoKey,
    },
    /// Consistent hashing on a ring, with a load rule (gRPC `ring_hash_experimental`).
    RingHash {
        /// Ring mode and size.
        ring: RingConfig,
        /// How the ring pick treats load.
        load: HashPolicy,
        /// Requests without a hash key.
        no_key: NoKey,
    },
}

impl Default for LbPolicy {
    fn default() -> Self {
        Self::P2c(Policy::PeakEwma)
    }
}

impl LbPolicy {
    /// The policy's name: gRPC's (`least_request_experimental`, `round_robin`,
    /// `ring_hash_experimental`) or pickwise's (`pickwise_peak_ewma`, `pickwise_go_zero`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::P2c(Policy::LeastRequest) => "least_request_experimental",
            Self::P2c(Policy::PeakEwma) => "pickwise_peak_ewma",
            Self::P2c(Policy::GoZero) => "pickwise_go_zero",
            Self::RoundRobin => "round_robin",
            Self::WeightedRoundRobin(_) => "weighted_round_robin",
            Self::Prequal(_) => "pickwise_prequal",
            Self::RingHash { .. } => "ring_hash_experimental",
            Self::Maglev { .. } => "maglev",
        }
    }

    /// The policy named `name`, with defaults (grpc-go's ring sizes 1024..4096, random hash for
    /// requests without a key as gRFC A76 says); `None` for a name pickwise does not implement.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "least_request_experimental" => Self::P2c(Policy::LeastRequest),
            "pickwise_peak_ewma" => Self::P2c(Policy::PeakEwma),
            "pickwise_go_zero" => Self::P2c(Policy::GoZero),
            "round_robin" => Self::RoundRobin,
            "weighted_round_robin" => Self::WeightedRoundRobin(WrrConfig::default()),
            "pickwise_prequal" => Self::Prequal(PrequalConfig::default()),
            "ring_hash_experimental" => Self::RingHash {
                ring: RingConfig::grpc(),
                load: HashPolicy::Plain,
                no_key: NoKey::RandomHash,
            },
            "maglev" => Self::Maglev {
                table_size: 65_537,
                no_key: NoKey::RandomHash,
            },
            _ => return None,
        })
    }

    /// The ring configuration, for policies that hash.
    pub fn ring(&self) -> Option<&RingConfig> {
        match self {
            Self::RingHash { ring, .. } => Some(ring),
            _ => None,
        }
    }
}

/// One pick decision over one snapshot. Cheap to build (references only): build one per pick.
#[derive(Debug)]
pub struct Picker<'a, E> {
    policy: &'a LbPolicy,
    members: &'a [E],
    candidates: &'a [E],
    ring: Option<RingView<'a>>,
    table: Option<&'a [u32]>,
    pool: &'a Pool,
    total_weight: u64,
    cursor: Option<&'a AtomicU32>,
    /// Weighted round robin's scaled weights (one per candidate); `None`: plain round robin.
    rr_weights: Option<&'a [u16]>,
}

impl<E> Clone for Picker<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for Picker<'_, E> {}

impl<'a, E: Borrow<EndpointState>> Picker<'a, E> {
    /// A picker over `members` (every endpoint; also the P2C candidates) with `pool`.
    pub fn new(policy: &'a LbPolicy, members: &'a [E], pool: &'a Pool) -> Self {
        Self {
            policy,
            members,
            candidates: members,
            ring: None,
            table: None,
            pool,
            // Only bounded-load ring picks use it; `with_ring` sets it (an O(n) sum here would
            // put a scan of every endpoint on each pick).
            total_weight: 0,
            cursor: None,
            rr_weights: None,
        }
    }

    /// P2C and round robin draw from `candidates` instead of all members: pass the ready ones
    /// when the caller keeps them apart, so a pick never meets an unready endpoint.
    pub fn with_candidates(mut self, candidates: &'a [E]) -> Self {
        self.candidates = candidates;
        self
    }

    /// The ring whose owners index `members` (ring-hash policies).
    pub fn with_ring(mut self, ring: RingView<'a>, total_weight: u64) -> Self {
        self.ring = Some(ring);
        self.total_weight = total_weight;
        self
    }

    /// The Maglev table (slot -> index into `members`; [`Maglev::table`](crate::Maglev::table)).
    pub fn with_table(mut self, table: &'a [u32]) -> Self {
        self.table = Some(table);
        self
    }

    /// Weighted round robin over the candidates: `weights` are theirs, scaled by
    /// [`schedule::scale`](crate::schedule::scale) (one per candidate, same order), scheduled by
    /// the static stride scheduler ([`crate::schedule::Stride`], O(1) amortised) on the
    /// shared cursor. Ignored when the lengths differ.
    pub fn with_weights(mut self, weights: &'a [u16]) -> Self {
        self.rr_weights = Some(weights);
        self
    }

    /// The shared round-robin position (kept by the caller across snapshots).
    pub fn with_cursor(mut self, cursor: &'a AtomicU32) -> Self {
        self.cursor = Some(cursor);
        self
    }

    /// [`pick`](Self::pick), reading `clock` only when the decision needs the time: a keyed ring
    /// or Maglev pick (plain or bounded load) while no endpoint holds an ejection needs none —
    /// an ejection that starts meanwhile is honoured, and only expiring one needs the clock. For
    /// callers whose clock read is a measurable part of a pick (Pingora's per-select path).
    pub fn pick_with_clock(
        &self,
        clock: impl FnOnce() -> u64,
        key: Option<u64>,
        rng: &mut impl Rng,
    ) -> Result<&'a E, PickError> {
        let keyed = |no_key: &NoKey| key.is_some() || *no_key == NoKey::RandomHash;
        let timeless = match self.policy {
            LbPolicy::RingHash {
                load: HashPolicy::Plain | HashPolicy::Bounded { .. },
                no_key,
                ..
            } => self.ring.is_some() && keyed(no_key),
            LbPolicy::Maglev { no_key, .. } => self.table.is_some() && keyed(no_key),
            _ => false,
        };
        // Acquire pairs with the slot reservation that precedes every ejection's publication.
        let now = if timeless && self.pool.ejected_acquire() == 0 {
            crate::pool::NO_CLOCK
        } else {
            clock()
        };
        self.pick(now, key, rng)
    }

    /// The endpoint for a request with hash `key` (if it has one) at `now`.
    pub fn pick(&self, now: u64, key: Option<u64>, rng: &mut impl Rng) -> Result<&'a E, PickError> {
        if let (LbPolicy::RingHash { load, no_key, .. }, Some(ring)) = (self.policy, self.ring) {
            if let Some(h) = no_key.hash(key, rng) {
                if self.members.is_empty() || ring.is_empty() {
                    return Err(PickError::NoEndpoints);
                }
                let picker = RingPicker::new(ring, self.members, self.pool, self.total_weight);
                return match picker.pick(now, h, *load) {
                    Ok(i) => Ok(&self.members[i]),
                    // Panic routing: every ready endpoint is ejected; ignore ejection.
                    Err(e) => ring
                        .find(h, |i| {
                            self.members
                                .get(i as usize)
                                .is_some_and(|m| m.borrow().is_ready())
                        })
                        .map(|i| &self.members[i as usize])
                        .ok_or(e),
                };
            }
        }
        if let (LbPolicy::Maglev { no_key, .. }, Some(table)) = (self.policy, self.table) {
            if let Some(h) = no_key.hash(key, rng) {
                return self.maglev(table, h, now);
            }
        }
        let picked = match self.policy {
            LbPolicy::RoundRobin | LbPolicy::WeightedRoundRobin(_) => self.round_robin(now, rng),
            _ => P2c::new(self.candidates, self.pool).pick(now, rng),
        };
        match picked {
            Ok(i) => Ok(&self.candidates[i]),
            Err(e) => self.panic_route(rng).ok_or(e),
        }
    }

    /// The owner of `table[h % M]`, or of the next slots' owners if it cannot take the request;
    /// ejection ignored if every ready endpoint is ejected (panic routing).
    fn maglev(&self, table: &[u32], h: u64, now: u64) -> Result<&'a E, PickError> {
        if table.is_empty() || self.members.is_empty() {
            return Err(PickError::NoEndpoints);
        }
        let m = table.len();
        let start = (h % m as u64) as usize;
        let member = |slot: usize| self.members.get(table[(start + slot) % m] as usize);
        let probe = |accept: &dyn Fn(&EndpointState) -> bool| {
            (0..m).filter_map(member).find(|e| accept((*e).borrow()))
        };
        probe(&|e| self.pool.available(e, now))
            .or_else(|| probe(&|e| e.is_ready()))
            .ok_or(PickError::NoneAvailable)
    }

    /// The candidate whose turn it is (weighted by the stride scheduler when weights are set);
    /// a turn that lands on an unavailable candidate is redrawn at random, so its share spreads
    /// over the others instead of falling to its neighbour.
    fn round_robin(&self, now: u64, rng: &mut impl Rng) -> Result<usize, PickError> {
        let n = self.candidates.len();
        if n == 0 {
            return Err(PickError::NoEndpoints);
        }
        let avail = |i: usize| self.pool.available(self.candidates[i].borrow(), now);
        let picked = match (self.rr_weights, self.cursor) {
            (Some(w), Some(cursor)) if w.len() == n => Stride::new(w, cursor).next(rng, avail),
            _ => {
                let first = self.cursor.map_or(0, |c| c.fetch_add(1, Relaxed)) as usize % n;
                if avail(first) {
                    Some(first)
                } else {
                    (0..2 * n)
                        .map(|_| (((rng.next_u64() >> 32) * n as u64) >> 32) as usize)
                        .find(|&i| avail(i))
                }
            }
        };
        match picked {
            Some(i) => Ok(i),
            None => self.random_available(now, rng).ok_or(PickError::NoneAvailable),
        }
    }

    /// An available candidate at random (two passes, no allocation): the fallback when turns
    /// keep landing on unavailable candidates.
    #[cold]
    fn random_available(&self, now: u64, rng: &mut impl Rng) -> Option<usize> {
        let avail = |i: &usize| self.pool.available(self.candidates[*i].borrow(), now);
        let k = (0..self.candidates.len()).filter(avail).count();
        if k == 0 {
            return None;
        }
        let nth = (((rng.next_u64() >> 32) * k as u64) >> 32) as usize;
        (0..self.candidates.len()).filter(avail).nth(nth)
    }

    /// A ready candidate at random, ejected or not (two passes, no allocation).
    #[cold]
    fn panic_route(&self, rng: &mut impl Rng) -> Option<&'a E> {
        let ready = || self.candidates.iter().filter(|c| (*c).borrow().is_ready());
        let k = ready().count();
        if k == 0 {
            return None;
        }
        ready().nth((((rng.next_u64() >> 32) * k as u64) >> 32) as usize)
    }
}
