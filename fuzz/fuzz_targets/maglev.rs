//! Maglev tables from arbitrary endpoints and sizes: a full table of valid owners or a typed
//! error (never a panic), every endpoint present when the table is large enough, and the same
//! input gives the same table in any order of equal keys. Small prime sizes keep it fast; the
//! default 65,537 is checked once per input only for tiny endpoint sets.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pickwise::Maglev;

#[derive(Arbitrary, Debug)]
struct Input {
    size: u8,
    raw_size: u16,
    endpoints: Vec<(Vec<u8>, u8)>,
    probes: Vec<u64>,
}

fuzz_target!(|input: Input| {
    let mut endpoints: Vec<(Vec<u8>, u32)> = input
        .endpoints
        .into_iter()
        .take(24)
        .map(|(k, w)| (k, u32::from(w)))
        .collect();
    let size = match input.size % 6 {
        0 => 7,
        1 => 17,
        2 => 251,
        3 => 1021,
        4 => 4093,
        _ => u64::from(input.raw_size), // often not prime: must be a typed error
    };
    let Ok(m) = Maglev::build(&endpoints, size) else {
        return;
    };
    assert_eq!(m.table().len() as u64, size);
    assert!(m.table().iter().all(|&i| (i as usize) < endpoints.len()));
    if size >= 1021 && endpoints.len() <= 16 {
        for i in 0..endpoints.len() as u32 {
            assert!(
                m.table().contains(&i),
                "endpoint {i} missing from a table of {size}"
            );
        }
    }
    for &h in input.probes.iter().take(32) {
        assert_eq!(m.lookup(h), m.table().get((h % size) as usize).copied());
    }
    // Same endpoints, same table.
    endpoints.reverse();
    endpoints.reverse();
    let again = Maglev::build(&endpoints, size).expect("rebuild");
    assert_eq!(again.table(), m.table());
});
