//! CDS: an EDS cluster, its balancing policy, outlier detection and circuit breaker.
//!
//! As grpc-go does (gRFC A52), the policy is converted to a gRPC `loadBalancingConfig` and parsed
//! by the same registry a service config goes through ([`pickwise_tonic::service_config`]), so
//! one set of names and rules serves both: `lb_policy` + `*_lb_config` (the old fields) or
//! `load_balancing_policy` (typed extensions, first supported wins).

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy},
    Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies as lbp;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use pickwise_tonic::service_config::{self, ServiceConfig};
use prost::{Message, Name};
use serde_json::{json, Value};

use super::Invalid;

/// gRPC caps ring sizes at 4096 (grpc-go `ringHashSizeCap`, C-core's default channel arg), so
/// rings stay byte-identical with theirs.
const RING_SIZE_CAP: u64 = 4096;
/// gRPC's default `max_requests` (A32).
const DEFAULT_MAX_REQUESTS: u32 = 1024;

/// A validated cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// The EDS resource name: `eds_cluster_config.service_name`, or the cluster's name.
    pub eds_service_name: String,
    /// The policy as a gRPC `loadBalancingConfig` (what [`lb`](Self::lb) was parsed from).
    pub lb_json: Value,
    /// The parsed policy (and outlier detection).
    pub lb: ServiceConfig,
    /// Circuit breaker: requests in flight at most (default priority's `max_requests`, 1024).
    pub max_requests: u32,
}

pub(super) fn validate(c: &Cluster) -> Result<ClusterConfig, Invalid> {
    match &c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::Eds as i32 => {}
        Some(ClusterDiscoveryType::Type(t)) => {
            return Err(format!(
                "cluster type {} is not supported (only EDS)",
                DiscoveryType::try_from(*t).map_or("unknown", |t| t.as_str_name())
            ))
        }
        Some(ClusterDiscoveryType::ClusterType(t)) => {
            return Err(format!(
                "custom cluster type {:?} is not supported (only EDS)",
                t.name
            ))
        }
        None => return Err("no cluster type (only EDS is supported)".into()),
    }
    let eds_service_name = c
        .eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| c.name.clone());
    let mut list = match &c.load_balancing_policy {
        Some(p) if !p.policies.is_empty() => typed_policies(&p.policies, 0)?,
        _ => vec![legacy_policy(c)?],
    };
    if let Some(od) = &c.outlier_detection {
        list = vec![outlier(od, list)];
    }
    let lb_json = Value::Array(list);
    let mut lb = service_config::parse(&lb_json.to_string()).map_err(|e| e.to_string())?;
    // Envoy's consecutive_5xx is what pickwise's ejection counts; honour it when set.
    if let (Some(o), Some(od)) = (&mut lb.outlier, &c.outlier_detection) {
        if let Some(n) = od.consecutive_5xx.map(|v| v.value) {
            if od.enforcing_consecutive_5xx.map_or(100, |e| e.value) > 0 {
                o.consecutive_failures = n;
            }
        }
    }
    let max_requests = c
        .circuit_breakers
        .as_ref()
        .and_then(|cb| cb.thresholds.iter().find(|t| t.priority == 0))
        .and_then(|t| t.max_requests.map(|v| v.value))
        .unwrap_or(DEFAULT_MAX_REQUESTS);
    Ok(ClusterConfig {
        eds_service_name,
        lb_json,
        lb,
        max_requests,
    })
}

fn ring_hash_json(min: Option<u64>, max: Option<u64>, hash_function_ok: bool) -> Result<Value, Invalid> {
    if !hash_function_ok {
        return Err("ring hash supports only the XX_HASH hash function".into());
    }
    let min = min.unwrap_or(1024);
    let max = max.unwrap_or(8 * 1024 * 1024);
    if min == 0 || min > max || max > 8 * 1024 * 1024 {
        return Err(format!(
            "ring sizes must satisfy 1 <= min <= max <= 8388608, got {min} and {max}"
        ));
    }
    Ok(json!({"ring_hash_experimental": {
        "minRingSize": min.min(RING_SIZE_CAP), "maxRingSize": max.min(RING_SIZE_CAP)}}))
}

/// `lb_policy` and its `lb_config`.
fn legacy_policy(c: &Cluster) -> Result<Value, Invalid> {
    let policy = LbPolicy::try_from(c.lb_policy).map_err(|_| format!("unknown lb_policy {}", c.lb_policy))?;
    Ok(match policy {
        LbPolicy::RoundRobin => json!({"round_robin": {}}),
        LbPolicy::LeastRequest => {
            let choices = match &c.lb_config {
                Some(LbConfig::LeastRequestLbConfig(l)) => l.choice_count.map_or(2, |v| v.value),
                _ => 2,
            };
            json!({"least_request_experimental": {"choiceCount": choices}})
        }
        LbPolicy::RingHash => match &c.lb_config {
            Some(LbConfig::RingHashLbConfig(r)) => ring_hash_json(
                r.minimum_ring_size.map(|v| v.value),
                r.maximum_ring_size.map(|v| v.value),
                r.hash_function == 0,
            )?,
            _ => ring_hash_json(None, None, true)?,
        },
        LbPolicy::Maglev => {
            let size = match &c.lb_config {
                Some(LbConfig::MaglevLbConfig(m)) => m.table_size.map_or(65_537, |v| v.value),
                _ => 65_537,
            };
            json!({"maglev": {"tableSize": size}})
        }
        other => return Err(format!("lb_policy {} is not supported", other.as_str_name())),
    })
}

/// `load_balancing_policy` (gRFC A52): each typed extension as a `loadBalancingConfig` entry;
/// unknown ones are skipped (the parse then picks the first supported).
fn typed_policies(
    policies: &[envoy_types::pb::envoy::config::cluster::v3::load_balancing_policy::Policy],
    depth: u32,
) -> Result<Vec<Value>, Invalid> {
    if depth > 16 {
        return Err("load_balancing_policy nested too deeply".into());
    }
    let mut out = Vec::new();
    for p in policies {
        let Some(any) = p
            .typed_extension_config
            .as_ref()
            .and_then(|t| t.typed_config.as_ref())
        else {
            continue;
        };
        if let Some(v) = typed_policy(any, depth)? {
            out.extend(v);
        }
    }
    if out.is_empty() {
        return Err("no supported policy in load_balancing_policy".into());
    }
    Ok(out)
}

fn typed_policy(any: &Any, depth: u32) -> Result<Option<Vec<Value>>, Invalid> {
    let bad = |e: prost::DecodeError| format!("cannot decode {}: {e}", any.type_url);
    let url = any.type_url.as_str();
    let v = if url == lbp::round_robin::v3::RoundRobin::type_url() {
        json!({"round_robin": {}})
    } else if url == lbp::least_request::v3::LeastRequest::type_url() {
        let l = lbp::least_request::v3::LeastRequest::decode(any.value.as_slice()).map_err(bad)?;
        json!({"least_request_experimental": {"choiceCount": l.choice_count.map_or(2, |v| v.value)}})
    } else if url == lbp::ring_hash::v3::RingHash::type_url() {
        let r = lbp::ring_hash::v3::RingHash::decode(any.value.as_slice()).map_err(bad)?;
        // DEFAULT_HASH (0) and XX_HASH (1) are xxHash.
        ring_hash_json(
            r.minimum_ring_size.map(|v| v.value),
            r.maximum_ring_size.map(|v| v.value),
            r.hash_function <= 1,
        )?
    } else if url == lbp::maglev::v3::Maglev::type_url() {
        let m = lbp::maglev::v3::Maglev::decode(any.value.as_slice()).map_err(bad)?;
        json!({"maglev": {"tableSize": m.table_size.map_or(65_537, |v| v.value)}})
    } else if url == lbp::pick_first::v3::PickFirst::type_url() {
        json!({"pick_first": {}})
    } else if url == lbp::wrr_locality::v3::WrrLocality::type_url() {
        // Locality weights are applied to endpoint weights (see `cluster` in the crate); the child
        // picks endpoints.
        let w = lbp::wrr_locality::v3::WrrLocality::decode(any.value.as_slice()).map_err(bad)?;
        let child = w
            .endpoint_picking_policy
            .ok_or("wrr_locality without endpoint_picking_policy")?;
        return typed_policies(&child.policies, depth + 1).map(Some);
    } else {
        return Ok(None);
    };
    Ok(Some(vec![v]))
}

fn duration_json(d: &Option<PbDuration>) -> Option<Value> {
    d.as_ref().map(|d| {
        let secs = d.seconds as f64 + f64::from(d.nanos) / 1e9;
        Value::String(format!("{secs}s"))
    })
}

/// gRFC A50: `outlier_detection` wraps the policy as `outlier_detection_experimental`.
fn outlier(od: &OutlierDetection, child: Vec<Value>) -> Value {
    let mut cfg = serde_json::Map::new();
    for (key, d) in [
        ("interval", &od.interval),
        ("baseEjectionTime", &od.base_ejection_time),
        ("maxEjectionTime", &od.max_ejection_time),
    ] {
        if let Some(v) = duration_json(d) {
            cfg.insert(key.into(), v);
        }
    }
    if let Some(p) = od.max_ejection_percent.map(|v| v.value) {
        cfg.insert("maxEjectionPercent".into(), json!(p.min(100)));
    }
    // A50: success-rate ejection is on unless enforcing_success_rate is 0; failure-percentage
    // ejection only when enforcing_failure_percentage is above 0. Envoy's consecutive_5xx turns
    // pickwise's ejection on too.
    if od.enforcing_success_rate.map_or(100, |v| v.value) > 0 {
        cfg.insert("successRateEjection".into(), json!({}));
    }
    if od.enforcing_failure_percentage.map_or(0, |v| v.value) > 0 || od.consecutive_5xx.is_some() {
        cfg.insert("failurePercentageEjection".into(), json!({}));
    }
    cfg.insert("childPolicy".into(), Value::Array(child));
    json!({ "outlier_detection_experimental": cfg })
}
