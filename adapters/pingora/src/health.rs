//! Pingora's active health checks -> endpoint readiness.
//!
//! Pingora keeps health apart from the selector: `select` asks the selector's iterator for
//! backends and skips those its health checks marked down, and a health change does not rebuild
//! the selector (pingora-load-balancing 0.9.1: `LoadBalancer::update` runs the rebuild callback
//! only when the membership changed). Without this bridge the picker keeps choosing a down
//! backend (nothing in flight, its estimate decaying: it looks cheapest), Pingora refuses it, and
//! the iterator's next backend takes its share (measured: one live neighbour of two dead backends
//! took 0.63 of the traffic instead of 0.33).
//!
//! [`Shared::health_observer`] returns a `HealthObserveCallback` for Pingora's
//! `TcpHealthCheck` / `HttpHealthCheck` (`health_changed_callback`): every health flip becomes a
//! connectivity event for the group's core balancer (healthy: READY, down: TRANSIENT_FAILURE),
//! which marks the backend's [`EndpointState`](pickwise::EndpointState) ready or not and prepares
//! a new picker (ready backends, bounded-load shares over their weight); the group publishes it,
//! and every selector picks from it at once. [`tcp_health_check`] builds Pingora's TCP check
//! with it installed; for an `HttpHealthCheck` set
//! `check.health_changed_callback = Some(shared.health_observer())`.
//!
//! ```no_run
//! use pickwise::{LbPolicy, Policy, PoolConfig};
//! use pickwise_pingora::{tcp_health_check, Selector, Shared};
//! use pingora::lb::{discovery, Backends, LoadBalancer};
//!
//! let shared = Shared::new(LbPolicy::P2c(Policy::PeakEwma), PoolConfig::default());
//! let discovery = discovery::Static::try_from_iter(["127.0.0.1:8001", "127.0.0.1:8002"]).unwrap();
//! let mut lb: LoadBalancer<Selector> =
//!     LoadBalancer::from_backends_with_config(Backends::new(discovery), Some(shared.clone()));
//! lb.set_health_check(tcp_health_check(&shared));
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::health_check::{HealthObserve, HealthObserveCallback, TcpHealthCheck};
use pingora::lb::Backend;

use crate::state::Shared;

/// Pingora's `HealthObserve` for one [`Shared`]: health flips become connectivity events for
/// its core balancer.
#[derive(Debug, Clone)]
pub struct HealthObserver {
    shared: Arc<Shared>,
}

impl HealthObserver {
    /// An observer feeding `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl HealthObserve for HealthObserver {
    async fn observe(&self, target: &Backend, healthy: bool) {
        self.shared.set_health(target, healthy);
    }
}

impl Shared {
    /// A callback for a Pingora health check's `health_changed_callback`: backends it marks
    /// down are not picked, and come back when it marks them up.
    pub fn health_observer(self: &Arc<Self>) -> HealthObserveCallback {
        Box::new(HealthObserver::new(self.clone()))
    }
}

/// Pingora's TCP health check (its defaults: 1 s connect timeout, one result flips) reporting to
/// `shared`.
pub fn tcp_health_check(shared: &Arc<Shared>) -> Box<TcpHealthCheck> {
    let mut check = TcpHealthCheck::new();
    check.health_changed_callback = Some(shared.health_observer());
    check
}
