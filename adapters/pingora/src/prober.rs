//! Prequal's HTTP prober ([`Prober`], whose docs give the design): a Pingora `BackgroundService`
//! that sends the probes the group's picker owes and feeds the answers back, never on the select
//! path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use pickwise::prequal::ProbeReport;
use pickwise::EndpointState;
use pickwise_orca::prequal::{http::PROBE_PATH, ProbeReport as WireReport};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::state::Shared;

/// Ticks in a row with nothing owed before the prober checks at [`ProbeConfig::idle_tick`].
pub const IDLE_TICKS: u32 = 100;

/// How the [`Prober`] probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// The probe path (`/prequal/probe`).
    pub path: String,
    /// A probe not answered within this counts as failed and closes its connection (100 ms).
    pub timeout: Duration,
    /// How often the prober looks for owed probes while queries flow (1 ms).
    pub tick: Duration,
    /// How often it looks after [`IDLE_TICKS`] ticks with nothing owed (10 ms).
    pub idle_tick: Duration,
    /// Most probes one round sends (16; also at most the number of ready backends).
    pub max_per_tick: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            path: PROBE_PATH.to_owned(),
            timeout: Duration::from_millis(100),
            tick: Duration::from_millis(1),
            idle_tick: Duration::from_millis(10),
            max_per_tick: 16,
        }
    }
}

/// Prequal's probe counts of one group ([`Shared::probe_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Probes sent.
    pub sent: u64,
    /// Probes answered with a report (recorded).
    pub answered: u64,
    /// Probes that failed: no `2xx` with both headers, a transport error or a timeout.
    pub failed: u64,
    /// Reports read from responses (piggybacked; recorded without a probe).
    pub piggybacked: u64,
}

/// The counters behind [`ProbeStats`].
#[derive(Debug, Default)]
pub(crate) struct ProbeCounts {
    sent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    piggybacked: AtomicU64,
}

/// What happened to a probe (or a piggybacked report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProbeEvent {
    Sent,
    Answered,
    Failed,
    Piggybacked,
}

impl ProbeCounts {
    pub(crate) fn count(&self, event: ProbeEvent) {
        let c = match event {
            ProbeEvent::Sent => &self.sent,
            ProbeEvent::Answered => &self.answered,
            ProbeEvent::Failed => &self.failed,
            ProbeEvent::Piggybacked => &self.piggybacked,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> ProbeStats {
        ProbeStats {
            sent: self.sent.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            piggybacked: self.piggybacked.load(Ordering::Relaxed),
        }
    }
}

/// The longest a backend whose probes fail waits for its next one.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One backend's probe connection and backoff.
#[derive(Debug, Default)]
struct Link {
    sender: Option<SendRequest<Empty<Bytes>>>,
    /// Probes failed in a row.
    failures: u32,
    /// No probe before this (after failures).
    retry_at: Option<tokio::time::Instant>,
}

/// A backend's [`Link`]; its lock is held while a probe is in flight.
type Conn = Arc<Mutex<Link>>;

/// Prequal's HTTP prober for one group: sends the probes the group's picker owes and feeds the
/// answers back, never on the select path. Run it as a Pingora background service
/// (`background_service(name, prober)`), or on any tokio runtime with [`run`](Self::run). Does
/// nothing under other policies but check the picker once per idle tick.
///
/// Under [`LbPolicy::Prequal`](pickwise::LbPolicy) (by name `pickwise_prequal`) every pick counts
/// a query in the core's probe pool, which then owes `probes_per_query` probes per query (and one
/// after `idle_probe_ns` without any). The select path does nothing else: the pool's query counter
/// is the wake-up flag. The prober reads it on a short tick ([`ProbeConfig::tick`], 1 ms; after
/// [`IDLE_TICKS`] ticks with nothing owed it checks every [`ProbeConfig::idle_tick`] instead,
/// 10 ms, until something is owed again), takes the owed probes' targets from the current picker
/// ([`Prepared::probe_targets`](pickwise::balancer::Prepared::probe_targets): distinct ready
/// backends drawn uniformly, available ones first) and sends each a `GET` on
/// [`ProbeConfig::path`] (`/prequal/probe`, [`pickwise_orca::prequal::http`]: the convention of
/// prequal-rs's `HttpProber` and envoy-prequal). A `2xx` answer carrying `x-prequal-rif` and
/// `x-prequal-latency-us` is recorded with
/// [`Prepared::record_probe`](pickwise::balancer::Prepared::record_probe); anything else (a
/// `404` from a backend that does not answer probes, a missing or malformed header, a timeout, a
/// refused connection) counts as failed and records nothing, so such a backend is picked only by
/// the core's P2C fallback.
///
/// **Connections.** One HTTP/1.1 connection per backend (hyper), opened on the first probe and
/// kept while it works; a transport error or a timeout ([`ProbeConfig::timeout`], 100 ms: a late
/// answer is worth little) closes it and the next probe opens a new one. A backend whose probes
/// fail is skipped for 10 ms, doubling per failure in a row up to 1 s (the backoff ends with its
/// next answer), so one without the probe endpoint or down costs a few probes a second. At most one probe is in
/// flight per backend: a target whose previous probe has not returned is skipped (its answer is
/// about to arrive anyway). The probes owed beyond what one round sends are forgiven: with `n`
/// backends a round sends at most `min(n, max_per_tick)` probes, so the probe rate is bounded by
/// the backends and the tick, not by the query rate (3 probes per query at 20,000 queries per
/// second would otherwise be 60,000 probes per second to a handful of backends). Forgiving also
/// keeps the debt far from the core's limit: the pool hands out no probe while more than 2^16
/// are owed, which a prober stalled for 22,000 queries would otherwise reach for good.
///
/// Probes travel on the prober's own connections, never through the proxy's data path; a backend
/// counts them apart from queries (the server side, [`pickwise_orca::prequal`], does).
///
/// Answers a backend piggybacks on its responses (the same two headers) are recorded by
/// [`Tracker::response`](crate::Tracker::response) without any probe.
///
/// ```no_run
/// use pickwise::prequal::PrequalConfig;
/// use pickwise::{LbPolicy, PoolConfig};
/// use pickwise_pingora::{ProbeConfig, Prober, Shared};
/// use pingora::services::background::background_service;
///
/// let shared = Shared::new(LbPolicy::Prequal(PrequalConfig::default()), PoolConfig::default());
/// let prober = background_service("prequal prober", Prober::new(shared.clone(), ProbeConfig::default()));
/// // server.add_service(prober); next to the LoadBalancer's background service.
/// ```
#[derive(Clone, Debug)]
pub struct Prober {
    shared: Arc<Shared>,
    config: Arc<ProbeConfig>,
}

impl Prober {
    /// A prober for the group `shared`.
    pub fn new(shared: Arc<Shared>, config: ProbeConfig) -> Self {
        Self {
            shared,
            config: Arc::new(config),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ProbeConfig {
        &self.config
    }

    /// Probes until `shutdown` turns `true` or its sender is dropped.
    pub async fn run(&self, mut shutdown: ShutdownWatch) {
        let mut conns: HashMap<SocketAddr, Conn> = HashMap::new();
        let mut targets = vec![0usize; self.config.max_per_tick.max(1)];
        let mut version = u64::MAX;
        let mut quiet = 0u32;
        loop {
            let wait = if quiet >= IDLE_TICKS {
                self.config.idle_tick
            } else {
                self.config.tick
            };
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
            if self.round(&mut conns, &mut targets, &mut version) {
                quiet = 0;
            } else {
                quiet = quiet.saturating_add(1);
            }
        }
    }

    /// One round: the owed probes' targets, each sent on its backend's connection unless a probe
    /// is in flight there. Whether anything was owed.
    fn round(&self, conns: &mut HashMap<SocketAddr, Conn>, targets: &mut [usize], version: &mut u64) -> bool {
        let picker = self.shared.picker();
        let Some(pool) = picker.probes() else {
            return false;
        };
        // Backends that left: their connections close.
        let v = self.shared.picker_version();
        if v != *version {
            *version = v;
            conns.retain(|addr, _| {
                picker
                    .members()
                    .iter()
                    .any(|m| m.backend.addr.as_inet() == Some(addr))
            });
        }
        let now = self.shared.now();
        // Only backends that can take a probe now are drawn (none in flight, not backing off),
        // so owed probes are not spent on the others.
        let wall = tokio::time::Instant::now();
        let k = picker.probe_targets_where(now, &mut || fastrand::u64(..), targets, |m| {
            m.backend.addr.as_inet().is_some_and(|a| {
                conns
                    .get(a)
                    .is_none_or(|c| c.try_lock().is_ok_and(|g| g.retry_at.is_none_or(|at| wall >= at)))
            })
        });
        // Forgive what this round cannot send (see the module docs): the debt would only grow.
        if pool.probes_owed() > 0 {
            pool.take_probes(now, u32::MAX);
        }
        for &pos in &targets[..k] {
            let Some(member) = picker.ready().get(pos) else {
                continue;
            };
            let Some(addr) = member.backend.addr.as_inet().copied() else {
                continue;
            };
            let conn = conns.entry(addr).or_default().clone();
            let Ok(guard) = conn.try_lock_owned() else {
                continue; // a probe is in flight there
            };
            if guard.retry_at.is_some_and(|at| tokio::time::Instant::now() < at) {
                continue; // backing off
            }
            let (shared, config, state) = (self.shared.clone(), self.config.clone(), member.state.clone());
            tokio::spawn(async move { probe(guard, addr, &config, &shared, &state).await });
        }
        k > 0
    }
}

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await;
    }
}

/// Why a probe failed.
#[derive(Debug)]
enum Failed {
    Transport(hyper::Error),
    Io(std::io::Error),
    Status(http::StatusCode),
    NoReport,
    Timeout,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "HTTP: {e}"),
            Self::Io(e) => write!(f, "connect: {e}"),
            Self::Status(s) => write!(f, "answered {s}"),
            Self::NoReport => f.write_str("no x-prequal-rif / x-prequal-latency-us report"),
            Self::Timeout => f.write_str("timed out"),
        }
    }
}

/// One probe to `addr` on the connection in `conn`; records the answer.
async fn probe(
    mut link: OwnedMutexGuard<Link>,
    addr: SocketAddr,
    config: &ProbeConfig,
    shared: &Shared,
    state: &EndpointState,
) {
    shared.count_probe(ProbeEvent::Sent);
    let result =
        match tokio::time::timeout(config.timeout, exchange(&mut link.sender, addr, &config.path)).await {
            Ok(r) => r,
            Err(_) => Err(Failed::Timeout),
        };
    match result {
        Ok(report) => {
            shared.count_probe(ProbeEvent::Answered);
            link.failures = 0;
            link.retry_at = None;
            let report = ProbeReport {
                rif: report.rif,
                latency_us: report.latency_us,
            };
            shared
                .picker()
                .record_probe(state, report, shared.now(), &mut || fastrand::u64(..));
        }
        Err(error) => {
            shared.count_probe(ProbeEvent::Failed);
            if !matches!(error, Failed::Status(_) | Failed::NoReport) {
                link.sender = None; // the next probe opens a new connection
            }
            // 10 ms, doubling per failure in a row, at most a second: a backend without the
            // probe endpoint (or down) is not asked a thousand times a second.
            link.failures = link.failures.saturating_add(1);
            let backoff = Duration::from_millis(10)
                .saturating_mul(1 << (link.failures - 1).min(10))
                .min(MAX_BACKOFF);
            link.retry_at = Some(tokio::time::Instant::now() + backoff);
            tracing::debug!(backend = %addr, %error, "pickwise: Prequal probe failed");
        }
    }
}

/// The request and its answer, opening the connection first if there is none.
async fn exchange(
    conn: &mut Option<SendRequest<Empty<Bytes>>>,
    addr: SocketAddr,
    path: &str,
) -> Result<WireReport, Failed> {
    if conn.as_ref().is_none_or(SendRequest::is_closed) {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(Failed::Io)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(Failed::Transport)?;
        // Ends when the sender is dropped or the backend closes.
        tokio::spawn(connection);
        *conn = Some(sender);
    }
    let Some(sender) = conn.as_mut() else {
        return Err(Failed::NoReport);
    };
    sender.ready().await.map_err(Failed::Transport)?;
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::new())
        .map_err(|_| Failed::NoReport)?;
    let response = sender.send_request(request).await.map_err(Failed::Transport)?;
    let status = response.status();
    let report = WireReport::from_headers(response.headers());
    // Read the (empty) body to its end so the connection serves the next probe.
    response.into_body().collect().await.map_err(Failed::Transport)?;
    if !status.is_success() {
        return Err(Failed::Status(status));
    }
    report.ok_or(Failed::NoReport)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use pickwise::prequal::PrequalConfig;
    use pickwise::{LbPolicy, PoolConfig};
    use pingora::lb::Backend;

    use super::*;

    /// A port nothing listens on (bound, then released).
    fn closed_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_round_sends_at_most_one_probe_per_backend_and_forgives_the_rest() {
        let config = PrequalConfig {
            probes_per_query: 3.0,
            ..PrequalConfig::default()
        };
        let shared = Shared::new(LbPolicy::Prequal(config), PoolConfig::default());
        let backends: BTreeSet<Backend> = (0..4).map(|_| Backend::new(&closed_port()).unwrap()).collect();
        shared.rebuild(&backends);
        let prober = Prober::new(shared.clone(), ProbeConfig::default());
        let pool = shared.probe_pool().expect("a Prequal group has a pool");
        let mut rng = || fastrand::u64(..);
        // 30,000 probes owed (the core forgives all but twice the pool size at the next take).
        for _ in 0..10_000 {
            let picker = shared.picker();
            assert!(picker.pick(shared.now(), None, &mut rng).is_ok());
        }
        assert!(pool.probes_owed() > 1_000, "owed {}", pool.probes_owed());
        let (mut conns, mut targets, mut version) = (HashMap::new(), vec![0; 16], u64::MAX);
        assert!(prober.round(&mut conns, &mut targets, &mut version));
        // Four targets (one per backend), the rest of the debt forgiven: the next picks owe
        // probes again.
        assert_eq!(conns.len(), 4);
        assert_eq!(pool.probes_owed(), 0);
        for _ in 0..10 {
            let _ = shared.picker().pick(shared.now(), None, &mut rng);
        }
        assert_eq!(pool.probes_owed(), 30);
        // Nothing listens: the probes fail and record nothing.
        for conn in conns.values() {
            let _idle = conn.lock().await;
        }
        let stats = shared.probe_stats();
        assert_eq!((stats.sent, stats.answered, stats.failed), (4, 0, 4), "{stats:?}");
        // Each backs off now: the next round draws no target (none can take a probe).
        assert!(!prober.round(&mut conns, &mut targets, &mut version));
        assert_eq!(shared.probe_stats().sent, 4);
        assert!(conns
            .values()
            .all(|c| c.try_lock().is_ok_and(|l| l.retry_at.is_some())));
    }

    #[tokio::test]
    async fn other_policies_owe_nothing() {
        let shared = Shared::new(LbPolicy::default(), PoolConfig::default());
        let backends: BTreeSet<Backend> = (0..2).map(|_| Backend::new(&closed_port()).unwrap()).collect();
        shared.rebuild(&backends);
        let prober = Prober::new(shared.clone(), ProbeConfig::default());
        let (mut conns, mut targets, mut version) = (HashMap::new(), vec![0; 16], u64::MAX);
        assert!(!prober.round(&mut conns, &mut targets, &mut version));
        assert!(conns.is_empty() && shared.probe_pool().is_none());
    }
}
