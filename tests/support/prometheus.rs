//! Shared by the adapters' metrics tests (included with `#[path]`): find an example binary
//! built next to the test, scrape a Prometheus text endpoint as an operator would, and read
//! samples out of the text.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The example binary `name` of the crate under test (built by `cargo test` next to the tests).
pub(crate) fn example(name: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    let dir: PathBuf = exe.parent().unwrap().parent().unwrap().join("examples");
    Command::new(dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
}

/// The Prometheus text at http://addr/metrics, if the exporter answers.
pub(crate) fn scrape(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.1 200").then_some(body)
}

/// Scrapes until `ok` holds, for at most `within`; returns the last scrape.
pub(crate) fn scrape_until(addr: SocketAddr, within: Duration, ok: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < until {
        if let Some(text) = scrape(addr) {
            if ok(&text) {
                return text;
            }
            last = text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("metrics never satisfied the condition within {within:?}; last scrape:\n{last}");
}

/// Every sample of `name` as (labels, value).
pub(crate) fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (n == name).then(|| Some((labels.to_string(), value.parse().ok()?)))?
        })
        .collect()
}

/// The sum of the samples of `name` whose labels contain every one of `labels` (0 if none).
pub(crate) fn value(text: &str, name: &str, labels: &[&str]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(l, _)| labels.iter().all(|want| l.contains(want)))
        .map(|(_, v)| v)
        .sum()
}
