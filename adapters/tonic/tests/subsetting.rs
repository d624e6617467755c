//! Subsetting in the balancer against real servers on 127.0.0.1: connections only to the
//! subset, only what changed moves, the subset grows past failing endpoints, and the identity can
//! come from a stream of peers.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pickwise_tonic::{discover, Policy, SubsetClient, Subsetting};
use support::backend::Backend;
use support::client::*;

fn expected(s: Subsetting, client: SubsetClient, addrs: &[String]) -> BTreeSet<String> {
    s.subset(client, addrs)
        .unwrap()
        .iter()
        .map(|m| addrs[m.backend as usize].clone())
        .collect()
}

fn connected(backends: &[Backend]) -> BTreeSet<String> {
    backends
        .iter()
        .filter(|b| b.connections() > 0)
        .map(|b| b.addr.to_string())
        .collect()
}

/// The endpoints the balancer holds now.
fn held(channel: &pickwise_tonic::BalancedChannel) -> BTreeSet<String> {
    channel.stats().iter().map(|x| x.address.clone()).collect()
}

async fn settle(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_only_to_its_subset_and_serves_from_it() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..8).map(|_| Backend::start()).collect();
    let all = addrs(&backends);
    let s = Subsetting::Aperture { min_aperture: 2 };
    let me = SubsetClient::Index { index: 1, count: 4 };
    let want = expected(s, me, &all);
    assert_eq!(
        want.len(),
        2,
        "8 backends, 4 clients, aperture 2: two whole backends"
    );
    let channel = builder()
        .p2c(Policy::LeastRequest)
        .subset(s, me)
        .build_static(all.clone());
    assert_eq!(channel.wait_ready(2, Duration::from_secs(5)).await, 2);
    for _ in 0..50 {
        assert!(want.contains(&call(&channel, None).await.unwrap()));
    }
    assert_eq!(connected(&backends), want, "no connection outside the subset");
    assert_eq!(channel.stats().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backend_moves_only_what_changed() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..12).map(|_| Backend::start()).collect();
    let all = addrs(&backends);
    let s = Subsetting::Random { subset_size: 4 };
    let me = SubsetClient::Stable { id: 42, count: 100 };
    let (handle, discovery) = discover::channel();
    for a in &all[..11] {
        handle.insert(a.clone(), 1);
    }
    let channel = builder().subset(s, me).build(discovery);
    assert_eq!(channel.wait_ready(4, Duration::from_secs(5)).await, 4);
    let before = connected(&backends);
    assert_eq!(before, expected(s, me, &all[..11]));
    handle.insert(all[11].clone(), 1);
    let after_want = expected(s, me, &all);
    settle(|| held(&channel) == after_want).await;
    let now = held(&channel);
    assert_eq!(now, after_want);
    assert!(
        before.symmetric_difference(&now).count() <= 2,
        "rendezvous: at most one swap"
    );
    // Kept endpoints kept their connection: no backend was connected twice.
    assert!(backends.iter().all(|b| b.connections() <= 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subset_grows_past_failing_endpoints() {
    let _serial = serial().await;
    let mut backends: Vec<Backend> = (0..6).map(|_| Backend::start()).collect();
    let all = addrs(&backends);
    let s = Subsetting::Aperture { min_aperture: 2 };
    let me = SubsetClient::Index { index: 0, count: 3 };
    let want = expected(s, me, &all);
    assert_eq!(want.len(), 2);
    for b in backends.iter_mut().filter(|b| want.contains(&b.addr.to_string())) {
        b.kill(); // both endpoints of the subset refuse connections
    }
    let channel = builder().subset(s, me).build_static(all.clone());
    assert!(
        channel.wait_ready(1, Duration::from_secs(5)).await >= 1,
        "grew to a live endpoint"
    );
    for _ in 0..20 {
        let served = call(&channel, None).await.expect("served by the grown subset");
        assert!(!want.contains(&served));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_comes_from_a_stream_of_peers() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..8).map(|_| Backend::start()).collect();
    let all = addrs(&backends);
    let s = Subsetting::Aperture { min_aperture: 2 };
    let (peers, peer_stream) = discover::channel();
    for p in ["client-a", "client-c", "client-d"] {
        peers.insert(p, 1);
    }
    let channel = builder()
        .subset_with_peers(s, "client-b", peer_stream)
        .build_static(all.clone());
    // "client-b" ranks second of four.
    let want = expected(s, SubsetClient::Index { index: 1, count: 4 }, &all);
    settle(|| held(&channel) == want).await;
    assert_eq!(held(&channel), want);
    // A peer joins ahead of us: now third of five.
    peers.insert("client-0", 1);
    let want = expected(s, SubsetClient::Index { index: 2, count: 5 }, &all);
    settle(|| held(&channel) == want).await;
    assert_eq!(held(&channel), want);
    assert!(call(&channel, None).await.is_ok());
}
