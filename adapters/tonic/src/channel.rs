//! [`BalancedChannel`]: the tower `Service` tonic clients call (grpc-go's `ClientConn`). Each
//! request reads the current picker snapshot (lock-free), picks an endpoint
//! ([`picker`](crate::picker)), and carries an in-flight guard until its response body ends;
//! the outcome (`grpc-status` from headers or trailers, transport errors, the deadline) feeds the
//! endpoint's load and health.
//!
//! An attempt the server certainly never processed (refused stream, GOAWAY, a connection that
//! closed before the request went out) is retried transparently on a new pick
//! (the [`retry`] module), within the RPC's deadline; it counts for nothing against the
//! endpoint. A request that finds no endpoint fails fast in TRANSIENT_FAILURE unless it is
//! wait-for-ready ([`WaitForReady`], or `waitForReady` in the service config's `methodConfig`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pickwise::Outcome;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tonic::codegen::Bytes;
use tonic::{Code, Status};
use tower_service::Service;

use crate::deadline;
use crate::error::{error_chain, NoEndpoint};
use crate::picker::{try_pick, wait_for_pick, Guard, Picked, Request, WaitFuture};
use crate::retry::{self, Replay, Unprocessed};
use crate::snapshot::{Control, EndpointStats, Shared, Unpicked};
use crate::BoxError;

/// Wait-for-ready for one request (grpc-go's `grpc.WaitForReady` call option), as a request
/// extension; it overrides the service config's `methodConfig.waitForReady`.
///
/// A fail-fast request (the default, `WaitForReady(false)`) fails at once with `UNAVAILABLE` when
/// every endpoint is in TRANSIENT_FAILURE (or there is none); a wait-for-ready request waits for
/// an endpoint until its deadline (`DEADLINE_EXCEEDED`), or, without a deadline, for the
/// channel's [`Builder::wait_for_ready`](crate::Builder::wait_for_ready) bound (`UNAVAILABLE`),
/// so it never hangs. Both wait while endpoints are connecting for the first time, as in gRPC.
///
/// ```
/// use pickwise_tonic::WaitForReady;
/// let mut req = tonic::Request::new(());
/// req.extensions_mut().insert(WaitForReady(true));
/// req.set_timeout(std::time::Duration::from_secs(2));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WaitForReady(pub bool);

/// Whether `req` waits through TRANSIENT_FAILURE: its [`WaitForReady`] extension, else its
/// method's service config, else no (fail fast).
fn wait_for_ready(shared: &Shared, req: &Request) -> bool {
    if let Some(w) = req.extensions().get::<WaitForReady>() {
        return w.0;
    }
    shared
        .common
        .config
        .methods
        .wait_for_ready(req.uri().path())
        .unwrap_or(false)
}

/// A load-balanced gRPC channel: a cloneable `tower::Service<http::Request<tonic::body::Body>>`,
/// used in place of tonic's `Channel` (e.g. `GreeterClient::new(channel)`). Built by
/// [`Builder`](crate::Builder). Dropping the last clone stops the balancer.
#[derive(Clone, Debug)]
pub struct BalancedChannel {
    shared: Arc<Shared>,
    _shutdown: Arc<oneshot::Sender<()>>,
}

impl BalancedChannel {
    pub(crate) fn new(shared: Arc<Shared>, shutdown: oneshot::Sender<()>) -> Self {
        Self {
            shared,
            _shutdown: Arc::new(shutdown),
        }
    }

    /// Per-endpoint statistics of the current picker.
    pub fn stats(&self) -> Vec<EndpointStats> {
        self.shared.stats()
    }

    /// Prequal's probing counters and pool (see [`Builder::prequal`](crate::Builder::prequal)).
    pub fn prequal_stats(&self) -> crate::PrequalStats {
        self.shared.prequal_stats()
    }

    /// Number of endpoints the current picker can send to.
    pub fn ready_endpoints(&self) -> usize {
        self.shared.snapshot.load().ready_count()
    }

    /// Waits until at least `n` endpoints are ready or `timeout` passes; returns the ready count.
    pub async fn wait_ready(&self, n: usize, timeout: Duration) -> usize {
        let mut rx = self.shared.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ready = self.ready_endpoints();
            if ready >= n {
                return ready;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return self.ready_endpoints();
            }
        }
    }

    /// Switches the balancing policy at runtime (a control plane changed it): the balancer keeps
    /// every connection, in-flight request and endpoint state and publishes a picker for the new
    /// policy. Returns false if the balancer has stopped.
    pub fn set_policy(&self, policy: pickwise::LbPolicy) -> bool {
        self.shared.control.send(Control::SetPolicy(policy)).is_ok()
    }

    /// The policy of the current picker.
    pub fn policy(&self) -> pickwise::LbPolicy {
        self.shared.snapshot.load().policy
    }

    /// Number of pickers published so far (grows with every membership or readiness change).
    pub fn picker_version(&self) -> u64 {
        *self.shared.version.borrow()
    }
}

impl Service<Request> for BalancedChannel {
    type Response = http::Response<ResponseBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    /// Always ready: the pick happens in `call` and never blocks.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let snap = self.shared.snapshot.load();
        let (state, retry) = match try_pick(&self.shared, &snap, &req) {
            Ok(picked) => {
                let (replay, req) = Replay::new(req);
                let state = State::Ready {
                    picked: Some(picked),
                    req: Some(req),
                    deadline: None,
                    timer: None,
                };
                (state, Some(Retry::new(replay, self.shared.clone(), None)))
            }
            // A fail-fast request fails now, unless the picker is out of date (it lists ready
            // endpoints, yet none could be picked: one just left): the next picker decides.
            Err(Unpicked::Fail(e))
                if matches!(e, NoEndpoint::Shutdown)
                    || (snap.ready_count() == 0 && !wait_for_ready(&self.shared, &req)) =>
            {
                (
                    State::Fail {
                        status: Some(e.into()),
                    },
                    None,
                )
            }
            Err(_) => {
                // Only requests that wait read the clock for their deadline.
                let deadline = deadline::of(req.headers());
                let ready = wait_for_ready(&self.shared, &req);
                let (replay, req) = Replay::new(req);
                let state = State::Wait {
                    fut: Box::pin(wait_for_pick(self.shared.clone(), req, deadline, ready, None)),
                    deadline,
                };
                (
                    state,
                    Some(Retry::new(replay, self.shared.clone(), Some(deadline))),
                )
            }
        };
        ResponseFuture { state, retry }
    }
}

pin_project! {
    /// The response future of [`BalancedChannel`].
    pub struct ResponseFuture {
        #[pin]
        state: State,
        // What a transparent retry needs (`None` for a request that failed at the pick).
        retry: Option<Retry>,
    }
}

/// A request's transparent-retry state.
struct Retry {
    replay: Replay,
    shared: Arc<Shared>,
    /// The RPC's absolute deadline once known (`Some(None)`: it has none). Read from the clock
    /// only by requests that wait or retry.
    deadline: Option<Option<Instant>>,
}

impl Retry {
    fn new(replay: Replay, shared: Arc<Shared>, deadline: Option<Option<Instant>>) -> Self {
        Self {
            replay,
            shared,
            deadline,
        }
    }

    /// After attempt `generation` (holding `guard`, sent with `budget` left) failed with `e`
    /// before any response: the next state, a new pick for the same request, if the server
    /// certainly did not process it and the RPC can still be retried; else the caller's error.
    fn next(
        &mut self,
        guard: Option<Guard>,
        generation: u64,
        budget: Option<Duration>,
        e: BoxError,
    ) -> Result<State, BoxError> {
        let (Some(why), Some(g)) = (retry::unprocessed(&*e), guard.as_ref()) else {
            return Err(fail_call(guard, generation, e));
        };
        if self.replay.attempts > retry::MAX_RETRIES || !self.replay.replayable() {
            tracing::debug!(error = %error_chain(&*e), attempts = self.replay.attempts, "unprocessed, not retried");
            return Err(fail_call(guard, generation, e));
        }
        let common = &g.endpoint().0.common;
        let deadline = *self.deadline.get_or_insert_with(|| {
            // The first attempt was sent with the whole budget at `started_at`.
            budget.map(|b| {
                let spent = Duration::from_nanos(common.now().saturating_sub(g.started_at()));
                Instant::now() + b.saturating_sub(spent)
            })
        });
        let sub = g.endpoint().0.clone();
        if why == Unprocessed::ConnectionGone {
            sub.mark_draining(generation);
        }
        // Not the endpoint's failure: release the slot without an outcome.
        drop(guard);
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Ok(State::Fail {
                status: Some(Status::deadline_exceeded(
                    "pickwise: deadline exceeded before a transparent retry",
                )),
            });
        }
        let Some(req) = self.replay.request() else {
            return Err(e);
        };
        tracing::debug!(endpoint = %sub.addr, reason = ?why, attempt = self.replay.attempts, "transparent retry");
        let ready = wait_for_ready(&self.shared, &req);
        // A connection that is going away must not take the retry: wait for the picker that
        // drops it. A refused stream's connection is fine.
        let avoid = (why == Unprocessed::ConnectionGone).then_some((Arc::as_ptr(&sub) as usize, generation));
        Ok(State::Wait {
            fut: Box::pin(wait_for_pick(self.shared.clone(), req, deadline, ready, avoid)),
            deadline,
        })
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Wait { fut: WaitFuture, deadline: Option<Instant> },
        // `deadline`/`timer` bound a wait for the connection's request queue (only armed when
        // the queue is full).
        Ready { picked: Option<Picked>, req: Option<Request>, deadline: Option<Instant>, timer: Option<Pin<Box<Sleep>>> },
        // `budget`: the request's grpc-timeout, to tell a late error for a deadline failure.
        // `timer` enforces the deadline on the whole call, including time queued inside the
        // connection (tonic's own timeout starts later); armed at the first `Pending`.
        Call { #[pin] fut: tonic::transport::channel::ResponseFuture, guard: Option<Guard>, generation: u64, budget: Option<Duration>, timer: Option<Pin<Box<Sleep>>> },
        Fail { status: Option<Status> },
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Ends a request whose call failed before a response. Only a connection-level error (reset,
/// refused, closed, GOAWAY) from the connection the request went out on marks that connection
/// broken; a deadline or a stream-level error is the request's own (grpc-go: per-RPC errors never
/// change connectivity). Returns the error for the caller.
fn fail_call(guard: Option<Guard>, generation: u64, e: BoxError) -> BoxError {
    let Some(g) = guard else { return e };
    if let Some(why) = retry::unprocessed(&*e) {
        // The server never processed it (a retry was not possible): not the endpoint's failure.
        if why == Unprocessed::ConnectionGone {
            g.endpoint().0.mark_draining(generation);
        }
        return e;
    }
    match classify(&*e) {
        CallError::Deadline => {
            finish(g, Some(Code::DeadlineExceeded), None);
            // tonic reports its client-side timeout as CANCELLED; gRPC says DEADLINE_EXCEEDED.
            Box::new(Status::deadline_exceeded("pickwise: deadline exceeded"))
        }
        CallError::Connection => {
            g.endpoint().0.mark_broken(generation);
            finish(g, None, None);
            e
        }
        CallError::Stream => {
            finish(g, None, None);
            e
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum CallError {
    Deadline,
    Connection,
    Stream,
}

fn classify(e: &(dyn std::error::Error + 'static)) -> CallError {
    use std::io::ErrorKind::*;
    let mut source = Some(e);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return CallError::Deadline;
        }
        if err.is::<tonic::ConnectError>() {
            return CallError::Connection;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ConnectionReset
                    | ConnectionAborted
                    | ConnectionRefused
                    | BrokenPipe
                    | NotConnected
                    | UnexpectedEof
            ) {
                return CallError::Connection;
            }
        }
        if let Some(h) = err.downcast_ref::<h2::Error>() {
            if h.is_go_away() || h.is_io() {
                return CallError::Connection;
            }
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_closed() || h.is_incomplete_message() {
                return CallError::Connection;
            }
        }
        source = err.source();
    }
    CallError::Stream
}

/// Completes a request with its gRPC status (`None`: a transport or HTTP failure). `budget` is
/// the request's `grpc-timeout`: an error that arrives after it is a deadline failure whatever
/// the server called it (tonic's server answers an expired deadline with CANCELLED).
fn finish(guard: Guard, code: Option<Code>, budget: Option<Duration>) {
    let common = &guard.endpoint().0.common;
    let now = common.now();
    let code = match (code, budget) {
        (Some(c), Some(b))
            if c != Code::Ok && now.saturating_sub(guard.started_at()) >= b.as_nanos() as u64 =>
        {
            Some(Code::DeadlineExceeded)
        }
        _ => code,
    };
    // Classified once, in the core (Envoy's mapping), unless the user listed failure codes.
    let outcome = match (code, &common.config.failure_codes) {
        (None, _) => Outcome::Failure,
        (Some(code), None) => pickwise::outcome::grpc(code as u32),
        (Some(code), Some(list)) if list.contains(&code) => Outcome::Failure,
        (Some(_), Some(_)) => Outcome::Success,
    };
    let _ = guard.complete(now, outcome);
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers.get("grpc-status").map(|v| Code::from_bytes(v.as_bytes()))
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<ResponseBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            let retry = this.retry;
            let next = match this.state.project() {
                StateProj::Fail { status } => {
                    let status = status
                        .take()
                        .unwrap_or_else(|| Status::unavailable("pickwise: polled after completion"));
                    return Poll::Ready(Err(Box::new(status)));
                }
                StateProj::Wait { fut, deadline } => match ready!(fut.as_mut().poll(cx)) {
                    Ok((picked, req)) => State::Ready {
                        picked: Some(picked),
                        req: Some(req),
                        deadline: *deadline,
                        timer: None,
                    },
                    Err(status) => return Poll::Ready(Err(Box::new(status))),
                },
                StateProj::Ready {
                    picked,
                    req,
                    deadline,
                    timer,
                } => {
                    let Some(p) = picked.as_mut() else {
                        return Poll::Ready(Err(Box::new(Status::unavailable(
                            "pickwise: polled after completion",
                        ))));
                    };
                    let ready = match Service::poll_ready(&mut p.channel, cx) {
                        Poll::Ready(r) => r,
                        Poll::Pending => {
                            // The connection's request queue is full: bounded by the deadline.
                            if timer.is_none() {
                                let d =
                                    deadline.or_else(|| req.as_ref().and_then(|r| deadline::of(r.headers())));
                                *deadline = d;
                                *timer = d.map(|d| Box::pin(tokio::time::sleep_until(d)));
                            }
                            let Some(t) = timer.as_mut() else {
                                return Poll::Pending;
                            };
                            ready!(t.as_mut().poll(cx));
                            if let Some(p) = picked.take() {
                                finish(p.guard, Some(Code::DeadlineExceeded), None);
                            }
                            let status = Status::deadline_exceeded(
                                "pickwise: deadline exceeded waiting for the endpoint's connection",
                            );
                            self.as_mut()
                                .project()
                                .state
                                .set(State::Fail { status: Some(status) });
                            continue;
                        }
                    };
                    if let Err(e) = ready {
                        let generation = p.generation;
                        let guard = picked.take().map(|p| p.guard);
                        let budget = req.as_ref().and_then(|r| deadline::timeout(r.headers()));
                        match retry.as_mut() {
                            Some(r) => match r.next(guard, generation, budget, e.into()) {
                                Ok(next) => next,
                                Err(e) => return Poll::Ready(Err(e)),
                            },
                            None => return Poll::Ready(Err(fail_call(guard, generation, e.into()))),
                        }
                    } else {
                        let (Some(mut p), Some(req)) = (picked.take(), req.take()) else {
                            return Poll::Ready(Err(Box::new(Status::unavailable(
                                "pickwise: polled after completion",
                            ))));
                        };
                        let budget = deadline::timeout(req.headers());
                        let fut = Service::call(&mut p.channel, req);
                        State::Call {
                            fut,
                            guard: Some(p.guard),
                            generation: p.generation,
                            budget,
                            timer: None,
                        }
                    }
                }
                StateProj::Call {
                    fut,
                    guard,
                    generation,
                    budget,
                    timer,
                } => {
                    let resp = match fut.poll(cx) {
                        Poll::Ready(Ok(resp)) => resp,
                        Poll::Ready(Err(e)) => match retry.as_mut() {
                            Some(r) => match r.next(guard.take(), *generation, *budget, e.into()) {
                                Ok(next) => {
                                    self.as_mut().project().state.set(next);
                                    continue;
                                }
                                Err(e) => return Poll::Ready(Err(e)),
                            },
                            None => return Poll::Ready(Err(fail_call(guard.take(), *generation, e.into()))),
                        },
                        Poll::Pending => {
                            let (Some(b), Some(g)) = (*budget, guard.as_ref()) else {
                                return Poll::Pending;
                            };
                            let t = timer.get_or_insert_with(|| {
                                let spent = g.endpoint().0.common.now().saturating_sub(g.started_at());
                                Box::pin(tokio::time::sleep(b.saturating_sub(Duration::from_nanos(spent))))
                            });
                            ready!(t.as_mut().poll(cx));
                            // The deadline passed first: dropping the call cancels its stream
                            // (RST_STREAM), as grpc-go's context does.
                            if let Some(g) = guard.take() {
                                finish(g, Some(Code::DeadlineExceeded), None);
                            }
                            let status = Status::deadline_exceeded(format!(
                                "pickwise: deadline of {} ms exceeded",
                                b.as_millis()
                            ));
                            self.as_mut()
                                .project()
                                .state
                                .set(State::Fail { status: Some(status) });
                            continue;
                        }
                    };
                    // A response started: the RPC is committed, never retried (the replay
                    // buffer goes with the future).
                    let guard = guard.take();
                    let (mut parts, body) = resp.into_parts();
                    if let Some(g) = guard
                        .as_ref()
                        .filter(|g| g.endpoint().0.common.config.report_peer)
                    {
                        parts.extensions.insert(g.endpoint().0.peer.clone());
                    }
                    let status = (parts.status == http::StatusCode::OK).then(|| grpc_status(&parts.headers));
                    let pending = match (guard, status) {
                        // Not HTTP 200: a proxy or server error before gRPC.
                        (Some(g), None) => {
                            finish(g, None, None);
                            None
                        }
                        // Trailers-only response: the outcome is known now.
                        (Some(g), Some(Some(code))) => {
                            let sub = &g.endpoint().0;
                            sub.common.record_report(&sub.core, &parts.headers);
                            sub.common.record_piggyback(&sub.core, &parts.headers);
                            finish(g, Some(code), *budget);
                            None
                        }
                        // Headers of a real response: the latency sample is taken now (tower's
                        // `CompleteOnResponse`); the slot is held until the stream ends.
                        (Some(mut g), _) => {
                            let sub = &g.endpoint().0;
                            let now = sub.common.now();
                            // Prequal: a report in the response's initial metadata.
                            sub.common.record_piggyback(&sub.core, &parts.headers);
                            g.responded(now);
                            Some(g)
                        }
                        (None, _) => None,
                    };
                    let body = ResponseBody {
                        inner: body,
                        pending,
                        budget: *budget,
                    };
                    return Poll::Ready(Ok(http::Response::from_parts(parts, body)));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

pin_project! {
    /// The response body: tonic's body, plus the request's in-flight guard until the trailers
    /// (or the end, or an error) arrive. Dropping it early (cancellation) releases the slot.
    pub struct ResponseBody {
        #[pin]
        inner: tonic::body::Body,
        pending: Option<Guard>,
        budget: Option<Duration>,
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("in_flight", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        let res = ready!(this.inner.poll_frame(cx));
        let finished = match &res {
            Some(Ok(frame)) => frame.trailers_ref().map(|t| {
                if let Some(g) = this.pending.as_ref() {
                    let sub = &g.endpoint().0;
                    sub.common.record_report(&sub.core, t);
                    sub.common.record_piggyback(&sub.core, t);
                }
                grpc_status(t).unwrap_or(Code::Unknown)
            }),
            // A stream reset or broken body after the headers is a failure, whatever code it
            // maps to (a reset with CANCEL is not the client's cancellation: that drops the body).
            Some(Err(_)) => None,
            None => None, // ended without trailers: a broken response
        };
        let ended_badly = matches!(res, Some(Err(_)) | None);
        if finished.is_some() || ended_badly {
            if let Some(guard) = this.pending.take() {
                finish(guard, finished, *this.budget);
            }
        }
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
