//! The balancer against real tonic servers on 127.0.0.1. Every loop is bounded in time.

mod support;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    assert_eq!(channel.wait_ready(3, PATIENCE).await, 3);
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
    assert_eq!(channel.wait_ready(3, PATIENCE).await, 3);
    let _warmup = load(&channel, 4, Duration::from_millis(500)).await;
    // Random choice would give it a third.
    let (seen, errors) = load(&channel, 4, Duration::from_millis(1500)).await;
    assert_eq!(errors, 0);
    let total: u64 = seen.values().sum();
    let slow = seen.get(&backends[0].addr.to_string()).copied().unwrap_or(0) as f64 / total as f64;
    assert!(slow < 0.10, "slow backend share {slow:.3} of {total}");
}

/// A killed backend leaves the picker as soon as its connection closes ("quickly" in requests, not
/// time: only the requests in flight on the dead connection fail, and it is never picked after
/// leaving), and takes traffic again after a restart.
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
    assert_eq!(channel.wait_ready(3, PATIENCE).await, 3);
    let victim = backends[1].addr.to_string();

    let bg = {
        let ch = channel.clone();
        tokio::spawn(async move { load(&ch, 16, Duration::from_millis(1500)).await })
    };
    // The scenario: the backend dies under load (300 ms into the 1.5 s load).
    tokio::time::sleep(Duration::from_millis(300)).await;
    backends[1].kill();
    let killed_at = Instant::now();
    until("the killed backend to leave the picker", PATIENCE, || {
        channel
            .stats()
            .into_iter()
            .any(|s| s.address == victim && s.state != ConnectivityState::Ready)
    })
    .await;
    let left_after = killed_at.elapsed();
    eprintln!("the killed backend left the picker after {left_after:?}");
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
    assert_eq!(
        channel.wait_ready(3, PATIENCE).await,
        3,
        "restarted backend did not come back"
    );
    // Past any ejection (300 ms base), the restarted backend takes traffic again: load runs until
    // it has served some.
    let hits = backends[1].hits();
    let (seen, errors) = load_until(
        &channel,
        8,
        "the restarted backend to take traffic",
        PATIENCE,
        || backends[1].hits() > hits,
    )
    .await;
    assert_eq!(errors, 0);
    assert!(
        seen.get(&victim).copied().unwrap_or(0) > 0,
        "restarted backend gets no traffic: {:?}",
        channel.stats()
    );
    assert_no_in_flight(&channel);
}

/// Endpoints added and removed while requests flow: the added one gets traffic, no request fails,
/// and no request that starts after the removal reached the picker is served by the removed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_add_and_remove_while_requests_flow() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
    let (handle, discovery) = discover::channel();
    handle.insert(backends[0].addr.to_string(), 1);
    handle.insert(backends[1].addr.to_string(), 1);
    let channel = builder().p2c(Policy::LeastRequest).build(discovery);
    assert_eq!(channel.wait_ready(2, PATIENCE).await, 2);
    let gone = backends[0].addr.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    // Set once the removal shows in the picker: a call that starts later must not reach `gone`.
    let removed = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (ch, stop, removed, gone) = (channel.clone(), stop.clone(), removed.clone(), gone.clone());
            tokio::spawn(async move {
                let (mut errors, mut after, mut late) = (0u64, 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let after_removal = removed.load(Ordering::Acquire);
                    match call(&ch, None).await {
                        Ok(b) if after_removal => {
                            after += 1;
                            late += u64::from(b == gone);
                        }
                        Ok(_) => {}
                        Err(_) => errors += 1,
                    }
                }
                (errors, after, late)
            })
        })
        .collect();
    // The scenario: requests flow for 200 ms before the endpoint set changes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.insert(backends[2].addr.to_string(), 1);
    until("the added backend to get traffic", PATIENCE, || {
        backends[2].hits() > 0
    })
    .await;
    handle.remove(gone.clone());
    until("the removal to reach the picker", PATIENCE, || {
        channel.stats().iter().all(|s| s.address != gone)
    })
    .await;
    removed.store(true, Ordering::Release);
    // The scenario: requests keep flowing for 300 ms after the removal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut errors, mut after, mut late) = (0, 0, 0);
    for w in workers {
        let (e, a, l) = w.await.unwrap();
        (errors, after, late) = (errors + e, after + a, late + l);
    }
    assert_eq!(errors, 0);
    assert!(after > 0, "no request started after the removal");
    assert_eq!(
        late, 0,
        "removed backend still receives requests ({late} of {after})"
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

/// All endpoints refuse connections: requests fail with UNAVAILABLE "failing" instead of waiting
/// for the wait-for-ready bound (60 s here) or their 30 s deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_fails_fast_with_unavailable() {
    let _serial = serial().await;
    let channel = builder()
        .wait_for_ready(Duration::from_secs(60))
        .build_static(refused_ports(3));
    // The very first request waits only for the first connection attempts, not the deadline.
    let err = unavailable_at_once(&channel).await;
    assert!(err.message().contains("failing"), "{}", err.message());
    // All are in TRANSIENT_FAILURE now (the message says so): requests fail at once.
    for _ in 0..5 {
        let err = unavailable_at_once(&channel).await;
        assert!(err.message().contains("failing"), "{}", err.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_endpoint_costs_no_requests() {
    let _serial = serial().await;
    let good = Backend::start();
    let mut addrs = refused_ports(1);
    addrs.push(good.addr.to_string());
    let channel = builder().build_static(addrs);
    assert_eq!(channel.wait_ready(1, PATIENCE).await, 1);
    for _ in 0..300 {
        call(&channel, None)
            .await
            .expect("a refused endpoint must never be picked");
    }
}

/// An empty endpoint set fails requests with UNAVAILABLE saying so, without waiting for the
/// wait-for-ready bound (60 s here) or their 30 s deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_endpoint_set_fails_fast() {
    let _serial = serial().await;
    let (handle, discovery) = discover::channel();
    let b = Backend::start();
    handle.insert(b.addr.to_string(), 1);
    let channel = builder().wait_for_ready(Duration::from_secs(60)).build(discovery);
    assert_eq!(channel.wait_ready(1, PATIENCE).await, 1);
    handle.remove(b.addr.to_string());
    until("the removal to reach the picker", PATIENCE, || {
        channel.stats().is_empty()
    })
    .await;
    let err = unavailable_at_once(&channel).await;
    assert!(err.message().contains("empty"), "{}", err.message());

    // A static empty list: a discovery error before any endpoint, reported at once.
    let channel = builder()
        .wait_for_ready(Duration::from_secs(60))
        .build_static(Vec::<String>::new());
    unavailable_at_once(&channel).await;
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
    assert_eq!(channel.wait_ready(2, PATIENCE).await, 2);
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
    assert_eq!(channel.wait_ready(4, PATIENCE).await, 4);
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
    until("the removal to reach the picker", PATIENCE, || {
        channel.stats().len() == 3
    })
    .await;
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
    assert_eq!(channel.wait_ready(4, PATIENCE).await, 4);
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
    assert_eq!(channel.wait_ready(3, PATIENCE).await, 3);
    let home = call(&channel, Some("sticky")).await.unwrap();
    let idx = backends.iter().position(|b| b.addr.to_string() == home).unwrap();
    backends[idx].kill();
    until("the dead owner to leave the picker", PATIENCE, || {
        channel.ready_endpoints() < 3
    })
    .await;
    let fallback = call(&channel, Some("sticky")).await.unwrap();
    assert_ne!(fallback, home);
    for _ in 0..20 {
        assert_eq!(call(&channel, Some("sticky")).await.unwrap(), fallback);
    }
    backends[idx].restart();
    assert_eq!(
        channel.wait_ready(3, PATIENCE).await,
        3,
        "the owner did not come back"
    );
    assert_eq!(call(&channel, Some("sticky")).await.unwrap(), home);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_backend_is_ejected() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..4).map(|_| Backend::start()).collect();
    backends[0].set_failing(true);
    let channel = builder().p2c(Policy::LeastRequest).build_static(addrs(&backends));
    assert_eq!(channel.wait_ready(4, PATIENCE).await, 4);
    let (_, errors) = load(&channel, 4, Duration::from_millis(500)).await;
    let bad = channel
        .stats()
        .into_iter()
        .find(|s| s.address == backends[0].addr.to_string())
        .unwrap();
    assert!(bad.ejected_for.is_some(), "{bad:?}");
    assert!(errors <= 10, "{errors} errors: ejection should stop them after 5");
}

/// Discovery updates reach the picker with no request flowing; 1000 inserts of 7 addresses are
/// 7 endpoints. (The handle's sends never block: an unbounded channel, documented; how long the
/// inserts take is printed, not asserted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_updates_apply_without_traffic() {
    let _serial = serial().await;
    let (handle, discovery) = discover::channel();
    let channel = builder().build(discovery);
    let start = Instant::now();
    for i in 0..1000 {
        assert!(handle.insert(format!("127.0.0.1:{}", 1 + i % 7), 1));
    }
    eprintln!("1000 inserts took {:?}", start.elapsed());
    until("the 7 endpoints to reach the picker", PATIENCE, || {
        channel.stats().len() >= 7
    })
    .await;
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
    assert_eq!(channel.wait_ready(2, PATIENCE).await, 2);
    backends[0].knobs.not_serving.store(true, Ordering::Relaxed);
    until("the NOT_SERVING backend to leave the picker", PATIENCE, || {
        channel.ready_endpoints() < 2
    })
    .await;
    assert_eq!(channel.ready_endpoints(), 1);
    backends[0].knobs.not_serving.store(false, Ordering::Relaxed);
    assert_eq!(channel.wait_ready(2, PATIENCE).await, 2);
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
    assert_eq!(channel.wait_ready(1, PATIENCE).await, 1);
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
    assert!(channel.wait_ready(1, PATIENCE).await >= 1);
    assert_eq!(call(&channel, None).await.unwrap(), b.addr.to_string());
    assert!(channel.stats().iter().any(|s| s.address == b.addr.to_string()));

    // An unresolvable name is a discovery error before any endpoint: requests fail at once.
    let channel = builder()
        .wait_for_ready(Duration::from_secs(60))
        .build(discover::dns("nonexistent.invalid:80", Duration::from_secs(60)));
    let err = unavailable_at_once(&channel).await;
    assert!(err.message().contains("discovery"), "{}", err.message());
}
