//! `weighted_round_robin` (gRFC A58) through the core balancer: grpc-go's
//! `balancer/weightedroundrobin/balancer_test.go` scenarios, sans-IO (reports fed to the endpoint
//! state, time passed in), plus what grpc-go leaves to its tree (localities, ejection).

use std::collections::BTreeMap;
use std::sync::Arc;

use pickwise::balancer::{Balancer, BalancerConfig, Connectivity, EndpointSpec};
use pickwise::wrr::{LoadReport, WrrConfig};
use pickwise::{EndpointState, LbPolicy, Pool, PoolConfig, SplitMix64};

const S: u64 = 1_000_000_000;
type B = Balancer<String, Arc<EndpointState>>;

/// grpc-go's test config: blackout 0 unless a test sets it, 1 s... here the A58 defaults with
/// the blackout off (grpc-go's `perCallConfig`/`oobConfig` set `blackoutPeriod: 0s`).
fn cfg() -> WrrConfig {
    WrrConfig {
        blackout_ns: 0,
        update_ns: S / 10,
        ..WrrConfig::default()
    }
}

fn balancer(cfg: WrrConfig, addrs: &[&str]) -> B {
    let mut b = Balancer::new(
        BalancerConfig::new(LbPolicy::WeightedRoundRobin(cfg)),
        Arc::new(Pool::new(PoolConfig::default())),
    );
    for a in addrs {
        add(&mut b, a, EndpointSpec::default());
    }
    b
}

fn add(b: &mut B, addr: &str, spec: EndpointSpec) {
    b.insert(0, addr.to_string(), spec, Arc::new(EndpointState::new(1)));
    b.handle_connectivity(0, &addr.to_string(), Connectivity::Ready);
}

/// A report of `qps` at `utilization` (application utilization, as grpc-go's tests set it).
fn report(b: &B, now: u64, addr: &str, qps: f64, utilization: f64, eps: f64) {
    let r = LoadReport {
        application_utilization: utilization,
        qps,
        eps,
        ..LoadReport::default()
    };
    b.get(&addr.to_string()).unwrap().report_load(now, &r);
}

/// Runs the timers to `now` and counts `n` picks of the picker they publish.
fn picks(b: &mut B, now: u64, n: usize) -> BTreeMap<String, usize> {
    b.handle_timeout(now);
    let picker = b.poll_picker(now, 1).unwrap_or_else(|| b.picker(now, 1));
    let mut rng = SplitMix64::new(3);
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let e = picker.pick(now, None, &mut rng).expect("a pick");
        let addr = b.iter().find(|(_, t)| Arc::ptr_eq(t, e)).unwrap().0.clone();
        *out.entry(addr).or_insert(0) += 1;
    }
    out
}

/// grpc-go `checkWeights`: shares in the ratio `want` (address, weight), each within 2 picks
/// per 100 of the expected count.
#[track_caller]
fn check(b: &mut B, now: u64, want: &[(&str, usize)]) {
    let total: usize = want.iter().map(|(_, w)| w).sum();
    let n = total * 100;
    let got = picks(b, now, n);
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (addr, w) in want {
        let expected = w * 100;
        let g = got.get(*addr).copied().unwrap_or(0);
        assert!(
            g.abs_diff(expected) <= 2 * total,
            "{addr}: {g} picks, want {expected} ({got:?})"
        );
    }
}

#[test]
fn one_address_serves_whatever_it_reports() {
    let mut b = balancer(cfg(), &["a:1"]);
    report(&b, 0, "a:1", 10.0, 1.0, 0.0);
    check(&mut b, S, &[("a:1", 1)]);
}

#[test]
fn without_reports_it_is_round_robin() {
    let mut b = balancer(cfg(), &["a:1", "b:1"]);
    check(&mut b, S, &[("a:1", 1), ("b:1", 1)]);
}

#[test]
fn two_addresses_follow_their_reports() {
    // grpc-go TestBalancer_TwoAddresses_ReportingEnabledPerCall: srv1 10 qps at 1.0 (weight 10),
    // srv2 10 qps at 0.1 (weight 100): 1:10.
    let mut b = balancer(cfg(), &["a:1", "b:1"]);
    report(&b, 0, "a:1", 10.0, 1.0, 0.0);
    report(&b, 0, "b:1", 10.0, 0.1, 0.0);
    check(&mut b, S, &[("a:1", 1), ("b:1", 10)]);
}

#[test]
fn changed_reports_change_the_shares_at_the_next_update() {
    // grpc-go TestBalancer_TwoAddresses_UpdateLoads.
    let mut b = balancer(cfg(), &["a:1", "b:1"]);
    report(&b, 0, "a:1", 10.0, 1.0, 0.0);
    report(&b, 0, "b:1", 10.0, 0.1, 0.0);
    check(&mut b, S, &[("a:1", 1), ("b:1", 10)]);
    report(&b, S, "a:1", 10.0, 0.1, 0.0);
    report(&b, S, "b:1", 10.0, 1.0, 0.0);
    // Until the update period passes, the published picker keeps the old weights.
    assert!(b.poll_picker(S + 1, 1).is_none());
    check(&mut b, 2 * S, &[("a:1", 10), ("b:1", 1)]);
}

#[test]
fn error_penalty_counts_errors_as_utilization() {
    // grpc-go TestBalancer_TwoAddresses_ErrorPenalty: with penalty 0 the eps is ignored (1:10);
    // with 0.9, srv2's 10 eps at 10 qps adds 0.9 utilization: 10/(0.1+0.9) = 10, equal weights.
    let zero = WrrConfig {
        error_utilization_penalty: 0.0,
        ..cfg()
    };
    let mut b = balancer(zero, &["a:1", "b:1"]);
    report(&b, 0, "a:1", 10.0, 1.0, 0.0);
    report(&b, 0, "b:1", 10.0, 0.1, 10.0);
    check(&mut b, S, &[("a:1", 1), ("b:1", 10)]);
    b.set_policy(LbPolicy::WeightedRoundRobin(WrrConfig {
        error_utilization_penalty: 0.9,
        ..cfg()
    }));
    check(&mut b, 2 * S, &[("a:1", 1), ("b:1", 1)]);
}

#[test]
fn blackout_holds_weights_back_until_it_ends() {
    // grpc-go TestBalancer_TwoAddresses_BlackoutPeriod: 1 s and the 10 s default.
    for blackout in [S, WrrConfig::default().blackout_ns] {
        let c = WrrConfig {
            blackout_ns: blackout,
            ..cfg()
        };
        let mut b = balancer(c, &["a:1", "b:1"]);
        // Reports keep coming (grpc-go's OOB stream): the blackout counts from the first one.
        let start = S;
        let mut t = start;
        while t <= start + blackout {
            report(&b, t, "a:1", 10.0, 1.0, 0.0);
            report(&b, t, "b:1", 10.0, 0.1, 0.0);
            t += S / 10;
        }
        check(&mut b, start + S / 10, &[("a:1", 1), ("b:1", 1)]);
        check(&mut b, start + blackout - S / 1000, &[("a:1", 1), ("b:1", 1)]);
        check(&mut b, start + blackout, &[("a:1", 1), ("b:1", 10)]);
    }
}

#[test]
fn weights_expire_to_round_robin_and_blackout_again() {
    // grpc-go TestBalancer_TwoAddresses_WeightExpiration (3 min default expiration).
    let mut b = balancer(cfg(), &["a:1", "b:1"]);
    report(&b, 0, "a:1", 10.0, 1.0, 0.0);
    report(&b, 0, "b:1", 10.0, 0.1, 0.0);
    check(&mut b, S, &[("a:1", 1), ("b:1", 10)]);
    let expiry = WrrConfig::default().expiration_ns;
    check(&mut b, expiry - S, &[("a:1", 1), ("b:1", 10)]);
    check(&mut b, expiry + S, &[("a:1", 1), ("b:1", 1)]);
    // With a blackout, reports after the expiry wait it out again (A58).
    let c = WrrConfig {
        blackout_ns: 10 * S,
        ..cfg()
    };
    b.set_policy(LbPolicy::WeightedRoundRobin(c));
    let t = expiry + 2 * S;
    report(&b, t, "a:1", 10.0, 1.0, 0.0);
    report(&b, t, "b:1", 10.0, 0.1, 0.0);
    check(&mut b, t + S, &[("a:1", 1), ("b:1", 1)]);
    report(&b, t + 10 * S, "a:1", 10.0, 1.0, 0.0);
    report(&b, t + 10 * S, "b:1", 10.0, 0.1, 0.0);
    check(&mut b, t + 10 * S, &[("a:1", 1), ("b:1", 10)]);
}

#[test]
fn addresses_changing() {
    // grpc-go TestBalancer_AddressesChanging: weights 10, 100, 20, then 200 joins; a backend that
    // stops serving and removed ones drop out; re-added ones report afresh.
    let mut b = balancer(cfg(), &["1:1", "2:1", "3:1"]);
    let loads = [
        ("1:1", 10.0, 1.0),
        ("2:1", 10.0, 0.1),
        ("3:1", 20.0, 1.0),
        ("4:1", 20.0, 0.1),
    ];
    let feed = |b: &B, now: u64| {
        for (a, q, u) in loads {
            if b.get(&a.to_string()).is_some() {
                report(b, now, a, q, u, 0.0);
            }
        }
    };
    feed(&b, 0);
    check(&mut b, S, &[("1:1", 1), ("2:1", 10), ("3:1", 2)]);
    add(&mut b, "4:1", EndpointSpec::default());
    feed(&b, S);
    check(&mut b, 2 * S, &[("1:1", 1), ("2:1", 10), ("3:1", 2), ("4:1", 20)]);
    b.handle_connectivity(2 * S, &"3:1".to_string(), Connectivity::TransientFailure);
    check(&mut b, 3 * S, &[("1:1", 1), ("2:1", 10), ("4:1", 20)]);
    b.remove(3 * S, &"2:1".to_string());
    b.remove(3 * S, &"3:1".to_string());
    check(&mut b, 4 * S, &[("1:1", 1), ("4:1", 20)]);
    b.remove(4 * S, &"1:1".to_string());
    b.remove(4 * S, &"4:1".to_string());
    add(&mut b, "2:1", EndpointSpec::default());
    feed(&b, 4 * S);
    check(&mut b, 5 * S, &[("2:1", 1)]);
    add(&mut b, "4:1", EndpointSpec::default());
    feed(&b, 5 * S);
    check(&mut b, 6 * S, &[("2:1", 10), ("4:1", 20)]);
}

#[test]
fn a_reconnected_endpoint_waits_out_the_blackout_again() {
    let c = WrrConfig {
        blackout_ns: 5 * S,
        ..cfg()
    };
    let mut b = balancer(c, &["a:1", "b:1"]);
    for t in [0, 5 * S] {
        report(&b, t, "a:1", 10.0, 1.0, 0.0);
        report(&b, t, "b:1", 10.0, 0.1, 0.0);
    }
    check(&mut b, 5 * S, &[("a:1", 1), ("b:1", 10)]);
    // b's connection drops and comes back: its old reports no longer count.
    b.handle_connectivity(6 * S, &"b:1".to_string(), Connectivity::TransientFailure);
    b.handle_connectivity(6 * S, &"b:1".to_string(), Connectivity::Ready);
    report(&b, 6 * S, "b:1", 10.0, 0.1, 0.0);
    // Only a has a usable weight: round robin.
    check(&mut b, 7 * S, &[("a:1", 1), ("b:1", 1)]);
    report(&b, 11 * S, "a:1", 10.0, 1.0, 0.0);
    report(&b, 11 * S, "b:1", 10.0, 0.1, 0.0);
    check(&mut b, 11 * S, &[("a:1", 1), ("b:1", 10)]);
}

#[test]
fn an_endpoint_without_a_weight_takes_the_mean() {
    // A58: endpoints without a usable weight are scheduled at the mean of the others' (a new
    // endpoint gets traffic to report from).
    let mut b = balancer(cfg(), &["a:1", "b:1", "c:1"]);
    report(&b, 0, "a:1", 10.0, 1.0, 0.0); // 10
    report(&b, 0, "b:1", 30.0, 1.0, 0.0); // 30
    check(&mut b, S, &[("a:1", 1), ("b:1", 3), ("c:1", 2)]);
}

#[test]
fn localities_each_run_their_own_weights() {
    // xDS: wrr_locality -> weighted_target over localities, weighted_round_robin inside each.
    let mut b = balancer(cfg(), &[]);
    let loc = |locality| EndpointSpec {
        locality,
        ..EndpointSpec::default()
    };
    for (a, l) in [("a:1", 0), ("b:1", 0), ("c:1", 1), ("d:1", 1)] {
        add(&mut b, a, loc(l));
    }
    report(&b, 0, "a:1", 10.0, 1.0, 0.0);
    report(&b, 0, "b:1", 30.0, 1.0, 0.0);
    report(&b, 0, "c:1", 10.0, 1.0, 0.0);
    report(&b, 0, "d:1", 10.0, 1.0, 0.0);
    // Localities split 1:1; inside locality 0, 1:3; inside 1, equal.
    check(&mut b, S, &[("a:1", 1), ("b:1", 3), ("c:1", 2), ("d:1", 2)]);
}

#[test]
fn an_ejected_endpoints_share_spreads_by_weight() {
    let pool = Arc::new(Pool::new(PoolConfig::default()));
    let mut b: B = Balancer::new(
        BalancerConfig::new(LbPolicy::WeightedRoundRobin(cfg())),
        pool.clone(),
    );
    for a in ["a:1", "b:1", "c:1"] {
        add(&mut b, a, EndpointSpec::default());
    }
    report(&b, 0, "a:1", 10.0, 1.0, 0.0);
    report(&b, 0, "b:1", 30.0, 1.0, 0.0);
    report(&b, 0, "c:1", 20.0, 1.0, 0.0);
    let c = b.get(&"c:1".to_string()).unwrap().clone();
    for _ in 0..5 {
        let _ = pickwise::InFlight::start(&*c, &*pool, 0).complete(S / 2, pickwise::Outcome::Failure);
    }
    assert!(c.is_ejected(S / 2));
    let got = picks(&mut b, S / 2, 4000);
    assert_eq!(got.get("c:1"), None);
    // a:b stays 1:3.
    let (a, bb) = (got["a:1"] as f64, got["b:1"] as f64);
    assert!((bb / a - 3.0).abs() < 0.15, "{got:?}");
}

#[test]
fn the_weight_update_is_a_timer() {
    let mut b = balancer(cfg(), &["a:1", "b:1"]);
    b.handle_timeout(0);
    assert_eq!(
        b.poll_timeout(),
        Some(S / 10),
        "the update period is the next deadline"
    );
    let _ = b.poll_picker(0, 1);
    b.handle_timeout(S / 20);
    assert!(b.poll_picker(S / 20, 1).is_none(), "nothing due yet");
    b.handle_timeout(S / 10);
    assert!(b.poll_picker(S / 10, 1).is_some(), "a picker per update period");
    // Other policies have no such timer.
    b.set_policy(LbPolicy::RoundRobin);
    b.handle_timeout(S);
    assert!(b.poll_timeout().unwrap() >= 2 * S, "{:?}", b.poll_timeout());
}

#[test]
fn a_first_report_racing_the_ready_it_follows_is_kept() {
    // The new connection's out-of-band stream opens at connect; its first report can reach the
    // endpoint before the balancer handles READY. That report is kept (only reports from before
    // the endpoint left READY are forgotten).
    let mut b = balancer(cfg(), &["a:1", "b:1"]);
    report(&b, 0, "a:1", 10.0, 1.0, 0.0);
    report(&b, 0, "b:1", 10.0, 0.1, 0.0);
    b.handle_connectivity(S, &"b:1".to_string(), Connectivity::TransientFailure);
    report(&b, 2 * S, "b:1", 10.0, 0.1, 0.0); // the new connection's first report
    b.handle_connectivity(2 * S + 1, &"b:1".to_string(), Connectivity::Ready);
    check(&mut b, 3 * S, &[("a:1", 1), ("b:1", 10)]);
}

#[test]
fn switching_to_weighted_round_robin_starts_without_weights() {
    // Reports recorded under another policy (per-call trailers are read whatever the policy)
    // do not skip the new policy's blackout: gRPC builds a fresh weighted_round_robin.
    let mut b = balancer(cfg(), &["a:1", "b:1"]);
    b.set_policy(LbPolicy::RoundRobin);
    report(&b, 0, "a:1", 10.0, 1.0, 0.0);
    report(&b, 0, "b:1", 10.0, 0.1, 0.0);
    let with_blackout = WrrConfig {
        blackout_ns: 10 * S,
        ..cfg()
    };
    b.set_policy(LbPolicy::WeightedRoundRobin(with_blackout));
    // The first weights are due at once (no wait for the next sweep).
    assert_eq!(b.poll_timeout(), Some(0));
    report(&b, 20 * S, "a:1", 10.0, 1.0, 0.0);
    report(&b, 20 * S, "b:1", 10.0, 0.1, 0.0);
    check(&mut b, 21 * S, &[("a:1", 1), ("b:1", 1)]);
    report(&b, 30 * S, "a:1", 10.0, 1.0, 0.0);
    report(&b, 30 * S, "b:1", 10.0, 0.1, 0.0);
    check(&mut b, 30 * S, &[("a:1", 1), ("b:1", 10)]);
}

#[test]
fn an_ejected_endpoint_leaves_the_mean() {
    // a 10, b 30, c unreported, d 200 and ejected. With d in the mean, c would get (10+30+200)/3
    // = 80; gRPC reports an ejected endpoint TRANSIENT_FAILURE, so c gets (10+30)/2 = 20.
    let pool = Arc::new(Pool::new(PoolConfig::default()));
    let mut b: B = Balancer::new(
        BalancerConfig::new(LbPolicy::WeightedRoundRobin(cfg())),
        pool.clone(),
    );
    for a in ["a:1", "b:1", "c:1", "d:1"] {
        add(&mut b, a, EndpointSpec::default());
    }
    report(&b, 0, "a:1", 10.0, 1.0, 0.0);
    report(&b, 0, "b:1", 30.0, 1.0, 0.0);
    report(&b, 0, "d:1", 200.0, 1.0, 0.0);
    let d = b.get(&"d:1".to_string()).unwrap().clone();
    for _ in 0..5 {
        let _ = pickwise::InFlight::start(&*d, &*pool, 0).complete(S / 2, pickwise::Outcome::Failure);
    }
    assert!(d.is_ejected(S));
    check(&mut b, S, &[("a:1", 1), ("b:1", 3), ("c:1", 2)]);
}
