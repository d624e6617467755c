//! Point generation: which hashes a ring holds for which endpoint, in each [`Mode`].

use super::{Mode, RingConfig, MAX_RING_SIZE};
use crate::hash::{mix64, native, point_name_hash, GOLDEN};
use crate::math::ceil;
use crate::RingError;

/// An endpoint's weight as the ring sees it: 0 counts as 1 (grpc-go's rule for a missing weight).
#[inline]
pub(crate) fn weight_of(w: u32) -> u64 {
    u64::from(w.max(1))
}

/// Checks the configuration and the endpoint count; returns an upper bound on the number of points.
pub(crate) fn plan<K: AsRef<[u8]>>(endpoints: &[(K, u32)], cfg: &RingConfig) -> Result<u64, RingError> {
    if endpoints.is_empty() {
        return Err(RingError::Empty);
    }
    // Owner indices are u32 and u32::MAX is reserved as "no owner".
    if endpoints.len() >= u32::MAX as usize {
        return Err(RingError::TooManyEndpoints);
    }
    let (min, max) = (cfg.min_ring_size, cfg.max_ring_size);
    if max > MAX_RING_SIZE
        || max == 0
        || (!matches!(cfg.mode, Mode::Native { .. }) && (min == 0 || min > max))
    {
        return Err(RingError::InvalidRingSize { min, max });
    }
    match cfg.mode {
        Mode::Native { points_per_weight } => {
            if points_per_weight == 0 {
                return Err(RingError::ZeroPointsPerWeight);
            }
            let mut points: u64 = 0;
            for (_, w) in endpoints {
                points = points.saturating_add(weight_of(*w) * u64::from(points_per_weight));
            }
            if points > max {
                return Err(RingError::TooLarge { points, max });
            }
            Ok(points)
        }
        // The running-total loop makes at most ceil(scale) points, and scale <= max; one spare for
        // floating-point rounding of the running total.
        Mode::Envoy | Mode::Grpc => Ok(max + 1),
    }
}

/// Envoy's and grpc-go's ring scale: `min(ceil(min_w * min_ring_size) / min_w, max_ring_size)` over
/// weights normalized to fractions (summed in u64, so they cannot overflow as grpc-go's u32 sum did).
fn scale<K>(endpoints: &[(K, u32)], cfg: &RingConfig) -> (f64, f64) {
    let sum: u64 = endpoints.iter().map(|(_, w)| weight_of(*w)).sum();
    let sum = sum as f64;
    let min_w = endpoints
        .iter()
        .map(|(_, w)| weight_of(*w) as f64 / sum)
        .fold(1.0, f64::min);
    let scale = ceil(min_w * cfg.min_ring_size as f64) / min_w;
    (scale.min(cfg.max_ring_size as f64), sum)
}

/// Emits every point of the ring as `(hash, endpoint index)`, unsorted. `order` is the order the
/// running total walks the endpoints in (Envoy: as given; grpc-go: sorted by key); it must visit
/// each index once. `emit` may refuse a point (storage full) and stop the build.
pub(crate) fn generate<K, I, F>(
    endpoints: &[(K, u32)],
    cfg: &RingConfig,
    order: I,
    mut emit: F,
) -> Result<(), RingError>
where
    K: AsRef<[u8]>,
    I: Iterator<Item = usize>,
    F: FnMut(u64, u32) -> Result<(), RingError>,
{
    match cfg.mode {
        Mode::Native { points_per_weight } => {
            for idx in order {
                let (key, w) = &endpoints[idx];
                // Points of one endpoint are a SplitMix64 stream seeded by the key's XXH3: they depend
                // on the key and weight only, so other endpoints' changes never move them.
                let seed = native(key.as_ref());
                let count = weight_of(*w) * u64::from(points_per_weight);
                for i in 1..=count {
                    emit(mix64(seed.wrapping_add(i.wrapping_mul(GOLDEN))), idx as u32)?;
                }
            }
        }
        Mode::Envoy | Mode::Grpc => {
            let (scale, sum) = scale(endpoints, cfg);
            let (mut current, mut target) = (0.0f64, 0.0f64);
            for idx in order {
                let (key, w) = &endpoints[idx];
                target += scale * (weight_of(*w) as f64 / sum);
                let mut i = 0u64;
                while current < target {
                    emit(point_name_hash(key.as_ref(), i), idx as u32)?;
                    i += 1;
                    current += 1.0;
                }
            }
        }
    }
    Ok(())
}

/// Endpoint indices in key order without allocating (O(n²), for `no_std` builds): each step takes the
/// smallest key greater than the previous one. Keys must be distinct.
pub(crate) fn key_order_quadratic<K: AsRef<[u8]>>(
    endpoints: &[(K, u32)],
) -> impl Iterator<Item = usize> + '_ {
    let mut prev: Option<usize> = None;
    core::iter::from_fn(move || {
        let mut best: Option<usize> = None;
        for (i, (k, _)) in endpoints.iter().enumerate() {
            let k = k.as_ref();
            if prev.is_some_and(|p| k <= endpoints[p].0.as_ref()) {
                continue;
            }
            if best.is_none_or(|b| k < endpoints[b].0.as_ref()) {
                best = Some(i);
            }
        }
        prev = best;
        best
    })
}

/// The first repeated key without allocating (O(n²)).
pub(crate) fn duplicate_quadratic<K: AsRef<[u8]>>(endpoints: &[(K, u32)]) -> Result<(), RingError> {
    for (second, (k, _)) in endpoints.iter().enumerate() {
        if let Some(first) = endpoints[..second]
            .iter()
            .position(|(j, _)| j.as_ref() == k.as_ref())
        {
            return Err(RingError::DuplicateKey { first, second });
        }
    }
    Ok(())
}

/// Sorts parallel arrays by `(point, owner)` in place without allocating (heapsort).
pub(crate) fn sort_pairs(points: &mut [u64], owners: &mut [u32]) {
    let n = points.len();
    let less = |p: &[u64], o: &[u32], a: usize, b: usize| (p[a], o[a]) < (p[b], o[b]);
    let sift = |p: &mut [u64], o: &mut [u32], mut root: usize, end: usize| loop {
        let mut child = 2 * root + 1;
        if child >= end {
            break;
        }
        if child + 1 < end && less(p, o, child, child + 1) {
            child += 1;
        }
        if !less(p, o, root, child) {
            break;
        }
        p.swap(root, child);
        o.swap(root, child);
        root = child;
    };
    for start in (0..n / 2).rev() {
        sift(points, owners, start, n);
    }
    for end in (1..n).rev() {
        points.swap(0, end);
        owners.swap(0, end);
        sift(points, owners, 0, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heapsort_sorts_pairs() {
        let mut p = [5u64, 1, 5, 3, 0, 9, 3];
        let mut o = [0u32, 1, 2, 3, 4, 5, 6];
        sort_pairs(&mut p, &mut o);
        assert_eq!(p, [0, 1, 3, 3, 5, 5, 9]);
        assert_eq!(o, [4, 1, 3, 6, 0, 2, 5]);
    }

    #[test]
    fn quadratic_key_order() {
        let eps = [("b", 1), ("a", 1), ("c", 1), ("ab", 1)];
        let order: std::vec::Vec<usize> = key_order_quadratic(&eps).collect();
        assert_eq!(order, [1, 3, 0, 2]);
    }
}
