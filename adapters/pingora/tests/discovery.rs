//! A discovery stream (the kind pickwise's tonic adapter consumes) feeding a Pingora
//! `LoadBalancer` through `StreamDiscovery`, and `select_lease`.

#[path = "support/wait.rs"]
mod wait;

use pickwise::{LbPolicy, Policy, PoolConfig};
use pickwise_pingora::{select_lease, Change, Selector, Shared, StreamDiscovery};
use pingora::lb::{discovery::ServiceDiscovery, Backends, LoadBalancer};

#[tokio::test]
async fn a_change_stream_feeds_the_load_balancer() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Change<String, u32>, String>>();
    let disc = StreamDiscovery::spawn(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
    tx.send(Ok(Change::Insert("127.0.0.1:9001".into(), 1))).unwrap();
    tx.send(Err("resolver hiccup".into())).unwrap();
    tx.send(Ok(Change::Insert("not an address".into(), 1))).unwrap();
    // Sent last: the stream is read in order, so once this shows, the error and the bad address
    // were read before it (and neither stopped the stream).
    tx.send(Ok(Change::Insert("127.0.0.1:9002".into(), 3))).unwrap();
    until_set(
        &disc,
        "the stream's last change (127.0.0.1:9002 inserted)",
        |set| set.iter().any(|(a, _)| a == "127.0.0.1:9002"),
    )
    .await;
    let got = current(&disc).await;
    assert_eq!(
        got,
        [
            ("127.0.0.1:9001".to_string(), 1),
            ("127.0.0.1:9002".to_string(), 3)
        ]
    );

    let shared = Shared::new(LbPolicy::P2c(Policy::LeastRequest), PoolConfig::default());
    let lb: LoadBalancer<Selector> =
        LoadBalancer::from_backends_with_config(Backends::new(Box::new(disc.clone())), Some(shared.clone()));
    lb.update().await.unwrap();
    let (backend, lease) = select_lease(&lb, &shared, b"", 4).unwrap();
    assert!(lease.is_some());
    assert_eq!(shared.state(&backend.addr.to_string()).unwrap().in_flight(), 1);
    drop(lease);
    tx.send(Ok(Change::Remove("127.0.0.1:9001".into()))).unwrap();
    until_set(&disc, "127.0.0.1:9001's removal", |set| {
        set.iter().all(|(a, _)| a != "127.0.0.1:9001")
    })
    .await;
    assert_eq!(current(&disc).await, [("127.0.0.1:9002".to_string(), 3)]);
    lb.update().await.unwrap();
    for _ in 0..20 {
        assert_eq!(lb.select(b"", 4).unwrap().addr.to_string(), "127.0.0.1:9002");
    }
}

/// What `discover()` returns now: `(address, weight)` in address order.
async fn current(disc: &StreamDiscovery) -> Vec<(String, usize)> {
    let (set, _) = disc.discover().await.unwrap();
    set.iter().map(|b| (b.addr.to_string(), b.weight)).collect()
}

/// Waits until the set `discover()` returns passes `done` (the stream's task applied a change).
async fn until_set(disc: &StreamDiscovery, what: &str, done: impl Fn(&[(String, usize)]) -> bool) {
    let done = &done;
    wait::until_async(what, || async move {
        let set = current(disc).await;
        if done(&set) {
            Ok(())
        } else {
            Err(format!("discover() returned {set:?}"))
        }
    })
    .await;
}
