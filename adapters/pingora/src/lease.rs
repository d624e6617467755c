//! Completion feedback for Pingora, which has no completion callback: a [`Lease`] holds the
//! in-flight slot a selection took, and [`Tracker`] is the per-request helper the `ProxyHttp`
//! hooks call, so the outcome (connect failure, proxy error, HTTP 5xx, `grpc-status` in headers
//! or trailers) and the latency at response headers reach the backend's state, and the slot is
//! released when the request ends — or when a retry moves it to another backend.

use std::borrow::Borrow;
use std::sync::Arc;

use pickwise::{EndpointState, InFlight, Outcome, Pool};
use pingora::http::ResponseHeader;
use pingora::lb::Backend;

use crate::state::Shared;

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

/// Takes a lease on `backend` in the group `shared` (`None` if the group does not know it).
pub fn lease(shared: &Arc<Shared>, backend: &Backend) -> Option<Lease> {
    let state = shared.state_at(backend.addr.as_inet()?)?;
    Some(InFlight::start(state, PoolRef(shared.clone()), shared.now()))
}

/// `select` with the lease taken: the backend for `key` and its in-flight slot (Pingora's
/// `select` has no completion callback; keep the lease in the request's context).
pub fn select_lease(
    lb: &pingora::lb::LoadBalancer<crate::Selector>,
    shared: &Arc<Shared>,
    key: &[u8],
    max_iterations: usize,
) -> Option<(Backend, Option<Lease>)> {
    let backend = lb.select(key, max_iterations)?;
    let lease = lease(shared, &backend);
    Some((backend, lease))
}

/// Per-request outcome tracking: keep one in the proxy's `CTX` ([`Tracker::new`] with the
/// group's [`Shared`]; a default tracker records nothing) and call it from the hooks.
///
/// | hook | call |
/// |---|---|
/// | `upstream_peer` (after `select`) | [`start`](Self::start) |
/// | `fail_to_connect` | [`connect_failed`](Self::connect_failed) |
/// | `error_while_proxy` | [`proxy_failed`](Self::proxy_failed) |
/// | `upstream_response_filter` | [`response`](Self::response) |
/// | `upstream_response_trailer_filter` | [`trailers`](Self::trailers) |
/// | `logging` | [`finish`](Self::finish) |
#[derive(Debug, Default)]
pub struct Tracker {
    shared: Option<Arc<Shared>>,
    lease: Option<Lease>,
    failed: bool,
}

impl Tracker {
    /// A tracker for requests balanced by the group `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            lease: None,
            failed: false,
            shared: Some(shared),
        }
    }
}

/// gRPC codes that count against a backend (go-zero's list: DEADLINE_EXCEEDED, INTERNAL,
/// UNAVAILABLE, DATA_LOSS, UNIMPLEMENTED, RESOURCE_EXHAUSTED).
fn grpc_failure(code: &[u8]) -> bool {
    matches!(code, b"4" | b"13" | b"14" | b"15" | b"12" | b"8")
}

impl Tracker {
    /// The request goes to `backend`: takes its slot. A previous attempt's slot (a retry) is
    /// completed as a failure first, so a retried request never holds two slots.
    pub fn start(&mut self, backend: &Backend) {
        self.end(Outcome::Failure);
        self.failed = false;
        self.lease = self.shared.as_ref().and_then(|s| lease(s, backend));
    }

    /// Connecting failed: a failure; the slot is released now (a retry takes a new one).
    pub fn connect_failed(&mut self) {
        self.end(Outcome::Failure);
    }

    /// Proxying failed after connecting: a failure; the slot is released now.
    pub fn proxy_failed(&mut self) {
        self.end(Outcome::Failure);
    }

    /// Response headers arrived: the latency sample is taken now (tower's `CompleteOnResponse`);
    /// HTTP 5xx or a failing `grpc-status` (trailers-only response) marks the request failed.
    pub fn response(&mut self, header: &ResponseHeader) {
        if header.status.is_server_error() {
            self.failed = true;
        }
        if let Some(code) = header.headers.get("grpc-status") {
            self.failed |= grpc_failure(code.as_bytes());
        } else if let Some(lease) = self.lease.as_mut() {
            let now = lease_now(lease);
            lease.responded(now);
        }
    }

    /// Response trailers arrived: a failing `grpc-status` marks the request failed.
    pub fn trailers(&mut self, trailers: &pingora::http::HMap) {
        if let Some(code) = trailers.get("grpc-status") {
            self.failed |= grpc_failure(code.as_bytes());
        }
    }

    /// The request ended (`logging`), with `error` if it failed: completes and releases the slot.
    pub fn finish(&mut self, error: bool) {
        let outcome = if error || self.failed {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        self.end(outcome);
    }

    /// Whether a slot is held.
    pub fn holding(&self) -> bool {
        self.lease.is_some()
    }

    fn end(&mut self, outcome: Outcome) {
        if let Some(lease) = self.lease.take() {
            let now = lease_now(&lease);
            let _ = lease.complete(now, outcome);
        }
    }
}

/// The lease's group clock.
fn lease_now(lease: &Lease) -> u64 {
    lease.pool().0.now()
}
