//! xDS resource validation on arbitrary bytes: the first byte picks the type (LDS, RDS, CDS,
//! EDS), the rest is the resource's protobuf. Must return a typed error or a resource, never
//! panic. A valid resource round-trips: decode -> encode -> decode gives the same message, and
//! the re-encoded bytes validate to the same resource (validation depends on the message, not
//! on how its bytes happened to be laid out: field order, unknown fields, repeated scalars).
#![no_main]

use envoy_types::pb::envoy::config as c;
use libfuzzer_sys::fuzz_target;
use pickwise_xds::resource::{decode_bytes, ResourceType};
use prost::Message;

/// Decodes `bytes` as `M`, encodes it, and checks the re-encoded bytes decode to the same `M`.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Vec<u8> {
    let first = M::decode(bytes).expect("validation decoded it, so it decodes");
    let encoded = first.encode_to_vec();
    let again = M::decode(encoded.as_slice()).expect("prost decodes what it encoded");
    assert_eq!(first, again, "decode -> encode -> decode changed the message");
    encoded
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let ty = ResourceType::ALL[usize::from(kind) % 4];
    let Ok(valid) = decode_bytes(ty, bytes) else {
        return;
    };
    let encoded = match ty {
        ResourceType::Listener => round_trip::<c::listener::v3::Listener>(bytes),
        ResourceType::RouteConfiguration => round_trip::<c::route::v3::RouteConfiguration>(bytes),
        ResourceType::Cluster => round_trip::<c::cluster::v3::Cluster>(bytes),
        ResourceType::ClusterLoadAssignment => round_trip::<c::endpoint::v3::ClusterLoadAssignment>(bytes),
    };
    let again = decode_bytes(ty, &encoded).expect("a valid resource stays valid re-encoded");
    assert_eq!(valid, again, "re-encoding changed what the resource validates to");
});
