//! Fleet-scale simulation of subsetting: C clients x B backends, sans-IO and deterministic by
//! seed. For full mesh, random subsetting (gRFC A68), deterministic subsetting (SRE book) and
//! deterministic aperture (Finagle) it reports connections per client and per backend, request
//! load per backend (clients at equal rates, and at heavy-tailed Pareto rates), and churn: the
//! connections opened plus closed when 1% of the backends are replaced (a deploy step), when one
//! backend is added, and when the clients scale up by 10%.
//!
//! ```text
//! cargo run --release -p pickwise --example fleet -- [--clients 10000] [--backends 1000]
//!     [--subset 12] [--seed 1] [--json]
//! ```
//!
//! Load model: each client spreads its requests over its subset in proportion to the subset's
//! weights (what weighted P2C converges to, and what Finagle's aperture relies on), so a
//! backend's load is the sum over its clients of `rate * weight / subset weight`. Expected
//! values, not samples: the figures are exact for the model and free of sampling noise.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Instant;

use clap::Parser;
use pickwise::subset::{Client, Subsetting};
use pickwise::{Rng, SplitMix64};

/// Fleet-scale simulation of subsetting strategies.
#[derive(Parser, Debug)]
#[command(name = "fleet")]
struct Cli {
    /// Clients.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    clients: u32,
    /// Backends.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    backends: u32,
    /// Subset size (random, deterministic) and minimum aperture.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..))]
    subset: u32,
    /// Seed for the deploy step's choice of backends and the skewed client rates.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// One JSON object per strategy instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug)]
enum Strategy {
    FullMesh,
    Subset(Subsetting),
}

impl Strategy {
    fn name(&self) -> &'static str {
        match self {
            Self::FullMesh => "full_mesh",
            Self::Subset(Subsetting::Random { .. }) => "random",
            Self::Subset(Subsetting::Deterministic { .. }) => "deterministic",
            Self::Subset(Subsetting::Aperture { .. }) => "aperture",
        }
    }
}

/// One client's subset: (backend id, weight).
type Subset = Vec<(u64, f64)>;

/// Subsets of clients `0..clients` over backends `ids` (keys are `backend-<id>`), on all cores.
fn subsets(s: Subsetting, clients: u32, ids: &[u64]) -> Vec<Subset> {
    let keys: Vec<String> = ids.iter().map(|id| format!("backend-{id}")).collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(8) as u32;
    let chunk = clients.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let keys = &keys;
                scope.spawn(move || {
                    let lo = t * chunk;
                    let hi = ((t + 1) * chunk).min(clients);
                    (lo..hi)
                        .map(|index| {
                            let members = s
                                .subset(
                                    Client::Index {
                                        index,
                                        count: clients,
                                    },
                                    keys,
                                )
                                .expect("non-empty backends, non-zero size");
                            members
                                .iter()
                                .map(|m| (ids[m.backend as usize], m.weight))
                                .collect()
                        })
                        .collect::<Vec<Subset>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    })
}

/// Connections opened plus closed going from `before` to `after` (clients beyond `before` open
/// all of theirs), and how many existing clients changed their subset.
fn churn(before: &[Subset], after: &[Subset]) -> (u64, u64) {
    let (mut total, mut changed) = (0u64, 0u64);
    for (i, new) in after.iter().enumerate() {
        match before.get(i) {
            Some(old) => {
                let a: HashSet<u64> = old.iter().map(|m| m.0).collect();
                let b: HashSet<u64> = new.iter().map(|m| m.0).collect();
                let d = a.symmetric_difference(&b).count() as u64;
                total += d;
                changed += u64::from(d > 0);
            }
            None => total += new.len() as u64,
        }
    }
    // Clients that went away close theirs.
    (
        total
            + before
                .iter()
                .skip(after.len())
                .map(|s| s.len() as u64)
                .sum::<u64>(),
        changed,
    )
}

struct Row {
    strategy: &'static str,
    subset: u32,
    conns_per_client: f64,
    conn_max_mean: f64,
    load_max_mean: f64,
    load_p99_mean: f64,
    load_max_mean_skewed: f64,
    uncovered: u32,
    churn_deploy: u64,
    churn_add_backend: u64,
    /// Existing clients whose subset changed when one backend was added.
    changed_add_backend: u64,
    churn_scale_clients: u64,
    min_deploy: u64,
    min_add_backend: u64,
    min_scale_clients: u64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Per-backend connection counts and loads for `rates`.
fn loads(subsets: &[Subset], index: &HashMap<u64, usize>, n: usize, rates: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut conns, mut load) = (vec![0.0; n], vec![0.0; n]);
    for (c, s) in subsets.iter().enumerate() {
        let total: f64 = s.iter().map(|m| m.1).sum();
        for &(id, w) in s {
            let b = index[&id];
            conns[b] += 1.0;
            load[b] += rates[c] * w / total;
        }
    }
    (conns, load)
}

fn max_mean(v: &[f64]) -> f64 {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    v.iter().cloned().fold(0.0, f64::max) / mean
}

struct Scenario<'a> {
    ids: &'a [u64],
    /// The backends after the deploy step, and how many were replaced.
    deploy: &'a [u64],
    replaced: usize,
    added: &'a [u64],
    equal: &'a [f64],
    skewed: &'a [f64],
}

fn run(strategy: Strategy, cli: &Cli, sc: &Scenario<'_>) -> Row {
    let Scenario {
        ids,
        deploy,
        replaced,
        added,
        equal,
        skewed,
    } = *sc;
    let (c, n, k) = (cli.clients, ids.len(), cli.subset);
    let scaled = c + c.div_ceil(10);
    let Strategy::Subset(s) = strategy else {
        // Full mesh, analytically: every client holds every backend at weight 1.
        let r = replaced as u64;
        return Row {
            strategy: strategy.name(),
            subset: n as u32,
            conns_per_client: n as f64,
            conn_max_mean: 1.0,
            load_max_mean: 1.0,
            load_p99_mean: 1.0,
            load_max_mean_skewed: 1.0,
            uncovered: 0,
            churn_deploy: 2 * r * u64::from(c),
            churn_add_backend: u64::from(c),
            changed_add_backend: u64::from(c),
            churn_scale_clients: u64::from(scaled - c) * n as u64,
            min_deploy: 2 * r * u64::from(c),
            min_add_backend: u64::from(c),
            min_scale_clients: u64::from(scaled - c) * n as u64,
        };
    };
    let base = subsets(s, c, ids);
    let index: HashMap<u64, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let (conns, load) = loads(&base, &index, n, equal);
    let (_, load_skewed) = loads(&base, &index, n, skewed);
    let mut sorted = load.clone();
    sorted.sort_by(f64::total_cmp);
    let mean_load = load.iter().sum::<f64>() / n as f64;
    let total_conns: f64 = conns.iter().sum();
    let per_client = total_conns / f64::from(c);
    let replaced = replaced as f64;
    let (churn_add_backend, changed_add_backend) = churn(&base, &subsets(s, c, added));
    Row {
        strategy: strategy.name(),
        subset: k,
        conns_per_client: per_client,
        conn_max_mean: max_mean(&conns),
        load_max_mean: max_mean(&load),
        load_p99_mean: pct(&sorted, 0.99) / mean_load,
        load_max_mean_skewed: max_mean(&load_skewed),
        uncovered: conns.iter().filter(|&&x| x == 0.0).count() as u32,
        churn_deploy: churn(&base, &subsets(s, c, deploy)).0,
        churn_add_backend,
        changed_add_backend,
        churn_scale_clients: churn(&base, &subsets(s, scaled, ids)).0,
        // The replaced backends' connections must close and as many open on their successors.
        min_deploy: (2.0 * total_conns * replaced / n as f64).round() as u64,
        // The new backend takes its fair share; as many close elsewhere to keep subset sizes.
        min_add_backend: 2 * (total_conns / (n as f64 + 1.0)).ceil() as u64,
        // New clients open their own; existing clients need not change.
        min_scale_clients: (f64::from(scaled - c) * per_client).round() as u64,
    }
}

fn main() {
    let cli = Cli::parse();
    let started = Instant::now();
    let n = cli.backends as usize;
    let ids: Vec<u64> = (0..n as u64).collect();
    let mut rng = SplitMix64::new(cli.seed);
    // A deploy step: 1% of the backends (at least one) replaced by new ones.
    let r = n.div_ceil(100);
    let mut gone: Vec<u64> = ids.clone();
    for i in (1..n).rev() {
        gone.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    gone.truncate(r);
    let deploy: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| !gone.contains(id))
        .chain((0..r as u64).map(|i| 1_000_000 + i))
        .collect();
    let added: Vec<u64> = ids.iter().copied().chain([2_000_000]).collect();
    let equal = vec![1.0; (cli.clients as usize) * 2];
    // Heavy-tailed client rates: Pareto, alpha 1.5 (infinite variance), mean 3.
    let skewed: Vec<f64> = (0..(cli.clients as usize) * 2)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            (1.0 - u).powf(-1.0 / 1.5)
        })
        .collect();
    let k = cli.subset;
    let strategies = [
        Strategy::FullMesh,
        Strategy::Subset(Subsetting::Random { subset_size: k }),
        Strategy::Subset(Subsetting::Deterministic { subset_size: k }),
        Strategy::Subset(Subsetting::Aperture { min_aperture: k }),
    ];
    let scenario = Scenario {
        ids: &ids,
        deploy: &deploy,
        replaced: r,
        added: &added,
        equal: &equal,
        skewed: &skewed,
    };
    let rows: Vec<Row> = strategies.iter().map(|&s| run(s, &cli, &scenario)).collect();
    let mut out = String::new();
    if cli.json {
        for r in &rows {
            let _ = writeln!(
                out,
                "{{\"strategy\":\"{}\",\"subset\":{},\"conns_per_client\":{:.3},\"conn_max_mean\":{:.4},\"load_max_mean\":{:.4},\"load_p99_mean\":{:.4},\"load_max_mean_skewed\":{:.4},\"churn_deploy\":{},\"churn_add_backend\":{},\"churn_scale_clients\":{}}}",
                r.strategy,
                r.subset,
                r.conns_per_client,
                r.conn_max_mean,
                r.load_max_mean,
                r.load_p99_mean,
                r.load_max_mean_skewed,
                r.churn_deploy,
                r.churn_add_backend,
                r.churn_scale_clients
            );
        }
    } else {
        let _ = writeln!(
            out,
            "{} clients x {} backends, subset {k}, seed {} ({:.1} s)\n",
            cli.clients,
            cli.backends,
            cli.seed,
            started.elapsed().as_secs_f64()
        );
        let _ = writeln!(
            out,
            "| strategy | conns/client | conn max/mean | load max/mean | load p99/mean | skewed load max/mean | backends unused | churn: deploy 1% (min) | churn: +1 backend (min) [clients changed] | churn: clients +10% (min) |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.3} | {:.3} | {:.3} | {:.2} | {} | {} ({}) | {} ({}) [{}] | {} ({}) |",
                r.strategy,
                r.conns_per_client,
                r.conn_max_mean,
                r.load_max_mean,
                r.load_p99_mean,
                r.load_max_mean_skewed,
                r.uncovered,
                r.churn_deploy,
                r.min_deploy,
                r.churn_add_backend,
                r.min_add_backend,
                r.changed_add_backend,
                r.churn_scale_clients,
                r.min_scale_clients
            );
        }
    }
    print!("{out}");
}
