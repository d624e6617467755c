//! Build a ring from the command line and route hashes or keys through it.
//!
//! ```text
//! cargo run -p pickwise --example route -- [--mode envoy|grpc|native] [--min-ring-size N]
//!     [--max-ring-size N] [--points-per-weight N] [--dump] [--hash U64]... [--key STRING]... HOST[=WEIGHT]...
//! ```
//!
//! Prints `<hash> <host>` per `--hash`/`--key` in order (keys hashed as the mode hashes requests:
//! XXH64 for envoy/grpc, XXH3 for native), and with `--dump` every ring point as `<point> <host>`.
//! `--help` prints the usage (exit 0); bad arguments or a ring that cannot be built: a message
//! on stderr, exit code 2.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use pickwise::{Ring, RingConfig};

/// Build a consistent-hash ring and route hashes or keys through it.
#[derive(Parser, Debug)]
#[command(name = "route")]
struct Cli {
    /// Ring construction: Envoy (input order), grpc-go (sorted by key) or pickwise native.
    #[arg(long, value_enum, default_value_t = ModeArg::Envoy)]
    mode: ModeArg,
    /// Minimum ring size (default: the mode's).
    #[arg(long)]
    min_ring_size: Option<u64>,
    /// Maximum ring size (default: the mode's).
    #[arg(long)]
    max_ring_size: Option<u64>,
    /// Points per unit of weight (native mode).
    #[arg(long, default_value_t = 160)]
    points_per_weight: u32,
    /// Print every ring point as `<point> <host>`.
    #[arg(long)]
    dump: bool,
    /// A request hash to route (repeatable; printed in command-line order with --key).
    #[arg(long, value_name = "U64")]
    hash: Vec<u64>,
    /// A request key to hash as the mode does (XXH64, or XXH3 in native mode) and route.
    #[arg(long, value_name = "STRING")]
    key: Vec<String>,
    /// Hosts as `HOST[=WEIGHT]`.
    #[arg(required = true, value_name = "HOST[=WEIGHT]", value_parser = host)]
    hosts: Vec<(String, u32)>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Envoy,
    Grpc,
    Native,
}

fn host(s: &str) -> Result<(String, u32), String> {
    let (name, weight) = match s.rsplit_once('=') {
        Some((name, w)) => (name, w.parse().map_err(|_| format!("invalid weight in {s:?}"))?),
        None => (s, 1),
    };
    if name.is_empty() {
        return Err(format!("empty host name in {s:?}"));
    }
    Ok((name.to_string(), weight))
}

enum Probe {
    Hash(u64),
    Key(String),
}

struct Args {
    config: RingConfig,
    dump: bool,
    probes: Vec<Probe>,
    hosts: Vec<(String, u32)>,
}

/// Parses the command line; clap prints usage and exits 0 for `--help`, 2 for bad arguments.
fn parse() -> Args {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let mut config = match cli.mode {
        ModeArg::Envoy => RingConfig::envoy(),
        ModeArg::Grpc => RingConfig::grpc(),
        ModeArg::Native => RingConfig::native(cli.points_per_weight),
    };
    if let Some(min) = cli.min_ring_size {
        config = config.with_min_ring_size(min);
    }
    if let Some(max) = cli.max_ring_size {
        config = config.with_max_ring_size(max);
    }
    // --hash and --key interleave: keep command-line order.
    let mut probes: Vec<(usize, Probe)> = Vec::new();
    let indices = |id: &str| {
        matches
            .indices_of(id)
            .map(|i| i.collect::<Vec<_>>())
            .unwrap_or_default()
    };
    probes.extend(
        indices("hash")
            .into_iter()
            .zip(cli.hash)
            .map(|(i, h)| (i, Probe::Hash(h))),
    );
    probes.extend(
        indices("key")
            .into_iter()
            .zip(cli.key)
            .map(|(i, k)| (i, Probe::Key(k))),
    );
    probes.sort_by_key(|(i, _)| *i);
    Args {
        config,
        dump: cli.dump,
        probes: probes.into_iter().map(|(_, p)| p).collect(),
        hosts: cli.hosts,
    }
}

fn main() -> ExitCode {
    let args = parse();
    let ring = match Ring::build(&args.hosts, &args.config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("route: {e}");
            return ExitCode::from(2);
        }
    };
    let host = |o: u32| args.hosts[o as usize].0.as_str();
    let mut out = String::new();
    if args.dump {
        let v = ring.view();
        for (p, &o) in v.points().iter().zip(v.owners()) {
            out.push_str(&format!("{p} {}\n", host(o)));
        }
    }
    for probe in &args.probes {
        let h = match probe {
            Probe::Hash(h) => *h,
            Probe::Key(k) => args.config.hash_key(k.as_bytes()),
        };
        // A built ring is never empty.
        if let Some(o) = ring.lookup(h) {
            out.push_str(&format!("{h} {}\n", host(o)));
        }
    }
    print!("{out}");
    ExitCode::SUCCESS
}
