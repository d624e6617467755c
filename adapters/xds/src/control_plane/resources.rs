//! Builders for the resources a gRPC client needs, in the shapes Istio and go-control-plane
//! send them: an API listener with RDS, one virtual host, EDS clusters, localities.

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster, load_balancing_policy, Cluster, LoadBalancingPolicy,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, AggregatedConfigSource, ConfigSource, Locality as PbLocality,
    Metadata, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_action::hash_policy, route_action::ClusterSpecifier, route_action::HashPolicy,
    route_match::PathSpecifier, weighted_cluster::ClusterWeight, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value, UInt64Value};
use prost::{Message, Name};

use super::IntoResource;
use crate::resource::ResourceType;

/// Packs a message as an `Any`.
pub fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(
            envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(
                AggregatedConfigSource::default(),
            ),
        ),
        ..ConfigSource::default()
    }
}

fn hcm(route_specifier: RouteSpecifier) -> Any {
    let router = envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default();
    any(&HttpConnectionManager {
        route_specifier: Some(route_specifier),
        http_filters: vec![HttpFilter {
            name: "router".into(),
            config_type: Some(
                envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(
                    any(&router),
                ),
            ),
            ..HttpFilter::default()
        }],
        ..HttpConnectionManager::default()
    })
}

/// An API listener named `name` whose routes come from RDS `route_config`.
pub fn listener(name: &str, route_config: &str) -> Listener {
    Listener {
        name: name.into(),
        api_listener: Some(ApiListener {
            api_listener: Some(hcm(RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: route_config.into(),
            }))),
        }),
        ..Listener::default()
    }
}

/// An API listener with its routes inline.
pub fn listener_inline(name: &str, routes: RouteConfiguration) -> Listener {
    Listener {
        name: name.into(),
        api_listener: Some(ApiListener {
            api_listener: Some(hcm(RouteSpecifier::RouteConfig(routes))),
        }),
        ..Listener::default()
    }
}

/// A route configuration with one virtual host for `domain`: every request to `cluster`.
pub fn route_config(name: &str, domain: &str, cluster: &str) -> RouteConfiguration {
    route_config_weighted(name, domain, &[(cluster, 1)], None)
}

/// A route configuration with one virtual host for `domain`: every request to the weighted
/// `clusters`, hashed on `hash_header` if given.
pub fn route_config_weighted(
    name: &str,
    domain: &str,
    clusters: &[(&str, u32)],
    hash_header: Option<&str>,
) -> RouteConfiguration {
    let cluster_specifier = if clusters.len() == 1 {
        ClusterSpecifier::Cluster(clusters[0].0.into())
    } else {
        ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(n, w)| ClusterWeight {
                    name: (*n).into(),
                    weight: Some(UInt32Value { value: *w }),
                    ..ClusterWeight::default()
                })
                .collect(),
            ..WeightedCluster::default()
        })
    };
    let hash_policy = hash_header
        .map(|h| {
            vec![HashPolicy {
                policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
                    header_name: h.into(),
                    regex_rewrite: None,
                })),
                terminal: false,
            }]
        })
        .unwrap_or_default();
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: format!("{domain}-vh"),
            domains: vec![domain.into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix(String::new())),
                    ..RouteMatch::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(cluster_specifier),
                    hash_policy,
                    ..RouteAction::default()
                })),
                ..Route::default()
            }],
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    }
}

/// A cluster's balancing policy (the `lb_policy` field and its config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// `ROUND_ROBIN`.
    RoundRobin,
    /// `LEAST_REQUEST` with two choices.
    LeastRequest,
    /// `RING_HASH` with these minimum and maximum ring sizes.
    RingHash {
        /// `minimum_ring_size`.
        min: u64,
        /// `maximum_ring_size`.
        max: u64,
    },
    /// `MAGLEV` with this table size.
    Maglev(u64),
    /// `load_balancing_policy`: `wrr_locality` over `client_side_weighted_round_robin` (gRFC
    /// A58, as Traffic Director sends it), per-call load reports.
    WeightedRoundRobin {
        /// `blackout_period` in milliseconds.
        blackout_ms: u64,
        /// `weight_update_period` in milliseconds.
        update_ms: u64,
    },
}

/// `wrr_locality` over `client_side_weighted_round_robin` with these periods.
fn weighted_round_robin(blackout_ms: u64, update_ms: u64) -> LoadBalancingPolicy {
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::extensions::load_balancing_policies as lbp;
    use envoy_types::pb::google::protobuf::Duration;
    let ms = |ms: u64| Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    };
    let typed = |name: &str, any: Any| load_balancing_policy::Policy {
        typed_extension_config: Some(TypedExtensionConfig {
            name: name.into(),
            typed_config: Some(any),
        }),
    };
    let wrr = lbp::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin {
        blackout_period: Some(ms(blackout_ms)),
        weight_update_period: Some(ms(update_ms)),
        ..Default::default()
    };
    let locality = lbp::wrr_locality::v3::WrrLocality {
        endpoint_picking_policy: Some(LoadBalancingPolicy {
            policies: vec![typed("wrr", any(&wrr))],
        }),
    };
    LoadBalancingPolicy {
        policies: vec![typed("wrr_locality", any(&locality))],
    }
}

/// An EDS cluster named `name` (its EDS resource has the same name).
pub fn cluster(name: &str, policy: Policy) -> Cluster {
    let (lb_policy, lb_config) = match policy {
        Policy::RoundRobin => (cluster::LbPolicy::RoundRobin, None),
        Policy::LeastRequest => (cluster::LbPolicy::LeastRequest, None),
        Policy::RingHash { min, max } => (
            cluster::LbPolicy::RingHash,
            Some(cluster::LbConfig::RingHashLbConfig(cluster::RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: min }),
                maximum_ring_size: Some(UInt64Value { value: max }),
                ..cluster::RingHashLbConfig::default()
            })),
        ),
        Policy::Maglev(size) => (
            cluster::LbPolicy::Maglev,
            Some(cluster::LbConfig::MaglevLbConfig(cluster::MaglevLbConfig {
                table_size: Some(UInt64Value { value: size }),
            })),
        ),
        Policy::WeightedRoundRobin { .. } => (cluster::LbPolicy::RoundRobin, None),
    };
    let load_balancing_policy = match policy {
        Policy::WeightedRoundRobin {
            blackout_ms,
            update_ms,
        } => Some(weighted_round_robin(blackout_ms, update_ms)),
        _ => None,
    };
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        lb_policy: lb_policy as i32,
        lb_config,
        load_balancing_policy,
        ..Cluster::default()
    }
}

/// One locality of an EDS resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locality {
    /// Zone name (region `r`).
    pub zone: String,
    /// `load_balancing_weight`.
    pub weight: u32,
    /// Priority.
    pub priority: u32,
    /// Endpoints: address, weight, health status (0 unknown, 1 healthy, 2 unhealthy, 3 draining).
    pub endpoints: Vec<(String, u32, i32)>,
}

impl Locality {
    /// A locality with weight-1, healthy endpoints (zone named after the weight and priority).
    pub fn new(weight: u32, priority: u32, addresses: &[&str]) -> Self {
        Self {
            zone: format!(
                "zone-p{priority}-w{weight}-{}",
                addresses.first().copied().unwrap_or("")
            ),
            weight,
            priority,
            endpoints: addresses.iter().map(|a| ((*a).to_owned(), 1, 1)).collect(),
        }
    }
}

/// The `ClusterLoadAssignment` for `cluster`.
pub fn endpoints(cluster: &str, localities: &[Locality]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: localities
            .iter()
            .map(|l| LocalityLbEndpoints {
                locality: Some(PbLocality {
                    region: "r".into(),
                    zone: l.zone.clone(),
                    sub_zone: String::new(),
                }),
                load_balancing_weight: Some(UInt32Value { value: l.weight }),
                priority: l.priority,
                lb_endpoints: l
                    .endpoints
                    .iter()
                    .map(|(addr, w, health)| {
                        let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
                        LbEndpoint {
                            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                                address: Some(envoy_types::pb::envoy::config::core::v3::Address {
                                    address: Some(address::Address::SocketAddress(SocketAddress {
                                        address: host.trim_matches(['[', ']']).into(),
                                        port_specifier: Some(PortSpecifier::PortValue(
                                            port.parse().unwrap_or(0),
                                        )),
                                        ..SocketAddress::default()
                                    })),
                                }),
                                ..Endpoint::default()
                            })),
                            health_status: *health,
                            load_balancing_weight: Some(UInt32Value { value: *w }),
                            metadata: None::<Metadata>,
                        }
                    })
                    .collect(),
                ..LocalityLbEndpoints::default()
            })
            .collect(),
        ..ClusterLoadAssignment::default()
    }
}

impl IntoResource for Listener {
    fn into_resource(self) -> (ResourceType, String, Any) {
        (ResourceType::Listener, self.name.clone(), any(&self))
    }
}

impl IntoResource for RouteConfiguration {
    fn into_resource(self) -> (ResourceType, String, Any) {
        (ResourceType::RouteConfiguration, self.name.clone(), any(&self))
    }
}

impl IntoResource for Cluster {
    fn into_resource(self) -> (ResourceType, String, Any) {
        (ResourceType::Cluster, self.name.clone(), any(&self))
    }
}

impl IntoResource for ClusterLoadAssignment {
    fn into_resource(self) -> (ResourceType, String, Any) {
        (
            ResourceType::ClusterLoadAssignment,
            self.cluster_name.clone(),
            any(&self),
        )
    }
}
