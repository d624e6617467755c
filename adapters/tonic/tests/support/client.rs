//! The client side of the integration tests: one-at-a-time gate, a builder with test timings,
//! one Health/Check call, load loops, waits on observable state and assertions.
//!
//! No test asserts a wall-clock bound (debug builds on a 2-core CI machine): a test waits for the
//! state it needs with [`until`] (or `wait_ready`), and "at once" means "without waiting", shown
//! by what the call returned (see [`unavailable_at_once`]), not by a stopwatch.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pickwise_tonic::{Backoff, BalancedChannel, Builder};
use tonic::Code;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use super::backend::Backend;

/// These tests start servers and measure shares under load on a 2-core CI machine; running them
/// one at a time keeps those shares about the balancer, not about CPU contention.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    GATE.lock().await
}

/// How long a test waits for a state it expects (a connection, a picker, a counter): generous, so
/// that a slow machine only makes the test slower; reaching it fails the test.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Polls `cond` every 5 ms until it holds; panics after `timeout`, naming `what`.
pub async fn until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `fut` once and checks it is still pending: whatever its first poll does at once (a
/// channel's `call`: the pick, reading the deadline, routing) has happened when this returns.
pub async fn first_poll<F: std::future::Future + Unpin>(fut: &mut F) {
    assert!(
        tokio::time::timeout(Duration::ZERO, fut).await.is_err(),
        "completed on its first poll"
    );
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
    call_with(channel, header, None).await
}

/// [`call`] with a deadline (`grpc-timeout`).
pub async fn call_with(
    channel: &BalancedChannel,
    header: Option<&str>,
    deadline: Option<Duration>,
) -> Result<String, tonic::Status> {
    let mut client = HealthClient::new(channel.clone());
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(d) = deadline {
        req.set_timeout(d);
    }
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
    let deadline = Instant::now() + dur;
    let (tasks, errors) = callers(channel, concurrency, move || Instant::now() < deadline);
    (gather(tasks).await, errors.load(Ordering::Relaxed))
}

/// Runs `concurrency` loops of calls until `cond` holds (polled every 5 ms); panics after
/// `timeout`, naming `what`. Returns (per-backend counts, errors).
pub async fn load_until(
    channel: &BalancedChannel,
    concurrency: usize,
    what: &str,
    timeout: Duration,
    cond: impl FnMut() -> bool,
) -> (HashMap<String, u64>, u64) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = stop.clone();
    let (tasks, errors) = callers(channel, concurrency, move || !running.load(Ordering::Relaxed));
    until(what, timeout, cond).await;
    stop.store(true, Ordering::Relaxed);
    (gather(tasks).await, errors.load(Ordering::Relaxed))
}

/// `concurrency` tasks calling in a loop while `go()` holds, each counting the backends that
/// served it; failed calls go to the shared error count (with a 1 ms pause, so a failing loop
/// does not starve the runtime).
fn callers(
    channel: &BalancedChannel,
    concurrency: usize,
    go: impl Fn() -> bool + Clone + Send + 'static,
) -> (Vec<tokio::task::JoinHandle<HashMap<String, u64>>>, Arc<AtomicU64>) {
    let errors = Arc::new(AtomicU64::new(0));
    let tasks = (0..concurrency)
        .map(|_| {
            let (ch, errors, go) = (channel.clone(), errors.clone(), go.clone());
            tokio::spawn(async move {
                let mut seen: HashMap<String, u64> = HashMap::new();
                while go() {
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
    (tasks, errors)
}

/// The callers' per-backend counts, summed.
async fn gather(tasks: Vec<tokio::task::JoinHandle<HashMap<String, u64>>>) -> HashMap<String, u64> {
    let mut total: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

/// The deadline [`unavailable_at_once`] gives its call.
pub const LONG_DEADLINE: Duration = Duration::from_secs(30);

/// One call that must fail with UNAVAILABLE without waiting for an endpoint; returns its status.
///
/// The call carries a 30 s deadline. A call that waits ends at that deadline
/// (DEADLINE_EXCEEDED) or at the channel's wait-for-ready bound (UNAVAILABLE "no endpoint became
/// ready within"); this one must end with another UNAVAILABLE, and within [`PATIENCE`] (10 s), or
/// the test fails. No stopwatch: how fast "at once" is belongs in the benchmarks.
pub async fn unavailable_at_once(channel: &BalancedChannel) -> tonic::Status {
    let err = tokio::time::timeout(PATIENCE, call_with(channel, None, Some(LONG_DEADLINE)))
        .await
        .unwrap_or_else(|_| panic!("still waiting after {PATIENCE:?}: the call waits for an endpoint"))
        .expect_err("the call should fail");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        !err.message().contains("became ready within"),
        "the call waited out the wait-for-ready bound: {err:?}"
    );
    err
}

pub fn assert_no_in_flight(channel: &BalancedChannel) {
    for s in channel.stats() {
        assert_eq!(s.in_flight, 0, "{} still has requests in flight", s.address);
    }
}
