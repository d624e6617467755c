//! pickwise-xds against the in-process ADS control plane and real tonic backends on loopback:
//! resources change under load (endpoints added, drained, re-weighted; policy switch; a locality
//! going away; priority failover and failback; a NACKed resource; the control plane restarted).

mod support;

use std::time::{Duration, Instant};

use pickwise_xds::control_plane::resources::{self, Locality, Policy};
use pickwise_xds::resource::ResourceType;
use support::backend::Backend;
use support::*;
use tonic::Code;

fn addr(b: &Backend) -> String {
    b.addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_lds_rds_cds_eds_and_acks_each() {
    let _s = serial().await;
    let (_backends, addrs) = backends(3);
    let a: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let cp = control_plane(Policy::RoundRobin, &[Locality::new(1, 0, &a)]).await;
    let ch = channel(&cp);
    let (seen, errors) = spread(&ch, 300).await;
    assert!(errors.is_empty(), "{errors:?}");
    for x in &addrs {
        assert!((90..=110).contains(&seen[x]), "round robin: {seen:?}");
    }
    let status = ch.status();
    assert!(status.connected && status.routes_ready, "{status:?}");
    assert_eq!(
        status.clusters,
        vec![("backends".to_string(), Some("round_robin"))]
    );
    let kinds: Vec<&str> = cp
        .replies()
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| r.kind)
        .collect();
    for k in ["LDS", "RDS", "CDS", "EDS"] {
        assert!(kinds.contains(&k), "no {k} ACK in {kinds:?}");
    }
    assert!(cp.nacks().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_added_drained_and_reweighted_under_load() {
    let _s = serial().await;
    let (_backends, a) = backends(3);
    let (a0, a1, a2) = (a[0].clone(), a[1].clone(), a[2].clone());
    let cp = control_plane(Policy::RoundRobin, &[Locality::new(1, 0, &[&a0, &a1])]).await;
    let ch = channel(&cp);
    call(&ch, None).await.unwrap();
    let load = Load::start(&ch, 4);
    load.calls(20).await;
    // Added.
    cp.set(resources::endpoints(
        "backends",
        &[Locality::new(1, 0, &[&a0, &a1, &a2])],
    ));
    picker_holds(&ch, "backends", &[&a0, &a1, &a2]).await;
    let phase = load.phase(300).await;
    assert!(
        phase.get(&a2).copied().unwrap_or(0) > 60,
        "added endpoint gets its third: {phase:?}"
    );
    // Drained: health DRAINING leaves the picker.
    let mut drained = Locality::new(1, 0, &[&a0, &a1, &a2]);
    drained.endpoints[0].2 = 3;
    cp.set(resources::endpoints("backends", &[drained]));
    picker_holds(&ch, "backends", &[&a1, &a2]).await;
    let phase = load.phase(200).await;
    assert_eq!(phase.get(&a0), None, "drained endpoint still served: {phase:?}");
    // Re-weighted by locality: 3:1.
    cp.set(resources::endpoints(
        "backends",
        &[Locality::new(3, 0, &[&a1]), Locality::new(1, 0, &[&a2])],
    ));
    until("the picker to weigh the localities 3:1", || {
        picker_of(&ch, "backends").is_some_and(|p| {
            p.len() == 2 && {
                let w = |a: &str| p.iter().find(|e| e.0 == a).map_or(0, |e| e.1);
                w(&a1) == 3 * w(&a2)
            }
        })
    })
    .await;
    let phase = load.phase(800).await;
    let ratio = phase[&a1] as f64 / phase[&a2] as f64;
    assert!((2.5..3.6).contains(&ratio), "3:1 locality weights gave {phase:?}");
    let errors = load.stop().await;
    assert!(errors.is_empty(), "errors under changes: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_switch_keeps_connections_and_requests() {
    let _s = serial().await;
    let (b, addrs) = backends(3);
    let a: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let cp = control_plane(Policy::LeastRequest, &[Locality::new(1, 0, &a)]).await;
    let ch = channel(&cp);
    spread(&ch, 30).await;
    // Every endpoint connected before counting connections.
    picker_holds(&ch, "backends", &a).await;
    let conns: Vec<u64> = b.iter().map(Backend::connections).collect();
    assert_eq!(conns, [1, 1, 1]);
    let load = Load::start(&ch, 4);
    load.calls(50).await;
    cp.set(resources::cluster(
        "backends",
        Policy::RingHash { min: 1024, max: 4096 },
    ));
    assert!(
        ch.wait_for(PATIENCE, |s| s.clusters[0].1 == Some("ring_hash_experimental"))
            .await
    );
    // Requests on the new policy, then the next switch.
    load.barrier().await;
    load.calls(50).await;
    cp.set(resources::cluster("backends", Policy::Maglev(65_537)));
    assert!(ch.wait_for(PATIENCE, |s| s.clusters[0].1 == Some("maglev")).await);
    load.barrier().await;
    load.calls(50).await;
    let errors = load.stop().await;
    assert!(errors.is_empty(), "{errors:?}");
    let after: Vec<u64> = b.iter().map(Backend::connections).collect();
    assert_eq!(conns, after, "a policy switch must not reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_failover_and_failback() {
    let _s = serial().await;
    let (mut b, a) = backends(2);
    let (a0, a1) = (a[0].clone(), a[1].clone());
    let cp = control_plane(
        Policy::RoundRobin,
        &[Locality::new(1, 0, &[&a0]), Locality::new(1, 1, &[&a1])],
    )
    .await;
    let ch = channel(&cp);
    let (seen, errors) = spread(&ch, 50).await;
    assert!(errors.is_empty());
    assert_eq!(seen.get(&a0), Some(&50), "priority 0 serves: {seen:?}");
    // Failover: priority 0's only endpoint dies. Wait until its failure is seen (a call served
    // by priority 1), then every call must go there.
    b[0].kill();
    let deadline = Instant::now() + PATIENCE;
    // A call racing the kill may meet the dying connection (a transport error): not yet failover.
    while call(&ch, None).await.ok().as_ref() != Some(&a1) {
        assert!(Instant::now() < deadline, "no failover");
    }
    let (seen, errors) = spread(&ch, 50).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(seen.get(&a1), Some(&50), "failover to priority 1: {seen:?}");
    // Failback as soon as it is ready again.
    b[0].restart();
    let deadline = Instant::now() + PATIENCE;
    while call(&ch, None).await.unwrap() != a0 {
        assert!(Instant::now() < deadline, "no failback");
    }
    let (seen, _) = spread(&ch, 50).await;
    assert_eq!(seen.get(&a0), Some(&50), "failback: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locality_going_away_moves_its_traffic() {
    let _s = serial().await;
    let (_backends, a) = backends(3);
    let (a0, a1, a2) = (a[0].clone(), a[1].clone(), a[2].clone());
    let cp = control_plane(
        Policy::RoundRobin,
        &[Locality::new(1, 0, &[&a0]), Locality::new(1, 0, &[&a1, &a2])],
    )
    .await;
    let ch = channel(&cp);
    call(&ch, None).await.unwrap();
    let load = Load::start(&ch, 4);
    load.calls(20).await;
    cp.set(resources::endpoints(
        "backends",
        &[Locality::new(1, 0, &[&a1, &a2])],
    ));
    picker_holds(&ch, "backends", &[&a1, &a2]).await;
    let phase = load.phase(200).await;
    assert_eq!(phase.get(&a0), None, "{phase:?}");
    let errors = load.stop().await;
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_resource_is_nacked_and_the_last_good_one_kept() {
    let _s = serial().await;
    let b = Backend::start();
    let a = addr(&b);
    let cp = control_plane(Policy::RoundRobin, &[Locality::new(1, 0, &[&a])]).await;
    let ch = channel(&cp);
    call(&ch, None).await.unwrap();
    // min > max: gRPC NACKs this cluster.
    cp.set(resources::cluster(
        "backends",
        Policy::RingHash { min: 5000, max: 10 },
    ));
    assert!(ch.wait_for(PATIENCE, |s| s.last_nack.is_some()).await);
    until("the control plane to receive the NACK", || !cp.nacks().is_empty()).await;
    let nacks = cp.nacks();
    assert_eq!(nacks.len(), 1, "{nacks:?}");
    assert_eq!(nacks[0].kind, "CDS");
    assert!(
        nacks[0].error.as_deref().unwrap().contains("backends"),
        "{nacks:?}"
    );
    // The NACK carries the last accepted version, not the rejected one.
    assert_ne!(nacks[0].version, cp.version(ResourceType::Cluster).to_string());
    let (_, errors) = spread(&ch, 20).await;
    assert!(errors.is_empty(), "last good cluster keeps serving: {errors:?}");
    assert_eq!(ch.status().clusters[0].1, Some("round_robin"));
    // Bytes that are not a Cluster at all, served as the subscribed cluster (a control plane
    // sends only subscribed names): NACKed too, with the reason; never a panic.
    let accepted = nacks[0].version.clone();
    cp.set_any(
        ResourceType::Cluster,
        "backends",
        envoy_types::pb::google::protobuf::Any {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            value: vec![0xff, 0xff, 0xff],
        },
    );
    let junk_nack = || {
        cp.nacks()
            .into_iter()
            .find(|r| r.error.as_deref().is_some_and(|e| e.contains("cannot decode")))
    };
    until("a NACK of the junk", || junk_nack().is_some()).await;
    let junk = junk_nack().unwrap();
    assert_eq!(junk.kind, "CDS", "{junk:?}");
    assert_eq!(junk.version, accepted, "still the last accepted version");
    assert!(
        ch.wait_for(PATIENCE, |s| s
            .last_nack
            .as_deref()
            .is_some_and(|n| n.contains("cannot decode")))
            .await
    );
    // Its name is unreadable, so the state-of-the-world response no longer holds the cluster:
    // it counts as deleted, as in C-core (differential scenario ads_undecodable_cluster_fails_rpcs).
    assert!(
        ch.wait_for(PATIENCE, |s| s.clusters[0].1.is_none()).await,
        "{:?}",
        ch.status()
    );
    // A valid cluster again: served once the client ACKed it and published it.
    let v = cp.version(ResourceType::Cluster);
    cp.set(resources::cluster("backends", Policy::RoundRobin));
    acked(&cp, ResourceType::Cluster, v + 1).await;
    assert!(
        ch.wait_for(PATIENCE, |s| s.clusters[0].1 == Some("round_robin"))
            .await
    );
    let (_, errors) = spread(&ch, 20).await;
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_keeps_serving_and_resubscribes() {
    let _s = serial().await;
    let (_backends, a) = backends(2);
    let (a0, a1) = (a[0].clone(), a[1].clone());
    let mut cp = control_plane(Policy::RoundRobin, &[Locality::new(1, 0, &[&a0])]).await;
    let ch = channel(&cp);
    call(&ch, None).await.unwrap();
    let load = Load::start(&ch, 2);
    cp.stop().await;
    assert!(ch.wait_for(PATIENCE, |s| !s.connected).await);
    // Calls served while the control plane is away.
    load.calls(50).await;
    // Changed while the client cannot see it.
    cp.set(resources::endpoints("backends", &[Locality::new(1, 0, &[&a1])]));
    cp.restart().await.unwrap();
    assert!(ch.wait_for(PATIENCE, |s| s.connected).await);
    let deadline = Instant::now() + PATIENCE;
    while call(&ch, None).await.unwrap() != a1 {
        assert!(Instant::now() < deadline, "no update after the restart");
    }
    let errors = load.stop().await;
    assert!(
        errors.is_empty(),
        "cached resources serve while the control plane is away: {errors:?}"
    );
    assert!(cp.streams() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_resources_fail_with_unavailable() {
    let _s = serial().await;
    let b = Backend::start();
    let a = addr(&b);
    let cp = control_plane(Policy::RoundRobin, &[Locality::new(1, 0, &[&a])]).await;
    // No such listener: UNAVAILABLE after the does-not-exist timer.
    let ch = builder(&cp)
        .resource_timeout(Duration::from_millis(300))
        .build("xds:///nobody")
        .unwrap();
    // The call's deadline is 5 s: UNAVAILABLE (not DEADLINE_EXCEEDED) means the timer fired.
    let err = call(&ch, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("does not exist"), "{err:?}");
    // A cluster deleted from CDS: its requests fail, naming it.
    let ch = channel(&cp);
    call(&ch, None).await.unwrap();
    cp.remove(ResourceType::Cluster, "backends");
    assert!(ch.wait_for(PATIENCE, |s| s.clusters[0].1.is_none()).await);
    let err = call(&ch, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("backends") && err.message().contains("does not exist"),
        "{err:?}"
    );
    // The listener deleted from LDS (SotW: absent from a response): the routes go, requests
    // fail naming it, and it serves again once it is back.
    cp.set(resources::cluster("backends", Policy::RoundRobin));
    assert!(ch.wait_for(PATIENCE, |s| s.clusters[0].1.is_some()).await);
    call(&ch, None).await.unwrap();
    cp.remove(ResourceType::Listener, NAME);
    assert!(
        ch.wait_for(PATIENCE, |s| !s.routes_ready
            && s.error.as_deref().is_some_and(|e| e.contains("does not exist")))
            .await,
        "{:?}",
        ch.status()
    );
    let err = call(&ch, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains(NAME) && err.message().contains("does not exist"),
        "{err:?}"
    );
    cp.set(resources::listener(NAME, "routes"));
    assert!(ch.wait_for(PATIENCE, |s| s.routes_ready).await);
    call(&ch, None).await.unwrap();
    // No bootstrap server at all: requests wait for their deadline, then say why.
    let dead = XdsBuilderExt::unreachable();
    let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
    req.set_timeout(Duration::from_millis(300));
    let err = tonic_health::pb::health_client::HealthClient::new(dead)
        .check(req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
}

struct XdsBuilderExt;

impl XdsBuilderExt {
    fn unreachable() -> pickwise_xds::XdsChannel {
        let b = pickwise_xds::Bootstrap::from_json(
            r#"{"xds_servers":[{"server_uri":"127.0.0.1:1","channel_creds":[{"type":"insecure"}]}]}"#,
        )
        .unwrap();
        pickwise_xds::XdsBuilder::new()
            .bootstrap(b)
            .build("xds:///x")
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_overloads_and_the_circuit_breaker() {
    let _s = serial().await;
    let b = Backend::start();
    let a = addr(&b);
    let cp = control_plane(Policy::RoundRobin, &[Locality::new(1, 0, &[&a])]).await;
    let ch = channel(&cp);
    call(&ch, None).await.unwrap();
    let mut cla = resources::endpoints("backends", &[Locality::new(1, 0, &[&a])]);
    cla.policy = Some(
        envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy {
            drop_overloads: vec![
                envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::policy::DropOverload {
                    category: "lb".into(),
                    drop_percentage: Some(envoy_types::pb::envoy::r#type::v3::FractionalPercent {
                        numerator: 50,
                        denominator: 0,
                    }),
                },
            ],
            ..Default::default()
        },
    );
    cp.set(cla);
    // Applied once a call is dropped (calls are served until then).
    let deadline = Instant::now() + PATIENCE;
    while call(&ch, None).await.is_ok() {
        assert!(Instant::now() < deadline, "drop_overloads never applied");
    }
    let (seen, errors) = spread(&ch, 400).await;
    let dropped = errors.iter().filter(|e| e.message().contains("drop")).count();
    assert!(
        (140..=260).contains(&dropped),
        "50% drops: {dropped} of 400 ({seen:?})"
    );
    // Circuit breaker: one request in flight at most.
    cp.set(resources::endpoints("backends", &[Locality::new(1, 0, &[&a])]));
    let mut cluster = resources::cluster("backends", Policy::RoundRobin);
    cluster.circuit_breakers = Some(envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers {
        thresholds: vec![
            envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds {
                max_requests: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 1 }),
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    let cds = cp.version(ResourceType::Cluster);
    cp.set(cluster);
    acked(&cp, ResourceType::Cluster, cds + 1).await;
    // Applied once a second call, made while one is in flight, is refused. The first call is
    // held by the backend's delay; the second starts once the balancer counts the first.
    b.set_delay(300);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let first = tokio::spawn({
            let ch = ch.clone();
            async move { call(&ch, None).await }
        });
        until("the first call to be in flight", || {
            ch.cluster("backends")
                .is_some_and(|c| c.stats().iter().any(|s| s.in_flight == 1))
        })
        .await;
        let second = call(&ch, None).await;
        assert!(first.await.unwrap().is_ok());
        match second {
            Err(e) if e.message().contains("max_requests") => break,
            other => assert!(Instant::now() < deadline, "max_requests never applied: {other:?}"),
        }
    }
    b.set_delay(0);
    // The slot came back.
    call(&ch, None).await.unwrap();
}

/// Every EDS change reaches the picker, in order: 200 re-weights, each seen in the cluster
/// balancer's statistics before the next is sent. The time from the control plane's send to the
/// picker is printed (measured here in a debug build on a shared machine; not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_eds_change_reaches_the_picker() {
    let _s = serial().await;
    let (_backends, a) = backends(2);
    let (a0, a1) = (a[0].clone(), a[1].clone());
    let cp = control_plane(
        Policy::RingHash { min: 1024, max: 4096 },
        &[Locality::new(1, 0, &[&a0, &a1])],
    )
    .await;
    let ch = channel(&cp);
    call(&ch, None).await.unwrap();
    let cluster = ch.cluster("backends").unwrap();
    let mut lat = Vec::new();
    for i in 0..200u32 {
        let w = 2 + i;
        cp.set(resources::endpoints(
            "backends",
            &[Locality::new(w, 0, &[&a0, &a1])],
        ));
        let v = cp.version(ResourceType::ClusterLoadAssignment);
        let start = Instant::now();
        until(&format!("change {i} (weight {w}) in the picker"), || {
            let stats = cluster.stats();
            stats.len() == 2 && stats.iter().all(|s| s.weight == w)
        })
        .await;
        let sent = cp
            .sent_at(ResourceType::ClusterLoadAssignment, v)
            .unwrap_or(start.into());
        lat.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    // The client ACKed the last one.
    acked(
        &cp,
        ResourceType::ClusterLoadAssignment,
        cp.version(ResourceType::ClusterLoadAssignment),
    )
    .await;
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    eprintln!(
        "EDS change -> picker (debug build, not asserted): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {}",
        p(0.5),
        p(0.99),
        p(1.0),
        lat.len()
    );
}
