//! The xDS client (grpc-go's `xdsclient`): one ADS stream, state of the world, with a resource
//! cache that outlives the stream.
//!
//! - **ACK/NACK** (gRFC A46): a response is ACKed with its version and nonce; if any resource in
//!   it is invalid the response is NACKed with the last accepted version, the nonce and an
//!   `error_detail` naming each bad resource, valid resources in it are still applied, and an
//!   invalid one keeps its last good value.
//! - **Deletion**: a listener or cluster missing from a response no longer exists (SotW), unless
//!   the server has `ignore_resource_deletion` (gRFC A53).
//! - **Does-not-exist timer** (A27): a resource requested on a live stream that does not arrive
//!   within the timeout (15 s by default) is reported missing; RPCs then fail with `UNAVAILABLE`.
//! - **Reconnect**: exponential backoff (1 s, ×1.6, 120 s cap, ±20% jitter, reset after a
//!   response), then every subscription is sent again with the last accepted versions and empty
//!   nonces (a nonce belongs to the stream that sent it; grpc-go `sendExisting`). While the
//!   control plane is away the cached resources keep serving (gRFC A57's behaviour).
//! - **Keepalive**: HTTP/2 pings on the ADS connection (grpc-go: every 5 min, 20 s timeout), so
//!   a control plane whose packets are dropped is noticed and the stream is re-established.
//! - **Unsubscribe**: a type whose last name goes away is sent with an empty list (grpc-go
//!   `unsubscribe`), so a later re-subscribe is a change the server answers, not a repeated ACK.
//! - **Route configuration renamed**: the old routes keep serving until the new route
//!   configuration arrives (grpc-go's resolver keeps its config selector), so cluster balancers
//!   and their connections survive the switch.
//!
//! After every change the dependency chain target → listener → route configuration → clusters →
//! endpoints is resolved again ([`XdsState`]) and the subscriptions follow it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
    DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::bootstrap::Bootstrap;
use crate::resource::{
    self, ClusterConfig, EndpointsConfig, ListenerConfig, Resource, ResourceType, Route, RouteConfig,
    RouteSource,
};
use crate::telemetry::{CacheState, XdsInstruments};

/// Reconnect backoff for the ADS stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdsBackoff {
    /// First delay (gRPC: 1 s).
    pub initial: Duration,
    /// Growth per failed attempt (gRPC: 1.6).
    pub multiplier: f64,
    /// Cap (gRPC: 120 s).
    pub max: Duration,
}

impl Default for AdsBackoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            multiplier: 1.6,
            max: Duration::from_secs(120),
        }
    }
}

/// HTTP/2 keepalive of the ADS connection (grpc-go's xDS transport: a ping every 5 minutes,
/// the connection is closed if the ping is not answered within 20 seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdsKeepalive {
    /// Ping interval (gRPC: 5 min).
    pub time: Duration,
    /// How long a ping may go unanswered (gRPC: 20 s).
    pub timeout: Duration,
}

impl Default for AdsKeepalive {
    fn default() -> Self {
        Self {
            time: Duration::from_secs(300),
            timeout: Duration::from_secs(20),
        }
    }
}

/// Settings of the xDS client.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) bootstrap: Bootstrap,
    pub(crate) resource_timeout: Duration,
    pub(crate) backoff: AdsBackoff,
    pub(crate) keepalive: AdsKeepalive,
    /// The channel's target as the user gave it (`xds:///name`), for instruments.
    pub(crate) channel_target: String,
}

/// The resolved configuration for one target, as the channel consumes it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct XdsState {
    /// Routes of the matching virtual host: `Ok(None)` while pending, `Err` when the chain is
    /// broken (missing listener or route configuration, no virtual host...).
    pub(crate) routes: Result<Option<Arc<Vec<Route>>>, String>,
    /// Each cluster the routes name.
    pub(crate) clusters: BTreeMap<String, ClusterState>,
    /// Whether the ADS stream is up.
    pub(crate) connected: bool,
    /// The last NACK sent, if any (type, reason).
    pub(crate) last_nack: Option<String>,
}

impl Default for XdsState {
    fn default() -> Self {
        Self {
            routes: Ok(None),
            clusters: BTreeMap::new(),
            connected: false,
            last_nack: None,
        }
    }
}

/// A cluster as far as it resolved.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ClusterState {
    /// The cluster or its endpoints have not arrived yet.
    Pending,
    /// It cannot serve (does not exist, invalid without a last good value).
    Failed(String),
    /// Cluster and endpoints.
    Ready(Arc<ClusterConfig>, Arc<EndpointsConfig>),
}

/// One cached resource.
#[derive(Debug, Default)]
struct Slot {
    value: Option<Arc<Resource>>,
    /// Reported missing (SotW deletion or the does-not-exist timer).
    missing: bool,
    /// Last validation error (a NACK), kept until a valid version arrives.
    error: Option<String>,
    /// Does-not-exist deadline while requested on a live stream.
    timer: Option<Instant>,
}

/// The client's state: subscriptions, cache, versions and nonces per type.
struct Client {
    options: Options,
    /// The listener name (the target's path).
    target: String,
    slots: [BTreeMap<String, Slot>; 4],
    versions: [String; 4],
    nonces: [String; 4],
    out: watch::Sender<Arc<XdsState>>,
    last_nack: Option<String>,
    /// The resource (inline listener or route configuration) the routes last resolved from: it
    /// keeps serving while a renamed route configuration is on its way.
    last_routes: Option<Arc<Resource>>,
    /// The `tls` creds' file watcher, started with the first connection attempt.
    #[cfg(feature = "tls")]
    tls: Option<Arc<crate::credentials::FileWatcher>>,
    /// gRFC A78's `grpc.xds_client.*` (empty without the `metrics` feature).
    instruments: XdsInstruments,
}

fn idx(t: ResourceType) -> usize {
    t as usize
}

/// Starts the xDS client task for `target`; it stops when every receiver is dropped.
pub(crate) fn spawn(
    options: Options,
    target: String,
) -> (watch::Receiver<Arc<XdsState>>, tokio::task::JoinHandle<()>) {
    let (out, rx) = watch::channel(Arc::new(XdsState {
        routes: Ok(None),
        ..XdsState::default()
    }));
    let instruments = XdsInstruments::new(&options.channel_target, &options.bootstrap.server_uri);
    let mut client = Client {
        options,
        target,
        slots: Default::default(),
        versions: Default::default(),
        nonces: Default::default(),
        out,
        last_nack: None,
        last_routes: None,
        #[cfg(feature = "tls")]
        tls: None,
        instruments,
    };
    client.slots[idx(ResourceType::Listener)].insert(client.target.clone(), Slot::default());
    client.record_cache();
    let task = tokio::spawn(async move { client.run().await });
    (rx, task)
}

impl Client {
    async fn run(&mut self) {
        let mut delay = self.options.backoff.initial;
        loop {
            let out = self.out.clone();
            let got_response = tokio::select! {
                r = self.stream_once() => r,
                _ = out.closed() => return,
            };
            self.stop_timers();
            self.publish(false);
            if !got_response {
                // gRFC A57/A78: a connectivity failure, or a stream that failed without a
                // response, is a server failure.
                self.instruments.failed();
            }
            if got_response {
                delay = self.options.backoff.initial;
            }
            let jitter = 0.8 + fastrand::f64() * 0.4;
            let wait = delay.mul_f64(jitter);
            tracing::info!(
                retry_in_ms = wait.as_millis() as u64,
                "xDS stream down; serving cached resources"
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.out.closed() => return,
            }
            if !got_response {
                delay = delay
                    .mul_f64(self.options.backoff.multiplier)
                    .min(self.options.backoff.max);
            }
        }
    }

    /// One ADS stream, until it fails. Returns whether any response arrived.
    async fn stream_once(&mut self) -> bool {
        let uri = self.options.bootstrap.endpoint_uri();
        let endpoint = match tonic::transport::Endpoint::from_shared(uri.clone()) {
            Ok(e) => e
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(self.options.keepalive.time)
                .keep_alive_timeout(self.options.keepalive.timeout),
            Err(e) => {
                tracing::error!(%uri, error = %e, "invalid xDS server URI");
                return false;
            }
        };
        let channel = match self.connect(endpoint).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%uri, error = %pickwise_tonic::error_chain(&e), "cannot reach the xDS server");
                return false;
            }
        };
        let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
        // Nonces belong to the stream that sent them; versions are kept (xDS protocol, grpc-go
        // `sendExisting`).
        self.nonces = Default::default();
        let mut first = true;
        for t in ResourceType::ALL {
            if !self.slots[idx(t)].is_empty() {
                let _ = tx.send(self.request(t, first));
                first = false;
            }
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let mut stream = match client
            .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
        {
            Ok(s) => s.into_inner(),
            Err(e) => {
                tracing::warn!(%uri, error = %e, "ADS stream refused");
                return false;
            }
        };
        tracing::info!(%uri, "ADS stream up");
        self.instruments.connected();
        self.start_timers();
        self.publish(true);
        let mut got_response = false;
        loop {
            let next_timer = self.next_timer();
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        if !got_response {
                            self.instruments.connected();
                        }
                        got_response = true;
                        self.on_response(resp, &tx);
                    }
                    Ok(None) => {
                        tracing::warn!("ADS stream ended by the server");
                        return got_response;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ADS stream failed");
                        return got_response;
                    }
                },
                _ = sleep_until_opt(next_timer) => {
                    self.expire_timers();
                    self.resolve(&tx, true);
                }
            }
        }
    }

    /// Connects with the bootstrap's channel creds.
    async fn connect(
        &mut self,
        endpoint: tonic::transport::Endpoint,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        match &self.options.bootstrap.channel_creds {
            #[cfg(feature = "tls")]
            crate::bootstrap::ChannelCreds::Tls(config) => {
                let watcher = self
                    .tls
                    .get_or_insert_with(|| Arc::new(crate::credentials::FileWatcher::start(config.clone())))
                    .clone();
                // tonic refuses `https` URIs without its own TLS: dial `http://` through the
                // TLS connector, and say `https` in the requests.
                let origin = endpoint.uri().to_string().replacen("http://", "https://", 1);
                let endpoint = match origin.parse::<http::Uri>() {
                    Ok(origin) => endpoint.origin(origin),
                    Err(_) => endpoint,
                };
                endpoint
                    .connect_with_connector(crate::credentials::Connector::new(watcher, config.clone()))
                    .await
            }
            _ => endpoint.connect().await,
        }
    }

    fn request(&self, t: ResourceType, with_node: bool) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.versions[idx(t)].clone(),
            node: with_node.then(|| self.options.bootstrap.node.clone()),
            resource_names: self.slots[idx(t)].keys().cloned().collect(),
            type_url: t.type_url(),
            response_nonce: self.nonces[idx(t)].clone(),
            ..DiscoveryRequest::default()
        }
    }

    fn on_response(&mut self, resp: DiscoveryResponse, tx: &mpsc::UnboundedSender<DiscoveryRequest>) {
        let Some(t) = ResourceType::from_url(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "ignoring a response of an unknown type");
            return;
        };
        let (errors, changed) = self.apply(t, &resp.resources);
        self.nonces[idx(t)] = resp.nonce;
        // ACK with the response's version; a NACK carries the last accepted one (A46).
        let error_detail = if errors.is_empty() {
            tracing::debug!(kind = t.short(), version = %resp.version_info, "ACK");
            self.versions[idx(t)] = resp.version_info;
            None
        } else {
            let message = errors.join("; ");
            tracing::warn!(kind = t.short(), version = %resp.version_info, error = %message, "NACK");
            self.last_nack = Some(format!("{}: {message}", t.short()));
            Some(envoy_types::pb::google::rpc::Status {
                code: tonic::Code::InvalidArgument as i32,
                message,
                details: Vec::new(),
            })
        };
        let _ = tx.send(DiscoveryRequest {
            error_detail,
            ..self.request(t, false)
        });
        if changed || !errors.is_empty() {
            self.resolve(tx, true);
        }
    }

    /// Applies a response's resources; returns the NACK reasons and whether anything changed.
    fn apply(
        &mut self,
        t: ResourceType,
        resources: &[envoy_types::pb::google::protobuf::Any],
    ) -> (Vec<String>, bool) {
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        let mut changed = false;
        let (mut valid, mut invalid) = (0, 0);
        let slots = &mut self.slots[idx(t)];
        for any in resources {
            let decoded = resource::decode(t, any).and_then(|(name, value)| {
                match security_allowed(&value, &self.options.bootstrap) {
                    Ok(()) => Ok((name, value)),
                    Err(reason) => Err(resource::InvalidResource {
                        name: Some(name),
                        reason,
                    }),
                }
            });
            match decoded {
                Ok((name, value)) => {
                    if !seen.insert(name.clone()) {
                        errors.push(format!("resource {name:?} appears twice"));
                        invalid += 1;
                        continue;
                    }
                    valid += 1;
                    let Some(slot) = slots.get_mut(&name) else {
                        continue; // not subscribed (any more)
                    };
                    if slot.value.as_deref() != Some(&value) || slot.missing || slot.error.is_some() {
                        changed = true;
                    }
                    slot.value = Some(Arc::new(value));
                    slot.missing = false;
                    slot.error = None;
                    slot.timer = None;
                }
                Err(e) => {
                    errors.push(e.to_string());
                    invalid += 1;
                    if let Some(name) = &e.name {
                        seen.insert(name.clone());
                        if let Some(slot) = slots.get_mut(name) {
                            slot.error = Some(e.reason.clone());
                            slot.timer = None;
                            changed = true;
                        }
                    }
                }
            }
        }
        if t.absent_means_deleted() && !self.options.bootstrap.has_feature("ignore_resource_deletion") {
            for (name, slot) in slots.iter_mut() {
                if !seen.contains(name) && (slot.value.is_some() || slot.error.is_some()) && !slot.missing {
                    tracing::warn!(kind = t.short(), %name, "resource removed by the control plane");
                    slot.value = None;
                    slot.error = None;
                    slot.missing = true;
                    changed = true;
                }
            }
        }
        self.instruments.updates(t, valid, invalid);
        (errors, changed)
    }

    /// Sets `grpc.xds_client.resources` from the cache (a no-op without `metrics`).
    fn record_cache(&mut self) {
        let cache = self.slots.iter().enumerate().flat_map(|(i, slots)| {
            slots.iter().map(move |(name, slot)| {
                let state = match slot {
                    Slot { missing: true, .. } => CacheState::DoesNotExist,
                    Slot {
                        value: Some(_),
                        error: None,
                        ..
                    } => CacheState::Acked,
                    Slot {
                        value: Some(_),
                        error: Some(_),
                        ..
                    } => CacheState::NackedButCached,
                    Slot {
                        value: None,
                        error: Some(_),
                        ..
                    } => CacheState::Nacked,
                    Slot {
                        value: None,
                        error: None,
                        ..
                    } => CacheState::Requested,
                };
                (ResourceType::ALL[i], name.as_str(), state)
            })
        });
        self.instruments.resources(cache);
    }

    /// Resolves the chain, publishes the state and updates subscriptions (sending requests for
    /// the types whose names changed).
    fn resolve(&mut self, tx: &mpsc::UnboundedSender<DiscoveryRequest>, connected: bool) {
        let (state, wanted) = self.compute();
        for t in ResourceType::ALL {
            let now: BTreeSet<&String> = self.slots[idx(t)].keys().collect();
            let want: BTreeSet<&String> = wanted[idx(t)].iter().collect();
            if now == want {
                continue;
            }
            let slots = &mut self.slots[idx(t)];
            slots.retain(|k, _| wanted[idx(t)].contains(k));
            for name in &wanted[idx(t)] {
                slots.entry(name.clone()).or_insert_with(|| Slot {
                    timer: connected.then(|| Instant::now() + self.options.resource_timeout),
                    ..Slot::default()
                });
            }
            // Sent even when the list is now empty (grpc-go `unsubscribe`): otherwise the server
            // still holds the old names, and a later re-subscribe with the same version and nonce
            // reads as a repeated ACK that control planes such as go-control-plane and Istio do
            // not answer. This type was requested on this stream before (it had names), so the
            // empty list is an unsubscribe, not a wildcard request.
            let _ = tx.send(self.request(t, false));
        }
        self.send(state, connected);
        self.record_cache();
    }

    /// Publishes the chain as it resolves now, without touching subscriptions.
    fn publish(&mut self, connected: bool) {
        let (state, _) = self.compute();
        self.send(state, connected);
    }

    /// The chain from the cache (see [`resolve_chain`](Self::resolve_chain)), remembering the
    /// routes' source for the next route configuration rename.
    fn compute(&mut self) -> (XdsState, [BTreeSet<String>; 4]) {
        let (state, wanted, source) = self.resolve_chain();
        match (&state.routes, source) {
            (Err(_), _) => self.last_routes = None,
            (Ok(Some(_)), Some(source)) => self.last_routes = Some(source),
            _ => {}
        }
        (state, wanted)
    }

    fn send(&self, state: XdsState, connected: bool) {
        self.out.send_replace(Arc::new(XdsState {
            connected,
            last_nack: self.last_nack.clone(),
            ..state
        }));
    }

    /// The dependency chain from the cache, the names each type should subscribe to, and the
    /// resource the routes came from (`None` when they are the last ones, kept while a renamed
    /// route configuration is pending).
    fn resolve_chain(&self) -> (XdsState, [BTreeSet<String>; 4], Option<Arc<Resource>>) {
        let mut wanted: [BTreeSet<String>; 4] = Default::default();
        wanted[idx(ResourceType::Listener)].insert(self.target.clone());
        let mut state = XdsState {
            routes: Ok(None),
            ..XdsState::default()
        };
        let listener = match self.get(ResourceType::Listener, &self.target, |r| match r {
            Resource::Listener(l) => Some(l),
            _ => None,
        }) {
            Ok(Some(l)) => l,
            Ok(None) => return (state, wanted, None),
            Err(e) => {
                state.routes = Err(format!("xDS listener {:?}: {e}", self.target));
                return (state, wanted, None);
            }
        };
        let (rc, source): (&RouteConfig, Option<Arc<Resource>>) = match &listener.routes {
            RouteSource::Inline(rc) => (rc, self.slot_value(ResourceType::Listener, &self.target)),
            RouteSource::Rds(name) => {
                wanted[idx(ResourceType::RouteConfiguration)].insert(name.clone());
                match self.get(ResourceType::RouteConfiguration, name, |r| match r {
                    Resource::RouteConfiguration(rc) => Some(rc),
                    _ => None,
                }) {
                    Ok(Some(rc)) => (rc, self.slot_value(ResourceType::RouteConfiguration, name)),
                    // Renamed and not here yet: the previous routes keep serving (grpc-go).
                    Ok(None) => match self.last_routes.as_deref().and_then(routes_of) {
                        Some(rc) => (rc, None),
                        None => return (state, wanted, None),
                    },
                    Err(e) => {
                        state.routes = Err(format!("xDS route configuration {name:?}: {e}"));
                        return (state, wanted, None);
                    }
                }
            }
        };
        let Some(vh) = crate::routing::virtual_host(&rc.virtual_hosts, &self.target) else {
            state.routes = Err(format!("xDS: no virtual host matches {:?}", self.target));
            return (state, wanted, None);
        };
        let mut clusters = BTreeSet::new();
        for r in &vh.routes {
            if let resource::RouteAction::Clusters(cs) = &r.action {
                clusters.extend(cs.iter().map(|c| c.name.clone()));
            }
        }
        let mut routes = vh.routes.clone();
        // gRFC A31: a route without max_stream_duration takes the listener's.
        if !listener.max_stream_duration.is_zero() {
            for r in &mut routes {
                r.max_stream_duration.get_or_insert(listener.max_stream_duration);
            }
        }
        state.routes = Ok(Some(Arc::new(routes)));
        for name in clusters {
            wanted[idx(ResourceType::Cluster)].insert(name.clone());
            let cluster = self.get(ResourceType::Cluster, &name, |r| match r {
                Resource::Cluster(c) => Some(c),
                _ => None,
            });
            let cs = match cluster {
                Ok(Some(c)) => {
                    let eds = &c.eds_service_name;
                    wanted[idx(ResourceType::ClusterLoadAssignment)].insert(eds.clone());
                    match self.get(ResourceType::ClusterLoadAssignment, eds, |r| match r {
                        Resource::ClusterLoadAssignment(e) => Some(e),
                        _ => None,
                    }) {
                        Ok(Some(e)) => ClusterState::Ready(Arc::new(c.clone()), Arc::new(e.clone())),
                        Ok(None) => ClusterState::Pending,
                        Err(e) => ClusterState::Failed(format!("xDS endpoints {eds:?}: {e}")),
                    }
                }
                Ok(None) => ClusterState::Pending,
                Err(e) => ClusterState::Failed(format!("xDS cluster {name:?}: {e}")),
            };
            state.clusters.insert(name, cs);
        }
        (state, wanted, source)
    }

    fn slot_value(&self, t: ResourceType, name: &str) -> Option<Arc<Resource>> {
        self.slots[idx(t)].get(name).and_then(|s| s.value.clone())
    }

    /// A cached resource: `Ok(Some)` present, `Ok(None)` pending, `Err` missing or rejected.
    fn get<'a, T>(
        &'a self,
        t: ResourceType,
        name: &str,
        project: impl Fn(&'a Resource) -> Option<&'a T>,
    ) -> Result<Option<&'a T>, String> {
        match self.slots[idx(t)].get(name) {
            Some(Slot { value: Some(v), .. }) => {
                project(v).map(Some).ok_or_else(|| "wrong resource type".into())
            }
            Some(Slot { missing: true, .. }) => Err("does not exist".into()),
            Some(Slot { error: Some(e), .. }) => Err(format!("rejected: {e}")),
            _ => Ok(None),
        }
    }

    fn start_timers(&mut self) {
        let at = Instant::now() + self.options.resource_timeout;
        for slots in &mut self.slots {
            for slot in slots.values_mut() {
                if slot.value.is_none() && !slot.missing && slot.error.is_none() {
                    slot.timer = Some(at);
                }
            }
        }
    }

    fn stop_timers(&mut self) {
        for slots in &mut self.slots {
            for slot in slots.values_mut() {
                slot.timer = None;
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flat_map(|s| s.values())
            .filter_map(|s| s.timer)
            .min()
    }

    fn expire_timers(&mut self) {
        let now = Instant::now();
        for (i, slots) in self.slots.iter_mut().enumerate() {
            for (name, slot) in slots.iter_mut() {
                if slot.timer.is_some_and(|t| t <= now) {
                    slot.timer = None;
                    slot.missing = true;
                    tracing::warn!(kind = ResourceType::ALL[i].short(), %name, "resource does not exist (timer)");
                }
            }
        }
    }
}

/// The route configuration a resource carries (an inline listener's or an RDS resource).
fn routes_of(r: &Resource) -> Option<&RouteConfig> {
    match r {
        Resource::RouteConfiguration(rc) => Some(rc),
        Resource::Listener(ListenerConfig {
            routes: RouteSource::Inline(rc),
            ..
        }) => Some(rc),
        _ => None,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Checks what only the bootstrap can tell about a decoded resource: the certificate provider
/// instances a cluster's security config names exist (grpc-go's `securityConfigValidator`).
/// Without the `tls` feature a cluster asking for TLS is NACKed rather than served in
/// plaintext (grpc-go falls back to its fallback credentials only when the application chose
/// insecure ones).
fn security_allowed(value: &resource::Resource, bootstrap: &Bootstrap) -> Result<(), String> {
    let resource::Resource::Cluster(c) = value else {
        return Ok(());
    };
    let Some(sc) = &c.security else {
        return Ok(());
    };
    if cfg!(not(feature = "tls")) {
        return Err(
            "transport_socket asks for TLS to the endpoints (gRFC A29): pickwise-xds needs its `tls` feature for it"
                .into(),
        );
    }
    resource::check_providers(sc, &bootstrap.certificate_providers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
    use envoy_types::pb::envoy::config::core::v3::{
        config_source::ConfigSourceSpecifier, transport_socket::ConfigType, AggregatedConfigSource,
        ConfigSource, TransportSocket,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        common_tls_context::ValidationContextType, CertificateProviderPluginInstance,
        CertificateValidationContext, CommonTlsContext, UpstreamTlsContext,
    };
    use prost::{Message, Name};

    /// A cluster taking its roots from instance `roots`.
    fn secure_cluster(roots: &str) -> resource::Resource {
        let ctx = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                validation_context_type: Some(ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        ca_certificate_provider_instance: Some(CertificateProviderPluginInstance {
                            instance_name: roots.into(),
                            certificate_name: String::new(),
                        }),
                        ..CertificateValidationContext::default()
                    },
                )),
                ..CommonTlsContext::default()
            }),
            ..UpstreamTlsContext::default()
        };
        let c = Cluster {
            name: "c".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(ConfigSource {
                    config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
                    ..ConfigSource::default()
                }),
                service_name: String::new(),
            }),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(ConfigType::TypedConfig(envoy_types::pb::google::protobuf::Any {
                    type_url: UpstreamTlsContext::type_url(),
                    value: ctx.encode_to_vec(),
                })),
            }),
            ..Cluster::default()
        };
        resource::decode_bytes(ResourceType::Cluster, &c.encode_to_vec())
            .unwrap()
            .1
    }

    #[test]
    fn security_needs_the_feature_and_the_bootstrap_instances() {
        let bootstrap = Bootstrap::from_json(
            r#"{"xds_servers":[{"server_uri":"a:1","channel_creds":[{"type":"insecure"}]}],
                "certificate_providers":{"roots":{"plugin_name":"file_watcher","config":{"ca_certificate_file":"/ca.pem"}},
                                         "mesh":{"plugin_name":"meshca","config":{}}}}"#,
        )
        .unwrap();
        let ok = security_allowed(&secure_cluster("roots"), &bootstrap);
        if cfg!(feature = "tls") {
            assert_eq!(ok, Ok(()));
            // Unknown, or of a plugin pickwise does not have: missing, as in grpc-go.
            for name in ["other", "mesh"] {
                let e = security_allowed(&secure_cluster(name), &bootstrap).unwrap_err();
                assert!(e.contains("missing in bootstrap configuration"), "{e}");
            }
        } else {
            assert!(ok.unwrap_err().contains("`tls` feature"));
        }
    }
}
