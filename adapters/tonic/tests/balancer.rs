//! The balancer against real tonic servers on 127.0.0.1. Every loop is bounded in time.

mod support;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderName;
use pickwise_tonic::{discover, ConnectivityState, HashPolicy, OutlierConfig, Policy, RingConfig};
use support::backend::Backend;
use support::client::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spreads_across_backends() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
    let channel = builder().p2c(Policy::LeastRequest).build_static(addrs(&backends));
    assert_eq!(channel.wait_ready(3, Duration::from_secs(5)).await, 3);
    let (seen, errors) = load(&channel, 8, Duration::from_millis(500)).await;
    assert_eq!(errors, 0);
    let total: u64 = seen.values().sum();
    for b in &backends {
        let share = seen.get(&b.addr.to_string()).copied().unwrap_or(0) as f64 / total as f64;
        assert!(share > 0.15, "{} got {share:.3} of {total}", b.addr);
    }
    assert_no_in_flight(&channel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_gets_a_small_share_under_peak_ewma() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
    backends[0].set_delay(20);
    let channel = builder().p2c(Policy::PeakEwma).build_static(addrs(&backends));
    channel.wait_ready(3, Duration::from_secs(5)).await;
    let _warmup = load(&channel, 4, Duration::from_millis(500)).await;
    // Random choice would give it a third.
    let (seen, errors) = load(&channel, 4, Duration::from_millis(1500)).await;
    assert_eq!(errors, 0);
    let total: u64 = seen.values().sum();
    let slow = seen.get(&backends[0].addr.to_string()).copied().unwrap_or(0) as f64 / total as f64;
    assert!(slow < 0.10, "slow backend share {slow:.3} of {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_leaves_quickly_and_comes_back_after_restart() {
    let _serial = serial().await;
    let mut backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
    // Requests in flight when the backend dies fail and may eject it; keep that ejection short so
    // the test sees the comeback (the default is Envoy's 30 s).
    let outlier = OutlierConfig {
        base_ejection_ms: 300,
        ..OutlierConfig::default()
    };
    let channel = builder()
        .p2c(Policy::PeakEwma)
        .outlier(outlier)
        .build_static(addrs(&backends));
    channel.wait_ready(3, Duration::from_secs(5)).await;
    let victim = backends[1].addr.to_string();

    let bg = {
        let ch = channel.clone();
        tokio::spawn(async move { load(&ch, 16, Duration::from_millis(1500)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    backends[1].kill();
    let killed_at = Instant::now();
    // Within one second the balancer has stopped picking it.
    let mut left_after = None;
    while killed_at.elapsed() < Duration::from_secs(1) {
        let s = channel.stats().into_iter().find(|s| s.address == victim).unwrap();
        if s.state != ConnectivityState::Ready {
            left_after = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let left_after = left_after.expect("killed backend still Ready after 1 s");
    let picks_then = channel
        .stats()
        .into_iter()
        .find(|s| s.address == victim)
        .unwrap()
        .picks;
    let (_, errors) = bg.await.unwrap();
    let picks_later = channel
        .stats()
        .into_iter()
        .find(|s| s.address == victim)
        .unwrap()
        .picks;
    assert_eq!(picks_later, picks_then, "picked after leaving the picker");
    // Only requests in flight on the dead connection can fail.
    assert!(
        errors <= 16,
        "{errors} errors after the kill (left the picker after {left_after:?})"
    );

    backends[1].restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && channel.ready_endpoints() < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        channel.ready_endpoints(),
        3,
        "restarted backend did not come back"
    );
    // Past any ejection (300 ms base), the restarted backend takes traffic again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (seen, errors) = load(&channel, 8, Duration::from_millis(600)).await;
    assert_eq!(errors, 0);
    assert!(
        seen.get(&victim).copied().unwrap_or(0) > 0,
        "restarted backend gets no traffic: {:?}",
        channel.stats()
    );
    assert_no_in_flight(&channel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_add_and_remove_while_requests_flow() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
    let (handle, discovery) = discover::channel();
    handle.insert(backends[0].addr.to_string(), 1);
    handle.insert(backends[1].addr.to_string(), 1);
    let channel = builder().p2c(Policy::LeastRequest).build(discovery);
    channel.wait_ready(2, Duration::from_secs(5)).await;
    let bg = {
        let ch = channel.clone();
        tokio::spawn(async move { load(&ch, 8, Duration::from_millis(1200)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.insert(backends[2].addr.to_string(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(backends[2].hits() > 0, "added backend gets no traffic");
    handle.remove(backends[0].addr.to_string());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hits_after_remove = backends[0].hits();
    let (_, errors) = bg.await.unwrap();
    assert_eq!(errors, 0);
    assert_eq!(
        backends[0].hits(),
        hits_after_remove,
        "removed backend still receives requests"
    );
    assert_eq!(channel.stats().len(), 2);
    assert_no_in_flight(&channel);
}

fn refused_ports(n: usize) -> Vec<String> {
    // Bind then close: connecting is refused at once.
    (0..n)
        .map(|_| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_fails_fast_with_unavailable() {
    let _serial = serial().await;
    let channel = builder()
        .wait_for_ready(Duration::from_secs(5))
        .build_static(refused_ports(3));
    // The very first request waits only for the first connection attempts, not the deadline.
    let err = unavailable_within(&channel, Duration::from_secs(2)).await;
    assert!(err.message().contains("failing"), "{}", err.message());
    // Once all are in TRANSIENT_FAILURE, requests fail at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    unavailable_within(&channel, Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_endpoint_costs_no_requests() {
    let _serial = serial().await;
    let good = Backend::start();
    let mut addrs = refused_ports(1);
    addrs.push(good.addr.to_string());
    let channel = builder().build_static(addrs);
    channel.wait_ready(1, Duration::from_secs(5)).await;
    for _ in 0..300 {
        call(&channel, None)
            .await
            .expect("a refused endpoint must never be picked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_endpoint_set_fails_fast() {
    let _serial = serial().await;
    let (handle, discovery) = discover::channel();
    let b = Backend::start();
    handle.insert(b.addr.to_string(), 1);
    let channel = builder().build(discovery);
    channel.wait_ready(1, Duration::from_secs(5)).await;
    handle.remove(b.addr.to_string());
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !channel.stats().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = unavailable_within(&channel, Duration::from_millis(50)).await;
    assert!(err.message().contains("empty"), "{}", err.message());

    // A static empty list: a discovery error before any endpoint, reported at once.
    let channel = builder().build_static(Vec::<String>::new());
    unavailable_within(&channel, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_cancelled_requests_leave_no_in_flight() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..2).map(|_| Backend::start()).collect();
    for b in &backends {
        b.set_delay(20);
    }
    let channel = builder()
        .p2c(Policy::LeastRequest)
        .outlier(OutlierConfig::disabled())
        .build_static(addrs(&backends));
    channel.wait_ready(2, Duration::from_secs(5)).await;
    let mut cancelled = 0;
    for batch in 0..20u64 {
        let tasks: Vec<_> = (0..500u64)
            .map(|i| {
                let ch = channel.clone();
                tokio::spawn(async move {
                    // Drop the call at different points: before send, in flight, mid-response.
                    let budget = Duration::from_micros((batch * 500 + i) % 25_000);
                    tokio::time::timeout(budget, call(&ch, None)).await.is_err()
                })
            })
            .collect();
        for t in tasks {
            cancelled += usize::from(t.await.unwrap());
        }
    }
    assert!(cancelled > 5_000, "only {cancelled} cancelled");
    // Server-side sleeps finish later; client-side counters must already be zero.
    assert_no_in_flight(&channel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_header_is_sticky_and_removal_moves_only_its_keys() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..4).map(|_| Backend::start()).collect();
    let (handle, discovery) = discover::channel();
    for b in &backends {
        handle.insert(b.addr.to_string(), 1);
    }
    let channel = builder()
        .ring_hash(RingConfig::native(100), HashPolicy::Plain)
        .hash_header(HeaderName::from_static("x-user"))
        .build(discovery);
    channel.wait_ready(4, Duration::from_secs(5)).await;
    let mut owner: HashMap<String, String> = HashMap::new();
    for k in 0..200 {
        let key = format!("user-{k}");
        let first = call(&channel, Some(&key)).await.unwrap();
        for _ in 0..3 {
            assert_eq!(call(&channel, Some(&key)).await.unwrap(), first, "{key} moved");
        }
        owner.insert(key, first);
    }
    let victim = backends[2].addr.to_string();
    handle.remove(victim.clone());
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && channel.stats().len() != 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut moved = 0;
    for (key, was) in &owner {
        let now = call(&channel, Some(key)).await.unwrap();
        if *was == victim {
            assert_ne!(now, victim);
            moved += 1;
        } else {
            assert_eq!(&now, was, "{key} moved from a surviving backend");
        }
    }
    assert!(moved > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_mode_header_of_address_underscore_zero_reaches_it() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..4).map(|_| Backend::start()).collect();
    let channel = builder()
        .ring_hash(RingConfig::grpc(), HashPolicy::Plain)
        .hash_header(HeaderName::from_static("x-user"))
        .build_static(addrs(&backends));
    channel.wait_ready(4, Duration::from_secs(5)).await;
    for b in &backends {
        let addr = b.addr.to_string();
        assert_eq!(call(&channel, Some(&format!("{addr}_0"))).await.unwrap(), addr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_skips_a_dead_owner_and_returns_to_it() {
    let _serial = serial().await;
    let mut backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
    let channel = builder()
        .ring_hash(RingConfig::envoy(), HashPolicy::Plain)
        .hash_header(HeaderName::from_static("x-user"))
        .build_static(addrs(&backends));
    channel.wait_ready(3, Duration::from_secs(5)).await;
    let home = call(&channel, Some("sticky")).await.unwrap();
    let idx = backends.iter().position(|b| b.addr.to_string() == home).unwrap();
    backends[idx].kill();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && channel.ready_endpoints() == 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fallback = call(&channel, Some("sticky")).await.unwrap();
    assert_ne!(fallback, home);
    for _ in 0..20 {
        assert_eq!(call(&channel, Some("sticky")).await.unwrap(), fallback);
    }
    backends[idx].restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && channel.ready_endpoints() < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(call(&channel, Some("sticky")).await.unwrap(), home);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_backend_is_ejected() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..4).map(|_| Backend::start()).collect();
    backends[0].set_failing(true);
    let channel = builder().p2c(Policy::LeastRequest).build_static(addrs(&backends));
    channel.wait_ready(4, Duration::from_secs(5)).await;
    let (_, errors) = load(&channel, 4, Duration::from_millis(500)).await;
    let bad = channel
        .stats()
        .into_iter()
        .find(|s| s.address == backends[0].addr.to_string())
        .unwrap();
    assert!(bad.ejected_for.is_some(), "{bad:?}");
    assert!(errors <= 10, "{errors} errors: ejection should stop them after 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_updates_apply_without_traffic() {
    let _serial = serial().await;
    let (handle, discovery) = discover::channel();
    let channel = builder().build(discovery);
    let start = Instant::now();
    for i in 0..1000 {
        assert!(handle.insert(format!("127.0.0.1:{}", 1 + i % 7), 1));
    }
    assert!(start.elapsed() < Duration::from_millis(100), "sender blocked");
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && channel.stats().len() < 7 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(channel.stats().len(), 7, "duplicates are one endpoint each");
    assert!(channel.picker_version() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_not_serving_backend_out() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..2).map(|_| Backend::start()).collect();
    let channel = builder()
        .health_check(pickwise_tonic::HealthCheck {
            service: String::new(),
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(1),
        })
        .build_static(addrs(&backends));
    channel.wait_ready(2, Duration::from_secs(5)).await;
    backends[0].knobs.not_serving.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && channel.ready_endpoints() == 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(channel.ready_endpoints(), 1);
    backends[0].knobs.not_serving.store(false, Ordering::Relaxed);
    assert_eq!(channel.wait_ready(2, Duration::from_secs(2)).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_endpoint_that_accepts_then_closes_costs_no_requests() {
    let _serial = serial().await;
    // A listener that accepts every connection and closes it at once, for the whole test.
    let flapper = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let flap_addr = flapper.local_addr().unwrap().to_string();
    let accepts = Arc::new(AtomicU64::new(0));
    let counter = accepts.clone();
    let flap = tokio::spawn(async move {
        while let Ok((sock, _)) = flapper.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            drop(sock);
        }
    });
    let good = Backend::start();
    let channel = builder().build_static([flap_addr.clone(), good.addr.to_string()]);
    channel.wait_ready(1, Duration::from_secs(5)).await;
    for _ in 0..500 {
        call(&channel, None)
            .await
            .expect("the flapping endpoint must never be picked");
    }
    let s = channel
        .stats()
        .into_iter()
        .find(|s| s.address == flap_addr)
        .unwrap();
    assert_ne!(s.state, ConnectivityState::Ready);
    assert_eq!(s.picks, 0);
    // It keeps being retried in the background, with backoff.
    assert!(accepts.load(Ordering::Relaxed) >= 1);
    flap.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_resolves_and_serves() {
    let _serial = serial().await;
    let b = Backend::start();
    let port = b.addr.port();
    // `localhost` may also resolve to ::1, where nothing listens: that endpoint just fails.
    let channel = builder().build(discover::dns(
        format!("localhost:{port}"),
        Duration::from_millis(200),
    ));
    assert!(channel.wait_ready(1, Duration::from_secs(5)).await >= 1);
    assert_eq!(call(&channel, None).await.unwrap(), b.addr.to_string());
    assert!(channel.stats().iter().any(|s| s.address == b.addr.to_string()));

    // An unresolvable name is a discovery error before any endpoint: requests fail at once.
    let channel = builder().build(discover::dns("nonexistent.invalid:80", Duration::from_secs(60)));
    let err = unavailable_within(&channel, Duration::from_secs(5)).await;
    assert!(err.message().contains("discovery"), "{}", err.message());
}
