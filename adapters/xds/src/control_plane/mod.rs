//! A small in-process ADS control plane (state of the world) for tests, demos and the loadtest:
//! set resources, and every connected client gets them; records ACKs and NACKs; stops and
//! restarts on the same port. It speaks to pickwise, gRPC C-core and grpc-go alike. It listens
//! on TCP ([`ControlPlane::start`]) or on a Unix socket ([`ControlPlane::start_unix`], as
//! istio-agent serves xDS to proxyless gRPC).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use pickwise_xds::control_plane::{resources, ControlPlane};
//! let cp = ControlPlane::start().await?;
//! cp.set(resources::listener("greeter", "routes"));
//! cp.set(resources::route_config("routes", "greeter", "backends"));
//! cp.set(resources::cluster("backends", resources::Policy::RoundRobin));
//! cp.set(resources::endpoints("backends", &[resources::Locality::new(1, 0, &["127.0.0.1:50051"])]));
//! std::env::set_var("GRPC_XDS_BOOTSTRAP_CONFIG", cp.bootstrap_json());
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{AggregatedDiscoveryService, AggregatedDiscoveryServiceServer},
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::resource::ResourceType;

pub mod resources;

/// A NACK or ACK a client sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// `LDS`, `RDS`, `CDS` or `EDS`.
    pub kind: &'static str,
    /// The version the client says it accepted.
    pub version: String,
    /// The NACK's `error_detail` message (`None` for an ACK).
    pub error: Option<String>,
}

/// A request a client sent on an ADS stream, as received.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Received {
    /// Which stream it came on (1 for the first stream this control plane accepted).
    pub stream: u64,
    /// `LDS`, `RDS`, `CDS` or `EDS`.
    pub kind: &'static str,
    /// The names subscribed to (empty: none, or a wildcard on a type's first request).
    pub resource_names: Vec<String>,
    /// `version_info`.
    pub version: String,
    /// `response_nonce`.
    pub nonce: String,
    /// The NACK's `error_detail` message, if any.
    pub error: Option<String>,
}

#[derive(Default)]
struct State {
    /// Resources by type and name.
    resources: [BTreeMap<String, Any>; 4],
    /// Version per type, bumped when that type's resources change.
    versions: [u64; 4],
    /// When each (type, version) was first sent, for latency measurements.
    sent: HashMap<(usize, u64), Instant>,
    replies: Vec<Reply>,
    received: Vec<Received>,
    streams: u64,
    /// Per TLS handshake completed: the leaf certificate the client presented (DER).
    #[cfg(feature = "tls")]
    client_certificates: Vec<Option<Vec<u8>>>,
    /// TLS handshakes that failed.
    #[cfg(feature = "tls")]
    tls_failures: u64,
}

struct Inner {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where the control plane listens.
#[derive(Clone)]
enum Bind {
    /// TCP; the port is fixed after the first bind, so a restart serves on the same one.
    Tcp(SocketAddr),
    /// A Unix socket at this path (replaced on each bind).
    Unix(PathBuf),
    /// TLS over TCP with this server configuration (its client verifier decides mTLS).
    #[cfg(feature = "tls")]
    Tls(SocketAddr, Arc<tokio_rustls::rustls::ServerConfig>),
}

/// The control plane. Dropping it stops the server.
pub struct ControlPlane {
    addr: SocketAddr,
    bind: Bind,
    inner: Arc<Inner>,
    stop: Option<watch::Sender<bool>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_uri", &self.server_uri())
            .finish_non_exhaustive()
    }
}

/// A value the control plane can serve: a typed resource with its name.
pub trait IntoResource {
    /// The resource's type, name and encoding.
    fn into_resource(self) -> (ResourceType, String, Any);
}

impl ControlPlane {
    /// Starts on `127.0.0.1:0`.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_at("127.0.0.1:0".parse().expect("literal address")).await
    }

    /// Starts on `addr`.
    pub async fn start_at(addr: SocketAddr) -> std::io::Result<Self> {
        Self::start_bound(Bind::Tcp(addr)).await
    }

    /// Starts on a Unix socket at `path` (a file left there is replaced). Clients reach it with
    /// `server_uri` `unix:///absolute/path`, as in the bootstrap istio-agent writes for
    /// proxyless gRPC (`unix:///etc/istio/proxy/XDS`).
    pub async fn start_unix(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        Self::start_bound(Bind::Unix(path.into())).await
    }

    /// Starts on `addr` serving TLS with `config` (ALPN `h2` is added); records the
    /// certificate each client presents ([`client_certificates`](Self::client_certificates)).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub async fn start_tls(
        addr: SocketAddr,
        mut config: tokio_rustls::rustls::ServerConfig,
    ) -> std::io::Result<Self> {
        config.alpn_protocols = vec![b"h2".to_vec()];
        Self::start_bound(Bind::Tls(addr, Arc::new(config))).await
    }

    /// The leaf certificate (DER) each completed TLS handshake presented, in order (`None`:
    /// none presented).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn client_certificates(&self) -> Vec<Option<Vec<u8>>> {
        self.inner.lock().client_certificates.clone()
    }

    /// How many TLS handshakes failed (a client without an accepted certificate, say).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_failures(&self) -> u64 {
        self.inner.lock().tls_failures
    }

    async fn start_bound(bind: Bind) -> std::io::Result<Self> {
        let (changed, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            changed,
        });
        let addr = match &bind {
            Bind::Tcp(addr) => *addr,
            #[cfg(feature = "tls")]
            Bind::Tls(addr, _) => *addr,
            Bind::Unix(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let mut cp = Self {
            addr,
            bind,
            inner,
            stop: None,
        };
        cp.serve().await?;
        Ok(cp)
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let service = Ads {
            inner: self.inner.clone(),
            stopped: stopped.clone(),
        };
        let mut until = stopped.clone();
        let router =
            tonic::transport::Server::builder().add_service(AggregatedDiscoveryServiceServer::new(service));
        let shutdown = async move {
            let _ = until.wait_for(|s| *s).await;
        };
        match &self.bind {
            Bind::Tcp(_) => {
                let listener = tokio::net::TcpListener::bind(self.addr).await?;
                self.addr = listener.local_addr()?;
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
            }
            Bind::Unix(path) => {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                let listener = tokio::net::UnixListener::bind(path)?;
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
            }
            #[cfg(feature = "tls")]
            Bind::Tls(_, config) => {
                let listener = tokio::net::TcpListener::bind(self.addr).await?;
                self.addr = listener.local_addr()?;
                let incoming = tls::accept(listener, config.clone(), self.inner.clone(), stopped.clone());
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
            }
        }
        self.stop = Some(stop);
        Ok(())
    }

    /// The TCP address clients connect to (`0.0.0.0:0` on a Unix socket: see
    /// [`server_uri`](Self::server_uri)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bootstrap's `server_uri` for this control plane: `host:port`, or
    /// `unix:///path` on a Unix socket.
    pub fn server_uri(&self) -> String {
        match &self.bind {
            Bind::Tcp(_) => self.addr.to_string(),
            Bind::Unix(path) => format!("unix://{}", path.display()),
            #[cfg(feature = "tls")]
            Bind::Tls(..) => self.addr.to_string(),
        }
    }

    /// A gRFC A27 bootstrap pointing at this control plane.
    pub fn bootstrap_json(&self) -> String {
        format!(
            r#"{{"xds_servers":[{{"server_uri":"{}","channel_creds":[{{"type":"insecure"}}],"server_features":["xds_v3"]}}],"node":{{"id":"pickwise-test","cluster":"test","locality":{{"zone":"z1"}}}}}}"#,
            self.server_uri()
        )
    }

    /// Adds or replaces a resource; clients subscribed to it get it at once.
    pub fn set(&self, resource: impl IntoResource) {
        let (t, name, any) = resource.into_resource();
        self.set_any(t, &name, any);
    }

    /// Adds or replaces a resource from its raw `Any` (to serve invalid bytes, say).
    pub fn set_any(&self, t: ResourceType, name: &str, any: Any) {
        let mut s = self.inner.lock();
        s.resources[t as usize].insert(name.to_owned(), any);
        s.versions[t as usize] += 1;
        drop(s);
        self.inner.changed.send_modify(|v| *v += 1);
    }

    /// Removes a resource (for listeners and clusters, clients see it deleted).
    pub fn remove(&self, t: ResourceType, name: &str) {
        let mut s = self.inner.lock();
        if s.resources[t as usize].remove(name).is_some() {
            s.versions[t as usize] += 1;
        }
        drop(s);
        self.inner.changed.send_modify(|v| *v += 1);
    }

    /// The current version of a type's resources.
    pub fn version(&self, t: ResourceType) -> u64 {
        self.inner.lock().versions[t as usize]
    }

    /// When a type's `version` was first sent to a client.
    pub fn sent_at(&self, t: ResourceType, version: u64) -> Option<Instant> {
        self.inner.lock().sent.get(&(t as usize, version)).copied()
    }

    /// Every ACK and NACK received so far.
    pub fn replies(&self) -> Vec<Reply> {
        self.inner.lock().replies.clone()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.inner.lock().received.clone()
    }

    /// The NACKs received so far.
    pub fn nacks(&self) -> Vec<Reply> {
        self.replies().into_iter().filter(|r| r.error.is_some()).collect()
    }

    /// ADS streams opened so far.
    pub fn streams(&self) -> u64 {
        self.inner.lock().streams
    }

    /// Stops serving: open streams end, the port closes. Resources are kept.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
            stop.closed().await;
        }
    }

    /// Serves again on the same port (or socket path) after [`stop`](Self::stop).
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let mut last = None;
        for _ in 0..100 {
            match self.serve().await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("cannot rebind")))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
}

#[cfg(feature = "tls")]
mod tls {
    //! The TLS accept loop: handshakes run concurrently, each finished one is recorded and
    //! handed to the tonic server.
    use super::*;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};

    /// A TLS connection as the tonic server takes it.
    pub(super) struct Conn(tokio_rustls::server::TlsStream<TcpStream>);

    impl tonic::transport::server::Connected for Conn {
        type ConnectInfo = ();
        fn connect_info(&self) -> Self::ConnectInfo {}
    }

    impl AsyncRead for Conn {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Conn {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    pub(super) fn accept(
        listener: TcpListener,
        config: Arc<tokio_rustls::rustls::ServerConfig>,
        inner: Arc<Inner>,
        mut stopped: watch::Receiver<bool>,
    ) -> impl Stream<Item = std::io::Result<Conn>> {
        let (tx, rx) = mpsc::channel(16);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                    _ = stopped.wait_for(|s| *s) => return,
                };
                let (acceptor, inner, tx) = (acceptor.clone(), inner.clone(), tx.clone());
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let leaf = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| c.to_vec());
                            inner.lock().client_certificates.push(leaf);
                            let _ = tx.send(Ok(Conn(tls))).await;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "control plane: TLS handshake failed");
                            inner.lock().tls_failures += 1;
                        }
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

#[derive(Clone)]
struct Ads {
    inner: Arc<Inner>,
    stopped: watch::Receiver<bool>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        let stream = {
            let mut s = self.inner.lock();
            s.streams += 1;
            s.streams
        };
        tokio::spawn(run_stream(
            stream,
            self.inner.clone(),
            self.stopped.clone(),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented(
            "this control plane serves state-of-the-world ADS only",
        ))
    }
}

/// One client's stream: subscriptions per type, a response whenever a subscribed type changes.
async fn run_stream(
    stream: u64,
    inner: Arc<Inner>,
    mut stopped: watch::Receiver<bool>,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut subs: [Option<BTreeSet<String>>; 4] = Default::default();
    let mut sent: [Option<u64>; 4] = [None; 4];
    let mut nonce = 0u64;
    let mut changed = inner.changed.subscribe();
    loop {
        tokio::select! {
            req = requests.message() => {
                let Ok(Some(req)) = req else { return };
                let Some(t) = ResourceType::from_url(&req.type_url) else { continue };
                let i = t as usize;
                {
                    let mut s = inner.lock();
                    if !req.response_nonce.is_empty() {
                        s.replies.push(Reply {
                            kind: t.short(),
                            version: req.version_info.clone(),
                            error: req.error_detail.as_ref().map(|s| s.message.clone()),
                        });
                    }
                    s.received.push(Received {
                        stream,
                        kind: t.short(),
                        resource_names: req.resource_names.clone(),
                        version: req.version_info.clone(),
                        nonce: req.response_nonce.clone(),
                        error: req.error_detail.as_ref().map(|s| s.message.clone()),
                    });
                }
                let names: BTreeSet<String> = req.resource_names.into_iter().collect();
                if subs[i].as_ref() != Some(&names) {
                    subs[i] = Some(names);
                    sent[i] = None; // new subscription: send what we have
                }
            }
            r = changed.changed() => { if r.is_err() { return } }
            _ = stopped.wait_for(|s| *s) => return,
        }
        for t in ResourceType::ALL {
            let i = t as usize;
            let Some(names) = &subs[i] else { continue };
            let (resp, version) = {
                let mut s = inner.lock();
                let version = s.versions[i];
                if sent[i] == Some(version) {
                    continue;
                }
                nonce += 1;
                let resources: Vec<Any> = s.resources[i]
                    .iter()
                    .filter(|(n, _)| names.contains(*n))
                    .map(|(_, a)| a.clone())
                    .collect();
                s.sent.entry((i, version)).or_insert_with(Instant::now);
                (
                    DiscoveryResponse {
                        version_info: version.to_string(),
                        resources,
                        type_url: t.type_url(),
                        nonce: nonce.to_string(),
                        ..DiscoveryResponse::default()
                    },
                    version,
                )
            };
            sent[i] = Some(version);
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
        }
    }
}
