//! Prequal's prober (NSDI '24, §4): one task per channel while the policy is `pickwise_prequal`.
//! It sleeps until a pick leaves probes owed (the pick path wakes it lock-free, see
//! [`Probing::after_pick`](crate::common::Probing::after_pick)) or the idle interval passes, takes
//! the targets the core draws ([`Prepared::probe_targets`]), and sends each probe
//! (`pickwise.prequal.v1.Prequal/Probe`) on that endpoint's own connection, the subchannel's
//! tonic `Channel`, so the answer describes the server the queries reach, over the path they
//! take. Each answer is recorded ([`Prepared::record_probe`]) on the snapshot its target came
//! from, stamped with the time it arrived.
//!
//! Bounds: at most `2 × pool_size` probes in flight and one per endpoint (the pool keeps one
//! answer per endpoint, so a second probe in flight to the same server would only replace the
//! first one's answer), each given `min(max_age, 1 s)`; probes owed beyond that are dropped
//! (counted), never queued. A failed or late probe only counts: it
//! never marks the endpoint failed (the request path decides that). A server answering
//! `UNIMPLEMENTED` has no probe service: its connection is not probed again (Prequal picks among
//! the others and falls back to P2C while fewer than two answers are usable).
//!
//! [`Prepared::probe_targets`]: pickwise::balancer::Prepared::probe_targets
//! [`Prepared::record_probe`]: pickwise::balancer::Prepared::record_probe

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use pickwise::prequal::{PrequalConfig, ProbeReport};
use tokio::task::JoinSet;
use tonic::Status;

use crate::snapshot::{Shared, Snapshot};

/// Most probe targets taken at once.
const BATCH: usize = 64;

/// What one probe came back with: the snapshot and position of its target.
type Answer = (Arc<Snapshot>, usize, Result<ProbeReport, Status>);

/// Runs until aborted (the balancer aborts it when the policy changes or the channel stops).
pub(crate) async fn run(shared: Arc<Shared>, config: PrequalConfig) {
    let limit = (2 * usize::from(config.pool_size)).clamp(2, 2 * pickwise::prequal::MAX_POOL_SIZE);
    let timeout =
        Duration::from_nanos(config.max_age_ns).clamp(Duration::from_millis(1), Duration::from_secs(1));
    // The core decides when an idle probe is due; looking twice per interval keeps it within
    // 1.5 intervals.
    let idle = (config.idle_probe_ns > 0)
        .then(|| Duration::from_nanos(config.idle_probe_ns / 2).max(Duration::from_millis(1)));
    let mut in_flight: JoinSet<Answer> = JoinSet::new();
    // The endpoints with a probe in flight (their subchannels' addresses).
    let mut busy: HashSet<usize> = HashSet::new();
    let probing = &shared.common.probing;
    loop {
        // Answers first (they free room and the pool wants them fresh), then the probes owed.
        while let Some(done) = in_flight.try_join_next() {
            if let Ok(answer) = done {
                record(&shared, &mut busy, answer);
            }
        }
        if in_flight.is_empty() {
            // A probe task that ended without an answer (it cannot panic, but) frees its endpoint.
            busy.clear();
        }
        launch(&shared, &mut in_flight, &mut busy, limit, timeout);
        let tick = async {
            match idle {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = probing.woken() => {}
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok(answer) = done {
                    record(&shared, &mut busy, answer);
                }
            }
            _ = tick => {}
        }
    }
}

/// Sends the probes owed now, up to the bound; drops the rest.
fn launch(
    shared: &Shared,
    in_flight: &mut JoinSet<Answer>,
    busy: &mut HashSet<usize>,
    limit: usize,
    timeout: Duration,
) {
    let snap = shared.snapshot.load_full();
    let Some(picker) = &snap.picker else { return };
    let Some(pool) = picker.probes() else { return };
    let probing = &shared.common.probing;
    let now = shared.common.now();
    let mut rng = || fastrand::u64(..);
    let mut targets = [0usize; BATCH];
    let mut room = limit.saturating_sub(in_flight.len());
    while room > 0 {
        // Only endpoints that can take a probe now are drawn (a connection, a probe service,
        // no probe in flight), so owed probes are not lost on the others.
        let k = picker.probe_targets_where(now, &mut rng, &mut targets[..room.min(BATCH)], |m| {
            m.channel.is_some()
                && !m.sub.lacks_probe_service(m.generation)
                && !busy.contains(&(Arc::as_ptr(&m.sub) as usize))
        });
        if k == 0 {
            break;
        }
        for &pos in &targets[..k] {
            let m = &picker.ready()[pos];
            let channel = match &m.channel {
                Some(c)
                    if !m.sub.lacks_probe_service(m.generation)
                        && busy.insert(Arc::as_ptr(&m.sub) as usize) =>
                {
                    c.clone()
                }
                _ => {
                    dropped(shared, 1);
                    continue;
                }
            };
            room -= 1;
            probing.sent.fetch_add(1, Relaxed);
            #[cfg(feature = "metrics")]
            probing.instruments.sent.increment(1);
            let snap = snap.clone();
            in_flight.spawn(async move {
                let answer = match tokio::time::timeout(timeout, pickwise_orca::prequal::probe(channel)).await
                {
                    Ok(Ok(r)) => Ok(r.into()),
                    Ok(Err(status)) => Err(status),
                    Err(_) => Err(Status::deadline_exceeded("pickwise: probe timed out")),
                };
                (snap, pos, answer)
            });
        }
    }
    // Beyond the bound: dropped, not queued (a late probe is worth nothing).
    if pool.probes_owed() > 0 {
        let n = pool.take_probes(now, pool.probes_owed());
        dropped(shared, n);
    }
}

fn dropped(shared: &Shared, n: u32) {
    let probing = &shared.common.probing;
    probing.dropped.fetch_add(u64::from(n), Relaxed);
    #[cfg(feature = "metrics")]
    probing.instruments.dropped.increment(u64::from(n));
}

/// Records one probe's answer on the snapshot its target came from.
fn record(shared: &Shared, busy: &mut HashSet<usize>, (snap, pos, answer): Answer) {
    let probing = &shared.common.probing;
    let Some(picker) = &snap.picker else { return };
    let m = &picker.ready()[pos];
    busy.remove(&(Arc::as_ptr(&m.sub) as usize));
    match answer {
        Ok(report) => {
            let now = shared.common.now();
            picker.record_probe(&m.sub.core, report, now, &mut || fastrand::u64(..));
            probing.answered.fetch_add(1, Relaxed);
            #[cfg(feature = "metrics")]
            probing.instruments.answered.increment(1);
        }
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            if m.sub.set_no_probe_service(m.generation) {
                tracing::info!(endpoint = %m.sub.addr, "no Prequal probe service: not probed on this connection");
            }
            probing.unimplemented.fetch_add(1, Relaxed);
            #[cfg(feature = "metrics")]
            probing.instruments.unimplemented.increment(1);
        }
        Err(status) => {
            tracing::debug!(endpoint = %m.sub.addr, %status, "Prequal probe failed");
            probing.failed.fetch_add(1, Relaxed);
            #[cfg(feature = "metrics")]
            probing.instruments.failed.increment(1);
        }
    }
}
