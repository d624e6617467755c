//! ORCA header parsing on arbitrary bytes (pickwise-orca `header`): Envoy's
//! `endpoint-load-metrics` value (`TEXT`/`JSON`/`BIN`), the raw `endpoint-load-metrics-bin`
//! value, and both as an `http::HeaderMap`. Must return a report or a typed error, never panic.
//! Checked on success: a `TEXT` report holds no NaN or infinity (Envoy refuses them), and a
//! binary report survives encode -> decode unchanged (maps are ordered, so bytes are stable).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pickwise_orca::header::{
    decode_bin_value, encode_bin_value, parse_endpoint_load_metrics, parse_headers, ENDPOINT_LOAD_METRICS,
    ENDPOINT_LOAD_METRICS_BIN,
};
use pickwise_orca::proto::OrcaLoadReport;

fn finite(r: &OrcaLoadReport) -> bool {
    [
        r.cpu_utilization,
        r.mem_utilization,
        r.application_utilization,
        r.rps_fractional,
        r.eps,
    ]
    .iter()
    .chain(r.named_metrics.values())
    .all(|v| v.is_finite())
}

fn bin_round_trip(r: &OrcaLoadReport) {
    let encoded = encode_bin_value(r);
    let again = decode_bin_value(encoded.as_bytes());
    // An all-default report encodes to nothing, which is "empty" on the way back.
    if *r == OrcaLoadReport::default() {
        assert!(again.is_err());
        return;
    }
    let again = again.expect("decodes what it encoded");
    // NaN != NaN: compare the encodings instead of the values.
    assert_eq!(
        encode_bin_value(&again),
        encoded,
        "encode -> decode changed the report"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse_endpoint_load_metrics(data) {
        if data.starts_with(b"TEXT ") {
            assert!(finite(&r), "TEXT accepted a NaN or infinite value: {r:?}");
        }
        bin_round_trip(&r);
    }
    if let Ok(r) = decode_bin_value(data) {
        bin_round_trip(&r);
    }
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let name = if data.first().is_some_and(|b| b & 1 == 1) {
            ENDPOINT_LOAD_METRICS_BIN
        } else {
            ENDPOINT_LOAD_METRICS
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(name, value);
        let _ = parse_headers(&headers);
    }
});
