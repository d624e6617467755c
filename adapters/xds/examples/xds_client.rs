//! A newcomer's xDS client: sends `grpc.health.v1.Health/Check` through an `xds:///NAME` channel
//! configured by the control plane in `GRPC_XDS_BOOTSTRAP` (or `GRPC_XDS_BOOTSTRAP_CONFIG`) and
//! prints, each second, the requests per backend, the errors and the policy in force.
//!
//! ```text
//! GRPC_XDS_BOOTSTRAP=bootstrap.json cargo run --release -p pickwise-xds --example xds_client -- \
//!     xds:///NAME [--duration S] [--concurrency N] [--json]
//! ... --header NAME --keys FILE     # one call per key: prints "KEY host:port"
//! ... --metrics 127.0.0.1:9464        # Prometheus text at http://ADDR/metrics (feature `metrics`)
//! ```
//!
//! `--json` prints one object per second: `{"t", "policy", "requests", "errors", "per_backend"}`.
//! `--demo` starts an in-process control plane and three backends first (no bootstrap needed)
//! and moves traffic mid-run, so each second's line shows the channel following it: at 1/4 of
//! the run the localities are re-weighted 3:1 -> 1:3, at 1/2 one endpoint is drained, at 3/4 the
//! cluster switches from round robin to least request.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pickwise_xds::{XdsBuilder, XdsChannel};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// Health checks through an xDS-configured channel.
#[derive(clap::Parser, Debug)]
#[command(name = "xds_client")]
struct Args {
    /// The target, `xds:///NAME`.
    target: String,
    /// Seconds to run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// One JSON object per second instead of text.
    #[arg(long)]
    json: bool,
    /// With --keys: the header each key is sent in.
    #[arg(long, requires = "keys")]
    header: Option<String>,
    /// A file with one key per line: one call per key, printing "KEY host:port".
    #[arg(long, requires = "header")]
    keys: Option<std::path::PathBuf>,
    /// Start an in-process control plane and three backends, and point the client at them.
    #[arg(long)]
    demo: bool,
    /// Serve the instruments (gRFC A78's `grpc.xds_client.*`, each cluster's balancer's) in
    /// Prometheus text at http://ADDR/metrics while running (needs the `metrics` feature).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// With --metrics: after the run, keep serving until standard input closes.
    #[arg(long, requires = "metrics")]
    hold: bool,
}

#[derive(Default)]
struct Counts {
    per_backend: BTreeMap<String, u64>,
    errors: u64,
    last_error: Option<String>,
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    if let Some(addr) = args.metrics {
        if !cfg!(feature = "metrics") {
            eprintln!("xds_client: built without the `metrics` feature: /metrics will list nothing");
        }
        // Its own HTTP listener on the runtime; any path answers, /metrics included.
        if let Err(e) = metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
        {
            eprintln!("xds_client: cannot serve metrics on {addr}: {e}");
            return ExitCode::from(2);
        }
        eprintln!("xds_client: metrics at http://{addr}/metrics");
    }
    let code = run_client(&args).await;
    if args.hold {
        // Keep serving /metrics until standard input closes.
        let _ =
            tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await;
    }
    code
}

async fn run_client(args: &Args) -> ExitCode {
    let _demo = if args.demo {
        Some(demo::start(&args.target, Duration::from_secs(args.duration)).await)
    } else {
        None
    };
    let mut builder = XdsBuilder::new();
    if let Some(d) = &_demo {
        builder =
            builder.bootstrap(pickwise_xds::Bootstrap::from_json(&d.cp.bootstrap_json()).expect("bootstrap"));
    }
    let channel = match builder.build(&args.target) {
        Ok(c) => c,
        Err(pickwise_xds::XdsError::Bootstrap(e)) => {
            eprintln!("{e}");
            eprintln!(
                "example: GRPC_XDS_BOOTSTRAP_CONFIG='{{\"xds_servers\":[{{\"server_uri\":\"localhost:18000\",\"channel_creds\":[{{\"type\":\"insecure\"}}]}}],\"node\":{{\"id\":\"me\"}}}}'"
            );
            eprintln!("or run with --demo for an in-process control plane");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let (Some(header), Some(keys)) = (&args.header, &args.keys) {
        return by_key(&channel, header, keys).await;
    }
    let counts = Arc::new(Mutex::new(Counts::default()));
    let end = Instant::now() + Duration::from_secs(args.duration);
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (channel, counts) = (channel.clone(), counts.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < end {
                let r = call(&channel, None).await;
                let mut c = counts.lock().unwrap();
                match r {
                    Ok(b) => *c.per_backend.entry(b).or_default() += 1,
                    Err(e) => {
                        c.errors += 1;
                        c.last_error = Some(format!("{:?}: {}", e.code(), e.message()));
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut errors_total = 0;
    while Instant::now() < end {
        tick.tick().await;
        let c = std::mem::take(&mut *counts.lock().unwrap());
        errors_total += c.errors;
        report(args, &channel, start, &c);
    }
    for w in workers {
        let _ = w.await;
    }
    if errors_total > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn report(args: &Args, channel: &XdsChannel, start: Instant, c: &Counts) {
    let status = channel.status();
    let policy = status
        .clusters
        .iter()
        .map(|(n, p)| format!("{n}={}", p.unwrap_or("-")))
        .collect::<Vec<_>>()
        .join(",");
    let requests: u64 = c.per_backend.values().sum();
    let t = start.elapsed().as_secs();
    if args.json {
        let obj = serde_json::json!({
            "t": t, "policy": policy, "requests": requests, "errors": c.errors, "per_backend": c.per_backend,
        });
        println!("{obj}");
    } else {
        let spread: Vec<String> = c.per_backend.iter().map(|(b, n)| format!("{b}={n}")).collect();
        println!(
            "t={t:>3}s policy {policy:<28} requests {requests:>6} errors {:>4}  {}{}",
            c.errors,
            spread.join(" "),
            c.last_error
                .as_ref()
                .map(|e| format!("  last error: {e}"))
                .unwrap_or_default()
        );
    }
}

async fn by_key(channel: &XdsChannel, header: &str, keys: &std::path::Path) -> ExitCode {
    let Ok(name) = http::HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes()) else {
        eprintln!("--header {header:?} is not a header name");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(keys) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", keys.display());
            return ExitCode::from(2);
        }
    };
    let mut failed = false;
    for key in text.lines().map(str::trim).filter(|k| !k.is_empty()) {
        match call(channel, Some((&name, key))).await {
            Ok(b) => println!("{key} {b}"),
            Err(e) => {
                failed = true;
                println!("{key} error:{:?}", e.code());
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn call(
    channel: &XdsChannel,
    header: Option<(&http::HeaderName, &str)>,
) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(HealthCheckRequest::default());
    req.set_timeout(Duration::from_secs(5));
    if let Some((name, value)) = header {
        let value = value
            .parse()
            .map_err(|_| tonic::Status::invalid_argument(format!("key {value:?} is not a header value")))?;
        req.metadata_mut().insert(
            tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()).expect("checked name"),
            value,
        );
    }
    let resp = HealthClient::new(channel.clone()).check(req).await?;
    Ok(resp
        .extensions()
        .get::<pickwise_tonic::Peer>()
        .map_or_else(|| "?".into(), |p| p.address().to_owned()))
}

mod demo {
    //! `--demo`: an in-process control plane and three health servers on loopback.
    use pickwise_xds::control_plane::{resources, ControlPlane};

    pub(crate) struct Demo {
        pub(crate) cp: std::sync::Arc<ControlPlane>,
        _servers: Vec<tokio::task::JoinHandle<()>>,
    }

    pub(crate) async fn start(target: &str, run: std::time::Duration) -> Demo {
        let name = target
            .rsplit('/')
            .next()
            .unwrap_or(target)
            .trim_start_matches("xds:");
        let mut addrs = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..3 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addrs.push(listener.local_addr().expect("addr").to_string());
            let (_, health) = tonic_health::server::health_reporter();
            servers.push(tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(health)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await;
            }));
        }
        let cp = ControlPlane::start().await.expect("control plane");
        cp.set(resources::listener(name, "routes"));
        cp.set(resources::route_config_weighted(
            "routes",
            name,
            &[("backends", 1)],
            Some("x-user"),
        ));
        cp.set(resources::cluster("backends", resources::Policy::RoundRobin));
        let a: Vec<&str> = addrs.iter().map(String::as_str).collect();
        cp.set(resources::endpoints("backends", &localities(&a, 3, 1)));
        let cp = std::sync::Arc::new(cp);
        // The scripted moves (re-weight, drain, policy switch).
        let script_cp = cp.clone();
        servers.push(tokio::spawn(async move {
            let a: Vec<&str> = addrs.iter().map(String::as_str).collect();
            tokio::time::sleep(run / 4).await;
            script_cp.set(resources::endpoints("backends", &localities(&a, 1, 3)));
            tokio::time::sleep(run / 4).await;
            let mut drained = localities(&a, 1, 3);
            drained[0].endpoints[0].2 = 3; // DRAINING
            script_cp.set(resources::endpoints("backends", &drained));
            tokio::time::sleep(run / 4).await;
            script_cp.set(resources::cluster("backends", resources::Policy::LeastRequest));
        }));
        Demo {
            cp,
            _servers: servers,
        }
    }

    fn localities(a: &[&str], w0: u32, w1: u32) -> [resources::Locality; 2] {
        [
            resources::Locality::new(w0, 0, &a[..2]),
            resources::Locality::new(w1, 0, &a[2..]),
        ]
    }
}
