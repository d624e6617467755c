//! The `simulate` example's command line: `--help` exits 0, bad arguments exit 2.

use std::path::PathBuf;
use std::process::Command;

fn simulate() -> Command {
    let exe = std::env::current_exe().unwrap();
    let dir: PathBuf = exe.parent().unwrap().parent().unwrap().join("examples");
    Command::new(dir.join(format!("simulate{}", std::env::consts::EXE_SUFFIX)))
}

#[test]
fn help_and_bad_arguments() {
    let out = simulate().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().contains("Usage: simulate"));
    for bad in [
        &["--endpoints", "0"][..],
        &["--load=-1"],
        &["--fail-rate", "2"],
        &["--wat"],
    ] {
        let out = simulate().args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}
