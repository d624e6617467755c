//! [`Builder::build`] and its variants: where a configured [`Builder`] becomes a running
//! [`BalancedChannel`] (it spawns the [`balancer`] task). The top layer, with
//! [`channel`](crate::channel).

use futures_core::Stream;

use crate::discover::Change;
use crate::{balancer, BalancedChannel, BoxError, Builder};

impl Builder {
    /// Starts the balancer over `discovery` and returns the channel. Must run inside a tokio runtime
    /// (it spawns the balancer task, which stops when the last clone of the channel is dropped).
    pub fn build<S, E>(self, discovery: S) -> BalancedChannel
    where
        S: Stream<Item = Result<Change<String, u32>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.build_endpoints(tokio_stream::StreamExt::map(discovery, |item| {
            item.map(|change| match change {
                Change::Insert(addr, weight) => Change::Insert(addr, crate::discover::Endpoint::from(weight)),
                Change::Remove(addr) => Change::Remove(addr),
            })
        }))
    }

    /// [`build`](Self::build) over a stream of [`Endpoint`](crate::discover::Endpoint)s: weights
    /// with priorities and ring-hash keys (what an xDS EDS update carries).
    pub fn build_endpoints<S, E>(self, discovery: S) -> BalancedChannel
    where
        S: Stream<Item = Result<Change<String, crate::discover::Endpoint>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let discovery = tokio_stream::StreamExt::map(discovery, |item| item.map_err(Into::into));
        let (shared, shutdown) = balancer::spawn(self.config, Box::pin(discovery), self.peers);
        BalancedChannel::new(shared, shutdown)
    }

    /// [`build`](Self::build) over a fixed list of addresses.
    pub fn build_static<I, A>(self, addresses: I) -> BalancedChannel
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        self.build(crate::discover::fixed(addresses))
    }
}
