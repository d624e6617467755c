//! Drives pickers, guards, ejection and ring picks with arbitrary operation sequences, checking
//! that in-flight counts equal outstanding guards, nothing unavailable is picked while something
//! is available, and the ejection cap holds.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pickwise::{
    hashing::total_weight, EndpointState, HashPolicy, InFlight, Outcome, OutlierConfig, P2c, Policy, Pool,
    PoolConfig, Ring, RingConfig, RingPicker, SplitMix64,
};

#[derive(Arbitrary, Debug)]
struct Params {
    endpoints: u8,
    weights: Vec<u32>,
    policy: u8,
    consecutive: u8,
    max_percent: u8,
    seed: u64,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Pick,
    RingPick(u64, u8, u16),
    Complete(u16, u8, u32),
    Drop(u16),
    Ready(u8, bool),
    Weight(u8, u32),
    Advance(u32),
    Sweep,
    Remove(u8),
}

fuzz_target!(|input: (Params, Vec<Op>)| {
    let (p, ops) = input;
    let n = usize::from(p.endpoints % 16) + 1;
    let policy = [Policy::LeastRequest, Policy::PeakEwma, Policy::GoZero][usize::from(p.policy % 3)];
    let outlier = OutlierConfig {
        consecutive_failures: u32::from(p.consecutive % 8),
        base_ejection_ms: 1000,
        max_ejection_ms: 10_000,
        max_ejection_percent: p.max_percent,
        ..OutlierConfig::default()
    };
    let pool = Pool::new(PoolConfig {
        policy,
        outlier,
        track_total: true,
        ..Default::default()
    });
    pool.set_endpoints(n);
    let states: Vec<EndpointState> = (0..n)
        .map(|i| EndpointState::new(p.weights.get(i).copied().unwrap_or(1)))
        .collect();
    let hosts: Vec<(String, u32)> = (0..n).map(|i| (format!("h{i}"), 1)).collect();
    let ring = Ring::build(&hosts, &RingConfig::native(8)).unwrap();
    let mut rng = SplitMix64::new(p.seed);
    let mut guards: Vec<(usize, InFlight<&EndpointState, &Pool>)> = Vec::new();
    let mut now: u64 = 1 << 40;
    for op in ops.into_iter().take(512) {
        match op {
            Op::Pick => {
                let any = states.iter().any(|e| e.is_available(now));
                match P2c::new(&states, &pool).pick(now, &mut rng) {
                    Ok(i) => {
                        assert!(states[i].is_available(now));
                        guards.push((i, InFlight::start(&states[i], &pool, now)));
                    }
                    Err(_) => assert!(!any),
                }
            }
            Op::RingPick(h, kind, f) => {
                let hp = match kind % 3 {
                    0 => HashPolicy::Plain,
                    1 => HashPolicy::Bounded {
                        factor_percent: u32::from(f),
                    },
                    _ => HashPolicy::Affinity {
                        ratio: f32::from(f) / 100.0,
                    },
                };
                let any = states.iter().any(|e| e.is_available(now));
                let picker = RingPicker::new(ring.view(), &states, &pool, total_weight(&states));
                match picker.pick(now, h, hp) {
                    Ok(i) => {
                        assert!(states[i].is_available(now));
                        guards.push((i, InFlight::start(&states[i], &pool, now)));
                    }
                    Err(_) => assert!(!any),
                }
            }
            Op::Complete(k, o, dt) if !guards.is_empty() => {
                let (_, g) = guards.swap_remove(usize::from(k) % guards.len());
                let outcome = [Outcome::Success, Outcome::Failure, Outcome::Neutral][usize::from(o % 3)];
                let _ = g.complete(now.saturating_add(u64::from(dt)), outcome);
            }
            Op::Drop(k) if !guards.is_empty() => drop(guards.swap_remove(usize::from(k) % guards.len())),
            Op::Ready(i, r) => states[usize::from(i) % n].set_ready(r),
            Op::Weight(i, w) => states[usize::from(i) % n].set_weight(w),
            Op::Advance(ms) => now = now.saturating_add(u64::from(ms) * 1_000_000),
            Op::Sweep => pool.sweep(now, &states),
            Op::Remove(i) => pool.remove(&states[usize::from(i) % n]),
            _ => {}
        }
        for (i, e) in states.iter().enumerate() {
            assert_eq!(
                e.in_flight() as usize,
                guards.iter().filter(|(j, _)| *j == i).count()
            );
        }
        assert!(pool.ejected() <= pool.ejection_cap());
        assert_eq!(pool.total_in_flight() as usize, guards.len());
    }
});
