//! The reference decides: each scenario in `tests/scenarios/*.json` (a timeline of xDS resources
//! and faults) runs at the same time through gRPC C-core's own xDS client (Python grpcio,
//! `support/xds_driver.py`) and through pickwise-xds, against the same in-process control plane
//! and the same backends. Per window of the timeline, both sides' shares per backend and error
//! rates are compared within the scenario's tolerances; for ring hash, which backend each key
//! lands on. A scenario marked `"deviation"` is one pickwise deliberately does differently
//! (listed in `docs/xds.md`): its figures are printed, not asserted.
//!
//! Each run appends a table row per window to `target/xds-differential.md` (CI prints it), so
//! the numbers of both sides are in the log whether the test passes or not.
//!
//! Format (see the files for examples): `backends` (name -> "live" | "refuse" | "silent"
//! (accepts TCP, never answers)), `policy` ("round_robin" | "ring_hash"), optional
//! `hash_header` and `keys`, `localities` (weight, priority, backends), `timeline` (steps at
//! `at_ms`: kill, restart, localities, policy, stop_control_plane, start_control_plane,
//! listener (point LDS at another route configuration), routes (publish a route configuration),
//! invalid_cluster, junk_cluster, remove_cluster, fail, delay), `duration_ms`, `windows` (`from_ms`, `to_ms`, tolerances).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pickwise_xds::control_plane::resources::{self, Locality, Policy};
use pickwise_xds::control_plane::ControlPlane;
use pickwise_xds::resource::ResourceType;
use serde::Deserialize;
use support::backend::Backend;
use support::*;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/xds_driver.py");
const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scenarios");
const WORKERS: usize = 4;
/// Lead time between the C-core driver's readiness and the shared start.
const LEAD_MS: u64 = 300;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Scenario {
    about: String,
    backends: BTreeMap<String, Kind>,
    policy: PolicyName,
    #[serde(default)]
    hash_header: Option<String>,
    #[serde(default)]
    keys: u32,
    localities: Vec<Loc>,
    #[serde(default)]
    timeline: Vec<Step>,
    duration_ms: u64,
    windows: Vec<Window>,
    /// A deliberate deviation (why): compared and printed, not asserted.
    #[serde(default)]
    deviation: Option<String>,
    /// Connect timeout of both clients (C-core's `grpc.min_reconnect_backoff_ms`; default 500).
    #[serde(default = "connect_timeout")]
    connect_timeout_ms: u64,
    /// EDS `drop_overloads`: one category dropping this percentage.
    #[serde(default)]
    drop_percent: u32,
    /// CDS `outlier_detection` with this `consecutive_5xx` (interval 1 s, base ejection 30 s).
    #[serde(default)]
    outlier_consecutive_5xx: u32,
    /// The bootstrap's server has `ignore_resource_deletion` (gRFC A53).
    #[serde(default)]
    ignore_resource_deletion: bool,
    /// A second cluster, `other`, with these localities (same policy).
    #[serde(default)]
    other_localities: Option<Vec<Loc>>,
    /// The route configuration's shape (default: every RPC to `backends`).
    #[serde(default)]
    route: Option<RouteSpec>,
    /// Headers every call of both clients carries.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// CDS circuit breaker: `max_requests` of the default priority.
    #[serde(default)]
    max_requests: u32,
    /// CDS `outlier_detection` with failure-percentage ejection at this threshold (request
    /// volume 10, minimum hosts 3, enforcing 100%; interval 1 s, base ejection 30 s).
    #[serde(default)]
    outlier_failure_percentage: u32,
    /// ORCA per-call load reports (gRFC A51) a backend attaches to every call: `[qps,
    /// application_utilization]` (for `weighted_round_robin`).
    #[serde(default)]
    orca: BTreeMap<String, (f64, f64)>,
}

fn connect_timeout() -> u64 {
    500
}

/// A route configuration shape.
#[derive(Deserialize, Debug, Clone)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RouteSpec {
    /// `weighted_clusters` over (cluster, weight).
    Weighted { clusters: Vec<(String, u32)> },
    /// A first route matching header `header` by `safe_regex` `regex` to `cluster`; then every
    /// other RPC to `backends`.
    HeaderRegex {
        header: String,
        regex: String,
        cluster: String,
    },
    /// One route to `backends` with these hash policies (header hashes).
    HashPolicies { policies: Vec<HashHeader> },
}

#[derive(Deserialize, Debug, Clone)]
struct HashHeader {
    header: String,
    #[serde(default)]
    terminal: bool,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Live,
    Refuse,
    Silent,
}

#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum PolicyName {
    RoundRobin,
    RingHash,
    /// `wrr_locality` over `client_side_weighted_round_robin`, blackout 0, 100 ms updates.
    WeightedRoundRobin,
}

impl PolicyName {
    fn policy(self) -> Policy {
        match self {
            Self::RoundRobin => Policy::RoundRobin,
            Self::RingHash => Policy::RingHash { min: 1024, max: 4096 },
            Self::WeightedRoundRobin => Policy::WeightedRoundRobin {
                blackout_ms: 0,
                update_ms: 100,
            },
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Loc {
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    priority: u32,
    backends: Vec<String>,
    /// Endpoint weights, parallel to `backends` (default 1).
    #[serde(default)]
    weights: Vec<u32>,
    /// Health status per backend (0 unknown, 1 healthy, 2 unhealthy, 3 draining; default 1).
    #[serde(default)]
    health: Vec<i32>,
    #[serde(default)]
    zone: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize, Debug, Clone)]
struct Step {
    at_ms: u64,
    #[serde(flatten)]
    action: Action,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(tag = "do", rename_all = "snake_case")]
enum Action {
    Kill {
        backend: String,
    },
    Restart {
        backend: String,
    },
    Fail {
        backend: String,
        on: bool,
        /// The gRPC code the failing calls get (default UNAVAILABLE).
        #[serde(default)]
        code: u64,
    },
    Delay {
        backend: String,
        ms: u64,
    },
    Localities {
        localities: Vec<Loc>,
    },
    Policy {
        policy: PolicyName,
    },
    StopControlPlane,
    StartControlPlane,
    Listener {
        routes: String,
    },
    Routes {
        name: String,
    },
    InvalidCluster,
    /// Bytes that do not decode as a Cluster, in place of the cluster.
    JunkCluster,
    RemoveCluster,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Window {
    from_ms: u64,
    to_ms: u64,
    /// Largest allowed difference of any backend's share (default 0.08).
    #[serde(default = "share_tolerance")]
    share: f64,
    /// Largest allowed difference of the error rates (default 0.02).
    #[serde(default = "error_tolerance")]
    errors: f64,
    /// Ring hash: smallest share of keys both send to the same backend (default 0.98).
    #[serde(default = "agreement")]
    agree: f64,
    /// Compare successful calls per second, within this relative difference (e.g. 0.3), for
    /// scenarios where the rate of successes is the behaviour (circuit breaking).
    #[serde(default)]
    ok_rate: Option<f64>,
}

fn share_tolerance() -> f64 {
    0.08
}
fn error_tolerance() -> f64 {
    0.02
}
fn agreement() -> f64 {
    0.98
}

/// One call's result: start (ms from the shared start), backend name or "!CODE", key.
type Record = (f64, String, Option<String>);

/// What one side did in one window.
#[derive(Debug, Default)]
struct Summary {
    calls: usize,
    errors: usize,
    shares: BTreeMap<String, f64>,
    /// Per key: the backend it went to most.
    keys: HashMap<String, String>,
}

impl Summary {
    fn of(records: &[Record], w: &Window) -> Self {
        let mut s = Self::default();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut per_key: HashMap<String, HashMap<String, usize>> = HashMap::new();
        for (t, b, key) in records {
            if *t < w.from_ms as f64 || *t >= w.to_ms as f64 {
                continue;
            }
            s.calls += 1;
            if b.starts_with('!') {
                s.errors += 1;
                continue;
            }
            *counts.entry(b.clone()).or_default() += 1;
            if let Some(k) = key {
                *per_key
                    .entry(k.clone())
                    .or_default()
                    .entry(b.clone())
                    .or_default() += 1;
            }
        }
        let ok = (s.calls - s.errors).max(1) as f64;
        s.shares = counts.into_iter().map(|(b, c)| (b, c as f64 / ok)).collect();
        s.keys = per_key
            .into_iter()
            .filter_map(|(k, m)| Some((k, m.into_iter().max_by_key(|(_, c)| *c)?.0)))
            .collect();
        s
    }

    fn error_rate(&self) -> f64 {
        self.errors as f64 / self.calls.max(1) as f64
    }

    fn describe(&self) -> String {
        let shares: Vec<String> = self.shares.iter().map(|(b, s)| format!("{b} {s:.2}")).collect();
        format!(
            "{} calls, {} errors ({:.1}%), {}",
            self.calls,
            self.errors,
            100.0 * self.error_rate(),
            shares.join(" ")
        )
    }
}

/// The backends of a scenario, by name.
struct Fleet {
    live: HashMap<String, Backend>,
    /// Listeners that accept TCP and never answer (kept open).
    _silent: Vec<TcpListener>,
    addr: BTreeMap<String, String>,
}

impl Fleet {
    fn start(kinds: &BTreeMap<String, Kind>) -> Self {
        let mut f = Self {
            live: HashMap::new(),
            _silent: Vec::new(),
            addr: BTreeMap::new(),
        };
        for (name, kind) in kinds {
            let addr = match kind {
                Kind::Live => {
                    let b = Backend::start();
                    let a = b.addr.to_string();
                    f.live.insert(name.clone(), b);
                    a
                }
                Kind::Refuse => {
                    // A port that was free a moment ago: connections are refused.
                    let l = TcpListener::bind("127.0.0.1:0").unwrap();
                    l.local_addr().unwrap().to_string()
                }
                Kind::Silent => {
                    let l = TcpListener::bind("127.0.0.1:0").unwrap();
                    let a = l.local_addr().unwrap().to_string();
                    f._silent.push(l);
                    a
                }
            };
            f.addr.insert(name.clone(), addr);
        }
        f
    }

    fn name_of(&self, addr: &str) -> String {
        self.addr
            .iter()
            .find(|(_, a)| a.as_str() == addr)
            .map_or_else(|| addr.to_string(), |(n, _)| n.clone())
    }

    fn localities(&self, locs: &[Loc]) -> Vec<Locality> {
        locs.iter()
            .enumerate()
            .map(|(i, l)| {
                let addrs: Vec<&str> = l.backends.iter().map(|b| self.addr[b].as_str()).collect();
                let mut loc = Locality::new(l.weight, l.priority, &addrs);
                loc.zone = l.zone.clone().unwrap_or_else(|| format!("zone-{i}"));
                for (j, e) in loc.endpoints.iter_mut().enumerate() {
                    e.1 = l.weights.get(j).copied().unwrap_or(1);
                    e.2 = l.health.get(j).copied().unwrap_or(1);
                }
                loc
            })
            .collect()
    }
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// C-core's side: starts the Python driver and waits until it has imported grpcio; returns the
/// shared start (Unix ms, a moment from now, also sent to the driver) and the driver's results.
fn c_core(cp: &ControlPlane, s: &Scenario) -> Option<(f64, std::thread::JoinHandle<Vec<Record>>)> {
    use std::io::{BufRead, BufReader, Read, Write};
    if let Err(why) = grpcio::python_ready() {
        return grpcio::reference_unavailable(&why);
    }
    let mut args = vec![
        DRIVER.to_string(),
        format!("xds:///{NAME}"),
        format!("--duration-ms={}", s.duration_ms),
        format!("--workers={WORKERS}"),
        format!("--connect-timeout-ms={}", s.connect_timeout_ms),
    ];
    if let Some(h) = &s.hash_header {
        args.push(format!("--header={h}"));
        args.push(format!("--keys={}", s.keys));
    }
    for (h, v) in &s.headers {
        args.push(format!("--static-header={h}={v}"));
    }
    let mut child = Command::new("python3")
        .args(&args)
        .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap(cp, s))
        .env_remove("GRPC_XDS_BOOTSTRAP")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("run python3");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the driver's first line");
    assert_eq!(line.trim(), "ready", "C-core driver did not start");
    let epoch = unix_ms() + LEAD_MS as f64;
    writeln!(child.stdin.take().expect("piped stdin"), "{epoch}").expect("send the start");
    let join = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).expect("the driver's output");
        let status = child.wait().expect("the driver ends");
        assert!(status.success(), "C-core driver failed: {status}");
        serde_json::from_str::<Vec<Record>>(&out).expect("the driver's JSON")
    });
    Some((epoch, join))
}

/// pickwise's side: the same calls, from `epoch_ms` for `duration_ms`.
async fn pickwise(
    bootstrap: String,
    headers: BTreeMap<String, String>,
    connect_timeout_ms: u64,
    duration_ms: u64,
    header: Option<String>,
    keys: u32,
    epoch_ms: f64,
) -> Vec<Record> {
    let wait = (epoch_ms - unix_ms()).max(0.0);
    tokio::time::sleep(Duration::from_secs_f64(wait / 1000.0)).await;
    let ch = builder_from_json(&bootstrap)
        .cluster_builder(move || {
            cluster_template().connect_timeout(Duration::from_millis(connect_timeout_ms))
        })
        .build(&format!("xds:///{NAME}"))
        .expect("xds channel");
    let end = epoch_ms + duration_ms as f64;
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (ch, out, header, headers) = (ch.clone(), out.clone(), header.clone(), headers.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            let mut mine = Vec::new();
            while unix_ms() < end {
                let key = (header.is_some() && keys > 0)
                    .then(|| format!("key-{}", (w + i * WORKERS) % keys as usize));
                i += 1;
                let mut req = tonic::Request::new(HealthCheckRequest {
                    service: String::new(),
                });
                req.set_timeout(Duration::from_secs(1));
                for (h, v) in &headers {
                    req.metadata_mut().insert(
                        tonic::metadata::MetadataKey::from_bytes(h.as_bytes()).unwrap(),
                        v.parse().unwrap(),
                    );
                }
                if let (Some(h), Some(k)) = (&header, &key) {
                    req.metadata_mut().insert(
                        tonic::metadata::MetadataKey::from_bytes(h.as_bytes()).unwrap(),
                        k.parse().unwrap(),
                    );
                }
                let start = unix_ms() - epoch_ms;
                let backend = match HealthClient::new(ch.clone()).check(req).await {
                    Ok(r) => r
                        .metadata()
                        .get("x-backend")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("?")
                        .to_string(),
                    Err(e) => format!("!{:?}", e.code()),
                };
                mine.push((start, backend, key));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            out.lock().unwrap().extend(mine);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = out.lock().unwrap().clone();
    v
}

/// The scenario's cluster with `policy` (outlier detection if the scenario asks).
fn cluster(s: &Scenario, policy: PolicyName) -> envoy_types::pb::envoy::config::cluster::v3::Cluster {
    cluster_named(s, "backends", policy)
}

fn cluster_named(
    s: &Scenario,
    name: &str,
    policy: PolicyName,
) -> envoy_types::pb::envoy::config::cluster::v3::Cluster {
    use envoy_types::pb::envoy::config::cluster::v3::{
        circuit_breakers::Thresholds, CircuitBreakers, OutlierDetection,
    };
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
    let mut c = resources::cluster(name, policy.policy());
    if s.max_requests > 0 {
        c.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_requests: Some(UInt32Value {
                    value: s.max_requests,
                }),
                ..Thresholds::default()
            }],
            ..CircuitBreakers::default()
        });
    }
    if s.outlier_consecutive_5xx > 0 || s.outlier_failure_percentage > 0 {
        let secs = |seconds| Some(PbDuration { seconds, nanos: 0 });
        let some = |value: u32| (value > 0).then_some(UInt32Value { value });
        c.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: some(s.outlier_consecutive_5xx),
            failure_percentage_threshold: some(s.outlier_failure_percentage),
            enforcing_failure_percentage: some(if s.outlier_failure_percentage > 0 { 100 } else { 0 }),
            failure_percentage_request_volume: some(10),
            failure_percentage_minimum_hosts: some(3),
            interval: secs(1),
            base_ejection_time: secs(30),
            max_ejection_percent: Some(UInt32Value { value: 50 }),
            ..OutlierDetection::default()
        });
    }
    c
}

/// The scenario's EDS resource for `locs` (with its drop policy).
fn eds(
    s: &Scenario,
    fleet: &Fleet,
    locs: &[Loc],
) -> envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
    eds_named(s, fleet, "backends", locs)
}

/// [`eds`] for cluster `name`.
fn eds_named(
    s: &Scenario,
    fleet: &Fleet,
    name: &str,
    locs: &[Loc],
) -> envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
    use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::{
        policy::DropOverload, Policy as EdsPolicy,
    };
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    let mut e = resources::endpoints(name, &fleet.localities(locs));
    if s.drop_percent > 0 {
        e.policy = Some(EdsPolicy {
            drop_overloads: vec![DropOverload {
                category: "lb".into(),
                drop_percentage: Some(FractionalPercent {
                    numerator: s.drop_percent,
                    denominator: 0, // HUNDRED
                }),
            }],
            ..EdsPolicy::default()
        });
    }
    e
}

/// The route configuration `name` for the scenario.
fn routes(s: &Scenario, name: &str) -> envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
    use envoy_types::pb::envoy::config::route::v3::{
        header_matcher::HeaderMatchSpecifier, route::Action, route_action::hash_policy,
        route_action::ClusterSpecifier, route_action::HashPolicy, HeaderMatcher,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        string_matcher::MatchPattern, RegexMatcher, StringMatcher,
    };
    match &s.route {
        None => resources::route_config_weighted(name, NAME, &[("backends", 1)], s.hash_header.as_deref()),
        Some(RouteSpec::Weighted { clusters }) => {
            let list: Vec<(&str, u32)> = clusters.iter().map(|(c, w)| (c.as_str(), *w)).collect();
            resources::route_config_weighted(name, NAME, &list, s.hash_header.as_deref())
        }
        Some(RouteSpec::HeaderRegex {
            header,
            regex,
            cluster,
        }) => {
            let mut rc = resources::route_config(name, NAME, "backends");
            let mut first = rc.virtual_hosts[0].routes[0].clone();
            if let Some(m) = first.r#match.as_mut() {
                m.headers = vec![HeaderMatcher {
                    name: header.clone(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                        match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                            regex: regex.clone(),
                            ..RegexMatcher::default()
                        })),
                        ..StringMatcher::default()
                    })),
                    ..HeaderMatcher::default()
                }];
            }
            if let Some(Action::Route(ra)) = first.action.as_mut() {
                ra.cluster_specifier = Some(ClusterSpecifier::Cluster(cluster.clone()));
            }
            rc.virtual_hosts[0].routes.insert(0, first);
            rc
        }
        Some(RouteSpec::HashPolicies { policies }) => {
            let mut rc = resources::route_config(name, NAME, "backends");
            if let Some(Action::Route(ra)) = rc.virtual_hosts[0].routes[0].action.as_mut() {
                ra.hash_policy = policies
                    .iter()
                    .map(|p| HashPolicy {
                        policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
                            header_name: p.header.clone(),
                            regex_rewrite: None,
                        })),
                        terminal: p.terminal,
                    })
                    .collect();
            }
            rc
        }
    }
}

async fn apply(cp: &mut ControlPlane, fleet: &mut Fleet, s: &Scenario, action: &Action) {
    match action {
        Action::Kill { backend } => fleet.live.get_mut(backend).expect("a live backend").kill(),
        Action::Restart { backend } => fleet.live.get_mut(backend).expect("a live backend").restart(),
        Action::Fail { backend, on, code } => {
            let b = &fleet.live[backend];
            b.knobs
                .fail_code
                .store(*code, std::sync::atomic::Ordering::Relaxed);
            b.set_failing(*on);
        }
        Action::Delay { backend, ms } => fleet.live[backend].set_delay(*ms),
        Action::Localities { localities } => cp.set(eds(s, fleet, localities)),
        Action::Policy { policy } => cp.set(cluster(s, *policy)),
        Action::StopControlPlane => cp.stop().await,
        Action::StartControlPlane => cp.restart().await.expect("control plane restarts"),
        Action::Listener { routes } => cp.set(resources::listener(NAME, routes)),
        Action::Routes { name } => cp.set(routes(s, name)),
        Action::RemoveCluster => cp.remove(ResourceType::Cluster, "backends"),
        Action::JunkCluster => cp.set_any(
            ResourceType::Cluster,
            "backends",
            envoy_types::pb::google::protobuf::Any {
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                value: vec![0xff, 0xff, 0xff],
            },
        ),
        Action::InvalidCluster => {
            let mut c = resources::cluster("backends", Policy::RingHash { min: 10, max: 5 });
            c.name = "backends".into();
            cp.set(c);
        }
    }
}

/// The bootstrap both clients read (with `ignore_resource_deletion` if the scenario asks).
fn bootstrap(cp: &ControlPlane, s: &Scenario) -> String {
    let json = cp.bootstrap_json();
    if s.ignore_resource_deletion {
        json.replace(
            r#""server_features":["xds_v3"]"#,
            r#""server_features":["xds_v3","ignore_resource_deletion"]"#,
        )
    } else {
        json
    }
}

/// Where the differential table goes (CI prints it).
fn table_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/xds-differential.md")
}

async fn run(name: &str) {
    let _s = serial().await;
    let path = format!("{SCENARIOS}/{name}.json");
    let s: Scenario = serde_json::from_str(&std::fs::read_to_string(&path).expect("scenario file"))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut fleet = Fleet::start(&s.backends);
    for (name, (qps, utilization)) in &s.orca {
        let b = fleet
            .live
            .get(name)
            .expect("ORCA reports come from live backends");
        b.knobs.orca.set_qps(*qps);
        b.knobs.orca.set_application_utilization(*utilization);
        b.knobs
            .per_call_reports
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let mut cp = ControlPlane::start().await.expect("control plane");
    cp.set(resources::listener(NAME, "routes"));
    cp.set(routes(&s, "routes"));
    cp.set(cluster(&s, s.policy));
    cp.set(eds(&s, &fleet, &s.localities));
    if let Some(other) = &s.other_localities {
        cp.set(cluster_named(&s, "other", s.policy));
        cp.set(eds_named(&s, &fleet, "other", other));
    }
    let Some((epoch, theirs)) = c_core(&cp, &s) else {
        return;
    };
    let ours = tokio::spawn(pickwise(
        bootstrap(&cp, &s),
        s.headers.clone(),
        s.connect_timeout_ms,
        s.duration_ms,
        s.hash_header.clone(),
        s.keys,
        epoch,
    ));
    for step in &s.timeline {
        let at = epoch + step.at_ms as f64;
        let wait = (at - unix_ms()).max(0.0);
        tokio::time::sleep(Duration::from_secs_f64(wait / 1000.0)).await;
        apply(&mut cp, &mut fleet, &s, &step.action).await;
    }
    let ours = ours.await.expect("pickwise side");
    let theirs = tokio::task::spawn_blocking(move || theirs.join().expect("C-core side"))
        .await
        .unwrap();
    let named = |rows: Vec<Record>| -> Vec<Record> {
        rows.into_iter()
            .map(|(t, b, k)| {
                let b = if b.starts_with('!') { b } else { fleet.name_of(&b) };
                (t, b, k)
            })
            .collect()
    };
    let (theirs, ours) = (named(theirs), named(ours));
    let mut failures = Vec::new();
    let mut table = String::new();
    for w in &s.windows {
        let (c, p) = (Summary::of(&theirs, w), Summary::of(&ours, w));
        let mut verdict = Vec::new();
        assert!(
            c.calls > 0 && p.calls > 0,
            "{name}: a side made no calls in {w:?}: C-core {}, pickwise {} (C-core's first call at {:?} ms)",
            c.calls,
            p.calls,
            theirs.iter().map(|r| r.0).reduce(f64::min)
        );
        let backends: std::collections::BTreeSet<&String> = c.shares.keys().chain(p.shares.keys()).collect();
        for b in backends {
            let (x, y) = (
                c.shares.get(b).copied().unwrap_or(0.0),
                p.shares.get(b).copied().unwrap_or(0.0),
            );
            if (x - y).abs() > w.share {
                verdict.push(format!("share of {b}: C-core {x:.2}, pickwise {y:.2}"));
            }
        }
        if (c.error_rate() - p.error_rate()).abs() > w.errors {
            verdict.push(format!(
                "errors: C-core {:.1}%, pickwise {:.1}%",
                100.0 * c.error_rate(),
                100.0 * p.error_rate()
            ));
        }
        if let Some(tol) = w.ok_rate {
            let secs = (w.to_ms - w.from_ms) as f64 / 1000.0;
            let (x, y) = (
                (c.calls - c.errors) as f64 / secs,
                (p.calls - p.errors) as f64 / secs,
            );
            if (x - y).abs() > tol * x.max(y).max(1.0) {
                verdict.push(format!("successful calls/s: C-core {x:.1}, pickwise {y:.1}"));
            }
        }
        if s.hash_header.is_some() {
            let common: Vec<&String> = c.keys.keys().filter(|k| p.keys.contains_key(*k)).collect();
            let same = common.iter().filter(|k| c.keys[**k] == p.keys[**k]).count();
            let agree = same as f64 / common.len().max(1) as f64;
            if agree < w.agree {
                verdict.push(format!("keys on the same backend: {same}/{}", common.len()));
            }
        }
        let ok = verdict.is_empty();
        let label = match (&s.deviation, ok) {
            (_, true) => "agree".to_string(),
            (Some(_), false) => format!("deviation (documented): {}", verdict.join("; ")),
            (None, false) => format!("DIFFER: {}", verdict.join("; ")),
        };
        let row = format!(
            "| {name} | {}-{} ms | {} | {} | {label} |\n",
            w.from_ms,
            w.to_ms,
            c.describe(),
            p.describe()
        );
        eprint!("{row}");
        table.push_str(&row);
        if !ok && s.deviation.is_none() {
            failures.push(format!("{}-{} ms: {}", w.from_ms, w.to_ms, verdict.join("; ")));
        }
    }
    {
        // Best effort: the rows are also on stderr above.
        use std::io::Write;
        let path = table_path();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(mut f) => {
                let _ = f.write_all(table.as_bytes());
            }
            Err(e) => eprintln!("cannot append to {}: {e}", path.display()),
        }
    }
    assert!(
        failures.is_empty(),
        "{name} ({}): pickwise differs from C-core: {failures:?}",
        s.about
    );
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run(stringify!($name)).await;
            }
        )*

        /// Every scenario file has a test, and every test a file.
        #[test]
        fn every_scenario_file_runs() {
            let mut files: Vec<String> = std::fs::read_dir(SCENARIOS)
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(str::to_string))
                .collect();
            files.sort();
            let mut tests = vec![$(stringify!($name).to_string()),*];
            tests.sort();
            assert_eq!(files, tests);
        }
    };
}

scenarios!(
    ads_cluster_deleted_and_restored,
    ads_cluster_deletion_ignored,
    ads_control_plane_away_and_back,
    ads_invalid_cluster_keeps_last_good,
    ads_undecodable_cluster_fails_rpcs,
    circuit_breaker_max_requests,
    eds_drop_overloads,
    eds_endpoint_removed,
    eds_health_draining_then_healthy,
    locality_endpoint_killed,
    locality_failing_one_drops_out,
    locality_lone_survivor,
    locality_weights_three_to_one,
    no_consecutive_ejection_in_grpc,
    no_outlier_detection_without_config,
    outlier_failure_percentage_ejects,
    policy_switch_round_robin_to_ring_hash,
    priority_cascade_to_the_last,
    priority_failover_and_failback,
    priority_localities_fail_over_and_back,
    priority_never_connects_failover_timer,
    priority_silent_endpoint_added_to_failed_priority,
    rds_rename_keeps_old_routes_until_new_arrive,
    rds_unsubscribe_and_resubscribe,
    ring_hash_endpoint_added,
    ring_hash_locality_weights,
    ring_hash_owner_connecting_waits,
    ring_hash_owner_killed,
    ring_hash_warm_up,
    round_robin_ignores_endpoint_weights,
    round_robin_kill_and_restart,
    routing_hash_policies_combined,
    routing_hash_policy_terminal,
    routing_header_safe_regex_full_match,
    routing_weighted_clusters,
    outlier_failure_percentage_counts_any_non_ok,
    wrr_reported_loads_one_to_ten,
    wrr_unreported_backend_takes_the_mean,
);
