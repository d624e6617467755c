//! [`Selector`]: a Pingora `BackendSelection` that picks with the core balancer's
//! [`Prepared`](pickwise::balancer::Prepared) picker: P2C with least-request / peak-EWMA /
//! go-zero costs, (weighted) round robin, Envoy-compatible ring hash (plain, bounded load,
//! affinity) and Maglev. The adapter builds no ring or table and decides no readiness: the core
//! does ([`Shared`]).
//!
//! Build it through `LoadBalancer::from_backends_with_config(backends, Some(shared))` with one
//! [`Shared`] per upstream group: Pingora rebuilds the selector on every discovery change, and
//! each build hands the new backend set to the group's core balancer, whose state survives; every
//! `iter` picks with the picker the group published last (so a health flip, which Pingora does
//! not rebuild for, counts at once). A [`Lease`](crate::Lease) finds a selected backend's state
//! without a lock.
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

use arc_swap::Guard;
use pickwise::{LbPolicy, PoolConfig, Ring};
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::Backend;

use crate::state::{Member, Picker, Shared};

/// How many offered backends an iterator remembers exactly (beyond that Pingora's own
/// de-duplication takes over).
const SEEN: usize = 8;

/// A pickwise backend selection: hands each backend set to the group's core balancer and picks
/// with the picker it publishes. Build it with a [`Shared`] (see the crate docs).
#[derive(Debug)]
pub struct Selector {
    shared: Arc<Shared>,
    /// The picker this build published (what [`ring`](Self::ring) shows).
    built: Arc<Picker>,
    /// Its members' backends, in the order ring owners and Maglev slots index.
    backends: Vec<Backend>,
}

impl Selector {
    /// The ring of a ring-hash selector, as built for this backend set (ring owners index
    /// [`backends`](Self::backends)).
    pub fn ring(&self) -> Option<&Ring> {
        self.built.ring()
    }

    /// The backends, in the order ring owners and Maglev slots index (the order the group's core
    /// balancer first saw them: address order for backends of the first build).
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
        let built = shared.rebuild(backends);
        let backends = built
            .members()
            .iter()
            .map(|m| Backend::clone(&m.backend))
            .collect();
        Self {
            shared: shared.clone(),
            built,
            backends,
        }
    }

    fn iter(self: &Arc<Self>, key: &[u8]) -> SelectorIter {
        let hash = (!key.is_empty()).then(|| pickwise::hash::xxh64(key));
        // One arc-swap guard, no reference count bumped: the iterator needs nothing but the
        // published picker (its members hold the backends; it carries the pool and the clock).
        let picker = self.shared.picker();
        // Keyed ring/Maglev picks read no clock while nothing is ejected (a clock read is a
        // measurable part of a select); the fallback reads it if it runs.
        let (picked, now) = picker.pick_with_clock(|| picker.now(), hash, &mut || fastrand::u64(..));
        let first = picked.ok().and_then(|m| locate(&picker, m));
        SelectorIter {
            picker,
            now,
            hash,
            first,
            offered: 0,
            seen: [0; SEEN],
            walk: None,
        }
    }
}

/// Where a picked member sits in the picker: the pick is a reference into its members or its
/// ready members.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Member(usize),
    Ready(usize),
}

impl Slot {
    fn get(self, picker: &Picker) -> Option<&Member> {
        match self {
            Self::Member(i) => picker.members().get(i),
            Self::Ready(i) => picker.ready().get(i),
        }
    }
}

fn locate(picker: &Picker, m: &Member) -> Option<Slot> {
    index_in(picker.members(), m)
        .map(Slot::Member)
        .or_else(|| index_in(picker.ready(), m).map(Slot::Ready))
        .or_else(|| {
            let i = picker
                .members()
                .iter()
                .position(|x| Arc::ptr_eq(&x.state, &m.state))?;
            Some(Slot::Member(i))
        })
}

/// The backends in preference order: the pick, then — only if Pingora refuses it (health,
/// or a retry's exclusion) — further choices among the backends not yet offered, made lazily: a
/// keyed ring-hash request walks on clockwise to the next distinct owner, a keyed Maglev request
/// takes the next slots' owners, and anything else draws the rest in a random order, two at a
/// time compared by cost. A refused backend's share so spreads over the others.
#[derive(Debug)]
pub struct SelectorIter {
    /// The group's picker when the iterator was made.
    picker: Guard<Arc<Picker>>,
    /// The time the pick read, if it read one (the fallback reads it otherwise).
    now: Option<u64>,
    hash: Option<u64>,
    first: Option<Slot>,
    /// Backends offered so far.
    offered: usize,
    /// The endpoint states (their addresses) of the first [`SEEN`] of them.
    seen: [usize; SEEN],
    /// The random order of fallback choices over the members: `(next position, start, stride)`.
    walk: Option<(usize, usize, usize)>,
}

impl BackendIter for SelectorIter {
    fn next(&mut self) -> Option<&Backend> {
        if self.offered >= self.picker.members().len() {
            return None;
        }
        let slot = match (self.offered, self.first) {
            (0, Some(first)) => first,
            _ => Slot::Member(self.fallback()?),
        };
        let member = slot.get(&self.picker)?;
        if let Some(seen) = self.seen.get_mut(self.offered) {
            *seen = id(member);
        }
        self.offered += 1;
        Some(&*member.backend)
    }
}

/// A member's identity within one picker: its endpoint state's address.
fn id(m: &Member) -> usize {
    Arc::as_ptr(&m.state) as usize
}

impl SelectorIter {
    fn was_offered(&self, i: usize) -> bool {
        self.picker
            .members()
            .get(i)
            .is_some_and(|m| self.seen[..self.offered.min(SEEN)].contains(&id(m)))
    }

    /// The next choice among the members not offered yet, available ones first.
    fn fallback(&mut self) -> Option<usize> {
        let picker = Arc::clone(&self.picker);
        let members = picker.members();
        let n = members.len();
        let pool = picker.pool();
        let now = *self.now.get_or_insert_with(|| picker.now());
        let available = |i: usize| members.get(i).is_some_and(|m| pool.is_available(&m.state, now));
        match (picker.policy(), self.hash) {
            (LbPolicy::RingHash { .. }, Some(h)) if picker.ring().is_some() => {
                let ring = picker.ring()?.view();
                let fresh = |i: u32| !self.was_offered(i as usize);
                ring.find(h, |i| fresh(i) && available(i as usize))
                    .or_else(|| ring.find(h, fresh))
                    .map(|i| i as usize)
                    .or_else(|| self.walk_next(n, |_| true))
            }
            (LbPolicy::Maglev { .. }, Some(h)) if picker.maglev().is_some() => {
                let table = picker.maglev()?.table();
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
                let cost = |i: usize| members.get(i).map_or(f32::MAX, |m| pool.cost(&m.state, now));
                let (win, lose) = if cost(a) <= cost(b) { (a, b) } else { (b, a) };
                // The loser stays in the running: step the walk back over it.
                self.unwalk(lose, n);
                Some(win)
            }
        }
    }

    /// The next member in this iterator's random order (a random start and a random stride
    /// coprime with `n`: a permutation) that was not offered and passes `accept`; restarts the
    /// order for each call so skipped members stay candidates.
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
    fn unwalk(&mut self, i: usize, n: usize) {
        if let Some((pos, start, stride)) = self.walk.as_mut() {
            let n = n.max(1);
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

/// The position of `e` in `slice` (an element reference the picker returned), in O(1); `None`
/// if `e` is not an element of `slice`.
fn index_in<T>(slice: &[T], e: &T) -> Option<usize> {
    let size = std::mem::size_of::<T>().max(1);
    let offset = (e as *const T as usize).checked_sub(slice.as_ptr() as usize)?;
    let i = offset / size;
    (i < slice.len() && std::ptr::eq(&slice[i], e)).then_some(i)
}
