//! The load generator of the Envoy comparison (`benches/envoy_vs_pingora.sh`): HTTP/1.1
//! (hyper 1) against one proxy address, one connection per request in flight, keep-alive.
//!
//! - **Closed loop** (`--mode closed --concurrency N`): N connections, each sending its next
//!   request when the previous answer arrives. Measures throughput; latency is per request.
//! - **Open loop** (`--mode open --rate R`): requests are due at fixed times (`k / R` after the
//!   start) whether or not earlier ones have been answered; up to `--connections` are in flight
//!   and the rest wait in a queue. Latency runs from the **intended** send time, so a stall of the
//!   proxy shows up in every request it delayed (no coordinated omission).
//!
//! The first `--warmup` seconds are not measured. A request is measured when its start (closed:
//! sent; open: due) falls in the `--duration` window after the warm-up. Latencies (successes
//! only) go into an HDR histogram (`hdrhistogram`, 3 significant digits). Errors are non-2xx
//! answers, connection failures and requests slower than `--timeout-ms`. Each answer's
//! `x-backend` header counts toward that backend's share (503s from a backend too; a proxy's own
//! error answers carry none). Every request carries an `x-key` header drawn from `--keys` users,
//! for the hash policies.
//!
//! With `--proxy-pid`, the proxy process's CPU time (user + system, all threads, from
//! `/proc/PID/stat`) over the window gives requests per proxy CPU-second.
//!
//! ```text
//! cargo run --release -p pickwise-benches --bin loadgen -- --target 127.0.0.1:28080 \
//!     --mode closed --concurrency 32 --duration 5 --warmup 1 [--proxy-pid PID] [--json]
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// N requests in flight, each sent when the previous one returns.
    Closed,
    /// A fixed request rate, latency from the intended send time.
    Open,
}

/// Closed- or open-loop HTTP/1.1 load with HDR latency histograms.
#[derive(Parser, Debug)]
#[command(name = "loadgen")]
struct Args {
    /// The proxy (`host:port`).
    #[arg(long)]
    target: SocketAddr,
    /// Closed or open loop.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    mode: Mode,
    /// Closed loop: requests in flight.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: u64,
    /// Open loop: requests per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Open loop: at most this many connections (requests in flight); the rest queue.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=4096))]
    connections: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Distinct `x-key` values (users) for the hash policies.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// A request not answered within this many milliseconds is an error.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// The proxy's process id: report requests per proxy CPU-second.
    #[arg(long)]
    proxy_pid: Option<u32>,
    /// Copied into the JSON object (which run this was).
    #[arg(long, default_value = "")]
    label: String,
    /// One JSON object instead of the text summary.
    #[arg(long)]
    json: bool,
}

/// What the measured window saw.
struct Stats {
    latency_us: Histogram<u64>,
    errors: u64,
    per_backend: BTreeMap<String, u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            errors: 0,
            per_backend: BTreeMap::new(),
        }
    }
}

/// The measured window, `[start, end)`.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One keep-alive connection, reopened after a failure.
struct Conn {
    target: SocketAddr,
    sender: Option<Sender>,
}

impl Conn {
    async fn sender(&mut self) -> Result<&mut Sender, String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.target).await.map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::task::spawn_local(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("just set"))
    }

    /// One request: `Ok(backend)` for a 2xx, `Err(backend)` otherwise (`None`: no `x-backend`).
    async fn request(&mut self, key: u64) -> Result<Option<String>, Option<String>> {
        let req = hyper::Request::get("/")
            .header("host", "backends")
            .header("x-key", format!("user-{key}"))
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let sender = self.sender().await.map_err(|_| None)?;
        sender.ready().await.map_err(|_| None)?;
        let Ok(resp) = sender.send_request(req).await else {
            self.sender = None;
            return Err(None);
        };
        let backend = resp
            .headers()
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let ok = resp.status().is_success();
        if resp.into_body().collect().await.is_err() {
            self.sender = None;
            return Err(backend);
        }
        if ok {
            Ok(backend)
        } else {
            Err(backend)
        }
    }
}

/// What every request shares.
#[derive(Clone, Copy)]
struct Run {
    window: Window,
    keys: u64,
    timeout: Duration,
}

/// Sends one request and records it if `start` is in the window.
async fn measured(conn: &mut Conn, stats: &RefCell<Stats>, run: Run, start: Instant) {
    let Run {
        window,
        keys,
        timeout,
    } = run;
    let key = fastrand::u64(..keys);
    let outcome = match tokio::time::timeout(timeout, conn.request(key)).await {
        Ok(r) => r,
        Err(_) => {
            conn.sender = None; // the answer may still come: never reuse this connection
            Err(None)
        }
    };
    if !window.contains(start) {
        return;
    }
    let mut s = stats.borrow_mut();
    let backend = match outcome {
        Ok(b) => {
            let us = start.elapsed().as_micros().clamp(1, 60_000_000) as u64;
            s.latency_us.saturating_record(us);
            b
        }
        Err(b) => {
            s.errors += 1;
            b
        }
    };
    if let Some(b) = backend {
        *s.per_backend.entry(b).or_insert(0) += 1;
    }
}

/// User + system CPU seconds of process `pid` (all threads).
fn cpu_seconds(pid: u32) -> Option<f64> {
    pickwise_benches::proc_cpu_seconds(&format!("/proc/{pid}/stat"))
}

fn main() {
    let args = Args::parse();
    if !(args.duration > 0.0 && args.warmup >= 0.0 && args.rate > 0.0) {
        eprintln!("--duration and --rate must be positive, --warmup not negative");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let stats = Rc::new(RefCell::new(Stats::new()));
    let timeout = Duration::from_millis(args.timeout_ms);
    let cpu = local.block_on(&rt, async {
        let t0 = Instant::now();
        let start = t0 + Duration::from_secs_f64(args.warmup);
        let window = Window {
            start,
            end: start + Duration::from_secs_f64(args.duration),
        };
        let run = Run {
            window,
            keys: args.keys,
            timeout,
        };
        let sampler = args.proxy_pid.map(|pid| {
            tokio::task::spawn_local(async move {
                tokio::time::sleep_until(window.start).await;
                let a = cpu_seconds(pid);
                tokio::time::sleep_until(window.end).await;
                let b = cpu_seconds(pid);
                a.zip(b).map(|(a, b)| b - a)
            })
        });
        let mut workers = Vec::new();
        match args.mode {
            Mode::Closed => {
                for _ in 0..args.concurrency {
                    let stats = stats.clone();
                    let target = args.target;
                    workers.push(tokio::task::spawn_local(async move {
                        let mut conn = Conn { target, sender: None };
                        loop {
                            let sent = Instant::now();
                            if sent >= window.end {
                                break;
                            }
                            measured(&mut conn, &stats, run, sent).await;
                        }
                    }));
                }
            }
            Mode::Open => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
                let rx = Rc::new(tokio::sync::Mutex::new(rx));
                let rate = args.rate;
                tokio::task::spawn_local(async move {
                    for k in 0u64.. {
                        let due = t0 + Duration::from_secs_f64(k as f64 / rate);
                        if due >= window.end {
                            break;
                        }
                        tokio::time::sleep_until(due).await;
                        if tx.send(due).is_err() {
                            break;
                        }
                    }
                });
                for _ in 0..args.connections {
                    let (stats, rx) = (stats.clone(), rx.clone());
                    let target = args.target;
                    workers.push(tokio::task::spawn_local(async move {
                        let mut conn = Conn { target, sender: None };
                        loop {
                            let Some(due) = rx.lock().await.recv().await else {
                                break;
                            };
                            measured(&mut conn, &stats, run, due).await;
                        }
                    }));
                }
            }
        }
        for w in workers {
            let _ = w.await;
        }
        match sampler {
            Some(s) => s.await.ok().flatten(),
            None => None,
        }
    });
    let s = stats.borrow();
    let h = &s.latency_us;
    let requests = h.len() + s.errors;
    let rps = requests as f64 / args.duration;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let per_core = cpu.filter(|c| *c > 0.0).map(|c| requests as f64 / c);
    let mode = match args.mode {
        Mode::Closed => "closed",
        Mode::Open => "open",
    };
    if args.json {
        let per: Vec<String> = s
            .per_backend
            .iter()
            .map(|(b, n)| format!("\"{}\":{n}", b.replace(['"', '\\'], "")))
            .collect();
        println!(
            "{{\"label\":\"{}\",\"mode\":\"{mode}\",\"requests\":{requests},\"errors\":{},\"rps\":{rps:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\"proxy_cpu_s\":{},\"rps_per_core\":{},\"per_backend\":{{{}}}}}",
            args.label.replace(['"', '\\'], ""),
            s.errors,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0,
            cpu.map_or("null".to_string(), |c| format!("{c:.3}")),
            per_core.map_or("null".to_string(), |r| format!("{r:.1}")),
            per.join(",")
        );
    } else {
        println!(
            "{mode} loop: {requests} requests in {:.1} s = {rps:.0} req/s; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; errors {}",
            args.duration,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0,
            s.errors
        );
        if let (Some(c), Some(r)) = (cpu, per_core) {
            println!("proxy CPU {c:.2} s: {r:.0} requests per proxy CPU-second");
        }
        let total: u64 = s.per_backend.values().sum();
        for (b, n) in &s.per_backend {
            println!(
                "backend {b}: {n} ({:.1}%)",
                100.0 * *n as f64 / total.max(1) as f64
            );
        }
    }
}
