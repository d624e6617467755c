//! xDS resource validation on arbitrary bytes: the first byte picks the type (LDS, RDS, CDS,
//! EDS), the rest is the resource's protobuf. Must return a typed error or a resource, never
//! panic; a valid resource must re-validate to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pickwise_xds::resource::{decode_bytes, ResourceType};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let ty = ResourceType::ALL[usize::from(kind) % 4];
    if let Ok((name, first)) = decode_bytes(ty, bytes) {
        let (again_name, again) = decode_bytes(ty, bytes).expect("deterministic");
        assert_eq!((name, first), (again_name, again));
    }
});
