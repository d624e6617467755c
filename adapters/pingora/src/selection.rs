//! [`Selector`]: a Pingora `BackendSelection` whose decision is the core's
//! [`Picker`](pickwise::Picker): P2C with least-request / peak-EWMA / go-zero costs, (weighted)
//! round robin, Envoy-compatible ring hash (plain, bounded load, affinity) and Maglev.
//!
//! Build it through `LoadBalancer::from_backends_with_config(backends, Some(shared))` with one
//! [`Shared`] per upstream group: Pingora rebuilds the selector on every discovery change, and
//! the per-backend state lives in `Shared`, so it survives; a [`Lease`](crate::Lease) finds a
//! selected backend's state there without a lock.
//!
//! **The iterator.** Pingora's `select` walks the selection's iterator until a backend passes
//! its `accept` (its health checks, or [`Tracker::select`](crate::Tracker::select)'s exclusion
//! of backends a retry already tried). The first backend is the picker's choice. Only when
//! Pingora refuses it does the iterator choose again among the backends not yet offered, lazily
//! (the first pick pays nothing for it): a ring-hash request walks on clockwise to the next
//! distinct owner (Envoy's retry behaviour), a Maglev request takes the next slots' owners, and
//! anything else draws the rest in a random order, two at a time compared by cost (P2C over
//! what is left). So a refused backend's share spreads over the others instead of always falling
//! to its address-order neighbour.

use std::collections::BTreeSet;
use std::sync::Arc;

use pickwise::{EndpointState, LbPolicy, Maglev, Picker, PoolConfig, Ring};
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::Backend;

use crate::state::Shared;

/// How many offered backends an iterator remembers exactly (beyond that Pingora's own
/// de-duplication takes over).
const SEEN: usize = 8;

/// A pickwise backend selection: builds the ring or Maglev table its policy needs and picks with
/// the core [`Picker`]. Build it with a [`Shared`] (see the crate docs).
#[derive(Debug)]
pub struct Selector {
    shared: Arc<Shared>,
    backends: Vec<Backend>,
    states: Vec<Arc<EndpointState>>,
    ring: Option<Ring>,
    maglev: Option<Maglev>,
    /// Weighted round robin's scaled weights, one per backend; `None` when the weights are equal
    /// or the policy is not round robin.
    rr_weights: Option<Vec<u16>>,
}

impl Selector {
    /// The ring of a ring-hash selector (ring owners index the backends in address order).
    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }

    /// The backends, in the order ring owners and Maglev slots index.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }
}

impl BackendSelection for Selector {
    type Iter = SelectorIter;
    type Config = Arc<Shared>;

    /// Without a config every rebuild starts from fresh state: use
    /// [`build_with_config`](BackendSelection::build_with_config) with a [`Shared`].
    fn build(backends: &BTreeSet<Backend>) -> Self {
        Self::build_with_config(backends, &Shared::new(LbPolicy::default(), PoolConfig::default()))
    }

    fn build_with_config(backends: &BTreeSet<Backend>, shared: &Arc<Shared>) -> Self {
        // Envoy's host key: "ip:port". The BTreeSet is ordered, so every rebuild of the same set
        // gives the same ring (Envoy mode keeps input order).
        let keys: Vec<(String, u32)> = backends
            .iter()
            .map(|b| (b.addr.to_string(), b.weight.clamp(1, u32::MAX as usize) as u32))
            .collect();
        let states = shared.states_for(&keys);
        let backends: Vec<Backend> = backends.iter().cloned().collect();
        let (mut ring, mut maglev, mut rr_weights) = (None, None, None);
        match shared.policy {
            LbPolicy::RingHash { ring: cfg, .. } if !keys.is_empty() => match Ring::build(&keys, &cfg) {
                Ok(r) => ring = Some(r),
                Err(e) => tracing::error!(error = %e, "pickwise: cannot build the ring; picking by P2C"),
            },
            LbPolicy::Maglev { table_size, .. } if !keys.is_empty() => match Maglev::build(&keys, table_size)
            {
                Ok(t) => maglev = Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "pickwise: cannot build the Maglev table; picking by P2C")
                }
            },
            LbPolicy::RoundRobin => {
                let weights: Vec<u32> = keys.iter().map(|(_, w)| *w).collect();
                let mut scaled = vec![0u16; weights.len()];
                if !pickwise::schedule::scale(&weights, &mut scaled) {
                    rr_weights = Some(scaled);
                }
            }
            _ => {}
        }
        Self {
            shared: shared.clone(),
            backends,
            states,
            ring,
            maglev,
            rr_weights,
        }
    }

    fn iter(self: &Arc<Self>, key: &[u8]) -> SelectorIter {
        let hash = (!key.is_empty()).then(|| pickwise::hash::xxh64(key));
        let shared = &self.shared;
        let mut picker = Picker::new(&shared.policy, &self.states, &shared.pool).with_cursor(&shared.cursor);
        if let Some(r) = &self.ring {
            // Bounded-load shares are of the ready backends' weight (kept by `Shared`).
            picker = picker.with_ring(r.view(), shared.ready_weight());
        }
        if let Some(t) = &self.maglev {
            picker = picker.with_table(t.table());
        }
        if let Some(w) = &self.rr_weights {
            picker = picker.with_weights(w);
        }
        let first = picker
            .pick_with_clock(|| shared.now(), hash, &mut || fastrand::u64(..))
            .ok()
            .and_then(|e| index_in(&self.states, e));
        SelectorIter {
            selector: self.clone(),
            hash,
            first,
            offered: 0,
            seen: [0; SEEN],
            walk: None,
        }
    }
}

/// The backends in preference order: the pick, then — only if Pingora refuses it (health,
/// or a retry's exclusion) — further choices among the backends not yet offered, made lazily: a
/// keyed ring-hash request walks on clockwise to the next distinct owner, a keyed Maglev request
/// takes the next slots' owners, and anything else draws the rest in a random order, two at a
/// time compared by cost. A refused backend's share so spreads over the others.
#[derive(Debug)]
pub struct SelectorIter {
    selector: Arc<Selector>,
    hash: Option<u64>,
    first: Option<usize>,
    /// Backends offered so far.
    offered: usize,
    /// The first [`SEEN`] of them.
    seen: [u32; SEEN],
    /// The random order of fallback choices: `(next position, start, stride)`.
    walk: Option<(usize, usize, usize)>,
}

impl BackendIter for SelectorIter {
    fn next(&mut self) -> Option<&Backend> {
        let n = self.selector.backends.len();
        if self.offered >= n {
            return None;
        }
        let i = match (self.offered, self.first) {
            (0, Some(i)) => i,
            _ => self.fallback()?,
        };
        if let Some(slot) = self.seen.get_mut(self.offered) {
            *slot = i as u32;
        }
        self.offered += 1;
        self.selector.backends.get(i)
    }
}

impl SelectorIter {
    fn was_offered(&self, i: usize) -> bool {
        self.seen[..self.offered.min(SEEN)].contains(&(i as u32))
    }

    /// The next choice among the backends not offered yet, available ones first.
    fn fallback(&mut self) -> Option<usize> {
        let sel = self.selector.clone();
        let n = sel.backends.len();
        let shared = &sel.shared;
        let now = shared.now();
        let available = |i: usize| {
            sel.states
                .get(i)
                .is_some_and(|s| shared.pool.is_available(s, now))
        };
        match (&shared.policy, self.hash) {
            (LbPolicy::RingHash { .. }, Some(h)) if sel.ring.is_some() => {
                let ring = sel.ring.as_ref()?.view();
                let fresh = |i: u32| !self.was_offered(i as usize);
                ring.find(h, |i| fresh(i) && available(i as usize))
                    .or_else(|| ring.find(h, fresh))
                    .map(|i| i as usize)
                    .or_else(|| self.walk_next(n, |_| true))
            }
            (LbPolicy::Maglev { .. }, Some(h)) if sel.maglev.is_some() => {
                let table = sel.maglev.as_ref()?.table();
                let m = table.len().max(1);
                let start = (h % m as u64) as usize;
                let owner = |k: usize| table.get((start + k) % m).map(|&o| o as usize);
                let fresh = |i: &usize| *i < n && !self.was_offered(*i);
                (0..m)
                    .filter_map(owner)
                    .find(|i| fresh(i) && available(*i))
                    .or_else(|| (0..m).filter_map(owner).find(fresh))
                    .or_else(|| self.walk_next(n, |_| true))
            }
            (LbPolicy::RoundRobin, _) => self
                .walk_next(n, available)
                .or_else(|| self.walk_next(n, |_| true)),
            _ => {
                // P2C over what is left: the next two available in the random order, cheaper wins.
                let Some(a) = self.walk_next(n, available) else {
                    return self.walk_next(n, |_| true);
                };
                let Some(b) = self.walk_next(n, available) else {
                    return Some(a);
                };
                let cost = |i: usize| sel.states.get(i).map_or(f32::MAX, |s| shared.pool.cost(s, now));
                let (win, lose) = if cost(a) <= cost(b) { (a, b) } else { (b, a) };
                // The loser stays in the running: step the walk back over it.
                self.unwalk(lose);
                Some(win)
            }
        }
    }

    /// The next backend in this iterator's random order (a random start and a random stride
    /// coprime with `n`: a permutation) that was not offered and passes `accept`; restarts the
    /// order for each call so skipped backends stay candidates.
    fn walk_next(&mut self, n: usize, accept: impl Fn(usize) -> bool) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let (pos, start, stride) = *self.walk.get_or_insert_with(|| {
            let start = fastrand::usize(..n);
            let mut stride = if n > 1 { fastrand::usize(1..n) } else { 1 };
            while gcd(stride, n) != 1 {
                stride = stride % (n - 1) + 1;
            }
            (0, start, stride)
        });
        let at = |k: usize| (start + k * stride) % n;
        let found = (pos..n)
            .chain(0..pos)
            .find(|&k| !self.was_offered(at(k)) && accept(at(k)))?;
        if let Some(w) = self.walk.as_mut() {
            w.0 = (found + 1) % n;
        }
        Some(at(found))
    }

    /// Moves the walk back to `i` (a P2C loser), so the next call may offer it.
    fn unwalk(&mut self, i: usize) {
        if let Some((pos, start, stride)) = self.walk.as_mut() {
            let n = self.selector.backends.len().max(1);
            // position k of i: start + k * stride = i (mod n); the walk is short, find it.
            if let Some(k) = (0..n).find(|&k| (*start + k * *stride) % n == i) {
                *pos = k;
            }
        }
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The position of `e` in `slice` (an element reference the picker returned), in O(1).
fn index_in<T>(slice: &[T], e: &T) -> Option<usize> {
    let size = std::mem::size_of::<T>().max(1);
    let offset = (e as *const T as usize).checked_sub(slice.as_ptr() as usize)?;
    let i = offset / size;
    (i < slice.len() && std::ptr::eq(&slice[i], e)).then_some(i)
}
