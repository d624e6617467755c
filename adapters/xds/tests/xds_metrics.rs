//! gRFC A78's xDS client instruments (feature `metrics`), scraped in Prometheus text from an
//! in-process channel and checked against what the in-process control plane saw: one valid
//! resource update per ACKed response of each type, `connected` 1 while the stream is up, an
//! invalid cluster counted and cached as `nacked_but_cached`, and a control plane that goes away
//! counted as one server failure with `connected` 0. Also `xds_client --demo --metrics ADDR`.

mod support;

#[path = "../../../tests/support/prometheus.rs"]
mod prometheus;
use prometheus::{example, scrape, value};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pickwise_xds::control_plane::resources::{self, Locality, Policy};
use pickwise_xds::resource::ResourceType;
use support::*;

/// The process's recorder (one per test binary).
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().expect("recorder"))
}

fn type_label(t: ResourceType) -> String {
    let url = t.type_url();
    format!("grpc_xds_resource_type=\"{}\"", url.rsplit('/').next().unwrap())
}

/// ACKs (not NACKs) the control plane received for type `t`.
fn acks(cp: &pickwise_xds::control_plane::ControlPlane, t: ResourceType) -> usize {
    cp.replies()
        .iter()
        .filter(|r| r.kind == t.short() && r.error.is_none())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_client_instruments_match_the_control_plane() {
    let _s = serial().await;
    let handle = recorder();
    let (_backends, addrs) = backends(1);
    let mut cp = control_plane(Policy::RoundRobin, &[Locality::new(1, 0, &[&addrs[0]])]).await;
    let server = format!("grpc_xds_server=\"{}\"", cp.server_uri());
    let target = format!("grpc_target=\"xds:///{NAME}\"");
    let ch = channel(&cp);
    assert_eq!(call(&ch, None).await.unwrap(), addrs[0]);

    // Each response carries the one subscribed resource of its type, and each is ACKed: the
    // valid updates per type equal the ACKs the control plane received (the counter moves
    // before the ACK is sent, so waiting for equality is bounded).
    until("valid updates to equal the ACKs of every type", || {
        let text = handle.render();
        ResourceType::ALL.iter().all(|&t| {
            let n = acks(&cp, t);
            n > 0
                && value(
                    &text,
                    "grpc_xds_client_resource_updates_valid",
                    &[&target, &server, &type_label(t)],
                ) == n as f64
        })
    })
    .await;
    let text = handle.render();
    assert_eq!(
        value(&text, "grpc_xds_client_connected", &[&target, &server]),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "grpc_xds_client_resource_updates_invalid", &[&target]),
        0.0
    );
    assert_eq!(value(&text, "grpc_xds_client_server_failure", &[&target]), 0.0);
    for t in ResourceType::ALL {
        assert_eq!(
            value(
                &text,
                "grpc_xds_client_resources",
                &[
                    &target,
                    "grpc_xds_authority=\"#old\"",
                    "grpc_xds_cache_state=\"acked\"",
                    &type_label(t)
                ]
            ),
            1.0,
            "{t:?}: {text}"
        );
    }
    // The cluster balancer's own instruments carry the channel's target and the cluster's name.
    assert!(
        value(
            &text,
            "grpc_subchannel_connection_attempts_succeeded",
            &[&target, "grpc_lb_backend_service=\"backends\""]
        ) >= 1.0,
        "{text}"
    );

    // An invalid cluster (min > max ring size): NACKed, counted invalid, the last good version
    // kept (`nacked_but_cached`).
    cp.set(resources::cluster(
        "backends",
        Policy::RingHash { min: 5000, max: 10 },
    ));
    until("the NACK", || !cp.nacks().is_empty()).await;
    let cds = type_label(ResourceType::Cluster);
    let text = handle.render();
    assert_eq!(
        value(
            &text,
            "grpc_xds_client_resource_updates_invalid",
            &[&target, &server, &cds]
        ),
        1.0,
        "{text}"
    );
    let cached = |text: &str, state: &str| {
        value(
            text,
            "grpc_xds_client_resources",
            &[&target, &format!("grpc_xds_cache_state=\"{state}\""), &cds],
        )
    };
    assert_eq!(cached(&text, "nacked_but_cached"), 1.0, "{text}");
    assert_eq!(cached(&text, "acked"), 0.0, "{text}");

    // The control plane goes away: reconnecting fails, one server failure, connected 0.
    cp.stop().await;
    until("connected 0 and one server failure", || {
        let text = handle.render();
        value(&text, "grpc_xds_client_connected", &[&target, &server]) == 0.0
            && value(&text, "grpc_xds_client_server_failure", &[&target, &server]) == 1.0
    })
    .await;
    // Back: connected 1 again.
    cp.restart().await.unwrap();
    until("connected 1 again", || {
        value(&handle.render(), "grpc_xds_client_connected", &[&target, &server]) == 1.0
    })
    .await;
    assert_eq!(
        value(
            &handle.render(),
            "grpc_xds_client_server_failure",
            &[&target, &server]
        ),
        1.0
    );
    // The channel is dropped: its client stops, not connected, nothing cached.
    drop(ch);
    until("connected 0 and no resources after the channel is gone", || {
        let text = handle.render();
        value(&text, "grpc_xds_client_connected", &[&target, &server]) == 0.0
            && value(&text, "grpc_xds_client_resources", &[&target]) == 0.0
    })
    .await;
}

#[test]
fn xds_client_demo_serves_metrics() {
    // A free port: bound, read, released for the example's exporter.
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut child = example("xds_client")
        .args(["xds:///greeter", "--demo", "--duration", "2", "--json", "--hold"])
        .args(["--metrics", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The demo's control plane sends a listener, a route configuration, a cluster and its
    // endpoints: each type counted valid at least once, the stream connected.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        if let Some(text) = scrape(addr) {
            let ok = ResourceType::ALL
                .iter()
                .all(|&t| value(&text, "grpc_xds_client_resource_updates_valid", &[&type_label(t)]) >= 1.0)
                && value(
                    &text,
                    "grpc_xds_client_connected",
                    &["grpc_target=\"xds:///greeter\""],
                ) == 1.0;
            if ok {
                break;
            }
            last = text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the demo's updates:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}
