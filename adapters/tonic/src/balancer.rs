//! The balancer task (grpc's balancer): owns the endpoints and their connection tasks, applies
//! discovery changes, and publishes an immutable picker [`Snapshot`] whenever membership or
//! readiness changes.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pickwise::{hashing, EndpointState, Pool, Ring};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::config::Config;
use crate::discover::{BoxDiscover, BoxEndpointDiscover, Change, Endpoint};
use crate::error::NoEndpoint;
use crate::subchannel::{self, ConnectivityState, Subchannel};
use crate::BalancedChannel;
use pickwise::LbPolicy;

/// State shared by the balancer task and every request.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) version: watch::Sender<u64>,
    pub(crate) common: Arc<Common>,
    /// Requests to the balancer task from the channel handle (policy changes).
    pub(crate) control: mpsc::UnboundedSender<Control>,
}

/// What the channel handle asks of the balancer task.
#[derive(Debug)]
pub(crate) enum Control {
    /// Switch the balancing policy; connections and in-flight requests are kept.
    SetPolicy(LbPolicy),
}

/// What requests need after the pick (pool, config, clock). Every subchannel holds an `Arc` of it,
/// so an in-flight request reaches it through its endpoint and clones no balancer-wide `Arc`
/// (a refcount every core would write on every request).
#[derive(Debug)]
pub(crate) struct Common {
    pub(crate) pool: Pool,
    pub(crate) config: Arc<Config>,
    epoch: Instant,
    /// Round robin's position, shared by every snapshot.
    pub(crate) cursor: std::sync::atomic::AtomicU32,
}

impl Common {
    /// Monotonic nanoseconds since the balancer started: the core's `now`.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// An endpoint as a snapshot sees it.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) sub: Arc<Subchannel>,
    pub(crate) channel: Option<Channel>,
    /// The connection generation `channel` belongs to.
    pub(crate) generation: u64,
}

impl Borrow<EndpointState> for Member {
    fn borrow(&self) -> &EndpointState {
        &self.sub.core
    }
}

/// An immutable picker: what requests read, swapped atomically.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// All endpoints; ring owners index this.
    pub(crate) members: Vec<Member>,
    /// Endpoints in `Ready` with a channel, for P2C.
    pub(crate) ready: Vec<Member>,
    pub(crate) ring: Option<Arc<Ring>>,
    /// The policy this picker runs.
    pub(crate) policy: LbPolicy,
    /// Round robin over unequal weights (xDS localities): the cycle over the ready endpoints.
    pub(crate) rr_cycle: Option<pickwise::WeightedCycle>,
    /// The Maglev table (Maglev policy); owners index `members`.
    pub(crate) maglev: Option<Arc<pickwise::Maglev>>,
    /// Weight of the ready endpoints: the base of bounded-load shares (Envoy normalises over the
    /// healthy hosts).
    pub(crate) total_weight: u64,
    /// Discovery has produced at least one update.
    pub(crate) resolved: bool,
    pub(crate) connecting: usize,
    pub(crate) failing: usize,
    pub(crate) last_error: Option<String>,
    pub(crate) discovery_error: Option<String>,
    /// The balancer has stopped: waiting requests fail with [`NoEndpoint::Shutdown`].
    pub(crate) shutdown: bool,
}

/// What a request does when the snapshot yields no endpoint.
pub(crate) enum Unpicked {
    /// Something may become ready: wait for the next snapshot.
    Wait,
    /// Nothing will: fail now.
    Fail(NoEndpoint),
}

impl Snapshot {
    /// Classifies a failed pick (grpc's rules: queue while connecting, fail fast otherwise). Only
    /// reached with no ready endpoint: when every ready one is ejected, picks use panic routing.
    pub(crate) fn unpicked(&self) -> Unpicked {
        if self.shutdown {
            return Unpicked::Fail(NoEndpoint::Shutdown);
        }
        if !self.resolved {
            return match &self.discovery_error {
                Some(e) => Unpicked::Fail(NoEndpoint::Discovery(e.clone())),
                None => Unpicked::Wait,
            };
        }
        if self.members.is_empty() {
            return Unpicked::Fail(NoEndpoint::EmptySet);
        }
        // Sticky TRANSIENT_FAILURE: endpoints reconnecting after a failure count as failing, so
        // when all have failed, fail-fast requests fail now rather than wait for the retries.
        if self.connecting > 0 {
            return Unpicked::Wait;
        }
        Unpicked::Fail(NoEndpoint::AllFailing {
            endpoints: self.members.len(),
            last_error: self.last_error.clone(),
        })
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "{} endpoints: {} ready, {} connecting, {} failing",
            self.members.len(),
            self.ready.len(),
            self.connecting,
            self.failing
        )
    }
}

/// One endpoint's statistics, from [`BalancedChannel::stats`].
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointStats {
    /// The address (discovery key).
    pub address: String,
    /// Connectivity state.
    pub state: ConnectivityState,
    /// Weight.
    pub weight: u32,
    /// Requests in flight.
    pub in_flight: u32,
    /// Latency estimate (the cost policy's EWMA), decayed to now; `None` before the first sample
    /// and under least-request (which keeps none).
    pub latency: Option<Duration>,
    /// Requests started.
    pub picks: u64,
    /// Requests that failed.
    pub failures: u64,
    /// Remaining ejection time, if ejected.
    pub ejected_for: Option<Duration>,
}

impl Shared {
    pub(crate) fn stats(&self) -> Vec<EndpointStats> {
        let now = self.common.now();
        let snap = self.snapshot.load();
        snap.members
            .iter()
            .map(|m| {
                let e = &m.sub.core;
                EndpointStats {
                    address: m.sub.addr.clone(),
                    state: m.sub.state(),
                    weight: e.weight(),
                    in_flight: e.in_flight(),
                    latency: e
                        .latency_ns()
                        .map(|_| Duration::from_nanos(self.common.pool.estimate(e, now) as u64)),
                    picks: e.picks(),
                    failures: e.failures(),
                    ejected_for: e
                        .ejected_for_ms(now)
                        .map(|ms| Duration::from_millis(u64::from(ms))),
                }
            })
            .collect()
    }
}

struct Entry {
    sub: Arc<Subchannel>,
    task: JoinHandle<()>,
}

/// Discovery's priority (0 = highest) and ring key for an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Attrs {
    priority: u32,
    hash_key: Option<Arc<str>>,
}

/// The task's own state.
struct Balancer {
    shared: Arc<Shared>,
    /// Insertion order = ring order for Envoy mode.
    order: Vec<String>,
    entries: HashMap<String, Entry>,
    ring: Option<Arc<Ring>>,
    maglev: Option<Arc<pickwise::Maglev>>,
    ring_dirty: bool,
    resolved: bool,
    discovery_error: Option<String>,
    events: mpsc::UnboundedSender<u64>,
    next_id: u64,
    /// With subsetting: everything discovery reported (address -> weight), the peer ids, and
    /// whether the subset must be recomputed.
    discovered: BTreeMap<String, u32>,
    peers: BTreeSet<String>,
    subset_dirty: bool,
    /// The policy in force (the builder's, until [`Control::SetPolicy`]).
    policy: LbPolicy,
    /// Priority and ring key by address, as discovery last said (subset members included).
    attrs: HashMap<String, Attrs>,
    /// The priority the last picker served (`None`: every endpoint, nothing usable).
    active_priority: Option<u32>,
}

/// Starts the balancer task and returns the user's handle.
pub(crate) fn spawn(
    config: Config,
    discovery: BoxEndpointDiscover,
    peers: Option<BoxDiscover>,
) -> BalancedChannel {
    let (version, _) = watch::channel(0u64);
    let common = Arc::new(Common {
        pool: Pool::new(config.pool),
        config: Arc::new(config),
        epoch: Instant::now(),
        cursor: std::sync::atomic::AtomicU32::new(0),
    });
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let policy = common.config.policy;
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(Snapshot {
            policy,
            ..Snapshot::default()
        }),
        version,
        common,
        control: control_tx,
    });
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let balancer = Balancer {
        shared: shared.clone(),
        order: Vec::new(),
        entries: HashMap::new(),
        ring: None,
        maglev: None,
        ring_dirty: false,
        resolved: false,
        discovery_error: None,
        events: events_tx,
        next_id: 0,
        discovered: BTreeMap::new(),
        peers: BTreeSet::new(),
        subset_dirty: false,
        policy,
        attrs: HashMap::new(),
        active_priority: None,
    };
    tokio::spawn(balancer.run(discovery, peers, events_rx, control_rx, shutdown_rx));
    BalancedChannel::new(shared, shutdown_tx)
}

impl Balancer {
    async fn run(
        mut self,
        mut discovery: BoxEndpointDiscover,
        peers: Option<BoxDiscover>,
        mut events: mpsc::UnboundedReceiver<u64>,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut shutdown: oneshot::Receiver<()>,
    ) {
        let mut discovery_open = true;
        let mut peers_open = peers.is_some();
        let mut peers = peers.unwrap_or_else(|| Box::pin(tokio_stream::empty()));
        let mut sweep = tokio::time::interval(self.shared.common.config.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                item = discovery.next(), if discovery_open => {
                    discovery_open = self.on_discovery(item);
                    // Apply everything already queued before publishing once; an error or the
                    // end of the stream in the batch is handled like any other item.
                    while discovery_open {
                        match futures_now(&mut discovery) {
                            Some(item) => discovery_open = self.on_discovery(item),
                            None => break,
                        }
                    }
                }
                item = peers.next(), if peers_open => {
                    peers_open = self.on_peer(item);
                    while peers_open {
                        match futures_now(&mut peers) {
                            Some(item) => peers_open = self.on_peer(item),
                            None => break,
                        }
                    }
                }
                Some(Control::SetPolicy(policy)) = control.recv() => {
                    self.set_policy(policy);
                }
                Some(_) = events.recv() => {
                    while events.try_recv().is_ok() {}
                    // Connectivity changed: a subset may need to grow past failing endpoints.
                    self.subset_dirty |= self.shared.common.config.subset.is_some();
                }
                _ = sweep.tick() => {
                    let snap = self.shared.snapshot.load();
                    self.shared.common.pool.sweep(self.shared.common.now(), snap.members.iter().map(|m| &m.sub.core));
                    continue;
                }
            }
            if std::mem::take(&mut self.subset_dirty) {
                self.reconcile_subset();
            }
            self.publish();
        }
        for (_, e) in self.entries.drain() {
            e.task.abort();
        }
        self.shared.snapshot.store(Arc::new(Snapshot {
            resolved: true,
            shutdown: true,
            ..Snapshot::default()
        }));
        // Wake requests waiting for a picker: they fail with `NoEndpoint::Shutdown`.
        self.shared.version.send_modify(|v| *v += 1);
    }

    /// Handles one discovery item; returns whether the stream is still open.
    fn on_discovery(&mut self, item: Option<Result<Change<String, Endpoint>, crate::BoxError>>) -> bool {
        match item {
            Some(Ok(change)) => self.apply(change),
            Some(Err(e)) => {
                let msg = subchannel::error_chain(&*e);
                tracing::warn!(error = %msg, endpoints = self.order.len(), "discovery error; keeping the last endpoint set");
                if !self.resolved {
                    self.discovery_error = Some(msg);
                }
            }
            None => {
                tracing::warn!(
                    endpoints = self.order.len(),
                    "discovery stream ended; keeping the last endpoint set"
                );
                if !self.resolved {
                    // grpc-go fails RPCs with the resolver's error when there was no update yet.
                    self.discovery_error = Some(
                        self.discovery_error
                            .take()
                            .unwrap_or_else(|| "the discovery stream ended before its first update".into()),
                    );
                }
                return false;
            }
        }
        true
    }

    fn apply(&mut self, change: Change<String, Endpoint>) {
        self.resolved = true;
        self.discovery_error = None;
        let change = match change {
            Change::Insert(addr, e) => {
                let attrs = Attrs {
                    priority: e.priority,
                    hash_key: e.hash_key,
                };
                let old = self.attrs.insert(addr.clone(), attrs.clone());
                // A connected endpoint that moved priority or ring key changes the picker.
                self.ring_dirty |= self.entries.contains_key(&addr) && old.as_ref() != Some(&attrs);
                Change::Insert(addr, e.weight)
            }
            Change::Remove(addr) => {
                self.attrs.remove(&addr);
                Change::Remove(addr)
            }
        };
        if self.shared.common.config.subset.is_some() {
            // Subsetting: remember everything; the subset decides what to connect to.
            match change {
                Change::Insert(addr, weight) => self.discovered.insert(addr, weight),
                Change::Remove(addr) => self.discovered.remove(&addr),
            };
            self.subset_dirty = true;
            return;
        }
        match change {
            Change::Insert(addr, weight) => self.connect(addr, weight),
            Change::Remove(addr) => self.disconnect(&addr),
        }
    }

    /// Keeps an endpoint (connecting if new); a known endpoint only takes the new weight.
    fn connect(&mut self, addr: String, weight: u32) {
        if let Some(e) = self.entries.get(&addr) {
            // Same endpoint again: no new connection; only a weight change matters.
            if e.sub.core.weight() != weight.max(1) {
                e.sub.core.set_weight(weight);
                self.ring_dirty = true;
            }
            return;
        }
        let sub = Arc::new(Subchannel::new(addr.clone(), weight, self.shared.common.clone()));
        let id = self.next_id;
        self.next_id += 1;
        let task = tokio::spawn(subchannel::run(sub.clone(), id, self.events.clone()));
        self.entries.insert(addr.clone(), Entry { sub, task });
        self.order.push(addr);
        self.ring_dirty = true;
    }

    /// Drops an endpoint: its connection task stops and its ejection slot is freed.
    fn disconnect(&mut self, addr: &str) {
        if let Some(e) = self.entries.remove(addr) {
            e.task.abort();
            e.sub.core.set_ready(false);
            self.shared.common.pool.remove(&e.sub.core);
            self.order.retain(|a| a != addr);
            self.ring_dirty = true;
        }
    }

    /// Switches the policy (grpc-go swaps the child balancer; pickwise keeps every connection and
    /// every endpoint's state, and rebuilds only the picker: ring or table, cost policy).
    fn set_policy(&mut self, policy: LbPolicy) {
        let pool = &self.shared.common.pool;
        if let LbPolicy::P2c(cost) = policy {
            pool.set_policy(cost);
        }
        pool.set_track_total(matches!(
            policy,
            LbPolicy::RingHash {
                load: pickwise::HashPolicy::Bounded { .. },
                ..
            }
        ));
        tracing::info!(from = self.policy.name(), to = policy.name(), "policy change");
        self.policy = policy;
        self.ring_dirty = true;
    }

    /// Handles one peer-discovery item (subsetting identity); returns whether the stream is open.
    fn on_peer(&mut self, item: Option<Result<Change<String, u32>, crate::BoxError>>) -> bool {
        match item {
            Some(Ok(Change::Insert(id, _))) => {
                self.subset_dirty |= self.peers.insert(id);
            }
            Some(Ok(Change::Remove(id))) => {
                self.subset_dirty |= self.peers.remove(&id);
            }
            Some(Err(e)) => {
                tracing::warn!(error = %subchannel::error_chain(&*e), "peer discovery error; keeping the last peer set");
            }
            None => {
                tracing::warn!(
                    peers = self.peers.len(),
                    "peer discovery ended; keeping the last peer set"
                );
                return false;
            }
        }
        true
    }

    /// Recomputes the subset and connects or disconnects only the endpoints that changed.
    fn reconcile_subset(&mut self) {
        let Some(cfg) = self.shared.common.config.subset.clone() else {
            return;
        };
        let client = cfg.client(&self.peers);
        // Known to fail (sticky TRANSIENT_FAILURE): the subset grows past these.
        let failing = |addr: &str| self.entries.get(addr).is_some_and(|e| e.sub.is_failing());
        let desired = cfg.desired(client, &self.discovered, failing);
        let keep: HashMap<&str, u32> = desired.iter().map(|(a, w)| (a.as_str(), *w)).collect();
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|a| !keep.contains_key(a.as_str()))
            .cloned()
            .collect();
        for addr in gone {
            self.disconnect(&addr);
        }
        for (addr, weight) in desired {
            self.connect(addr, weight);
        }
        tracing::debug!(
            ?client,
            endpoints = self.entries.len(),
            discovered = self.discovered.len(),
            "subset"
        );
    }

    /// The priority requests go to (gRFC A27's priority policy as grpc-go runs it): the first
    /// with a ready endpoint, or with one still connecting for the first time (requests wait for
    /// it rather than fail over at once; a connect failure or the connect timeout moves on).
    /// `None` when none qualifies: every endpoint of every priority is failing.
    fn active_priority(&self) -> Option<u32> {
        self.entries
            .iter()
            .filter(|(_, e)| {
                let state = e.sub.state();
                state == ConnectivityState::Ready
                    || (matches!(state, ConnectivityState::Connecting | ConnectivityState::Idle)
                        && !e.sub.is_failing())
            })
            .map(|(addr, _)| self.priority(addr))
            .min()
    }

    fn priority(&self, addr: &str) -> u32 {
        self.attrs.get(addr).map_or(0, |a| a.priority)
    }

    fn publish(&mut self) {
        // One priority serves; with a single priority (no xDS) this is every endpoint.
        let active = self.active_priority();
        if active != self.active_priority {
            tracing::info!(from = ?self.active_priority, to = ?active, "priority change");
            self.active_priority = active;
            self.ring_dirty = true;
        }
        let members: Vec<Member> = self
            .order
            .iter()
            .filter(|a| active.is_none_or(|p| self.priority(a) == p))
            .filter_map(|a| self.entries.get(a))
            .map(|e| Member {
                generation: e.sub.generation(),
                channel: e.sub.channel(),
                sub: e.sub.clone(),
            })
            .collect();
        self.shared.common.pool.set_endpoints(members.len());
        if self.ring_dirty {
            self.ring_dirty = false;
            // The ring hashes each endpoint's key: gRFC A76's `hash_key` if set, else the address.
            let list: Vec<(&str, u32)> = members
                .iter()
                .map(|m| {
                    let key = self.attrs.get(&m.sub.addr).and_then(|a| a.hash_key.as_deref());
                    (key.unwrap_or(m.sub.addr.as_str()), m.sub.core.weight())
                })
                .collect();
            self.ring = None;
            self.maglev = None;
            match self.policy {
                pickwise::LbPolicy::RingHash { ring, .. } if !members.is_empty() => {
                    match Ring::build(&list, &ring) {
                        Ok(r) => self.ring = Some(Arc::new(r)),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot build the hash ring; requests fall back to P2C")
                        }
                    }
                }
                pickwise::LbPolicy::Maglev { table_size, .. } if !members.is_empty() => {
                    match pickwise::Maglev::build(&list, table_size) {
                        Ok(t) => self.maglev = Some(Arc::new(t)),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot build the Maglev table; requests fall back to P2C")
                        }
                    }
                }
                _ => {}
            }
        }
        let ready: Vec<Member> = members
            .iter()
            .filter(|m| m.sub.state() == ConnectivityState::Ready && m.channel.is_some())
            .cloned()
            .collect();
        // Sticky TRANSIENT_FAILURE (grpc-go `balancer/base`): an endpoint that failed and is
        // reconnecting still counts as failing in the aggregate.
        let failing_now =
            |m: &Member| m.sub.state() == ConnectivityState::TransientFailure || m.sub.is_failing();
        let connecting = members
            .iter()
            .filter(|m| {
                matches!(
                    m.sub.state(),
                    ConnectivityState::Connecting | ConnectivityState::Idle
                ) && !failing_now(m)
            })
            .count();
        let failing = members
            .iter()
            .filter(|m| m.sub.state() != ConnectivityState::Ready && failing_now(m))
            .count();
        let last_error = members
            .iter()
            .filter(|m| m.sub.state() != ConnectivityState::Ready)
            .find_map(|m| m.sub.last_error());
        let weighted = self.policy == LbPolicy::RoundRobin
            && ready
                .windows(2)
                .any(|w| w[0].sub.core.weight() != w[1].sub.core.weight());
        let rr_cycle = if weighted {
            pickwise::WeightedCycle::new(ready.iter().map(|m| u64::from(m.sub.core.weight())).sum())
        } else {
            None
        };
        let snapshot = Snapshot {
            rr_cycle,
            total_weight: hashing::available_weight(&ready, self.shared.common.now()),
            ring: self.ring.clone(),
            policy: self.policy,
            maglev: self.maglev.clone(),
            ready,
            members,
            resolved: self.resolved,
            connecting,
            failing,
            last_error,
            discovery_error: self.discovery_error.clone(),
            shutdown: false,
        };
        tracing::trace!(state = %snapshot.describe(), "new picker");
        self.shared.snapshot.store(Arc::new(snapshot));
        self.shared.version.send_modify(|v| *v += 1);
    }
}

/// Polls a stream once without waiting (for coalescing queued discovery items).
fn futures_now<S: tokio_stream::Stream + Unpin>(s: &mut S) -> Option<Option<S::Item>> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(s).poll_next(&mut cx) {
        std::task::Poll::Ready(item) => Some(item),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    //! The aggregate-state rules of grpc-go's `balancer/base` (`ConnectivityStateEvaluator`) as
    //! the picker applies them: any READY serves; else any endpoint connecting for the first time
    //! (not sticky-failing) makes requests wait; else they fail.
    use super::*;

    fn member() -> Member {
        let config = crate::Builder::new().into_config();
        let common = Arc::new(Common {
            pool: Pool::new(config.pool),
            config: Arc::new(config),
            epoch: Instant::now(),
            cursor: std::sync::atomic::AtomicU32::new(0),
        });
        Member {
            sub: Arc::new(Subchannel::new("127.0.0.1:1".into(), 1, common)),
            channel: None,
            generation: 0,
        }
    }

    fn snap(members: usize, connecting: usize, failing: usize) -> Snapshot {
        Snapshot {
            members: (0..members).map(|_| member()).collect(),
            resolved: true,
            connecting,
            failing,
            ..Snapshot::default()
        }
    }

    #[tokio::test]
    async fn aggregate_state() {
        assert!(matches!(snap(3, 1, 2).unpicked(), Unpicked::Wait));
        assert!(matches!(
            snap(3, 0, 3).unpicked(),
            Unpicked::Fail(NoEndpoint::AllFailing { endpoints: 3, .. })
        ));
        assert!(matches!(
            snap(0, 0, 0).unpicked(),
            Unpicked::Fail(NoEndpoint::EmptySet)
        ));
        let unresolved = Snapshot::default();
        assert!(matches!(unresolved.unpicked(), Unpicked::Wait));
        let failed = Snapshot {
            discovery_error: Some("boom".into()),
            ..Snapshot::default()
        };
        assert!(matches!(
            failed.unpicked(),
            Unpicked::Fail(NoEndpoint::Discovery(_))
        ));
        let down = Snapshot {
            shutdown: true,
            ..snap(2, 2, 0)
        };
        assert!(matches!(down.unpicked(), Unpicked::Fail(NoEndpoint::Shutdown)));
    }
}
