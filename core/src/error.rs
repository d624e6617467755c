//! Typed errors. Nothing in this crate panics on bad input; it returns one of these.

use core::fmt;

/// Why a ring could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingError {
    /// No endpoints were given.
    Empty,
    /// Two endpoints have the same identity key (positions in the input).
    DuplicateKey {
        /// Position of the first occurrence.
        first: usize,
        /// Position of the repeat.
        second: usize,
    },
    /// `min_ring_size` is 0 or larger than `max_ring_size`, or `max_ring_size` exceeds [`MAX_RING_SIZE`](crate::MAX_RING_SIZE).
    InvalidRingSize {
        /// The configured minimum.
        min: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A native ring would need more points than `max_ring_size` allows.
    TooLarge {
        /// Points the ring would need.
        points: u64,
        /// The configured maximum.
        max: u64,
    },
    /// Caller-provided or fixed-capacity storage is too small.
    Capacity {
        /// Entries needed.
        needed: u64,
        /// Entries available.
        capacity: usize,
    },
    /// `points_per_weight` of a native ring is 0.
    ZeroPointsPerWeight,
    /// More endpoints than a `u32` owner index can name.
    TooManyEndpoints,
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("no endpoints to build a ring from"),
            Self::DuplicateKey { first, second } => {
                write!(f, "endpoints {first} and {second} have the same key")
            }
            Self::InvalidRingSize { min, max } => write!(
                f,
                "invalid ring size bounds: min {min}, max {max} (need 1 <= min <= max <= {})",
                crate::MAX_RING_SIZE
            ),
            Self::TooLarge { points, max } => {
                write!(f, "ring needs {points} points, more than the maximum {max}")
            }
            Self::Capacity { needed, capacity } => {
                write!(f, "storage for {capacity} entries is too small, {needed} needed")
            }
            Self::ZeroPointsPerWeight => f.write_str("points per weight must be at least 1"),
            Self::TooManyEndpoints => f.write_str("too many endpoints (at most u32::MAX)"),
        }
    }
}

impl core::error::Error for RingError {}
