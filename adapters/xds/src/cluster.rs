//! One cluster's balancer (grpc-go's `cds` → `cluster_resolver` → `priority` → policy chain):
//! a `pickwise-tonic` channel fed with the cluster's endpoints, whose policy follows CDS at
//! runtime without dropping connections.
//!
//! Weights (gRFC A42): for ring hash and Maglev an endpoint's weight is locality weight ×
//! endpoint weight, so rings are byte-identical to gRPC's. For the other policies locality
//! weighting is two-level (`wrr_locality`): each endpoint gets its locality's share of the
//! priority times its share of the locality (scaled to integers), so the split across
//! localities is the locality weights whatever the endpoint counts.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use pickwise_tonic::discover::{Change, Endpoint};
use pickwise_tonic::{BalancedChannel, LbPolicy};
use tokio::sync::mpsc;

use crate::resource::{ClusterConfig, EndpointsConfig};

/// Fixed-point scale of two-level locality weights.
const SHARE_SCALE: f64 = 1_000_000.0;

type Tx = mpsc::UnboundedSender<Result<Change<String, Endpoint>, Infallible>>;

/// A cluster's live balancer and what it was last told.
pub(crate) struct ClusterBalancer {
    pub(crate) channel: BalancedChannel,
    tx: Tx,
    endpoints: HashMap<String, Endpoint>,
    policy: LbPolicy,
    /// Requests in flight through this cluster (the circuit breaker's count).
    pub(crate) in_flight: Arc<AtomicU32>,
    /// The last circuit-breaker limit and drop policy (kept while the cluster re-resolves).
    pub(crate) max_requests: u32,
    pub(crate) drops: Arc<Vec<(String, u32)>>,
}

impl std::fmt::Debug for ClusterBalancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBalancer")
            .field("endpoints", &self.endpoints.len())
            .field("policy", &self.policy.name())
            .finish_non_exhaustive()
    }
}

impl ClusterBalancer {
    /// Starts a balancer for `cluster` from the user's builder template.
    pub(crate) fn new(builder: pickwise_tonic::Builder, cluster: &ClusterConfig) -> Self {
        let mut builder = builder.policy(cluster.lb.policy).report_peer(true);
        if let Some(o) = cluster.lb.outlier {
            builder = builder.outlier(o);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let channel = builder.build_endpoints(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        Self {
            channel,
            tx,
            endpoints: HashMap::new(),
            policy: cluster.lb.policy,
            in_flight: Arc::new(AtomicU32::new(0)),
            max_requests: cluster.max_requests,
            drops: Arc::default(),
        }
    }

    /// Applies a new cluster and endpoint set: the policy switches in place, endpoints are
    /// diffed (inserts for new or changed, removes for gone).
    pub(crate) fn update(&mut self, cluster: &ClusterConfig, eds: &EndpointsConfig) {
        self.max_requests = cluster.max_requests;
        if *self.drops != eds.drops {
            self.drops = Arc::new(eds.drops.clone());
        }
        if cluster.lb.policy != self.policy {
            self.policy = cluster.lb.policy;
            self.channel.set_policy(self.policy);
        }
        let want = endpoints(eds, &self.policy);
        let gone: Vec<String> = self
            .endpoints
            .keys()
            .filter(|a| !want.contains_key(*a))
            .cloned()
            .collect();
        for addr in gone {
            self.endpoints.remove(&addr);
            let _ = self.tx.send(Ok(Change::Remove(addr)));
        }
        for (addr, e) in want {
            if self.endpoints.get(&addr) != Some(&e) {
                self.endpoints.insert(addr.clone(), e.clone());
                let _ = self.tx.send(Ok(Change::Insert(addr, e)));
            }
        }
    }
}

/// The endpoints with their combined weights, priorities and hash keys.
pub(crate) fn endpoints(eds: &EndpointsConfig, policy: &LbPolicy) -> HashMap<String, Endpoint> {
    let hashing = matches!(policy, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. });
    // Locality weight sums per priority, for two-level shares.
    let mut priority_weight: HashMap<u32, u64> = HashMap::new();
    for l in &eds.localities {
        if !l.endpoints.is_empty() {
            *priority_weight.entry(l.priority).or_default() += u64::from(l.weight);
        }
    }
    let mut out = HashMap::new();
    for l in &eds.localities {
        let in_locality: u64 = l.endpoints.iter().map(|e| u64::from(e.weight)).sum();
        for e in &l.endpoints {
            let weight = if hashing {
                // A42: locality weight × endpoint weight (saturating: the ring normalises).
                (u64::from(l.weight) * u64::from(e.weight)).min(u64::from(u32::MAX)) as u32
            } else {
                let lshare = l.weight as f64 / priority_weight[&l.priority].max(1) as f64;
                // gRPC's round_robin ignores endpoint weights inside a locality.
                let eshare = if *policy == LbPolicy::RoundRobin {
                    1.0 / l.endpoints.len() as f64
                } else {
                    e.weight as f64 / in_locality.max(1) as f64
                };
                ((lshare * eshare * SHARE_SCALE).round() as u32).max(1)
            };
            out.insert(
                e.address.clone(),
                Endpoint {
                    weight,
                    priority: l.priority,
                    hash_key: e.hash_key.as_deref().map(Arc::from),
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{EndpointConfig, LocalityConfig};

    fn locality(weight: u32, priority: u32, eps: &[(&str, u32)]) -> LocalityConfig {
        LocalityConfig {
            name: format!("l{weight}/{priority}"),
            weight,
            priority,
            endpoints: eps
                .iter()
                .map(|(a, w)| EndpointConfig {
                    address: a.to_string(),
                    weight: *w,
                    hash_key: None,
                })
                .collect(),
        }
    }

    #[test]
    fn ring_hash_weights_are_products_others_two_level() {
        let eds = EndpointsConfig {
            localities: vec![
                locality(3, 0, &[("a:1", 1)]),
                locality(1, 0, &[("b:1", 2), ("c:1", 2)]),
                locality(5, 1, &[("d:1", 7)]),
            ],
            drops: vec![],
        };
        let ring = LbPolicy::from_name("ring_hash_experimental").unwrap();
        let w = endpoints(&eds, &ring);
        assert_eq!((w["a:1"].weight, w["b:1"].weight, w["d:1"].weight), (3, 2, 35));
        assert_eq!(w["d:1"].priority, 1);
        let w = endpoints(&eds, &LbPolicy::RoundRobin);
        // Locality split 3:1, then 1:1 within the second locality.
        assert_eq!(
            (w["a:1"].weight, w["b:1"].weight, w["c:1"].weight),
            (750_000, 125_000, 125_000)
        );
        assert_eq!(w["d:1"].weight, 1_000_000);
    }
}
