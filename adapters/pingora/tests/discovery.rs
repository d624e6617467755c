//! A discovery stream (the kind pickwise's tonic adapter consumes) feeding a Pingora
//! `LoadBalancer` through `StreamDiscovery`, and `select_lease`.

use std::time::Duration;

use pickwise::{LbPolicy, Policy, PoolConfig};
use pickwise_pingora::{select_lease, Change, Selector, Shared, StreamDiscovery};
use pingora::lb::{discovery::ServiceDiscovery, Backends, LoadBalancer};

#[tokio::test]
async fn a_change_stream_feeds_the_load_balancer() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Change<String, u32>, String>>();
    let disc = StreamDiscovery::spawn(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
    tx.send(Ok(Change::Insert("127.0.0.1:9001".into(), 1))).unwrap();
    tx.send(Ok(Change::Insert("127.0.0.1:9002".into(), 3))).unwrap();
    tx.send(Err("resolver hiccup".into())).unwrap();
    tx.send(Ok(Change::Insert("not an address".into(), 1))).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (set, _) = disc.discover().await.unwrap();
    let got: Vec<(String, usize)> = set.iter().map(|b| (b.addr.to_string(), b.weight)).collect();
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
    tokio::time::sleep(Duration::from_millis(50)).await;
    lb.update().await.unwrap();
    for _ in 0..20 {
        assert_eq!(lb.select(b"", 4).unwrap().addr.to_string(), "127.0.0.1:9002");
    }
}
