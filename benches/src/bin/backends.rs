//! The backends of the Envoy comparison (`benches/envoy_vs_pingora.sh`): N HTTP/1.1 servers
//! (hyper 1) on consecutive loopback ports, one single-threaded runtime for all of them, each
//! response a 2-byte body with `x-backend: i`. Faults are options:
//!
//! - `--slow i:ms`: backend `i` answers `ms` later;
//! - `--fail i:percent`: backend `i` answers that share of requests (drawn at random) with a 503;
//! - `--kill i:at_s:restart_s`: backend `i` closes its listener and every open connection at
//!   `at_s` and listens again at `restart_s`, both in seconds from the first request with an
//!   `x-key` header any backend served (the load generator's; health-check connects and
//!   readiness probes carry none), so the fault lands at the same point of the load run
//!   whichever proxy is in front.
//!
//! ```text
//! cargo run --release -p pickwise-benches --bin backends -- --count 4 --base-port 28081 \
//!     [--slow 1:20] [--fail 3:30] [--kill 3:1.5:2.5]
//! ```
//!
//! Runs until killed; prints `ready` once every port is free to listen on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// N HTTP/1.1 backends with faults.
#[derive(Parser, Debug)]
#[command(name = "backends")]
struct Args {
    /// How many backends.
    #[arg(long, default_value_t = 4)]
    count: u16,
    /// Backend `i` listens on `127.0.0.1:(base-port + i)`.
    #[arg(long, default_value_t = 28081)]
    base_port: u16,
    /// `i:ms`: backend `i` answers `ms` milliseconds later (repeatable).
    #[arg(long, value_parser = parse_pair)]
    slow: Vec<(usize, u64)>,
    /// `i:percent`: backend `i` answers this share of requests with a 503 (repeatable).
    #[arg(long, value_parser = parse_pair)]
    fail: Vec<(usize, u64)>,
    /// `i:at_s:restart_s`: backend `i` is down from `at_s` to `restart_s` (seconds from the
    /// first request served; repeatable).
    #[arg(long, value_parser = parse_kill)]
    kill: Vec<(usize, f64, f64)>,
}

fn parse_pair(s: &str) -> Result<(usize, u64), String> {
    let (i, v) = s.split_once(':').ok_or("expected i:value")?;
    Ok((
        i.parse().map_err(|e| format!("{i}: {e}"))?,
        v.parse().map_err(|e| format!("{v}: {e}"))?,
    ))
}

fn parse_kill(s: &str) -> Result<(usize, f64, f64), String> {
    let mut it = s.split(':');
    let (Some(i), Some(at), Some(back), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err("expected i:at_s:restart_s".into());
    };
    let at: f64 = at.parse().map_err(|e| format!("{at}: {e}"))?;
    let back: f64 = back.parse().map_err(|e| format!("{back}: {e}"))?;
    if !(at >= 0.0 && back > at) {
        return Err("need 0 <= at_s < restart_s".into());
    }
    Ok((i.parse().map_err(|e| format!("{i}: {e}"))?, at, back))
}

/// When the first load request arrived (the fault schedule's origin).
static FIRST: OnceLock<Instant> = OnceLock::new();

/// One backend's behaviour.
#[derive(Clone, Copy)]
struct Behaviour {
    index: usize,
    delay: Duration,
    fail_percent: u64,
}

async fn handle(b: Behaviour, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.headers().contains_key("x-key") {
        FIRST.get_or_init(Instant::now);
    }
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    let fail = b.fail_percent > 0 && fastrand::u64(0..100) < b.fail_percent;
    let (status, body) = if fail {
        (StatusCode::SERVICE_UNAVAILABLE, "no")
    } else {
        (StatusCode::OK, "ok")
    };
    let resp = Response::builder()
        .status(status)
        .header("x-backend", b.index.to_string())
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a valid response");
    Ok(resp)
}

/// Serves `addr` while `up` is true; when it turns false, drops the listener and closes every
/// connection, and binds again when it turns true.
async fn serve(addr: SocketAddr, b: Behaviour, mut up: watch::Receiver<bool>) {
    loop {
        while !*up.borrow_and_update() {
            if up.changed().await.is_err() {
                return;
            }
        }
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    eprintln!("backend {}: bind {addr}: {e}; retrying", b.index);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let mut conn_up = up.clone();
                    tokio::task::spawn_local(async move {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let svc = hyper::service::service_fn(move |req| handle(b, req));
                        let conn = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(io, svc);
                        tokio::select! {
                            _ = conn => {}
                            // Killed: the connection is dropped (reset), as a crashed process's would be.
                            _ = conn_up.wait_for(|up| !*up) => {}
                        }
                    });
                }
                _ = up.changed() => {
                    if !*up.borrow() {
                        break; // drops the listener
                    }
                }
            }
        }
    }
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let mut switches = Vec::new();
        for i in 0..args.count as usize {
            let addr: SocketAddr = ([127, 0, 0, 1], args.base_port + i as u16).into();
            let b = Behaviour {
                index: i,
                delay: Duration::from_millis(args.slow.iter().rev().find(|s| s.0 == i).map_or(0, |s| s.1)),
                fail_percent: args.fail.iter().rev().find(|f| f.0 == i).map_or(0, |f| f.1),
            };
            // Bind once here so `ready` means every port listens.
            drop(
                TcpListener::bind(addr)
                    .await
                    .unwrap_or_else(|e| panic!("bind {addr}: {e}")),
            );
            let (tx, rx) = watch::channel(true);
            tokio::task::spawn_local(serve(addr, b, rx));
            switches.push(Rc::new(tx));
        }
        for &(i, at, back) in &args.kill {
            let Some(tx) = switches.get(i).cloned() else {
                panic!("--kill {i}: only {} backends", args.count);
            };
            tokio::task::spawn_local(async move {
                let first = loop {
                    if let Some(t) = FIRST.get() {
                        break *t;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                tokio::time::sleep_until((first + Duration::from_secs_f64(at)).into()).await;
                let _ = tx.send(false);
                eprintln!("backend {i}: killed at {at} s");
                tokio::time::sleep_until((first + Duration::from_secs_f64(back)).into()).await;
                let _ = tx.send(true);
                eprintln!("backend {i}: restarted at {back} s");
            });
        }
        println!("ready");
        std::future::pending::<()>().await;
    });
}
