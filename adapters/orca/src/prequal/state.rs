//! [`ProbeState`]: a server's requests in flight and latency estimate, shared by everything
//! that counts requests ([`InFlight`] guards, the tower layer) and everything that answers
//! probes (the gRPC service, the HTTP helper, piggybacked headers).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::estimator::RecentMedian;
use super::report::ProbeReport;

/// How a [`ProbeState`] estimates latency. The default is the paper's median.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Estimator {
    /// The paper's estimator: the median latency of recent queries that arrived at the current
    /// RIF ([`RecentMedian`], whose docs give the bucketing and fallback rule), ignoring
    /// samples older than `max_age`.
    RecentMedian {
        /// Samples older than this are ignored.
        max_age: Duration,
    },
    /// Reports latency 0 and reads no clock: clients then pick by RIF alone. prequal-rs found
    /// this the most robust choice in its simulations, since many clients chasing the same
    /// low median can herd onto one server.
    RifOnly,
}

impl Estimator {
    /// The default maximum sample age of [`Estimator::RecentMedian`]: 1 s.
    ///
    /// The paper finds samples from the last few hundredths of a second enough at moderate and
    /// high rates; there each bucket's ring of the last 16 samples turns over far faster than
    /// any age limit, so the ring, not the age, bounds staleness. The age matters at low
    /// rates, where it decides how long an old regime may still be reported; 1 s keeps a few
    /// samples per bucket at tens of queries per second while bounding what a probe can
    /// report to the last second, the time scale of a client's probe pool (prequal-rs uses
    /// the same default).
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(1);
}

impl Default for Estimator {
    fn default() -> Self {
        Self::RecentMedian {
            max_age: Self::DEFAULT_MAX_AGE,
        }
    }
}

/// A server's Prequal load state: requests in flight (an atomic counter) and a latency
/// estimator. Cheap to clone (an `Arc` inside); clones share the state.
///
/// Count each query with [`start`](Self::start) (the [`PrequalLayer`](super::PrequalLayer)
/// does it for tower/tonic servers) and answer probes with [`report`](Self::report).
///
/// As the paper (§4) specifies: a query counts as in flight from when the application
/// receives it until it hands back the response; when it completes, its latency is recorded
/// tagged with the RIF it saw on arrival; a probe is answered with the current RIF and the
/// latency estimate at that RIF.
///
/// The tag is the number of *other* queries in flight when the query arrived, i.e. the RIF a
/// probe would have reported just before it. So the estimate at RIF `r` answers the client's
/// question directly: "how long would a query take that arrives now, while this server
/// reports `r`?". (prequal-rs tags with the count including the query itself and reads the
/// buckets at `r - 1 ..= r + 1`, which blurs the same off-by-one.)
///
/// # Examples
///
/// ```
/// use pickwise_orca::prequal::{Estimator, ProbeState};
///
/// let state = ProbeState::new();
/// let first = state.start();
/// let second = state.start();
/// assert_eq!((first.rif_at_arrival(), second.rif_at_arrival()), (0, 1));
/// assert_eq!(state.report().rif, 2);
/// drop(first);
/// drop(second);
/// assert_eq!(state.rif(), 0);
///
/// let rif_only = ProbeState::with_estimator(Estimator::RifOnly);
/// let _query = rif_only.start();
/// assert_eq!(rif_only.report().latency_us, 0);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ProbeState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rif: AtomicU32,
    /// `None` for [`Estimator::RifOnly`]: no clock reads, no records.
    median: Option<RecentMedian>,
    origin: Instant,
}

impl Default for Inner {
    fn default() -> Self {
        Self::new(Estimator::default())
    }
}

impl Inner {
    fn new(estimator: Estimator) -> Self {
        Self {
            rif: AtomicU32::new(0),
            median: match estimator {
                Estimator::RecentMedian { max_age } => Some(RecentMedian::new(max_age)),
                Estimator::RifOnly => None,
            },
            origin: Instant::now(),
        }
    }
}

impl ProbeState {
    /// No request in flight, the default estimator ([`Estimator::RecentMedian`], 1 s).
    pub fn new() -> Self {
        Self::default()
    }

    /// No request in flight, estimating latency with `estimator`.
    pub fn with_estimator(estimator: Estimator) -> Self {
        Self {
            inner: Arc::new(Inner::new(estimator)),
        }
    }

    /// The estimator this state was made with.
    pub fn estimator(&self) -> Estimator {
        match &self.inner.median {
            Some(m) => Estimator::RecentMedian { max_age: m.max_age() },
            None => Estimator::RifOnly,
        }
    }

    /// Requests in flight now.
    pub fn rif(&self) -> u32 {
        self.inner.rif.load(Ordering::Relaxed)
    }

    /// The answer to a probe now: the current RIF and the latency estimate at it.
    pub fn report(&self) -> ProbeReport {
        self.report_at(self.rif())
    }

    /// The report to piggyback on `query`'s response: as [`report`](Self::report), but with
    /// the RIF not counting `query`, which is over from its client's point of view though
    /// it still counts while its response is sent.
    pub fn report_excluding(&self, query: &InFlight) -> ProbeReport {
        debug_assert!(
            Arc::ptr_eq(&query.state.inner, &self.inner),
            "a guard of another state"
        );
        self.report_at(self.rif().saturating_sub(1))
    }

    fn report_at(&self, rif: u32) -> ProbeReport {
        let latency_us = match &self.inner.median {
            Some(m) => m.estimate(rif, self.inner.origin.elapsed()),
            None => 0,
        };
        ProbeReport { rif, latency_us }
    }

    /// Counts a query as in flight until the returned guard drops; the drop records the
    /// query's latency (from now) tagged with [`InFlight::rif_at_arrival`].
    #[must_use = "the query stops counting as in flight when the guard drops"]
    pub fn start(&self) -> InFlight {
        let rif_at_arrival = self.inner.rif.fetch_add(1, Ordering::Relaxed);
        let started = self.inner.median.as_ref().map(|_| Instant::now());
        InFlight {
            state: self.clone(),
            rif_at_arrival,
            started,
        }
    }
}

/// One query in flight ([`ProbeState::start`]). Dropping it ends the query: the RIF goes down
/// and, with the median estimator, the query's latency is recorded.
#[must_use = "the query stops counting as in flight when the guard drops"]
pub struct InFlight {
    state: ProbeState,
    rif_at_arrival: u32,
    started: Option<Instant>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("rif_at_arrival", &self.rif_at_arrival)
            .finish_non_exhaustive()
    }
}

impl InFlight {
    /// How many other queries were in flight when this one arrived (its latency sample's tag).
    pub fn rif_at_arrival(&self) -> u32 {
        self.rif_at_arrival
    }

    /// The state this query counts in.
    pub fn state(&self) -> &ProbeState {
        &self.state
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let inner = &self.state.inner;
        inner.rif.fetch_sub(1, Ordering::Relaxed);
        if let (Some(median), Some(started)) = (&inner.median, self.started) {
            let now = Instant::now();
            let latency = ProbeReport::saturating_us(now.saturating_duration_since(started));
            median.record(
                self.rif_at_arrival,
                latency,
                now.saturating_duration_since(inner.origin),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_tags() {
        let state = ProbeState::new();
        let a = state.start();
        let b = state.clone().start();
        assert_eq!(state.rif(), 2);
        assert_eq!(b.rif_at_arrival(), 1);
        assert_eq!(state.report_excluding(&b).rif, 1);
        drop(a);
        drop(b);
        assert_eq!(state.rif(), 0);
        // Both queries were recorded (buckets 0 and 1): some estimate exists.
        let r = state.report();
        assert_eq!(r.rif, 0);
    }

    #[test]
    fn estimator_round_trips() {
        assert_eq!(ProbeState::new().estimator(), Estimator::default());
        assert_eq!(
            ProbeState::with_estimator(Estimator::RifOnly).estimator(),
            Estimator::RifOnly
        );
        let e = Estimator::RecentMedian {
            max_age: Duration::from_millis(50),
        };
        assert_eq!(ProbeState::with_estimator(e).estimator(), e);
    }

    /// ns per start+drop+report, printed (not asserted): `cargo test -p pickwise-orca --release
    /// --lib prequal::state::tests::cost -- --nocapture --ignored`.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn cost() {
        let empty = ProbeState::new();
        let n = 1_000_000u32;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(empty.report());
        }
        println!(
            "no sample anywhere: {:?} per report (all buckets scanned)",
            t.elapsed() / n
        );
        for estimator in [Estimator::default(), Estimator::RifOnly] {
            let state = ProbeState::with_estimator(estimator);
            let n = 2_000_000u32;
            let t = Instant::now();
            for _ in 0..n {
                let outer = state.start();
                drop(state.start());
                drop(outer);
            }
            let per_query = t.elapsed() / (2 * n);
            let t = Instant::now();
            let mut sum = 0u64;
            for _ in 0..n {
                sum += u64::from(state.report().latency_us);
            }
            let per_report = t.elapsed() / n;
            println!(
                "{estimator:?}: {per_query:?} per query (start + drop), {per_report:?} per report ({sum})"
            );
        }
    }
}
