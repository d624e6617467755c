//! Test support: backends (shared with pickwise-tonic's tests), the in-process control plane's
//! standard setup, and call helpers.
#![allow(dead_code, unreachable_pub)]

#[path = "../../../tonic/tests/support/backend.rs"]
pub mod backend;
#[path = "../../../tonic/tests/support/grpcio.rs"]
pub mod grpcio;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    builder_from_json(&cp.bootstrap_json())
}

/// [`builder`] for a bootstrap given as JSON (a control plane owned elsewhere).
pub fn builder_from_json(bootstrap: &str) -> XdsBuilder {
    XdsBuilder::new()
        .bootstrap(Bootstrap::from_json(bootstrap).unwrap())
        .ads_backoff(AdsBackoff {
            initial: Duration::from_millis(100),
            multiplier: 1.6,
            max: Duration::from_secs(1),
        })
        .cluster_builder(cluster_template)
}

/// The per-cluster balancer template of the tests: 500 ms connect timeout, 50 ms .. 500 ms
/// reconnect backoff.
pub fn cluster_template() -> pickwise_tonic::Builder {
    pickwise_tonic::Builder::new()
        .connect_timeout(Duration::from_millis(500))
        .backoff(pickwise_tonic::Backoff {
            initial: Duration::from_millis(50),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_millis(500),
        })
}

/// How long a test waits for a state it expects before failing. Generous: debug builds on a
/// loaded 2-core machine; a passing wait ends as soon as the state is there.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Polls `done` (every 2 ms) until it holds; fails the test naming `what` after [`PATIENCE`].
/// For states without a notification (balancer statistics, control-plane replies).
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The addresses (sorted) and share weights (endpoint weight × locality weight) in cluster
/// `name`'s current picker, if it is serving.
pub fn picker_of(channel: &XdsChannel, name: &str) -> Option<Vec<(String, u32)>> {
    let mut eps: Vec<(String, u32)> = channel
        .cluster(name)?
        .stats()
        .into_iter()
        .map(|s| (s.address, s.weight * s.locality_weight))
        .collect();
    eps.sort();
    Some(eps)
}

/// Waits until cluster `name`'s picker holds exactly `addrs`, all of them READY.
pub async fn picker_holds(channel: &XdsChannel, name: &str, addrs: &[&str]) {
    let mut want: Vec<&str> = addrs.to_vec();
    want.sort_unstable();
    until(
        &format!("cluster {name:?}'s picker to hold {want:?}, all ready"),
        || {
            channel.cluster(name).is_some_and(|c| {
                let stats = c.stats();
                let mut got: Vec<&str> = stats.iter().map(|s| s.address.as_str()).collect();
                got.sort_unstable();
                got == want
                    && stats
                        .iter()
                        .all(|s| s.state == pickwise_tonic::ConnectivityState::Ready)
            })
        },
    )
    .await;
}

/// Waits until the client ACKed (not NACKed) version `version` of type `t`.
pub async fn acked(cp: &ControlPlane, t: pickwise_xds::resource::ResourceType, version: u64) {
    let version = version.to_string();
    until(&format!("an ACK of {} version {version}", t.short()), || {
        cp.replies()
            .iter()
            .any(|r| r.kind == t.short() && r.version == version && r.error.is_none())
    })
    .await;
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
    /// Bumped by [`Load::barrier`]; each worker notes the epoch its call started in.
    epoch: Arc<AtomicU64>,
    /// Per worker: the epoch in which its last finished call started.
    finished: Vec<Arc<AtomicU64>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(channel: &XdsChannel, workers: usize) -> Self {
        let load = Self {
            ok: Default::default(),
            errors: Default::default(),
            total: Default::default(),
            epoch: Default::default(),
            finished: (0..workers).map(|_| Default::default()).collect(),
            stop: Default::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (ch, ok, errors, total, stop, epoch, finished) = (
                channel.clone(),
                load.ok.clone(),
                load.errors.clone(),
                load.total.clone(),
                load.stop.clone(),
                load.epoch.clone(),
                load.finished[w].clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started_in = epoch.load(Ordering::SeqCst);
                    let result = call(&ch, None).await;
                    match result {
                        Ok(b) => *ok.lock().unwrap().entry(b).or_default() += 1,
                        Err(e) => {
                            let mut errors = errors.lock().unwrap();
                            // The first few say why; a fast-failing loop must not fill memory.
                            if errors.len() < 100 {
                                errors.push(format!("{:?}: {}", e.code(), e.message()));
                            }
                        }
                    }
                    finished.store(started_in, Ordering::SeqCst);
                    total.fetch_add(1, Ordering::Relaxed);
                    // A call that fails at once never yields: without this, workers failing in
                    // a loop can hold every runtime thread and stall the timers tests wait on.
                    tokio::task::yield_now().await;
                }
            }));
        }
        Self { tasks, ..load }
    }

    /// Clears the per-backend counts (a new phase).
    pub fn reset(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.ok.lock().unwrap())
    }

    /// Waits until every call in flight now has finished (each worker finished a call that
    /// started after this): from then on every call sees the picker of the moment.
    pub async fn barrier(&self) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        until(
            "every load worker to finish a call started after the barrier",
            || self.finished.iter().all(|f| f.load(Ordering::SeqCst) >= epoch),
        )
        .await;
    }

    /// Waits for `n` more calls to finish.
    pub async fn calls(&self, n: u64) {
        let target = self.total.load(Ordering::Relaxed) + n;
        until(&format!("{n} more calls"), || {
            self.total.load(Ordering::Relaxed) >= target
        })
        .await;
    }

    /// A new phase against the current picker: waits out the calls in flight, then counts `n`
    /// calls per backend.
    pub async fn phase(&self, n: u64) -> HashMap<String, u64> {
        self.barrier().await;
        self.reset();
        self.calls(n).await;
        self.reset()
    }

    pub async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.errors.lock().unwrap().clone()
    }
}
