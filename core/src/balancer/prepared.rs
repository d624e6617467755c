//! [`Prepared`]: the immutable picker a [`Balancer`](super::Balancer) publishes — the serving
//! priority already chosen, its ring or table built, localities with a READY endpoint and their
//! weighted schedules ready. A pick allocates nothing and takes no lock.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::borrow::Borrow;
use core::ops::Range;

use super::{Connectivity, OwnerConnecting, Slot};
use crate::endpoint::EndpointState;
use crate::hashing;
use crate::picker::{LbPolicy, NoKey, Picker};
use crate::pool::Pool;
use crate::rng::Rng;
use crate::schedule::{self, Stride};
use crate::sync::AtomicU32;
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

/// An immutable picker. See the [module docs](self).
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
    pub(super) state: Connectivity,
    pub(super) now: u64,
    pub(super) seed: u64,
}

pub(super) fn build<T: Clone + Borrow<EndpointState>>(i: Inputs<'_, T>) -> Prepared<T> {
    let members: Vec<T> = i.slots.iter().map(|s| s.payload.clone()).collect();
    let states: Vec<Connectivity> = i.slots.iter().map(|s| s.effective()).collect();
    // Localities in order of first appearance, each with its weight.
    let mut order: Vec<(u32, u32)> = Vec::new();
    for s in i.slots {
        if !order.iter().any(|(id, _)| *id == s.spec.locality) {
            order.push((s.spec.locality, s.spec.locality_weight.max(1)));
        }
    }
    let (mut ready, mut ready_w, mut localities, mut loc_w) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, weight) in order {
        let start = ready.len();
        let mut raw: Vec<u32> = Vec::new();
        for s in i
            .slots
            .iter()
            .filter(|s| s.spec.locality == id && s.state == Connectivity::Ready)
        {
            ready.push(s.payload.clone());
            raw.push(s.spec.weight.max(1));
        }
        if raw.is_empty() {
            continue;
        }
        let mut scaled = alloc::vec![0u16; raw.len()];
        let equal = schedule::scale(&raw, &mut scaled);
        ready_w.extend_from_slice(&scaled);
        localities.push(Locality {
            ready: start..ready.len(),
            weighted: !equal,
        });
        loc_w.push(weight);
    }
    let locality_weights = schedule::scaled(&loc_w);
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
    }
}

impl<T: Borrow<EndpointState>> Prepared<T> {
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
            return self.pick_hashed(now, h, rng);
        }
        if self.localities.is_empty() {
            return Err(self.unpicked());
        }
        let loc = if self.localities.len() == 1 {
            0
        } else {
            let seq = &self.cursors[self.localities.len()];
            Stride::new(&self.locality_weights, seq)
                .next(rng, |_| true)
                .unwrap_or(0)
        };
        let l = &self.localities[loc];
        let ready = &self.ready[l.ready.clone()];
        let mut picker = Picker::new(&self.policy, ready, &self.pool).with_cursor(&self.cursors[loc]);
        if l.weighted {
            picker = picker.with_weights(&self.ready_weights[l.ready.clone()]);
        }
        picker.pick(now, None, rng).map_err(|_| self.unpicked())
    }

    fn pick_hashed(&self, now: u64, h: u64, rng: &mut impl Rng) -> Result<&T, Unpicked> {
        let mut picker = Picker::new(&self.policy, &self.members, &self.pool).with_candidates(&self.ready);
        if let Some(ring) = &self.ring {
            if self.owner_connecting == OwnerConnecting::Queue {
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
}
