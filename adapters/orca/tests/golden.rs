//! Golden wire bytes: the hand-derived prost messages against the reference protobuf
//! definitions (Python `xds-protos`, serialized by `support/orca_golden.py`).
//!
//! `VECTORS` holds the script's output, committed; `script_output_matches` reruns the script
//! and compares, failing (not skipping) under `CI` when Python or `xds-protos` is missing.

use std::collections::BTreeMap;
use std::process::Command;

use pickwise_orca::proto::{Duration, OrcaLoadReport, OrcaLoadReportRequest};
use prost::Message;

/// `python3 tests/support/orca_golden.py`, as committed.
const VECTORS: &[(&str, &str)] = &[
    ("empty", ""),
    (
        "envoy_example",
        "09666666666666e63f11cdccccccccccec3f310000000000408f40390000000000000040420e0a03626172119a\
         9999999999c93f420e0a03666f6f110000000000c05e40499a9999999999e93f",
    ),
    (
        "all_fields",
        "09000000000000e03f11000000000000d03f180722100a05636163686511000000000000e03f220d0a026462\
         11000000000000f83f2a0e0a0367707511000000000000e83f31000000000000294039000000000000c03f42\
         0c0a017811000000000000f0bf49000000000000f43f",
    ),
    ("request", "0a0808011080cab5ee011202646212056361636865"),
];

fn map(entries: &[(&str, f64)]) -> BTreeMap<String, f64> {
    entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Decodes then re-encodes a message of the vector's type.
type Roundtrip = Box<dyn Fn(&[u8]) -> Vec<u8>>;

/// The messages the script builds, under the same names.
#[allow(deprecated)] // `rps`
fn messages() -> Vec<(&'static str, Vec<u8>, Roundtrip)> {
    fn report_roundtrip(bytes: &[u8]) -> Vec<u8> {
        OrcaLoadReport::decode(bytes).unwrap().encode_to_vec()
    }
    let envoy_example = OrcaLoadReport {
        cpu_utilization: 0.7,
        application_utilization: 0.8,
        mem_utilization: 0.9,
        eps: 2.0,
        rps_fractional: 1000.0,
        named_metrics: map(&[("foo", 123.0), ("bar", 0.2)]),
        ..Default::default()
    };
    let all_fields = OrcaLoadReport {
        cpu_utilization: 0.5,
        mem_utilization: 0.25,
        rps: 7,
        request_cost: map(&[("db", 1.5), ("cache", 0.5)]),
        utilization: map(&[("gpu", 0.75)]),
        rps_fractional: 12.5,
        eps: 0.125,
        named_metrics: map(&[("x", -1.0)]),
        application_utilization: 1.25,
    };
    let request = OrcaLoadReportRequest {
        report_interval: Some(Duration {
            seconds: 1,
            nanos: 500_000_000,
        }),
        request_cost_names: vec!["db".into(), "cache".into()],
    };
    vec![
        (
            "empty",
            OrcaLoadReport::default().encode_to_vec(),
            Box::new(report_roundtrip),
        ),
        (
            "envoy_example",
            envoy_example.encode_to_vec(),
            Box::new(report_roundtrip),
        ),
        (
            "all_fields",
            all_fields.encode_to_vec(),
            Box::new(report_roundtrip),
        ),
        (
            "request",
            request.encode_to_vec(),
            Box::new(|b: &[u8]| OrcaLoadReportRequest::decode(b).unwrap().encode_to_vec()),
        ),
    ]
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn encode_matches_golden_bytes_and_decodes_back() {
    let messages = messages();
    assert_eq!(messages.len(), VECTORS.len());
    for ((name, hex), (mname, encoded, roundtrip)) in VECTORS.iter().zip(&messages) {
        assert_eq!(name, mname);
        let golden = unhex(hex);
        assert_eq!(encoded, &golden, "{name}: prost encoding differs from xds-protos");
        assert_eq!(roundtrip(&golden), golden, "{name}: decode/encode round trip");
    }
}

#[test]
fn decoded_golden_values() {
    let r = OrcaLoadReport::decode(&unhex(VECTORS[2].1)[..]).unwrap();
    #[allow(deprecated)]
    let rps = r.rps;
    assert_eq!((r.cpu_utilization, r.mem_utilization, rps), (0.5, 0.25, 7));
    assert_eq!(r.request_cost, map(&[("cache", 0.5), ("db", 1.5)]));
    assert_eq!(
        (r.rps_fractional, r.eps, r.application_utilization),
        (12.5, 0.125, 1.25)
    );
    let core = pickwise::wrr::LoadReport::from(&r);
    assert_eq!((core.qps, core.eps, core.utilization()), (12.5, 0.125, 1.25));
}

#[test]
fn script_output_matches() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/orca_golden.py");
    let in_ci = std::env::var_os("CI").is_some();
    let out = match Command::new("python3").arg(script).output() {
        Ok(out) => out,
        Err(e) => {
            assert!(!in_ci, "CI is set but python3 cannot run: {e}");
            println!("skipping: python3 not available ({e})");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let missing = stderr.contains("ModuleNotFoundError") || stderr.contains("ImportError");
        assert!(
            missing && !in_ci,
            "orca_golden.py failed{}:\n{stderr}",
            if in_ci {
                " (CI is set: install xds-protos)"
            } else {
                ""
            }
        );
        println!("skipping: xds-protos not installed (python3 -m pip install xds-protos)");
        return;
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    let got: Vec<(&str, &str)> = stdout
        .lines()
        .map(|l| {
            let (name, hex) = l.split_once(' ').unwrap_or((l, ""));
            (name, hex.trim())
        })
        .collect();
    assert_eq!(
        got, VECTORS,
        "xds-protos output differs from the committed vectors"
    );
}
