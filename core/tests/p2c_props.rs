//! Model-based property tests of the P2C picker, guards, ejection and bounded-load hashing.

use pickwise::{
    hashing::total_weight, EndpointState, HashPolicy, InFlight, Outcome, OutlierConfig, P2c, PickError,
    Policy, Pool, PoolConfig, Ring, RingConfig, RingPicker, SplitMix64,
};
use proptest::prelude::*;

const MS: u64 = 1_000_000;

#[derive(Clone, Debug)]
enum Op {
    Pick,
    Complete(prop::sample::Index, u8),
    Drop(prop::sample::Index),
    SetReady(prop::sample::Index, bool),
    Rebuild(Vec<bool>),
    Advance(u32),
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Pick),
        3 => (any::<prop::sample::Index>(), 0u8..3).prop_map(|(i, o)| Op::Complete(i, o)),
        2 => any::<prop::sample::Index>().prop_map(Op::Drop),
        1 => (any::<prop::sample::Index>(), any::<bool>()).prop_map(|(i, r)| Op::SetReady(i, r)),
        1 => prop::collection::vec(any::<bool>(), 1..12).prop_map(Op::Rebuild),
        1 => (0u32..60_000).prop_map(Op::Advance),
        1 => Just(Op::Sweep),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::LeastRequest),
        Just(Policy::PeakEwma),
        Just(Policy::GoZero)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// In-flight counts equal outstanding guards through picks, completions, drops, readiness
    /// changes and picker rebuilds; nothing unavailable is picked while something is available;
    /// the ejection cap holds throughout.
    #[test]
    fn counters_match_outstanding_guards(n in 1usize..12, policy in policy(), ops in prop::collection::vec(op(), 1..300), seed in any::<u64>()) {
        let cfg = PoolConfig { policy, outlier: OutlierConfig { consecutive_failures: 2, base_ejection_ms: 5_000, ..Default::default() }, ..Default::default() };
        let pool = Pool::new(cfg);
        pool.set_endpoints(n);
        let states: Vec<EndpointState> = (0..n).map(|i| EndpointState::new(i as u32 % 3)).collect();
        let mut members: Vec<usize> = (0..n).collect();
        let mut guards: Vec<(usize, InFlight<&EndpointState, &Pool>)> = Vec::new();
        let mut rng = SplitMix64::new(seed);
        let mut now = 1_000 * MS;
        for op in ops {
            match op {
                Op::Pick => {
                    let snapshot: Vec<&EndpointState> = members.iter().map(|&i| &states[i]).collect();
                    let any_avail = snapshot.iter().any(|e| e.is_available(now));
                    match P2c::new(&snapshot, &pool).pick(now, &mut rng) {
                        Ok(k) => {
                            prop_assert!(snapshot[k].is_available(now), "picked an unavailable endpoint");
                            guards.push((members[k], InFlight::start(snapshot[k], &pool, now)));
                        }
                        Err(PickError::NoEndpoints) => prop_assert!(members.is_empty()),
                        Err(PickError::NoneAvailable) => prop_assert!(!any_avail, "none picked though one is available"),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Complete(i, o) if !guards.is_empty() => {
                    let (_, g) = guards.swap_remove(i.index(guards.len()));
                    let outcome = [Outcome::Success, Outcome::Failure, Outcome::Neutral][o as usize];
                    let _ = g.complete(now + MS, outcome);
                }
                Op::Drop(i) if !guards.is_empty() => drop(guards.swap_remove(i.index(guards.len()))),
                Op::SetReady(i, r) => states[i.index(n)].set_ready(r),
                Op::Rebuild(keep) => {
                    members = (0..n).filter(|&i| keep[i % keep.len()]).collect();
                }
                Op::Advance(ms) => now += u64::from(ms) * MS,
                Op::Sweep => pool.sweep(now, &states),
                _ => {}
            }
            for (i, e) in states.iter().enumerate() {
                let outstanding = guards.iter().filter(|(j, _)| *j == i).count() as u32;
                prop_assert_eq!(e.in_flight(), outstanding);
            }
            let ejected_now = states.iter().filter(|e| e.is_ejected(now)).count() as u32;
            prop_assert!(ejected_now <= pool.ejection_cap(), "cap {} exceeded: {}", pool.ejection_cap(), ejected_now);
            prop_assert!(pool.ejected() <= pool.ejection_cap());
        }
        drop(guards);
        prop_assert!(states.iter().all(|e| e.in_flight() == 0));
    }

    /// The ring pickers return only available endpoints while any is available.
    #[test]
    fn ring_picks_only_available(n in 1usize..10, ready in prop::collection::vec(any::<bool>(), 10), hashes in prop::collection::vec(any::<u64>(), 20), ratio in 1.0f32..4.0) {
        let hosts: Vec<(String, u32)> = (0..n).map(|i| (format!("h{i}"), 1 + i as u32 % 2)).collect();
        let ring = Ring::build(&hosts, &RingConfig::native(20)).unwrap();
        let states: Vec<EndpointState> = hosts.iter().map(|(_, w)| EndpointState::new(*w)).collect();
        for (e, &r) in states.iter().zip(&ready) { e.set_ready(r); }
        let pool = Pool::new(PoolConfig { track_total: true, ..Default::default() });
        let picker = RingPicker::new(ring.view(), &states, &pool, total_weight(&states));
        let any = states.iter().any(|e| e.is_ready());
        for h in hashes {
            for policy in [HashPolicy::Plain, HashPolicy::Bounded { factor_percent: 125 }, HashPolicy::Affinity { ratio }] {
                match picker.pick(0, h, policy) {
                    Ok(i) => prop_assert!(states[i].is_ready()),
                    Err(_) => prop_assert!(!any),
                }
            }
            // Plain picks are the readiness walk.
            prop_assert_eq!(picker.pick(0, h, HashPolicy::Plain).ok(), ring.find(h, |i| states[i as usize].is_ready()).map(|i| i as usize));
        }
    }

    /// Bounded load: while held guards accumulate, no endpoint is chosen above its slot count
    /// (Envoy's formula) as long as some endpoint is within its bound.
    #[test]
    fn bounded_load_respects_the_bound(n in 2usize..8, factor in 100u32..300, keys in prop::collection::vec(0u64..4, 50..300)) {
        let hosts: Vec<(String, u32)> = (0..n).map(|i| (format!("h{i}"), 1)).collect();
        let ring = Ring::build(&hosts, &RingConfig::native(50)).unwrap();
        let states: Vec<EndpointState> = (0..n).map(|_| EndpointState::new(1)).collect();
        let pool = Pool::new(PoolConfig { track_total: true, ..Default::default() });
        let tw = total_weight(&states);
        let picker = RingPicker::new(ring.view(), &states, &pool, tw);
        let mut guards = Vec::new();
        for k in keys {
            // Few distinct keys: hot keys that all hash to a handful of homes.
            let h = pickwise::hash::native(&k.to_le_bytes());
            let within: Vec<bool> = states.iter().map(|e| !picker.overloaded(e, factor)).collect();
            let i = picker.pick(0, h, HashPolicy::Bounded { factor_percent: factor }).unwrap();
            if within.iter().any(|&w| w) {
                prop_assert!(within[i], "picked an overloaded endpoint while one was within bound");
            }
            guards.push(InFlight::start(&states[i], &pool, 0));
        }
        let total = guards.len() as f64;
        let max = states.iter().map(|e| e.in_flight()).max().unwrap() as f64;
        // Max load stays within factor x average, plus the +1 slack and rounding of the formula.
        prop_assert!(max <= (total / n as f64) * f64::from(factor) / 100.0 + 2.0, "max {} total {}", max, total);
        drop(guards);
        prop_assert_eq!(pool.total_in_flight(), 0);
    }
}

#[test]
fn one_endpoint_and_empty() {
    let pool = Pool::new(PoolConfig::default());
    let mut rng = SplitMix64::new(1);
    let none: [EndpointState; 0] = [];
    assert_eq!(
        P2c::new(&none, &pool).pick(0, &mut rng),
        Err(PickError::NoEndpoints)
    );
    let one = [EndpointState::new(1)];
    assert_eq!(P2c::new(&one, &pool).pick(0, &mut rng), Ok(0));
    one[0].set_ready(false);
    assert_eq!(
        P2c::new(&one, &pool).pick(0, &mut rng),
        Err(PickError::NoneAvailable)
    );
}

#[test]
fn least_request_prefers_the_idle_endpoint() {
    let pool = Pool::new(PoolConfig::with_policy(Policy::LeastRequest));
    let states = [EndpointState::new(1), EndpointState::new(1)];
    let _busy: Vec<_> = (0..5).map(|_| InFlight::start(&states[0], &pool, 0)).collect();
    let mut rng = SplitMix64::new(3);
    for _ in 0..100 {
        assert_eq!(P2c::new(&states, &pool).pick(0, &mut rng), Ok(1));
    }
}

#[test]
fn ties_are_broken_randomly() {
    let pool = Pool::new(PoolConfig::with_policy(Policy::LeastRequest));
    let states = [EndpointState::new(1), EndpointState::new(1)];
    let mut rng = SplitMix64::new(3);
    let zeros = (0..1000)
        .filter(|_| P2c::new(&states, &pool).pick(0, &mut rng) == Ok(0))
        .count();
    assert!((400..600).contains(&zeros), "{zeros}");
}

#[test]
fn affinity_keeps_home_until_clearly_loaded() {
    let hosts = [("a", 1), ("b", 1), ("c", 1)];
    let ring = Ring::build(&hosts, &RingConfig::native(50)).unwrap();
    let states: Vec<EndpointState> = (0..3).map(|_| EndpointState::new(1)).collect();
    let pool = Pool::new(PoolConfig::with_policy(Policy::LeastRequest));
    let picker = RingPicker::new(ring.view(), &states, &pool, 3);
    let h = 12345;
    let policy = HashPolicy::Affinity { ratio: 2.0 };
    let home = picker.pick(0, h, policy).unwrap();
    let mut held = Vec::new();
    // Home keeps the key while its cost is at most twice the neighbour's: (k + 1) <= 2 * 1, k <= 1.
    held.push(InFlight::start(&states[home], &pool, 0));
    assert_eq!(picker.pick(0, h, policy).unwrap(), home);
    held.push(InFlight::start(&states[home], &pool, 0));
    let next = picker.pick(0, h, policy).unwrap();
    assert_ne!(next, home);
    assert_eq!(ring.view().find_two(h, |_| true).1, Some(next as u32));
}
