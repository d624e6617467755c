//! Completion feedback for Pingora, which has no completion callback: a [`Lease`] holds the
//! in-flight slot a selection took, and [`Tracker`] is the per-request helper the `ProxyHttp`
//! hooks call, so the outcome reaches the backend's state — classified once, by the core's
//! [`outcome`](pickwise::outcome) rules — and the slot is released when the request ends, or when
//! a retry moves it to another backend.
//!
//! | what the hooks saw | outcome |
//! |---|---|
//! | `fail_to_connect` | failure |
//! | response headers 1xx (100 Continue) | nothing yet: no latency sample |
//! | response 2xx-4xx | success, latency sampled at the headers |
//! | response 5xx | failure, no latency sample (the failure penalty instead) |
//! | `grpc-status` (headers or trailers) | Envoy's gRPC -> HTTP mapping: `UNKNOWN` fails, `RESOURCE_EXHAUSTED` does not |
//! | an error caused upstream (reset, closed, timeout) | failure |
//! | an error caused downstream or locally (client gone, malformed request) | neutral |
//!
//! Every completion also runs the pool's timer when due ([`Shared::handle_timeout`]).
//!
//! **Load reports.** A response (or its trailers) carrying an ORCA report — Envoy's
//! `endpoint-load-metrics` header (`TEXT`, `JSON` or `BIN` form) or `endpoint-load-metrics-bin`
//! — feeds the backend's [`EndpointState::report_load`], which `weighted_round_robin` (gRFC A58)
//! weighs by. As in Envoy's router, the first report of an attempt counts (headers before
//! trailers); a malformed one is logged at debug level and ignored; a response without one
//! changes nothing.
//!
//! **Prequal reports.** Under `pickwise_prequal`, response headers carrying `x-prequal-rif` and
//! `x-prequal-latency-us` (a backend piggybacking its probe answer, as prequal-rs's and
//! envoy-prequal's servers do) are recorded for the attempt's backend like a probe's answer
//! ([`Prepared::record_probe`](pickwise::balancer::Prepared::record_probe)); a response without
//! both, or with a malformed one, records nothing. Probes themselves are the
//! [`Prober`](crate::Prober)'s.

use std::borrow::Borrow;
use std::net::SocketAddr;
use std::sync::Arc;

use pickwise::outcome::{self, Observed};
use pickwise::wrr::LoadReport;
use pickwise::{EndpointState, InFlight, Outcome, Pool};
use pickwise_orca::header::{parse_headers, ENDPOINT_LOAD_METRICS, ENDPOINT_LOAD_METRICS_BIN};
use pickwise_orca::prequal::{ProbeReport as WireReport, HEADER_RIF};
use pingora::http::ResponseHeader;
use pingora::lb::{Backend, LoadBalancer};
use pingora::{Error, ErrorSource, ErrorType};

use crate::state::Shared;
use crate::Selector;

/// Borrows the pool out of the group's shared state (for the in-flight guard).
#[derive(Clone, Debug)]
pub struct PoolRef(Arc<Shared>);

impl Borrow<Pool> for PoolRef {
    fn borrow(&self) -> &Pool {
        &self.0.pool
    }
}

/// One request's in-flight slot on a backend. Dropping it (a client that went away) releases the
/// slot; [`Tracker`] completes it with the outcome.
pub type Lease = InFlight<Arc<EndpointState>, PoolRef>;

/// Takes a lease on `backend` in the group `shared` (`None` if the group does not know it). Runs
/// the group's timer if due ([`Shared::handle_timeout`]; it reads the clock anyway).
pub fn lease(shared: &Arc<Shared>, backend: &Backend) -> Option<Lease> {
    let addr = backend.addr.as_inet()?;
    let state = shared.state_at(addr)?;
    #[cfg(feature = "metrics")]
    shared.instruments.picked(addr);
    let now = shared.now();
    shared.handle_timeout(now);
    Some(InFlight::start(state, PoolRef(shared.clone()), now))
}

/// `select` with the lease taken: the backend for `key` and its in-flight slot (Pingora's
/// `select` has no completion callback; keep the lease in the request's context).
pub fn select_lease(
    lb: &LoadBalancer<Selector>,
    shared: &Arc<Shared>,
    key: &[u8],
    max_iterations: usize,
) -> Option<(Backend, Option<Lease>)> {
    let backend = lb.select(key, max_iterations)?;
    let lease = lease(shared, &backend);
    Some((backend, lease))
}

/// What a Pingora error says about the backend: where it came from (`esource`) and, for
/// upstream errors, whether the connection was ever up.
pub fn observed(error: &Error) -> Observed {
    match error.esource() {
        ErrorSource::Upstream => match error.etype() {
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
            | ErrorType::ConnectError
            | ErrorType::SocketError
            | ErrorType::ConnectProxyFailure => Observed::ConnectFailed,
            _ => Observed::UpstreamError,
        },
        // The client's doing (went away, malformed request) or the proxy's own: not the backend's.
        ErrorSource::Downstream | ErrorSource::Internal | ErrorSource::Unset => Observed::Downstream,
    }
}

/// How many earlier attempts' backends a [`Tracker`] remembers for retry exclusion.
const TRIED: usize = 4;

/// Per-request outcome tracking: keep one in the proxy's `CTX` ([`Tracker::new`] with the
/// group's [`Shared`]; a default tracker records nothing but still remembers the backends it
/// tried) and call it from the hooks.
///
/// | hook | call |
/// |---|---|
/// | `upstream_peer` | [`select`](Self::select) (or `select`, then [`start`](Self::start)) |
/// | `fail_to_connect` | [`connect_failed`](Self::connect_failed) |
/// | `error_while_proxy` | [`proxy_failed`](Self::proxy_failed) |
/// | `upstream_response_filter` | [`response`](Self::response) |
/// | `upstream_response_trailer_filter` | [`trailers`](Self::trailers) |
/// | `logging` | [`finish`](Self::finish) |
#[derive(Debug, Default)]
pub struct Tracker {
    shared: Option<Arc<Shared>>,
    lease: Option<Lease>,
    /// The current attempt's outcome from its response so far (`None`: no final response yet).
    outcome: Option<Outcome>,
    /// Backends of the attempts so far (the last [`TRIED`]), for retry exclusion.
    tried: [Option<SocketAddr>; TRIED],
    attempts: usize,
    /// Whether the current attempt's load report was read (the first one counts).
    reported: bool,
}

impl Tracker {
    /// A tracker for requests balanced by the group `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared: Some(shared),
            ..Self::default()
        }
    }

    /// Selects a backend for an attempt, never one an earlier attempt of this request used
    /// while another healthy one exists (Envoy's `previous_hosts` retry predicate), and starts
    /// the attempt on it ([`start`](Self::start)). If every healthy backend was tried, any
    /// healthy one serves (as Envoy does once its host-selection attempts run out).
    pub fn select(
        &mut self,
        lb: &LoadBalancer<Selector>,
        key: &[u8],
        max_iterations: usize,
    ) -> Option<Backend> {
        let backend = lb
            .select_with(key, max_iterations, |b, healthy| healthy && !self.tried(b))
            .or_else(|| lb.select(key, max_iterations))?;
        self.start(&backend);
        Some(backend)
    }

    /// Whether an earlier attempt of this request went to `backend` (for `select_with` on other
    /// selections).
    pub fn tried(&self, backend: &Backend) -> bool {
        backend
            .addr
            .as_inet()
            .is_some_and(|a| self.tried.iter().take(self.attempts).any(|t| *t == Some(*a)))
    }

    /// The backend of the current (last) attempt.
    pub fn current(&self) -> Option<SocketAddr> {
        self.attempts.checked_sub(1).and_then(|i| self.tried[i % TRIED])
    }

    /// Attempts started so far (1 + retries).
    pub fn attempts(&self) -> usize {
        self.attempts
    }

    /// The request goes to `backend`: takes its slot. A previous attempt's slot still held (a
    /// retry the hooks did not report) is completed as a failure first, so a retried request
    /// never holds two slots.
    pub fn start(&mut self, backend: &Backend) {
        self.end(Outcome::Failure);
        self.outcome = None;
        self.reported = false;
        if let Some(a) = backend.addr.as_inet() {
            self.tried[self.attempts % TRIED] = Some(*a);
        }
        self.attempts += 1;
        self.lease = self.shared.as_ref().and_then(|s| lease(s, backend));
    }

    /// Connecting failed: a failure; the slot is released now (a retry takes a new one).
    pub fn connect_failed(&mut self) {
        self.end(Outcome::Failure);
    }

    /// Proxying failed with `error`: a failure if the backend caused it, neutral if the client
    /// or the proxy did ([`observed`]); the slot is released now.
    pub fn proxy_failed(&mut self, error: &Error) {
        let outcome = self.error_outcome(error);
        self.end(outcome);
    }

    /// Response headers arrived. An informational response (100 Continue) is ignored: the final
    /// one follows. A success so far takes the latency sample now (tower's
    /// `CompleteOnResponse`); a 5xx or a failing `grpc-status` (trailers-only response) marks the
    /// attempt failed and takes no sample. An ORCA load report in the headers reaches the
    /// backend's state, and under Prequal a piggybacked report is recorded (see the module
    /// docs).
    pub fn response(&mut self, header: &ResponseHeader) {
        let outcome = match header.headers.get("grpc-status") {
            Some(code) => outcome::grpc_header(code.as_bytes()),
            None => match outcome::http(header.status.as_u16()) {
                Some(o) => o,
                None => return, // 1xx
            },
        };
        self.load_report(&header.headers);
        self.piggybacked(&header.headers);
        self.outcome = Some(outcome);
        if outcome == Outcome::Success {
            if let Some(lease) = self.lease.as_mut() {
                let now = lease_now(lease);
                lease.responded(now);
            }
        }
    }

    /// Response trailers arrived: a `grpc-status` there decides the attempt (Envoy's mapping);
    /// an ORCA load report there counts if the headers had none.
    pub fn trailers(&mut self, trailers: &pingora::http::HMap) {
        self.load_report(trailers);
        if let Some(code) = trailers.get("grpc-status") {
            let o = outcome::grpc_header(code.as_bytes());
            if self.outcome != Some(Outcome::Failure) {
                self.outcome = Some(o);
            }
        }
    }

    /// The request ended (`logging`) with `error` if it failed: completes and releases the slot.
    /// A failed response stays a failure; otherwise an error counts by its source
    /// ([`observed`]); no error means the response's outcome.
    pub fn finish(&mut self, error: Option<&Error>) {
        let outcome = match (self.outcome, error) {
            (Some(Outcome::Failure), _) => Outcome::Failure,
            (_, Some(e)) => self.error_outcome(e),
            (Some(o), None) => o,
            // No final response and no error: nothing to say about the backend.
            (None, None) => Outcome::Neutral,
        };
        self.end(outcome);
    }

    /// Whether a slot is held.
    pub fn holding(&self) -> bool {
        self.lease.is_some()
    }

    /// Feeds the attempt's backend the ORCA report in `headers`, if there is one and none was
    /// read for this attempt yet.
    fn load_report(&mut self, headers: &pingora::http::HMap) {
        if self.reported
            || !(headers.contains_key(ENDPOINT_LOAD_METRICS)
                || headers.contains_key(ENDPOINT_LOAD_METRICS_BIN))
        {
            return;
        }
        let Some(lease) = self.lease.as_ref() else {
            return;
        };
        self.reported = true;
        match parse_headers(headers) {
            Ok(report) => lease
                .endpoint()
                .report_load(lease_now(lease), &LoadReport::from(&report)),
            Err(error) => tracing::debug!(
                backend = ?self.current(),
                %error,
                "pickwise: ignoring a malformed ORCA load report"
            ),
        }
    }

    /// Records a Prequal report the response carried for the attempt's backend.
    fn piggybacked(&self, headers: &pingora::http::HMap) {
        let (Some(shared), Some(lease)) = (self.shared.as_ref(), self.lease.as_ref()) else {
            return;
        };
        if !shared.is_prequal() || !headers.contains_key(HEADER_RIF) {
            return;
        }
        let Some(r) = WireReport::from_headers(headers) else {
            tracing::debug!(backend = ?self.current(), "pickwise: ignoring a malformed Prequal report");
            return;
        };
        let report = pickwise::prequal::ProbeReport {
            rif: r.rif,
            latency_us: r.latency_us,
        };
        shared.record_piggybacked(lease.endpoint(), report, lease_now(lease));
    }

    fn error_outcome(&self, error: &Error) -> Outcome {
        observed(error).classify().unwrap_or(Outcome::Neutral)
    }

    fn end(&mut self, outcome: Outcome) {
        if let Some(lease) = self.lease.take() {
            let now = lease_now(&lease);
            let _done = lease.complete(now, outcome);
            if let Some(shared) = &self.shared {
                // An ejection is counted when it happens (the sampler would see it later).
                #[cfg(feature = "metrics")]
                if _done.ejected {
                    shared.instruments.sample(&shared.pool, now);
                }
                shared.handle_timeout(now);
            }
        }
    }
}

/// The lease's group clock.
fn lease_now(lease: &Lease) -> u64 {
    lease.pool().0.now()
}
