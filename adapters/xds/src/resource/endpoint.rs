//! EDS: a cluster's endpoints by locality and priority, with weights, health and drop policy
//! (gRFC A27; grpc-go `unmarshal_eds.go`'s rules).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier, Address};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint::HostIdentifier, ClusterLoadAssignment};

use super::Invalid;

/// A validated `ClusterLoadAssignment`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointsConfig {
    /// Localities with a non-zero weight (zero-weight ones are ignored, as in gRPC).
    pub localities: Vec<LocalityConfig>,
    /// `drop_overloads`: category and drop rate in parts per million.
    pub drops: Vec<(String, u32)>,
}

/// One locality's endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalityConfig {
    /// `region/zone/sub_zone`.
    pub name: String,
    /// `load_balancing_weight`.
    pub weight: u32,
    /// Priority: 0 is the highest; priorities are contiguous from 0.
    pub priority: u32,
    /// Endpoints whose `health_status` is `UNKNOWN` or `HEALTHY` (the only ones gRPC sends to).
    pub endpoints: Vec<EndpointConfig>,
}

/// One endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// `host:port` (`[v6]:port`).
    pub address: String,
    /// `load_balancing_weight`, 1 if unset.
    pub weight: u32,
    /// gRFC A76: the `hash_key` string of the `envoy.lb` filter metadata.
    pub hash_key: Option<String>,
}

pub(super) fn validate(a: &ClusterLoadAssignment) -> Result<EndpointsConfig, Invalid> {
    let mut out = EndpointsConfig::default();
    if let Some(policy) = &a.policy {
        for d in &policy.drop_overloads {
            // grpc-go `parseDropPolicy`: HUNDRED, TEN_THOUSAND and MILLION only.
            let denominator = d.drop_percentage.as_ref().map_or(0, |p| p.denominator);
            if !(0..=2).contains(&denominator) {
                return Err(format!(
                    "drop_overloads category {:?}: unsupported denominator {denominator}",
                    d.category
                ));
            }
            let rate = d.drop_percentage.as_ref().map_or(0, super::per_million);
            out.drops.push((d.category.clone(), rate));
        }
    }
    let mut priorities = BTreeSet::new();
    let mut seen_addresses = HashSet::new();
    let mut seen_localities = HashSet::new();
    // grpc-go `parseEDSRespProto`: locality weights are summed per priority.
    let mut priority_weights: BTreeMap<u32, u64> = BTreeMap::new();
    for l in &a.endpoints {
        // grpc-go NACKs a locality without an ID before looking at its weight.
        let Some(id) = l.locality.as_ref() else {
            return Err(format!("a locality without an ID (priority {})", l.priority));
        };
        let weight = l.load_balancing_weight.map_or(0, |w| w.value);
        if weight == 0 {
            continue; // gRPC ignores localities without a weight
        }
        let sum = priority_weights.entry(l.priority).or_default();
        *sum += u64::from(weight);
        if *sum > u64::from(u32::MAX) {
            return Err(format!(
                "locality weights of priority {} sum above 2^32-1",
                l.priority
            ));
        }
        let name = format!("{}/{}/{}", id.region, id.zone, id.sub_zone);
        if !seen_localities.insert((l.priority, name.clone())) {
            return Err(format!(
                "locality {name} appears twice in priority {}",
                l.priority
            ));
        }
        priorities.insert(l.priority);
        let mut endpoints = Vec::new();
        let mut sum: u64 = 0;
        for e in &l.lb_endpoints {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                return Err(format!("locality {name}: an endpoint without an address"));
            };
            let address = socket_address(ep.address.as_ref()).map_err(|e| format!("locality {name}: {e}"))?;
            if !seen_addresses.insert(address.clone()) {
                return Err(format!("duplicate endpoint address {address}"));
            }
            let w = e.load_balancing_weight.map_or(1, |w| w.value);
            if w == 0 {
                return Err(format!(
                    "endpoint {address}: load_balancing_weight must be at least 1"
                ));
            }
            sum += u64::from(w);
            // UNKNOWN (0) and HEALTHY (1) only: gRPC never sends to UNHEALTHY, DRAINING, TIMEOUT
            // or DEGRADED endpoints.
            if e.health_status > 1 {
                continue;
            }
            let hash_key = e
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get("envoy.lb"))
                .and_then(|s| s.fields.get("hash_key"))
                .and_then(|v| match &v.kind {
                    Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) if !s.is_empty() => {
                        Some(s.clone())
                    }
                    _ => None,
                });
            endpoints.push(EndpointConfig {
                address,
                weight: w,
                hash_key,
            });
        }
        if sum > u64::from(u32::MAX) {
            return Err(format!("locality {name}: endpoint weights sum above 2^32-1"));
        }
        out.localities.push(LocalityConfig {
            name,
            weight,
            priority: l.priority,
            endpoints,
        });
    }
    // Priorities must be contiguous from 0 (grpc-go: "priorities are not contiguous").
    if let Some(&max) = priorities.last() {
        if max as usize + 1 != priorities.len() {
            return Err(format!("priorities {priorities:?} are not contiguous from 0"));
        }
    }
    Ok(out)
}

fn socket_address(a: Option<&Address>) -> Result<String, Invalid> {
    let Some(address::Address::SocketAddress(s)) = a.and_then(|a| a.address.as_ref()) else {
        return Err("an endpoint address must be a socket address".into());
    };
    let Some(PortSpecifier::PortValue(port)) = s.port_specifier else {
        return Err(format!("endpoint {}: named ports are not supported", s.address));
    };
    if port == 0 || port > 65_535 {
        return Err(format!("endpoint {}: port {port} out of range", s.address));
    }
    let host = s.address.as_str();
    if host.is_empty() {
        return Err("an endpoint without a host".into());
    }
    Ok(match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        Ok(ip) => format!("{ip}:{port}"),
        Err(_) => format!("{host}:{port}"),
    })
}
