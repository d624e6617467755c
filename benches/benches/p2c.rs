//! Criterion benchmarks of a P2C pick plus completion for each pickwise cost policy, and of
//! weighted round robin: the static stride scheduler (now) against the previous O(n) scan of the
//! weight line (kept here as the baseline), and the core balancer's prepared picker.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

use pickwise::balancer::{Balancer, BalancerConfig, Connectivity, EndpointSpec};
use pickwise::schedule::Stride;
use pickwise::{EndpointState, InFlight, LbPolicy, Outcome, P2c, Policy, Pool, PoolConfig, SplitMix64};

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

/// The previous weighted round robin (before the stride scheduler): the cursor's point on the
/// weight line by a coprime stride, then a linear scan for its owner. Kept as the baseline.
fn scan_pick(weights: &[u32], total: u64, stride: u64, cursor: &AtomicU32) -> usize {
    let c = u64::from(cursor.fetch_add(1, Relaxed));
    let mut x = (c * stride) % total;
    for (i, w) in weights.iter().enumerate() {
        if x < u64::from(*w) {
            return i;
        }
        x -= u64::from(*w);
    }
    0
}

fn weighted_round_robin(c: &mut Criterion) {
    for n in [10usize, 100, 1000, 10_000] {
        let mut group = c.benchmark_group(format!("wrr_pick/{n}"));
        let weights: Vec<u32> = (0..n as u32).map(|i| 1 + i % 7).collect();
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut stride = ((total as f64) * 0.618) as u64 | 1;
        while gcd(stride, total) != 1 {
            stride += 1;
        }
        let cursor = AtomicU32::new(0);
        group.bench_function(BenchmarkId::from_parameter("previous-scan"), |b| {
            b.iter(|| black_box(scan_pick(&weights, total, stride, &cursor)))
        });
        let scaled = pickwise::schedule::scaled(&weights);
        let seq = AtomicU32::new(0);
        let mut rng = SplitMix64::new(3);
        group.bench_function(BenchmarkId::from_parameter("stride"), |b| {
            b.iter(|| black_box(Stride::new(&scaled, &seq).next(&mut rng, |_| true)))
        });
        // The core balancer's picker: 4 localities, round robin weighted inside each.
        let pool = Arc::new(Pool::new(PoolConfig::default()));
        let mut bal: Balancer<String, Arc<EndpointState>> =
            Balancer::new(BalancerConfig::new(LbPolicy::RoundRobin), pool.clone());
        for (i, w) in weights.iter().enumerate() {
            let key = format!("10.{}.{}.{}:80", i / 65_536, (i / 256) % 256, i % 256);
            let spec = EndpointSpec {
                weight: *w,
                locality: i as u32 % 4,
                ..EndpointSpec::default()
            };
            bal.insert(0, key.clone(), spec, Arc::new(EndpointState::new(1)));
            bal.handle_connectivity(0, &key, Connectivity::Ready);
        }
        let picker = bal.picker(0, 1);
        group.bench_function(BenchmarkId::from_parameter("balancer-prepared"), |b| {
            b.iter(|| black_box(picker.pick(1, None, &mut rng).is_ok()))
        });
        group.finish();
    }
}

/// Prequal (`pickwise_prequal`) against P2C peak-EWMA through the same prepared picker: a pick
/// plus its completion, and for Prequal the client's whole per-query work at the default 3
/// probes per query (the pick, the completion, 3 answers recorded: what keeps the pool full),
/// and one recorded answer alone (the prober's cost, off the pick path).
fn prequal(c: &mut Criterion) {
    use pickwise::prequal::{PrequalConfig, ProbeReport};
    for n in [20usize, 1000] {
        let mut group = c.benchmark_group(format!("prequal_pick/{n}"));
        for (name, lb) in [
            ("p2c-peak-ewma", LbPolicy::P2c(Policy::PeakEwma)),
            ("prequal+3-answers", LbPolicy::Prequal(PrequalConfig::default())),
        ] {
            let pool = Arc::new(Pool::new(PoolConfig::default()));
            let mut bal: Balancer<String, Arc<EndpointState>> =
                Balancer::new(BalancerConfig::new(lb), pool.clone());
            for i in 0..n {
                let key = format!("10.0.{}.{}:80", i / 256, i % 256);
                bal.insert(
                    0,
                    key.clone(),
                    EndpointSpec::default(),
                    Arc::new(EndpointState::new(1)),
                );
                bal.handle_connectivity(0, &key, Connectivity::Ready);
            }
            let picker = bal.picker(0, 1);
            let mut rng = SplitMix64::new(7);
            let mut now = 1u64 << 30;
            let mut k = 0u32;
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    now += 1_000;
                    if picker.probes().is_some() {
                        for _ in 0..3 {
                            k = k.wrapping_add(1);
                            let e = &picker.ready()[(k as usize * 7919) % n];
                            let r = ProbeReport {
                                rif: k % 13,
                                latency_us: 1000 + k % 997,
                            };
                            picker.record_probe(e, r, now, &mut rng);
                        }
                    }
                    let e = picker.pick(now, None, &mut rng).unwrap();
                    let g = InFlight::start(&**e, &*pool, now);
                    black_box(g.complete(now + 500_000, Outcome::Success))
                })
            });
            if let Some(probes) = picker.probes() {
                let e = picker.ready()[0].clone();
                group.bench_function(BenchmarkId::from_parameter("prequal-record-1"), |b| {
                    b.iter(|| {
                        k = k.wrapping_add(1);
                        probes.record(
                            &e,
                            ProbeReport {
                                rif: k % 13,
                                latency_us: 1000,
                            },
                            now,
                            &mut rng,
                        )
                    })
                });
            }
        }
        group.finish();
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

criterion_group!(benches, p2c, weighted_round_robin, prequal);
criterion_main!(benches);
