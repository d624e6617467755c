//! TLS done by the balancer's connector (feature `tls`): READY means the TLS handshake completed
//! and the server's HTTP/2 SETTINGS arrived through it (grpc-go's rule), not that a first byte
//! (a ServerHello) arrived. Real tonic TLS servers and a raw rustls server on 127.0.0.1.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pickwise_tonic::rustls::{self, pki_types::CertificateDer, pki_types::PrivateKeyDer, RootCertStore};
use pickwise_tonic::ConnectivityState;
use support::backend::Backend;
use support::client::*;
use tonic::Code;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

struct Cert {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn cert() -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    Cert {
        pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
        der: ck.cert.der().clone(),
        key_der: ck.key_pair.serialize_der(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(trust: &CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A TLS server that completes every handshake (ALPN h2) and then says nothing: no HTTP/2
/// SETTINGS ever arrives.
struct SilentTls {
    addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl SilentTls {
    fn start(c: &Cert) -> Self {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![c.der.clone()],
                PrivateKeyDer::try_from(c.key_der.clone()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    held.push(tls); // handshake done; never read or write
                }
            }
        });
        Self { addr, rt: Some(rt) }
    }
}

impl Drop for SilentTls {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn check(timeout: Duration) -> tonic::Request<HealthCheckRequest> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(timeout);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_backend_is_ready_and_serves() {
    let _serial = serial().await;
    let c = cert();
    let backend = Backend::start_tls(&c.pem, &c.key_pem);
    let channel = builder()
        .tls(client_config(&c.der))
        .build_static([backend.addr.to_string()]);
    assert_eq!(channel.wait_ready(1, Duration::from_secs(5)).await, 1);
    for _ in 0..10 {
        assert_eq!(call(&channel, None).await.unwrap(), backend.addr.to_string());
    }
    // The name can also be set explicitly (here: the certificate's DNS name).
    let named = builder()
        .tls(client_config(&c.der))
        .tls_server_name("localhost")
        .build_static([backend.addr.to_string()]);
    assert_eq!(call(&named, None).await.unwrap(), backend.addr.to_string());
}

/// The handshake completes but no SETTINGS follow: never READY; a request waits to its deadline
/// and, once the attempt has failed, fails fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_without_http2_settings_is_not_ready() {
    let _serial = serial().await;
    let c = cert();
    let silent = SilentTls::start(&c);
    let channel = builder()
        .tls(client_config(&c.der))
        .connect_timeout(Duration::from_millis(500))
        .build_static([silent.addr.to_string()]);
    let mut client = HealthClient::new(channel.clone());
    let err = client.check(check(Duration::from_millis(200))).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(channel.ready_endpoints(), 0);
    // Wait for the attempt to fail (the connect timeout), observed on the endpoint's state.
    let start = Instant::now();
    while channel.stats()[0].state != ConnectivityState::TransientFailure {
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", channel.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = unavailable_at_once(&channel).await;
    assert!(err.message().contains("preface"), "{err:?}");
    assert_ne!(channel.stats()[0].state, ConnectivityState::Ready);
}

/// A certificate the client does not trust: the handshake fails, the endpoint never becomes
/// READY, and requests fail fast with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_fast() {
    let _serial = serial().await;
    let (served, trusted) = (cert(), cert());
    let backend = Backend::start_tls(&served.pem, &served.key_pem);
    let channel = builder()
        .tls(client_config(&trusted.der))
        .build_static([backend.addr.to_string()]);
    let start = Instant::now();
    let failed = |ch: &pickwise_tonic::BalancedChannel| {
        ch.stats()
            .first()
            .is_some_and(|s| s.state == ConnectivityState::TransientFailure)
    };
    while !failed(&channel) {
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", channel.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = unavailable_at_once(&channel).await;
    assert!(err.message().to_lowercase().contains("certificate"), "{err:?}");
    assert_eq!(backend.hits(), 0);
}
