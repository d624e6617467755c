//! What survives Pingora's selector rebuilds: the policy, the [`Pool`], and one
//! [`EndpointState`] per backend address. `LoadBalancer::update` rebuilds the selector from
//! scratch on every discovery or health change; the selector takes the states of the backends it
//! keeps from here, so load, latency estimates and ejections carry over, and the states of
//! backends that left are removed from the pool (their ejection slots freed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use pickwise::{EndpointState, LbPolicy, Pool, PoolConfig};

/// Shared state of one pickwise selection: build one per upstream group and pass it as the
/// `LoadBalancer`'s selection config.
#[derive(Debug)]
pub struct Shared {
    pub(crate) policy: LbPolicy,
    pub(crate) pool: Pool,
    states: Mutex<HashMap<String, Arc<EndpointState>>>,
    /// The same states by socket address, for leases: read lock-free on every request.
    by_addr: ArcSwap<HashMap<SocketAddr, Arc<EndpointState>>>,
    pub(crate) cursor: AtomicU32,
    epoch: Instant,
}

impl Shared {
    /// State for `policy` with pool settings `pool` (cost policy, outlier detection). For
    /// `LbPolicy::P2c(cost)` the pool's cost policy is set to `cost`; bounded-load ring hash turns
    /// on the pool's in-flight total.
    pub fn new(policy: LbPolicy, mut pool: PoolConfig) -> Arc<Self> {
        if let LbPolicy::P2c(cost) = policy {
            pool.policy = cost;
        }
        if let LbPolicy::RingHash {
            load: pickwise::HashPolicy::Bounded { .. },
            ..
        } = policy
        {
            pool.track_total = true;
        }
        Arc::new(Self {
            policy,
            pool: Pool::new(pool),
            states: Mutex::new(HashMap::new()),
            by_addr: ArcSwap::from_pointee(HashMap::new()),
            cursor: AtomicU32::new(0),
            epoch: Instant::now(),
        })
    }

    /// The policy.
    pub fn policy(&self) -> &LbPolicy {
        &self.policy
    }

    /// The pool (costs, ejection).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Monotonic nanoseconds: the core's `now`.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The state of the backend at `addr` (`ip:port`), if the current selector has it.
    pub fn state(&self, addr: &str) -> Option<Arc<EndpointState>> {
        self.by_addr.load().get(&addr.parse().ok()?).cloned()
    }

    /// The state of the backend at `addr`, lock-free (the lease path).
    pub(crate) fn state_at(&self, addr: &SocketAddr) -> Option<Arc<EndpointState>> {
        self.by_addr.load().get(addr).cloned()
    }

    /// States for `backends` (address, weight), reusing known ones; forgets the others (their
    /// ejection slots are freed). Called once per selector rebuild, never on the pick path.
    pub(crate) fn states_for(&self, backends: &[(String, u32)]) -> Vec<Arc<EndpointState>> {
        let Ok(mut map) = self.states.lock() else {
            return backends
                .iter()
                .map(|(_, w)| Arc::new(EndpointState::new(*w)))
                .collect();
        };
        let out: Vec<Arc<EndpointState>> = backends
            .iter()
            .map(|(addr, w)| {
                let e = map
                    .entry(addr.clone())
                    .or_insert_with(|| Arc::new(EndpointState::new(*w)));
                e.set_weight(*w);
                e.clone()
            })
            .collect();
        let current: std::collections::HashSet<&str> = backends.iter().map(|(a, _)| a.as_str()).collect();
        map.retain(|addr, e| {
            let keep = current.contains(addr.as_str());
            if !keep {
                self.pool.remove(e);
            }
            keep
        });
        self.pool.set_endpoints(backends.len());
        let by_addr = backends
            .iter()
            .zip(&out)
            .filter_map(|((addr, _), e)| Some((addr.parse().ok()?, e.clone())))
            .collect();
        self.by_addr.store(Arc::new(by_addr));
        out
    }
}
