//! The ADS client against grpc-go's behaviour (internal/xds/clients/xdsclient/ads_stream.go,
//! internal/xds/clients/grpctransport/grpc_transport.go, internal/xds/resolver/): nonces per
//! stream, unsubscribe, keepalive, route configuration renames, clusters removed under load,
//! `max_stream_duration` (gRFC A31) and drops.

#[path = "../../tonic/tests/support/backend.rs"]
mod backend;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::{route::Action, route_action::MaxStreamDuration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use pickwise_xds::control_plane::{resources, ControlPlane};
use pickwise_xds::resource::ResourceType;
use pickwise_xds::{AdsBackoff, AdsKeepalive, Bootstrap, XdsBuilder, XdsChannel};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const NAME: &str = "greeter";

/// Tests that start servers run one at a time (timing on 2 cores).
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    GATE.lock().await
}

fn backends(n: usize) -> (Vec<backend::Backend>, Vec<String>) {
    let b: Vec<backend::Backend> = (0..n).map(|_| backend::Backend::start()).collect();
    let addrs = b.iter().map(|b| b.addr.to_string()).collect();
    (b, addrs)
}

fn bootstrap_for(addr: SocketAddr) -> Bootstrap {
    Bootstrap::from_json(&format!(
        r#"{{"xds_servers":[{{"server_uri":"{addr}","channel_creds":[{{"type":"insecure"}}]}}],"node":{{"id":"t"}}}}"#
    ))
    .unwrap()
}

fn builder(xds_server: SocketAddr) -> XdsBuilder {
    XdsBuilder::new()
        .bootstrap(bootstrap_for(xds_server))
        .ads_backoff(AdsBackoff {
            initial: Duration::from_millis(100),
            multiplier: 1.6,
            max: Duration::from_millis(500),
        })
        .resource_timeout(Duration::from_secs(3))
        .cluster_builder(|| {
            pickwise_tonic::Builder::new()
                .connect_timeout(Duration::from_millis(500))
                .backoff(pickwise_tonic::Backoff {
                    initial: Duration::from_millis(50),
                    multiplier: 1.6,
                    jitter: 0.2,
                    max: Duration::from_millis(500),
                })
        })
}

fn channel(cp: &ControlPlane) -> XdsChannel {
    builder(cp.addr()).build(&format!("xds:///{NAME}")).unwrap()
}

/// A control plane serving `greeter` → RDS `routes` → cluster `backends` → `addrs`.
async fn control_plane(addrs: &[String]) -> ControlPlane {
    let cp = ControlPlane::start().await.unwrap();
    cp.set(resources::listener(NAME, "routes"));
    cp.set(resources::route_config("routes", NAME, "backends"));
    cp.set(resources::cluster("backends", resources::Policy::RoundRobin));
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    cp.set(resources::endpoints(
        "backends",
        &[resources::Locality::new(1, 0, &refs)],
    ));
    cp
}

async fn call_with(channel: &XdsChannel, timeout: Duration) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(timeout);
    let resp = HealthClient::new(channel.clone()).check(req).await?;
    Ok(resp
        .extensions()
        .get::<pickwise_tonic::Peer>()
        .map(|p| p.address().to_owned())
        .unwrap_or_default())
}

async fn call(channel: &XdsChannel) -> Result<String, tonic::Status> {
    call_with(channel, Duration::from_secs(5)).await
}

/// Polls `cond` every 5 ms for up to `timeout`.
async fn until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(tokio::time::Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `fut` once and checks it is still pending: what its first poll does at once (the
/// channel's `call`: routing and the pick) has happened when this returns.
async fn first_poll<F: std::future::Future + Unpin>(fut: &mut F) {
    assert!(
        tokio::time::timeout(Duration::ZERO, fut).await.is_err(),
        "completed on its first poll"
    );
}

/// Waits until the client ACKed the control plane's current version of `t`.
async fn acked(cp: &ControlPlane, t: ResourceType) {
    let version = cp.version(t).to_string();
    let kind = match t {
        ResourceType::Listener => "LDS",
        ResourceType::RouteConfiguration => "RDS",
        ResourceType::Cluster => "CDS",
        ResourceType::ClusterLoadAssignment => "EDS",
    };
    until(
        &format!("the {kind} ACK of version {version}"),
        Duration::from_secs(5),
        || {
            cp.replies()
                .iter()
                .any(|r| r.kind == kind && r.version == version && r.error.is_none())
        },
    )
    .await;
}

async fn ready(channel: &XdsChannel, cluster: &str) {
    let cluster = cluster.to_owned();
    assert!(
        channel
            .wait_for(Duration::from_secs(5), |s| s.routes_ready
                && s.clusters.iter().any(|(n, p)| *n == cluster && p.is_some()))
            .await,
        "cluster {cluster} never became ready: {:?}",
        channel.status()
    );
}

// ===== A TCP proxy that can hold or drop traffic =====

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Bytes flow.
    Forward,
    /// Nothing is read until the mode changes (the peer sees a silent connection).
    Hold,
    /// Bytes are read and thrown away in both directions (packets dropped on the floor).
    Blackhole,
}

struct Proxy {
    addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr, mode: Mode) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, _) = watch::channel(mode);
        let mode = Arc::new(tx);
        let m = mode.clone();
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, m.subscribe()));
                tokio::spawn(pump(ur, dw, m.subscribe()));
            }
        });
        Self { addr, mode, task }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if mode.wait_for(|m| *m != Mode::Hold).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Held bytes wait for the mode to change.
        if mode.wait_for(|m| *m != Mode::Hold).await.is_err() {
            return;
        }
        if *mode.borrow() == Mode::Blackhole {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ===== Tests =====

/// A new ADS stream starts with empty nonces (a nonce names a response of the stream that sent
/// it) and the last accepted versions (grpc-go `sendExisting`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_starts_with_empty_nonces() {
    let _g = serial().await;
    let (_b, addrs) = backends(1);
    let mut cp = control_plane(&addrs).await;
    let ch = channel(&cp);
    ready(&ch, "backends").await;
    for t in ResourceType::ALL {
        acked(&cp, t).await;
    }
    cp.restart().await.unwrap();
    until(
        "the second stream's four requests",
        Duration::from_secs(10),
        || {
            let r = cp.requests();
            ["LDS", "RDS", "CDS", "EDS"]
                .iter()
                .all(|k| r.iter().any(|q| q.stream == 2 && q.kind == *k))
        },
    )
    .await;
    let requests = cp.requests();
    for kind in ["LDS", "RDS", "CDS", "EDS"] {
        let first = requests.iter().find(|q| q.stream == 2 && q.kind == kind).unwrap();
        assert_eq!(
            first.nonce, "",
            "{kind}: the first request of a new stream carries no nonce"
        );
        assert!(!first.version.is_empty(), "{kind}: the accepted version is kept");
    }
}

/// Dropping a type's last name sends the empty list (grpc-go `unsubscribe`); without it the
/// server keeps the old subscription, and re-subscribing later with the same version and nonce
/// reads as a repeated ACK: nothing is sent and the resource "does not exist" after the timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_the_last_name_is_sent_and_resubscribing_works() {
    let _g = serial().await;
    let (b, addrs) = backends(2);
    let cp = control_plane(&addrs[..1]).await;
    cp.set(resources::cluster("other", resources::Policy::RoundRobin));
    cp.set(resources::endpoints(
        "other",
        &[resources::Locality::new(1, 0, &[addrs[1].as_str()])],
    ));
    let ch = channel(&cp);
    ready(&ch, "backends").await;
    acked(&cp, ResourceType::RouteConfiguration).await;

    // Inline routes: RDS has no name left.
    cp.set(resources::listener_inline(
        NAME,
        resources::route_config("inline", NAME, "other"),
    ));
    ready(&ch, "other").await;
    acked(&cp, ResourceType::Listener).await;

    // Back to RDS `routes`: the server must see a change and send it.
    cp.set(resources::listener(NAME, "routes"));
    assert!(
        ch.wait_for(Duration::from_secs(5), |s| s.routes_ready
            && s.clusters.len() == 1
            && s.clusters[0].0 == "backends"
            && s.clusters[0].1.is_some())
            .await,
        "re-subscribed routes never arrived: {:?}",
        ch.status()
    );
    assert_eq!(call(&ch).await.unwrap(), b[0].addr.to_string());
    assert!(
        cp.requests()
            .iter()
            .any(|q| q.kind == "RDS" && q.resource_names.is_empty()),
        "the unsubscribe was never sent"
    );
}

/// HTTP/2 keepalive on the ADS channel (grpc-go: 5 min / 20 s): a control plane whose packets
/// are dropped is noticed, `status()` stops saying connected, and the client reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_notices_a_silent_control_plane_and_reconnects() {
    let _g = serial().await;
    let (b, addrs) = backends(2);
    let cp = control_plane(&addrs[..1]).await;
    let proxy = Proxy::start(cp.addr(), Mode::Forward).await;
    let ch = builder(proxy.addr)
        .ads_keepalive(AdsKeepalive {
            time: Duration::from_millis(200),
            timeout: Duration::from_millis(300),
        })
        .build(&format!("xds:///{NAME}"))
        .unwrap();
    ready(&ch, "backends").await;
    assert!(ch.status().connected);

    proxy.set(Mode::Blackhole);
    assert!(
        ch.wait_for(Duration::from_secs(5), |s| !s.connected).await,
        "a blackholed control plane still reads as connected"
    );
    // Cached resources keep serving meanwhile.
    assert_eq!(call(&ch).await.unwrap(), b[0].addr.to_string());

    proxy.set(Mode::Forward);
    assert!(
        ch.wait_for(Duration::from_secs(10), |s| s.connected).await,
        "never reconnected"
    );
    assert!(cp.streams() >= 2);
    // The new stream carries updates again.
    cp.set(resources::endpoints(
        "backends",
        &[resources::Locality::new(1, 0, &[addrs[1].as_str()])],
    ));
    acked(&cp, ResourceType::ClusterLoadAssignment).await;
    let want = b[1].addr.to_string();
    until(
        "the new endpoint set to reach the picker",
        Duration::from_secs(10),
        || {
            ch.cluster("backends").is_some_and(|c| {
                let stats = c.stats();
                c.ready_endpoints() == 1 && stats.len() == 1 && stats[0].address == want
            })
        },
    )
    .await;
    assert_eq!(call(&ch).await.unwrap(), want);
}

/// While a renamed route configuration is on its way, the old routes keep serving, and the
/// cluster balancers (and their connections) survive (grpc-go keeps its config selector).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_route_configuration_keeps_the_old_routes_until_it_arrives() {
    let _g = serial().await;
    let (b, addrs) = backends(1);
    let cp = control_plane(&addrs).await;
    let ch = channel(&cp);
    ready(&ch, "backends").await;
    assert_eq!(call(&ch).await.unwrap(), b[0].addr.to_string());
    let connections = b[0].connections();

    // The listener now names `routes-2`, which the control plane does not have yet.
    cp.set(resources::listener(NAME, "routes-2"));
    acked(&cp, ResourceType::Listener).await;
    for _ in 0..5 {
        assert_eq!(
            call_with(&ch, Duration::from_secs(1)).await.unwrap(),
            b[0].addr.to_string(),
            "the old routes must keep serving while routes-2 is pending"
        );
    }
    assert!(ch.status().routes_ready);
    assert_eq!(
        b[0].connections(),
        connections,
        "the cluster's connection was dropped"
    );

    cp.set(resources::route_config("routes-2", NAME, "backends"));
    acked(&cp, ResourceType::RouteConfiguration).await;
    assert_eq!(call(&ch).await.unwrap(), b[0].addr.to_string());
    assert_eq!(b[0].connections(), connections);
}

/// A renamed route configuration that never arrives still fails after the does-not-exist timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_route_configuration_that_never_arrives_fails_after_the_timer() {
    let _g = serial().await;
    let (_b, addrs) = backends(1);
    let cp = control_plane(&addrs).await;
    let ch = channel(&cp);
    ready(&ch, "backends").await;
    cp.set(resources::listener(NAME, "missing"));
    assert!(
        ch.wait_for(Duration::from_secs(10), |s| s.error.is_some()).await,
        "{:?}",
        ch.status()
    );
    let e = call(&ch).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
}

/// A listener that accepts nothing until opened, with its accept queue full: connections to it
/// stay in TCP connect (SYNs dropped) until then, so RPCs to it queue for a pick. Once opened,
/// it forwards every connection to `upstream`.
struct Gate {
    addr: SocketAddr,
    /// Whether a connect to it hangs (the accept queue is full and SYNs are dropped).
    holds: bool,
    open: Arc<tokio::sync::Notify>,
    _fillers: Vec<tokio::net::TcpStream>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn start(upstream: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        // Fill the accept queue: the first connect that does not complete shows it is full.
        let mut fillers = Vec::new();
        let mut holds = false;
        for _ in 0..16 {
            let connect = tokio::net::TcpStream::connect(addr);
            match tokio::time::timeout(Duration::from_millis(300), connect).await {
                Ok(Ok(s)) => fillers.push(s),
                Ok(Err(_)) => break,
                Err(_) => {
                    holds = true;
                    break;
                }
            }
        }
        let open = Arc::new(tokio::sync::Notify::new());
        let o = open.clone();
        let task = tokio::spawn(async move {
            o.notified().await;
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (_keep, mode) = watch::channel(Mode::Forward);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, mode.clone()));
                tokio::spawn(async move {
                    pump(ur, dw, mode).await;
                    drop(_keep);
                });
            }
        });
        Self {
            addr,
            holds,
            open,
            _fillers: fillers,
            task,
        }
    }

    fn open(&self) {
        self.open.notify_one();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An RPC queued on a cluster that is then removed from the routes completes on that cluster
/// once it can (grpc-go holds a reference to the cluster per RPC until it is committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_cluster_lets_its_queued_rpcs_finish() {
    let _g = serial().await;
    let (b, addrs) = backends(2);
    let gate = Gate::start(b[0].addr).await;
    if !gate.holds {
        // tcp_abort_on_overflow, or a kernel that queues more: no way to hold a connect here.
        eprintln!("skipped: a full accept queue does not hold connects on this host");
        return;
    }
    let cp = control_plane(&[gate.addr.to_string()]).await;
    cp.set(resources::cluster("other", resources::Policy::RoundRobin));
    cp.set(resources::endpoints(
        "other",
        &[resources::Locality::new(1, 0, &[addrs[1].as_str()])],
    ));
    let ch = builder(cp.addr())
        .cluster_builder(|| pickwise_tonic::Builder::new().connect_timeout(Duration::from_secs(20)))
        .build(&format!("xds:///{NAME}"))
        .unwrap();
    ready(&ch, "backends").await;
    let mut pending = Box::pin({
        let ch = ch.clone();
        async move { call_with(&ch, Duration::from_secs(20)).await }
    });
    // The RPC is routed to `backends` (on its first poll) and waits for its endpoint to connect.
    first_poll(&mut pending).await;
    let pending = tokio::spawn(pending);
    cp.set(resources::route_config("routes", NAME, "other"));
    assert!(
        ch.wait_for(Duration::from_secs(5), |s| s.clusters.len() == 1
            && s.clusters[0].0 == "other"
            && s.clusters[0].1.is_some())
            .await
    );
    assert_eq!(call(&ch).await.unwrap(), addrs[1]);
    gate.open();
    let served = pending.await.unwrap();
    assert_eq!(
        served.as_deref().map_err(|e| e.to_string()),
        Ok(gate.addr.to_string().as_str()),
        "an RPC queued on a removed cluster must finish there"
    );
}

/// The client's deadline fired (DEADLINE_EXCEEDED), or the tonic server's own timer, which
/// reads the same grpc-timeout, fired first (tonic answers CANCELLED "Timeout expired").
fn timed_out(e: &tonic::Status) -> bool {
    e.code() == tonic::Code::DeadlineExceeded
        || (e.code() == tonic::Code::Cancelled && e.message().contains("Timeout expired"))
}

fn with_route_max_stream_duration(ms: u32) -> envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
    let mut rc = resources::route_config("routes", NAME, "backends");
    let Some(Action::Route(ra)) = &mut rc.virtual_hosts[0].routes[0].action else {
        unreachable!("route_config builds a route action")
    };
    ra.max_stream_duration = Some(MaxStreamDuration {
        max_stream_duration: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: i64::from(ms / 1000),
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }),
        ..MaxStreamDuration::default()
    });
    rc
}

/// gRFC A31: an RPC's deadline is min(its own, the route's `max_stream_duration`), and the
/// listener's `common_http_protocol_options.max_stream_duration` applies to routes without one.
/// The backend answers after 10 s: an RPC that times out although its own deadline (60 s) is
/// longer was bounded by `max_stream_duration` (without it, it would be served at 10 s); an RPC
/// with a 300 ms deadline under a 60 s `max_stream_duration` times out only by its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stream_duration_bounds_the_rpc_deadline() {
    let _g = serial().await;
    let (b, addrs) = backends(1);
    let cp = control_plane(&addrs).await;
    cp.set(with_route_max_stream_duration(200));
    let ch = channel(&cp);
    ready(&ch, "backends").await;
    acked(&cp, ResourceType::RouteConfiguration).await;
    b[0].set_delay(10_000);
    let long = Duration::from_secs(60);
    let start = std::time::Instant::now();
    let e = call_with(&ch, long).await.unwrap_err();
    assert!(timed_out(&e), "{e:?}");
    eprintln!(
        "the route's 200 ms max_stream_duration ended the RPC after {:?}",
        start.elapsed()
    );

    // A shorter deadline of the RPC's own still wins.
    cp.set(with_route_max_stream_duration(60_000));
    acked(&cp, ResourceType::RouteConfiguration).await;
    let e = call_with(&ch, Duration::from_millis(300)).await.unwrap_err();
    assert!(timed_out(&e), "{e:?}");

    // The listener's default, for a route without its own.
    let mut l = resources::listener(NAME, "routes");
    let api = l.api_listener.as_mut().unwrap().api_listener.as_mut().unwrap();
    let mut hcm = HttpConnectionManager::decode(api.value.as_slice()).unwrap();
    hcm.common_http_protocol_options = Some(envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
        max_stream_duration: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 0,
            nanos: 200_000_000,
        }),
        ..Default::default()
    });
    *api = resources::any(&hcm);
    cp.set(l);
    cp.set(resources::route_config("routes", NAME, "backends"));
    acked(&cp, ResourceType::Listener).await;
    acked(&cp, ResourceType::RouteConfiguration).await;
    let start = std::time::Instant::now();
    let e = call_with(&ch, long).await.unwrap_err();
    assert!(timed_out(&e), "{e:?}");
    eprintln!(
        "the listener's 200 ms max_stream_duration ended the RPC after {:?}",
        start.elapsed()
    );

    b[0].set_delay(0);
    assert!(call(&ch).await.is_ok());
}

/// grpc-go's cluster_impl picker applies `drop_overloads` only while the cluster's picker is
/// READY (internal/xds/balancer/clusterimpl/picker.go): a cluster without a ready endpoint does
/// not drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_apply_only_while_the_cluster_has_a_ready_endpoint() {
    use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::{
        policy::DropOverload, Policy,
    };
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    let _g = serial().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cp = control_plane(&[port.to_string()]).await;
    let mut eds = resources::endpoints(
        "backends",
        &[resources::Locality::new(1, 0, &[port.to_string().as_str()])],
    );
    eds.policy = Some(Policy {
        drop_overloads: vec![DropOverload {
            category: "throttle".into(),
            drop_percentage: Some(FractionalPercent {
                numerator: 100,
                denominator: 0,
            }),
        }],
        ..Policy::default()
    });
    cp.set(eds);
    let ch = channel(&cp);
    ready(&ch, "backends").await;
    acked(&cp, ResourceType::ClusterLoadAssignment).await;
    // Nothing listens: the RPC fails on the endpoint, it is not dropped.
    let e = call_with(&ch, Duration::from_secs(2)).await.unwrap_err();
    assert!(
        !e.message().contains("drop"),
        "dropped without a ready endpoint: {e:?}"
    );

    let _b = backend::Backend::start_at(port, backend::Knobs::default()).unwrap();
    let cluster = ch.cluster("backends").unwrap();
    until("the endpoint to be ready", Duration::from_secs(10), || {
        cluster.ready_endpoints() > 0
    })
    .await;
    let e = call(&ch).await.unwrap_err();
    assert!(e.message().contains("drop"), "{e:?}");
}
