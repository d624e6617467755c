//! # pickwise-tonic
//!
//! Client-side load balancing for [tonic](https://docs.rs/tonic): a drop-in replacement for
//! `Channel::balance_list` that keeps your generated client (`GreeterClient::new(channel)`).
//!
//! It plays grpc-go's roles: a **resolver** (any discovery `Stream`, see [`discover`]), a **balancer**
//! (a background task owning one connection per endpoint, with connectivity states, reconnect
//! backoff and optional `grpc.health.v1` checks) and a **picker** (an immutable snapshot swapped
//! atomically whenever membership or readiness changes). Picks use the `pickwise` core: power of
//! two choices (peak-EWMA, least-request, go-zero costs) or a consistent-hash ring (Envoy/grpc-go
//! compatible or native, with bounded load or affinity), and passive outlier detection.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use http::HeaderName;
//! use pickwise_tonic::{discover, Builder, HashPolicy, Policy, RingConfig};
//! use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // P2C over a fixed list.
//! let channel = Builder::new().p2c(Policy::PeakEwma).build_static(["127.0.0.1:50051", "127.0.0.1:50052"]);
//! let mut client = HealthClient::new(channel.clone());
//! let reply = client.check(HealthCheckRequest { service: String::new() }).await?;
//!
//! // Ring hash on the `x-user` header, endpoints from DNS re-resolved every 30 s.
//! let channel = Builder::new()
//!     .ring_hash(RingConfig::grpc(), HashPolicy::Bounded { factor_percent: 125 })
//!     .hash_header(HeaderName::from_static("x-user"))
//!     .build(discover::dns("backends.internal:50051", Duration::from_secs(30)));
//! # Ok(()) }
//! ```
//!
//! # Behaviour
//!
//! - **No ready endpoint**: while any endpoint is connecting, a request waits for the next picker
//!   (bounded by [`Builder::wait_for_ready`]); when all are failing or the set is empty it fails at
//!   once with `UNAVAILABLE` and a message saying which ([`NoEndpoint`]). It never hangs.
//! - **Outcomes**: latency is recorded when the response body ends; `grpc-status` from headers or
//!   trailers is mapped to success/failure ([`Builder::failure_codes`], go-zero's list by default);
//!   a transport error counts as a failure and makes the endpoint reconnect; a dropped request only
//!   releases its in-flight slot.
//! - **Panic routing**: if every ready endpoint is ejected by outlier detection, ejection is ignored
//!   (as Envoy does below its panic threshold) rather than failing requests.
//! - **Discovery errors**: an error before the first update fails requests with that error; after it,
//!   errors and the end of the stream keep the last endpoint set (logged with `tracing`).
//! - Duplicate inserts of an address are one endpoint (a changed weight is applied).
//!
//! # Internals
//!
//! `call` loads the current snapshot with `arc-swap` (no lock), picks with the core (no allocation),
//! takes an in-flight guard, and forwards to the endpoint's tonic `Channel`. The balancer task is
//! the only writer: it applies discovery changes, hears connectivity changes from one task per
//! endpoint, sweeps ejections, and publishes snapshots. Connections use a TCP connector that
//! reports a closed socket immediately, so a dead backend leaves the picker without waiting for a
//! failed request.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod balancer;
mod config;
mod deadline;
pub mod discover;
mod error;
mod service;
mod subchannel;

pub use balancer::EndpointStats;
pub use config::{Backoff, Builder, HealthCheck, LbPolicy, NoKey, GO_ZERO_FAILURE_CODES};
pub use error::NoEndpoint;
pub use pickwise::{self, HashPolicy, Mode, OutlierConfig, Policy, PoolConfig, RingConfig};
pub use service::{BalancedChannel, RequestHash, ResponseBody, ResponseFuture};
pub use subchannel::ConnectivityState;

/// The boxed error type at the tower boundary (a `tonic::Status` for balancer errors).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
