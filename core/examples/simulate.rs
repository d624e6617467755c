//! Sans-IO simulation: the same open-loop workload through every policy, deterministic per seed.
//!
//! Each endpoint is a server with `--workers` parallel slots and a FIFO queue; service time is
//! 5 ms plus an exponential with mean 5 ms. Endpoint 0 is `--slow-ms` slower; endpoint 1 fails with
//! probability `--fail-rate`, fast (1 ms, like a refused call). Arrivals are Poisson at
//! `--load` x total capacity. Ring policies hash a key drawn uniformly from 1000 keys.
//!
//! ```text
//! cargo run --release -p pickwise --example simulate -- [--seed N] [--endpoints N] [--requests N]
//!     [--slow-ms X] [--fail-rate F] [--workers N] [--load F] [--json]
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::process::ExitCode;

use pickwise::{
    hash, hashing::total_weight, EndpointState, HashPolicy, InFlight, Outcome, P2c, Policy, Pool, PoolConfig,
    Ring, RingConfig, RingPicker, Rng, SplitMix64,
};

const MS: f64 = 1e6;

#[derive(Clone, Copy)]
struct Scene {
    seed: u64,
    endpoints: usize,
    requests: usize,
    slow_ms: f64,
    fail_rate: f64,
    workers: usize,
    load: f64,
}

#[derive(Clone, Copy, Debug)]
enum Strategy {
    Random,
    RoundRobin,
    P2c(Policy),
    Ring(HashPolicy),
}

const STRATEGIES: [(&str, Strategy); 8] = [
    ("random", Strategy::Random),
    ("round-robin", Strategy::RoundRobin),
    ("least-request", Strategy::P2c(Policy::LeastRequest)),
    ("peak-ewma", Strategy::P2c(Policy::PeakEwma)),
    ("go-zero", Strategy::P2c(Policy::GoZero)),
    ("ring", Strategy::Ring(HashPolicy::Plain)),
    (
        "ring-bounded",
        Strategy::Ring(HashPolicy::Bounded { factor_percent: 125 }),
    ),
    (
        "ring-affinity",
        Strategy::Ring(HashPolicy::Affinity { ratio: 2.0 }),
    ),
];

struct Report {
    name: &'static str,
    requests: usize,
    failures: usize,
    latencies_ms: Vec<f64>,
    share: Vec<f64>,
    /// Ring policies: requests served by their key's home endpoint (cache affinity).
    home: Option<usize>,
}

fn uniform(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn exponential(rng: &mut SplitMix64, mean: f64) -> f64 {
    -mean * (1.0 - uniform(rng)).ln()
}

fn run(scene: Scene, name: &'static str, strategy: Strategy) -> Report {
    let n = scene.endpoints;
    let mut world = SplitMix64::new(scene.seed); // workload randomness, same for every policy
    let mut choice = SplitMix64::new(scene.seed ^ 0xC0FFEE); // the picker's randomness
    let policy = match strategy {
        Strategy::P2c(p) => p,
        _ => Policy::PeakEwma,
    };
    let pool = Pool::new(PoolConfig {
        policy,
        track_total: true,
        ..PoolConfig::default()
    });
    pool.set_endpoints(n);
    let states: Vec<EndpointState> = (0..n).map(|_| EndpointState::new(1)).collect();
    let hosts: Vec<(String, u32)> = (0..n).map(|i| (format!("endpoint-{i}"), 1)).collect();
    let ring = Ring::build(&hosts, &RingConfig::native(160)).expect("ring");
    let tw = total_weight(&states);
    let mut slots: Vec<Vec<f64>> = vec![vec![0.0; scene.workers]; n];
    let mean_service = 10.0 * MS;
    let capacity_per_ns = (n * scene.workers) as f64 / mean_service;
    let mut events: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut pending: Vec<Option<(InFlight<&EndpointState, &Pool>, Outcome)>> = Vec::new();
    let mut report = Report {
        name,
        requests: scene.requests,
        failures: 0,
        latencies_ms: Vec::new(),
        share: vec![0.0; n],
        home: None,
    };
    let mut t = 0.0f64;
    let mut rr = 0usize;
    for _ in 0..scene.requests {
        t += exponential(&mut world, 1.0 / (capacity_per_ns * scene.load));
        let now = t as u64;
        while let Some(&Reverse((at, id))) = events.peek() {
            if at > now {
                break;
            }
            events.pop();
            if let Some((guard, outcome)) = pending[id].take() {
                let _ = guard.complete(at, outcome);
            }
        }
        let key = world.next_u64() % 1000;
        let service = 5.0 * MS + exponential(&mut world, 5.0 * MS);
        let fails = uniform(&mut world) < scene.fail_rate;
        let picked = match strategy {
            Strategy::Random => Some(pickwise_index(&mut choice, n)),
            Strategy::RoundRobin => {
                rr += 1;
                Some(rr % n)
            }
            Strategy::P2c(_) => P2c::new(&states, &pool).pick(now, &mut choice).ok(),
            Strategy::Ring(hp) => {
                let h = hash::native(&key.to_le_bytes());
                let picked = RingPicker::new(ring.view(), &states, &pool, tw)
                    .pick(now, h, hp)
                    .ok();
                if picked.is_some() && picked == ring.lookup(h).map(|o| o as usize) {
                    *report.home.get_or_insert(0) += 1;
                }
                picked
            }
        };
        let Some(i) = picked else {
            report.failures += 1;
            continue;
        };
        report.share[i] += 1.0;
        let guard = InFlight::start(&states[i], &pool, now);
        let (done, outcome) = if i == 1 && fails {
            (t + 1.0 * MS, Outcome::Failure)
        } else {
            let extra = if i == 0 { scene.slow_ms * MS } else { 0.0 };
            let slot = slots[i]
                .iter_mut()
                .min_by(|a, b| a.total_cmp(b))
                .expect("workers >= 1");
            let begin = slot.max(t);
            *slot = begin + service + extra;
            (*slot, Outcome::Success)
        };
        match outcome {
            Outcome::Failure => report.failures += 1,
            _ => report.latencies_ms.push((done - t) / MS),
        }
        events.push(Reverse((done as u64, pending.len())));
        pending.push(Some((guard, outcome)));
    }
    drop(pending);
    debug_assert!(states.iter().all(|e| e.in_flight() == 0));
    let total: f64 = report.share.iter().sum();
    report.share.iter_mut().for_each(|s| *s /= total.max(1.0));
    report.latencies_ms.sort_by(f64::total_cmp);
    report
}

fn pickwise_index(rng: &mut SplitMix64, n: usize) -> usize {
    (((rng.next_u64() >> 32) * n as u64) >> 32) as usize
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Replay one open-loop workload through every policy, deterministically per seed.
#[derive(clap::Parser, Debug)]
#[command(name = "simulate")]
struct Cli {
    /// Random seed (the whole run is a function of it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of endpoints (at least 1).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    endpoints: u64,
    /// Requests per policy.
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    /// Extra service time of endpoint 0, in ms (>= 0).
    #[arg(long, default_value_t = 50.0)]
    slow_ms: f64,
    /// Probability that endpoint 1 fails a request (0..=1).
    #[arg(long, default_value_t = 0.5)]
    fail_rate: f64,
    /// Parallel slots per endpoint (at least 1).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    workers: u64,
    /// Offered load as a share of total capacity (> 0).
    #[arg(long, default_value_t = 0.7)]
    load: f64,
    /// One JSON object per policy instead of the table.
    #[arg(long)]
    json: bool,
}

/// Parses the command line; clap prints usage and exits 0 for `--help`, 2 for bad arguments.
fn parse() -> (Scene, bool) {
    use clap::Parser as _;
    let cli = Cli::parse();
    let bad = |msg: &str| -> ! {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        cmd.error(clap::error::ErrorKind::ValueValidation, msg).exit()
    };
    if cli.load.is_nan() || cli.load <= 0.0 {
        bad("--load must be > 0");
    }
    if !(0.0..=1.0).contains(&cli.fail_rate) {
        bad("--fail-rate must be within 0..=1");
    }
    if cli.slow_ms.is_nan() || cli.slow_ms < 0.0 {
        bad("--slow-ms must be >= 0");
    }
    let scene = Scene {
        seed: cli.seed,
        endpoints: cli.endpoints as usize,
        requests: cli.requests,
        slow_ms: cli.slow_ms,
        fail_rate: cli.fail_rate,
        workers: cli.workers as usize,
        load: cli.load,
    };
    (scene, cli.json)
}

fn main() -> ExitCode {
    let (scene, json) = parse();
    let mut out = String::new();
    if !json {
        let _ = writeln!(
            out,
            "seed {} | {} endpoints x {} workers | {} requests at {:.0}% load | endpoint 0 +{} ms | endpoint 1 fails {:.0}%",
            scene.seed, scene.endpoints, scene.workers, scene.requests, scene.load * 100.0, scene.slow_ms, scene.fail_rate * 100.0
        );
        let _ = writeln!(
            out,
            "{:<14} {:>9} {:>8} {:>9} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8}",
            "policy",
            "requests",
            "failures",
            "mean_ms",
            "p50_ms",
            "p99_ms",
            "p999_ms",
            "slow_0",
            "fail_1",
            "at_home"
        );
    }
    for (name, strategy) in STRATEGIES {
        let r = run(scene, name, strategy);
        let l = &r.latencies_ms;
        let mean = l.iter().sum::<f64>() / l.len().max(1) as f64;
        if json {
            let share: Vec<String> = r
                .share
                .iter()
                .enumerate()
                .map(|(i, s)| format!("\"{i}\":{s:.6}"))
                .collect();
            let _ = writeln!(
                out,
                "{{\"policy\":\"{}\",\"requests\":{},\"failures\":{},\"mean_ms\":{:.4},\"p50_ms\":{:.4},\"p99_ms\":{:.4},\"p999_ms\":{:.4},\"share\":{{{}}}}}",
                r.name,
                r.requests,
                r.failures,
                mean,
                pct(l, 0.5),
                pct(l, 0.99),
                pct(l, 0.999),
                share.join(",")
            );
        } else {
            let _ = writeln!(
                out,
                "{:<14} {:>9} {:>8} {:>9.2} {:>8.2} {:>9.2} {:>9.2} {:>7.2}% {:>7.2}% {:>8}",
                r.name,
                r.requests,
                r.failures,
                mean,
                pct(l, 0.5),
                pct(l, 0.99),
                pct(l, 0.999),
                r.share[0] * 100.0,
                r.share.get(1).copied().unwrap_or(0.0) * 100.0,
                r.home.map_or("-".to_string(), |h| format!(
                    "{:.1}%",
                    100.0 * h as f64 / r.requests.max(1) as f64
                ))
            );
        }
    }
    print!("{out}");
    ExitCode::SUCCESS
}
