//! CDS: an EDS cluster, its balancing policy, outlier detection and circuit breaker.
//!
//! As grpc-go does (gRFC A52), the policy is converted to a gRPC `loadBalancingConfig` and parsed
//! by the same registry a service config goes through ([`pickwise_tonic::service_config`]), so
//! one set of names and rules serves both: `lb_policy` + `*_lb_config` (the old fields) or
//! `load_balancing_policy` (typed extensions, first supported wins).
//!
//! Validation follows grpc-go's `validateClusterAndConstructClusterUpdate` and
//! `outlierConfigFromCluster` (internal/xds/xdsclient/xdsresource/unmarshal_cds.go), its LB
//! policy registry (internal/xds/xdsclient/xdslbregistry/) and ring hash's `parseConfig`
//! (balancer/ringhash/config.go). Maglev, which gRPC does not have, follows Envoy: the table
//! size is a prime of at most 5000011.

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
    /// TLS to the endpoints (gRFC A29: `transport_socket` with an `UpstreamTlsContext`);
    /// `None`: plaintext.
    pub security: Option<super::security::SecurityConfig>,
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
    // grpc-go: "CDS's EDS config source is not ADS or Self".
    if !super::listener::ads_or_self(c.eds_cluster_config.as_ref().and_then(|e| e.eds_config.as_ref())) {
        return Err("the EDS config source is not ADS or self".into());
    }
    let eds_service_name = c
        .eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| c.name.clone());
    // grpc-go validates lb_policy first (an unsupported one NACKs even when
    // load_balancing_policy is set), then load_balancing_policy, when present, replaces it.
    let mut policy = legacy_policy(c)?;
    // grpc-go reads the security config after lb_policy and before outlier detection.
    let security = super::security::from_cluster(c)?;
    let od = match &c.outlier_detection {
        Some(od) => Some(outlier(od)?),
        None => None,
    };
    if let Some(p) = &c.load_balancing_policy {
        policy = typed_policies(&p.policies, 0)?;
    }
    let mut list = vec![policy];
    if let Some(mut od) = od {
        od.insert("childPolicy".into(), Value::Array(list));
        list = vec![json!({ "outlier_detection_experimental": od })];
    }
    let lb_json = Value::Array(list);
    let lb = service_config::parse(&lb_json.to_string()).map_err(|e| e.to_string())?;
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
        security,
    })
}

/// Ring sizes as grpc-go's converter (unset: 1024 and 8M) and ring hash `parseConfig` take
/// them: above 8M NACKs, zero means the default (1024 and 4096), min above max NACKs, then both
/// are capped at 4096.
fn ring_hash_json(min: Option<u64>, max: Option<u64>, hash_function_ok: bool) -> Result<Value, Invalid> {
    const UPPER_BOUND: u64 = 8 * 1024 * 1024;
    if !hash_function_ok {
        return Err("ring hash supports only the XX_HASH hash function".into());
    }
    let mut min = min.unwrap_or(1024);
    let mut max = max.unwrap_or(UPPER_BOUND);
    if min > UPPER_BOUND || max > UPPER_BOUND {
        return Err(format!(
            "ring sizes must be at most {UPPER_BOUND}, got {min} and {max}"
        ));
    }
    if min == 0 {
        min = 1024;
    }
    if max == 0 {
        max = 4096;
    }
    if min > max {
        return Err(format!("minimum ring size {min} is above the maximum {max}"));
    }
    Ok(json!({"ring_hash_experimental": {
        "minRingSize": min.min(RING_SIZE_CAP), "maxRingSize": max.min(RING_SIZE_CAP)}}))
}

/// Envoy's Maglev table size: a prime of at most 5000011 (65537 when unset).
fn maglev_json(size: Option<u64>) -> Result<Value, Invalid> {
    let size = size.unwrap_or(65_537);
    if size > pickwise_tonic::pickwise::maglev::MAX_TABLE_SIZE || !is_prime(size) {
        return Err(format!(
            "Maglev table_size {size} must be a prime of at most {}",
            pickwise_tonic::pickwise::maglev::MAX_TABLE_SIZE
        ));
    }
    Ok(json!({"maglev": {"tableSize": size}}))
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
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
            if choices < 2 {
                return Err(format!(
                    "least request choice_count must be at least 2, got {choices}"
                ));
            }
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
        LbPolicy::Maglev => maglev_json(match &c.lb_config {
            Some(LbConfig::MaglevLbConfig(m)) => m.table_size.map(|v| v.value),
            _ => None,
        })?,
        other => return Err(format!("lb_policy {} is not supported", other.as_str_name())),
    })
}

/// `load_balancing_policy` (gRFC A52), as grpc-go's `ConvertToServiceConfig`: the first entry
/// of a supported type decides (its errors NACK, later entries are not looked at); unsupported
/// ones before it are skipped. `pick_first`, which pickwise does not have, counts as
/// unsupported.
fn typed_policies(
    policies: &[envoy_types::pb::envoy::config::cluster::v3::load_balancing_policy::Policy],
    depth: u32,
) -> Result<Value, Invalid> {
    if depth > 15 {
        return Err("load_balancing_policy nested deeper than 16 levels".into());
    }
    for p in policies {
        let Some(any) = p
            .typed_extension_config
            .as_ref()
            .and_then(|t| t.typed_config.as_ref())
        else {
            continue;
        };
        if let Some(v) = typed_policy(any, depth)? {
            return Ok(v);
        }
    }
    Err("no supported policy in load_balancing_policy".into())
}

fn typed_policy(any: &Any, depth: u32) -> Result<Option<Value>, Invalid> {
    let bad = |e: prost::DecodeError| format!("cannot decode {}: {e}", any.type_url);
    let url = any.type_url.as_str();
    let v = if url == lbp::round_robin::v3::RoundRobin::type_url() {
        json!({"round_robin": {}})
    } else if url == lbp::least_request::v3::LeastRequest::type_url() {
        let l = lbp::least_request::v3::LeastRequest::decode(any.value.as_slice()).map_err(bad)?;
        let choices = l.choice_count.map_or(2, |v| v.value);
        if choices < 2 {
            return Err(format!(
                "least request choice_count must be at least 2, got {choices}"
            ));
        }
        json!({"least_request_experimental": {"choiceCount": choices}})
    } else if url == lbp::ring_hash::v3::RingHash::type_url() {
        let r = lbp::ring_hash::v3::RingHash::decode(any.value.as_slice()).map_err(bad)?;
        // DEFAULT_HASH (0, the proto default) and XX_HASH (1): C-core and Envoy take DEFAULT_HASH
        // as xxHash; grpc-go's converter accepts XX_HASH only. pickwise follows C-core, so a
        // control plane that leaves the field unset is served (the differential suite's
        // reference); MURMUR_HASH_2 NACKs in all three.
        ring_hash_json(
            r.minimum_ring_size.map(|v| v.value),
            r.maximum_ring_size.map(|v| v.value),
            matches!(r.hash_function, 0 | 1),
        )?
    } else if url == lbp::maglev::v3::Maglev::type_url() {
        let m = lbp::maglev::v3::Maglev::decode(any.value.as_slice()).map_err(bad)?;
        maglev_json(m.table_size.map(|v| v.value))?
    } else if url == lbp::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin::type_url() {
        // gRFC A58 with C-core's semantics: fields set in the proto are passed on (the policy's
        // defaults fill the rest), zeros included — a `blackout_period` of 0 s turns the blackout
        // off and an `error_utilization_penalty` of 0 the penalty, as C-core reads them; grpc-go's
        // converter drops zero values (so they mean the defaults, 10 s and 1.0). A negative
        // duration NACKs (grpc-go passes it on).
        let w = lbp::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin::decode(
            any.value.as_slice(),
        )
        .map_err(bad)?;
        let mut cfg = serde_json::Map::new();
        if let Some(b) = w.enable_oob_load_report {
            cfg.insert("enableOobLoadReport".into(), json!(b.value));
        }
        for (key, json_key, d) in [
            (
                "oob_reporting_period",
                "oobReportingPeriod",
                &w.oob_reporting_period,
            ),
            ("blackout_period", "blackoutPeriod", &w.blackout_period),
            (
                "weight_expiration_period",
                "weightExpirationPeriod",
                &w.weight_expiration_period,
            ),
            (
                "weight_update_period",
                "weightUpdatePeriod",
                &w.weight_update_period,
            ),
        ] {
            if let Some(d) = d {
                let v = duration_json(key, d)
                    .map_err(|e| e.replace("outlier_detection.", "client_side_weighted_round_robin."))?;
                cfg.insert(json_key.into(), v);
            }
        }
        if let Some(p) = w.error_utilization_penalty {
            cfg.insert("errorUtilizationPenalty".into(), json!(p.value));
        }
        json!({"weighted_round_robin": cfg})
    } else if url == lbp::wrr_locality::v3::WrrLocality::type_url() {
        // Locality weights are applied to endpoint weights (see `cluster` in the crate); the child
        // picks endpoints.
        let w = lbp::wrr_locality::v3::WrrLocality::decode(any.value.as_slice()).map_err(bad)?;
        let child = w.endpoint_picking_policy.unwrap_or_default();
        return typed_policies(&child.policies, depth + 1)
            .map(Some)
            .map_err(|e| format!("wrr_locality endpoint_picking_policy: {e}"));
    } else {
        return Ok(None);
    };
    Ok(Some(v))
}

/// A duration as JSON; grpc-go NACKs an invalid (`CheckValid`) or negative one.
fn duration_json(key: &str, d: &PbDuration) -> Result<Value, Invalid> {
    // protobuf's Duration: |seconds| <= 315576000000, |nanos| < 1e9, both of the same sign.
    let valid = d.seconds.abs() <= 315_576_000_000
        && d.nanos.abs() < 1_000_000_000
        && !(d.seconds > 0 && d.nanos < 0)
        && !(d.seconds < 0 && d.nanos > 0);
    if !valid || d.seconds < 0 || d.nanos < 0 {
        return Err(format!(
            "outlier_detection.{key} must be a valid duration >= 0, got {}s {}ns",
            d.seconds, d.nanos
        ));
    }
    let secs = d.seconds as f64 + f64::from(d.nanos) / 1e9;
    Ok(Value::String(format!("{secs}s")))
}

/// gRFC A50: `outlier_detection` wraps the policy as `outlier_detection_experimental` (the
/// caller adds `childPolicy`). Percentages above 100 NACK, as in grpc-go.
fn outlier(od: &OutlierDetection) -> Result<serde_json::Map<String, Value>, Invalid> {
    let mut cfg = serde_json::Map::new();
    for (key, json_key, d) in [
        ("interval", "interval", &od.interval),
        ("base_ejection_time", "baseEjectionTime", &od.base_ejection_time),
        ("max_ejection_time", "maxEjectionTime", &od.max_ejection_time),
    ] {
        if let Some(d) = d {
            cfg.insert(json_key.into(), duration_json(key, d)?);
        }
    }
    for (key, v) in [
        ("max_ejection_percent", od.max_ejection_percent),
        ("enforcing_success_rate", od.enforcing_success_rate),
        ("failure_percentage_threshold", od.failure_percentage_threshold),
        ("enforcing_failure_percentage", od.enforcing_failure_percentage),
    ] {
        if let Some(v) = v.map(|v| v.value).filter(|v| *v > 100) {
            return Err(format!("outlier_detection.{key} = {v}; must be <= 100"));
        }
    }
    if let Some(p) = od.max_ejection_percent.map(|v| v.value) {
        cfg.insert("maxEjectionPercent".into(), json!(p));
    }
    // A50 (grpc-go `outlierConfigFromCluster`): success-rate ejection is on unless
    // enforcing_success_rate is 0; failure-percentage ejection only when
    // enforcing_failure_percentage is above 0; each with its fields or A50's defaults. gRPC
    // implements no consecutive_* ejection: those fields are ignored (C-core agrees: differential
    // scenario `no_consecutive_ejection_in_grpc`).
    let value = |v: Option<envoy_types::pb::google::protobuf::UInt32Value>| v.map(|v| v.value);
    let put = |m: &mut serde_json::Map<String, Value>, key: &str, v: Option<u32>| {
        if let Some(v) = v {
            m.insert(key.into(), json!(v));
        }
    };
    if let Some(enforce) = value(od.enforcing_success_rate).or(Some(100)).filter(|v| *v > 0) {
        let mut sr = serde_json::Map::new();
        put(&mut sr, "stdevFactor", value(od.success_rate_stdev_factor));
        put(&mut sr, "enforcementPercentage", Some(enforce));
        put(&mut sr, "minimumHosts", value(od.success_rate_minimum_hosts));
        put(&mut sr, "requestVolume", value(od.success_rate_request_volume));
        cfg.insert("successRateEjection".into(), Value::Object(sr));
    }
    if let Some(enforce) = value(od.enforcing_failure_percentage).filter(|v| *v > 0) {
        let mut fp = serde_json::Map::new();
        put(&mut fp, "threshold", value(od.failure_percentage_threshold));
        put(&mut fp, "enforcementPercentage", Some(enforce));
        put(
            &mut fp,
            "minimumHosts",
            value(od.failure_percentage_minimum_hosts),
        );
        put(
            &mut fp,
            "requestVolume",
            value(od.failure_percentage_request_volume),
        );
        cfg.insert("failurePercentageEjection".into(), Value::Object(fp));
    }
    Ok(cfg)
}
