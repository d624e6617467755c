//! # pickwise-pingora
//!
//! pickwise's load balancing inside [Pingora](https://github.com/cloudflare/pingora) proxies:
//! a `BackendSelection` ([`Selector`]) whose decision is the `pickwise` core's
//! [`Picker`](pickwise::Picker) — power of two choices with least-request, peak-EWMA or go-zero
//! costs, round robin, Envoy-compatible ring hash (byte-identical to Envoy's and the core's;
//! plain, bounded load or affinity) and Maglev — with passive outlier ejection.
//!
//! - **State survives rebuilds.** Pingora's `LoadBalancer::update` rebuilds the selector from
//!   scratch on every discovery or health change; load, latency and ejection live in a
//!   [`Shared`] passed as the selection config, keyed by backend address.
//! - **Completion feedback.** `select` returns a `Backend` and has no completion callback; the
//!   group finds the backend's state without a lock, a [`Lease`] holds the in-flight slot, and [`Tracker`] records
//!   the outcome from the `ProxyHttp` hooks (connect failures, proxy errors, HTTP 5xx,
//!   `grpc-status`, latency at response headers) and releases the slot when the request ends or
//!   is retried elsewhere.
//! - **Discovery**: Pingora's `discovery::Static`, or [`StreamDiscovery`] from any stream of
//!   endpoint changes. Pingora's health checks keep working: a backend they mark down is skipped
//!   by `select`, and passive ejection works alongside.
//!
//! ```no_run
//! use pickwise::{LbPolicy, Policy, PoolConfig};
//! use pickwise_pingora::{Selector, Shared};
//! use pingora::lb::{discovery, Backends, LoadBalancer};
//!
//! let shared = Shared::new(LbPolicy::P2c(Policy::PeakEwma), PoolConfig::default());
//! let discovery = discovery::Static::try_from_iter(["127.0.0.1:8001", "127.0.0.1:8002"]).unwrap();
//! let lb: LoadBalancer<Selector> =
//!     LoadBalancer::from_backends_with_config(Backends::new(discovery), Some(shared));
//! // In ProxyHttp::upstream_peer: let backend = lb.select(b"", 8); ctx.tracker.start(&backend) ...
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod discovery;
mod lease;
mod selection;
mod state;

pub use discovery::{Change, StreamDiscovery};
pub use lease::{lease, select_lease, Lease, PoolRef, Tracker};
pub use pickwise;
pub use selection::{Selector, SelectorIter};
pub use state::Shared;
