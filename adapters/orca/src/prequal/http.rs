//! Probes over plain HTTP, for servers that do not speak gRPC (the Pingora adapter probes
//! these): `GET /prequal/probe` ([`PROBE_PATH`], the path prequal-rs's `HttpProber` and
//! envoy-prequal use) is answered `200 OK` with an empty body and the report in the
//! `x-prequal-rif` and `x-prequal-latency-us` headers.
//!
//! # Examples
//!
//! In a hyper (or any `http`) service, before routing, and outside the RIF count:
//!
//! ```
//! use pickwise_orca::prequal::{http::{is_probe, probe_response}, ProbeReport, ProbeState};
//!
//! let state = ProbeState::new();
//! let request = http::Request::get("/prequal/probe").body(()).unwrap();
//! assert!(is_probe(&request));
//! let response: http::Response<String> = probe_response(&state);
//! assert_eq!(response.status(), http::StatusCode::OK);
//! assert_eq!(ProbeReport::from_headers(response.headers()), Some(ProbeReport { rif: 0, latency_us: 0 }));
//! ```

use super::report::ProbeReport;
use super::state::ProbeState;

/// The default HTTP probe path, as prequal-rs's `HttpProber` and envoy-prequal use it.
pub const PROBE_PATH: &str = "/prequal/probe";

/// Whether `request` is an HTTP probe: `GET` (or `HEAD`) on [`PROBE_PATH`].
pub fn is_probe<B>(request: &http::Request<B>) -> bool {
    is_probe_at(request, PROBE_PATH)
}

/// Whether `request` is an HTTP probe on `path`: `GET` or `HEAD` with exactly that path (any
/// query string ignored).
pub fn is_probe_at<B>(request: &http::Request<B>, path: &str) -> bool {
    (request.method() == http::Method::GET || request.method() == http::Method::HEAD)
        && request.uri().path() == path
}

/// The answer to an HTTP probe: `200 OK`, an empty (default) body, `cache-control: no-store`,
/// and `state`'s current report as headers.
pub fn probe_response<B: Default>(state: &ProbeState) -> http::Response<B> {
    report_response(state.report())
}

/// The answer to an HTTP probe carrying `report` (see [`probe_response`]).
pub fn report_response<B: Default>(report: ProbeReport) -> http::Response<B> {
    let mut response = http::Response::new(B::default());
    let headers = response.headers_mut();
    report.to_headers(headers);
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_probes() {
        let req = |m: http::Method, uri: &str| http::Request::builder().method(m).uri(uri).body(()).unwrap();
        assert!(is_probe(&req(http::Method::GET, "/prequal/probe")));
        assert!(is_probe(&req(http::Method::HEAD, "/prequal/probe")));
        assert!(is_probe(&req(http::Method::GET, "http://h:1/prequal/probe?x=1")));
        assert!(!is_probe(&req(http::Method::POST, "/prequal/probe")));
        assert!(!is_probe(&req(http::Method::GET, "/prequal/probe/")));
        assert!(!is_probe(&req(http::Method::GET, "/")));
        assert!(is_probe_at(&req(http::Method::GET, "/load"), "/load"));
    }

    #[test]
    fn response_carries_the_report() {
        let state = ProbeState::new();
        let _a = state.start();
        let _b = state.start();
        let response: http::Response<Vec<u8>> = probe_response(&state);
        assert_eq!(response.status(), http::StatusCode::OK);
        assert!(response.body().is_empty());
        let report = ProbeReport::from_headers(response.headers()).unwrap();
        assert_eq!(report.rif, 2);
    }
}
