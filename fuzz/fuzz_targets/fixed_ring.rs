//! The allocation-free `FixedRing` (heapsort, quadratic key checks) against the owned `Ring` on
//! the same input: same points, same owners, same errors. Capacity 512 keeps each input fast.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pickwise::{FixedRing, Mode, Ring, RingConfig};

#[derive(Arbitrary, Debug)]
struct Input {
    mode: u8,
    min: u16,
    max: u16,
    points_per_weight: u8,
    endpoints: Vec<(Vec<u8>, u32)>,
    probes: Vec<u64>,
}

fuzz_target!(|input: Input| {
    let mut endpoints = input.endpoints;
    endpoints.truncate(24);
    let mode = match input.mode % 3 {
        0 => Mode::Envoy,
        1 => Mode::Grpc,
        _ => Mode::Native {
            points_per_weight: u32::from(input.points_per_weight % 16),
        },
    };
    let config = RingConfig {
        mode,
        min_ring_size: u64::from(input.min % 1024),
        max_ring_size: u64::from(input.max % 600),
    };
    let owned = Ring::build(&endpoints, &config);
    let fixed = FixedRing::<512>::build(&endpoints, &config);
    match (&owned, &fixed) {
        (Ok(o), Ok(f)) => {
            assert_eq!(f.view().points(), o.view().points());
            assert_eq!(f.view().owners(), o.view().owners());
            for &h in input.probes.iter().take(32) {
                assert_eq!(f.view().lookup(h), o.lookup(h));
            }
        }
        // The fixed ring may run out of room where the owned one does not.
        (Ok(o), Err(_)) => assert!(o.len() > 512 || o.endpoints() > 512),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (Err(e), Ok(_)) => panic!("owned failed ({e}) where fixed built"),
    }
});
