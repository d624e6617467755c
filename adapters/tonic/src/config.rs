//! [`Builder`]: how a [`BalancedChannel`](crate::BalancedChannel) is configured.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use http::HeaderName;
use pickwise::{HashPolicy, LbPolicy, NoKey, OutlierConfig, Policy, PoolConfig, RingConfig};
use tonic::transport::Endpoint;
use tonic::Code;

use crate::discover::Change;
use crate::BoxError;

/// gRPC connection backoff (defaults from the gRPC spec: 1 s, x1.6, +-20%, at most 120 s).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Growth per failure.
    pub multiplier: f64,
    /// Random spread, as a fraction of the delay.
    pub jitter: f64,
    /// Upper bound.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_secs(120),
        }
    }
}

/// Active health checking with `grpc.health.v1.Health/Check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// The service name to check (`""` = the whole server).
    pub service: String,
    /// Time between checks.
    pub interval: Duration,
    /// Timeout of one check.
    pub timeout: Duration,
}

pub(crate) type EndpointFn = dyn Fn(&str) -> Result<Endpoint, BoxError> + Send + Sync;

/// Resolved configuration, shared by the balancer task and every request.
pub(crate) struct Config {
    pub(crate) policy: LbPolicy,
    pub(crate) pool: PoolConfig,
    pub(crate) endpoint: Arc<EndpointFn>,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) health: Option<HealthCheck>,
    pub(crate) wait_for_ready: Duration,
    /// `None`: the core's classification (Envoy's gRPC-to-HTTP mapping, 5xx fail).
    pub(crate) failure_codes: Option<Vec<Code>>,
    pub(crate) hash_header: Option<HeaderName>,
    /// Ring hash while the key's owner connects: wait for it (gRPC) or walk on (Envoy).
    pub(crate) owner_connecting: pickwise::balancer::OwnerConnecting,
    pub(crate) sweep_interval: Duration,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::transport::Tls>,
    pub(crate) subset: Option<crate::subsetting::SubsetConfig>,
    pub(crate) report_peer: bool,
    /// The service config's `methodConfig` (per-method `waitForReady`).
    pub(crate) methods: crate::service_config::MethodTable,
    /// `grpc.target` and `grpc.lb.backend_service` on every instrument.
    #[cfg(feature = "metrics")]
    pub(crate) labels: crate::telemetry::ChannelLabels,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("policy", &self.policy)
            .field("pool", &self.pool)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff", &self.backoff)
            .field("health", &self.health)
            .field("wait_for_ready", &self.wait_for_ready)
            .field("failure_codes", &self.failure_codes)
            .field("hash_header", &self.hash_header)
            .field("subset", &self.subset)
            .finish_non_exhaustive()
    }
}

/// Every code but OK (for [`Builder::failure_codes`]): how gRPC's outlier detection counts a
/// call (grpc-go `outlierdetection` `incrementCounter`: a failure is any RPC that ended with an
/// error). A gRPC service config with `outlier_detection_experimental` (and an xDS cluster with
/// `outlier_detection`) selects it, so gRFC A50's success-rate and failure-percentage
/// algorithms count what gRPC counts.
pub const GRPC_NON_OK_CODES: [Code; 16] = [
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// go-zero's failure codes (for [`Builder::failure_codes`]; the default is Envoy's mapping).
pub const GO_ZERO_FAILURE_CODES: [Code; 6] = [
    Code::DeadlineExceeded,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unimplemented,
    Code::ResourceExhausted,
];

/// Builds a [`BalancedChannel`](crate::BalancedChannel).
///
/// ```no_run
/// # async fn demo() {
/// use std::time::Duration;
/// use pickwise_tonic::{discover, Builder, Policy};
///
/// let channel = Builder::new()
///     .p2c(Policy::PeakEwma)
///     .wait_for_ready(Duration::from_secs(2))
///     .build(discover::fixed(["127.0.0.1:50051", "127.0.0.1:50052"]));
/// // let client = GreeterClient::new(channel);
/// # }
/// ```
pub struct Builder {
    pub(crate) config: Config,
    /// Peer discovery for subsetting (not in `Config`: a stream is not shareable).
    pub(crate) peers: Option<crate::discover::BoxDiscover>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// P2C with peak-EWMA, Envoy's outlier defaults, plain-text HTTP/2, gRPC backoff, 10 s
    /// wait-for-ready, go-zero's failure codes.
    pub fn new() -> Self {
        Self {
            config: Config {
                policy: LbPolicy::P2c(Policy::PeakEwma),
                pool: PoolConfig::default(),
                endpoint: Arc::new(|addr: &str| Ok(Endpoint::from_shared(format!("http://{addr}"))?)),
                connect_timeout: Duration::from_secs(5),
                backoff: Backoff::default(),
                health: None,
                wait_for_ready: Duration::from_secs(10),
                failure_codes: None,
                hash_header: None,
                owner_connecting: pickwise::balancer::OwnerConnecting::Queue,
                sweep_interval: Duration::from_secs(1),
                #[cfg(feature = "tls")]
                tls: None,
                subset: None,
                report_peer: false,
                methods: crate::service_config::MethodTable::default(),
                #[cfg(feature = "metrics")]
                labels: crate::telemetry::ChannelLabels {
                    target: "pickwise".into(),
                    backend_service: "".into(),
                },
            },
            peers: None,
        }
    }

    /// The channel's target as instruments label it (`grpc.target`, gRFC A66: the URI the
    /// channel was created for, e.g. `dns:///backends.internal:50051`; default `pickwise`).
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.config.labels.target = target.into().into();
        self
    }

    /// The backend service (xDS cluster) as instruments label it (`grpc.lb.backend_service`,
    /// gRFC A89; default empty).
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn backend_service(mut self, name: impl Into<String>) -> Self {
        self.config.labels.backend_service = name.into().into();
        self
    }

    /// P2C with `policy` as the cost.
    pub fn p2c(mut self, policy: Policy) -> Self {
        self.config.policy = LbPolicy::P2c(policy);
        self.config.pool.policy = policy;
        self
    }

    /// Ring hash with `ring` and load policy `load`. Costs (for [`HashPolicy::Affinity`] and requests
    /// without a key) use the current P2C cost policy; requests without a key go by P2C unless
    /// [`no_key`](Self::no_key) says otherwise.
    pub fn ring_hash(mut self, ring: RingConfig, load: HashPolicy) -> Self {
        let no_key = match self.config.policy {
            LbPolicy::RingHash { no_key, .. } => no_key,
            _ => NoKey::P2c,
        };
        self.config.policy = LbPolicy::RingHash { ring, load, no_key };
        self.config.pool.track_total = matches!(load, HashPolicy::Bounded { .. });
        self
    }

    /// Maglev (Envoy-compatible table of `table_size` slots, a prime; 65,537 is Envoy's default)
    /// on the [`hash_header`](Self::hash_header) key; requests without a key go by P2C.
    pub fn maglev(mut self, table_size: u64) -> Self {
        self.config.policy = LbPolicy::Maglev {
            table_size,
            no_key: NoKey::P2c,
        };
        self
    }

    /// Round robin over the ready endpoints (gRPC `round_robin`).
    pub fn round_robin(mut self) -> Self {
        self.config.policy = LbPolicy::RoundRobin;
        self
    }

    /// Settings from a gRPC service config (see [`service_config`](crate::service_config)):
    /// from `loadBalancingConfig` the policy, ring-hash header, outlier detection and
    /// `random_subsetting` (with a random per-client salt, as gRFC A68 says); from
    /// `methodConfig` each method's `waitForReady` (see [`WaitForReady`](crate::WaitForReady)).
    /// Without a `loadBalancingConfig` the builder's policy stays.
    pub fn service_config(mut self, json: &str) -> Result<Self, crate::service_config::ServiceConfigError> {
        let c = crate::service_config::parse(json)?;
        self.config.methods = crate::service_config::MethodTable::new(&c.methods);
        if !c.load_balancing {
            return Ok(self);
        }
        self = self.policy(c.policy);
        if let Some(h) = c.hash_header {
            self.config.hash_header = Some(h);
        }
        if let Some(o) = c.outlier {
            self.config.pool.outlier = o;
            // gRFC A50 counts any non-OK call as a failure (grpc-go), not Envoy's mapping.
            self = self.failure_codes(GRPC_NON_OK_CODES);
        }
        if let Some(s) = c.subset {
            let salt = pickwise::subset::Client::Stable {
                id: fastrand::u64(..),
                count: 1,
            };
            self = self.subset(s, salt);
        }
        Ok(self)
    }

    /// Prequal (NSDI '24, `pickwise_prequal`): picks by the hot-cold rule over recent probe
    /// answers (each server's requests in flight and latency at that RIF), P2C with
    /// `config.fallback` while fewer than two answers are usable.
    ///
    /// The channel runs a prober while the policy is Prequal: after picks that owe probes (and
    /// after `idle_probe_ns` without one) it sends `pickwise.prequal.v1.Prequal/Probe` to targets
    /// the core draws, each on that endpoint's own connection, asynchronously (never on the pick
    /// path), at most `2 × pool_size` at once, each bounded by `min(max_age, 1 s)`; probes owed
    /// beyond that are dropped. Responses carrying `x-prequal-rif` and `x-prequal-latency-us`
    /// (headers or trailers) are recorded as free answers. Servers run `pickwise_orca`'s
    /// `PrequalLayer` and `PrequalServer`; one without the probe service (`UNIMPLEMENTED`) still
    /// serves, is no longer probed on that connection, and is picked by the fallback unless its
    /// responses piggyback reports. Counters: [`BalancedChannel::prequal_stats`](crate::BalancedChannel::prequal_stats).
    pub fn prequal(self, config: pickwise::prequal::PrequalConfig) -> Self {
        self.policy(LbPolicy::Prequal(config))
    }

    /// Any policy by value (e.g. [`LbPolicy::from_name`] of a gRPC service-config name).
    pub fn policy(mut self, policy: LbPolicy) -> Self {
        match policy {
            LbPolicy::P2c(cost) => self.config.pool.policy = cost,
            LbPolicy::Prequal(c) => self.config.pool.policy = c.fallback,
            _ => {}
        }
        self.config.pool.track_total = matches!(
            policy,
            LbPolicy::RingHash {
                load: HashPolicy::Bounded { .. },
                ..
            }
        );
        self.config.policy = policy;
        self
    }

    /// The request header whose values (joined with `","`, XXH64) are the ring-hash key (gRFC A76).
    /// A [`RequestHash`](crate::RequestHash) request extension takes precedence.
    pub fn hash_header(mut self, name: HeaderName) -> Self {
        self.config.hash_header = Some(name);
        self
    }

    /// What a ring-hash request does while its key's owner is connecting: wait for it
    /// ([`OwnerConnecting::Queue`](pickwise::balancer::OwnerConnecting::Queue), the default: gRPC's
    /// behaviour, gRFC A61, which keeps cache affinity) or go to the next ready endpoint clockwise
    /// ([`Walk`](pickwise::balancer::OwnerConnecting::Walk), Envoy's). An owner in
    /// TRANSIENT_FAILURE is walked past in both.
    pub fn owner_connecting(mut self, mode: pickwise::balancer::OwnerConnecting) -> Self {
        self.config.owner_connecting = mode;
        self
    }

    /// What ring hash does with requests without a key (call after [`ring_hash`](Self::ring_hash)).
    pub fn no_key(mut self, no_key: NoKey) -> Self {
        if let LbPolicy::RingHash { no_key: n, .. } | LbPolicy::Maglev { no_key: n, .. } =
            &mut self.config.policy
        {
            *n = no_key;
        }
        self
    }

    /// How to make the tonic [`Endpoint`] for an address (scheme, TLS, timeouts, keep-alive, window
    /// sizes...). Default: `http://{addr}`. The balancer sets the connect timeout and connects
    /// over its own TCP connector (TLS configured on the endpoint still applies).
    ///
    /// Set HTTP/2 keepalive here to find paused or partitioned backends within interval + timeout
    /// (recommended: 10 s / 5 s, while idle):
    ///
    /// ```no_run
    /// # async fn demo() {
    /// use std::time::Duration;
    /// use pickwise_tonic::Builder;
    /// use tonic::transport::Endpoint;
    ///
    /// let channel = Builder::new()
    ///     .endpoint(|addr| {
    ///         Ok(Endpoint::from_shared(format!("http://{addr}"))?
    ///             .http2_keep_alive_interval(Duration::from_secs(10))
    ///             .keep_alive_timeout(Duration::from_secs(5))
    ///             .keep_alive_while_idle(true))
    ///     })
    ///     .build_static(["10.0.0.1:50051", "10.0.0.2:50051"]);
    /// # }
    /// ```
    pub fn endpoint<F>(mut self, template: F) -> Self
    where
        F: Fn(&str) -> Result<Endpoint, BoxError> + Send + Sync + 'static,
    {
        self.config.endpoint = Arc::new(template);
        self
    }

    /// TLS done by the balancer's connector with `config` (feature `tls`; rustls with ring). The
    /// balancer sets ALPN to `h2`. Use it instead of TLS on the [`endpoint`](Self::endpoint)
    /// template: only then can READY mean that the TLS handshake completed *and* the server's
    /// HTTP/2 SETTINGS arrived through it (grpc-go's rule). The name verified is the address's
    /// host unless [`tls_server_name`](Self::tls_server_name) sets one.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, mut config: tokio_rustls::rustls::ClientConfig) -> Self {
        config.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = self.config.tls.take().and_then(|t| t.server_name);
        self.config.tls = Some(crate::transport::Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        });
        self
    }

    /// The TLS server name to verify for every endpoint (default: each address's host). Call
    /// after [`tls`](Self::tls).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        if let Some(t) = &mut self.config.tls {
            t.server_name = Some(name.into());
        }
        self
    }

    /// Connects to a subset of the discovered endpoints instead of all of them (large fleets:
    /// see [`pickwise::subset`]), as `client` among its peers: [`Subsetting::Random`] is gRPC's
    /// `random_subsetting` (gRFC A68), [`Subsetting::Deterministic`] the SRE book's,
    /// [`Subsetting::Aperture`] Finagle's deterministic aperture (fractional weights at the arc's
    /// ends become endpoint weights, 100 = a whole endpoint). Discovery changes recompute the
    /// subset and connect or disconnect only the endpoints that changed. The subset grows past
    /// endpoints that are failing until half of it is usable ([`subset_min_ready`](Self::subset_min_ready)).
    /// Pair it with P2C: ring hash over a per-client subset sends a key to different endpoints
    /// from different clients.
    ///
    /// [`Subsetting::Random`]: pickwise::subset::Subsetting::Random
    /// [`Subsetting::Deterministic`]: pickwise::subset::Subsetting::Deterministic
    /// [`Subsetting::Aperture`]: pickwise::subset::Subsetting::Aperture
    pub fn subset(
        mut self,
        strategy: pickwise::subset::Subsetting,
        client: pickwise::subset::Client,
    ) -> Self {
        self.config.subset = Some(crate::subsetting::SubsetConfig {
            strategy,
            identity: crate::subsetting::Identity::Static(client),
            min_ready: default_min_ready(strategy),
        });
        self.peers = None;
        self
    }

    /// [`subset`](Self::subset) with this client's identity taken from a discovery stream of its
    /// peers (e.g. [`discover::dns`](crate::discover::dns) of the client service, or a
    /// [`discover::channel`](crate::discover::channel) fed by your membership system): the client
    /// is `me`'s rank among the sorted peer ids (which always include `me`), out of their count.
    /// Peer changes recompute the subset.
    pub fn subset_with_peers<S, E>(
        mut self,
        strategy: pickwise::subset::Subsetting,
        me: impl Into<String>,
        peers: S,
    ) -> Self
    where
        S: Stream<Item = Result<Change<String, u32>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.config.subset = Some(crate::subsetting::SubsetConfig {
            strategy,
            identity: crate::subsetting::Identity::Peers { me: me.into() },
            min_ready: default_min_ready(strategy),
        });
        let peers = tokio_stream::StreamExt::map(peers, |item| item.map_err(Into::into));
        self.peers = Some(Box::pin(peers));
        self
    }

    /// How many endpoints of the subset must not be failing before it stops growing (default:
    /// half the subset size, at least 1; 0 never grows). Call after `subset`.
    pub fn subset_min_ready(mut self, n: u32) -> Self {
        if let Some(s) = &mut self.config.subset {
            s.min_ready = n;
        }
        self
    }

    /// Puts the endpoint that served each response into the response's extensions as a
    /// [`Peer`](crate::Peer) (grpc-go's `grpc.Peer` call option; off by default: one small
    /// allocation per response).
    pub fn report_peer(mut self, on: bool) -> Self {
        self.config.report_peer = on;
        self
    }

    /// Connection attempt timeout (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Reconnection backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Passive outlier detection ([`OutlierConfig::disabled`] turns it off).
    pub fn outlier(mut self, outlier: OutlierConfig) -> Self {
        self.config.pool.outlier = outlier;
        self
    }

    /// Full pool settings (cost policy, RTT defaults, outlier detection).
    pub fn pool(mut self, pool: PoolConfig) -> Self {
        let track = self.config.pool.track_total;
        self.config.pool = PoolConfig {
            track_total: pool.track_total || track,
            ..pool
        };
        self
    }

    /// Enables `grpc.health.v1` checks: an endpoint that is not `SERVING` is not picked.
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.config.health = Some(check);
        self
    }

    /// How long a request waits for a ready endpoint while some are connecting (default 10 s); a
    /// request's own deadline (`grpc-timeout`) ends the wait earlier with `DEADLINE_EXCEEDED`.
    /// When all endpoints are failing, or the set is empty, requests fail at once with
    /// `UNAVAILABLE`, unless they are wait-for-ready ([`WaitForReady`](crate::WaitForReady) or
    /// the service config's `waitForReady`): those wait to their own deadline, or for this
    /// bound when they have none.
    pub fn wait_for_ready(mut self, deadline: Duration) -> Self {
        self.config.wait_for_ready = deadline;
        self
    }

    /// The gRPC codes that count as an endpoint failure, replacing the default: the core's
    /// classification ([`pickwise::outcome::grpc`]), Envoy's mapping of gRPC codes to HTTP for
    /// outlier detection, where UNKNOWN, INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, UNIMPLEMENTED
    /// and DATA_LOSS fail and the application's answers (NOT_FOUND, RESOURCE_EXHAUSTED,
    /// CANCELLED ...) do not. [`GO_ZERO_FAILURE_CODES`] gives go-zero's list.
    pub fn failure_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.config.failure_codes = Some(codes.into_iter().collect());
        self
    }

    /// How often expired ejections are returned and multipliers decay (default 1 s).
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.config.sweep_interval = every.max(Duration::from_millis(1));
        self
    }
}

/// Half the subset size, at least 1.
fn default_min_ready(strategy: pickwise::subset::Subsetting) -> u32 {
    strategy.size().div_ceil(2).max(1)
}
