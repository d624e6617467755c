//! A gRPC service config drives the channel against real servers: `ring_hash_experimental`
//! with `requestHashHeader` (gRFC A76: `"<address>_0"` reaches that address, as grpc-go's e2e
//! tests check), and `round_robin` rotating evenly.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::backend::Backend;
use support::client::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_from_a_service_config() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
    let channel = builder()
        .service_config(
            r#"{"loadBalancingConfig":[{"pick_first":{}},
                {"ring_hash_experimental":{"minRingSize":1024,"maxRingSize":4096,"requestHashHeader":"X-User"}}]}"#,
        )
        .unwrap()
        .build_static(addrs(&backends));
    assert_eq!(channel.wait_ready(3, Duration::from_secs(5)).await, 3);
    for b in &backends {
        let key = format!("{}_0", b.addr);
        for _ in 0..5 {
            assert_eq!(call(&channel, Some(&key)).await.unwrap(), b.addr.to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_from_a_service_config() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
    let channel = builder()
        .service_config(r#"{"loadBalancingConfig":[{"round_robin":{}}]}"#)
        .unwrap()
        .build_static(addrs(&backends));
    assert_eq!(channel.wait_ready(3, Duration::from_secs(5)).await, 3);
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..30 {
        *seen.entry(call(&channel, None).await.unwrap()).or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 10), "{seen:?}");
    assert!(builder().service_config(r#"[{"pick_first":{}}]"#).is_err());
}

/// grpc-go's `grpc.Peer`: with `report_peer`, each response names the endpoint that served it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_the_peer() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..2).map(|_| Backend::start()).collect();
    let channel = builder().report_peer(true).build_static(addrs(&backends));
    assert_eq!(channel.wait_ready(2, Duration::from_secs(5)).await, 2);
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..10 {
        let resp = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        let peer = resp
            .extensions()
            .get::<pickwise_tonic::Peer>()
            .expect("peer extension");
        let served = resp.metadata().get("x-backend").unwrap().to_str().unwrap();
        assert_eq!(peer.address(), served);
    }
}

/// A policy change at runtime (grpc-go swaps the balancer; an xDS CDS update does this): under
/// load, least-request -> ring hash -> Maglev -> peak-EWMA, with no error, no reconnect, and no
/// slot left held; keys are sticky once the ring is in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_at_runtime_keep_connections_and_requests() {
    use pickwise_tonic::{HashPolicy, LbPolicy, NoKey, Policy, RingConfig};
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
    let channel = builder()
        .p2c(Policy::LeastRequest)
        .hash_header(http::HeaderName::from_static("x-user"))
        .build_static(addrs(&backends));
    assert_eq!(channel.wait_ready(3, Duration::from_secs(5)).await, 3);
    // Load until told to stop, so every switch happens under it however slow the machine.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let errors = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (ch, stop, errors) = (channel.clone(), stop.clone(), errors.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if call(&ch, None).await.is_err() {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let hits = || backends.iter().map(Backend::hits).sum::<u64>();
    // Served under each policy: 100 requests, then the next policy.
    let served = |n: u64| {
        let target = hits() + n;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while hits() < target {
                assert!(std::time::Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let ring = LbPolicy::RingHash {
        ring: RingConfig::grpc(),
        load: HashPolicy::Plain,
        no_key: NoKey::RandomHash,
    };
    for policy in [
        ring,
        LbPolicy::Maglev {
            table_size: 65_537,
            no_key: NoKey::RandomHash,
        },
        LbPolicy::P2c(Policy::PeakEwma),
    ] {
        served(100).await;
        assert!(channel.set_policy(policy));
    }
    served(100).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(errors.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(backends.iter().all(|b| b.connections() == 1), "no reconnects");
    assert_eq!(channel.policy(), LbPolicy::P2c(Policy::PeakEwma));
    // Back to the ring: a key sticks to one backend.
    assert!(channel.set_policy(ring));
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while channel.policy() != ring && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = call(&channel, Some("user-7")).await.unwrap();
    for _ in 0..10 {
        assert_eq!(call(&channel, Some("user-7")).await.unwrap(), first);
    }
    assert_no_in_flight(&channel);
}
