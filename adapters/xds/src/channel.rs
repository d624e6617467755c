//! The channel for an `xds:///name` target: routes each request to a cluster (gRPC's
//! `xds_cluster_manager`), applies the cluster's drop policy and circuit breaker, sets the
//! request hash from the route's `hash_policy`, and sends it through the cluster's balancer.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pickwise_tonic::{BalancedChannel, BoxError, RequestHash};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;
use tower_service::Service;

use crate::bootstrap::Bootstrap;
use crate::client::{self, AdsBackoff, AdsKeepalive, ClusterState, XdsState};
use crate::cluster::ClusterBalancer;
use crate::resource::{Route, RouteAction};
use crate::routing;
use crate::XdsError;

type Request = http::Request<tonic::body::Body>;
type Template = Arc<dyn Fn() -> pickwise_tonic::Builder + Send + Sync>;

/// Builds an [`XdsChannel`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// // GRPC_XDS_BOOTSTRAP=/etc/grpc/bootstrap.json
/// let channel = pickwise_xds::XdsBuilder::new().build("xds:///greeter")?;
/// let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct XdsBuilder {
    bootstrap: Option<Bootstrap>,
    resource_timeout: Duration,
    wait_for_config: Duration,
    backoff: AdsBackoff,
    keepalive: AdsKeepalive,
    template: Template,
}

impl std::fmt::Debug for XdsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsBuilder")
            .field("bootstrap", &self.bootstrap)
            .field("resource_timeout", &self.resource_timeout)
            .field("wait_for_config", &self.wait_for_config)
            .field("backoff", &self.backoff)
            .field("keepalive", &self.keepalive)
            .finish_non_exhaustive()
    }
}

impl Default for XdsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl XdsBuilder {
    /// Bootstrap from the environment at [`build`](Self::build), gRPC's timers (15 s
    /// does-not-exist, 1 s–120 s reconnect backoff), requests wait up to 20 s for a first
    /// configuration, clusters use `pickwise_tonic::Builder::new()` (the policy comes from CDS).
    pub fn new() -> Self {
        Self {
            bootstrap: None,
            resource_timeout: Duration::from_secs(15),
            wait_for_config: Duration::from_secs(20),
            backoff: AdsBackoff::default(),
            keepalive: AdsKeepalive::default(),
            template: Arc::new(pickwise_tonic::Builder::new),
        }
    }

    /// Uses this bootstrap instead of the environment's.
    pub fn bootstrap(mut self, bootstrap: Bootstrap) -> Self {
        self.bootstrap = Some(bootstrap);
        self
    }

    /// The does-not-exist timer (gRPC: 15 s).
    pub fn resource_timeout(mut self, timeout: Duration) -> Self {
        self.resource_timeout = timeout;
        self
    }

    /// How long a request waits for the first configuration (bounded by its own deadline too).
    pub fn wait_for_config(mut self, wait: Duration) -> Self {
        self.wait_for_config = wait;
        self
    }

    /// Reconnect backoff of the ADS stream.
    pub fn ads_backoff(mut self, backoff: AdsBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// HTTP/2 keepalive of the ADS connection (gRPC: a ping every 5 min, 20 s to answer). A
    /// control plane that stops answering is then noticed and the stream re-established.
    pub fn ads_keepalive(mut self, keepalive: AdsKeepalive) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// The template each cluster's balancer starts from (connect timeout, keepalive, health
    /// checks, backoff...). Policy and outlier detection are then set from CDS.
    pub fn cluster_builder<F>(mut self, template: F) -> Self
    where
        F: Fn() -> pickwise_tonic::Builder + Send + Sync + 'static,
    {
        self.template = Arc::new(template);
        self
    }

    /// Starts the xDS client for `target` (`xds:///name` or `xds:name`). Must run inside a tokio
    /// runtime; the client stops when the last clone of the channel is dropped.
    pub fn build(self, target: &str) -> Result<XdsChannel, XdsError> {
        let name = parse_target(target)?;
        let bootstrap = match self.bootstrap {
            Some(b) => b,
            None => Bootstrap::from_env().map_err(XdsError::Bootstrap)?,
        };
        let options = client::Options {
            bootstrap,
            resource_timeout: self.resource_timeout,
            backoff: self.backoff,
            keepalive: self.keepalive,
        };
        let (state, ads) = client::spawn(options, name.to_owned());
        let (version, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            router: ArcSwap::from_pointee(Router::default()),
            version,
            wait_for_config: self.wait_for_config,
            channel_id: fastrand::u64(..),
            target: name.to_owned(),
        });
        let manager = tokio::spawn(manage(shared.clone(), state, self.template));
        Ok(XdsChannel {
            shared,
            _tasks: Arc::new(Tasks([ads, manager])),
        })
    }
}

fn parse_target(target: &str) -> Result<&str, XdsError> {
    let rest = target
        .strip_prefix("xds:")
        .ok_or_else(|| XdsError::Target(format!("{target:?} is not an xds: target")))?;
    let name = rest
        .strip_prefix("///")
        .or_else(|| {
            rest.strip_prefix("//")
                .and_then(|r| r.split_once('/').map(|(_, p)| p))
        })
        .unwrap_or(rest);
    if name.is_empty() {
        return Err(XdsError::Target(format!("{target:?} has no name")));
    }
    Ok(name)
}

/// Aborts the client and manager tasks with the last channel clone.
struct Tasks([tokio::task::JoinHandle<()>; 2]);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// What requests read: the routes and clusters, swapped whole.
struct Router {
    routes: Result<Option<Arc<Vec<Route>>>, String>,
    clusters: HashMap<String, ClusterEntry>,
    connected: bool,
    last_nack: Option<String>,
}

impl Default for Router {
    fn default() -> Self {
        Self {
            routes: Ok(None),
            clusters: HashMap::new(),
            connected: false,
            last_nack: None,
        }
    }
}

#[derive(Clone)]
enum ClusterEntry {
    Pending,
    Failed(String),
    Ready {
        channel: BalancedChannel,
        drops: Arc<Vec<(String, u32)>>,
        in_flight: Arc<AtomicU32>,
        max_requests: u32,
    },
}

struct Shared {
    router: ArcSwap<Router>,
    version: watch::Sender<u64>,
    wait_for_config: Duration,
    /// gRPC's `io.grpc.channel_id` hash source.
    channel_id: u64,
    target: String,
}

/// Follows the xDS client's state: keeps one balancer per cluster and publishes the router.
async fn manage(shared: Arc<Shared>, mut state: watch::Receiver<Arc<XdsState>>, template: Template) {
    let mut balancers: BTreeMap<String, ClusterBalancer> = BTreeMap::new();
    // Balancers of clusters no route names any more, kept until the requests routed to them
    // are done (grpc-go's cluster manager holds a reference per RPC until it is committed).
    let mut retiring: Vec<ClusterBalancer> = Vec::new();
    loop {
        let s = state.borrow_and_update().clone();
        let mut clusters = HashMap::new();
        for (name, cs) in &s.clusters {
            let entry = match cs {
                ClusterState::Pending => match balancers.get(name) {
                    // Keep serving what we had (a cluster re-requested after a blip).
                    Some(b) => ready_entry(b),
                    None => ClusterEntry::Pending,
                },
                ClusterState::Failed(e) => {
                    balancers.remove(name);
                    ClusterEntry::Failed(e.clone())
                }
                ClusterState::Ready(cluster, eds) => {
                    let b = balancers
                        .entry(name.clone())
                        .or_insert_with(|| ClusterBalancer::new(template(), cluster));
                    b.update(cluster, eds);
                    ready_entry(b)
                }
            };
            clusters.insert(name.clone(), entry);
        }
        // Clusters no route names any more: their balancers stop once in-flight requests end.
        let gone: Vec<String> = balancers
            .keys()
            .filter(|name| !s.clusters.contains_key(*name))
            .cloned()
            .collect();
        retiring.extend(gone.iter().filter_map(|name| balancers.remove(name)));
        shared.router.store(Arc::new(Router {
            routes: s.routes.clone(),
            clusters,
            connected: s.connected,
            last_nack: s.last_nack.clone(),
        }));
        shared.version.send_modify(|v| *v += 1);
        loop {
            retiring.retain(|b| b.in_flight.load(Ordering::Relaxed) > 0);
            let poll = (!retiring.is_empty()).then_some(RETIRING_POLL);
            tokio::select! {
                r = state.changed() => {
                    if r.is_err() {
                        return;
                    }
                    break;
                }
                _ = sleep_opt(poll) => {}
            }
        }
    }
}

/// How often retiring balancers are checked for their last request.
const RETIRING_POLL: Duration = Duration::from_millis(100);

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn ready_entry(b: &ClusterBalancer) -> ClusterEntry {
    ClusterEntry::Ready {
        channel: b.channel.clone(),
        drops: b.drops.clone(),
        in_flight: b.in_flight.clone(),
        max_requests: b.max_requests,
    }
}

/// A gRPC channel for an `xds:///name` target: a cloneable
/// `tower::Service<http::Request<tonic::body::Body>>` (use it as tonic's `Channel`). Every
/// response carries the endpoint that served it as a [`pickwise_tonic::Peer`] extension.
#[derive(Clone)]
pub struct XdsChannel {
    shared: Arc<Shared>,
    _tasks: Arc<Tasks>,
}

impl std::fmt::Debug for XdsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsChannel")
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

/// What [`XdsChannel::status`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsStatus {
    /// The ADS stream is up.
    pub connected: bool,
    /// Routes resolved (listener → routes → virtual host).
    pub routes_ready: bool,
    /// Why the configuration cannot serve, if it cannot.
    pub error: Option<String>,
    /// Each cluster the routes name, with its policy (`None`: pending or failed).
    pub clusters: Vec<(String, Option<&'static str>)>,
    /// The last NACK sent (type and reason).
    pub last_nack: Option<String>,
}

impl XdsChannel {
    /// The current state of the configuration.
    pub fn status(&self) -> XdsStatus {
        let r = self.shared.router.load();
        let mut clusters: Vec<(String, Option<&'static str>)> = r
            .clusters
            .iter()
            .map(|(n, e)| {
                let policy = match e {
                    ClusterEntry::Ready { channel, .. } => Some(channel.policy().name()),
                    _ => None,
                };
                (n.clone(), policy)
            })
            .collect();
        clusters.sort();
        XdsStatus {
            connected: r.connected,
            routes_ready: matches!(r.routes, Ok(Some(_))),
            error: r.routes.as_ref().err().cloned(),
            clusters,
            last_nack: r.last_nack.clone(),
        }
    }

    /// A cluster's balancer (statistics, policy, picker version), if it is serving.
    pub fn cluster(&self, name: &str) -> Option<BalancedChannel> {
        match self.shared.router.load().clusters.get(name) {
            Some(ClusterEntry::Ready { channel, .. }) => Some(channel.clone()),
            _ => None,
        }
    }

    /// Waits until `ready(status)` holds or `timeout` passes; returns whether it held.
    pub async fn wait_for(&self, timeout: Duration, ready: impl Fn(&XdsStatus) -> bool) -> bool {
        let mut rx = self.shared.version.subscribe();
        let until = Instant::now() + timeout;
        loop {
            if ready(&self.status()) {
                return true;
            }
            if tokio::time::timeout_at(until, rx.changed()).await.is_err() {
                return ready(&self.status());
            }
        }
    }

    /// Number of routing configurations published so far.
    pub fn config_version(&self) -> u64 {
        *self.shared.version.borrow()
    }
}

/// How one request is routed against one router.
enum Routed {
    Go {
        channel: BalancedChannel,
        guard: Option<InFlightGuard>,
    },
    Wait,
    Fail(Status),
}

fn route(shared: &Shared, router: &Router, req: &mut Request) -> Routed {
    let routes = match &router.routes {
        Ok(Some(r)) => r,
        Ok(None) => return Routed::Wait,
        Err(e) => return Routed::Fail(Status::unavailable(e.clone())),
    };
    let Some(route) = routing::find(routes, req.uri().path(), req.headers(), &mut || fastrand::u32(..))
    else {
        return Routed::Fail(Status::unavailable(format!(
            "xDS: no route matches {} for {:?}",
            req.uri().path(),
            shared.target
        )));
    };
    let clusters = match &route.action {
        RouteAction::Clusters(c) => c,
        RouteAction::Unsupported(what) => {
            return Routed::Fail(Status::unavailable(format!(
                "xDS: the matched route has a {what}"
            )))
        }
    };
    // gRFC A31: the RPC's deadline is min(its own, the route's max_stream_duration); the
    // balanced channel enforces the grpc-timeout header and the server reads it.
    if let Some(max) = route.max_stream_duration.filter(|d| !d.is_zero()) {
        if pickwise_tonic::deadline::timeout(req.headers()).is_none_or(|t| max < t) {
            req.headers_mut()
                .insert("grpc-timeout", pickwise_tonic::deadline::encode(max));
        }
    }
    let Some(name) = routing::pick_cluster(clusters, fastrand::u64(..)) else {
        return Routed::Fail(Status::unavailable("xDS: the matched route has no cluster"));
    };
    match router.clusters.get(name) {
        None | Some(ClusterEntry::Pending) => Routed::Wait,
        Some(ClusterEntry::Failed(e)) => Routed::Fail(Status::unavailable(e.clone())),
        Some(ClusterEntry::Ready {
            channel,
            drops,
            in_flight,
            max_requests,
        }) => {
            // grpc-go's cluster_impl picker drops only while the cluster's picker is READY
            // (internal/xds/balancer/clusterimpl/picker.go); otherwise the RPC waits for an
            // endpoint like any other.
            let ready = drops.is_empty() || channel.ready_endpoints() > 0;
            for (category, per_million) in drops.iter().filter(|_| ready) {
                if fastrand::u32(..1_000_000) < *per_million {
                    return Routed::Fail(Status::unavailable(format!(
                        "xDS: dropped by the control plane's drop policy (category {category:?})"
                    )));
                }
            }
            if in_flight.fetch_add(1, Ordering::Relaxed) >= *max_requests {
                in_flight.fetch_sub(1, Ordering::Relaxed);
                return Routed::Fail(Status::unavailable(format!(
                    "xDS: cluster {name:?} has {max_requests} requests in flight (circuit breaker max_requests)"
                )));
            }
            let guard = InFlightGuard(in_flight.clone());
            if let Some(h) = routing::request_hash(&route.hash_policies, req.headers(), shared.channel_id) {
                req.extensions_mut().insert(RequestHash(h));
            }
            Routed::Go {
                channel: channel.clone(),
                guard: Some(guard),
            }
        }
    }
}

/// One request counted against a cluster's `max_requests` until its response body ends.
struct InFlightGuard(Arc<AtomicU32>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Service<Request> for XdsChannel {
    type Response = http::Response<XdsBody>;
    type Error = BoxError;
    type Future = XdsFuture;

    /// Always ready: routing and picking happen in `call` and never block.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let router = self.shared.router.load();
        match route(&self.shared, &router, &mut req) {
            // The common case allocates nothing here: the cluster balancer's own future, wrapped.
            Routed::Go { mut channel, guard } => XdsFuture {
                inner: Inner::Direct {
                    fut: channel.call(req),
                    guard,
                },
            },
            Routed::Fail(status) => XdsFuture {
                inner: Inner::Fail { status: Some(status) },
            },
            Routed::Wait => XdsFuture {
                inner: Inner::Boxed {
                    fut: Box::pin(wait_and_call(self.shared.clone(), req)),
                },
            },
        }
    }
}

/// Slow path: no configuration yet for this request; wait for one, bounded by the request's
/// deadline and `wait_for_config`.
async fn wait_and_call(shared: Arc<Shared>, mut req: Request) -> Result<http::Response<XdsBody>, BoxError> {
    let start = Instant::now();
    let deadline = pickwise_tonic::deadline::timeout(req.headers()).map(|t| start + t);
    let bound = start + shared.wait_for_config;
    let until = deadline.map_or(bound, |d| d.min(bound));
    let mut rx = shared.version.subscribe();
    loop {
        let router = shared.router.load_full();
        // The time spent waiting counts against the deadline; routing may then shorten it
        // (max_stream_duration).
        if let Some(d) = deadline {
            if !pickwise_tonic::deadline::set_remaining(req.headers_mut(), d) {
                return Err(
                    Status::deadline_exceeded("xDS: deadline exceeded waiting for a configuration").into(),
                );
            }
        }
        match route(&shared, &router, &mut req) {
            Routed::Go { mut channel, guard } => {
                let resp = channel.call(req).await?;
                return Ok(resp.map(|inner| XdsBody { inner, _guard: guard }));
            }
            Routed::Fail(status) => return Err(status.into()),
            Routed::Wait => {}
        }
        match tokio::time::timeout_at(until, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Status::unavailable("xDS: the channel has stopped").into()),
            Err(_) if deadline.is_some_and(|d| d <= bound) => {
                return Err(Status::deadline_exceeded(format!(
                    "xDS: deadline exceeded after {} ms waiting for the configuration of {:?}",
                    start.elapsed().as_millis(),
                    shared.target
                ))
                .into())
            }
            Err(_) => {
                let r = shared.router.load();
                let why = if r.connected {
                    "the control plane has not sent it"
                } else {
                    "the control plane is unreachable"
                };
                return Err(Status::unavailable(format!(
                    "xDS: no configuration for {:?} after {} ms: {why}",
                    shared.target,
                    shared.wait_for_config.as_millis()
                ))
                .into());
            }
        }
    }
}

type Boxed = Pin<Box<dyn Future<Output = Result<http::Response<XdsBody>, BoxError>> + Send>>;

pin_project_lite::pin_project! {
    /// The response future of [`XdsChannel`].
    pub struct XdsFuture {
        #[pin]
        inner: Inner,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner {
        Direct { #[pin] fut: pickwise_tonic::ResponseFuture, guard: Option<InFlightGuard> },
        Fail { status: Option<Status> },
        Boxed { fut: Boxed },
    }
}

impl std::fmt::Debug for XdsFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsFuture").finish_non_exhaustive()
    }
}

impl Future for XdsFuture {
    type Output = Result<http::Response<XdsBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Direct { fut, guard } => {
                let resp = std::task::ready!(fut.poll(cx))?;
                let guard = guard.take();
                Poll::Ready(Ok(resp.map(|inner| XdsBody { inner, _guard: guard })))
            }
            InnerProj::Fail { status } => Poll::Ready(Err(status
                .take()
                .unwrap_or_else(|| Status::unknown("polled after completion"))
                .into())),
            InnerProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body: the cluster balancer's body plus the circuit-breaker slot, released
    /// when the body is dropped.
    pub struct XdsBody {
        #[pin]
        inner: pickwise_tonic::ResponseBody,
        _guard: Option<InFlightGuard>,
    }
}

impl std::fmt::Debug for XdsBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Body for XdsBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("xds:///greeter").unwrap(), "greeter");
        assert_eq!(parse_target("xds:greeter").unwrap(), "greeter");
        assert_eq!(parse_target("xds://authority/greeter").unwrap(), "greeter");
        assert!(parse_target("dns:///x").is_err());
        assert!(parse_target("xds:///").is_err());
    }
}
