//! Weighted round robin in O(1) amortised per pick, lock-free and allocation-free: grpc-go's
//! static stride scheduler (`balancer/weightedroundrobin/scheduler.go`), the scheduler gRFC A58
//! specifies for `weighted_round_robin`.
//!
//! Weights are scaled so the largest is [`MAX_SCALED`] (65,535); each pick takes the next number
//! of a shared sequence, splits it into an index (`seq % n`) and a generation (`seq / n`), and
//! accepts the index when `(w * generation + index * MAX_SCALED / 2) % MAX_SCALED >= MAX_SCALED - w`:
//! each endpoint is accepted `w` times per `MAX_SCALED` generations, spread evenly over them, and
//! the offset keeps neighbours of equal weight from being skipped together. Expected draws per
//! pick: `n * MAX_SCALED / sum(scaled w)` = `max(w) / mean(w)`: 1 when all weights are equal, so
//! the pick is O(1) amortised for weights of bounded skew; the draws are capped, and pickers fall
//! back to a linear pass.
//!
//! Unlike a cursor that walks to the next *available* endpoint, a turn that lands on an
//! unavailable endpoint (ejected, not ready) is redrawn at a *random* point of the schedule, so an
//! unavailable endpoint's share spreads over all the others in proportion to their weights
//! instead of doubling its neighbour's (grpc-go rebuilds its picker without an ejected endpoint;
//! pickwise ejects on the data path, so the schedule has to do it).
//!
//! ```
//! use pickwise::schedule::{self, Stride};
//! use core::sync::atomic::AtomicU32;
//!
//! let mut scaled = [0u16; 3];
//! schedule::scale(&[1, 2, 1], &mut scaled);
//! let seq = AtomicU32::new(0);
//! let stride = Stride::new(&scaled, &seq);
//! let mut counts = [0u32; 3];
//! let mut rng = pickwise::SplitMix64::new(1);
//! for _ in 0..4000 {
//!     counts[stride.next(&mut rng, |_| true).unwrap()] += 1;
//! }
//! assert!(counts.iter().zip([1000, 2000, 1000]).all(|(c, want)| c.abs_diff(want) <= 2));
//! ```

use crate::rng::Rng;
use crate::sync::{AtomicU32, Ordering::Relaxed};

/// The largest scaled weight (grpc-go's `maxWeight`).
pub const MAX_SCALED: u16 = u16::MAX;

/// Scales `weights` into `out` (same length) so the largest is [`MAX_SCALED`]; every weight
/// becomes at least 1 (0 counts as 1, as grpc-go treats a zero weight outside xDS). Returns
/// whether the weights are all equal (plain round robin then needs no scheduler).
pub fn scale(weights: &[u32], out: &mut [u16]) -> bool {
    let max = weights.iter().copied().max().unwrap_or(1).max(1);
    let mut equal = true;
    let first = weights.first().copied().unwrap_or(0).max(1);
    for (w, o) in weights.iter().zip(out.iter_mut()) {
        let w = (*w).max(1);
        equal &= w == first;
        let s = (u64::from(w) * u64::from(MAX_SCALED) + u64::from(max) / 2) / u64::from(max);
        *o = s.clamp(1, u64::from(MAX_SCALED)) as u16;
    }
    equal
}

/// [`scale`] into a new vector.
#[cfg(feature = "alloc")]
pub fn scaled(weights: &[u32]) -> alloc::vec::Vec<u16> {
    let mut out = alloc::vec![0u16; weights.len()];
    scale(weights, &mut out);
    out
}

/// One weighted round-robin schedule over scaled weights and a shared sequence (see the
/// [module docs](self)). Cheap to build: references only.
#[derive(Clone, Copy, Debug)]
pub struct Stride<'a> {
    weights: &'a [u16],
    seq: &'a AtomicU32,
}

impl<'a> Stride<'a> {
    /// A schedule over `weights` (from [`scale`]) drawing turns from `seq`.
    pub fn new(weights: &'a [u16], seq: &'a AtomicU32) -> Self {
        Self { weights, seq }
    }

    /// The next index whose turn it is and that `accept`s it; after a refused turn, turns are
    /// drawn at random points of the schedule (`rng`). `None` when there are no weights or nothing
    /// was accepted within a bounded number of draws (every endpoint refused: the caller falls
    /// back to a scan).
    #[inline]
    pub fn next(&self, rng: &mut impl Rng, accept: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 {
            return None;
        }
        let m = u64::from(MAX_SCALED);
        let offset = m / 2;
        // Enough for every weight skew the scaling allows to come round (grpc-go and C-core loop
        // until a turn is taken), without looping forever when nothing accepts: each index gets
        // many turns, so a weighted pick falls back to the caller's uniform scan only with
        // negligible probability.
        let draws = n.saturating_mul(64).saturating_add(1024);
        let mut refused = 0;
        for _ in 0..draws {
            let s = if refused == 0 {
                u64::from(self.seq.fetch_add(1, Relaxed))
            } else {
                rng.next_u64() >> 32
            };
            let i = (s % n as u64) as usize;
            let generation = s / n as u64;
            let w = u64::from(self.weights[i]);
            if (w * generation + i as u64 * offset) % m < m - w {
                continue;
            }
            if accept(i) {
                return Some(i);
            }
            refused += 1;
            if refused > 2 * n {
                return None;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SplitMix64;

    #[test]
    fn shares_follow_weights() {
        let mut w = [0u16; 4];
        scale(&[1, 1, 2, 4], &mut w);
        let seq = AtomicU32::new(0);
        let s = Stride::new(&w, &seq);
        let mut c = [0u32; 4];
        for _ in 0..80_000 {
            c[s.next(&mut SplitMix64::new(7), |_| true).unwrap()] += 1;
        }
        for (got, want) in c.iter().zip([10_000, 10_000, 20_000, 40_000]) {
            assert!(got.abs_diff(want) <= 10, "{c:?}");
        }
    }

    #[test]
    fn a_refused_turn_spreads_over_the_others() {
        let mut w = [0u16; 4];
        scale(&[1, 1, 1, 1], &mut w);
        let seq = AtomicU32::new(0);
        let s = Stride::new(&w, &seq);
        let mut rng = SplitMix64::new(3);
        let mut c = [0u32; 4];
        for _ in 0..30_000 {
            c[s.next(&mut rng, |i| i != 1).unwrap()] += 1;
        }
        assert_eq!(c[1], 0);
        // Not doubled onto index 2: each survivor gets a third (its own turns, 7,500, plus a
        // third of the refused ones).
        for x in [c[0], c[2], c[3]] {
            assert!((9_500..10_500).contains(&x), "{c:?}");
        }
    }

    #[test]
    fn nothing_accepted_ends() {
        let w = [MAX_SCALED; 3];
        let seq = AtomicU32::new(0);
        let mut rng = SplitMix64::new(1);
        assert_eq!(Stride::new(&w, &seq).next(&mut rng, |_| false), None);
        assert_eq!(Stride::new(&[], &seq).next(&mut rng, |_| true), None);
    }

    #[test]
    fn zero_and_huge_weights_scale_safely() {
        let mut w = [0u16; 3];
        assert!(!scale(&[0, u32::MAX, 7], &mut w));
        assert_eq!(w, [1, MAX_SCALED, 1]);
        assert!(scale(&[3, 3], &mut w[..2]));
    }
}
