//! Subsetters over arbitrary backend lists and client identities: a subset or a typed error,
//! never a panic; members distinct and in range, weights in (0, 1], sizes as configured, growth
//! never shrinks a subset, and the allocation-free variant equals the owned one.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pickwise::subset::{Client, Member, Scratch, Subsetting};

#[derive(Arbitrary, Debug)]
struct Input {
    kind: u8,
    size: u8,
    stable: bool,
    index: u32,
    count: u32,
    id: u64,
    backends: Vec<Vec<u8>>,
    down: u64,
    min_ready: u8,
}

fuzz_target!(|input: Input| {
    let mut backends = input.backends;
    backends.truncate(300);
    let size = u32::from(input.size % 40);
    let s = match input.kind % 3 {
        0 => Subsetting::Random { subset_size: size },
        1 => Subsetting::Deterministic { subset_size: size },
        _ => Subsetting::Aperture { min_aperture: size },
    };
    let client = if input.stable {
        Client::Stable {
            id: input.id,
            count: input.count % 100_000,
        }
    } else {
        Client::Index {
            index: input.index,
            count: input.count % 100_000,
        }
    };
    let Ok(owned) = s.subset(client, &backends) else {
        assert!(backends.is_empty() || size == 0);
        return;
    };
    let n = backends.len();
    let mut seen = vec![false; n];
    for m in &owned {
        assert!((m.backend as usize) < n);
        assert!(
            !std::mem::replace(&mut seen[m.backend as usize], true),
            "duplicate member"
        );
        assert!(m.weight > 0.0 && m.weight <= 1.0 + 1e-9);
    }
    if !matches!(s, Subsetting::Aperture { .. }) {
        assert_eq!(owned.len(), (size as usize).min(n));
    }
    let (mut h, mut o) = (vec![0u64; n], vec![0u32; n]);
    let mut out = vec![
        Member {
            backend: 0,
            weight: 0.0
        };
        n
    ];
    let ready = |b: u32| (input.down >> (b % 64)) & 1 == 0;
    let len = s
        .subset_ready_into(
            client,
            &backends,
            Scratch {
                hashes: &mut h,
                order: &mut o,
            },
            &mut out,
            ready,
            u32::from(input.min_ready),
        )
        .expect("same input as the owned call");
    assert!(len >= owned.len());
    let len0 = s
        .subset_into(
            client,
            &backends,
            Scratch {
                hashes: &mut h,
                order: &mut o,
            },
            &mut out,
        )
        .unwrap();
    assert_eq!(&out[..len0], &owned[..]);
});
