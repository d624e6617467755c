//! Instruments (feature `metrics`): the `pickwise.*` names and attributes of `pickwise-tonic`'s
//! (see the README's table), recorded through the [`metrics`](https://docs.rs/metrics) facade.
//! Without a recorder installed every handle is a no-op; without the feature nothing here is
//! compiled in.
//!
//! - **At each lease** ([`lease`](crate::lease), the backend a request actually goes to, after
//!   Pingora's health checks and a retry's exclusions): `pickwise.picks` (the group's policy)
//!   and `pickwise.endpoint.picks`; one relaxed add each, handles registered per backend when a
//!   rebuild first sees it.
//! - **When the core's timers run** ([`Shared::handle_timeout`](crate::Shared::handle_timeout),
//!   at least once a second while requests flow), at each rebuild and when a completion ejects
//!   a backend: per-backend `pickwise.endpoint.in_flight`, and `pickwise.endpoint.ejections` with
//!   the reason the core gives ([`Pool::ejection`](pickwise::Pool::ejection)); each ejection is
//!   counted once.
//! - **Prequal** (`pickwise_prequal` groups only): `pickwise.prequal.probes_sent` and
//!   `pickwise.prequal.probe_results` (`result` = `answered` or `failed`) as the
//!   [`Prober`](crate::Prober) sends and hears back, and `pickwise.prequal.piggybacked` for
//!   reports read from responses; one relaxed add each. `pickwise.prequal.fallback_picks`, the
//!   picks the P2C fallback decided (fewer than two usable answers), when the core's timers run. The names and attributes are
//!   `pickwise-tonic`'s (which also counts `result="unimplemented"`, a gRPC status HTTP probes
//!   do not have).
//!
//! `grpc.target` is the group's name ([`Shared::with_target`](crate::Shared::with_target);
//! `pickwise` by default), `pickwise.endpoint` the backend's `ip:port`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use metrics::{counter, gauge, Counter, Gauge, SharedString};
use pickwise::prequal::{FallbackMeter, ProbePool};
use pickwise::{EndpointState, LbPolicy, Pool};

use crate::prober::ProbeEvent;

/// One backend's handles.
#[derive(Debug)]
struct Endpoint {
    state: Arc<EndpointState>,
    addr: SharedString,
    picks: Counter,
    in_flight: Gauge,
    /// Ejected when last sampled.
    was_ejected: AtomicBool,
}

/// One upstream group's instruments.
#[derive(Debug)]
pub(crate) struct GroupInstruments {
    target: SharedString,
    picks: Counter,
    endpoints: ArcSwap<HashMap<SocketAddr, Arc<Endpoint>>>,
    /// Prequal's probe counters (`None` under other policies).
    prequal: Option<[Counter; 4]>,
    /// Prequal's fallback picks, sampled from the core's count (`None` under other policies).
    fallbacks: Option<(Counter, Mutex<FallbackMeter>)>,
}

impl GroupInstruments {
    pub(crate) fn new(target: &str, policy: &LbPolicy) -> Self {
        describe();
        let target = SharedString::from(target.to_owned());
        let t = &target;
        let prequal = matches!(policy, LbPolicy::Prequal(_)).then(|| {
            [
                counter!("pickwise.prequal.probes_sent", "grpc.target" => t.clone()),
                counter!("pickwise.prequal.probe_results", "grpc.target" => t.clone(), "result" => "answered"),
                counter!("pickwise.prequal.probe_results", "grpc.target" => t.clone(), "result" => "failed"),
                counter!("pickwise.prequal.piggybacked", "grpc.target" => t.clone()),
            ]
        });
        let fallbacks = prequal.is_some().then(|| {
            let c = counter!("pickwise.prequal.fallback_picks", "grpc.target" => target.clone());
            (c, Mutex::default())
        });
        Self {
            picks: counter!("pickwise.picks", "grpc.target" => target.clone(), "pickwise.policy" => policy.name()),
            prequal,
            fallbacks,
            target,
            endpoints: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// A request leased `addr` (the pick path: two relaxed adds).
    pub(crate) fn picked(&self, addr: &SocketAddr) {
        self.picks.increment(1);
        if let Some(e) = self.endpoints.load().get(addr) {
            e.picks.increment(1);
        }
    }

    /// A Prequal probe event (one relaxed add).
    pub(crate) fn probe(&self, event: ProbeEvent) {
        if let Some(c) = &self.prequal {
            let i = match event {
                ProbeEvent::Sent => 0,
                ProbeEvent::Answered => 1,
                ProbeEvent::Failed => 2,
                ProbeEvent::Piggybacked => 3,
            };
            c[i].increment(1);
        }
    }

    /// The backend set of a rebuild: handles for new backends (known ones keep theirs).
    pub(crate) fn rebuild(&self, backends: &HashMap<SocketAddr, Arc<EndpointState>>) {
        let old = self.endpoints.load();
        let t = &self.target;
        let next = backends
            .iter()
            .map(|(addr, state)| {
                let e = match old.get(addr) {
                    Some(e) if Arc::ptr_eq(&e.state, state) => e.clone(),
                    _ => {
                        let a = SharedString::from(addr.to_string());
                        Arc::new(Endpoint {
                            picks: counter!("pickwise.endpoint.picks", "grpc.target" => t.clone(), "pickwise.endpoint" => a.clone()),
                            in_flight: gauge!("pickwise.endpoint.in_flight", "grpc.target" => t.clone(), "pickwise.endpoint" => a.clone()),
                            addr: a,
                            state: state.clone(),
                            was_ejected: AtomicBool::new(false),
                        })
                    }
                };
                (*addr, e)
            })
            .collect();
        self.endpoints.store(Arc::new(next));
    }

    /// Counts the picks the P2C fallback decided since the last sample, from `probes` (the
    /// published picker's pool).
    pub(crate) fn sample_prequal(&self, probes: Option<&Arc<ProbePool>>) {
        if let Some((counter, meter)) = &self.fallbacks {
            // A poisoned meter only lost a sample's count: keep counting.
            let n = meter.lock().unwrap_or_else(|p| p.into_inner()).advance(probes);
            if n > 0 {
                counter.increment(u64::from(n));
            }
        }
    }

    /// Sets the in-flight gauges and counts ejections begun since the last sample.
    pub(crate) fn sample(&self, pool: &Pool, now: u64) {
        for e in self.endpoints.load().values() {
            e.in_flight.set(f64::from(e.state.in_flight()));
            match pool.ejection(&e.state, now) {
                Some(reason) => {
                    if !e.was_ejected.swap(true, Ordering::Relaxed) {
                        counter!("pickwise.endpoint.ejections",
                            "grpc.target" => self.target.clone(),
                            "pickwise.endpoint" => e.addr.clone(),
                            "reason" => reason.as_str())
                        .increment(1);
                    }
                }
                None => e.was_ejected.store(false, Ordering::Relaxed),
            }
        }
    }
}

/// Units and help text, once per process.
fn describe() {
    use metrics::{describe_counter, describe_gauge};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        describe_counter!("pickwise.picks", "Picks by the group's policy.");
        describe_counter!("pickwise.endpoint.picks", "Picks of one backend.");
        describe_gauge!(
            "pickwise.endpoint.in_flight",
            "Requests in flight on one backend."
        );
        describe_counter!(
            "pickwise.endpoint.ejections",
            "Outlier ejections of one backend, by reason."
        );
        describe_counter!("pickwise.prequal.probes_sent", "Prequal probes sent.");
        describe_counter!(
            "pickwise.prequal.probe_results",
            "Prequal probes ended, by result (answered with a report; failed: no report, error or timeout)."
        );
        describe_counter!(
            "pickwise.prequal.piggybacked",
            "Prequal reports read from responses."
        );
        describe_counter!(
            "pickwise.prequal.fallback_picks",
            "Prequal picks decided by the P2C fallback (fewer than two usable answers; the rest by the hot-cold rule)."
        );
    });
}
