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

fn assert_no_in_flight(shared: &Shared, backends: &[String]) {
    for a in backends {
        if let Some(s) = shared.state(a) {
            assert_eq!(s.in_flight(), 0, "{a} still holds slots");
        }
    }
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
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_no_in_flight(&shared, &addrs(&backends));
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
    let r = load::run(p.addr, 8, Duration::from_millis(500), vec![]).await;
    assert_eq!(r.share(&dead), 0.0);
    assert_eq!(r.errors, 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_no_in_flight(&shared, &all);
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
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_no_in_flight(&shared, &all);
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
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_no_in_flight(&shared, &all);
}
