//! Kubernetes EndpointSlice discovery (feature `k8s`): watches the
//! [EndpointSlices](https://kubernetes.io/docs/concepts/services-networking/endpoint-slices/) of a
//! Service (label `kubernetes.io/service-name`) through [`kube`]'s watcher (list, then watch from
//! the list's `resourceVersion`, relisting when the watch expires).
//!
//! - **Membership**: an endpoint is a member while `conditions.ready` is true (or absent, which
//!   the API says to read as ready) and it is not `terminating`.
//! - **Draining**: an endpoint that is `serving` and `terminating` (a pod shutting down, still
//!   answering) is removed from discovery, so it takes no new picks; RPCs already picked keep
//!   the connection they are on. The tonic adapter has no "connected but not pickable" state, so
//!   draining here means "out of new picks", as kube-proxy and grpc-go's xDS EDS (DRAINING) do.
//! - **Locality**: `zone` becomes [`Endpoint::locality`] (one id per zone, stable for the stream,
//!   0 without a zone), with the zone's number of members as `locality_weight`, so traffic stays
//!   proportional to endpoints rather than split evenly across zones.
//! - **Port**: chosen by name among the slice's `ports` ([`EndpointSlices::port`]); without a
//!   name, a slice must list exactly one port.
//!
//! Endpoints are keyed `ip:port` (`[v6]:port`); an address in two slices counts once.
//! Watch errors are yielded (the balancer keeps the last set) and the watcher retries with
//! kube's default backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use futures_core::Stream;
use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::sync::mpsc;

use super::{Change, Endpoint};
use crate::BoxError;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// EndpointSlice discovery for one Service; [`EndpointSlices::into_stream`] starts it.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use pickwise_tonic::{discover::EndpointSlices, Builder};
/// let client = kube::Client::try_default().await?;
/// let slices = EndpointSlices::new(client, "default", "backends").port("grpc");
/// let channel = Builder::new().build_endpoints(slices.into_stream());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EndpointSlices {
    client: kube::Client,
    namespace: String,
    service: String,
    port: Option<String>,
}

impl std::fmt::Debug for EndpointSlices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSlices")
            .field("namespace", &self.namespace)
            .field("service", &self.service)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl EndpointSlices {
    /// The slices of Service `service` in `namespace`, read with `client`.
    pub fn new(client: kube::Client, namespace: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            service: service.into(),
            port: None,
        }
    }

    /// Uses the port named `name` (the Service port's name); a slice without it contributes no
    /// endpoint.
    pub fn port(mut self, name: impl Into<String>) -> Self {
        self.port = Some(name.into());
        self
    }

    /// Starts watching in a tokio task; the task ends when the stream is dropped. Must be called
    /// inside a tokio runtime.
    pub fn into_stream(self) -> impl Stream<Item = Result<Change<String, Endpoint>, BoxError>> + Send {
        let (tx, rx) = mpsc::channel::<Result<Change<String, Endpoint>, BoxError>>(64);
        tokio::spawn(async move {
            let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.namespace);
            let config = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={}", self.service));
            let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
            let mut state = State::default();
            loop {
                let event = tokio::select! {
                    e = events.next() => e,
                    _ = tx.closed() => return,
                };
                let changes = match event {
                    None => return,
                    Some(Err(e)) => {
                        tracing::warn!(service = %self.service, error = %e, "EndpointSlice watch failed; keeping the last endpoint set");
                        vec![Err(format!(
                            "EndpointSlice watch of {}/{}: {e}",
                            self.namespace, self.service
                        )
                        .into())]
                    }
                    Some(Ok(event)) => state.handle(event, self.port.as_deref()),
                };
                for c in changes {
                    if tx.send(c).await.is_err() {
                        return;
                    }
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// Members per slice name: (address key, zone).
type Slices = BTreeMap<String, Vec<(String, Option<String>)>>;

/// The slices seen so far and the endpoint set last yielded.
#[derive(Default)]
struct State {
    slices: Slices,
    /// Slices of a relist in progress (between `Init` and `InitDone`).
    relist: Option<Slices>,
    known: BTreeMap<String, Endpoint>,
    zones: BTreeMap<String, u32>,
}

type Changes = Vec<Result<Change<String, Endpoint>, BoxError>>;

impl State {
    fn handle(&mut self, event: Event<EndpointSlice>, port: Option<&str>) -> Changes {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                return Vec::new();
            }
            Event::InitApply(slice) => {
                let name = slice.metadata.name.clone().unwrap_or_default();
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, members(&slice, port));
                return Vec::new();
            }
            Event::InitDone => self.slices = self.relist.take().unwrap_or_default(),
            Event::Apply(slice) => {
                let name = slice.metadata.name.clone().unwrap_or_default();
                self.slices.insert(name, members(&slice, port));
            }
            Event::Delete(slice) => {
                self.slices
                    .remove(&slice.metadata.name.clone().unwrap_or_default());
            }
        }
        self.diff()
    }

    /// The current union of the slices against what was last yielded.
    fn diff(&mut self) -> Changes {
        let mut zone_of: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        for (addr, zone) in self.slices.values().flatten() {
            zone_of.entry(addr).or_insert(zone.as_deref());
        }
        let mut counts: BTreeMap<Option<&str>, u32> = BTreeMap::new();
        for zone in zone_of.values() {
            *counts.entry(*zone).or_default() += 1;
        }
        let mut next = BTreeMap::new();
        for (addr, zone) in &zone_of {
            let locality = match zone {
                None => 0,
                Some(z) => {
                    let id = self.zones.len() as u32 + 1;
                    *self.zones.entry((*z).to_owned()).or_insert(id)
                }
            };
            let endpoint = Endpoint {
                locality,
                locality_weight: counts[zone],
                ..Endpoint::default()
            };
            next.insert((*addr).to_owned(), endpoint);
        }
        let mut changes = Changes::new();
        for gone in self.known.keys().filter(|a| !next.contains_key(*a)) {
            changes.push(Ok(Change::Remove(gone.clone())));
        }
        for (addr, e) in &next {
            if self.known.get(addr) != Some(e) {
                changes.push(Ok(Change::Insert(addr.clone(), e.clone())));
            }
        }
        self.known = next;
        changes
    }
}

/// The slice's members (address key and zone) on the chosen port.
fn members(slice: &EndpointSlice, port: Option<&str>) -> Vec<(String, Option<String>)> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let chosen = match port {
        Some(name) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
        None if ports.len() == 1 => ports.first(),
        None => None,
    };
    let Some(port) = chosen.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()) else {
        tracing::debug!(slice = ?slice.metadata.name, "EndpointSlice without the chosen port; skipped");
        return Vec::new();
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for endpoint in &slice.endpoints {
        let conditions = endpoint.conditions.as_ref();
        // The API: a nil `ready` is read as ready, a nil `terminating` as not terminating.
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        if !ready || terminating {
            continue;
        }
        for address in &endpoint.addresses {
            let key = match address.parse::<IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, port).to_string(),
                // addressType FQDN.
                Err(_) => format!("{address}:{port}"),
            };
            if seen.insert(key.clone()) {
                out.push((key, endpoint.zone.clone()));
            }
        }
    }
    out
}
