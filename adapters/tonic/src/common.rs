//! What every subchannel and the picker share: the pool, the resolved configuration and the
//! balancer's clock. The bottom layer of the adapter (with [`config`](crate::config) and
//! [`error`](crate::error)): it imports nothing above it.

use std::sync::Arc;

use pickwise::Pool;
use tokio::time::Instant;

use crate::config::Config;

/// What requests need after the pick (pool, config, clock). Every subchannel holds an `Arc` of it,
/// so an in-flight request reaches it through its endpoint and clones no balancer-wide `Arc`
/// (a refcount every core would write on every request).
#[derive(Debug)]
pub(crate) struct Common {
    pub(crate) pool: Arc<Pool>,
    pub(crate) config: Arc<Config>,
    pub(crate) epoch: Instant,
}

impl Common {
    /// Monotonic nanoseconds since the balancer started: the core's `now`.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}
