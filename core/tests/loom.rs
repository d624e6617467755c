//! Exhaustive interleavings (loom) of the ejection protocol: an ejection is published so that no
//! concurrent pick can un-eject it, a late un-ejector never clears a newer ejection, two failures
//! racing to the threshold eject once, removal racing an ejection frees the slot exactly once, and
//! the balancer's interval ejection (gRFC A50) composes with both.
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p pickwise --test loom --release` (CI runs it).
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use pickwise::{EndpointState, InFlight, Outcome, OutlierConfig, Policy, Pool, PoolConfig};

const MS: u64 = 1_000_000;

fn setup() -> (Arc<EndpointState>, Arc<Pool>) {
    setup_with_threshold(1)
}

fn setup_with_threshold(consecutive_failures: u32) -> (Arc<EndpointState>, Arc<Pool>) {
    let pool = Pool::new(PoolConfig {
        policy: Policy::LeastRequest,
        outlier: OutlierConfig {
            consecutive_failures,
            ..OutlierConfig::default()
        },
        ..PoolConfig::default()
    });
    pool.set_endpoints(10);
    (Arc::new(EndpointState::new(1)), Arc::new(pool))
}

fn fail(e: &EndpointState, pool: &Pool, now: u64) -> bool {
    InFlight::start(e, pool, now)
        .complete(now, Outcome::Failure)
        .ejected
}

/// A pick racing a fresh ejection sees it as not yet ejected or as ejected, never as expired.
#[test]
fn a_concurrent_pick_never_unejects_a_fresh_ejection() {
    loom::model(|| {
        let (e, pool) = setup();
        let (e2, pool2) = (e.clone(), pool.clone());
        let ejector = thread::spawn(move || fail(&e2, &pool2, 10_000 * MS));
        let _ = pool.is_available(&e, 10_001 * MS);
        assert!(ejector.join().unwrap());
        assert!(e.is_ejected(10_001 * MS));
        assert_eq!(pool.ejected(), 1);
    });
}

/// Envoy `CrossThreadFailRace`: the streak is one short of the threshold and two failures
/// complete on two threads at once. Both reach the threshold; the endpoint is ejected exactly
/// once (one reporter sees `ejected`, one slot taken).
#[test]
fn two_failures_racing_to_the_threshold_eject_once() {
    loom::model(|| {
        let (e, pool) = setup_with_threshold(2);
        assert!(!fail(&e, &pool, 0));
        // Both in flight before either completes, as in Envoy's test.
        let a = InFlight::start(e.clone(), pool.clone(), MS);
        let b = InFlight::start(e.clone(), pool.clone(), MS);
        let t = thread::spawn(move || a.complete(2 * MS, Outcome::Failure).ejected);
        let here = b.complete(2 * MS, Outcome::Failure).ejected;
        let there = t.join().unwrap();
        assert!(here ^ there, "ejected by both or by neither: {here} {there}");
        assert!(e.is_ejected(2 * MS));
        assert_eq!(pool.ejected(), 1);
    });
}

/// Two un-ejectors of an expired ejection and a new ejection racing them: the count always
/// matches the state (no double release, no newer ejection cleared).
#[test]
fn late_unejection_never_clears_a_newer_ejection() {
    loom::model(|| {
        let (e, pool) = setup();
        assert!(fail(&e, &pool, 0));
        let now = 31_000 * MS; // the first ejection (30 s) is over
        let (e2, pool2) = (e.clone(), pool.clone());
        let (e3, pool3) = (e.clone(), pool.clone());
        let a = thread::spawn(move || pool2.is_available(&e2, now));
        let b = thread::spawn(move || fail(&e3, &pool3, now));
        let _ = pool.is_available(&e, now);
        a.join().unwrap();
        let ejected_again = b.join().unwrap();
        let out = e.is_ejected(now);
        assert_eq!(pool.ejected(), u32::from(out));
        if ejected_again {
            assert!(out, "a newer ejection was cleared");
        }
    });
}

/// Removal racing an ejection: whichever wins, the slot is free afterwards and the endpoint is
/// not ejected.
#[test]
fn removal_racing_an_ejection_frees_the_slot_once() {
    loom::model(|| {
        let (e, pool) = setup();
        let (e2, pool2) = (e.clone(), pool.clone());
        let ejector = thread::spawn(move || fail(&e2, &pool2, 0));
        pool.remove(&e);
        let _ = ejector.join().unwrap();
        assert_eq!(pool.ejected(), 0);
        assert!(!e.is_ejected(MS));
    });
}

/// The balancer's interval algorithm (gRFC A50, `Pool::eject_outlier`, on the balancer's timer)
/// racing a data-path failure that reaches the consecutive-failure threshold: one ejection,
/// one slot, whichever wins.
#[test]
fn interval_ejection_racing_a_failure_ejection_counts_once() {
    loom::model(|| {
        let (e, pool) = setup();
        let (e2, pool2) = (e.clone(), pool.clone());
        let failure = thread::spawn(move || fail(&e2, &pool2, MS));
        let by_interval = pool.eject_outlier(&e, MS);
        let by_failure = failure.join().unwrap();
        assert!(
            by_interval ^ by_failure,
            "ejected twice or never: {by_interval} {by_failure}"
        );
        assert!(e.is_ejected(2 * MS));
        assert_eq!(pool.ejected(), 1);
    });
}

/// An interval ejection racing removal (the balancer applies a discovery removal while a sweep
/// runs on another thread): the slot is freed exactly once and nothing stays ejected.
#[test]
fn interval_ejection_racing_removal_frees_the_slot_once() {
    loom::model(|| {
        let (e, pool) = setup();
        let (e2, pool2) = (e.clone(), pool.clone());
        let ejector = thread::spawn(move || pool2.eject_outlier(&e2, MS));
        pool.remove(&e);
        let _ = ejector.join().unwrap();
        assert_eq!(pool.ejected(), 0);
        assert!(!e.is_ejected(2 * MS));
    });
}

/// A clock-free keyed pick (nothing was ejected when it looked) racing an ejection never clears
/// that ejection and never counts a slot wrong.
#[test]
fn a_clock_free_pick_never_unejects() {
    use pickwise::{HashPolicy, LbPolicy, NoKey, Picker, Ring, RingConfig, SplitMix64};
    loom::model(|| {
        let (e, pool) = setup();
        let other = Arc::new(EndpointState::new(1));
        let (e2, pool2) = (e.clone(), pool.clone());
        let ejector = thread::spawn(move || fail(&e2, &pool2, 10_000 * MS));
        let ring = Ring::build(&[("a", 1), ("b", 1)], &RingConfig::native(4)).unwrap();
        let members = [e.clone(), other.clone()];
        let policy = LbPolicy::RingHash {
            ring: RingConfig::native(4),
            load: HashPolicy::Plain,
            no_key: NoKey::P2c,
        };
        let picker = Picker::new(&policy, &members, &pool).with_ring(ring.view(), 2);
        let _ = picker.pick_with_clock(|| 10_001 * MS, Some(7), &mut SplitMix64::new(1));
        assert!(ejector.join().unwrap());
        assert!(e.is_ejected(10_001 * MS));
        assert_eq!(pool.ejected(), 1);
    });
}

/// Prequal's probe pool: an answer replacing another is never read half old, half new (the
/// slot's seqlock), and two picks racing to use an answer with one use left remove it once.
#[test]
fn a_probe_answer_is_read_whole() {
    use pickwise::prequal::{PrequalConfig, ProbePool, ProbeReport};
    use pickwise::SplitMix64;
    loom::model(|| {
        let probes = Arc::new(ProbePool::new(PrequalConfig {
            pool_size: 1,
            ..PrequalConfig::default()
        }));
        let e = Arc::new(EndpointState::new(1));
        let old = ProbeReport {
            rif: 1,
            latency_us: 100,
        };
        let new = ProbeReport {
            rif: 5,
            latency_us: 500,
        };
        probes.record(&e, old, 0, &mut SplitMix64::new(1));
        let (p2, e2) = (probes.clone(), e.clone());
        let writer = thread::spawn(move || p2.record(&e2, new, MS, &mut SplitMix64::new(2)));
        probes.for_each_answer(MS, |r, _| assert!(r == old || r == new, "torn answer {r:?}"));
        writer.join().unwrap();
        let mut seen = 0;
        probes.for_each_answer(MS, |r, _| {
            assert_eq!(r, new);
            seen += 1;
        });
        assert_eq!(seen, 1);
    });
}

/// Two answers recorded at once never share a slot: a slot being written is neither empty nor
/// readable, so the second writer takes another (here: both old answers are replaced, each new
/// answer whole).
#[test]
fn two_answers_recorded_at_once_take_two_slots() {
    use pickwise::prequal::{PrequalConfig, ProbePool, ProbeReport};
    use pickwise::SplitMix64;
    loom::model(|| {
        let probes = Arc::new(ProbePool::new(PrequalConfig {
            pool_size: 2,
            ..PrequalConfig::default()
        }));
        let report = |rif: u32| ProbeReport {
            rif,
            latency_us: rif * 100,
        };
        let (g, h) = (EndpointState::new(1), EndpointState::new(1));
        probes.record(&g, report(1), 0, &mut SplitMix64::new(1));
        probes.record(&h, report(2), MS, &mut SplitMix64::new(1));
        let (e, f) = (Arc::new(EndpointState::new(1)), Arc::new(EndpointState::new(1)));
        let (p2, e2) = (probes.clone(), e.clone());
        let writer = thread::spawn(move || p2.record(&e2, report(5), 2 * MS, &mut SplitMix64::new(2)));
        probes.record(&f, report(7), 2 * MS, &mut SplitMix64::new(3));
        writer.join().unwrap();
        let mut seen = Vec::new();
        probes.for_each_answer(2 * MS, |r, _| seen.push(r.rif));
        seen.sort_unstable();
        assert_eq!(seen, [5, 7]);
    });
}
