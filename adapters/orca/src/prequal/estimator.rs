//! [`RecentMedian`]: the paper's latency estimate (NSDI '24, §4), the median latency of recent
//! queries that arrived at the server's current RIF.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// RIF values with a bucket of their own.
const EXACT: u32 = 64;
/// Buckets per power of two above [`EXACT`].
const PER_OCTAVE_LOG2: u32 = 2;
const BUCKETS: usize = EXACT as usize + ((32 - EXACT.trailing_zeros()) << PER_OCTAVE_LOG2) as usize;
const K: usize = RecentMedian::SAMPLES_PER_BUCKET;
/// `newest_us` of a bucket that never had a sample.
const NEVER: u64 = u64::MAX;

/// The bucket holding samples of queries that arrived at `rif`.
fn bucket_of(rif: u32) -> usize {
    if rif < EXACT {
        return rif as usize;
    }
    let log2 = 31 - rif.leading_zeros();
    let sub = (rif >> (log2 - PER_OCTAVE_LOG2)) & ((1 << PER_OCTAVE_LOG2) - 1);
    EXACT as usize + (((log2 - EXACT.trailing_zeros()) << PER_OCTAVE_LOG2) + sub) as usize
}

/// The paper's per-RIF median latency estimator. Thread-safe; a record locks one bucket for a
/// few nanoseconds.
///
/// Samples are kept per RIF bucket: one bucket per RIF from 0 to 63, then four buckets per
/// power of two (64–79, 80–95, 96–111, 112–127, 128–159, …, up to `u32::MAX`: 168 buckets in
/// all). Each bucket is a ring of the last [`RecentMedian::SAMPLES_PER_BUCKET`] samples (latency
/// and completion time) behind its own short mutex, plus an atomic "newest sample at" so that
/// stale buckets are skipped without locking.
///
/// The estimate for RIF `r` at time `now`, given a maximum age:
///
/// 1. A sample is fresh when `now - completed_at <= max_age`; others are ignored.
/// 2. If `r`'s bucket holds fresh samples, the estimate is their median (for an even count the
///    upper of the two middle values).
/// 3. Otherwise it is the median of the nearest bucket (by bucket index) that holds fresh
///    samples; at equal distance the higher-RIF bucket wins, so a server whose RIF has just
///    risen above anything it measured reports a pessimistic rather than optimistic latency.
/// 4. With no fresh sample anywhere the estimate is 0 (as prequal-rs: a stale high value would
///    keep clients away from an idle server indefinitely, since nothing would refresh it).
///
/// The caller supplies the clock (`now` as a [`Duration`] since any fixed origin, monotonic):
/// [`ProbeState`](super::ProbeState) reads it from an `Instant`, and tests pass it by hand.
pub struct RecentMedian {
    max_age_us: u64,
    buckets: Box<[Bucket]>,
}

impl std::fmt::Debug for RecentMedian {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentMedian")
            .field("max_age", &self.max_age())
            .finish_non_exhaustive()
    }
}

struct Bucket {
    /// Completion time (µs) of the newest sample, [`NEVER`] if none: read without the lock.
    newest_us: AtomicU64,
    ring: Mutex<Ring>,
}

#[derive(Clone, Copy)]
struct Ring {
    at_us: [u64; K],
    latency_us: [u32; K],
    len: u8,
    next: u8,
}

impl RecentMedian {
    /// Samples kept per RIF bucket (the newest ones).
    pub const SAMPLES_PER_BUCKET: usize = 16;

    /// An estimator ignoring samples older than `max_age` (microsecond resolution).
    pub fn new(max_age: Duration) -> Self {
        let empty = Ring {
            at_us: [0; K],
            latency_us: [0; K],
            len: 0,
            next: 0,
        };
        Self {
            max_age_us: u64::try_from(max_age.as_micros()).unwrap_or(u64::MAX),
            buckets: (0..BUCKETS)
                .map(|_| Bucket {
                    newest_us: AtomicU64::new(NEVER),
                    ring: Mutex::new(empty),
                })
                .collect(),
        }
    }

    /// The maximum sample age this estimator was made with.
    pub fn max_age(&self) -> Duration {
        Duration::from_micros(self.max_age_us)
    }

    /// Records that a query which arrived when `rif_at_arrival` other queries were in flight
    /// took `latency_us` microseconds and completed at `now`.
    pub fn record(&self, rif_at_arrival: u32, latency_us: u32, now: Duration) {
        let now_us = micros(now);
        let bucket = &self.buckets[bucket_of(rif_at_arrival)];
        let mut ring = bucket.ring.lock().unwrap_or_else(|e| e.into_inner());
        let i = usize::from(ring.next);
        ring.at_us[i] = now_us;
        ring.latency_us[i] = latency_us;
        ring.next = ((i + 1) % K) as u8;
        ring.len = (usize::from(ring.len) + 1).min(K) as u8;
        // Completions may be recorded slightly out of order: keep the newest.
        let newest = bucket.newest_us.load(Ordering::Relaxed);
        if newest == NEVER || newest < now_us {
            bucket.newest_us.store(now_us, Ordering::Relaxed);
        }
    }

    /// The estimated latency in microseconds of a query arriving at `now` while `rif` queries
    /// are in flight (0 without a fresh sample).
    pub fn estimate(&self, rif: u32, now: Duration) -> u32 {
        let now_us = micros(now);
        let fresh = |b: usize| {
            let newest = self.buckets[b].newest_us.load(Ordering::Relaxed);
            newest != NEVER && now_us.saturating_sub(newest) <= self.max_age_us
        };
        let center = bucket_of(rif);
        // Nearest bucket with a fresh sample; at equal distance the higher one.
        let median = |b: usize| if fresh(b) { self.median(b, now_us) } else { None };
        for d in 0..BUCKETS {
            let above = center + d;
            if above < BUCKETS {
                if let Some(m) = median(above) {
                    return m;
                }
            } else if d > center {
                break;
            }
            if d > 0 && d <= center {
                if let Some(m) = median(center - d) {
                    return m;
                }
            }
        }
        0
    }

    /// The median of bucket `b`'s fresh samples, `None` if it has none (they may have aged
    /// out between the caller's check and the lock, or `newest_us` may be ahead of `now`).
    fn median(&self, b: usize, now_us: u64) -> Option<u32> {
        let mut fresh = [0u32; K];
        let mut n = 0;
        {
            let ring = self.buckets[b].ring.lock().unwrap_or_else(|e| e.into_inner());
            for i in 0..usize::from(ring.len) {
                if now_us.saturating_sub(ring.at_us[i]) <= self.max_age_us {
                    fresh[n] = ring.latency_us[i];
                    n += 1;
                }
            }
        }
        (n > 0).then(|| *fresh[..n].select_nth_unstable(n / 2).1)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn buckets_are_exact_then_four_per_octave() {
        for rif in 0..64 {
            assert_eq!(bucket_of(rif), rif as usize);
        }
        assert_eq!(bucket_of(64), 64);
        assert_eq!(bucket_of(79), 64);
        assert_eq!(bucket_of(80), 65);
        assert_eq!(bucket_of(127), 67);
        assert_eq!(bucket_of(128), 68);
        assert_eq!(bucket_of(159), 68);
        assert_eq!(bucket_of(160), 69);
        assert_eq!(bucket_of(u32::MAX), BUCKETS - 1);
        assert_eq!(BUCKETS, 168);
        // Monotonic and contiguous.
        let mut last = 0;
        for rif in (0..100_000).chain([u32::MAX / 2, u32::MAX / 2 + 1, u32::MAX - 1, u32::MAX]) {
            let b = bucket_of(rif);
            assert!(
                b == last || b == last + 1 || rif > 100_000,
                "rif {rif}: {last} -> {b}"
            );
            last = b;
        }
    }

    #[test]
    fn median_of_the_current_rif() {
        let m = RecentMedian::new(ms(1_000));
        for lat in [50, 10, 40, 20, 30] {
            m.record(3, lat, ms(10));
        }
        m.record(4, 1_000, ms(10));
        m.record(2, 1, ms(10));
        assert_eq!(m.estimate(3, ms(20)), 30);
        // Even count: the upper middle value.
        m.record(3, 60, ms(10));
        assert_eq!(m.estimate(3, ms(20)), 40);
    }

    #[test]
    fn keeps_the_last_samples_per_bucket() {
        let m = RecentMedian::new(ms(1_000));
        for i in 0..100u32 {
            m.record(7, i, ms(1));
        }
        // The last 16 are 84..=99: upper median 92.
        assert_eq!(m.estimate(7, ms(1)), 92);
    }

    #[test]
    fn old_samples_are_ignored() {
        let m = RecentMedian::new(ms(100));
        m.record(5, 900, ms(0));
        m.record(5, 100, ms(150));
        assert_eq!(m.estimate(5, ms(160)), 100);
        assert_eq!(m.estimate(5, ms(250)), 100);
        assert_eq!(m.estimate(5, ms(251)), 0);
        // Nothing fresh anywhere: 0.
        assert_eq!(m.estimate(0, ms(10_000)), 0);
    }

    #[test]
    fn falls_back_to_the_nearest_fresh_bucket_higher_on_ties() {
        let m = RecentMedian::new(ms(100));
        m.record(2, 200, ms(0));
        m.record(6, 600, ms(0));
        m.record(10, 1_000, ms(0));
        m.record(4, 444, ms(0)); // goes stale below
        m.record(2, 200, ms(200));
        m.record(6, 600, ms(200));
        m.record(10, 1_000, ms(200));
        // 4 is stale; 2 and 6 are both 2 away: the higher wins.
        assert_eq!(m.estimate(4, ms(250)), 600);
        assert_eq!(m.estimate(3, ms(250)), 200);
        assert_eq!(m.estimate(8, ms(250)), 1_000);
        assert_eq!(m.estimate(0, ms(250)), 200);
        assert_eq!(m.estimate(u32::MAX, ms(250)), 1_000);
    }

    #[test]
    fn log_buckets_share_samples() {
        let m = RecentMedian::new(ms(100));
        m.record(1_000, 5_000, ms(0));
        assert_eq!(m.estimate(1_001, ms(0)), 5_000);
    }

    #[test]
    fn out_of_order_completions_keep_the_newest_time() {
        let m = RecentMedian::new(ms(100));
        m.record(1, 10, ms(200));
        m.record(1, 20, ms(150));
        assert_eq!(m.estimate(1, ms(240)), 20);
        assert_eq!(m.estimate(1, ms(260)), 10);
        assert_eq!(m.estimate(1, ms(301)), 0);
    }
}
