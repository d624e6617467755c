//! `loadtest --plot FILE.svg` writes an SVG drawn by plotters, one row per policy.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn plot_writes_an_svg_with_every_policy() {
    let exe = std::env::current_exe().unwrap();
    let dir: PathBuf = exe.parent().unwrap().parent().unwrap().join("examples");
    let svg = std::env::temp_dir().join(format!("pickwise-loadtest-{}.svg", std::process::id()));
    let out = Command::new(dir.join(format!("loadtest{}", std::env::consts::EXE_SUFFIX)))
        .args(["--policy", "round-robin", "--policy", "p2c-least-request"])
        .args(["--duration", "0.6", "--concurrency", "4", "--json", "--plot"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(
        text.starts_with("<svg") || text.starts_with("<?xml"),
        "{}",
        &text[..80.min(text.len())]
    );
    assert!(text.trim_end().ends_with("</svg>"));
    for policy in ["round-robin", "p2c-least-request"] {
        assert!(text.contains(&format!("{policy}: share per backend")), "{policy}");
        assert!(text.contains(&format!("{policy}: latency")), "{policy}");
    }
    assert!(text.contains("b3 killed") && text.contains("b3 restarted"));
    assert!(text.contains("p99"));
}
