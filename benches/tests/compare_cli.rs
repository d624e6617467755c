//! The `compare` binary's command line: `--help` exits 0, bad arguments exit 2.

use std::process::Command;

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
