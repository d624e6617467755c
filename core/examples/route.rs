//! Build a ring from the command line and route hashes or keys through it.
//!
//! ```text
//! cargo run -p pickwise --example route -- [--mode envoy|grpc|native] [--min-ring-size N]
//!     [--max-ring-size N] [--points-per-weight N] [--dump] [--hash U64]... [--key STRING]... HOST[=WEIGHT]...
//! ```
//!
//! Prints `<hash> <host>` per `--hash`/`--key` in order (keys hashed as the mode hashes requests:
//! XXH64 for envoy/grpc, XXH3 for native), and with `--dump` every ring point as `<point> <host>`.
//! Bad arguments: one line on stderr, exit code 2.

use std::process::ExitCode;

use pickwise::{Ring, RingConfig};

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

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut mode = "envoy".to_string();
    let (mut min, mut max, mut ppw) = (None, None, 160u32);
    let mut args = Args {
        config: RingConfig::envoy(),
        dump: false,
        probes: Vec::new(),
        hosts: Vec::new(),
    };
    fn value<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse().map_err(|_| format!("{flag}: invalid value {v:?}"))
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--mode" => mode = value("--mode", it.next())?,
            "--min-ring-size" => min = Some(value("--min-ring-size", it.next())?),
            "--max-ring-size" => max = Some(value("--max-ring-size", it.next())?),
            "--points-per-weight" => ppw = value("--points-per-weight", it.next())?,
            "--dump" => args.dump = true,
            "--hash" => args.probes.push(Probe::Hash(value("--hash", it.next())?)),
            "--key" => args.probes.push(Probe::Key(value("--key", it.next())?)),
            "-h" | "--help" => return Err("usage: route [--mode envoy|grpc|native] [--min-ring-size N] [--max-ring-size N] [--points-per-weight N] [--dump] [--hash U64]... [--key STRING]... HOST[=WEIGHT]...".into()),
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}")),
            host => {
                let (name, weight) = match host.rsplit_once('=') {
                    Some((name, w)) => (name, w.parse().map_err(|_| format!("invalid weight in {host:?}"))?),
                    None => (host, 1),
                };
                if name.is_empty() {
                    return Err(format!("empty host name in {host:?}"));
                }
                args.hosts.push((name.to_string(), weight));
            }
        }
    }
    let mut config = match mode.as_str() {
        "envoy" => RingConfig::envoy(),
        "grpc" => RingConfig::grpc(),
        "native" => RingConfig::native(ppw),
        other => return Err(format!("unknown mode {other:?} (envoy, grpc or native)")),
    };
    if let Some(min) = min {
        config = config.with_min_ring_size(min);
    }
    if let Some(max) = max {
        config = config.with_max_ring_size(max);
    }
    args.config = config;
    if args.hosts.is_empty() {
        return Err("no hosts given".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("route: {e}");
            return ExitCode::from(2);
        }
    };
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
