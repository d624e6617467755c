//! [`RingView`]: lookups over borrowed sorted arrays, shared by every ring storage.

use super::build::{duplicate_quadratic, generate, key_order_quadratic, plan, sort_pairs};
use super::{Mode, RingConfig};
use crate::RingError;

/// Points scanned without branching before a lookup falls back to binary search.
pub(crate) const SCAN: usize = 2;

/// Buckets per point, as a power of two: `2^(floor(log2 n) + 1)` buckets hold 0.5 to 1 point each,
/// so a [`SCAN`]-point window answers most lookups (~96% at 0.75 points per bucket); measured the
/// fastest of -2 to +1 extra bits with 2- to 16-point windows.
const INDEX_EXTRA_BITS: u32 = 1;

/// A ring over borrowed storage: sorted `points`, the parallel `owners` (endpoint indices), and an
/// optional bucket index. Every ring type hands one out; all lookups live here.
///
/// Invariants: `points` is sorted ascending (ties by owner); `owners[i]` owns `points[i]`;
/// `index[j]` is the first position whose point has top bits `>= j` (`index` has `2^b + 1` entries)
/// or `index` is empty. Owned storage pads `points` with `u64::MAX` so lookups read a fixed-size
/// window without bounds branches.
///
/// # Examples
///
/// Building into caller storage, with no allocator:
///
/// ```
/// use pickwise::{RingConfig, RingView};
///
/// let hosts = [("127.0.0.1:90", 1), ("127.0.0.1:91", 1)];
/// let (mut points, mut owners, mut index) = ([0u64; 64], [0u32; 64], [0u32; 33]);
/// let cfg = RingConfig::envoy().with_min_ring_size(8);
/// let ring = RingView::build_in(&hosts, &cfg, &mut points, &mut owners, &mut index).unwrap();
/// assert_eq!(ring.len(), 8);
/// let owner = ring.lookup(12345).unwrap();
/// assert!(owner < 2);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RingView<'a> {
    points: &'a [u64],
    owners: &'a [u32],
    len: usize,
    index: &'a [u32],
    shift: u32,
}

/// Index bits for `n` points given room for `capacity` index entries: about one bucket per point,
/// at least 2 buckets (so the shift stays below 64); 0 = no index.
pub(crate) fn index_bits(n: usize, capacity: usize) -> u32 {
    if n < 2 || capacity < 3 {
        return 0;
    }
    let by_points = usize::BITS - 1 - n.leading_zeros() + INDEX_EXTRA_BITS; // floor(log2 n) + extra
    let by_room = usize::BITS - 1 - (capacity - 1).leading_zeros();
    by_points.min(by_room).min(32)
}

/// Fills `index` (`2^bits + 1` entries) for sorted `points`; returns the shift for lookups.
pub(crate) fn fill_index(points: &[u64], bits: u32, index: &mut [u32]) -> u32 {
    let shift = 64 - bits;
    let buckets = 1usize << bits;
    let mut pos = 0usize;
    for (j, slot) in index[..=buckets].iter_mut().enumerate() {
        while pos < points.len() && ((points[pos] >> shift) as usize) < j {
            pos += 1;
        }
        *slot = pos as u32;
    }
    shift
}

impl<'a> RingView<'a> {
    /// Wraps already-built arrays: `len` sorted points and their owners, each possibly followed by
    /// pads (see the type docs); `index` as described on the type, or empty.
    pub(crate) fn from_parts(
        points: &'a [u64],
        owners: &'a [u32],
        len: usize,
        index: &'a [u32],
        shift: u32,
    ) -> Self {
        debug_assert!(points.len() >= len && owners.len() >= len);
        Self {
            points,
            owners,
            len,
            index,
            shift,
        }
    }

    /// Builds a ring into caller-provided storage without allocating.
    ///
    /// `points` and `owners` need room for every ring point (the ring size; see [`RingConfig`]);
    /// `index` may be empty (lookups then binary-search) or any length: `2^b + 1` entries give an
    /// O(1) bucket index of `2^b` buckets. In [`Mode::Grpc`] the endpoints are put in key order in
    /// O(n²) time, and duplicate keys are found in O(n²), since there is no allocator to sort with.
    pub fn build_in<K: AsRef<[u8]>>(
        endpoints: &[(K, u32)],
        cfg: &RingConfig,
        points: &'a mut [u64],
        owners: &'a mut [u32],
        index: &'a mut [u32],
    ) -> Result<Self, RingError> {
        plan(endpoints, cfg)?;
        duplicate_quadratic(endpoints)?;
        let capacity = points.len().min(owners.len());
        let mut n = 0usize;
        let mut emit = |p: u64, o: u32| {
            if n == capacity {
                return Err(RingError::Capacity {
                    needed: n as u64 + 1,
                    capacity,
                });
            }
            points[n] = p;
            owners[n] = o;
            n += 1;
            Ok(())
        };
        match cfg.mode {
            Mode::Grpc => generate(endpoints, cfg, key_order_quadratic(endpoints), &mut emit)?,
            _ => generate(endpoints, cfg, 0..endpoints.len(), &mut emit)?,
        }
        let (points, owners) = (&mut points[..n], &mut owners[..n]);
        sort_pairs(points, owners);
        let bits = index_bits(n, index.len());
        let (index, shift) = if bits == 0 {
            (&mut index[..0], 0)
        } else {
            let shift = fill_index(points, bits, index);
            (&mut index[..=(1usize << bits)], shift)
        };
        Ok(Self::from_parts(points, owners, n, index, shift))
    }

    pub(crate) fn index_len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn shift(&self) -> u32 {
        self.shift
    }

    /// Number of points on the ring.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the ring has no points (possible only for hand-made storage; builds refuse it).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sorted point hashes.
    #[inline]
    pub fn points(&self) -> &'a [u64] {
        &self.points[..self.len]
    }

    /// The endpoint index owning each point, parallel to [`points`](Self::points).
    #[inline]
    pub fn owners(&self) -> &'a [u32] {
        &self.owners[..self.len]
    }

    /// Position of the first point `>= hash`, wrapping to 0 past the last point; `None` if empty.
    #[inline(always)]
    pub fn position(&self, hash: u64) -> Option<usize> {
        let n = self.len;
        if n == 0 {
            return None;
        }
        let pos = self.locate(hash);
        Some(if pos >= n { 0 } else { pos })
    }

    /// First position with point `>= hash` (may be `len`, meaning wrap).
    #[inline(always)]
    fn locate(&self, hash: u64) -> usize {
        if self.index.is_empty() {
            return self.points().partition_point(|&p| p < hash);
        }
        let j = (hash >> self.shift) as usize;
        let (lo, hi) = (self.index[j] as usize, self.index[j + 1] as usize);
        if hi - lo <= SCAN {
            if let Some(w) = self.points.get(lo..lo + SCAN) {
                // Points past `hi` belong to later buckets, so they are > hash and count 0; the
                // pads are u64::MAX and count 0 as well. No branch on the data.
                return lo + w.iter().map(|&p| usize::from(p < hash)).sum::<usize>();
            }
        }
        lo + self.points[lo..hi].partition_point(|&p| p < hash)
    }

    /// The endpoint owning `hash`: the owner of the first point `>= hash`, wrapping around.
    #[inline(always)]
    pub fn lookup(&self, hash: u64) -> Option<u32> {
        let pos = self.locate(hash);
        self.owners.get(if pos >= self.len { 0 } else { pos }).copied()
    }

    /// Endpoints clockwise from `hash`, skipping repeats of the endpoint just yielded; at most
    /// [`len`](Self::len) items (one lap), so any walk over it is bounded.
    #[inline]
    pub fn walk(&self, hash: u64) -> Walk<'a> {
        let start = self.position(hash).unwrap_or(0);
        Walk {
            owners: self.owners(),
            pos: start,
            left: self.len,
            last: u32::MAX,
        }
    }

    /// The first endpoint clockwise from `hash` that `accept` takes: the readiness walk of grpc-go and
    /// Envoy (skip endpoints that are not ready). `accept` is called once per run of points of one
    /// endpoint, at most [`len`](Self::len) times in all. `None` if it takes none.
    ///
    /// ```
    /// use pickwise::{Ring, RingConfig};
    /// let ring = Ring::build(&[("a", 1), ("b", 1), ("c", 1)], &RingConfig::native(100)).unwrap();
    /// let home = ring.lookup(42).unwrap();
    /// let next = ring.find(42, |e| e != home).unwrap();
    /// assert_ne!(next, home);
    /// ```
    #[inline]
    pub fn find(&self, hash: u64, mut accept: impl FnMut(u32) -> bool) -> Option<u32> {
        self.walk(hash).find(|&e| accept(e))
    }

    /// The first two distinct endpoints clockwise from `hash` that `accept` takes.
    pub fn find_two(&self, hash: u64, mut accept: impl FnMut(u32) -> bool) -> (Option<u32>, Option<u32>) {
        let mut walk = self.walk(hash);
        let Some(first) = walk.find(|&e| accept(e)) else {
            return (None, None);
        };
        (Some(first), walk.find(|&e| e != first && accept(e)))
    }
}

/// Iterator of [`RingView::walk`]: owners clockwise, consecutive repeats skipped, one lap at most.
#[derive(Clone, Debug)]
pub struct Walk<'a> {
    owners: &'a [u32],
    pos: usize,
    left: usize,
    last: u32,
}

impl Iterator for Walk<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        while self.left > 0 {
            self.left -= 1;
            let owner = self.owners[self.pos];
            self.pos += 1;
            if self.pos == self.owners.len() {
                self.pos = 0;
            }
            if owner != self.last {
                self.last = owner;
                return Some(owner);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_bits_bounds() {
        assert_eq!(index_bits(0, 100), 0);
        assert_eq!(index_bits(1, 100), 0);
        assert_eq!(index_bits(2, 100), 2);
        assert_eq!(index_bits(1000, 100_000), 10);
        assert_eq!(index_bits(1000, 3), 1);
        assert_eq!(index_bits(1000, 2), 0);
    }

    #[test]
    fn build_in_reports_capacity() {
        let hosts = [("a", 1), ("b", 1)];
        let (mut p, mut o, mut i) = ([0u64; 4], [0u32; 4], [0u32; 0]);
        let err = RingView::build_in(&hosts, &RingConfig::native(3), &mut p, &mut o, &mut i).unwrap_err();
        assert!(matches!(err, RingError::Capacity { capacity: 4, .. }));
    }

    #[test]
    fn lookups_agree_with_and_without_index() {
        let hosts = [("a", 1), ("b", 2), ("c", 3)];
        let cfg = RingConfig::native(50);
        let (mut p1, mut o1, mut i1) = ([0u64; 300], [0u32; 300], [0u32; 300]);
        let (mut p2, mut o2, mut i2) = ([0u64; 300], [0u32; 300], [0u32; 0]);
        let a = RingView::build_in(&hosts, &cfg, &mut p1, &mut o1, &mut i1).unwrap();
        let b = RingView::build_in(&hosts, &cfg, &mut p2, &mut o2, &mut i2).unwrap();
        let mut h = 1u64;
        for _ in 0..10_000 {
            h = crate::hash::mix64(h);
            assert_eq!(a.position(h), b.position(h));
        }
        for &p in a.points() {
            assert_eq!(a.position(p), b.position(p));
            assert_eq!(a.position(p.wrapping_add(1)), b.position(p.wrapping_add(1)));
        }
    }
}
