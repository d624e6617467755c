//! Wait-for-ready per call (grpc-go's `WaitForReady` call option and service config
//! `methodConfig.waitForReady`) against real tonic servers: in TRANSIENT_FAILURE a fail-fast RPC
//! fails at once with UNAVAILABLE, a wait-for-ready RPC waits — and succeeds if a backend comes
//! up within its deadline, or ends with DEADLINE_EXCEEDED at its deadline.

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
/// sticky TRANSIENT_FAILURE), at most 3 s.
async fn until_failing(channel: &BalancedChannel) {
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if let (Err(s), _) = check(channel, Duration::from_millis(200), Some(false)).await {
            if s.code() == Code::Unavailable {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the channel never reached TRANSIENT_FAILURE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_fails_at_once_and_wait_for_ready_waits_to_its_deadline() {
    let _serial = serial().await;
    let dead = refusing(2);
    let channel = builder().build_static(addrs(&dead));
    until_failing(&channel).await;

    // Default (nothing set) and explicit fail-fast: UNAVAILABLE at once, deadline or not.
    for wait in [None, Some(false)] {
        let (res, took) = check(&channel, Duration::from_secs(2), wait).await;
        let err = res.expect_err("no endpoint");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(took < Duration::from_millis(200), "fail-fast took {took:?}");
    }

    // Wait-for-ready: waits to its own deadline, then DEADLINE_EXCEEDED (not the channel's 3 s
    // wait bound, not at once).
    let (res, took) = check(&channel, Duration::from_millis(400), Some(true)).await;
    let err = res.expect_err("nothing comes up");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        took >= Duration::from_millis(380) && took < Duration::from_millis(1500),
        "wait-for-ready took {took:?}"
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
        tokio::spawn(async move { check(&channel, Duration::from_secs(4), Some(true)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile a fail-fast call still fails at once.
    let (res, took) = check(&channel, Duration::from_secs(2), None).await;
    assert_eq!(res.expect_err("still down").code(), Code::Unavailable);
    assert!(took < Duration::from_millis(200), "fail-fast took {took:?}");
    assert!(!waiting.is_finished(), "the wait-for-ready call waits");

    backends[0].restart();
    let (res, took) = waiting.await.unwrap();
    res.expect("served once the backend is up");
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
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let (res, _) = check(&channel, Duration::from_millis(100), Some(false)).await;
        if res.is_err_and(|s| s.code() == Code::Unavailable) {
            break;
        }
        assert!(Instant::now() < end, "never failing");
    }

    // Check is wait-for-ready by its method config: it waits to its deadline.
    let (res, took) = check(&channel, Duration::from_millis(300), None).await;
    assert_eq!(res.expect_err("down").code(), Code::DeadlineExceeded);
    assert!(took >= Duration::from_millis(280), "{took:?}");
    // The request's extension wins.
    let (res, took) = check(&channel, Duration::from_millis(300), Some(false)).await;
    assert_eq!(res.expect_err("down").code(), Code::Unavailable);
    assert!(took < Duration::from_millis(200), "{took:?}");

    // A channel without the method config keeps today's behaviour: fail fast.
    let plain = Builder::new()
        .backoff(fast_backoff())
        .connect_timeout(Duration::from_secs(1))
        .build_static(addrs(&dead));
    until_failing(&plain).await;
    let (res, took) = check(&plain, Duration::from_millis(300), None).await;
    assert_eq!(res.expect_err("down").code(), Code::Unavailable);
    assert!(took < Duration::from_millis(200), "{took:?}");
}
