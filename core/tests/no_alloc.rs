//! The pick path allocates nothing: a counting global allocator watches picks, guards,
//! completions and ring lookups.

// A global allocator can only be written with `unsafe`; the library itself forbids it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use pickwise::{
    hash, hashing::total_weight, EndpointState, HashPolicy, InFlight, Outcome, P2c, Policy, Pool, PoolConfig,
    Ring, RingConfig, RingPicker, SplitMix64,
};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn picks_completions_and_lookups_allocate_nothing() {
    let states: Vec<EndpointState> = (0..1000).map(|i| EndpointState::new(1 + i % 3)).collect();
    let hosts: Vec<(String, u32)> = (0..1000)
        .map(|i| (format!("10.0.{}.{}:80", i / 256, i % 256), 1))
        .collect();
    let ring = Ring::build(&hosts, &RingConfig::native(100)).unwrap();
    let tw = total_weight(&states);
    let keys: Vec<[u8; 16]> = (0..64u64)
        .map(|i| {
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .to_le_bytes()
                .repeat(2)
                .try_into()
                .unwrap()
        })
        .collect();
    for policy in [Policy::LeastRequest, Policy::PeakEwma, Policy::GoZero] {
        let pool = Pool::new(PoolConfig {
            policy,
            track_total: true,
            ..Default::default()
        });
        pool.set_endpoints(states.len());
        let mut rng = SplitMix64::new(9);
        let before = ALLOCS.load(Ordering::SeqCst);
        let mut now = 0u64;
        for round in 0..10_000u64 {
            now += 1_000;
            let i = P2c::new(&states, &pool).pick(now, &mut rng).unwrap();
            let mut g = InFlight::start(&states[i], &pool, now);
            if round % 5 == 0 {
                g.responded(now + 100_000); // a stream: latency at headers
            }
            if round % 3 == 0 {
                drop(g); // cancelled
            } else {
                let _ = g.complete(
                    now + 500_000,
                    if round % 7 == 0 {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    },
                );
            }
            let key = &keys[(round % 64) as usize];
            let _ = ring.lookup(hash::native(key));
            let picker = RingPicker::new(ring.view(), &states, &pool, tw);
            for p in [
                HashPolicy::Plain,
                HashPolicy::Bounded { factor_percent: 125 },
                HashPolicy::Affinity { ratio: 2.0 },
            ] {
                let j = picker.pick(now, hash::native(key), p).unwrap();
                drop(InFlight::start(&states[j], &pool, now));
            }
        }
        // The shared picker, every policy.
        let cursor = std::sync::atomic::AtomicU32::new(0);
        for lb in [
            pickwise::LbPolicy::P2c(policy),
            pickwise::LbPolicy::RoundRobin,
            pickwise::LbPolicy::RingHash {
                ring: RingConfig::native(100),
                load: HashPolicy::Bounded { factor_percent: 125 },
                no_key: pickwise::NoKey::RandomHash,
            },
        ] {
            let picker = pickwise::Picker::new(&lb, &states, &pool)
                .with_ring(ring.view(), tw)
                .with_cursor(&cursor);
            for k in 0..100u64 {
                let e = picker.pick(now, (k % 2 == 0).then_some(k), &mut rng).unwrap();
                drop(InFlight::start(e, &pool, now));
            }
        }
        // The uniform fallback: most endpoints down, so the random draws miss and the scan runs.
        for e in states.iter().skip(3) {
            e.set_ready(false);
        }
        for _ in 0..1_000 {
            let i = P2c::new(&states, &pool).pick(now, &mut rng).unwrap();
            drop(InFlight::start(&states[i], &pool, now));
        }
        for e in &states {
            e.set_ready(true);
        }
        pool.sweep(now, &states);
        assert_eq!(ALLOCS.load(Ordering::SeqCst) - before, 0, "{policy:?} allocated");
    }
    assert!(states.iter().all(|e| e.in_flight() == 0));
    subsets_into_caller_storage_allocate_nothing();
    prepared_pickers_allocate_nothing();
}

/// The core balancer's published picker: localities with weighted round robin, P2C, ring hash
/// (gRFC A61 owner check), the locality scheduler and report-weighted round robin (gRFC A58); building it allocates, picking does not.
fn prepared_pickers_allocate_nothing() {
    use pickwise::balancer::{Balancer, BalancerConfig, Connectivity, EndpointSpec};
    use std::sync::Arc;
    for lb in [
        pickwise::LbPolicy::RoundRobin,
        pickwise::LbPolicy::P2c(Policy::PeakEwma),
        pickwise::LbPolicy::from_name("ring_hash_experimental").unwrap(),
        pickwise::LbPolicy::WeightedRoundRobin(pickwise::wrr::WrrConfig {
            blackout_ns: 0,
            ..Default::default()
        }),
        pickwise::LbPolicy::Prequal(Default::default()),
    ] {
        let pool = Arc::new(Pool::new(PoolConfig::default()));
        let mut b: Balancer<String, Arc<EndpointState>> =
            Balancer::new(BalancerConfig::new(lb), pool.clone());
        for i in 0..60u32 {
            let spec = EndpointSpec {
                weight: 1 + i % 4,
                locality: i % 3,
                locality_weight: 1 + i % 3,
                ..EndpointSpec::default()
            };
            let key = format!("10.2.0.{i}:80");
            b.insert(0, key.clone(), spec, Arc::new(EndpointState::new(1)));
            let state = if i % 7 == 0 {
                Connectivity::TransientFailure
            } else {
                Connectivity::Ready
            };
            b.handle_connectivity(0, &key, state);
            let report = pickwise::wrr::LoadReport {
                cpu_utilization: 0.5,
                qps: f64::from(10 + i),
                ..Default::default()
            };
            b.get(&key).unwrap().report_load(1, &report);
        }
        let picker = b.picker(1, 42);
        let mut rng = SplitMix64::new(4);
        let before = ALLOCS.load(Ordering::SeqCst);
        let mut targets = [0usize; 4];
        for k in 0..10_000u64 {
            let e = picker
                .pick(k, (k % 2 == 0).then_some(k.wrapping_mul(0x9e37_79b9)), &mut rng)
                .unwrap();
            drop(InFlight::start(&**e, &*pool, k));
            // Prequal's probe side (the prober task's calls) allocates nothing either.
            let n = picker.probe_targets(k, &mut rng, &mut targets);
            for &t in &targets[..n] {
                let report = pickwise::prequal::ProbeReport {
                    rif: (k % 7) as u32,
                    latency_us: 100 + t as u32,
                };
                picker.record_probe(&picker.ready()[t], report, k, &mut rng);
            }
        }
        assert_eq!(
            ALLOCS.load(Ordering::SeqCst) - before,
            0,
            "{lb:?}: Prepared::pick allocated"
        );
    }
}

/// Called from the test above: the allocation counter is global, so the checks run one after
/// the other in one test.
fn subsets_into_caller_storage_allocate_nothing() {
    use pickwise::subset::{Client, Member, Scratch, Subsetting};
    let keys: Vec<String> = (0..500)
        .map(|i| format!("10.1.{}.{}:80", i / 256, i % 256))
        .collect();
    let (mut h, mut o) = (vec![0u64; 500], vec![0u32; 500]);
    let mut out = vec![
        Member {
            backend: 0,
            weight: 0.0
        };
        500
    ];
    let before = ALLOCS.load(Ordering::SeqCst);
    for s in [
        Subsetting::Random { subset_size: 12 },
        Subsetting::Deterministic { subset_size: 12 },
        Subsetting::Aperture { min_aperture: 12 },
    ] {
        for index in 0..50 {
            let c = Client::Index { index, count: 50 };
            let n = s
                .subset_ready_into(
                    c,
                    &keys,
                    Scratch {
                        hashes: &mut h,
                        order: &mut o,
                    },
                    &mut out,
                    |b| b % 3 != 0,
                    10,
                )
                .unwrap();
            assert!(n >= 10);
        }
    }
    assert_eq!(ALLOCS.load(Ordering::SeqCst) - before, 0, "subset_into allocated");
}
