//! Criterion benchmarks of ring lookups and builds: pickwise (native, Envoy, Maglev) beside the
//! plain binary search and the peer crates, 16-byte keys with hashing included.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pickwise_benches::*;

fn lookup<R: RingImpl>(c: &mut Criterion, n: usize, keys: &[[u8; 16]]) {
    let ring = R::build(&endpoints(n));
    let mut group = c.benchmark_group(format!("ring_lookup/{n}"));
    group.bench_function(BenchmarkId::from_parameter(R::NAME), |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & (keys.len() - 1);
            black_box(ring.lookup(black_box(&keys[i])))
        })
    });
    group.finish();
}

fn build<R: RingImpl>(c: &mut Criterion, n: usize) {
    let eps = endpoints(n);
    let mut group = c.benchmark_group(format!("ring_build/{n}"));
    group.sample_size(10);
    group.bench_function(BenchmarkId::from_parameter(R::NAME), |b| {
        b.iter(|| black_box(R::build(&eps)))
    });
    group.finish();
}

fn rings(c: &mut Criterion) {
    let keys = keys(4096, 1);
    for n in [10, 100, 1000] {
        lookup::<PickwiseNative>(c, n, &keys);
        lookup::<PickwiseEnvoy>(c, n, &keys);
        lookup::<PickwiseMaglev>(c, n, &keys);
        lookup::<BinarySearch>(c, n, &keys);
        lookup::<Ketama>(c, n, &keys);
        lookup::<HashRingCrate>(c, n, &keys);
        lookup::<MaglevCrate>(c, n, &keys);
        build::<PickwiseNative>(c, n);
        build::<PickwiseEnvoy>(c, n);
        build::<Ketama>(c, n);
        build::<HashRingCrate>(c, n);
    }
}

criterion_group!(benches, rings);
criterion_main!(benches);
