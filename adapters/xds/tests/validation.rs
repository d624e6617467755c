//! Resource validation against grpc-go's unmarshalling rules (what is ACKed, what is NACKed):
//! internal/xds/xdsclient/xdsresource/unmarshal_{eds,cds,lds}.go, the LB policy registry
//! (internal/xds/xdsclient/xdslbregistry/) and ring hash's `parseConfig`
//! (balancer/ringhash/config.go).

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{LbConfig, RingHashLbConfig},
    load_balancing_policy::Policy,
    Cluster, LoadBalancingPolicy, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::endpoint::v3::{cluster_load_assignment, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter::ConfigType, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies as lbp;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value, UInt64Value};
use pickwise_xds::control_plane::resources::{self, Locality, Policy as CpPolicy};
use pickwise_xds::resource::{self, Resource, ResourceType};
use prost::{Message, Name};
use serde_json::json;

fn decode<M: Message + Name>(t: ResourceType, m: &M) -> Result<Resource, String> {
    resource::decode(t, &resources::any(m))
        .map(|(_, r)| r)
        .map_err(|e| e.to_string())
}

fn eds(a: &ClusterLoadAssignment) -> Result<Resource, String> {
    decode(ResourceType::ClusterLoadAssignment, a)
}

fn cds(c: &Cluster) -> Result<Resource, String> {
    decode(ResourceType::Cluster, c)
}

fn lds(l: &Listener) -> Result<Resource, String> {
    decode(ResourceType::Listener, l)
}

fn lb_json(c: &Cluster) -> serde_json::Value {
    match cds(c) {
        Ok(Resource::Cluster(c)) => c.lb_json,
        other => panic!("cluster rejected: {other:?}"),
    }
}

// ===== EDS =====

/// grpc-go: "EDS response contains a locality without ID".
#[test]
fn locality_without_id_is_nacked() {
    let mut a = resources::endpoints("c", &[Locality::new(1, 0, &["127.0.0.1:1"])]);
    a.endpoints[0].locality = None;
    let e = eds(&a).unwrap_err();
    assert!(e.contains("locality without an ID"), "{e}");
}

/// grpc-go sums locality weights per priority: two priorities may each use the whole u32.
#[test]
fn locality_weights_are_summed_per_priority() {
    let big = 3_000_000_000;
    let a = resources::endpoints(
        "c",
        &[
            Locality::new(big, 0, &["127.0.0.1:1"]),
            Locality::new(big, 1, &["127.0.0.1:2"]),
        ],
    );
    assert!(eds(&a).is_ok(), "{:?}", eds(&a));
    let mut same = Locality::new(big, 0, &["127.0.0.1:2"]);
    same.zone = "other".into();
    let a = resources::endpoints("c", &[Locality::new(big, 0, &["127.0.0.1:1"]), same]);
    assert!(eds(&a).is_err());
}

/// grpc-go `parseDropPolicy`: a denominator other than HUNDRED, TEN_THOUSAND, MILLION NACKs.
#[test]
fn drop_policy_with_an_unknown_denominator_is_nacked() {
    let mut a = resources::endpoints("c", &[Locality::new(1, 0, &["127.0.0.1:1"])]);
    a.policy = Some(cluster_load_assignment::Policy {
        drop_overloads: vec![cluster_load_assignment::policy::DropOverload {
            category: "lb".into(),
            drop_percentage: Some(FractionalPercent {
                numerator: 1,
                denominator: 7,
            }),
        }],
        ..Default::default()
    });
    assert!(eds(&a).is_err());
}

// ===== CDS =====

fn typed(any: Any) -> Policy {
    Policy {
        typed_extension_config: Some(TypedExtensionConfig {
            name: "p".into(),
            typed_config: Some(any),
        }),
    }
}

fn with_policies(policies: Vec<Policy>) -> Cluster {
    Cluster {
        load_balancing_policy: Some(LoadBalancingPolicy { policies }),
        ..resources::cluster("c", CpPolicy::RoundRobin)
    }
}

fn ring_hash(hash_function: i32, min: Option<u64>) -> Any {
    resources::any(&lbp::ring_hash::v3::RingHash {
        hash_function,
        minimum_ring_size: min.map(|value| UInt64Value { value }),
        ..Default::default()
    })
}

/// grpc-go `ConvertToServiceConfig`: the first entry of a supported type decides; an error in a
/// later entry does not matter, an error in that first one NACKs.
#[test]
fn load_balancing_policy_takes_the_first_supported_entry_only() {
    let unknown = Any {
        type_url: "type.googleapis.com/example.Unknown".into(),
        value: vec![],
    };
    let rr = resources::any(&lbp::round_robin::v3::RoundRobin::default());
    // MURMUR_HASH_2 (2) is not supported by ring hash.
    let bad_ring = ring_hash(2, None);
    let c = with_policies(vec![
        typed(unknown.clone()),
        typed(rr.clone()),
        typed(bad_ring.clone()),
    ]);
    assert_eq!(lb_json(&c), json!([{"round_robin": {}}]));
    let c = with_policies(vec![typed(unknown), typed(bad_ring), typed(rr)]);
    assert!(cds(&c).is_err());
}

/// grpc-go's `convertWeightedRoundRobinProtoToServiceConfig`: CDS `client_side_weighted_round_robin`
/// (also as `wrr_locality`'s child) becomes `weighted_round_robin` with only the fields set;
/// an invalid duration NACKs.
#[test]
fn client_side_weighted_round_robin_becomes_weighted_round_robin() {
    use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration, FloatValue};
    let cswrr = lbp::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin {
        enable_oob_load_report: Some(BoolValue { value: true }),
        blackout_period: Some(PbDuration { seconds: 0, nanos: 0 }),
        weight_update_period: Some(PbDuration {
            seconds: 0,
            nanos: 500_000_000,
        }),
        error_utilization_penalty: Some(FloatValue { value: 0.5 }),
        ..Default::default()
    };
    let want = json!([{"weighted_round_robin": {
        "enableOobLoadReport": true, "blackoutPeriod": "0s", "weightUpdatePeriod": "0.5s",
        "errorUtilizationPenalty": 0.5}}]);
    assert_eq!(lb_json(&with_policies(vec![typed(resources::any(&cswrr))])), want);
    let wrr_locality = lbp::wrr_locality::v3::WrrLocality {
        endpoint_picking_policy: Some(LoadBalancingPolicy {
            policies: vec![typed(resources::any(&cswrr))],
        }),
    };
    assert_eq!(
        lb_json(&with_policies(vec![typed(resources::any(&wrr_locality))])),
        want
    );
    let defaults = lbp::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin::default();
    assert_eq!(
        lb_json(&with_policies(vec![typed(resources::any(&defaults))])),
        json!([{"weighted_round_robin": {}}])
    );
    let bad = lbp::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin {
        blackout_period: Some(PbDuration {
            seconds: -1,
            nanos: 0,
        }),
        ..Default::default()
    };
    assert!(cds(&with_policies(vec![typed(resources::any(&bad))])).is_err());
}

/// Ring hash `parseConfig`: a zero ring size means the default (1024 / 4096), not a NACK.
#[test]
fn ring_size_zero_means_the_default() {
    let c = with_policies(vec![typed(ring_hash(1, Some(0)))]);
    assert_eq!(
        lb_json(&c),
        json!([{"ring_hash_experimental": {"minRingSize": 1024, "maxRingSize": 4096}}])
    );
    let legacy = Cluster {
        lb_config: Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: 0 }),
            maximum_ring_size: Some(UInt64Value { value: 0 }),
            ..Default::default()
        })),
        ..resources::cluster("c", CpPolicy::RingHash { min: 1, max: 2 })
    };
    assert_eq!(
        lb_json(&legacy),
        json!([{"ring_hash_experimental": {"minRingSize": 1024, "maxRingSize": 4096}}])
    );
    // Above 8M still NACKs.
    assert!(cds(&with_policies(vec![typed(ring_hash(1, Some(9 << 20)))])).is_err());
}

/// grpc-go `outlierConfigFromCluster`: percentages above 100 and negative durations NACK.
#[test]
fn outlier_detection_out_of_range_is_nacked() {
    let od = |f: fn(&mut OutlierDetection)| {
        let mut o = OutlierDetection::default();
        f(&mut o);
        Cluster {
            outlier_detection: Some(o),
            ..resources::cluster("c", CpPolicy::RoundRobin)
        }
    };
    assert!(cds(&od(|o| o.max_ejection_percent = Some(UInt32Value { value: 150 }))).is_err());
    assert!(cds(&od(
        |o| o.enforcing_success_rate = Some(UInt32Value { value: 101 })
    ))
    .is_err());
    assert!(cds(&od(
        |o| o.failure_percentage_threshold = Some(UInt32Value { value: 101 })
    ))
    .is_err());
    assert!(cds(&od(
        |o| o.enforcing_failure_percentage = Some(UInt32Value { value: 101 })
    ))
    .is_err());
    assert!(cds(&od(|o| {
        o.interval = Some(PbDuration {
            seconds: -1,
            nanos: 0,
        })
    }))
    .is_err());
    assert!(cds(&od(|o| o.max_ejection_percent = Some(UInt32Value { value: 100 }))).is_ok());
}

/// Envoy: a Maglev table size is a prime of at most 5000011; pickwise used to ACK a non-prime
/// and fall back to another policy at runtime.
#[test]
fn maglev_table_size_must_be_prime() {
    assert!(cds(&resources::cluster("c", CpPolicy::Maglev(65_536))).is_err());
    assert!(cds(&resources::cluster("c", CpPolicy::Maglev(5_000_023))).is_err());
    assert!(cds(&resources::cluster("c", CpPolicy::Maglev(65_537))).is_ok());
    let typed_maglev = |size| {
        with_policies(vec![typed(resources::any(&lbp::maglev::v3::Maglev {
            table_size: Some(UInt64Value { value: size }),
            ..Default::default()
        }))])
    };
    assert!(cds(&typed_maglev(1000)).is_err());
    assert!(cds(&typed_maglev(1009)).is_ok());
}

/// grpc-go NACKs a least-request choice count below 2.
#[test]
fn least_request_choice_count_below_two_is_nacked() {
    let c = with_policies(vec![typed(resources::any(
        &lbp::least_request::v3::LeastRequest {
            choice_count: Some(UInt32Value { value: 1 }),
            ..Default::default()
        },
    ))]);
    assert!(cds(&c).is_err());
}

// ===== LDS: HTTP filters (gRFC A39) =====

fn filter(name: &str, type_url: &str, optional: bool) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(ConfigType::TypedConfig(Any {
            type_url: type_url.into(),
            value: vec![],
        })),
        is_optional: optional,
        ..HttpFilter::default()
    }
}

const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const UNKNOWN: &str = "type.googleapis.com/example.filters.Unknown";

fn listener_with(filters: Vec<HttpFilter>) -> Listener {
    let mut l = resources::listener("greeter", "routes");
    let api = l.api_listener.as_mut().unwrap().api_listener.as_mut().unwrap();
    let mut hcm = HttpConnectionManager::decode(api.value.as_slice()).unwrap();
    hcm.http_filters = filters;
    *api = resources::any(&hcm);
    l
}

#[test]
fn http_filters_are_validated_like_grpc_go() {
    let ok = |f: Vec<HttpFilter>| lds(&listener_with(f)).map(|_| ());
    assert!(ok(vec![filter("router", ROUTER, false)]).is_ok());
    assert!(ok(vec![
        filter("fault", FAULT, false),
        filter("router", ROUTER, false)
    ])
    .is_ok());
    // An unknown optional filter is skipped; a required one NACKs.
    assert!(ok(vec![filter("x", UNKNOWN, true), filter("router", ROUTER, false)]).is_ok());
    assert!(ok(vec![filter("x", UNKNOWN, false), filter("router", ROUTER, false)]).is_err());
    // RBAC is a server-side filter.
    assert!(ok(vec![filter("rbac", RBAC, false), filter("router", ROUTER, false)]).is_err());
    assert!(ok(vec![filter("rbac", RBAC, true), filter("router", ROUTER, false)]).is_ok());
    // The router must be last, and present.
    assert!(ok(vec![
        filter("router", ROUTER, false),
        filter("fault", FAULT, false)
    ])
    .is_err());
    assert!(ok(vec![filter("fault", FAULT, false)]).is_err());
    assert!(ok(vec![]).is_err());
    // Names are required and unique.
    assert!(ok(vec![filter("", ROUTER, false)]).is_err());
    assert!(ok(vec![filter("a", FAULT, false), filter("a", ROUTER, false)]).is_err());
}

/// grpc-go `processClientSideListener`: RDS must come from ADS (or self).
#[test]
fn rds_config_source_must_be_ads() {
    let mut l = resources::listener("greeter", "routes");
    let api = l.api_listener.as_mut().unwrap().api_listener.as_mut().unwrap();
    let mut hcm = HttpConnectionManager::decode(api.value.as_slice()).unwrap();
    if let Some(RouteSpecifier::Rds(rds)) = &mut hcm.route_specifier {
        rds.config_source = None;
    }
    *api = resources::any(&hcm);
    assert!(lds(&l).is_err());
}

// ===== RDS: retry policy (gRFC A44) and filter overrides (gRFC A39) =====

fn route_config_with(
    edit: impl FnOnce(&mut envoy_types::pb::envoy::config::route::v3::RouteConfiguration),
) -> Result<Resource, String> {
    let mut rc = resources::route_config("rc", "greeter", "backends");
    edit(&mut rc);
    decode(ResourceType::RouteConfiguration, &rc)
}

fn route_action(
    rc: &mut envoy_types::pb::envoy::config::route::v3::RouteConfiguration,
) -> &mut envoy_types::pb::envoy::config::route::v3::RouteAction {
    match &mut rc.virtual_hosts[0].routes[0].action {
        Some(envoy_types::pb::envoy::config::route::v3::route::Action::Route(ra)) => ra,
        _ => unreachable!("route_config builds a route action"),
    }
}

/// grpc-go `generateRetryConfig`: num_retries below 1 and a non-positive backoff interval NACK,
/// on routes and virtual hosts.
#[test]
fn invalid_retry_policies_are_nacked() {
    use envoy_types::pb::envoy::config::route::v3::{retry_policy::RetryBackOff, RetryPolicy};
    let policy = |n: Option<u32>, base_ms: Option<i32>| RetryPolicy {
        retry_on: "unavailable".into(),
        num_retries: n.map(|value| UInt32Value { value }),
        retry_back_off: base_ms.map(|ms| RetryBackOff {
            base_interval: Some(PbDuration {
                seconds: 0,
                nanos: ms * 1_000_000,
            }),
            max_interval: None,
        }),
        ..RetryPolicy::default()
    };
    assert!(route_config_with(|rc| route_action(rc).retry_policy = Some(policy(Some(2), Some(25)))).is_ok());
    assert!(route_config_with(|rc| route_action(rc).retry_policy = Some(policy(None, None))).is_ok());
    assert!(route_config_with(|rc| route_action(rc).retry_policy = Some(policy(Some(0), None))).is_err());
    assert!(route_config_with(|rc| route_action(rc).retry_policy = Some(policy(Some(1), Some(0)))).is_err());
    assert!(route_config_with(|rc| rc.virtual_hosts[0].retry_policy = Some(policy(Some(0), None))).is_err());
}

/// grpc-go `processHTTPFilterOverrides`: an override of an unknown filter type NACKs unless
/// wrapped in a `FilterConfig` with `is_optional`; the router takes no override.
#[test]
fn filter_overrides_are_validated() {
    use envoy_types::pb::envoy::config::route::v3::FilterConfig;
    let raw = |url: &str| Any {
        type_url: url.into(),
        value: vec![],
    };
    let optional = |url: &str| {
        resources::any(&FilterConfig {
            config: Some(raw(url)),
            is_optional: true,
            disabled: false,
        })
    };
    let with_override = |any: Any| {
        route_config_with(move |rc| {
            rc.virtual_hosts[0].routes[0]
                .typed_per_filter_config
                .insert("f".into(), any);
        })
    };
    assert!(with_override(raw(FAULT)).is_ok());
    assert!(with_override(raw(UNKNOWN)).is_err());
    assert!(with_override(optional(UNKNOWN)).is_ok());
    assert!(with_override(raw(ROUTER)).is_err());
    let on_vhost = route_config_with(|rc| {
        rc.virtual_hosts[0]
            .typed_per_filter_config
            .insert("f".into(), raw(UNKNOWN));
    });
    assert!(on_vhost.is_err());
}

// ===== Names, config sources, cluster specifiers =====

/// grpc-go: "empty resource name in ... resource" for every type.
#[test]
fn empty_resource_names_are_nacked() {
    assert!(lds(&resources::listener("", "routes")).is_err());
    assert!(decode(
        ResourceType::RouteConfiguration,
        &resources::route_config("", "greeter", "c")
    )
    .is_err());
    assert!(cds(&resources::cluster("", CpPolicy::RoundRobin)).is_err());
    assert!(eds(&resources::endpoints(
        "",
        &[Locality::new(1, 0, &["127.0.0.1:1"])]
    ))
    .is_err());
}

/// grpc-go `validateClusterAndConstructClusterUpdate`: an EDS cluster's `eds_config` is ADS or
/// self.
#[test]
fn eds_config_source_must_be_ads() {
    let mut c = resources::cluster("c", CpPolicy::RoundRobin);
    c.eds_cluster_config.as_mut().unwrap().eds_config = None;
    assert!(cds(&c).is_err());
    c.eds_cluster_config = None;
    assert!(cds(&c).is_err());
}

/// grpc-go `routesProtoToSlice`: a route action without a cluster specifier is skipped, not
/// NACKed; a cluster specifier plugin the configuration does not define NACKs, an optional one
/// skips the route.
#[test]
fn cluster_specifiers_follow_grpc_go() {
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::config::route::v3::{route_action::ClusterSpecifier, ClusterSpecifierPlugin};
    let routes = |r: Result<Resource, String>| match r {
        Ok(Resource::RouteConfiguration(rc)) => Ok(rc.virtual_hosts[0].routes.len()),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    };
    assert_eq!(
        routes(route_config_with(|rc| route_action(rc).cluster_specifier = None)),
        Ok(0)
    );
    let plugin = |rc: &mut envoy_types::pb::envoy::config::route::v3::RouteConfiguration| {
        route_action(rc).cluster_specifier = Some(ClusterSpecifier::ClusterSpecifierPlugin("rls".into()));
    };
    assert!(route_config_with(plugin).is_err());
    let defined = |optional: bool| {
        route_config_with(move |rc| {
            plugin(rc);
            rc.cluster_specifier_plugins = vec![ClusterSpecifierPlugin {
                extension: Some(TypedExtensionConfig {
                    name: "rls".into(),
                    typed_config: Some(Any {
                        type_url: "type.googleapis.com/grpc.lookup.v1.RouteLookupClusterSpecifier".into(),
                        value: vec![],
                    }),
                }),
                is_optional: optional,
            }];
        })
    };
    assert_eq!(routes(defined(true)), Ok(0));
    assert!(defined(false).is_err());
}
