//! A real tonic server for tests and the `loadtest` example: `grpc.health.v1.Health/Check` on
//! loopback, in its own thread and runtime (like a separate process), with a configurable extra
//! delay, a failure switch, a failing share of calls, a hit counter, an `x-backend` response
//! header naming it, ORCA load reports (per call and out of band) from `knobs.orca`, and
//! Prequal's server side (`PrequalLayer` counting requests in flight in `knobs.prequal` and
//! piggybacking reports on responses, the `Prequal/Probe` service, switched off with
//! `knobs.no_probe_service`; probes and their connections counted).
//! `kill()` drops its runtime: every socket closes at once, as when a process dies.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

#[derive(Clone, Default)]
pub struct Knobs {
    pub hits: Arc<AtomicU64>,
    pub delay_ms: Arc<AtomicU64>,
    pub fail: Arc<AtomicBool>,
    /// The code a failing Check answers (`fail`): 0 means UNAVAILABLE.
    pub fail_code: Arc<AtomicU64>,
    pub not_serving: Arc<AtomicBool>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicU64>,
    /// The `grpc-timeout` header of the last Check, as received.
    pub last_timeout: Arc<Mutex<Option<String>>>,
    /// How long a Watch stream stays open after its first message.
    pub stream_ms: Arc<AtomicU64>,
    /// This percentage of Check calls answers UNAVAILABLE at once (no delay); see
    /// [`Backend::set_fail_percent`].
    pub fail_percent: Arc<AtomicU64>,
    /// Check calls answered UNAVAILABLE because of `fail_percent`.
    pub failed_fast: Arc<AtomicU64>,
    /// ORCA load reports (gRFC A51): what this server reports out of band
    /// (`OpenRcaService`, 50 ms minimum interval) and, while `per_call_reports` is on, in each
    /// Check's `endpoint-load-metrics-bin` trailer.
    pub orca: pickwise_orca::server::ServerMetricsRecorder,
    pub per_call_reports: Arc<AtomicBool>,
    /// A finite capacity ([`Backend::set_capacity`]): each Check holds one of this many workers
    /// for `work_ms`, waiting when all are busy; the server then reports its own load (qps and
    /// busy workers as application utilization, sampled every 50 ms) in `orca`.
    pub capacity: Arc<Mutex<Option<Arc<tokio::sync::Semaphore>>>>,
    pub workers: Arc<AtomicU64>,
    pub work_ms: Arc<AtomicU64>,
    pub busy: Arc<AtomicU64>,
    /// Prequal (NSDI '24): requests in flight and the latency estimate per RIF, counted by
    /// `PrequalLayer` and answered by the probe service.
    pub prequal: pickwise_orca::prequal::ProbeState,
    /// The probe service answers UNIMPLEMENTED (as a server without it would).
    pub no_probe_service: Arc<AtomicBool>,
    /// Probe requests received (`pickwise.prequal.v1.Prequal/Probe`), and the client ends of
    /// the connections probes and Check calls came on.
    pub probes: Arc<AtomicU64>,
    pub probe_peers: Arc<Mutex<HashSet<SocketAddr>>>,
    pub call_peers: Arc<Mutex<HashSet<SocketAddr>>>,
}

/// Counts probes and notes which connection each probe and Check came on; answers probes
/// UNIMPLEMENTED while `no_probe_service` is set.
#[derive(Clone)]
struct Tap {
    knobs: Knobs,
}

impl<S> tower::Layer<S> for Tap {
    type Service = TapService<S>;

    fn layer(&self, inner: S) -> TapService<S> {
        TapService {
            inner,
            knobs: self.knobs.clone(),
        }
    }
}

#[derive(Clone)]
struct TapService<S> {
    inner: S,
    knobs: Knobs,
}

impl<S, B> tower::Service<http::Request<B>> for TapService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let peer = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|i| i.remote_addr());
        if req.uri().path() == pickwise_orca::prequal::proto::PROBE_GRPC_PATH {
            self.knobs.probes.fetch_add(1, Ordering::Relaxed);
            if let Some(p) = peer {
                self.knobs.probe_peers.lock().unwrap().insert(p);
            }
            if self.knobs.no_probe_service.load(Ordering::Relaxed) {
                let resp = Status::unimplemented("no probe service").into_http();
                return Box::pin(async move { Ok(resp) });
            }
        } else if let Some(p) = peer {
            self.knobs.call_peers.lock().unwrap().insert(p);
        }
        Box::pin(self.inner.call(req))
    }
}

struct Service {
    name: String,
    knobs: Knobs,
}

#[tonic::async_trait]
impl Health for Service {
    async fn check(
        &self,
        _req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let hit = self.knobs.hits.fetch_add(1, Ordering::Relaxed);
        let pct = self.knobs.fail_percent.load(Ordering::Relaxed);
        if pct > 0 && mix(hit) % 100 < pct {
            self.knobs.failed_fast.fetch_add(1, Ordering::Relaxed);
            return Err(Status::unavailable(format!("{} failed this call", self.name)));
        }
        if self.knobs.per_call_reports.load(Ordering::Relaxed) {
            if let Some(r) = _req
                .extensions()
                .get::<pickwise_orca::server::CallMetricsRecorder>()
            {
                // The server-wide values go out merged under the call's (the layer's
                // provider); recording one marks the call as reporting.
                if let Some(q) = self.knobs.orca.snapshot().qps {
                    r.set_qps(q);
                }
            }
        }
        let capacity = self.knobs.capacity.lock().unwrap().clone();
        if let Some(sem) = capacity {
            let _worker = sem.acquire().await;
            self.knobs.busy.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(self.knobs.work_ms.load(Ordering::Relaxed))).await;
            self.knobs.busy.fetch_sub(1, Ordering::Relaxed);
        }
        let timeout = _req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        *self.knobs.last_timeout.lock().unwrap() = timeout;
        let delay = self.knobs.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.knobs.fail.load(Ordering::Relaxed) {
            let code = match self.knobs.fail_code.load(Ordering::Relaxed) {
                0 => tonic::Code::Unavailable,
                c => tonic::Code::from(c as i32),
            };
            return Err(Status::new(code, format!("{} is failing", self.name)));
        }
        let status = if self.knobs.not_serving.load(Ordering::Relaxed) {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        let mut resp = Response::new(HealthCheckResponse {
            status: status as i32,
        });
        resp.metadata_mut()
            .insert("x-backend", self.name.parse().expect("ascii name"));
        Ok(resp)
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<HealthCheckResponse, Status>>;

    /// Sends SERVING at once, then ends the stream after `stream_ms`.
    async fn watch(&self, _req: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let hold = Duration::from_millis(self.knobs.stream_ms.load(Ordering::Relaxed));
        tokio::spawn(async move {
            let first = HealthCheckResponse {
                status: ServingStatus::Serving as i32,
            };
            if tx.send(Ok(first)).await.is_ok() {
                tokio::time::sleep(hold).await;
            }
        });
        let mut resp = Response::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        resp.metadata_mut()
            .insert("x-backend", self.name.parse().expect("ascii name"));
        Ok(resp)
    }
}

/// While a capacity is set: every 50 ms, the server's qps (smoothed over about a second) and
/// the share of busy workers (smoothed the same way) go into its ORCA recorder, as a real
/// server's metrics recorder would publish them.
async fn report_load(knobs: Knobs) {
    let tick = Duration::from_millis(50);
    let (mut qps, mut util, mut last_hits) = (0.0f64, 0.0f64, knobs.hits.load(Ordering::Relaxed));
    loop {
        tokio::time::sleep(tick).await;
        let hits = knobs.hits.load(Ordering::Relaxed);
        let rate = (hits - last_hits) as f64 / tick.as_secs_f64();
        last_hits = hits;
        let workers = knobs.workers.load(Ordering::Relaxed);
        if workers == 0 {
            continue;
        }
        let busy = knobs.busy.load(Ordering::Relaxed) as f64 / workers as f64;
        // An EWMA with a 1 s time constant at 50 ms ticks.
        let a = 0.05;
        qps += a * (rate - qps);
        util += a * (busy - util);
        knobs.orca.set_qps(qps.max(0.01));
        knobs.orca.set_application_utilization(util.max(0.01));
    }
}

/// splitmix64's finaliser: the `n`th call's draw. Which calls fail is pseudo-random (no runs of
/// exactly every third call) yet needs no generator state shared between calls.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub struct Backend {
    pub addr: SocketAddr,
    pub knobs: Knobs,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Backend {
    /// Starts on `127.0.0.1:0`.
    pub fn start() -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), Knobs::default()).expect("bind")
    }

    /// Starts on `addr` (e.g. to restart on the same port) with shared knobs.
    pub fn start_at(addr: SocketAddr, knobs: Knobs) -> std::io::Result<Self> {
        Self::start_with(addr, knobs, None)
    }

    /// Starts on `127.0.0.1:0` serving TLS with this PEM certificate and key.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        let identity = tonic::transport::Identity::from_pem(cert_pem, key_pem);
        Self::start_with("127.0.0.1:0".parse().unwrap(), Knobs::default(), Some(identity)).expect("bind")
    }

    fn start_with(
        addr: SocketAddr,
        knobs: Knobs,
        tls: Option<tonic::transport::Identity>,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        // Bind with std so this works from inside another runtime too.
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let service = Service {
            name: addr.to_string(),
            knobs: knobs.clone(),
        };
        let knobs_conn = knobs.connections.clone();
        runtime.spawn(report_load(knobs.clone()));
        let orca = knobs.orca.clone();
        let prequal = knobs.prequal.clone();
        let tap = Tap { knobs: knobs.clone() };
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let connections = knobs_conn;
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                move |s| {
                    connections.fetch_add(1, Ordering::Relaxed);
                    // As tonic's own `serve` does (`tcp_nodelay` defaults to true; with
                    // `serve_with_incoming` the sockets are ours to set). Without it, small
                    // responses interleaved on a connection (Prequal's probes) wait out the
                    // client's delayed ACK: ~40 ms tails.
                    if let Ok(s) = &s {
                        let _ = s.set_nodelay(true);
                    }
                    s
                },
            );
            let mut server = tonic::transport::Server::builder();
            if let Some(identity) = tls {
                match server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)) {
                    Ok(s) => server = s,
                    Err(_) => return,
                }
            }
            let _ = server
                .layer(pickwise_orca::server::CallMetricsLayer::with_server_metrics(
                    orca.clone(),
                ))
                .layer(pickwise_orca::prequal::PrequalLayer::new(prequal.clone()))
                .layer(tap)
                .add_service(HealthServer::new(service))
                .add_service(pickwise_orca::prequal::PrequalServer::new(prequal))
                .add_service(
                    pickwise_orca::server::OpenRcaServer::new(orca)
                        .with_min_report_interval(Duration::from_millis(50)),
                )
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(Self {
            addr,
            knobs,
            runtime: Some(runtime),
        })
    }

    /// Gives the backend `workers` workers, each Check taking one for `work_ms` (queueing when
    /// all are busy), and makes it report its load (ORCA, per call and out of band).
    pub fn set_capacity(&self, workers: u64, work_ms: u64) {
        let workers = workers.max(1);
        self.knobs.workers.store(workers, Ordering::Relaxed);
        self.knobs.work_ms.store(work_ms, Ordering::Relaxed);
        *self.knobs.capacity.lock().unwrap() = Some(Arc::new(tokio::sync::Semaphore::new(workers as usize)));
        self.knobs.per_call_reports.store(true, Ordering::Relaxed);
    }

    /// Restarts a killed backend on its old port, keeping its knobs.
    pub fn restart(&mut self) {
        for _ in 0..50 {
            if let Ok(b) = Self::start_at(self.addr, self.knobs.clone()) {
                *self = b;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("could not rebind {}", self.addr);
    }

    /// Kills the server: its runtime is dropped and every socket closes.
    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    pub fn hits(&self) -> u64 {
        self.knobs.hits.load(Ordering::Relaxed)
    }

    pub fn set_delay(&self, ms: u64) {
        self.knobs.delay_ms.store(ms, Ordering::Relaxed);
    }

    pub fn connections(&self) -> u64 {
        self.knobs.connections.load(Ordering::Relaxed)
    }

    pub fn set_failing(&self, fail: bool) {
        self.knobs.fail.store(fail, Ordering::Relaxed);
    }

    /// `pct`% of Check calls (0..=100, pseudo-random by call number) answer UNAVAILABLE at once,
    /// before any [`set_delay`](Self::set_delay): a backend that fails part of its requests fast.
    /// 0 turns it off.
    pub fn set_fail_percent(&self, pct: u64) {
        self.knobs.fail_percent.store(pct.min(100), Ordering::Relaxed);
    }

    /// Prequal probes received.
    pub fn probes(&self) -> u64 {
        self.knobs.probes.load(Ordering::Relaxed)
    }

    /// Requests in flight as the server's Prequal state counts them.
    pub fn rif(&self) -> u32 {
        self.knobs.prequal.rif()
    }

    /// Check calls answered UNAVAILABLE by [`set_fail_percent`](Self::set_fail_percent).
    pub fn failed_fast(&self) -> u64 {
        self.knobs.failed_fast.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}
