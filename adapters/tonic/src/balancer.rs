//! The balancer task (grpc's balancer): owns the endpoints and their connection tasks, applies
//! discovery changes, and publishes an immutable picker [`Snapshot`] whenever membership or
//! readiness changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pickwise::balancer::{
    Balancer as CoreBalancer, BalancerConfig, Connectivity, EndpointSpec, Event as CoreEvent,
};
use pickwise::Pool;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;

use crate::common::Common;
use crate::config::Config;
use crate::discover::{BoxDiscover, BoxEndpointDiscover, Change, Endpoint};
use crate::error::error_chain;
use crate::snapshot::{Control, Member, Shared, Snapshot};
use crate::subchannel::{self, ConnectivityState, Subchannel};

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
    /// Prequal's prober, while the policy is Prequal.
    prober: Option<JoinHandle<()>>,
}

/// Starts the balancer task; returns what requests share with it and the sender whose drop
/// stops it (both go into the user's [`BalancedChannel`](crate::BalancedChannel)).
pub(crate) fn spawn(
    config: Config,
    discovery: BoxEndpointDiscover,
    peers: Option<BoxDiscover>,
) -> (Arc<Shared>, oneshot::Sender<()>) {
    let (version, _) = watch::channel(0u64);
    let probing = crate::common::Probing::new(&config);
    let common = Arc::new(Common {
        pool: Arc::new(Pool::new(config.pool)),
        config: Arc::new(config),
        probing,
        epoch: Instant::now(),
        per_call_reports: std::sync::atomic::AtomicBool::new(true),
        oob_period: watch::channel(0).0,
    });
    common.set_policy(&common.config.policy);
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
        // 0 is "no connection task" (`Subchannel::set_owner`).
        next_id: 1,
        discovered: BTreeMap::new(),
        peers: BTreeSet::new(),
        subset_dirty: false,
        active_priority: None,
        prober: None,
    };
    #[cfg(feature = "metrics")]
    {
        crate::telemetry::describe();
        tokio::spawn(crate::telemetry::sample(Arc::downgrade(&shared)));
    }
    tokio::spawn(balancer.run(discovery, peers, events_rx, control_rx, shutdown_rx));
    (shared, shutdown_tx)
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
        self.follow_policy();
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
                    self.shared.common.set_policy(&policy);
                    self.follow_policy();
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
        if let Some(p) = self.prober.take() {
            p.abort();
        }
        self.shared.common.probing.pool.store(None);
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

    /// Runs Prequal's prober while the policy is Prequal (a new one for a new configuration:
    /// the core starts a new probe pool then).
    fn follow_policy(&mut self) {
        if let Some(p) = self.prober.take() {
            p.abort();
        }
        if let pickwise::LbPolicy::Prequal(config) = self.core.config().policy {
            self.prober = Some(tokio::spawn(crate::prober::run(self.shared.clone(), config)));
        }
    }

    /// Handles one discovery item; returns whether the stream is still open.
    fn on_discovery(&mut self, item: Option<Result<Change<String, Endpoint>, crate::BoxError>>) -> bool {
        match item {
            Some(Ok(change)) => self.apply(change),
            Some(Err(e)) => {
                let msg = error_chain(&*e);
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
                            e.sub.set_owner(id);
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
                        // Fresh when started again (no stale sticky failure), and the picker
                        // drops the connection handle so the connection really closes.
                        e.seen = None;
                        e.sub.reset_idle();
                        self.core.set_payload(&addr, member(&e.sub));
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
                tracing::warn!(error = %error_chain(&*e), "peer discovery error; keeping the last peer set");
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
        #[cfg(feature = "metrics")]
        let labels = &self.shared.common.config.labels;
        #[cfg(feature = "metrics")]
        if let Some(stats) = picker.wrr_stats() {
            crate::telemetry::record_wrr(labels, stats);
        }
        let snapshot = Snapshot {
            #[cfg(feature = "metrics")]
            instruments: crate::telemetry::PickerInstruments::new(labels, picker.policy().name()),
            policy: *picker.policy(),
            picker: Some(picker),
            resolved: self.resolved,
            last_error,
            discovery_error: self.discovery_error.clone(),
            shutdown: false,
        };
        // Piggybacked Prequal answers go into this picker's pool (shared by its successors).
        let probes = snapshot.picker.as_ref().and_then(|p| p.probes().cloned());
        let current = self.shared.common.probing.pool.load();
        if current.as_ref().map(Arc::as_ptr) != probes.as_ref().map(Arc::as_ptr) {
            self.shared.common.probing.pool.store(probes);
        }
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
