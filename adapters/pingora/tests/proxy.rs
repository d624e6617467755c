//! End to end through a real Pingora server on 127.0.0.1: distribution, a killed backend leaves
//! rotation, a slow backend gets little under peak-EWMA, in-flight slots return to zero after
//! client disconnects and proxy retries, and a header key always reaches the same backend — the
//! one the core's Envoy-compatible ring names.

mod support;

use std::time::Duration;

use pickwise::{hash, HashPolicy, LbPolicy, NoKey, Policy, PoolConfig, Ring, RingConfig};
use pickwise_pingora::Shared;
use support::backend::HttpBackend;
use support::load;
use support::proxy::{self, Selection};
use support::wait;

/// One test at a time: they measure shares and time on a 2-core machine.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    GATE.lock().await
}

fn addrs(b: &[HttpBackend]) -> Vec<String> {
    b.iter().map(|b| b.addr.to_string()).collect()
}

fn pickwise(policy: LbPolicy) -> (Selection, std::sync::Arc<Shared>) {
    let shared = Shared::new(policy, PoolConfig::default());
    (Selection::Pickwise(shared.clone()), shared)
}

/// Waits until no backend holds an in-flight slot (and the pool's total is back to zero), and
/// fails if that never happens. Pingora releases a request's slot in its `logging` hook, which
/// runs after the client has the response, so the last slots are freed a moment after a load
/// ends; a request whose client gave up holds its slot until the backend answers.
async fn assert_no_in_flight(shared: &Shared, backends: &[String]) {
    wait::until("every in-flight slot to be released", || {
        let held: Vec<String> = backends
            .iter()
            .filter_map(|a| {
                let n = shared.state(a)?.in_flight();
                (n > 0).then(|| format!("{a} holds {n}"))
            })
            .collect();
        let total = shared.pool().total_in_flight();
        if held.is_empty() && total == 0 {
            Ok(())
        } else {
            Err(format!("{held:?}, pool total {total}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spreads_over_backends_with_least_request() {
    let _g = serial().await;
    let backends: Vec<HttpBackend> = (0..3).map(|_| HttpBackend::start()).collect();
    let (sel, shared) = pickwise(LbPolicy::P2c(Policy::LeastRequest));
    let p = proxy::start(sel, &addrs(&backends), None);
    let r = load::run(p.addr, 8, Duration::from_millis(800), vec![]).await;
    assert_eq!(r.errors, 0);
    for b in &backends {
        let share = r.share(&b.addr.to_string());
        assert!(share > 0.15, "{} got {share:.3}", b.addr);
    }
    assert_no_in_flight(&shared, &addrs(&backends)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_leaves_rotation() {
    let _g = serial().await;
    let mut backends: Vec<HttpBackend> = (0..3).map(|_| HttpBackend::start()).collect();
    let all = addrs(&backends);
    let (sel, shared) = pickwise(LbPolicy::P2c(Policy::PeakEwma));
    let p = proxy::start(sel, &all, None);
    let _ = load::run(p.addr, 4, Duration::from_millis(300), vec![]).await;
    backends[0].kill();
    let dead = all[0].clone();
    // Right after the kill: the proxy retries refused connects elsewhere.
    let r = load::run(p.addr, 8, Duration::from_millis(800), vec![]).await;
    assert!(r.errors <= 2, "{} errors", r.errors);
    // Later: none to the dead one (ejected, and down per Pingora's health check).
    assert_reported_down(&shared, &dead).await;
    let r = load::run(p.addr, 8, Duration::from_millis(500), vec![]).await;
    assert_eq!(r.share(&dead), 0.0);
    assert_eq!(r.errors, 0);
    assert_no_in_flight(&shared, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gets_little_under_peak_ewma() {
    let _g = serial().await;
    let backends: Vec<HttpBackend> = (0..3).map(|_| HttpBackend::start()).collect();
    backends[1].set_delay(20);
    let (sel, _shared) = pickwise(LbPolicy::P2c(Policy::PeakEwma));
    let p = proxy::start(sel, &addrs(&backends), None);
    let _ = load::run(p.addr, 16, Duration::from_millis(500), vec![]).await; // warm up
    let r = load::run(p.addr, 16, Duration::from_millis(1500), vec![]).await;
    let slow = r.share(&backends[1].addr.to_string());
    assert!(slow < 0.10, "slow backend got {slow:.3}");
    assert_eq!(r.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_and_retries_leave_no_slot_held() {
    let _g = serial().await;
    let mut backends: Vec<HttpBackend> = (0..3).map(|_| HttpBackend::start()).collect();
    let all = addrs(&backends);
    backends[2].set_delay(300);
    let (sel, shared) = pickwise(LbPolicy::P2c(Policy::LeastRequest));
    let p = proxy::start(sel, &all, None);
    // Clients that give up mid-request (the slow backend holds them).
    let client = load::client();
    for _ in 0..30 {
        let _ = tokio::time::timeout(Duration::from_millis(20), load::get(&client, p.addr, None)).await;
    }
    // Retries: a backend dies; refused connects are retried on the others.
    backends[0].kill();
    for _ in 0..30 {
        let _ = load::get(&client, p.addr, None).await;
    }
    drop(client);
    assert_no_in_flight(&shared, &all).await;
    assert_eq!(shared.pool().total_in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_always_reaches_the_backend_the_core_ring_names() {
    let _g = serial().await;
    let backends: Vec<HttpBackend> = (0..4).map(|_| HttpBackend::start()).collect();
    let mut all = addrs(&backends);
    let policy = LbPolicy::RingHash {
        ring: RingConfig::envoy(),
        load: HashPolicy::Plain,
        no_key: NoKey::P2c,
    };
    let (sel, _shared) = pickwise(policy);
    let p = proxy::start(sel, &all, Some("x-key"));
    // The selector orders backends by address (Pingora's BTreeSet) and keys them "ip:port".
    all.sort_by_key(|a| a.parse::<std::net::SocketAddr>().unwrap());
    let keyed: Vec<(&str, u32)> = all.iter().map(|a| (a.as_str(), 1)).collect();
    let ring = Ring::build(&keyed, &RingConfig::envoy()).unwrap();
    let client = load::client();
    for k in 0..40 {
        let key = format!("user-{k}");
        let want = all[ring.lookup(hash::xxh64(key.as_bytes())).unwrap() as usize].clone();
        for _ in 0..3 {
            assert_eq!(
                load::get(&client, p.addr, Some(&key)).await.unwrap(),
                want,
                "{key}"
            );
        }
    }
}

/// gRPC over h2c through Pingora to tonic backends: a backend answering UNAVAILABLE (in a
/// trailers-only response) is counted as failing from its `grpc-status` and ejected, and the
/// others serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_counts_grpc_status_failures() {
    let _g = serial().await;
    let backends: Vec<support::grpc_backend::Backend> =
        (0..3).map(|_| support::grpc_backend::Backend::start()).collect();
    backends[0].set_failing(true);
    let all: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let (sel, shared) = pickwise(LbPolicy::P2c(Policy::LeastRequest));
    let p = proxy::start_with(sel, &all, None, true);
    let r = load::run_grpc(p.addr, 8, Duration::from_millis(1000), vec![], 0).await;
    let failing = shared.state(&all[0]).unwrap();
    assert!(failing.failures() >= 5, "failures {}", failing.failures());
    assert!(
        failing.ejected_for_ms(shared.now()).is_some(),
        "the failing backend is ejected: failures {} streak {} ejections {} pool {} in_flight {} picks {}",
        failing.failures(),
        failing.consecutive_failures(),
        failing.ejections(),
        shared.pool().ejected(),
        failing.in_flight(),
        failing.picks()
    );
    assert!(r.requests > 200, "{} served", r.requests);
    assert!(r.share(&all[1]) > 0.3 && r.share(&all[2]) > 0.3);
    assert_no_in_flight(&shared, &all).await;
}

/// Waits until Pingora's health check has reported `addr` down to the picker (its endpoint is
/// no longer READY), and fails if it never does.
async fn assert_reported_down(shared: &Shared, addr: &str) {
    wait::until(
        &format!("the health check to report {addr} down"),
        || match shared.state(addr) {
            Some(s) if !s.is_ready() => Ok(()),
            Some(_) => Err("still READY".into()),
            None => Err("not in the selector".into()),
        },
    )
    .await;
}

/// A port nothing listens on (bound, then released): connections are refused.
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// max / mean of the live backends' shares.
fn skew(r: &load::Report, live: &[String]) -> (f64, Vec<f64>) {
    let shares: Vec<f64> = live.iter().map(|a| r.share(a)).collect();
    let mean = shares.iter().sum::<f64>() / shares.len() as f64;
    let max = shares.iter().cloned().fold(0.0, f64::max);
    (max / mean.max(1e-9), shares)
}

/// Three live backends and two dead addresses, Pingora's TCP health checks on, 32 in flight.
/// Before: the health results never reached the picker; a dead backend still looked cheapest,
/// was picked, refused by Pingora, and its address-order neighbour took its share (0.18 / 0.63
/// / 0.18, max/mean 1.9). Target: live max/mean <= 1.10 for P2C, <= 1.30 for ring hash,
/// measured with the release `proxy` example (1.01-1.07 peak-EWMA, 1.00-1.01 least-request,
/// 1.02-1.12 ring hash). Here, in a debug build on a loaded 2-core machine, peak-EWMA's shares
/// follow latency noise (one slow sample sidelines a backend for a while), so its bound is 1.20:
/// still far from the neighbour-doubling it guards against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backends_do_not_skew_the_live_shares() {
    let _g = serial().await;
    let live: Vec<HttpBackend> = (0..3).map(|_| HttpBackend::start()).collect();
    let live_addrs = addrs(&live);
    let mut targets = live_addrs.clone();
    targets.extend([dead_addr(), dead_addr()]);
    let ring = LbPolicy::RingHash {
        ring: RingConfig::envoy(),
        load: HashPolicy::Plain,
        no_key: NoKey::P2c,
    };
    let cases = [
        ("p2c-peak-ewma", LbPolicy::P2c(Policy::PeakEwma), 0, 1.20),
        ("p2c-least-request", LbPolicy::P2c(Policy::LeastRequest), 0, 1.10),
        ("ring-hash", ring, 1000, 1.30),
    ];
    println!("| selection | live shares | max/mean | errors |");
    let mut failed = Vec::new();
    for (name, policy, keys, limit) in cases {
        let (sel, shared) = pickwise(policy);
        let p = proxy::start(sel, &targets, (keys > 0).then_some("x-key"));
        // The first health-check pass marks the dead ones down.
        let _ = load::run_keyed(p.addr, 8, Duration::from_millis(300), vec![], keys).await;
        for dead in &targets[live_addrs.len()..] {
            assert_reported_down(&shared, dead).await;
        }
        let r = load::run_keyed(p.addr, 32, Duration::from_millis(1500), vec![], keys).await;
        let (ratio, shares) = skew(&r, &live_addrs);
        println!(
            "| {name} | {} | {ratio:.3} | {} |",
            shares
                .iter()
                .map(|s| format!("{s:.3}"))
                .collect::<Vec<_>>()
                .join(" / "),
            r.errors
        );
        if ratio > limit || r.errors > 0 {
            failed.push(format!(
                "{name}: max/mean {ratio:.3} (limit {limit}), {} errors",
                r.errors
            ));
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
}

/// One of four backends answers 30% of requests with a fast 503. Before, a fast 5xx fed a fast
/// latency sample and peak-EWMA lost 0.5%..10.8% of requests across runs (round robin 7.8%).
/// Now the failure penalty keeps the failing backend's cost up: <= 1% errors, every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_failing_backend_costs_under_one_percent_under_peak_ewma() {
    let _g = serial().await;
    let backends: Vec<HttpBackend> = (0..4).map(|_| HttpBackend::start()).collect();
    backends[3].set_fail_percent(30);
    let all = addrs(&backends);
    let rate = |r: &load::Report| r.errors as f64 / (r.requests + r.errors).max(1) as f64;
    let run = Duration::from_millis(1000);
    let p = proxy::start(Selection::RoundRobin, &all, None);
    let rr = load::run(p.addr, 32, run, vec![]).await;
    drop(p);
    println!(
        "pingora round robin: {:.2}% errors ({} of {})",
        100.0 * rate(&rr),
        rr.errors,
        rr.requests + rr.errors
    );
    let mut rates = Vec::new();
    for i in 0..10 {
        let (sel, _shared) = pickwise(LbPolicy::P2c(Policy::PeakEwma));
        let p = proxy::start(sel, &all, None);
        let r = load::run(p.addr, 32, run, vec![]).await;
        drop(p);
        println!(
            "run {i}: pickwise p2c peak-ewma {:.3}% errors ({} of {}), failing backend's share {:.3}",
            100.0 * rate(&r),
            r.errors,
            r.requests + r.errors,
            r.share(&all[3])
        );
        rates.push(rate(&r));
    }
    assert!(rates.iter().all(|&x| x <= 0.01), "error rates {rates:?}");
}

/// A retry never lands on the backend that just failed (Envoy's previous_hosts predicate).
/// A key whose ring owner refuses connections (no health checks yet to mark it down): the
/// refused connect is retried on another backend at once. Before, the retry picked the same
/// owner again, once per retry, until five failures ejected it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_does_not_return_to_the_backend_that_failed() {
    let _g = serial().await;
    let backends: Vec<HttpBackend> = (0..2).map(|_| HttpBackend::start()).collect();
    let mut all = addrs(&backends);
    let dead = dead_addr();
    all.push(dead.clone());
    let policy = LbPolicy::RingHash {
        ring: RingConfig::envoy(),
        load: HashPolicy::Plain,
        no_key: NoKey::P2c,
    };
    let (sel, shared) = pickwise(policy);
    let options = proxy::Options {
        hash_header: Some("x-key"),
        health_check: None,
        ..proxy::Options::default()
    };
    let p = proxy::start_opts(sel, &all, options);
    let mut sorted = all.clone();
    sorted.sort_by_key(|a| a.parse::<std::net::SocketAddr>().unwrap());
    let keyed: Vec<(&str, u32)> = sorted.iter().map(|a| (a.as_str(), 1)).collect();
    let ring = Ring::build(&keyed, &RingConfig::envoy()).unwrap();
    let key = (0..)
        .map(|k| format!("user-{k}"))
        .find(|k| sorted[ring.lookup(hash::xxh64(k.as_bytes())).unwrap() as usize] == dead)
        .unwrap();
    let client = load::client();
    for n in 1..=3u64 {
        let served = load::get(&client, p.addr, Some(&key)).await.unwrap();
        assert_ne!(served, dead);
        let tries = shared.state(&dead).unwrap().picks();
        assert_eq!(
            tries, n,
            "request {n}: the dead owner was tried {tries} times in all"
        );
    }
}
