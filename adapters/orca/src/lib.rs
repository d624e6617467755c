//! ORCA load reports (gRFC A51, "Open Request Cost Aggregation") for pickwise, both ends.
//!
//! A backend reports its load as an `xds.data.orca.v3.OrcaLoadReport`; balancers
//! (`weighted_round_robin`, gRFC A58, and pickwise's ORCA-aware P2C) turn it into weights. The
//! report travels three ways, all handled here:
//!
//! - per call, in the gRPC trailer `endpoint-load-metrics-bin` ([`header`], and
//!   [`server::CallMetricsLayer`] on tonic servers);
//! - per response, in Envoy's HTTP header `endpoint-load-metrics` (`TEXT`/`JSON`/`BIN`
//!   forms, parsed as Envoy's `orca_parser.cc` does: [`header::parse_headers`]; no tonic
//!   needed, the Pingora adapter uses it);
//! - out of band, on the `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics` stream
//!   ([`server::OpenRcaServer`], [`client::OobStream`]).
//!
//! The messages are derived by hand with `prost` ([`proto`], checked byte for byte against the
//! Python `xds-protos` package), and every report converts into the core's
//! [`LoadReport`] ([`convert`]).
//!
//! The crate also carries Prequal's server side and wire format (NSDI '24, [`prequal`]):
//! requests in flight and a per-RIF latency estimate, answered to probes over gRPC
//! (`pickwise.prequal.v1.Prequal/Probe`) or HTTP (`GET /prequal/probe`) and piggybacked on
//! responses as the `x-prequal-rif` / `x-prequal-latency-us` headers that envoy-prequal and
//! prequal-rs use.
//!
//! Features: `server` (tonic server side: ORCA's layer and OOB service, Prequal's layer and
//! probe service), `client` (tonic clients: ORCA's OOB stream, the Prequal probe). Without
//! them the crate is the messages, the conversion, the header parsers, Prequal's state and
//! its HTTP probe helper.
//!
//! # Examples
//!
//! Reading a per-call report from the trailers a backend sent:
//!
//! ```
//! use pickwise::wrr::LoadReport;
//! use pickwise_orca::header::{encode_bin_value, parse_headers, ENDPOINT_LOAD_METRICS_BIN};
//! use pickwise_orca::proto::OrcaLoadReport;
//!
//! let sent = OrcaLoadReport { application_utilization: 0.4, rps_fractional: 50.0, ..Default::default() };
//! let mut trailers = http::HeaderMap::new();
//! trailers.insert(ENDPOINT_LOAD_METRICS_BIN, encode_bin_value(&sent).parse().unwrap());
//!
//! let report = LoadReport::from(&parse_headers(&trailers).unwrap());
//! assert_eq!(report.utilization(), 0.4);
//! assert_eq!(report.qps, 50.0);
//! ```
//!
//! See [`server`] for a tonic server reporting per call and out of band, and [`client`] for
//! the out-of-band stream.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod convert;
pub mod header;
pub mod prequal;
pub mod proto;

#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;

pub use header::HeaderError;
pub use pickwise::wrr::LoadReport;
pub use proto::OrcaLoadReport;
