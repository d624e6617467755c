//! TLS to the control plane (gRFC A65): the `file_watcher` certificate provider and the
//! connector the ADS channel dials through. The same provider backs the bootstrap's
//! `certificate_providers` instances that clusters name for TLS to their endpoints (gRFC A29).
//!
//! [`FileWatcher`] is grpc-go's `pemfile` watcher: it reads the files once when started and
//! again every `refresh_interval`; identity (certificate chain and key) and roots update
//! separately, and a file that cannot be read or parsed keeps the last good material (logged).
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
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::bootstrap::FileWatcherConfig;

/// What a [`FileWatcher`] last read successfully.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct KeyMaterial {
    /// The certificate chain and its key (`certificate_file`, `private_key_file`).
    pub identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    /// The roots (`ca_certificate_file`).
    pub roots: Option<Vec<CertificateDer<'static>>>,
    /// How many times the material changed (0: as first read).
    pub generation: u64,
}

/// The `file_watcher` certificate provider: see the [module docs](self).
#[derive(Debug)]
pub struct FileWatcher {
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
                    generation: last.generation,
                };
                if refresh(&config, &mut seen, &mut km) {
                    km.generation += 1;
                    tracing::info!(generation = km.generation, "certificate files changed");
                    tx.send_replace(Arc::new(km));
                }
            }
        });
        Self { current, task }
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
                    (Ok(chain), Ok(pk)) if !chain.is_empty() => {
                        km.identity = Some((chain, Arc::new(pk)));
                        (seen.cert, seen.key) = (cert, key);
                        changed = true;
                    }
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
            Ok(roots) if roots != seen.roots => {
                match CertificateDer::pem_slice_iter(&roots).collect::<Result<Vec<_>, _>>() {
                    Ok(certs) if !certs.is_empty() => {
                        km.roots = Some(certs);
                        seen.roots = roots;
                        changed = true;
                    }
                    _ => {
                        tracing::warn!(ca = %ca_file.display(), "cannot parse the root certificates; keeping the last good ones")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(ca = %ca_file.display(), error = %e, "cannot read the root certificates; keeping the last good ones")
            }
        }
    }
    changed
}

/// The rustls configuration for one handshake from `km`: its roots, or the platform's when
/// the config names none; its identity when it has one; ALPN `h2`.
pub(crate) fn client_config(km: &KeyMaterial, config: &FileWatcherConfig) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match &km.roots {
        Some(certs) => {
            for c in certs {
                roots
                    .add(c.clone())
                    .map_err(|e| format!("root certificate: {e}"))?;
            }
        }
        None if config.ca_certificate_file.is_some() => {
            return Err("no usable root certificates read from ca_certificate_file yet".into())
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(format!("no platform root certificates: {:?}", native.errors));
            }
        }
    }
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
