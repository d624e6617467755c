//! What survives Pingora's selector rebuilds: the policy, the [`Pool`], one [`EndpointState`] per
//! backend address, the readiness Pingora's health checks report, and the pool's timer.
//!
//! `LoadBalancer::update` rebuilds the selector from scratch on every discovery change; the
//! selector takes the states of the backends it keeps from here, so load, latency estimates and
//! ejections carry over, and the states of backends that left are removed from the pool (their
//! ejection slots freed). Health results arrive through [`Shared::health_observer`] (Pingora does
//! not rebuild on a health change) and mark states ready or not, so the picker never chooses a
//! backend Pingora would refuse.
//!
//! **Timers.** The pool needs [`Pool::sweep`] every so often (ejection-multiplier decay, stamp
//! re-basing, expired ejections). Nothing has to remember it: every lease start and every
//! [`Tracker`](crate::Tracker) completion already reads the clock and calls
//! [`Shared::handle_timeout`], which costs one atomic load until the deadline
//! ([`Shared::poll_timeout`]) passes; then one thread (a try-lock) sweeps. Picks never sweep.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use pickwise::{EndpointState, LbPolicy, Pool, PoolConfig};

/// The longest time between two sweeps, in milliseconds (the outlier interval if shorter).
const MAX_SWEEP_MS: u64 = 1_000;

/// Shared state of one pickwise selection: build one per upstream group and pass it as the
/// `LoadBalancer`'s selection config.
#[derive(Debug)]
pub struct Shared {
    pub(crate) policy: LbPolicy,
    pub(crate) pool: Pool,
    states: Mutex<HashMap<String, Arc<EndpointState>>>,
    /// The same states by socket address, for leases: read lock-free on every request.
    by_addr: ArcSwap<HashMap<SocketAddr, Arc<EndpointState>>>,
    /// Backends Pingora's health checks last reported down, applied to states built later.
    down: Mutex<HashSet<SocketAddr>>,
    /// Sum of the weights of the ready backends: the base of bounded-load shares.
    ready_weight: AtomicU64,
    pub(crate) cursor: AtomicU32,
    /// When the next sweep is due, on [`now`](Self::now)'s clock.
    next_sweep: AtomicU64,
    /// Held by the one thread sweeping.
    sweeping: AtomicBool,
    sweep_every_ns: u64,
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
        let sweep_ms = u64::from(pool.outlier.interval_ms).clamp(1, MAX_SWEEP_MS);
        Arc::new(Self {
            policy,
            pool: Pool::new(pool),
            states: Mutex::new(HashMap::new()),
            by_addr: ArcSwap::from_pointee(HashMap::new()),
            down: Mutex::new(HashSet::new()),
            ready_weight: AtomicU64::new(0),
            cursor: AtomicU32::new(0),
            next_sweep: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
            sweep_every_ns: sweep_ms * 1_000_000,
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

    /// The sum of the weights of the backends that are ready (not reported down by Pingora's
    /// health checks): what bounded-load shares divide (Envoy normalises over healthy hosts).
    pub fn ready_weight(&self) -> u64 {
        self.ready_weight.load(Ordering::Relaxed)
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work, on [`now`](Self::now)'s clock.
    pub fn poll_timeout(&self) -> u64 {
        self.next_sweep.load(Ordering::Relaxed)
    }

    /// Runs the pool's upkeep ([`Pool::sweep`]: expired ejections, ejection-multiplier decay,
    /// stamp re-basing) if it is due at `now`; otherwise one atomic load. One caller sweeps at a
    /// time (a try-lock; the others return at once). Leases and [`Tracker`](crate::Tracker)
    /// completions call it, so a proxy with traffic needs nothing else; call it from a timer
    /// only if traffic may stop for weeks.
    pub fn handle_timeout(&self, now: u64) {
        if now < self.next_sweep.load(Ordering::Relaxed) {
            return;
        }
        if self
            .sweeping
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.next_sweep
            .store(now.saturating_add(self.sweep_every_ns), Ordering::Relaxed);
        let states = self.by_addr.load();
        self.pool.sweep(now, states.values().map(|s| &**s));
        self.sweeping.store(false, Ordering::Release);
    }

    /// Pingora's health check flipped `addr` to `healthy`: marks its state ready or not and
    /// re-sums the ready weight. Not on the pick path (health checks run in the background).
    pub(crate) fn set_health(&self, addr: SocketAddr, healthy: bool) {
        // Held while the states are marked, so a rebuild (which holds it too) cannot build a
        // state from the old set and publish it after this report.
        let mut down = self.down.lock().ok();
        if let Some(down) = down.as_mut() {
            if healthy {
                down.remove(&addr);
            } else {
                down.insert(addr);
            }
        }
        let states = self.by_addr.load();
        if let Some(s) = states.get(&addr) {
            s.set_ready(healthy);
        }
        self.sum_ready(states.values());
    }

    fn sum_ready<'a>(&self, states: impl Iterator<Item = &'a Arc<EndpointState>>) {
        let sum = states
            .filter(|s| s.is_ready())
            .map(|s| u64::from(s.weight()))
            .sum();
        self.ready_weight.store(sum, Ordering::Relaxed);
    }

    /// States for `backends` (address, weight), reusing known ones; forgets the others (their
    /// ejection slots are freed). A new state starts ready unless Pingora's health check last
    /// reported its address down. Called once per selector rebuild, never on the pick path.
    pub(crate) fn states_for(&self, backends: &[(String, u32)]) -> Vec<Arc<EndpointState>> {
        let Ok(mut map) = self.states.lock() else {
            return backends
                .iter()
                .map(|(_, w)| Arc::new(EndpointState::new(*w)))
                .collect();
        };
        let addrs: Vec<Option<SocketAddr>> = backends.iter().map(|(a, _)| a.parse().ok()).collect();
        let mut down = self.down.lock().ok();
        if let Some(down) = down.as_mut() {
            down.retain(|a| addrs.contains(&Some(*a)));
        }
        let out: Vec<Arc<EndpointState>> = backends
            .iter()
            .zip(&addrs)
            .map(|((addr, w), sock)| {
                let e = map.entry(addr.clone()).or_insert_with(|| {
                    let e = EndpointState::new(*w);
                    let is_down = down
                        .as_ref()
                        .zip(sock.as_ref())
                        .is_some_and(|(down, s)| down.contains(s));
                    e.set_ready(!is_down);
                    Arc::new(e)
                });
                e.set_weight(*w);
                e.clone()
            })
            .collect();
        let current: HashSet<&str> = backends.iter().map(|(a, _)| a.as_str()).collect();
        map.retain(|addr, e| {
            let keep = current.contains(addr.as_str());
            if !keep {
                self.pool.remove(e);
            }
            keep
        });
        self.pool.set_endpoints(backends.len());
        let by_addr = addrs
            .iter()
            .zip(&out)
            .filter_map(|(a, e)| Some(((*a)?, e.clone())))
            .collect();
        self.by_addr.store(Arc::new(by_addr));
        self.sum_ready(out.iter());
        drop(down);
        out
    }
}
