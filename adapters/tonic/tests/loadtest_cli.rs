//! The `loadtest` example as users run it: `--help` exits 0, bad arguments exit 2, and piped
//! output carries the table alone (the progress line is drawn only on a terminal); the
//! `--fail-percent` scenario reports errors per policy.

use std::path::PathBuf;
use std::process::Command;

fn loadtest() -> Command {
    let exe = std::env::current_exe().unwrap();
    let dir: PathBuf = exe.parent().unwrap().parent().unwrap().join("examples");
    Command::new(dir.join(format!("loadtest{}", std::env::consts::EXE_SUFFIX)))
}

#[test]
fn help_and_bad_arguments() {
    let out = loadtest().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().contains("Usage: loadtest"));
    for bad in [
        &["--policy", "nope"][..],
        &["--duration", "0"],
        &["--concurrency", "0"],
        &["--fail-percent", "101"],
        &["--fail-percent", "30", "--targets", "127.0.0.1:1"],
        &["--wat"],
    ] {
        let out = loadtest().args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn piped_output_has_no_progress_line() {
    let out = loadtest()
        .args([
            "--policy",
            "p2c-least-request",
            "--duration",
            "0.3",
            "--concurrency",
            "4",
            "--healthy",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(
        !stdout.contains('\r') && !stderr.contains('\r'),
        "{stdout:?} {stderr:?}"
    );
    assert!(stdout.contains("p2c-least-request"), "{stdout}");
}

/// Issue 16's scenario: backend 3 fails 30% of its calls fast; the table gives each policy's
/// errors as a percentage of its calls, and the failing backend's share.
#[test]
fn fail_percent_scenario_reports_errors_per_policy() {
    let out = loadtest()
        .args([
            "--policy",
            "round-robin",
            "--policy",
            "p2c-peak-ewma",
            "--duration",
            "0.3",
            "--concurrency",
            "4",
            "--fail-percent",
            "30",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("backend 3 answers 30% of calls UNAVAILABLE"),
        "{stdout}"
    );
    let header = stdout.lines().find(|l| l.starts_with("policy")).expect(&stdout);
    assert!(header.contains("err %"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("round-robin"))
        .expect(&stdout);
    // Round robin sends the failing backend calls until outlier detection ejects it: some fail.
    let errors: u64 = row.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert!(errors > 0, "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("p2c-peak-ewma")), "{stdout}");
}

/// Issue 18's scenario: unequal capacity with ORCA reports; the report-driven policies run over
/// all four backends without errors (the shares are the loadtest's figures, not asserted here).
#[test]
fn unequal_scenario_runs_the_report_driven_policies() {
    let out = loadtest()
        .args([
            "--policy",
            "weighted-round-robin",
            "--policy",
            "p2c-peak-ewma-orca",
            "--duration",
            "2.5",
            "--concurrency",
            "16",
            "--unequal",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    for policy in ["weighted-round-robin", "p2c-peak-ewma-orca"] {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("\"{policy}\"")))
            .expect(&stdout);
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["errors"], 0, "{line}");
        let per: Vec<f64> = v["per_backend"]
            .as_object()
            .unwrap()
            .values()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(per.len(), 4, "{line}");
    }
}

/// Prequal runs against the embedded backends' server side (probe service, piggybacked
/// reports) and reports its probing cost.
#[test]
fn prequal_reports_probes_per_request() {
    let out = loadtest()
        .args(["--policy", "prequal", "--policy", "round-robin", "--healthy"])
        .args(["--duration", "1", "--concurrency", "4", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let run = |policy: &str| -> serde_json::Value {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("\"{policy}\"")))
            .expect(&stdout);
        serde_json::from_str(line).unwrap()
    };
    let prequal = run("prequal");
    assert_eq!(prequal["errors"], 0, "{prequal}");
    assert!(prequal["probes_per_request"].as_f64().unwrap() > 0.0, "{prequal}");
    assert_eq!(run("round-robin")["probes_per_request"].as_f64(), Some(0.0));
}
