//! Request deadlines: the `grpc-timeout` header a tonic client sets (`Request::set_timeout`),
//! parsed and re-encoded as gRPC's HTTP/2 protocol spec defines it (public for layers in front
//! of the balancer, such as `pickwise-xds`, that also make requests wait).
//!
//! grpc-go bounds a request's wait for a picker by its deadline (`picker_wrapper.go`: the wait
//! ends with `DEADLINE_EXCEEDED`) and sends the server what remains (`http2_client.go`
//! `encodeTimeout`); pickwise does the same.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The request's timeout from its `grpc-timeout` header; `None` if absent or malformed (tonic's
/// own rule: at most 8 digits and one unit of `H M S m u n`).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The absolute deadline of a request that carries `grpc-timeout`, from `now`.
pub(crate) fn of(headers: &HeaderMap) -> Option<Instant> {
    timeout(headers).map(|t| Instant::now() + t)
}

/// `grpc-timeout` for `d`: the finest unit whose value fits in 8 digits, rounded up (grpc-go
/// `encodeTimeout`).
pub fn encode(d: Duration) -> HeaderValue {
    const MAX: u128 = 100_000_000;
    let ns = d.as_nanos().max(1);
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (size, unit) in units {
        let value = ns.div_ceil(size);
        if value < MAX {
            return HeaderValue::from_str(&format!("{value}{unit}"))
                .unwrap_or(HeaderValue::from_static("99999999H"));
        }
    }
    HeaderValue::from_static("99999999H")
}

/// Rewrites the request's `grpc-timeout` to what remains until `deadline`; `false` if nothing
/// remains.
pub fn set_remaining(headers: &mut HeaderMap, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    headers.insert(GRPC_TIMEOUT, encode(left));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_encodes_like_grpc() {
        let mut h = HeaderMap::new();
        for (v, d) in [
            ("100m", Duration::from_millis(100)),
            ("3S", Duration::from_secs(3)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("250u", Duration::from_micros(250)),
            ("99999999n", Duration::from_nanos(99_999_999)),
        ] {
            h.insert(GRPC_TIMEOUT, HeaderValue::from_static(v));
            assert_eq!(timeout(&h), Some(d), "{v}");
        }
        for bad in ["", "m", "123456789m", "10x", "1.5S", "-1S"] {
            h.insert(GRPC_TIMEOUT, HeaderValue::from_static(bad));
            assert_eq!(timeout(&h), None, "{bad:?}");
        }
        assert_eq!(encode(Duration::from_millis(100)), "100000u");
        assert_eq!(encode(Duration::from_nanos(1)), "1n");
        assert_eq!(encode(Duration::from_secs(5)), "5000000u");
        assert_eq!(encode(Duration::from_secs(1_000)), "1000000m");
        assert_eq!(encode(Duration::from_secs(200_000)), "200000S");
        assert_eq!(encode(Duration::ZERO), "1n");
        // Round trip within one unit of the encoding.
        for ms in [1u64, 7, 99, 12_345, 86_400_000] {
            h.insert(GRPC_TIMEOUT, encode(Duration::from_millis(ms)));
            assert_eq!(timeout(&h), Some(Duration::from_millis(ms)));
        }
    }
}
