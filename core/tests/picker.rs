//! The shared picker: ring picks with and without keys, P2C and round robin over candidates,
//! panic routing when everything ready is ejected, errors when nothing is ready, gRPC names.

use std::sync::atomic::AtomicU32;

use pickwise::{
    hash, EndpointState, HashPolicy, InFlight, LbPolicy, NoKey, Outcome, OutlierConfig, PickError, Picker,
    Policy, Pool, PoolConfig, Ring, RingConfig, SplitMix64,
};

fn setup(n: usize) -> (Vec<EndpointState>, Ring, Pool) {
    let hosts: Vec<(String, u32)> = (0..n).map(|i| (format!("10.0.0.{i}:80"), 1)).collect();
    let ring = Ring::build(&hosts, &RingConfig::grpc()).unwrap();
    let pool = Pool::new(PoolConfig {
        outlier: OutlierConfig {
            consecutive_failures: 1,
            max_ejection_percent: 100,
            ..OutlierConfig::default()
        },
        ..PoolConfig::with_policy(Policy::LeastRequest)
    });
    pool.set_endpoints(n);
    ((0..n).map(|_| EndpointState::new(1)).collect(), ring, pool)
}

fn index_of(es: &[EndpointState], e: &EndpointState) -> usize {
    es.iter().position(|x| std::ptr::eq(x, e)).unwrap()
}

#[test]
fn ring_hash_keys_are_sticky_and_no_key_follows_the_policy() {
    let (es, ring, pool) = setup(5);
    let mut rng = SplitMix64::new(1);
    let policy = LbPolicy::RingHash {
        ring: RingConfig::grpc(),
        load: HashPolicy::Plain,
        no_key: NoKey::RandomHash,
    };
    let picker = Picker::new(&policy, &es, &pool).with_ring(ring.view(), 5);
    let key = hash::xxh64(b"user-1");
    let home = index_of(&es, picker.pick(0, Some(key), &mut rng).unwrap());
    assert_eq!(home, ring.lookup(key).unwrap() as usize);
    for _ in 0..20 {
        assert_eq!(index_of(&es, picker.pick(0, Some(key), &mut rng).unwrap()), home);
    }
    // No key with RandomHash: spread over the ring.
    let mut seen = [0u32; 5];
    for _ in 0..1000 {
        seen[index_of(&es, picker.pick(0, None, &mut rng).unwrap())] += 1;
    }
    assert!(seen.iter().all(|&c| c > 100), "{seen:?}");
    // No key with P2c: least-request.
    let p2c_policy = LbPolicy::RingHash {
        ring: RingConfig::grpc(),
        load: HashPolicy::Plain,
        no_key: NoKey::P2c,
    };
    let busy: Vec<_> = (0..4).map(|i| InFlight::start(&es[i], &pool, 0)).collect();
    let picker = Picker::new(&p2c_policy, &es, &pool).with_ring(ring.view(), 5);
    // The idle endpoint wins every pair it is drawn into: 2 of 5 draws.
    let idle = (0..1000)
        .filter(|_| index_of(&es, picker.pick(0, None, &mut rng).unwrap()) == 4)
        .count();
    assert!((340..460).contains(&idle), "{idle}");
    drop(busy);
}

#[test]
fn panic_routing_when_every_ready_endpoint_is_ejected() {
    let (es, ring, pool) = setup(3);
    let mut rng = SplitMix64::new(2);
    for e in &es {
        let _ = InFlight::start(e, &pool, 0).complete(0, Outcome::Failure);
    }
    assert!(es.iter().all(|e| e.is_ejected(1)));
    for policy in [
        LbPolicy::P2c(Policy::LeastRequest),
        LbPolicy::RoundRobin,
        LbPolicy::RingHash {
            ring: RingConfig::grpc(),
            load: HashPolicy::Bounded { factor_percent: 150 },
            no_key: NoKey::RandomHash,
        },
    ] {
        let cursor = AtomicU32::new(0);
        let picker = Picker::new(&policy, &es, &pool)
            .with_ring(ring.view(), 3)
            .with_cursor(&cursor);
        assert!(picker.pick(1, Some(7), &mut rng).is_ok(), "{policy:?}");
        assert!(picker.pick(1, None, &mut rng).is_ok(), "{policy:?}");
    }
    // Not ready at all: an error, for the adapter to wait or fail.
    for e in &es {
        e.set_ready(false);
    }
    let p = LbPolicy::P2c(Policy::PeakEwma);
    assert_eq!(
        Picker::new(&p, &es, &pool).pick(1, None, &mut rng).err(),
        Some(PickError::NoneAvailable)
    );
    let none: [EndpointState; 0] = [];
    assert_eq!(
        Picker::new(&p, &none, &pool).pick(1, None, &mut rng).err(),
        Some(PickError::NoEndpoints)
    );
}

#[test]
fn round_robin_rotates_over_available_candidates() {
    let (es, _, pool) = setup(4);
    es[2].set_ready(false);
    let cursor = AtomicU32::new(0);
    let policy = LbPolicy::RoundRobin;
    let picker = Picker::new(&policy, &es, &pool).with_cursor(&cursor);
    let mut rng = SplitMix64::new(3);
    let order: Vec<usize> = (0..30_000)
        .map(|_| index_of(&es, picker.pick(0, None, &mut rng).unwrap()))
        .collect();
    // Turns rotate: 0, 1, then 2's turn is redrawn at random, 3, ...
    assert_eq!(order[..2], [0, 1]);
    // The unavailable endpoint's turns spread over the others (this used to give its neighbour
    // 3 twice the share: [0, 1, 3, 3, ...]).
    let count = |i| order.iter().filter(|&&x| x == i).count();
    assert_eq!(count(2), 0);
    for i in [0, 1, 3] {
        assert!(count(i).abs_diff(10_000) < 300, "{}", count(i));
    }
}

#[test]
fn names_are_grpcs() {
    for name in [
        "least_request_experimental",
        "round_robin",
        "ring_hash_experimental",
        "pickwise_peak_ewma",
        "pickwise_go_zero",
    ] {
        assert_eq!(LbPolicy::from_name(name).unwrap().name(), name);
    }
    assert_eq!(LbPolicy::from_name("pick_first"), None);
    let LbPolicy::RingHash { ring, no_key, .. } = LbPolicy::from_name("ring_hash_experimental").unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (ring.min_ring_size, ring.max_ring_size, no_key),
        (1024, 4096, NoKey::RandomHash)
    );
}

#[test]
fn maglev_owner_then_next_slot_owner() {
    let (es, _, pool) = setup(5);
    let hosts: Vec<(String, u32)> = (0..5).map(|i| (format!("10.0.0.{i}:80"), 1)).collect();
    let table = pickwise::Maglev::build(&hosts, 251).unwrap();
    let policy = LbPolicy::from_name("maglev").unwrap();
    let picker = Picker::new(&policy, &es, &pool).with_table(table.table());
    let mut rng = SplitMix64::new(4);
    for key in 0..200u64 {
        let owner = table.lookup(key).unwrap() as usize;
        assert_eq!(index_of(&es, picker.pick(0, Some(key), &mut rng).unwrap()), owner);
    }
    // Owner down: the owner of the next slot that can take it.
    let key = 17u64;
    let owner = table.lookup(key).unwrap() as usize;
    es[owner].set_ready(false);
    let next = (1..251u64)
        .map(|i| table.table()[((key + i) % 251) as usize] as usize)
        .find(|&i| i != owner)
        .unwrap();
    assert_eq!(index_of(&es, picker.pick(0, Some(key), &mut rng).unwrap()), next);
    assert_eq!(LbPolicy::from_name("maglev").unwrap().name(), "maglev");
}

/// A keyed ring or Maglev pick reads no clock while nothing is ejected, honours an ejection all
/// the same, and reads the clock again once an ejection holds a slot (so it can expire).
#[test]
fn keyed_picks_read_the_clock_only_when_an_ejection_exists() {
    use std::cell::Cell;
    let (es, ring, pool) = setup(4);
    let policy = LbPolicy::RingHash {
        ring: RingConfig::grpc(),
        load: HashPolicy::Plain,
        no_key: NoKey::P2c,
    };
    let picker = Picker::new(&policy, &es, &pool).with_ring(ring.view(), 4);
    let reads = Cell::new(0);
    let clock = || {
        reads.set(reads.get() + 1);
        5_000_000
    };
    let mut rng = SplitMix64::new(5);
    let key = hash::xxh64(b"k");
    let home = index_of(&es, picker.pick_with_clock(clock, Some(key), &mut rng).unwrap());
    assert_eq!(reads.get(), 0, "no ejection: no clock");
    // No key: P2C needs costs, so the clock.
    let _ = picker.pick_with_clock(clock, None, &mut rng).unwrap();
    assert_eq!(reads.get(), 1);
    // Eject the key's home (one failure ejects in this pool): the pick moves and reads the clock.
    let _ = InFlight::start(&es[home], &pool, 0).complete(0, Outcome::Failure);
    assert!(es[home].is_ejected(1));
    let other = index_of(&es, picker.pick_with_clock(clock, Some(key), &mut rng).unwrap());
    assert_ne!(other, home);
    assert_eq!(reads.get(), 2);
    // After the ejection's time, the clock path returns it.
    let late = || 31_000_000_000;
    assert_eq!(
        index_of(&es, picker.pick_with_clock(late, Some(key), &mut rng).unwrap()),
        home
    );
    assert_eq!(pool.ejected(), 0);
}

/// Weighted round robin (grpc-go's static stride scheduler): every 65,535 generations give each
/// candidate exactly its scaled weight; picks interleave rather than come in blocks.
#[test]
fn weighted_round_robin_is_exact_per_cycle_and_interleaved() {
    let (es, _, pool) = setup(3);
    for (e, w) in es.iter().zip([3u32, 1, 6]) {
        e.set_weight(w);
    }
    let cursor = AtomicU32::new(0);
    let policy = LbPolicy::RoundRobin;
    let weights = pickwise::schedule::scaled(&[3, 1, 6]);
    let picker = Picker::new(&policy, &es, &pool)
        .with_cursor(&cursor)
        .with_weights(&weights);
    let mut rng = SplitMix64::new(3);
    let order: Vec<usize> = (0..30_000)
        .map(|_| index_of(&es, picker.pick(0, None, &mut rng).unwrap()))
        .collect();
    let count = |i| order.iter().filter(|&&x| x == i).count();
    // Scaled weights 32,768 / 10,923 / 65,535: shares within 0.1% of 3:1:6.
    let share = |i| count(i) as f64 / order.len() as f64;
    assert!(
        (share(0) - 0.3).abs() < 0.001 && (share(1) - 0.1).abs() < 0.001,
        "{}, {}",
        share(0),
        share(1)
    );
    // Interleaved: the heaviest never takes more than 3 picks in a row.
    assert!(order.windows(4).all(|w| !w.iter().all(|&x| x == 2)), "{order:?}");
}
