//! The pick path with metrics off and on, same run (issue 19). "Off" is the prepared picker's
//! pick and the in-flight guard, what `pickwise-tonic` does per request without its `metrics`
//! feature; "on" adds what the feature adds to that path (`picker.rs` `try_pick`): two
//! `metrics::Counter` increments on handles registered beforehand (the picker's policy counter
//! and the endpoint's) and the ejection check for `pickwise.picks.panic`, with a real recorder
//! installed (`metrics-exporter-prometheus`, as `loadtest --metrics` installs it).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use metrics::{counter, Counter};
use pickwise::balancer::{Balancer, BalancerConfig, Connectivity, EndpointSpec};
use pickwise::{EndpointState, InFlight, LbPolicy, Outcome, Policy, Pool, PoolConfig, SplitMix64};

/// An endpoint as the adapter holds it: its state and its registered pick counter.
struct Inner {
    state: EndpointState,
    picks: Counter,
}

#[derive(Clone)]
struct Member(Arc<Inner>);

impl std::borrow::Borrow<EndpointState> for Member {
    fn borrow(&self) -> &EndpointState {
        &self.0.state
    }
}

fn pick_metrics(c: &mut Criterion) {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder");
    for (name, policy) in [
        ("p2c-peak-ewma", LbPolicy::P2c(Policy::PeakEwma)),
        ("round-robin", LbPolicy::RoundRobin),
    ] {
        let pool = Arc::new(Pool::new(PoolConfig::default()));
        let mut b: Balancer<String, Member> = Balancer::new(BalancerConfig::new(policy), pool.clone());
        for i in 0..10 {
            let addr = format!("10.0.0.{i}:443");
            let m = Member(Arc::new(Inner {
                state: EndpointState::new(1),
                picks: counter!("pickwise.endpoint.picks", "pickwise.endpoint" => addr.clone()),
            }));
            b.insert(0, addr.clone(), EndpointSpec::default(), m);
            b.handle_connectivity(0, &addr, Connectivity::Ready);
        }
        let picker = b.picker(0, 1);
        let by_policy = counter!("pickwise.picks", "pickwise.policy" => policy.name());
        let panic = counter!("pickwise.picks.panic", "pickwise.policy" => policy.name());
        let mut group = c.benchmark_group(format!("pick_metrics/{name}"));
        let mut rng = SplitMix64::new(7);
        let mut now = 1u64 << 30;
        group.bench_function("off", |bn| {
            bn.iter(|| {
                now += 1_000;
                let m = picker.pick(now, None, &mut rng).unwrap();
                let g = InFlight::start(&m.0.state, &*pool, now);
                black_box(g.complete(now + 500_000, Outcome::Success))
            })
        });
        group.bench_function("on", |bn| {
            bn.iter(|| {
                now += 1_000;
                let m = picker.pick(now, None, &mut rng).unwrap();
                by_policy.increment(1);
                m.0.picks.increment(1);
                if !pool.is_available(&m.0.state, now) {
                    panic.increment(1);
                }
                let g = InFlight::start(&m.0.state, &*pool, now);
                black_box(g.complete(now + 500_000, Outcome::Success))
            })
        });
        group.finish();
    }
    // The counts reached the recorder.
    assert!(handle.render().contains("pickwise_endpoint_picks"));
}

criterion_group!(benches, pick_metrics);
criterion_main!(benches);
