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
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};

use crate::bootstrap::FileWatcherConfig;
use crate::credentials::FileWatcher;
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
        let Some(certs) = &km.roots else {
            return Err(tls_error(
                "xds: no root certificates from the root certificate provider yet",
            ));
        };
        // A handshake that cannot present the identity the cluster asks for fails here,
        // before the client's Certificate message, rather than going on without one.
        if let Some(id) = &hs.identity {
            if id.key_material().identity.is_none() {
                return Err(tls_error(
                    "xds: no identity certificate from the identity certificate provider yet",
                ));
            }
        }
        let mut roots = RootCertStore::empty();
        for c in certs {
            roots.add(c.clone())?;
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

/// Presents the identity provider's current certificate, if the cluster names one.
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
}
