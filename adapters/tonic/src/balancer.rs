//! The balancer task (grpc's balancer): owns the endpoints and their connection tasks, applies
//! discovery changes, and publishes an immutable picker [`Snapshot`] whenever membership or
//! readiness changes.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pickwise::balancer::{
    Balancer as CoreBalancer, BalancerConfig, Connectivity, EndpointSpec, Event as CoreEvent, Prepared,
    Unpicked as CoreUnpicked,
};
use pickwise::{EndpointState, Pool};
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
    pub(crate) pool: Arc<Pool>,
    pub(crate) config: Arc<Config>,
    pub(crate) epoch: Instant,
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

/// An immutable picker: what requests read, swapped atomically. The decision is the core's
/// [`Prepared`] picker; this adds what only the channel knows (discovery, shutdown, errors).
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// The core's picker (`None` before the first one and after shutdown).
    pub(crate) picker: Option<Prepared<Member>>,
    /// The policy this picker runs.
    pub(crate) policy: LbPolicy,
    /// Discovery has produced at least one update.
    pub(crate) resolved: bool,
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
    pub(crate) fn unpicked(&self, core: CoreUnpicked) -> Unpicked {
        if self.shutdown {
            return Unpicked::Fail(NoEndpoint::Shutdown);
        }
        if !self.resolved {
            return match &self.discovery_error {
                Some(e) => Unpicked::Fail(NoEndpoint::Discovery(e.clone())),
                None => Unpicked::Wait,
            };
        }
        let members = self.picker.as_ref().map_or(0, |p| p.all().len());
        if members == 0 {
            return Unpicked::Fail(NoEndpoint::EmptySet);
        }
        // Sticky TRANSIENT_FAILURE: endpoints reconnecting after a failure count as failing, so
        // when all have failed, fail-fast requests fail now rather than wait for the retries.
        match core {
            CoreUnpicked::Wait => Unpicked::Wait,
            CoreUnpicked::Fail => Unpicked::Fail(NoEndpoint::AllFailing {
                endpoints: members,
                last_error: self.last_error.clone(),
            }),
        }
    }

    /// READY endpoints the picker serves from.
    pub(crate) fn ready_count(&self) -> usize {
        self.picker.as_ref().map_or(0, |p| p.ready().len())
    }

    pub(crate) fn describe(&self) -> String {
        let Some(p) = &self.picker else {
            return "no endpoints yet".into();
        };
        let (connecting, failing) = p.counts();
        let priority = match p.priority() {
            Some(n) if p.all().len() != p.members().len() => format!(" (priority {n})"),
            _ => String::new(),
        };
        format!(
            "{} endpoints{priority}: {} ready, {connecting} connecting, {failing} failing",
            p.members().len(),
            p.ready().len(),
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
    /// Weight (within its locality).
    pub weight: u32,
    /// Its priority (0 the highest).
    pub priority: u32,
    /// Its locality's weight (1 without localities).
    pub locality_weight: u32,
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
        let members: &[Member] = snap.picker.as_ref().map_or(&[], |p| p.all());
        members
            .iter()
            .map(|m| {
                let e = &m.sub.core;
                EndpointStats {
                    address: m.sub.addr.clone(),
                    state: m.sub.state(),
                    weight: e.weight(),
                    priority: m.sub.priority.load(std::sync::atomic::Ordering::Relaxed),
                    locality_weight: m.sub.locality_weight.load(std::sync::atomic::Ordering::Relaxed),
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

/// What the task last told the core about an endpoint (to report only changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    state: Connectivity,
    generation: u64,
    channel: bool,
}

/// One endpoint: its subchannel and, once the core asked it to connect, its connection task.
struct Entry {
    sub: Arc<Subchannel>,
    task: Option<JoinHandle<()>>,
    seen: Option<Seen>,
}

/// The task's own state: the core [`CoreBalancer`] decides; this only translates.
struct Balancer {
    shared: Arc<Shared>,
    core: CoreBalancer<String, Member>,
    entries: HashMap<String, Entry>,
    resolved: bool,
    discovery_error: Option<String>,
    events: mpsc::UnboundedSender<u64>,
    next_id: u64,
    /// With subsetting: everything discovery reported (address -> endpoint), the peer ids, and
    /// whether the subset must be recomputed.
    discovered: BTreeMap<String, Endpoint>,
    peers: BTreeSet<String>,
    subset_dirty: bool,
    /// The priority the last picker served.
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
        pool: Arc::new(Pool::new(config.pool)),
        config: Arc::new(config),
        epoch: Instant::now(),
    });
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let policy = common.config.policy;
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(Snapshot {
            policy,
            ..Snapshot::default()
        }),
        version,
        common: common.clone(),
        control: control_tx,
    });
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let mut core_config = BalancerConfig::new(policy);
    core_config.sweep_ns = common.config.sweep_interval.as_nanos().min(u128::from(u64::MAX)) as u64;
    core_config.owner_connecting = common.config.owner_connecting;
    let balancer = Balancer {
        shared: shared.clone(),
        core: CoreBalancer::new(core_config, common.pool.clone()),
        entries: HashMap::new(),
        resolved: false,
        discovery_error: None,
        events: events_tx,
        next_id: 0,
        discovered: BTreeMap::new(),
        peers: BTreeSet::new(),
        subset_dirty: false,
        active_priority: None,
    };
    tokio::spawn(balancer.run(discovery, peers, events_rx, control_rx, shutdown_rx));
    BalancedChannel::new(shared, shutdown_tx)
}

impl Balancer {
    fn now(&self) -> u64 {
        self.shared.common.now()
    }

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
        self.core.handle_timeout(self.now());
        loop {
            // The one timer: whatever the core says is due next (sweep, failover, retention).
            let due = self
                .core
                .poll_timeout()
                .map(|t| self.shared.common.epoch + Duration::from_nanos(t));
            let timer = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
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
                    tracing::info!(from = self.core.config().policy.name(), to = policy.name(), "policy change");
                    self.core.set_policy(policy);
                }
                Some(_) = events.recv() => {
                    while events.try_recv().is_ok() {}
                    // Connectivity changed: a subset may need to grow past failing endpoints.
                    self.subset_dirty |= self.shared.common.config.subset.is_some();
                }
                _ = timer => {
                    self.core.handle_timeout(self.now());
                }
            }
            if std::mem::take(&mut self.subset_dirty) {
                self.reconcile_subset();
            }
            self.observe();
            self.drive();
            self.publish();
        }
        for (_, e) in self.entries.drain() {
            if let Some(t) = e.task {
                t.abort();
            }
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
                tracing::warn!(error = %msg, endpoints = self.entries.len(), "discovery error; keeping the last endpoint set");
                if !self.resolved {
                    self.discovery_error = Some(msg);
                }
            }
            None => {
                tracing::warn!(
                    endpoints = self.entries.len(),
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
        if self.shared.common.config.subset.is_some() {
            // Subsetting: remember everything; the subset decides what to connect to.
            match change {
                Change::Insert(addr, e) => self.discovered.insert(addr, e),
                Change::Remove(addr) => self.discovered.remove(&addr),
            };
            self.subset_dirty = true;
            return;
        }
        match change {
            Change::Insert(addr, e) => self.insert(addr, e),
            Change::Remove(addr) => self.remove(&addr),
        }
    }

    /// Adds an endpoint to the core (it connects when the core says so); a known one only takes
    /// the new weight, priority, locality or key.
    fn insert(&mut self, addr: String, e: Endpoint) {
        let now = self.now();
        let spec = EndpointSpec {
            weight: e.weight,
            priority: e.priority,
            locality: e.locality,
            locality_weight: e.locality_weight,
            hash_key: e.hash_key,
        };
        let member = match self.entries.get(&addr) {
            Some(entry) => {
                entry.sub.describe(e.priority, e.locality_weight);
                member(&entry.sub)
            }
            None => {
                let sub = Arc::new(Subchannel::new(
                    addr.clone(),
                    e.weight,
                    self.shared.common.clone(),
                ));
                sub.describe(e.priority, e.locality_weight);
                let m = member(&sub);
                self.entries.insert(
                    addr.clone(),
                    Entry {
                        sub,
                        task: None,
                        seen: None,
                    },
                );
                m
            }
        };
        self.core.insert(now, addr, spec, member);
    }

    /// Drops an endpoint: its connection task stops and its ejection slot is freed.
    fn remove(&mut self, addr: &str) {
        let now = self.now();
        self.core.remove(now, &addr.to_string());
        if let Some(e) = self.entries.remove(addr) {
            if let Some(t) = e.task {
                t.abort();
            }
        }
    }

    /// Reports connectivity and connection changes of every subchannel to the core.
    fn observe(&mut self) {
        let now = self.now();
        for (addr, entry) in &mut self.entries {
            if entry.task.is_none() {
                continue;
            }
            let sub = &entry.sub;
            let state = match sub.state() {
                ConnectivityState::Ready => Connectivity::Ready,
                ConnectivityState::TransientFailure => Connectivity::TransientFailure,
                // Reconnecting after a failure still counts as failing (sticky).
                _ if sub.is_failing() => Connectivity::TransientFailure,
                ConnectivityState::Connecting => Connectivity::Connecting,
                ConnectivityState::Idle => Connectivity::Idle,
            };
            let seen = Seen {
                state,
                generation: sub.generation(),
                channel: sub.channel().is_some(),
            };
            if entry.seen == Some(seen) {
                continue;
            }
            let changed_connection = entry
                .seen
                .is_none_or(|s| s.generation != seen.generation || s.channel != seen.channel);
            entry.seen = Some(seen);
            if changed_connection {
                self.core.set_payload(addr, member(sub));
            }
            self.core.handle_connectivity(now, addr, state);
            // The subchannel owns readiness of its own connection (a channel exists).
            sub.core.set_ready(state == Connectivity::Ready && seen.channel);
        }
    }

    /// Carries out what the core asked: connect or close endpoints.
    fn drive(&mut self) {
        while let Some(event) = self.core.poll_event() {
            match event {
                CoreEvent::Connect(addr) => {
                    if let Some(e) = self.entries.get_mut(&addr) {
                        if e.task.is_none() {
                            let id = self.next_id;
                            self.next_id += 1;
                            e.task = Some(tokio::spawn(subchannel::run(
                                e.sub.clone(),
                                id,
                                self.events.clone(),
                            )));
                        }
                    }
                }
                CoreEvent::Disconnect(addr) => {
                    if let Some(e) = self.entries.get_mut(&addr) {
                        if let Some(t) = e.task.take() {
                            t.abort();
                        }
                        e.seen = None;
                        e.sub.core.set_ready(false);
                        tracing::debug!(endpoint = %addr, "closed: its priority is no longer used");
                    }
                }
            }
        }
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
        let weights: BTreeMap<String, u32> = self
            .discovered
            .iter()
            .map(|(a, e)| (a.clone(), e.weight))
            .collect();
        let desired = cfg.desired(client, &weights, failing);
        let keep: HashMap<&str, u32> = desired.iter().map(|(a, w)| (a.as_str(), *w)).collect();
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|a| !keep.contains_key(a.as_str()))
            .cloned()
            .collect();
        for addr in gone {
            self.remove(&addr);
        }
        for (addr, _) in desired {
            let e = self.discovered.get(&addr).cloned().unwrap_or_default();
            self.insert(addr, e);
        }
        tracing::debug!(
            ?client,
            endpoints = self.entries.len(),
            discovered = self.discovered.len(),
            "subset"
        );
    }

    fn publish(&mut self) {
        let now = self.now();
        let Some(picker) = self.core.poll_picker(now, fastrand::u64(..)) else {
            return;
        };
        if picker.priority() != self.active_priority {
            tracing::info!(from = ?self.active_priority, to = ?picker.priority(), "priority change");
            self.active_priority = picker.priority();
        }
        let last_error = picker
            .members()
            .iter()
            .filter(|m| m.sub.state() != ConnectivityState::Ready)
            .find_map(|m| m.sub.last_error());
        let snapshot = Snapshot {
            policy: *picker.policy(),
            picker: Some(picker),
            resolved: self.resolved,
            last_error,
            discovery_error: self.discovery_error.clone(),
            shutdown: false,
        };
        tracing::trace!(state = %snapshot.describe(), "new picker");
        self.shared.snapshot.store(Arc::new(snapshot));
        self.shared.version.send_modify(|v| *v += 1);
    }
}

/// A subchannel as pickers see it: its current connection, if any.
fn member(sub: &Arc<Subchannel>) -> Member {
    Member {
        generation: sub.generation(),
        channel: sub.channel(),
        sub: sub.clone(),
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
    //! What only the channel decides (the aggregate-state rules are the core's, tested there):
    //! discovery errors, an empty set, shutdown.
    use super::*;

    #[test]
    fn channel_level_outcomes() {
        let unresolved = Snapshot::default();
        assert!(matches!(unresolved.unpicked(CoreUnpicked::Fail), Unpicked::Wait));
        let failed = Snapshot {
            discovery_error: Some("boom".into()),
            ..Snapshot::default()
        };
        assert!(matches!(
            failed.unpicked(CoreUnpicked::Wait),
            Unpicked::Fail(NoEndpoint::Discovery(_))
        ));
        let empty = Snapshot {
            resolved: true,
            ..Snapshot::default()
        };
        assert!(matches!(
            empty.unpicked(CoreUnpicked::Wait),
            Unpicked::Fail(NoEndpoint::EmptySet)
        ));
        let down = Snapshot {
            shutdown: true,
            ..Snapshot::default()
        };
        assert!(matches!(
            down.unpicked(CoreUnpicked::Wait),
            Unpicked::Fail(NoEndpoint::Shutdown)
        ));
    }
}
