//! One connection per endpoint (grpc's "subchannel"): its connectivity state, reconnection with
//! exponential backoff and jitter, and optional `grpc.health.v1` checks.
//!
//! The connection goes through our own connector ([`transport`](crate::transport)), whose socket
//! reports the moment the connection closes (EOF, error or drop), so a killed backend leaves the
//! picker at once instead of after the next failed request.

use std::borrow::Borrow;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pickwise::{EndpointState, Pool};
use tokio::sync::{mpsc, Notify};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::common::Common;
use crate::config::Backoff;
use crate::error::error_chain;
use crate::transport::{ConnWatch, WatchConnector};
use crate::BoxError;

/// Connectivity state of an endpoint's connection (grpc's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectivityState {
    /// Not connected and not trying yet.
    Idle,
    /// A connection attempt is in progress.
    Connecting,
    /// Connected (and, with health checks, serving): pickable.
    Ready,
    /// The last attempt failed (or health checks fail); retrying after a backoff.
    TransientFailure,
}

impl ConnectivityState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Connecting,
            2 => Self::Ready,
            3 => Self::TransientFailure,
            _ => Self::Idle,
        }
    }
}

/// An endpoint known to the balancer: shared by its connection task, picker snapshots and guards.
#[derive(Debug)]
pub(crate) struct Subchannel {
    pub(crate) addr: String,
    /// The address as the [`Peer`](crate::Peer) responses carry (a refcount to clone).
    pub(crate) peer: crate::Peer,
    pub(crate) core: EndpointState,
    /// Discovery's priority and locality weight, for statistics.
    pub(crate) priority: AtomicU32,
    pub(crate) locality_weight: AtomicU32,
    state: AtomicU8,
    /// Sticky TRANSIENT_FAILURE (grpc-go `balancer/base`): set when a connection attempt fails or
    /// a connection is lost, cleared only by READY. While set, Connecting counts as failing.
    failing: AtomicBool,
    /// Which connection `channel` is (grows with each connection); requests carry the generation
    /// they were sent on, so an error from an older connection never breaks its replacement.
    generation: AtomicU64,
    /// The connected channel while Ready; read when snapshots are built, never on the pick path.
    /// Its lock also orders state writes against [`reset_idle`](Self::reset_idle).
    channel: Mutex<Option<Channel>>,
    /// The connection task allowed to write the state (its id; 0: none). An aborted task runs
    /// until its next await, so a write it makes after the balancer closed the endpoint is
    /// refused here instead of leaving a READY state and a live channel behind.
    owner: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The request path saw a connection-level error on the current connection: reconnect.
    broken: Notify,
    /// The request path saw the current connection refuse new requests (GOAWAY, closed before
    /// the request went out): replace it without counting a failure.
    drain: Notify,
    /// The generation `drain` was asked for (a permit may outlive its connection).
    drain_generation: AtomicU64,
    pub(crate) common: Arc<Common>,
    /// Prequal: 1 + the connection generation whose server answered a probe `UNIMPLEMENTED`
    /// (0: none): that connection is not probed again; a new connection is (a redeployed
    /// server may have the probe service).
    no_probe_service: AtomicU64,
    /// Its instruments, registered once here (the pick path only increments them).
    #[cfg(feature = "metrics")]
    pub(crate) instruments: crate::telemetry::EndpointInstruments,
}

impl Subchannel {
    pub(crate) fn new(addr: String, weight: u32, common: Arc<Common>) -> Self {
        let core = EndpointState::new(weight);
        core.set_ready(false);
        #[cfg(feature = "metrics")]
        let instruments = crate::telemetry::EndpointInstruments::new(&common.config.labels, &addr);
        Self {
            peer: crate::Peer(addr.as_str().into()),
            addr,
            core,
            priority: AtomicU32::new(0),
            locality_weight: AtomicU32::new(1),
            state: AtomicU8::new(0),
            failing: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            channel: Mutex::new(None),
            owner: AtomicU64::new(0),
            last_error: Mutex::new(None),
            broken: Notify::new(),
            drain: Notify::new(),
            drain_generation: AtomicU64::new(u64::MAX),
            no_probe_service: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            instruments,
            common,
        }
    }

    /// Records discovery's priority and locality weight (statistics only: the core decides).
    pub(crate) fn describe(&self, priority: u32, locality_weight: u32) {
        self.priority.store(priority, Ordering::Relaxed);
        self.locality_weight
            .store(locality_weight.max(1), Ordering::Relaxed);
    }

    pub(crate) fn state(&self) -> ConnectivityState {
        ConnectivityState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn channel(&self) -> Option<Channel> {
        self.channel.lock().map(|c| c.clone()).unwrap_or(None)
    }

    /// The current connection's generation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Failed since it was last READY (sticky TRANSIENT_FAILURE), even while reconnecting.
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().map(|e| e.clone()).unwrap_or(None)
    }

    /// Prequal: whether connection `generation`'s server has no probe service.
    pub(crate) fn lacks_probe_service(&self, generation: u64) -> bool {
        self.no_probe_service.load(Ordering::Relaxed) == generation.wrapping_add(1)
    }

    /// Prequal: connection `generation`'s server answered a probe `UNIMPLEMENTED`; returns
    /// whether this is news.
    pub(crate) fn set_no_probe_service(&self, generation: u64) -> bool {
        self.no_probe_service
            .swap(generation.wrapping_add(1), Ordering::Relaxed)
            != generation.wrapping_add(1)
    }

    /// Hands the state to connection task `id` (the balancer, before spawning it).
    pub(crate) fn set_owner(&self, id: u64) {
        self.owner.store(id, Ordering::Release);
    }

    /// Task `id` reports a state; ignored unless it still owns the subchannel.
    fn set(&self, id: u64, state: ConnectivityState, channel: Option<Channel>, error: Option<String>) {
        let Ok(mut c) = self.channel.lock() else {
            return;
        };
        if self.owner.load(Ordering::Acquire) != id {
            return;
        }
        *c = channel;
        if let Some(e) = error {
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(e);
            }
        }
        match state {
            ConnectivityState::Ready => self.failing.store(false, Ordering::Release),
            ConnectivityState::TransientFailure => self.failing.store(true, Ordering::Release),
            _ => {}
        }
        self.core.set_ready(state == ConnectivityState::Ready);
        self.state.store(state as u8, Ordering::Release);
        drop(c);
    }

    /// Back to IDLE with no connection and no failure (the balancer closed it: its priority is
    /// no longer used); a later start begins afresh, as a new subchannel would.
    pub(crate) fn reset_idle(&self) {
        let guard = self.channel.lock();
        // No task writes after this (see `owner`).
        self.owner.store(0, Ordering::Release);
        if let Ok(mut c) = guard {
            *c = None;
        }
        self.failing.store(false, Ordering::Release);
        self.core.set_ready(false);
        self.state.store(ConnectivityState::Idle as u8, Ordering::Release);
    }

    /// A draining connection leaves: CONNECTING, without its channel, while the replacement
    /// connects. Unlike [`set`](Self::set) it leaves the endpoint's ready flag to the balancer
    /// (which lowers it when it publishes the picker without this connection), so a pick from
    /// the picker still in place is not refused as if the endpoint had failed (with one
    /// endpoint: "all endpoints are failing"): it goes to the old connection, which refuses it
    /// before sending, and the request is retried transparently on the next picker.
    fn set_draining(&self, id: u64) {
        let Ok(mut c) = self.channel.lock() else {
            return;
        };
        if self.owner.load(Ordering::Acquire) != id {
            return;
        }
        *c = None;
        self.state
            .store(ConnectivityState::Connecting as u8, Ordering::Release);
    }

    /// Called from the request path on a connection-level error (reset, refused, closed) seen by
    /// a request sent on connection `generation`: leave the picker now and reconnect, unless that
    /// connection has already been replaced (grpc-go compares the transport the same way).
    pub(crate) fn mark_broken(&self, generation: u64) {
        if generation == self.generation() {
            self.broken.notify_waiters();
        }
    }

    /// Called from the request path when connection `generation` takes no new requests (the
    /// server sent GOAWAY, or it closed before a request went out) but did nothing wrong: a
    /// replacement connects at once, and the endpoint is CONNECTING, not failing, meanwhile
    /// (grpc-go moves a subchannel whose transport got GOAWAY to IDLE and reconnects).
    pub(crate) fn mark_draining(&self, generation: u64) {
        if generation == self.generation() {
            // A permit, not a wake-up of current waiters: the connection task may be busy (a
            // health check) and must still see it.
            self.drain_generation.store(generation, Ordering::Release);
            self.drain.notify_one();
        }
    }
}

/// A `Subchannel` handle that guards can hold (`Arc` itself cannot implement `Borrow` for us).
#[derive(Clone, Debug)]
pub(crate) struct SubRef(pub(crate) Arc<Subchannel>);

impl Borrow<EndpointState> for SubRef {
    fn borrow(&self) -> &EndpointState {
        &self.0.core
    }
}

impl Borrow<Pool> for SubRef {
    fn borrow(&self) -> &Pool {
        &self.0.common.pool
    }
}

/// The connection task of one endpoint. Runs until aborted by the balancer.
pub(crate) async fn run(sub: Arc<Subchannel>, id: u64, events: mpsc::UnboundedSender<u64>) {
    let config = sub.common.config.clone();
    let publish = |state, channel, error| {
        sub.set(id, state, channel, error);
        let _ = events.send(id);
    };
    let mut backoff = BackoffState::new(config.backoff);
    let mut draining = false;
    loop {
        if std::mem::take(&mut draining) {
            sub.set_draining(id);
            let _ = events.send(id);
        } else {
            publish(ConnectivityState::Connecting, None, None);
        }
        let watch = Arc::new(ConnWatch::default());
        let attempt = async {
            let endpoint: Endpoint = (config.endpoint)(&sub.addr)?;
            let endpoint = endpoint.connect_timeout(config.connect_timeout);
            let channel = endpoint
                .connect_with_connector(WatchConnector {
                    watch: watch.clone(),
                    #[cfg(feature = "tls")]
                    tls: config.tls.clone(),
                })
                .await?;
            Ok::<_, BoxError>(channel)
        };
        let channel = match tokio::time::timeout(config.connect_timeout, attempt).await {
            Ok(Ok(ch)) => ch,
            Ok(Err(e)) => {
                let msg = error_chain(&*e);
                tracing::debug!(endpoint = %sub.addr, error = %msg, "connect failed");
                #[cfg(feature = "metrics")]
                sub.instruments.attempt_failed();
                publish(ConnectivityState::TransientFailure, None, Some(msg));
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
            Err(_) => {
                #[cfg(feature = "metrics")]
                sub.instruments.attempt_failed();
                publish(
                    ConnectivityState::TransientFailure,
                    None,
                    Some("connect timed out".into()),
                );
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        // grpc-go's rule: READY only once the server's HTTP/2 preface arrives. A listener that
        // accepts and closes (a flapping or half-dead backend) never becomes pickable.
        let preface = tokio::time::timeout(config.connect_timeout, watch.server_preface()).await;
        if let Err(reason) = preface.unwrap_or(Err("no HTTP/2 preface from the server in time")) {
            tracing::debug!(endpoint = %sub.addr, reason, "connect failed");
            #[cfg(feature = "metrics")]
            sub.instruments.attempt_failed();
            publish(
                ConnectivityState::TransientFailure,
                None,
                Some(reason.to_string()),
            );
            tokio::time::sleep(backoff.next()).await;
            continue;
        }
        sub.generation.fetch_add(1, Ordering::AcqRel);
        // Counts the attempt and the open connection; its drop counts the disconnection.
        #[cfg(feature = "metrics")]
        let mut open = sub.instruments.connected();
        let serving = match &config.health {
            Some(h) => check_health(&channel, &h.service, h.timeout).await,
            None => Ok(()),
        };
        match serving {
            Ok(()) => publish(ConnectivityState::Ready, Some(channel.clone()), None),
            Err(e) => publish(
                ConnectivityState::TransientFailure,
                Some(channel.clone()),
                Some(e),
            ),
        }
        tracing::debug!(endpoint = %sub.addr, "connected");
        // gRFC A58 out-of-band reports: one `StreamCoreMetrics` stream on this connection while
        // the policy asks for it (grpc-go's ORCA producer); it ends with the connection.
        let mut oob_period = sub.common.oob_period.subscribe();
        let mut oob = Oob::start(&channel, *oob_period.borrow_and_update());
        // `graceful`: the server is draining the connection (GOAWAY, e.g. gRPC's
        // `max_connection_age`). The old connection finishes its streams on its own; the
        // replacement starts connecting now, before the server closes the old one.
        let (reason, graceful) = loop {
            let health_tick = async {
                match &config.health {
                    Some(h) => tokio::time::sleep(h.interval).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Closed after a GOAWAY: the server finished draining it (or closed an idle
                // one), not a failure.
                _ = watch.closed() => break ("connection closed", watch.went_away()),
                _ = sub.broken.notified() => break ("transport error on a request", false),
                _ = watch.going_away() => break ("the server sent GOAWAY", true),
                _ = sub.drain.notified() => {
                    if sub.drain_generation.load(Ordering::Acquire) == sub.generation() {
                        break ("the connection refused a request (GOAWAY or closed)", true);
                    }
                }
                report = oob.next() => match report {
                    Some(Ok(r)) => sub.core.report_load(sub.common.now(), &r),
                    Some(Err(e)) => {
                        tracing::debug!(endpoint = %sub.addr, error = %e, "load report stream ended; reopening");
                    }
                    None => tracing::debug!(endpoint = %sub.addr, "no load report service (UNIMPLEMENTED)"),
                },
                Ok(()) = oob_period.changed() => {
                    oob = Oob::start(&channel, *oob_period.borrow_and_update());
                }
                _ = health_tick => {
                    let h = config.health.as_ref().expect("health tick only with health checks");
                    let now_serving = check_health(&channel, &h.service, h.timeout).await;
                    let was_ready = sub.state() == ConnectivityState::Ready;
                    match now_serving {
                        Ok(()) if !was_ready => publish(ConnectivityState::Ready, Some(channel.clone()), None),
                        Err(e) if was_ready => {
                            tracing::info!(endpoint = %sub.addr, error = %e, "health check failed");
                            publish(ConnectivityState::TransientFailure, Some(channel.clone()), Some(e));
                        }
                        _ => {}
                    }
                }
            }
        };
        #[cfg(feature = "metrics")]
        {
            open.lost(disconnect_error(reason, graceful));
            drop(open);
        }
        // A connection that worked resets the backoff; the first reconnect is immediate.
        backoff = BackoffState::new(config.backoff);
        if graceful {
            // Not a failure: CONNECTING (not sticky TRANSIENT_FAILURE), so requests wait for
            // the replacement instead of failing fast.
            tracing::debug!(endpoint = %sub.addr, reason, "connection draining; replacing it");
            draining = true;
            continue;
        }
        // A READY connection lost is not yet a failure (grpc-go pick_first: READY -> IDLE, then
        // CONNECTING at once): the endpoint reconnects now and reports TRANSIENT_FAILURE only if
        // that attempt fails. So a connection reset on a live server neither fails fast-fail
        // RPCs nor fails its priority over; a dead server's refused reconnect does, at once.
        tracing::info!(endpoint = %sub.addr, reason, "connection lost; reconnecting");
        if let Ok(mut last) = sub.last_error.lock() {
            *last = Some(reason.to_string());
        }
    }
}

/// gRFC A94's `grpc.disconnect_error` for why a connection loop ended.
#[cfg(feature = "metrics")]
fn disconnect_error(reason: &str, graceful: bool) -> &'static str {
    match reason {
        _ if graceful => "GOAWAY NO_ERROR",
        "connection closed" => "connection reset",
        "transport error on a request" => "socket error",
        _ => "unknown",
    }
}

/// A connection's out-of-band load report stream (gRFC A58 with `enable_oob_load_report`), as
/// grpc-go's ORCA producer runs it (`orca/producer.go`): a stream that fails or ends is reopened
/// at once if it delivered a report, else after an exponential backoff (1 s × 1.6ⁿ up to
/// 120 s, ±20% jitter: grpc-go's `DefaultExponential`); `UNIMPLEMENTED` stops it for the
/// connection.
struct Oob {
    channel: Channel,
    /// The reporting period asked of the server; `None`: no stream.
    period: Option<Duration>,
    state: OobState,
    /// Failed attempts in a row without a report.
    failures: u32,
}

enum OobState {
    Off,
    On(pickwise_orca::client::OobStream, bool),
    Waiting(Pin<Box<tokio::time::Sleep>>),
}

impl Oob {
    /// The stream for `period_ns` (0: none) on `channel`.
    fn start(channel: &Channel, period_ns: u64) -> Self {
        let period = (period_ns > 0).then(|| Duration::from_nanos(period_ns));
        let mut oob = Self {
            channel: channel.clone(),
            period,
            state: OobState::Off,
            failures: 0,
        };
        oob.open();
        oob
    }

    fn open(&mut self) {
        self.state = match self.period {
            Some(p) => OobState::On(
                pickwise_orca::client::OobStream::open(self.channel.clone(), p),
                false,
            ),
            None => OobState::Off,
        };
    }

    /// The stream failed or ended (not UNIMPLEMENTED): reopen now if it delivered a report,
    /// else after the backoff.
    fn failed(&mut self) {
        let delivered = matches!(self.state, OobState::On(_, true));
        if delivered {
            self.failures = 0;
            self.open();
            return;
        }
        let base = Duration::from_secs(1).mul_f64(1.6f64.powi(self.failures.min(16) as i32));
        let delay = base
            .min(Duration::from_secs(120))
            .mul_f64(1.0 + 0.2 * (fastrand::f64() * 2.0 - 1.0));
        self.failures = self.failures.saturating_add(1);
        self.state = OobState::Waiting(Box::pin(tokio::time::sleep(delay)));
    }

    /// The next report; `Some(Err)` after the stream failed (it is rescheduled); pending forever
    /// while off.
    async fn next(&mut self) -> Option<Result<pickwise::wrr::LoadReport, tonic::Status>> {
        use futures_util::StreamExt as _;
        loop {
            match &mut self.state {
                OobState::Off => return std::future::pending().await,
                OobState::Waiting(sleep) => {
                    sleep.as_mut().await;
                    self.open();
                }
                OobState::On(stream, delivered) => match stream.next().await {
                    Some(Ok(r)) => {
                        *delivered = true;
                        self.failures = 0;
                        return Some(Ok(r));
                    }
                    Some(Err(e)) => {
                        self.failed();
                        return Some(Err(e));
                    }
                    // UNIMPLEMENTED: the server has no ORCA service.
                    None => {
                        self.state = OobState::Off;
                        return None;
                    }
                },
            }
        }
    }
}

async fn check_health(channel: &Channel, service: &str, timeout: Duration) -> Result<(), String> {
    let mut client = HealthClient::new(channel.clone());
    let req = HealthCheckRequest {
        service: service.to_string(),
    };
    match tokio::time::timeout(timeout, client.check(req)).await {
        Ok(Ok(resp)) if resp.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
        Ok(Ok(resp)) => Err(format!("health: status {}", resp.get_ref().status)),
        // gRPC health-checking spec: a server without the health service counts as healthy.
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => Ok(()),
        Ok(Err(s)) => Err(format!("health check failed: {}", s.message())),
        Err(_) => Err("health check timed out".into()),
    }
}

/// gRPC connection backoff: `initial * multiplier^n`, capped, with +-jitter.
struct BackoffState {
    cfg: Backoff,
    next: Duration,
}

impl BackoffState {
    fn new(cfg: Backoff) -> Self {
        Self {
            cfg,
            next: cfg.initial,
        }
    }

    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = base.mul_f64(self.cfg.multiplier.max(1.0)).min(self.cfg.max);
        let jitter = self.cfg.jitter.clamp(0.0, 1.0);
        base.mul_f64(1.0 + jitter * (fastrand::f64() * 2.0 - 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let cfg = Backoff {
            initial: Duration::from_secs(1),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_secs(5),
        };
        let mut b = BackoffState::new(cfg);
        let seq: Vec<f64> = (0..8).map(|_| b.next().as_secs_f64()).collect();
        let base = [1.0, 1.6, 2.56, 4.096, 5.0, 5.0, 5.0, 5.0];
        for (got, want) in seq.iter().zip(base) {
            assert!(
                *got >= want * 0.8 - 1e-9 && *got <= want * 1.2 + 1e-9,
                "{got} vs {want}"
            );
        }
    }
}
