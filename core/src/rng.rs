//! Caller-supplied randomness. The core draws no random numbers of its own.

/// A source of random `u64`s. Implemented for closures, so `|| fastrand::u64(..)` works.
pub trait Rng {
    /// The next random value.
    fn next_u64(&mut self) -> u64;
}

impl<F: FnMut() -> u64> Rng for F {
    #[inline]
    fn next_u64(&mut self) -> u64 {
        self()
    }
}

/// SplitMix64: a tiny, fast, seedable generator for tests, simulations and single-threaded callers.
///
/// ```
/// use pickwise::{Rng, SplitMix64};
/// let mut a = SplitMix64::new(7);
/// let mut b = SplitMix64::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// ```
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl Rng for SplitMix64 {
    #[inline]
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(crate::hash::GOLDEN);
        crate::hash::mix64(self.0)
    }
}

/// Two distinct indices below `n` (`n >= 2`) from one random value (Lemire's multiply-shift).
#[inline]
pub(crate) fn two_distinct(r: u64, n: usize) -> (usize, usize) {
    debug_assert!(n >= 2);
    let n64 = n as u64;
    let a = (((r & 0xffff_ffff) * n64) >> 32) as usize;
    let off = 1 + (((r >> 32) * (n64 - 1)) >> 32) as usize;
    let b = if a + off >= n { a + off - n } else { a + off };
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_distinct_covers_all_pairs() {
        let mut rng = SplitMix64::new(1);
        let n = 5;
        let mut seen = [[0u32; 5]; 5];
        for _ in 0..100_000 {
            let (a, b) = two_distinct(rng.next_u64(), n);
            assert!(a < n && b < n && a != b);
            seen[a][b] += 1;
        }
        for (a, row) in seen.iter().enumerate() {
            for (b, &c) in row.iter().enumerate() {
                assert!(a == b || (4000..6000).contains(&c), "{a},{b}: {c}");
            }
        }
    }
}
