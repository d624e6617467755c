//! Wait-for-ready per call (grpc-go's `WaitForReady` call option and service config
//! `methodConfig.waitForReady`) against real tonic servers: in TRANSIENT_FAILURE a fail-fast RPC
//! fails at once with UNAVAILABLE, a wait-for-ready RPC waits — and succeeds if a backend comes
//! up within its deadline, or ends with DEADLINE_EXCEEDED at its deadline.
//!
//! "At once" is shown by the outcome, not a stopwatch: a fail-fast call carries a 30 s deadline
//! and must end with UNAVAILABLE "failing" within the test's 10 s (a wait would end at the
//! deadline, or at the channel's wait bound with "no endpoint became ready within").

mod support;

use std::time::{Duration, Instant};

use pickwise_tonic::{BalancedChannel, Builder, WaitForReady};
use support::backend::Backend;
use support::client::*;
use tonic::Code;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// Backends that were started and killed: their ports refuse connections.
fn refusing(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|_| {
            let mut b = Backend::start();
            b.kill();
            b
        })
        .collect()
}

/// One Health/Check with a deadline and, optionally, a `WaitForReady` extension; returns the
/// result and how long it took.
async fn check(
    channel: &BalancedChannel,
    timeout: Duration,
    wait: Option<bool>,
) -> (Result<(), tonic::Status>, Duration) {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(timeout);
    if let Some(w) = wait {
        req.extensions_mut().insert(WaitForReady(w));
    }
    let start = Instant::now();
    let res = HealthClient::new(channel.clone()).check(req).await.map(|_| ());
    (res, start.elapsed())
}

/// Waits until a fail-fast call fails with UNAVAILABLE (every endpoint has failed to connect:
/// sticky TRANSIENT_FAILURE), probing every few ms; fails the test after 10 s.
async fn until_failing(channel: &BalancedChannel) {
    let end = Instant::now() + PATIENCE;
    while Instant::now() < end {
        if let (Err(s), _) = check(channel, Duration::from_millis(200), Some(false)).await {
            if s.code() == Code::Unavailable {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the channel never reached TRANSIENT_FAILURE");
}

/// A call (30 s deadline, `wait` as given) that must fail at once: UNAVAILABLE because every
/// endpoint is failing, within the test's 10 s.
async fn fails_at_once(channel: &BalancedChannel, wait: Option<bool>) {
    let (res, took) = tokio::time::timeout(PATIENCE, check(channel, LONG_DEADLINE, wait))
        .await
        .expect("a fail-fast call waits");
    let err = res.expect_err("no endpoint");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("failing"),
        "fail-fast after {took:?}: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_fails_at_once_and_wait_for_ready_waits_to_its_deadline() {
    let _serial = serial().await;
    let dead = refusing(2);
    let channel = builder().build_static(addrs(&dead));
    until_failing(&channel).await;

    // Default (nothing set) and explicit fail-fast: UNAVAILABLE at once, despite the deadline.
    for wait in [None, Some(false)] {
        fails_at_once(&channel, wait).await;
    }

    // Wait-for-ready: waits to its own deadline, then DEADLINE_EXCEEDED (not the channel's 3 s
    // wait bound, which ends in UNAVAILABLE; not at once: the deadline is a lower bound).
    let (res, took) = check(&channel, Duration::from_millis(400), Some(true)).await;
    let err = res.expect_err("nothing comes up");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        took >= Duration::from_millis(380),
        "wait-for-ready ended early: {took:?}"
    );
    assert_no_in_flight(&channel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_ready_succeeds_when_a_backend_starts_within_its_deadline() {
    let _serial = serial().await;
    let mut backends = refusing(1);
    let channel = builder().build_static(addrs(&backends));
    until_failing(&channel).await;

    let waiting = {
        let channel = channel.clone();
        tokio::spawn(async move { check(&channel, LONG_DEADLINE, Some(true)).await })
    };
    // The scenario: the backend stays down for 500 ms while the call waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile a fail-fast call still fails at once.
    fails_at_once(&channel, None).await;
    assert!(!waiting.is_finished(), "the wait-for-ready call waits");

    backends[0].restart();
    let (res, took) = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("not served after the backend came up")
        .unwrap();
    res.expect("served once the backend is up");
    // It waited through the downtime (a lower bound).
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(backends[0].hits() >= 1);
    assert_no_in_flight(&channel);
}

/// `methodConfig.waitForReady` applies per method; a request's `WaitForReady` overrides it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_config_makes_a_method_wait_for_ready() {
    let _serial = serial().await;
    let dead = refusing(1);
    let config = r#"{"methodConfig":[
        {"name":[{"service":"grpc.health.v1.Health","method":"Check"}],"waitForReady":true},
        {"name":[{}],"waitForReady":false}]}"#;
    let channel = builder()
        .service_config(config)
        .expect("valid service config")
        .build_static(addrs(&dead));
    until_failing(&channel).await;

    // Check is wait-for-ready by its method config: it waits to its deadline.
    let (res, took) = check(&channel, Duration::from_millis(300), None).await;
    assert_eq!(res.expect_err("down").code(), Code::DeadlineExceeded);
    assert!(took >= Duration::from_millis(280), "{took:?}");
    // The request's extension wins.
    fails_at_once(&channel, Some(false)).await;

    // A channel without the method config keeps today's behaviour: fail fast.
    let plain = Builder::new()
        .backoff(fast_backoff())
        .connect_timeout(Duration::from_secs(1))
        .build_static(addrs(&dead));
    until_failing(&plain).await;
    fails_at_once(&plain, None).await;
}
