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

async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    settle().await;
    // Added.
    cp.set(resources::endpoints(
        "backends",
        &[Locality::new(1, 0, &[&a0, &a1, &a2])],
    ));
    settle().await;
    load.reset();
    settle().await;
    let phase = load.reset();
    assert!(
        phase.get(&a2).copied().unwrap_or(0) > 10,
        "added endpoint gets traffic: {phase:?}"
    );
    // Drained: health DRAINING leaves the picker.
    let mut drained = Locality::new(1, 0, &[&a0, &a1, &a2]);
    drained.endpoints[0].2 = 3;
    cp.set(resources::endpoints("backends", &[drained]));
    settle().await;
    load.reset();
    settle().await;
    let phase = load.reset();
    assert_eq!(phase.get(&a0), None, "drained endpoint still served: {phase:?}");
    // Re-weighted by locality: 3:1.
    cp.set(resources::endpoints(
        "backends",
        &[Locality::new(3, 0, &[&a1]), Locality::new(1, 0, &[&a2])],
    ));
    settle().await;
    load.reset();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let phase = load.reset();
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
    let conns: Vec<u64> = b.iter().map(Backend::connections).collect();
    let load = Load::start(&ch, 4);
    settle().await;
    cp.set(resources::cluster(
        "backends",
        Policy::RingHash { min: 1024, max: 4096 },
    ));
    assert!(
        ch.wait_for(Duration::from_secs(3), |s| s.clusters[0].1
            == Some("ring_hash_experimental"))
            .await
    );
    settle().await;
    cp.set(resources::cluster("backends", Policy::Maglev(65_537)));
    assert!(
        ch.wait_for(Duration::from_secs(3), |s| s.clusters[0].1 == Some("maglev"))
            .await
    );
    settle().await;
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
    // Failover: priority 0's only endpoint dies.
    b[0].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (seen, errors) = spread(&ch, 50).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(seen.get(&a1), Some(&50), "failover to priority 1: {seen:?}");
    // Failback as soon as it is ready again.
    b[0].restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if call(&ch, None).await.unwrap() == a0 {
            break;
        }
        assert!(Instant::now() < deadline, "no failback");
        tokio::time::sleep(Duration::from_millis(50)).await;
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
    settle().await;
    cp.set(resources::endpoints(
        "backends",
        &[Locality::new(1, 0, &[&a1, &a2])],
    ));
    settle().await;
    load.reset();
    settle().await;
    let phase = load.reset();
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
    assert!(
        ch.wait_for(Duration::from_secs(3), |s| s.last_nack.is_some())
            .await
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while cp.nacks().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    // Bytes that are not a Cluster at all: NACKed too, never a panic.
    cp.set_any(
        ResourceType::Cluster,
        "junk",
        envoy_types::pb::google::protobuf::Any {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            value: vec![0xff, 0xff, 0xff],
        },
    );
    cp.set(resources::endpoints("backends", &[Locality::new(1, 0, &[&a])]));
    let (_, errors) = spread(&ch, 20).await;
    assert!(errors.is_empty());
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
    assert!(ch.wait_for(Duration::from_secs(3), |s| !s.connected).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Changed while the client cannot see it.
    cp.set(resources::endpoints("backends", &[Locality::new(1, 0, &[&a1])]));
    cp.restart().await.unwrap();
    assert!(ch.wait_for(Duration::from_secs(5), |s| s.connected).await);
    let deadline = Instant::now() + Duration::from_secs(5);
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
    let t = Instant::now();
    let err = call(&ch, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("does not exist"), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    // A cluster deleted from CDS: its requests fail, naming it.
    let ch = channel(&cp);
    call(&ch, None).await.unwrap();
    cp.remove(ResourceType::Cluster, "backends");
    assert!(
        ch.wait_for(Duration::from_secs(3), |s| s.clusters[0].1.is_none())
            .await
    );
    let err = call(&ch, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("backends") && err.message().contains("does not exist"),
        "{err:?}"
    );
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
    settle().await;
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
    cp.set(cluster);
    settle().await;
    b.set_delay(200);
    let (r1, r2) = tokio::join!(call(&ch, None), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        call(&ch, None).await
    });
    assert!(r1.is_ok());
    let e = r2.unwrap_err();
    assert!(e.message().contains("max_requests"), "{e:?}");
    b.set_delay(0);
    // The slot came back.
    call(&ch, None).await.unwrap();
}

/// How long an EDS change takes to reach the picker: from the control plane's send to the
/// cluster balancer's statistics showing the new weight. Printed for the closing note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_change_reaches_the_picker_in_milliseconds() {
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
        loop {
            if cluster.stats().iter().any(|s| s.weight == w) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "change {i} never arrived"
            );
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        let sent = cp
            .sent_at(ResourceType::ClusterLoadAssignment, v)
            .unwrap_or(start.into());
        lat.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    eprintln!(
        "EDS change -> picker: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {}",
        p(0.5),
        p(0.99),
        p(1.0),
        lat.len()
    );
    assert!(p(0.5) < 1000.0);
}
