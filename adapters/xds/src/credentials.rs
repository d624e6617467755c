//! TLS to the control plane (gRFC A65): the `file_watcher` certificate provider and the
//! connector the ADS channel dials through. The same provider backs the bootstrap's
//! `certificate_providers` instances that clusters name for TLS to their endpoints (gRFC A29).
//!
//! [`FileWatcher`] is grpc-go's `pemfile` watcher: it reads the files once when started and
//! again every `refresh_interval`; identity (certificate chain and key) and roots update
//! separately, and a file that cannot be read or parsed keeps the last good material (logged).
//! As grpc-go's `tls.X509KeyPair`, a key that is not the leaf certificate's is refused (the
//! last good pair stays); as its `x509.CertPool.AppendCertsFromPEM`, a roots file keeps the
//! certificates that parse as trust anchors, skipping the others, and is refused only when
//! none does.
//! As grpc-go's `reloadingCreds`, the connector the ADS client dials through builds the rustls configuration from the
//! current material for each handshake: a rotation applies to the next connection, and the
//! connection in use is not dropped for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::bootstrap::FileWatcherConfig;

/// What a [`FileWatcher`] last read successfully.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct KeyMaterial {
    /// The certificate chain and its key (`certificate_file`, `private_key_file`).
    pub identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    /// The roots (`ca_certificate_file`): the file's certificates that parse as trust anchors.
    pub roots: Option<Vec<CertificateDer<'static>>>,
    /// The same roots as trust anchors, parsed once when the file was read.
    pub(crate) root_store: Option<Arc<RootCertStore>>,
    /// How many times the material changed (0: as first read).
    pub generation: u64,
}

/// The `file_watcher` certificate provider: see the [module docs](self).
#[derive(Debug)]
pub struct FileWatcher {
    config: FileWatcherConfig,
    current: watch::Receiver<Arc<KeyMaterial>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The files' raw contents as last applied, to skip re-parsing unchanged files (grpc-go
/// compares the bytes the same way).
#[derive(Default)]
struct Seen {
    cert: Vec<u8>,
    key: Vec<u8>,
    roots: Vec<u8>,
}

impl FileWatcher {
    /// Reads the files now and starts re-reading them every
    /// [`effective_refresh_interval`](FileWatcherConfig::effective_refresh_interval) on the
    /// current tokio runtime, until dropped.
    pub fn start(config: FileWatcherConfig) -> Self {
        let mut seen = Seen::default();
        let mut km = KeyMaterial::default();
        refresh(&config, &mut seen, &mut km);
        let (tx, current) = watch::channel(Arc::new(km));
        let this = config.clone();
        let task = tokio::spawn(async move {
            let period = config.effective_refresh_interval();
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let last = tx.borrow().clone();
                let mut km = KeyMaterial {
                    identity: last.identity.clone(),
                    roots: last.roots.clone(),
                    root_store: last.root_store.clone(),
                    generation: last.generation,
                };
                if refresh(&config, &mut seen, &mut km) {
                    km.generation += 1;
                    tracing::info!(generation = km.generation, "certificate files changed");
                    tx.send_replace(Arc::new(km));
                }
            }
        });
        Self {
            config: this,
            current,
            task,
        }
    }

    /// The files it reads.
    pub fn config(&self) -> &FileWatcherConfig {
        &self.config
    }

    /// The current material.
    pub fn key_material(&self) -> Arc<KeyMaterial> {
        self.current.borrow().clone()
    }

    /// A receiver that sees each change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<KeyMaterial>> {
        self.current.clone()
    }
}

/// One read of the files (grpc-go `updateIdentityDistributor`, `maybeUpdateRootFile`); whether
/// anything changed.
fn refresh(config: &FileWatcherConfig, seen: &mut Seen, km: &mut KeyMaterial) -> bool {
    let mut changed = false;
    if let (Some(cert_file), Some(key_file)) = (&config.certificate_file, &config.private_key_file) {
        match (std::fs::read(cert_file), std::fs::read(key_file)) {
            (Ok(cert), Ok(key)) if cert != seen.cert || key != seen.key => {
                let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&cert).collect();
                match (chain, PrivateKeyDer::from_pem_slice(&key)) {
                    (Ok(chain), Ok(pk)) if !chain.is_empty() => match key_matches(&chain, &pk) {
                        Ok(()) => {
                            km.identity = Some((chain, Arc::new(pk)));
                            (seen.cert, seen.key) = (cert, key);
                            changed = true;
                        }
                        Err(e) => tracing::warn!(
                            cert = %cert_file.display(), key = %key_file.display(), error = %e,
                            "the private key is not the certificate's; keeping the last good ones"
                        ),
                    },
                    _ => tracing::warn!(
                        cert = %cert_file.display(), key = %key_file.display(),
                        "cannot parse the certificate and key; keeping the last good ones"
                    ),
                }
            }
            (Ok(_), Ok(_)) => {}
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot read the certificate or key file; keeping the last good ones")
            }
        }
    }
    if let Some(ca_file) = &config.ca_certificate_file {
        match std::fs::read(ca_file) {
            Ok(roots) if roots != seen.roots => match trust_anchors(&roots) {
                Some((certs, store)) => {
                    km.roots = Some(certs);
                    km.root_store = Some(Arc::new(store));
                    seen.roots = roots;
                    changed = true;
                }
                None => {
                    tracing::warn!(ca = %ca_file.display(), "no usable root certificate in the file; keeping the last good ones")
                }
            },
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(ca = %ca_file.display(), error = %e, "cannot read the root certificates; keeping the last good ones")
            }
        }
    }
    changed
}

/// Whether `key` is the private key of `chain`'s leaf (grpc-go's `tls.X509KeyPair` check):
/// the public key of the signing key is the leaf's SubjectPublicKeyInfo.
fn key_matches(chain: &[CertificateDer<'static>], key: &PrivateKeyDer<'static>) -> Result<(), String> {
    use tokio_rustls::rustls::{Error, InconsistentKeys};
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| e.to_string())?;
    match CertifiedKey::new(chain.to_vec(), signer).keys_match() {
        // ring derives the public key of every key type it loads; should one not, the
        // handshake is the check.
        Ok(()) | Err(Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// The certificates of a PEM roots file that parse as trust anchors, and those anchors;
/// `None` when none does (Go's `AppendCertsFromPEM`: bad certificates are skipped, and the
/// file fails only when no certificate is added). Reading stops at a malformed PEM section.
fn trust_anchors(pem: &[u8]) -> Option<(Vec<CertificateDer<'static>>, RootCertStore)> {
    let mut certs = Vec::new();
    let mut store = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        let Ok(c) = c else { break };
        match store.add(c.clone()) {
            Ok(()) => certs.push(c),
            Err(e) => tracing::warn!(error = %e, "skipping a root certificate that cannot be parsed"),
        }
    }
    (!certs.is_empty()).then_some((certs, store))
}

/// The platform's roots (`rustls-native-certs`), loaded once per process as Go's
/// `x509.SystemCertPool`.
pub(crate) fn platform_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: std::sync::OnceLock<Result<Arc<RootCertStore>, String>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let native = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                Err(format!("no platform root certificates: {:?}", native.errors))
            } else {
                Ok(Arc::new(roots))
            }
        })
        .clone()
}

/// The rustls configuration for one handshake from `km`: its roots, or the platform's when
/// the config names none; its identity when it has one; ALPN `h2`.
pub(crate) fn client_config(km: &KeyMaterial, config: &FileWatcherConfig) -> Result<ClientConfig, String> {
    let roots = match &km.root_store {
        Some(store) => store.clone(),
        None if config.ca_certificate_file.is_some() => {
            return Err("no usable root certificates read from ca_certificate_file yet".into())
        }
        None => platform_roots()?,
    };
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut tls = match &km.identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("client certificate: {e}"))?,
        None if config.certificate_file.is_some() => {
            return Err("no usable client certificate read from certificate_file yet".into())
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tls)
}

/// Dials the control plane over TCP and TLS with the watcher's current material (a tonic
/// connector: `Endpoint::connect_with_connector`).
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    watcher: Arc<FileWatcher>,
    config: FileWatcherConfig,
}

impl Connector {
    pub(crate) fn new(watcher: Arc<FileWatcher>, config: FileWatcherConfig) -> Self {
        Self { watcher, config }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let km = self.watcher.key_material();
        let config = self.config.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("the control plane URI has no host")?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tls = client_config(&km, &config)?;
            let name = ServerName::try_from(host.clone())?;
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pickwise-creds-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn self_signed(cn: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (params.self_signed(&key).unwrap(), key)
    }

    /// A PEM `CERTIFICATE` block whose DER is no certificate (`SEQUENCE { INTEGER 0 }`).
    const BAD_CERT: &str = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";

    /// grpc-go `updateIdentityDistributor` (`tls.X509KeyPair`): a key that is not the
    /// certificate's is refused, and the last good pair stays.
    #[test]
    fn a_key_not_the_certificates_is_refused_and_the_last_good_pair_kept() {
        let d = temp_dir("keypair");
        let config = FileWatcherConfig {
            certificate_file: Some(d.join("cert.pem")),
            private_key_file: Some(d.join("key.pem")),
            ..FileWatcherConfig::default()
        };
        let (a, a_key) = self_signed("a");
        let (b, _b_key) = self_signed("b");
        let (mut seen, mut km) = (Seen::default(), KeyMaterial::default());

        // A mismatched pair from the start: no identity at all.
        std::fs::write(d.join("cert.pem"), b.pem()).unwrap();
        std::fs::write(d.join("key.pem"), a_key.serialize_pem()).unwrap();
        assert!(!refresh(&config, &mut seen, &mut km));
        assert!(km.identity.is_none());

        // A matching pair is installed.
        std::fs::write(d.join("cert.pem"), a.pem()).unwrap();
        assert!(refresh(&config, &mut seen, &mut km));
        assert_eq!(km.identity.as_ref().unwrap().0[0], *a.der());

        // The certificate rotated without its key: refused, `a` stays.
        std::fs::write(d.join("cert.pem"), b.pem()).unwrap();
        assert!(!refresh(&config, &mut seen, &mut km));
        assert_eq!(km.identity.as_ref().unwrap().0[0], *a.der());
        assert!(client_config(&km, &config).is_ok());
    }

    /// Go `AppendCertsFromPEM`: certificates that do not parse are skipped; a file with none
    /// usable keeps the last good roots.
    #[test]
    fn bad_roots_are_skipped_and_a_file_of_none_keeps_the_last_good() {
        let d = temp_dir("roots");
        let config = FileWatcherConfig {
            ca_certificate_file: Some(d.join("ca.pem")),
            ..FileWatcherConfig::default()
        };
        let (ca1, _) = self_signed("ca1");
        let (ca2, _) = self_signed("ca2");
        let (mut seen, mut km) = (Seen::default(), KeyMaterial::default());

        std::fs::write(d.join("ca.pem"), format!("{BAD_CERT}{}", ca1.pem())).unwrap();
        assert!(refresh(&config, &mut seen, &mut km));
        assert_eq!(km.roots.as_deref().unwrap(), [ca1.der().clone()]);
        assert_eq!(km.root_store.as_ref().unwrap().len(), 1);
        assert!(client_config(&km, &config).is_ok());

        // Only bad certificates: the last good roots stay.
        std::fs::write(d.join("ca.pem"), BAD_CERT).unwrap();
        assert!(!refresh(&config, &mut seen, &mut km));
        assert_eq!(km.roots.as_deref().unwrap(), [ca1.der().clone()]);

        // Good ones again, a bad one between them.
        std::fs::write(d.join("ca.pem"), format!("{}{BAD_CERT}{}", ca1.pem(), ca2.pem())).unwrap();
        assert!(refresh(&config, &mut seen, &mut km));
        assert_eq!(
            km.roots.as_deref().unwrap(),
            [ca1.der().clone(), ca2.der().clone()]
        );
        assert_eq!(km.root_store.as_ref().unwrap().len(), 2);
    }
}
