//! [`Balancer`]: the balancer's life as one sans-IO state machine, in the style of quinn-proto —
//! events in, time passed in, a prepared picker and the next deadline out. Every adapter (tonic,
//! xDS, Pingora) translates its world into these events and publishes the [`Prepared`] picker it
//! gets back; none decides readiness, priorities, localities, weights or timers on its own.
//!
//! # Use, in order
//! 1. Inputs (`handle_*`, mutators): [`insert`](Balancer::insert) / [`remove`](Balancer::remove)
//!    membership (weight, priority, locality and its weight, gRFC A76 hash key),
//!    [`handle_connectivity`](Balancer::handle_connectivity) (a subchannel's state, a health
//!    check, an xDS health status), [`set_payload`](Balancer::set_payload) (what the adapter picks:
//!    a connection handle), [`set_policy`](Balancer::set_policy),
//!    [`handle_timeout`](Balancer::handle_timeout). Outcomes reach endpoint state through the
//!    in-flight guard ([`InFlight`](crate::InFlight)), not through here.
//! 2. Outputs: [`poll_event`](Balancer::poll_event) (connect or disconnect an endpoint),
//!    [`poll_picker`](Balancer::poll_picker) (a new immutable picker when anything changed),
//!    [`poll_timeout`](Balancer::poll_timeout) (when to call `handle_timeout` next).
//!
//! `now` is the caller's monotonic clock in nanoseconds and must not go backwards.
//!
//! # The tree (gRPC's, as grpc-go builds it for xDS)
//! `priority` (`tree.rs` rules: failover on TRANSIENT_FAILURE, the 10 s failover timer, lower
//! priorities started only when needed and closed 15 s after they stop serving) ->
//! `weighted_target` (localities by weight, among those with a READY endpoint) -> leaf policy
//! (round robin, weighted by endpoint weight when weights differ; P2C) — or, for ring hash and
//! Maglev, one ring or table over the serving priority with endpoint weight × locality weight
//! (gRFC A42).
//!
//! Ring hash while the key's owner is connecting: [`OwnerConnecting::Queue`] (gRPC, gRFC A61: the
//! request waits for the owner, keeping cache affinity) or [`OwnerConnecting::Walk`] (Envoy: the
//! next ready endpoint clockwise serves).
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use pickwise::balancer::{Balancer, BalancerConfig, Connectivity, EndpointSpec, Event};
//! use pickwise::{EndpointState, LbPolicy, Pool, PoolConfig, SplitMix64};
//!
//! let pool = Arc::new(Pool::new(PoolConfig::default()));
//! let mut b: Balancer<&str, Arc<EndpointState>> =
//!     Balancer::new(BalancerConfig::new(LbPolicy::RoundRobin), pool);
//! for (addr, priority) in [("a:1", 0), ("b:1", 0), ("c:1", 1)] {
//!     let spec = EndpointSpec { priority, ..EndpointSpec::default() };
//!     b.insert(0, addr, spec, Arc::new(EndpointState::new(1)));
//! }
//! // Only priority 0 connects.
//! let mut connect = Vec::new();
//! while let Some(Event::Connect(k)) = b.poll_event() { connect.push(k); }
//! assert_eq!(connect, ["a:1", "b:1"]);
//! b.handle_connectivity(1, &"a:1", Connectivity::Ready);
//! let picker = b.poll_picker(1, 7).unwrap();
//! let mut rng = SplitMix64::new(1);
//! assert!(Arc::ptr_eq(picker.pick(1, None, &mut rng).unwrap(), b.get(&"a:1").unwrap()));
//! ```

mod prepared;
mod tree;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::borrow::Borrow;

use crate::endpoint::EndpointState;
use crate::picker::LbPolicy;
use crate::pool::Pool;
use crate::prequal::ProbePool;
use crate::rng::{Rng, SplitMix64};
use crate::{HashPolicy, Maglev, Ring};

pub use prepared::{Prepared, Unpicked};
use tree::Child;

const SECOND: u64 = 1_000_000_000;

/// An endpoint's connectivity, as gRPC names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Connectivity {
    /// Not connected and not trying (not started, or idle until asked).
    #[default]
    Idle,
    /// Connecting.
    Connecting,
    /// Connected and usable.
    Ready,
    /// The last attempt failed. Sticky: until the endpoint is READY again, reconnecting
    /// (CONNECTING, IDLE) still counts as failing in every aggregate (gRFC A61).
    TransientFailure,
}

/// What a ring-hash pick does while the key's owner is connecting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OwnerConnecting {
    /// Wait for the owner (gRPC C-core, grpc-go: gRFC A61): the request queues, the key keeps its
    /// endpoint (cache affinity). Owners in TRANSIENT_FAILURE are walked past.
    #[default]
    Queue,
    /// Walk clockwise to the next ready endpoint (Envoy).
    Walk,
}

/// Settings of a [`Balancer`]. Defaults are grpc-go's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BalancerConfig {
    /// The policy.
    pub policy: LbPolicy,
    /// Ring hash while the owner connects.
    pub owner_connecting: OwnerConnecting,
    /// How long a priority may stay CONNECTING before the next one is tried (grpc-go
    /// `DefaultPriorityInitTimeout`: 10 s).
    pub failover_ns: u64,
    /// How long a stopped priority keeps its connections (grpc-go's sub-balancer cache: 15 s).
    pub retention_ns: u64,
    /// Period of outlier-detection upkeep ([`Pool::sweep`]): ejection expiry, multiplier decay,
    /// stamp re-basing (Envoy's `interval` ticks; 1 s here, so expiry is exact to a second).
    pub sweep_ns: u64,
    /// Seed of the draws the balancer makes itself (A50's enforcement percentages).
    pub seed: u64,
}

impl BalancerConfig {
    /// Defaults with `policy`.
    pub fn new(policy: LbPolicy) -> Self {
        Self {
            policy,
            owner_connecting: OwnerConnecting::Queue,
            failover_ns: 10 * SECOND,
            retention_ns: 15 * SECOND,
            sweep_ns: SECOND,
            seed: 0x5EED,
        }
    }
}

/// What discovery says about one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Weight within its locality (0 counts as 1).
    pub weight: u32,
    /// Priority, 0 the highest.
    pub priority: u32,
    /// Locality id (any number the adapter assigns; endpoints with the same id share a locality).
    pub locality: u32,
    /// The locality's weight within its priority (0 counts as 1).
    pub locality_weight: u32,
    /// The key the ring hashes instead of the address (gRFC A76 `hash_key`).
    pub hash_key: Option<Arc<str>>,
}

impl Default for EndpointSpec {
    fn default() -> Self {
        Self {
            weight: 1,
            priority: 0,
            locality: 0,
            locality_weight: 1,
            hash_key: None,
        }
    }
}

impl EndpointSpec {
    /// An endpoint of `weight` in the only priority and locality.
    pub fn weighted(weight: u32) -> Self {
        Self {
            weight,
            ..Self::default()
        }
    }
}

/// What the adapter must do for an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Event<K> {
    /// Start connecting (its priority is in use or being tried).
    Connect(K),
    /// Close its connection (its priority stopped serving and its retention ran out). The
    /// endpoint stays a member, IDLE; a later `Connect` brings it back.
    Disconnect(K),
}

#[derive(Debug)]
struct Slot<T> {
    payload: T,
    spec: EndpointSpec,
    state: Connectivity,
    /// Sticky TRANSIENT_FAILURE: failed since it was last READY.
    failing: bool,
    /// Its success and failure counters at the last outlier-detection interval.
    counted: (u32, u32),
    /// Told to connect (and not told to disconnect since).
    connected: bool,
    /// When it was inserted or last left READY (`now`, ns): a load report after this came from
    /// the connection that is becoming READY.
    left_ready_at: u64,
}

impl<T> Slot<T> {
    /// The state aggregates see: failing stays failing until READY.
    fn effective(&self) -> Connectivity {
        if self.failing && self.state != Connectivity::Ready {
            Connectivity::TransientFailure
        } else {
            self.state
        }
    }
}

/// The balancer's life for one set of endpoints. See the [module docs](self).
///
/// `K` identifies an endpoint: its address (`ip:port`), which is also the ring key unless a hash
/// key is set. `T` is what the adapter picks (a connection handle, a backend); it borrows the
/// endpoint's [`EndpointState`].
#[derive(Debug)]
pub struct Balancer<K, T> {
    config: BalancerConfig,
    pool: Arc<Pool>,
    /// Insertion order: ring order for Envoy-mode rings, and the order of round robin.
    order: Vec<K>,
    slots: BTreeMap<K, Slot<T>>,
    children: BTreeMap<u32, Child>,
    in_use: Option<u32>,
    events: VecDeque<Event<K>>,
    dirty: bool,
    /// The ring or table must be rebuilt (membership, weights, keys, policy or priority changed).
    ring_dirty: bool,
    ring: Option<Arc<Ring>>,
    maglev: Option<Arc<Maglev>>,
    next_sweep: Option<u64>,
    ejected_at_sweep: u32,
    /// The next run of gRFC A50's interval algorithms (success rate, failure percentage).
    next_detection: Option<u64>,
    /// Draws for A50's enforcement percentages (seeded: the core draws no entropy of its own).
    rng: SplitMix64,
    /// The next recomputation of `weighted_round_robin`'s weights (gRFC A58's update period).
    next_weight_update: Option<u64>,
    /// Prequal's probe answers, shared by every picker published under `pickwise_prequal`.
    probes: Option<Arc<ProbePool>>,
}

impl<K: Ord + Clone + AsRef<[u8]>, T: Clone + Borrow<EndpointState>> Balancer<K, T> {
    /// A balancer with no endpoints, its endpoints' outlier state in `pool`.
    pub fn new(config: BalancerConfig, pool: Arc<Pool>) -> Self {
        let b = Self {
            config,
            pool,
            order: Vec::new(),
            slots: BTreeMap::new(),
            children: BTreeMap::new(),
            in_use: None,
            events: VecDeque::new(),
            dirty: true,
            ring_dirty: true,
            ring: None,
            maglev: None,
            next_sweep: None,
            ejected_at_sweep: 0,
            next_detection: None,
            rng: SplitMix64::new(config.seed),
            next_weight_update: None,
            probes: probe_pool(&config.policy),
        };
        b.apply_policy_to_pool();
        b
    }

    // ===== getters =====

    /// The configuration.
    pub fn config(&self) -> &BalancerConfig {
        &self.config
    }

    /// The shared endpoint-state pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The priority requests go to (`None` without endpoints).
    pub fn priority_in_use(&self) -> Option<u32> {
        self.in_use
    }

    /// Endpoints known.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no endpoint is known.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The payload of `key`.
    pub fn get(&self, key: &K) -> Option<&T> {
        self.slots.get(key).map(|s| &s.payload)
    }

    /// The connectivity of `key` as last reported.
    pub fn connectivity(&self, key: &K) -> Option<Connectivity> {
        self.slots.get(key).map(|s| s.state)
    }

    /// Whether `key` has been told to connect (its priority started) and not to disconnect since.
    pub fn wants_connection(&self, key: &K) -> bool {
        self.slots.get(key).is_some_and(|s| s.connected)
    }

    /// The spec of `key`.
    pub fn spec(&self, key: &K) -> Option<&EndpointSpec> {
        self.slots.get(key).map(|s| &s.spec)
    }

    /// Every endpoint in insertion order with its payload.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &T)> {
        self.order
            .iter()
            .filter_map(move |k| self.slots.get(k).map(|s| (k, &s.payload)))
    }

    // ===== inputs =====

    /// Adds an endpoint, or updates a known one's spec: a known endpoint keeps its payload, its
    /// connection and its state (use [`set_payload`](Self::set_payload) to replace the payload).
    pub fn insert(&mut self, now: u64, key: K, spec: EndpointSpec, payload: T) {
        let weight = self.effective_weight(&spec);
        if let Some(slot) = self.slots.get(&key) {
            if slot.spec == spec {
                return;
            }
            slot.payload.borrow().set_weight(weight);
            let moved_to = (slot.spec.priority != spec.priority).then_some(spec.priority);
            self.update_slot(&key, |s| s.spec = spec);
            self.ring_dirty = true;
            self.dirty = true;
            if let Some(p) = moved_to {
                // Now in another priority: connected if that one is started.
                if self.children.get(&p).is_some_and(|c| c.started) {
                    self.connect(&key);
                }
                self.sync(now);
            }
            return;
        }
        payload.borrow().set_weight(weight);
        payload.borrow().set_ready(false);
        let priority = spec.priority;
        self.slots.insert(
            key.clone(),
            Slot {
                payload,
                spec,
                state: Connectivity::Idle,
                failing: false,
                counted: (0, 0),
                connected: false,
                left_ready_at: now,
            },
        );
        self.tally(priority, Connectivity::Idle, true);
        self.order.push(key.clone());
        // The base of the ejection cap: every endpoint of the cluster, as Envoy counts hosts.
        self.pool.set_endpoints(self.slots.len());
        self.ring_dirty = true;
        self.dirty = true;
        if self.children.get(&priority).is_some_and(|c| c.started) {
            self.connect(&key);
        }
        self.sync(now);
    }

    /// Removes an endpoint: its ejection slot is freed and outcomes still in flight never eject
    /// it again ([`Pool::remove`]). The adapter closes its connection.
    pub fn remove(&mut self, now: u64, key: &K) {
        let Some(slot) = self.slots.remove(key) else {
            return;
        };
        self.tally(slot.spec.priority, slot.effective(), false);
        let state = slot.payload.borrow();
        state.set_ready(false);
        self.pool.remove(state);
        self.pool.set_endpoints(self.slots.len());
        if let Some(i) = self.order.iter().position(|k| k == key) {
            self.order.remove(i);
        }
        self.ring_dirty = true;
        self.dirty = true;
        self.sync(now);
    }

    /// Replaces what the adapter picks for `key` (a new connection handle); a new picker
    /// follows. Its [`EndpointState`] should stay the same one, so load and ejection carry over.
    pub fn set_payload(&mut self, key: &K, payload: T) {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.payload = payload;
            self.dirty = true;
        }
    }

    /// A new connectivity state for `key`: from its connection, a health check or discovery's
    /// health status. READY makes it pickable; TRANSIENT_FAILURE is sticky until READY.
    pub fn handle_connectivity(&mut self, now: u64, key: &K, state: Connectivity) {
        let Some(slot) = self.slots.get(key) else {
            return;
        };
        if state == Connectivity::Ready && slot.state != Connectivity::Ready {
            // A new connection reports afresh: weighted round robin's blackout starts again
            // (grpc-go clears an endpoint's weight state when its subchannel becomes READY) —
            // unless the new connection's own first report already arrived (its out-of-band
            // stream opens at connect, before this READY is handled).
            slot.payload
                .borrow()
                .reset_load_unless_reported_since(slot.left_ready_at);
        }
        let left_ready = slot.state == Connectivity::Ready && state != Connectivity::Ready;
        if state == Connectivity::Ready && slot.failing {
            // A new connection after a failed one: the old connection's errors (and the failure
            // penalty they left in the estimate) never weigh on it (grpc-go keeps per-transport
            // state; a reconnected subchannel starts fresh).
            slot.payload.borrow().reset_latency();
        }
        let (was, now_effective) = self.update_slot(key, |slot| {
            if left_ready {
                slot.left_ready_at = now;
            }
            slot.state = state;
            match state {
                Connectivity::Ready => slot.failing = false,
                Connectivity::TransientFailure => slot.failing = true,
                _ => {}
            }
            slot.payload.borrow().set_ready(state == Connectivity::Ready);
        });
        if now_effective != was || state != Connectivity::Ready {
            self.dirty = true;
        }
        self.sync(now);
    }

    /// Switches the policy; endpoints, connections and their state are kept, the picker is
    /// rebuilt (grpc-go swaps the child policy; pickwise keeps load and ejections).
    pub fn set_policy(&mut self, policy: LbPolicy) {
        if policy == self.config.policy {
            return;
        }
        let to_wrr = matches!(policy, LbPolicy::WeightedRoundRobin(_))
            && !matches!(self.config.policy, LbPolicy::WeightedRoundRobin(_));
        if to_wrr {
            // A new weighted_round_robin starts with no weights (gRPC builds a fresh policy):
            // reports recorded under the previous policy wait out the blackout again.
            for slot in self.slots.values() {
                slot.payload.borrow().reset_load();
            }
        }
        self.config.policy = policy;
        // A new Prequal configuration starts with an empty pool (sizes and budgets changed).
        self.probes = probe_pool(&policy);
        // Weighted round robin's first weights at the next `handle_timeout` (due at once).
        self.next_weight_update = matches!(policy, LbPolicy::WeightedRoundRobin(_)).then_some(0);
        self.apply_policy_to_pool();
        for slot in self.slots.values() {
            slot.payload
                .borrow()
                .set_weight(effective_weight(&self.config, &slot.spec));
        }
        self.ring_dirty = true;
        self.dirty = true;
    }

    /// Runs what is due at `now`: outlier upkeep ([`Pool::sweep`]: ejection expiry, multiplier
    /// decay, stamp re-basing), priority failover timers, closing of stopped priorities, and for
    /// `weighted_round_robin` the weight update period (a new picker with the weights as of now).
    pub fn handle_timeout(&mut self, now: u64) {
        if let LbPolicy::WeightedRoundRobin(wrr) = self.config.policy {
            if self.next_weight_update.is_none_or(|t| t <= now) {
                // The picker carries the weights as of its build: a new one each period.
                self.next_weight_update = Some(now.saturating_add(wrr.update_period_ns()));
                self.dirty = true;
            }
        }
        if self.next_sweep.is_none_or(|t| t <= now) {
            self.pool
                .sweep(now, self.slots.values().map(|s| s.payload.borrow()));
            self.next_sweep = Some(now.saturating_add(self.config.sweep_ns.max(1)));
            self.mark_ejected_priorities(now);
            let ejected = self.pool.ejected();
            if ejected != self.ejected_at_sweep {
                // Bounded-load shares are over available endpoints: refresh them.
                self.ejected_at_sweep = ejected;
                self.dirty = true;
            }
        }
        let outlier = self.pool.config().outlier;
        if outlier.success_rate.is_some() || outlier.failure_percentage.is_some() {
            let interval = u64::from(outlier.interval_ms.max(1)) * 1_000_000;
            match self.next_detection {
                None => {
                    self.count_interval();
                    self.next_detection = Some(now.saturating_add(interval));
                }
                Some(t) if t <= now => {
                    self.detect_outliers(now);
                    self.next_detection = Some(now.saturating_add(interval));
                }
                Some(_) => {}
            }
        }
        let mut changed = false;
        for child in self.children.values_mut() {
            if child.init_deadline.is_some_and(|t| t <= now) {
                child.init_deadline = None;
                changed = true;
            }
        }
        if changed {
            self.sync(now);
        }
        let retiring: Vec<u32> = self
            .children
            .iter()
            .filter(|(_, c)| c.retire_at.is_some_and(|t| t <= now))
            .map(|(p, _)| *p)
            .collect();
        for p in retiring {
            if let Some(c) = self.children.get_mut(&p) {
                c.retire_at = None;
            }
            let keys: Vec<K> = self
                .order
                .iter()
                .filter(|k| {
                    self.slots
                        .get(*k)
                        .is_some_and(|s| s.spec.priority == p && s.connected)
                })
                .cloned()
                .collect();
            for key in keys {
                self.update_slot(&key, |slot| {
                    slot.connected = false;
                    slot.state = Connectivity::Idle;
                    slot.failing = false;
                    slot.payload.borrow().set_ready(false);
                });
                self.events.push_back(Event::Disconnect(key));
            }
        }
    }

    // ===== outputs =====

    /// The next time [`handle_timeout`](Self::handle_timeout) has work (`None`: call it once to
    /// start the sweep clock).
    pub fn poll_timeout(&self) -> Option<u64> {
        let timers = self
            .children
            .values()
            .flat_map(|c| [c.init_deadline, c.retire_at])
            .flatten();
        timers
            .chain(self.next_sweep)
            .chain(self.next_detection)
            .chain(self.next_weight_update)
            .min()
    }

    /// The next thing the adapter must do for an endpoint.
    pub fn poll_event(&mut self) -> Option<Event<K>> {
        self.events.pop_front()
    }

    /// A new picker if anything changed since the last one (membership, readiness, payloads,
    /// policy, priority in use). `seed` randomises where round robin starts.
    pub fn poll_picker(&mut self, now: u64, seed: u64) -> Option<Prepared<T>> {
        if !core::mem::take(&mut self.dirty) {
            return None;
        }
        Some(self.build(now, seed))
    }

    /// A picker for the current state, whether or not anything changed.
    pub fn picker(&mut self, now: u64, seed: u64) -> Prepared<T> {
        self.dirty = false;
        self.build(now, seed)
    }

    // ===== internals =====

    /// Each endpoint's calls since the last interval, `(successes, failures)`; starts a new one.
    fn count_interval(&mut self) -> Vec<(K, u64, u64)> {
        let mut out = Vec::with_capacity(self.slots.len());
        for (k, slot) in &mut self.slots {
            let e = slot.payload.borrow();
            let now = (e.successes(), e.failures() as u32);
            let ok = now.0.wrapping_sub(slot.counted.0);
            let failed = now.1.wrapping_sub(slot.counted.1);
            slot.counted = now;
            out.push((k.clone(), u64::from(ok), u64::from(failed)));
        }
        out
    }

    /// gRFC A50's interval: success-rate, then failure-percentage ejection, over the calls each
    /// endpoint completed in the interval. Envoy's and gRPC's algorithms as A50 specifies them.
    fn detect_outliers(&mut self, now: u64) {
        let counts = self.count_interval();
        let cfg = self.pool.config().outlier;
        let mut eject: Vec<K> = Vec::new();
        if let Some(sr) = cfg.success_rate {
            let eligible: Vec<(&K, f64)> = counts
                .iter()
                .filter(|(_, ok, failed)| ok + failed >= u64::from(sr.request_volume.max(1)))
                .map(|(k, ok, failed)| (k, *ok as f64 / (ok + failed) as f64 * 100.0))
                .collect();
            if eligible.len() >= sr.minimum_hosts as usize && !eligible.is_empty() {
                let n = eligible.len() as f64;
                let mean = eligible.iter().map(|(_, r)| r).sum::<f64>() / n;
                let var = eligible.iter().map(|(_, r)| (r - mean) * (r - mean)).sum::<f64>() / n;
                let threshold =
                    mean - crate::math::sqrt(var as f32) as f64 * f64::from(sr.stdev_factor) / 1000.0;
                for (k, rate) in eligible {
                    if rate < threshold && self.enforced(sr.enforcement_percentage) {
                        eject.push(k.clone());
                    }
                }
            }
        }
        if let Some(fp) = cfg.failure_percentage {
            let eligible: Vec<&(K, u64, u64)> = counts
                .iter()
                .filter(|(_, ok, failed)| ok + failed >= u64::from(fp.request_volume.max(1)))
                .collect();
            if eligible.len() >= fp.minimum_hosts as usize {
                for (k, ok, failed) in eligible {
                    let pct = *failed as f64 * 100.0 / (ok + failed) as f64;
                    if pct > f64::from(fp.threshold) && self.enforced(fp.enforcement_percentage) {
                        eject.push(k.clone());
                    }
                }
            }
        }
        for k in eject {
            if let Some(slot) = self.slots.get(&k) {
                if self.pool.eject_outlier(slot.payload.borrow(), now) {
                    self.dirty = true;
                }
            }
        }
    }

    /// A draw: true with `percent`% probability.
    fn enforced(&mut self, percent: u8) -> bool {
        (self.rng.next_u64() % 100) < u64::from(percent.min(100))
    }

    fn effective_weight(&self, spec: &EndpointSpec) -> u32 {
        effective_weight(&self.config, spec)
    }

    fn apply_policy_to_pool(&self) {
        match self.config.policy {
            LbPolicy::P2c(cost) => self.pool.set_policy(cost),
            LbPolicy::Prequal(c) => self.pool.set_policy(c.fallback),
            _ => {}
        }
        self.pool.set_track_total(matches!(
            self.config.policy,
            LbPolicy::RingHash {
                load: HashPolicy::Bounded { .. },
                ..
            }
        ));
    }

    fn connect(&mut self, key: &K) {
        if self.slots.get(key).is_some_and(|s| !s.connected) {
            self.update_slot(key, |slot| {
                slot.connected = true;
                if slot.state == Connectivity::Idle {
                    slot.state = Connectivity::Connecting;
                }
            });
            self.events.push_back(Event::Connect(key.clone()));
        }
    }

    /// Asks every endpoint of priority `p` not yet connected to connect (its child started).
    fn connect_priority(&mut self, p: u32) {
        let pending: Vec<K> = self
            .order
            .iter()
            .filter(|k| {
                self.slots
                    .get(*k)
                    .is_some_and(|s| !s.connected && s.spec.priority == p)
            })
            .cloned()
            .collect();
        for k in pending {
            self.connect(&k);
        }
    }

    /// Adds (`true`) or removes one endpoint in `state` to priority `p`'s counts; a child exists
    /// exactly while it has endpoints.
    fn tally(&mut self, p: u32, state: Connectivity, add: bool) {
        let child = self.children.entry(p).or_default();
        let c = &mut child.counts[tree::slot_index(state)];
        *c = if add {
            c.saturating_add(1)
        } else {
            c.saturating_sub(1)
        };
        if child.members() == 0 {
            self.children.remove(&p);
        }
    }

    /// Changes a slot and keeps the counts in step; returns its effective state before and after.
    fn update_slot(&mut self, key: &K, f: impl FnOnce(&mut Slot<T>)) -> (Connectivity, Connectivity) {
        let Some(slot) = self.slots.get_mut(key) else {
            return (Connectivity::Idle, Connectivity::Idle);
        };
        let (p0, e0) = (slot.spec.priority, slot.effective());
        f(slot);
        let (p1, e1) = (slot.spec.priority, slot.effective());
        if (p0, e0) != (p1, e1) {
            self.tally(p1, e1, true);
            self.tally(p0, e0, false);
        }
        (e0, e1)
    }

    fn child_state(&self, priority: u32) -> Connectivity {
        let ring_hash = matches!(self.config.policy, LbPolicy::RingHash { .. });
        match self.children.get(&priority) {
            // gRPC's outlier detection reports an ejected endpoint TRANSIENT_FAILURE to the
            // priority policy: a priority whose READY endpoints are all ejected fails over.
            Some(c) if c.all_ejected => Connectivity::TransientFailure,
            Some(c) => c.aggregate(ring_hash),
            None => Connectivity::TransientFailure,
        }
    }

    /// At each sweep: which started priorities have every READY endpoint ejected (O(n) once a
    /// sweep period, not per event). A change re-runs the priority choice.
    fn mark_ejected_priorities(&mut self, now: u64) {
        let mut tally: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
        for slot in self.slots.values() {
            if slot.state == Connectivity::Ready {
                let t = tally.entry(slot.spec.priority).or_default();
                t.0 += 1;
                t.1 += u32::from(slot.payload.borrow().is_ejected(now));
            }
        }
        let mut changed = false;
        for (p, child) in &mut self.children {
            let all = tally
                .get(p)
                .is_some_and(|(ready, ejected)| *ready > 0 && ready == ejected);
            if child.all_ejected != all {
                child.all_ejected = all;
                changed = true;
            }
        }
        if changed {
            self.dirty = true;
            self.sync(now);
        }
    }

    /// grpc-go `syncPriority`: observe each started child's state, then choose the one serving.
    fn sync(&mut self, now: u64) {
        let (failover, retention) = (self.config.failover_ns, self.config.retention_ns);
        // Each round starts at most one child; a started child's state is then observed again.
        for _ in 0..=self.children.len() {
            let priorities: Vec<u32> = self.children.keys().copied().collect();
            for &p in &priorities {
                let state = self.child_state(p);
                if let Some(c) = self.children.get_mut(&p) {
                    if c.started && c.state != state {
                        c.observe(state, now, failover);
                    }
                }
            }
            let last = priorities.last().copied();
            let mut chosen = None;
            let mut started_one = false;
            for &p in &priorities {
                let Some(c) = self.children.get_mut(&p) else {
                    continue;
                };
                if !c.started {
                    c.start(now, failover);
                    chosen = Some(p);
                    started_one = true;
                    break;
                }
                if c.serves(Some(p) == last) {
                    chosen = Some(p);
                    break;
                }
            }
            if let Some(p) = chosen {
                use core::ops::Bound::{Excluded, Unbounded};
                for (_, c) in self.children.range_mut((Excluded(p), Unbounded)) {
                    if c.started {
                        c.stop(now, retention);
                    }
                }
                if started_one {
                    // Its endpoints connect now, so the next round observes them CONNECTING
                    // (not IDLE, which would clear the failover timer just started).
                    self.connect_priority(p);
                }
            }
            if chosen != self.in_use {
                self.in_use = chosen;
                self.ring_dirty = true;
                self.dirty = true;
            }
            if !started_one {
                break;
            }
        }
    }

    fn build(&mut self, now: u64, seed: u64) -> Prepared<T> {
        let active = self.in_use;
        let keys: Vec<&K> = self
            .order
            .iter()
            .filter(|k| {
                self.slots
                    .get(*k)
                    .is_some_and(|s| Some(s.spec.priority) == active)
            })
            .collect();
        let slots: Vec<&Slot<T>> = keys.iter().filter_map(|k| self.slots.get(*k)).collect();
        let hashing = matches!(
            self.config.policy,
            LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }
        );
        if self.ring_dirty {
            self.ring_dirty = false;
            self.ring = None;
            self.maglev = None;
            if hashing && !slots.is_empty() {
                // Two endpoints with one ring key (a shared A76 hash key, or a hash key equal to
                // another's address) would fail the build: gRPC builds the ring anyway. The first
                // keeps the exact key (its points match gRPC's), a later one gets its own points
                // under a suffixed key instead of turning ring hash off for every request.
                let mut seen = alloc::collections::BTreeSet::new();
                let owned: Vec<alloc::vec::Vec<u8>> = keys
                    .iter()
                    .zip(&slots)
                    .map(|(k, s)| {
                        let mut key = ring_key(*k, s).to_vec();
                        // Suffixed with the endpoint's own key (stable across membership
                        // changes), again until unique.
                        while !seen.insert(key.clone()) {
                            key.push(b'#');
                            key.extend_from_slice(k.as_ref());
                        }
                        key
                    })
                    .collect();
                let list: Vec<(&[u8], u32)> = owned
                    .iter()
                    .zip(&slots)
                    .map(|(k, s)| (k.as_slice(), s.payload.borrow().weight()))
                    .collect();
                (self.ring, self.maglev) = build_ring(&self.config.policy, &list);
            }
        }
        prepared::build(prepared::Inputs {
            policy: self.config.policy,
            owner_connecting: self.config.owner_connecting,
            pool: self.pool.clone(),
            slots: &slots,
            all: self.iter().map(|(_, t)| t.clone()).collect(),
            ring: self.ring.clone(),
            maglev: self.maglev.clone(),
            priority: active,
            probes: self.probes.clone(),
            state: active.map_or(Connectivity::TransientFailure, |p| self.child_state(p)),
            now,
            seed,
        })
    }
}

/// A probe pool for a Prequal policy.
fn probe_pool(policy: &LbPolicy) -> Option<Arc<ProbePool>> {
    match policy {
        LbPolicy::Prequal(c) => Some(Arc::new(ProbePool::new(*c))),
        _ => None,
    }
}

/// The ring or Maglev table of a hashing policy over `list` (key, weight). A build error (a ring
/// size the endpoints cannot fill, a non-prime table) leaves none: picks fall back to P2C over
/// the ready endpoints, as they do without a key.
fn build_ring(policy: &LbPolicy, list: &[(&[u8], u32)]) -> (Option<Arc<Ring>>, Option<Arc<Maglev>>) {
    match policy {
        LbPolicy::RingHash { ring, .. } => (Ring::build(list, ring).ok().map(Arc::new), None),
        LbPolicy::Maglev { table_size, .. } => (None, Maglev::build(list, *table_size).ok().map(Arc::new)),
        _ => (None, None),
    }
}

/// The ring key: gRFC A76's hash key, else the endpoint's key (its address, `ip:port`, as Envoy
/// and gRPC hash it).
fn ring_key<'a, K: AsRef<[u8]>, T>(key: &'a K, slot: &'a Slot<T>) -> &'a [u8] {
    slot.spec.hash_key.as_deref().map_or(key.as_ref(), str::as_bytes)
}

/// Endpoint weight × locality weight for hashing policies (gRFC A42); endpoint weight otherwise
/// (localities are weighted by the locality scheduler).
fn effective_weight(config: &BalancerConfig, spec: &EndpointSpec) -> u32 {
    let w = u64::from(spec.weight.max(1));
    match config.policy {
        LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } => {
            (w * u64::from(spec.locality_weight.max(1))).min(u64::from(u32::MAX)) as u32
        }
        _ => w as u32,
    }
}
