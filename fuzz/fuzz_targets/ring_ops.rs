//! Builds, updates and queries rings from arbitrary input, checking the ring's invariants:
//! lookups equal a linear scan, points are sorted, the readiness walk returns only accepted
//! endpoints, and in native mode a membership change moves only the changed endpoint's keys.
//! Rings stay small (at most 512 points) so each input runs in well under a millisecond; the
//! large-table checks live in `maglev` and `fixed_ring`.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pickwise::{Mode, Ring, RingConfig};

#[derive(Arbitrary, Debug)]
struct Params {
    mode: u8,
    min: u16,
    max: u16,
    points_per_weight: u8,
    endpoints: Vec<(Vec<u8>, u32)>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Lookup(u64),
    Find(u64, u32),
    Insert(Vec<u8>, u32),
    Remove(u8),
}

fn oracle(ring: &Ring, h: u64) -> Option<u32> {
    let v = ring.view();
    let i = v.points().iter().position(|&p| p >= h).unwrap_or(0);
    v.owners().get(i).copied()
}

fn check(ring: &Ring) {
    let v = ring.view();
    assert!(v.points().windows(2).all(|w| w[0] <= w[1]));
    assert!(v.owners().iter().all(|&o| (o as usize) < ring.endpoints()));
}

fuzz_target!(|input: (Params, Vec<Op>)| {
    let (p, ops) = input;
    let mut endpoints = p.endpoints;
    let mode = match p.mode % 3 {
        0 => Mode::Envoy,
        1 => Mode::Grpc,
        _ => Mode::Native {
            points_per_weight: u32::from(p.points_per_weight % 32),
        },
    };
    endpoints.truncate(32);
    let config = RingConfig {
        mode,
        min_ring_size: u64::from(p.min % 256),
        max_ring_size: u64::from(p.max % 512),
    };
    // Errors are fine (typed); panics are not.
    let Ok(mut ring) = Ring::build(&endpoints, &config) else {
        return;
    };
    check(&ring);
    for op in ops.into_iter().take(16) {
        match op {
            Op::Lookup(h) => assert_eq!(ring.lookup(h), oracle(&ring, h)),
            Op::Find(h, mask) => {
                let ok = |o: u32| mask & (1 << (o % 32)) != 0;
                match ring.find(h, ok) {
                    Some(o) => assert!(ok(o)),
                    None => assert!(!ring.view().owners().iter().any(|&o| ok(o))),
                }
            }
            Op::Insert(key, w) => {
                let Ok(next) = ring.with_endpoint(&key, w) else {
                    continue;
                };
                check(&next);
                if matches!(mode, Mode::Native { .. }) {
                    // Keys move only to or from the changed endpoint.
                    for &h in ring.view().points().iter().take(64) {
                        let (a, b) = (
                            ring.key(ring.lookup(h).unwrap()).unwrap(),
                            next.key(next.lookup(h).unwrap()).unwrap(),
                        );
                        assert!(a == b || a == &key[..] || b == &key[..]);
                    }
                }
                ring = next;
            }
            Op::Remove(i) => {
                let idx = u32::from(i) % ring.endpoints() as u32;
                let Some(key) = ring.key(idx).map(<[u8]>::to_vec) else {
                    continue;
                };
                let Ok(next) = ring.without_endpoint(&key) else {
                    continue;
                };
                check(&next);
                if matches!(mode, Mode::Native { .. }) {
                    let moved = ring.moved_share(&next);
                    assert!((moved - ring.ownership()[idx as usize]).abs() < 1e-9);
                    for &h in next.view().points().iter().take(64) {
                        let (a, b) = (
                            ring.key(ring.lookup(h).unwrap()).unwrap(),
                            next.key(next.lookup(h).unwrap()).unwrap(),
                        );
                        assert!(a == b || a == &key[..]);
                    }
                }
                ring = next;
            }
        }
    }
});
