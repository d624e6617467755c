//! Prequal's server side and wire format (["Load is not what you should balance", NSDI '24][paper]):
//! a server tracks its requests in flight (RIF) and a latency estimate per RIF, and answers
//! clients' probes with both; clients pick among recently probed servers (the selection rule
//! is in the core).
//!
//! - [`ProbeReport`]: what a probe returns, and its HTTP headers `x-prequal-rif` and
//!   `x-prequal-latency-us` (the names envoy-prequal and prequal-rs use, so either side can
//!   talk to theirs): [`ProbeReport::from_headers`], [`ProbeReport::to_headers`].
//! - [`ProbeState`]: the RIF counter and the latency estimator ([`Estimator`]: the paper's
//!   [`RecentMedian`], or RIF only), counted with [`InFlight`] guards.
//! - [`http`]: the HTTP probe, `GET /prequal/probe` answered with the headers, for non-gRPC
//!   servers (the Pingora adapter probes it).
//! - [`proto`]: the gRPC probe's messages, `pickwise.prequal.v1.Prequal/Probe`.
//! - Feature `server`: [`PrequalLayer`] counts every request of a tower/tonic/hyper server and
//!   piggybacks the report on responses (for gRPC: in the response's initial metadata);
//!   [`PrequalServer`] answers gRPC probes. Probes are never counted as requests.
//! - Feature `client`: [`probe`], one gRPC probe on any tonic `GrpcService` (the endpoint's
//!   own connection).
//!
//! What the paper (§4) fixes and this module follows: a query counts from when the server
//! receives it until it hands back the response; its latency is recorded tagged with the RIF
//! at its arrival; a probe gets the current RIF and the median of recent latencies at that
//! RIF. What it leaves open is decided in [`state`](ProbeState) (the tag excludes the query
//! itself) and in [`RecentMedian`] (buckets, fallback to the nearest bucket, maximum age).
//!
//! [paper]: https://www.usenix.org/conference/nsdi24/presentation/wydrowski
//!
//! # Examples
//!
//! A tonic server counting its requests and answering probes:
//!
//! ```no_run
//! # #[cfg(feature = "server")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use pickwise_orca::prequal::{PrequalLayer, PrequalServer, ProbeState};
//!
//! let state = ProbeState::new();
//! tonic::transport::Server::builder()
//!     .layer(PrequalLayer::new(state.clone()))
//!     .add_service(PrequalServer::new(state))
//!     // .add_service(MyServer::new(my_impl))
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Reading a piggybacked report from a response's headers:
//!
//! ```
//! use pickwise_orca::prequal::{ProbeReport, HEADER_LATENCY_US, HEADER_RIF};
//!
//! let mut headers = http::HeaderMap::new();
//! headers.insert(HEADER_RIF, "4".parse().unwrap());
//! headers.insert(HEADER_LATENCY_US, " 2500".parse().unwrap());
//! assert_eq!(ProbeReport::from_headers(&headers), Some(ProbeReport { rif: 4, latency_us: 2500 }));
//! ```

mod estimator;
pub mod http;
pub mod proto;
mod report;
mod state;

#[cfg(feature = "client")]
mod client;
#[cfg(feature = "server")]
mod layer;
#[cfg(feature = "server")]
mod service;

pub use estimator::RecentMedian;
pub use report::{ProbeReport, HEADER_LATENCY_US, HEADER_RIF};
pub use state::{Estimator, InFlight, ProbeState};

#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use client::probe;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub use layer::{PrequalBody, PrequalFuture, PrequalLayer, PrequalService};
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub use service::PrequalServer;
