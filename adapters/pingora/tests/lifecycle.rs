//! The adapter as a translator, without a server: Pingora's health results reach the picker,
//! the pool's timer runs from completions, bounded load divides by the ready backends' weight,
//! round robin keeps backend weights, a refused pick's share spreads over the others, and a
//! retry never returns to a backend the request already tried.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use pickwise::{hash, HashPolicy, LbPolicy, NoKey, OutlierConfig, Policy, PoolConfig, RingConfig};
use pickwise_pingora::{lease, Selector, Shared, Tracker};
use pingora::http::ResponseHeader;
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};

fn backend(addr: &str, weight: usize) -> Backend {
    Backend::new_with_weight(addr, weight).unwrap()
}

fn set(addrs: &[&str]) -> BTreeSet<Backend> {
    addrs.iter().map(|a| backend(a, 1)).collect()
}

/// A load balancer over `addrs` (static discovery, no health checks), updated once.
async fn balancer(addrs: &[&str], shared: &Arc<Shared>) -> LoadBalancer<Selector> {
    let discovery = discovery::Static::new(set(addrs));
    let lb = LoadBalancer::from_backends_with_config(Backends::new(discovery), Some(shared.clone()));
    lb.update().await.unwrap();
    lb
}

fn ok_header() -> ResponseHeader {
    ResponseHeader::build(200, None).unwrap()
}

/// Nothing used to call `Pool::sweep` in this adapter: an ejection's multiplier never decayed.
/// Now completions run the timer when it is due.
#[tokio::test]
async fn completions_run_the_pool_timer() {
    let shared = Shared::new(
        LbPolicy::P2c(Policy::LeastRequest),
        PoolConfig {
            outlier: OutlierConfig {
                consecutive_failures: 2,
                base_ejection_ms: 50,
                max_ejection_ms: 1_000,
                interval_ms: 100,
                ..OutlierConfig::default()
            },
            ..PoolConfig::default()
        },
    );
    let addrs = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
    let _selector = Selector::build_with_config(&set(&addrs), &shared);
    let (bad, good) = (backend(addrs[0], 1), backend(addrs[1], 1));
    let mut t = Tracker::new(shared.clone());
    for _ in 0..2 {
        t.start(&bad);
        t.connect_failed();
    }
    let state = shared.state(addrs[0]).unwrap();
    assert!(state.is_ejected(shared.now()));
    assert_eq!(state.ejections(), 1);
    // Ordinary traffic elsewhere: the ejection ends after 50 ms, and one interval (100 ms)
    // un-ejected later the multiplier steps back to 0. Traffic (one completion every 5 ms, the
    // only thing that runs the timer) goes on until the multiplier is back at 0; the deadline
    // only turns a multiplier that never decays into a failure.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while state.ejections() > 0 && std::time::Instant::now() < deadline {
        t.start(&good);
        t.response(&ok_header());
        t.finish(None);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        state.ejections(),
        0,
        "the ejection multiplier never decayed (waited 30 s)"
    );
    assert_eq!(shared.pool().ejected(), 0);
    assert!(shared.poll_timeout() > 0);
}

/// Pingora's health checks flip readiness through the observer; a backend reported down before
/// a rebuild starts down in the new selector.
#[tokio::test]
async fn health_results_reach_the_picker() {
    let shared = Shared::new(LbPolicy::P2c(Policy::LeastRequest), PoolConfig::default());
    let addrs = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
    let selector = Arc::new(Selector::build_with_config(&set(&addrs), &shared));
    let observer = shared.health_observer();
    let down = backend(addrs[1], 1);
    observer.observe(&down, false).await;
    assert!(!shared.state(addrs[1]).unwrap().is_ready());
    assert_eq!(shared.ready_weight(), 2);
    for _ in 0..200 {
        let first = selector.iter(b"").next().unwrap().addr.to_string();
        assert_ne!(first, addrs[1]);
    }
    // A rebuild keeps it down; an up report brings it back.
    let _rebuilt = Selector::build_with_config(&set(&addrs), &shared);
    assert!(!shared.state(addrs[1]).unwrap().is_ready());
    observer.observe(&down, true).await;
    assert!(shared.state(addrs[1]).unwrap().is_ready());
    assert_eq!(shared.ready_weight(), 3);
}

/// Pingora 0.9 does not rebuild the selector on a health change, so the group publishes the core
/// balancer's new picker itself: a backend down when the selector was built is picked as soon as
/// health reports it up, and leaves again when it goes down, with no rebuild in between.
#[tokio::test]
async fn a_health_flip_reaches_a_selector_built_before_it() {
    for policy in [
        LbPolicy::P2c(Policy::LeastRequest),
        LbPolicy::RoundRobin,
        LbPolicy::RingHash {
            ring: RingConfig::envoy(),
            load: HashPolicy::Plain,
            no_key: NoKey::P2c,
        },
    ] {
        let shared = Shared::new(policy, PoolConfig::default());
        let addrs = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let observer = shared.health_observer();
        let late = backend(addrs[2], 1);
        // Reported down before the first build: it starts down.
        observer.observe(&late, false).await;
        let selector = Arc::new(Selector::build_with_config(&set(&addrs), &shared));
        let firsts = |selector: &Arc<Selector>| -> Vec<String> {
            (0..300)
                .map(|k| {
                    let key = format!("user-{k}");
                    selector.iter(key.as_bytes()).next().unwrap().addr.to_string()
                })
                .collect()
        };
        assert!(
            !firsts(&selector).iter().any(|a| a == addrs[2]),
            "{}",
            policy.name()
        );
        observer.observe(&late, true).await;
        assert!(
            firsts(&selector).iter().any(|a| a == addrs[2]),
            "{}: not back",
            policy.name()
        );
        observer.observe(&late, false).await;
        assert!(
            !firsts(&selector).iter().any(|a| a == addrs[2]),
            "{}",
            policy.name()
        );
    }
}

/// Bounded load used to divide by the weight of every backend, down ones included, so the two
/// ready backends of four each got half the slots they should: a key left its home early.
#[tokio::test]
async fn bounded_load_divides_by_the_ready_weight() {
    let policy = LbPolicy::RingHash {
        ring: RingConfig::envoy(),
        load: HashPolicy::Bounded { factor_percent: 125 },
        no_key: NoKey::P2c,
    };
    let shared = Shared::new(policy, PoolConfig::default());
    let addrs = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"];
    let selector = Arc::new(Selector::build_with_config(&set(&addrs), &shared));
    let observer = shared.health_observer();
    for a in &addrs[2..] {
        observer.observe(&backend(a, 1), false).await;
    }
    let ring = selector.ring().unwrap();
    let ready = |i: u32| i < 2;
    // A key whose home (first ready owner clockwise) is backend 0.
    let key = (0..)
        .map(|k| format!("user-{k}"))
        .find(|k| ring.find(hash::xxh64(k.as_bytes()), ready) == Some(0))
        .unwrap();
    // 5 in flight on the home, 3 on the other ready one: 8 in total. Over the ready weight (2)
    // the home's bound is ceil(ceil(9 * 1.25) / 2) = 6, so it keeps the key; over all four
    // backends' weight the bound was 3, and the key moved.
    let _held: Vec<_> = [(0, 5), (1, 3)]
        .iter()
        .flat_map(|&(i, n)| (0..n).map(move |_| i))
        .map(|i| lease(&shared, &backend(addrs[i], 1)).unwrap())
        .collect();
    assert_eq!(shared.pool().total_in_flight(), 8);
    let chosen = selector.iter(key.as_bytes()).next().unwrap().addr.to_string();
    assert_eq!(chosen, addrs[0]);
}

/// Round robin dropped backend weights; now they reach the core's weighted round robin.
#[test]
fn round_robin_keeps_weights() {
    let shared = Shared::new(LbPolicy::RoundRobin, PoolConfig::default());
    let backends: BTreeSet<Backend> = [backend("127.0.0.1:1", 3), backend("127.0.0.1:2", 1)].into();
    let selector = Arc::new(Selector::build_with_config(&backends, &shared));
    let n = 4000;
    let heavy = (0..n)
        .filter(|_| selector.iter(b"").next().unwrap().addr.to_string() == "127.0.0.1:1")
        .count();
    let share = heavy as f64 / n as f64;
    assert!((share - 0.75).abs() < 0.03, "weight 3 of 4 got {share:.3}");
}

/// When Pingora refuses the pick (disabled, or a retry excluding it), the iterator's next
/// choice used to be the address-order neighbour, every time: its share doubled. Now the
/// refused backend's share spreads over the others.
#[test]
fn a_refused_pick_spreads_over_the_others() {
    let shared = Shared::new(LbPolicy::P2c(Policy::LeastRequest), PoolConfig::default());
    let addrs = [
        "127.0.0.1:1",
        "127.0.0.1:2",
        "127.0.0.1:3",
        "127.0.0.1:4",
        "127.0.0.1:5",
    ];
    let selector = Arc::new(Selector::build_with_config(&set(&addrs), &shared));
    let refused = addrs[2];
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..5000 {
        let mut it = selector.iter(b"");
        let chosen = std::iter::from_fn(|| it.next().map(|b| b.addr.to_string()))
            .find(|a| a != refused)
            .unwrap();
        *counts.entry(chosen).or_default() += 1;
    }
    let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
    assert_eq!(counts.len(), 4);
    assert!(
        f64::from(*max) / f64::from(*min) < 1.3,
        "uneven fallback: {counts:?}"
    );
}

/// A retry never returns to a backend the request already tried while another is healthy
/// (Envoy's previous_hosts predicate); with every backend tried, one still serves.
#[tokio::test]
async fn a_retry_excludes_the_backends_already_tried() {
    for policy in [
        LbPolicy::P2c(Policy::PeakEwma),
        LbPolicy::P2c(Policy::LeastRequest),
        LbPolicy::RoundRobin,
        LbPolicy::RingHash {
            ring: RingConfig::envoy(),
            load: HashPolicy::Plain,
            no_key: NoKey::P2c,
        },
    ] {
        let shared = Shared::new(policy, PoolConfig::default());
        let addrs = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let lb = balancer(&addrs, &shared).await;
        for k in 0..200 {
            let key = format!("user-{k}");
            let mut t = Tracker::new(shared.clone());
            let first = t.select(&lb, key.as_bytes(), 8).unwrap();
            t.connect_failed();
            let second = t.select(&lb, key.as_bytes(), 8).unwrap();
            assert_ne!(first, second, "{}: the retry went back", policy.name());
            t.connect_failed();
            let third = t.select(&lb, key.as_bytes(), 8).unwrap();
            assert!(third != first && third != second, "{}", policy.name());
            t.connect_failed();
            // All three tried: one still serves.
            assert!(t.select(&lb, key.as_bytes(), 8).is_some());
            t.finish(None);
            assert!(!t.holding());
        }
    }
}

fn header(status: u16, grpc_status: Option<&str>) -> ResponseHeader {
    let mut h = ResponseHeader::build(status, None).unwrap();
    if let Some(code) = grpc_status {
        h.insert_header("grpc-status", code).unwrap();
    }
    h
}

/// Outcomes through the core's classification: a 100 Continue is no latency sample, a 5xx is no
/// success sample, gRPC codes map like Envoy (UNKNOWN fails, RESOURCE_EXHAUSTED does not), and a
/// client that went away or sent a malformed request does not count against the backend.
#[test]
fn outcomes_follow_the_core_classification() {
    use pingora::{Error, ErrorType};

    let shared = Shared::new(LbPolicy::P2c(Policy::PeakEwma), PoolConfig::default());
    let addrs = ["127.0.0.1:1", "127.0.0.1:2"];
    let _selector = Selector::build_with_config(&set(&addrs), &shared);
    let b = backend(addrs[0], 1);
    let state = shared.state(addrs[0]).unwrap();
    let mut t = Tracker::new(shared.clone());

    // 100 Continue, then a 503: neither is a latency sample taken as a success.
    t.start(&b);
    t.response(&header(100, None));
    t.response(&header(503, None));
    t.finish(None);
    assert_eq!(state.failures(), 1);
    let penalised = state.latency_ns().unwrap();
    assert!(penalised >= 30e6, "a fast 503 set the estimate to {penalised} ns");

    // gRPC: UNKNOWN in trailers fails; RESOURCE_EXHAUSTED (trailers-only) does not.
    t.start(&b);
    t.response(&header(200, None));
    let mut trailers = pingora::http::HMap::new();
    trailers.insert("grpc-status", "2".parse().unwrap());
    t.trailers(&trailers);
    t.finish(None);
    assert_eq!(state.failures(), 2);
    t.start(&b);
    t.response(&header(200, Some("8")));
    t.finish(None);
    assert_eq!(state.failures(), 2);
    assert_eq!(state.consecutive_failures(), 0);

    // Downstream errors are neutral: no failure, no sample; an upstream reset fails.
    for source in [
        Error::new_down(ErrorType::ConnectionClosed),
        Error::new_down(ErrorType::InvalidHTTPHeader),
    ] {
        let before = state.latency_ns();
        t.start(&b);
        t.proxy_failed(&source);
        t.finish(Some(&source));
        assert_eq!(state.failures(), 2);
        assert_eq!(state.latency_ns(), before);
    }
    t.start(&b);
    t.response(&header(200, None));
    t.finish(Some(&Error::new_down(ErrorType::WriteError))); // the client left mid-body
    assert_eq!(state.failures(), 2);
    t.start(&b);
    t.proxy_failed(&Error::new_up(ErrorType::ConnectionClosed));
    assert_eq!(state.failures(), 3);
    assert_eq!(state.in_flight(), 0);
}
