//! Golden vectors from Envoy's `ring_hash_lb_test.cc` and grpc-go's `ringhash` package
//! (see `shared/reliability.md` §2): the same ring, point for point, and the same lookups.

use pickwise::{hash, Ring, RingConfig};

fn hosts(ports: &[(u16, u32)]) -> Vec<(String, u32)> {
    ports
        .iter()
        .map(|&(p, w)| (format!("127.0.0.1:{p}"), w))
        .collect()
}

fn dump(ring: &Ring) -> Vec<(u64, String)> {
    let v = ring.view();
    v.points()
        .iter()
        .zip(v.owners())
        .map(|(&p, &o)| (p, String::from_utf8(ring.key(o).unwrap().to_vec()).unwrap()))
        .collect()
}

fn owner(ring: &Ring, h: u64) -> String {
    String::from_utf8(ring.key(ring.lookup(h).unwrap()).unwrap().to_vec()).unwrap()
}

fn envoy_basic() -> Ring {
    let hs = hosts(&[(90, 1), (91, 1), (92, 1), (93, 1), (94, 1), (95, 1)]);
    Ring::build(&hs, &RingConfig::envoy().with_min_ring_size(12)).unwrap()
}

#[test]
fn envoy_basic_ring() {
    let ring = envoy_basic();
    let expected: [(u64, &str); 12] = [
        (833437586790550860, ":94"),
        (928266305478181108, ":92"),
        (1033482794131418490, ":90"),
        (3551244743356806947, ":95"),
        (3851675632748031481, ":93"),
        (5583722120771150861, ":91"),
        (6311230543546372928, ":91"),
        (7700377290971790572, ":93"),
        (13144177310400110813, ":95"),
        (13444792449719432967, ":92"),
        (15516499411664133160, ":94"),
        (16117243373044804889, ":90"),
    ];
    let got = dump(&ring);
    assert_eq!(got.len(), 12);
    for ((p, host), (ep, eh)) in got.iter().zip(expected) {
        assert_eq!(*p, ep);
        assert_eq!(host, &format!("127.0.0.1{eh}"));
    }
}

#[test]
fn envoy_basic_lookups() {
    let ring = envoy_basic();
    assert_eq!(owner(&ring, 0), "127.0.0.1:94");
    assert_eq!(owner(&ring, u64::MAX), "127.0.0.1:94");
    assert_eq!(owner(&ring, 3551244743356806947), "127.0.0.1:95");
    assert_eq!(owner(&ring, 3551244743356806948), "127.0.0.1:93");
    assert_eq!(owner(&ring, 16117243373044804880), "127.0.0.1:90");
}

#[test]
fn envoy_basic_retry_walk() {
    // BasicWithRetryHostPredicate, key 0: accept all -> :94; reject :94 -> :92.
    let ring = envoy_basic();
    let key = |o: u32| String::from_utf8(ring.key(o).unwrap().to_vec()).unwrap();
    assert_eq!(key(ring.find(0, |_| true).unwrap()), "127.0.0.1:94");
    assert_eq!(
        key(ring.find(0, |o| key(o) != "127.0.0.1:94").unwrap()),
        "127.0.0.1:92"
    );
    assert_eq!(ring.find(0, |_| false), None);
}

#[test]
fn envoy_basic_with_hostname() {
    let hs: Vec<(String, u32)> = (90..=95).map(|p| (p.to_string(), 1)).collect();
    let ring = Ring::build(&hs, &RingConfig::envoy().with_min_ring_size(12)).unwrap();
    let expected: [(u64, &str); 12] = [
        (1975508444536362413, "95"),
        (2376063919839173711, "95"),
        (2386806903309390596, "93"),
        (6749904478991551885, "94"),
        (6803900775736438537, "93"),
        (7225015537174310577, "92"),
        (8787465352164086522, "90"),
        (11282020843382717940, "92"),
        (13723418369486627818, "91"),
        (13776502110861797421, "90"),
        (14338313586354474791, "91"),
        (15364271037087512980, "94"),
    ];
    let got = dump(&ring);
    assert_eq!(got, expected.map(|(p, h)| (p, h.to_string())).to_vec());
}

#[test]
fn envoy_uneven_hosts() {
    let ring = Ring::build(
        &hosts(&[(80, 1), (81, 1)]),
        &RingConfig::envoy().with_min_ring_size(3),
    )
    .unwrap();
    let points: Vec<u64> = ring.view().points().to_vec();
    assert_eq!(
        points,
        [
            5454692015285649509,
            7859399908942313493,
            13838424394637650569,
            16064866803292627174
        ]
    );
    assert_eq!(owner(&ring, 0), "127.0.0.1:80");
    let ring = Ring::build(
        &hosts(&[(81, 1), (82, 1)]),
        &RingConfig::envoy().with_min_ring_size(3),
    )
    .unwrap();
    let points: Vec<u64> = ring.view().points().to_vec();
    assert!(points.contains(&8241336090459785962) && points.contains(&12882406409176325258));
    assert_eq!(owner(&ring, 0), "127.0.0.1:81");
}

#[test]
fn envoy_host_weighted_tiny_ring() {
    let ring = Ring::build(
        &hosts(&[(90, 1), (91, 2), (92, 3)]),
        &RingConfig::envoy().with_min_ring_size(6),
    )
    .unwrap();
    let expected = [
        (928266305478181108, "127.0.0.1:92"),
        (4443673547860492590, "127.0.0.1:92"),
        (5583722120771150861, "127.0.0.1:91"),
        (6311230543546372928, "127.0.0.1:91"),
        (13444792449719432967, "127.0.0.1:92"),
        (16117243373044804889, "127.0.0.1:90"),
    ];
    assert_eq!(dump(&ring), expected.map(|(p, h)| (p, h.to_string())).to_vec());
}

#[test]
fn envoy_weighted_distribution() {
    // HostWeightedLargeRing: weights 1,2,3, ring 6144, 6000 evenly spaced probes -> 987/1932/3081.
    let ring = Ring::build(
        &hosts(&[(90, 1), (91, 2), (92, 3)]),
        &RingConfig::envoy().with_min_ring_size(6144),
    )
    .unwrap();
    assert_eq!(ring.len(), 6144);
    let mut counts = [0; 3];
    for i in 0..6000u64 {
        counts[ring.lookup(i * (u64::MAX / 6000)).unwrap() as usize] += 1;
    }
    assert_eq!(counts, [987, 1932, 3081]);
}

#[test]
fn envoy_two_hosts_odd_ring() {
    // 2 hosts, ring 1023 (511/512 points), probes i * (MAX / 1023) -> 526/497.
    let cfg = RingConfig::envoy()
        .with_min_ring_size(1023)
        .with_max_ring_size(1023);
    let ring = Ring::build(&hosts(&[(90, 1), (91, 1)]), &cfg).unwrap();
    assert_eq!(ring.len(), 1023);
    let mut counts = [0; 2];
    for i in 0..1023u64 {
        counts[ring.lookup(i * (u64::MAX / 1023)).unwrap() as usize] += 1;
    }
    assert_eq!(counts, [526, 497]);
}

#[test]
fn grpc_weighted_ring_sorted_by_key() {
    // {a:3, b:3, c:4}, size 10, today's (gRFC A61) point names "<key>_<i>".
    let cfg = RingConfig::grpc().with_min_ring_size(10).with_max_ring_size(10);
    let ring = Ring::build(&[("c", 4), ("a", 3), ("b", 3)], &cfg).unwrap();
    let expected = [
        (4148279810343392165, "a"),
        (4189641231046734040, "b"),
        (5051629784258667479, "c"),
        (5637671355026233228, "b"),
        (6560897439782492108, "b"),
        (7866922100246443948, "a"),
        (8142612688290817183, "c"),
        (14554126711339088812, "c"),
        (14801583559950740418, "c"),
        (18017992814255492179, "a"),
    ];
    assert_eq!(dump(&ring), expected.map(|(p, h)| (p, h.to_string())).to_vec());
}

#[test]
fn grpc_default_ring_sizes() {
    let three = Ring::build(&[("a", 1), ("b", 1), ("c", 1)], &RingConfig::grpc()).unwrap();
    assert_eq!(three.len(), 1026);
    let lopsided = Ring::build(&[("a", 1), ("b", 1000)], &RingConfig::grpc()).unwrap();
    assert_eq!(lopsided.len(), 2002);
}

#[test]
fn grpc_equals_envoy_basic_when_sizes_match() {
    let hs = hosts(&[(95, 1), (90, 1), (93, 1), (91, 1), (94, 1), (92, 1)]);
    let cfg = RingConfig::grpc().with_min_ring_size(12).with_max_ring_size(12);
    let grpc = Ring::build(&hs, &cfg).unwrap();
    assert_eq!(dump(&grpc), dump(&envoy_basic()));
}

#[test]
fn grpc_header_of_address_zero_reaches_that_address() {
    // grpc-go e2e: a request hash key "<address>_0" lands exactly on that endpoint's first point.
    let hs: Vec<(String, u32)> = (0..8).map(|i| (format!("127.0.0.1:{}", 5000 + i), 1)).collect();
    let ring = Ring::build(&hs, &RingConfig::grpc()).unwrap();
    for (i, (addr, _)) in hs.iter().enumerate() {
        let h = hash::xxh64(format!("{addr}_0").as_bytes());
        assert_eq!(ring.lookup(h), Some(i as u32));
    }
}

#[test]
fn a76_request_hash_vectors() {
    assert_eq!(hash::xxh64(b""), 17241709254077376921);
    assert_eq!(hash::xxh64(b"some-value"), 1094076000777946959);
    assert_eq!(
        hash::xxh64_joined([&b"value1"[..], b"value2"]),
        7597366331508923242
    );
}
