//! [`Prepared`]: the immutable picker a [`Balancer`](super::Balancer) publishes — the serving
//! priority already chosen, its ring or table built, localities with a READY endpoint and their
//! weighted schedules ready. A pick allocates nothing and takes no lock.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::borrow::Borrow;
use core::ops::Range;

use super::{Connectivity, OwnerConnecting, Slot};
use crate::endpoint::EndpointState;
use crate::hashing;
use crate::picker::{LbPolicy, NoKey, Picker};
use crate::pool::Pool;
use crate::prequal::{self, ProbePool, ProbeReport};
use crate::rng::Rng;
use crate::schedule::{self, Stride};
use crate::sync::{AtomicU32, Ordering::Relaxed};
use crate::wrr::{WeightState, WrrStats};
use crate::{Maglev, Ring};

/// Why a pick found no endpoint, and what the request should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unpicked {
    /// Something may become ready (an endpoint or the key's owner is connecting): wait for the
    /// next picker, within the request's deadline (wait-for-ready) or fail now (fail-fast).
    Wait,
    /// Nothing will soon: every endpoint of the serving priority is failing, or there is none.
    Fail,
}

/// One locality with a READY endpoint: its ready endpoints and weight.
#[derive(Debug)]
struct Locality {
    ready: Range<usize>,
    /// Round robin weights differ inside it (use the stride scheduler).
    weighted: bool,
}

/// An immutable picker: the serving priority chosen, its ring or table built, localities with a
/// READY endpoint and their weighted schedules ready. A pick allocates nothing, takes no lock.
#[derive(Debug)]
pub struct Prepared<T> {
    policy: LbPolicy,
    owner_connecting: OwnerConnecting,
    pool: Arc<Pool>,
    /// The serving priority's endpoints; ring owners and Maglev slots index this.
    members: Vec<T>,
    /// Their connectivity as aggregates see it (sticky failures as TRANSIENT_FAILURE).
    states: Vec<Connectivity>,
    /// Every endpoint of every priority (for statistics).
    all: Vec<T>,
    /// READY members, grouped by locality.
    ready: Vec<T>,
    /// Scaled endpoint weights, parallel to `ready` (scaled within each locality).
    ready_weights: Vec<u16>,
    localities: Vec<Locality>,
    /// Scaled locality weights, parallel to `localities`.
    locality_weights: Vec<u16>,
    /// Round-robin sequences: one per locality, then the locality scheduler's.
    cursors: Vec<AtomicU32>,
    ring: Option<Arc<Ring>>,
    maglev: Option<Arc<Maglev>>,
    total_weight: u64,
    priority: Option<u32>,
    state: Connectivity,
    /// What the `weighted_round_robin` scheduler build saw (`None` under other policies).
    wrr_stats: Option<WrrStats>,
    /// Prequal's probe answers (shared with the balancer's other pickers).
    probes: Option<Arc<ProbePool>>,
    /// Probe-pool ids of the `ready` endpoints to their positions.
    probe_ids: prequal::IdIndex,
    /// Prequal: probes this picker has swept over `ready` (from `sweep_from`), once through.
    sweep: AtomicU32,
    sweep_from: u32,
}

/// What [`build`] needs from the balancer.
pub(super) struct Inputs<'a, T> {
    pub(super) policy: LbPolicy,
    pub(super) owner_connecting: OwnerConnecting,
    pub(super) pool: Arc<Pool>,
    pub(super) slots: &'a [&'a Slot<T>],
    pub(super) all: Vec<T>,
    pub(super) ring: Option<Arc<Ring>>,
    pub(super) maglev: Option<Arc<Maglev>>,
    pub(super) priority: Option<u32>,
    pub(super) probes: Option<Arc<ProbePool>>,
    pub(super) state: Connectivity,
    pub(super) now: u64,
    pub(super) seed: u64,
}

pub(super) fn build<T: Clone + Borrow<EndpointState>>(i: Inputs<'_, T>) -> Prepared<T> {
    let members: Vec<T> = i.slots.iter().map(|s| s.payload.clone()).collect();
    let states: Vec<Connectivity> = i.slots.iter().map(|s| s.effective()).collect();
    // Localities in order of first appearance, each with its weight and READY members (one
    // pass: a map from locality id to its group, so 10k localities cost O(n log n)).
    let mut index: BTreeMap<u32, usize> = BTreeMap::new();
    let mut groups: Vec<(u32, Vec<&Slot<T>>)> = Vec::new();
    for s in i.slots {
        let g = *index.entry(s.spec.locality).or_insert_with(|| {
            groups.push((s.spec.locality_weight.max(1), Vec::new()));
            groups.len() - 1
        });
        if s.state == Connectivity::Ready {
            groups[g].1.push(s);
        }
    }
    let (mut ready, mut ready_w, mut localities, mut loc_w) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut wrr_stats = matches!(i.policy, LbPolicy::WeightedRoundRobin(_)).then(WrrStats::default);
    for (weight, members) in groups {
        let start = ready.len();
        let mut raw: Vec<u32> = Vec::new();
        let mut reported: Vec<f64> = Vec::new();
        for s in members {
            ready.push(s.payload.clone());
            match i.policy {
                // gRFC A58: weights from the endpoints' load reports (EDS weights unused), per
                // locality as grpc-go runs one weighted_round_robin child per locality.
                LbPolicy::WeightedRoundRobin(cfg) => {
                    let e = s.payload.borrow();
                    let (w, state) = e.load_weight_state(i.now, &cfg);
                    // Ejected by outlier detection: out of the mean and the clamps (gRPC
                    // reports it to the policy as TRANSIENT_FAILURE); its turns are skipped.
                    let w = if e.is_ejected(i.now) { -1.0 } else { w };
                    if let Some(st) = &mut wrr_stats {
                        match state {
                            WeightState::Usable => {}
                            WeightState::NotYetUsable => st.not_yet_usable += 1,
                            WeightState::Stale => st.stale += 1,
                        }
                        st.weights.push(w);
                    }
                    reported.push(w)
                }
                _ => raw.push(s.spec.weight.max(1)),
            }
        }
        if ready.len() == start {
            continue;
        }
        let mut scaled = alloc::vec![0u16; ready.len() - start];
        let weighted = if reported.is_empty() {
            !schedule::scale(&raw, &mut scaled)
        } else {
            // grpc-go `newScheduler`: one endpoint is plain round robin, not a fallback.
            let usable = reported.iter().filter(|w| **w > 0.0).count();
            if let Some(st) = &mut wrr_stats {
                st.rr_fallback += u32::from(reported.len() >= 2 && usable < 2);
            }
            crate::wrr::scale(&reported, &mut scaled)
        };
        ready_w.extend_from_slice(&scaled);
        localities.push(Locality {
            ready: start..ready.len(),
            weighted,
        });
        loc_w.push(weight);
    }
    let locality_weights = schedule::scaled(&loc_w);
    let mut probe_ids = prequal::IdIndex::default();
    if let Some(probes) = &i.probes {
        probes.set_endpoints(ready.len());
        // Distinct ids: a duplicate (a pool started by a configuration change, or wrapped
        // ids) gets a new one, so no endpoint's answers route to another.
        let mut seen = alloc::collections::BTreeSet::new();
        let ids: Vec<u32> = ready
            .iter()
            .map(|e| {
                let mut id = probes.id(e.borrow());
                while !seen.insert(id) {
                    id = probes.reassign(e.borrow());
                }
                id
            })
            .collect();
        probe_ids = prequal::IdIndex::new(ids.into_iter());
    }
    let seed = i.seed as u32;
    let cursors = (0..=localities.len())
        .map(|k| AtomicU32::new(seed.wrapping_add(k as u32).wrapping_mul(0x9E37_79B9)))
        .collect();
    Prepared {
        total_weight: hashing::available_weight(&ready, i.now),
        policy: i.policy,
        owner_connecting: i.owner_connecting,
        pool: i.pool,
        members,
        states,
        all: i.all,
        ready,
        ready_weights: ready_w,
        localities,
        locality_weights,
        cursors,
        ring: i.ring,
        maglev: i.maglev,
        priority: i.priority,
        state: i.state,
        wrr_stats,
        probes: i.probes,
        probe_ids,
        sweep: AtomicU32::new(0),
        sweep_from: seed.wrapping_mul(0x85EB_CA6B),
    }
}

impl<T: Borrow<EndpointState>> Prepared<T> {
    /// [`pick`](Self::pick), reading `clock` only when the decision needs the time: a keyed (or
    /// random-hash) ring or Maglev pick with plain or bounded load while no endpoint holds an
    /// ejection needs none (an ejection starting meanwhile is honoured; only expiring one needs
    /// the clock). For proxies whose clock read is a measurable part of a pick. Returns the time
    /// it read, if it read one.
    pub fn pick_with_clock(
        &self,
        clock: impl FnOnce() -> u64,
        key: Option<u64>,
        rng: &mut impl Rng,
    ) -> (Result<&T, Unpicked>, Option<u64>) {
        let hashed = match self.policy {
            LbPolicy::RingHash {
                load: crate::HashPolicy::Plain | crate::HashPolicy::Bounded { .. },
                no_key,
                ..
            } => self.ring.is_some() && (key.is_some() || no_key == NoKey::RandomHash),
            LbPolicy::Maglev { no_key, .. } => {
                self.maglev.is_some() && (key.is_some() || no_key == NoKey::RandomHash)
            }
            _ => false,
        };
        // Acquire pairs with the slot reservation that precedes every ejection's publication.
        if hashed && self.pool.ejected_acquire() == 0 {
            return (self.pick(crate::pool::NO_CLOCK, key, rng), None);
        }
        let now = clock();
        (self.pick(now, key, rng), Some(now))
    }

    /// The endpoint for a request with hash `key` (if it has one) at `now`. Allocates nothing,
    /// takes no lock.
    pub fn pick(&self, now: u64, key: Option<u64>, rng: &mut impl Rng) -> Result<&T, Unpicked> {
        if self.members.is_empty() {
            return Err(Unpicked::Fail);
        }
        let hash = match self.policy {
            LbPolicy::RingHash { no_key, .. } | LbPolicy::Maglev { no_key, .. } => match (key, no_key) {
                (Some(h), _) => Some(h),
                (None, NoKey::RandomHash) => Some(rng.next_u64()),
                (None, NoKey::P2c) => None,
            },
            _ => None,
        };
        if let Some(h) = hash {
            return self.pick_hashed(now, h, key.is_none(), rng);
        }
        if self.localities.is_empty() {
            return Err(self.unpicked());
        }
        let loc = if self.localities.len() == 1 {
            0
        } else {
            // A locality whose READY endpoints are all ejected is out of the draw (gRPC reports
            // an ejected endpoint as TRANSIENT_FAILURE, so weighted_target skips its locality);
            // only when every locality is in that state does the draw ignore ejection.
            let stride = Stride::new(&self.locality_weights, &self.cursors[self.localities.len()]);
            stride
                .next(rng, |l| self.locality_available(l, now))
                .or_else(|| stride.next(rng, |_| true))
                .unwrap_or(0)
        };
        let l = &self.localities[loc];
        if let Some(probes) = &self.probes {
            let range = l.ready.clone();
            if let Some(pos) = probes.pick(&self.ready, &self.probe_ids, range, &self.pool, now) {
                return Ok(&self.ready[pos]);
            }
        }
        let ready = &self.ready[l.ready.clone()];
        let mut picker = Picker::new(&self.policy, ready, &self.pool).with_cursor(&self.cursors[loc]);
        if l.weighted {
            picker = picker.with_weights(&self.ready_weights[l.ready.clone()]);
        }
        picker.pick(now, None, rng).map_err(|_| self.unpicked())
    }

    /// Whether locality `l` has a READY endpoint that is not ejected at `now`.
    fn locality_available(&self, l: usize, now: u64) -> bool {
        self.localities.get(l).is_some_and(|loc| {
            self.ready[loc.ready.clone()]
                .iter()
                .any(|e| self.pool.is_available(e.borrow(), now))
        })
    }

    /// A ring or Maglev pick for hash `h`. `random`: the hash was drawn because the request had
    /// no key; then, as gRPC's ring hash picker does, the first READY endpoint clockwise serves
    /// (no owner to wait for), and the request waits only if nothing is READY but something
    /// connects.
    fn pick_hashed(&self, now: u64, h: u64, random: bool, rng: &mut impl Rng) -> Result<&T, Unpicked> {
        let mut picker = Picker::new(&self.policy, &self.members, &self.pool).with_candidates(&self.ready);
        if let Some(ring) = &self.ring {
            if self.owner_connecting == OwnerConnecting::Queue && !random {
                // gRFC A61: the first endpoint clockwise not in TRANSIENT_FAILURE decides; if it
                // is connecting, the request waits for it.
                let owner = ring.view().find(h, |i| {
                    self.states.get(i as usize) != Some(&Connectivity::TransientFailure)
                });
                match owner.and_then(|i| self.states.get(i as usize)) {
                    None => return Err(Unpicked::Fail),
                    Some(Connectivity::Ready) => {}
                    Some(_) => return Err(Unpicked::Wait),
                }
            }
            picker = picker.with_ring(ring.view(), self.total_weight);
        }
        if let Some(table) = &self.maglev {
            picker = picker.with_table(table.table());
        }
        picker.pick(now, Some(h), rng).map_err(|_| self.unpicked())
    }

    fn unpicked(&self) -> Unpicked {
        match self.state {
            Connectivity::Connecting | Connectivity::Idle => Unpicked::Wait,
            Connectivity::Ready | Connectivity::TransientFailure => Unpicked::Fail,
        }
    }

    /// Prequal's probe pool (`None` under other policies).
    pub fn probes(&self) -> Option<&Arc<ProbePool>> {
        self.probes.as_ref()
    }

    /// Prequal: the probes to send now. Takes the probes owed (per query picked, or one after
    /// the idle interval; at most `out.len()`) and fills `out` with distinct positions in
    /// [`ready`](Self::ready): endpoints whose request just failed (a recheck), then this
    /// picker's one sweep over all of them from a random start, then uniform draws, available
    /// endpoints first; returns how many. The
    /// adapter probes those endpoints asynchronously and records each answer with
    /// [`record_probe`](Self::record_probe). 0 under other policies.
    pub fn probe_targets(&self, now: u64, rng: &mut impl Rng, out: &mut [usize]) -> usize {
        self.probe_targets_where(now, rng, out, |_| true)
    }

    /// [`probe_targets`](Self::probe_targets) among the ready endpoints `accept` takes (e.g. not
    /// already being probed, or with a probe service): owed probes no acceptable endpoint can
    /// take are dropped, never sent elsewhere.
    pub fn probe_targets_where(
        &self,
        now: u64,
        rng: &mut impl Rng,
        out: &mut [usize],
        accept: impl Fn(&T) -> bool,
    ) -> usize {
        let Some(probes) = &self.probes else {
            return 0;
        };
        let n = self.ready.len();
        if n == 0 || out.is_empty() {
            return 0;
        }
        let k = probes.take_probes(now, out.len().min(n) as u32) as usize;
        // Rechecks first: an endpoint whose request failed (queued while an ejection can
        // follow: `Pool::record`) has no usable answer until a fresh one, so the owed probes
        // go to it before others. A failing one reaches outlier ejection's threshold in a few
        // probe round trips, not as many random draws; one that recovered is back as soon.
        let mut first = [0usize; 16];
        let want = k.min(first.len());
        let mut r = 0;
        while r < want.min(4) {
            let Some(id) = self.pool.take_failed() else {
                break;
            };
            let Some(pos) = self.probe_ids.get(id).filter(|&p| p < n) else {
                continue;
            };
            let e = self.ready[pos].borrow();
            // Still failing (no success since), still ejectable (the cap may have filled since
            // it was queued), still available, and not already chosen.
            if e.probe_id() == id
                && e.consecutive_failures() > 0
                && self.pool.ejection_slot_free()
                && !first[..r].contains(&pos)
                && self.pool.is_available(e, now)
                && accept(&self.ready[pos])
            {
                first[r] = pos;
                r += 1;
            }
        }
        // Then one sweep over the ready endpoints from a random start: every endpoint is probed
        // within a new picker's first `n` probes (uniform draws leave about 1/e of them
        // unprobed after `n`), so a client starting, or a server joining, is known at once.
        while r < want {
            let step = self.sweep.load(Relaxed);
            if step as usize >= n {
                break;
            }
            if self
                .sweep
                .compare_exchange_weak(step, step + 1, Relaxed, Relaxed)
                .is_err()
            {
                continue;
            }
            let pos = (self.sweep_from as usize % n + step as usize) % n;
            if !first[..r].contains(&pos)
                && self.pool.is_available(self.ready[pos].borrow(), now)
                && accept(&self.ready[pos])
            {
                first[r] = pos;
                r += 1;
            }
        }
        out[..r].copy_from_slice(&first[..r]);
        r + prequal::sample_distinct(
            n,
            &mut out[r..k],
            rng,
            |i| self.pool.is_available(self.ready[i].borrow(), now),
            |i| !first[..r].contains(&i) && accept(&self.ready[i]),
        )
    }

    /// Prequal: records an answer from `endpoint` received at `now` (a probe's, or one a
    /// response carried). No-op under other policies.
    pub fn record_probe(&self, endpoint: &EndpointState, report: ProbeReport, now: u64, rng: &mut impl Rng) {
        if let Some(probes) = &self.probes {
            probes.record(endpoint, report, now, rng);
        }
    }

    /// What building this picker's `weighted_round_robin` schedules saw (gRFC A78's counts and
    /// weights), `None` under other policies. Plain data for an adapter to record.
    pub fn wrr_stats(&self) -> Option<&WrrStats> {
        self.wrr_stats.as_ref()
    }

    /// The policy it runs.
    pub fn policy(&self) -> &LbPolicy {
        &self.policy
    }

    /// The serving priority's endpoints (ring owners index these).
    pub fn members(&self) -> &[T] {
        &self.members
    }

    /// Every endpoint, every priority.
    pub fn all(&self) -> &[T] {
        &self.all
    }

    /// The READY endpoints of the serving priority.
    pub fn ready(&self) -> &[T] {
        &self.ready
    }

    /// The serving priority.
    pub fn priority(&self) -> Option<u32> {
        self.priority
    }

    /// The serving priority's aggregate state: READY (picks succeed), CONNECTING or IDLE (wait),
    /// TRANSIENT_FAILURE (fail fast).
    pub fn state(&self) -> Connectivity {
        self.state
    }

    /// Members connecting (not failing) and members failing (sticky TRANSIENT_FAILURE).
    pub fn counts(&self) -> (usize, usize) {
        let connecting = self
            .states
            .iter()
            .filter(|s| matches!(s, Connectivity::Connecting | Connectivity::Idle))
            .count();
        let failing = self
            .states
            .iter()
            .filter(|s| **s == Connectivity::TransientFailure)
            .count();
        (connecting, failing)
    }

    /// The ring, for ring-hash pickers.
    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_deref()
    }

    /// The Maglev table, for Maglev pickers: its slots index [`members`](Self::members) (an
    /// adapter walks the next slots' owners when its own check refuses the pick, as Pingora's
    /// retry exclusion does).
    pub fn maglev(&self) -> Option<&Maglev> {
        self.maglev.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::{String, ToString};

    use super::super::{Balancer, BalancerConfig, EndpointSpec};
    use super::*;
    use crate::PoolConfig;

    #[test]
    fn maglev_table_slots_index_the_members() {
        let policy = LbPolicy::Maglev {
            table_size: 251,
            no_key: NoKey::P2c,
        };
        let pool = Arc::new(Pool::new(PoolConfig::default()));
        let mut b: Balancer<String, Arc<EndpointState>> = Balancer::new(BalancerConfig::new(policy), pool);
        for addr in ["a:1", "b:1", "c:1"] {
            b.insert(
                0,
                addr.to_string(),
                EndpointSpec::default(),
                Arc::new(EndpointState::new(1)),
            );
            b.handle_connectivity(0, &addr.to_string(), Connectivity::Ready);
        }
        let p = b.picker(0, 1);
        let table = p.maglev().expect("a Maglev picker has a table").table();
        assert_eq!(table.len(), 251);
        assert!(table.iter().all(|&o| (o as usize) < p.members().len()));
        // The pick for a hash is the owner of its slot.
        let h = 12_345u64;
        let owner = &p.members()[table[(h % 251) as usize] as usize];
        let picked = p.pick(0, Some(h), &mut || 0).unwrap();
        assert!(Arc::ptr_eq(picked, owner));
        assert!(p.ring().is_none());
        let rr = Balancer::<String, Arc<EndpointState>>::new(
            BalancerConfig::new(LbPolicy::RoundRobin),
            Arc::new(Pool::new(PoolConfig::default())),
        )
        .picker(0, 1);
        assert!(rr.maglev().is_none());
    }
}
