//! Subsetting for large fleets: each client connects to a few backends instead of all of them.
//!
//! With client-side balancing every client connects to every backend; 10,000 clients and 1,000
//! backends make 10 million connections. A subsetter gives each client a small subset, chosen so
//! that backends still get even connections and even load, and so that membership changes move
//! few connections. Three are here, all sans-IO and deterministic for the same inputs:
//!
//! | [`Subsetting`] | reference | connections per backend | load per backend | churn when a backend is added |
//! |---|---|---|---|---|
//! | [`Random`](Subsetting::Random) | gRFC A68 `random_subsetting` (rendezvous hashing) | binomial spread: even only when `clients * subset / backends` is large | as uneven as the connections | minimal: a client's subset changes only if the new backend ranks in its top `subset_size` |
//! | [`Deterministic`](Subsetting::Deterministic) | Google SRE book ch. 20 (rounds of shuffled backends) | exactly even within a round (±1 across rounds) | even | large: the shuffle of every round changes |
//! | [`Aperture`](Subsetting::Aperture) | Finagle deterministic aperture | even to ±1 connection | exactly even (fractional weights at the arc's ends) | every client's arc shifts slightly: about one connection per client |
//!
//! The output is a list of [`Member`]s: an index into the caller's backend list and a weight in
//! `(0, 1]` (1 except at the ends of an aperture) that P2C and the ring consume as endpoint
//! weights. Backends are put in a canonical order by the XXH64 of their key, so every client
//! computes the same order whatever order discovery delivered them in.
//!
//! [`Subsetting::subset`] allocates (feature `alloc`); [`Subsetting::subset_into`] writes into
//! caller storage and allocates nothing. Both give the same result.
//!
//! # Example
//!
//! ```
//! use pickwise::subset::{Client, Subsetting};
//!
//! let backends: Vec<String> = (0..100).map(|i| format!("10.0.0.{i}:50051")).collect();
//! let me = Client::Index { index: 7, count: 50 };
//! let members = Subsetting::Aperture { min_aperture: 12 }.subset(me, &backends).unwrap();
//! // 100 backends, 50 clients, aperture 12: each client covers 12 backends' worth of the ring.
//! let covered: f64 = members.iter().map(|m| m.weight).sum();
//! assert!((covered - 12.0).abs() < 1e-9);
//! ```

mod aperture;
mod deterministic;
mod random;

use core::fmt;

use crate::hash;
use crate::ring::build::sort_pairs;

/// Who this client is among its peers (the clients of the same backend set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// Index `index` of `count` peers (e.g. a StatefulSet ordinal, or the rank of this client's
    /// id among the peers discovery reports). `index` is taken modulo `count`.
    Index {
        /// This client's position, `0..count`.
        index: u32,
        /// How many peers there are (at least 1).
        count: u32,
    },
    /// A stable identity (e.g. the XXH64 of a pod name) among about `count` peers: hashed to a
    /// coordinate, so peers need not agree on indices (coverage is then even only on average).
    Stable {
        /// The identity.
        id: u64,
        /// About how many peers there are (at least 1).
        count: u32,
    },
}

impl Client {
    /// The number of peers (at least 1).
    pub fn count(&self) -> u32 {
        match *self {
            Self::Index { count, .. } | Self::Stable { count, .. } => count.max(1),
        }
    }

    /// The index among the peers (`Stable`: the id reduced to `0..count`).
    pub fn index(&self) -> u32 {
        match *self {
            Self::Index { index, count } => index % count.max(1),
            Self::Stable { id, count } => (hash::mix64(id) % u64::from(count.max(1))) as u32,
        }
    }

    /// This client's coordinate on the unit ring, `[0, 1)`: `index / count`, or the id hashed.
    pub fn coordinate(&self) -> f64 {
        match *self {
            Self::Index { .. } => f64::from(self.index()) / f64::from(self.count()),
            Self::Stable { id, .. } => (hash::mix64(id) >> 11) as f64 / (1u64 << 53) as f64,
        }
    }

    /// The per-client salt of random subsetting.
    pub fn seed(&self) -> u64 {
        match *self {
            Self::Index { .. } => hash::mix64(u64::from(self.index()) ^ 0x5ca1_ab1e),
            Self::Stable { id, .. } => hash::mix64(id),
        }
    }
}

/// How a client picks its subset. See the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subsetting {
    /// gRFC A68 `random_subsetting`: rank backends by a per-client salted hash (rendezvous
    /// hashing) and keep the first `subset_size`. A68 hashes `address + salt` with MurmurHash3;
    /// pickwise uses XXH64 seeded with the salt, which has the same properties (a uniform,
    /// per-client order that survives membership changes); the salt is random in A68 and
    /// [`Client::seed`] here, so no two implementations agree on subsets anyway.
    Random {
        /// Backends per client (A68's default: 20).
        subset_size: u32,
    },
    /// The SRE book's deterministic subsetting: clients are grouped into rounds of
    /// `backends / subset_size` clients; each round shuffles the backends with the round number
    /// as seed, and client `i` of the round takes slice `i` of the shuffle.
    Deterministic {
        /// Backends per client.
        subset_size: u32,
    },
    /// Finagle's deterministic aperture: backends evenly spaced on a unit ring, this client's
    /// arc starts at its coordinate and is `ceil(aperture * clients / backends)` client units
    /// wide (so every point of the ring is covered by the same number of clients); backends
    /// partly inside the arc get a fractional weight.
    Aperture {
        /// The aperture in backends (Finagle: 12); the arc is at least this many backends wide.
        min_aperture: u32,
    },
}

/// One backend of a subset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Member {
    /// Index into the backend list given to the subsetter.
    pub backend: u32,
    /// Share of the backend this client covers, `(0, 1]`: use it as the endpoint's weight.
    pub weight: f64,
}

/// Why a subset could not be computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubsetError {
    /// No backends.
    Empty,
    /// `subset_size` or `min_aperture` is 0.
    ZeroSize,
    /// Caller storage too small (`subset_into`).
    Capacity {
        /// Entries needed.
        needed: usize,
        /// Entries available.
        capacity: usize,
    },
    /// More backends than a `u32` index can name.
    TooManyBackends,
}

impl fmt::Display for SubsetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("no backends to subset"),
            Self::ZeroSize => f.write_str("subset size must be at least 1"),
            Self::Capacity { needed, capacity } => {
                write!(f, "storage for {capacity} entries is too small, {needed} needed")
            }
            Self::TooManyBackends => f.write_str("too many backends (at most u32::MAX)"),
        }
    }
}

impl core::error::Error for SubsetError {}

/// Caller storage for [`Subsetting::subset_into`]: one entry per backend.
#[derive(Debug)]
pub struct Scratch<'a> {
    /// Sort keys.
    pub hashes: &'a mut [u64],
    /// Backend indices.
    pub order: &'a mut [u32],
}

impl Subsetting {
    /// The configured size: `subset_size`, or the aperture's `min_aperture`.
    pub fn size(&self) -> u32 {
        match *self {
            Self::Random { subset_size } | Self::Deterministic { subset_size } => subset_size,
            Self::Aperture { min_aperture } => min_aperture,
        }
    }

    /// The subset of `backends` (keys, e.g. `"host:port"`) for `client`, into caller storage:
    /// `scratch` and `out` have one entry per backend. Returns how many members were written.
    /// Allocates nothing.
    pub fn subset_into<K: AsRef<[u8]>>(
        &self,
        client: Client,
        backends: &[K],
        scratch: Scratch<'_>,
        out: &mut [Member],
    ) -> Result<usize, SubsetError> {
        self.subset_ready_into(client, backends, scratch, out, |_| true, 0)
    }

    /// [`subset_into`](Self::subset_into), grown until it holds at least `min_ready` backends for
    /// which `ready(backend index)` is true (or all backends): a subset whose endpoints are down
    /// widens instead of failing requests. Random and deterministic subsets extend along their
    /// own order (the salted ranking, the round's shuffle); an aperture widens its arc one
    /// backend at a time, so its fractional weights stay exact.
    pub fn subset_ready_into<K: AsRef<[u8]>>(
        &self,
        client: Client,
        backends: &[K],
        scratch: Scratch<'_>,
        out: &mut [Member],
        ready: impl Fn(u32) -> bool,
        min_ready: u32,
    ) -> Result<usize, SubsetError> {
        let n = backends.len();
        if n == 0 {
            return Err(SubsetError::Empty);
        }
        if u32::try_from(n).is_err() {
            return Err(SubsetError::TooManyBackends);
        }
        if self.size() == 0 {
            return Err(SubsetError::ZeroSize);
        }
        if scratch.hashes.len() < n || scratch.order.len() < n {
            return Err(SubsetError::Capacity {
                needed: n,
                capacity: scratch.hashes.len().min(scratch.order.len()),
            });
        }
        if out.len() < n {
            return Err(SubsetError::Capacity {
                needed: n,
                capacity: out.len(),
            });
        }
        let min_ready = min_ready.min(n as u32);
        let (hashes, order) = (&mut scratch.hashes[..n], &mut scratch.order[..n]);
        let seed = match self {
            Self::Random { .. } => Some(client.seed()),
            _ => None,
        };
        for (i, (h, o)) in hashes.iter_mut().zip(order.iter_mut()).enumerate() {
            let key = backends[i].as_ref();
            *h = match seed {
                Some(s) => xxhash_rust::xxh64::xxh64(key, s),
                None => hash::xxh64(key),
            };
            *o = i as u32;
        }
        // The canonical order (by hash, ties by input position): the same on every client.
        sort_pairs(hashes, order);
        let grow = Grow {
            ready: &ready,
            min_ready,
        };
        Ok(match *self {
            Self::Random { subset_size } => random::take(order, subset_size, &grow, out),
            Self::Deterministic { subset_size } => {
                deterministic::take(client, order, subset_size, &grow, out)
            }
            Self::Aperture { min_aperture } => aperture::take(client, order, min_aperture, &grow, out),
        })
    }

    /// [`subset_into`](Self::subset_into) with owned storage.
    #[cfg(feature = "alloc")]
    pub fn subset<K: AsRef<[u8]>>(
        &self,
        client: Client,
        backends: &[K],
    ) -> Result<alloc::vec::Vec<Member>, SubsetError> {
        use alloc::vec;
        let n = backends.len();
        let mut hashes = vec![0u64; n];
        let mut order = vec![0u32; n];
        let mut out = vec![
            Member {
                backend: 0,
                weight: 0.0
            };
            n
        ];
        let len = self.subset_into(
            client,
            backends,
            Scratch {
                hashes: &mut hashes,
                order: &mut order,
            },
            &mut out,
        )?;
        out.truncate(len);
        Ok(out)
    }
}

/// When a subset must grow: until `min_ready` of its backends are ready.
pub(crate) struct Grow<'a, F: Fn(u32) -> bool> {
    ready: &'a F,
    min_ready: u32,
}

impl<F: Fn(u32) -> bool> Grow<'_, F> {
    /// Whether `members` already hold enough ready backends.
    fn enough(&self, members: &[Member]) -> bool {
        self.min_ready == 0
            || members.iter().filter(|m| (self.ready)(m.backend)).count() >= self.min_ready as usize
    }
}

/// Takes backends from `order` (cyclically from `start`) into `out`: the first `size`, then more
/// until `grow` is satisfied. Weight 1 each. Returns the count.
fn take_along<F: Fn(u32) -> bool>(
    order: &[u32],
    start: usize,
    size: u32,
    grow: &Grow<'_, F>,
    out: &mut [Member],
) -> usize {
    let n = order.len();
    let mut len = 0;
    let mut ready = 0u32;
    for k in 0..n {
        if len >= size as usize && (grow.min_ready == 0 || ready >= grow.min_ready) {
            break;
        }
        let backend = order[(start + k) % n];
        ready += u32::from((grow.ready)(backend));
        out[len] = Member { backend, weight: 1.0 };
        len += 1;
    }
    len
}
