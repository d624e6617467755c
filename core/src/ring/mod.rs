//! The consistent-hash ring.
//!
//! A ring is two sorted parallel arrays, `points: [u64]` and `owners: [u32]` (12 bytes a point), plus
//! a bucket index over the top bits of the hash. A lookup finds the first point `>= hash`, wrapping
//! to the first point past the end, and returns its owner (an index into the endpoint list the ring
//! was built from).
//!
//! Three [`Mode`]s decide which points an endpoint gets:
//!
//! - [`Mode::Envoy`] and [`Mode::Grpc`] reproduce Envoy's and grpc-go's `ring_hash` byte for byte:
//!   weights normalized to fractions, `scale = min(ceil(min_w * min_ring_size) / min_w,
//!   max_ring_size)`, and for each endpoint points `xxh64("<key>_<i>")` while a running total stays
//!   below `scale * w` summed so far. Envoy walks endpoints in the order given, grpc-go sorted by key.
//!   Like theirs, the running total is an `f64`, so rounding can add one point past
//!   `max_ring_size` (the exact ring those systems build).
//!   The ring size depends on the whole endpoint set, so a membership change can move keys between
//!   surviving endpoints too (as in those systems).
//! - [`Mode::Native`] gives every endpoint exactly `weight * points_per_weight` points derived from
//!   its key alone (XXH3 then a SplitMix64 stream). Adding, removing or reweighting one endpoint moves
//!   only keys to or from that endpoint: minimal disruption.
//!
//! Storage: [`Ring`] (feature `alloc`), [`FixedRing`] (inline, `heapless`), or
//! [`RingView::build_in`] over caller slices. All lookups live on [`RingView`].
//!
//! Bad input never panics: no endpoints, a repeated key, bad size bounds and oversized rings are
//! [`RingError`](crate::RingError)s; weight 0 counts as 1 (grpc-go's rule); weights are summed in
//! `u64`, so no sum can overflow.
//!
//! # Examples
//!
//! Envoy's `Basic` test ring:
//!
//! ```
//! use pickwise::{Ring, RingConfig};
//!
//! let hosts: Vec<(String, u32)> = (90..=95).map(|p| (format!("127.0.0.1:{p}"), 1)).collect();
//! let ring = Ring::build(&hosts, &RingConfig::envoy().with_min_ring_size(12)).unwrap();
//! assert_eq!(ring.len(), 12);
//! assert_eq!(ring.view().points()[0], 833437586790550860); // "127.0.0.1:94_1"
//! let host = |h| &hosts[ring.lookup(h).unwrap() as usize].0;
//! assert_eq!(host(3551244743356806947), "127.0.0.1:95");
//! assert_eq!(host(3551244743356806948), "127.0.0.1:93");
//! ```

pub(crate) mod build;
mod fixed;
#[cfg(feature = "alloc")]
mod owned;
mod view;

pub use fixed::FixedRing;
#[cfg(feature = "alloc")]
pub use owned::Ring;
pub use view::{RingView, Walk};

/// The largest ring any mode builds: 8,388,608 points (Envoy's and grpc-go's hard cap).
pub const MAX_RING_SIZE: u64 = 8_388_608;

/// Which points an endpoint gets, and so which systems a ring agrees with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Envoy `ring_hash` (XXH64): endpoints in the order given.
    Envoy,
    /// grpc-go `ring_hash` (XXH64): endpoints sorted by key first.
    Grpc,
    /// pickwise's own ring: `weight * points_per_weight` points per endpoint; minimal disruption.
    Native {
        /// Points per unit of weight (100-200 gives a few percent imbalance).
        points_per_weight: u32,
    },
}

/// How to build a ring: its [`Mode`] and size bounds.
///
/// | constructor | min ring size | max ring size | request hash |
/// |---|---|---|---|
/// | [`envoy`](Self::envoy) | 1024 | 8,388,608 | [`hash::xxh64`](crate::hash::xxh64) |
/// | [`grpc`](Self::grpc) | 1024 | 4096 | [`hash::xxh64`](crate::hash::xxh64) |
/// | [`native`](Self::native) | unused | 8,388,608 (points; more is an error) | [`hash::native`](crate::hash::native) |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// The mode.
    pub mode: Mode,
    /// Envoy/grpc: the smallest ring (the least-weighted endpoint gets a whole number of points).
    pub min_ring_size: u64,
    /// The largest ring, at most [`MAX_RING_SIZE`].
    pub max_ring_size: u64,
}

impl RingConfig {
    /// Envoy-compatible: min 1024, max 8,388,608.
    pub const fn envoy() -> Self {
        Self {
            mode: Mode::Envoy,
            min_ring_size: 1024,
            max_ring_size: MAX_RING_SIZE,
        }
    }

    /// grpc-go-compatible: min 1024, max 4096 (grpc-go's default cap).
    pub const fn grpc() -> Self {
        Self {
            mode: Mode::Grpc,
            min_ring_size: 1024,
            max_ring_size: 4096,
        }
    }

    /// Native: `points_per_weight` points per unit of weight, at most 8,388,608 points in all.
    pub const fn native(points_per_weight: u32) -> Self {
        Self {
            mode: Mode::Native { points_per_weight },
            min_ring_size: 1,
            max_ring_size: MAX_RING_SIZE,
        }
    }

    /// Sets the minimum ring size (Envoy/grpc modes).
    pub const fn with_min_ring_size(mut self, n: u64) -> Self {
        self.min_ring_size = n;
        self
    }

    /// Sets the maximum ring size.
    pub const fn with_max_ring_size(mut self, n: u64) -> Self {
        self.max_ring_size = n;
        self
    }

    /// The request hash that matches this mode's points: XXH64 for Envoy/grpc, XXH3 for native.
    #[inline]
    pub fn hash_key(&self, key: &[u8]) -> u64 {
        match self.mode {
            Mode::Native { .. } => crate::hash::native(key),
            Mode::Envoy | Mode::Grpc => crate::hash::xxh64(key),
        }
    }
}

impl Default for RingConfig {
    /// Native mode with 160 points per unit of weight.
    fn default() -> Self {
        Self::native(160)
    }
}
