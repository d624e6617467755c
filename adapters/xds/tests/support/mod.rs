//! Test support: backends (shared with pickwise-tonic's tests), the in-process control plane's
//! standard setup, and call helpers.
#![allow(dead_code, unreachable_pub)]

#[path = "../../../tonic/tests/support/backend.rs"]
pub mod backend;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pickwise_xds::control_plane::{resources, ControlPlane};
use pickwise_xds::{AdsBackoff, Bootstrap, XdsBuilder, XdsChannel};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

pub const NAME: &str = "greeter";

/// Tests that start servers run one at a time (timing on 2 cores).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    GATE.lock().await
}

/// `n` tonic backends on loopback, and their addresses.
pub fn backends(n: usize) -> (Vec<backend::Backend>, Vec<String>) {
    let b: Vec<backend::Backend> = (0..n).map(|_| backend::Backend::start()).collect();
    let addrs = b.iter().map(|b| b.addr.to_string()).collect();
    (b, addrs)
}

/// A control plane serving listener `greeter` → routes → cluster `backends` (policy) → `eps`.
pub async fn control_plane(policy: resources::Policy, localities: &[resources::Locality]) -> ControlPlane {
    let cp = ControlPlane::start().await.expect("control plane");
    cp.set(resources::listener(NAME, "routes"));
    cp.set(resources::route_config("routes", NAME, "backends"));
    cp.set(resources::cluster("backends", policy));
    cp.set(resources::endpoints("backends", localities));
    cp
}

/// An xDS channel for `xds:///greeter` on `cp`, with test-speed timers.
pub fn channel(cp: &ControlPlane) -> XdsChannel {
    builder(cp).build(&format!("xds:///{NAME}")).expect("xds channel")
}

pub fn builder(cp: &ControlPlane) -> XdsBuilder {
    XdsBuilder::new()
        .bootstrap(Bootstrap::from_json(&cp.bootstrap_json()).unwrap())
        .ads_backoff(AdsBackoff {
            initial: Duration::from_millis(100),
            multiplier: 1.6,
            max: Duration::from_secs(1),
        })
        .cluster_builder(|| {
            pickwise_tonic::Builder::new()
                .connect_timeout(Duration::from_millis(500))
                .backoff(pickwise_tonic::Backoff {
                    initial: Duration::from_millis(50),
                    multiplier: 1.6,
                    jitter: 0.2,
                    max: Duration::from_millis(500),
                })
        })
}

/// One Health/Check; the backend that served it (from the `Peer` extension).
pub async fn call(
    channel: &XdsChannel,
    header: Option<(&'static str, &str)>,
) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(Duration::from_secs(5));
    if let Some((k, v)) = header {
        req.metadata_mut().insert(k, v.parse().unwrap());
    }
    let resp = HealthClient::new(channel.clone()).check(req).await?;
    Ok(resp
        .extensions()
        .get::<pickwise_tonic::Peer>()
        .map(|p| p.address().to_owned())
        .unwrap_or_default())
}

/// `n` calls; how many each backend served, and the errors.
pub async fn spread(channel: &XdsChannel, n: usize) -> (HashMap<String, u64>, Vec<tonic::Status>) {
    let mut seen = HashMap::new();
    let mut errors = Vec::new();
    for _ in 0..n {
        match call(channel, None).await {
            Ok(b) => *seen.entry(b).or_default() += 1,
            Err(e) => errors.push(e),
        }
    }
    (seen, errors)
}

/// Background load: `workers` loops of calls until stopped; counts per backend and errors.
pub struct Load {
    pub ok: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    pub errors: Arc<std::sync::Mutex<Vec<String>>>,
    pub total: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(channel: &XdsChannel, workers: usize) -> Self {
        let load = Self {
            ok: Default::default(),
            errors: Default::default(),
            total: Default::default(),
            stop: Default::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (ch, ok, errors, total, stop) = (
                channel.clone(),
                load.ok.clone(),
                load.errors.clone(),
                load.total.clone(),
                load.stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match call(&ch, None).await {
                        Ok(b) => *ok.lock().unwrap().entry(b).or_default() += 1,
                        Err(e) => errors
                            .lock()
                            .unwrap()
                            .push(format!("{:?}: {}", e.code(), e.message())),
                    }
                    total.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        Self { tasks, ..load }
    }

    /// Clears the per-backend counts (a new phase).
    pub fn reset(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.ok.lock().unwrap())
    }

    pub async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.errors.lock().unwrap().clone()
    }
}
