//! Envoy's ORCA header parser cases (`test/common/orca/orca_parser_test.cc`,
//! `OrcaParserUtilTest.*`), ported as facts: same inputs, same outcome, same message text.

use std::collections::BTreeMap;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue};
use pickwise_orca::header::{
    decode_bin_value, parse_endpoint_load_metrics, parse_headers, HeaderError, ENDPOINT_LOAD_METRICS,
    ENDPOINT_LOAD_METRICS_BIN,
};
use pickwise_orca::proto::OrcaLoadReport;
use prost::Message;

/// Envoy's `exampleOrcaLoadReport()`.
fn example() -> OrcaLoadReport {
    OrcaLoadReport {
        cpu_utilization: 0.7,
        application_utilization: 0.8,
        mem_utilization: 0.9,
        eps: 2.0,
        rps_fractional: 1000.0,
        named_metrics: BTreeMap::from([("foo".into(), 123.0), ("bar".into(), 0.2)]),
        ..Default::default()
    }
}

/// Envoy's `Base64::encode` (standard alphabet, padded).
fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn headers(entries: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in entries {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn text(value: &str) -> Result<OrcaLoadReport, HeaderError> {
    parse_headers(&headers(&[(ENDPOINT_LOAD_METRICS, value)]))
}

fn err_text(r: Result<OrcaLoadReport, HeaderError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn no_headers() {
    assert_eq!(parse_headers(&HeaderMap::new()), Err(HeaderError::NotFound));
    assert_eq!(
        err_text(parse_headers(&HeaderMap::new())),
        "no ORCA data sent from the backend"
    );
}

#[test]
fn missing_orca_headers() {
    assert_eq!(
        parse_headers(&headers(&[("wrong-header", "wrong-value")])),
        Err(HeaderError::NotFound)
    );
}

#[test]
fn invalid_orca_header_prefix() {
    assert_eq!(
        err_text(text("BAD random-value")),
        "unsupported ORCA header format: BAD"
    );
}

#[test]
fn invalid_orca_header_prefix_with_large_prefix() {
    assert_eq!(
        err_text(text("BADBAD random-value")),
        "unsupported ORCA header format: BADBA"
    );
}

#[test]
fn empty_orca_header() {
    assert_eq!(text(""), Err(HeaderError::UnsupportedFormat(String::new())));
    assert_eq!(err_text(text("")), "unsupported ORCA header format: ");
}

#[test]
fn native_http_encoded_header() {
    let r = text(
        "TEXT cpu_utilization:0.7,application_utilization:0.8,mem_utilization:0.9,\
         rps_fractional:1000,eps:2,named_metrics.foo:123,named_metrics.bar:0.2",
    );
    assert_eq!(r, Ok(example()));
}

#[test]
fn native_http_encoded_header_incorrect_field_type() {
    assert_eq!(
        err_text(text("TEXT cpu_utilization:\"0.7\"")),
        "unable to parse custom backend load metric value(cpu_utilization): \"0.7\""
    );
}

#[test]
fn native_http_encoded_header_nan_metric_value() {
    // absl::StrCat(quiet_NaN()) is "nan".
    assert_eq!(
        err_text(text("TEXT cpu_utilization:nan")),
        "custom backend load metric value(cpu_utilization) cannot be NaN."
    );
}

#[test]
fn native_http_encoded_header_infinity_metric_value() {
    // absl::StrCat(infinity()) is "inf".
    assert_eq!(
        err_text(text("TEXT cpu_utilization:inf")),
        "custom backend load metric value(cpu_utilization) cannot be infinity."
    );
}

#[test]
fn native_http_encoded_header_contains_duplicate_metric() {
    assert_eq!(
        err_text(text("TEXT cpu_utilization:0.7,cpu_utilization:0.8")),
        "endpoint-load-metrics contains duplicate metric: cpu_utilization"
    );
}

#[test]
fn native_http_encoded_header_unsupported_metric() {
    assert_eq!(
        err_text(text("TEXT cpu_utilization:0.7,unsupported_metric:0.8")),
        "unsupported metric name: unsupported_metric"
    );
}

#[test]
fn native_http_encoded_header_contains_duplicate_named_metric() {
    assert_eq!(
        err_text(text(
            "TEXT named_metrics.foo:123,named_metrics.duplicate:123,named_metrics.duplicate:0.2"
        )),
        "endpoint-load-metrics contains duplicate metric: named_metrics.duplicate"
    );
}

#[test]
fn native_http_encoded_header_contains_empty_named_metric_key() {
    assert_eq!(
        err_text(text("TEXT named_metrics.:123")),
        "named metric key is empty."
    );
}

#[test]
fn invalid_native_http_encoded_header() {
    assert_eq!(
        err_text(text("TEXT not-a-list-of-key-value-pairs")),
        "metric values cannot be empty strings"
    );
}

#[test]
fn json_header() {
    let r = text(
        "JSON {\"cpu_utilization\": 0.7, \"application_utilization\": 0.8, \"mem_utilization\": 0.9, \
         \"rps_fractional\": 1000, \"eps\": 2, \"named_metrics\": {\"foo\": 123,\"bar\": 0.2}}",
    );
    assert_eq!(r, Ok(example()));
}

#[test]
fn invalid_json_header() {
    assert!(err_text(text("JSON JSON not-a-valid-json-string")).contains("invalid JSON"));
}

#[test]
fn json_header_unknown_field() {
    let r = text(
        "JSON {\"cpu_utilization\": 0.7, \"application_utilization\": 0.8, \"mem_utilization\": 0.9, \
         \"rps_fractional\": 1000, \"eps\": 2,  \"unknown_field\": 2,\"named_metrics\": {\"foo\": 123,\"bar\": 0.2}}",
    );
    assert!(err_text(r).contains("invalid JSON"));
}

#[test]
fn json_header_incorrect_field_type() {
    assert!(err_text(text("JSON {\"cpu_utilization\": \"0.7\"")).contains("invalid JSON"));
}

#[test]
fn legacy_binary_header() {
    let h = headers(&[(ENDPOINT_LOAD_METRICS_BIN, &b64(&example().encode_to_vec()))]);
    assert_eq!(parse_headers(&h), Ok(example()));
}

#[test]
fn binary_header() {
    assert_eq!(
        text(&format!("BIN {}", b64(&example().encode_to_vec()))),
        Ok(example())
    );
}

#[test]
fn invalid_binary_header() {
    let bytes = example().encode_to_vec();
    let h = headers(&[(ENDPOINT_LOAD_METRICS_BIN, &b64(&bytes[..bytes.len() / 2]))]);
    assert!(err_text(parse_headers(&h)).contains("unable to parse binaryheader to OrcaLoadReport"));
}

#[test]
fn binary_header_populated_with_readable_string() {
    let h = headers(&[(ENDPOINT_LOAD_METRICS_BIN, "not-a-valid-binary-proto")]);
    assert!(err_text(parse_headers(&h))
        .contains("unable to decode ORCA binary header value: not-a-valid-binary-proto"));
}

#[test]
fn empty_binary_header() {
    let h = headers(&[(ENDPOINT_LOAD_METRICS_BIN, "")]);
    assert!(err_text(parse_headers(&h)).contains("ORCA binary header value is empty"));
}

#[test]
fn bin_header_precedence() {
    let h = headers(&[
        (ENDPOINT_LOAD_METRICS, "cpu_utilization:0.7"),
        (ENDPOINT_LOAD_METRICS_BIN, &b64(&example().encode_to_vec())),
    ]);
    assert_eq!(parse_headers(&h), Ok(example()));
}

// ===== beyond Envoy's cases =====

#[test]
fn bin_value_padded_and_unpadded() {
    let bytes = example().encode_to_vec();
    let padded = b64(&bytes);
    assert!(
        padded.ends_with('='),
        "the example needs padding for this test to mean anything"
    );
    let unpadded = padded.trim_end_matches('=');
    assert_eq!(decode_bin_value(padded.as_bytes()), Ok(example()));
    assert_eq!(decode_bin_value(unpadded.as_bytes()), Ok(example()));
    assert_eq!(
        parse_endpoint_load_metrics(format!("BIN {unpadded}").as_bytes()),
        Ok(example())
    );
}

#[test]
fn only_first_value_is_read() {
    let h = headers(&[
        (ENDPOINT_LOAD_METRICS, "TEXT eps:1"),
        (ENDPOINT_LOAD_METRICS, "TEXT eps:2"),
    ]);
    assert_eq!(parse_headers(&h).unwrap().eps, 1.0);
}

#[test]
fn prefix_needs_its_space() {
    assert_eq!(
        text("TEXTeps:1"),
        Err(HeaderError::UnsupportedFormat("TEXTe".into()))
    );
    assert_eq!(text("JSON"), Err(HeaderError::UnsupportedFormat("JSON".into())));
}

#[test]
fn non_utf8_is_an_error_not_a_panic() {
    assert_eq!(
        parse_endpoint_load_metrics(b"TEXT eps:\xff"),
        Err(HeaderError::NotUtf8)
    );
    assert!(parse_endpoint_load_metrics(b"\xff\xfe\xfd\xfc\xfb\xfa").is_err());
}
