//! What requests read and where one goes: [`Shared`] holds the current [`Router`] (the routes
//! and every cluster's [`ClusterEntry`], swapped whole by the [`manager`](crate::manager) task),
//! and [`route`] is the routing decision for one request, with its random draws passed in (the
//! matching rules it applies are [`routing`]'s).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pickwise_tonic::{BalancedChannel, RequestHash};
use tokio::sync::watch;
use tonic::Status;

use crate::resource::{Route, RouteAction};
use crate::routing;

/// A request as the channel takes it.
pub(crate) type Request = http::Request<tonic::body::Body>;

/// What requests read: the routes and clusters, swapped whole.
pub(crate) struct Router {
    pub(crate) routes: Result<Option<Arc<Vec<Route>>>, String>,
    pub(crate) clusters: HashMap<String, ClusterEntry>,
    pub(crate) connected: bool,
    pub(crate) last_nack: Option<String>,
}

impl Default for Router {
    fn default() -> Self {
        Self {
            routes: Ok(None),
            clusters: HashMap::new(),
            connected: false,
            last_nack: None,
        }
    }
}

/// A cluster as requests see it: waiting for its first configuration, failed, or serving
/// through its balancer (with its drop policy and circuit breaker).
#[derive(Clone)]
pub(crate) enum ClusterEntry {
    Pending,
    Failed(String),
    Ready {
        channel: BalancedChannel,
        drops: Arc<Vec<(String, u32)>>,
        in_flight: Arc<AtomicU32>,
        max_requests: u32,
    },
}

/// State shared by the cluster manager task and every request: the current [`Router`] and its
/// version, and what the channel was built with.
pub(crate) struct Shared {
    pub(crate) router: ArcSwap<Router>,
    pub(crate) version: watch::Sender<u64>,
    pub(crate) wait_for_config: Duration,
    /// gRPC's `io.grpc.channel_id` hash source.
    pub(crate) channel_id: u64,
    pub(crate) target: String,
}

/// How one request is routed against one router.
pub(crate) enum Routed {
    Go {
        channel: BalancedChannel,
        guard: Option<InFlightGuard>,
    },
    Wait,
    Fail(Status),
}

/// The routing decision for one request against one router (gRPC's `xds_cluster_manager` and
/// `cluster_impl` pickers): the route (runtime fractions), the deadline (gRFC A31), the cluster
/// (weighted clusters), the drop policy and the circuit breaker, then the request hash. Every
/// random draw comes from `rng`. On [`Routed::Go`] the request counts against the cluster's
/// `max_requests` until the returned guard drops.
pub(crate) fn route(shared: &Shared, router: &Router, req: &mut Request, rng: &mut fastrand::Rng) -> Routed {
    let routes = match &router.routes {
        Ok(Some(r)) => r,
        Ok(None) => return Routed::Wait,
        Err(e) => return Routed::Fail(Status::unavailable(e.clone())),
    };
    let Some(route) = routing::find(routes, req.uri().path(), req.headers(), &mut || rng.u32(..)) else {
        return Routed::Fail(Status::unavailable(format!(
            "xDS: no route matches {} for {:?}",
            req.uri().path(),
            shared.target
        )));
    };
    let clusters = match &route.action {
        RouteAction::Clusters(c) => c,
        RouteAction::Unsupported(what) => {
            return Routed::Fail(Status::unavailable(format!(
                "xDS: the matched route has a {what}"
            )))
        }
    };
    // gRFC A31: the RPC's deadline is min(its own, the route's max_stream_duration); the
    // balanced channel enforces the grpc-timeout header and the server reads it.
    if let Some(max) = route.max_stream_duration.filter(|d| !d.is_zero()) {
        if pickwise_tonic::deadline::timeout(req.headers()).is_none_or(|t| max < t) {
            req.headers_mut()
                .insert("grpc-timeout", pickwise_tonic::deadline::encode(max));
        }
    }
    let Some(name) = routing::pick_cluster(clusters, rng.u64(..)) else {
        return Routed::Fail(Status::unavailable("xDS: the matched route has no cluster"));
    };
    match router.clusters.get(name) {
        None | Some(ClusterEntry::Pending) => Routed::Wait,
        Some(ClusterEntry::Failed(e)) => Routed::Fail(Status::unavailable(e.clone())),
        Some(ClusterEntry::Ready {
            channel,
            drops,
            in_flight,
            max_requests,
        }) => {
            // grpc-go's cluster_impl picker drops only while the cluster's picker is READY
            // (internal/xds/balancer/clusterimpl/picker.go); otherwise the RPC waits for an
            // endpoint like any other.
            let ready = drops.is_empty() || channel.ready_endpoints() > 0;
            for (category, per_million) in drops.iter().filter(|_| ready) {
                if rng.u32(..1_000_000) < *per_million {
                    return Routed::Fail(Status::unavailable(format!(
                        "xDS: dropped by the control plane's drop policy (category {category:?})"
                    )));
                }
            }
            if in_flight.fetch_add(1, Ordering::Relaxed) >= *max_requests {
                in_flight.fetch_sub(1, Ordering::Relaxed);
                return Routed::Fail(Status::unavailable(format!(
                    "xDS: cluster {name:?} has {max_requests} requests in flight (circuit breaker max_requests)"
                )));
            }
            let guard = InFlightGuard(in_flight.clone());
            if let Some(h) = routing::request_hash(&route.hash_policies, req.headers(), shared.channel_id) {
                req.extensions_mut().insert(RequestHash(h));
            }
            Routed::Go {
                channel: channel.clone(),
                guard: Some(guard),
            }
        }
    }
}

/// One request counted against a cluster's `max_requests` until its response body ends.
pub(crate) struct InFlightGuard(Arc<AtomicU32>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
