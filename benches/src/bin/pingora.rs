//! pickwise's Pingora selections against Pingora's own, per `LoadBalancer::select`, in one run.
//!
//! ```text
//! cargo run --release -p pickwise-benches --bin pingora -- [--json]
//! ```
//!
//! `select` includes Pingora's own per-call work (the selector load, readiness lookup); for
//! pickwise P2C it also takes and completes the in-flight lease a proxy would. Best of 5 runs.

use std::hint::black_box;
use std::time::Instant;

use pickwise::{HashPolicy, LbPolicy, NoKey, Outcome, Policy, PoolConfig, RingConfig};
use pickwise_pingora::{lease, Selector, Shared};
use pingora::lb::selection::{BackendIter, BackendSelection, Consistent, RoundRobin};
use pingora::lb::{discovery, Backends, LoadBalancer};

fn lb<S>(n: usize, config: Option<S::Config>) -> LoadBalancer<S>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    let addrs: Vec<String> = (0..n)
        .map(|i| format!("10.{}.{}.{}:80", i / 65536, (i / 256) % 256, i % 256))
        .collect();
    let d = discovery::Static::try_from_iter(addrs.iter().map(String::as_str)).expect("addresses");
    let lb = LoadBalancer::from_backends_with_config(Backends::new(d), config);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(lb.update()).expect("update");
    lb
}

/// Best-of-5 nanoseconds per call of `f` over `iters` calls.
fn time(iters: u64, mut f: impl FnMut(u64)) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iters {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    if std::env::args().skip(1).any(|a| a != "--json") {
        eprintln!("usage: pingora [--json]");
        std::process::exit(2);
    }
    let keys: Vec<[u8; 16]> = (0..4096u64)
        .map(|i| {
            let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&x.to_le_bytes());
            k[8..].copy_from_slice(&x.rotate_left(17).to_le_bytes());
            k
        })
        .collect();
    let iters = 200_000;
    let mut rows: Vec<(usize, &str, f64)> = Vec::new();
    for n in [10usize, 100, 1000] {
        let rr = lb::<RoundRobin>(n, None);
        rows.push((
            n,
            "pingora-round-robin",
            time(iters, |_| drop(black_box(rr.select(b"", 1)))),
        ));
        let shared = Shared::new(LbPolicy::P2c(Policy::LeastRequest), PoolConfig::default());
        let p2c = lb::<Selector>(n, Some(shared.clone()));
        rows.push((
            n,
            "pickwise-p2c-least-request",
            time(iters, |_| drop(black_box(p2c.select(b"", 1)))),
        ));
        rows.push((
            n,
            "pickwise-p2c-least-request+lease",
            time(iters, |_| {
                let b = p2c.select(b"", 1).expect("backend");
                if let Some(l) = lease(&shared, &b) {
                    let _ = l.complete(0, Outcome::Success);
                }
            }),
        ));
        let ketama = lb::<Consistent>(n, None);
        rows.push((
            n,
            "pingora-ketama",
            time(iters, |i| {
                drop(black_box(ketama.select(&keys[(i % 4096) as usize], 1)))
            }),
        ));
        let ring = lb::<Selector>(
            n,
            Some(Shared::new(
                LbPolicy::RingHash {
                    ring: RingConfig::envoy(),
                    load: HashPolicy::Plain,
                    no_key: NoKey::P2c,
                },
                PoolConfig::default(),
            )),
        );
        rows.push((
            n,
            "pickwise-ring-hash",
            time(iters, |i| {
                drop(black_box(ring.select(&keys[(i % 4096) as usize], 1)))
            }),
        ));
    }
    // The selection algorithms alone: `iter(key).next()`, without LoadBalancer::select's own work.
    for n in [10usize, 100, 1000] {
        let set: std::collections::BTreeSet<pingora::lb::Backend> = (0..n)
            .map(|i| {
                pingora::lb::Backend::new(&format!("10.{}.{}.{}:80", i / 65536, (i / 256) % 256, i % 256))
                    .unwrap()
            })
            .collect();
        let ketama = std::sync::Arc::new(Consistent::build(&set));
        rows.push((
            n,
            "ketama-iter",
            time(iters, |i| {
                let mut it = ketama.iter(&keys[(i % 4096) as usize]);
                black_box(it.next().map(|b| b.weight));
            }),
        ));
        let shared = Shared::new(
            LbPolicy::RingHash {
                ring: RingConfig::envoy(),
                load: HashPolicy::Plain,
                no_key: NoKey::P2c,
            },
            PoolConfig::default(),
        );
        let ring = std::sync::Arc::new(Selector::build_with_config(&set, &shared));
        rows.push((
            n,
            "ring-hash-iter",
            time(iters, |i| {
                let mut it = ring.iter(&keys[(i % 4096) as usize]);
                black_box(it.next().map(|b| b.weight));
            }),
        ));
    }
    if json {
        for (n, imp, ns) in &rows {
            println!("{{\"bench\":\"pingora_select\",\"impl\":\"{imp}\",\"n\":{n},\"ns_per_op\":{ns:.1}}}");
        }
        return;
    }
    println!("| n | impl | ns per select |\n|---|---|---|");
    for (n, imp, ns) in &rows {
        println!("| {n} | {imp} | {ns:.1} |");
    }
    let get = |n: usize, imp: &str| {
        rows.iter()
            .find(|r| r.0 == n && r.1 == imp)
            .map_or(f64::NAN, |r| r.2)
    };
    println!(
        "\n| n | P2C / RoundRobin per select (target <= 1.5) | with lease | Ketama / ring hash per select | Ketama / ring hash, algorithm alone (target >= 3) |\n|---|---|---|---|---|"
    );
    for n in [10, 100, 1000] {
        println!(
            "| {n} | {:.2} | {:.2} | {:.2} | {:.2} |",
            get(n, "pickwise-p2c-least-request") / get(n, "pingora-round-robin"),
            get(n, "pickwise-p2c-least-request+lease") / get(n, "pingora-round-robin"),
            get(n, "pingora-ketama") / get(n, "pickwise-ring-hash"),
            get(n, "ketama-iter") / get(n, "ring-hash-iter")
        );
    }
}
