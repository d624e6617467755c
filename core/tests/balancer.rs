//! The core balancer's life: grpc-go's priority rules (`balancer/priority` tests), weighted_target
//! over READY localities, gRFC A61 ring hash while the owner connects, timers through
//! `handle_timeout`, and a property test over random event sequences.

use std::sync::Arc;

use pickwise::balancer::{
    Balancer, BalancerConfig, Connectivity, EndpointSpec, Event, OwnerConnecting, Unpicked,
};
use pickwise::{hash, EndpointState, InFlight, LbPolicy, Outcome, Pool, PoolConfig, SplitMix64};
use proptest::prelude::*;

const S: u64 = 1_000_000_000;
type B = Balancer<String, Arc<EndpointState>>;

fn balancer(policy: LbPolicy) -> B {
    Balancer::new(
        BalancerConfig::new(policy),
        Arc::new(Pool::new(PoolConfig::default())),
    )
}

fn spec(priority: u32, locality: u32) -> EndpointSpec {
    EndpointSpec {
        priority,
        locality,
        ..EndpointSpec::default()
    }
}

fn add(b: &mut B, now: u64, addr: &str, spec: EndpointSpec) {
    b.insert(now, addr.to_string(), spec, Arc::new(EndpointState::new(1)));
}

fn events(b: &mut B) -> Vec<Event<String>> {
    std::iter::from_fn(|| b.poll_event()).collect()
}

fn connects(b: &mut B) -> Vec<String> {
    events(b)
        .into_iter()
        .filter_map(|e| match e {
            Event::Connect(k) => Some(k),
            Event::Disconnect(_) => None,
        })
        .collect()
}

fn set(b: &mut B, now: u64, addr: &str, state: Connectivity) {
    b.handle_connectivity(now, &addr.to_string(), state);
}

/// Shares of picks per address over `n` picks.
fn shares(b: &mut B, now: u64, n: usize) -> std::collections::BTreeMap<String, f64> {
    let picker = b.picker(now, 1);
    let mut rng = SplitMix64::new(9);
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n {
        let e = picker.pick(now, None, &mut rng).expect("a pick");
        let addr = b.iter().find(|(_, t)| Arc::ptr_eq(t, e)).unwrap().0.clone();
        *out.entry(addr).or_insert(0.0) += 1.0 / n as f64;
    }
    out
}

#[test]
fn lower_priorities_connect_only_when_needed() {
    let mut b = balancer(LbPolicy::RoundRobin);
    add(&mut b, 0, "p0:1", spec(0, 0));
    add(&mut b, 0, "p1:1", spec(1, 0));
    assert_eq!(connects(&mut b), ["p0:1"]);
    assert_eq!(b.priority_in_use(), Some(0));
    // p0 fails: p1 starts and serves.
    set(&mut b, S, "p0:1", Connectivity::TransientFailure);
    assert_eq!(connects(&mut b), ["p1:1"]);
    assert_eq!(b.priority_in_use(), Some(1));
    set(&mut b, S, "p1:1", Connectivity::Ready);
    assert!(b.picker(S, 0).pick(S, None, &mut SplitMix64::new(1)).is_ok());
}

/// grpc-go `TestPriority_HighPriorityNoEndpoints`-style failover and `_SwitchToLowerPriorityAndThenBack`:
/// p0 reconnecting after a failure does not pull traffic back; READY does; p1 is closed 15 s later.
#[test]
fn failover_is_sticky_until_ready_then_fails_back() {
    let mut b = balancer(LbPolicy::RoundRobin);
    add(&mut b, 0, "p0:1", spec(0, 0));
    add(&mut b, 0, "p1:1", spec(1, 0));
    set(&mut b, 1, "p0:1", Connectivity::TransientFailure);
    set(&mut b, 2, "p1:1", Connectivity::Ready);
    set(&mut b, 3, "p0:1", Connectivity::Connecting);
    assert_eq!(
        b.priority_in_use(),
        Some(1),
        "CONNECTING after TRANSIENT_FAILURE keeps p1"
    );
    set(&mut b, 4 * S, "p0:1", Connectivity::Ready);
    assert_eq!(b.priority_in_use(), Some(0));
    let _ = events(&mut b);
    // p1's connections are kept for the retention period, then closed.
    b.handle_timeout(4 * S + 14 * S);
    assert!(events(&mut b).is_empty());
    b.handle_timeout(4 * S + 15 * S);
    assert_eq!(events(&mut b), [Event::Disconnect("p1:1".to_string())]);
    assert!(!b.wants_connection(&"p1:1".to_string()));
}

/// Issue scenario: priority 0 failed, priority 1 serving; EDS adds to priority 0 an address that
/// accepts TCP and never answers (CONNECTING forever). C-core keeps serving from priority 1.
#[test]
fn an_endpoint_added_to_a_failed_priority_pulls_no_traffic() {
    let mut b = balancer(LbPolicy::RoundRobin);
    add(&mut b, 0, "p0:1", spec(0, 0));
    add(&mut b, 0, "p1:1", spec(1, 0));
    set(&mut b, 1, "p0:1", Connectivity::TransientFailure);
    set(&mut b, 2, "p1:1", Connectivity::Ready);
    add(&mut b, 3, "silent:1", spec(0, 0));
    assert_eq!(connects(&mut b), ["p0:1", "p1:1", "silent:1"]);
    set(&mut b, 4, "silent:1", Connectivity::Connecting);
    assert_eq!(b.priority_in_use(), Some(1));
    let picker = b.picker(5, 0);
    assert_eq!(picker.priority(), Some(1));
    assert!(picker.pick(5, None, &mut SplitMix64::new(1)).is_ok());
}

/// The 10 s failover timer: a priority that never connects gives way to the next.
#[test]
fn a_priority_that_never_connects_fails_over_after_ten_seconds() {
    let mut b = balancer(LbPolicy::RoundRobin);
    add(&mut b, 0, "p0:1", spec(0, 0));
    add(&mut b, 0, "p1:1", spec(1, 0));
    set(&mut b, 0, "p0:1", Connectivity::Connecting);
    b.handle_timeout(0);
    assert_eq!(b.poll_timeout(), Some(S), "the sweep comes first");
    b.handle_timeout(9 * S);
    assert_eq!(b.priority_in_use(), Some(0));
    let due = b.poll_timeout().unwrap();
    assert!(due <= 10 * S);
    b.handle_timeout(10 * S);
    assert_eq!(b.priority_in_use(), Some(1));
    assert_eq!(connects(&mut b), ["p0:1", "p1:1"]);
    // p0 connects late: it serves again.
    set(&mut b, 11 * S, "p0:1", Connectivity::Ready);
    assert_eq!(b.priority_in_use(), Some(0));
}

/// Issue scenario: two localities weighted 1:1, one with a single live endpoint and three that
/// refuse connections, the other with four live ones. weighted_target picks among READY
/// localities: the survivor takes half (C-core 0.50; the flattened weights gave it 0.20).
#[test]
fn localities_share_by_weight_among_ready_ones() {
    let mut b = balancer(LbPolicy::RoundRobin);
    for (addr, loc) in [
        ("a0:1", 0),
        ("a1:1", 0),
        ("a2:1", 0),
        ("a3:1", 0),
        ("b0:1", 1),
        ("b1:1", 1),
        ("b2:1", 1),
        ("b3:1", 1),
    ] {
        add(&mut b, 0, addr, spec(0, loc));
    }
    for addr in ["a0:1", "b0:1", "b1:1", "b2:1", "b3:1"] {
        set(&mut b, 1, addr, Connectivity::Ready);
    }
    for addr in ["a1:1", "a2:1", "a3:1"] {
        set(&mut b, 1, addr, Connectivity::TransientFailure);
    }
    let got = shares(&mut b, 2, 40_000);
    assert!((got["a0:1"] - 0.5).abs() < 0.01, "{got:?}");
    for addr in ["b0:1", "b1:1", "b2:1", "b3:1"] {
        assert!((got[addr] - 0.125).abs() < 0.01, "{got:?}");
    }
}

#[test]
fn locality_weights_split_traffic() {
    let mut b = balancer(LbPolicy::P2c(pickwise::Policy::LeastRequest));
    b.insert(
        0,
        "a:1".into(),
        EndpointSpec {
            locality_weight: 3,
            ..spec(0, 0)
        },
        Arc::new(EndpointState::new(1)),
    );
    for addr in ["b:1", "c:1"] {
        b.insert(
            0,
            addr.into(),
            EndpointSpec {
                locality_weight: 1,
                ..spec(0, 1)
            },
            Arc::new(EndpointState::new(1)),
        );
    }
    for addr in ["a:1", "b:1", "c:1"] {
        set(&mut b, 1, addr, Connectivity::Ready);
    }
    let got = shares(&mut b, 2, 40_000);
    assert!((got["a:1"] - 0.75).abs() < 0.01, "{got:?}");
}

fn ring_balancer(owner: OwnerConnecting) -> B {
    let mut config = BalancerConfig::new(LbPolicy::from_name("ring_hash_experimental").unwrap());
    config.owner_connecting = owner;
    Balancer::new(config, Arc::new(Pool::new(PoolConfig::default())))
}

/// gRFC A61: while the key's owner connects the pick waits (gRPC); Envoy walks to the next ready
/// endpoint. An owner in TRANSIENT_FAILURE is walked past in both.
#[test]
fn ring_hash_waits_for_a_connecting_owner_as_grpc_does() {
    for owner in [OwnerConnecting::Queue, OwnerConnecting::Walk] {
        let mut b = ring_balancer(owner);
        for addr in ["a:1", "b:1", "c:1"] {
            add(&mut b, 0, addr, spec(0, 0));
        }
        // The owner of key "a:1_0" is a:1 (its first ring point).
        let key = Some(hash::xxh64(b"a:1_0"));
        set(&mut b, 1, "b:1", Connectivity::Ready);
        set(&mut b, 1, "c:1", Connectivity::Ready);
        let picker = b.picker(2, 0);
        let got = picker.pick(2, key, &mut SplitMix64::new(1));
        match owner {
            OwnerConnecting::Queue => assert_eq!(got.err(), Some(Unpicked::Wait)),
            OwnerConnecting::Walk => assert!(got.is_ok()),
        }
        set(&mut b, 3, "a:1", Connectivity::TransientFailure);
        let picker = b.picker(3, 0);
        let got = picker.pick(3, key, &mut SplitMix64::new(1)).unwrap();
        assert!(!Arc::ptr_eq(got, b.get(&"a:1".into()).unwrap()));
        set(&mut b, 4, "a:1", Connectivity::Ready);
        let picker = b.picker(4, 0);
        let got = picker.pick(4, key, &mut SplitMix64::new(1)).unwrap();
        assert!(Arc::ptr_eq(got, b.get(&"a:1".into()).unwrap()));
    }
}

/// Round robin over READY a:1 and b:1, a:1 ejected by five failures: (balancer, pool, a:1).
fn a_ejected_beside_b() -> (B, Arc<Pool>, Arc<EndpointState>) {
    let pool = Arc::new(Pool::new(PoolConfig::default()));
    let mut b: B = Balancer::new(BalancerConfig::new(LbPolicy::RoundRobin), pool.clone());
    for addr in ["a:1", "b:1"] {
        add(&mut b, 0, addr, spec(0, 0));
        set(&mut b, 0, addr, Connectivity::Ready);
    }
    let a = b.get(&"a:1".into()).unwrap().clone();
    for _ in 0..5 {
        let _ = InFlight::start(&*a, &*pool, 0).complete(1, Outcome::Failure);
    }
    assert_eq!(pool.ejected(), 1);
    (b, pool, a)
}

/// Nothing can forget the sweep: `handle_timeout` returns expired ejections and decays the
/// multiplier (Envoy's interval timer).
#[test]
fn timeouts_expire_ejections_and_decay_the_multiplier() {
    let (mut b, pool, a) = a_ejected_beside_b();
    let mut now = 0;
    while now < 80 * S {
        now = b.poll_timeout().unwrap_or(now).max(now + 1);
        b.handle_timeout(now);
    }
    assert_eq!(pool.ejected(), 0);
    assert_eq!(a.ejections(), 0, "the multiplier decayed while healthy");
}

/// An ejected endpoint's round-robin turns spread over the others, not onto its neighbour.
#[test]
fn round_robin_spreads_an_ejected_endpoints_share() {
    let pool = Arc::new(Pool::new(PoolConfig::default()));
    let mut b: B = Balancer::new(BalancerConfig::new(LbPolicy::RoundRobin), pool.clone());
    for addr in ["a:1", "b:1", "c:1", "d:1", "e:1"] {
        add(&mut b, 0, addr, spec(0, 0));
        set(&mut b, 0, addr, Connectivity::Ready);
    }
    let a = b.get(&"a:1".into()).unwrap().clone();
    for _ in 0..5 {
        let _ = InFlight::start(&*a, &*pool, 0).complete(1, Outcome::Failure);
    }
    let got = shares(&mut b, 2, 40_000);
    assert!(!got.contains_key("a:1"));
    for v in got.values() {
        assert!((v - 0.25).abs() < 0.01, "{got:?}");
    }
}

#[test]
fn weighted_round_robin_follows_endpoint_weights() {
    let mut b = balancer(LbPolicy::RoundRobin);
    for (addr, w) in [("a:1", 1), ("b:1", 3)] {
        b.insert(
            0,
            addr.into(),
            EndpointSpec::weighted(w),
            Arc::new(EndpointState::new(1)),
        );
        set(&mut b, 0, addr, Connectivity::Ready);
    }
    let got = shares(&mut b, 1, 40_000);
    assert!((got["b:1"] - 0.75).abs() < 0.01, "{got:?}");
}

#[test]
fn removal_frees_the_ejection_slot_and_empty_fails() {
    let (mut b, pool, _) = a_ejected_beside_b();
    b.remove(1, &"a:1".into());
    b.remove(1, &"b:1".into());
    assert_eq!(pool.ejected(), 0);
    assert_eq!(b.priority_in_use(), None);
    let picker = b.picker(2, 0);
    assert_eq!(
        picker.pick(2, None, &mut SplitMix64::new(1)).err(),
        Some(Unpicked::Fail)
    );
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u8, u8, u8),
    Remove(u8),
    State(u8, u8),
    Advance(u16),
    Pick(Option<u64>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..12, 0u8..3, 0u8..3).prop_map(|(a, p, l)| Op::Insert(a, p, l)),
        (0u8..12).prop_map(Op::Remove),
        (0u8..12, 0u8..4).prop_map(|(a, s)| Op::State(a, s)),
        any::<u16>().prop_map(Op::Advance),
        proptest::option::of(any::<u64>()).prop_map(Op::Pick),
    ]
}

proptest! {
    /// Whatever the events: picks return a READY endpoint of the serving priority or say why not;
    /// the serving priority is the first that serves by grpc-go's rules; only endpoints of started
    /// priorities are asked to connect; timers are never in the past after handling them.
    #[test]
    fn invariants_hold_under_random_events(ops in proptest::collection::vec(op(), 1..120), ring in any::<bool>()) {
        let policy = if ring { LbPolicy::from_name("ring_hash_experimental").unwrap() } else { LbPolicy::RoundRobin };
        let mut b = balancer(policy);
        let mut now = 0u64;
        let mut rng = SplitMix64::new(5);
        for op in ops {
            match op {
                Op::Insert(a, p, l) => add(&mut b, now, &format!("10.0.0.{a}:80"), spec(u32::from(p), u32::from(l))),
                Op::Remove(a) => b.remove(now, &format!("10.0.0.{a}:80")),
                Op::State(a, s) => {
                    let s = [Connectivity::Idle, Connectivity::Connecting, Connectivity::Ready, Connectivity::TransientFailure][s as usize];
                    set(&mut b, now, &format!("10.0.0.{a}:80"), s);
                }
                Op::Advance(ms) => {
                    now += u64::from(ms) * 1_000_000;
                    b.handle_timeout(now);
                    if let Some(t) = b.poll_timeout() { prop_assert!(t > now); }
                }
                Op::Pick(key) => {
                    let picker = b.picker(now, 3);
                    if let Ok(e) = picker.pick(now, key, &mut rng) {
                        let (addr, _) = b.iter().find(|(_, t)| Arc::ptr_eq(t, e)).expect("a member");
                        prop_assert_eq!(b.connectivity(addr), Some(Connectivity::Ready));
                        prop_assert_eq!(Some(b.spec(addr).unwrap().priority), b.priority_in_use());
                    }
                }
            }
            while let Some(ev) = b.poll_event() {
                if let Event::Connect(k) = ev {
                    prop_assert!(b.wants_connection(&k));
                }
            }
        }
    }
}

fn a50_balancer(outlier: pickwise::OutlierConfig) -> (B, Arc<Pool>) {
    let pool = Arc::new(Pool::new(PoolConfig {
        outlier,
        ..PoolConfig::default()
    }));
    let mut b: B = Balancer::new(BalancerConfig::new(LbPolicy::RoundRobin), pool.clone());
    for i in 0..5 {
        let addr = format!("127.0.0.1:9{i}");
        add(&mut b, 0, &addr, spec(0, 0));
        set(&mut b, 0, &addr, Connectivity::Ready);
    }
    b.handle_timeout(0); // starts the first interval
    (b, pool)
}

fn calls(b: &B, pool: &Pool, addr: &str, ok: u32, failed: u32) {
    let e = b.get(&addr.to_string()).unwrap();
    for i in 0..ok + failed {
        let outcome = if i < ok {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        let _ = InFlight::start(&**e, pool, S).complete(S + 1, outcome);
    }
}

/// Envoy `BasicFlowSuccessRateExternalOrigin` (gRFC A50's success-rate algorithm): four hosts at
/// 100%, one at 50% (200 OK + 200 failures); mean 90, stdev 20, threshold 90 - 1.9 * 20 = 52:
/// the 50% host is ejected at the interval, the others are not.
#[test]
fn a50_success_rate_ejection_matches_envoys_vector() {
    let (mut b, pool) = a50_balancer(pickwise::OutlierConfig {
        consecutive_failures: 0, // gRPC: no consecutive_5xx
        success_rate: Some(pickwise::SuccessRateEjection::default()),
        ..pickwise::OutlierConfig::default()
    });
    for i in 0..5 {
        calls(
            &b,
            &pool,
            &format!("127.0.0.1:9{i}"),
            200,
            if i == 4 { 200 } else { 0 },
        );
    }
    b.handle_timeout(5 * S);
    assert_eq!(pool.ejected(), 0, "not before the interval");
    b.handle_timeout(10 * S);
    assert_eq!(pool.ejected(), 1);
    assert!(b.get(&"127.0.0.1:94".to_string()).unwrap().is_ejected(10 * S));
    assert!(!b.get(&"127.0.0.1:93".to_string()).unwrap().is_ejected(10 * S));
    // The next interval starts from zero: no new calls, no new ejection.
    b.handle_timeout(20 * S);
    assert_eq!(pool.ejected(), 1);
}

/// A50 failure percentage: above the threshold with enough volume ejects; below the minimum
/// number of hosts with volume, nothing runs; the max ejection percentage holds.
#[test]
fn a50_failure_percentage_ejection() {
    let cfg = pickwise::OutlierConfig {
        consecutive_failures: 0,
        max_ejection_percent: 20,
        failure_percentage: Some(pickwise::FailurePercentageEjection {
            threshold: 50,
            request_volume: 50,
            ..Default::default()
        }),
        ..pickwise::OutlierConfig::default()
    };
    let (mut b, pool) = a50_balancer(cfg);
    for i in 0..5 {
        let (ok, failed) = if i >= 3 { (20, 40) } else { (60, 0) };
        calls(&b, &pool, &format!("127.0.0.1:9{i}"), ok, failed);
    }
    b.handle_timeout(10 * S);
    // Two outliers at 67% failures, but 20% of 5 endpoints is one ejection.
    assert_eq!(pool.ejected(), 1);
    // Too few hosts with volume: nothing runs.
    let (mut b, pool) = a50_balancer(cfg);
    for i in 0..5 {
        let (ok, failed) = if i == 0 { (10, 90) } else { (5, 0) };
        calls(&b, &pool, &format!("127.0.0.1:9{i}"), ok, failed);
    }
    b.handle_timeout(10 * S);
    assert_eq!(pool.ejected(), 0);
}

/// Errors of an old connection never weigh on its replacement: READY after TRANSIENT_FAILURE
/// starts the latency estimate afresh (the failure penalty of requests that died with the old
/// connection is gone).
#[test]
fn a_reconnected_endpoint_starts_with_a_fresh_estimate() {
    let pool = Arc::new(Pool::new(PoolConfig::default()));
    let mut b: B = Balancer::new(
        BalancerConfig::new(LbPolicy::P2c(pickwise::Policy::PeakEwma)),
        pool.clone(),
    );
    add(&mut b, 0, "a:1", spec(0, 0));
    set(&mut b, 0, "a:1", Connectivity::Ready);
    let a = b.get(&"a:1".to_string()).unwrap().clone();
    let _ = InFlight::start(&*a, &*pool, 0).complete(2_000_000, Outcome::Success);
    let _ = InFlight::start(&*a, &*pool, S).complete(S + 100_000_000, Outcome::Failure);
    assert!(pool.estimate(&a, S + 100_000_000) >= 100e6);
    set(&mut b, 2 * S, "a:1", Connectivity::TransientFailure);
    set(&mut b, 3 * S, "a:1", Connectivity::Ready);
    assert_eq!(
        a.latency_ns(),
        None,
        "fresh: the default RTT until its first sample"
    );
}

/// An endpoint moved to another priority by discovery is counted there: moved to a lower,
/// serving priority it serves; the emptied priority is gone (review finding: it stayed as an
/// empty "last" priority and every pick failed).
#[test]
fn an_endpoint_moved_between_priorities_is_counted_where_it_went() {
    let mut b = balancer(LbPolicy::RoundRobin);
    add(&mut b, 0, "a:1", spec(0, 0));
    add(&mut b, 0, "b:1", spec(1, 0));
    set(&mut b, 1, "a:1", Connectivity::TransientFailure);
    set(&mut b, 2, "b:1", Connectivity::Ready);
    b.insert(3, "b:1".into(), spec(2, 0), Arc::new(EndpointState::new(1)));
    assert_eq!(b.priority_in_use(), Some(2));
    assert!(b.picker(4, 0).pick(4, None, &mut SplitMix64::new(1)).is_ok());
    // Moved into a new priority that is not started: connected when it is.
    add(&mut b, 5, "c:1", spec(0, 0));
    b.insert(6, "c:1".into(), spec(3, 0), Arc::new(EndpointState::new(1)));
    assert_eq!(b.priority_in_use(), Some(2));
}

/// The largest priority number is an ordinary priority (review finding: `p + 1` overflowed).
#[test]
fn priority_u32_max_is_ordinary() {
    let mut b = balancer(LbPolicy::RoundRobin);
    add(&mut b, 0, "a:1", spec(u32::MAX, 0));
    assert_eq!(connects(&mut b), ["a:1"]);
    set(&mut b, 1, "a:1", Connectivity::Ready);
    assert_eq!(b.priority_in_use(), Some(u32::MAX));
    assert!(b.picker(2, 0).pick(2, None, &mut SplitMix64::new(1)).is_ok());
}

/// The failover timer runs from the start even when the adapter never reports CONNECTING
/// (review finding: the second round observed IDLE and cleared it).
#[test]
fn the_failover_timer_runs_without_connecting_reports() {
    let mut b = balancer(LbPolicy::RoundRobin);
    add(&mut b, 0, "c:1", spec(1, 0));
    add(&mut b, 0, "a:1", spec(0, 0));
    b.handle_timeout(10 * S);
    assert_eq!(b.priority_in_use(), Some(1));
}

/// Ring hash without a key draws a random hash and takes the first READY endpoint clockwise
/// (gRPC's `usingRandomHash`): it does not wait for a connecting owner.
#[test]
fn ring_hash_random_hash_takes_the_first_ready() {
    let mut b = ring_balancer(OwnerConnecting::Queue);
    for addr in ["a:1", "b:1", "c:1", "d:1"] {
        add(&mut b, 0, addr, spec(0, 0));
    }
    set(&mut b, 1, "a:1", Connectivity::Ready);
    let picker = b.picker(2, 0);
    let mut rng = SplitMix64::new(1);
    for _ in 0..200 {
        let e = picker.pick(2, None, &mut rng).expect("the READY one serves");
        assert!(Arc::ptr_eq(e, b.get(&"a:1".into()).unwrap()));
    }
}

/// gRFC A42 ring hash aggregation: two of three TRANSIENT_FAILURE make the priority fail over
/// at once (round robin's rule would wait 10 s for the one connecting).
#[test]
fn ring_hash_priority_with_two_failures_fails_over() {
    let mut b = ring_balancer(OwnerConnecting::Queue);
    for addr in ["a:1", "b:1", "c:1"] {
        add(&mut b, 0, addr, spec(0, 0));
    }
    add(&mut b, 0, "z:1", spec(1, 0));
    set(&mut b, 1, "a:1", Connectivity::TransientFailure);
    set(&mut b, 1, "b:1", Connectivity::TransientFailure);
    set(&mut b, 1, "c:1", Connectivity::Connecting);
    assert_eq!(b.priority_in_use(), Some(1));
}

/// A locality whose every READY endpoint is ejected is skipped (gRPC reports ejected endpoints
/// as TRANSIENT_FAILURE to weighted_target).
#[test]
fn a_locality_of_ejected_endpoints_gets_no_traffic() {
    let pool = Arc::new(Pool::new(PoolConfig::default()));
    let mut b: B = Balancer::new(BalancerConfig::new(LbPolicy::RoundRobin), pool.clone());
    for (addr, loc) in [("a:1", 0), ("b:1", 1), ("c:1", 1)] {
        add(&mut b, 0, addr, spec(0, loc));
        set(&mut b, 0, addr, Connectivity::Ready);
    }
    let a = b.get(&"a:1".to_string()).unwrap().clone();
    for _ in 0..5 {
        let _ = InFlight::start(&*a, &*pool, 0).complete(1, Outcome::Failure);
    }
    assert!(a.is_ejected(2));
    let got = shares(&mut b, 2, 4_000);
    assert!(!got.contains_key("a:1"), "{got:?}");
}

/// Many endpoints: inserting, reporting and removing thousands stays linear (the counts are
/// incremental; this took seconds when every event rescanned every endpoint).
#[test]
fn thousands_of_endpoints_and_events() {
    let mut b = balancer(LbPolicy::RoundRobin);
    let n = 3_000;
    for i in 0..n {
        add(
            &mut b,
            0,
            &format!("10.0.{}.{}:80", i / 256, i % 256),
            spec(i % 3, i % 7),
        );
    }
    for i in 0..n {
        let state = if i % 3 == 0 {
            Connectivity::TransientFailure
        } else {
            Connectivity::Ready
        };
        set(&mut b, 1, &format!("10.0.{}.{}:80", i / 256, i % 256), state);
    }
    assert_eq!(b.priority_in_use(), Some(1));
    let picker = b.picker(2, 0);
    assert!(picker.pick(2, None, &mut SplitMix64::new(1)).is_ok());
    for i in 0..n / 2 {
        b.remove(3, &format!("10.0.{}.{}:80", i / 256, i % 256));
    }
    assert_eq!(b.len(), n as usize / 2);
}

/// A keyed ring pick reads no clock while nothing is ejected, and the same owner as `pick`.
#[test]
fn keyed_ring_picks_need_no_clock_until_something_is_ejected() {
    let mut b = ring_balancer(OwnerConnecting::Walk);
    for addr in ["a:1", "b:1", "c:1"] {
        add(&mut b, 0, addr, spec(0, 0));
        set(&mut b, 0, addr, Connectivity::Ready);
    }
    let picker = b.picker(1, 0);
    let mut rng = SplitMix64::new(1);
    for k in 0..100u64 {
        let key = Some(k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (got, read) = picker.pick_with_clock(|| panic!("no clock needed"), key, &mut rng);
        assert_eq!(read, None);
        assert!(std::ptr::eq(got.unwrap(), picker.pick(1, key, &mut rng).unwrap()));
    }
}

/// A priority whose READY endpoints are all ejected fails over at the next sweep (gRPC reports
/// ejected endpoints TRANSIENT_FAILURE to the priority policy) and fails back once un-ejected.
#[test]
fn a_priority_of_ejected_endpoints_fails_over_until_they_return() {
    let pool = Arc::new(Pool::new(PoolConfig::default()));
    let mut b: B = Balancer::new(BalancerConfig::new(LbPolicy::RoundRobin), pool.clone());
    add(&mut b, 0, "a:1", spec(0, 0));
    add(&mut b, 0, "z:1", spec(1, 0));
    set(&mut b, 0, "a:1", Connectivity::Ready);
    b.handle_timeout(0);
    let a = b.get(&"a:1".to_string()).unwrap().clone();
    for _ in 0..5 {
        let _ = InFlight::start(&*a, &*pool, S).complete(S + 1, Outcome::Failure);
    }
    assert!(a.is_ejected(2 * S));
    b.handle_timeout(2 * S);
    assert_eq!(b.priority_in_use(), Some(1), "failed over");
    set(&mut b, 2 * S, "z:1", Connectivity::Ready);
    // Un-ejected after the base ejection time (30 s): back to priority 0.
    b.handle_timeout(35 * S);
    assert_eq!(b.priority_in_use(), Some(0));
}

/// Two endpoints with one A76 hash key still get a ring (gRPC builds it anyway).
#[test]
fn a_shared_hash_key_keeps_the_ring() {
    let mut b = ring_balancer(OwnerConnecting::Walk);
    for addr in ["a:1", "b:1"] {
        let spec = EndpointSpec {
            hash_key: Some("same".into()),
            ..spec(0, 0)
        };
        b.insert(0, addr.into(), spec, Arc::new(EndpointState::new(1)));
        set(&mut b, 0, addr, Connectivity::Ready);
    }
    let picker = b.picker(1, 0);
    assert!(picker.ring().is_some());
}
