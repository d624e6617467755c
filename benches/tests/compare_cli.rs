//! The `compare` binary: `--help` exits 0, bad arguments exit 2, and a real run prints the rows
//! its docs describe.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn help_and_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_compare"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().contains("Usage: compare"));
    let out = Command::new(env!("CARGO_BIN_EXE_compare"))
        .arg("--slow")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The first suite of a real `--quick --json` run: a build row and a lookup row for each of the
/// nine ring implementations at 10 endpoints, with the documented fields. Only the first suite:
/// the whole `--quick` run takes minutes in a debug build, the first suite about 15 s.
#[test]
fn a_real_run_prints_a_build_and_a_lookup_row_per_ring() {
    let impls = [
        "pickwise-native",
        "pickwise-envoy",
        "pickwise-maglev",
        "binary-search",
        "pingora-ketama",
        "hashring",
        "conhash",
        "maglev",
        "mpchash",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_compare"))
        .args(["--quick", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rows: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .take(2 * impls.len())
        .map(Result::unwrap)
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(rows.len(), 2 * impls.len(), "{rows:#?}");
    let field = |row: &str, name: &str| -> String {
        let at = row
            .find(&format!("\"{name}\":"))
            .unwrap_or_else(|| panic!("{name} missing in {row}"));
        let rest = &row[at + name.len() + 3..];
        rest[..rest.find([',', '}']).unwrap()]
            .trim_matches('"')
            .to_string()
    };
    let num = |row: &str, name: &str| -> f64 { field(row, name).parse().unwrap() };
    for (pair, imp) in rows.chunks(2).zip(impls) {
        let (build, lookup) = (&pair[0], &pair[1]);
        assert_eq!(
            (field(build, "bench"), field(build, "impl"), num(build, "n")),
            ("ring_build".to_string(), imp.to_string(), 10.0),
            "{build}"
        );
        assert!(
            num(build, "ms") > 0.0 && num(build, "heap_bytes") > 0.0,
            "{build}"
        );
        assert_eq!(
            (field(lookup, "bench"), field(lookup, "impl"), num(lookup, "n")),
            ("ring_lookup".to_string(), imp.to_string(), 10.0),
            "{lookup}"
        );
        assert!(num(lookup, "ns_per_op") > 0.0, "{lookup}");
        // Load spread: the busiest endpoint's share over the mean is at least 1.
        assert!(num(lookup, "max_mean") >= 1.0, "{lookup}");
        if imp.starts_with("pickwise") {
            assert_eq!(num(lookup, "allocs_per_lookup"), 0.0, "{lookup}");
        }
    }
}
