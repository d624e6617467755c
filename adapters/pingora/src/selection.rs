//! [`Selector`]: a Pingora `BackendSelection` whose decision is the core's
//! [`Picker`](pickwise::Picker): P2C with least-request / peak-EWMA / go-zero costs, round robin,
//! Envoy-compatible ring hash (plain, bounded load, affinity) and Maglev.
//!
//! Build it through `LoadBalancer::from_backends_with_config(backends, Some(shared))` with one
//! [`Shared`] per upstream group: Pingora rebuilds the selector on every discovery or health
//! change, and the per-backend state lives in `Shared`, so it survives; a
//! [`Lease`](crate::Lease) finds a selected backend's state there without a lock.

use std::collections::BTreeSet;
use std::sync::Arc;

use pickwise::{EndpointState, LbPolicy, Maglev, Picker, PoolConfig, Ring};
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::Backend;

use crate::state::Shared;

/// A pickwise backend selection: builds the ring or Maglev table its policy needs and picks with
/// the core [`Picker`]. Build it with a [`Shared`] (see the crate docs).
#[derive(Debug)]
pub struct Selector {
    shared: Arc<Shared>,
    backends: Vec<Backend>,
    states: Vec<Arc<EndpointState>>,
    ring: Option<Ring>,
    maglev: Option<Maglev>,
    total_weight: u64,
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
        let (mut ring, mut maglev) = (None, None);
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
            _ => {}
        }
        let total_weight = keys.iter().map(|(_, w)| u64::from(*w)).sum();
        Self {
            shared: shared.clone(),
            backends,
            states,
            ring,
            maglev,
            total_weight,
        }
    }

    fn iter(self: &Arc<Self>, key: &[u8]) -> SelectorIter {
        let hash = (!key.is_empty()).then(|| pickwise::hash::xxh64(key));
        let shared = &self.shared;
        let mut picker = Picker::new(&shared.policy, &self.states, &shared.pool).with_cursor(&shared.cursor);
        if let Some(r) = &self.ring {
            picker = picker.with_ring(r.view(), self.total_weight);
        }
        if let Some(t) = &self.maglev {
            picker = picker.with_table(t.table());
        }
        let first = picker
            .pick_with_clock(|| shared.now(), hash, &mut || fastrand::u64(..))
            .ok()
            .and_then(|e| index_in(&self.states, e));
        SelectorIter {
            selector: self.clone(),
            first,
            step: 0,
        }
    }
}

/// The backends in preference order: the pick, then the others in address order after it
/// (Pingora stops at the first its health checks accept, within its iteration bound).
#[derive(Debug)]
pub struct SelectorIter {
    selector: Arc<Selector>,
    first: Option<usize>,
    step: usize,
}

impl BackendIter for SelectorIter {
    fn next(&mut self) -> Option<&Backend> {
        let n = self.selector.backends.len();
        let start = self.first?;
        if self.step >= n {
            return None;
        }
        let i = (start + self.step) % n;
        self.step += 1;
        self.selector.backends.get(i)
    }
}

/// The position of `e` in `slice` (an element reference the picker returned), in O(1).
fn index_in<T>(slice: &[T], e: &T) -> Option<usize> {
    let size = std::mem::size_of::<T>().max(1);
    let offset = (e as *const T as usize).checked_sub(slice.as_ptr() as usize)?;
    let i = offset / size;
    (i < slice.len() && std::ptr::eq(&slice[i], e)).then_some(i)
}
