//! Prequal (issue 23) in the sans-IO simulator: a discrete-event simulation in virtual time of
//! heterogeneous servers and many clients, each client running the real core
//! [`Balancer`](pickwise::balancer::Balancer) and [`Prepared::pick`](pickwise::balancer::Prepared::pick).
//! Deterministic per seed; the workload (arrivals, service draws, antagonists) is the same for
//! every policy of a seed.
//!
//! **Servers.** Each is a FIFO in front of `--workers` workers; a query's service time is
//! `--base-ms` × the server's speed factor × a draw from a normal with sd = mean, truncated at 0
//! (redrawn; the truncated mean is 1.2876 × the base), as the Prequal paper's testbed. The
//! heterogeneous fleet has half the servers at half speed (factor 2). Antagonists: each server
//! is slowed ×2 for exponential periods (mean 1 s) between exponential quiet periods (mean 9 s),
//! about 10% of the time. A server counts a query in flight (RIF) from its arrival until its
//! response leaves, records its latency tagged with the RIF at arrival, answers a probe with its
//! RIF and the median of its recent (1 s, last 16) latencies at that RIF (nearest RIF with
//! samples otherwise), and reports qps and utilization of its last full second on each response
//! (ORCA per-call reports for `weighted_round_robin`). A query whose client gave up is dropped
//! when it reaches a worker.
//!
//! **Clients.** `--clients` clients share the open-loop Poisson arrivals. Requests and probes
//! cross a network of `--rtt-us` round trip. A request not answered within `--timeout-ms` is
//! failed (the caller's deadline: `Outcome::Neutral` to the core) and counts at the timeout in
//! the latency percentiles; error answers count as failed (`Outcome::Failure`, so outlier
//! ejection works) and are left out of the percentiles. Prequal: after each pick the client
//! sends the probes [`Prepared::probe_targets`](pickwise::balancer::Prepared::probe_targets)
//! owes and records each answer when it arrives; with `+piggyback`, every successful response
//! also carries the server's report. A failing server answers no probe.
//!
//! **Capacity.** The sum over servers of `workers / mean service time`, times the antagonists'
//! average loss (0.95); `--load 0.9` offers 0.9 of it.
//!
//! Scenarios (`--scenario`): `hetero` (20 servers, half at half speed, antagonists, 0.9 load),
//! `ramp` (the same fleet, load 0.75× → 1.75× in steps of ×10/9, Prequal §5.1), `failing` (the
//! hetero fleet at 0.8 load; two servers start answering every query with an error, at once,
//! 2 s into the measured window, and report no load), `sinkhole` (the same with three failing
//! servers, one more than the default 10% ejection cap, that keep answering probes and report
//! on their errors as idle: RIF 0, 50 µs), `partial` (one server fails 30% of queries at once
//! and reports idle; default ejection, which 5 failures in a row rarely reach), `equal` (20 equal servers, no antagonists, 0.9 load),
//! `all`. `--variants` runs Prequal's settings instead (q_rif 0.84 / 0.6 × probes per query
//! 1 / 2 / 3 × piggyback off / on) on the chosen scenarios.
//!
//! ```text
//! cargo run --release -p pickwise --example prequal_sim -- [--scenario all] [--seeds 5] [--variants]
//! ```

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;

use pickwise::balancer::{Balancer, BalancerConfig, Connectivity, EndpointSpec, Prepared};
use pickwise::prequal::{PrequalConfig, ProbeReport};
use pickwise::wrr::{LoadReport, WrrConfig};
use pickwise::{EndpointState, InFlight, LbPolicy, Outcome, Policy, Pool, PoolConfig, Rng, SplitMix64};

const MS: f64 = 1e6;
const SECOND: u64 = 1_000_000_000;
/// What a sinkhole reports as its latency (µs): the time an error takes.
const SINKHOLE_US: u32 = 50;
/// Mean of a normal(1, 1) truncated at 0.
const TRUNCATED_MEAN: f64 = 1.287_6;
/// Antagonists: mean quiet and slowed periods (ns), and the slowdown.
const QUIET_MEAN: f64 = 9e9;
const SLOWED_MEAN: f64 = 1e9;
const SLOWDOWN: f64 = 2.0;
/// Server latency estimate: samples kept per RIF, and their maximum age.
const SAMPLES: usize = 16;
const SAMPLE_AGE: u64 = SECOND;
/// Largest probe batch taken at once.
const PROBE_BATCH: usize = 8;

// ===== endpoints =====

/// A client's endpoint: the core's state plus the server it stands for.
#[derive(Clone, Debug)]
struct Ep(Arc<(EndpointState, usize)>);

impl Borrow<EndpointState> for Ep {
    fn borrow(&self) -> &EndpointState {
        &self.0 .0
    }
}

impl Ep {
    fn server(&self) -> usize {
        self.0 .1
    }
}

// ===== policies =====

#[derive(Clone, Copy, Debug)]
enum Kind {
    Prequal { cfg: PrequalConfig, piggyback: bool },
    P2c(Policy),
    Wrr,
    RoundRobin,
}

#[derive(Clone, Debug)]
struct Variant {
    name: String,
    kind: Kind,
}

impl Variant {
    fn lb_policy(&self) -> LbPolicy {
        match self.kind {
            Kind::Prequal { cfg, .. } => LbPolicy::Prequal(cfg),
            Kind::P2c(p) => LbPolicy::P2c(p),
            // A58's defaults but a 1 s blackout: the simulated runs are short, and a long-lived
            // deployment is past its blackout almost always.
            Kind::Wrr => LbPolicy::WeightedRoundRobin(WrrConfig {
                blackout_ns: SECOND,
                ..WrrConfig::default()
            }),
            Kind::RoundRobin => LbPolicy::RoundRobin,
        }
    }
}

fn policies() -> Vec<Variant> {
    let prequal = |piggyback: bool, probes_per_query: f32| Kind::Prequal {
        cfg: PrequalConfig {
            probes_per_query,
            ..PrequalConfig::default()
        },
        piggyback,
    };
    let default_probes = PrequalConfig::default().probes_per_query;
    vec![
        Variant {
            name: format!("pickwise_prequal (defaults: {default_probes} probe/query)"),
            kind: prequal(false, default_probes),
        },
        Variant {
            name: "pickwise_prequal (defaults) +piggyback".into(),
            kind: prequal(true, default_probes),
        },
        Variant {
            name: "pickwise_prequal 3 probes/query".into(),
            kind: prequal(false, 3.0),
        },
        Variant {
            name: "pickwise_prequal 3 probes/query +piggyback".into(),
            kind: prequal(true, 3.0),
        },
        Variant {
            name: "p2c peak-EWMA".into(),
            kind: Kind::P2c(Policy::PeakEwma),
        },
        Variant {
            name: "least-request".into(),
            kind: Kind::P2c(Policy::LeastRequest),
        },
        Variant {
            name: "weighted_round_robin".into(),
            kind: Kind::Wrr,
        },
        Variant {
            name: "round_robin".into(),
            kind: Kind::RoundRobin,
        },
    ]
}

fn prequal_variants() -> Vec<Variant> {
    let mut out = Vec::new();
    for q in [0.840_896_4f32, 0.6] {
        for probes in [1.0f32, 2.0, 3.0] {
            for piggyback in [false, true] {
                out.push(Variant {
                    name: format!(
                        "q_rif {q:.2}, {probes} probes{}",
                        if piggyback { ", piggyback" } else { "" }
                    ),
                    kind: Kind::Prequal {
                        cfg: PrequalConfig {
                            q_rif: q,
                            probes_per_query: probes,
                            ..PrequalConfig::default()
                        },
                        piggyback,
                    },
                });
            }
        }
    }
    out
}

// ===== scenarios =====

#[derive(Clone, Debug)]
struct Scenario {
    name: &'static str,
    title: String,
    servers: usize,
    workers: usize,
    base_ns: f64,
    heterogeneous: bool,
    antagonists: bool,
    /// Servers that fail, and when (ns).
    failing: usize,
    fail_at: u64,
    /// Failing servers keep answering probes, and report on their errors, as idle (RIF 0, the
    /// 50 µs an error takes): a sinkhole, which looks like the best server.
    sinkhole: bool,
    /// The share of queries a failing server fails (1: all).
    fail_share: f64,
    /// Offered load per step (share of capacity); the first step also runs the warm-up.
    loads: Vec<f64>,
    warmup: u64,
    step: u64,
    clients: usize,
    rtt: u64,
    timeout: u64,
}

impl Scenario {
    fn factor(&self, i: usize) -> f64 {
        if self.heterogeneous && i % 2 == 1 {
            2.0
        } else {
            1.0
        }
    }

    /// Queries per ns the fleet serves on average.
    fn capacity(&self) -> f64 {
        let per: f64 = (0..self.servers)
            .map(|i| self.workers as f64 / (self.base_ns * TRUNCATED_MEAN * self.factor(i)))
            .sum();
        let p = SLOWED_MEAN / (SLOWED_MEAN + QUIET_MEAN);
        if self.antagonists {
            per * (1.0 - p * (1.0 - 1.0 / SLOWDOWN))
        } else {
            per
        }
    }

    fn end(&self) -> u64 {
        self.warmup + self.step * self.loads.len() as u64
    }

    /// The measured step `t` falls in (`None` in the warm-up).
    fn step_of(&self, t: u64) -> Option<usize> {
        let s = t.checked_sub(self.warmup)? / self.step;
        (s < self.loads.len() as u64).then_some(s as usize)
    }

    fn load_at(&self, t: u64) -> f64 {
        let s = t.saturating_sub(self.warmup) / self.step;
        self.loads[(s as usize).min(self.loads.len() - 1)]
    }
}

// ===== randomness =====

fn uniform(rng: &mut SplitMix64) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

fn exponential(rng: &mut SplitMix64, mean: f64) -> f64 {
    -mean * uniform(rng).ln()
}

/// Normal(1, 1) truncated at 0 (Box-Muller, redrawn while not positive).
fn truncated_normal(rng: &mut SplitMix64) -> f64 {
    loop {
        let (u, v) = (uniform(rng), uniform(rng));
        let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
        if 1.0 + z > 0.0 {
            return 1.0 + z;
        }
    }
}

fn index(rng: &mut SplitMix64, n: usize) -> usize {
    (((rng.next_u64() >> 32) * n as u64) >> 32) as usize
}

// ===== servers =====

struct Server {
    workers: usize,
    busy: usize,
    queue: VecDeque<usize>,
    rif: u32,
    factor: f64,
    slowed: bool,
    failing: bool,
    /// Recent latencies per RIF at arrival: (completed at, latency µs).
    samples: Vec<VecDeque<(u64, u32)>>,
    /// The current second's completions and busy time, and the last full second's report.
    window: u64,
    done: u64,
    busy_ns: f64,
    last: Option<LoadReport>,
}

impl Server {
    fn new(workers: usize, factor: f64) -> Self {
        Self {
            workers,
            busy: 0,
            queue: VecDeque::new(),
            rif: 0,
            factor,
            slowed: false,
            failing: false,
            samples: Vec::new(),
            window: 0,
            done: 0,
            busy_ns: 0.0,
            last: None,
        }
    }

    fn roll(&mut self, now: u64) {
        let w = now / SECOND;
        if w != self.window {
            let qps = if w == self.window + 1 {
                self.done as f64
            } else {
                0.0
            };
            let util = if w == self.window + 1 {
                self.busy_ns / (self.workers as f64 * SECOND as f64)
            } else {
                0.0
            };
            self.last = Some(LoadReport {
                cpu_utilization: util,
                qps,
                ..LoadReport::default()
            });
            self.window = w;
            self.done = 0;
            self.busy_ns = 0.0;
        }
    }

    fn record(&mut self, rif: u32, now: u64, latency_ns: u64) {
        let r = rif as usize;
        if self.samples.len() <= r {
            self.samples.resize_with(r + 1, VecDeque::new);
        }
        let b = &mut self.samples[r];
        if b.len() == SAMPLES {
            b.pop_front();
        }
        b.push_back((now, (latency_ns / 1000).min(u32::MAX as u64) as u32));
    }

    /// The median of recent samples at `rif`, else at the nearest RIF that has some.
    fn estimate(&self, rif: u32, now: u64) -> u32 {
        let fresh = |r: usize| -> Option<u32> {
            let b = self.samples.get(r)?;
            let mut v: Vec<u32> = b
                .iter()
                .filter(|(t, _)| now.saturating_sub(*t) <= SAMPLE_AGE)
                .map(|s| s.1)
                .collect();
            if v.is_empty() {
                return None;
            }
            v.sort_unstable();
            Some(v[v.len() / 2])
        };
        let r = rif as usize;
        for d in 0..self.samples.len().max(r + 1) {
            if let Some(m) = fresh(r + d).or_else(|| r.checked_sub(d).and_then(fresh)) {
                return m;
            }
        }
        0
    }

    fn report(&self, rif: u32, now: u64) -> ProbeReport {
        ProbeReport {
            rif,
            latency_us: self.estimate(rif, now),
        }
    }
}

// ===== the event loop =====

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival,
    SrvRecv(u32),
    SrvDone(u32),
    Resp(u32),
    Timeout(u32),
    ProbeAt(u16, u16),
    ProbeAns(u16, u16, u32, u32),
    Antagonist(u16),
    Fail,
    Tick,
}

struct Req {
    client: usize,
    server: usize,
    arrival: u64,
    at_server: u64,
    draw: f64,
    rif_at_arrival: u32,
    guard: Option<InFlight<Ep, Arc<Pool>>>,
    error: bool,
    report: ProbeReport,
    load: Option<LoadReport>,
}

struct Client {
    balancer: Balancer<String, Ep>,
    picker: Prepared<Ep>,
    eps: Vec<Ep>,
    rng: SplitMix64,
}

/// What one measured step saw.
#[derive(Clone, Debug, Default)]
struct StepStats {
    latencies: Vec<u64>,
    requests: u64,
    failed: u64,
    probes: u64,
}

struct Sim<'a> {
    sc: &'a Scenario,
    kind: Kind,
    now: u64,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    servers: Vec<Server>,
    clients: Vec<Client>,
    reqs: Vec<Req>,
    steps: Vec<StepStats>,
    world: SplitMix64,
    antag: SplitMix64,
    capacity: f64,
}

impl Sim<'_> {
    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, ev)));
    }

    fn stats(&mut self, arrival: u64) -> Option<&mut StepStats> {
        let s = self.sc.step_of(arrival)?;
        self.steps.get_mut(s)
    }

    fn arrival(&mut self) {
        let now = self.now;
        let rate = self.capacity * self.sc.load_at(now);
        let next = now + exponential(&mut self.world, 1.0 / rate) as u64;
        if next < self.sc.end() {
            self.at(next, Ev::Arrival);
        }
        let c = index(&mut self.world, self.sc.clients);
        let draw = truncated_normal(&mut self.world);
        let id = self.reqs.len();
        let client = &mut self.clients[c];
        let picked = client.picker.pick(now, None, &mut client.rng).ok().cloned();
        let mut targets = [0usize; PROBE_BATCH];
        let probes = client.picker.probe_targets(now, &mut client.rng, &mut targets);
        let probed: Vec<usize> = targets[..probes]
            .iter()
            .map(|&p| client.picker.ready()[p].server())
            .collect();
        let half = self.sc.rtt / 2;
        for s in probed {
            self.at(now + half, Ev::ProbeAt(c as u16, s as u16));
        }
        if let Some(st) = self.stats(now) {
            st.requests += 1;
            st.probes += probes as u64;
        }
        let Some(ep) = picked else {
            if let Some(st) = self.stats(now) {
                st.failed += 1;
            }
            return;
        };
        let server = ep.server();
        let pool = self.clients[c].balancer.pool().clone();
        self.reqs.push(Req {
            client: c,
            server,
            arrival: now,
            at_server: 0,
            draw,
            rif_at_arrival: 0,
            guard: Some(InFlight::start(ep, pool, now)),
            error: false,
            report: ProbeReport::default(),
            load: None,
        });
        self.at(now + half, Ev::SrvRecv(id as u32));
        self.at(now + self.sc.timeout, Ev::Timeout(id as u32));
    }

    fn srv_recv(&mut self, id: usize) {
        let now = self.now;
        let s = self.reqs[id].server;
        if self.servers[s].failing
            && (self.sc.fail_share >= 1.0 || uniform(&mut self.world) < self.sc.fail_share)
        {
            self.reqs[id].error = true;
            self.at(now + 50_000 + self.sc.rtt / 2, Ev::Resp(id as u32));
            return;
        }
        let srv = &mut self.servers[s];
        self.reqs[id].at_server = now;
        self.reqs[id].rif_at_arrival = srv.rif;
        srv.rif += 1;
        srv.queue.push_back(id);
        self.start_work(s);
    }

    /// Starts queued queries on free workers (dropping those whose client gave up).
    fn start_work(&mut self, s: usize) {
        let now = self.now;
        while self.servers[s].busy < self.servers[s].workers {
            let Some(id) = self.servers[s].queue.pop_front() else {
                return;
            };
            let r = &self.reqs[id];
            let srv = &mut self.servers[s];
            if now >= r.arrival + self.sc.timeout {
                srv.rif -= 1;
                continue;
            }
            let slow = if srv.slowed { SLOWDOWN } else { 1.0 };
            let service = self.sc.base_ns * srv.factor * slow * r.draw;
            srv.busy += 1;
            srv.roll(now);
            srv.busy_ns += service;
            self.at(now + service as u64, Ev::SrvDone(id as u32));
        }
    }

    fn srv_done(&mut self, id: usize) {
        let now = self.now;
        let s = self.reqs[id].server;
        let srv = &mut self.servers[s];
        srv.busy -= 1;
        srv.rif -= 1;
        let (rif_at, at) = (self.reqs[id].rif_at_arrival, self.reqs[id].at_server);
        srv.record(rif_at, now, now - at);
        srv.roll(now);
        srv.done += 1;
        self.reqs[id].report = srv.report(srv.rif, now);
        self.reqs[id].load = srv.last;
        self.at(now + self.sc.rtt / 2, Ev::Resp(id as u32));
        self.start_work(s);
    }

    fn resp(&mut self, id: usize) {
        let now = self.now;
        let Some(guard) = self.reqs[id].guard.take() else {
            return; // timed out already
        };
        let r = &self.reqs[id];
        let c = &mut self.clients[r.client];
        let ep = c.eps[r.server].clone();
        let (arrival, error, report, load) = (r.arrival, r.error, r.report, r.load);
        if error {
            let _ = guard.complete(now, Outcome::Failure);
            if self.sc.sinkhole && matches!(self.kind, Kind::Prequal { piggyback: true, .. }) {
                let idle = ProbeReport {
                    rif: 0,
                    latency_us: SINKHOLE_US,
                };
                c.picker.record_probe(&ep.0 .0, idle, now, &mut c.rng);
            }
            if let Some(st) = self.stats(arrival) {
                st.failed += 1;
            }
            return;
        }
        let _ = guard.complete(now, Outcome::Success);
        if matches!(self.kind, Kind::Wrr) {
            if let Some(l) = load {
                ep.0 .0.report_load(now, &l);
            }
        }
        if let Kind::Prequal { piggyback: true, .. } = self.kind {
            c.picker.record_probe(&ep.0 .0, report, now, &mut c.rng);
        }
        if let Some(st) = self.stats(arrival) {
            st.latencies.push(now - arrival);
        }
    }

    fn timeout(&mut self, id: usize) {
        let now = self.now;
        let Some(guard) = self.reqs[id].guard.take() else {
            return;
        };
        // The caller's deadline: not the endpoint's doing.
        let _ = guard.complete(now, Outcome::Neutral);
        let arrival = self.reqs[id].arrival;
        let timeout = self.sc.timeout;
        if let Some(st) = self.stats(arrival) {
            st.failed += 1;
            st.latencies.push(timeout);
        }
    }

    fn tick(&mut self) {
        let now = self.now;
        for c in &mut self.clients {
            if c.balancer.poll_timeout().is_none_or(|t| t <= now) {
                c.balancer.handle_timeout(now);
            }
            if let Some(p) = c.balancer.poll_picker(now, c.rng.next_u64()) {
                c.picker = p;
            }
        }
        if now + 50 * 1_000_000 < self.sc.end() + self.sc.timeout {
            self.at(now + 50 * 1_000_000, Ev::Tick);
        }
    }

    fn antagonist(&mut self, s: usize) {
        let srv = &mut self.servers[s];
        srv.slowed = !srv.slowed;
        let mean = if srv.slowed { SLOWED_MEAN } else { QUIET_MEAN };
        let next = self.now + exponential(&mut self.antag, mean) as u64;
        self.at(next, Ev::Antagonist(s as u16));
    }

    fn run(mut self) -> Vec<StepStats> {
        let end = self.sc.end() + self.sc.timeout + SECOND;
        while let Some(Reverse((t, _, ev))) = self.events.pop() {
            if t > end {
                break;
            }
            self.now = t;
            match ev {
                Ev::Arrival => self.arrival(),
                Ev::SrvRecv(id) => self.srv_recv(id as usize),
                Ev::SrvDone(id) => self.srv_done(id as usize),
                Ev::Resp(id) => self.resp(id as usize),
                Ev::Timeout(id) => self.timeout(id as usize),
                Ev::ProbeAt(c, s) => {
                    let srv = &self.servers[s as usize];
                    if !srv.failing {
                        let r = srv.report(srv.rif, t);
                        self.at(t + self.sc.rtt / 2, Ev::ProbeAns(c, s, r.rif, r.latency_us));
                    } else if self.sc.sinkhole {
                        self.at(t + self.sc.rtt / 2, Ev::ProbeAns(c, s, 0, SINKHOLE_US));
                    }
                }
                Ev::ProbeAns(c, s, rif, latency_us) => {
                    let c = &mut self.clients[c as usize];
                    let ep = c.eps[s as usize].clone();
                    c.picker
                        .record_probe(&ep.0 .0, ProbeReport { rif, latency_us }, t, &mut c.rng);
                }
                Ev::Antagonist(s) => self.antagonist(s as usize),
                Ev::Fail => {
                    for s in 0..self.sc.failing {
                        self.servers[s].failing = true;
                    }
                }
                Ev::Tick => self.tick(),
            }
        }
        self.steps
    }
}

fn run(sc: &Scenario, v: &Variant, seed: u64) -> Vec<StepStats> {
    let policy = match v.kind {
        Kind::P2c(p) => p,
        _ => Policy::PeakEwma,
    };
    let clients = (0..sc.clients)
        .map(|c| {
            let pool = Arc::new(Pool::new(PoolConfig::with_policy(policy)));
            let mut cfg = BalancerConfig::new(v.lb_policy());
            cfg.seed = seed ^ (c as u64) << 20;
            let mut balancer = Balancer::new(cfg, pool);
            let eps: Vec<Ep> = (0..sc.servers)
                .map(|s| Ep(Arc::new((EndpointState::new(1), s))))
                .collect();
            for (s, ep) in eps.iter().enumerate() {
                let key = format!("server-{s}");
                balancer.insert(0, key.clone(), EndpointSpec::default(), ep.clone());
                balancer.handle_connectivity(0, &key, Connectivity::Ready);
            }
            balancer.handle_timeout(0);
            let picker = balancer.picker(0, seed.wrapping_add(c as u64));
            Client {
                balancer,
                picker,
                eps,
                rng: SplitMix64::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (c as u64 + 1)),
            }
        })
        .collect();
    let mut sim = Sim {
        sc,
        kind: v.kind,
        now: 0,
        seq: 0,
        events: BinaryHeap::new(),
        servers: (0..sc.servers)
            .map(|i| Server::new(sc.workers, sc.factor(i)))
            .collect(),
        clients,
        reqs: Vec::new(),
        steps: vec![StepStats::default(); sc.loads.len()],
        world: SplitMix64::new(seed),
        antag: SplitMix64::new(seed ^ 0xA17A_6011),
        capacity: sc.capacity(),
    };
    sim.at(0, Ev::Arrival);
    sim.at(0, Ev::Tick);
    if sc.failing > 0 {
        sim.at(sc.fail_at, Ev::Fail);
    }
    if sc.antagonists {
        let p = SLOWED_MEAN / (SLOWED_MEAN + QUIET_MEAN);
        for s in 0..sc.servers {
            let slowed = uniform(&mut sim.antag) < p;
            sim.servers[s].slowed = !slowed; // toggled back by the first event
            sim.at(0, Ev::Antagonist(s as u16));
        }
    }
    sim.run()
}

// ===== reporting =====

#[derive(Clone, Copy, Debug, Default)]
struct Summary {
    p50: f64,
    p99: f64,
    p999: f64,
    failed: u64,
    probes_per_req: f64,
}

fn summarize(mut s: StepStats) -> Summary {
    s.latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        let l = &s.latencies;
        if l.is_empty() {
            return 0.0;
        }
        l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / MS
    };
    Summary {
        p50: pct(0.5),
        p99: pct(0.99),
        p999: pct(0.999),
        failed: s.failed,
        probes_per_req: s.probes as f64 / s.requests.max(1) as f64,
    }
}

fn mean(v: &[Summary]) -> Summary {
    let n = v.len().max(1) as f64;
    Summary {
        p50: v.iter().map(|s| s.p50).sum::<f64>() / n,
        p99: v.iter().map(|s| s.p99).sum::<f64>() / n,
        p999: v.iter().map(|s| s.p999).sum::<f64>() / n,
        failed: (v.iter().map(|s| s.failed).sum::<u64>() as f64 / n).round() as u64,
        probes_per_req: v.iter().map(|s| s.probes_per_req).sum::<f64>() / n,
    }
}

fn per_seed(v: &[Summary], f: impl Fn(&Summary) -> String) -> String {
    v.iter().map(f).collect::<Vec<_>>().join(" / ")
}

/// One markdown table: a row per policy with the mean over seeds and each seed's values.
fn table(out: &mut String, rows: &[(String, Vec<Summary>)]) {
    let _ = writeln!(
        out,
        "| policy | p50 ms | p99 ms | p99.9 ms | failed | probes/req | p99 per seed | p99.9 per seed | failed per seed |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---|---|");
    for (name, per) in rows {
        let m = mean(per);
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.1} | {:.1} | {} | {:.2} | {} | {} | {} |",
            m.p50,
            m.p99,
            m.p999,
            m.failed,
            m.probes_per_req,
            per_seed(per, |s| format!("{:.0}", s.p99)),
            per_seed(per, |s| format!("{:.0}", s.p999)),
            per_seed(per, |s| s.failed.to_string()),
        );
    }
}

// ===== command line =====

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    Hetero,
    Ramp,
    Failing,
    Sinkhole,
    Partial,
    Equal,
    All,
}

/// Prequal against peak-EWMA, least-request, weighted_round_robin and round robin in a
/// deterministic sans-IO simulation (issue 23's scenarios), many seeds; markdown tables out.
#[derive(clap::Parser, Debug)]
#[command(name = "prequal_sim")]
struct Cli {
    /// Which scenario (all: every one).
    #[arg(long, value_enum, default_value_t = Which::All)]
    scenario: Which,
    /// Seeds per scenario (1, 2, ... n; plus --first-seed - 1).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Prequal's settings side by side (q_rif, probes per query, piggyback) instead of the policies.
    #[arg(long)]
    variants: bool,
    /// Servers (the failing scenario fails the first two, the sinkhole scenario three).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=1000))]
    servers: u64,
    /// Workers per server.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    workers: u64,
    /// Base service time in ms (the mean is 1.29 × this, × 2 on half-speed servers).
    #[arg(long, default_value_t = 10.0)]
    base_ms: f64,
    /// Clients, each with its own balancer.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    clients: u64,
    /// Offered load for hetero and equal (share of capacity).
    #[arg(long, default_value_t = 0.9)]
    load: f64,
    /// Offered load for failing (share of the whole fleet's capacity; 0.8 keeps the 18 servers
    /// left at about 0.9 of theirs).
    #[arg(long, default_value_t = 0.8)]
    failing_load: f64,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Measured seconds (per step in the ramp).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Measured seconds per ramp step.
    #[arg(long, default_value_t = 4.0)]
    step: f64,
    /// Network round trip for requests and probes, in µs.
    #[arg(long, default_value_t = 500)]
    rtt_us: u64,
    /// The caller's deadline in ms (a later answer is a failed request).
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
}

fn scenarios(cli: &Cli) -> Vec<Scenario> {
    let secs = |s: f64| (s * SECOND as f64) as u64;
    let base = Scenario {
        name: "hetero",
        title: String::new(),
        servers: cli.servers as usize,
        workers: cli.workers as usize,
        base_ns: cli.base_ms * MS,
        heterogeneous: true,
        antagonists: true,
        failing: 0,
        fail_at: 0,
        sinkhole: false,
        fail_share: 1.0,
        loads: vec![cli.load],
        warmup: secs(cli.warmup),
        step: secs(cli.duration),
        clients: cli.clients as usize,
        rtt: cli.rtt_us * 1000,
        timeout: cli.timeout_ms * 1_000_000,
    };
    let (n, k, b) = (base.servers, base.workers, cli.base_ms);
    let mut out = Vec::new();
    let want = |w: Which| cli.scenario == w || cli.scenario == Which::All;
    if want(Which::Hetero) {
        out.push(Scenario {
            title: format!(
                "hetero: {n} servers × {k} workers, half at half speed, antagonists, {:.2} load",
                cli.load
            ),
            ..base.clone()
        });
    }
    if want(Which::Ramp) {
        let loads = (0..9).map(|i| 0.75 * (10.0f64 / 9.0).powi(i)).collect();
        out.push(Scenario {
            name: "ramp",
            title: format!(
                "ramp: the hetero fleet, load 0.75 → 1.75 in steps of ×10/9, {} s each",
                cli.step
            ),
            loads,
            step: secs(cli.step),
            ..base.clone()
        });
    }
    if want(Which::Failing) {
        out.push(Scenario {
            name: "failing",
            title: format!(
                "failing: the hetero fleet, 2 of {n} servers fail every query at once from 2 s into the window, {:.2} load",
                cli.failing_load
            ),
            loads: vec![cli.failing_load],
            failing: 2,
            fail_at: base.warmup + 2 * SECOND,
            ..base.clone()
        });
    }
    if want(Which::Sinkhole) {
        out.push(Scenario {
            name: "sinkhole",
            title: format!(
                "sinkhole: the hetero fleet, 3 of {n} servers fail every query at once from 2 s into the window and report idle (one more than the 10% ejection cap), {:.2} load",
                cli.failing_load
            ),
            loads: vec![cli.failing_load],
            failing: 3,
            fail_at: base.warmup + 2 * SECOND,
            sinkhole: true,
            ..base.clone()
        });
    }
    if want(Which::Partial) {
        out.push(Scenario {
            name: "partial",
            title: format!(
                "partial: the hetero fleet, 1 of {n} servers fails 30% of queries at once from 2 s into the window and reports idle, {:.2} load",
                cli.failing_load
            ),
            loads: vec![cli.failing_load],
            failing: 1,
            fail_at: base.warmup + 2 * SECOND,
            sinkhole: true,
            fail_share: 0.3,
            ..base.clone()
        });
    }
    if want(Which::Equal) {
        out.push(Scenario {
            name: "equal",
            title: format!(
                "equal: {n} equal servers × {k} workers, no antagonists, {:.2} load",
                cli.load
            ),
            heterogeneous: false,
            antagonists: false,
            ..base.clone()
        });
    }
    for s in &mut out {
        let _ = write!(
            s.title,
            "; base {b} ms, {} clients, rtt {} µs, timeout {} ms",
            s.clients, cli.rtt_us, cli.timeout_ms
        );
    }
    out
}

fn main() {
    use clap::Parser as _;
    let cli = Cli::parse();
    if !(cli.load > 0.0
        && cli.failing_load > 0.0
        && cli.base_ms > 0.0
        && cli.duration > 0.0
        && cli.step > 0.0
        && cli.warmup >= 0.0)
    {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        cmd.error(
            clap::error::ErrorKind::ValueValidation,
            "--load, --failing-load, --base-ms, --duration and --step must be > 0, --warmup >= 0",
        )
        .exit();
    }
    let variants = if cli.variants {
        prequal_variants()
    } else {
        policies()
    };
    let seeds: Vec<u64> = (cli.first_seed..cli.first_seed + cli.seeds).collect();
    for sc in scenarios(&cli) {
        // results[variant][seed][step]
        let results: Vec<Vec<Vec<Summary>>> = variants
            .iter()
            .map(|v| {
                seeds
                    .iter()
                    .map(|&seed| run(&sc, v, seed).into_iter().map(summarize).collect())
                    .collect()
            })
            .collect();
        let mut out = String::new();
        let _ = writeln!(out, "### {}\n\nseeds {:?}\n", sc.title, seeds);
        for (step, load) in sc.loads.iter().enumerate() {
            if sc.loads.len() > 1 {
                let _ = writeln!(out, "**{} step {}: load {load:.3}**\n", sc.name, step + 1);
            }
            let rows: Vec<(String, Vec<Summary>)> = variants
                .iter()
                .zip(&results)
                .map(|(v, per)| (v.name.clone(), per.iter().map(|s| s[step]).collect()))
                .collect();
            table(&mut out, &rows);
            let _ = writeln!(out);
        }
        print!("{out}");
    }
}
