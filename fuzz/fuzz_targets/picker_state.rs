//! The adapter-independent picker state machine: endpoints added and removed while their
//! requests are in flight (a deploy), picks on stale snapshots, completions in any order,
//! responses that start before they end, readiness flips, sweeps and clock jumps up to 49 days.
//! Checks: in-flight counts equal outstanding guards; the ejected count equals the members that
//! are out after a sweep; removed endpoints are never ejected and hold no slot; the multiplier
//! stays under Envoy's cap; nothing unavailable is picked while something is available.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pickwise::{
    hashing::available_weight, EndpointState, HashPolicy, InFlight, Outcome, OutlierConfig, P2c, Policy,
    Pool, PoolConfig, Ring, RingConfig, RingPicker, SplitMix64,
};

#[derive(Arbitrary, Debug)]
struct Params {
    endpoints: u8,
    policy: u8,
    consecutive: u8,
    max_percent: u8,
    always_one: bool,
    seed: u64,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Pick,
    RingPick(u64, u8),
    /// A pick made on an older snapshot: any member, available or not.
    StalePick(u8),
    Respond(u16, u16),
    Complete(u16, u8, u16),
    Drop(u16),
    Ready(u8, bool),
    Add(u8),
    Remove(u8),
    Advance(u16),
    Jump(u32),
    Sweep,
}

/// A request: the position of its endpoint in `all`, and its guard.
type Guard<'a> = (usize, InFlight<Arc<EndpointState>, &'a Pool>);

fuzz_target!(|input: (Params, Vec<Op>)| {
    let (p, ops) = input;
    let policy = [Policy::LeastRequest, Policy::PeakEwma, Policy::GoZero][usize::from(p.policy % 3)];
    let outlier = OutlierConfig {
        consecutive_failures: u32::from(p.consecutive % 6),
        base_ejection_ms: 1000,
        max_ejection_ms: 5000,
        max_ejection_percent: p.max_percent,
        interval_ms: 700,
        always_eject_one: p.always_one,
        ..OutlierConfig::default()
    };
    let pool = Pool::new(PoolConfig {
        policy,
        outlier,
        track_total: true,
        ..Default::default()
    });
    let mut all: Vec<Arc<EndpointState>> = Vec::new();
    // The current snapshot: states, and their positions in `all`.
    let mut members: Vec<Arc<EndpointState>> = Vec::new();
    let mut member_idx: Vec<usize> = Vec::new();
    for i in 0..usize::from(p.endpoints % 12) + 1 {
        let e = Arc::new(EndpointState::new(i as u32 % 3));
        all.push(e.clone());
        members.push(e);
        member_idx.push(i);
    }
    pool.set_endpoints(members.len());
    let ring_for = |members: &[Arc<EndpointState>]| {
        let keys: Vec<(String, u32)> = members
            .iter()
            .map(|e| (format!("{:p}", Arc::as_ptr(e)), e.weight()))
            .collect();
        Ring::build(&keys, &RingConfig::native(4)).ok()
    };
    let mut ring = ring_for(&members);
    let mut rng = SplitMix64::new(p.seed);
    let mut guards: Vec<Guard<'_>> = Vec::new();
    let mut now: u64 = 1 << 40;
    for op in ops.into_iter().take(256) {
        match op {
            Op::Pick => {
                let any = members.iter().any(|e| e.is_available(now));
                match P2c::new(&members, &pool).pick(now, &mut rng) {
                    Ok(i) => {
                        assert!(members[i].is_available(now));
                        guards.push((member_idx[i], InFlight::start(members[i].clone(), &pool, now)));
                    }
                    Err(_) => assert!(!any),
                }
            }
            Op::RingPick(h, kind) => {
                let Some(ring) = &ring else { continue };
                let hp = match kind % 3 {
                    0 => HashPolicy::Plain,
                    1 => HashPolicy::Bounded {
                        factor_percent: 100 + u32::from(kind),
                    },
                    _ => HashPolicy::Affinity {
                        ratio: 1.0 + f32::from(kind) / 50.0,
                    },
                };
                let any = members.iter().any(|e| e.is_available(now));
                let picker = RingPicker::new(ring.view(), &members, &pool, available_weight(&members, now));
                match picker.pick(now, h, hp) {
                    Ok(i) => {
                        assert!(members[i].is_available(now));
                        guards.push((member_idx[i], InFlight::start(members[i].clone(), &pool, now)));
                    }
                    Err(_) => assert!(!any),
                }
            }
            Op::StalePick(i) if !all.is_empty() => {
                let j = usize::from(i) % all.len();
                guards.push((j, InFlight::start(all[j].clone(), &pool, now)));
            }
            Op::Respond(k, dt) if !guards.is_empty() => {
                let n = guards.len();
                guards[usize::from(k) % n].1.responded(now + u64::from(dt) * 1000);
            }
            Op::Complete(k, o, dt) if !guards.is_empty() => {
                let (_, g) = guards.swap_remove(usize::from(k) % guards.len());
                let removed = g.endpoint().is_removed();
                let outcome = [Outcome::Success, Outcome::Failure, Outcome::Neutral][usize::from(o % 3)];
                let c = g.complete(now + u64::from(dt) * 1000, outcome);
                assert!(!(removed && c.ejected), "a removed endpoint was ejected");
            }
            Op::Drop(k) if !guards.is_empty() => drop(guards.swap_remove(usize::from(k) % guards.len())),
            Op::Ready(i, r) if !members.is_empty() => members[usize::from(i) % members.len()].set_ready(r),
            Op::Add(w) if all.len() < 40 => {
                let e = Arc::new(EndpointState::new(u32::from(w % 4)));
                all.push(e.clone());
                members.push(e);
                member_idx.push(all.len() - 1);
                pool.set_endpoints(members.len());
                ring = ring_for(&members);
            }
            Op::Remove(i) if !members.is_empty() => {
                let k = usize::from(i) % members.len();
                let e = members.remove(k);
                member_idx.remove(k);
                pool.remove(&e);
                pool.set_endpoints(members.len());
                ring = ring_for(&members);
            }
            Op::Advance(ms) => now += u64::from(ms) * 1_000_000,
            Op::Jump(ms) => now += u64::from(ms) * 1_000_000,
            Op::Sweep => {
                pool.sweep(now, members.iter().map(|e| &**e));
                let out = members.iter().filter(|e| e.is_ejected(now)).count() as u32;
                assert_eq!(pool.ejected(), out, "slots vs ejected members after a sweep");
            }
            _ => {}
        }
        let mut held = [0u32; 64];
        for (i, _) in &guards {
            held[*i] += 1;
        }
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.in_flight(), held[i]);
            if e.is_removed() {
                assert!(!e.is_ejected(now), "a removed endpoint is ejected");
            }
            assert!(
                e.ejections() <= 6,
                "multiplier {} over Envoy's cap",
                e.ejections()
            );
        }
        assert_eq!(pool.total_in_flight() as usize, guards.len());
        let holding = members.iter().filter(|e| e.ejected_for_ms(now).is_some()).count() as u32;
        assert!(pool.ejected() >= holding, "an ejected member holds no slot");
    }
    drop(guards);
    assert!(all.iter().all(|e| e.in_flight() == 0));
    assert_eq!(pool.total_in_flight(), 0);
});
