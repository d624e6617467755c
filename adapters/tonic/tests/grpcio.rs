//! The balancer against gRPC C-core servers (Python `grpcio`, separate processes), as a user
//! would run it in front of grpc-go or C++ services: spread, a killed process, deadlines.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pickwise_tonic::{BalancedChannel, ConnectivityState, OutlierConfig, Policy};
use support::client::*;
use support::grpcio::CoreServer;
use support::net::PausableProxy;
use tonic::Code;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

fn servers(n: usize, delay_ms: u64) -> Option<Vec<CoreServer>> {
    (0..n).map(|_| CoreServer::start(delay_ms)).collect()
}

async fn check(
    channel: &BalancedChannel,
    timeout: Option<Duration>,
) -> Result<tonic::metadata::MetadataMap, tonic::Status> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    Ok(HealthClient::new(channel.clone())
        .check(req)
        .await?
        .metadata()
        .clone())
}

fn backend_of(md: &tonic::metadata::MetadataMap) -> String {
    md.get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_core_servers_share_load_and_a_killed_one_leaves() {
    let _serial = serial().await;
    let Some(mut core) = servers(3, 0) else { return };
    let channel = builder()
        .p2c(Policy::LeastRequest)
        .build_static(core.iter().map(|s| s.addr.clone()));
    assert_eq!(channel.wait_ready(3, Duration::from_secs(10)).await, 3);
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..300 {
        *seen
            .entry(backend_of(&check(&channel, None).await.unwrap()))
            .or_default() += 1;
    }
    for s in &core {
        assert!(seen.get(&s.addr).copied().unwrap_or(0) > 30, "{seen:?}");
    }
    let dead = core[0].addr.clone();
    core[0].kill();
    let deadline = Instant::now() + Duration::from_secs(3);
    while channel.ready_endpoints() > 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(channel.ready_endpoints(), 2, "the killed process left the picker");
    for _ in 0..100 {
        let md = check(&channel, Some(Duration::from_secs(2)))
            .await
            .expect("no errors after it left");
        assert_ne!(backend_of(&md), dead);
    }
    assert_no_in_flight(&channel);
}

/// The C-core server sees what remains of the deadline after the wait for a ready endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_core_server_sees_the_remaining_deadline() {
    let _serial = serial().await;
    let Some(core) = servers(1, 0) else { return };
    let proxy = PausableProxy::start(core[0].addr.parse().unwrap(), true);
    let channel = builder().build_static([proxy.addr.to_string()]);
    let started = Instant::now();
    let waiting = {
        let ch = channel.clone();
        tokio::spawn(async move { check(&ch, Some(Duration::from_secs(2))).await })
    };
    // The scenario: the request waits at least 400 ms for a ready endpoint.
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.pause(false);
    let md = waiting.await.unwrap().expect("served once ready");
    let total = started.elapsed().as_millis() as u64;
    let left: u64 = md
        .get("x-time-remaining-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Sent after the wait, so at most 2000 - 400 remain (+ rounding); and no less than what
    // the whole call left (the server cannot have seen less than the call had).
    assert!(
        left <= 1600 + 5 && left + 5 >= 2000u64.saturating_sub(total),
        "the server saw {left} ms of a 2 s deadline; the call took {total} ms after a 400 ms wait"
    );
}

/// Short deadlines against a slow C-core server: DEADLINE_EXCEEDED each time, one connection
/// kept, no picker churn, and the failures feed the cost policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_deadlines_keep_the_c_core_connection() {
    let _serial = serial().await;
    let Some(core) = servers(1, 30) else { return };
    let channel = builder()
        .outlier(OutlierConfig::disabled())
        .build_static([core[0].addr.clone()]);
    assert_eq!(channel.wait_ready(1, Duration::from_secs(10)).await, 1);
    let pickers = channel.picker_version();
    for _ in 0..30 {
        let err = check(&channel, Some(Duration::from_millis(10)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    }
    assert_eq!(channel.picker_version(), pickers, "no reconnects, no new pickers");
    let s = &channel.stats()[0];
    assert_eq!((s.state, s.failures), (ConnectivityState::Ready, 30));
    check(&channel, Some(Duration::from_secs(2)))
        .await
        .expect("the connection still serves");
}
