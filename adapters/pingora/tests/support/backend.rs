//! A real HTTP/1.1 server (hyper) on loopback in its own thread and runtime, like a separate
//! process: answers every request with 200 and an `x-backend` header naming it, after an
//! optional delay; can fail (503) always or for a share of requests, be killed (every socket
//! closes) and restarted on its port; can attach a fixed ORCA load report (Envoy's
//! `endpoint-load-metrics` header) to every response. Prequal: it counts its requests in flight
//! and their latency per RIF (`pickwise_orca::prequal::ProbeState`), answers HTTP probes
//! (`GET /prequal/probe`, counted apart from requests; or 404 when told not to) and can piggyback
//! its report on every response; it counts connections that carried both probes and requests.

#![allow(dead_code, unreachable_pub)]

use pickwise_orca::prequal::{http::is_probe, http::probe_response, ProbeState};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Clone, Default)]
pub struct Knobs {
    pub hits: Arc<AtomicU64>,
    pub delay_ms: Arc<AtomicU64>,
    pub fail: Arc<AtomicBool>,
    /// Percent of requests answered 503 at once (drawn at random per request).
    pub fail_percent: Arc<AtomicU64>,
    /// The `endpoint-load-metrics` value sent with every response (`None`: no header).
    pub load_report: Arc<Mutex<Option<String>>>,
    /// Prequal: requests in flight and latency per RIF.
    pub prequal: ProbeState,
    /// Prequal probes received (not counted in `hits`).
    pub probes: Arc<AtomicU64>,
    /// Answer probes 404 (a backend without the probe endpoint).
    pub no_probes: Arc<AtomicBool>,
    /// Piggyback the Prequal report on every response.
    pub piggyback: Arc<AtomicBool>,
    /// Connections that carried both a probe and a request.
    pub mixed: Arc<AtomicU64>,
}

/// Envoy's ORCA response header.
pub const LOAD_REPORT_HEADER: &str = "endpoint-load-metrics";

pub struct HttpBackend {
    pub addr: SocketAddr,
    pub knobs: Knobs,
    runtime: Option<tokio::runtime::Runtime>,
}

impl HttpBackend {
    pub fn start() -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), Knobs::default()).expect("bind")
    }

    pub fn start_at(addr: SocketAddr, knobs: Knobs) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let name = addr.to_string();
        let k = knobs.clone();
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((stream, _)) = listener.accept().await {
                let (k, name) = (k.clone(), name.clone());
                // What this connection carried: probes, requests.
                let carried = Arc::new((AtomicBool::new(false), AtomicBool::new(false)));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (k, name, carried) = (k.clone(), name.clone(), carried.clone());
                        async move {
                            let probe = is_probe(&req);
                            let other = if probe { &carried.1 } else { &carried.0 };
                            let first =
                                !(if probe { &carried.0 } else { &carried.1 }).swap(true, Ordering::Relaxed);
                            if first && other.load(Ordering::Relaxed) {
                                k.mixed.fetch_add(1, Ordering::Relaxed);
                            }
                            if probe {
                                k.probes.fetch_add(1, Ordering::Relaxed);
                                if k.no_probes.load(Ordering::Relaxed) {
                                    let mut r = Response::new(Full::new(Bytes::new()));
                                    *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                    return Ok::<_, Infallible>(r);
                                }
                                return Ok(probe_response(&k.prequal));
                            }
                            let query = k.prequal.start();
                            k.hits.fetch_add(1, Ordering::Relaxed);
                            let pct = k.fail_percent.load(Ordering::Relaxed);
                            let fail =
                                k.fail.load(Ordering::Relaxed) || (pct > 0 && fastrand::u64(..100) < pct);
                            let delay = k.delay_ms.load(Ordering::Relaxed);
                            if delay > 0 && !fail {
                                // The scenario: a backend slow on purpose (`set_delay`).
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            let status = if fail { 503 } else { 200 };
                            let mut response = Response::builder().status(status).header("x-backend", name);
                            if let Some(report) = k.load_report.lock().unwrap().as_deref() {
                                response = response.header(LOAD_REPORT_HEADER, report);
                            }
                            let mut response = response
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .expect("response");
                            if k.piggyback.load(Ordering::Relaxed) {
                                k.prequal
                                    .report_excluding(&query)
                                    .to_headers(response.headers_mut());
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            knobs,
            runtime: Some(runtime),
        })
    }

    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Starts the backend again on its port, retrying while the old sockets still hold it.
    pub fn restart(&mut self) {
        // A bounded poll on "the port can be bound again", not a guess at how long that takes.
        for _ in 0..50 {
            if let Ok(b) = Self::start_at(self.addr, self.knobs.clone()) {
                *self = b;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("could not rebind {}", self.addr);
    }

    pub fn hits(&self) -> u64 {
        self.knobs.hits.load(Ordering::Relaxed)
    }

    pub fn set_delay(&self, ms: u64) {
        self.knobs.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Send `report` as the `endpoint-load-metrics` header of every response (e.g.
    /// `TEXT cpu_utilization:0.5,rps_fractional:10`); `None` stops reporting.
    pub fn set_load_report(&self, report: Option<&str>) {
        *self.knobs.load_report.lock().unwrap() = report.map(str::to_owned);
    }

    /// Prequal probes received.
    pub fn probes(&self) -> u64 {
        self.knobs.probes.load(Ordering::Relaxed)
    }

    /// Answer probes 404 (`true`) or with the report (`false`, the default).
    pub fn set_no_probes(&self, on: bool) {
        self.knobs.no_probes.store(on, Ordering::Relaxed);
    }

    /// Piggyback the Prequal report on every response.
    pub fn set_piggyback(&self, on: bool) {
        self.knobs.piggyback.store(on, Ordering::Relaxed);
    }

    /// Connections that carried both a probe and a request.
    pub fn mixed(&self) -> u64 {
        self.knobs.mixed.load(Ordering::Relaxed)
    }

    /// Answer `pct` percent of requests with a fast 503.
    pub fn set_fail_percent(&self, pct: u64) {
        self.knobs.fail_percent.store(pct, Ordering::Relaxed);
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.kill();
    }
}
