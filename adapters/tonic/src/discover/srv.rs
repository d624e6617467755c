//! DNS SRV discovery (feature `dns-srv`): `_service._proto.name` through
//! [`hickory-resolver`](https://docs.rs/hickory-resolver), re-resolved when the answer's shortest
//! TTL expires.
//!
//! Each SRV record names a target and a port ([RFC 2782](https://www.rfc-editor.org/rfc/rfc2782));
//! every A/AAAA address of the target becomes an endpoint `ip:port` with the record's weight as
//! [`Endpoint::weight`] and its priority as [`Endpoint::priority`] (0 is the highest, as in SRV).
//! The next resolution happens when the first record of the last answer (SRV or address) expires,
//! bounded by [`DnsSrv::refresh_bounds`] (default 1 s to 5 min). Only differences are yielded:
//! an address that appeared is inserted, one that vanished is removed, one whose weight or
//! priority changed is inserted again.
//!
//! A failed resolution (SRV lookup error, no usable record) yields an error and keeps the last set
//! (the balancer logs it too); it is retried with a backoff from the lower bound, doubling up to
//! the upper one. A target whose address lookup fails keeps its last known addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use futures_core::Stream;
pub use hickory_resolver;
use hickory_resolver::TokioResolver;
use tokio::sync::mpsc;

use super::{Change, Endpoint};
use crate::BoxError;

/// A DNS SRV discovery source; [`DnsSrv::into_stream`] starts it.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use pickwise_tonic::{discover::DnsSrv, Builder};
/// let channel = Builder::new().build_endpoints(DnsSrv::new("_grpc._tcp.backends.internal.").into_stream());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DnsSrv {
    name: String,
    resolver: Option<TokioResolver>,
    min_refresh: Duration,
    max_refresh: Duration,
}

impl DnsSrv {
    /// Resolves `name` (`_service._proto.domain`; end it with `.` to skip the search list) with
    /// the system's resolver configuration (`/etc/resolv.conf`), refreshed within 1 s to 5 min.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            resolver: None,
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(300),
        }
    }

    /// Uses this resolver (its name servers, options and cache) instead of the system's.
    pub fn resolver(mut self, resolver: TokioResolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Re-resolves no sooner than `min` and no later than `max` after an answer, whatever its
    /// TTLs (a TTL of 0 would otherwise mean a query loop). `max` below `min` is raised to `min`.
    pub fn refresh_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min_refresh = min.max(Duration::from_millis(10));
        self.max_refresh = max.max(self.min_refresh);
        self
    }

    /// Starts resolving in a tokio task (now, then as TTLs expire); the task ends when the stream
    /// is dropped. Must be called inside a tokio runtime.
    pub fn into_stream(self) -> impl Stream<Item = Result<Change<String, Endpoint>, BoxError>> + Send {
        let (tx, rx) = mpsc::channel::<Result<Change<String, Endpoint>, BoxError>>(64);
        tokio::spawn(async move {
            let resolver = match self.resolver.clone().map_or_else(system_resolver, Ok) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut known: BTreeMap<String, Endpoint> = BTreeMap::new();
            let mut targets: BTreeMap<String, BTreeSet<std::net::IpAddr>> = BTreeMap::new();
            let mut backoff = self.min_refresh;
            loop {
                let wait = match resolve(&resolver, &self.name, &mut targets).await {
                    Ok((set, ttl)) => {
                        backoff = self.min_refresh;
                        let gone: Vec<String> =
                            known.keys().filter(|a| !set.contains_key(*a)).cloned().collect();
                        for a in gone {
                            known.remove(&a);
                            if tx.send(Ok(Change::Remove(a))).await.is_err() {
                                return;
                            }
                        }
                        for (a, e) in set {
                            if known.get(&a) != Some(&e) {
                                known.insert(a.clone(), e.clone());
                                if tx.send(Ok(Change::Insert(a, e))).await.is_err() {
                                    return;
                                }
                            }
                        }
                        ttl.clamp(self.min_refresh, self.max_refresh)
                    }
                    Err(e) => {
                        tracing::warn!(name = %self.name, error = %e, retry_in = ?backoff, "DNS SRV resolution failed; keeping the last endpoint set");
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        let wait = backoff;
                        backoff = (backoff * 2).min(self.max_refresh);
                        wait
                    }
                };
                // Stop as soon as the balancer is gone, not at the next re-resolution.
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// Shorthand for `DnsSrv::new(name).into_stream()`: the system's resolver, refreshed within
/// 1 s to 5 min as TTLs expire.
pub fn dns_srv(
    name: impl Into<String>,
) -> impl Stream<Item = Result<Change<String, Endpoint>, BoxError>> + Send {
    DnsSrv::new(name).into_stream()
}

fn system_resolver() -> Result<TokioResolver, BoxError> {
    Ok(TokioResolver::builder_tokio()
        .map_err(|e| format!("reading the system's DNS configuration: {e}"))?
        .build())
}

/// One resolution: the endpoint set and the time until its first record expires. `targets`
/// holds each target's last addresses, used when that target's lookup fails.
async fn resolve(
    resolver: &TokioResolver,
    name: &str,
    targets: &mut BTreeMap<String, BTreeSet<std::net::IpAddr>>,
) -> Result<(BTreeMap<String, Endpoint>, Duration), BoxError> {
    let srv = resolver
        .srv_lookup(name)
        .await
        .map_err(|e| format!("SRV lookup of {name} failed: {e}"))?;
    let now = std::time::Instant::now();
    let mut expires = srv.as_lookup().valid_until();
    let mut set: BTreeMap<String, Endpoint> = BTreeMap::new();
    let mut seen_targets = BTreeSet::new();
    for record in srv.iter() {
        // RFC 2782: a target of "." means the service is decidedly not available there.
        if record.target().is_root() {
            continue;
        }
        let target = record.target().to_ascii();
        seen_targets.insert(target.clone());
        let ips = match resolver.lookup_ip(record.target().clone()).await {
            Ok(ips) => {
                expires = expires.min(ips.valid_until());
                let ips: BTreeSet<_> = ips.iter().collect();
                targets.insert(target.clone(), ips.clone());
                ips
            }
            Err(e) => {
                tracing::warn!(%name, %target, error = %e, "address lookup of an SRV target failed; keeping its last addresses");
                targets.get(&target).cloned().unwrap_or_default()
            }
        };
        for ip in ips {
            let key = SocketAddr::new(ip, record.port()).to_string();
            let endpoint = Endpoint {
                weight: u32::from(record.weight()),
                priority: u32::from(record.priority()),
                ..Endpoint::default()
            };
            // Two records reaching one address: the higher priority wins, equal ones add weights.
            match set.get_mut(&key) {
                Some(e) if e.priority < endpoint.priority => {}
                Some(e) if e.priority == endpoint.priority => {
                    e.weight = e.weight.saturating_add(endpoint.weight)
                }
                _ => {
                    set.insert(key, endpoint);
                }
            }
        }
    }
    targets.retain(|t, _| seen_targets.contains(t));
    if set.is_empty() {
        return Err(format!("SRV lookup of {name} gave no usable address").into());
    }
    Ok((set, expires.saturating_duration_since(now)))
}
