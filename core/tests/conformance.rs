//! Scenarios ported (as facts, not code) from grpc-go's `ringhash` picker tests, `leastrequest`
//! tests and gRFC A50, as far as they apply to a sans-IO core. See `tests/CONFORMANCE.md`.

use std::sync::Arc;

use pickwise::{
    hash, EndpointState, HashPolicy, InFlight, Outcome, OutlierConfig, P2c, PickError, Policy, Pool,
    PoolConfig, Ring, RingConfig, RingPicker, SplitMix64,
};

const MS: u64 = 1_000_000;

fn lr_pool(n: usize) -> Pool {
    let p = Pool::new(PoolConfig::with_policy(Policy::LeastRequest));
    p.set_endpoints(n);
    p
}

/// grpc-go `ringhash/picker_test.go` `TestPickerPickFirstTwo`, the cases that do not depend on
/// grpc-go queueing a pick for an IDLE/CONNECTING owner: a READY owner is picked; an owner in
/// TRANSIENT_FAILURE passes the pick to the next endpoint clockwise that is READY; when none is,
/// the pick fails. Deviation (documented in CONFORMANCE.md): a CONNECTING/IDLE owner is skipped
/// like a failing one (Envoy's behaviour), because a pickwise pick never waits on one endpoint.
#[test]
fn ring_picker_first_two() {
    let hosts = [("a:1", 1), ("b:1", 1), ("c:1", 1)];
    let ring = Ring::build(
        &hosts,
        &RingConfig::grpc().with_min_ring_size(3).with_max_ring_size(3),
    )
    .unwrap();
    let points = ring.view().points().to_vec();
    let owners = ring.view().owners().to_vec();
    let es: Vec<EndpointState> = (0..3).map(|_| EndpointState::new(1)).collect();
    let pool = lr_pool(3);
    let picker = RingPicker::new(ring.view(), &es, &pool, 3);
    // Hash exactly on the first point: its owner serves.
    assert_eq!(
        picker.pick(0, points[0], HashPolicy::Plain),
        Ok(owners[0] as usize)
    );
    // Owner not ready: the next point's owner.
    es[owners[0] as usize].set_ready(false);
    assert_eq!(
        picker.pick(0, points[0], HashPolicy::Plain),
        Ok(owners[1] as usize)
    );
    // First two not ready: the third.
    es[owners[1] as usize].set_ready(false);
    assert_eq!(
        picker.pick(0, points[0], HashPolicy::Plain),
        Ok(owners[2] as usize)
    );
    // None ready: an error the adapter turns into UNAVAILABLE (or a wait while connecting).
    es[owners[2] as usize].set_ready(false);
    assert_eq!(
        picker.pick(0, points[0], HashPolicy::Plain),
        Err(PickError::NoneAvailable)
    );
}

/// grpc-go `TestPickerRequestHashKey` / gRFC A76: a key hashes with XXH64; an empty value hashes
/// as "" (not a random hash); several values are joined with ",".
#[test]
fn request_hash_keys() {
    assert_eq!(hash::xxh64(b""), 17_241_709_254_077_376_921);
    assert_eq!(hash::xxh64_joined([&b""[..]]), hash::xxh64(b""));
    assert_eq!(
        hash::xxh64_joined([&b"value1"[..], b"value2"]),
        7_597_366_331_508_923_242
    );
}

/// grpc-go `leastrequest` `TestLeastRequestPersistsCounts`: streams held open on two backends,
/// then an update adds a third; the rebuilt picker still sees the old streams, so new streams go
/// to the new backend. grpc-go uses choiceCount 3 (every pick compares all three); pickwise's
/// choice count is 2 (a documented deviation), so a new stream lands on the new backend whenever
/// it is one of the two sampled: about 2/3 of the time, against 1/3 were the counts lost.
#[test]
fn least_request_counts_persist_across_pickers() {
    let es: Vec<Arc<EndpointState>> = (0..3).map(|_| Arc::new(EndpointState::new(1))).collect();
    let pool = Arc::new(lr_pool(2));
    let mut rng = SplitMix64::new(9);
    // Two backends: with two endpoints P2C compares both, so 50 streams split exactly 25/25.
    let first = es[..2].to_vec();
    let mut streams: Vec<InFlight<Arc<EndpointState>, Arc<Pool>>> = (0..50)
        .map(|_| {
            let i = P2c::new(&first, &pool).pick(0, &mut rng).unwrap();
            InFlight::start(first[i].clone(), pool.clone(), 0)
        })
        .collect();
    assert_eq!((es[0].in_flight(), es[1].in_flight()), (25, 25));
    // The update: a third backend, a new picker over new slices of the same states.
    pool.set_endpoints(3);
    let rebuilt: Vec<Arc<EndpointState>> = vec![es[2].clone(), es[1].clone(), es[0].clone()];
    let mut on_new = 0;
    for _ in 0..25 {
        let i = P2c::new(&rebuilt, &pool).pick(0, &mut rng).unwrap();
        on_new += usize::from(i == 0);
        streams.push(InFlight::start(rebuilt[i].clone(), pool.clone(), 0));
        // Whenever the new backend was sampled it won: it never holds more than the others.
        assert!(es[2].in_flight() <= es[0].in_flight().min(es[1].in_flight()));
    }
    assert!(
        (13..=25).contains(&on_new),
        "{on_new} of 25 new streams on the new backend (lost counts would give ~8)"
    );
    assert_eq!(
        es.iter().map(|e| e.in_flight()).sum::<u32>(),
        75,
        "no stream was lost or counted twice across the rebuild"
    );
    drop(streams);
    assert!(es.iter().all(|e| e.in_flight() == 0));
}

/// grpc-go `leastrequest` e2e (`TestLeastRequestE2E`, choiceCount 2): of the two sampled
/// endpoints the one with fewer outstanding requests wins; equal counts split evenly.
#[test]
fn least_request_picks_the_less_loaded_of_two() {
    let es: Vec<EndpointState> = (0..2).map(|_| EndpointState::new(1)).collect();
    let pool = lr_pool(2);
    let mut rng = SplitMix64::new(1);
    let mut counts = [0u32; 2];
    for _ in 0..10_000 {
        counts[P2c::new(&es, &pool).pick(0, &mut rng).unwrap()] += 1;
    }
    assert!((4_500..5_500).contains(&counts[0]), "{counts:?}");
    let _g = InFlight::start(&es[1], &pool, 0);
    for _ in 0..100 {
        assert_eq!(P2c::new(&es, &pool).pick(0, &mut rng), Ok(0));
    }
}

/// gRFC A50 `TestNoopConfiguration`: with outlier detection off nothing is ever ejected.
#[test]
fn disabled_outlier_detection_never_ejects() {
    let pool = Pool::new(PoolConfig {
        outlier: OutlierConfig::disabled(),
        ..PoolConfig::default()
    });
    pool.set_endpoints(10);
    let e = EndpointState::new(1);
    for i in 0..1000 {
        assert!(
            !InFlight::start(&e, &pool, i * MS)
                .complete(i * MS, Outcome::Failure)
                .ejected
        );
    }
    assert_eq!(pool.ejected(), 0);
}
