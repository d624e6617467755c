//! The control plane on a Unix socket, as istio-agent serves xDS to proxyless gRPC: the
//! bootstrap's `server_uri` is `unix:///path` and an `xds:///` channel serves through it,
//! including after the control plane restarts on the same socket.

mod support;

use pickwise_xds::control_plane::resources::{self, Locality, Policy};
use pickwise_xds::control_plane::ControlPlane;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_channel_serves_through_a_unix_socket_control_plane() {
    let _s = serial().await;
    let (_backends, addrs) = backends(2);
    let dir = std::env::temp_dir().join(format!("pickwise-uds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("XDS");
    let mut cp = ControlPlane::start_unix(&socket)
        .await
        .expect("control plane on a Unix socket");
    cp.set(resources::listener(NAME, "routes"));
    cp.set(resources::route_config("routes", NAME, "backends"));
    cp.set(resources::cluster("backends", Policy::RoundRobin));
    cp.set(resources::endpoints(
        "backends",
        &[Locality::new(1, 0, &[&addrs[0]])],
    ));
    let bootstrap = cp.bootstrap_json();
    assert!(
        bootstrap.contains(&format!("\"unix://{}\"", socket.display())),
        "{bootstrap}"
    );
    assert!(bootstrap.contains("unix:///"), "an absolute path: {bootstrap}");

    let ch = builder_from_json(&bootstrap)
        .build(&format!("xds:///{NAME}"))
        .unwrap();
    assert_eq!(call(&ch, None).await.unwrap(), addrs[0]);
    assert!(ch.status().connected);
    assert_eq!(cp.streams(), 1);
    assert!(cp.nacks().is_empty());

    // An EDS change reaches the channel over the socket.
    cp.set(resources::endpoints(
        "backends",
        &[Locality::new(1, 0, &[&addrs[1]])],
    ));
    picker_holds(&ch, "backends", &[&addrs[1]]).await;
    assert_eq!(call(&ch, None).await.unwrap(), addrs[1]);

    // The control plane goes away and comes back on the same path: the channel serves from its
    // cache meanwhile and subscribes again.
    cp.stop().await;
    assert!(ch.wait_for(PATIENCE, |s| !s.connected).await);
    assert_eq!(call(&ch, None).await.unwrap(), addrs[1]);
    cp.set(resources::endpoints(
        "backends",
        &[Locality::new(1, 0, &[&addrs[0]])],
    ));
    cp.restart().await.unwrap();
    assert!(ch.wait_for(PATIENCE, |s| s.connected).await);
    picker_holds(&ch, "backends", &[&addrs[0]]).await;
    assert_eq!(call(&ch, None).await.unwrap(), addrs[0]);
    assert!(cp.streams() >= 2);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}
