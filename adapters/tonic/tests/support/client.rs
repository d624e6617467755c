//! The client side of the integration tests: one-at-a-time gate, a builder with test timings,
//! one Health/Check call, load loops and assertions.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pickwise_tonic::{Backoff, BalancedChannel, Builder};
use tonic::Code;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use super::backend::Backend;

/// These tests measure time (fail-fast bounds, shares under load) on a 2-core CI machine; running
/// them one at a time keeps those measurements about the balancer, not about CPU contention.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    GATE.lock().await
}

pub fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(50),
        multiplier: 1.6,
        jitter: 0.2,
        max: Duration::from_millis(300),
    }
}

pub fn builder() -> Builder {
    Builder::new()
        .backoff(fast_backoff())
        .connect_timeout(Duration::from_secs(1))
        .wait_for_ready(Duration::from_secs(3))
}

/// One Health/Check; returns the serving backend's address or the status.
pub async fn call(channel: &BalancedChannel, header: Option<&str>) -> Result<String, tonic::Status> {
    let mut client = HealthClient::new(channel.clone());
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(v) = header {
        req.metadata_mut().insert("x-user", v.parse().unwrap());
    }
    let resp = client.check(req).await?;
    Ok(resp
        .metadata()
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default())
}

pub fn addrs(backends: &[Backend]) -> Vec<String> {
    backends.iter().map(|b| b.addr.to_string()).collect()
}

/// Runs `concurrency` loops of calls for `dur`; returns (per-backend counts, errors).
pub async fn load(
    channel: &BalancedChannel,
    concurrency: usize,
    dur: Duration,
) -> (HashMap<String, u64>, u64) {
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + dur;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (ch, errors) = (channel.clone(), errors.clone());
            tokio::spawn(async move {
                let mut seen: HashMap<String, u64> = HashMap::new();
                while Instant::now() < deadline {
                    match call(&ch, None).await {
                        Ok(b) => *seen.entry(b).or_default() += 1,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut total: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    (total, errors.load(Ordering::Relaxed))
}

/// One call that must fail with UNAVAILABLE within `limit`; returns its status.
pub async fn unavailable_within(channel: &BalancedChannel, limit: Duration) -> tonic::Status {
    let start = Instant::now();
    let err = call(channel, None).await.expect_err("the call should fail");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        start.elapsed() < limit,
        "took {:?} (limit {limit:?}): {err:?}",
        start.elapsed()
    );
    err
}

pub fn assert_no_in_flight(channel: &BalancedChannel) {
    for s in channel.stats() {
        assert_eq!(s.in_flight, 0, "{} still has requests in flight", s.address);
    }
}
