//! The `proxy` example's command line: `--help` exits 0, bad arguments exit 2, and `--json`
//! prints one object per selection with the loadtest's fields.

use std::path::PathBuf;
use std::process::Command;

fn proxy() -> Command {
    let exe = std::env::current_exe().unwrap();
    let dir: PathBuf = exe.parent().unwrap().parent().unwrap().join("examples");
    Command::new(dir.join(format!("proxy{}", std::env::consts::EXE_SUFFIX)))
}

#[test]
fn help_bad_arguments_and_json() {
    let out = proxy().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().contains("Usage: proxy"));
    for bad in [&["--policy", "nope"][..], &["--duration", "0"], &["--wat"]] {
        assert_eq!(
            proxy().args(bad).output().unwrap().status.code(),
            Some(2),
            "{bad:?}"
        );
    }
    let out = proxy()
        .args([
            "--policy",
            "p2c-least-request",
            "--duration",
            "0.3",
            "--concurrency",
            "4",
            "--healthy",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for field in [
        "\"policy\":\"p2c-least-request\"",
        "\"requests\":",
        "\"errors\":0",
        "\"rps\":",
        "\"p50_ms\":",
        "\"p99_ms\":",
        "\"per_backend\":{",
    ] {
        assert!(text.contains(field), "{field} missing: {text}");
    }
}
