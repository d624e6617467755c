//! Prequal (`pickwise_prequal`) through a real Pingora proxy on 127.0.0.1, with real HTTP/1.1
//! backends that count their requests in flight and latency per RIF, answer `GET /prequal/probe`
//! and (when told) piggyback their report on responses. The group's [`Prober`] runs as a Pingora
//! background service next to the load balancer.
//!
//! The fallback of these groups is P2C least-request, and the load is one request at a time: with
//! nothing in flight at any pick, that fallback is a uniform draw, so a slow backend's small share
//! can only come from the probe answers. Waits are on observables (counters), never on guessed
//! durations.
//!
//! [`Prober`]: pickwise_pingora::Prober

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use pickwise::prequal::PrequalConfig;
use pickwise::{LbPolicy, Policy, PoolConfig};
use pickwise_pingora::Shared;
use support::backend::HttpBackend;
use support::load::{self, HttpClient};
use support::proxy::{self, Options, Selection};
use support::wait;

/// One test at a time: they measure shares on a 2-core machine.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    GATE.lock().await
}

fn addrs(b: &[HttpBackend]) -> Vec<String> {
    b.iter().map(|b| b.addr.to_string()).collect()
}

/// The paper's settings with a least-request fallback (uniform at one request in flight).
fn config() -> PrequalConfig {
    PrequalConfig {
        fallback: Policy::LeastRequest,
        ..PrequalConfig::default()
    }
}

fn prequal(config: PrequalConfig) -> (Selection, Arc<Shared>) {
    let shared = Shared::new(LbPolicy::Prequal(config), PoolConfig::default());
    (Selection::Pickwise(shared.clone()), shared)
}

/// No health checks: a readiness flip would reset what the test measures.
fn options() -> Options {
    Options {
        health_check: None,
        ..Options::default()
    }
}

/// `n` sequential GETs through `proxy`: requests per backend (`ip:port`); any failure fails.
async fn requests(client: &HttpClient, proxy: SocketAddr, n: usize) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let backend = load::get(client, proxy, None)
            .await
            .expect("request through the proxy");
        *counts.entry(backend).or_default() += 1;
    }
    counts
}

/// `n` GETs through `proxy` from `concurrency` clients, each sending one after the other.
async fn concurrent(proxy: SocketAddr, concurrency: usize, n: usize) -> BTreeMap<String, u64> {
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let per = n / concurrency + usize::from(i < n % concurrency);
            tokio::spawn(async move { requests(&load::client(), proxy, per).await })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.expect("client task") {
            *counts.entry(k).or_default() += v;
        }
    }
    counts
}

fn share(counts: &BTreeMap<String, u64>, backend: &HttpBackend) -> f64 {
    let total: u64 = counts.values().sum();
    counts.get(&backend.addr.to_string()).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gets_a_small_share() {
    let _g = serial().await;
    let backends: Vec<HttpBackend> = (0..3).map(|_| HttpBackend::start()).collect();
    backends[0].set_delay(20);
    let (sel, shared) = prequal(config());
    let proxy = proxy::start_opts(sel, &addrs(&backends), options());
    let counts = concurrent(proxy.addr, 8, 400).await;
    let stats = shared.probe_stats();
    eprintln!("requests {counts:?}, probes {stats:?}");
    // Uniform would give it a third. Not nothing: the hot-cold rule sends a query to the
    // backend with the fewest in flight when the fast ones' answers are hot (their RIF counts
    // each query they were picked for), as the paper specifies (measured 0.08-0.12).
    let slow = share(&counts, &backends[0]);
    assert!(slow < 0.2, "slow backend share {slow:.3}: {counts:?}");
    for b in &backends[1..] {
        assert!(share(&counts, b) > 0.25, "fast backend {}: {counts:?}", b.addr);
    }
    assert!(stats.answered > 0, "{stats:?}");
    assert!(shared.probe_pool().is_some_and(|p| p.queries() >= 400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_reach_every_backend_outside_the_data_path() {
    let _g = serial().await;
    let backends: Vec<HttpBackend> = (0..3).map(|_| HttpBackend::start()).collect();
    let (sel, shared) = prequal(config());
    let proxy = proxy::start_opts(sel, &addrs(&backends), options());
    let client = load::client();
    let sent = 200;
    let counts = requests(&client, proxy.addr, sent).await;
    wait::until("a probe answered by every backend", || {
        let probes: Vec<u64> = backends.iter().map(HttpBackend::probes).collect();
        if probes.iter().all(|&p| p > 0) {
            Ok(())
        } else {
            Err(format!("probes per backend {probes:?}"))
        }
    })
    .await;
    let stats = shared.probe_stats();
    let probes: Vec<u64> = backends.iter().map(HttpBackend::probes).collect();
    eprintln!("requests {counts:?}, probes per backend {probes:?}, {stats:?}");
    // The data path carried the requests and nothing else; the probes went on their own
    // connections.
    let hits: u64 = backends.iter().map(HttpBackend::hits).sum();
    assert_eq!(hits, sent as u64);
    assert_eq!(counts.values().sum::<u64>(), sent as u64);
    for b in &backends {
        assert_eq!(
            b.mixed(),
            0,
            "{}: a connection carried probes and requests",
            b.addr
        );
    }
    // What the backends saw is what the prober sent (a probe may still be on its way back).
    let seen: u64 = probes.iter().sum();
    assert!(
        stats.sent >= seen && seen >= stats.answered,
        "{probes:?} {stats:?}"
    );
    assert!(stats.answered > 0, "{stats:?}");
    // At most the configured 3 per request (plus idle probes).
    assert!(stats.sent <= 3 * sent as u64 + 10, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_without_the_probe_endpoint_still_serves() {
    let _g = serial().await;
    let backends: Vec<HttpBackend> = (0..2).map(|_| HttpBackend::start()).collect();
    backends[0].set_no_probes(true);
    let (sel, shared) = prequal(config());
    let proxy = proxy::start_opts(sel, &addrs(&backends), options());
    let client = load::client();
    let counts = requests(&client, proxy.addr, 200).await;
    wait::until("a failed probe", || {
        let stats = shared.probe_stats();
        if stats.failed > 0 && backends[0].probes() > 0 {
            Ok(())
        } else {
            Err(format!(
                "{stats:?}, probes at the 404 backend {}",
                backends[0].probes()
            ))
        }
    })
    .await;
    eprintln!("requests {counts:?}, {:?}", shared.probe_stats());
    // Fewer than two answers are ever usable: the fallback picks, and both serve.
    for b in &backends {
        assert!(share(&counts, b) > 0.2, "{}: {counts:?}", b.addr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piggybacked_reports_steer_without_probes() {
    let _g = serial().await;
    let backends: Vec<HttpBackend> = (0..3).map(|_| HttpBackend::start()).collect();
    for b in &backends {
        b.set_piggyback(true);
    }
    backends[0].set_delay(20);
    // Without probes, nothing but the responses refills the pool: no removals per query (they
    // would drain it below two answers), answers leave by age and reuse only.
    let (sel, shared) = prequal(PrequalConfig {
        probes_per_query: 0.0,
        idle_probe_ns: 0,
        removes_per_query: 0.0,
        ..config()
    });
    let proxy = proxy::start_opts(sel, &addrs(&backends), options());
    let client = load::client();
    let counts = requests(&client, proxy.addr, 300).await;
    let stats = shared.probe_stats();
    eprintln!("requests {counts:?}, {stats:?}");
    let slow = share(&counts, &backends[0]);
    assert!(slow < 0.1, "slow backend share {slow:.3}: {counts:?}");
    assert_eq!(stats.piggybacked, 300, "{stats:?}");
    assert_eq!(stats.sent, 0, "{stats:?}");
    assert_eq!(backends.iter().map(HttpBackend::probes).sum::<u64>(), 0);
}
