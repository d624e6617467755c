//! `ServiceDiscovery` bridges: any stream of endpoint changes (the `Change<String, u32>` stream
//! pickwise's tonic adapter consumes: DNS, a channel, xDS when it lands) feeds a Pingora
//! `LoadBalancer`. Pingora's own `discovery::Static` covers fixed lists.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures_core::Stream;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use pingora::prelude::*;
use tokio_stream::StreamExt;
pub use tower::discover::Change;

/// A `ServiceDiscovery` whose set is kept by a background task reading a change stream; each
/// `discover()` (Pingora's `update`) returns the current set.
#[derive(Debug, Clone, Default)]
pub struct StreamDiscovery {
    set: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl StreamDiscovery {
    /// Starts reading `changes` on the current tokio runtime (`Insert(addr, weight)`,
    /// `Remove(addr)`; addresses `ip:port`). Errors are logged and skipped; the set stays.
    pub fn spawn<S, E>(changes: S) -> Self
    where
        S: Stream<Item = Result<Change<String, u32>, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let this = Self::default();
        let set = this.set.clone();
        tokio::spawn(async move {
            let mut changes = std::pin::pin!(changes);
            while let Some(item) = changes.next().await {
                let Ok(mut map) = set.lock() else { return };
                match item {
                    Ok(Change::Insert(addr, weight)) => {
                        map.insert(addr, weight);
                    }
                    Ok(Change::Remove(addr)) => {
                        map.remove(&addr);
                    }
                    Err(e) => tracing::warn!(error = %e, "pickwise discovery error; keeping the last set"),
                }
            }
        });
        this
    }
}

#[async_trait::async_trait]
impl ServiceDiscovery for StreamDiscovery {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let map = self.set.lock().map(|m| m.clone()).unwrap_or_default();
        let mut set = BTreeSet::new();
        for (addr, weight) in map {
            match Backend::new_with_weight(&addr, weight.max(1) as usize) {
                Ok(b) => {
                    set.insert(b);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "pickwise discovery: not a socket address"),
            }
        }
        Ok((set, HashMap::new()))
    }
}
