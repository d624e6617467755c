//! `weighted_round_robin` (gRFC A58) through a real Pingora proxy on 127.0.0.1: the backends
//! send fixed ORCA reports in Envoy's `endpoint-load-metrics` header (`TEXT`, `JSON`, `BIN`), the
//! adapter feeds them to the core, and after the first weight update the shares settle at the
//! reports' ratio (grpc-go's 1:10: 10 qps at utilization 1.0 against 10 qps at 0.1); a backend
//! that stops reporting loses its weight after the expiration period (round robin again); a
//! malformed report is ignored. Waits are on observables (the group's weights and published
//! picker version), never on guessed durations.

mod support;

use std::sync::Arc;

use pickwise::wrr::WrrConfig;
use pickwise::{LbPolicy, PoolConfig};
use pickwise_orca::header::encode_bin_value;
use pickwise_orca::proto::OrcaLoadReport;
use pickwise_pingora::Shared;
use support::backend::HttpBackend;
use support::load;
use support::proxy::{self, Options, Selection};
use support::shares::{self, max_error, show};
use support::wait;

const MS: u64 = 1_000_000;

/// One test at a time: they measure shares on a 2-core machine.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    GATE.lock().await
}

fn addrs(b: &[HttpBackend]) -> Vec<String> {
    b.iter().map(|b| b.addr.to_string()).collect()
}

fn wrr(config: WrrConfig) -> (Selection, Arc<Shared>) {
    let shared = Shared::new(LbPolicy::WeightedRoundRobin(config), PoolConfig::default());
    (Selection::Pickwise(shared.clone()), shared)
}

/// Blackout 0, the shortest update period A58 allows.
fn config(expiration_ns: u64) -> WrrConfig {
    WrrConfig {
        blackout_ns: 0,
        update_ns: 100 * MS,
        expiration_ns,
        ..WrrConfig::default()
    }
}

/// No health checks: they would flip readiness, and a backend that becomes READY starts its
/// reports over.
fn options() -> Options {
    Options {
        health_check: None,
        ..Options::default()
    }
}

const HOT: &str = "TEXT cpu_utilization:1.0,rps_fractional:10";

/// `BIN` form of 10 qps at utilization 0.1.
fn cool_bin() -> String {
    let r = OrcaLoadReport {
        cpu_utilization: 0.1,
        rps_fractional: 10.0,
        ..OrcaLoadReport::default()
    };
    format!("BIN {}", encode_bin_value(&r))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_settle_at_the_reported_one_to_ten() {
    let _g = serial().await;
    let backends: Vec<HttpBackend> = (0..2).map(|_| HttpBackend::start()).collect();
    backends[0].set_load_report(Some(HOT));
    backends[1].set_load_report(Some(&cool_bin()));
    let cfg = config(180_000 * MS);
    let (sel, shared) = wrr(cfg);
    let targets = addrs(&backends);
    let p = proxy::start_opts(sel, &targets, options());
    let client = load::client();
    shares::until_weighted(&client, p.addr, &shared, &cfg, &targets).await;
    let now = shared.now();
    let w: Vec<f64> = targets
        .iter()
        .map(|a| shared.state(a).unwrap().load_weight(now, &cfg))
        .collect();
    assert!((w[0] - 10.0).abs() < 1e-3 && (w[1] - 100.0).abs() < 1e-3, "{w:?}");
    let got = shares::window(&client, p.addr, 1_100).await;
    let want = [
        (targets[0].clone(), 1.0 / 11.0),
        (targets[1].clone(), 10.0 / 11.0),
    ];
    println!("1:10 through Pingora: {}", show(&got));
    assert!(max_error(&got, &want) < 0.03, "{} vs 9.1% / 90.9%", show(&got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_forms_of_the_header_weigh_alike() {
    let _g = serial().await;
    // 10, 30 and 60 qps at utilization 1.0 in the TEXT, JSON and BIN forms: 10% / 30% / 60%.
    let backends: Vec<HttpBackend> = (0..3).map(|_| HttpBackend::start()).collect();
    backends[0].set_load_report(Some("TEXT cpu_utilization:1,rps_fractional:10"));
    backends[1].set_load_report(Some(r#"JSON {"cpu_utilization": 1.0, "rps_fractional": 30}"#));
    let bin = OrcaLoadReport {
        cpu_utilization: 1.0,
        rps_fractional: 60.0,
        ..OrcaLoadReport::default()
    };
    backends[2].set_load_report(Some(&format!("BIN {}", encode_bin_value(&bin))));
    let cfg = config(180_000 * MS);
    let (sel, shared) = wrr(cfg);
    let targets = addrs(&backends);
    let p = proxy::start_opts(sel, &targets, options());
    let client = load::client();
    shares::until_weighted(&client, p.addr, &shared, &cfg, &targets).await;
    let got = shares::window(&client, p.addr, 1_000).await;
    let want: Vec<(String, f64)> = targets.iter().cloned().zip([0.1, 0.3, 0.6]).collect();
    println!("10:30:60 through Pingora: {}", show(&got));
    assert!(max_error(&got, &want) < 0.03, "{}", show(&got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_reporting_falls_back_after_expiry() {
    let _g = serial().await;
    let backends: Vec<HttpBackend> = (0..2).map(|_| HttpBackend::start()).collect();
    backends[0].set_load_report(Some(HOT));
    backends[1].set_load_report(Some(&cool_bin()));
    let cfg = config(300 * MS);
    let (sel, shared) = wrr(cfg);
    let targets = addrs(&backends);
    let p = proxy::start_opts(sel, &targets, options());
    let client = load::client();
    shares::until_weighted(&client, p.addr, &shared, &cfg, &targets).await;
    let before = shares::window(&client, p.addr, 550).await;
    println!("reporting: {}", show(&before));
    assert!(before[&targets[1]] > 0.85, "{}", show(&before));

    // Backend 0 goes quiet: once its last report is older than the expiration its weight is
    // gone, fewer than two backends have one, and the next picker is plain round robin.
    backends[0].set_load_report(None);
    let hot = shared.state(&targets[0]).unwrap();
    let mut expired_at: Option<u64> = None;
    wait::until_async("backend 0's weight to expire and a picker to follow", || {
        let client = client.clone();
        let hot = hot.clone();
        let expired = &mut expired_at;
        let done = match *expired {
            Some(v) => shared.picker_version() > v,
            None => {
                if hot.load_weight(shared.now(), &cfg) == 0.0 {
                    *expired = Some(shared.picker_version());
                }
                false
            }
        };
        async move {
            load::get(&client, p.addr, None).await?;
            if done {
                Ok(())
            } else {
                Err("backend 0 still weighted, or no picker since".to_string())
            }
        }
    })
    .await;
    let after = shares::window(&client, p.addr, 1_000).await;
    println!("backend 0 silent past expiry: {}", show(&after));
    let want = [(targets[0].clone(), 0.5), (targets[1].clone(), 0.5)];
    assert!(max_error(&after, &want) < 0.03, "{}", show(&after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_reports_are_ignored() {
    let _g = serial().await;
    let backends: Vec<HttpBackend> = (0..2).map(|_| HttpBackend::start()).collect();
    backends[0].set_load_report(Some("TEXT cpu_utilization:lots,rps_fractional:10"));
    backends[1].set_load_report(Some("XML <cpu>0.1</cpu>"));
    let cfg = config(180_000 * MS);
    let (sel, shared) = wrr(cfg);
    let targets = addrs(&backends);
    let p = proxy::start_opts(sel, &targets, options());
    let client = load::client();
    let got = shares::window(&client, p.addr, 200).await;
    let now = shared.now();
    for a in &targets {
        assert_eq!(shared.state(a).unwrap().load_weight(now, &cfg), 0.0, "{a}");
    }
    let want = [(targets[0].clone(), 0.5), (targets[1].clone(), 0.5)];
    assert!(max_error(&got, &want) < 0.03, "{}", show(&got));
}
