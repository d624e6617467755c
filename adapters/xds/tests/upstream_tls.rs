//! TLS to a cluster's endpoints from CDS (gRFC A29, feature `tls`): the in-process control plane
//! sends a cluster whose `transport_socket` is an `UpstreamTlsContext` naming the bootstrap's
//! `file_watcher` instances; the backends are real tonic TLS servers on loopback that require a
//! client certificate; every certificate is made by `rcgen` here.
//!
//! - mTLS: calls succeed, and each backend saw the client's certificate from the files;
//! - a backend whose certificate fails the SAN match is never READY (alone: calls fail
//!   UNAVAILABLE; with a good one: the good one serves everything);
//! - rotation: new identity files (and new roots) reach the next connection, while the
//!   established one keeps serving with the certificate it was made with;
//! - NACKs: an instance name missing from the bootstrap, a field grpc-go does not support.
//!
//! Self-contained (no `support` module): its backends are TLS servers of their own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{transport_socket::ConfigType, TransportSocket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext, SdsSecretConfig,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use pickwise_tonic::ConnectivityState;
use pickwise_xds::control_plane::resources::{self, Locality, Policy};
use pickwise_xds::control_plane::ControlPlane;
use pickwise_xds::resource::ResourceType;
use pickwise_xds::{AdsBackoff, Bootstrap, XdsBuilder, XdsChannel};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const NAME: &str = "greeter";

/// How long a wait for an expected state may take before the test fails (debug builds on a
/// loaded 2-core machine); a passing wait ends as soon as the state is there.
const PATIENCE: Duration = Duration::from_secs(10);

/// Tests that start servers run one at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    GATE.lock().await
}

/// Polls `done` every 2 ms until it holds; fails naming `what` after [`PATIENCE`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the client ACKed version `version` of type `t`.
async fn acked(cp: &ControlPlane, t: ResourceType, version: u64) {
    let version = version.to_string();
    until(&format!("an ACK of {} version {version}", t.short()), || {
        cp.replies()
            .iter()
            .any(|r| r.kind == t.short() && r.version == version && r.error.is_none())
    })
    .await;
}

/// One Health/Check; the backend that served it.
async fn call(channel: &XdsChannel) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(Duration::from_secs(5));
    let resp = HealthClient::new(channel.clone()).check(req).await?;
    Ok(resp
        .extensions()
        .get::<pickwise_tonic::Peer>()
        .map(|p| p.address().to_owned())
        .unwrap_or_default())
}

/// `n` calls: how many each backend served, and the errors.
async fn spread(channel: &XdsChannel, n: usize) -> (HashMap<String, u64>, Vec<tonic::Status>) {
    let mut seen = HashMap::new();
    let mut errors = Vec::new();
    for _ in 0..n {
        match call(channel).await {
            Ok(b) => *seen.entry(b).or_default() += 1,
            Err(e) => errors.push(e),
        }
    }
    (seen, errors)
}

/// An xDS channel from bootstrap JSON, with test-speed timers (500 ms connect timeout, 50 ms ..
/// 500 ms reconnect backoff).
fn builder_from_json(bootstrap: &str) -> XdsBuilder {
    XdsBuilder::new()
        .bootstrap(Bootstrap::from_json(bootstrap).unwrap())
        .ads_backoff(AdsBackoff {
            initial: Duration::from_millis(100),
            multiplier: 1.6,
            max: Duration::from_secs(1),
        })
        .cluster_builder(|| {
            pickwise_tonic::Builder::new()
                .connect_timeout(Duration::from_millis(500))
                .backoff(pickwise_tonic::Backoff {
                    initial: Duration::from_millis(50),
                    multiplier: 1.6,
                    jitter: 0.2,
                    max: Duration::from_millis(500),
                })
        })
}

/// The SAN the good backends carry and the cluster accepts.
const GOOD_SAN: &str = "spiffe://td.example/ns/prod/sa/greeter";
/// Another workload's SAN, under the same CA.
const EVIL_SAN: &str = "spiffe://td.example/ns/evil/sa/greeter";

/// A CA and what it signs.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A server certificate with URI SAN `uri` (and no IP SAN: the address is not verified).
    fn server(&self, uri: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["greeter.internal".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "backend");
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate for `cn`.
    fn client(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// A fresh directory for one test's files.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pickwise-a29-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `contents` to `path` by rename, so a reader never sees half a file.
fn write(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A call a backend served: the client's address (the connection) and its leaf certificate.
type Call = (SocketAddr, Option<Vec<u8>>);

/// A tonic Health server on loopback serving TLS with `cert`, requiring a client certificate
/// signed by one of `client_cas`; records each call's connection and client certificate.
struct TlsBackend {
    addr: String,
    calls: Arc<Mutex<Vec<Call>>>,
    accepted: Arc<AtomicU64>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TlsBackend {
    async fn start(cert: &(String, String), client_cas: &[&Ca]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            move |s| {
                count.fetch_add(1, Ordering::Relaxed);
                s
            },
        );
        let cas: String = client_cas.iter().map(|c| c.cert.pem()).collect();
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&cert.0, &cert.1))
            .client_ca_root(tonic::transport::Certificate::from_pem(cas));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let record = calls.clone();
        let (_, health) = tonic_health::server::health_reporter();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .layer(tonic::service::InterceptorLayer::new(
                move |req: tonic::Request<()>| {
                    let leaf = req.peer_certs().and_then(|c| c.first().map(|c| c.to_vec()));
                    record
                        .lock()
                        .unwrap()
                        .push((req.remote_addr().expect("TCP peer"), leaf));
                    Ok(req)
                },
            ))
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        tokio::spawn(server);
        Self {
            addr,
            calls,
            accepted,
            _stop: stop,
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

/// The PKI of a test: the backends' CA (whose certificate is the client's roots file) and the
/// clients' CA, with the client's files in `dir`.
struct Pki {
    backends: Ca,
    clients: Ca,
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Self {
        let pki = Self {
            backends: Ca::new("backends CA"),
            clients: Ca::new("clients CA"),
            dir: dir(name),
        };
        write(&pki.dir.join("roots.pem"), &pki.backends.cert.pem());
        pki
    }

    /// Writes the client's identity files; returns the certificate (DER).
    fn identity(&self, cert: &(String, String)) -> Vec<u8> {
        write(&self.dir.join("key.pem"), &cert.1);
        write(&self.dir.join("cert.pem"), &cert.0);
        der(&cert.0)
    }

    /// The control plane's bootstrap with `certificate_providers` "roots" and "identity" (the
    /// identity files re-read every 50 ms).
    fn bootstrap(&self, cp: &ControlPlane) -> String {
        let mut b: serde_json::Value = serde_json::from_str(&cp.bootstrap_json()).unwrap();
        let path = |f: &str| self.dir.join(f).display().to_string();
        b["certificate_providers"] = serde_json::json!({
            "roots": {"plugin_name": "file_watcher", "config": {
                "ca_certificate_file": path("roots.pem"), "refresh_interval": "0.05s"}},
            "identity": {"plugin_name": "file_watcher", "config": {
                "certificate_file": path("cert.pem"), "private_key_file": path("key.pem"),
                "refresh_interval": "0.05s"}},
        });
        b.to_string()
    }
}

fn instance(name: &str) -> Option<CertificateProviderPluginInstance> {
    Some(CertificateProviderPluginInstance {
        instance_name: name.into(),
        certificate_name: "default".into(),
    })
}

/// Cluster `backends` (round robin) with TLS: roots from instance `roots`, identity from
/// `identity`, SANs matched against `exact` (`match_subject_alt_names`, deprecated in Envoy
/// for `match_typed_subject_alt_names`, is what gRPC reads).
#[allow(deprecated)]
fn secure_cluster(
    roots: &str,
    identity: &str,
    exact: &str,
) -> envoy_types::pb::envoy::config::cluster::v3::Cluster {
    with_context(CommonTlsContext {
        tls_certificate_provider_instance: instance(identity),
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    ca_certificate_provider_instance: instance(roots),
                    match_subject_alt_names: vec![StringMatcher {
                        match_pattern: Some(MatchPattern::Exact(exact.into())),
                        ignore_case: false,
                    }],
                    ..CertificateValidationContext::default()
                }),
                ..CombinedCertificateValidationContext::default()
            },
        )),
        ..CommonTlsContext::default()
    })
}

fn with_context(common: CommonTlsContext) -> envoy_types::pb::envoy::config::cluster::v3::Cluster {
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common),
        ..UpstreamTlsContext::default()
    };
    let mut c = resources::cluster("backends", Policy::RoundRobin);
    c.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(resources::any(&ctx))),
    });
    c
}

/// A control plane serving `greeter` → cluster `backends` (`cluster`) → `addrs`.
async fn control_plane(
    cluster: envoy_types::pb::envoy::config::cluster::v3::Cluster,
    addrs: &[&str],
) -> ControlPlane {
    let cp = ControlPlane::start().await.expect("control plane");
    cp.set(resources::listener(NAME, "routes"));
    cp.set(resources::route_config("routes", NAME, "backends"));
    cp.set(cluster);
    cp.set(resources::endpoints("backends", &[Locality::new(1, 0, addrs)]));
    cp
}

fn channel(pki: &Pki, cp: &ControlPlane) -> XdsChannel {
    builder_from_json(&pki.bootstrap(cp))
        .build(&format!("xds:///{NAME}"))
        .unwrap()
}

/// The state of `addr` in cluster `backends`, if it is serving.
fn state_of(ch: &XdsChannel, addr: &str) -> Option<ConnectivityState> {
    ch.cluster("backends")?
        .stats()
        .into_iter()
        .find(|s| s.address == addr)
        .map(|s| s.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_to_backends_from_cds_security() {
    let _s = serial().await;
    let pki = Pki::new("mtls");
    let client = pki.identity(&pki.clients.client("client-1"));
    let a = TlsBackend::start(&pki.backends.server(GOOD_SAN), &[&pki.clients]).await;
    let b = TlsBackend::start(&pki.backends.server(GOOD_SAN), &[&pki.clients]).await;
    let cp = control_plane(secure_cluster("roots", "identity", GOOD_SAN), &[&a.addr, &b.addr]).await;
    let ch = channel(&pki, &cp);
    until("both backends READY", || {
        [&a.addr, &b.addr]
            .iter()
            .all(|addr| state_of(&ch, addr) == Some(ConnectivityState::Ready))
    })
    .await;
    let (seen, errors) = spread(&ch, 20).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!((seen[&a.addr], seen[&b.addr]), (10, 10), "round robin over both");
    for backend in [&a, &b] {
        let calls = backend.calls();
        assert_eq!(calls.len(), 10);
        assert!(
            calls.iter().all(|(_, leaf)| leaf.as_deref() == Some(&client[..])),
            "every call came with the client's certificate from the identity files"
        );
        assert_eq!(backend.accepted.load(Ordering::Relaxed), 1, "one connection each");
    }
    assert!(cp.nacks().is_empty(), "{:?}", cp.nacks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failing_the_san_match_is_never_ready_until_cds_accepts_it() {
    let _s = serial().await;
    let pki = Pki::new("san");
    pki.identity(&pki.clients.client("client-1"));
    // Signed by the right CA, but another workload's identity.
    let evil = TlsBackend::start(&pki.backends.server(EVIL_SAN), &[&pki.clients]).await;
    let cp = control_plane(secure_cluster("roots", "identity", GOOD_SAN), &[&evil.addr]).await;
    let ch = channel(&pki, &cp);
    until("the mismatching backend to fail its handshake", || {
        state_of(&ch, &evil.addr) == Some(ConnectivityState::TransientFailure)
    })
    .await;
    let e = call(&ch).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");

    // A good backend joins: it serves everything; the other is still never READY.
    let good = TlsBackend::start(&pki.backends.server(GOOD_SAN), &[&pki.clients]).await;
    cp.set(resources::endpoints(
        "backends",
        &[Locality::new(1, 0, &[&evil.addr, &good.addr])],
    ));
    until("the good backend to be READY", || {
        state_of(&ch, &good.addr) == Some(ConnectivityState::Ready)
    })
    .await;
    for _ in 0..20 {
        assert_eq!(call(&ch).await.unwrap(), good.addr);
        assert_ne!(state_of(&ch, &evil.addr), Some(ConnectivityState::Ready));
    }
    assert!(evil.calls().is_empty(), "no call reached the mismatching backend");
    assert!(
        evil.accepted.load(Ordering::Relaxed) >= 1,
        "it was dialled (and refused by the client)"
    );

    // CDS now accepts only the other SAN: the next handshakes use it (the other backend becomes
    // READY), and the good backend's established connection is kept, though its certificate
    // would fail the new matcher.
    cp.set(secure_cluster("roots", "identity", EVIL_SAN));
    until("the other backend to be READY under the new matcher", || {
        state_of(&ch, &evil.addr) == Some(ConnectivityState::Ready)
    })
    .await;
    let (seen, errors) = spread(&ch, 20).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!((seen[&good.addr], seen[&evil.addr]), (10, 10));
    assert_eq!(good.accepted.load(Ordering::Relaxed), 1, "not reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_files_reach_new_connections_and_keep_old_ones() {
    let _s = serial().await;
    let pki = Pki::new("rotate");
    let second_ca = Ca::new("clients CA 2");
    let first = pki.identity(&pki.clients.client("client-1"));
    // `a` accepts both client CAs; `b` only the second, so it can only be reached with the
    // rotated certificate.
    let a = TlsBackend::start(&pki.backends.server(GOOD_SAN), &[&pki.clients, &second_ca]).await;
    let b = TlsBackend::start(&pki.backends.server(GOOD_SAN), &[&second_ca]).await;
    let cp = control_plane(secure_cluster("roots", "identity", GOOD_SAN), &[&a.addr]).await;
    let ch = channel(&pki, &cp);
    assert_eq!(call(&ch).await.unwrap(), a.addr);
    let (conn, leaf) = a.calls()[0].clone();
    assert_eq!(leaf.as_deref(), Some(&first[..]));

    // Rotate the client's files, then add `b`: its first handshakes may still carry the old
    // certificate (refused by `b`) until the watcher re-reads the files; then it is READY.
    let second = pki.identity(&second_ca.client("client-2"));
    let version = cp.version(ResourceType::ClusterLoadAssignment);
    cp.set(resources::endpoints(
        "backends",
        &[Locality::new(1, 0, &[&a.addr, &b.addr])],
    ));
    acked(&cp, ResourceType::ClusterLoadAssignment, version + 1).await;
    until(
        "the new endpoint to be READY with the rotated certificate",
        || state_of(&ch, &b.addr) == Some(ConnectivityState::Ready),
    )
    .await;
    let (seen, errors) = spread(&ch, 20).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!((seen[&a.addr], seen[&b.addr]), (10, 10));
    assert!(
        b.calls().iter().all(|(_, l)| l.as_deref() == Some(&second[..])),
        "the new connection presented the rotated certificate"
    );
    assert!(
        a.calls()
            .iter()
            .all(|(c, l)| *c == conn && l.as_deref() == Some(&first[..])),
        "the established connection kept serving, with the certificate it was made with"
    );
    assert_eq!(a.accepted.load(Ordering::Relaxed), 1, "and was not replaced");

    // The roots rotate the same way: a backend signed by a new CA fails until the roots file
    // holds that CA too, then is READY; the established connections stay.
    let new_ca = Ca::new("backends CA 2");
    let c = TlsBackend::start(&new_ca.server(GOOD_SAN), &[&second_ca]).await;
    cp.set(resources::endpoints(
        "backends",
        &[Locality::new(1, 0, &[&a.addr, &b.addr, &c.addr])],
    ));
    until("the backend of the unknown CA to fail", || {
        state_of(&ch, &c.addr) == Some(ConnectivityState::TransientFailure)
    })
    .await;
    write(
        &pki.dir.join("roots.pem"),
        &(pki.backends.cert.pem() + &new_ca.cert.pem()),
    );
    until("the backend of the new CA to be READY", || {
        state_of(&ch, &c.addr) == Some(ConnectivityState::Ready)
    })
    .await;
    let (seen, errors) = spread(&ch, 30).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!((seen[&a.addr], seen[&b.addr], seen[&c.addr]), (10, 10, 10));
    assert_eq!(
        (
            a.accepted.load(Ordering::Relaxed),
            b.accepted.load(Ordering::Relaxed) > 0
        ),
        (1, true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_security_it_cannot_apply() {
    let _s = serial().await;
    let pki = Pki::new("nack");
    pki.identity(&pki.clients.client("client-1"));
    let good = TlsBackend::start(&pki.backends.server(GOOD_SAN), &[&pki.clients]).await;
    let cp = control_plane(secure_cluster("roots", "nope", GOOD_SAN), &[&good.addr]).await;
    let ch = channel(&pki, &cp);
    until("a CDS NACK", || cp.nacks().iter().any(|r| r.kind == "CDS")).await;
    let nack = cp.nacks().into_iter().find(|r| r.kind == "CDS").unwrap();
    let why = nack.error.unwrap();
    assert!(
        why.contains(
            r#"identity certificate provider instance name "nope" missing in bootstrap configuration"#
        ),
        "{why}"
    );
    let e = call(&ch).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");

    // Fixed: ACKed and served over mTLS.
    let version = cp.version(ResourceType::Cluster);
    cp.set(secure_cluster("roots", "identity", GOOD_SAN));
    acked(&cp, ResourceType::Cluster, version + 1).await;
    until("the fixed cluster to serve", || {
        state_of(&ch, &good.addr) == Some(ConnectivityState::Ready)
    })
    .await;
    assert_eq!(call(&ch).await.unwrap(), good.addr);

    // Then a field grpc-go does not support: NACKed; the last good cluster keeps serving.
    let version = cp.version(ResourceType::Cluster);
    cp.set(with_context(CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
            name: "sds".into(),
            sds_config: None,
        }],
        validation_context_type: Some(ValidationContextType::ValidationContext(
            CertificateValidationContext {
                ca_certificate_provider_instance: instance("roots"),
                ..CertificateValidationContext::default()
            },
        )),
        ..CommonTlsContext::default()
    }));
    until("a CDS NACK of the unsupported field", || {
        cp.nacks().iter().any(|r| {
            r.kind == "CDS"
                && r.error
                    .as_deref()
                    .is_some_and(|e| e.contains("unsupported field tls_certificate_sds_secret_configs"))
        })
    })
    .await;
    assert_eq!(cp.version(ResourceType::Cluster), version + 1);
    assert_eq!(call(&ch).await.unwrap(), good.addr);
}
