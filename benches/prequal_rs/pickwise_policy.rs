//! pickwise as a policy of prequal-rs's HTTP testbed (`crates/prequal-testbed`, the `prequal-testbed`
//! binary). This file is pickwise's side only; it is copied into the testbed's `src/` next to its
//! `client.rs` (see `README.md` in this folder for the few lines the testbed needs).
//!
//! One [`PickwiseService`] per testbed client, like every other policy there (20 independent
//! clients, each with its own balancer state): a `tower::Service<u64>` (the request is the work
//! size in µs) that the testbed's open-loop driver calls.
//!
//! - The core's [`Balancer`] is driven directly (no adapter): the 20 servers are inserted as one
//!   priority and locality and reported READY at once (the testbed has no connection state to
//!   translate; reqwest connects lazily); `handle_timeout` runs when `poll_timeout` says, on the
//!   request path (the client task is the only owner, so no lock).
//! - Each request: `Prepared::pick` (no lock, no allocation) -> an [`InFlight`] guard on the
//!   chosen endpoint -> `POST /work` with reqwest -> `complete` with `Outcome::Success` for a 2xx
//!   whose body arrived, `Outcome::Failure` for a 5xx or a transport error. A request the testbed
//!   times out (10 s) is dropped: the guard only releases its slot.
//! - `pickwise-prequal`: after the pick, `Prepared::probe_targets` says which ready endpoints to
//!   probe; each probe is a spawned `GET /prequal/probe` on its own reqwest client (as the
//!   testbed's Prequal arm does, so a timed-out probe never closes a request connection), with
//!   the testbed's probe timeout (50 ms) and in-flight cap (64); answers go to
//!   `Prepared::record_probe`. With `--piggyback`, the `x-prequal-rif` / `x-prequal-latency-us`
//!   headers of each `/work` response are recorded the same way.
//!
//! Probe counts are kept here (the testbed's `ProbeCounts` is `#[non_exhaustive]`, so another
//! crate cannot build one) and printed by [`probe_summary`] after the run.

use std::{
    borrow::Borrow,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use pickwise::balancer::{Balancer, BalancerConfig, Connectivity, EndpointSpec, Prepared};
use pickwise::prequal::{PrequalConfig, ProbeReport};
use pickwise::{EndpointState, InFlight, LbPolicy, Outcome, Policy, Pool, PoolConfig, Rng, SplitMix64};
use tower::{BoxError, Service};

/// Which pickwise policy a client runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `LbPolicy::P2c(Policy::PeakEwma)` (`pickwise_peak_ewma`).
    PeakEwma,
    /// `LbPolicy::P2c(Policy::LeastRequest)` (`least_request_experimental`).
    LeastRequest,
    /// `LbPolicy::Prequal` (`pickwise_prequal`).
    Prequal,
}

/// The testbed's settings this policy honours.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Probes per query (`--probes-per-query`).
    pub probes_per_query: f64,
    /// Pool removals per query (the testbed's `Config::removes_per_query`).
    pub removes_per_query: f64,
    /// Hot/cold quantile (`--q-rif`; the testbed's default 0.6, pickwise's own default 0.84).
    pub q_rif: f64,
    /// Record the load headers every `/work` response carries (`--piggyback`).
    pub piggyback: bool,
    /// Consecutive failures that eject (`--eject-after-failures`; 0 disables ejection).
    pub eject_after_failures: u32,
    /// Probe timeout (`--probe-timeout-ms`).
    pub probe_timeout: Duration,
    /// Most probes outstanding per client (`--max-in-flight-probes`).
    pub max_in_flight_probes: usize,
}

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// The monotonic clock the core wants, in nanoseconds.
fn now_ns() -> u64 {
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

static SENT: AtomicU64 = AtomicU64::new(0);
static ANSWERED: AtomicU64 = AtomicU64::new(0);
static TIMED_OUT: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);
static SKIPPED: AtomicU64 = AtomicU64::new(0);
static PIGGYBACKED: AtomicU64 = AtomicU64::new(0);
static PICKS: AtomicU64 = AtomicU64::new(0);
/// Picks the hot-cold rule could not decide (fewer than two usable answers: P2C fallback).
static FALLBACK_PICKS: AtomicU64 = AtomicU64::new(0);
/// Failed requests, by how they were picked, and by second since the first client started.
static FAIL_FALLBACK: AtomicU64 = AtomicU64::new(0);
static FAIL_HCL: AtomicU64 = AtomicU64::new(0);
static FAIL_AT: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];

fn count_failure(fallback: bool) {
    let by = if fallback { &FAIL_FALLBACK } else { &FAIL_HCL };
    by.fetch_add(1, Relaxed);
    let second = (now_ns() / 1_000_000_000).min(31) as usize;
    FAIL_AT[second].fetch_add(1, Relaxed);
}

/// `probes_sent,probes_answered,probes_timed_out,probes_failed,probes_skipped,piggybacked,picks`
/// over every pickwise client of this process (the testbed's CSV columns, plus two), then the
/// fallback picks and where the failed requests came from (`fail_at_s`: per second since the
/// first client started, the last bucket holding the rest; the testbed measures from 3 s).
pub fn probe_summary() -> String {
    let fail_at: Vec<String> = FAIL_AT.iter().map(|a| a.load(Relaxed).to_string()).collect();
    format!(
        "pickwise_probes sent={} answered={} timed_out={} failed={} skipped={} piggybacked={} picks={} \
         fallback_picks={} fail_fallback={} fail_hcl={} fail_at_s={}",
        SENT.load(Relaxed),
        ANSWERED.load(Relaxed),
        TIMED_OUT.load(Relaxed),
        FAILED.load(Relaxed),
        SKIPPED.load(Relaxed),
        PIGGYBACKED.load(Relaxed),
        PICKS.load(Relaxed),
        FALLBACK_PICKS.load(Relaxed),
        FAIL_FALLBACK.load(Relaxed),
        FAIL_HCL.load(Relaxed),
        fail_at.join(","),
    )
}

/// A balancer member: the endpoint's shared load state and its position in the address list.
#[derive(Clone, Debug)]
pub struct Member {
    state: Arc<EndpointState>,
    index: usize,
}

impl Borrow<EndpointState> for Member {
    fn borrow(&self) -> &EndpointState {
        &self.state
    }
}

fn load_report(headers: &reqwest::header::HeaderMap) -> Option<ProbeReport> {
    let rif = headers.get("x-prequal-rif")?.to_str().ok()?.trim().parse().ok()?;
    let latency_us: u64 = headers.get("x-prequal-latency-us")?.to_str().ok()?.trim().parse().ok()?;
    Some(ProbeReport { rif, latency_us: latency_us.min(u64::from(u32::MAX)) as u32 })
}

/// Sends Prequal's probes: `GET /prequal/probe`, answers into the picker they were taken from.
struct Prober {
    client: reqwest::Client,
    urls: Vec<String>,
    timeout: Duration,
    max_in_flight: usize,
    in_flight: AtomicUsize,
}

impl Prober {
    fn spawn_probe(self: &Arc<Self>, picker: Arc<Prepared<Member>>, member: Member, seed: u64) {
        if self.in_flight.fetch_add(1, Relaxed) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Relaxed);
            SKIPPED.fetch_add(1, Relaxed);
            return;
        }
        SENT.fetch_add(1, Relaxed);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let get = this.client.get(&this.urls[member.index]).send();
            match tokio::time::timeout(this.timeout, get).await {
                Ok(Ok(response)) => match load_report(response.headers()) {
                    Some(report) => {
                        ANSWERED.fetch_add(1, Relaxed);
                        picker.record_probe(&member.state, report, now_ns(), &mut SplitMix64::new(seed));
                    }
                    None => {
                        FAILED.fetch_add(1, Relaxed);
                    }
                },
                Ok(Err(_)) => {
                    FAILED.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    TIMED_OUT.fetch_add(1, Relaxed);
                }
            }
            this.in_flight.fetch_sub(1, Relaxed);
        });
    }
}

/// One testbed client's pickwise balancer, as a `tower::Service<u64>`.
pub struct PickwiseService {
    balancer: Balancer<String, Member>,
    picker: Arc<Prepared<Member>>,
    pool: Arc<Pool>,
    client: reqwest::Client,
    work_urls: Vec<String>,
    prober: Option<Arc<Prober>>,
    piggyback: bool,
    rng: SplitMix64,
    seed: u64,
    next_timeout: Option<u64>,
}

impl PickwiseService {
    /// A client over `addrs` (the fleet's servers), its draws seeded with `seed`.
    pub fn new(kind: Kind, addrs: &[SocketAddr], settings: Settings, seed: u64) -> Self {
        let now = now_ns();
        let cost = match kind {
            Kind::LeastRequest => Policy::LeastRequest,
            Kind::PeakEwma | Kind::Prequal => Policy::PeakEwma,
        };
        let policy = match kind {
            Kind::PeakEwma | Kind::LeastRequest => LbPolicy::P2c(cost),
            Kind::Prequal => LbPolicy::Prequal(PrequalConfig {
                probes_per_query: settings.probes_per_query as f32,
                removes_per_query: settings.removes_per_query as f32,
                q_rif: settings.q_rif as f32,
                ..PrequalConfig::default()
            }),
        };
        let mut pool_config = PoolConfig::with_policy(cost);
        pool_config.outlier.consecutive_failures = settings.eject_after_failures;
        let pool = Arc::new(Pool::new(pool_config));
        let mut config = BalancerConfig::new(policy);
        config.seed = seed;
        let mut balancer = Balancer::new(config, Arc::clone(&pool));
        let keys: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        for (index, key) in keys.iter().enumerate() {
            let member = Member { state: Arc::new(EndpointState::new(1)), index };
            balancer.insert(now, key.clone(), EndpointSpec::default(), member);
        }
        // Connect events: reqwest connects on first use, so every server is READY at once.
        while balancer.poll_event().is_some() {}
        for key in &keys {
            balancer.handle_connectivity(now, key, Connectivity::Ready);
        }
        let picker = Arc::new(balancer.picker(now, seed));
        let prober = (kind == Kind::Prequal).then(|| {
            Arc::new(Prober {
                // Its own connection pool, as the testbed's Prequal arm has.
                client: reqwest::Client::new(),
                urls: addrs.iter().map(|a| format!("http://{a}/prequal/probe")).collect(),
                timeout: settings.probe_timeout,
                max_in_flight: settings.max_in_flight_probes.max(1),
                in_flight: AtomicUsize::new(0),
            })
        });
        let next_timeout = balancer.poll_timeout();
        Self {
            balancer,
            picker,
            pool,
            client: reqwest::Client::new(),
            work_urls: addrs.iter().map(|a| format!("http://{a}/work")).collect(),
            prober,
            piggyback: settings.piggyback && kind == Kind::Prequal,
            rng: SplitMix64::new(seed),
            seed,
            next_timeout,
        }
    }

    /// The core's timers (ejection expiry, multiplier decay) and a new picker if one is due.
    fn upkeep(&mut self, now: u64) {
        if self.next_timeout.is_some_and(|t| t <= now) {
            self.balancer.handle_timeout(now);
            while self.balancer.poll_event().is_some() {}
            self.next_timeout = self.balancer.poll_timeout();
        }
        if let Some(picker) = self.balancer.poll_picker(now, self.seed) {
            self.picker = Arc::new(picker);
        }
    }
}

impl Service<u64> for PickwiseService {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, units_us: u64) -> Self::Future {
        let now = now_ns();
        self.upkeep(now);
        // The client is this picker's only user, so a moved counter means this pick fell back.
        let fallbacks_before = self.picker.probes().map(|p| p.fallbacks());
        let member = match self.picker.pick(now, None, &mut self.rng) {
            Ok(member) => member.clone(),
            Err(unpicked) => return Box::pin(async move { Err(format!("no endpoint: {unpicked:?}").into()) }),
        };
        PICKS.fetch_add(1, Relaxed);
        let fallback = self.picker.probes().map(|p| p.fallbacks()) != fallbacks_before;
        if fallback {
            FALLBACK_PICKS.fetch_add(1, Relaxed);
        }
        // Prequal: the probes this query owes, sent after the pick (the pick counts the query).
        if let Some(prober) = &self.prober {
            let mut targets = [0usize; 16];
            let n = self.picker.probe_targets(now, &mut self.rng, &mut targets);
            for &position in &targets[..n] {
                let target = self.picker.ready()[position].clone();
                prober.spawn_probe(Arc::clone(&self.picker), target, self.rng.next_u64());
            }
        }
        let guard = InFlight::start(member.clone(), Arc::clone(&self.pool), now);
        let request = self.client.post(format!("{}?units_us={units_us}", self.work_urls[member.index])).send();
        let feedback = self.piggyback.then(|| (Arc::clone(&self.picker), self.rng.next_u64()));
        Box::pin(async move {
            let response = match request.await {
                Ok(response) => response,
                Err(e) => {
                    guard.complete(now_ns(), Outcome::Failure);
                    count_failure(fallback);
                    return Err(e.into());
                }
            };
            if !response.status().is_success() {
                let status = response.status();
                guard.complete(now_ns(), Outcome::Failure);
                count_failure(fallback);
                return Err(format!("status {status}").into());
            }
            if let Some((picker, seed)) = feedback
                && let Some(report) = load_report(response.headers())
            {
                PIGGYBACKED.fetch_add(1, Relaxed);
                picker.record_probe(&member.state, report, now_ns(), &mut SplitMix64::new(seed));
            }
            match response.bytes().await {
                Ok(_) => {
                    guard.complete(now_ns(), Outcome::Success);
                    Ok(())
                }
                Err(e) => {
                    guard.complete(now_ns(), Outcome::Failure);
                    Err(e.into())
                }
            }
        })
    }
}
