//! A real Pingora proxy in front of the backends, in its own thread, stopped by a shutdown
//! signal (never `run_forever`, which exits the process). The `ProxyHttp` implementation shows
//! the whole integration: `Tracker::select` (retries exclude backends already tried), `Tracker`
//! in every hook, Pingora's TCP health checks reporting to the picker. Each response carries an
//! `x-upstream` header naming the backend the proxy chose, so shares can be counted for any
//! backend. A `pickwise_prequal` group gets its HTTP prober as a second background service.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pickwise::LbPolicy;
use pickwise_pingora::{tcp_health_check, ProbeConfig, Prober, Selector, Shared, Tracker};
use pingora::lb::selection::{BackendIter, BackendSelection, Consistent, RoundRobin};
use pingora::lb::{discovery, health_check, Backend, Backends, LoadBalancer};
use pingora::prelude::*;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;

use super::wait;

/// Which selection the proxy uses.
#[derive(Clone)]
pub enum Selection {
    Pickwise(Arc<Shared>),
    RoundRobin,
    Ketama,
}

/// The balancers a proxy can hold.
pub enum Balancer {
    Pickwise(Arc<LoadBalancer<Selector>>),
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Ketama(Arc<LoadBalancer<Consistent>>),
}

impl Balancer {
    /// The backend for this attempt: pickwise's never repeats one the request already tried
    /// (while another is healthy); Pingora's own selections are used as they come.
    fn select(&self, key: &[u8], ctx: &mut Tracker) -> Option<Backend> {
        match self {
            Self::Pickwise(lb) => ctx.select(lb, key, 8),
            Self::RoundRobin(lb) => {
                let b = lb.select(key, 8)?;
                ctx.start(&b);
                Some(b)
            }
            Self::Ketama(lb) => {
                let b = lb.select(key, 8)?;
                ctx.start(&b);
                Some(b)
            }
        }
    }
}

impl Balancer {
    /// How many backends the balancer's discovery has found so far, readable from another
    /// thread. Pingora publishes a new backend set after building the selector from it, so a
    /// full count means the selector is built too.
    fn discovered(&self) -> Box<dyn Fn() -> usize + Send> {
        match self {
            Self::Pickwise(lb) => {
                let lb = lb.clone();
                Box::new(move || lb.backends().get_backend().len())
            }
            Self::RoundRobin(lb) => {
                let lb = lb.clone();
                Box::new(move || lb.backends().get_backend().len())
            }
            Self::Ketama(lb) => {
                let lb = lb.clone();
                Box::new(move || lb.backends().get_backend().len())
            }
        }
    }
}

/// The response header naming the backend the proxy chose.
pub const UPSTREAM_HEADER: &str = "x-upstream";

/// How a test proxy runs.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Hash requests on this request header (ring hash, Maglev, Ketama).
    pub hash_header: Option<&'static str>,
    /// gRPC over h2c on both sides.
    pub h2c: bool,
    /// Pingora's TCP health checks at this period (`None`: no health checks).
    pub health_check: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            hash_header: None,
            h2c: false,
            health_check: Some(Duration::from_millis(200)),
        }
    }
}

pub struct Proxy {
    lb: Balancer,
    hash_header: Option<&'static str>,
    /// Speak HTTP/2 to the backends (gRPC over h2c).
    h2c: bool,
    /// The pickwise group (for leases); `None` for Pingora's own selections.
    shared: Option<Arc<Shared>>,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Tracker;

    fn new_ctx(&self) -> Tracker {
        self.shared.clone().map(Tracker::new).unwrap_or_default()
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Tracker) -> Result<Box<HttpPeer>> {
        let key = self
            .hash_header
            .and_then(|h| session.req_header().headers.get(h))
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        let backend = self
            .lb
            .select(&key, ctx)
            .ok_or_else(|| Error::explain(HTTPStatus(503), "no backend"))?;
        let mut peer = HttpPeer::new(backend.addr.to_string().as_str(), false, String::new());
        if self.h2c {
            peer.options.set_http_version(2, 2); // h2 prior knowledge: gRPC over cleartext
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _s: &mut Session,
        _p: &HttpPeer,
        ctx: &mut Tracker,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.connect_failed();
        e.set_retry(true); // nothing was sent: another backend may serve it
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Tracker,
        client_reused: bool,
    ) -> Box<Error> {
        ctx.proxy_failed(&e);
        // Pingora's default rule: never retry a non-idempotent request or one whose body no
        // longer fits the retry buffer; otherwise retry errors on reused connections.
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Tracker,
    ) -> Result<()> {
        ctx.response(upstream_response);
        if let Some(addr) = ctx.current() {
            upstream_response.insert_header(UPSTREAM_HEADER, addr.to_string())?;
        }
        Ok(())
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut pingora::http::HMap,
        ctx: &mut Tracker,
    ) -> Result<()> {
        ctx.trailers(trailers);
        Ok(())
    }

    async fn logging(&self, _session: &mut Session, e: Option<&Error>, ctx: &mut Tracker) {
        ctx.finish(e);
    }
}

struct ChannelSignal(tokio::sync::Mutex<tokio::sync::oneshot::Receiver<()>>);

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        let _ = (&mut *self.0.lock().await).await;
        ShutdownSignal::FastShutdown
    }
}

/// A running proxy; dropping it shuts the server down.
pub struct RunningProxy {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn balancer<S>(
    targets: &[String],
    config: Option<S::Config>,
    check: Option<Box<health_check::TcpHealthCheck>>,
    every: Option<Duration>,
) -> LoadBalancer<S>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    let discovery = discovery::Static::try_from_iter(targets.iter().map(String::as_str)).expect("addresses");
    let mut lb = LoadBalancer::from_backends_with_config(Backends::new(discovery), config);
    if let (Some(check), Some(every)) = (check, every) {
        lb.set_health_check(check);
        lb.health_check_frequency = Some(every);
    }
    lb
}

/// Starts a Pingora proxy on a free loopback port in front of `targets` (HTTP/1.1).
pub fn start(selection: Selection, targets: &[String], hash_header: Option<&'static str>) -> RunningProxy {
    start_with(selection, targets, hash_header, false)
}

/// [`start`], or with `h2c` a gRPC proxy: HTTP/2 cleartext on both sides.
pub fn start_with(
    selection: Selection,
    targets: &[String],
    hash_header: Option<&'static str>,
    h2c: bool,
) -> RunningProxy {
    start_opts(
        selection,
        targets,
        Options {
            hash_header,
            h2c,
            ..Options::default()
        },
    )
}

/// [`start`] with every option.
pub fn start_opts(selection: Selection, targets: &[String], options: Options) -> RunningProxy {
    let Options {
        hash_header,
        h2c,
        health_check: every,
    } = options;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let targets = targets.to_vec();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Box<dyn Fn() -> usize + Send>>();
    let thread = std::thread::spawn({
        let targets = targets.clone();
        move || {
            let mut server = Server::new(None).expect("server");
            server.bootstrap();
            let shared = match &selection {
                Selection::Pickwise(s) => Some(s.clone()),
                _ => None,
            };
            let prequal = shared
                .clone()
                .filter(|s| matches!(s.policy(), LbPolicy::Prequal(_)));
            let (lb, bg): (Balancer, Box<dyn pingora::services::ServiceWithDependents>) = match selection {
                Selection::Pickwise(shared) => {
                    // Pingora's health results reach the picker.
                    let check = tcp_health_check(&shared);
                    let lb = balancer::<Selector>(&targets, Some(shared), Some(check), every);
                    let bg = background_service("lb", lb);
                    (Balancer::Pickwise(bg.task()), Box::new(bg))
                }
                Selection::RoundRobin => {
                    let check = health_check::TcpHealthCheck::new();
                    let lb = balancer::<RoundRobin>(&targets, None, Some(check), every);
                    let bg = background_service("lb", lb);
                    (Balancer::RoundRobin(bg.task()), Box::new(bg))
                }
                Selection::Ketama => {
                    let check = health_check::TcpHealthCheck::new();
                    let lb = balancer::<Consistent>(&targets, None, Some(check), every);
                    let bg = background_service("lb", lb);
                    (Balancer::Ketama(bg.task()), Box::new(bg))
                }
            };
            let discovered = lb.discovered();
            let proxy = Proxy {
                lb,
                hash_header,
                h2c,
                shared,
            };
            let mut service = http_proxy_service(&server.configuration, proxy);
            if h2c {
                if let Some(app) = service.app_logic_mut() {
                    let mut options = pingora::apps::HttpServerOptions::default();
                    options.h2c = true;
                    app.server_options = Some(options);
                }
            }
            service.add_tcp(&addr.to_string());
            if let Some(shared) = prequal {
                let prober = Prober::new(shared, ProbeConfig::default());
                server.add_service(background_service("prequal prober", prober));
            }
            server.add_boxed_service(bg);
            server.add_service(service);
            let _ = ready_tx.send(discovered);
            server.run(RunArgs {
                shutdown_signal: Box::new(ChannelSignal(tokio::sync::Mutex::new(stop_rx))),
            });
        }
    });
    let discovered = ready_rx
        .recv_timeout(wait::DEADLINE)
        .expect("the proxy thread built its server");
    // Ready when the listener accepts and the first discovery has built the selector over every
    // target (Pingora publishes the backend set after the selector built from it).
    wait::blocking(&format!("the proxy at {addr} to accept connections"), || {
        std::net::TcpStream::connect(addr)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    let want = targets.iter().collect::<std::collections::BTreeSet<_>>().len();
    wait::blocking("the proxy's first discovery", || {
        let n = discovered();
        if n == want {
            Ok(())
        } else {
            Err(format!("{n} of {want} backends discovered"))
        }
    });
    RunningProxy {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}
