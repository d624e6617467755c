//! pickwise-pingora's main job: a load run of every selection through a real Pingora proxy.
//!
//! With no `--targets` it starts 4 local HTTP/1.1 backends (backend 1 answers 20 ms slower;
//! backend 3 is killed halfway through each run and restarted at three quarters), then, for each
//! selection in turn, a Pingora proxy in front of them (TCP health checks every 200 ms, refused
//! connects retried), drives load through it at fixed concurrency and prints requests/s,
//! p50/p99, errors and the share per backend (counted by the backend the proxy chose, so
//! `--targets` backends count too).
//!
//! ```text
//! cargo run --release -p pickwise-pingora --example proxy -- [--policy NAME]... [--duration SECS]
//!     [--concurrency N] [--targets host:port,...] [--healthy] [--h2c] [--json]
//!     [--dead N] [--fail-percent P] [--load-report VALUE]... [--wrr-blackout-ms MS]
//!     [--wrr-update-ms MS] [--metrics ADDR [--hold]]
//! ```
//!
//! `--metrics ADDR` serves the selections' instruments in Prometheus text at
//! `http://ADDR/metrics` while it runs (build with `--features metrics`; the README's table;
//! `grpc.target` is the selection's name); `--hold` keeps serving after the results until
//! standard input closes.
//!
//! The two scenarios of issue 16: `--healthy --backends 3 --dead 2 --concurrency 32` (three live
//! backends and two dead addresses; health checks mark them down), and
//! `--healthy --fail-percent 30 --concurrency 32` (the last embedded backend answers 30% of
//! requests with a fast 503).
//!
//! Selections: `p2c-peak-ewma`, `p2c-least-request`, `ring-hash` and `maglev` (pickwise, keyed by
//! an `x-key` header drawn from 1,000 users), `pingora-round-robin`, `pingora-ketama` (Pingora's
//! own `RoundRobin` and `Consistent`, the latter keyed like ring hash), and
//! `weighted-round-robin` (gRFC A58 on the backends' ORCA reports, Envoy's
//! `client_side_weighted_round_robin`; blackout 0 and a 100 ms update period by default so a short
//! run shows the weights), and `prequal` (`pickwise_prequal`, NSDI '24, the paper's settings: the
//! group's `Prober` probes `GET /prequal/probe` in the background, and the embedded HTTP backends
//! also piggyback `x-prequal-rif` / `x-prequal-latency-us` on every response; its row names the
//! probes sent per request. Backends that do not answer probes, such as `--h2c`'s tonic
//! backends or most `--targets`, leave it on its P2C peak-EWMA fallback).
//!
//! `--load-report` makes the embedded backends send Envoy's `endpoint-load-metrics` header: the
//! first value goes to backend 0, the second to backend 1, and so on. The 1:10 scenario:
//! `--healthy --backends 2 --policy weighted-round-robin
//! --load-report "TEXT cpu_utilization:1.0,rps_fractional:10"
//! --load-report "TEXT cpu_utilization:0.1,rps_fractional:10"` (backend 1 takes ~91%).

#[path = "../tests/support/backend.rs"]
mod backend;
#[path = "../../tonic/tests/support/backend.rs"]
mod grpc_backend;
#[path = "../tests/support/load.rs"]
mod load;
#[path = "../tests/support/proxy.rs"]
mod proxy;
#[path = "../tests/support/wait.rs"]
mod wait;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backend::HttpBackend;
use clap::Parser;
use pickwise::prequal::PrequalConfig;
use pickwise::wrr::WrrConfig;
use pickwise::{HashPolicy, LbPolicy, NoKey, Policy, PoolConfig, RingConfig};
use pickwise_pingora::Shared;
use proxy::Selection;

const ALL: [&str; 8] = [
    "p2c-peak-ewma",
    "prequal",
    "p2c-least-request",
    "ring-hash",
    "maglev",
    "weighted-round-robin",
    "pingora-round-robin",
    "pingora-ketama",
];

/// A load run of every selection through a real Pingora proxy.
#[derive(Parser, Debug)]
#[command(name = "proxy")]
struct Args {
    /// Selections to run, in order (repeatable; default: all).
    #[arg(long = "policy", value_parser = clap::builder::PossibleValuesParser::new(ALL))]
    policies: Vec<String>,
    /// Seconds per selection.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Requests in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// External HTTP/1.1 backends (`host:port,...`) instead of the 4 embedded ones.
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// gRPC over h2c: tonic backends (`grpc.health.v1.Health/Check`), HTTP/2 cleartext on both
    /// sides of the proxy, outcomes from `grpc-status`.
    #[arg(long)]
    h2c: bool,
    /// Keep the embedded backends equal and alive (no slow one, no kill): for measuring overhead.
    #[arg(long)]
    healthy: bool,
    /// One JSON object per selection instead of the table.
    #[arg(long)]
    json: bool,
    /// Embedded backends to start with `--healthy` (without it: 4, one slow, one killed).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64), requires = "healthy")]
    backends: u64,
    /// pickwise's failure penalty (`PoolConfig::failure_penalty`; 1 = a failure only never
    /// lowers the estimate).
    #[arg(long, default_value_t = pickwise::pool::DEFAULT_FAILURE_PENALTY)]
    failure_penalty: f32,
    /// Add this many dead addresses (loopback ports nothing listens on) to the backends.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=64))]
    dead: u64,
    /// The last embedded backend answers this percentage of requests with a fast 503.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=100), conflicts_with_all = ["targets", "h2c"])]
    fail_percent: Option<u64>,
    /// An `endpoint-load-metrics` value (`TEXT k:v,...`, `JSON {...}`, `BIN <base64>`) for the
    /// embedded backends to send with every response: the first for backend 0, and so on.
    #[arg(long = "load-report", conflicts_with_all = ["targets", "h2c"])]
    load_reports: Vec<String>,
    /// `weighted-round-robin`'s blackout period (A58's default is 10 s).
    #[arg(long, default_value_t = 0)]
    wrr_blackout_ms: u64,
    /// `weighted-round-robin`'s weight update period (at least 100 ms).
    #[arg(long, default_value_t = 100)]
    wrr_update_ms: u64,
    /// Serve the instruments in Prometheus text at http://ADDR/metrics while running (needs the
    /// `metrics` feature to record anything).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// With --metrics: after the results, keep serving until standard input closes.
    #[arg(long, requires = "metrics")]
    hold: bool,
}

/// A loopback address nothing listens on (bound, then released): connections are refused.
fn dead_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "127.0.0.1:9".to_string())
}

/// The `ip:port` the proxy reports for `target` (what discovery resolves it to).
fn resolved(target: &str) -> String {
    use std::net::ToSocketAddrs;
    target
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map_or_else(|| target.to_string(), |a| a.to_string())
}

fn selection(name: &str, args: &Args) -> (Selection, bool) {
    let config = PoolConfig {
        failure_penalty: args.failure_penalty,
        ..PoolConfig::default()
    };
    // With `metrics`, each selection's instruments say its name as `grpc.target`.
    #[cfg(feature = "metrics")]
    let pickwise = |p| Selection::Pickwise(Shared::with_target(p, config, name));
    #[cfg(not(feature = "metrics"))]
    let pickwise = |p| Selection::Pickwise(Shared::new(p, config));
    match name {
        "p2c-peak-ewma" => (pickwise(LbPolicy::P2c(Policy::PeakEwma)), false),
        "p2c-least-request" => (pickwise(LbPolicy::P2c(Policy::LeastRequest)), false),
        "prequal" => (pickwise(LbPolicy::Prequal(PrequalConfig::default())), false),
        "ring-hash" => (
            pickwise(LbPolicy::RingHash {
                ring: RingConfig::envoy(),
                load: HashPolicy::Plain,
                no_key: NoKey::P2c,
            }),
            true,
        ),
        "maglev" => (
            pickwise(LbPolicy::Maglev {
                table_size: 65_537,
                no_key: NoKey::P2c,
            }),
            true,
        ),
        "weighted-round-robin" => (
            pickwise(LbPolicy::WeightedRoundRobin(WrrConfig {
                blackout_ns: args.wrr_blackout_ms * 1_000_000,
                update_ns: args.wrr_update_ms * 1_000_000,
                ..WrrConfig::default()
            })),
            false,
        ),
        "pingora-round-robin" => (Selection::RoundRobin, false),
        _ => (Selection::Ketama, true),
    }
}

/// An embedded backend: HTTP/1.1, or gRPC for `--h2c`.
enum Local {
    Http(HttpBackend),
    Grpc(grpc_backend::Backend),
}

impl Local {
    fn addr(&self) -> String {
        match self {
            Self::Http(b) => b.addr.to_string(),
            Self::Grpc(b) => b.addr.to_string(),
        }
    }

    fn set_delay(&self, ms: u64) {
        match self {
            Self::Http(b) => b.set_delay(ms),
            Self::Grpc(b) => b.set_delay(ms),
        }
    }

    fn kill(&mut self) {
        match self {
            Self::Http(b) => b.kill(),
            Self::Grpc(b) => b.kill(),
        }
    }

    fn restart(&mut self) {
        match self {
            Self::Http(b) => b.restart(),
            Self::Grpc(b) => b.restart(),
        }
    }
}

fn json_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn main() {
    let args = Args::parse();
    if !(args.duration > 0.0 && args.duration < 86_400.0) {
        let mut cmd = <Args as clap::CommandFactory>::command();
        cmd.error(
            clap::error::ErrorKind::ValueValidation,
            "--duration must be positive",
        )
        .exit();
    }
    let duration = Duration::from_secs_f64(args.duration);
    let policies: Vec<String> = if args.policies.is_empty() {
        ALL.iter().map(|s| s.to_string()).collect()
    } else {
        args.policies.clone()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(addr) = args.metrics {
        if !cfg!(feature = "metrics") {
            eprintln!("proxy: built without the `metrics` feature: /metrics will list nothing");
        }
        // Its own HTTP listener on the runtime; any path answers, /metrics included.
        let installed = rt.block_on(async {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
        });
        if let Err(e) = installed {
            eprintln!("proxy: cannot serve metrics on {addr}: {e}");
            std::process::exit(2);
        }
        eprintln!("proxy: metrics at http://{addr}/metrics");
    }
    let backends: Arc<Mutex<Vec<Local>>> = Arc::new(Mutex::new(Vec::new()));
    let mut targets = match &args.targets {
        Some(t) => t.clone(),
        None => {
            let mut b = backends.lock().unwrap();
            let count = if args.healthy { args.backends } else { 4 };
            *b = (0..count)
                .map(|_| {
                    if args.h2c {
                        Local::Grpc(grpc_backend::Backend::start())
                    } else {
                        Local::Http(HttpBackend::start())
                    }
                })
                .collect();
            if !args.healthy {
                b[1].set_delay(20);
            }
            if let (Some(pct), Some(Local::Http(last))) = (args.fail_percent, b.last()) {
                last.set_fail_percent(pct);
            }
            // Prequal's reports ride on every response (other selections ignore them).
            for local in b.iter() {
                if let Local::Http(backend) = local {
                    backend.set_piggyback(true);
                }
            }
            for (local, report) in b.iter().zip(&args.load_reports) {
                if let Local::Http(backend) = local {
                    backend.set_load_report(Some(report));
                }
            }
            b.iter().map(Local::addr).collect()
        }
    };
    targets.extend((0..args.dead).map(|_| dead_addr()));
    // Shares are counted by the backend the proxy chose, reported as `ip:port`.
    let reported: Vec<String> = targets.iter().map(|t| resolved(t)).collect();
    if !args.json {
        match &args.targets {
            Some(_) => println!("targets: {}", targets.join(", ")),
            None if args.healthy => println!(
                "{} equal local backends: {}",
                args.backends,
                targets.join(", ")
            ),
            None => println!(
                "4 local backends: {} (backend 1 +20 ms; backend 3 killed at 1/2 of each run, restarted at 3/4)",
                targets.join(", ")
            ),
        }
        if args.dead > 0 {
            println!("{} dead addresses among them (nothing listens)", args.dead);
        }
        if let Some(pct) = args.fail_percent {
            println!("the last embedded backend answers {pct}% of requests with a fast 503");
        }
        for (i, report) in args.load_reports.iter().take(targets.len()).enumerate() {
            println!("backend {i} reports endpoint-load-metrics: {report}");
        }
        println!(
            "{} in flight, {:.1} s per selection\n",
            args.concurrency, args.duration
        );
        println!(
            "| selection | requests/s | p50 ms | p99 ms | errors | {} |",
            (0..targets.len())
                .map(|i| format!("backend {i}"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        println!("|---|---|---|---|---|{}", "---|".repeat(targets.len()));
    }
    for name in &policies {
        let (sel, keyed) = selection(name, &args);
        let group = match &sel {
            Selection::Pickwise(shared) => Some(shared.clone()),
            _ => None,
        };
        let proxy = proxy::start_with(sel, &targets, keyed.then_some("x-key"), args.h2c);
        let mut hooks: Vec<(Duration, Box<dyn FnOnce() + Send>)> = Vec::new();
        if args.targets.is_none() && !args.healthy {
            let (kill, restart) = (backends.clone(), backends.clone());
            hooks.push((duration / 2, Box::new(move || kill.lock().unwrap()[3].kill())));
            hooks.push((
                duration * 3 / 4,
                Box::new(move || restart.lock().unwrap()[3].restart()),
            ));
        }
        let keys = if keyed { 1000 } else { 0 };
        let report = if args.h2c {
            rt.block_on(load::run_grpc(
                proxy.addr,
                args.concurrency as usize,
                duration,
                hooks,
                keys,
            ))
        } else {
            rt.block_on(load::run_keyed(
                proxy.addr,
                args.concurrency as usize,
                duration,
                hooks,
                keys,
            ))
        };
        drop(proxy);
        let rps = report.requests as f64 / report.secs;
        // Prequal's probes per request through the proxy (0 for the other selections).
        let probes = group.map_or(0, |g| g.probe_stats().sent);
        let per_request = probes as f64 / (report.requests + report.errors).max(1) as f64;
        if args.json {
            let per: Vec<String> = targets
                .iter()
                .zip(&reported)
                .map(|(t, k)| {
                    format!(
                        "{}:{}",
                        json_string(t),
                        report.per_backend.get(k).copied().unwrap_or(0)
                    )
                })
                .collect();
            println!(
                "{{\"policy\":{},\"requests\":{},\"errors\":{},\"rps\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"probes\":{},\"per_backend\":{{{}}}}}",
                json_string(name),
                report.requests,
                report.errors,
                rps,
                report.pct_ms(0.5),
                report.pct_ms(0.99),
                probes,
                per.join(",")
            );
        } else {
            let shares: Vec<String> = reported
                .iter()
                .map(|k| format!("{:.1}%", 100.0 * report.share(k)))
                .collect();
            let error_pct = 100.0 * report.errors as f64 / (report.requests + report.errors).max(1) as f64;
            let name = if probes > 0 {
                format!("{name} ({per_request:.2} probes/req)")
            } else {
                name.clone()
            };
            println!(
                "| {name} | {rps:.0} | {:.2} | {:.2} | {} ({error_pct:.2}%) | {} |",
                report.pct_ms(0.5),
                report.pct_ms(0.99),
                report.errors,
                shares.join(" | ")
            );
        }
    }
    if args.hold {
        // Keep serving /metrics (and the backends) until standard input closes.
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    }
}
