//! TLS and mTLS to the control plane (gRFC A65 `tls` channel creds), with certificates made by
//! `rcgen` here: an `xds:///` channel serves through a TLS control plane; under mTLS the client
//! presents the certificate from its files, a client without one is refused, and a rotation of
//! the client's files is picked up by the next handshake while the channel keeps serving.
//! Also the `file_watcher` provider on its own (grpc-go `pemfile` semantics).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pickwise_xds::bootstrap::FileWatcherConfig;
use pickwise_xds::control_plane::resources::{self, Locality, Policy};
use pickwise_xds::control_plane::ControlPlane;
use pickwise_xds::credentials::FileWatcher;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use support::*;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

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

    /// A leaf for `cn`: a server certificate for 127.0.0.1, or a client one. (PEM cert, PEM key.)
    fn leaf(&self, cn: &str, server: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if server {
            params
                .subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// The control plane's TLS config; `clients`: the CA whose client certificates it requires.
fn server_config(ca: &Ca, clients: Option<&Ca>) -> ServerConfig {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let (cert, key) = ca.leaf("control-plane", true);
    let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        Some(c) => {
            let mut roots = RootCertStore::empty();
            roots.add(c.cert.der().clone()).unwrap();
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(chain, key).unwrap()
}

/// A fresh directory for one test's files.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pickwise-tls-{}-{name}", std::process::id()));
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

async fn tls_control_plane(config: ServerConfig, backend: &str) -> ControlPlane {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cp = ControlPlane::start_tls(addr, config)
        .await
        .expect("TLS control plane");
    cp.set(resources::listener(NAME, "routes"));
    cp.set(resources::route_config("routes", NAME, "backends"));
    cp.set(resources::cluster("backends", Policy::RoundRobin));
    cp.set(resources::endpoints(
        "backends",
        &[Locality::new(1, 0, &[backend])],
    ));
    cp
}

fn bootstrap(cp: &ControlPlane, config: &str) -> String {
    format!(
        r#"{{"xds_servers":[{{"server_uri":"{}","channel_creds":[{{"type":"tls","config":{config}}}],"server_features":["xds_v3"]}}],"node":{{"id":"tls-test"}}}}"#,
        cp.server_uri()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_control_plane_verified_by_the_bootstrap_ca() {
    let _s = serial().await;
    let (_backends, addrs) = backends(1);
    let ca = Ca::new("test CA");
    let d = dir("tls");
    write(&d.join("ca.pem"), &ca.cert.pem());
    let cp = tls_control_plane(server_config(&ca, None), &addrs[0]).await;
    let config = format!(r#"{{"ca_certificate_file":"{}"}}"#, d.join("ca.pem").display());
    let ch = builder_from_json(&bootstrap(&cp, &config))
        .build(&format!("xds:///{NAME}"))
        .unwrap();
    assert_eq!(call(&ch, None).await.unwrap(), addrs[0]);
    assert!(ch.status().connected);
    assert_eq!(
        cp.client_certificates(),
        vec![None],
        "TLS without a client certificate"
    );
    assert_eq!(cp.tls_failures(), 0);

    // Another CA's roots do not verify this control plane: never connected.
    let other = Ca::new("other CA");
    write(&d.join("other.pem"), &other.cert.pem());
    let config = format!(r#"{{"ca_certificate_file":"{}"}}"#, d.join("other.pem").display());
    let ch = builder_from_json(&bootstrap(&cp, &config))
        .build(&format!("xds:///{NAME}"))
        .unwrap();
    until("a refused handshake", || cp.tls_failures() >= 1).await;
    assert!(!ch.status().connected);
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_client_certificate_rotation_keeps_the_channel() {
    let _s = serial().await;
    let (_backends, addrs) = backends(1);
    let ca = Ca::new("mesh CA");
    let d = dir("mtls");
    let (ca_file, cert_file, key_file) = (d.join("ca.pem"), d.join("cert.pem"), d.join("key.pem"));
    write(&ca_file, &ca.cert.pem());
    let (cert_a, key_a) = ca.leaf("client-a", false);
    write(&cert_file, &cert_a);
    write(&key_file, &key_a);
    let mut cp = tls_control_plane(server_config(&ca, Some(&ca)), &addrs[0]).await;

    // Without a client certificate the control plane refuses the handshake.
    let roots_only = format!(r#"{{"ca_certificate_file":"{}"}}"#, ca_file.display());
    let refused = builder_from_json(&bootstrap(&cp, &roots_only))
        .build(&format!("xds:///{NAME}"))
        .unwrap();
    until("a refused handshake", || cp.tls_failures() >= 1).await;
    assert!(!refused.status().connected);
    drop(refused);

    let config = format!(
        r#"{{"ca_certificate_file":"{}","certificate_file":"{}","private_key_file":"{}","refresh_interval":"0.05s"}}"#,
        ca_file.display(),
        cert_file.display(),
        key_file.display()
    );
    let ch = builder_from_json(&bootstrap(&cp, &config))
        .build(&format!("xds:///{NAME}"))
        .unwrap();
    assert_eq!(call(&ch, None).await.unwrap(), addrs[0]);
    assert_eq!(cp.client_certificates().last(), Some(&Some(der(&cert_a))));
    let streams = cp.streams();

    // Rotate the client's files; calls keep being served throughout.
    let load = Load::start(&ch, 2);
    let (cert_b, key_b) = ca.leaf("client-b", false);
    write(&key_file, &key_b);
    write(&cert_file, &cert_b);
    // The rotation alone does not drop the ADS connection...
    assert_eq!(cp.streams(), streams);
    assert!(ch.status().connected);
    // ...the next handshake presents the new certificate. Each round forces one (a control
    // plane restart), until the control plane has seen certificate B.
    let deadline = Instant::now() + PATIENCE;
    loop {
        cp.restart().await.unwrap();
        assert!(ch.wait_for(PATIENCE, |s| s.connected).await);
        until("the reconnected stream's handshake", || {
            cp.client_certificates().len() as u64 >= cp.streams()
        })
        .await;
        if cp.client_certificates().last() == Some(&Some(der(&cert_b))) {
            break;
        }
        assert!(Instant::now() < deadline, "certificate B never presented");
    }
    load.calls(20).await;
    let errors = load.stop().await;
    assert!(
        errors.is_empty(),
        "the channel kept serving through the rotation: {errors:?}"
    );
    assert_eq!(call(&ch, None).await.unwrap(), addrs[0]);
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn file_watcher_rereads_files_every_refresh_interval() {
    let ca = Ca::new("watched CA");
    let d = dir("watcher");
    let (cert_file, key_file, ca_file) = (d.join("cert.pem"), d.join("key.pem"), d.join("ca.pem"));
    let (cert_a, key_a) = ca.leaf("a", false);
    write(&cert_file, &cert_a);
    write(&key_file, &key_a);
    write(&ca_file, &ca.cert.pem());
    let watcher = FileWatcher::start(FileWatcherConfig {
        certificate_file: Some(cert_file.clone()),
        private_key_file: Some(key_file.clone()),
        ca_certificate_file: Some(ca_file.clone()),
        refresh_interval: Duration::from_millis(20),
    });
    let km = watcher.key_material();
    assert_eq!(km.generation, 0);
    assert_eq!(km.identity.as_ref().unwrap().0[0].to_vec(), der(&cert_a));
    assert_eq!(km.roots.as_ref().unwrap()[0].to_vec(), ca.cert.der().to_vec());

    // A broken file keeps the last good material.
    let mut rx = watcher.subscribe();
    write(&cert_file, "not a certificate");
    let (cert_b, key_b) = ca.leaf("b", false);
    // Rotation: key and certificate together.
    write(&key_file, &key_b);
    write(&cert_file, &cert_b);
    let km = tokio::time::timeout(
        PATIENCE,
        rx.wait_for(|k| k.identity.as_ref().unwrap().0[0].to_vec() == der(&cert_b)),
    )
    .await
    .expect("the rotation seen within PATIENCE")
    .unwrap()
    .clone();
    assert!(km.generation >= 1);
    assert_eq!(
        km.roots.as_ref().unwrap()[0].to_vec(),
        ca.cert.der().to_vec(),
        "roots unchanged"
    );

    // Unchanged files: no new generation.
    let g = km.generation;
    let mut rx = watcher.subscribe();
    rx.mark_unchanged();
    assert!(tokio::time::timeout(Duration::from_millis(200), rx.changed())
        .await
        .is_err());
    assert_eq!(watcher.key_material().generation, g);
    let _ = std::fs::remove_dir_all(&d);
}
