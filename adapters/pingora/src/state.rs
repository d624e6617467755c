//! What survives Pingora's selector rebuilds: one core [`Balancer`] per upstream group (endpoint
//! state, readiness, timers, the prepared picker) and the picker it last published.
//!
//! This module only translates. `LoadBalancer::update` rebuilds the selector from scratch on every
//! membership change; [`Shared::rebuild`] turns the new backend set into core `insert` / `remove`
//! events (a backend is READY on insert unless Pingora's health check last reported it down), so
//! load, latency estimates and ejections of the backends that stay carry over, and those that left
//! free their ejection slots. Pingora's health results arrive through
//! [`Shared::health_observer`] as `handle_connectivity` events. After each event the core's new
//! [`Prepared`] picker is published here (arc-swap); [`Selector`](crate::Selector)s read the
//! current one on every `iter`, so a health flip takes effect at once although Pingora 0.9 does
//! not rebuild the selector for it (its `update` runs the rebuild callback only when membership
//! changes).
//!
//! The core balancer sits behind a mutex that only rebuilds, health reports and timers take;
//! picks read the published picker and never lock.
//!
//! **Timers.** The core needs [`Balancer::handle_timeout`] now and then (ejection expiry,
//! multiplier decay, stamp re-basing, gRFC A50's interval detection, and for
//! `weighted_round_robin` the weight update period, which publishes a picker with the weights
//! from the latest load reports). Nothing has to remember it:
//! every lease start and every [`Tracker`](crate::Tracker) completion already reads the clock and
//! calls [`Shared::handle_timeout`], which costs one atomic load until the core's deadline
//! ([`Shared::poll_timeout`]) passes; then one thread (a try-lock) runs it. Picks never do.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use pingora::lb::Backend;

use pickwise::balancer::{Balancer, BalancerConfig, Connectivity, EndpointSpec, OwnerConnecting, Prepared};
use pickwise::prequal::{ProbePool, ProbeReport};
use pickwise::{EndpointState, LbPolicy, Pool, PoolConfig};

use crate::prober::{ProbeCounts, ProbeEvent, ProbeStats};

/// The longest time between two runs of the core's upkeep, in milliseconds (the outlier interval
/// if shorter).
const MAX_SWEEP_MS: u64 = 1_000;

/// What the core balancer picks: a backend and its endpoint state. Two pointers, so the
/// picker's member array stays dense (a ring pick reads the owner's state through it; a Pingora
/// `Backend` inline would put each member on its own cache lines).
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) state: Arc<EndpointState>,
    pub(crate) backend: Arc<Backend>,
}

impl Borrow<EndpointState> for Member {
    fn borrow(&self) -> &EndpointState {
        &self.state
    }
}

/// What [`Shared`] publishes: the core's picker (it derefs to it) with the pool and clock a
/// [`SelectorIter`](crate::selection::SelectorIter)'s fallback needs, so an iterator holds this
/// one guard and nothing else (no reference count of the selector or the group to bump per
/// select).
#[derive(Debug)]
pub(crate) struct Picker {
    prepared: Prepared<Member>,
    pool: Arc<Pool>,
    epoch: Instant,
}

impl Picker {
    /// The pool (costs, ejection).
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// [`Shared::now`]: the same clock.
    pub(crate) fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

impl Deref for Picker {
    type Target = Prepared<Member>;

    fn deref(&self) -> &Prepared<Member> {
        &self.prepared
    }
}

/// What the mutex guards.
#[derive(Debug)]
struct Core {
    balancer: Balancer<String, Member>,
    /// Backends Pingora's health checks last reported down, applied to backends inserted later.
    down: HashSet<String>,
    /// The latest `now` given to the balancer (callers on other threads may read the clock a
    /// little earlier; the core's time must not go backwards).
    now: u64,
}

/// Shared state of one pickwise selection: build one per upstream group and pass it as the
/// `LoadBalancer`'s selection config.
#[derive(Debug)]
pub struct Shared {
    policy: LbPolicy,
    pub(crate) pool: Arc<Pool>,
    core: Mutex<Core>,
    /// The core's picker as last published: read lock-free on every `iter`.
    picker: ArcSwap<Picker>,
    /// How many pickers were published (see [`Shared::picker_version`]).
    published: AtomicU64,
    /// The endpoint states by socket address, for leases: read lock-free on every request.
    by_addr: ArcSwap<HashMap<SocketAddr, Arc<EndpointState>>>,
    /// When the core's [`handle_timeout`](Balancer::handle_timeout) is next due, on
    /// [`now`](Self::now)'s clock.
    next_timeout: AtomicU64,
    epoch: Instant,
    /// Prequal's probe and piggyback counts.
    probe_counts: ProbeCounts,
    /// Picks, in-flight gauges and ejections (feature `metrics`).
    #[cfg(feature = "metrics")]
    pub(crate) instruments: crate::telemetry::GroupInstruments,
}

impl Shared {
    /// State for `policy` with pool settings `pool` (cost policy, outlier detection). The core
    /// balancer sets the pool's cost policy to `cost` for `LbPolicy::P2c(cost)` and turns on the
    /// pool's in-flight total for bounded-load ring hash. A ring-hash key whose owner is not ready
    /// walks on clockwise (Envoy's behaviour, [`OwnerConnecting::Walk`]): a proxy does not queue.
    pub fn new(policy: LbPolicy, pool: PoolConfig) -> Arc<Self> {
        Self::build(policy, pool, "pickwise")
    }

    /// [`new`](Self::new), with the group's name as its instruments' `grpc.target` (feature
    /// `metrics`; [`new`](Self::new) says `pickwise`).
    #[cfg(feature = "metrics")]
    pub fn with_target(policy: LbPolicy, pool: PoolConfig, target: &str) -> Arc<Self> {
        Self::build(policy, pool, target)
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn build(policy: LbPolicy, pool: PoolConfig, target: &str) -> Arc<Self> {
        let sweep_ms = u64::from(pool.outlier.interval_ms).clamp(1, MAX_SWEEP_MS);
        let pool = Arc::new(Pool::new(pool));
        let config = BalancerConfig {
            owner_connecting: OwnerConnecting::Walk,
            sweep_ns: sweep_ms * 1_000_000,
            ..BalancerConfig::new(policy)
        };
        let mut balancer = Balancer::new(config, pool.clone());
        let epoch = Instant::now();
        let picker = Picker {
            prepared: balancer.picker(0, fastrand::u64(..)),
            pool: pool.clone(),
            epoch,
        };
        Arc::new(Self {
            policy,
            pool,
            core: Mutex::new(Core {
                balancer,
                down: HashSet::new(),
                now: 0,
            }),
            picker: ArcSwap::from_pointee(picker),
            published: AtomicU64::new(0),
            by_addr: ArcSwap::from_pointee(HashMap::new()),
            next_timeout: AtomicU64::new(0),
            epoch,
            probe_counts: ProbeCounts::default(),
            #[cfg(feature = "metrics")]
            instruments: crate::telemetry::GroupInstruments::new(target, &policy),
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

    /// The current picker (lock-free; hold the guard briefly, as an iterator does).
    pub(crate) fn picker(&self) -> Guard<Arc<Picker>> {
        self.picker.load()
    }

    /// How many pickers the group has published since it was made: each rebuild, health flip
    /// and timer run that changed the core's picker (for `weighted_round_robin`, every weight
    /// update period while requests flow) adds one. Something to wait on.
    pub fn picker_version(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Prequal's probe pool, shared by every picker the group publishes (`None` under other
    /// policies): how many answers it holds, the hot threshold, the queries counted.
    pub fn probe_pool(&self) -> Option<Arc<ProbePool>> {
        self.picker.load().probes().cloned()
    }

    /// Prequal's probe counts: probes the [`Prober`](crate::Prober) sent, answered and failed,
    /// and reports piggybacked on responses.
    pub fn probe_stats(&self) -> ProbeStats {
        self.probe_counts.stats()
    }

    pub(crate) fn count_probe(&self, event: ProbeEvent) {
        self.probe_counts.count(event);
        #[cfg(feature = "metrics")]
        self.instruments.probe(event);
    }

    /// A Prequal report a response carried, for the backend `endpoint`: recorded like a probe's
    /// answer. Whether the group runs Prequal (otherwise nothing is recorded or counted).
    pub(crate) fn record_piggybacked(&self, endpoint: &EndpointState, report: ProbeReport, now: u64) -> bool {
        let picker = self.picker.load();
        if picker.probes().is_none() {
            return false;
        }
        picker.record_probe(endpoint, report, now, &mut || fastrand::u64(..));
        self.count_probe(ProbeEvent::Piggybacked);
        true
    }

    /// Whether the group runs Prequal (reads piggybacked reports).
    pub(crate) fn is_prequal(&self) -> bool {
        matches!(self.policy, LbPolicy::Prequal(_))
    }

    /// The sum of the weights of the backends that are ready (not reported down by Pingora's
    /// health checks): what bounded-load shares divide (Envoy normalises over healthy hosts).
    /// Sums the current picker's ready backends (O(backends); not for the pick path).
    pub fn ready_weight(&self) -> u64 {
        self.picker
            .load()
            .ready()
            .iter()
            .map(|m| u64::from(m.state.weight()))
            .sum()
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work, on [`now`](Self::now)'s clock
    /// (0: at once).
    pub fn poll_timeout(&self) -> u64 {
        self.next_timeout.load(Ordering::Relaxed)
    }

    /// Runs the core balancer's timers ([`Balancer::handle_timeout`]: expired ejections,
    /// ejection-multiplier decay, stamp re-basing, gRFC A50's interval detection) if they are due
    /// at `now`, and publishes the picker if that changed it; otherwise one atomic load. One
    /// caller runs them at a time (a try-lock; the others return at once). Leases and
    /// [`Tracker`](crate::Tracker) completions call it, so a proxy with traffic needs nothing
    /// else; call it from a timer only if traffic may stop for weeks.
    pub fn handle_timeout(&self, now: u64) {
        if now < self.next_timeout.load(Ordering::Relaxed) {
            return;
        }
        let mut core = match self.core.try_lock() {
            Ok(core) => core,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let now = core.advance(now);
        core.balancer.handle_timeout(now);
        self.publish(&mut core, now);
        #[cfg(feature = "metrics")]
        {
            self.instruments.sample(&self.pool, now);
            self.instruments.sample_prequal(self.picker.load().probes());
        }
    }

    /// Pingora's health check flipped `backend` to `healthy`: READY or TRANSIENT_FAILURE for the
    /// core, which publishes a new picker. Not on the pick path (health checks run in the
    /// background).
    pub(crate) fn set_health(&self, backend: &Backend, healthy: bool) {
        let key = backend.addr.to_string();
        let mut core = self.lock();
        let now = core.advance(self.now());
        if healthy {
            core.down.remove(&key);
        } else {
            core.down.insert(key.clone());
        }
        core.balancer
            .handle_connectivity(now, &key, connectivity(healthy));
        self.publish(&mut core, now);
    }

    /// The backend set of a selector rebuild, as core membership events: backends that left are
    /// removed (their ejection slots freed), new ones inserted READY unless Pingora's health check
    /// last reported them down, known ones keep their state (weight updated). Returns the picker
    /// published for the new set. Called once per rebuild, never on the pick path.
    pub(crate) fn rebuild(&self, backends: &BTreeSet<Backend>) -> Arc<Picker> {
        // Envoy's host key: "ip:port". The set is ordered, so a first build inserts in address
        // order (ring owners and round robin follow insertion order).
        let wanted: Vec<(String, &Backend)> = backends.iter().map(|b| (b.addr.to_string(), b)).collect();
        let keys: HashSet<&str> = wanted.iter().map(|(k, _)| k.as_str()).collect();
        let mut core = self.lock();
        let now = core.advance(self.now());
        let gone: Vec<String> = core
            .balancer
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !keys.contains(k.as_str()))
            .cloned()
            .collect();
        for key in &gone {
            core.balancer.remove(now, key);
        }
        core.down.retain(|k| keys.contains(k.as_str()));
        for (key, backend) in wanted {
            let weight = backend.weight.clamp(1, u32::MAX as usize) as u32;
            let spec = EndpointSpec::weighted(weight);
            if let Some(known) = core.balancer.get(&key) {
                let member = Member {
                    state: known.state.clone(),
                    backend: Arc::new(backend.clone()),
                };
                core.balancer.insert(now, key.clone(), spec, member.clone());
                core.balancer.set_payload(&key, member);
            } else {
                let member = Member {
                    state: Arc::new(EndpointState::new(weight)),
                    backend: Arc::new(backend.clone()),
                };
                let healthy = !core.down.contains(&key);
                core.balancer.insert(now, key.clone(), spec, member);
                core.balancer
                    .handle_connectivity(now, &key, connectivity(healthy));
            }
        }
        let by_addr = core
            .balancer
            .iter()
            .filter_map(|(_, m)| Some((*m.backend.addr.as_inet()?, m.state.clone())))
            .collect();
        #[cfg(feature = "metrics")]
        {
            self.instruments.rebuild(&by_addr);
            self.instruments.sample(&self.pool, now);
        }
        self.by_addr.store(Arc::new(by_addr));
        // Always a fresh picker for a rebuild (payloads may have changed).
        while core.balancer.poll_event().is_some() {}
        let picker = Arc::new(self.wrap(core.balancer.picker(now, fastrand::u64(..))));
        let hashing = matches!(self.policy, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. });
        if hashing && !picker.members().is_empty() && picker.ring().is_none() && picker.maglev().is_none() {
            tracing::error!(
                policy = self.policy.name(),
                backends = picker.members().len(),
                "pickwise: the core could not build the ring or Maglev table; picking by P2C"
            );
        }
        self.picker.store(picker.clone());
        self.published.fetch_add(1, Ordering::Release);
        self.arm(&core);
        picker
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After an event: the core's connect / disconnect requests mean nothing to Pingora (its
    /// connections are per request) and are dropped; a changed picker is published; the timer is
    /// re-armed.
    fn publish(&self, core: &mut Core, now: u64) {
        while core.balancer.poll_event().is_some() {}
        if let Some(picker) = core.balancer.poll_picker(now, fastrand::u64(..)) {
            self.picker.store(Arc::new(self.wrap(picker)));
            self.published.fetch_add(1, Ordering::Release);
        }
        self.arm(core);
    }

    fn wrap(&self, prepared: Prepared<Member>) -> Picker {
        Picker {
            prepared,
            pool: self.pool.clone(),
            epoch: self.epoch,
        }
    }

    fn arm(&self, core: &Core) {
        // `None`: the core's clock has not started; the next caller starts it.
        let next = core.balancer.poll_timeout().unwrap_or(0);
        self.next_timeout.store(next, Ordering::Relaxed);
    }
}

impl Core {
    /// `now`, never before a time the balancer has already seen.
    fn advance(&mut self, now: u64) -> u64 {
        self.now = self.now.max(now);
        self.now
    }
}

/// A health result as connectivity: healthy is READY, down is TRANSIENT_FAILURE.
fn connectivity(healthy: bool) -> Connectivity {
    if healthy {
        Connectivity::Ready
    } else {
        Connectivity::TransientFailure
    }
}
