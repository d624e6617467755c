//! Many threads picking, completing and cancelling on shared endpoint state, with picker rebuilds
//! and readiness flips in between: every in-flight counter returns to zero.

use std::sync::Arc;
use std::thread;

use pickwise::{EndpointState, InFlight, Outcome, P2c, Pool, PoolConfig, SplitMix64};

#[test]
fn counters_return_to_zero_under_contention() {
    let states: Arc<Vec<Arc<EndpointState>>> =
        Arc::new((0..16).map(|_| Arc::new(EndpointState::new(1))).collect());
    let pool = Arc::new(Pool::new(PoolConfig {
        track_total: true,
        ..Default::default()
    }));
    pool.set_endpoints(states.len());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (states, pool) = (states.clone(), pool.clone());
            thread::spawn(move || {
                let mut rng = SplitMix64::new(t);
                let mut held: Vec<InFlight<Arc<EndpointState>, Arc<Pool>>> = Vec::new();
                // Miri runs the same interleavings checker-slow: fewer rounds there.
                let rounds = if cfg!(miri) { 300 } else { 50_000u64 };
                for i in 0..rounds {
                    let now = i * 10_000;
                    // A rebuilt snapshot: a rotating subset of the endpoints.
                    let skip = (i / 1000) as usize % states.len();
                    let snapshot: Vec<Arc<EndpointState>> = states
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| *k != skip)
                        .map(|(_, e)| e.clone())
                        .collect();
                    if i % (rounds / 10).max(1) == 0 {
                        states[(t as usize + i as usize) % 16].set_ready(i % 10_000 != 0);
                    }
                    if let Ok(k) = P2c::new(&snapshot, &pool).pick(now, &mut rng) {
                        held.push(InFlight::start(snapshot[k].clone(), pool.clone(), now));
                    }
                    if held.len() > 8 || i % 3 == 0 {
                        let g = held.swap_remove((i as usize) % held.len().max(1) % held.len().max(1));
                        match i % 4 {
                            0 => drop(g),
                            1 => drop(g.complete(now + 1_000_000, Outcome::Failure)),
                            _ => drop(g.complete(now + 2_000_000, Outcome::Success)),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for e in states.iter() {
        assert_eq!(e.in_flight(), 0);
        e.set_ready(true);
    }
    assert_eq!(pool.total_in_flight(), 0);
    assert!(pool.ejected() <= pool.ejection_cap());
}
