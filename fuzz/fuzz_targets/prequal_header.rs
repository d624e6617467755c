//! Prequal probe headers on arbitrary bytes (pickwise-orca `prequal::ProbeReport`): the input
//! is split at its first `;` into the `x-prequal-rif` and `x-prequal-latency-us` values (no `;`:
//! the whole input for both). Must return a report or `None`, never panic. Checked on
//! success: both values were ASCII digits between ASCII whitespace, and the report survives
//! `to_headers` -> `from_headers` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pickwise_orca::prequal::{ProbeReport, HEADER_LATENCY_US, HEADER_RIF};

fn digits(value: &[u8]) -> bool {
    let v = value.trim_ascii();
    !v.is_empty() && v.iter().all(u8::is_ascii_digit)
}

fuzz_target!(|data: &[u8]| {
    let (rif, latency) = match data.iter().position(|&b| b == b';') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let (Ok(rif), Ok(latency)) = (
        http::HeaderValue::from_bytes(rif),
        http::HeaderValue::from_bytes(latency),
    ) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(HEADER_RIF, rif.clone());
    headers.insert(HEADER_LATENCY_US, latency.clone());
    let Some(report) = ProbeReport::from_headers(&headers) else {
        assert!(
            !(digits(rif.as_bytes()) && digits(latency.as_bytes())),
            "refused numeric values {rif:?} {latency:?}"
        );
        return;
    };
    assert!(digits(rif.as_bytes()) && digits(latency.as_bytes()), "accepted {rif:?} {latency:?}");
    let mut again = http::HeaderMap::new();
    report.to_headers(&mut again);
    assert_eq!(ProbeReport::from_headers(&again), Some(report), "round trip");
});
