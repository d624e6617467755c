//! pickwise's Pingora adapter as a standalone HTTP/1.1 proxy, for the Envoy comparison
//! (`benches/envoy_vs_pingora.sh`): it listens on `--listen`, balances over the `--upstream`s
//! with `--policy`, and generates no load of its own. Pingora's TCP health checks (every
//! `--health-ms`, one result flips, as Pingora's defaults) report to the picker; connect
//! failures are retried on another backend (`Tracker::select` never repeats one), as Envoy's
//! `retry_on: connect-failure` with `previous_hosts` does. One Pingora worker thread
//! (`--threads`), so `taskset -c 0` gives it one core, like Envoy's `--concurrency 1`.
//!
//! Policies: `p2c-peak-ewma`, `p2c-least-request` (Envoy's `least_request`, choice count 2),
//! `round-robin`, `ring-hash` / `maglev` on the `--hash-header` request header (Envoy's
//! `ring_hash` / `maglev` with a header `hash_policy`; same ring and table), and `prequal`
//! (`pickwise_prequal`, NSDI '24 with the paper's settings: a `Prober` background service sends
//! `GET /prequal/probe` to the upstreams, and `x-prequal-rif` / `x-prequal-latency-us` on their
//! responses are recorded too; upstreams that answer neither leave it on its P2C peak-EWMA
//! fallback).
//!
//! ```text
//! cargo run --release -p pickwise-benches --bin pingora_proxy -- --listen 127.0.0.1:28080 \
//!     --upstream 127.0.0.1:28081 --upstream 127.0.0.1:28082 --policy p2c-peak-ewma
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clap::Parser;
use pickwise::prequal::PrequalConfig;
use pickwise::{HashPolicy, LbPolicy, NoKey, Policy, PoolConfig, RingConfig};
use pickwise_pingora::{tcp_health_check, ProbeConfig, Prober, Selector, Shared, Tracker};
use pingora::lb::{discovery, Backends, LoadBalancer};
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;

const POLICIES: [&str; 6] = [
    "p2c-peak-ewma",
    "p2c-least-request",
    "round-robin",
    "ring-hash",
    "maglev",
    "prequal",
];

/// pickwise's Pingora adapter as a standalone HTTP/1.1 proxy.
#[derive(Parser, Debug)]
#[command(name = "pingora_proxy")]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: String,
    /// A backend `host:port` (repeatable).
    #[arg(long = "upstream", required = true)]
    upstreams: Vec<String>,
    /// The balancing policy.
    #[arg(long, default_value = "p2c-peak-ewma", value_parser = clap::builder::PossibleValuesParser::new(POLICIES))]
    policy: String,
    /// Request header the hash policies hash.
    #[arg(long, default_value = "x-key")]
    hash_header: String,
    /// TCP health check period, milliseconds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    health_ms: u64,
    /// Pingora worker threads for the proxy service.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    threads: u64,
}

fn policy(name: &str) -> LbPolicy {
    match name {
        "p2c-least-request" => LbPolicy::P2c(Policy::LeastRequest),
        "round-robin" => LbPolicy::RoundRobin,
        "prequal" => LbPolicy::Prequal(PrequalConfig::default()),
        "ring-hash" => LbPolicy::RingHash {
            ring: RingConfig::envoy(),
            load: HashPolicy::Plain,
            no_key: NoKey::P2c,
        },
        "maglev" => LbPolicy::Maglev {
            table_size: 65_537,
            no_key: NoKey::P2c,
        },
        _ => LbPolicy::P2c(Policy::PeakEwma),
    }
}

struct Proxy {
    lb: Arc<LoadBalancer<Selector>>,
    shared: Arc<Shared>,
    hash_header: Option<String>,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Tracker;

    fn new_ctx(&self) -> Tracker {
        Tracker::new(self.shared.clone())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Tracker) -> Result<Box<HttpPeer>> {
        let key = self
            .hash_header
            .as_deref()
            .and_then(|h| session.req_header().headers.get(h))
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let backend = ctx
            .select(&self.lb, key, 8)
            .ok_or_else(|| Error::explain(HTTPStatus(503), "no backend"))?;
        Ok(Box::new(HttpPeer::new(backend.addr, false, String::new())))
    }

    fn fail_to_connect(
        &self,
        _s: &mut Session,
        _p: &HttpPeer,
        ctx: &mut Tracker,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.connect_failed();
        e.set_retry(true); // nothing was sent: another backend may serve it
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Tracker,
        client_reused: bool,
    ) -> Box<Error> {
        ctx.proxy_failed(&e);
        // Pingora's default rule: retry errors on reused connections of idempotent requests.
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Tracker,
    ) -> Result<()> {
        ctx.response(upstream_response);
        Ok(())
    }

    async fn logging(&self, _session: &mut Session, e: Option<&Error>, ctx: &mut Tracker) {
        ctx.finish(e);
    }
}

fn main() {
    let args = Args::parse();
    let lb_policy = policy(&args.policy);
    let hashed = matches!(lb_policy, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. });
    let shared = Shared::new(lb_policy, PoolConfig::default());
    let conf = ServerConf {
        threads: args.threads as usize,
        // Stop at once on SIGTERM (Pingora's default waits out a 5-minute grace period).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let discovery = discovery::Static::try_from_iter(args.upstreams.iter().map(String::as_str))
        .expect("--upstream addresses");
    let mut lb =
        LoadBalancer::<Selector>::from_backends_with_config(Backends::new(discovery), Some(shared.clone()));
    lb.set_health_check(tcp_health_check(&shared));
    lb.health_check_frequency = Some(Duration::from_millis(args.health_ms));
    let bg = background_service("lb", lb);
    if matches!(lb_policy, LbPolicy::Prequal(_)) {
        let prober = Prober::new(shared.clone(), ProbeConfig::default());
        server.add_service(background_service("prequal prober", prober));
    }
    let proxy = Proxy {
        lb: bg.task(),
        shared,
        hash_header: hashed.then(|| args.hash_header.clone()),
    };
    let mut service = http_proxy_service(&server.configuration, proxy);
    service.add_tcp(&args.listen);
    server.add_service(bg);
    server.add_service(service);
    eprintln!(
        "pingora_proxy: {} on {} over {}",
        args.policy,
        args.listen,
        args.upstreams.join(", ")
    );
    server.run_forever();
}
