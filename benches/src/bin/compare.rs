//! Side-by-side comparison of pickwise and its peers, in one process and one run.
//!
//! ```text
//! cargo run --release -p pickwise-benches --bin compare -- [--quick] [--json]
//! ```
//!
//! Prints a table (or, with `--json`, one JSON object per line: `bench`, `impl`, `n`, `ns_per_op`
//! or `ms`, and the other figures by name). Timings are the best of several repetitions; compare
//! only ratios within one run.

// The counting allocator needs `unsafe`; the libraries under test forbid it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pickwise::{EndpointState, InFlight, Outcome, P2c, Policy, Pool, PoolConfig, SplitMix64};
use pickwise_benches::*;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma, PendingRequests};
use tower::{Service, ServiceExt};

// ===== counting allocator =====

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(live, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        if new_size >= layout.size() {
            let live = LIVE.fetch_add(new_size - layout.size(), Relaxed) + new_size - layout.size();
            PEAK.fetch_max(live, Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f`, returning its value, the net heap bytes it left allocated, and its peak heap growth.
fn measure_heap<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let v = f();
    let live = LIVE.load(Relaxed).saturating_sub(base);
    let peak = PEAK.load(Relaxed).saturating_sub(base);
    (v, live, peak)
}

// ===== output =====

struct Out {
    json: bool,
}

impl Out {
    fn row(&self, bench: &str, imp: &str, n: usize, fields: &[(&str, f64)]) {
        if self.json {
            let f: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("\"{k}\":{}", num(*v)))
                .collect();
            println!(
                "{{\"bench\":\"{bench}\",\"impl\":\"{imp}\",\"n\":{n},{}}}",
                f.join(",")
            );
        } else {
            let f: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={}", num(*v))).collect();
            println!("{bench:<12} {imp:<26} n={n:<6} {}", f.join("  "));
        }
    }

    fn note(&self, text: &str) {
        if !self.json {
            println!("{text}");
        }
    }
}

fn num(v: f64) -> String {
    if !v.is_finite() {
        "null".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

// ===== rings =====

struct Ctx {
    quick: bool,
    out: Out,
}

/// A built ring of one implementation, with its build figures.
struct Built<R> {
    ring: R,
    build_ms: f64,
    heap_bytes: usize,
    best_ns: f64,
}

fn build<R: RingImpl>(cx: &Ctx, eps: &[String]) -> Built<R> {
    let mut build_ms = f64::INFINITY;
    let mut kept = None;
    // Best of a few builds, but never more than about a second in all (hashring's build is
    // quadratic: seconds at 1000 endpoints); the last ring built is the one looked up.
    let spent = Instant::now();
    for _ in 0..if cx.quick { 2 } else { 5 } {
        let start = Instant::now();
        let (ring, live, _) = measure_heap(|| R::build(eps));
        build_ms = build_ms.min(start.elapsed().as_secs_f64() * 1e3);
        kept = Some((ring, live));
        if spent.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    let (ring, heap_bytes) = kept.expect("at least one build");
    Built {
        ring,
        build_ms,
        heap_bytes,
        best_ns: f64::INFINITY,
    }
}

fn report<R: RingImpl>(cx: &Ctx, b: &Built<R>, n: usize, keys: &[[u8; 16]], dist_keys: &[[u8; 16]]) {
    let points = (n as u64 * u64::from(POINTS)) as f64;
    cx.out.row(
        "ring_build",
        R::NAME,
        n,
        &[
            ("ms", b.build_ms),
            ("heap_bytes", b.heap_bytes as f64),
            ("bytes_per_point", b.heap_bytes as f64 / points),
        ],
    );
    let before = ALLOCS.load(Relaxed);
    black_box(time_lookups(&b.ring, keys, 1, 1));
    let allocs = (ALLOCS.load(Relaxed) - before) as f64 / keys.len() as f64;
    let (cv, max_mean) = distribution(&b.ring, n, dist_keys);
    cx.out.row(
        "ring_lookup",
        R::NAME,
        n,
        &[
            ("ns_per_op", b.best_ns),
            ("cv", cv),
            ("max_mean", max_mean),
            ("allocs_per_lookup", allocs),
        ],
    );
}

/// Builds every implementation for each `n`, then times lookups round-robin (best of the rounds),
/// so machine noise hits all implementations alike.
macro_rules! ring_suite {
    ($cx:expr, $ns:expr, $keys:expr, $dist:expr, $base:ident: $bty:ty, $($name:ident: $ty:ty),+ $(,)?) => {
        ring_suite!(@run $cx, $ns, $keys, $dist, $base, $base: $bty, $($name: $ty),+)
    };
    (@run $cx:expr, $ns:expr, $keys:expr, $dist:expr, $base:ident, $($name:ident: $ty:ty),+) => {{
        for &n in $ns {
            let eps = endpoints(n);
            $( let mut $name = build::<$ty>($cx, &eps); )+
            let rounds = if $cx.quick { 3 } else { 7 };
            let passes = if $cx.quick { 10 } else { 40 };
            for _ in 0..rounds {
                $( $name.best_ns = $name.best_ns.min(time_lookups(&$name.ring, $keys, passes, 1)); )+
            }
            $( report($cx, &$name, n, $keys, $dist); )+
            let base = $base.best_ns;
            $cx.out.row("ring_ratio", "impl/pickwise-native", n, &[$( (stringify!($name), $name.best_ns / base) ),+]);
        }
        $( $cx.out.row("ring_moved", <$ty>::NAME, 10, &[("moved_fraction", moved_fraction::<$ty>(&endpoints(10), 3, $dist)), ("ideal", 0.1)]); )+
    }};
}

// ===== P2C =====

fn pickwise_p2c(n: usize, policy: Policy, ops: usize) -> f64 {
    let states: Vec<EndpointState> = (0..n).map(|_| EndpointState::new(1)).collect();
    let pool = Pool::new(PoolConfig::with_policy(policy));
    pool.set_endpoints(n);
    let mut rng = SplitMix64::new(7);
    let mut now = 1u64 << 30;
    let start = Instant::now();
    for _ in 0..ops {
        now += 1_000;
        let i = P2c::new(&states, &pool).pick(now, &mut rng).unwrap_or(0);
        let g = InFlight::start(&states[i], &pool, now);
        black_box(g.complete(now + 500_000, Outcome::Success));
    }
    start.elapsed().as_nanos() as f64 / ops as f64
}

/// Two threads picking and completing: per-op time of each thread. `shared`: on the same endpoints
/// and pool; otherwise each thread on its own copy (the control: what two threads cost on this
/// machine with nothing shared, e.g. when its two CPUs are hyperthreads of one core).
fn pickwise_p2c_two_threads(n: usize, ops: usize, shared: bool) -> f64 {
    let make = || {
        let pool = Pool::new(PoolConfig::with_policy(Policy::PeakEwma));
        pool.set_endpoints(n);
        (
            Arc::new((0..n).map(|_| EndpointState::new(1)).collect::<Vec<_>>()),
            Arc::new(pool),
        )
    };
    let common = make();
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let (states, pool) = if shared {
                (common.0.clone(), common.1.clone())
            } else {
                make()
            };
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut rng = SplitMix64::new(t + 1);
                let mut now = 1u64 << 30;
                barrier.wait();
                let start = Instant::now();
                for _ in 0..ops {
                    now += 1_000;
                    let i = P2c::new(&states[..], &pool).pick(now, &mut rng).unwrap_or(0);
                    let g = InFlight::start(&states[i], &*pool, now);
                    black_box(g.complete(now + 500_000, Outcome::Success));
                }
                start.elapsed().as_nanos() as f64 / ops as f64
            })
        })
        .collect();
    let per: Vec<f64> = threads
        .into_iter()
        .map(|t| t.join().unwrap_or(f64::NAN))
        .collect();
    per.iter().sum::<f64>() / per.len() as f64
}

fn tower_p2c<S>(rt: &tokio::runtime::Runtime, services: Vec<S>, ops: usize) -> f64
where
    S: Service<(), Response = ()> + tower::load::Load + Send + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send,
    <S as tower::load::Load>::Metric: std::fmt::Debug,
{
    rt.block_on(async move {
        let mut bal = Balance::new(ServiceList::new(services));
        // First readiness discovers every endpoint; not part of the pick cost.
        let _ = bal.ready().await;
        let start = Instant::now();
        for _ in 0..ops {
            let Ok(svc) = bal.ready().await else { break };
            let _ = black_box(svc.call(()).await);
        }
        start.elapsed().as_nanos() as f64 / ops as f64
    })
}

fn unit_service(
) -> impl Service<(), Response = (), Error = Infallible, Future = std::future::Ready<Result<(), Infallible>>>
       + Clone
       + Send {
    tower::service_fn(|_: ()| std::future::ready(Ok::<(), Infallible>(())))
}

fn p2c_suite(cx: &Ctx) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let ops = if cx.quick { 100_000 } else { 1_000_000 };
    for n in [2usize, 10, 1000, 10_000] {
        let mut ours = Vec::new();
        for (name, policy) in [
            ("pickwise-least-request", Policy::LeastRequest),
            ("pickwise-peak-ewma", Policy::PeakEwma),
            ("pickwise-go-zero", Policy::GoZero),
        ] {
            let reps = if cx.quick { 2 } else { 3 };
            let ns = (0..reps)
                .map(|_| pickwise_p2c(n, policy, ops))
                .fold(f64::INFINITY, f64::min);
            cx.out.row("p2c_pick", name, n, &[("ns_per_op", ns)]);
            ours.push((name, ns));
        }
        let tower_ops = if n >= 1000 { ops / 20 } else { ops / 4 };
        let pending: Vec<_> = (0..n)
            .map(|_| PendingRequests::new(unit_service(), CompleteOnResponse::default()))
            .collect();
        let t_pending = tower_p2c(&rt, pending, tower_ops);
        cx.out.row(
            "p2c_pick",
            "tower-p2c-pending-requests",
            n,
            &[("ns_per_op", t_pending)],
        );
        let ewma = rt.block_on(async {
            (0..n)
                .map(|_| {
                    PeakEwma::new(
                        unit_service(),
                        Duration::from_millis(30),
                        10e9,
                        CompleteOnResponse::default(),
                    )
                })
                .collect::<Vec<_>>()
        });
        let t_ewma = tower_p2c(&rt, ewma, tower_ops);
        cx.out
            .row("p2c_pick", "tower-p2c-peak-ewma", n, &[("ns_per_op", t_ewma)]);
        let lr = ours[0].1;
        let pe = ours[1].1;
        cx.out.row(
            "p2c_ratio",
            "tower/pickwise",
            n,
            &[
                ("pending_vs_least_request", t_pending / lr),
                ("peak_ewma_vs_peak_ewma", t_ewma / pe),
            ],
        );
        let two = pickwise_p2c_two_threads(n, ops, true);
        let control = pickwise_p2c_two_threads(n, ops, false);
        cx.out.row(
            "p2c_2threads",
            "pickwise-peak-ewma",
            n,
            &[
                ("ns_per_op", two),
                ("vs_1_thread", two / pe),
                ("unshared_ns_per_op", control),
                ("vs_unshared", two / control),
            ],
        );
    }
}

// ===== Maglev =====

fn maglev_suite(cx: &Ctx) {
    let n = 1000;
    let eps = endpoints(n);
    let keys = keys(4096, 99);
    let start = Instant::now();
    let (ours, _, ours_peak) = measure_heap(|| PickwiseMaglev::build(&eps));
    let ours_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let (theirs, _, theirs_peak) = measure_heap(|| MaglevCrate::build(&eps));
    let theirs_ms = start.elapsed().as_secs_f64() * 1e3;
    let rounds = if cx.quick { 20 } else { 100 };
    let ours_ns = time_lookups(&ours, &keys, rounds, 3);
    let theirs_ns = time_lookups(&theirs, &keys, rounds, 3);
    cx.out.row(
        "maglev",
        PickwiseMaglev::NAME,
        n,
        &[
            ("ms", ours_ms),
            ("peak_bytes", ours_peak as f64),
            ("ns_per_op", ours_ns),
        ],
    );
    cx.out.row(
        "maglev",
        MaglevCrate::NAME,
        n,
        &[
            ("ms", theirs_ms),
            ("peak_bytes", theirs_peak as f64),
            ("ns_per_op", theirs_ns),
        ],
    );
    cx.out.row(
        "maglev_ratio",
        "maglev/pickwise",
        n,
        &[
            ("build_speedup", theirs_ms / ours_ms),
            ("peak_memory_ratio", theirs_peak as f64 / ours_peak.max(1) as f64),
        ],
    );
}

/// Side-by-side comparison of pickwise and its peer crates, in one process and one run.
#[derive(clap::Parser, Debug)]
#[command(name = "compare")]
struct Args {
    /// Fewer repetitions and keys (about 20 s).
    #[arg(long)]
    quick: bool,
    /// One JSON object per line instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() {
    // clap prints usage and exits 0 for `--help`, 2 for bad arguments.
    let args = <Args as clap::Parser>::parse();
    let cx = Ctx {
        quick: args.quick,
        out: Out { json: args.json },
    };
    let started = Instant::now();
    let ns = [10usize, 100, 1000];
    let keys = keys(4096, 1);
    let dist_keys = pickwise_benches::keys(if cx.quick { 50_000 } else { 200_000 }, 2);

    cx.out
        .note("# rings: 16-byte keys, hashing included; 100 points per endpoint (ketama: 160)");
    ring_suite!(
        &cx, &ns, &keys, &dist_keys,
        native: PickwiseNative,
        envoy_mode: PickwiseEnvoy,
        pickwise_maglev: PickwiseMaglev,
        binary_search: BinarySearch,
        pingora_ketama: Ketama,
        hashring: HashRingCrate,
        conhash: ConHash,
        maglev: MaglevCrate,
        mpchash: MpcHash,
    );
    cx.out.note("\n# Maglev tables at 1000 endpoints (65537 slots)");
    maglev_suite(&cx);
    cx.out.note("\n# P2C pick + complete");
    p2c_suite(&cx);
    cx.out.note(&format!(
        "\ncompare finished in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
}
