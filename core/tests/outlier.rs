//! Passive outlier detection against Envoy's `outlier_detection_impl.cc` semantics (scenarios
//! ported from `test/common/upstream/outlier_detection_impl_test.cc` and gRFC A50), plus the
//! membership and clock cases the references imply. See `tests/CONFORMANCE.md`.

use pickwise::{EndpointState, InFlight, Outcome, OutlierConfig, Policy, Pool, PoolConfig};

const MS: u64 = 1_000_000;
const S: u64 = 1000 * MS;

fn pool(n: usize, outlier: OutlierConfig) -> Pool {
    let p = Pool::new(PoolConfig {
        policy: Policy::LeastRequest,
        outlier,
        ..PoolConfig::default()
    });
    p.set_endpoints(n);
    p
}

fn fail(e: &EndpointState, pool: &Pool, now: u64) -> bool {
    InFlight::start(e, pool, now)
        .complete(now, Outcome::Failure)
        .ejected
}

fn fail_n(e: &EndpointState, pool: &Pool, now: u64, n: u32) -> bool {
    (0..n).map(|_| fail(e, pool, now)).fold(false, |a, b| a | b)
}

/// Envoy `BasicFlow5xxViaHttpCodes`: the 5th consecutive failure ejects; still out at 29,999 ms,
/// back at 30,001 ms.
#[test]
fn basic_flow_5xx() {
    let p = pool(10, OutlierConfig::default());
    let e = EndpointState::new(1);
    assert!(!fail_n(&e, &p, 0, 4));
    assert!(fail(&e, &p, 0));
    assert!(e.is_ejected(29_999 * MS));
    assert!(!e.is_ejected(30_001 * MS));
    assert_eq!(p.ejected(), 1);
    p.sweep(30_001 * MS, [&e]);
    assert_eq!(p.ejected(), 0);
}

/// Envoy `RemoveWhileEjected`: removing an ejected host frees its slot.
#[test]
fn remove_while_ejected_frees_the_slot() {
    let p = pool(10, OutlierConfig::default());
    let (a, b) = (EndpointState::new(1), EndpointState::new(1));
    assert!(fail_n(&a, &p, 0, 5));
    assert_eq!(p.ejected(), 1);
    p.remove(&a);
    p.set_endpoints(9);
    assert_eq!(p.ejected(), 0);
    p.remove(&a); // idempotent
    assert_eq!(p.ejected(), 0);
    assert!(fail_n(&b, &p, 0, 5), "the freed slot is usable");
}

/// Ejection is bound to membership: requests of a removed endpoint that fail after the removal
/// neither eject it nor take a slot (on the old code this leaked the only slot of a 10-endpoint
/// pool for good).
#[test]
fn removed_endpoints_in_flight_failures_never_eject_or_take_a_slot() {
    let p = pool(10, OutlierConfig::default());
    let (a, b) = (EndpointState::new(1), EndpointState::new(1));
    let guards: Vec<_> = (0..8).map(|_| InFlight::start(&a, &p, 0)).collect();
    p.remove(&a);
    p.set_endpoints(9);
    for g in guards {
        assert!(!g.complete(MS, Outcome::Failure).ejected);
    }
    assert_eq!(p.ejected(), 0);
    assert!(!a.is_ejected(2 * MS));
    assert_eq!(a.in_flight(), 0);
    assert!(fail_n(&b, &p, 2 * MS, 5), "another endpoint can still be ejected");
    assert_eq!(p.ejected(), 1);
}

/// Envoy `unejectHost` resets the consecutive counters: failures that complete while an endpoint
/// is out do not re-eject it on the first failure after it returns.
#[test]
fn streak_resets_when_the_ejection_ends() {
    let p = pool(10, OutlierConfig::default());
    let e = EndpointState::new(1);
    let late: Vec<_> = (0..4).map(|_| InFlight::start(&e, &p, 0)).collect();
    assert!(fail_n(&e, &p, 0, 5));
    for g in late {
        let _ = g.complete(S, Outcome::Failure); // complete while ejected
    }
    assert!(p.is_available(&e, 30_001 * MS));
    assert_eq!(e.consecutive_failures(), 0);
    assert!(
        !fail(&e, &p, 30_002 * MS),
        "one failure after return must not re-eject"
    );
    assert!(!fail_n(&e, &p, 30_002 * MS, 3));
    assert!(fail(&e, &p, 30_002 * MS), "the fifth does");
}

/// Envoy `MaxEjectTime`: the multiplier grows while `multiplier * base < max + base`, the time is
/// `min(base * multiplier, max)`; base 30 s, max 300 s: 30, 60, ... 300 s, then 300 s with the
/// multiplier held at 11.
#[test]
fn ejection_multiplier_is_capped_as_envoy_caps_it() {
    let p = pool(10, OutlierConfig::default());
    let e = EndpointState::new(1);
    let mut now = 0;
    for round in 1..=14u64 {
        assert!(fail_n(&e, &p, now, 5), "round {round}");
        let want = (30 * round).min(300) * 1000;
        assert_eq!(e.ejected_for_ms(now), Some(want as u32), "round {round}");
        assert_eq!(e.ejections(), round.min(11) as u32);
        now += want * MS;
        assert!(p.is_available(&e, now));
    }
}

/// Envoy's interval timer decrements the multiplier once per interval while the host is not
/// ejected (`checkHostForUneject`); with the default 10 s interval, not once per 30 s base time.
#[test]
fn multiplier_decays_once_per_interval_while_healthy() {
    let p = pool(10, OutlierConfig::default());
    let e = EndpointState::new(1);
    let mut now = 0;
    for _ in 0..3 {
        assert!(fail_n(&e, &p, now, 5));
        now += u64::from(e.ejected_for_ms(now).unwrap()) * MS;
        p.sweep(now, [&e]);
    }
    assert_eq!(e.ejections(), 3);
    p.sweep(now + 9_999 * MS, [&e]);
    assert_eq!(e.ejections(), 3);
    p.sweep(now + 10_000 * MS, [&e]);
    assert_eq!(e.ejections(), 2);
    p.sweep(now + 15_000 * MS, [&e]);
    assert_eq!(e.ejections(), 2, "at most once per interval");
    p.sweep(now + 20_000 * MS, [&e]);
    p.sweep(now + 30_000 * MS, [&e]);
    assert_eq!(e.ejections(), 0);
    // Back at the base time.
    assert!(fail_n(&e, &p, now + 31_000 * MS, 5));
    assert_eq!(e.ejected_for_ms(now + 31_000 * MS), Some(30_000));
}

/// Envoy's cap is `floor(n * max_ejection_percent / 100)` (`always_eject_one_host` off by
/// default); gRFC A50 always allows one. Both are available.
#[test]
fn max_ejection_percent_with_and_without_always_eject_one() {
    let envoy = OutlierConfig {
        always_eject_one: false,
        ..OutlierConfig::default()
    };
    let p = pool(4, envoy);
    assert_eq!(p.ejection_cap(), 0);
    let e = EndpointState::new(1);
    assert!(
        !fail_n(&e, &p, 0, 10),
        "Envoy's default ejects nothing below 10 hosts at 10%"
    );
    p.set_endpoints(25);
    assert_eq!(p.ejection_cap(), 2);

    let a50 = pool(4, OutlierConfig::default());
    assert_eq!(a50.ejection_cap(), 1);
    let es: Vec<EndpointState> = (0..4).map(|_| EndpointState::new(1)).collect();
    let ejected = es.iter().filter(|e| fail_n(e, &a50, 0, 5)).count();
    assert_eq!(ejected, 1, "Envoy `Overflow`: the rest overflow");
    a50.set_endpoints(1);
    assert_eq!(a50.ejection_cap(), 0, "a lone endpoint is never ejected");
}

/// An endpoint state un-ejected or removed through a pool that did not eject it never wraps
/// that pool's ejected count (the old code wrapped it to u32::MAX, ejecting everything after).
#[test]
fn foreign_pool_never_wraps_the_ejected_count() {
    let p1 = pool(10, OutlierConfig::default());
    let p2 = pool(10, OutlierConfig::default());
    let e = EndpointState::new(1);
    assert!(fail_n(&e, &p1, 0, 5));
    p2.sweep(31 * S, [&e]);
    assert_eq!(p2.ejected(), 0);
    assert_eq!(p1.ejected(), 1, "p1's slot is p1's to return");
    p2.remove(&e);
    assert_eq!(p2.ejected(), 0);
    assert!(p2.ejection_cap() >= p2.ejected());
}

/// Ejection times of 2^31 ms (24.8 days) and more are exact: a signed 32-bit distance read
/// them as already over.
#[test]
fn ejections_of_two_to_the_31_ms_and_longer() {
    let long = (1u32 << 31) + 5_000;
    let p = pool(
        10,
        OutlierConfig {
            base_ejection_ms: long,
            max_ejection_ms: u32::MAX,
            ..OutlierConfig::default()
        },
    );
    let e = EndpointState::new(1);
    let t0 = 7 * S;
    assert!(fail_n(&e, &p, t0, 5));
    assert_eq!(e.ejected_for_ms(t0), Some(long));
    assert!(e.is_ejected(t0 + u64::from(long - 1) * MS));
    assert!(!p.is_available(&e, t0 + u64::from(long - 1) * MS));
    assert!(p.is_available(&e, t0 + u64::from(long) * MS));
    assert_eq!(p.ejected(), 0);
}

/// An endpoint that was ejected and then not ready (or idle) for weeks is not ejected when it
/// comes back: the old signed 32-bit distance wrapped after 24.8 days and read it as ejected again.
#[test]
fn weeks_later_an_old_ejection_is_over() {
    let p = pool(10, OutlierConfig::default());
    let e = EndpointState::new(1);
    assert!(fail_n(&e, &p, S, 5));
    e.set_ready(false);
    let day = 86_400 * S;
    for days in [25u64, 30, 40, 48] {
        let now = S + days * day;
        assert!(!e.is_ejected(now), "day {days}");
    }
    e.set_ready(true);
    assert!(p.is_available(&e, S + 30 * day));
}

/// With the periodic sweep running, stamps are re-based, so even 100 days are exact.
#[test]
fn months_with_a_sweep_stay_exact() {
    let p = Pool::new(PoolConfig::default());
    p.set_endpoints(2);
    let e = EndpointState::new(1);
    let _ = InFlight::start(&e, &p, 0).complete(50 * MS, Outcome::Success);
    let day = 86_400 * S;
    let mut now = 0;
    for _ in 0..100 {
        now += day;
        p.sweep(now, [&e]);
    }
    // Long idle: decayed to nothing, not the 50 ms of 100 days ago.
    assert!(p.estimate(&e, now + S) < 1e3, "{}", p.estimate(&e, now + S));
    let _ = InFlight::start(&e, &p, now).complete(now + 20 * MS, Outcome::Success);
    assert!((p.estimate(&e, now + 20 * MS) - 20e6).abs() < 1e5);
}

/// Idle for 30 days without a sweep (the old code read 30 days as "no time passed" and kept a
/// month-old estimate).
#[test]
fn thirty_idle_days_decay_the_estimate() {
    let p = Pool::new(PoolConfig::default());
    let e = EndpointState::new(1);
    let _ = InFlight::start(&e, &p, 0).complete(50 * MS, Outcome::Success);
    assert!(p.estimate(&e, 30 * 86_400 * S) < 1.0);
}
