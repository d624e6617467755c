//! Prequal (NSDI '24, `pickwise_prequal`) end to end over real tonic servers on loopback that run
//! its server side (`pickwise_orca::prequal`: `PrequalLayer` counting requests in flight and a
//! latency per RIF, piggybacking reports on responses; the `Prequal/Probe` service).
//!
//! Each test waits on what it needs (calls served, probes counted), bounded; no sleep is a
//! proof. What they show: a slow server gets a small share while the others serve; probes go
//! on the endpoint's own connection (one connection per server, probes and calls from the same
//! client port); a server without the probe service still serves and stops being probed;
//! piggybacked answers alone (no probes) fill the pool and steer; the servers' RIF returns to 0
//! and the channel holds nothing in flight at the end.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use pickwise_tonic::{BalancedChannel, LbPolicy, Policy, PrequalConfig};
use support::backend::Backend;
use support::client::*;

/// Each test ends well within 5 s on a quiet machine; this bounds every wait.
const BOUND: Duration = Duration::from_secs(8);

/// The paper's settings, but a quarter of a removal per query: with 4 servers the pool holds
/// at most 4 answers (one per server), and removing one per query (the paper's setting for
/// fleets far larger than the pool) would keep it under two usable answers, i.e. on the P2C
/// fallback, most of the time.
const SERVICE_CONFIG: &str = r#"{"loadBalancingConfig":[{"pickwise_prequal":{"probesPerQuery":3,"poolSize":16,
    "maxAge":"1s","removesPerQuery":0.25,"reuseDelta":1,"maxReuse":16,"qRif":0.84,
    "idleProbeInterval":"0.5s","fallback":"pickwise_peak_ewma"}}]}"#;

fn share(seen: &HashMap<String, u64>, b: &Backend) -> f64 {
    let total: u64 = seen.values().sum();
    seen.get(&b.addr.to_string()).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

fn hits(backends: &[Backend]) -> u64 {
    backends.iter().map(Backend::hits).sum()
}

/// The end of every test: the servers count no request in flight, the channel neither.
async fn settled(channel: &BalancedChannel, backends: &[Backend]) {
    until("every server's RIF back to 0", BOUND, || {
        backends.iter().all(|b| b.rif() == 0)
    })
    .await;
    until("nothing in flight in the channel", BOUND, || {
        channel.stats().iter().all(|s| s.in_flight == 0)
    })
    .await;
    assert_no_in_flight(channel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_gets_a_small_share_and_probes_use_its_own_connection() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..4).map(|_| Backend::start()).collect();
    backends[0].set_delay(20);
    let channel = builder()
        .service_config(SERVICE_CONFIG)
        .unwrap()
        .build_static(addrs(&backends));
    assert!(matches!(channel.policy(), LbPolicy::Prequal(_)));
    assert_eq!(channel.wait_ready(4, BOUND).await, 4);
    let start = hits(&backends);
    let (seen, errors) = load_until(&channel, 8, "600 calls served", BOUND, || {
        hits(&backends) - start >= 600
    })
    .await;
    let stats = channel.prequal_stats();
    println!("shares {seen:?}; {stats:?}");
    for b in &backends {
        println!("{}: {} probes, {} hits", b.addr, b.probes(), b.hits());
    }
    assert_eq!(errors, 0);
    let slow = share(&seen, &backends[0]);
    assert!(slow < 0.1, "the slow server got {:.1}%", 100.0 * slow);
    // Probing: sent and answered, none failed, every server probed.
    assert!(stats.probes_sent > 0 && stats.probes_answered > 0, "{stats:?}");
    assert_eq!((stats.probes_failed, stats.probes_unimplemented), (0, 0));
    assert!(stats.piggybacked > 0, "{stats:?}");
    let probed: u64 = backends.iter().map(Backend::probes).sum();
    assert!(probed <= stats.probes_sent);
    for b in &backends {
        assert!(b.probes() > 0, "{} was never probed", b.addr);
        // On the endpoint's own connection: one connection, and probes came from the client
        // port the calls came from.
        assert_eq!(b.connections(), 1, "{}", b.addr);
        let probe_peers = b.knobs.probe_peers.lock().unwrap().clone();
        let call_peers = b.knobs.call_peers.lock().unwrap().clone();
        assert_eq!(probe_peers.len(), 1, "{}: {probe_peers:?}", b.addr);
        assert_eq!(probe_peers, call_peers, "{}", b.addr);
    }
    settled(&channel, &backends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_probe_service_serves_and_is_not_probed_again() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
    backends[2]
        .knobs
        .no_probe_service
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let channel = builder()
        .prequal(PrequalConfig::default())
        .build_static(addrs(&backends));
    assert_eq!(channel.wait_ready(3, BOUND).await, 3);
    let target = backends[2].addr.to_string();
    let (seen, errors) = load_until(&channel, 8, "the server without probes recognised", BOUND, || {
        channel.prequal_stats().without_probe_service == [target.clone()]
    })
    .await;
    assert_eq!(errors, 0);
    let stats = channel.prequal_stats();
    assert!(stats.probes_unimplemented >= 1, "{stats:?}");
    // Not probed again: more load, more probes to the others, none to it.
    let before = backends[2].probes();
    let others = |bs: &[Backend]| bs[0].probes() + bs[1].probes();
    let others_before = others(&backends);
    let served_before = backends[2].hits();
    let (more, errors) = load_until(&channel, 8, "200 more probes to the others", BOUND, || {
        others(&backends) >= others_before + 200
    })
    .await;
    println!("{seen:?} then {more:?}; {:?}", channel.prequal_stats());
    assert_eq!(errors, 0);
    // The probes that were in flight when the first UNIMPLEMENTED came back may still land.
    assert!(
        backends[2].probes() <= before + 2 * 16,
        "probed {} more times",
        backends[2].probes() - before
    );
    let after = backends[2].probes();
    let (_, errors) = load_until(&channel, 8, "100 more probes to the others", BOUND, || {
        others(&backends) >= others_before + 300
    })
    .await;
    assert_eq!(errors, 0);
    assert_eq!(backends[2].probes(), after, "probed again");
    // It still serves (picked by its piggybacked answers or the fallback), and is never failed.
    assert!(backends[2].hits() > served_before, "{more:?}");
    assert!(channel.stats().iter().all(|s| s.failures == 0));
    settled(&channel, &backends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piggybacked_answers_alone_steer() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..4).map(|_| Backend::start()).collect();
    backends[0].set_delay(20);
    let channel = builder()
        .prequal(PrequalConfig {
            probes_per_query: 0.0,
            idle_probe_ns: 0,
            // Answers leave by age and reuse only (one arrives per response).
            removes_per_query: 0.0,
            fallback: Policy::LeastRequest,
            ..PrequalConfig::default()
        })
        .build_static(addrs(&backends));
    assert_eq!(channel.wait_ready(4, BOUND).await, 4);
    let start = hits(&backends);
    let (seen, errors) = load_until(&channel, 8, "600 calls served", BOUND, || {
        hits(&backends) - start >= 600
    })
    .await;
    let stats = channel.prequal_stats();
    println!("shares {seen:?}; {stats:?}");
    assert_eq!(errors, 0);
    assert_eq!(stats.probes_sent, 0, "{stats:?}");
    assert!(backends.iter().all(|b| b.probes() == 0));
    assert!(stats.piggybacked >= 600, "{stats:?}");
    assert!(stats.pooled >= 2, "{stats:?}");
    let slow = share(&seen, &backends[0]);
    assert!(slow < 0.1, "the slow server got {:.1}%", 100.0 * slow);
    settled(&channel, &backends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_prequal_stops_the_prober() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..2).map(|_| Backend::start()).collect();
    let channel = builder()
        .prequal(PrequalConfig::default())
        .build_static(addrs(&backends));
    assert_eq!(channel.wait_ready(2, BOUND).await, 2);
    load_until(&channel, 4, "probes answered", BOUND, || {
        channel.prequal_stats().probes_answered >= 20
    })
    .await;
    assert!(channel.set_policy(LbPolicy::P2c(Policy::PeakEwma)));
    until("the new policy", BOUND, || {
        matches!(channel.policy(), LbPolicy::P2c(_))
    })
    .await;
    // Calls on the new picker owe no probes; whatever was in flight lands.
    let sent = channel.prequal_stats().probes_sent;
    let start = hits(&backends);
    let (_, errors) = load_until(&channel, 4, "300 calls under P2C", BOUND, || {
        hits(&backends) - start >= 300
    })
    .await;
    assert_eq!(errors, 0);
    let stats = channel.prequal_stats();
    assert_eq!(stats.probes_sent, sent, "{stats:?}");
    assert_eq!(stats.pooled, 0);
    settled(&channel, &backends).await;
}
