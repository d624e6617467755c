//! gRPC service config (`loadBalancingConfig`, the JSON every gRPC client accepts) to pickwise
//! settings, with gRPC's policy names: `round_robin`, `weighted_round_robin` (gRFC A58),
//! `least_request_experimental`, `ring_hash_experimental` (gRFC A42/A61/A76),
//! `outlier_detection_experimental` (gRFC A50) and `random_subsetting` (gRFC A68), plus
//! pickwise's own `pickwise_peak_ewma`, `pickwise_go_zero`, `pickwise_prequal` (Prequal, NSDI '24:
//! probing-based selection; see [`Builder::prequal`](crate::Builder::prequal)) and `maglev`. As in gRPC, the first
//! policy of the list that is supported wins; unknown ones (`pick_first`...) are skipped.
//!
//! From `methodConfig`, pickwise applies `waitForReady` per method (looked up as grpc-go does:
//! the exact `/service/method`, then `/service/`, then the default entry); other method
//! settings (`timeout`, `retryPolicy`, message sizes) are parsed over, not applied.
//!
//! `outlier_detection_experimental` runs A50's success-rate and failure-percentage algorithms
//! once per interval in the core balancer, as A50 specifies them (no consecutive-failure
//! ejection, as in gRPC; with neither algorithm it is a no-op).
//!
//! Deviations: `least_request_experimental`'s `choiceCount` above 2 is accepted and runs with 2
//! (pickwise has no such mechanism yet); an ejection ends exactly when its time is up, not at
//! the next interval tick.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use http::HeaderName;
use pickwise::prequal::{PrequalConfig, MAX_POOL_SIZE, MAX_REUSE};
use pickwise::subset::Subsetting;
use pickwise::wrr::WrrConfig;
use pickwise::{HashPolicy, LbPolicy, NoKey, OutlierConfig, Policy, RingConfig, MAX_RING_SIZE};
use serde_json::{Map, Value};

/// What a service config asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    /// The balancing policy.
    pub policy: LbPolicy,
    /// `ring_hash_experimental`'s `requestHashHeader` (gRFC A76).
    pub hash_header: Option<HeaderName>,
    /// Outlier detection (`outlier_detection_experimental`); `None` leaves the builder's.
    pub outlier: Option<OutlierConfig>,
    /// `random_subsetting`'s subset size (gRFC A68).
    pub subset: Option<Subsetting>,
    /// Whether the config had a `loadBalancingConfig`; without one, `policy` is the default and
    /// [`Builder::service_config`](crate::Builder::service_config) keeps the builder's policy.
    pub load_balancing: bool,
    /// `methodConfig`: per-method settings (pickwise reads `name` and `waitForReady`).
    pub methods: Vec<MethodConfig>,
}

/// One `methodConfig` entry of a service config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MethodConfig {
    /// The methods it applies to.
    pub names: Vec<MethodName>,
    /// `waitForReady` (grpc-go's `WaitForReady` for these methods); `None` when unset. A
    /// [`WaitForReady`](crate::WaitForReady) request extension overrides it.
    pub wait_for_ready: Option<bool>,
}

/// A `methodConfig` name (`{"service": ..., "method": ...}`): an empty `method` names every
/// method of `service`; an empty `service` (and method) is the default for every method.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MethodName {
    /// The fully qualified service, e.g. `grpc.health.v1.Health`.
    pub service: String,
    /// The method, e.g. `Check`.
    pub method: String,
}

impl MethodName {
    /// grpc-go's key for the name (`jsonName.generatePath`): `/service/method`, `/service/`,
    /// or `""` for the default.
    fn path(&self) -> Result<String, ServiceConfigError> {
        match (self.service.is_empty(), self.method.is_empty()) {
            (true, true) => Ok(String::new()),
            (true, false) => Err(invalid(
                "methodConfig",
                "a name with a method must have a service",
            )),
            (false, _) => Ok(format!("/{}/{}", self.service, self.method)),
        }
    }
}

/// The per-method settings a channel looks requests up in, by the request's path (grpc-go
/// `getMethodConfig`: the exact method, then its service, then the default). Looked up only
/// when a request cannot be picked at once; no allocation.
#[derive(Clone, Debug, Default)]
pub(crate) struct MethodTable {
    wait_for_ready: HashMap<String, Option<bool>>,
}

impl MethodTable {
    pub(crate) fn new(methods: &[MethodConfig]) -> Self {
        let mut wait_for_ready = HashMap::new();
        for m in methods {
            for n in &m.names {
                if let Ok(path) = n.path() {
                    wait_for_ready.insert(path, m.wait_for_ready);
                }
            }
        }
        Self { wait_for_ready }
    }

    /// `waitForReady` of the method at `path` (`/package.Service/Method`), if configured.
    pub(crate) fn wait_for_ready(&self, path: &str) -> Option<bool> {
        if self.wait_for_ready.is_empty() {
            return None;
        }
        let service = path.rfind('/').map_or("", |i| &path[..=i]);
        self.wait_for_ready
            .get(path)
            .or_else(|| self.wait_for_ready.get(service))
            .or_else(|| self.wait_for_ready.get(""))
            .copied()
            .flatten()
    }
}

/// Why a service config was rejected (gRPC NACKs or fails the channel on these).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceConfigError {
    /// Not JSON, or not the shape of a service config.
    Json(String),
    /// No policy of `loadBalancingConfig` is supported.
    NoSupportedPolicy(Vec<String>),
    /// A field has an invalid value.
    Invalid {
        /// The policy.
        policy: String,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for ServiceConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json(e) => write!(f, "service config: {e}"),
            Self::NoSupportedPolicy(names) => {
                write!(
                    f,
                    "service config: no supported policy in loadBalancingConfig ({})",
                    names.join(", ")
                )
            }
            Self::Invalid { policy, reason } => write!(f, "service config: {policy}: {reason}"),
        }
    }
}

impl std::error::Error for ServiceConfigError {}

fn invalid(policy: &str, reason: impl Into<String>) -> ServiceConfigError {
    ServiceConfigError::Invalid {
        policy: policy.into(),
        reason: reason.into(),
    }
}

/// Parses a service config (`{"loadBalancingConfig": [...], "methodConfig": [...]}`, either
/// part optional) or a bare `loadBalancingConfig` list.
pub fn parse(json: &str) -> Result<ServiceConfig, ServiceConfigError> {
    let v: Value = serde_json::from_str(json).map_err(|e| ServiceConfigError::Json(e.to_string()))?;
    let mut out = ServiceConfig {
        policy: LbPolicy::P2c(Policy::PeakEwma),
        hash_header: None,
        outlier: None,
        subset: None,
        load_balancing: false,
        methods: Vec::new(),
    };
    let (list, methods) = match &v {
        Value::Array(_) => (Some(&v), None),
        Value::Object(o) => (o.get("loadBalancingConfig"), o.get("methodConfig")),
        _ => return Err(ServiceConfigError::Json("expected an object or a list".into())),
    };
    if let Some(list) = list {
        choose(list, &mut out)?;
        out.load_balancing = true;
    }
    if let Some(methods) = methods {
        out.methods = method_configs(methods)?;
    }
    Ok(out)
}

/// `methodConfig`, validated as grpc-go's `parseServiceConfig` does: a name with a method needs
/// a service, and no name appears twice; `waitForReady` must be a boolean.
fn method_configs(v: &Value) -> Result<Vec<MethodConfig>, ServiceConfigError> {
    let bad = |reason: &str| invalid("methodConfig", reason);
    let Value::Array(entries) = v else {
        return Err(bad("must be a list"));
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let entry = entry
            .as_object()
            .ok_or_else(|| bad("each entry must be an object"))?;
        let mut mc = MethodConfig::default();
        match entry.get("name") {
            None | Some(Value::Null) => {}
            Some(Value::Array(names)) => {
                for n in names {
                    let n = n.as_object().ok_or_else(|| bad("each name must be an object"))?;
                    let field = |key: &str| match n.get(key) {
                        None | Some(Value::Null) => Ok(String::new()),
                        Some(Value::String(s)) => Ok(s.clone()),
                        Some(_) => Err(bad("service and method must be strings")),
                    };
                    let name = MethodName {
                        service: field("service")?,
                        method: field("method")?,
                    };
                    if !seen.insert(name.path()?) {
                        return Err(bad("duplicate name"));
                    }
                    mc.names.push(name);
                }
            }
            Some(_) => return Err(bad("name must be a list")),
        }
        mc.wait_for_ready = match entry.get("waitForReady") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(bad("waitForReady must be a boolean")),
        };
        out.push(mc);
    }
    Ok(out)
}

/// Applies the first supported entry of a `loadBalancingConfig` list.
fn choose(list: &Value, out: &mut ServiceConfig) -> Result<(), ServiceConfigError> {
    let Value::Array(entries) = list else {
        return Err(ServiceConfigError::Json(
            "loadBalancingConfig must be a list".into(),
        ));
    };
    let mut seen = Vec::new();
    for entry in entries {
        let Some((name, cfg)) = entry.as_object().and_then(|o| o.iter().next()) else {
            return Err(ServiceConfigError::Json(
                "each loadBalancingConfig entry is {name: config}".into(),
            ));
        };
        let empty = Map::new();
        let cfg = cfg.as_object().unwrap_or(&empty);
        if apply(name, cfg, out)? {
            return Ok(());
        }
        seen.push(name.clone());
    }
    Err(ServiceConfigError::NoSupportedPolicy(seen))
}

/// Applies one named policy; `false` if pickwise does not have it.
fn apply(name: &str, cfg: &Map<String, Value>, out: &mut ServiceConfig) -> Result<bool, ServiceConfigError> {
    match name {
        "round_robin" => out.policy = LbPolicy::RoundRobin,
        "weighted_round_robin" => out.policy = LbPolicy::WeightedRoundRobin(wrr_config(cfg, name)?),
        "pickwise_peak_ewma" | "pickwise_go_zero" => {
            out.policy = LbPolicy::from_name(name).unwrap_or_default();
        }
        "pickwise_prequal" => out.policy = LbPolicy::Prequal(prequal_config(cfg, name)?),
        "least_request_experimental" => {
            let choices = uint(cfg, "choiceCount", name)?.unwrap_or(2);
            if choices < 2 {
                return Err(invalid(name, "choiceCount must be at least 2"));
            }
            out.policy = LbPolicy::P2c(Policy::LeastRequest);
        }
        "ring_hash_experimental" => {
            let min = uint(cfg, "minRingSize", name)?.unwrap_or(1024);
            let max = uint(cfg, "maxRingSize", name)?.unwrap_or(4096);
            if min == 0 || min > max || max > MAX_RING_SIZE {
                return Err(invalid(
                    name,
                    format!("need 1 <= minRingSize <= maxRingSize <= {MAX_RING_SIZE}, got {min} and {max}"),
                ));
            }
            if let Some(h) = cfg.get("requestHashHeader").and_then(Value::as_str) {
                let lower = h.to_ascii_lowercase();
                if lower.ends_with("-bin") || lower.starts_with(':') {
                    return Err(invalid(
                        name,
                        format!("requestHashHeader {h:?} cannot be a binary or pseudo header"),
                    ));
                }
                let header = HeaderName::from_bytes(lower.as_bytes())
                    .map_err(|_| invalid(name, format!("requestHashHeader {h:?} is not a header name")))?;
                out.hash_header = Some(header);
            }
            out.policy = LbPolicy::RingHash {
                ring: RingConfig::grpc().with_min_ring_size(min).with_max_ring_size(max),
                load: HashPolicy::Plain,
                // gRFC A76: a request without the header gets a random hash.
                no_key: NoKey::RandomHash,
            };
        }
        "maglev" => {
            let size = uint(cfg, "tableSize", name)?.unwrap_or(65_537);
            out.policy = LbPolicy::Maglev {
                table_size: size,
                no_key: NoKey::RandomHash,
            };
        }
        "outlier_detection_experimental" => {
            let mut o = OutlierConfig::default();
            if let Some(d) = duration(cfg, "interval", name)? {
                o.interval_ms = millis(d);
            }
            if let Some(d) = duration(cfg, "baseEjectionTime", name)? {
                o.base_ejection_ms = millis(d);
            }
            if let Some(d) = duration(cfg, "maxEjectionTime", name)? {
                o.max_ejection_ms = millis(d);
            }
            if let Some(p) = uint(cfg, "maxEjectionPercent", name)? {
                if p > 100 {
                    return Err(invalid(name, "maxEjectionPercent must be at most 100"));
                }
                o.max_ejection_percent = p as u8;
            }
            // A50: gRPC has no consecutive-failure ejection; only the two interval algorithms,
            // each on when its object is present (with A50's defaults for absent fields).
            o.consecutive_failures = 0;
            let percent = |v: Option<u64>, key: &str| -> Result<Option<u8>, ServiceConfigError> {
                match v {
                    Some(p) if p > 100 => Err(invalid(name, format!("{key} must be at most 100"))),
                    Some(p) => Ok(Some(p as u8)),
                    None => Ok(None),
                }
            };
            let count = |v: Option<u64>| v.map(|v| v.min(u64::from(u32::MAX)) as u32);
            if let Some(Value::Object(sr)) = cfg.get("successRateEjection") {
                let d = pickwise::SuccessRateEjection::default();
                o.success_rate = Some(pickwise::SuccessRateEjection {
                    stdev_factor: count(uint(sr, "stdevFactor", name)?).unwrap_or(d.stdev_factor),
                    enforcement_percentage: percent(
                        uint(sr, "enforcementPercentage", name)?,
                        "enforcementPercentage",
                    )?
                    .unwrap_or(d.enforcement_percentage),
                    minimum_hosts: count(uint(sr, "minimumHosts", name)?).unwrap_or(d.minimum_hosts),
                    request_volume: count(uint(sr, "requestVolume", name)?).unwrap_or(d.request_volume),
                });
            }
            if let Some(Value::Object(fp)) = cfg.get("failurePercentageEjection") {
                let d = pickwise::FailurePercentageEjection::default();
                o.failure_percentage = Some(pickwise::FailurePercentageEjection {
                    threshold: percent(uint(fp, "threshold", name)?, "threshold")?.unwrap_or(d.threshold),
                    enforcement_percentage: percent(
                        uint(fp, "enforcementPercentage", name)?,
                        "enforcementPercentage",
                    )?
                    .unwrap_or(d.enforcement_percentage),
                    minimum_hosts: count(uint(fp, "minimumHosts", name)?).unwrap_or(d.minimum_hosts),
                    request_volume: count(uint(fp, "requestVolume", name)?).unwrap_or(d.request_volume),
                });
            }
            out.outlier = Some(o);
            choose(cfg.get("childPolicy").unwrap_or(&Value::Array(vec![])), out)?;
        }
        "random_subsetting" => {
            let size = uint(cfg, "subsetSize", name)?.unwrap_or(20);
            if size == 0 || size > u64::from(u32::MAX) {
                return Err(invalid(name, "subsetSize must be at least 1"));
            }
            out.subset = Some(Subsetting::Random {
                subset_size: size as u32,
            });
            choose(cfg.get("childPolicy").unwrap_or(&Value::Array(vec![])), out)?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// gRFC A58's `weighted_round_robin` config, as grpc-go parses it: A58's defaults, a negative
/// `errorUtilizationPenalty` rejected, `weightUpdatePeriod` at least 100 ms.
pub(crate) fn wrr_config(cfg: &Map<String, Value>, name: &str) -> Result<WrrConfig, ServiceConfigError> {
    let mut c = WrrConfig::default();
    let ns = |d: Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
    if let Some(v) = cfg.get("enableOobLoadReport") {
        c.oob = v
            .as_bool()
            .ok_or_else(|| invalid(name, "enableOobLoadReport is not a boolean"))?;
    }
    for (key, slot) in [
        ("oobReportingPeriod", &mut c.oob_period_ns),
        ("blackoutPeriod", &mut c.blackout_ns),
        ("weightExpirationPeriod", &mut c.expiration_ns),
        ("weightUpdatePeriod", &mut c.update_ns),
    ] {
        if let Some(d) = duration(cfg, key, name)? {
            *slot = ns(d);
        }
    }
    c.update_ns = c.update_period_ns();
    if let Some(v) = cfg.get("errorUtilizationPenalty").filter(|v| !v.is_null()) {
        let p = v
            .as_f64()
            .ok_or_else(|| invalid(name, "errorUtilizationPenalty is not a number"))?;
        if p < 0.0 {
            return Err(invalid(name, "errorUtilizationPenalty must be non-negative"));
        }
        c.error_utilization_penalty = p as f32;
    }
    Ok(c)
}

/// `pickwise_prequal`'s config (Prequal, NSDI '24; the core's [`PrequalConfig`], its defaults
/// for absent fields): `probesPerQuery`, `poolSize`, `maxAge`, `removesPerQuery`, `reuseDelta`,
/// `maxReuse`, `qRif`, `idleProbeInterval` (`"0s"` disables idle probing) and `fallback` (the
/// P2C cost while fewer than two answers are usable: `pickwise_peak_ewma`,
/// `least_request_experimental` or `pickwise_go_zero`).
pub(crate) fn prequal_config(
    cfg: &Map<String, Value>,
    name: &str,
) -> Result<PrequalConfig, ServiceConfigError> {
    let mut c = PrequalConfig::default();
    let ns = |d: Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
    for (key, slot, max) in [
        ("probesPerQuery", &mut c.probes_per_query, 64.0),
        ("removesPerQuery", &mut c.removes_per_query, 64.0),
        ("reuseDelta", &mut c.reuse_delta, 1e6),
        ("qRif", &mut c.q_rif, 1.0),
    ] {
        if let Some(v) = number(cfg, key, name)? {
            if !(0.0..=max).contains(&v) {
                return Err(invalid(
                    name,
                    format!("{key} must be between 0 and {max}, got {v}"),
                ));
            }
            *slot = v as f32;
        }
    }
    if let Some(n) = uint(cfg, "poolSize", name)? {
        if n == 0 || n > MAX_POOL_SIZE as u64 {
            return Err(invalid(
                name,
                format!("poolSize must be between 1 and {MAX_POOL_SIZE}, got {n}"),
            ));
        }
        c.pool_size = n as u8;
    }
    if let Some(n) = uint(cfg, "maxReuse", name)? {
        if n == 0 || n > u64::from(MAX_REUSE) {
            return Err(invalid(
                name,
                format!("maxReuse must be between 1 and {MAX_REUSE}, got {n}"),
            ));
        }
        c.max_reuse = n as u8;
    }
    if let Some(d) = duration(cfg, "maxAge", name)? {
        if d < Duration::from_millis(1) {
            return Err(invalid(name, "maxAge must be at least 1 ms"));
        }
        c.max_age_ns = ns(d);
    }
    if let Some(d) = duration(cfg, "idleProbeInterval", name)? {
        c.idle_probe_ns = ns(d);
    }
    match cfg.get("fallback") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) => match LbPolicy::from_name(f) {
            Some(LbPolicy::P2c(cost)) => c.fallback = cost,
            _ => {
                return Err(invalid(
                    name,
                    format!("fallback {f:?} is not pickwise_peak_ewma, least_request_experimental or pickwise_go_zero"),
                ))
            }
        },
        Some(_) => return Err(invalid(name, "fallback is not a policy name")),
    }
    Ok(c)
}

/// A JSON number (or a protobuf JSON string holding one).
fn number(cfg: &Map<String, Value>, key: &str, policy: &str) -> Result<Option<f64>, ServiceConfigError> {
    let bad = || invalid(policy, format!("{key} is not a number"));
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or_else(bad),
        Some(v) => v.as_f64().map(Some).ok_or_else(bad),
    }
}

fn uint(cfg: &Map<String, Value>, key: &str, policy: &str) -> Result<Option<u64>, ServiceConfigError> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        // Protobuf JSON writes 64-bit integers as strings.
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| invalid(policy, format!("{key} is not a non-negative integer"))),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(policy, format!("{key} is not a non-negative integer"))),
    }
}

/// A protobuf JSON duration: `"10s"`, `"0.250s"`.
fn duration(
    cfg: &Map<String, Value>,
    key: &str,
    policy: &str,
) -> Result<Option<Duration>, ServiceConfigError> {
    let Some(v) = cfg.get(key) else { return Ok(None) };
    let bad = || invalid(policy, format!("{key} is not a duration like \"10s\""));
    let s = v.as_str().ok_or_else(bad)?;
    let secs: f64 = s.strip_suffix('s').ok_or_else(bad)?.parse().map_err(|_| bad())?;
    if !(0.0..=315_576_000_000.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Some(Duration::from_secs_f64(secs)))
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_supported_policy_wins() {
        let c = parse(r#"{"loadBalancingConfig":[{"pick_first":{}},{"round_robin":{}}]}"#).unwrap();
        assert_eq!(c.policy, LbPolicy::RoundRobin);
        let c = parse(r#"[{"least_request_experimental":{"choiceCount":3}}]"#).unwrap();
        assert_eq!(c.policy, LbPolicy::P2c(Policy::LeastRequest));
        assert!(matches!(
            parse(r#"[{"pick_first":{}},{"xds_wrr_locality_experimental":{}}]"#),
            Err(ServiceConfigError::NoSupportedPolicy(v)) if v.len() == 2
        ));
        assert!(matches!(parse("nope"), Err(ServiceConfigError::Json(_))));
    }

    /// grpc-go `ringhash/config_test.go` `TestParseConfig` facts: defaults 1024/4096, min > max
    /// and sizes above 8M rejected, the header lower-cased, `-bin` headers rejected.
    #[test]
    fn weighted_round_robin_like_grpc_go() {
        let c = parse(r#"[{"weighted_round_robin":{}}]"#).unwrap();
        assert_eq!(c.policy, LbPolicy::WeightedRoundRobin(WrrConfig::default()));
        let c = parse(
            r#"[{"weighted_round_robin":{"enableOobLoadReport":true,"oobReportingPeriod":"0.5s",
                "blackoutPeriod":"0s","weightExpirationPeriod":"60s","weightUpdatePeriod":"0.01s",
                "errorUtilizationPenalty":0.9}}]"#,
        )
        .unwrap();
        let LbPolicy::WeightedRoundRobin(w) = c.policy else {
            panic!("{:?}", c.policy)
        };
        assert!(w.oob);
        assert_eq!(w.oob_period_ns, 500_000_000);
        assert_eq!(w.blackout_ns, 0);
        assert_eq!(w.expiration_ns, 60_000_000_000);
        // grpc-go's lower bound.
        assert_eq!(w.update_ns, 100_000_000);
        assert_eq!(w.error_utilization_penalty, 0.9);
        for bad in [
            r#"[{"weighted_round_robin":{"errorUtilizationPenalty":-1}}]"#,
            r#"[{"weighted_round_robin":{"blackoutPeriod":10}}]"#,
            r#"[{"weighted_round_robin":{"enableOobLoadReport":"yes"}}]"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prequal_config_camel_case() {
        let c = parse(
            r#"{"loadBalancingConfig":[{"pickwise_prequal":{"probesPerQuery":3,"poolSize":16,"maxAge":"1s",
                "removesPerQuery":1,"reuseDelta":1,"maxReuse":16,"qRif":0.84,"idleProbeInterval":"0.5s",
                "fallback":"pickwise_peak_ewma"}}]}"#,
        )
        .unwrap();
        let LbPolicy::Prequal(p) = c.policy else {
            panic!("{:?}", c.policy)
        };
        assert_eq!(
            (p.probes_per_query, p.pool_size, p.max_age_ns, p.removes_per_query),
            (3.0, 16, 1_000_000_000, 1.0)
        );
        assert_eq!((p.reuse_delta, p.max_reuse, p.q_rif), (1.0, 16, 0.84));
        assert_eq!((p.idle_probe_ns, p.fallback), (500_000_000, Policy::PeakEwma));
        let c = parse(
            r#"[{"pickwise_prequal":{"probesPerQuery":0.5,"idleProbeInterval":"0s","fallback":"least_request_experimental","poolSize":"8"}}]"#,
        )
        .unwrap();
        let LbPolicy::Prequal(p) = c.policy else {
            panic!("{:?}", c.policy)
        };
        assert_eq!(
            (p.probes_per_query, p.idle_probe_ns, p.fallback, p.pool_size),
            (0.5, 0, Policy::LeastRequest, 8)
        );
        assert_eq!(
            parse(r#"[{"pickwise_prequal":{}}]"#).unwrap().policy,
            LbPolicy::Prequal(PrequalConfig::default())
        );
        for bad in [
            r#"[{"pickwise_prequal":{"probesPerQuery":-1}}]"#,
            r#"[{"pickwise_prequal":{"probesPerQuery":"many"}}]"#,
            r#"[{"pickwise_prequal":{"poolSize":0}}]"#,
            r#"[{"pickwise_prequal":{"poolSize":33}}]"#,
            r#"[{"pickwise_prequal":{"maxReuse":64}}]"#,
            r#"[{"pickwise_prequal":{"qRif":1.5}}]"#,
            r#"[{"pickwise_prequal":{"maxAge":"0s"}}]"#,
            r#"[{"pickwise_prequal":{"maxAge":1}}]"#,
            r#"[{"pickwise_prequal":{"idleProbeInterval":"soon"}}]"#,
            r#"[{"pickwise_prequal":{"fallback":"round_robin"}}]"#,
            r#"[{"pickwise_prequal":{"fallback":3}}]"#,
        ] {
            assert!(
                matches!(parse(bad), Err(ServiceConfigError::Invalid { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn ring_hash_like_grpc_go() {
        let c = parse(r#"[{"ring_hash_experimental":{}}]"#).unwrap();
        let LbPolicy::RingHash { ring, no_key, .. } = c.policy else {
            panic!()
        };
        assert_eq!(
            (ring.min_ring_size, ring.max_ring_size, no_key),
            (1024, 4096, NoKey::RandomHash)
        );
        let c = parse(r#"[{"ring_hash_experimental":{"minRingSize":"10","maxRingSize":100,"requestHashHeader":"X-User"}}]"#).unwrap();
        assert_eq!(c.hash_header.unwrap().as_str(), "x-user");
        for bad in [
            r#"[{"ring_hash_experimental":{"minRingSize":100,"maxRingSize":10}}]"#,
            r#"[{"ring_hash_experimental":{"maxRingSize":8388609}}]"#,
            r#"[{"ring_hash_experimental":{"requestHashHeader":"key-bin"}}]"#,
            r#"[{"ring_hash_experimental":{"requestHashHeader":"bad header"}}]"#,
        ] {
            assert!(
                matches!(parse(bad), Err(ServiceConfigError::Invalid { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn outlier_detection_and_subsetting_wrap_a_child() {
        let c = parse(
            r#"{"loadBalancingConfig":[{"outlier_detection_experimental":{
                "interval":"1s","baseEjectionTime":"0.5s","maxEjectionTime":"60s","maxEjectionPercent":20,
                "failurePercentageEjection":{"threshold":60,"requestVolume":10},
                "childPolicy":[{"random_subsetting":{"subsetSize":8,"childPolicy":[{"round_robin":{}}]}}]}}]}"#,
        )
        .unwrap();
        let o = c.outlier.unwrap();
        assert_eq!(
            (
                o.interval_ms,
                o.base_ejection_ms,
                o.max_ejection_ms,
                o.max_ejection_percent
            ),
            (1000, 500, 60_000, 20)
        );
        assert_eq!(
            o.consecutive_failures, 0,
            "gRPC has no consecutive-failure ejection"
        );
        let fp = o.failure_percentage.unwrap();
        assert_eq!((fp.threshold, fp.request_volume, fp.minimum_hosts), (60, 10, 5));
        assert_eq!(o.success_rate, None);
        assert_eq!(c.subset, Some(Subsetting::Random { subset_size: 8 }));
        assert_eq!(c.policy, LbPolicy::RoundRobin);
        // No ejection algorithm: a no-op (A50).
        let c =
            parse(r#"[{"outlier_detection_experimental":{"childPolicy":[{"round_robin":{}}]}}]"#).unwrap();
        assert_eq!(c.outlier.unwrap().consecutive_failures, 0);
        assert!(parse(r#"[{"outlier_detection_experimental":{"interval":"ten"}}]"#).is_err());
    }

    /// grpc-go `service_config_test.go` facts: lookup by exact method, then service, then the
    /// default; a method without a service and a duplicate name are errors; no
    /// `loadBalancingConfig` is fine.
    #[test]
    fn method_config_wait_for_ready() {
        let c = parse(
            r#"{"methodConfig":[
                {"name":[{"service":"a.S","method":"M"}],"waitForReady":false},
                {"name":[{"service":"a.S"},{"service":"b.T","method":"N"}],"waitForReady":true},
                {"name":[{}],"timeout":"1s"},
                {"name":[{"service":"c.U"}]}]}"#,
        )
        .unwrap();
        assert!(!c.load_balancing);
        assert_eq!(c.methods.len(), 4);
        let t = MethodTable::new(&c.methods);
        assert_eq!(t.wait_for_ready("/a.S/M"), Some(false));
        assert_eq!(t.wait_for_ready("/a.S/Other"), Some(true));
        assert_eq!(t.wait_for_ready("/b.T/N"), Some(true));
        // The default entry matches and leaves it unset; so does a service entry without it.
        assert_eq!(t.wait_for_ready("/b.T/Other"), None);
        assert_eq!(t.wait_for_ready("/c.U/X"), None);
        assert_eq!(MethodTable::default().wait_for_ready("/a.S/M"), None);
        for bad in [
            r#"{"methodConfig":[{"name":[{"method":"M"}]}]}"#,
            r#"{"methodConfig":[{"name":[{"service":"a.S"}]},{"name":[{"service":"a.S"}]}]}"#,
            r#"{"methodConfig":[{"name":[{"service":"a.S"}],"waitForReady":"yes"}]}"#,
            r#"{"methodConfig":{}}"#,
        ] {
            assert!(
                matches!(parse(bad), Err(ServiceConfigError::Invalid { .. })),
                "{bad}"
            );
        }
        let c = parse(r#"{"loadBalancingConfig":[{"round_robin":{}}]}"#).unwrap();
        assert!(c.load_balancing && c.methods.is_empty());
    }
}
