//! Prequal (NSDI '24) through the core balancer: the pool rules of §4 one by one (HCL choice,
//! RIF increment on use, reuse budget, expiry, removal alternating oldest and worst, probes per
//! query, idle probing, fallback), their composition with outlier ejection and membership
//! changes, and a property test of the invariants under random operations.

use std::collections::BTreeMap;
use std::sync::Arc;

use pickwise::balancer::{Balancer, BalancerConfig, Connectivity, EndpointSpec, Prepared};
use pickwise::prequal::{FallbackMeter, PrequalConfig, ProbeReport};
use pickwise::{EndpointState, LbPolicy, Outcome, Pool, PoolConfig, SplitMix64};
use proptest::prelude::*;

const MS: u64 = 1_000_000;
type B = Balancer<String, Arc<EndpointState>>;

/// No removal, no idle probe, no reuse limit unless a test asks: one rule at a time. (Reuse
/// needs a positive Eq. 1 denominator, so tests of reuse use more endpoints than the pool holds.)
fn quiet() -> PrequalConfig {
    PrequalConfig {
        probes_per_query: 3.0, // the paper's rate
        removes_per_query: 0.0,
        idle_probe_ns: 0,
        max_reuse: 63,
        reuse_delta: 1000.0,
        ..PrequalConfig::default()
    }
}

fn balancer(cfg: PrequalConfig, n: usize) -> B {
    balancer_with(cfg, pickwise::OutlierConfig::default(), n)
}

/// `n` ready endpoints under `cfg`, with outlier detection `outlier`.
fn balancer_with(cfg: PrequalConfig, outlier: pickwise::OutlierConfig, n: usize) -> B {
    let mut b = Balancer::new(
        BalancerConfig::new(LbPolicy::Prequal(cfg)),
        Arc::new(Pool::new(PoolConfig {
            outlier,
            ..PoolConfig::default()
        })),
    );
    for i in 0..n {
        let a = addr(i);
        b.insert(
            0,
            a.clone(),
            EndpointSpec::default(),
            Arc::new(EndpointState::new(1)),
        );
        b.handle_connectivity(0, &a, Connectivity::Ready);
    }
    b
}

fn addr(i: usize) -> String {
    format!("10.0.0.{i}:80")
}

fn picker(b: &mut B, now: u64) -> Prepared<Arc<EndpointState>> {
    b.poll_picker(now, 1).unwrap_or_else(|| b.picker(now, 1))
}

fn record(b: &B, p: &Prepared<Arc<EndpointState>>, i: usize, rif: u32, latency_us: u32, now: u64) {
    let e = b.get(&addr(i)).unwrap();
    p.record_probe(
        e,
        ProbeReport { rif, latency_us },
        now,
        &mut SplitMix64::new(i as u64),
    );
}

fn name(b: &B, e: &Arc<EndpointState>) -> usize {
    let key = b.iter().find(|(_, t)| Arc::ptr_eq(t, e)).unwrap().0;
    key.rsplit('.')
        .next()
        .unwrap()
        .trim_end_matches(":80")
        .parse()
        .unwrap()
}

fn pick(b: &B, p: &Prepared<Arc<EndpointState>>, now: u64) -> usize {
    name(b, p.pick(now, None, &mut SplitMix64::new(now)).unwrap())
}

#[test]
fn cold_answer_with_the_lowest_latency_wins() {
    let mut b = balancer(quiet(), 4);
    let p = picker(&mut b, 0);
    // RIFs 1, 2, 3, 40: the 0.84 quantile of [1, 2, 3, 40] is 3, so only endpoint 3 is hot even
    // though its latency is the lowest.
    record(&b, &p, 0, 1, 900, 0);
    record(&b, &p, 1, 2, 300, 0);
    record(&b, &p, 2, 3, 500, 0);
    record(&b, &p, 3, 40, 10, 0);
    assert_eq!(p.probes().unwrap().hot_threshold(), Some(3));
    assert_eq!(pick(&b, &p, 1), 1);
}

#[test]
fn when_all_are_hot_the_lowest_rif_wins() {
    let cfg = PrequalConfig {
        q_rif: 0.0, // threshold = the smallest RIF seen: every answer above it is hot
        ..quiet()
    };
    let mut b = balancer(cfg, 4);
    let p = picker(&mut b, 0);
    record(&b, &p, 0, 0, 1, 0); // sets the threshold at 0 ...
    record(&b, &p, 0, 9, 1, 0); // ... then replaced by a hot answer (one answer per endpoint)
    record(&b, &p, 1, 5, 800, 0);
    record(&b, &p, 2, 7, 100, 0);
    assert_eq!(pick(&b, &p, 1), 1, "every answer hot: lowest RIF, latency aside");
}

#[test]
fn use_increments_the_rif_so_picks_spread() {
    let mut b = balancer(quiet(), 2);
    let p = picker(&mut b, 0);
    // Both cold only while their RIF is within the threshold: RIF-only (q = 0 would make all hot).
    let cfg_all_hot = p.probes().unwrap().config().q_rif;
    assert!(cfg_all_hot > 0.8);
    let mut b = balancer(
        PrequalConfig {
            q_rif: 0.0,
            ..quiet()
        },
        40,
    );
    let p = picker(&mut b, 0);
    record(&b, &p, 0, 0, 1, 0);
    record(&b, &p, 0, 1, 1, 0);
    record(&b, &p, 1, 3, 1, 0);
    // Lowest RIF: 0 (RIF 1) twice (RIF 2, 3 after the increments), then a tie at 3 and 3.
    let seq: Vec<usize> = (1..=6).map(|t| pick(&b, &p, t)).collect();
    assert_eq!(&seq[..2], &[0, 0]);
    let zeros = seq.iter().filter(|&&x| x == 0).count();
    assert!((3..=4).contains(&zeros), "{seq:?}");
}

#[test]
fn an_answer_routes_at_most_its_reuse_budget() {
    let cfg = PrequalConfig {
        max_reuse: 3,
        reuse_delta: 1000.0,
        q_rif: 1.0,
        ..quiet()
    };
    let mut b = balancer(cfg, 40);
    let p = picker(&mut b, 0);
    // Latency only (q = 1 and a high RIF in the history: nothing is hot), so the RIF increments
    // on use do not move the choice.
    record(&b, &p, 0, 100, 10, 0);
    record(&b, &p, 0, 0, 10, 0);
    record(&b, &p, 1, 0, 20, 0);
    record(&b, &p, 2, 0, 30, 0);
    let seq: Vec<usize> = (1..=9).map(|t| pick(&b, &p, t)).collect();
    // Endpoint 0 is best three times, then its answer is spent; 1 next, three times; then the
    // pool has one answer: the fallback (P2C) serves.
    assert_eq!(&seq[..6], &[0, 0, 0, 1, 1, 1], "{seq:?}");
    assert_eq!(p.probes().unwrap().len(), 1);
}

#[test]
fn eq_1_budget_of_one_uses_each_answer_once() {
    // m = 16, n = 100, r = 3, r_remove = 1, δ = 0: (1 + 0) / (0.84·3 − 1) = 0.66 → 1.
    let cfg = PrequalConfig {
        probes_per_query: 3.0,
        reuse_delta: 0.0,
        removes_per_query: 0.0,
        idle_probe_ns: 0,
        ..PrequalConfig::default()
    };
    let mut b = balancer(cfg, 100);
    let p = picker(&mut b, 0);
    for i in 0..4 {
        record(&b, &p, i, 0, 10 * (i as u32 + 1), 0);
    }
    let seq: Vec<usize> = (1..=3).map(|t| pick(&b, &p, t)).collect();
    assert_eq!(seq, [0, 1, 2]);
}

#[test]
fn answers_expire_after_max_age() {
    let mut b = balancer(quiet(), 40);
    let p = picker(&mut b, 0);
    record(&b, &p, 0, 0, 10, 0);
    record(&b, &p, 1, 0, 20, 500 * MS);
    record(&b, &p, 2, 0, 30, 500 * MS);
    assert_eq!(pick(&b, &p, 900 * MS), 0);
    // At 1.2 s endpoint 0's answer is 1.2 s old: dropped; 1 is now the best.
    assert_eq!(pick(&b, &p, 1200 * MS), 1);
    assert_eq!(p.probes().unwrap().len(), 2);
}

#[test]
fn removal_alternates_oldest_and_worst() {
    // Nothing hot (q = 1 over a history holding RIF 100): worst = highest latency.
    let cfg = PrequalConfig {
        removes_per_query: 1.0,
        q_rif: 1.0,
        ..quiet()
    };
    let mut b = balancer(cfg, 40);
    let p = picker(&mut b, 0);
    record(&b, &p, 5, 100, 50, 0);
    record(&b, &p, 5, 1, 50, 0); // oldest
    record(&b, &p, 0, 1, 10, MS);
    record(&b, &p, 1, 1, 20, MS);
    record(&b, &p, 2, 1, 30, MS);
    record(&b, &p, 3, 1, 40, MS);
    record(&b, &p, 4, 1, 90, MS); // worst
    let pool = p.probes().unwrap();
    assert_eq!(pool.len(), 6);
    // Query 1 removes the oldest (5), query 2 the worst (4), query 3 the oldest of the equally
    // old (0, first in the pool, after its use), query 4 the worst left (3), query 5 the oldest (1).
    let mut seq = Vec::new();
    let mut lens = Vec::new();
    for t in 2..7 {
        seq.push(pick(&b, &p, t * MS));
        lens.push(pool.len());
    }
    assert_eq!(seq, [0, 0, 0, 1, 1]);
    assert_eq!(lens, [5, 4, 3, 2, 1]);
}

#[test]
fn the_worst_is_the_hottest_when_any_is_hot() {
    let cfg = PrequalConfig {
        removes_per_query: 2.0,
        probes_per_query: 6.0, // keeps Eq. 1's denominator positive: answers are reused
        ..quiet()
    };
    let mut b = balancer(cfg, 40);
    let p = picker(&mut b, 0);
    // Threshold: the 0.84 quantile of [1, 1, 1, 30] is 1; 3 (RIF 30) is hot.
    record(&b, &p, 0, 1, 10, MS);
    record(&b, &p, 1, 1, 20, MS);
    record(&b, &p, 2, 1, 30, 0); // oldest
    record(&b, &p, 3, 30, 5, MS); // hot, lowest latency
                                  // One query: picks 0 (cold, lowest latency), removes the oldest (2) and the hottest (3).
    assert_eq!(pick(&b, &p, 2 * MS), 0);
    assert_eq!(p.probes().unwrap().len(), 2);
    assert_eq!(
        pick(&b, &p, 3 * MS),
        1,
        "0 is hot after its use; 1 is the only cold one"
    );
}

#[test]
fn probes_per_query_and_idle_probing() {
    let cfg = PrequalConfig {
        probes_per_query: 1.5,
        idle_probe_ns: 500 * MS,
        ..quiet()
    };
    let mut b = balancer(cfg, 10);
    let p = picker(&mut b, 0);
    let mut rng = SplitMix64::new(9);
    let mut out = [usize::MAX; 8];
    // Idle probe at t = 600 ms (none for 500 ms since the start).
    assert_eq!(p.probe_targets(600 * MS, &mut rng, &mut out), 1);
    assert_eq!(
        p.probe_targets(700 * MS, &mut rng, &mut out),
        0,
        "idle probe taken"
    );
    // 10 queries at 1.5 probes each: 15 owed, handed out at most `out.len()` at a time.
    for t in 0..10 {
        let _ = p.pick(701 * MS + t, None, &mut rng);
    }
    assert_eq!(p.probes().unwrap().probes_owed(), 15);
    let mut total = 0;
    loop {
        let n = p.probe_targets(702 * MS, &mut rng, &mut out);
        if n == 0 {
            break;
        }
        let mut seen = out[..n].to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), n, "targets are distinct");
        assert!(out[..n].iter().all(|&i| i < 10));
        total += n;
    }
    assert_eq!(total, 15);
}

#[test]
fn removal_scales_with_a_small_fleet_and_fallbacks_are_counted() {
    // 4 servers, a pool of 16: the rate is 1 × 4/16 = 0.25 per query, so with one answer per
    // server, one use each (Eq. 1 gives 1 here) and two answers per query the pool stays usable.
    // The paper's full rate (1 per query) left most picks to the fallback.
    let cfg = PrequalConfig {
        removes_per_query: 1.0,
        ..quiet()
    };
    let mut b = balancer(cfg, 4);
    let p = picker(&mut b, 0);
    let pool = p.probes().unwrap().clone();
    let mut rng = SplitMix64::new(5);
    for t in 1..=400u64 {
        // Two answers per query: a probe's and the one the response piggybacks.
        let i = (t % 4) as usize;
        record(&b, &p, i, 1, 100 + i as u32, t * MS);
        record(&b, &p, (i + 1) % 4, 1, 101 + i as u32, t * MS);
        let _ = p.pick(t * MS, None, &mut rng);
    }
    assert_eq!(pool.queries(), 400);
    assert!(
        pool.fallbacks() < 40,
        "{} of 400 picks fell back",
        pool.fallbacks()
    );
}

#[test]
fn the_fallback_meter_counts_increments_and_restarts_with_a_new_pool() {
    // No answers at all: every pick falls back to P2C.
    let (mut a, mut b) = (balancer(quiet(), 4), balancer(quiet(), 4));
    let (pa, pb) = (picker(&mut a, 0), picker(&mut b, 0));
    let mut rng = SplitMix64::new(1);
    let mut meter = FallbackMeter::default();
    for t in 1..=7u64 {
        let _ = pa.pick(t * MS, None, &mut rng);
    }
    assert_eq!(meter.advance(pa.probes()), 7);
    assert_eq!(meter.advance(pa.probes()), 0);
    let _ = pa.pick(8 * MS, None, &mut rng);
    assert_eq!(meter.advance(pa.probes()), 1);
    // Another pool (a policy switch starts one) counts from its own zero, not from pa's 8.
    for t in 1..=3u64 {
        let _ = pb.pick(t * MS, None, &mut rng);
    }
    assert_eq!(meter.advance(pb.probes()), 3);
    assert_eq!(meter.advance(None), 0);
    assert_eq!(
        meter.advance(pb.probes()),
        0,
        "a sample without a pool forgets nothing"
    );
}

#[test]
fn a_stalled_prober_comes_back_to_at_most_twice_the_pool_in_debt() {
    let mut b = balancer(quiet(), 10);
    let p = picker(&mut b, 0);
    let mut rng = SplitMix64::new(3);
    // 100,000 queries (300,000 probes owed) while no prober ran.
    for t in 0..100_000 {
        let _ = p.pick(t, None, &mut rng);
    }
    let pool = p.probes().unwrap();
    assert!(pool.probes_owed() > 1000);
    let mut out = [0usize; 4];
    assert_eq!(p.probe_targets(1, &mut rng, &mut out), 4);
    // The rest beyond twice the pool size (32) is forgiven; probing goes on.
    assert_eq!(pool.probes_owed(), 32);
    assert_eq!(pool.take_probes(1, u32::MAX), 32);
    let _ = p.pick(2, None, &mut rng);
    assert_eq!(pool.probes_owed(), 3);
}

#[test]
fn probe_targets_prefer_available_endpoints() {
    let mut b = balancer(quiet(), 4);
    for i in 0..3 {
        b.get(&addr(i)).unwrap().set_ready(false);
    }
    let p = picker(&mut b, 0);
    let _ = p.pick(0, None, &mut SplitMix64::new(1));
    let mut out = [0usize; 1];
    // Three owed (3 per query), one slot: the one available endpoint every time.
    for _ in 0..3 {
        assert_eq!(p.probe_targets(1, &mut SplitMix64::new(5), &mut out), 1);
        assert_eq!(name(&b, &p.ready()[out[0]]), 3);
    }
}

#[test]
fn fewer_than_two_usable_answers_fall_back_to_p2c() {
    let mut b = balancer(quiet(), 3);
    let p = picker(&mut b, 0);
    record(&b, &p, 2, 0, 1, 0);
    // One answer: P2C over all three (each gets picks), not always endpoint 2.
    let mut seen = BTreeMap::new();
    for t in 1..300 {
        *seen.entry(pick(&b, &p, t)).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn ejected_and_failing_endpoints_are_not_chosen_by_their_answers() {
    let mut b = balancer(quiet(), 4);
    let p = picker(&mut b, 0);
    for i in 0..4 {
        record(&b, &p, i, 0, 10 * (i as u32 + 1), 0);
    }
    assert_eq!(pick(&b, &p, 1), 0);
    // A failure on 0 (it answers fast with errors: the sinkhole the paper warns of).
    let pool = b.pool().clone();
    let e0 = b.get(&addr(0)).unwrap().clone();
    pickwise::InFlight::start(&*e0, &*pool, 1).complete(2, Outcome::Failure);
    assert_eq!(pick(&b, &p, 3), 1);
    // Ejected by outlier detection: 1 and 0 are out.
    let e1 = b.get(&addr(1)).unwrap().clone();
    for t in 0..5 {
        pickwise::InFlight::start(&*e1, &*pool, 4 + t).complete(5 + t, Outcome::Failure);
    }
    assert!(e1.is_ejected(20));
    assert_eq!(pick(&b, &p, 20), 2);
}

#[test]
fn an_answer_after_a_failure_counts_again() {
    let mut b = balancer(quiet(), 3);
    let p = picker(&mut b, 0);
    let pool = b.pool().clone();
    let e0 = b.get(&addr(0)).unwrap().clone();
    record(&b, &p, 0, 0, 10, 0);
    record(&b, &p, 1, 0, 50, 0);
    record(&b, &p, 2, 0, 60, 0);
    pickwise::InFlight::start(&*e0, &*pool, MS).complete(2 * MS, Outcome::Failure);
    assert_eq!(
        pick(&b, &p, 3 * MS),
        1,
        "the answer from before the failure is not used"
    );
    // A fresh answer after the failure: 0 is usable again (one failure must not starve it).
    record(&b, &p, 0, 0, 10, 4 * MS);
    assert_eq!(pick(&b, &p, 5 * MS), 0);
}

#[test]
fn a_sinkhole_sits_out_max_age_when_no_ejection_can_follow() {
    // Ejection off: a server failing fast and answering probes as idle would win every pick
    // its fresh answers allow. After two failures in a row its answers wait out max_age (1 s).
    let mut b = balancer_with(quiet(), pickwise::OutlierConfig::disabled(), 3);
    let p = picker(&mut b, 0);
    let pool = b.pool().clone();
    let e0 = b.get(&addr(0)).unwrap().clone();
    let fail = |t: u64| pickwise::InFlight::start(&*e0, &*pool, t).complete(t, Outcome::Failure);
    let idle = |t: u64| {
        record(&b, &p, 0, 0, 5, t);
        record(&b, &p, 1, 0, 50, t);
        record(&b, &p, 2, 0, 60, t);
    };
    // One failure: a fresh answer counts again (a stray failure must not starve a server).
    fail(MS);
    idle(2 * MS);
    assert_eq!(pick(&b, &p, 3 * MS), 0);
    // A second in a row: its fresh answers do not count for max_age after the failure...
    fail(4 * MS);
    idle(5 * MS);
    assert_eq!(pick(&b, &p, 6 * MS), 1);
    idle(900 * MS);
    assert_eq!(pick(&b, &p, 901 * MS), 1);
    // ...then they do: one pick in max_age tests it again (a recovered server comes back).
    idle(1_005 * MS);
    assert_eq!(pick(&b, &p, 1_006 * MS), 0);
    // Under gRPC's outlier detection (A50: no consecutive-failure ejection, failure percentage
    // on) an ejection can follow too: the failing server keeps its traffic until the interval
    // algorithm has the request volume to eject it.
    let mut b = balancer_with(
        quiet(),
        pickwise::OutlierConfig {
            consecutive_failures: 0,
            failure_percentage: Some(pickwise::FailurePercentageEjection::default()),
            ..pickwise::OutlierConfig::default()
        },
        3,
    );
    let p = picker(&mut b, 0);
    let e0 = b.get(&addr(0)).unwrap().clone();
    for t in [MS, 2 * MS] {
        pickwise::InFlight::start(&*e0, &**b.pool(), t).complete(t, Outcome::Failure);
    }
    record(&b, &p, 0, 0, 5, 3 * MS);
    record(&b, &p, 1, 0, 50, 3 * MS);
    assert_eq!(pick(&b, &p, 4 * MS), 0);
    // With ejection on and a slot free, the same streak does not keep it out: the picks that
    // follow end it in an ejection instead (the default: 5 in a row).
    let mut b = balancer(quiet(), 3);
    let p = picker(&mut b, 0);
    let e0 = b.get(&addr(0)).unwrap().clone();
    for t in [MS, 2 * MS] {
        pickwise::InFlight::start(&*e0, &**b.pool(), t).complete(t, Outcome::Failure);
    }
    record(&b, &p, 0, 0, 5, 3 * MS);
    record(&b, &p, 1, 0, 50, 3 * MS);
    assert_eq!(pick(&b, &p, 4 * MS), 0);
}

#[test]
fn a_new_picker_probes_every_endpoint_once_first() {
    let cfg = PrequalConfig {
        probes_per_query: 1.0,
        ..quiet()
    };
    let mut b = balancer(cfg, 20);
    let p = picker(&mut b, 0);
    let mut rng = SplitMix64::new(5);
    let mut out = [usize::MAX; 3];
    let mut seen = Vec::new();
    // 20 probes, taken 1 or 3 at a time: every endpoint once (20 uniform draws would miss about
    // 7), and never more than owed.
    while seen.len() < 20 {
        for _ in 0..3 {
            let _ = p.pick(MS, None, &mut rng);
        }
        let n = p.probe_targets(MS, &mut rng, &mut out[..if seen.len() % 2 == 0 { 3 } else { 1 }]);
        assert!(n >= 1);
        seen.extend_from_slice(&out[..n]);
    }
    seen.truncate(20);
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    // A new picker sweeps again, from another start.
    b.handle_connectivity(MS, &addr(19), Connectivity::TransientFailure);
    b.get(&addr(19)).unwrap().set_ready(false);
    let q = picker(&mut b, 2 * MS);
    let mut seen = Vec::new();
    for _ in 0..19 {
        let _ = q.pick(2 * MS, None, &mut rng);
        let n = q.probe_targets(2 * MS, &mut rng, &mut out[..1]);
        seen.extend_from_slice(&out[..n]);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..19).collect::<Vec<_>>());
}

#[test]
fn a_failed_endpoint_takes_the_next_owed_probe() {
    let cfg = PrequalConfig {
        probes_per_query: 1.0,
        ..quiet()
    };
    let mut b = balancer(cfg, 10);
    let p = picker(&mut b, 0);
    let pool = b.pool().clone();
    let fail = |i: usize, t: u64, outcome: Outcome| {
        let e = b.get(&addr(i)).unwrap().clone();
        pickwise::InFlight::start(&*e, &*pool, t).complete(t, outcome);
    };
    let mut rng = SplitMix64::new(3);
    let mut out = [usize::MAX; 4];
    let targets = |p: &Prepared<Arc<EndpointState>>, out: &[usize], n: usize| -> Vec<usize> {
        out[..n].iter().map(|&pos| name(&b, &p.ready()[pos])).collect()
    };
    // A first failure (none in the last second) queues the endpoint (the second in a row
    // finds it queued). No probe owed: the recheck waits (it never adds a probe).
    fail(3, MS, Outcome::Failure);
    fail(3, MS, Outcome::Failure);
    assert_eq!(p.probe_targets(2 * MS, &mut rng, &mut out), 0);
    // One owed: it goes to 3, whose answers the failure made unusable.
    let _ = p.pick(3 * MS, None, &mut rng);
    assert_eq!(p.probe_targets(3 * MS, &mut rng, &mut out), 1);
    assert_eq!(targets(&p, &out, 1), [3]);
    // A success since the failure drops the recheck; the next failing endpoint is first.
    fail(5, 4 * MS, Outcome::Failure);
    fail(5, 4 * MS, Outcome::Failure);
    fail(5, 5 * MS, Outcome::Success);
    fail(7, 6 * MS, Outcome::Failure);
    fail(7, 6 * MS, Outcome::Failure);
    let _ = p.pick(7 * MS, None, &mut rng);
    let _ = p.pick(7 * MS, None, &mut rng);
    assert_eq!(p.probe_targets(8 * MS, &mut rng, &mut out), 2);
    assert_eq!(targets(&p, &out, 2)[0], 7);
    // An endpoint its failures ejected is not probed.
    for t in 0..5 {
        fail(2, 10 * MS + t, Outcome::Failure);
    }
    assert!(b.get(&addr(2)).unwrap().is_ejected(11 * MS));
    for _ in 0..4 {
        let _ = p.pick(12 * MS, None, &mut rng);
    }
    let n = p.probe_targets(12 * MS, &mut rng, &mut out);
    assert_eq!(n, 4);
    assert!(!targets(&p, &out, n).contains(&2));
    // 2's ejection took the cap's one slot (10% of 10, at least one), so no ejection can
    // follow 3's streak: its fresh answer waits out max_age (error aversion) instead of
    // winning it picks that would fail.
    record(&b, &p, 3, 0, 1, 13 * MS);
    record(&b, &p, 4, 0, 50, 13 * MS);
    record(&b, &p, 5, 0, 60, 13 * MS);
    assert_eq!(pick(&b, &p, 14 * MS), 4);
    record(&b, &p, 3, 0, 1, 1_100 * MS);
    record(&b, &p, 4, 0, 50, 1_100 * MS);
    record(&b, &p, 5, 0, 60, 1_100 * MS);
    assert_eq!(pick(&b, &p, 1_100 * MS), 3);
}

#[test]
fn no_recheck_when_no_ejection_can_follow() {
    // A server failing fast answers probes as idle, so each recheck's answer wins it the next
    // pick: without an ejection to end the streak, rechecks would feed it for good.
    let cfg = PrequalConfig {
        probes_per_query: 1.0,
        ..quiet()
    };
    let streak = |b: &B, i: usize, t: u64| {
        let e = b.get(&addr(i)).unwrap().clone();
        for _ in 0..2 {
            pickwise::InFlight::start(&*e, &**b.pool(), t).complete(t, Outcome::Failure);
        }
    };
    let owed_to = |b: &B, p: &Prepared<Arc<EndpointState>>, i: usize, t: u64| {
        let mut rng = SplitMix64::new(9);
        let mut out = [usize::MAX; 16];
        for _ in 0..16 {
            let _ = p.pick(t, None, &mut rng);
        }
        let n = p.probe_targets(t, &mut rng, &mut out);
        // The sweep covers the 20 endpoints in order from a random start: 16 probes reach 3
        // from most starts, so look at the first probe only.
        (n > 0).then(|| name(b, &p.ready()[out[0]])) == Some(i)
    };
    // Ejection off: no recheck.
    let mut b = balancer_with(cfg, pickwise::OutlierConfig::disabled(), 20);
    let p = picker(&mut b, 0);
    streak(&b, 3, MS);
    // Drain the sweep's start so its order does not decide (seeded: its first target is not 3).
    assert!(!owed_to(&b, &p, 3, 2 * MS));
    // The cap (10% of 20) already taken by two ejected endpoints: no recheck either.
    let mut b = balancer(cfg, 20);
    let p = picker(&mut b, 0);
    for i in [0, 1] {
        for t in 0..5 {
            let e = b.get(&addr(i)).unwrap().clone();
            pickwise::InFlight::start(&*e, &**b.pool(), t).complete(t, Outcome::Failure);
        }
    }
    assert_eq!(b.pool().ejected(), 2);
    streak(&b, 3, MS);
    assert!(!owed_to(&b, &p, 3, 2 * MS));
    // Control: with a slot free the same streak is rechecked first.
    let mut b = balancer(cfg, 20);
    let p = picker(&mut b, 0);
    streak(&b, 3, MS);
    assert!(owed_to(&b, &p, 3, 2 * MS));
    // A single failure within a second of the endpoint's last one (a success between) is not
    // rechecked: a server failing a share of requests would draw more traffic from each.
    let mut b = balancer(cfg, 20);
    let p = picker(&mut b, 0);
    let e = b.get(&addr(3)).unwrap().clone();
    let done = |t: u64, o: Outcome| pickwise::InFlight::start(&*e, &**b.pool(), t).complete(t, o);
    done(MS, Outcome::Failure);
    assert!(
        owed_to(&b, &p, 3, 2 * MS),
        "the first failure in a second is rechecked"
    );
    done(3 * MS, Outcome::Success);
    done(500 * MS, Outcome::Failure);
    assert!(!owed_to(&b, &p, 3, 501 * MS));
    done(502 * MS, Outcome::Success);
    done(1_600 * MS, Outcome::Failure);
    assert!(owed_to(&b, &p, 3, 1_601 * MS), "a quiet second later it is again");
}

#[test]
fn a_new_pool_never_gives_two_endpoints_one_id() {
    let mut b = balancer(quiet(), 3);
    let _ = picker(&mut b, 0);
    // A new configuration starts a new pool (ids from 1 again); the endpoints keep theirs.
    b.set_policy(LbPolicy::Prequal(PrequalConfig {
        q_rif: 0.5,
        ..quiet()
    }));
    b.insert(
        1,
        addr(9),
        EndpointSpec::default(),
        Arc::new(EndpointState::new(1)),
    );
    b.handle_connectivity(1, &addr(9), Connectivity::Ready);
    let p = picker(&mut b, 1);
    record(&b, &p, 0, 0, 500, 2);
    record(&b, &p, 1, 0, 600, 2);
    record(&b, &p, 9, 0, 5, 2);
    record(&b, &p, 2, 0, 700, 2);
    // Each answer routes to its own endpoint, best latency first (one use each here; the
    // last answer alone is a fallback pick).
    let seq: Vec<usize> = (3..6).map(|t| pick(&b, &p, t)).collect();
    assert_eq!(seq, [9, 0, 1]);
}

#[test]
fn answers_survive_a_membership_change() {
    let mut b = balancer(quiet(), 3);
    let p = picker(&mut b, 0);
    record(&b, &p, 0, 0, 50, 0);
    record(&b, &p, 2, 0, 5, 0);
    // A new endpoint joins and 1 leaves: a new picker, the same pool.
    b.insert(
        1,
        addr(7),
        EndpointSpec::default(),
        Arc::new(EndpointState::new(1)),
    );
    b.handle_connectivity(1, &addr(7), Connectivity::Ready);
    b.remove(1, &addr(1));
    let p2 = picker(&mut b, 1);
    assert!(Arc::ptr_eq(p.probes().unwrap(), p2.probes().unwrap()));
    assert_eq!(pick(&b, &p2, 2), 2);
    // An answer recorded through the old picker still counts in the new one.
    record(&b, &p, 7, 0, 1, 3);
    assert_eq!(pick(&b, &p2, 4), 7);
}

#[test]
fn switching_policy_drops_the_pool() {
    let mut b = balancer(quiet(), 2);
    let p = picker(&mut b, 0);
    assert_eq!(p.probes().unwrap().config(), &quiet());
    b.set_policy(LbPolicy::RoundRobin);
    assert!(picker(&mut b, 1).probes().is_none());
    b.set_policy(LbPolicy::from_name("pickwise_prequal").unwrap());
    let p = picker(&mut b, 2);
    assert!(p.probes().unwrap().is_empty());
    assert_eq!(
        LbPolicy::Prequal(PrequalConfig::default()).name(),
        "pickwise_prequal"
    );
}

#[derive(Clone, Debug)]
enum Op {
    Record { ep: usize, rif: u32, latency: u32 },
    Pick,
    Probe(usize),
    Advance(u64),
    Fail(usize),
    Toggle(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..8usize, 0..50u32, 0..10_000u32).prop_map(|(ep, rif, latency)| Op::Record { ep, rif, latency }),
        Just(Op::Pick),
        Just(Op::Pick),
        (0..6usize).prop_map(Op::Probe),
        (0..400u64).prop_map(Op::Advance),
        (0..8usize).prop_map(Op::Fail),
        (0..8usize).prop_map(Op::Toggle),
    ]
}

proptest! {
    /// Whatever happens: the pool never holds more than its size, a pick returns a ready
    /// endpoint and prefers an available one, probe targets are distinct and in range, and the
    /// probes handed out never exceed `probes_per_query` per pick plus the idle probes.
    #[test]
    fn invariants_hold_under_random_operations(
        pool_size in 1u8..20,
        probes_per_query in 0.0f32..4.0,
        removes in 0.0f32..2.0,
        q_rif in 0.0f32..1.0,
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let cfg = PrequalConfig {
            pool_size,
            probes_per_query,
            removes_per_query: removes,
            q_rif,
            ..PrequalConfig::default()
        };
        let mut b = balancer(cfg, 8);
        let pool = b.pool().clone();
        let mut now = 0u64;
        let mut rng = SplitMix64::new(7);
        let (mut picks, mut probes) = (0u64, 0u64);
        let mut p = picker(&mut b, now);
        for op in ops {
            match op {
                Op::Record { ep, rif, latency } => {
                    let e = b.get(&addr(ep)).unwrap().clone();
                    p.record_probe(&e, ProbeReport { rif, latency_us: latency }, now, &mut rng);
                }
                Op::Pick => {
                    if let Ok(e) = p.pick(now, None, &mut rng) {
                        picks += 1;
                        prop_assert!(e.is_ready());
                        let any_available = p.ready().iter().any(|x| x.is_available(now));
                        prop_assert!(!any_available || e.is_available(now));
                    }
                }
                Op::Probe(k) => {
                    let mut out = vec![usize::MAX; k];
                    let n = p.probe_targets(now, &mut rng, &mut out);
                    probes += n as u64;
                    let mut t = out[..n].to_vec();
                    t.sort_unstable();
                    t.dedup();
                    prop_assert_eq!(t.len(), n);
                    prop_assert!(t.iter().all(|&i| i < p.ready().len()));
                }
                Op::Advance(ms) => now += ms * MS,
                Op::Fail(ep) => {
                    let e = b.get(&addr(ep)).unwrap().clone();
                    pickwise::InFlight::start(&*e, &*pool, now).complete(now, Outcome::Failure);
                }
                Op::Toggle(ep) => {
                    let k = addr(ep);
                    let next = match b.connectivity(&k) {
                        Some(Connectivity::Ready) => Connectivity::TransientFailure,
                        _ => Connectivity::Ready,
                    };
                    b.handle_connectivity(now, &k, next);
                    b.get(&k).unwrap().set_ready(next == Connectivity::Ready);
                    p = picker(&mut b, now);
                }
            }
            prop_assert!(p.probes().unwrap().len() <= (pool_size as usize).max(2));
        }
        // Owed probes: per pick, plus at most one idle probe per 500 ms of simulated time.
        let idle = now / (500 * MS) + 1;
        prop_assert!(probes as f64 <= picks as f64 * probes_per_query as f64 + idle as f64 + 1.0);
        prop_assert_eq!(pool.total_in_flight(), 0);
    }
}
