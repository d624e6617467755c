//! What the balancer task publishes and every request reads: [`Shared`] (the current picker
//! [`Snapshot`], its version, the control sender), the snapshot's [`Member`]s, what a request does
//! when the snapshot yields no endpoint ([`Unpicked`]), and per-endpoint [`EndpointStats`] read
//! from it. Below the [`picker`](crate::picker) (which picks from a snapshot) and the
//! [`balancer`](crate::balancer) task (which builds them).

use std::borrow::Borrow;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pickwise::balancer::{Prepared, Unpicked as CoreUnpicked};
use pickwise::{EndpointState, LbPolicy};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::common::Common;
use crate::error::NoEndpoint;
use crate::subchannel::{ConnectivityState, Subchannel};

/// State shared by the balancer task and every request.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) version: watch::Sender<u64>,
    pub(crate) common: Arc<Common>,
    /// Requests to the balancer task from the channel handle (policy changes).
    pub(crate) control: mpsc::UnboundedSender<Control>,
}

/// What the channel handle asks of the balancer task.
#[derive(Debug)]
pub(crate) enum Control {
    /// Switch the balancing policy; connections and in-flight requests are kept.
    SetPolicy(LbPolicy),
}

/// An endpoint as a snapshot sees it.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) sub: Arc<Subchannel>,
    pub(crate) channel: Option<Channel>,
    /// The connection generation `channel` belongs to.
    pub(crate) generation: u64,
}

impl Borrow<EndpointState> for Member {
    fn borrow(&self) -> &EndpointState {
        &self.sub.core
    }
}

/// An immutable picker: what requests read, swapped atomically. The decision is the core's
/// [`Prepared`] picker; this adds what only the channel knows (discovery, shutdown, errors).
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// The core's picker (`None` before the first one and after shutdown).
    pub(crate) picker: Option<Prepared<Member>>,
    /// The policy this picker runs.
    pub(crate) policy: LbPolicy,
    /// Discovery has produced at least one update.
    pub(crate) resolved: bool,
    pub(crate) last_error: Option<String>,
    pub(crate) discovery_error: Option<String>,
    /// The balancer has stopped: waiting requests fail with [`NoEndpoint::Shutdown`].
    pub(crate) shutdown: bool,
    /// This picker's pick counters (its policy's), registered when it is published.
    #[cfg(feature = "metrics")]
    pub(crate) instruments: crate::telemetry::PickerInstruments,
}

/// What a request does when the snapshot yields no endpoint.
pub(crate) enum Unpicked {
    /// Something may become ready: wait for the next snapshot.
    Wait,
    /// Nothing will: fail now.
    Fail(NoEndpoint),
}

impl Snapshot {
    /// Classifies a failed pick (grpc's rules: queue while connecting, fail fast otherwise). Only
    /// reached with no ready endpoint: when every ready one is ejected, picks use panic routing.
    pub(crate) fn unpicked(&self, core: CoreUnpicked) -> Unpicked {
        if self.shutdown {
            return Unpicked::Fail(NoEndpoint::Shutdown);
        }
        if !self.resolved {
            return match &self.discovery_error {
                Some(e) => Unpicked::Fail(NoEndpoint::Discovery(e.clone())),
                None => Unpicked::Wait,
            };
        }
        let members = self.picker.as_ref().map_or(0, |p| p.all().len());
        if members == 0 {
            return Unpicked::Fail(NoEndpoint::EmptySet);
        }
        // Sticky TRANSIENT_FAILURE: endpoints reconnecting after a failure count as failing, so
        // when all have failed, fail-fast requests fail now rather than wait for the retries.
        match core {
            CoreUnpicked::Wait => Unpicked::Wait,
            CoreUnpicked::Fail => Unpicked::Fail(NoEndpoint::AllFailing {
                endpoints: members,
                last_error: self.last_error.clone(),
            }),
        }
    }

    /// READY endpoints the picker serves from.
    pub(crate) fn ready_count(&self) -> usize {
        self.picker.as_ref().map_or(0, |p| p.ready().len())
    }

    pub(crate) fn describe(&self) -> String {
        let Some(p) = &self.picker else {
            return "no endpoints yet".into();
        };
        let (connecting, failing) = p.counts();
        let priority = match p.priority() {
            Some(n) if p.all().len() != p.members().len() => format!(" (priority {n})"),
            _ => String::new(),
        };
        format!(
            "{} endpoints{priority}: {} ready, {connecting} connecting, {failing} failing",
            p.members().len(),
            p.ready().len(),
        )
    }
}

/// One endpoint's statistics, from [`BalancedChannel::stats`](crate::BalancedChannel::stats).
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointStats {
    /// The address (discovery key).
    pub address: String,
    /// Connectivity state.
    pub state: ConnectivityState,
    /// Weight (within its locality).
    pub weight: u32,
    /// Its priority (0 the highest).
    pub priority: u32,
    /// Its locality's weight (1 without localities).
    pub locality_weight: u32,
    /// Requests in flight.
    pub in_flight: u32,
    /// Latency estimate (the cost policy's EWMA), decayed to now; `None` before the first sample
    /// and under least-request (which keeps none).
    pub latency: Option<Duration>,
    /// Requests started.
    pub picks: u64,
    /// Requests that failed.
    pub failures: u64,
    /// Remaining ejection time, if ejected.
    pub ejected_for: Option<Duration>,
}

/// Prequal's probing, from [`BalancedChannel::prequal_stats`](crate::BalancedChannel::prequal_stats):
/// counters over the channel's life (all policies), the answers pooled now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrequalStats {
    /// Probes sent (each on its endpoint's own connection).
    pub probes_sent: u64,
    /// Probes answered (and recorded).
    pub probes_answered: u64,
    /// Probes that failed or timed out (the endpoint is not marked failed for it).
    pub probes_failed: u64,
    /// Probes answered `UNIMPLEMENTED`: the server has no probe service.
    pub probes_unimplemented: u64,
    /// Probes owed but not sent: over the concurrency bound, or to an endpoint without a
    /// probe service.
    pub probes_dropped: u64,
    /// Answers read from responses (`x-prequal-rif` / `x-prequal-latency-us`): free probes.
    pub piggybacked: u64,
    /// Answers in the pool now (0 under other policies).
    pub pooled: usize,
    /// Endpoints whose current connection's server has no probe service (not probed).
    pub without_probe_service: Vec<String>,
}

impl Shared {
    pub(crate) fn prequal_stats(&self) -> PrequalStats {
        use std::sync::atomic::Ordering::Relaxed;
        let p = &self.common.probing;
        let snap = self.snapshot.load();
        let members: &[Member] = snap.picker.as_ref().map_or(&[], |p| p.all());
        PrequalStats {
            probes_sent: p.sent.load(Relaxed),
            probes_answered: p.answered.load(Relaxed),
            probes_failed: p.failed.load(Relaxed),
            probes_unimplemented: p.unimplemented.load(Relaxed),
            probes_dropped: p.dropped.load(Relaxed),
            piggybacked: p.piggybacked.load(Relaxed),
            pooled: snap
                .picker
                .as_ref()
                .and_then(|p| p.probes())
                .map_or(0, |pool| pool.len()),
            without_probe_service: members
                .iter()
                .filter(|m| m.sub.lacks_probe_service(m.sub.generation()))
                .map(|m| m.sub.addr.clone())
                .collect(),
        }
    }

    pub(crate) fn stats(&self) -> Vec<EndpointStats> {
        let now = self.common.now();
        let snap = self.snapshot.load();
        let members: &[Member] = snap.picker.as_ref().map_or(&[], |p| p.all());
        members
            .iter()
            .map(|m| {
                let e = &m.sub.core;
                EndpointStats {
                    address: m.sub.addr.clone(),
                    state: m.sub.state(),
                    weight: e.weight(),
                    priority: m.sub.priority.load(std::sync::atomic::Ordering::Relaxed),
                    locality_weight: m.sub.locality_weight.load(std::sync::atomic::Ordering::Relaxed),
                    in_flight: e.in_flight(),
                    latency: e
                        .latency_ns()
                        .map(|_| Duration::from_nanos(self.common.pool.estimate(e, now) as u64)),
                    picks: e.picks(),
                    failures: e.failures(),
                    ejected_for: e
                        .ejected_for_ms(now)
                        .map(|ms| Duration::from_millis(u64::from(ms))),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! What only the channel decides (the aggregate-state rules are the core's, tested there):
    //! discovery errors, an empty set, shutdown.
    use super::*;

    #[test]
    fn channel_level_outcomes() {
        let unresolved = Snapshot::default();
        assert!(matches!(unresolved.unpicked(CoreUnpicked::Fail), Unpicked::Wait));
        let failed = Snapshot {
            discovery_error: Some("boom".into()),
            ..Snapshot::default()
        };
        assert!(matches!(
            failed.unpicked(CoreUnpicked::Wait),
            Unpicked::Fail(NoEndpoint::Discovery(_))
        ));
        let empty = Snapshot {
            resolved: true,
            ..Snapshot::default()
        };
        assert!(matches!(
            empty.unpicked(CoreUnpicked::Wait),
            Unpicked::Fail(NoEndpoint::EmptySet)
        ));
        let down = Snapshot {
            shutdown: true,
            ..Snapshot::default()
        };
        assert!(matches!(
            down.unpicked(CoreUnpicked::Wait),
            Unpicked::Fail(NoEndpoint::Shutdown)
        ));
    }
}
