//! [`XdsChannel`]: the tower `Service` for an `xds:///name` target. Each request is routed
//! against the current router ([`route`]: a cluster, its drop policy and
//! circuit breaker, the request hash) and sent through the cluster's balancer; a request that
//! arrives before the configuration waits for it, bounded by its deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pickwise_tonic::{BalancedChannel, BoxError};
use tokio::time::Instant;
use tonic::Status;
use tower_service::Service;

use crate::dispatch::{route, ClusterEntry, InFlightGuard, Request, Routed, Shared};

/// Aborts the client and manager tasks with the last channel clone.
struct Tasks([tokio::task::JoinHandle<()>; 2]);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A gRPC channel for an `xds:///name` target: a cloneable
/// `tower::Service<http::Request<tonic::body::Body>>` (use it as tonic's `Channel`). Every
/// response carries the endpoint that served it as a [`pickwise_tonic::Peer`] extension.
#[derive(Clone)]
pub struct XdsChannel {
    shared: Arc<Shared>,
    _tasks: Arc<Tasks>,
}

impl std::fmt::Debug for XdsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsChannel")
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

/// What [`XdsChannel::status`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsStatus {
    /// The ADS stream is up.
    pub connected: bool,
    /// Routes resolved (listener → routes → virtual host).
    pub routes_ready: bool,
    /// Why the configuration cannot serve, if it cannot.
    pub error: Option<String>,
    /// Each cluster the routes name, with its policy (`None`: pending or failed).
    pub clusters: Vec<(String, Option<&'static str>)>,
    /// The last NACK sent (type and reason).
    pub last_nack: Option<String>,
}

impl XdsChannel {
    pub(crate) fn new(shared: Arc<Shared>, tasks: [tokio::task::JoinHandle<()>; 2]) -> Self {
        Self {
            shared,
            _tasks: Arc::new(Tasks(tasks)),
        }
    }

    /// The current state of the configuration.
    pub fn status(&self) -> XdsStatus {
        let r = self.shared.router.load();
        let mut clusters: Vec<(String, Option<&'static str>)> = r
            .clusters
            .iter()
            .map(|(n, e)| {
                let policy = match e {
                    ClusterEntry::Ready { channel, .. } => Some(channel.policy().name()),
                    _ => None,
                };
                (n.clone(), policy)
            })
            .collect();
        clusters.sort();
        XdsStatus {
            connected: r.connected,
            routes_ready: matches!(r.routes, Ok(Some(_))),
            error: r.routes.as_ref().err().cloned(),
            clusters,
            last_nack: r.last_nack.clone(),
        }
    }

    /// A cluster's balancer (statistics, policy, picker version), if it is serving.
    pub fn cluster(&self, name: &str) -> Option<BalancedChannel> {
        match self.shared.router.load().clusters.get(name) {
            Some(ClusterEntry::Ready { channel, .. }) => Some(channel.clone()),
            _ => None,
        }
    }

    /// Waits until `ready(status)` holds or `timeout` passes; returns whether it held.
    pub async fn wait_for(&self, timeout: Duration, ready: impl Fn(&XdsStatus) -> bool) -> bool {
        let mut rx = self.shared.version.subscribe();
        let until = Instant::now() + timeout;
        loop {
            if ready(&self.status()) {
                return true;
            }
            if tokio::time::timeout_at(until, rx.changed()).await.is_err() {
                return ready(&self.status());
            }
        }
    }

    /// Number of routing configurations published so far.
    pub fn config_version(&self) -> u64 {
        *self.shared.version.borrow()
    }
}

impl Service<Request> for XdsChannel {
    type Response = http::Response<XdsBody>;
    type Error = BoxError;
    type Future = XdsFuture;

    /// Always ready: routing and picking happen in `call` and never block.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let router = self.shared.router.load();
        match route(&self.shared, &router, &mut req, &mut fastrand::Rng::new()) {
            // The common case allocates nothing here: the cluster balancer's own future, wrapped.
            Routed::Go { mut channel, guard } => XdsFuture {
                inner: Inner::Direct {
                    fut: channel.call(req),
                    guard,
                },
            },
            Routed::Fail(status) => XdsFuture {
                inner: Inner::Fail { status: Some(status) },
            },
            Routed::Wait => XdsFuture {
                inner: Inner::Boxed {
                    fut: Box::pin(wait_and_call(self.shared.clone(), req)),
                },
            },
        }
    }
}

/// Slow path: no configuration yet for this request; wait for one, bounded by the request's
/// deadline and `wait_for_config`.
async fn wait_and_call(shared: Arc<Shared>, mut req: Request) -> Result<http::Response<XdsBody>, BoxError> {
    let start = Instant::now();
    let deadline = pickwise_tonic::deadline::timeout(req.headers()).map(|t| start + t);
    let bound = start + shared.wait_for_config;
    let until = deadline.map_or(bound, |d| d.min(bound));
    let mut rx = shared.version.subscribe();
    loop {
        let router = shared.router.load_full();
        // The time spent waiting counts against the deadline; routing may then shorten it
        // (max_stream_duration).
        if let Some(d) = deadline {
            if !pickwise_tonic::deadline::set_remaining(req.headers_mut(), d) {
                return Err(
                    Status::deadline_exceeded("xDS: deadline exceeded waiting for a configuration").into(),
                );
            }
        }
        match route(&shared, &router, &mut req, &mut fastrand::Rng::new()) {
            Routed::Go { mut channel, guard } => {
                let resp = channel.call(req).await?;
                return Ok(resp.map(|inner| XdsBody { inner, _guard: guard }));
            }
            Routed::Fail(status) => return Err(status.into()),
            Routed::Wait => {}
        }
        match tokio::time::timeout_at(until, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Status::unavailable("xDS: the channel has stopped").into()),
            Err(_) if deadline.is_some_and(|d| d <= bound) => {
                return Err(Status::deadline_exceeded(format!(
                    "xDS: deadline exceeded after {} ms waiting for the configuration of {:?}",
                    start.elapsed().as_millis(),
                    shared.target
                ))
                .into())
            }
            Err(_) => {
                let r = shared.router.load();
                let why = if r.connected {
                    "the control plane has not sent it"
                } else {
                    "the control plane is unreachable"
                };
                return Err(Status::unavailable(format!(
                    "xDS: no configuration for {:?} after {} ms: {why}",
                    shared.target,
                    shared.wait_for_config.as_millis()
                ))
                .into());
            }
        }
    }
}

type Boxed = Pin<Box<dyn Future<Output = Result<http::Response<XdsBody>, BoxError>> + Send>>;

pin_project_lite::pin_project! {
    /// The response future of [`XdsChannel`].
    pub struct XdsFuture {
        #[pin]
        inner: Inner,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner {
        Direct { #[pin] fut: pickwise_tonic::ResponseFuture, guard: Option<InFlightGuard> },
        Fail { status: Option<Status> },
        Boxed { fut: Boxed },
    }
}

impl std::fmt::Debug for XdsFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsFuture").finish_non_exhaustive()
    }
}

impl Future for XdsFuture {
    type Output = Result<http::Response<XdsBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Direct { fut, guard } => {
                let resp = std::task::ready!(fut.poll(cx))?;
                let guard = guard.take();
                Poll::Ready(Ok(resp.map(|inner| XdsBody { inner, _guard: guard })))
            }
            InnerProj::Fail { status } => Poll::Ready(Err(status
                .take()
                .unwrap_or_else(|| Status::unknown("polled after completion"))
                .into())),
            InnerProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body: the cluster balancer's body plus the circuit-breaker slot, released
    /// when the body is dropped.
    pub struct XdsBody {
        #[pin]
        inner: pickwise_tonic::ResponseBody,
        _guard: Option<InFlightGuard>,
    }
}

impl std::fmt::Debug for XdsBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Body for XdsBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
