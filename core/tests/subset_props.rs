//! Property tests of the subsetters: deterministic, order-independent, sized as configured,
//! covering, even (aperture), minimal disruption (random), growth under failures, and the
//! allocation-free variant equal to the owned one.

use std::collections::{BTreeMap, BTreeSet};

use pickwise::subset::{Client, Member, Scratch, Subsetting};
use proptest::prelude::*;

fn keys(n: usize, salt: u32) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{salt}.{}.{}:8080", i / 250, i % 250))
        .collect()
}

fn strategy() -> impl Strategy<Value = Subsetting> {
    prop_oneof![
        (1u32..40).prop_map(|subset_size| Subsetting::Random { subset_size }),
        (1u32..40).prop_map(|subset_size| Subsetting::Deterministic { subset_size }),
        (1u32..40).prop_map(|min_aperture| Subsetting::Aperture { min_aperture }),
    ]
}

fn client() -> impl Strategy<Value = Client> {
    prop_oneof![
        (0u32..5000, 1u32..5000).prop_map(|(index, count)| Client::Index { index, count }),
        (any::<u64>(), 1u32..5000).prop_map(|(id, count)| Client::Stable { id, count }),
    ]
}

/// The subset as (key, weight), sorted by key.
fn named(members: &[Member], keys: &[String]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = members
        .iter()
        .map(|m| (keys[m.backend as usize].clone(), (m.weight * 1e9).round() as u64))
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Same inputs, same subset; any input order, same subset; the borrowed-storage variant
    /// equals the owned one; sizes are as configured; weights are in (0, 1].
    #[test]
    fn deterministic_order_independent_sized(s in strategy(), c in client(), n in 1usize..300, perm in any::<u64>()) {
        let ks = keys(n, 1);
        let a = s.subset(c, &ks).unwrap();
        prop_assert_eq!(&a, &s.subset(c, &ks).unwrap());
        // Shuffled input.
        let mut shuffled = ks.clone();
        let mut r = perm;
        for i in (1..n).rev() {
            r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (r >> 33) as usize % (i + 1));
        }
        let b = s.subset(c, &shuffled).unwrap();
        prop_assert_eq!(named(&a, &ks), named(&b, &shuffled));
        // Allocation-free.
        let (mut h, mut o) = (vec![0u64; n], vec![0u32; n]);
        let mut out = vec![Member { backend: 0, weight: 0.0 }; n];
        let len = s.subset_into(c, &ks, Scratch { hashes: &mut h, order: &mut o }, &mut out).unwrap();
        prop_assert_eq!(&out[..len], &a[..]);
        // Sizes and weights.
        prop_assert!(a.iter().all(|m| m.weight > 0.0 && m.weight <= 1.0 + 1e-12));
        let distinct: BTreeSet<u32> = a.iter().map(|m| m.backend).collect();
        prop_assert_eq!(distinct.len(), a.len());
        match s {
            Subsetting::Random { subset_size } | Subsetting::Deterministic { subset_size } => {
                prop_assert_eq!(a.len(), (subset_size as usize).min(n));
            }
            Subsetting::Aperture { min_aperture } => {
                let covered: f64 = a.iter().map(|m| m.weight).sum();
                let count = u64::from(c.count());
                let units = (u64::from(min_aperture).min(n as u64) * count).div_ceil(n as u64);
                let want = (units as f64 * n as f64 / count as f64).min(n as f64);
                prop_assert!((covered - want).abs() < 1e-6, "covered {} want {}", covered, want);
                prop_assert!(covered >= f64::from(min_aperture).min(n as f64) - 1e-9);
            }
        }
    }

    /// Aperture: every backend is covered, and its summed weight over all clients is exactly
    /// `N = ceil(aperture * clients / backends)`: even load at equal client rates.
    #[test]
    fn aperture_covers_everything_evenly(clients in 1u32..300, n in 1usize..200, aperture in 1u32..20) {
        let ks = keys(n, 2);
        let s = Subsetting::Aperture { min_aperture: aperture };
        let mut sum = vec![0.0f64; n];
        for index in 0..clients {
            for m in s.subset(Client::Index { index, count: clients }, &ks).unwrap() {
                sum[m.backend as usize] += m.weight;
            }
        }
        let want = (u64::from(aperture.min(n as u32)) * u64::from(clients)).div_ceil(n as u64) as f64;
        let want = want.min(f64::from(clients));
        for (b, w) in sum.iter().enumerate() {
            prop_assert!((w - want).abs() < 1e-6, "backend {} has {} want {}", b, w, want);
        }
    }

    /// Deterministic subsetting: within a round every backend serves at most one client, and
    /// when the subset size divides the backends and a full round exists, every backend is used.
    #[test]
    fn deterministic_rounds_are_disjoint(k in 1u32..20, rounds in 1u32..4, n in 1usize..200) {
        let ks = keys(n, 3);
        let s = Subsetting::Deterministic { subset_size: k };
        let per_round = (n / (k as usize).min(n)).max(1) as u32;
        let clients = per_round * rounds;
        let mut used: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for index in 0..clients {
            let round = index / per_round;
            for m in s.subset(Client::Index { index, count: clients }, &ks).unwrap() {
                prop_assert!(used.entry(round).or_default().insert(m.backend), "backend reused in a round");
            }
        }
        if n % (k as usize).min(n) == 0 {
            for set in used.values() {
                prop_assert_eq!(set.len(), n);
            }
        }
    }

    /// Random subsetting (rendezvous hashing): adding one backend changes a client's subset by
    /// at most one backend, and removing one by at most one.
    #[test]
    fn random_minimal_disruption(k in 1u32..30, n in 2usize..200, seed in any::<u64>()) {
        let ks = keys(n, 4);
        let s = Subsetting::Random { subset_size: k };
        let c = Client::Stable { id: seed, count: 100 };
        let before: BTreeSet<String> = named(&s.subset(c, &ks).unwrap(), &ks).into_iter().map(|x| x.0).collect();
        let mut more = ks.clone();
        more.push("10.99.0.1:8080".into());
        let after: BTreeSet<String> = named(&s.subset(c, &more).unwrap(), &more).into_iter().map(|x| x.0).collect();
        prop_assert!(before.difference(&after).count() <= 1);
        prop_assert!(after.difference(&before).count() <= 1);
        let fewer = &ks[1..];
        let after: BTreeSet<String> = named(&s.subset(c, fewer).unwrap(), fewer).into_iter().map(|x| x.0).collect();
        prop_assert!(before.difference(&after).count() <= 1);
        prop_assert!(after.difference(&before).count() <= 1);
    }

    /// Growth: with backends down, the subset widens until it holds `min_ready` ready ones.
    #[test]
    fn grows_until_enough_are_ready(s in strategy(), c in client(), n in 1usize..200, down_mask in any::<u64>(), min_ready in 0u32..20) {
        let ks = keys(n, 5);
        let ready = |b: u32| (down_mask >> (b % 64)) & 1 == 0;
        let (mut h, mut o) = (vec![0u64; n], vec![0u32; n]);
        let mut out = vec![Member { backend: 0, weight: 0.0 }; n];
        let len = s.subset_ready_into(c, &ks, Scratch { hashes: &mut h, order: &mut o }, &mut out, ready, min_ready).unwrap();
        let ready_in = out[..len].iter().filter(|m| ready(m.backend)).count() as u32;
        let ready_all = (0..n as u32).filter(|&b| ready(b)).count() as u32;
        prop_assert!(ready_in >= min_ready.min(ready_all), "{} ready of {} wanted", ready_in, min_ready);
        // Never smaller than without growth.
        let plain = s.subset(c, &ks).unwrap();
        prop_assert!(len >= plain.len());
    }
}

#[test]
fn errors_not_panics() {
    use pickwise::subset::SubsetError;
    let none: [&str; 0] = [];
    let c = Client::Index { index: 0, count: 1 };
    assert_eq!(
        Subsetting::Random { subset_size: 3 }.subset(c, &none),
        Err(SubsetError::Empty)
    );
    assert_eq!(
        Subsetting::Aperture { min_aperture: 0 }.subset(c, &["a"]),
        Err(SubsetError::ZeroSize)
    );
    let (mut h, mut o) = ([0u64; 1], [0u32; 1]);
    let mut out = [Member {
        backend: 0,
        weight: 0.0,
    }; 1];
    let r = Subsetting::Random { subset_size: 1 }.subset_into(
        c,
        &["a", "b"],
        Scratch {
            hashes: &mut h,
            order: &mut o,
        },
        &mut out,
    );
    assert!(matches!(r, Err(SubsetError::Capacity { .. })));
    // count 0 is treated as 1; a huge index wraps.
    assert!(Subsetting::Aperture { min_aperture: 2 }
        .subset(
            Client::Index {
                index: u32::MAX,
                count: 0
            },
            &["a", "b", "c"]
        )
        .is_ok());
}
