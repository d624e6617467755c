//! TLS to a cluster's endpoints from CDS (gRFC A29, feature `tls`): the rustls configuration a
//! cluster's balancer dials through, built from the cluster's [`SecurityConfig`] and the
//! bootstrap's `file_watcher` certificate provider instances.
//!
//! As grpc-go's xDS client handshaker (`internal/credentials/xds/handshake_info.go`):
//! - the server's chain must lead to the root provider's certificates (key usage: server
//!   auth); the endpoint's address or name is **not** verified: when the cluster has
//!   `match_subject_alt_names`, at least one SAN (DNS, email, IP, URI) of the leaf must match
//!   one matcher instead (an `exact` pattern matches a DNS SAN with wildcard rules); without
//!   matchers any certificate the roots verify is accepted;
//! - the identity provider's certificate, when the cluster names one, is presented (mTLS); a
//!   handshake fails while a provider has no material yet (grpc-go blocks until it has some, up
//!   to the handshake's deadline);
//! - an instance without the files for its role gives what grpc-go's `pemfile` gives: a root
//!   instance without `ca_certificate_file` verifies with the platform's roots (Go: `Roots`
//!   nil, the system pool), an identity instance without `certificate_file` presents no
//!   certificate;
//! - each handshake reads the providers' current material, so certificate files rotated on disk
//!   (re-read every `refresh_interval`) apply to the next connection, and established
//!   connections are left alone; a CDS update of the security config applies the same way.
//!
//! TLS session resumption is off: each connection is verified, and presents its identity, anew.
//! READY is the balancer's rule (`pickwise_tonic::Builder::tls`): the handshake completed and
//! the server's HTTP/2 SETTINGS arrived through it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::client::{
    verify_server_cert_signed_by_trust_anchor, ResolvesClientCert, Resumption,
};
use tokio_rustls::rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, Error as TlsError, SignatureScheme};

use crate::bootstrap::FileWatcherConfig;
use crate::credentials::{platform_roots, FileWatcher};
use crate::resource::{SanMatcher, SecurityConfig};

/// The bootstrap's certificate provider instances, started when a cluster first names them
/// and shared by every cluster of the channel that names them (grpc-go's provider store).
#[derive(Debug)]
pub(crate) struct Providers {
    configs: BTreeMap<String, FileWatcherConfig>,
    live: Mutex<HashMap<String, Weak<FileWatcher>>>,
}

impl Providers {
    pub(crate) fn new(configs: BTreeMap<String, FileWatcherConfig>) -> Self {
        Self {
            configs,
            live: Mutex::default(),
        }
    }

    /// The running instance `name` (started now if no cluster holds it).
    fn get(&self, name: &str) -> Result<Arc<FileWatcher>, String> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = live.get(name).and_then(Weak::upgrade) {
            return Ok(w);
        }
        // The client NACKs clusters naming an unknown instance, so this is not expected.
        let config = self
            .configs
            .get(name)
            .ok_or_else(|| format!("certificate provider instance {name:?} not in the bootstrap"))?;
        let w = Arc::new(FileWatcher::start(config.clone()));
        live.insert(name.to_owned(), Arc::downgrade(&w));
        Ok(w)
    }
}

/// What one handshake uses: the providers and the matchers.
#[derive(Debug)]
struct Handshake {
    roots: Arc<FileWatcher>,
    identity: Option<Arc<FileWatcher>>,
    san_matchers: Vec<SanMatcher>,
}

/// A cluster's TLS: its current [`Handshake`], which the verifier and the certificate resolver
/// of the rustls configuration read at each handshake.
#[derive(Debug)]
pub(crate) struct UpstreamTls {
    current: Arc<ArcSwap<Handshake>>,
    config: SecurityConfig,
}

impl UpstreamTls {
    pub(crate) fn new(providers: &Providers, sc: &SecurityConfig) -> Result<Self, String> {
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(handshake(providers, sc)?)),
            config: sc.clone(),
        })
    }

    /// Applies a new security config to the next handshakes.
    pub(crate) fn update(&mut self, providers: &Providers, sc: &SecurityConfig) -> Result<(), String> {
        if *sc != self.config {
            self.current.store(Arc::new(handshake(providers, sc)?));
            self.config = sc.clone();
        }
        Ok(())
    }

    /// The rustls configuration for the cluster's balancer.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let verifier = Arc::new(Verifier {
            current: self.current.clone(),
            provider: provider.clone(),
        });
        let resolver = Arc::new(Identity {
            current: self.current.clone(),
            provider: provider.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(resolver);
        config.resumption = Resumption::disabled();
        config
    }
}

fn handshake(providers: &Providers, sc: &SecurityConfig) -> Result<Handshake, String> {
    Ok(Handshake {
        roots: providers.get(&sc.root.instance_name)?,
        identity: match &sc.identity {
            Some(i) => Some(providers.get(&i.instance_name)?),
            None => None,
        },
        san_matchers: sc.san_matchers.clone(),
    })
}

/// Verifies the server's chain against the root provider's current certificates, then its
/// SANs against the matchers; never the server name.
#[derive(Debug)]
struct Verifier {
    current: Arc<ArcSwap<Handshake>>,
    provider: Arc<CryptoProvider>,
}

fn tls_error(e: impl Into<String>) -> TlsError {
    TlsError::General(e.into())
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let hs = self.current.load();
        let km = hs.roots.key_material();
        let roots = match &km.root_store {
            Some(store) => store.clone(),
            None if hs.roots.config().ca_certificate_file.is_some() => {
                return Err(tls_error(
                    "xds: no root certificates from the root certificate provider yet",
                ))
            }
            // No roots file: the platform's roots, as Go's `x509.Verify` with `Roots` nil.
            None => platform_roots().map_err(tls_error)?,
        };
        // A handshake that cannot present the identity the cluster asks for fails here,
        // before the client's Certificate message, rather than going on without one. An
        // instance without identity files has none to present, and goes on without.
        if let Some(id) = &hs.identity {
            if id.config().certificate_file.is_some() && id.key_material().identity.is_none() {
                return Err(tls_error(
                    "xds: no identity certificate from the identity certificate provider yet",
                ));
            }
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if hs.san_matchers.is_empty() {
            return Ok(ServerCertVerified::assertion());
        }
        let sans = subject_alt_names(end_entity.as_ref())
            .ok_or_else(|| tls_error("xds: cannot read the certificate's subject alternative names"))?;
        let hit = sans
            .iter()
            .any(|(san, dns)| hs.san_matchers.iter().any(|m| m.matches(san, *dns)));
        if hit {
            Ok(ServerCertVerified::assertion())
        } else {
            let names: Vec<&str> = sans.iter().map(|(s, _)| s.as_str()).collect();
            Err(tls_error(format!(
                "xds: received SANs {names:?} do not match any of the accepted SANs"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Presents the identity provider's current certificate, if the cluster names one (none, an
/// empty Certificate message, when the instance has no identity files).
#[derive(Debug)]
struct Identity {
    current: Arc<ArcSwap<Handshake>>,
    provider: Arc<CryptoProvider>,
}

impl ResolvesClientCert for Identity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let hs = self.current.load();
        let km = hs.identity.as_ref()?.key_material();
        let (chain, key) = km.identity.as_ref()?;
        match self.provider.key_provider.load_private_key(key.clone_key()) {
            Ok(signer) => Some(Arc::new(CertifiedKey::new(chain.clone(), signer))),
            Err(e) => {
                tracing::warn!(error = %e, "xds: cannot use the identity certificate's key");
                None
            }
        }
    }

    fn has_certs(&self) -> bool {
        self.current.load().identity.is_some()
    }
}

// === SANs of a DER certificate ===

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, r) = rest.split_at(n);
        rest = r;
        bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The elements of a constructed value's contents.
fn children(mut contents: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, c, rest) = der(contents)?;
        contents = rest;
        Some((tag, c))
    })
}

/// The leaf's subject alternative names as grpc-go reads them (Go's x509 fields `DNSNames`,
/// `EmailAddresses`, `IPAddresses`, `URIs`), each with whether it is a DNS name; `None` when
/// the certificate cannot be read that far (webpki has already parsed and verified it).
fn subject_alt_names(cert: &[u8]) -> Option<Vec<(String, bool)>> {
    const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17
    let (0x30, cert, _) = der(cert)? else { return None };
    let (0x30, tbs, _) = der(cert)? else { return None };
    let mut out = Vec::new();
    // The extensions: tbsCertificate's `[3] EXPLICIT SEQUENCE OF Extension`.
    let Some((_, exts)) = children(tbs).find(|(tag, _)| *tag == 0xa3) else {
        return Some(out);
    };
    let (0x30, exts, _) = der(exts)? else { return None };
    for (_, ext) in children(exts) {
        let mut parts = children(ext);
        let (0x06, oid) = parts.next()? else { return None };
        if oid != SAN_OID {
            continue;
        }
        // `critical` (BOOLEAN) is optional; the value is the OCTET STRING.
        let value = parts.find(|(tag, _)| *tag == 0x04)?.1;
        let (0x30, names, _) = der(value)? else {
            return None;
        };
        for (tag, v) in children(names) {
            let text = || String::from_utf8_lossy(v).into_owned();
            match tag {
                0x81 => out.push((text(), false)), // rfc822Name
                0x82 => out.push((text(), true)),  // dNSName
                0x86 => out.push((text(), false)), // uniformResourceIdentifier
                0x87 => {
                    // iPAddress, printed as Go's net.IP.String() prints it.
                    let ip = match v.len() {
                        4 => IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3])),
                        16 => {
                            let b: [u8; 16] = v.try_into().ok()?;
                            let v6 = Ipv6Addr::from(b);
                            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
                        }
                        _ => continue,
                    };
                    out.push((ip.to_string(), false));
                }
                _ => {}
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reads_every_kind_of_san() {
        let mut params =
            rcgen::CertificateParams::new(vec!["*.example.com".to_owned(), "a.test".to_owned()]).unwrap();
        params.subject_alt_names.extend([
            rcgen::SanType::IpAddress([127, 0, 0, 1].into()),
            rcgen::SanType::IpAddress("2001:db8::1".parse().unwrap()),
            rcgen::SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
            rcgen::SanType::URI("spiffe://td/ns/a/sa/b".try_into().unwrap()),
        ]);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let sans = subject_alt_names(cert.der()).unwrap();
        assert_eq!(
            sans,
            [
                ("*.example.com".to_owned(), true),
                ("a.test".to_owned(), true),
                ("127.0.0.1".to_owned(), false),
                ("2001:db8::1".to_owned(), false),
                ("ops@example.com".to_owned(), false),
                ("spiffe://td/ns/a/sa/b".to_owned(), false),
            ]
        );
        // No SAN extension: none.
        let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(subject_alt_names(cert.der()).unwrap(), []);
        // Garbage is refused, not a panic.
        assert_eq!(subject_alt_names(&[0x30, 0x82, 0xff]), None);
        assert_eq!(subject_alt_names(&[]), None);
    }

    // === Handshakes against a rustls server on loopback ===

    use crate::resource::CertProviderInstance;
    use tokio_rustls::rustls::pki_types::PrivateKeyDer;
    use tokio_rustls::rustls::server::WebPkiClientVerifier;
    use tokio_rustls::rustls::{RootCertStore, ServerConfig};

    struct Ca(rcgen::Certificate, rcgen::KeyPair);

    impl Ca {
        fn new(cn: &str) -> Self {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            Self(params.self_signed(&key).unwrap(), key)
        }

        fn leaf(&self, purpose: rcgen::ExtendedKeyUsagePurpose) -> (rcgen::Certificate, rcgen::KeyPair) {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.extended_key_usages = vec![purpose];
            (params.signed_by(&key, &self.0, &self.1).unwrap(), key)
        }
    }

    /// One handshake of `tls` with a server presenting `server`, which asks for (and does not
    /// require) a client certificate from `client_ca`: how many certificates the client sent.
    async fn handshake(
        tls: &UpstreamTls,
        server: &(rcgen::Certificate, rcgen::KeyPair),
        client_ca: &Ca,
    ) -> Result<usize, String> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(client_ca.0.der().clone()).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .unwrap();
        let key = PrivateKeyDer::try_from(server.1.serialize_der()).unwrap();
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server.0.der().clone()], key)
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len))
        });
        let bounded = Duration::from_secs(10);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls.client_config()));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let client = tokio::time::timeout(bounded, connector.connect(name, tcp))
            .await
            .expect("the handshake ends");
        if let Err(e) = client {
            served.abort();
            return Err(e.to_string());
        }
        tokio::time::timeout(bounded, served)
            .await
            .expect("the server's handshake ends")
            .unwrap()
    }

    fn security(root: &str, identity: Option<&str>) -> SecurityConfig {
        let instance = |name: &str| CertProviderInstance {
            instance_name: name.to_owned(),
            certificate_name: String::new(),
        };
        SecurityConfig {
            root: instance(root),
            identity: identity.map(instance),
            san_matchers: Vec::new(),
        }
    }

    /// grpc-go's `pemfile` gives an instance only the material it has files for: an identity
    /// instance with only `ca_certificate_file` presents no certificate (Go: `Certificates`
    /// nil), a root instance with only the identity files verifies with the platform's roots
    /// (Go: `Roots` nil); and a roots file with a certificate that does not parse still
    /// verifies with the others.
    #[tokio::test]
    async fn an_instance_without_files_for_its_role_is_what_pemfile_gives() {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let d = std::env::temp_dir().join(format!("pickwise-a29-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let (backends, clients) = (Ca::new("backends"), Ca::new("clients"));
        let server = backends.leaf(ServerAuth);
        let (client, client_key) = clients.leaf(ClientAuth);
        std::fs::write(d.join("cert.pem"), client.pem()).unwrap();
        std::fs::write(d.join("key.pem"), client_key.serialize_pem()).unwrap();
        // A certificate that does not parse before the good one.
        let bad = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
        std::fs::write(d.join("roots.pem"), format!("{bad}{}", backends.0.pem())).unwrap();
        let providers = Providers::new(BTreeMap::from([
            (
                "roots".to_owned(),
                FileWatcherConfig {
                    ca_certificate_file: Some(d.join("roots.pem")),
                    ..FileWatcherConfig::default()
                },
            ),
            (
                "identity".to_owned(),
                FileWatcherConfig {
                    certificate_file: Some(d.join("cert.pem")),
                    private_key_file: Some(d.join("key.pem")),
                    ..FileWatcherConfig::default()
                },
            ),
        ]));

        // mTLS as configured: the roots file verifies despite its bad certificate.
        let mtls = UpstreamTls::new(&providers, &security("roots", Some("identity"))).unwrap();
        assert_eq!(handshake(&mtls, &server, &clients).await, Ok(1));

        // The identity instance is the roots-only one: TLS without a client certificate.
        let no_identity = UpstreamTls::new(&providers, &security("roots", Some("roots"))).unwrap();
        assert_eq!(handshake(&no_identity, &server, &clients).await, Ok(0));

        // The root instance has no roots file: the platform's roots, which do not know this
        // private CA (or there are none); not "no roots yet".
        let platform = UpstreamTls::new(&providers, &security("identity", None)).unwrap();
        let err = handshake(&platform, &server, &clients).await.unwrap_err();
        assert!(
            err.contains("UnknownIssuer") || err.contains("no platform root certificates"),
            "{err}"
        );
    }
}
