//! pickwise's main job: a load run of every balancing policy against real gRPC servers.
//!
//! With no arguments it starts 4 tonic backends on loopback serving `grpc.health.v1.Health/Check`
//! (backend 1 answers 20 ms slower; backend 3 is killed halfway through each run and restarted at
//! three quarters), then drives each policy in turn at fixed concurrency and prints a table.
//!
//! ```text
//! cargo run --release -p pickwise-tonic --example loadtest -- [--targets host:port,...]
//!     [--policy NAME]... [--duration SECS] [--concurrency N] [--healthy] [--fail-percent P]
//!     [--failure-penalty K] [--unequal] [--json] [--metrics ADDR [--hold]] [--plot FILE.svg]
//! ```
//!
//! `--metrics ADDR` serves the balancer's instruments in Prometheus text at
//! `http://ADDR/metrics` while it runs (build with `--features metrics`; see the README's table),
//! and `--hold` keeps serving them after the results until standard input closes.
//! `--plot FILE.svg` draws, for each policy, every backend's share of the requests and the p50/p99
//! latency over time, with the kill and restart of backend 3 marked (plotters, SVG backend).
//!
//! pickwise runs use a 100 ms..1 s reconnect backoff and a 1 s base ejection, so a run of a few
//! seconds shows the killed backend coming back. `--healthy` keeps the embedded backends equal
//! and alive (no slow one, no kill): the setting for measuring overhead.
//!
//! `--fail-percent P` is issue 16's partial-failure scenario: the embedded backends are equal and
//! alive, and backend 3 answers P% of its calls with UNAVAILABLE at once (faster than a success).
//! `--fail-percent 30 --concurrency 32 --policy p2c-peak-ewma --policy round-robin` gives the
//! figures `tests/partial_failure.rs` checks. The `err %` column is errors / (successes + errors).
//!
//! `--unequal` is issue 18's unequal-capacity scenario: backend 0 has a quarter of the others'
//! workers and every backend reports its own load (ORCA: qps and busy workers).
//! `--unequal --policy round-robin --policy p2c-peak-ewma --policy weighted-round-robin
//! --policy p2c-peak-ewma-orca` compares the report-driven policies with the blind ones.
//!
//! The `probes/req` column (`probes_per_request` in `--json`) is Prequal's probing cost: probes
//! sent per successful call (answers piggybacked on responses are free and not counted).
//! `--prequal-probes-per-query P` sets Prequal's probing rate (`PrequalConfig`'s default, 1;
//! the paper's is 3; 0 leaves piggybacked answers and idle probes).
//! `--prequal-removes-per-query R` sets Prequal's removal rate (the paper's 1 by default; the
//! core scales it by n/m when there are fewer backends than pool entries).
//!
//! With `--targets`, `per_backend` counts come from pickwise's own statistics (requests started);
//! tonic's `balance_list` does not report where requests went, so its map is empty.
//!
//! Policies: `p2c-peak-ewma`, `p2c-least-request`, `ring-hash`, `round-robin`,
//! `weighted-round-robin` (gRFC A58 on ORCA reports), `p2c-peak-ewma-orca` (peak-EWMA with the
//! reported utilization in the cost), `prequal` (Prequal, NSDI '24: probes of each server's
//! requests in flight and latency, the hot-cold rule; the embedded backends run its server
//! side, `PrequalLayer` and the probe service) (pickwise's),
//! `tonic-balance-list` (tonic's own `Channel::balance_list`), and for the overhead comparison
//! `direct` (one tonic `Channel` to the first target) and `pickwise-single` (pickwise over that
//! same target).

#[path = "../tests/support/backend.rs"]
mod backend;
#[path = "loadtest/plot.rs"]
mod plot;

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::Backend;
use http::HeaderName;
use pickwise_tonic::{Backoff, Builder, HashPolicy, OutlierConfig, Policy, PoolConfig, RingConfig};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const ALL: [&str; 10] = [
    "p2c-peak-ewma",
    "p2c-least-request",
    "ring-hash",
    "round-robin",
    "weighted-round-robin",
    "p2c-peak-ewma-orca",
    "prequal",
    "tonic-balance-list",
    "direct",
    "pickwise-single",
];

/// A load run of every balancing policy against real gRPC servers on loopback.
#[derive(clap::Parser, Debug)]
#[command(name = "loadtest")]
struct Args {
    /// External backends (`host:port,...`) instead of the 4 embedded ones.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    targets: Option<Vec<String>>,
    /// Policies to run, in order (repeatable; default: all).
    #[arg(long = "policy", value_parser = clap::builder::PossibleValuesParser::new(ALL))]
    policies: Vec<String>,
    /// Seconds per policy.
    #[arg(long, default_value = "3", value_parser = seconds)]
    duration: Duration,
    /// Requests in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// Keep the embedded backends equal and alive (no slow one, no kill): for measuring overhead.
    #[arg(long)]
    healthy: bool,
    /// Partial failure: the embedded backends are equal and alive, and backend 3 answers this
    /// percentage of calls with UNAVAILABLE at once.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u64).range(0..=100), conflicts_with = "targets")]
    fail_percent: Option<u64>,
    /// pickwise's failure penalty (`PoolConfig::failure_penalty`: a failed call's latency sample
    /// is this multiple of its latency; 1 = a failure only never lowers the estimate).
    #[arg(long, value_name = "K", default_value_t = pickwise_tonic::pickwise::pool::DEFAULT_FAILURE_PENALTY)]
    failure_penalty: f32,
    /// Unequal capacity (issue 18): the embedded backends have 16 workers each taking 2 ms per
    /// call, backend 0 a quarter of that (4), all alive; every backend reports its own load
    /// (ORCA: qps and busy workers). The setting for `weighted-round-robin` and
    /// `p2c-peak-ewma-orca` against `round-robin` and `p2c-peak-ewma`.
    #[arg(long, conflicts_with_all = ["targets", "fail_percent", "healthy"])]
    unequal: bool,
    /// One JSON object per policy instead of the table.
    #[arg(long)]
    json: bool,
    /// Serve the instruments in Prometheus text at http://ADDR/metrics while running (needs the
    /// `metrics` feature to record anything).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// With --metrics: after the results, keep serving until standard input closes.
    #[arg(long, requires = "metrics")]
    hold: bool,
    /// Draw per-backend share and p50/p99 over time for each policy into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
    /// Prequal's answers removed per query (`PrequalConfig::removes_per_query`).
    #[arg(long, value_name = "R", default_value_t = pickwise_tonic::PrequalConfig::default().removes_per_query)]
    prequal_removes_per_query: f32,
    /// Prequal's probes per query (`PrequalConfig::probes_per_query`; 0: piggybacked answers
    /// and idle probes only).
    #[arg(long, value_name = "P", default_value_t = pickwise_tonic::PrequalConfig::default().probes_per_query)]
    prequal_probes_per_query: f32,
}

fn seconds(v: &str) -> Result<Duration, String> {
    let secs: f64 = v.parse().map_err(|_| format!("not a number of seconds: {v:?}"))?;
    if secs > 0.0 && secs < 86_400.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err("must be positive and under a day".into())
    }
}

/// Parses the command line; clap prints usage and exits 0 for `--help`, 2 for bad arguments.
fn parse() -> Args {
    let mut a = <Args as clap::Parser>::parse();
    if a.targets.as_ref().is_some_and(|t| t.iter().all(|s| s.is_empty())) {
        let mut cmd = <Args as clap::CommandFactory>::command();
        cmd.error(
            clap::error::ErrorKind::ValueValidation,
            "--targets needs at least one host:port",
        )
        .exit();
    }
    if let Some(t) = &mut a.targets {
        t.retain(|s| !s.is_empty());
    }
    if a.policies.is_empty() {
        a.policies = ALL.iter().map(|s| s.to_string()).collect();
    }
    a
}

/// What one policy run produced.
struct Run {
    policy: String,
    requests: u64,
    errors: u64,
    secs: f64,
    latencies_us: Vec<u32>,
    per_backend: BTreeMap<String, u64>,
    /// For `--plot`: each completed call's (ms since the start, latency µs).
    timeline: Vec<(u32, u32)>,
    /// For `--plot`: requests per backend so far, every [`SAMPLE`] (seconds since the start).
    shares: Vec<(f64, Vec<u64>)>,
    /// Seconds since the start when backend 3 was killed and restarted.
    killed_at: Option<f64>,
    restarted_at: Option<f64>,
    /// Prequal probes sent during the run (pickwise channels; 0 under other policies).
    probes: Option<u64>,
}

/// How often `--plot`'s per-backend counts are sampled.
const SAMPLE: Duration = Duration::from_millis(250);

impl Run {
    /// Prequal probes sent per successful call (`None` for tonic's own channels).
    fn probes_per_request(&self) -> Option<f64> {
        self.probes.map(|p| p as f64 / self.requests.max(1) as f64)
    }

    /// Errors per call, in percent.
    fn error_percent(&self) -> f64 {
        100.0 * self.errors as f64 / (self.requests + self.errors).max(1) as f64
    }

    fn pct_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 * p) as usize).min(self.latencies_us.len() - 1);
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

/// Either kind of channel the generated client can run over.
#[derive(Clone)]
enum AnyChannel {
    Tonic(Channel),
    Pickwise(pickwise_tonic::BalancedChannel),
}

async fn one_call(ch: &AnyChannel, key: Option<u64>) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(k) = key {
        req.metadata_mut()
            .insert("x-key", k.to_string().parse().expect("digits"));
    }
    match ch {
        AnyChannel::Tonic(c) => HealthClient::new(c.clone()).check(req).await.map(drop),
        AnyChannel::Pickwise(c) => HealthClient::new(c.clone()).check(req).await.map(drop),
    }
}

fn endpoint(addr: &str) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid address")
        .tcp_nodelay(true)
}

async fn make_channel(
    policy: &str,
    targets: &[String],
    failure_penalty: f32,
    prequal_removes: f32,
    prequal_probes: f32,
) -> Result<AnyChannel, String> {
    let pw = || {
        Builder::new()
            .pool(PoolConfig {
                failure_penalty,
                ..PoolConfig::default()
            })
            .backoff(Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
                ..Backoff::default()
            })
            // Short ejections so a run of a few seconds shows the killed backend coming back.
            .outlier(OutlierConfig {
                base_ejection_ms: 1000,
                ..OutlierConfig::default()
            })
            .wait_for_ready(Duration::from_secs(2))
    };
    // gRFC A58 with a 1 s blackout and 200 ms updates, so a run of a few seconds shows it (the
    // defaults are 10 s and 1 s).
    let wrr = pickwise_tonic::LbPolicy::WeightedRoundRobin(pickwise_tonic::pickwise::wrr::WrrConfig {
        blackout_ns: 1_000_000_000,
        update_ns: 200_000_000,
        ..Default::default()
    });
    let ch = match policy {
        "p2c-peak-ewma" => AnyChannel::Pickwise(pw().p2c(Policy::PeakEwma).build_static(targets.to_vec())),
        "p2c-least-request" => {
            AnyChannel::Pickwise(pw().p2c(Policy::LeastRequest).build_static(targets.to_vec()))
        }
        "ring-hash" => AnyChannel::Pickwise(
            pw().ring_hash(RingConfig::envoy(), HashPolicy::Bounded { factor_percent: 150 })
                .hash_header(HeaderName::from_static("x-key"))
                .build_static(targets.to_vec()),
        ),
        "round-robin" => AnyChannel::Pickwise(pw().round_robin().build_static(targets.to_vec())),
        "weighted-round-robin" => AnyChannel::Pickwise(pw().policy(wrr).build_static(targets.to_vec())),
        // pickwise's ORCA-aware P2C: peak-EWMA's cost × (1 + reported utilization).
        "p2c-peak-ewma-orca" => AnyChannel::Pickwise(
            pw().pool(PoolConfig {
                failure_penalty,
                utilization_weight: 1.0,
                ..PoolConfig::default()
            })
            .p2c(Policy::PeakEwma)
            .build_static(targets.to_vec()),
        ),
        "prequal" => AnyChannel::Pickwise(
            pw().prequal(pickwise_tonic::PrequalConfig {
                removes_per_query: prequal_removes,
                probes_per_query: prequal_probes,
                ..Default::default()
            })
            .build_static(targets.to_vec()),
        ),
        "pickwise-single" => {
            AnyChannel::Pickwise(pw().p2c(Policy::PeakEwma).build_static([targets[0].clone()]))
        }
        "tonic-balance-list" => AnyChannel::Tonic(Channel::balance_list(targets.iter().map(|t| endpoint(t)))),
        // Connects on first use: an unreachable target shows up as errors, like the other policies.
        "direct" => AnyChannel::Tonic(endpoint(&targets[0]).connect_lazy()),
        other => return Err(format!("unknown policy {other}")),
    };
    if let AnyChannel::Pickwise(c) = &ch {
        let want = if policy == "pickwise-single" {
            1
        } else {
            targets.len()
        };
        c.wait_ready(want, Duration::from_secs(3)).await;
    }
    Ok(ch)
}

/// How every policy is run.
#[derive(Clone, Copy)]
struct Settings {
    duration: Duration,
    concurrency: usize,
    /// Draw the live progress line.
    progress: bool,
    /// Run the fault script (backend 3 killed halfway, restarted at three quarters).
    faults: bool,
    failure_penalty: f32,
    prequal_removes: f32,
    prequal_probes: f32,
}

async fn run_policy(
    policy: &str,
    targets: &[String],
    backends: &mut [Backend],
    settings: &Settings,
) -> Result<Run, String> {
    let Settings {
        duration,
        concurrency,
        progress,
        faults,
        failure_penalty,
        prequal_removes,
        prequal_probes,
    } = *settings;
    let channel = make_channel(policy, targets, failure_penalty, prequal_removes, prequal_probes).await?;
    let probes_sent = || match &channel {
        AnyChannel::Pickwise(c) => Some(c.prequal_stats().probes_sent),
        AnyChannel::Tonic(_) => None,
    };
    let probes_before = probes_sent();
    let hits_before: Vec<u64> = backends.iter().map(Backend::hits).collect();
    let picks_before = pickwise_picks(&channel);
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (ch, requests, errors, stop) =
                (channel.clone(), requests.clone(), errors.clone(), stop.clone());
            let keyed = policy == "ring-hash";
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(4096);
                let mut timeline = Vec::with_capacity(4096);
                let mut key = w as u64;
                while !stop.load(Ordering::Relaxed) {
                    key = key
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let t = Instant::now();
                    match one_call(&ch, keyed.then_some((key >> 33) % 1000)).await {
                        Ok(()) => {
                            let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                            lat.push(us);
                            timeline.push((start.elapsed().as_millis() as u32, us));
                            requests.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            // A failing call returns at once; don't spin.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                (lat, timeline)
            })
        })
        .collect();
    // The fault script: with embedded backends, backend 3 dies halfway and returns at 3/4.
    let mut killed = false;
    let mut restarted = false;
    let (mut killed_at, mut restarted_at) = (None, None);
    let mut shares = Vec::new();
    let mut next_sample = Duration::ZERO;
    let counts = |backends: &[Backend]| -> Vec<u64> {
        if backends.is_empty() {
            let picks = pickwise_picks(&channel);
            targets
                .iter()
                .map(|t| picks.get(t).copied().unwrap_or(0))
                .collect()
        } else {
            backends
                .iter()
                .zip(&hits_before)
                .map(|(b, h)| b.hits() - h)
                .collect()
        }
    };
    while start.elapsed() < duration {
        if start.elapsed() >= next_sample {
            shares.push((start.elapsed().as_secs_f64(), counts(backends)));
            next_sample += SAMPLE;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = start.elapsed().as_secs_f64() / duration.as_secs_f64();
        if faults && backends.len() > 3 && t >= 0.5 && !killed {
            backends[3].kill();
            killed = true;
            killed_at = Some(start.elapsed().as_secs_f64());
        }
        if killed && !restarted && t >= 0.75 {
            backends[3].restart();
            restarted = true;
            restarted_at = Some(start.elapsed().as_secs_f64());
        }
        if progress {
            eprint!(
                "\r{policy:<20} {:>5.1}s {:>8} ok {:>6} errors{}",
                start.elapsed().as_secs_f64(),
                requests.load(Ordering::Relaxed),
                errors.load(Ordering::Relaxed),
                if killed && !restarted {
                    "  (backend 3 down)"
                } else {
                    "                  "
                }
            );
            let _ = std::io::stderr().flush();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    let mut timeline = Vec::new();
    for w in workers {
        let (lat, tl) = w.await.map_err(|e| e.to_string())?;
        latencies_us.extend(lat);
        timeline.extend(tl);
    }
    let secs = start.elapsed().as_secs_f64();
    let probes = probes_sent().zip(probes_before).map(|(a, b)| a - b);
    shares.push((secs, counts(backends)));
    if killed && !restarted {
        backends[3].restart();
    }
    if progress {
        eprint!("\r{:80}\r", "");
    }
    latencies_us.sort_unstable();
    let per_backend: BTreeMap<String, u64> = if backends.is_empty() && policy == "direct" {
        // Everything went to the first target.
        [(targets[0].clone(), requests.load(Ordering::Relaxed))]
            .into_iter()
            .collect()
    } else if backends.is_empty() {
        // External servers: pickwise knows where requests went (tonic's balance_list does not
        // say, so its map stays empty).
        let after = pickwise_picks(&channel);
        after
            .into_iter()
            .map(|(k, v)| (k.clone(), v - picks_before.get(&k).copied().unwrap_or(0)))
            .collect()
    } else {
        backends
            .iter()
            .zip(hits_before)
            .map(|(b, before)| (b.addr.to_string(), b.hits() - before))
            .collect()
    };
    Ok(Run {
        policy: policy.to_string(),
        requests: requests.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        secs,
        latencies_us,
        per_backend,
        timeline,
        shares,
        killed_at,
        restarted_at,
        probes,
    })
}

fn pickwise_picks(ch: &AnyChannel) -> BTreeMap<String, u64> {
    match ch {
        AnyChannel::Pickwise(c) => c.stats().into_iter().map(|s| (s.address, s.picks)).collect(),
        AnyChannel::Tonic(_) => BTreeMap::new(),
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() -> ExitCode {
    let args = parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = args.metrics {
        if !cfg!(feature = "metrics") {
            eprintln!("loadtest: built without the `metrics` feature: /metrics will list nothing");
        }
        // Its own HTTP listener on the runtime; any path answers, /metrics included.
        let installed = rt.block_on(async {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
        });
        if let Err(e) = installed {
            eprintln!("loadtest: cannot serve metrics on {addr}: {e}");
            return ExitCode::FAILURE;
        }
        eprintln!("loadtest: metrics at http://{addr}/metrics");
    }
    let mut backends: Vec<Backend> = Vec::new();
    let targets = match &args.targets {
        Some(t) => t.clone(),
        None => {
            backends = (0..4).map(|_| Backend::start()).collect();
            if let Some(pct) = args.fail_percent {
                backends[3].set_fail_percent(pct);
            } else if args.unequal {
                for (i, b) in backends.iter().enumerate() {
                    b.set_capacity(if i == 0 { 4 } else { 16 }, 2);
                }
            } else if !args.healthy {
                backends[1].set_delay(20);
            }
            backends.iter().map(|b| b.addr.to_string()).collect()
        }
    };
    if !args.json {
        match &args.targets {
            Some(_) => println!("targets: {}", targets.join(", ")),
            None if args.fail_percent.is_some() => println!(
                "4 local backends: {} (backend 3 answers {}% of calls UNAVAILABLE at once)",
                targets.join(", "),
                args.fail_percent.unwrap_or(0)
            ),
            None if args.healthy => println!("4 equal local backends: {}", targets.join(", ")),
            None if args.unequal => println!(
                "4 local backends: {} (16 workers x 2 ms each, backend 0 only 4; all report their load)",
                targets.join(", ")
            ),
            None => println!(
                "4 local backends: {} (backend 1 +20 ms; backend 3 killed at 1/2 of each run, restarted at 3/4)",
                targets.join(", ")
            ),
        }
        println!(
            "{} in flight, {:.1} s per policy\n",
            args.concurrency,
            args.duration.as_secs_f64()
        );
    }
    // The live progress line only on a terminal: piped output has the table alone.
    let progress = !args.json && std::io::stderr().is_terminal();
    let settings = Settings {
        duration: args.duration,
        concurrency: args.concurrency as usize,
        progress,
        faults: !args.healthy && !args.unequal && args.fail_percent.is_none(),
        failure_penalty: args.failure_penalty,
        prequal_removes: args.prequal_removes_per_query,
        prequal_probes: args.prequal_probes_per_query,
    };
    let mut rows = Vec::new();
    for policy in &args.policies {
        match rt.block_on(run_policy(policy, &targets, &mut backends, &settings)) {
            Ok(run) => rows.push(run),
            Err(e) => {
                eprintln!("loadtest: {policy}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if args.json {
        for r in &rows {
            let per: Vec<String> = r
                .per_backend
                .iter()
                .map(|(k, v)| format!("{}:{v}", json_string(k)))
                .collect();
            println!(
                "{{\"policy\":{},\"requests\":{},\"errors\":{},\"error_percent\":{:.3},\"rps\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"probes_per_request\":{},\"per_backend\":{{{}}}}}",
                json_string(&r.policy),
                r.requests,
                r.errors,
                r.error_percent(),
                r.requests as f64 / r.secs,
                r.pct_ms(0.5),
                r.pct_ms(0.99),
                r.probes_per_request()
                    .map_or("null".to_string(), |p| format!("{p:.3}")),
                per.join(",")
            );
        }
    } else {
        let names: Vec<String> = (0..targets.len()).map(|i| format!("b{i}")).collect();
        println!(
            "{:<20} {:>10} {:>8} {:>8} {:>7} {:>7} {:>10}  share per backend ({})",
            "policy",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "err %",
            "probes/req",
            names
                .iter()
                .zip(&targets)
                .map(|(n, t)| format!("{n}={t}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for r in &rows {
            let total: u64 = r.per_backend.values().sum();
            let shares: Vec<String> = targets
                .iter()
                .zip(&names)
                .map(|(t, n)| {
                    let c = r.per_backend.get(t).copied();
                    match c {
                        Some(c) if total > 0 => format!("{n} {:>5.1}%", 100.0 * c as f64 / total as f64),
                        _ => format!("{n}     -"),
                    }
                })
                .collect();
            let probes = match r.probes_per_request() {
                Some(p) if p > 0.0 => format!("{p:.2}"),
                _ => "-".to_string(),
            };
            println!(
                "{:<20} {:>10.0} {:>8.2} {:>8.2} {:>7} {:>7.3} {:>10}  {}",
                r.policy,
                r.requests as f64 / r.secs,
                r.pct_ms(0.5),
                r.pct_ms(0.99),
                r.errors,
                r.error_percent(),
                probes,
                shares.join("  ")
            );
        }
        let rps = |p: &str| {
            rows.iter()
                .find(|r| r.policy == p)
                .map(|r| r.requests as f64 / r.secs)
        };
        if let (Some(d), Some(s)) = (rps("direct"), rps("pickwise-single")) {
            println!(
                "\npickwise overhead vs a direct tonic Channel (same backend, same run): {:.3}x requests/s",
                s / d
            );
        }
    }
    if let Some(path) = &args.plot {
        if let Err(e) = plot::draw(path, &rows, &targets) {
            eprintln!("loadtest: cannot draw {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if args.hold {
        // Keep serving /metrics (and the backends) until standard input closes.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    }
    drop(backends);
    rt.shutdown_timeout(Duration::from_secs(1));
    ExitCode::SUCCESS
}
