//! The `xds_client` example as a newcomer runs it: `--help`, no bootstrap (exit 2 with advice),
//! bad arguments (exit 2), and `--demo --json` (one object per second with the documented fields).

use std::process::Command;

fn example() -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.args(["run", "-q", "-p", "pickwise-xds", "--example", "xds_client", "--"]);
    c.env_remove("GRPC_XDS_BOOTSTRAP")
        .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG");
    c
}

#[test]
fn help_no_bootstrap_bad_arguments_and_json() {
    let out = example().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--concurrency"));

    let out = example().arg("xds:///greeter").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GRPC_XDS_BOOTSTRAP"));

    let out = example()
        .args(["xds:///greeter", "--concurrency", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = example()
        .args([
            "xds:///greeter",
            "--demo",
            "--json",
            "--duration",
            "2",
            "--concurrency",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2, "{lines:?}");
    for l in &lines {
        for k in ["t", "policy", "requests", "errors", "per_backend"] {
            assert!(l.get(k).is_some(), "{k} missing in {l}");
        }
        assert_eq!(l["errors"], 0);
        // Three backends; the demo drains one halfway through the run.
        assert!(
            (2..=3).contains(&l["per_backend"].as_object().unwrap().len()),
            "{l}"
        );
    }
    assert_eq!(lines[0]["per_backend"].as_object().unwrap().len(), 3);
}
