//! `weighted_round_robin` (gRFC A58) end to end over real tonic backends that report their load
//! with ORCA (gRFC A51): per call in the `endpoint-load-metrics-bin` trailer and out of band on
//! `OpenRcaService/StreamCoreMetrics`. The loads are grpc-go's test loads
//! (`balancer/weightedroundrobin/balancer_test.go`): 10 qps at utilization 1.0 (weight 10) and
//! 10 qps at 0.1 (weight 100), so shares settle at 1:10.
//!
//! Waits are on the shares themselves: windows of calls until a window shows the ratio, bounded.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::backend::Backend;
use support::client::*;

/// `weighted_round_robin` with the blackout off and a 100 ms update period (grpc-go's tests).
fn config(oob: bool) -> String {
    format!(
        r#"{{"loadBalancingConfig":[{{"weighted_round_robin":{{"blackoutPeriod":"0s",
            "weightUpdatePeriod":"0.1s","enableOobLoadReport":{oob},"oobReportingPeriod":"0.05s"}}}}]}}"#
    )
}

fn report(b: &Backend, qps: f64, utilization: f64) {
    b.knobs.orca.set_qps(qps);
    b.knobs.orca.set_application_utilization(utilization);
}

/// Calls in windows of 1,100 until one window splits `want` (address -> weight) within 15% of
/// each share; panics with the last window after 40 windows.
async fn settles(
    channel: &pickwise_tonic::BalancedChannel,
    want: &[(&Backend, f64)],
) -> HashMap<String, u64> {
    let total: f64 = want.iter().map(|(_, w)| w).sum();
    let mut last = HashMap::new();
    for _ in 0..40 {
        let mut seen: HashMap<String, u64> = HashMap::new();
        for _ in 0..1_100 {
            let name = call(channel, None).await.expect("a call");
            *seen.entry(name).or_default() += 1;
        }
        let ok = want.iter().all(|(b, w)| {
            let got = seen.get(&b.addr.to_string()).copied().unwrap_or(0) as f64 / 1_100.0;
            (got - w / total).abs() <= 0.15 * w / total + 0.005
        });
        if ok {
            return seen;
        }
        last = seen;
        tokio::time::sleep(Duration::from_millis(20)).await; // let the next update period pass
    }
    panic!(
        "shares never settled on {:?}: last window {last:?}",
        want.iter().map(|(b, w)| (b.addr, w)).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_call_reports_weight_the_backends() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..2).map(|_| Backend::start()).collect();
    for b in &backends {
        b.knobs.per_call_reports.store(true, Ordering::Relaxed);
    }
    report(&backends[0], 10.0, 1.0);
    report(&backends[1], 10.0, 0.1);
    let channel = builder()
        .service_config(&config(false))
        .unwrap()
        .build_static(addrs(&backends));
    let seen = settles(&channel, &[(&backends[0], 1.0), (&backends[1], 10.0)]).await;
    println!("per call: {seen:?}");
    // grpc-go TestBalancer_TwoAddresses_UpdateLoads: the reports swap, so do the shares.
    report(&backends[0], 10.0, 0.1);
    report(&backends[1], 10.0, 1.0);
    let seen = settles(&channel, &[(&backends[0], 10.0), (&backends[1], 1.0)]).await;
    println!("per call, swapped: {seen:?}");
    assert_no_in_flight(&channel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_band_reports_weight_the_backends() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..2).map(|_| Backend::start()).collect();
    // No trailers: only the out-of-band stream carries the loads.
    report(&backends[0], 10.0, 1.0);
    report(&backends[1], 10.0, 0.1);
    let channel = builder()
        .service_config(&config(true))
        .unwrap()
        .build_static(addrs(&backends));
    let seen = settles(&channel, &[(&backends[0], 1.0), (&backends[1], 10.0)]).await;
    println!("out of band: {seen:?}");
    report(&backends[0], 10.0, 0.1);
    report(&backends[1], 10.0, 1.0);
    let seen = settles(&channel, &[(&backends[0], 10.0), (&backends[1], 1.0)]).await;
    println!("out of band, swapped: {seen:?}");
    // The policy changes to plain round robin: the streams close and the shares even out.
    assert!(channel.set_policy(pickwise_tonic::LbPolicy::RoundRobin));
    settles(&channel, &[(&backends[0], 1.0), (&backends[1], 1.0)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reports_it_is_round_robin() {
    let _serial = serial().await;
    let backends: Vec<Backend> = (0..2).map(|_| Backend::start()).collect();
    let channel = builder()
        .service_config(&config(false))
        .unwrap()
        .build_static(addrs(&backends));
    settles(&channel, &[(&backends[0], 1.0), (&backends[1], 1.0)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_band_stream_reopens_on_the_new_connection() {
    let _serial = serial().await;
    let mut backends: Vec<Backend> = (0..2).map(|_| Backend::start()).collect();
    report(&backends[0], 10.0, 1.0);
    report(&backends[1], 10.0, 0.1);
    let channel = builder()
        .service_config(&config(true))
        .unwrap()
        .build_static(addrs(&backends));
    settles(&channel, &[(&backends[0], 1.0), (&backends[1], 10.0)]).await;
    // The heavy backend restarts: its old stream dies with its connection; the weight it had is
    // forgotten on READY (grpc-go), and only a stream on the new connection brings it back.
    backends[1].kill();
    until(
        "the killed backend to leave the picker",
        Duration::from_secs(10),
        || {
            channel
                .stats()
                .iter()
                .filter(|s| s.state == pickwise_tonic::ConnectivityState::Ready)
                .count()
                == 1
        },
    )
    .await;
    backends[1].restart();
    let seen = settles(&channel, &[(&backends[0], 1.0), (&backends[1], 10.0)]).await;
    println!("after the restart: {seen:?}");
    assert_no_in_flight(&channel);
}
