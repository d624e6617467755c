//! The `loadtest` example as users run it: `--help` exits 0, bad arguments exit 2, and piped
//! output carries the table alone (the progress line is drawn only on a terminal).

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
