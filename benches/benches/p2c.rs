//! Criterion benchmarks of a P2C pick plus completion for each pickwise cost policy.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pickwise::{EndpointState, InFlight, Outcome, P2c, Policy, Pool, PoolConfig, SplitMix64};

fn p2c(c: &mut Criterion) {
    for n in [2usize, 10, 1000, 10_000] {
        let mut group = c.benchmark_group(format!("p2c_pick/{n}"));
        for (name, policy) in [
            ("least-request", Policy::LeastRequest),
            ("peak-ewma", Policy::PeakEwma),
            ("go-zero", Policy::GoZero),
        ] {
            let states: Vec<EndpointState> = (0..n).map(|_| EndpointState::new(1)).collect();
            let pool = Pool::new(PoolConfig::with_policy(policy));
            pool.set_endpoints(n);
            let mut rng = SplitMix64::new(7);
            let mut now = 1u64 << 30;
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    now += 1_000;
                    let i = P2c::new(&states, &pool).pick(now, &mut rng).unwrap_or(0);
                    let g = InFlight::start(&states[i], &pool, now);
                    black_box(g.complete(now + 500_000, Outcome::Success))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, p2c);
criterion_main!(benches);
