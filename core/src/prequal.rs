//! Prequal: probing-based selection (Wydrowski et al., "Load is not what you should balance:
//! Introducing Prequal", NSDI '24; the balancer behind YouTube). Clients keep a small pool of fresh
//! probe answers — each server's requests in flight (RIF) and its latency estimate at that RIF —
//! and pick by the hot-cold lexicographic (HCL) rule.
//!
//! What the paper specifies (§4), as implemented here:
//! - **Probing:** `probes_per_query` probes per query (fractional rates rounded deterministically
//!   so the long-run rate is exact), to targets drawn uniformly without replacement from the
//!   available endpoints (rates exact to 1/1024 per query), plus one probe after `idle_probe_ns`
//!   without one. pickwise orders the owed probes: rechecks of endpoints that just failed first,
//!   then one sweep over a new picker's endpoints from a random start, then uniform draws (see
//!   below). The core only counts
//!   what is owed ([`ProbePool::take_probes`], [`Prepared::probe_targets`]); the adapter sends
//!   the probes asynchronously, never on the pick path, and feeds the answers back
//!   ([`Prepared::record_probe`]). Answers piggybacked on responses are recorded the same way.
//! - **Pool:** at most `pool_size` answers (16), at most one per endpoint (a new answer replaces
//!   the endpoint's older one), the oldest evicted when full; answers older than `max_age_ns`
//!   (1 s) are dropped; each answer routes at most `b_reuse` queries, where
//!   `b_reuse = max(1, (1 + δ) / ((1 - m/n)·r_probe - r_remove))` randomly rounded (Eq. 1).
//! - **HCL:** an answer is hot when its RIF exceeds the `q_rif` quantile (2^-0.25 ≈ 0.84) of the
//!   RIFs of the last 64 answers received (recomputed every 8th answer once 64 are in); if every usable answer is hot the lowest RIF wins,
//!   otherwise the cold answer with the lowest latency. The chosen answer's RIF is incremented
//!   (the query just sent).
//! - **Removal:** `removes_per_query` answers per query (deterministic rounding), alternating the
//!   oldest and the worst (the hot answer with the highest RIF if any is hot, else the cold one with
//!   the highest latency). pickwise scales the rate by `n/m` when there are fewer servers than
//!   pool entries: the paper's rate assumes `n ≫ m`, and with 4 servers it kept the pool empty
//!   (every pick a fallback).
//! - **Fallback:** while fewer than two usable answers are pooled the pick is P2C under
//!   [`PrequalConfig::fallback`] (the paper falls back to a uniformly random replica; P2C with a
//!   load cost is never worse than random and uses the load pickwise tracks anyway).
//!
//! What the paper leaves open, and pickwise's choices:
//! - Eq. (1) with a non-positive denominator (probes cannot keep the pool growing, e.g. m = 16 of
//!   n = 20 at 3 probes per query): `b_reuse = 1`, the paper's `max(1, ·)` read literally.
//!   prequal-rs allows its reuse cap (16) there instead; in the simulator
//!   (`core/examples/prequal_sim.rs`, 20 servers, 5 seeds) that doubled Prequal's p99 (175 vs
//!   83.5 ms heterogeneous, 92 vs 43 ms equal servers): one answer routing 16 queries herds them.
//! - Error aversion (the paper's "sinkholing", details unpublished): usable answers are those of
//!   available endpoints (READY, not ejected by outlier detection) received after the
//!   endpoint's last failure, since a server answering errors fast reports a low RIF and
//!   latency. While an ejection can follow (consecutive-failure ejection on, a slot under its
//!   cap free), a failure also queues the endpoint for a recheck (pickwise's addition;
//!   prequal-rs never re-probes after an error): the next owed probe goes to it (within the
//!   probe rate, never an extra probe), so a failing endpoint reaches outlier ejection's streak
//!   in a few round trips instead of as many random draws. The first failure of a streak is
//!   rechecked only if the endpoint had not failed in the previous second (a server failing a
//!   share of requests would draw traffic from each recheck). With no ejection to follow, two
//!   failures in a row keep the endpoint's answers out for `max_age` after its last failure
//!   instead: a sinkhole's idle-looking answers would otherwise win it a pick each.
//! - Each new picker's first probes sweep its ready endpoints once, from a random start, before
//!   the uniform draws: `n` uniform draws leave about 1/e of the endpoints unprobed (covering all
//!   takes about `n ln n`), so a starting client, or a joining server, would wait several times
//!   longer to be known. The sweep only orders the owed probes; it never adds one.
//! - The pool is shared by every picker the balancer publishes and keyed by endpoint identity,
//!   so membership or readiness changes keep the answers of endpoints that stay.
//!
//! **Lock-free.** A pick reads the slots (four 32-bit atomics each; a slot's fields are read
//! between two reads of its tag word and skipped if it changed), consumes its answer with one
//! compare-and-swap, and makes one `fetch_add` on the query counter. No allocation, no lock; the
//! quantile threshold is recomputed when an answer is recorded (off the pick path).
//!
//! [`Prepared::probe_targets`]: crate::balancer::Prepared::probe_targets
//! [`Prepared::record_probe`]: crate::balancer::Prepared::record_probe

#[cfg(feature = "alloc")]
use core::borrow::Borrow;
#[cfg(feature = "alloc")]
use core::ops::Range;

use crate::endpoint::EndpointState;
use crate::pool::Policy;
#[cfg(feature = "alloc")]
use crate::pool::Pool;
use crate::rng::Rng;
use crate::sync::{
    AtomicU32,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use crate::time::{elapsed_ms, millis};

const SECOND: u64 = 1_000_000_000;

/// Most answers a pool can hold (the paper's 16 fits with room to experiment).
pub const MAX_POOL_SIZE: usize = 32;
/// RIFs of this many recent answers make the hot/cold quantile.
pub const RIF_HISTORY: usize = 64;
/// Most queries one answer can route (the reuse counter's range).
pub const MAX_REUSE: u32 = 63;

/// One probe answer as a server reports it (the `x-prequal-rif` / `x-prequal-latency-us` headers
/// or the gRPC probe method; adapters parse the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// Requests in flight at the server.
    pub rif: u32,
    /// The server's latency estimate at that RIF, in microseconds (0: the server reports RIF only).
    pub latency_us: u32,
}

/// Prequal's settings. Defaults are the paper's testbed settings (§5) except the probing rate:
/// 1 probe per query, not 3. The paper's probes are cheap next to its queries; pickwise's
/// adapters also record the answers servers piggyback on responses, and with them one probe per
/// query matched or beat three in the simulator (`core/examples/prequal_sim.rs`, 20 servers:
/// p99 79 vs 86 ms heterogeneous, 40 vs 43 ms equal) at a third of the probes, and on
/// prequal-rs's HTTP testbed three probes per query cost more latency than they saved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrequalConfig {
    /// Probes per query (`r_probe`; 1, the paper uses 3); fractional rates are spread over
    /// queries. 1 assumes servers piggyback answers on responses; set 2–3 for servers that only
    /// answer probes (see `docs/prequal.md`).
    pub probes_per_query: f32,
    /// Answers kept (`m`, 16; at most [`MAX_POOL_SIZE`]).
    pub pool_size: u8,
    /// Answers older than this are dropped (1 s).
    pub max_age_ns: u64,
    /// Answers removed per query, alternating oldest and worst (`r_remove`, 1).
    pub removes_per_query: f32,
    /// `δ` of the reuse budget, Eq. (1) (1).
    pub reuse_delta: f32,
    /// Upper bound of the reuse budget (16; at most [`MAX_REUSE`]).
    pub max_reuse: u8,
    /// Answers whose RIF exceeds this quantile of recent RIFs are hot (`Q_RIF`, 2^-0.25 ≈ 0.84).
    pub q_rif: f32,
    /// One probe after this long without any (500 ms; 0 disables), so the pool is fresh when
    /// traffic resumes.
    pub idle_probe_ns: u64,
    /// The cost P2C uses while fewer than two answers are usable (peak-EWMA).
    pub fallback: Policy,
}

impl Default for PrequalConfig {
    fn default() -> Self {
        Self {
            probes_per_query: 1.0,
            pool_size: 16,
            max_age_ns: SECOND,
            removes_per_query: 1.0,
            reuse_delta: 1.0,
            max_reuse: 16,
            q_rif: 0.840_896_4, // 2^-0.25
            idle_probe_ns: SECOND / 2,
            fallback: Policy::PeakEwma,
        }
    }
}

impl PrequalConfig {
    #[inline]
    fn pool_size(&self) -> usize {
        // Two at least: the rule needs two usable answers.
        (self.pool_size as usize).clamp(2, MAX_POOL_SIZE)
    }

    /// The reuse budget for `n` endpoints before rounding: Eq. (1), `max(1, (1 + δ) / ((1 −
    /// m/n)·r_probe − r_remove))`, at most `max_reuse`; 1 when the denominator is not positive
    /// (see the module docs).
    pub fn reuse_budget(&self, n: usize) -> f32 {
        let max = (self.max_reuse as u32).clamp(1, MAX_REUSE) as f32;
        let m = self.pool_size() as f32;
        let n = (n.max(1)) as f32;
        let denom = (1.0 - m / n) * self.probes_per_query - self.removes_per_query;
        if denom > 0.0 && denom.is_finite() {
            let b = (1.0 + self.reuse_delta.max(0.0)) / denom;
            if b.is_finite() {
                return b.clamp(1.0, max);
            }
            return max;
        }
        1.0
    }
}

/// A rate per query in 1/1024ths, at most 1024 per query (`as` saturates; NaN and negatives
/// are 0). Rates are exact to 1/1024 (0.1 runs at 0.0996).
fn fixed(rate: f32) -> u64 {
    (rate.min(1024.0) * 1024.0) as u64
}

// Slot tag word: endpoint id (20 bits; 0 = empty, WRITING = being written), uses left (6 bits),
// version (6 bits).
const ID_BITS: u32 = 20;
const ID_MASK: u32 = (1 << ID_BITS) - 1;
/// The id of a slot a writer has claimed: neither empty (another writer must not take it) nor
/// readable.
const WRITING: u32 = ID_MASK;
const USES_SHIFT: u32 = ID_BITS;
const USES_MASK: u32 = 0x3f;
const VERSION_SHIFT: u32 = 26;

#[inline]
fn id_of(tag: u32) -> u32 {
    tag & ID_MASK
}
#[cfg(feature = "alloc")]
#[inline]
fn uses_of(tag: u32) -> u32 {
    (tag >> USES_SHIFT) & USES_MASK
}
#[inline]
fn bump(tag: u32) -> u32 {
    // Next version, nothing else: the "empty" form of a slot after `tag`.
    ((tag >> VERSION_SHIFT).wrapping_add(1) << VERSION_SHIFT) & !((1 << VERSION_SHIFT) - 1)
}
#[inline]
fn with(version_of: u32, id: u32, uses: u32) -> u32 {
    (version_of & !((1 << VERSION_SHIFT) - 1)) | (uses.min(USES_MASK) << USES_SHIFT) | (id & ID_MASK)
}

#[derive(Debug)]
struct Slot {
    tag: AtomicU32,
    rif: AtomicU32,
    latency_us: AtomicU32,
    received_ms: AtomicU32,
}

impl Slot {
    fn new() -> Self {
        Self {
            tag: AtomicU32::new(0),
            rif: AtomicU32::new(0),
            latency_us: AtomicU32::new(0),
            received_ms: AtomicU32::new(0),
        }
    }

    /// A consistent read: `(tag, rif, latency, received)`, `None` if empty or changing.
    #[inline]
    fn read(&self) -> Option<(u32, u32, u32, u32)> {
        let tag = self.tag.load(Acquire);
        if id_of(tag) == 0 || id_of(tag) == WRITING {
            return None;
        }
        // A seqlock read: the fields are written with release after the writer's claim (a
        // new tag), so a field read that sees a new value also sees the claim when the tag is
        // read again: unchanged tag, unchanged answer (the RIF increment on use is the one field
        // written without a new tag).
        let (rif, lat, at) = (
            self.rif.load(Acquire),
            self.latency_us.load(Acquire),
            self.received_ms.load(Acquire),
        );
        (self.tag.load(Acquire) == tag).then_some((tag, rif, lat, at))
    }

    /// Empties the slot if it still holds `tag`.
    #[cfg(feature = "alloc")]
    #[inline]
    fn clear(&self, tag: u32) -> bool {
        self.tag.compare_exchange(tag, bump(tag), AcqRel, Relaxed).is_ok()
    }
}

/// The answers one client holds, shared by every picker a balancer publishes (see the
/// [module docs](self)). Lock-free; fixed size (no allocation).
#[derive(Debug)]
pub struct ProbePool {
    config: PrequalConfig,
    slots: [Slot; MAX_POOL_SIZE],
    /// Queries picked (the probe and removal rates are per query).
    queries: AtomicU32,
    /// Probes handed out by [`take_probes`](Self::take_probes) (in probe units, wrapping).
    issued: AtomicU32,
    /// Millisecond stamp of the last probe handed out (idle probing).
    last_probe_ms: AtomicU32,
    /// Recent answers' RIFs (ring) and how many were written.
    history: [AtomicU32; RIF_HISTORY],
    history_at: AtomicU32,
    /// The `q_rif` quantile of `history`; `u32::MAX` until the first answer (nothing is hot).
    threshold: AtomicU32,
    /// Ready endpoints the last picker had (`n` of Eq. 1).
    endpoints: AtomicU32,
    /// The next endpoint id (ids start at 1; 0 marks an empty slot).
    next_id: AtomicU32,
    /// Picks that fell back to P2C (fewer than two usable answers).
    fallbacks: AtomicU32,
}

/// What one scan of the pool found.
#[cfg(feature = "alloc")]
#[derive(Clone, Copy, Debug)]
struct Best {
    slot: usize,
    tag: u32,
    pos: usize,
    rif: u32,
    latency: u32,
    received: u32,
}

impl ProbePool {
    /// An empty pool with `config`.
    pub fn new(config: PrequalConfig) -> Self {
        Self {
            config,
            slots: core::array::from_fn(|_| Slot::new()),
            queries: AtomicU32::new(0),
            issued: AtomicU32::new(0),
            last_probe_ms: AtomicU32::new(0),
            history: core::array::from_fn(|_| AtomicU32::new(0)),
            history_at: AtomicU32::new(0),
            threshold: AtomicU32::new(u32::MAX),
            endpoints: AtomicU32::new(0),
            next_id: AtomicU32::new(1),
            fallbacks: AtomicU32::new(0),
        }
    }

    /// The settings.
    pub fn config(&self) -> &PrequalConfig {
        &self.config
    }

    /// Answers pooled now (fresh or not yet expired by a pick).
    pub fn len(&self) -> usize {
        self.slots[..self.config.pool_size()]
            .iter()
            .filter(|s| !matches!(id_of(s.tag.load(Relaxed)), 0 | WRITING))
            .count()
    }

    /// Whether no answer is pooled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with each pooled answer (read consistently) and its age in milliseconds at `now`.
    pub fn for_each_answer(&self, now: u64, mut f: impl FnMut(ProbeReport, u32)) {
        let now_ms = millis(now);
        for s in &self.slots[..self.config.pool_size()] {
            if let Some((_, rif, latency_us, at)) = s.read() {
                f(ProbeReport { rif, latency_us }, elapsed_ms(now_ms, at));
            }
        }
    }

    /// The current hot threshold: answers with a RIF above it are hot (`None` before any answer).
    pub fn hot_threshold(&self) -> Option<u32> {
        let t = self.threshold.load(Relaxed);
        (t != u32::MAX).then_some(t)
    }

    /// Queries picked so far (wrapping).
    pub fn queries(&self) -> u32 {
        self.queries.load(Relaxed)
    }

    /// Of those, picks that fell back to P2C because fewer than two answers were usable
    /// (wrapping); the others were decided by the hot-cold rule.
    pub fn fallbacks(&self) -> u32 {
        self.fallbacks.load(Relaxed)
    }

    /// Sets `n` of Eq. (1): the endpoints probes are drawn from (the balancer does it per picker).
    pub fn set_endpoints(&self, n: usize) {
        self.endpoints.store(n.min(u32::MAX as usize) as u32, Relaxed);
    }

    /// `e`'s id, assigned on first use (20 bits, wrapping after a million endpoint states). Each
    /// picker build checks its endpoints' ids are distinct and reassigns a duplicate, so a stale
    /// answer can at worst name another endpoint until it expires (`max_age_ns`).
    pub(crate) fn id(&self, e: &EndpointState) -> u32 {
        let cur = e.probe_id();
        if cur != 0 {
            return cur;
        }
        e.set_probe_id(self.fresh_id())
    }

    /// A new id for `e`, replacing its current one (two endpoints met with one id: after a
    /// configuration change started a new pool, or after the ids wrapped).
    #[cfg(feature = "alloc")]
    pub(crate) fn reassign(&self, e: &EndpointState) -> u32 {
        let id = self.fresh_id();
        e.replace_probe_id(id);
        id
    }

    fn fresh_id(&self) -> u32 {
        loop {
            let id = self.next_id.fetch_add(1, Relaxed) & ID_MASK;
            if id != 0 && id != WRITING {
                return id;
            }
        }
    }

    /// Probes owed now (`probes_per_query` per query picked, minus those taken), without taking
    /// them: adapters wake their prober when this is positive.
    pub fn probes_owed(&self) -> u32 {
        let due = (u64::from(self.queries.load(Relaxed)) * fixed(self.config.probes_per_query)) >> 10;
        (due as u32).wrapping_sub(self.issued.load(Relaxed)).min(1 << 16)
    }

    /// Takes up to `max` owed probes (at least one if `idle_probe_ns` passed since the last probe
    /// and `max > 0`). The caller sends that many probes. A debt beyond twice the pool size is
    /// forgiven (probes owed for queries long past are worth nothing, and a stalled prober must
    /// not come back to a backlog); adapters may forgive the rest of a round too by calling
    /// this with `u32::MAX` and discarding the count.
    pub fn take_probes(&self, now: u64, max: u32) -> u32 {
        let now_ms = millis(now);
        let cap = 2 * self.config.pool_size() as u32;
        let mut took = 0;
        let mut cur = self.issued.load(Relaxed);
        loop {
            let due =
                ((u64::from(self.queries.load(Relaxed)) * fixed(self.config.probes_per_query)) >> 10) as u32;
            // Wrapping: a counter wrap (or a concurrent taker) reads as a large debt, which the
            // cap forgives, so the counters heal themselves.
            let owed = due.wrapping_sub(cur);
            if owed == 0 {
                break;
            }
            let n = owed.min(max);
            let keep = (owed - n).min(cap);
            match self
                .issued
                .compare_exchange_weak(cur, due.wrapping_sub(keep), Relaxed, Relaxed)
            {
                Ok(_) => {
                    took = n;
                    break;
                }
                Err(actual) => cur = actual,
            }
        }
        let idle = self.config.idle_probe_ns;
        if took == 0 && max > 0 && idle > 0 {
            let last = self.last_probe_ms.load(Relaxed);
            let idle_ms = (idle / 1_000_000).max(1).min(u32::MAX as u64) as u32;
            if elapsed_ms(now_ms, last) >= idle_ms
                && self
                    .last_probe_ms
                    .compare_exchange(last, now_ms, Relaxed, Relaxed)
                    .is_ok()
            {
                took = 1;
            }
        }
        if took > 0 {
            self.last_probe_ms.store(now_ms, Relaxed);
        }
        took
    }

    /// Records an answer from `e` received at `now` (a probe's, or one piggybacked on a
    /// response). `rng` rounds the reuse budget. Off the pick path: also recomputes the hot
    /// threshold.
    pub fn record(&self, e: &EndpointState, report: ProbeReport, now: u64, rng: &mut impl Rng) {
        if e.is_removed() {
            return;
        }
        let id = self.id(e);
        let now_ms = millis(now);
        let budget = self.config.reuse_budget(self.endpoints.load(Relaxed) as usize);
        let whole = budget as u32;
        let frac = budget - whole as f32;
        let uses = whole + u32::from(((rng.next_u64() >> 40) as f32) < frac * (1u64 << 24) as f32);
        let uses = uses.clamp(1, MAX_REUSE);
        self.push_history(report.rif.min(1 << 30));

        let slots = &self.slots[..self.config.pool_size()];
        // The endpoint's own slot, else an empty one, else the oldest.
        for _ in 0..4 {
            let mut target: Option<(usize, u32)> = None;
            let mut empty: Option<(usize, u32)> = None;
            let mut oldest: Option<(usize, u32, u32)> = None;
            for (i, s) in slots.iter().enumerate() {
                let tag = s.tag.load(Acquire);
                if id_of(tag) == WRITING {
                    continue;
                }
                if id_of(tag) == id {
                    target = Some((i, tag));
                    break;
                }
                if id_of(tag) == 0 {
                    empty = empty.or(Some((i, tag)));
                    continue;
                }
                let age = elapsed_ms(now_ms, s.received_ms.load(Relaxed));
                if oldest.is_none_or(|(_, _, a)| age > a) {
                    oldest = Some((i, tag, age));
                }
            }
            let Some((i, tag)) = target.or(empty).or(oldest.map(|(i, t, _)| (i, t))) else {
                return;
            };
            let s = &slots[i];
            // Claim (a new version marked WRITING: readers skip it, other writers leave it),
            // write, publish.
            let claimed = with(bump(tag), WRITING, 0);
            if s.tag.compare_exchange(tag, claimed, AcqRel, Relaxed).is_err() {
                continue;
            }
            // Capped far below u32::MAX so the increments on use cannot wrap it to cold.
            s.rif.store(report.rif.min(1 << 30), Release);
            s.latency_us.store(report.latency_us, Release);
            s.received_ms.store(now_ms, Release);
            s.tag.store(with(claimed, id, uses), Release);
            return;
        }
    }

    fn push_history(&self, rif: u32) {
        let at = self.history_at.fetch_add(1, Relaxed);
        self.history[at as usize % RIF_HISTORY].store(rif, Relaxed);
        // The quantile moves slowly: recomputed on every answer while the history fills, then
        // on every 8th (a recomputation copies and partitions 64 values).
        if at as usize >= RIF_HISTORY && at % 8 != 0 {
            return;
        }
        let len = (at as usize + 1).min(RIF_HISTORY);
        let mut v = [0u32; RIF_HISTORY];
        for (d, h) in v.iter_mut().zip(&self.history[..len]) {
            *d = h.load(Relaxed);
        }
        let q = self.config.q_rif;
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        let k = ((((len - 1) as f32) * q) as usize).min(len - 1);
        // The k-th smallest (expected linear time; a full sort cost 4x as much per answer).
        let (_, kth, _) = v[..len].select_nth_unstable(k);
        self.threshold.store(*kth, Relaxed);
    }

    /// One Prequal pick among `ready[range]`: the position in `ready` of the HCL choice, or
    /// `None` while fewer than two answers are usable (the caller falls back to P2C). Counts the
    /// query (probes owed, removals). `ids` maps endpoint ids to positions in `ready`.
    #[cfg(feature = "alloc")]
    pub(crate) fn pick<E: Borrow<EndpointState>>(
        &self,
        ready: &[E],
        ids: &IdIndex,
        range: Range<usize>,
        pool: &Pool,
        now: u64,
    ) -> Option<usize> {
        let q = self.queries.fetch_add(1, Relaxed);
        let now_ms = millis(now);
        let max_age = (self.config.max_age_ns / 1_000_000).min(u32::MAX as u64) as u32;
        let threshold = self.threshold.load(Relaxed);
        let hot = |rif: u32| rif > threshold;
        // The answers of endpoints in `range`; their availability is checked lazily, best
        // first (reading 16 endpoint states that other cores keep writing would be 16 misses).
        let mut found = [Best {
            slot: 0,
            tag: 0,
            pos: 0,
            rif: 0,
            latency: 0,
            received: 0,
        }; MAX_POOL_SIZE];
        let mut n = 0;
        // Removal candidates over the whole pool: the oldest, and the worst.
        let mut oldest: Option<(usize, u32, u32)> = None;
        let mut worst: Option<(usize, u32, bool, u32)> = None; // (slot, tag, hot, rif or latency)
        for (i, s) in self.slots[..self.config.pool_size()].iter().enumerate() {
            let Some((tag, rif, latency, at)) = s.read() else {
                continue;
            };
            let age = elapsed_ms(now_ms, at);
            if age > max_age {
                s.clear(tag);
                continue;
            }
            if oldest.is_none_or(|(_, _, a)| age > a) {
                oldest = Some((i, tag, age));
            }
            let (h, key) = if hot(rif) { (true, rif) } else { (false, latency) };
            if worst.is_none_or(|(_, _, wh, wk)| (h, key) > (wh, wk)) {
                worst = Some((i, tag, h, key));
            }
            let Some(pos) = ids.get(id_of(tag)) else {
                continue;
            };
            if !range.contains(&pos) {
                continue;
            }
            found[n] = Best {
                slot: i,
                tag,
                pos,
                rif,
                latency,
                received: at,
            };
            n += 1;
        }
        // An answer received before the endpoint's last failure is not used (a server failing
        // fast looks idle); one received after it is, so a single failure does not starve the
        // endpoint until an ejection that, without traffic, never comes. Two failures in a row
        // with no ejection to follow (ejection off, or its cap taken) keep the endpoint's
        // answers out for `max_age` after its last failure: a sinkhole's fresh answers would
        // otherwise win it a pick each, and each pick fails.
        let usable = |b: &Best| {
            let e = ready[b.pos].borrow();
            if !pool.available(e, now) {
                return false;
            }
            let streak = e.consecutive_failures();
            if streak == 0 {
                return true;
            }
            let failed_at = e.failed_at_ms();
            elapsed_ms(b.received, failed_at) > 0
                && (streak < 2 || pool.ejection_slot_free() || elapsed_ms(now_ms, failed_at) >= max_age)
        };
        let mut chosen = hcl(&mut found[..n], threshold, usable);
        // The chosen answer's tag after its use, for a removal that picks the same slot. A pick
        // that loses the race to use an answer (another pick used or replaced it meanwhile)
        // chooses once more without it, so racing picks do not all herd onto one server.
        let mut used = None;
        for attempt in 0..2 {
            let Some(c) = chosen else { break };
            match self.consume(c) {
                Ok(after) => {
                    used = Some((c.slot, after));
                    break;
                }
                Err(_) if attempt == 0 => {
                    let mut k = 0;
                    for j in 0..n {
                        if found[j].slot != c.slot {
                            found[k] = found[j];
                            k += 1;
                        }
                    }
                    n = k;
                    chosen = hcl(&mut found[..n], threshold, usable).or(Some(c));
                }
                // Lost twice: the query still goes where decided.
                Err(_) => break,
            }
        }
        if chosen.is_none() {
            self.fallbacks.fetch_add(1, Relaxed);
        }
        // Removals for this query: floor((q+1)·r) - floor(q·r), alternating by their running
        // count. The paper's rate assumes many more servers than pool entries; with n < m the
        // pool holds at most n answers (one per server), so the rate is scaled by n/m. (Sparing
        // a pool of two answers from removal instead kept stale answers routing: p99 655 vs
        // 117 ms in the simulator's heterogeneous fleet at 1 probe per query.)
        let m = self.config.pool_size() as u64;
        let servers = u64::from(self.endpoints.load(Relaxed)).clamp(1, m);
        let r = fixed(self.config.removes_per_query) * servers / m;
        let (before, after) = ((u64::from(q) * r) >> 10, ((u64::from(q) + 1) * r) >> 10);
        for k in before..after {
            let victim = if k % 2 == 0 {
                oldest.map(|(i, t, _)| (i, t))
            } else {
                worst.map(|(i, t, _, _)| (i, t))
            };
            if let Some((i, t)) = victim {
                let t = match used {
                    Some((slot, after)) if slot == i => after,
                    _ => t,
                };
                // A stale victim (its slot rewritten since the scan) is left alone: `clear`
                // compares the whole tag.
                self.slots[i].clear(t);
            }
        }
        chosen.map(|c| c.pos)
    }

    /// Uses answer `c` once: its RIF counts the query just sent; the answer leaves the pool when
    /// its reuse budget is spent. Returns the slot's tag after the use, or the tag found if the
    /// answer changed since it was read.
    #[cfg(feature = "alloc")]
    fn consume(&self, c: Best) -> Result<u32, u32> {
        let s = &self.slots[c.slot];
        let uses = uses_of(c.tag);
        let next = if uses <= 1 {
            bump(c.tag)
        } else {
            with(c.tag, id_of(c.tag), uses - 1)
        };
        s.tag.compare_exchange(c.tag, next, AcqRel, Relaxed)?;
        if uses > 1 {
            // Answers are capped at 2^30 when recorded: the increments cannot wrap.
            s.rif.fetch_add(1, Relaxed);
        }
        Ok(next)
    }
}

/// Turns a probe pool's wrapping [`fallbacks`](ProbePool::fallbacks) into increments for a
/// monotonic metrics counter, sampled off the pick path. Holds the pool it last read, so a new
/// pool (a policy switch starts one at zero) counts from zero instead of wrapping.
#[cfg(feature = "alloc")]
#[derive(Debug, Default)]
pub struct FallbackMeter {
    last: Option<(alloc::sync::Arc<ProbePool>, u32)>,
}

#[cfg(feature = "alloc")]
impl FallbackMeter {
    /// Fallback picks since the previous call (0 without a pool, i.e. another policy).
    pub fn advance(&mut self, pool: Option<&alloc::sync::Arc<ProbePool>>) -> u32 {
        let Some(pool) = pool else { return 0 };
        let now = pool.fallbacks();
        let before = match &self.last {
            Some((p, n)) if alloc::sync::Arc::ptr_eq(p, pool) => *n,
            _ => 0,
        };
        self.last = Some((pool.clone(), now));
        now.wrapping_sub(before)
    }
}

/// The HCL choice among `found` (whose order it may change): the cold answer with the lowest
/// latency, or if all are hot the lowest RIF, among answers that are `usable`; `None` unless at
/// least two are usable. Checks `usable` best first, so usually twice.
#[cfg(feature = "alloc")]
fn hcl(found: &mut [Best], threshold: u32, usable: impl Fn(&Best) -> bool) -> Option<Best> {
    let rank = |b: &Best| {
        if b.rif > threshold {
            (1, b.rif, b.latency)
        } else {
            (0, b.latency, b.rif)
        }
    };
    let mut n = found.len();
    let chosen = loop {
        let (i, best) = found[..n].iter().enumerate().min_by_key(|(_, b)| rank(b))?;
        let best = *best;
        if usable(&best) {
            found.swap(i, n - 1);
            n -= 1;
            break best;
        }
        // Unusable: out of this query's draw.
        found.swap(i, n - 1);
        n -= 1;
    };
    found[..n].iter().any(&usable).then_some(chosen)
}

/// Endpoint ids to positions (an open-addressing table built with each picker: ids are handed
/// out in sequence, so `id & mask` spreads them, and a lookup is one or two probes — a binary
/// search over 20 ids was the largest cost of a pick).
#[cfg(feature = "alloc")]
#[derive(Debug, Default)]
pub(crate) struct IdIndex {
    table: alloc::vec::Vec<(u32, u32)>,
}

#[cfg(feature = "alloc")]
impl IdIndex {
    /// The index of `ids[pos]` → `pos`.
    pub(crate) fn new(ids: impl ExactSizeIterator<Item = u32>) -> Self {
        let size = (ids.len() * 2).next_power_of_two().max(2);
        let mut table = alloc::vec![(0u32, 0u32); size];
        let mask = size - 1;
        for (pos, id) in ids.enumerate() {
            let mut i = id as usize & mask;
            while table[i].0 != 0 && table[i].0 != id {
                i = (i + 1) & mask;
            }
            table[i] = (id, pos as u32);
        }
        Self { table }
    }

    /// The position of endpoint `id`.
    #[inline]
    pub(crate) fn get(&self, id: u32) -> Option<usize> {
        let mask = self.table.len().checked_sub(1)?;
        let mut i = id as usize & mask;
        // At most half full: an empty entry ends every probe sequence.
        loop {
            let (k, pos) = self.table[i];
            if k == id {
                return Some(pos as usize);
            }
            if k == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
    }
}

/// Up to `out.len()` distinct positions in `0..n` drawn uniformly among those `allow` accepts,
/// those `prefer` also accepts first (the probe targets: available endpoints first).
#[cfg(feature = "alloc")]
pub(crate) fn sample_distinct(
    n: usize,
    out: &mut [usize],
    rng: &mut impl Rng,
    prefer: impl Fn(usize) -> bool,
    allow: impl Fn(usize) -> bool,
) -> usize {
    let want = out.len().min(n);
    let mut k = 0;
    // Rejection sampling while the set is large against the draw; a pass over all otherwise.
    let mut tries = 0;
    while k < want && tries < 8 * want + 8 {
        tries += 1;
        let i = (((rng.next_u64() >> 32) * n as u64) >> 32) as usize;
        if !out[..k].contains(&i) && allow(i) && prefer(i) {
            out[k] = i;
            k += 1;
        }
    }
    if k < want {
        // Few acceptable ones: a scan from a random start (preferred first, then allowed).
        let start = (((rng.next_u64() >> 32) * n as u64) >> 32) as usize;
        for pass in 0..2 {
            for j in 0..n {
                if k == want {
                    break;
                }
                let i = (start + j) % n;
                if !out[..k].contains(&i) && allow(i) && (pass == 1 || prefer(i)) {
                    out[k] = i;
                    k += 1;
                }
            }
        }
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_fields_round_trip() {
        let t = with(bump(0), 12345, 9);
        assert_eq!(id_of(t), 12345);
        assert_eq!(uses_of(t), 9);
        assert_eq!(id_of(bump(t)), 0);
        assert_ne!(bump(t), bump(bump(t)));
    }

    #[test]
    fn reuse_budget_follows_eq_1() {
        let c = PrequalConfig {
            probes_per_query: 3.0,
            ..PrequalConfig::default()
        };
        // m = 16, n = 100, r = 3, r_remove = 1: (1 + 1) / (0.84 * 3 - 1) = 1.3158
        assert!((c.reuse_budget(100) - 2.0 / 1.52).abs() < 1e-4);
        // n = 20: denominator 0.6 - 1 < 0: one use (the paper's max(1, ·)).
        assert_eq!(c.reuse_budget(20), 1.0);
        let c = PrequalConfig {
            reuse_delta: f32::NAN,
            ..c
        };
        assert!(c.reuse_budget(100) >= 1.0);
    }
}
