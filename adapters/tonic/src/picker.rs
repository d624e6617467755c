//! The picker side of a request (grpc-go's `picker_wrapper`): one pick against the current
//! snapshot with the core's prepared picker, the request's hash key, and the slow path that waits for
//! a new snapshot — bounded by the request's own deadline — when no endpoint is ready yet.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use pickwise::balancer::Unpicked as CoreUnpicked;
use pickwise::{InFlight, LbPolicy};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Status;

use crate::config::Config;
use crate::deadline;
use crate::error::NoEndpoint;
use crate::snapshot::{Shared, Snapshot, Unpicked};
use crate::subchannel::SubRef;

pub(crate) type Request = http::Request<tonic::body::Body>;
pub(crate) type Guard = InFlight<SubRef, SubRef>;

/// A request hash set by the caller as a request extension; takes precedence over the hash header.
///
/// ```
/// use pickwise_tonic::RequestHash;
/// let mut req = tonic::Request::new(());
/// req.extensions_mut().insert(RequestHash::of(b"user-42"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestHash(pub u64);

impl RequestHash {
    /// XXH64 (seed 0) of `key`, as Envoy and grpc-go hash request keys.
    pub fn of(key: &[u8]) -> Self {
        Self(pickwise::hash::xxh64(key))
    }
}

/// A chosen endpoint with its guard.
pub(crate) struct Picked {
    pub(crate) channel: Channel,
    pub(crate) guard: Guard,
    /// The connection generation `channel` belongs to.
    pub(crate) generation: u64,
}

fn request_hash(config: &Config, req: &Request) -> Option<u64> {
    if let Some(h) = req.extensions().get::<RequestHash>() {
        return Some(h.0);
    }
    let name = config.hash_header.as_ref()?;
    let mut values = req.headers().get_all(name).iter().peekable();
    values.peek()?;
    Some(pickwise::hash::xxh64_joined(values.map(|v| v.as_bytes())))
}

/// One pick against one snapshot, by the core's prepared picker. Allocates nothing, takes no lock.
pub(crate) fn try_pick(shared: &Shared, snap: &Snapshot, req: &Request) -> Result<Picked, Unpicked> {
    let common = &shared.common;
    let Some(picker) = &snap.picker else {
        return Err(snap.unpicked(CoreUnpicked::Wait));
    };
    let now = common.now();
    let key = match snap.policy {
        LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } => request_hash(&common.config, req),
        _ => None,
    };
    let member = picker
        .pick(now, key, &mut || fastrand::u64(..))
        .map_err(|e| snap.unpicked(e))?;
    // Ready in the core but the snapshot predates its channel: the next snapshot has it.
    let channel = member.channel.clone().ok_or(Unpicked::Wait)?;
    // Prequal: a pick may leave probes owed; the prober sends them (off this path).
    if let Some(probes) = picker.probes() {
        common.probing.after_pick(probes);
    }
    // Handles registered when the picker was published and the endpoint inserted: relaxed
    // atomic adds, no allocation, no lock.
    #[cfg(feature = "metrics")]
    {
        snap.instruments.picks.increment(1);
        member.sub.instruments.picks.increment(1);
        if !common.pool.is_available(&member.sub.core, now) {
            snap.instruments.panic_picks.increment(1);
        }
    }
    let sub = SubRef(member.sub.clone());
    let guard = InFlight::start(sub.clone(), sub, now);
    Ok(Picked {
        channel,
        guard,
        generation: member.generation,
    })
}

pub(crate) type WaitFuture = Pin<Box<dyn Future<Output = Result<(Picked, Request), Status>> + Send>>;

/// Slow path: no endpoint ready yet but some connecting (or, for a wait-for-ready request, all
/// failing). Waits for new pickers until the request's own deadline or the channel's
/// wait-for-ready bound, whichever comes first (grpc-go `picker_wrapper.go`: a queued pick ends
/// with `DEADLINE_EXCEEDED` at the RPC's deadline); then sends the server what remains of the
/// deadline (`http2_client.go`).
///
/// `wait_for_ready` (grpc-go's `WaitForReady` call option): the request also waits through
/// TRANSIENT_FAILURE and an empty endpoint set, to its own deadline; only without a deadline
/// does the channel's bound apply, so it never hangs. A fail-fast request fails at once there.
///
/// `avoid` (a subchannel's address and a connection generation): a transparent retry after that
/// connection refused new requests; a pick of it waits for a picker without it (the subchannel
/// is replacing it).
///
/// A picker that still lists ready endpoints but could not pick one is out of date (its
/// endpoints changed since it was published): every request waits for the next one rather than
/// failing.
pub(crate) async fn wait_for_pick(
    shared: Arc<Shared>,
    req: Request,
    deadline: Option<Instant>,
    wait_for_ready: bool,
    avoid: Option<(usize, u64)>,
) -> Result<(Picked, Request), Status> {
    #[cfg(feature = "metrics")]
    let (start, labels) = (Instant::now(), shared.common.config.labels.clone());
    let result = queued(shared, req, deadline, wait_for_ready, avoid).await;
    #[cfg(feature = "metrics")]
    crate::telemetry::record_queued(
        &labels,
        start.elapsed(),
        match &result {
            Ok(_) => "picked",
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => "deadline_exceeded",
            Err(_) => "failed",
        },
    );
    result
}

async fn queued(
    shared: Arc<Shared>,
    mut req: Request,
    deadline: Option<Instant>,
    wait_for_ready: bool,
    avoid: Option<(usize, u64)>,
) -> Result<(Picked, Request), Status> {
    let start = Instant::now();
    let wait = shared.common.config.wait_for_ready;
    let bound = start + wait;
    let until = match deadline {
        Some(d) if wait_for_ready => d,
        Some(d) => d.min(bound),
        None => bound,
    };
    let mut rx = shared.version.subscribe();
    let mut failing = None;
    loop {
        let snap = shared.snapshot.load_full();
        match try_pick(&shared, &snap, &req) {
            Ok(p)
                if avoid.is_some_and(|(sub, generation)| {
                    Arc::as_ptr(&p.guard.endpoint().0) as usize == sub && p.generation == generation
                }) => {} // dropping the guard releases its slot, with no outcome
            Ok(p) => {
                if let Some(d) = deadline {
                    if !deadline::set_remaining(req.headers_mut(), d) {
                        return Err(deadline_exceeded(start, &snap));
                    }
                }
                return Ok((p, req));
            }
            Err(Unpicked::Fail(NoEndpoint::Shutdown)) => return Err(NoEndpoint::Shutdown.into()),
            Err(Unpicked::Fail(_)) if snap.ready_count() > 0 => {}
            Err(Unpicked::Fail(e)) if !wait_for_ready => return Err(e.into()),
            Err(Unpicked::Fail(e)) => failing = Some(e),
            Err(Unpicked::Wait) => failing = None,
        }
        match tokio::time::timeout_at(until, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(NoEndpoint::Shutdown.into()),
            Err(_) if deadline.is_some_and(|d| d <= until) => return Err(deadline_exceeded(start, &snap)),
            Err(_) => {
                if let Some(e) = failing {
                    return Err(e.into());
                }
                let state = snap.describe();
                return Err(NoEndpoint::Timeout {
                    waited_ms: wait.as_millis() as u64,
                    state,
                }
                .into());
            }
        }
    }
}

fn deadline_exceeded(start: Instant, snap: &Snapshot) -> Status {
    Status::deadline_exceeded(format!(
        "pickwise: deadline exceeded after {} ms waiting for a ready endpoint ({})",
        start.elapsed().as_millis(),
        snap.describe()
    ))
}
