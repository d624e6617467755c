//! An HTTP/1.1 load generator (hyper, keep-alive) against the proxy: requests/s, latency
//! percentiles, errors and the share per backend (from the `x-upstream` header the proxy adds
//! naming the backend it chose, else the `x-backend` header the embedded backends send).

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub struct Report {
    pub requests: u64,
    pub errors: u64,
    pub secs: f64,
    pub latencies_us: Vec<u32>,
    pub per_backend: BTreeMap<String, u64>,
}

impl Report {
    pub fn pct_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 * p) as usize).min(self.latencies_us.len() - 1);
        f64::from(self.latencies_us[i]) / 1000.0
    }

    pub fn share(&self, backend: &str) -> f64 {
        self.per_backend.get(backend).copied().unwrap_or(0) as f64 / self.requests.max(1) as f64
    }
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One GET through the proxy, with an optional hash key header; returns the serving backend.
pub async fn get(client: &HttpClient, proxy: SocketAddr, key: Option<&str>) -> Result<String, String> {
    let mut req = hyper::Request::builder().uri(format!("http://{proxy}/"));
    if let Some(k) = key {
        req = req.header("x-key", k);
    }
    let resp = client
        .request(req.body(Empty::new()).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let backend = served_by(resp.headers());
    let _ = resp.into_body().collect().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(backend)
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// `concurrency` loops of requests for `duration`, with hooks run once at their times.
pub async fn run(
    proxy: SocketAddr,
    concurrency: usize,
    duration: Duration,
    at: Vec<(Duration, Box<dyn FnOnce() + Send>)>,
) -> Report {
    run_keyed(proxy, concurrency, duration, at, 0).await
}

/// [`run`] where each request carries a hash key (`x-key: user-N`, N below `keys`; 0 = none).
pub async fn run_keyed(
    proxy: SocketAddr,
    concurrency: usize,
    duration: Duration,
    at: Vec<(Duration, Box<dyn FnOnce() + Send>)>,
    keys: u32,
) -> Report {
    let client = client();
    let callers = (0..concurrency)
        .map(|_| Caller::Http(client.clone(), proxy))
        .collect();
    drive(callers, duration, at, keys).await
}

/// How one load worker sends a request; returns the serving backend.
enum Caller {
    Http(HttpClient, SocketAddr),
    Grpc(tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>),
}

impl Caller {
    async fn call(&mut self, key: Option<&str>) -> Result<String, String> {
        match self {
            Self::Http(client, proxy) => get(client, *proxy, key).await,
            Self::Grpc(client) => check(client, key).await,
        }
    }
}

/// One loop of requests per caller for `duration`, hooks run once at their times; the report.
async fn drive(
    callers: Vec<Caller>,
    duration: Duration,
    mut at: Vec<(Duration, Box<dyn FnOnce() + Send>)>,
    keys: u32,
) -> Report {
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|mut caller| {
            let errors = errors.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut seen: BTreeMap<String, u64> = BTreeMap::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let key = (keys > 0).then(|| format!("user-{}", fastrand::u32(..keys)));
                    match caller.call(key.as_deref()).await {
                        Ok(b) => {
                            lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                            *seen.entry(b).or_default() += 1;
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            // Load pacing, part of the scenario: a caller whose request failed
                            // backs off 1 ms instead of spinning on a refusing proxy.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                (lat, seen)
            })
        })
        .collect();
    at.sort_by_key(|(d, _)| *d);
    for (when, hook) in at {
        // The scenario's schedule: each hook runs at its time into the load.
        tokio::time::sleep_until((start + when).into()).await;
        hook();
    }
    let mut report = Report {
        requests: 0,
        errors: 0,
        secs: 0.0,
        latencies_us: Vec::new(),
        per_backend: BTreeMap::new(),
    };
    for t in tasks {
        let (lat, seen) = t.await.expect("load task");
        report.latencies_us.extend(lat);
        for (k, v) in seen {
            *report.per_backend.entry(k).or_default() += v;
        }
    }
    report.secs = start.elapsed().as_secs_f64();
    report.requests = report.latencies_us.len() as u64;
    report.errors = errors.load(Ordering::Relaxed);
    report.latencies_us.sort_unstable();
    report
}

/// One `grpc.health.v1.Health/Check` through the proxy over h2c; returns the serving backend.
pub async fn check(
    client: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    key: Option<&str>,
) -> Result<String, String> {
    let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    if let Some(k) = key {
        req.metadata_mut()
            .insert("x-key", k.parse().map_err(|_| "bad key".to_string())?);
    }
    let resp = client.check(req).await.map_err(|s| s.to_string())?;
    Ok(served_by(&resp.metadata().clone().into_headers()))
}

/// The backend that served a response: the proxy's `x-upstream`, else the backend's `x-backend`.
pub fn served_by(headers: &hyper::HeaderMap) -> String {
    ["x-upstream", "x-backend"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .unwrap_or_default()
        .to_string()
}

/// [`run_keyed`] with gRPC calls over h2c (one HTTP/2 connection per 8 workers).
pub async fn run_grpc(
    proxy: SocketAddr,
    concurrency: usize,
    duration: Duration,
    at: Vec<(Duration, Box<dyn FnOnce() + Send>)>,
    keys: u32,
) -> Report {
    let channels: Vec<tonic::transport::Channel> = (0..concurrency.div_ceil(8))
        .map(|_| {
            tonic::transport::Endpoint::from_shared(format!("http://{proxy}"))
                .expect("uri")
                .connect_lazy()
        })
        .collect();
    let callers = (0..concurrency)
        .map(|i| {
            Caller::Grpc(tonic_health::pb::health_client::HealthClient::new(
                channels[i / 8].clone(),
            ))
        })
        .collect();
    drive(callers, duration, at, keys).await
}
