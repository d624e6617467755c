//! The cluster manager task (gRPC's `xds_cluster_manager`): follows the xDS client's state, keeps
//! one [`ClusterBalancer`] per cluster (retiring those no route names once their requests are
//! done) and publishes each new [`Router`] for requests to read.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::client::{ClusterState, XdsState};
use crate::cluster::ClusterBalancer;
use crate::dispatch::{ClusterEntry, Router, Shared};

/// Makes the `pickwise_tonic::Builder` each cluster's balancer starts from.
pub(crate) type Template = Arc<dyn Fn() -> pickwise_tonic::Builder + Send + Sync>;

/// Follows the xDS client's state: keeps one balancer per cluster and publishes the router.
pub(crate) async fn manage(
    shared: Arc<Shared>,
    mut state: watch::Receiver<Arc<XdsState>>,
    template: Template,
    #[cfg(feature = "tls")] providers: Arc<crate::upstream_tls::Providers>,
) {
    let mut balancers: BTreeMap<String, ClusterBalancer> = BTreeMap::new();
    // Balancers of clusters no route names any more, kept until the requests routed to them
    // are done (grpc-go's cluster manager holds a reference per RPC until it is committed).
    let mut retiring: Vec<ClusterBalancer> = Vec::new();
    loop {
        let s = state.borrow_and_update().clone();
        let mut clusters = HashMap::new();
        for (name, cs) in &s.clusters {
            let entry = match cs {
                ClusterState::Pending => match balancers.get(name) {
                    // Keep serving what we had (a cluster re-requested after a blip).
                    Some(b) => ready_entry(b),
                    None => ClusterEntry::Pending,
                },
                ClusterState::Failed(e) => {
                    balancers.remove(name);
                    ClusterEntry::Failed(e.clone())
                }
                ClusterState::Ready(cluster, eds) => {
                    // TLS turned on or off: a new balancer; the old one finishes its requests.
                    if balancers.get(name).is_some_and(|b| !b.can_update(cluster)) {
                        retiring.extend(balancers.remove(name));
                    }
                    if !balancers.contains_key(name) {
                        let b = ClusterBalancer::new(
                            template(),
                            name,
                            cluster,
                            #[cfg(feature = "tls")]
                            &providers,
                        );
                        match b {
                            Ok(b) => {
                                balancers.insert(name.clone(), b);
                            }
                            Err(e) => {
                                clusters.insert(name.clone(), ClusterEntry::Failed(e));
                                continue;
                            }
                        }
                    }
                    let b = balancers.get_mut(name).expect("inserted above");
                    b.update(cluster, eds);
                    ready_entry(b)
                }
            };
            clusters.insert(name.clone(), entry);
        }
        // Clusters no route names any more: their balancers stop once in-flight requests end.
        let gone: Vec<String> = balancers
            .keys()
            .filter(|name| !s.clusters.contains_key(*name))
            .cloned()
            .collect();
        retiring.extend(gone.iter().filter_map(|name| balancers.remove(name)));
        shared.router.store(Arc::new(Router {
            routes: s.routes.clone(),
            clusters,
            connected: s.connected,
            last_nack: s.last_nack.clone(),
        }));
        shared.version.send_modify(|v| *v += 1);
        loop {
            retiring.retain(|b| b.in_flight.load(Ordering::Relaxed) > 0);
            let poll = (!retiring.is_empty()).then_some(RETIRING_POLL);
            tokio::select! {
                r = state.changed() => {
                    if r.is_err() {
                        return;
                    }
                    break;
                }
                _ = sleep_opt(poll) => {}
            }
        }
    }
}

/// How often retiring balancers are checked for their last request.
const RETIRING_POLL: Duration = Duration::from_millis(100);

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn ready_entry(b: &ClusterBalancer) -> ClusterEntry {
    ClusterEntry::Ready {
        channel: b.channel.clone(),
        drops: b.drops.clone(),
        in_flight: b.in_flight.clone(),
        max_requests: b.max_requests,
    }
}
