//! Picker and cost semantics against the references: P2C fallback, bounded load (Envoy
//! `BoundedLoadHashingLoadBalancer`), peak-EWMA (tower `PeakEwma`), go-zero `p2c.go`, and latency
//! sampled at response headers (tower `CompleteOnResponse`). See `tests/CONFORMANCE.md`.

use pickwise::{
    hash, hashing::available_weight, EndpointState, HashPolicy, InFlight, Outcome, OutlierConfig, P2c,
    Policy, Pool, PoolConfig, Ring, RingConfig, RingPicker, SplitMix64,
};

const MS: u64 = 1_000_000;
const S: u64 = 1000 * MS;

fn pool(policy: Policy) -> Pool {
    Pool::new(PoolConfig {
        policy,
        outlier: OutlierConfig::disabled(),
        ..PoolConfig::default()
    })
}

/// When the random draws miss, the choice among the remaining available endpoints is uniform
/// (the old scan from a random start gave one endpoint 43% and another 14% with 3 of 10 up).
#[test]
fn p2c_fallback_is_uniform() {
    let p = pool(Policy::LeastRequest);
    let es: Vec<EndpointState> = (0..10).map(|_| EndpointState::new(1)).collect();
    p.set_endpoints(10);
    for (i, e) in es.iter().enumerate() {
        e.set_ready([0, 1, 5].contains(&i));
    }
    let mut rng = SplitMix64::new(7);
    let mut counts = [0u32; 10];
    let n = 60_000;
    for _ in 0..n {
        counts[P2c::new(&es, &p).pick(0, &mut rng).unwrap()] += 1;
    }
    for i in [0, 1, 5] {
        let share = f64::from(counts[i]) / f64::from(n);
        assert!((share - 1.0 / 3.0).abs() < 0.02, "{counts:?}");
    }
}

fn ring4() -> (Ring, Vec<EndpointState>) {
    let hosts = [("a:1", 1), ("b:1", 1), ("c:1", 1), ("d:1", 1)];
    let ring = Ring::build(&hosts, &RingConfig::native(64)).unwrap();
    (ring, (0..4).map(|_| EndpointState::new(1)).collect())
}

/// Bounded-load shares are of the weight that can take traffic: with 2 of 4 endpoints down, one
/// hot key may hold `ceil(factor * (total + 1) / 2)` in flight on its home, not a quarter.
#[test]
fn bounded_load_normalises_over_available_endpoints() {
    let (ring, es) = ring4();
    let p = Pool::new(PoolConfig {
        track_total: true,
        outlier: OutlierConfig::disabled(),
        ..PoolConfig::default()
    });
    p.set_endpoints(4);
    let key = hash::native(b"hot");
    let home = ring.lookup(key).unwrap() as usize;
    // Take down two endpoints other than the home.
    for (i, e) in es.iter().enumerate().filter(|(i, _)| *i != home).take(2) {
        let _ = i;
        e.set_ready(false);
    }
    let weight = available_weight(&es, 0);
    assert_eq!(weight, 2);
    let picker = RingPicker::new(ring.view(), &es, &p, weight);
    let policy = HashPolicy::Bounded { factor_percent: 150 };
    let mut guards = Vec::new();
    for _ in 0..100 {
        let i = picker.pick(0, key, policy).unwrap();
        guards.push(InFlight::start(&es[i], &p, 0));
    }
    // total 100 -> total_slots ceil(101 * 1.5) = 152, half each = 76: home holds 76 or 77.
    assert!(
        (76..=77).contains(&es[home].in_flight()),
        "{}",
        es[home].in_flight()
    );
}

/// Envoy `AllHostsOverloaded`-style: when every available endpoint is over its bound, the least
/// overloaded serves (the old code sent the request to the key's home). With exact shares this
/// happens when in-flight counts include requests the pool's total does not (here: requests
/// started through another pool sharing the endpoint states, as Envoy's test mocks the counts).
#[test]
fn bounded_load_all_overloaded_picks_the_least_overloaded() {
    let (ring, es) = ring4();
    let p = Pool::new(PoolConfig {
        track_total: true,
        outlier: OutlierConfig::disabled(),
        ..PoolConfig::default()
    });
    let elsewhere = pool(Policy::LeastRequest);
    p.set_endpoints(4);
    let key = hash::native(b"k");
    let home = ring.lookup(key).unwrap() as usize;
    let least = (home + 2) % 4;
    let mut guards = Vec::new();
    for (i, e) in es.iter().enumerate() {
        let n = if i == home {
            10
        } else if i == least {
            3
        } else {
            6
        };
        for _ in 0..n {
            guards.push(InFlight::start(e, &elsewhere, 0));
        }
    }
    let picker = RingPicker::new(ring.view(), &es, &p, available_weight(&es, 0));
    assert!(es.iter().all(|e| picker.overloaded(e, 100)));
    let got = picker
        .pick(0, key, HashPolicy::Bounded { factor_percent: 100 })
        .unwrap();
    assert_eq!(got, least);
}

/// Peak-EWMA folds a sample into the decayed estimate: a sample faster than what the cost shows
/// never raises it (the old code blended into the undecayed value: 100 ms idle for 10 s shows
/// 36.8 ms, and a 20 ms sample raised it to 49 ms).
#[test]
fn peak_ewma_faster_sample_never_raises_the_cost() {
    let p = pool(Policy::PeakEwma);
    let e = EndpointState::new(1);
    let _ = InFlight::start(&e, &p, 0).complete(100 * MS, Outcome::Success);
    for (idle_s, sample_ms) in [(10u64, 20u64), (1, 90), (30, 1), (5, 60)] {
        let t = 100 * MS + idle_s * S;
        let before = p.estimate(&e, t);
        let g = InFlight::start(&e, &p, t);
        let _ = g.complete(t + sample_ms * MS, Outcome::Success);
        let after = p.estimate(&e, t + sample_ms * MS);
        if (sample_ms * MS) as f32 <= before {
            assert!(
                after <= before * 1.0001,
                "idle {idle_s}s sample {sample_ms}ms: {before} -> {after}"
            );
        } else {
            assert_eq!(after, (sample_ms * MS) as f32, "a peak replaces at once");
        }
    }
}

/// An endpoint whose requests stopped completing never gets cheaper while they hang: under
/// tower's decay its cost fell toward 0 and P2C steered more traffic into the hang.
#[test]
fn stuck_requests_never_make_an_endpoint_cheaper() {
    for policy in [Policy::PeakEwma, Policy::GoZero, Policy::LeastRequest] {
        let p = pool(policy);
        let es = [EndpointState::new(1), EndpointState::new(1)];
        p.set_endpoints(2);
        let (stuck, busy) = (&es[0], &es[1]);
        let _ = InFlight::start(stuck, &p, 0).complete(20 * MS, Outcome::Success);
        let hung: Vec<_> = (0..5).map(|_| InFlight::start(stuck, &p, 20 * MS)).collect();
        let mut last = p.cost(stuck, 20 * MS);
        let mut t = 20 * MS;
        while t < 60 * S {
            // The busy endpoint keeps answering in 20 ms, one at a time.
            let _ = InFlight::start(busy, &p, t).complete(t + 20 * MS, Outcome::Success);
            t += 100 * MS;
            let c = p.cost(stuck, t);
            assert!(c >= last, "{policy:?}: cost fell from {last} to {c} at {t}");
            last = c;
            assert!(
                p.cost(busy, t) < c,
                "{policy:?}: the hanging endpoint looks cheaper at {t}"
            );
        }
        drop(hung);
    }
}

/// go-zero: a fresh endpoint has lag 0 (cost `in_flight + 1`); the lag does not decay while idle.
#[test]
fn go_zero_fresh_and_idle_endpoints() {
    let p = pool(Policy::GoZero);
    let e = EndpointState::new(1);
    assert_eq!(p.cost(&e, 0), 1.0);
    assert_eq!(p.estimate(&e, 0), 0.0);
    let _ = InFlight::start(&e, &p, 0).complete(40 * MS, Outcome::Success);
    assert_eq!(p.estimate(&e, 40 * MS), 40e6, "the first sample is taken as is");
    assert_eq!(p.estimate(&e, 600 * S), 40e6, "no idle decay");
}

/// go-zero `forcePick`: the pair's loser is chosen when it has not been picked for over a second.
#[test]
fn go_zero_force_picks_a_loser_idle_for_a_second() {
    let p = pool(Policy::GoZero);
    let es = [EndpointState::new(1), EndpointState::new(1)];
    p.set_endpoints(2);
    let _ = InFlight::start(&es[0], &p, 0).complete(MS, Outcome::Success);
    let _ = InFlight::start(&es[1], &p, 0).complete(100 * MS, Outcome::Success);
    let mut rng = SplitMix64::new(3);
    let p2c = P2c::new(&es, &p);
    let t0 = 10 * S;
    assert_eq!(
        p2c.pick(t0, &mut rng),
        Ok(1),
        "the slow one was idle > 1 s: probed"
    );
    for k in 1..=10 {
        assert_eq!(p2c.pick(t0 + k * 50 * MS, &mut rng), Ok(0), "then the cheap one");
    }
    assert_eq!(
        p2c.pick(t0 + 1_100 * MS, &mut rng),
        Ok(1),
        "probed again after a second"
    );
}

/// The latency sample is taken at response headers; the slot is held until the stream ends, and
/// a 60 s stream does not make its endpoint look slow.
#[test]
fn latency_is_sampled_at_response_headers() {
    let p = pool(Policy::PeakEwma);
    let e = EndpointState::new(1);
    let mut g = InFlight::start(&e, &p, 0);
    g.responded(5 * MS);
    assert_eq!(e.in_flight(), 1);
    assert_eq!(e.latency_ns(), Some(5e6));
    g.responded(9 * MS); // once only
    let c = g.complete(60 * S, Outcome::Success);
    assert_eq!(c.latency_ns, 60 * S);
    assert_eq!(e.in_flight(), 0);
    assert_eq!(
        e.latency_ns(),
        Some(5e6),
        "the stream's length is not a latency sample"
    );
}

/// A policy change at runtime: the pool's cost policy and total tracking switch in place; guards
/// started before release exactly what they took.
#[test]
fn policy_and_total_tracking_switch_at_runtime() {
    let p = pool(Policy::LeastRequest);
    let e = EndpointState::new(1);
    let before = InFlight::start(&e, &p, 0); // not counted in the total
    assert_eq!(p.cost(&e, 0), 2.0);
    p.set_policy(Policy::PeakEwma);
    assert_eq!(p.policy(), Policy::PeakEwma);
    assert_eq!(p.cost(&e, 0), 30e6 * 2.0, "default RTT x (in flight + 1)");
    p.set_track_total(true);
    let after = InFlight::start(&e, &p, 0);
    assert_eq!(p.total_in_flight(), 1);
    drop(before);
    assert_eq!(p.total_in_flight(), 1, "an uncounted guard takes nothing off");
    drop(after);
    assert_eq!(p.total_in_flight(), 0);
    p.set_policy(Policy::GoZero);
    assert_eq!(p.policy(), Policy::GoZero);
}

/// go-zero forces a stale loser with a compare-and-swap: of picks racing on the same stale
/// loser, exactly one forces it (a load then a store let every racer force it).
#[test]
fn go_zero_force_pick_is_claimed_once_under_races() {
    use std::sync::Barrier;
    for round in 0..200u64 {
        let p = pool(Policy::GoZero);
        let es = [EndpointState::new(1), EndpointState::new(1)];
        p.set_endpoints(2);
        let _ = InFlight::start(&es[0], &p, 0).complete(MS, Outcome::Success);
        let _ = InFlight::start(&es[1], &p, 0).complete(100 * MS, Outcome::Success);
        let barrier = Barrier::new(4);
        let forced: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u64)
                .map(|t| {
                    let (es, p, barrier) = (&es, &p, &barrier);
                    s.spawn(move || {
                        let mut rng = SplitMix64::new(round * 8 + t);
                        barrier.wait();
                        usize::from(P2c::new(es, p).pick(10 * S, &mut rng) == Ok(1))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(
            forced, 1,
            "round {round}: the stale loser was forced {forced} times"
        );
    }
}

/// pickwise's ORCA-aware P2C (`PoolConfig::utilization_weight`): equal in-flight and latency, one
/// backend reporting 90% utilization: it loses every comparison; a stale report counts for
/// nothing, and with the weight at 0 (the default) reports change nothing.
#[test]
fn reported_utilization_breaks_p2c_ties() {
    let report = |u: f64| pickwise::wrr::LoadReport {
        cpu_utilization: u,
        qps: 100.0,
        ..Default::default()
    };
    for policy in [Policy::LeastRequest, Policy::PeakEwma] {
        let p = Pool::new(PoolConfig {
            policy,
            outlier: OutlierConfig::disabled(),
            utilization_weight: 1.0,
            ..PoolConfig::default()
        });
        let es = [EndpointState::new(1), EndpointState::new(1)];
        p.set_endpoints(2);
        es[0].report_load(0, &report(0.9));
        es[1].report_load(0, &report(0.1));
        let mut rng = SplitMix64::new(1);
        for _ in 0..100 {
            assert_eq!(P2c::new(&es, &p).pick(S, &mut rng).unwrap(), 1, "{policy:?}");
        }
        assert!(p.cost(&es[0], S) > p.cost(&es[1], S));
        // Older than the decay time (10 s): ignored, the costs tie again.
        assert_eq!(p.cost(&es[0], 11 * S), p.cost(&es[1], 11 * S));
        let off = pool(policy);
        assert_eq!(off.cost(&es[0], S), off.cost(&es[1], S));
    }
}
