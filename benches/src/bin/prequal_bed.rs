//! Issue 23's heterogeneous testbed on real sockets: N HTTP/1.1 servers (hyper 1) on loopback
//! and one client that drives the core [`Balancer`] directly over hyper, in one process (servers
//! on one thread, the client on another, each a single-threaded tokio runtime).
//!
//! **Servers.** Each has `--workers` workers (a FIFO semaphore); a query holds a worker for a
//! sleep of `--base-ms` × its speed factor × a draw from a normal with sd = mean truncated at 0
//! (sleep-based, so the servers do not compete with the client for the CPU). The heterogeneous
//! fleet has half the servers at half speed; speeds drift (±25%, a 10 s sine per server) and
//! antagonists slow each server ×2 for exponential periods (mean 1 s) about 10% of the time. Each
//! server counts its queries in flight and their latencies per RIF with
//! [`pickwise_orca::prequal::ProbeState`] (the median of recent latencies at a RIF), answers
//! `GET /prequal/probe` with `x-prequal-rif` / `x-prequal-latency-us` (uncounted), piggybacks
//! the same headers on every response, and sends its last second's qps and utilization as
//! Envoy's `endpoint-load-metrics` (TEXT) for `weighted_round_robin`. A query that waited past
//! the client's deadline for a worker is answered 504 at once. A failing server answers every
//! query and probe 503 at once, without load headers.
//!
//! **Clients.** `--clients` clients (10), each its own core balancer and connections, on one
//! thread, share open-loop Poisson arrivals (bursts in the heterogeneous scenarios: 250 ms at 1.6×
//! the rate every 2.5 s, the rest lowered so the mean is the nominal load); latency runs from the
//! intended send time. Each query: [`Prepared::pick`], an [`InFlight`] guard, the query on a
//! keep-alive connection of the endpoint's pool, the outcome (2xx success; other statuses and
//! connection errors `Outcome::Failure`; the `--timeout-ms` deadline `Outcome::Neutral` and a
//! failed request counted at the timeout). Prequal: the probes [`Prepared::probe_targets`] owes
//! go out as `GET /prequal/probe` on their own tasks and are recorded when answered;
//! `+piggyback` also records each response's headers. Probes per request and the client
//! thread's CPU time per request (`/proc/thread-self/stat`: picks, probes, hyper) are reported.
//!
//! Scenarios as the simulator's (`core/examples/prequal_sim.rs`): `hetero`, `ramp` (0.75× →
//! 1.75× in steps of ×10/9), `failing` (0.8 load; servers 0 and 1 fail from 2 s into the window),
//! `equal`. Capacity is `Σ workers / mean service time` (× 0.95 for the antagonists).
//!
//! ```text
//! cargo run --release -p pickwise-benches --bin prequal_bed -- [--scenario all] [--seeds 2] \
//!     [--policy prequal --policy p2c-peak-ewma ...] [--duration 8] [--step 2]
//! ```

use std::borrow::Borrow;
use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use pickwise::balancer::{Balancer, BalancerConfig, Connectivity, EndpointSpec, Prepared};
use pickwise::prequal::PrequalConfig;
use pickwise::wrr::WrrConfig;
use pickwise::{EndpointState, InFlight, LbPolicy, Outcome, Policy, Pool, PoolConfig, SplitMix64};
use pickwise_orca::prequal::http::{probe_response, PROBE_PATH};
use pickwise_orca::prequal::{ProbeReport, ProbeState};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;

/// Mean of a normal(1, 1) truncated at 0.
const TRUNCATED_MEAN: f64 = 1.2876;
/// Antagonists: mean quiet and slowed periods (s), the slowdown, and the capacity they leave.
const QUIET_S: f64 = 9.0;
const SLOWED_S: f64 = 1.0;
const SLOWDOWN: f64 = 2.0;
const ANTAGONIST_CAPACITY: f64 = 0.95;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    Hetero,
    Ramp,
    Failing,
    Equal,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Pol {
    /// `pickwise_prequal` with the core's defaults, probes only.
    Prequal,
    /// `pickwise_prequal` with the core's defaults plus the answers piggybacked on responses.
    PrequalPiggyback,
    /// `pickwise_prequal`, 3 probes per query (the paper's), probes only.
    Prequal3,
    /// P2C peak-EWMA.
    P2cPeakEwma,
    /// P2C least-request.
    LeastRequest,
    /// `weighted_round_robin` (A58 defaults, 1 s blackout).
    WeightedRoundRobin,
    /// Round robin.
    RoundRobin,
}

impl Pol {
    fn lb(self) -> LbPolicy {
        let three = PrequalConfig {
            probes_per_query: 3.0,
            ..PrequalConfig::default()
        };
        match self {
            Self::Prequal | Self::PrequalPiggyback => LbPolicy::Prequal(PrequalConfig::default()),
            Self::Prequal3 => LbPolicy::Prequal(three),
            Self::P2cPeakEwma => LbPolicy::P2c(Policy::PeakEwma),
            Self::LeastRequest => LbPolicy::P2c(Policy::LeastRequest),
            Self::WeightedRoundRobin => LbPolicy::WeightedRoundRobin(WrrConfig {
                blackout_ns: 1_000_000_000,
                ..WrrConfig::default()
            }),
            Self::RoundRobin => LbPolicy::RoundRobin,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Prequal => "pickwise_prequal (defaults)",
            Self::PrequalPiggyback => "pickwise_prequal (defaults) +piggyback",
            Self::Prequal3 => "pickwise_prequal 3 probes/query",
            Self::P2cPeakEwma => "p2c peak-EWMA",
            Self::LeastRequest => "least-request",
            Self::WeightedRoundRobin => "weighted_round_robin",
            Self::RoundRobin => "round_robin",
        }
    }
}

const ALL_POLICIES: [Pol; 7] = [
    Pol::Prequal,
    Pol::PrequalPiggyback,
    Pol::Prequal3,
    Pol::P2cPeakEwma,
    Pol::LeastRequest,
    Pol::WeightedRoundRobin,
    Pol::RoundRobin,
];

/// Prequal, peak-EWMA, least-request, WRR and round robin against heterogeneous HTTP servers on
/// loopback (real sockets), open-loop Poisson load; markdown tables out.
#[derive(Parser, Debug)]
#[command(name = "prequal_bed")]
struct Args {
    /// Which scenario (all: every one).
    #[arg(long, value_enum, default_value_t = Which::All)]
    scenario: Which,
    /// Policies (repeatable; default: all).
    #[arg(long, value_enum)]
    policy: Vec<Pol>,
    /// Clients, each with its own balancer (and connections), sharing the arrivals.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100))]
    clients: u64,
    /// Seeds per scenario.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Servers (the failing scenario fails the first two).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=200))]
    servers: u64,
    /// Workers per server.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    /// Base service time in ms (mean 1.29 × this, × 2 on half-speed servers).
    #[arg(long, default_value_t = 25.0)]
    base_ms: f64,
    /// Offered load for hetero and equal (share of capacity).
    #[arg(long, default_value_t = 0.9)]
    load: f64,
    /// Offered load for failing (0.8 keeps the 18 servers left at about 0.9 of theirs).
    #[arg(long, default_value_t = 0.8)]
    failing_load: f64,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Measured seconds (hetero, failing, equal).
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// Measured seconds per ramp step.
    #[arg(long, default_value_t = 2.0)]
    step: f64,
    /// The caller's deadline in ms.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
}

#[derive(Clone, Debug)]
struct Scenario {
    name: &'static str,
    title: String,
    heterogeneous: bool,
    drift: bool,
    bursts: bool,
    failing: usize,
    /// Seconds after the start.
    fail_at: f64,
    loads: Vec<f64>,
    warmup: f64,
    step: f64,
}

impl Scenario {
    fn factor(&self, i: usize) -> f64 {
        if self.heterogeneous && i % 2 == 1 {
            2.0
        } else {
            1.0
        }
    }

    fn capacity(&self, a: &Args) -> f64 {
        let per: f64 = (0..a.servers as usize)
            .map(|i| a.workers as f64 / (a.base_ms / 1000.0 * TRUNCATED_MEAN * self.factor(i)))
            .sum();
        if self.drift {
            per * ANTAGONIST_CAPACITY
        } else {
            per
        }
    }

    fn end(&self) -> f64 {
        self.warmup + self.step * self.loads.len() as f64
    }

    fn step_of(&self, t: f64) -> Option<usize> {
        if t < self.warmup {
            return None;
        }
        let s = ((t - self.warmup) / self.step) as usize;
        (s < self.loads.len()).then_some(s)
    }

    /// Requests per second at `t` seconds.
    fn rate(&self, a: &Args, t: f64) -> f64 {
        let s = (((t - self.warmup).max(0.0)) / self.step) as usize;
        let load = self.loads[s.min(self.loads.len() - 1)];
        let burst = if self.bursts {
            // 250 ms of every 2.5 s at 1.6×, the rest at 1/1.06 so the mean is `load`.
            if t % 2.5 < 0.25 {
                1.6 / 1.06
            } else {
                1.0 / 1.06
            }
        } else {
            1.0
        };
        self.capacity(a) * load * burst
    }
}

// ===== servers =====

/// One server's behaviour and state (on the server thread).
struct Server {
    index: usize,
    probe: ProbeState,
    workers: Semaphore,
    worker_count: usize,
    base_ms: f64,
    factor: f64,
    drift: bool,
    phase: f64,
    slowed: Cell<bool>,
    failing: Cell<bool>,
    rng: RefCell<fastrand::Rng>,
    origin: std::time::Instant,
    timeout: Duration,
    /// The current second, its completions and busy seconds, and the last full second's
    /// `(qps, utilization)`.
    window: Cell<(u64, u64, f64)>,
    last: Cell<(f64, f64)>,
}

impl Server {
    fn roll(&self) {
        let w = self.origin.elapsed().as_secs();
        let (cur, done, busy) = self.window.get();
        if w != cur {
            self.last.set(if w == cur + 1 {
                (done as f64, busy / self.worker_count as f64)
            } else {
                (0.0, 0.0)
            });
            self.window.set((w, 0, 0.0));
        }
    }

    fn service(&self) -> Duration {
        let mut rng = self.rng.borrow_mut();
        let draw = loop {
            let (u, v) = (1.0 - rng.f64(), rng.f64());
            let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            if 1.0 + z > 0.0 {
                break 1.0 + z;
            }
        };
        let t = self.origin.elapsed().as_secs_f64();
        let drift = if self.drift {
            1.0 + 0.25 * (2.0 * std::f64::consts::PI * t / 10.0 + self.phase).sin()
        } else {
            1.0
        };
        let slow = if self.slowed.get() { SLOWDOWN } else { 1.0 };
        Duration::from_secs_f64(self.base_ms / 1000.0 * self.factor * drift * slow * draw)
    }
}

type Body = http_body_util::Full<Bytes>;

fn plain(status: StatusCode, index: usize) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("x-backend", index.to_string())
        .body(Body::default())
        .expect("a valid response")
}

async fn handle(s: Rc<Server>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if s.failing.get() {
        return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, s.index));
    }
    if req.uri().path() == PROBE_PATH {
        return Ok(probe_response(&s.probe));
    }
    let arrived = Instant::now();
    let query = s.probe.start();
    let Ok(_worker) = s.workers.acquire().await else {
        return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, s.index));
    };
    if arrived.elapsed() >= s.timeout {
        // The client gave up already.
        return Ok(plain(StatusCode::GATEWAY_TIMEOUT, s.index));
    }
    let service = s.service();
    tokio::time::sleep(service).await;
    s.roll();
    let (w, done, busy) = s.window.get();
    s.window.set((w, done + 1, busy + service.as_secs_f64()));
    let mut resp = plain(StatusCode::OK, s.index);
    let headers = resp.headers_mut();
    s.probe.report_excluding(&query).to_headers(headers);
    let (qps, util) = s.last.get();
    if qps > 0.0 {
        let v = format!("TEXT cpu_utilization={util:.4}, rps_fractional={qps:.1}");
        headers.insert(
            pickwise_orca::header::ENDPOINT_LOAD_METRICS,
            v.parse().expect("a valid header value"),
        );
    }
    drop(query);
    Ok(resp)
}

/// Starts the servers on their own thread; returns their addresses and the stop switch.
fn start_servers(
    sc: &Scenario,
    a: &Args,
    seed: u64,
) -> (Vec<SocketAddr>, oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (n, workers, base_ms, timeout) = (
        a.servers as usize,
        a.workers as usize,
        a.base_ms,
        Duration::from_millis(a.timeout_ms),
    );
    let sc = sc.clone();
    let join = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let origin = std::time::Instant::now();
            let mut seeds = fastrand::Rng::with_seed(seed ^ 0x5E4E);
            let mut addrs = Vec::new();
            let mut servers = Vec::new();
            for i in 0..n {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addrs.push(listener.local_addr().expect("address"));
                let s = Rc::new(Server {
                    index: i,
                    probe: ProbeState::new(),
                    workers: Semaphore::new(workers),
                    worker_count: workers,
                    base_ms,
                    factor: sc.factor(i),
                    drift: sc.drift,
                    phase: seeds.f64() * 2.0 * std::f64::consts::PI,
                    slowed: Cell::new(false),
                    failing: Cell::new(false),
                    rng: RefCell::new(fastrand::Rng::with_seed(seeds.u64(..))),
                    origin,
                    timeout,
                    window: Cell::new((0, 0, 0.0)),
                    last: Cell::new((0.0, 0.0)),
                });
                servers.push(s.clone());
                tokio::task::spawn_local(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let s = s.clone();
                        tokio::task::spawn_local(async move {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(io, svc)
                                .await;
                        });
                    }
                });
                if sc.drift {
                    let s = servers[i].clone();
                    let mut rng = fastrand::Rng::with_seed(seeds.u64(..));
                    tokio::task::spawn_local(async move {
                        s.slowed.set(rng.f64() < SLOWED_S / (SLOWED_S + QUIET_S));
                        loop {
                            let mean = if s.slowed.get() { SLOWED_S } else { QUIET_S };
                            let wait = -mean * (1.0 - rng.f64()).ln();
                            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                            s.slowed.set(!s.slowed.get());
                        }
                    });
                }
            }
            if sc.failing > 0 {
                let failing: Vec<Rc<Server>> = servers[..sc.failing].to_vec();
                let at = sc.fail_at;
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(Duration::from_secs_f64(at)).await;
                    for s in failing {
                        s.failing.set(true);
                    }
                });
            }
            let _ = addr_tx.send(addrs);
            let _ = stop_rx.await;
        });
    });
    let addrs = addr_rx.recv().expect("servers started");
    (addrs, stop_tx, join)
}

// ===== client =====

/// A client endpoint: the core's state plus the server index.
#[derive(Clone, Debug)]
struct Ep(Arc<(EndpointState, usize)>);

impl Borrow<EndpointState> for Ep {
    fn borrow(&self) -> &EndpointState {
        &self.0 .0
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

#[derive(Clone, Debug)]
struct StepStats {
    latency_us: Histogram<u64>,
    requests: u64,
    failed: u64,
    probes: u64,
}

impl StepStats {
    fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            requests: 0,
            failed: 0,
            probes: 0,
        }
    }
}

struct Client {
    balancer: RefCell<Balancer<String, Ep>>,
    picker: RefCell<Rc<Prepared<Ep>>>,
    pool: Arc<Pool>,
    eps: Vec<Ep>,
    addrs: Vec<SocketAddr>,
    idle: Vec<RefCell<Vec<Sender>>>,
    rng: RefCell<SplitMix64>,
    origin: Instant,
    piggyback: bool,
    wrr: bool,
    timeout: Duration,
    steps: Rc<RefCell<Vec<StepStats>>>,
}

impl Client {
    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// One request on a keep-alive connection to server `s`: its status and headers.
    async fn send(&self, s: usize, path: &str) -> Result<(StatusCode, hyper::HeaderMap), ()> {
        let idle = self.idle[s].borrow_mut().pop();
        let mut sender = match idle {
            Some(sender) if !sender.is_closed() => sender,
            _ => {
                let stream = TcpStream::connect(self.addrs[s]).await.map_err(|_| ())?;
                let _ = stream.set_nodelay(true);
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .map_err(|_| ())?;
                tokio::task::spawn_local(async move {
                    let _ = conn.await;
                });
                sender
            }
        };
        sender.ready().await.map_err(|_| ())?;
        let req = Request::get(path)
            .header("host", "bed")
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let resp = sender.send_request(req).await.map_err(|_| ())?;
        let (parts, body) = resp.into_parts();
        body.collect().await.map_err(|_| ())?;
        self.idle[s].borrow_mut().push(sender);
        Ok((parts.status, parts.headers))
    }

    async fn probe(self: Rc<Self>, s: usize) {
        let Ok(Ok((status, headers))) = tokio::time::timeout(self.timeout, self.send(s, PROBE_PATH)).await
        else {
            return;
        };
        if !status.is_success() {
            return;
        }
        if let Some(report) = ProbeReport::from_headers(&headers) {
            let picker = self.picker.borrow().clone();
            picker.record_probe(
                &self.eps[s].0 .0,
                report.into(),
                self.now(),
                &mut *self.rng.borrow_mut(),
            );
        }
    }

    async fn request(self: Rc<Self>, due: Instant, step: Option<usize>) {
        let now = self.now();
        let picker = self.picker.borrow().clone();
        let picked = picker.pick(now, None, &mut *self.rng.borrow_mut()).ok().cloned();
        let mut targets = [0usize; 8];
        let probes = picker.probe_targets(now, &mut *self.rng.borrow_mut(), &mut targets);
        for &p in &targets[..probes] {
            let s = picker.ready()[p].0 .1;
            tokio::task::spawn_local(self.clone().probe(s));
        }
        drop(picker);
        if let Some(i) = step {
            let mut steps = self.steps.borrow_mut();
            steps[i].requests += 1;
            steps[i].probes += probes as u64;
        }
        let Some(ep) = picked else {
            self.count(step, None, true);
            return;
        };
        let s = ep.0 .1;
        let guard = InFlight::start(ep.clone(), self.pool.clone(), now);
        let left = (due + self.timeout).saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.send(s, "/")).await {
            Ok(Ok((status, headers))) if status.is_success() => {
                let now = self.now();
                let _ = guard.complete(now, Outcome::Success);
                if self.piggyback {
                    if let Some(r) = ProbeReport::from_headers(&headers) {
                        let picker = self.picker.borrow().clone();
                        picker.record_probe(&ep.0 .0, r.into(), now, &mut *self.rng.borrow_mut());
                    }
                }
                if self.wrr {
                    if let Ok(r) = pickwise_orca::header::parse_headers(&headers) {
                        ep.0 .0.report_load(now, &r.into());
                    }
                }
                self.count(step, Some(due.elapsed()), false);
            }
            Ok(_) => {
                let _ = guard.complete(self.now(), Outcome::Failure);
                self.count(step, None, true);
            }
            Err(_) => {
                // The caller's deadline: not the endpoint's doing.
                let _ = guard.complete(self.now(), Outcome::Neutral);
                self.count(step, Some(self.timeout), true);
            }
        }
    }

    /// Records a request of measured step `step`: its latency if it counts in the percentiles
    /// (successes, and timeouts at the timeout), and whether it failed.
    fn count(&self, step: Option<usize>, latency: Option<Duration>, failed: bool) {
        let Some(i) = step else {
            return;
        };
        let mut steps = self.steps.borrow_mut();
        let st = &mut steps[i];
        if let Some(l) = latency {
            st.latency_us
                .saturating_record(l.as_micros().clamp(1, 60_000_000) as u64);
        }
        st.failed += u64::from(failed);
    }
}

/// The client thread's CPU seconds (user + system).
fn thread_cpu_seconds() -> Option<f64> {
    pickwise_benches::proc_cpu_seconds("/proc/thread-self/stat")
}

#[derive(Clone, Copy, Debug, Default)]
struct Summary {
    p50: f64,
    p99: f64,
    p999: f64,
    failed: u64,
    probes_per_req: f64,
    cpu_us_per_req: f64,
}

fn run(sc: &Scenario, a: &Args, pol: Pol, seed: u64) -> Vec<Summary> {
    let (addrs, stop, join) = start_servers(sc, a, seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let out = local.block_on(&rt, async {
        let origin = Instant::now();
        let steps = Rc::new(RefCell::new(vec![StepStats::new(); sc.loads.len()]));
        let clients: Vec<Rc<Client>> = (0..a.clients)
            .map(|c| {
                let pool = Arc::new(Pool::new(PoolConfig::with_policy(match pol.lb() {
                    LbPolicy::P2c(p) => p,
                    _ => Policy::PeakEwma,
                })));
                let mut cfg = BalancerConfig::new(pol.lb());
                cfg.seed = seed ^ (c << 20);
                let mut balancer = Balancer::new(cfg, pool.clone());
                let eps: Vec<Ep> = (0..addrs.len())
                    .map(|s| Ep(Arc::new((EndpointState::new(1), s))))
                    .collect();
                for (s, ep) in eps.iter().enumerate() {
                    let key = addrs[s].to_string();
                    balancer.insert(0, key.clone(), EndpointSpec::default(), ep.clone());
                    balancer.handle_connectivity(0, &key, Connectivity::Ready);
                }
                balancer.handle_timeout(0);
                let picker = Rc::new(balancer.picker(0, seed.wrapping_add(c)));
                Rc::new(Client {
                    balancer: RefCell::new(balancer),
                    picker: RefCell::new(picker),
                    pool,
                    eps,
                    idle: addrs.iter().map(|_| RefCell::new(Vec::new())).collect(),
                    addrs: addrs.clone(),
                    rng: RefCell::new(SplitMix64::new(
                        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (c + 1),
                    )),
                    origin,
                    piggyback: pol == Pol::PrequalPiggyback,
                    wrr: pol == Pol::WeightedRoundRobin,
                    timeout: Duration::from_millis(a.timeout_ms),
                    steps: steps.clone(),
                })
            })
            .collect();
        let end = origin + Duration::from_secs_f64(sc.end());
        let timer = {
            let clients = clients.clone();
            tokio::task::spawn_local(async move {
                while Instant::now() < end {
                    for client in &clients {
                        let now = client.now();
                        let mut b = client.balancer.borrow_mut();
                        if b.poll_timeout().is_none_or(|t| t <= now) {
                            b.handle_timeout(now);
                        }
                        if let Some(p) = b.poll_picker(now, now) {
                            *client.picker.borrow_mut() = Rc::new(p);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let mut arrivals = fastrand::Rng::with_seed(seed);
        let mut t = 0.0f64;
        let mut cpu_start = None;
        let mut tasks = Vec::new();
        loop {
            t += -(1.0 - arrivals.f64()).ln() / sc.rate(a, t);
            if t >= sc.end() {
                break;
            }
            if cpu_start.is_none() && t >= sc.warmup {
                tokio::time::sleep_until(origin + Duration::from_secs_f64(sc.warmup)).await;
                cpu_start = thread_cpu_seconds();
            }
            let due = origin + Duration::from_secs_f64(t);
            tokio::time::sleep_until(due).await;
            let client = clients[arrivals.usize(..clients.len())].clone();
            tasks.push(tokio::task::spawn_local(client.request(due, sc.step_of(t))));
        }
        for task in tasks {
            let _ = task.await;
        }
        let cpu = cpu_start.zip(thread_cpu_seconds()).map(|(a, b)| b - a);
        let _ = timer.await;
        let steps = RefCell::borrow(&steps).clone();
        let requests: u64 = steps.iter().map(|s| s.requests).sum();
        let cpu_us = cpu.map_or(0.0, |c| c * 1e6 / requests.max(1) as f64);
        steps
            .iter()
            .map(|st| {
                let h = &st.latency_us;
                let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                Summary {
                    p50: ms(0.5),
                    p99: ms(0.99),
                    p999: ms(0.999),
                    failed: st.failed,
                    probes_per_req: st.probes as f64 / st.requests.max(1) as f64,
                    cpu_us_per_req: cpu_us,
                }
            })
            .collect::<Vec<_>>()
    });
    let _ = stop.send(());
    let _ = join.join();
    out
}

fn mean(v: &[Summary]) -> Summary {
    let n = v.len().max(1) as f64;
    let avg = |f: fn(&Summary) -> f64| v.iter().map(f).sum::<f64>() / n;
    Summary {
        p50: avg(|s| s.p50),
        p99: avg(|s| s.p99),
        p999: avg(|s| s.p999),
        failed: (v.iter().map(|s| s.failed).sum::<u64>() as f64 / n).round() as u64,
        probes_per_req: avg(|s| s.probes_per_req),
        cpu_us_per_req: avg(|s| s.cpu_us_per_req),
    }
}

fn table(out: &mut String, rows: &[(&str, Vec<Summary>)]) {
    let _ = writeln!(
        out,
        "| policy | p50 ms | p99 ms | p99.9 ms | failed | probes/req | client CPU µs/req | p99 per seed | p99.9 per seed | failed per seed |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|---|---|");
    for (name, per) in rows {
        let m = mean(per);
        let join = |f: &dyn Fn(&Summary) -> String| per.iter().map(f).collect::<Vec<_>>().join(" / ");
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.1} | {:.1} | {} | {:.2} | {:.0} | {} | {} | {} |",
            m.p50,
            m.p99,
            m.p999,
            m.failed,
            m.probes_per_req,
            m.cpu_us_per_req,
            join(&|s| format!("{:.0}", s.p99)),
            join(&|s| format!("{:.0}", s.p999)),
            join(&|s| s.failed.to_string()),
        );
    }
}

fn scenarios(a: &Args) -> Vec<Scenario> {
    let base = Scenario {
        name: "hetero",
        title: String::new(),
        heterogeneous: true,
        drift: true,
        bursts: true,
        failing: 0,
        fail_at: 0.0,
        loads: vec![a.load],
        warmup: a.warmup,
        step: a.duration,
    };
    let n = a.servers;
    let want = |w: Which| a.scenario == w || a.scenario == Which::All;
    let mut out = Vec::new();
    if want(Which::Hetero) {
        out.push(Scenario {
            title: format!(
                "hetero: {n} servers, half at half speed, drifting speeds, antagonists, bursts, {:.2} load",
                a.load
            ),
            ..base.clone()
        });
    }
    if want(Which::Ramp) {
        out.push(Scenario {
            name: "ramp",
            title: format!(
                "ramp: the hetero fleet, load 0.75 → 1.75 in steps of ×10/9, {} s each",
                a.step
            ),
            loads: (0..9).map(|i| 0.75 * (10.0f64 / 9.0).powi(i)).collect(),
            step: a.step,
            ..base.clone()
        });
    }
    if want(Which::Failing) {
        out.push(Scenario {
            name: "failing",
            title: format!(
                "failing: the hetero fleet, servers 0 and 1 answer 503 from 2 s into the window, {:.2} load",
                a.failing_load
            ),
            loads: vec![a.failing_load],
            failing: 2,
            fail_at: a.warmup + 2.0,
            ..base.clone()
        });
    }
    if want(Which::Equal) {
        out.push(Scenario {
            name: "equal",
            title: format!(
                "equal: {n} equal servers, steady speeds, no bursts, {:.2} load",
                a.load
            ),
            heterogeneous: false,
            drift: false,
            bursts: false,
            ..base.clone()
        });
    }
    for s in &mut out {
        let _ = write!(
            s.title,
            "; {} clients, {} workers, base {} ms, capacity {:.0} req/s, timeout {} ms",
            a.clients,
            a.workers,
            a.base_ms,
            s.capacity(a),
            a.timeout_ms
        );
    }
    out
}

fn main() {
    let a = Args::parse();
    if !(a.load > 0.0
        && a.failing_load > 0.0
        && a.base_ms > 0.0
        && a.duration > 0.0
        && a.step > 0.0
        && a.warmup >= 0.0)
    {
        eprintln!("--load, --base-ms, --duration and --step must be > 0, --warmup >= 0");
        std::process::exit(2);
    }
    let policies: Vec<Pol> = if a.policy.is_empty() {
        ALL_POLICIES.to_vec()
    } else {
        a.policy.clone()
    };
    let seeds: Vec<u64> = (a.first_seed..a.first_seed + a.seeds).collect();
    for sc in scenarios(&a) {
        // results[policy][seed][step]
        let results: Vec<Vec<Vec<Summary>>> = policies
            .iter()
            .map(|&p| {
                seeds
                    .iter()
                    .map(|&seed| {
                        let r = run(&sc, &a, p, seed);
                        eprintln!("{} {} seed {seed}: p99 {:.1} ms", sc.name, p.name(), mean(&r).p99);
                        r
                    })
                    .collect()
            })
            .collect();
        let mut out = String::new();
        let _ = writeln!(out, "### {}\n\nseeds {seeds:?}\n", sc.title);
        for (step, load) in sc.loads.iter().enumerate() {
            if sc.loads.len() > 1 {
                let _ = writeln!(out, "**{} step {}: load {load:.3}**\n", sc.name, step + 1);
            }
            let rows: Vec<(&str, Vec<Summary>)> = policies
                .iter()
                .zip(&results)
                .map(|(p, per)| (p.name(), per.iter().map(|s| s[step]).collect()))
                .collect();
            table(&mut out, &rows);
            let _ = writeln!(out);
        }
        print!("{out}");
    }
}
