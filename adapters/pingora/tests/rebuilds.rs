//! State survives Pingora's selector rebuilds: in-flight counts, latency and ejections carry
//! over; a backend that leaves frees its ejection slot; leases find the state without a lock.

use std::collections::BTreeSet;
use std::sync::Arc;

use pickwise::{LbPolicy, Outcome, OutlierConfig, Policy, PoolConfig};
use pickwise_pingora::{lease, Selector, Shared};
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::Backend;

fn set(addrs: &[&str]) -> BTreeSet<Backend> {
    addrs.iter().map(|a| Backend::new(a).unwrap()).collect()
}

#[test]
fn state_survives_rebuilds_and_leaves_with_its_backend() {
    let shared = Shared::new(
        LbPolicy::P2c(Policy::LeastRequest),
        PoolConfig {
            outlier: OutlierConfig {
                consecutive_failures: 2,
                ..OutlierConfig::default()
            },
            ..PoolConfig::default()
        },
    );
    let three = set(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    let s1 = Arc::new(Selector::build_with_config(&three, &shared));
    let b1 = Backend::new("127.0.0.1:1").unwrap();
    let held = lease(&shared, &b1).expect("known backend");
    let before = shared.state("127.0.0.1:1").unwrap();
    assert_eq!(before.in_flight(), 1);
    // Eject 127.0.0.1:2.
    let b2 = Backend::new("127.0.0.1:2").unwrap();
    for _ in 0..2 {
        let _ = lease(&shared, &b2).unwrap().complete(0, Outcome::Failure);
    }
    assert_eq!(shared.pool().ejected(), 1);
    // Rebuild with the same set: same states.
    let s2 = Arc::new(Selector::build_with_config(&three, &shared));
    assert!(Arc::ptr_eq(&before, &shared.state("127.0.0.1:1").unwrap()));
    assert_eq!(shared.state("127.0.0.1:1").unwrap().in_flight(), 1);
    assert!(shared.state("127.0.0.1:2").unwrap().is_ejected(1_000_000));
    // The ejected backend leaves: its slot is freed.
    let two = set(&["127.0.0.1:1", "127.0.0.1:3"]);
    let s3 = Arc::new(Selector::build_with_config(&two, &shared));
    assert_eq!(shared.pool().ejected(), 0);
    assert!(shared.state("127.0.0.1:2").is_none());
    assert!(lease(&shared, &b2).is_none());
    // Picks never return the departed backend.
    for _ in 0..100 {
        let mut it = s3.iter(b"");
        assert_ne!(it.next().unwrap().addr.to_string(), "127.0.0.1:2");
    }
    drop(held);
    assert_eq!(before.in_flight(), 0);
    drop((s1, s2));
}
