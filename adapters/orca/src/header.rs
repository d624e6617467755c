//! ORCA in HTTP headers and gRPC trailers, without tonic (the Pingora adapter uses it too).
//!
//! Two carriers exist:
//!
//! - `endpoint-load-metrics-bin` ([`ENDPOINT_LOAD_METRICS_BIN`]): the gRPC trailer (gRFC A51).
//!   Its value is the binary `OrcaLoadReport`; in HTTP/2 (and HTTP/1.1) headers, `-bin` values
//!   travel base64-encoded, padded or not (the gRPC HTTP/2 protocol says receivers must accept
//!   both). tonic decodes `-bin` metadata itself (`MetadataMap::get_bin(..)?.to_bytes()`): give
//!   those bytes to `prost::Message::decode`; give raw header bytes to [`decode_bin_value`].
//! - `endpoint-load-metrics` ([`ENDPOINT_LOAD_METRICS`]): Envoy's HTTP response header, in one
//!   of three forms chosen by a prefix: `TEXT cpu_utilization:0.7,named_metrics.foo:1`,
//!   `JSON {"cpu_utilization": 0.7}` or `BIN <base64 OrcaLoadReport>` ([`parse_endpoint_load_metrics`]).
//!
//! [`parse_headers`] follows Envoy's `Orca::parseOrcaLoadReportHeaders`
//! (`source/common/orca/orca_parser.cc`): the `-bin` header wins when both are present; only
//! the first value of each header is read; no ORCA header is [`HeaderError::NotFound`].
//!
//! The grammar of the `TEXT` form, as Envoy parses it: the rest of the value is split at `,`;
//! each piece is trimmed of ASCII whitespace and skipped when empty; a piece is split at its
//! first `:` into name and value, dropping empty or whitespace-only parts (so `:1` has the name
//! `1` and no value); a name seen twice is [`HeaderError::DuplicateMetric`]; the value is a
//! decimal floating-point number (surrounding whitespace and a leading `+` allowed; out-of-range
//! magnitudes become infinite), NaN and infinities are refused; names are `cpu_utilization`,
//! `mem_utilization`, `application_utilization`, `eps`, `rps_fractional` and
//! `named_metrics.<key>` with a non-empty key. Values are not range-checked (Envoy does not).
//!
//! The `JSON` form is the proto3 JSON mapping of `OrcaLoadReport`: field names in proto or
//! lowerCamelCase spelling, numbers or numeric strings (`"NaN"`, `"Infinity"` allowed, as
//! proto3 JSON allows them), `null` for the default, unknown fields refused.
//!
//! Deviations from Envoy, all lenient: `BIN` and `-bin` values may omit base64 padding (Envoy's
//! decoder needs padding; gRPC emits unpadded values); a value that is not UTF-8 is
//! [`HeaderError::NotUtf8`] where Envoy would fail on the bytes later; `nan(...)` payloads are
//! refused as unparsable rather than as NaN.
//!
//! # Examples
//!
//! ```
//! use pickwise_orca::header::{parse_endpoint_load_metrics, HeaderError};
//!
//! let r = parse_endpoint_load_metrics(b"TEXT cpu_utilization:0.7, named_metrics.foo:123").unwrap();
//! assert_eq!(r.cpu_utilization, 0.7);
//! assert_eq!(r.named_metrics["foo"], 123.0);
//!
//! let r = parse_endpoint_load_metrics(br#"JSON {"rps_fractional": 1000, "eps": 2}"#).unwrap();
//! assert_eq!((r.rps_fractional, r.eps), (1000.0, 2.0));
//!
//! assert_eq!(
//!     parse_endpoint_load_metrics(b"TEXT cpu_utilization:0.7,cpu_utilization:0.8"),
//!     Err(HeaderError::DuplicateMetric("cpu_utilization".into())),
//! );
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use prost::Message as _;

use crate::proto::OrcaLoadReport;

/// The gRPC trailer carrying the binary `OrcaLoadReport` (gRFC A51).
pub const ENDPOINT_LOAD_METRICS_BIN: &str = "endpoint-load-metrics-bin";
/// Envoy's HTTP response header carrying a report as `TEXT …`, `JSON …` or `BIN …`.
pub const ENDPOINT_LOAD_METRICS: &str = "endpoint-load-metrics";

const PREFIX_BIN: &[u8] = b"BIN ";
const PREFIX_JSON: &[u8] = b"JSON ";
const PREFIX_TEXT: &[u8] = b"TEXT ";
const NAMED_METRICS_PREFIX: &str = "named_metrics.";

/// Standard alphabet, padding optional on input (gRPC: "MUST accept padded and un-padded").
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why an ORCA header could not be read. The `Display` texts are Envoy's messages.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// Neither `endpoint-load-metrics-bin` nor `endpoint-load-metrics` is present.
    NotFound,
    /// `endpoint-load-metrics` has no known prefix; holds what Envoy reports (up to 5 bytes,
    /// cut at the first space).
    UnsupportedFormat(String),
    /// The binary value is empty.
    BinaryEmpty,
    /// The binary value is not base64 (holds the value).
    BinaryBase64(String),
    /// The decoded bytes are not an `OrcaLoadReport` (holds the base64 value).
    BinaryProto(String),
    /// A `TEXT` metric name appears twice (holds the name as written).
    DuplicateMetric(String),
    /// A `TEXT` entry has an empty name.
    EmptyMetricName,
    /// A `TEXT` entry has no value.
    EmptyMetricValue,
    /// A `TEXT` value is not a number.
    InvalidMetricValue {
        /// The metric name.
        name: String,
        /// The value as written.
        value: String,
    },
    /// A `TEXT` value is NaN (holds the name).
    NanMetricValue(String),
    /// A `TEXT` value is infinite (holds the name).
    InfiniteMetricValue(String),
    /// A `TEXT` name is not an `OrcaLoadReport` field.
    UnsupportedMetricName(String),
    /// `named_metrics.` with nothing after the dot.
    EmptyNamedMetricKey,
    /// The `JSON` form is not valid proto3 JSON for `OrcaLoadReport` (holds the reason).
    InvalidJson(String),
    /// A `TEXT` or `JSON` value is not UTF-8.
    NotUtf8,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => f.write_str("no ORCA data sent from the backend"),
            Self::UnsupportedFormat(p) => write!(f, "unsupported ORCA header format: {p}"),
            Self::BinaryEmpty => f.write_str("ORCA binary header value is empty"),
            Self::BinaryBase64(v) => write!(f, "unable to decode ORCA binary header value: {v}"),
            Self::BinaryProto(v) => {
                write!(f, "unable to parse binaryheader to OrcaLoadReport: {v}")
            }
            Self::DuplicateMetric(n) => {
                write!(f, "{ENDPOINT_LOAD_METRICS} contains duplicate metric: {n}")
            }
            Self::EmptyMetricName => f.write_str("metric names cannot be empty strings"),
            Self::EmptyMetricValue => f.write_str("metric values cannot be empty strings"),
            Self::InvalidMetricValue { name, value } => {
                write!(
                    f,
                    "unable to parse custom backend load metric value({name}): {value}"
                )
            }
            Self::NanMetricValue(n) => {
                write!(f, "custom backend load metric value({n}) cannot be NaN.")
            }
            Self::InfiniteMetricValue(n) => {
                write!(f, "custom backend load metric value({n}) cannot be infinity.")
            }
            Self::UnsupportedMetricName(n) => write!(f, "unsupported metric name: {n}"),
            Self::EmptyNamedMetricKey => f.write_str("named metric key is empty."),
            Self::InvalidJson(why) => write!(f, "invalid JSON ORCA header: {why}"),
            Self::NotUtf8 => f.write_str("ORCA header value is not UTF-8"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Encodes `report` as an `endpoint-load-metrics-bin` value: base64, standard alphabet,
/// unpadded (what gRPC emits).
pub fn encode_bin_value(report: &OrcaLoadReport) -> String {
    BASE64.encode(report.encode_to_vec())
}

/// Decodes a raw `endpoint-load-metrics-bin` header value (base64, padded or not) into a
/// report. tonic users reading `MetadataMap::get_bin` already hold decoded bytes: use
/// `prost::Message::decode` on those instead.
pub fn decode_bin_value(raw: &[u8]) -> Result<OrcaLoadReport, HeaderError> {
    if raw.is_empty() {
        return Err(HeaderError::BinaryEmpty);
    }
    let lossy = || String::from_utf8_lossy(raw).into_owned();
    let bytes = BASE64
        .decode(raw)
        .map_err(|_| HeaderError::BinaryBase64(lossy()))?;
    if bytes.is_empty() {
        return Err(HeaderError::BinaryBase64(lossy()));
    }
    OrcaLoadReport::decode(&bytes[..]).map_err(|_| HeaderError::BinaryProto(lossy()))
}

/// Parses one value of Envoy's `endpoint-load-metrics` header (`TEXT …`, `JSON …`, `BIN …`).
pub fn parse_endpoint_load_metrics(value: &[u8]) -> Result<OrcaLoadReport, HeaderError> {
    if let Some(rest) = value.strip_prefix(PREFIX_BIN) {
        decode_bin_value(rest)
    } else if let Some(rest) = value.strip_prefix(PREFIX_TEXT) {
        parse_text(std::str::from_utf8(rest).map_err(|_| HeaderError::NotUtf8)?)
    } else if let Some(rest) = value.strip_prefix(PREFIX_JSON) {
        parse_json(std::str::from_utf8(rest).map_err(|_| HeaderError::NotUtf8)?)
    } else {
        let head = &value[..value.len().min(5)];
        let head = match head.iter().position(|&b| b == b' ') {
            Some(i) => &head[..i],
            None => head,
        };
        Err(HeaderError::UnsupportedFormat(
            String::from_utf8_lossy(head).into_owned(),
        ))
    }
}

/// Reads a report from response headers (or trailers) as Envoy does: the first
/// `endpoint-load-metrics-bin` value if present, else the first `endpoint-load-metrics` value,
/// else [`HeaderError::NotFound`].
pub fn parse_headers(headers: &http::HeaderMap) -> Result<OrcaLoadReport, HeaderError> {
    if let Some(v) = headers.get(ENDPOINT_LOAD_METRICS_BIN) {
        decode_bin_value(v.as_bytes())
    } else if let Some(v) = headers.get(ENDPOINT_LOAD_METRICS) {
        parse_endpoint_load_metrics(v.as_bytes())
    } else {
        Err(HeaderError::NotFound)
    }
}

// ===== TEXT =====

fn parse_text(s: &str) -> Result<OrcaLoadReport, HeaderError> {
    let mut report = OrcaLoadReport::default();
    let mut seen = HashSet::new();
    for token in s.split(',').map(|t| t.trim_matches(is_ascii_ws)) {
        if token.is_empty() {
            continue;
        }
        // absl::StrSplit(token, MaxSplits(':', 1), SkipWhitespace()) into a pair.
        let mut parts = match token.split_once(':') {
            Some((a, b)) => [Some(a), Some(b)],
            None => [Some(token), None],
        }
        .into_iter()
        .flatten()
        .filter(|p| !p.chars().all(is_ascii_ws));
        let name = parts.next().unwrap_or("");
        let value = parts.next().unwrap_or("");
        if seen.contains(name) {
            return Err(HeaderError::DuplicateMetric(name.to_owned()));
        }
        set_text_metric(name, value, &mut report)?;
        seen.insert(name);
    }
    Ok(report)
}

fn is_ascii_ws(c: char) -> bool {
    // absl's ascii_isspace: space, \t, \n, \v, \f, \r.
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

fn set_text_metric(name: &str, value: &str, r: &mut OrcaLoadReport) -> Result<(), HeaderError> {
    if name.is_empty() {
        return Err(HeaderError::EmptyMetricName);
    }
    if value.is_empty() {
        return Err(HeaderError::EmptyMetricValue);
    }
    let v = parse_double(value).ok_or_else(|| HeaderError::InvalidMetricValue {
        name: name.to_owned(),
        value: value.to_owned(),
    })?;
    if v.is_nan() {
        return Err(HeaderError::NanMetricValue(name.to_owned()));
    }
    if v.is_infinite() {
        return Err(HeaderError::InfiniteMetricValue(name.to_owned()));
    }
    if let Some(key) = name.strip_prefix(NAMED_METRICS_PREFIX) {
        if key.is_empty() {
            return Err(HeaderError::EmptyNamedMetricKey);
        }
        r.named_metrics.insert(key.to_owned(), v);
        return Ok(());
    }
    match name {
        "cpu_utilization" => r.cpu_utilization = v,
        "mem_utilization" => r.mem_utilization = v,
        "application_utilization" => r.application_utilization = v,
        "eps" => r.eps = v,
        "rps_fractional" => r.rps_fractional = v,
        _ => return Err(HeaderError::UnsupportedMetricName(name.to_owned())),
    }
    Ok(())
}

/// absl::SimpleAtod: surrounding whitespace allowed, a leading `+` allowed (not `+-`),
/// decimal or `inf`/`infinity`/`nan`; overflow gives an infinity.
fn parse_double(s: &str) -> Option<f64> {
    let s = s.trim_matches(is_ascii_ws);
    if s.starts_with("+-") || s.starts_with("++") {
        return None;
    }
    s.parse::<f64>().ok()
}

// ===== JSON =====

fn parse_json(s: &str) -> Result<OrcaLoadReport, HeaderError> {
    let bad = |why: String| HeaderError::InvalidJson(why);
    let value: serde_json::Value = serde_json::from_str(s).map_err(|e| bad(e.to_string()))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(bad("not a JSON object".into()));
    };
    let mut r = OrcaLoadReport::default();
    for (key, v) in &fields {
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "cpu_utilization" | "cpuUtilization" => r.cpu_utilization = json_double(key, v)?,
            "mem_utilization" | "memUtilization" => r.mem_utilization = json_double(key, v)?,
            "rps" => {
                #[allow(deprecated)]
                {
                    r.rps = json_u64(key, v)?;
                }
            }
            "request_cost" | "requestCost" => r.request_cost = json_map(key, v)?,
            "utilization" => r.utilization = json_map(key, v)?,
            "rps_fractional" | "rpsFractional" => r.rps_fractional = json_double(key, v)?,
            "eps" => r.eps = json_double(key, v)?,
            "named_metrics" | "namedMetrics" => r.named_metrics = json_map(key, v)?,
            "application_utilization" | "applicationUtilization" => {
                r.application_utilization = json_double(key, v)?
            }
            other => return Err(bad(format!("unknown field {other:?}"))),
        }
    }
    Ok(r)
}

fn json_double(key: &str, v: &serde_json::Value) -> Result<f64, HeaderError> {
    let parsed = match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            s if s.trim() == s && !s.is_empty() => s.parse::<f64>().ok().filter(|v| v.is_finite()),
            _ => None,
        },
        _ => None,
    };
    parsed.ok_or_else(|| HeaderError::InvalidJson(format!("field {key:?}: not a double: {v}")))
}

fn json_u64(key: &str, v: &serde_json::Value) -> Result<u64, HeaderError> {
    let parsed = match v {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19)
                .map(|f| f as u64)
        }),
        serde_json::Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| HeaderError::InvalidJson(format!("field {key:?}: not a uint64: {v}")))
}

fn json_map(key: &str, v: &serde_json::Value) -> Result<BTreeMap<String, f64>, HeaderError> {
    let serde_json::Value::Object(m) = v else {
        return Err(HeaderError::InvalidJson(format!("field {key:?}: not an object")));
    };
    m.iter()
        .map(|(k, v)| Ok((k.clone(), json_double(key, v)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_name_value_split_like_absl() {
        // ":1" splits into "" and "1"; the empty part is skipped, so "1" becomes the name.
        assert_eq!(parse_text(":1"), Err(HeaderError::EmptyMetricValue));
        assert_eq!(parse_text(":"), Err(HeaderError::EmptyMetricName));
        assert_eq!(parse_text("cpu_utilization:"), Err(HeaderError::EmptyMetricValue));
        // The name keeps inner whitespace (Envoy does not trim around ':').
        assert_eq!(
            parse_text("cpu_utilization :0.5"),
            Err(HeaderError::UnsupportedMetricName("cpu_utilization ".into()))
        );
        // The value may carry whitespace and a '+'.
        assert_eq!(parse_text("cpu_utilization: +0.5").unwrap().cpu_utilization, 0.5);
        assert!(matches!(
            parse_text("cpu_utilization:+-1"),
            Err(HeaderError::InvalidMetricValue { .. })
        ));
        // Overflow is infinity, refused.
        assert_eq!(
            parse_text("eps:1e999"),
            Err(HeaderError::InfiniteMetricValue("eps".into()))
        );
        // Empty pieces are skipped.
        assert_eq!(parse_text(" , ,eps:1,").unwrap().eps, 1.0);
    }

    #[test]
    fn json_spellings_and_nulls() {
        let r = parse_json(r#"{"cpuUtilization": "0.5", "namedMetrics": {"a": 1}, "eps": null, "rps": "3"}"#)
            .unwrap();
        assert_eq!(r.cpu_utilization, 0.5);
        assert_eq!(r.named_metrics["a"], 1.0);
        assert!(parse_json("[]").is_err());
        assert!(parse_json(r#"{"eps": true}"#).is_err());
    }
}
