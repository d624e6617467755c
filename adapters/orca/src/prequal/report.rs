//! [`ProbeReport`] and its two HTTP headers, `x-prequal-rif` and `x-prequal-latency-us`: the
//! names envoy-prequal and prequal-rs use, so their clients can probe pickwise servers and the
//! other way round.

use http::{HeaderMap, HeaderValue};

/// Response header carrying a server's requests in flight (RIF).
pub const HEADER_RIF: &str = "x-prequal-rif";
/// Response header carrying a server's latency estimate at its current RIF, in microseconds.
pub const HEADER_LATENCY_US: &str = "x-prequal-latency-us";

/// One server's answer to a Prequal probe (NSDI '24, §4): its requests in flight and its
/// latency estimate for a query arriving at that RIF.
///
/// Each header's value is a decimal integer. [`ProbeReport::from_headers`] reads the first
/// value of each; it wants both (as prequal-rs's prober does), accepts surrounding ASCII
/// whitespace, and refuses anything else that is not ASCII digits (signs, decimal points,
/// empty values, non-ASCII bytes). A number too large for a `u32` saturates at `u32::MAX`
/// (envoy-prequal and prequal-rs send the latency as a 64-bit count of microseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProbeReport {
    /// Requests in flight when the report was made.
    pub rif: u32,
    /// Estimated latency at `rif` in microseconds, saturating at `u32::MAX` (about 71 minutes);
    /// 0 when the server reports RIF only or has no recent sample.
    pub latency_us: u32,
}

impl ProbeReport {
    /// The report in `headers` ([`HEADER_RIF`] and [`HEADER_LATENCY_US`], first value of
    /// each), `None` unless both are present and numeric (the rules are on [`ProbeReport`]).
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        Some(Self {
            rif: parse_u32(headers.get(HEADER_RIF)?.as_bytes())?,
            latency_us: parse_u32(headers.get(HEADER_LATENCY_US)?.as_bytes())?,
        })
    }

    /// Writes the report into `headers`, replacing any values of the two headers.
    pub fn to_headers(&self, headers: &mut HeaderMap) {
        headers.insert(HEADER_RIF, HeaderValue::from(self.rif));
        headers.insert(HEADER_LATENCY_US, HeaderValue::from(self.latency_us));
    }

    /// A latency as the report carries it: whole microseconds, saturating at `u32::MAX`.
    pub fn saturating_us(latency: std::time::Duration) -> u32 {
        u32::try_from(latency.as_micros()).unwrap_or(u32::MAX)
    }
}

impl From<ProbeReport> for pickwise::prequal::ProbeReport {
    /// The core's probe answer (the client side's selection rule reads it).
    fn from(r: ProbeReport) -> Self {
        Self {
            rif: r.rif,
            latency_us: r.latency_us,
        }
    }
}

impl From<pickwise::prequal::ProbeReport> for ProbeReport {
    fn from(r: pickwise::prequal::ProbeReport) -> Self {
        Self {
            rif: r.rif,
            latency_us: r.latency_us,
        }
    }
}

/// ASCII digits between optional ASCII whitespace, saturating at `u32::MAX`.
fn parse_u32(value: &[u8]) -> Option<u32> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u32 = 0;
    for d in digits {
        n = n.saturating_mul(10).saturating_add(u32::from(d - b'0'));
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(rif: &[u8], latency: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_RIF, HeaderValue::from_bytes(rif).unwrap());
        h.insert(HEADER_LATENCY_US, HeaderValue::from_bytes(latency).unwrap());
        h
    }

    #[test]
    fn parses_digits_between_whitespace() {
        let r = ProbeReport::from_headers(&headers(b" 7\t", b"1500 ")).unwrap();
        assert_eq!(
            r,
            ProbeReport {
                rif: 7,
                latency_us: 1500
            }
        );
        let r = ProbeReport::from_headers(&headers(b"007", b"0")).unwrap();
        assert_eq!(
            r,
            ProbeReport {
                rif: 7,
                latency_us: 0
            }
        );
    }

    #[test]
    fn saturates_large_numbers() {
        let r = ProbeReport::from_headers(&headers(b"4294967296", b"18446744073709551615999")).unwrap();
        assert_eq!(
            r,
            ProbeReport {
                rif: u32::MAX,
                latency_us: u32::MAX
            }
        );
        let r = ProbeReport::from_headers(&headers(b"4294967295", b"4294967294")).unwrap();
        assert_eq!(
            r,
            ProbeReport {
                rif: u32::MAX,
                latency_us: u32::MAX - 1
            }
        );
    }

    #[test]
    fn refuses_non_numbers() {
        for bad in [
            &b""[..],
            b" ",
            b"+1",
            b"-1",
            b"1.5",
            b"1e3",
            b"0x10",
            b"1 2",
            b"\xff",
            b"abc",
        ] {
            assert_eq!(ProbeReport::from_headers(&headers(bad, b"1")), None, "{bad:?}");
            assert_eq!(ProbeReport::from_headers(&headers(b"1", bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn wants_both_headers() {
        let mut h = headers(b"1", b"2");
        h.remove(HEADER_LATENCY_US);
        assert_eq!(ProbeReport::from_headers(&h), None);
        let mut h = headers(b"1", b"2");
        h.remove(HEADER_RIF);
        assert_eq!(ProbeReport::from_headers(&h), None);
    }

    #[test]
    fn round_trips() {
        for r in [
            ProbeReport::default(),
            ProbeReport {
                rif: 3,
                latency_us: 12_345,
            },
            ProbeReport {
                rif: u32::MAX,
                latency_us: u32::MAX,
            },
        ] {
            let mut h = HeaderMap::new();
            h.append(HEADER_RIF, HeaderValue::from_static("99"));
            r.to_headers(&mut h);
            assert_eq!(h.get_all(HEADER_RIF).iter().count(), 1);
            assert_eq!(ProbeReport::from_headers(&h), Some(r));
        }
    }

    #[test]
    fn converts_to_the_core() {
        let r = ProbeReport {
            rif: 4,
            latency_us: 9,
        };
        let core = pickwise::prequal::ProbeReport::from(r);
        assert_eq!((core.rif, core.latency_us), (4, 9));
        assert_eq!(ProbeReport::from(core), r);
    }

    #[test]
    fn saturating_us() {
        use std::time::Duration;
        assert_eq!(ProbeReport::saturating_us(Duration::from_nanos(1_999)), 1);
        assert_eq!(ProbeReport::saturating_us(Duration::from_secs(5_000)), u32::MAX);
    }
}
