//! `proxy --metrics ADDR` as an operator scrapes it (feature `metrics`): after a run through the
//! Pingora proxy, the picks per backend add up to what the run counted (`--json`), backend by
//! backend, and the policy's pick counter to the total; a backend that answers only 503s is
//! ejected, and the ejection counted with its reason; Prequal's probe counters add up to the
//! probes the run counted.

#[path = "../../../tests/support/prometheus.rs"]
mod prometheus;
use prometheus::{example, samples, scrape};
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Starts the proxy example with `args`, `--json --hold --metrics ADDR`; returns it, the
/// exporter's address and the run's JSON line (printed once the run is over).
fn run(args: &[&str]) -> (std::process::Child, SocketAddr, String) {
    // A free port: bound, read, released for the proxy's exporter.
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut child = example("proxy")
        .args(args)
        .args(["--json", "--hold", "--metrics", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, addr, line)
}

#[test]
fn an_ejection_is_counted_with_its_reason() {
    let (mut child, addr, line) = run(&[
        "--policy",
        "p2c-least-request",
        "--healthy",
        "--backends",
        "3",
        "--fail-percent",
        "100",
        "--duration",
        "1",
        "--concurrency",
        "4",
    ]);
    let run: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert!(run["errors"].as_u64().unwrap() >= 5, "{line}");
    let text = scrape(addr).expect("the exporter serves until stdin closes");
    let ejections = samples(&text, "pickwise_endpoint_ejections");
    assert!(
        ejections
            .iter()
            .any(|(l, v)| l.contains("reason=\"consecutive_failures\"") && *v >= 1.0),
        "{text}"
    );
    assert!(
        ejections
            .iter()
            .all(|(l, _)| l.contains("reason=\"consecutive_failures\"")),
        "{text}"
    );
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

#[test]
fn scraped_picks_match_the_run() {
    // A free port: bound, read, released for the proxy's exporter.
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut child = example("proxy")
        .args(["--policy", "p2c-least-request", "--healthy", "--backends", "2"])
        .args(["--duration", "1", "--concurrency", "4", "--json", "--hold"])
        .args(["--metrics", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The run's own figures (printed when the run is over and the proxy dropped).
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let run: serde_json::Value = serde_json::from_str(&line).expect(&line);
    let requests = run["requests"].as_u64().unwrap();
    assert!(requests > 0, "{line}");
    assert_eq!(run["errors"].as_u64(), Some(0), "{line}");
    let target = "grpc_target=\"p2c-least-request\"";
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        if let Some(text) = scrape(addr) {
            break text;
        }
        assert!(Instant::now() < deadline, "no scrape from {addr}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let picks = samples(&text, "pickwise_endpoint_picks");
    assert_eq!(picks.len(), 2, "{text}");
    for (backend, hits) in run["per_backend"].as_object().unwrap() {
        let picked = picks
            .iter()
            .find(|(labels, _)| labels.contains(&format!("pickwise_endpoint=\"{backend}\"")))
            .unwrap_or_else(|| panic!("no picks for {backend}: {text}"));
        assert!(picked.0.contains(target), "{text}");
        assert_eq!(
            picked.1,
            hits.as_u64().unwrap() as f64,
            "{backend}: {line}\n{text}"
        );
    }
    let by_policy = samples(&text, "pickwise_picks");
    assert_eq!(by_policy.len(), 1, "{text}");
    assert!(by_policy[0].0.contains(target), "{text}");
    assert_eq!(by_policy[0].1, requests as f64, "{line}\n{text}");
    // In-flight is sampled (at the core's timer runs): one series per backend, within the
    // run's concurrency; no ejection among healthy backends.
    let in_flight = samples(&text, "pickwise_endpoint_in_flight");
    assert_eq!(in_flight.len(), 2, "{text}");
    assert!(in_flight.iter().all(|s| s.1 <= 4.0), "{text}");
    assert!(samples(&text, "pickwise_endpoint_ejections").is_empty(), "{text}");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

#[test]
fn prequal_probes_are_counted() {
    let (mut child, addr, line) = run(&[
        "--policy",
        "prequal",
        "--healthy",
        "--backends",
        "2",
        "--duration",
        "1",
        "--concurrency",
        "4",
    ]);
    let run: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert_eq!(run["errors"].as_u64(), Some(0), "{line}");
    let probes = run["probes"].as_u64().unwrap();
    assert!(probes > 0, "{line}");
    let text = scrape(addr).expect("the exporter serves until stdin closes");
    let labelled = |name: &str, label: &str| {
        let s: Vec<_> = samples(&text, name)
            .into_iter()
            .filter(|(labels, _)| labels.contains(label))
            .collect();
        assert_eq!(s.len(), 1, "{name}{{{label}}}: {text}");
        assert!(s[0].0.contains("grpc_target=\"prequal\""), "{text}");
        s[0].1
    };
    let one = |name: &str| labelled(name, "");
    // The names and attributes of pickwise-tonic's exporter.
    let (sent, answered, failed) = (
        one("pickwise_prequal_probes_sent"),
        labelled("pickwise_prequal_probe_results", "result=\"answered\""),
        labelled("pickwise_prequal_probe_results", "result=\"failed\""),
    );
    assert_eq!(sent, probes as f64, "{line}\n{text}");
    // Probes still on their way when the proxy stopped are neither.
    assert!(answered > 0.0 && answered + failed <= sent, "{text}");
    // The example's backends piggyback their report on every response.
    assert!(one("pickwise_prequal_piggybacked") > 0.0, "{text}");
    // The fallback's picks: exported (sampled when the core's timers run), at most every pick.
    let picks: f64 = samples(&text, "pickwise_picks").iter().map(|s| s.1).sum();
    assert!(one("pickwise_prequal_fallback_picks") <= picks, "{text}");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}
