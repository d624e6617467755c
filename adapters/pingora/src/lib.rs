//! # pickwise-pingora
//!
//! pickwise's load balancing inside [Pingora](https://github.com/cloudflare/pingora) proxies:
//! a `BackendSelection` ([`Selector`]) driven by the `pickwise` core's sans-IO
//! [`Balancer`](pickwise::balancer::Balancer) — power of two choices with least-request,
//! peak-EWMA or go-zero costs, (weighted) round robin, Envoy-compatible ring hash (byte-identical
//! to Envoy's and the core's; plain, bounded load or affinity) and Maglev — with passive outlier
//! ejection. This crate only translates Pingora's world into the core's events: backend sets into
//! membership, health results into readiness, hooks into outcomes; the core decides.
//!
//! - **State survives rebuilds.** Pingora's `LoadBalancer::update` rebuilds the selector from
//!   scratch on every discovery change; the group's core balancer (load, latency, ejection,
//!   readiness, timers) lives in a [`Shared`] passed as the selection config, and each rebuild
//!   hands it the new backend set (`insert` / `remove`). Selectors pick with the
//!   [`Prepared`](pickwise::balancer::Prepared) picker the group published last.
//! - **Completion feedback.** `select` returns a `Backend` and has no completion callback; the
//!   group finds the backend's state without a lock, a [`Lease`] holds the in-flight slot, and
//!   [`Tracker`] records the outcome from the `ProxyHttp` hooks, classified by the core's
//!   [`outcome`](pickwise::outcome) rules (connect failures and upstream errors fail, client
//!   errors are neutral, HTTP 5xx fail, 1xx is ignored, `grpc-status` by Envoy's mapping; latency
//!   at response headers, successes only) and releases the slot when the request ends or is
//!   retried elsewhere.
//! - **Weighted round robin on load reports** (gRFC A58; Envoy's
//!   `client_side_weighted_round_robin`): with [`LbPolicy::WeightedRoundRobin`](pickwise::LbPolicy)
//!   (by name `weighted_round_robin`), backends report their load per response in Envoy's ORCA
//!   header `endpoint-load-metrics` — `TEXT cpu_utilization:0.5,rps_fractional:10`,
//!   `JSON {"cpu_utilization":0.5,"rps_fractional":10}` or `BIN <base64 OrcaLoadReport>` — or
//!   `endpoint-load-metrics-bin` (headers or trailers; parsed by `pickwise-orca` as Envoy does).
//!   [`Tracker::response`] / [`Tracker::trailers`] feed the first report of each attempt to the
//!   backend's state; a malformed one is logged at debug level and ignored. A backend's weight is
//!   `qps / (utilization + eps / qps × error_utilization_penalty)`; the core recomputes the
//!   weights every update period from the same timer runs as below and publishes a new picker
//!   ([`Shared::picker_version`] counts them). Blackout, expiration and the update period are the
//!   [`WrrConfig`](pickwise::wrr::WrrConfig)'s; pickwise also clamps weights to [0.1, 10] × the
//!   mean, as gRPC C-core does. `tests/envoy_wrr.rs` runs Envoy 1.40 in front of the same
//!   backends: shares agree within 0.1 points (1:10 and 10:30:60).
//! - **Retries** go elsewhere: [`Tracker::select`] never returns a backend an earlier attempt of
//!   the request used while another healthy one exists (Envoy's `previous_hosts` predicate).
//! - **Health.** Pingora's health checks report to the core balancer through
//!   [`Shared::health_observer`] ([`tcp_health_check`] installs it) and a new picker is published
//!   at once, so a backend they mark down is not picked at all (rather than picked, refused and
//!   replaced by its neighbour).
//! - **Timers.** The core balancer's timers (ejection expiry, multiplier decay, stamp
//!   re-basing, gRFC A50 detection, weighted round robin's weight updates) run from lease starts and completions when due
//!   ([`Shared::handle_timeout`]); nothing to schedule.
//! - **Prequal** (NSDI '24; [`LbPolicy::Prequal`](pickwise::LbPolicy), by name
//!   `pickwise_prequal`): picks by the core's hot-cold rule over fresh probe answers (requests in
//!   flight and latency per backend), P2C while fewer than two are fresh. The [`Prober`], a
//!   Pingora background service, sends the probes the picker owes as `GET /prequal/probe` on one
//!   HTTP/1.1 connection per backend (prequal-rs's and envoy-prequal's convention, served by
//!   `pickwise_orca::prequal`), never on the select path; [`Tracker::response`] records reports
//!   backends piggyback on responses (`x-prequal-rif`, `x-prequal-latency-us`).
//!   [`Shared::probe_stats`] counts probes sent, answered and failed.
//! - **Discovery**: Pingora's `discovery::Static`, or [`StreamDiscovery`] from any stream of
//!   endpoint changes.
//! - **Metrics** (feature `metrics`): `pickwise-tonic`'s `pickwise.*` instruments — picks per
//!   policy and per backend (counted at each lease), in-flight and ejections by reason — through
//!   the `metrics` facade; `Shared::with_target` names the group (`grpc.target`).
//!
//! ```no_run
//! use pickwise::{LbPolicy, Policy, PoolConfig};
//! use pickwise_pingora::{Selector, Shared};
//! use pingora::lb::{discovery, Backends, LoadBalancer};
//!
//! let shared = Shared::new(LbPolicy::P2c(Policy::PeakEwma), PoolConfig::default());
//! let discovery = discovery::Static::try_from_iter(["127.0.0.1:8001", "127.0.0.1:8002"]).unwrap();
//! let mut lb: LoadBalancer<Selector> =
//!     LoadBalancer::from_backends_with_config(Backends::new(discovery), Some(shared.clone()));
//! lb.set_health_check(pickwise_pingora::tcp_health_check(&shared));
//! // In ProxyHttp::upstream_peer (CTX = Tracker::new(shared)): ctx.select(&lb, key, 8) ...
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod discovery;
mod health;
mod lease;
mod prober;
mod selection;
mod state;
#[cfg(feature = "metrics")]
mod telemetry;

pub use discovery::{Change, StreamDiscovery};
pub use health::{tcp_health_check, HealthObserver};
pub use lease::{lease, observed, select_lease, Lease, PoolRef, Tracker};
pub use pickwise;
pub use prober::{ProbeConfig, ProbeStats, Prober, IDLE_TICKS};
pub use selection::{Selector, SelectorIter};
pub use state::Shared;
