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
//! compatible or native, with bounded load or affinity), Prequal (NSDI '24: probes of each
//! server's requests in flight and latency on its own connection, see [`Builder::prequal`]),
//! and passive outlier detection.
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
//! Where grpc-go defines the behaviour, pickwise matches it (`tests/CONFORMANCE.md` lists each
//! reference test and ours).
//!
//! - **No ready endpoint**: while any endpoint is connecting for the first time, a request waits
//!   for the next picker, bounded by its own deadline (`grpc-timeout`, set with
//!   `tonic::Request::set_timeout`: it then ends with `DEADLINE_EXCEEDED`, as grpc-go's
//!   `picker_wrapper.go`) and by [`Builder::wait_for_ready`]. The server is sent what remains of
//!   the deadline. When all endpoints are failing, or the set is empty, it fails at once with
//!   `UNAVAILABLE` and a message saying which ([`NoEndpoint`]). It never hangs.
//! - **Wait-for-ready per call** (grpc-go's `WaitForReady`): a request with
//!   [`WaitForReady(true)`](WaitForReady), or whose method has `waitForReady` in the
//!   [service config](Builder::service_config), waits through TRANSIENT_FAILURE to its own
//!   deadline instead of failing fast.
//! - **Transparent retry** (gRFC A6): a request the server certainly never processed (refused
//!   stream, GOAWAY above its stream, a connection closed before it went out) is sent again on a
//!   new pick, within its deadline, at most [`MAX_RETRIES`] times, if its body fit the
//!   [`RETRY_BUFFER`] (256 KiB, kept as it is sent). It does not count against the endpoint. A
//!   connection the server drains (GOAWAY, e.g. `max_connection_age`) is replaced at once,
//!   without counting as a failure, while it finishes its streams.
//! - **Sticky failure** (grpc-go `balancer/base`): an endpoint that failed to connect counts as
//!   failing while it retries, so when every endpoint has failed, requests fail fast even while
//!   reconnect attempts are in flight.
//! - **READY** means the server's HTTP/2 preface (its SETTINGS frame) arrived, not that the TCP
//!   connect succeeded: a port that accepts and closes, never speaks, or speaks another protocol
//!   never takes requests. With TLS, use `Builder::tls` (feature `tls`): the balancer's
//!   connector then does the handshake and READY means handshake done *and* SETTINGS received.
//! - **Outcomes**: latency is sampled when response headers arrive (tower's
//!   `CompleteOnResponse`); the in-flight slot is held until the stream ends. `grpc-status` from
//!   headers or trailers is mapped to success/failure ([`Builder::failure_codes`], go-zero's list
//!   by default, which counts `DEADLINE_EXCEEDED`); a stream reset or broken body after the
//!   headers is a failure; a dropped request only releases its in-flight slot.
//! - **Per-request errors never break a connection**: a deadline, a cancellation or a stream
//!   reset is the request's own. Only connection-level failures (reset, refused, closed, GOAWAY,
//!   keepalive timeout) make the endpoint reconnect, and an error from an older connection never
//!   breaks its replacement.
//! - **Paused or partitioned backends**: set HTTP/2 keepalive on the endpoint template; the
//!   connection is then declared dead within interval + timeout and its stuck requests fail.
//!   Recommended (grpc-go's keepalive is also off by default):
//!   `Endpoint::http2_keep_alive_interval(10 s)`, `.keep_alive_timeout(5 s)`,
//!   `.keep_alive_while_idle(true)` — servers must allow pings that often (grpc-go servers reject
//!   pings more frequent than every 5 s by default). Without keepalive, deadlines bound each
//!   request, and the cost policy never makes an endpoint whose requests stopped completing look
//!   cheaper.
//! - **Panic routing**: if every ready endpoint is ejected by outlier detection, ejection is ignored
//!   (as Envoy does below its panic threshold) rather than failing requests.
//! - **Discovery errors**: an error or the end of the stream before the first update fails requests
//!   at once with that error; after it, errors and the end of the stream keep the last endpoint set
//!   (logged with `tracing`).
//! - **Shutdown**: dropping the last clone of the channel stops the balancer, its connections and
//!   its discovery task; requests still waiting for a picker fail with [`NoEndpoint::Shutdown`].
//! - Duplicate inserts of an address are one endpoint (a changed weight is applied).
//!
//! # Internals
//!
//! The modules play grpc-go's roles: [`discover`] is the **resolver** (any discovery stream),
//! `balancer` the **balancer** (a background task owning the endpoints, applying discovery,
//! subsetting and connectivity changes, publishing immutable snapshots), `subchannel` the
//! **subchannels** (one connection per endpoint with its connectivity state, over `transport`'s
//! connector), `picker` the **picker** (one pick with the core's `pickwise::Picker`, waiting for a
//! snapshot when nothing is ready) and `channel` the **channel** (the tower `Service` requests go
//! through, which records each outcome). `call` loads the current snapshot with `arc-swap` (no
//! lock), picks (no allocation), takes an in-flight guard, and forwards to the endpoint's tonic
//! `Channel`. The balancer task is the only writer.
//!
//! Read them bottom up; no module imports one above it: `common` (what subchannels and the picker
//! share: pool, configuration, clock), `config` and `error` at the bottom; `subchannel` above
//! them; `snapshot` (what the task publishes and requests read) and `picker` above that;
//! `balancer` (the task) above those; `channel` (the `Service`) and `builder` (which spawns the
//! task and returns the channel) on top.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod balancer;
mod builder;
mod channel;
mod common;
mod config;
pub mod deadline;
pub mod discover;
mod error;
mod picker;
mod prober;
mod retry;
pub mod service_config;
mod snapshot;
mod subchannel;
mod subsetting;
#[cfg(feature = "metrics")]
mod telemetry;
mod transport;

pub use channel::{BalancedChannel, ResponseBody, ResponseFuture, WaitForReady};
pub use config::{Backoff, Builder, HealthCheck, GO_ZERO_FAILURE_CODES, GRPC_NON_OK_CODES};
#[doc(hidden)]
pub use error::error_chain;
pub use error::NoEndpoint;
pub use picker::RequestHash;
pub use pickwise::prequal::PrequalConfig;
pub use pickwise::subset::{Client as SubsetClient, Subsetting};
pub use pickwise::{self, HashPolicy, LbPolicy, Mode, NoKey, OutlierConfig, Policy, PoolConfig, RingConfig};
pub use retry::{MAX_RETRIES, RETRY_BUFFER};
pub use snapshot::{EndpointStats, PrequalStats};
pub use subchannel::ConnectivityState;
/// The rustls version [`Builder::tls`] takes (feature `tls`).
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tokio_rustls::rustls;

/// The endpoint that served a response (grpc-go's `grpc.Peer`), as a response extension when
/// [`Builder::report_peer`] is on: `response.extensions().get::<pickwise_tonic::Peer>()`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer(pub std::sync::Arc<str>);

impl Peer {
    /// The endpoint's address (`host:port`, the discovery key).
    pub fn address(&self) -> &str {
        &self.0
    }
}

/// The boxed error type at the tower boundary (a `tonic::Status` for balancer errors).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
