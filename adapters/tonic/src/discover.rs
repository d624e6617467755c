//! Discovery: where endpoint addresses come from.
//!
//! A discovery source is any `Stream` of [`Change`]s keyed by address (`"host:port"`, also the
//! ring-hash identity key) with the endpoint's weight as value. The balancer polls it from a
//! background task, whether or not requests flow. A stream that yields an error or ends keeps the
//! last good endpoint set and says so in a `tracing` event.
//!
//! Ready-made sources: [`fixed`] (a static list), [`channel`] (a handle you push changes into) and
//! [`dns`] (periodic re-resolution of a `host:port`); behind features, [`DnsSrv`] (DNS SRV records
//! with TTL-driven refresh, `dns-srv`) and [`EndpointSlices`] (Kubernetes, `k8s`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::mpsc;
pub use tower::discover::Change;

#[cfg(feature = "dns-srv")]
mod srv;
#[cfg(feature = "dns-srv")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns-srv")))]
pub use srv::{dns_srv, hickory_resolver, DnsSrv};

#[cfg(feature = "k8s")]
mod k8s;
#[cfg(feature = "k8s")]
#[cfg_attr(docsrs, doc(cfg(feature = "k8s")))]
pub use k8s::{EndpointSlices, SERVICE_NAME_LABEL};

use crate::BoxError;

/// A boxed discovery stream of addresses and weights (also the peer stream of subsetting).
pub type BoxDiscover = Pin<Box<dyn Stream<Item = Result<Change<String, u32>, BoxError>> + Send>>;

/// A boxed discovery stream of [`Endpoint`]s, as the balancer stores it.
pub type BoxEndpointDiscover = Pin<Box<dyn Stream<Item = Result<Change<String, Endpoint>, BoxError>> + Send>>;

/// What discovery knows about one endpoint beyond its address (xDS EDS carries all of it).
///
/// - `weight`: its share within its locality.
/// - `priority`: gRPC's priority policy (grpc-go `balancer/priority`): requests go to the first
///   priority that is READY, or still connecting for the first time (10 s failover timer); one
///   that reported TRANSIENT_FAILURE keeps the next in use until it is READY again. Lower
///   priorities connect only when needed and are closed 15 s after they stop serving.
/// - `locality`, `locality_weight`: gRPC's `weighted_target` (xDS localities): requests are split
///   across the localities of the serving priority by locality weight, among those with a READY
///   endpoint, then balanced inside the locality; ring hash and Maglev instead weigh each
///   endpoint by endpoint weight × locality weight (gRFC A42).
/// - `hash_key`: the key the ring hashes instead of the address (gRFC A76's `hash_key`
///   endpoint metadata), so an endpoint keeps its ring points across address changes.
///
/// The rules are the core's ([`pickwise::balancer`]): the tonic adapter only reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Weight within its locality (0 is treated as 1).
    pub weight: u32,
    /// Priority: 0 is the highest.
    pub priority: u32,
    /// Locality id (endpoints with the same id share a locality).
    pub locality: u32,
    /// The locality's weight (0 is treated as 1).
    pub locality_weight: u32,
    /// The ring-hash key, if not the address.
    pub hash_key: Option<std::sync::Arc<str>>,
}

impl Default for Endpoint {
    fn default() -> Self {
        Self {
            weight: 1,
            priority: 0,
            locality: 0,
            locality_weight: 1,
            hash_key: None,
        }
    }
}

impl From<u32> for Endpoint {
    fn from(weight: u32) -> Self {
        Self {
            weight,
            ..Self::default()
        }
    }
}

/// A static list of addresses (weight 1 each): inserts them once, then stays open (no end). An empty
/// list yields one error, so requests fail at once with that message.
pub fn fixed<I, S>(addresses: I) -> Fixed
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let items: Vec<_> = addresses
        .into_iter()
        .map(|a| Change::Insert(a.into(), 1))
        .collect();
    Fixed {
        empty: items.is_empty(),
        items: items.into_iter(),
    }
}

/// The stream of [`fixed`].
#[derive(Debug)]
pub struct Fixed {
    /// An empty list is reported once as an error, so requests fail fast instead of waiting.
    empty: bool,
    items: std::vec::IntoIter<Change<String, u32>>,
}

impl Stream for Fixed {
    type Item = Result<Change<String, u32>, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if std::mem::take(&mut self.empty) {
            return Poll::Ready(Some(Err("the static endpoint list is empty".into())));
        }
        match self.items.next() {
            Some(change) => Poll::Ready(Some(Ok(change))),
            // A static list never changes and never ends.
            None => Poll::Pending,
        }
    }
}

/// A handle that pushes endpoint changes into a balancer; cloneable; sending never blocks.
#[derive(Clone, Debug)]
pub struct DiscoveryHandle {
    tx: mpsc::UnboundedSender<Change<String, u32>>,
}

impl DiscoveryHandle {
    /// Adds an endpoint, or changes its weight if present. Returns false if the balancer is gone.
    pub fn insert(&self, address: impl Into<String>, weight: u32) -> bool {
        self.tx.send(Change::Insert(address.into(), weight)).is_ok()
    }

    /// Removes an endpoint. Returns false if the balancer is gone.
    pub fn remove(&self, address: impl Into<String>) -> bool {
        self.tx.send(Change::Remove(address.into())).is_ok()
    }
}

/// The stream half of [`channel`]. Ends when every [`DiscoveryHandle`] is dropped (the balancer then
/// keeps the last set).
#[derive(Debug)]
pub struct ChannelDiscover {
    rx: mpsc::UnboundedReceiver<Change<String, u32>>,
}

impl Stream for ChannelDiscover {
    type Item = Result<Change<String, u32>, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

/// A discovery source driven by hand: push changes through the handle.
///
/// ```
/// let (handle, discovery) = pickwise_tonic::discover::channel();
/// handle.insert("127.0.0.1:50051", 1);
/// handle.remove("127.0.0.1:50051");
/// # drop(discovery);
/// ```
pub fn channel() -> (DiscoveryHandle, ChannelDiscover) {
    let (tx, rx) = mpsc::unbounded_channel();
    (DiscoveryHandle { tx }, ChannelDiscover { rx })
}

/// Periodic DNS re-resolution of `host:port` with tokio's resolver (the system's `getaddrinfo`).
///
/// Resolves at once, then every `every`; yields inserts for new addresses and removes for vanished
/// ones (weight 1). A failed lookup yields an error (the balancer keeps the last set) and is retried
/// at the next period. An empty answer is treated like a failure, not as "remove everything".
/// The resolver task ends as soon as the balancer drops the stream (the last channel clone).
pub fn dns(
    target: impl Into<String>,
    every: Duration,
) -> impl Stream<Item = Result<Change<String, u32>, BoxError>> + Send {
    let target = target.into();
    let (tx, rx) = mpsc::channel::<Result<Change<String, u32>, BoxError>>(64);
    tokio::spawn(async move {
        let mut known: BTreeSet<SocketAddr> = BTreeSet::new();
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Stop as soon as the balancer is gone, not at the next re-resolution.
            tokio::select! {
                _ = tick.tick() => {}
                _ = tx.closed() => return,
            }
            let found: Result<BTreeSet<SocketAddr>, BoxError> =
                match tokio::net::lookup_host(target.as_str()).await {
                    Ok(addrs) => {
                        let set: BTreeSet<SocketAddr> = addrs.collect();
                        if set.is_empty() {
                            Err(format!("DNS lookup of {target} returned no addresses").into())
                        } else {
                            Ok(set)
                        }
                    }
                    Err(e) => Err(format!("DNS lookup of {target} failed: {e}").into()),
                };
            let changes: Vec<Result<Change<String, u32>, BoxError>> = match found {
                Ok(set) => {
                    let gone = known.difference(&set).map(|a| Ok(Change::Remove(a.to_string())));
                    let new = set
                        .difference(&known)
                        .map(|a| Ok(Change::Insert(a.to_string(), 1)));
                    let changes = gone.chain(new).collect();
                    known = set;
                    changes
                }
                Err(e) => vec![Err(e)],
            };
            for c in changes {
                if tx.send(c).await.is_err() {
                    return; // the balancer is gone
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
