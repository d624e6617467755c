//! [`FixedRing`]: a ring in fixed-capacity `heapless` storage, for targets without an allocator.

use heapless::Vec;

use super::view::{RingView, SCAN};
use super::RingConfig;
use crate::RingError;

/// A ring of at most `P` points held inline (no allocator), with a bucket index of up to `P` entries.
/// Lookups are those of [`RingView`] and return the same owners as [`Ring`](crate::Ring) for the
/// same input.
///
/// Building sorts without allocating (heapsort) and, in [`Mode::Grpc`](crate::Mode::Grpc), orders
/// endpoints by key in O(n²): fine for the endpoint counts of embedded systems.
///
/// # Examples
///
/// ```
/// use pickwise::{FixedRing, RingConfig};
///
/// let ring = FixedRing::<64>::build(&[("a", 1), ("b", 1)], &RingConfig::native(16)).unwrap();
/// assert_eq!(ring.view().len(), 32);
/// assert!(ring.view().lookup(7).is_some());
/// ```
#[derive(Clone, Debug)]
pub struct FixedRing<const P: usize> {
    points: Vec<u64, P>,
    owners: Vec<u32, P>,
    len: usize,
    index: Vec<u32, P>,
    shift: u32,
}

impl<const P: usize> FixedRing<P> {
    /// Builds the ring; [`RingError::Capacity`] if it needs more than `P` points.
    pub fn build<K: AsRef<[u8]>>(endpoints: &[(K, u32)], config: &RingConfig) -> Result<Self, RingError> {
        let mut points: Vec<u64, P> = Vec::new();
        let mut owners: Vec<u32, P> = Vec::new();
        let mut index: Vec<u32, P> = Vec::new();
        // Capacity is P; resizing to it cannot fail.
        let _ = points.resize(P, 0);
        let _ = owners.resize(P, 0);
        let _ = index.resize(P, 0);
        let (n, index_len, shift) = {
            let view = RingView::build_in(endpoints, config, &mut points, &mut owners, &mut index)?;
            let index_len = view.index_len();
            (view.len(), index_len, view.shift())
        };
        index.truncate(index_len);
        // Keep pads when room allows, so lookups near the end stay on the fast path.
        points.truncate((n + SCAN - 1).min(P));
        points[n..].fill(u64::MAX);
        owners.truncate(n);
        Ok(Self {
            points,
            owners,
            len: n,
            index,
            shift,
        })
    }

    /// The lookup view; every lookup method is on it.
    #[inline]
    pub fn view(&self) -> RingView<'_> {
        RingView::from_parts(&self.points, &self.owners, self.len, &self.index, self.shift)
    }
}
