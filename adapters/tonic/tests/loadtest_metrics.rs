//! `loadtest --metrics ADDR` as an operator scrapes it (feature `metrics`): while the run goes,
//! `grpc.subchannel.open_connections` counts one connection per backend; after it, the picks per
//! endpoint add up to the calls the run printed (`--json`), backend by backend; under Prequal the
//! probe counters and the fallback's picks are exported under the names Pingora's adapter shares.

#[path = "../../../tests/support/prometheus.rs"]
mod prometheus;
use prometheus::{example, samples, scrape, scrape_until};
use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn scraped_metrics_match_the_run() {
    // A free port: bound, read, released for the loadtest's exporter.
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut child = example("loadtest")
        .args([
            "--policy",
            "round-robin",
            "--healthy",
            "--duration",
            "2",
            "--concurrency",
            "8",
        ])
        .args(["--json", "--hold", "--metrics", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // During the run: one open connection per backend (4 embedded ones), and picks growing.
    let during = scrape_until(addr, Duration::from_secs(20), |t| {
        let open = samples(t, "grpc_subchannel_open_connections");
        open.iter().map(|s| s.1).sum::<f64>() == 4.0 && samples(t, "pickwise_picks").iter().any(|s| s.1 > 0.0)
    });
    assert!(
        during.contains("grpc.target") || during.contains("grpc_target"),
        "{during}"
    );
    assert_eq!(
        samples(&during, "grpc_subchannel_connection_attempts_succeeded")
            .iter()
            .map(|s| s.1)
            .sum::<f64>(),
        4.0,
        "{during}"
    );
    // The run's own figures.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let run: serde_json::Value = serde_json::from_str(&line).unwrap();
    let calls = run["requests"].as_u64().unwrap() + run["errors"].as_u64().unwrap();
    assert!(calls > 0, "{line}");
    let after = scrape(addr).expect("the exporter serves until stdin closes");
    let picks = samples(&after, "pickwise_endpoint_picks");
    assert_eq!(picks.len(), 4, "{after}");
    assert_eq!(
        picks.iter().map(|s| s.1).sum::<f64>(),
        calls as f64,
        "{line}\n{after}"
    );
    let by_policy = samples(&after, "pickwise_picks");
    assert_eq!(by_policy.len(), 1, "{after}");
    assert!(
        by_policy[0].0.contains("pickwise_policy=\"round_robin\""),
        "{after}"
    );
    assert_eq!(by_policy[0].1, calls as f64);
    // Healthy backends: every call reached the backend it was picked for.
    if run["errors"].as_u64() == Some(0) {
        for (addr, hits) in run["per_backend"].as_object().unwrap() {
            let picked = picks
                .iter()
                .find(|(labels, _)| labels.contains(&format!("pickwise_endpoint=\"{addr}\"")))
                .unwrap_or_else(|| panic!("no picks for {addr}: {after}"));
            assert_eq!(picked.1, hits.as_u64().unwrap() as f64, "{addr}");
        }
    }
    // The channel is gone: its connections closed, each counted as a disconnection.
    assert_eq!(
        samples(&after, "grpc_subchannel_open_connections")
            .iter()
            .map(|s| s.1)
            .sum::<f64>(),
        0.0,
        "{after}"
    );
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

#[test]
fn prequal_counters_match_the_run() {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut child = example("loadtest")
        .args(["--policy", "prequal", "--healthy", "--duration", "1"])
        .args(["--concurrency", "8", "--json", "--hold"])
        .args(["--metrics", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let run: serde_json::Value = serde_json::from_str(&line).expect(&line);
    let calls = run["requests"].as_u64().unwrap() + run["errors"].as_u64().unwrap();
    assert!(calls > 0, "{line}");
    let text = scrape(addr).expect("the exporter serves until stdin closes");
    let value = |name: &str, label: &str| -> f64 {
        let s: Vec<_> = samples(&text, name)
            .into_iter()
            .filter(|(labels, _)| labels.contains(label))
            .collect();
        assert_eq!(s.len(), 1, "{name}{{{label}}}: {text}");
        s[0].1
    };
    let sent = value("pickwise_prequal_probes_sent", "");
    let answered = value("pickwise_prequal_probe_results", "result=\"answered\"");
    let failed = value("pickwise_prequal_probe_results", "result=\"failed\"");
    assert!(sent > 0.0 && answered > 0.0, "{text}");
    // Probes still on their way when the channel closed are neither.
    assert!(answered + failed <= sent, "{text}");
    // The fallback's share of the picks, sampled every 250 ms (the last quarter second may be
    // missing): at most every pick, and present for an operator to alert on.
    let picks = value("pickwise_picks", "pickwise_policy=\"pickwise_prequal\"");
    assert_eq!(picks, calls as f64, "{line}\n{text}");
    assert!(value("pickwise_prequal_fallback_picks", "") <= picks, "{text}");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}
