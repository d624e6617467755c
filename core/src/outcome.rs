//! What a request's ending means for its endpoint: HTTP status, gRPC status, connect failure or a
//! local/downstream error, classified once for every adapter.
//!
//! The rules are Envoy's outlier detection (`source/common/upstream/outlier_detection_impl.cc`,
//! gRFC A50), which counts 5xx responses against a host:
//!
//! | what happened | [`Outcome`] | why |
//! |---|---|---|
//! | HTTP 1xx (100 Continue, 102, 103) | none: not a response | informational; the final response follows; no latency sample |
//! | HTTP 101 Switching Protocols | `Success` | the final response of an upgrade |
//! | HTTP 2xx, 3xx, 4xx | `Success` | the backend answered; a 4xx is the request's fault (Envoy counts only 5xx) |
//! | HTTP 5xx | `Failure` | Envoy `consecutive_5xx` |
//! | HTTP status outside 100..=599 | `Failure` | a malformed response: Envoy's codec resets the stream, a local-origin failure |
//! | gRPC status | by its HTTP code ([`grpc_to_http`]) | Envoy's router maps `grpc-status` with `Grpc::Utility::grpcToHttpStatus` before the outlier detector sees it: `UNKNOWN`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS` fail; `RESOURCE_EXHAUSTED` (429), `CANCELLED` (499) do not |
//! | connect failure (refused, timeout, reset in the handshake) | `Failure` | Envoy `LocalOriginConnectFailed`, a 503 for `consecutive_5xx` and `consecutive_gateway_failure` |
//! | upstream error after connecting (reset, closed mid-response, read timeout) | `Failure` | Envoy `LocalOriginTimeout` / reset: 504 / 503 |
//! | local or downstream error (client went away, malformed request, a deadline the caller set expired, cancelled) | `Neutral` | not the backend's doing |
//!
//! What the pool does with each outcome ([`Pool`](crate::Pool), [`InFlight`](crate::InFlight)):
//! only a success is a latency sample; a failure raises the endpoint's latency estimate by the
//! failure penalty ([`PoolConfig::failure_penalty`](crate::PoolConfig::failure_penalty)), so a
//! backend answering fast errors never looks cheap; a neutral outcome only releases the in-flight
//! slot.
//!
//! Everything here is `const`, allocation-free and total: no input panics.
//!
//! # Examples
//!
//! ```
//! use pickwise::outcome::{self, Observed};
//! use pickwise::Outcome;
//!
//! assert_eq!(outcome::http(503), Some(Outcome::Failure));
//! assert_eq!(outcome::http(404), Some(Outcome::Success));
//! assert_eq!(outcome::http(100), None); // 100 Continue: wait for the final response
//! assert_eq!(outcome::grpc(2), Outcome::Failure); // UNKNOWN -> 500
//! assert_eq!(outcome::grpc(8), Outcome::Success); // RESOURCE_EXHAUSTED -> 429
//! assert_eq!(outcome::grpc_header(b"14"), Outcome::Failure); // UNAVAILABLE
//! assert_eq!(Observed::Downstream.classify(), Some(Outcome::Neutral));
//! ```

use crate::endpoint::Outcome;

/// What the I/O layer saw that ends (or, for 1xx, does not end) a request on an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Observed {
    /// A response with this HTTP status code (status line or `:status`).
    Http(u16),
    /// A gRPC status code (`grpc-status` in a trailers-only response or in trailers).
    Grpc(u32),
    /// The connection to the endpoint could not be established: refused, handshake failure,
    /// connect timeout.
    ConnectFailed,
    /// The endpoint failed after the connection was up: reset, closed before the response
    /// ended, protocol error, no response within the upstream timeout.
    UpstreamError,
    /// The downstream or local side ended the request: the client went away or sent a malformed
    /// request, the caller cancelled, a deadline the caller set expired, a local limit.
    Downstream,
}

impl Observed {
    /// The outcome for the endpoint; `None` for an informational (1xx) response, which is not a
    /// response yet: neither an outcome nor a latency sample.
    pub const fn classify(self) -> Option<Outcome> {
        match self {
            Self::Http(status) => http(status),
            Self::Grpc(code) => Some(grpc(code)),
            Self::ConnectFailed | Self::UpstreamError => Some(Outcome::Failure),
            Self::Downstream => Some(Outcome::Neutral),
        }
    }
}

/// The outcome of an HTTP response with `status`; `None` for informational responses (100, 102,
/// 103, ...: the final response is still to come). 5xx and codes outside `100..=599` fail;
/// everything else, 4xx included, is a success for the endpoint.
pub const fn http(status: u16) -> Option<Outcome> {
    match status {
        101 => Some(Outcome::Success),
        100..=199 => None,
        200..=499 => Some(Outcome::Success),
        _ => Some(Outcome::Failure),
    }
}

/// Envoy's `Grpc::Utility::grpcToHttpStatus` (`source/common/grpc/status.cc`): the HTTP code the
/// outlier detector sees for gRPC status `code`. Codes above 16 (invalid) map to 500.
pub const fn grpc_to_http(code: u32) -> u16 {
    match code {
        0 => 200,  // OK
        1 => 499,  // CANCELLED: client closed request
        2 => 500,  // UNKNOWN
        3 => 400,  // INVALID_ARGUMENT
        4 => 504,  // DEADLINE_EXCEEDED
        5 => 404,  // NOT_FOUND
        6 => 409,  // ALREADY_EXISTS
        7 => 403,  // PERMISSION_DENIED
        8 => 429,  // RESOURCE_EXHAUSTED
        9 => 400,  // FAILED_PRECONDITION
        10 => 409, // ABORTED
        11 => 400, // OUT_OF_RANGE
        12 => 501, // UNIMPLEMENTED
        13 => 500, // INTERNAL
        14 => 503, // UNAVAILABLE
        15 => 500, // DATA_LOSS
        16 => 401, // UNAUTHENTICATED
        _ => 500,  // Envoy's InvalidCode
    }
}

/// The outcome of gRPC status `code`: [`http`] of [`grpc_to_http`]`(code)`.
pub const fn grpc(code: u32) -> Outcome {
    match http(grpc_to_http(code)) {
        Some(o) => o,
        None => Outcome::Failure, // unreachable: no gRPC code maps to 1xx
    }
}

/// The gRPC status code in a `grpc-status` header value (ASCII decimal, surrounding spaces
/// allowed); `None` if it is not a number that fits in `u32`.
pub const fn parse_grpc_status(value: &[u8]) -> Option<u32> {
    let (mut start, mut end) = (0, value.len());
    while start < end && value[start] == b' ' {
        start += 1;
    }
    while end > start && value[end - 1] == b' ' {
        end -= 1;
    }
    if start == end {
        return None;
    }
    let mut code: u32 = 0;
    let mut i = start;
    while i < end {
        let d = value[i];
        if !d.is_ascii_digit() {
            return None;
        }
        code = match code.checked_mul(10) {
            Some(c) => match c.checked_add((d - b'0') as u32) {
                Some(c) => c,
                None => return None,
            },
            None => return None,
        };
        i += 1;
    }
    Some(code)
}

/// The outcome of a `grpc-status` header value. A value that is not a number counts as Envoy's
/// `InvalidCode` (HTTP 500): a failure.
pub const fn grpc_header(value: &[u8]) -> Outcome {
    match parse_grpc_status(value) {
        Some(code) => grpc(code),
        None => Outcome::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn informational_is_not_a_response() {
        for s in [100, 102, 103, 150, 199] {
            assert_eq!(http(s), None, "{s}");
        }
        assert_eq!(http(101), Some(Outcome::Success));
    }

    #[test]
    fn only_5xx_and_malformed_fail() {
        for s in [200, 204, 301, 304, 400, 404, 429, 499] {
            assert_eq!(http(s), Some(Outcome::Success), "{s}");
        }
        for s in [500, 502, 503, 504, 599, 0, 42, 600, u16::MAX] {
            assert_eq!(http(s), Some(Outcome::Failure), "{s}");
        }
    }

    #[test]
    fn grpc_header_parsing_is_total() {
        assert_eq!(parse_grpc_status(b"0"), Some(0));
        assert_eq!(parse_grpc_status(b" 14 "), Some(14));
        assert_eq!(parse_grpc_status(b""), None);
        assert_eq!(parse_grpc_status(b"1a"), None);
        assert_eq!(parse_grpc_status(b"-1"), None);
        assert_eq!(parse_grpc_status(b"4294967296"), None);
        assert_eq!(parse_grpc_status(b"4294967295"), Some(u32::MAX));
        assert_eq!(grpc_header(b"junk"), Outcome::Failure);
        assert_eq!(grpc_header(b"0"), Outcome::Success);
    }
}
