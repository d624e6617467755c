//! # pickwise-xds
//!
//! Proxyless gRPC load balancing driven by an xDS control plane (Istio, Traffic Director,
//! go-control-plane, Envoy Gateway...), for tonic clients: what grpc-go and gRPC C-core do
//! natively for `xds:///` targets (gRFC A27, A28, A42, A46, A50, A52, A53, A76), on
//! [`pickwise_tonic`]'s balancer.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // GRPC_XDS_BOOTSTRAP=/etc/grpc/bootstrap.json (the same file grpc-go and C-core read)
//! let channel = pickwise_xds::XdsBuilder::new().build("xds:///greeter")?;
//! let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
//! let reply = client.check(tonic_health::pb::HealthCheckRequest::default()).await?;
//! let served_by = reply.extensions().get::<pickwise_tonic::Peer>();
//! # Ok(()) }
//! ```
//!
//! # What it follows
//!
//! - **Bootstrap** ([`bootstrap`]): `GRPC_XDS_BOOTSTRAP` / `GRPC_XDS_BOOTSTRAP_CONFIG`.
//! - **ADS, state of the world**, one stream: LDS (API listener → `HttpConnectionManager`, inline
//!   routes or RDS) → RDS (virtual host by authority, routes by path prefix/exact/regex, headers,
//!   runtime fraction; cluster or weighted clusters; `hash_policy` on headers or the channel id)
//!   → CDS (EDS clusters; `lb_policy` or `load_balancing_policy`: round robin, least request,
//!   ring hash with ring sizes, Maglev; outlier detection; circuit breaker `max_requests`) → EDS
//!   (localities with weights and priorities, endpoint weights, `health_status`, A76 `hash_key`,
//!   `drop_overloads`). ACK/NACK, reconnect with backoff, cache kept while the control plane is
//!   away, does-not-exist timer: see the `client` module's docs.
//! - **Policies change at runtime**: a CDS update that changes the policy switches the
//!   cluster's picker in place; connections and in-flight requests are kept.
//! - **Priorities** as gRPC's priority policy: the highest priority with a ready endpoint serves;
//!   failover when its endpoints fail, failback as soon as one is ready again. Connections are
//!   kept to every priority, so both take one picker rebuild (grpc-go starts lower priorities
//!   only on failover and waits up to 10 s for a new one to connect).
//! - **Errors**: a missing or rejected resource fails requests with `UNAVAILABLE` and a message
//!   naming it; requests wait (bounded by their deadline) while the first configuration is on
//!   its way.
//!
//! - **Control plane transport**: TCP, or a Unix socket (`unix:///path`, as istio-agent
//!   serves xDS); plaintext, or TLS and mTLS with the `tls` feature (gRFC A65 `tls` channel
//!   creds, files re-read every `refresh_interval`; see [`bootstrap`] and `credentials`).
//! - **TLS to the endpoints** (feature `tls`, gRFC A29): a cluster's `UpstreamTlsContext`
//!   names the bootstrap's `file_watcher` certificate providers for the roots and, for mTLS, the
//!   identity; the server's SANs are matched against `match_subject_alt_names` instead of its
//!   address; rotated files reach the next connection. Validated (and NACKed) as grpc-go does.
//! - **Metrics** (feature `metrics`): gRFC A78's xDS client instruments
//!   (`grpc.xds_client.connected`, `server_failure`, `resource_updates_valid` / `_invalid`,
//!   `resources` by cache state) through the `metrics` facade, and each cluster balancer's
//!   `pickwise-tonic` instruments labelled with the channel's target and the cluster's name
//!   (the README's table; `xds_client --metrics ADDR` serves them in Prometheus text).
//!
//! Not supported yet (NACKed or documented): aggregate and logical-DNS clusters, federation
//! (`xdstp://`), HTTP filters beyond validation (gRFC A39: fault injection is accepted, not
//! applied), retries from routes (gRFC A44: validated, not applied), load reporting (LRS),
//! `pick_first` and weighted round robin (skipped in a policy list). Route and listener
//! `max_stream_duration` (gRFC A31) bound each RPC's deadline.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bootstrap;
mod builder;
mod channel;
mod client;
mod cluster;
#[cfg(feature = "control-plane")]
#[cfg_attr(docsrs, doc(cfg(feature = "control-plane")))]
pub mod control_plane;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod credentials;
mod dispatch;
mod manager;
pub mod resource;
mod routing;
mod telemetry;
#[cfg(feature = "tls")]
mod upstream_tls;

use std::fmt;

pub use bootstrap::{Bootstrap, BootstrapError, ChannelCreds};
pub use builder::XdsBuilder;
pub use channel::{XdsBody, XdsChannel, XdsFuture, XdsStatus};
pub use client::{AdsBackoff, AdsKeepalive};

/// Why an xDS channel could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum XdsError {
    /// No usable bootstrap.
    Bootstrap(BootstrapError),
    /// The target is not `xds:///name`.
    Target(String),
}

impl fmt::Display for XdsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bootstrap(e) => e.fmt(f),
            Self::Target(e) => write!(f, "xDS target: {e}"),
        }
    }
}

impl std::error::Error for XdsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Bootstrap(e) => Some(e),
            Self::Target(_) => None,
        }
    }
}
