//! [`Ring`]: the owned, heap-allocated ring (feature `alloc`).

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::build::{generate, plan, weight_of};
use super::view::{fill_index, index_bits, RingView, SCAN};
use super::{Mode, RingConfig};
use crate::RingError;

/// A consistent-hash ring owning its arrays: sorted `u64` points, a parallel `u32` owner array
/// (12 bytes per point) and a bucket index over the top hash bits (at most 8 bytes per point: one
/// `u32` per bucket, 1 to 2 buckets per point) that makes a lookup O(1) on average: one index
/// read, then a branch-free scan of 2 points (binary search within the bucket if it holds more).
///
/// Endpoints are named by their position in the slice given to [`build`](Self::build). The ring also
/// keeps each endpoint's key and weight, so membership changes ([`with_endpoint`](Self::with_endpoint),
/// [`without_endpoint`](Self::without_endpoint)) produce a new ring and
/// [`moved_share`](Self::moved_share) measures how much of the hash space changed owner.
///
/// # Examples
///
/// ```
/// use pickwise::{hash, Ring, RingConfig};
///
/// let hosts = [("10.0.0.1:443", 1), ("10.0.0.2:443", 1), ("10.0.0.3:443", 2)];
/// let ring = Ring::build(&hosts, &RingConfig::native(160)).unwrap();
/// let owner = ring.lookup(hash::native(b"user-42")).unwrap();
/// println!("user-42 -> {}", hosts[owner as usize].0);
///
/// // Removing a host moves only that host's keys in native mode.
/// let smaller = ring.without_endpoint(b"10.0.0.2:443").unwrap();
/// let moved = ring.moved_share(&smaller);
/// assert!(moved > 0.1 && moved < 0.4, "{moved}");
/// ```
#[derive(Clone, Debug)]
pub struct Ring {
    /// Sorted points, then `SCAN - 1` pads of `u64::MAX` so the lookup scan never bounds-checks.
    points: Vec<u64>,
    owners: Vec<u32>,
    index: Vec<u32>,
    shift: u32,
    keys: Vec<Box<[u8]>>,
    weights: Vec<u32>,
    config: RingConfig,
}

impl Ring {
    /// Builds a ring from `(identity key, weight)` pairs. Weight 0 counts as 1.
    ///
    /// Errors: no endpoints, a repeated key, invalid ring-size bounds, or a native ring over
    /// `max_ring_size` points. See [`RingConfig`] for the ring size of each mode.
    pub fn build<K: AsRef<[u8]>>(endpoints: &[(K, u32)], config: &RingConfig) -> Result<Self, RingError> {
        let bound = plan(endpoints, config)?;
        // Sorting by key finds duplicates and gives grpc-go's endpoint order in one step.
        let mut by_key: Vec<u32> = (0..endpoints.len() as u32).collect();
        by_key.sort_unstable_by(|&a, &b| {
            endpoints[a as usize]
                .0
                .as_ref()
                .cmp(endpoints[b as usize].0.as_ref())
                .then(a.cmp(&b))
        });
        // The repeat that comes first in input order (as `FixedRing` reports it): equal keys sort
        // by position, so each adjacent equal pair is (earlier, later); take the smallest later.
        if let Some(w) = by_key
            .windows(2)
            .filter(|w| endpoints[w[0] as usize].0.as_ref() == endpoints[w[1] as usize].0.as_ref())
            .min_by_key(|w| w[1])
        {
            let (a, b) = (w[0] as usize, w[1] as usize);
            return Err(RingError::DuplicateKey { first: a, second: b });
        }

        let mut pairs: Vec<(u64, u32)> = Vec::with_capacity(bound.min(1 << 20) as usize);
        let mut push = |p, o| {
            pairs.push((p, o));
            Ok(())
        };
        match config.mode {
            Mode::Grpc => generate(endpoints, config, by_key.iter().map(|&i| i as usize), &mut push)?,
            _ => generate(endpoints, config, 0..endpoints.len(), &mut push)?,
        }
        pairs.sort_unstable();

        let n = pairs.len();
        let mut points = Vec::with_capacity(n + SCAN - 1);
        let mut owners = Vec::with_capacity(n);
        for (p, o) in pairs {
            points.push(p);
            owners.push(o);
        }
        let bits = index_bits(n, usize::MAX);
        let mut index = Vec::new();
        let mut shift = 0;
        if bits > 0 {
            index.resize((1usize << bits) + 1, 0);
            shift = fill_index(&points, bits, &mut index);
        }
        points.resize(n + SCAN - 1, u64::MAX);
        Ok(Self {
            points,
            owners,
            index,
            shift,
            keys: endpoints.iter().map(|(k, _)| Box::from(k.as_ref())).collect(),
            weights: endpoints.iter().map(|(_, w)| *w).collect(),
            config: *config,
        })
    }

    /// The lookup view (borrowed arrays); every lookup method is on it.
    #[inline]
    pub fn view(&self) -> RingView<'_> {
        RingView::from_parts(&self.points, &self.owners, self.len(), &self.index, self.shift)
    }

    /// The endpoint owning `hash`. See [`RingView::lookup`].
    #[inline(always)]
    pub fn lookup(&self, hash: u64) -> Option<u32> {
        self.view().lookup(hash)
    }

    /// The first endpoint clockwise from `hash` that `accept` takes. See [`RingView::find`].
    #[inline]
    pub fn find(&self, hash: u64, accept: impl FnMut(u32) -> bool) -> Option<u32> {
        self.view().find(hash, accept)
    }

    /// Number of points.
    #[inline]
    pub fn len(&self) -> usize {
        self.points.len() + 1 - SCAN
    }

    /// Always false: a built ring has at least one point.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of endpoints (some may hold no point when the ring is smaller than the endpoint count).
    #[inline]
    pub fn endpoints(&self) -> usize {
        self.keys.len()
    }

    /// Identity key of endpoint `i`.
    pub fn key(&self, i: u32) -> Option<&[u8]> {
        self.keys.get(i as usize).map(|k| &**k)
    }

    /// Weight of endpoint `i` as given (0 counts as 1 on the ring).
    pub fn weight(&self, i: u32) -> Option<u32> {
        self.weights.get(i as usize).copied()
    }

    /// The configuration the ring was built with.
    pub fn config(&self) -> &RingConfig {
        &self.config
    }

    /// Heap bytes held: points, owners, index, keys.
    pub fn heap_bytes(&self) -> usize {
        self.points.capacity() * 8
            + self.owners.capacity() * 4
            + self.index.capacity() * 4
            + self
                .keys
                .iter()
                .map(|k| k.len() + core::mem::size_of::<Box<[u8]>>())
                .sum::<usize>()
            + self.weights.capacity() * 4
    }

    fn endpoint_list(&self) -> Vec<(&[u8], u32)> {
        self.keys
            .iter()
            .map(|k| &**k)
            .zip(self.weights.iter().copied())
            .collect()
    }

    /// A new ring with `key` added at the end (new index = old [`endpoints`](Self::endpoints)) or,
    /// if present, reweighted in place. Other endpoints keep their indices.
    pub fn with_endpoint(&self, key: &[u8], weight: u32) -> Result<Self, RingError> {
        let mut list = self.endpoint_list();
        match list.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = weight,
            None => list.push((key, weight)),
        }
        Self::build(&list, &self.config)
    }

    /// A new ring without `key`; endpoints after it shift down by one index. Removing the last
    /// endpoint is [`RingError::Empty`]; removing an absent key rebuilds the same ring.
    pub fn without_endpoint(&self, key: &[u8]) -> Result<Self, RingError> {
        let mut list = self.endpoint_list();
        list.retain(|(k, _)| *k != key);
        Self::build(&list, &self.config)
    }

    /// Share of the 64-bit hash space (0.0 ..= 1.0) whose owner differs between `self` and `other`,
    /// owners compared by key. Exact: sweeps the merged point sets once.
    pub fn moved_share(&self, other: &Self) -> f64 {
        // Map our endpoint indices to theirs by key.
        let mut theirs: Vec<u32> = (0..other.keys.len() as u32).collect();
        theirs.sort_unstable_by(|&a, &b| other.keys[a as usize].cmp(&other.keys[b as usize]));
        let map: Vec<u32> = self
            .keys
            .iter()
            .map(|k| {
                theirs
                    .binary_search_by(|&j| other.keys[j as usize].as_ref().cmp(k.as_ref()))
                    .map_or(u32::MAX, |at| theirs[at])
            })
            .collect();
        let (a, b) = (self.view(), other.view());
        let (pa, pb) = (a.points(), b.points());
        let (mut i, mut j) = (0usize, 0usize);
        let mut moved: u128 = 0;
        let mut prev: Option<u64> = None;
        // Each union point x closes the segment (prev, x]; both rings map the whole segment to the
        // owner of their first point >= x.
        while i < pa.len() || j < pb.len() {
            let x = match (pa.get(i), pb.get(j)) {
                (Some(&u), Some(&v)) => u.min(v),
                (Some(&u), None) => u,
                (None, Some(&v)) => v,
                (None, None) => unreachable!(),
            };
            let oa = a.owners()[i % pa.len()];
            let ob = b.owners()[j % pb.len()];
            let len = match prev {
                Some(p) => u128::from(x - p),
                None => u128::from(x) + 1, // [0, x]
            };
            if map[oa as usize] != ob {
                moved += len;
            }
            prev = Some(x);
            while pa.get(i) == Some(&x) {
                i += 1;
            }
            while pb.get(j) == Some(&x) {
                j += 1;
            }
        }
        // The wrap segment (last, u64::MAX] belongs to each ring's first point.
        if let Some(p) = prev {
            if map[a.owners()[0] as usize] != b.owners()[0] {
                moved += u128::from(u64::MAX - p);
            }
        }
        moved as f64 / 18_446_744_073_709_551_616.0
    }

    /// Number of ring points each endpoint holds.
    pub fn point_counts(&self) -> Vec<u64> {
        let mut counts = alloc::vec![0u64; self.keys.len()];
        for &o in self.view().owners() {
            counts[o as usize] += 1;
        }
        counts
    }

    /// Share of the hash space each endpoint owns (fractions summing to 1).
    pub fn ownership(&self) -> Vec<f64> {
        let mut share = alloc::vec![0.0f64; self.keys.len()];
        let v = self.view();
        let (points, owners) = (v.points(), v.owners());
        let mut prev = 0u64;
        for (&p, &o) in points.iter().zip(owners) {
            share[o as usize] += (p - prev) as f64;
            prev = p;
        }
        share[owners[0] as usize] += (u64::MAX - prev) as f64;
        let total = 18_446_744_073_709_551_616.0;
        share.iter_mut().for_each(|s| *s /= total);
        share
    }

    /// Total weight as the ring counts it (0 counts as 1), summed without overflow.
    pub fn total_weight(&self) -> u64 {
        self.weights.iter().map(|&w| weight_of(w)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn hosts(n: usize) -> Vec<(alloc::string::String, u32)> {
        (0..n).map(|i| (alloc::format!("10.0.0.{i}:80"), 1)).collect()
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        let err = Ring::build(&[("a", 1), ("b", 1), ("a", 2)], &RingConfig::envoy()).unwrap_err();
        assert_eq!(err, RingError::DuplicateKey { first: 0, second: 2 });
    }

    #[test]
    fn moved_share_of_identical_rings_is_zero() {
        let r = Ring::build(&hosts(5), &RingConfig::native(10)).unwrap();
        assert_eq!(r.moved_share(&r), 0.0);
    }

    #[test]
    fn moved_share_matches_sampling() {
        let a = Ring::build(&hosts(10), &RingConfig::native(50)).unwrap();
        let b = a.without_endpoint(b"10.0.0.3:80").unwrap();
        let exact = a.moved_share(&b);
        let mut moved = 0;
        let mut h = 7u64;
        let samples = 200_000;
        for _ in 0..samples {
            h = crate::hash::mix64(h.wrapping_add(1));
            let ka = a.key(a.lookup(h).unwrap()).unwrap();
            let kb = b.key(b.lookup(h).unwrap()).unwrap();
            moved += usize::from(ka != kb);
        }
        let sampled = moved as f64 / samples as f64;
        assert!((exact - sampled).abs() < 0.01, "exact {exact} sampled {sampled}");
        assert!((exact - a.ownership()[3]).abs() < 1e-9);
    }

    #[test]
    fn ownership_sums_to_one() {
        let r = Ring::build(&hosts(7), &RingConfig::envoy()).unwrap();
        let s: f64 = r.ownership().iter().sum();
        assert!((s - 1.0).abs() < 1e-9);
        assert_eq!(r.point_counts().iter().sum::<u64>(), r.len() as u64);
    }

    #[test]
    fn with_endpoint_reweights_in_place() {
        let r = Ring::build(&[("a", 1), ("b", 1)], &RingConfig::native(10)).unwrap();
        let r2 = r.with_endpoint(b"a", 3).unwrap();
        assert_eq!(r2.point_counts(), vec![30, 10]);
        let r3 = r2.with_endpoint(b"c", 1).unwrap();
        assert_eq!(r3.key(2), Some(&b"c"[..]));
    }
}
