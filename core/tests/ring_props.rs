//! Property tests of the ring against naive models.

use pickwise::{FixedRing, Mode, Ring, RingConfig, RingView};
use proptest::prelude::*;

/// Linear-scan oracle: the owner of the first point >= h, else of the first point.
fn oracle(view: &RingView<'_>, h: u64) -> Option<u32> {
    let (p, o) = (view.points(), view.owners());
    p.iter()
        .position(|&x| x >= h)
        .or((!p.is_empty()).then_some(0))
        .map(|i| o[i])
}

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256))
        .collect()
}

fn mode() -> impl Strategy<Value = RingConfig> {
    prop_oneof![
        (1u64..400).prop_map(|min| RingConfig::envoy()
            .with_min_ring_size(min)
            .with_max_ring_size(4096)),
        (1u64..400).prop_map(|min| RingConfig::grpc().with_min_ring_size(min)),
        (1u32..40).prop_map(RingConfig::native),
    ]
}

fn endpoints() -> impl Strategy<Value = Vec<(String, u32)>> {
    prop::collection::vec(prop_oneof![Just(0u32), 1u32..10, Just(u32::MAX)], 1..24)
        .prop_map(|ws| keys(ws.len()).into_iter().zip(ws).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn lookup_equals_linear_scan(cfg in mode(), eps in endpoints(), hashes in prop::collection::vec(any::<u64>(), 64)) {
        let ring = match Ring::build(&eps, &cfg) {
            Ok(r) => r,
            Err(e) => { let too_large = matches!(e, pickwise::RingError::TooLarge { .. }); prop_assert!(too_large); return Ok(()); }
        };
        let v = ring.view();
        prop_assert!(v.points().windows(2).all(|w| w[0] <= w[1]), "points sorted");
        prop_assert!(v.owners().iter().all(|&o| (o as usize) < eps.len()));
        let mut probes = hashes.clone();
        for &p in v.points().iter().take(64) {
            probes.extend([p, p.wrapping_sub(1), p.wrapping_add(1)]);
        }
        probes.extend([0, u64::MAX]);
        for h in probes {
            prop_assert_eq!(ring.lookup(h), oracle(&v, h));
        }
    }

    #[test]
    fn fixed_and_borrowed_storage_match_owned(cfg in mode(), eps in endpoints(), hashes in prop::collection::vec(any::<u64>(), 32)) {
        let Ok(ring) = Ring::build(&eps, &cfg) else { return Ok(()); };
        match FixedRing::<8192>::build(&eps, &cfg) {
            Ok(fixed) => {
                prop_assert_eq!(fixed.view().points(), ring.view().points());
                prop_assert_eq!(fixed.view().owners(), ring.view().owners());
                for &h in &hashes { prop_assert_eq!(fixed.view().lookup(h), ring.lookup(h)); }
            }
            Err(e) => prop_assert!(ring.len() > 8192, "{e}"),
        }
    }

    #[test]
    fn compatible_ring_size_within_bounds(eps in endpoints(), min in 1u64..3000, extra in 0u64..3000) {
        let cfg = RingConfig::envoy().with_min_ring_size(min).with_max_ring_size(min + extra);
        let ring = Ring::build(&eps, &cfg).unwrap();
        // Envoy and grpc-go sum fractions in f64: the running total may overshoot by one point, as theirs does.
        prop_assert!(ring.len() as u64 <= min + extra + 1);
        prop_assert!(ring.len() as u64 >= min.min(min + extra));
    }

    #[test]
    fn grpc_ring_ignores_input_order(eps in endpoints(), seed in any::<u64>()) {
        let a = Ring::build(&eps, &RingConfig::grpc()).unwrap();
        let mut shuffled = eps.clone();
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let b = Ring::build(&shuffled, &RingConfig::grpc()).unwrap();
        prop_assert_eq!(a.view().points(), b.view().points());
        prop_assert_eq!(a.moved_share(&b), 0.0);
    }

    /// Share of hash space is proportional to weight: within 25% (relative) for endpoints with at
    /// least 1000 points (6 standard deviations of the spacing sum), exact point counts in native mode.
    #[test]
    fn share_proportional_to_weight(ws in prop::collection::vec(1u32..5, 2..8)) {
        let eps: Vec<(String, u32)> = keys(ws.len()).into_iter().zip(ws.iter().copied()).collect();
        let ring = Ring::build(&eps, &RingConfig::native(1000)).unwrap();
        let total: u32 = ws.iter().sum();
        for (i, (&w, share)) in ws.iter().zip(ring.ownership()).enumerate() {
            let expected = f64::from(w) / f64::from(total);
            prop_assert!((share / expected - 1.0).abs() < 0.25, "endpoint {} share {} expected {}", i, share, expected);
            prop_assert_eq!(ring.point_counts()[i], u64::from(w) * 1000);
        }
    }

    /// Native mode: removing an endpoint moves only its keys; adding one moves keys only to it.
    #[test]
    fn native_minimal_disruption(eps in endpoints(), victim in any::<prop::sample::Index>(), hashes in prop::collection::vec(any::<u64>(), 256)) {
        let eps: Vec<(String, u32)> = eps.into_iter().map(|(k, w)| (k, w.min(50))).collect();
        let cfg = RingConfig::native(20);
        let before = Ring::build(&eps, &cfg).unwrap();
        let gone = victim.index(eps.len()) as u32;
        let gone_key = before.key(gone).unwrap().to_vec();
        let Ok(after) = before.without_endpoint(&gone_key) else { return Ok(()); };
        let moved = before.moved_share(&after);
        prop_assert!((moved - before.ownership()[gone as usize]).abs() < 1e-9);
        for &h in &hashes {
            let old = before.key(before.lookup(h).unwrap()).unwrap();
            let new = after.key(after.lookup(h).unwrap()).unwrap();
            prop_assert!(old == new || old == &gone_key[..], "a surviving endpoint's key moved");
        }
        // Adding it back moves keys only to it, and restores the original ring.
        let back = after.with_endpoint(&gone_key, eps[gone as usize].1).unwrap();
        for &h in &hashes {
            let was = after.key(after.lookup(h).unwrap()).unwrap();
            let now = back.key(back.lookup(h).unwrap()).unwrap();
            prop_assert!(was == now || now == &gone_key[..]);
        }
        prop_assert_eq!(back.view().points(), before.view().points());
    }

    /// The readiness walk returns the first ready endpoint clockwise, and never a non-ready one.
    #[test]
    fn ready_walk_skips_not_ready(cfg in mode(), eps in endpoints(), ready in prop::collection::vec(any::<bool>(), 24), hashes in prop::collection::vec(any::<u64>(), 32)) {
        let Ok(ring) = Ring::build(&eps, &cfg) else { return Ok(()); };
        let v = ring.view();
        let is_ready = |o: u32| ready[o as usize];
        let present_ready = v.owners().iter().any(|&o| is_ready(o));
        for h in hashes {
            let got = ring.find(h, is_ready);
            match got {
                Some(o) => prop_assert!(is_ready(o)),
                None => prop_assert!(!present_ready),
            }
            // Oracle: scan one lap from the lookup position.
            let start = v.position(h).unwrap();
            let n = v.len();
            let want = (0..n).map(|i| v.owners()[(start + i) % n]).find(|&o| is_ready(o));
            prop_assert_eq!(got, want);
            let (a, b) = v.find_two(h, is_ready);
            prop_assert_eq!(a, want);
            if let (Some(a), Some(b)) = (a, b) { prop_assert!(a != b && is_ready(b)); }
        }
    }

    /// Build never panics on any weights or bounds; errors are typed.
    #[test]
    fn build_never_panics(ws in prop::collection::vec(any::<u32>(), 0..6), min in any::<u64>(), max in any::<u64>(), ppw in any::<u32>(), m in 0u8..3) {
        let eps: Vec<(String, u32)> = keys(ws.len()).into_iter().zip(ws).collect();
        let cfg = match m {
            0 => RingConfig { mode: Mode::Envoy, min_ring_size: min % 20_000, max_ring_size: max % 20_000 },
            1 => RingConfig { mode: Mode::Grpc, min_ring_size: min, max_ring_size: max },
            _ => RingConfig::native(ppw % 64).with_max_ring_size(max % 100_000),
        };
        if let Ok(r) = Ring::build(&eps, &cfg) {
            prop_assert!(!r.is_empty() && r.len() as u64 <= cfg.max_ring_size + 1);
        }
    }
}

#[test]
fn huge_weights_do_not_overflow() {
    // grpc-go once summed u32 weights: {2^31, 2^31} wrapped to 0. Here the ring stays bounded.
    let eps = [("a", 1u32 << 31), ("b", 1 << 31)];
    let r = Ring::build(&eps, &RingConfig::envoy()).unwrap();
    assert_eq!(r.len(), 1024);
    let eps = [("a", u32::MAX), ("b", u32::MAX), ("c", u32::MAX)];
    let r = Ring::build(&eps, &RingConfig::grpc()).unwrap();
    assert_eq!(r.len(), 1026);
    let r = Ring::build(&[("tiny", 1), ("huge", u32::MAX)], &RingConfig::grpc()).unwrap();
    assert!(r.len() <= 4096);
    let err = Ring::build(&[("a", u32::MAX)], &RingConfig::native(100)).unwrap_err();
    assert!(matches!(err, pickwise::RingError::TooLarge { .. }));
}

#[test]
fn ring_smaller_than_endpoint_count_is_legal() {
    // Envoy: 4 hosts, ring of 2 -> two hosts hold no point.
    let cfg = RingConfig::envoy().with_min_ring_size(2).with_max_ring_size(2);
    let r = Ring::build(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)], &cfg).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r.point_counts().iter().filter(|&&c| c == 0).count(), 2);
}

#[test]
fn bad_bounds_are_errors() {
    use pickwise::RingError::*;
    let eps = [("a", 1)];
    assert!(matches!(
        Ring::build(&eps, &RingConfig::envoy().with_min_ring_size(0)),
        Err(InvalidRingSize { .. })
    ));
    assert!(matches!(
        Ring::build(
            &eps,
            &RingConfig::envoy().with_min_ring_size(10).with_max_ring_size(5)
        ),
        Err(InvalidRingSize { .. })
    ));
    assert!(matches!(
        Ring::build(&eps, &RingConfig::envoy().with_max_ring_size(8_388_609)),
        Err(InvalidRingSize { .. })
    ));
    assert!(matches!(
        Ring::build(&eps, &RingConfig::native(0)),
        Err(ZeroPointsPerWeight)
    ));
    assert_eq!(Ring::build::<&str>(&[], &RingConfig::envoy()).unwrap_err(), Empty);
}
