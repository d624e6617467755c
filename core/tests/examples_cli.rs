//! The core's examples as users run them: `route` reproduces Envoy's `Basic` golden vector,
//! `simulate` and `fleet` run small scenarios; every example's `--help` exits 0 and bad input
//! exits 2.

use std::path::PathBuf;
use std::process::Command;

/// `cargo test` builds examples next to the test binaries' `deps/` directory.
fn example(name: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    let dir: PathBuf = exe.parent().unwrap().parent().unwrap().join("examples");
    Command::new(dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
}

fn route() -> Command {
    example("route")
}

const BASIC: [&str; 6] = [
    "127.0.0.1:90",
    "127.0.0.1:91",
    "127.0.0.1:92",
    "127.0.0.1:93",
    "127.0.0.1:94",
    "127.0.0.1:95",
];

#[test]
fn envoy_basic_via_route() {
    let out = route()
        .args(["--mode", "envoy", "--min-ring-size", "12", "--dump"])
        .args(["--hash", "3551244743356806947", "--hash", "3551244743356806948"])
        .args(BASIC)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 14);
    assert_eq!(lines[0], "833437586790550860 127.0.0.1:94");
    assert_eq!(lines[1], "928266305478181108 127.0.0.1:92");
    assert_eq!(lines[2], "1033482794131418490 127.0.0.1:90");
    assert_eq!(lines[12], "3551244743356806947 127.0.0.1:95");
    assert_eq!(lines[13], "3551244743356806948 127.0.0.1:93");
}

#[test]
fn keys_are_hashed_like_the_mode() {
    let out = route()
        .args(["--mode", "grpc", "--key", "127.0.0.1:93_0"])
        .args(BASIC)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        format!("{} 127.0.0.1:93\n", pickwise::hash::xxh64(b"127.0.0.1:93_0"))
    );
}

#[test]
fn help_exits_0_with_usage() {
    let out = route().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Usage: route"), "{text}");
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    for args in [
        &["--mode", "bogus", "a"][..],
        &["a=notanumber"],
        &["--hash", "-1", "a"],
        &["--min-ring-size"],
        &[],
        &["a", "a"],
        &["--min-ring-size", "10", "--max-ring-size", "5", "a"],
        &["--wat", "a"],
    ] {
        let out = route().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.starts_with("error") || err.starts_with("route: "),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn simulate_help_and_bad_arguments() {
    let out = example("simulate").arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().contains("Usage: simulate"));
    for bad in [
        &["--endpoints", "0"][..],
        &["--load=-1"],
        &["--fail-rate", "2"],
        &["--wat"],
    ] {
        let out = example("simulate").args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

/// A short real run (4 endpoints, 3,000 requests): one JSON row per policy, every request
/// accounted for, the same output for the same seed, and the figures the README draws from it:
/// endpoint 1 fails half its requests, and the least-request policies send less to the slow
/// endpoint 0 than random does.
#[test]
fn simulate_runs_every_policy() {
    let run = || {
        let out = example("simulate")
            .args(["--seed", "7", "--endpoints", "4", "--requests", "3000", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run();
    assert_eq!(text, run(), "deterministic per seed");
    let rows: Vec<&str> = text.lines().collect();
    let policies = [
        "random",
        "round-robin",
        "least-request",
        "peak-ewma",
        "go-zero",
        "ring",
        "ring-bounded",
        "ring-affinity",
    ];
    assert_eq!(rows.len(), policies.len(), "{text}");
    let num = |row: &str, name: &str| -> f64 {
        let at = row
            .find(&format!("\"{name}\":"))
            .unwrap_or_else(|| panic!("{name} in {row}"));
        let rest = &row[at + name.len() + 3..];
        rest[..rest.find([',', '}']).unwrap()].parse().unwrap()
    };
    let share0 = |row: &str| num(&row[row.find("\"share\"").unwrap() + 9..], "0");
    for (row, policy) in rows.iter().zip(policies) {
        assert!(row.starts_with(&format!("{{\"policy\":\"{policy}\"")), "{row}");
        assert_eq!(num(row, "requests"), 3000.0, "{row}");
        let failures = num(row, "failures");
        assert!(failures > 0.0 && failures < 3000.0, "{row}");
        let (p50, p99) = (num(row, "p50_ms"), num(row, "p99_ms"));
        assert!(p50 >= 5.0 && p99 >= p50, "service time is at least 5 ms: {row}");
    }
    // Random spreads evenly: endpoint 1 gets ~1/4 and fails half of it.
    let random = rows[0];
    let failed = num(random, "failures") / 3000.0;
    assert!((0.09..0.16).contains(&failed), "{random}");
    assert!((0.20..0.30).contains(&share0(random)), "{random}");
    for lr in [rows[2], rows[3]] {
        assert!(share0(lr) < share0(random), "slow endpoint 0: {lr} vs {random}");
    }
}

/// The fleet simulator: `--json` fields as documented, aperture even where random subsetting is
/// not, churn figures present (a small fleet, so the debug build stays fast).
#[test]
fn fleet_json_and_targets() {
    let out = example("fleet")
        .args([
            "--clients",
            "2000",
            "--backends",
            "200",
            "--subset",
            "12",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 4);
    let field = |row: &str, name: &str| -> f64 {
        let at = row
            .find(&format!("\"{name}\":"))
            .unwrap_or_else(|| panic!("{name} missing in {row}"));
        let rest = &row[at + name.len() + 3..];
        rest[..rest.find([',', '}']).unwrap()]
            .trim_matches('"')
            .parse()
            .unwrap()
    };
    for row in &rows {
        for name in [
            "subset",
            "conns_per_client",
            "conn_max_mean",
            "load_max_mean",
            "load_p99_mean",
            "load_max_mean_skewed",
            "churn_deploy",
            "churn_add_backend",
            "churn_scale_clients",
        ] {
            let _ = field(row, name);
        }
    }
    let by = |s: &str| {
        *rows
            .iter()
            .find(|r| r.contains(&format!("\"strategy\":\"{s}\"")))
            .unwrap()
    };
    assert!(field(by("aperture"), "conn_max_mean") <= 1.05);
    assert!(field(by("aperture"), "load_max_mean") <= 1.10);
    assert!(field(by("random"), "load_max_mean") > field(by("aperture"), "load_max_mean"));
    let help = example("fleet").arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert_eq!(
        example("fleet")
            .args(["--clients", "0"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
}
