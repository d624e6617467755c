//! xDS resources: decoding and validation (grpc-go's `xdsresource` unmarshalers), from protobuf
//! bytes to the small, checked types the rest of the client uses. Every entry point takes
//! untrusted bytes and returns a typed error, never panics (fuzzed: `fuzz_targets/xds_resource.rs`).

mod cluster;
mod endpoint;
mod listener;
mod route;
mod security;

use std::fmt;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

pub use cluster::ClusterConfig;
pub use endpoint::{EndpointConfig, EndpointsConfig, LocalityConfig};
pub use listener::{ListenerConfig, RouteSource};
pub use route::{
    ClusterWeight, HashPolicy, HashSource, HeaderMatch, HeaderMatcher, PathMatch, Route, RouteAction,
    RouteConfig, RouteMatch, VirtualHost,
};
pub(crate) use security::check_providers;
pub use security::{CertProviderInstance, SanMatcher, SecurityConfig};

/// The four resource types of gRPC's xDS client, in dependency order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    RouteConfiguration,
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    ClusterLoadAssignment,
}

impl ResourceType {
    /// All four, in dependency order.
    pub const ALL: [Self; 4] = [
        Self::Listener,
        Self::RouteConfiguration,
        Self::Cluster,
        Self::ClusterLoadAssignment,
    ];

    /// The type URL on the wire.
    pub fn type_url(self) -> String {
        use envoy_types::pb::envoy::config as c;
        match self {
            Self::Listener => c::listener::v3::Listener::type_url(),
            Self::RouteConfiguration => c::route::v3::RouteConfiguration::type_url(),
            Self::Cluster => c::cluster::v3::Cluster::type_url(),
            Self::ClusterLoadAssignment => c::endpoint::v3::ClusterLoadAssignment::type_url(),
        }
    }

    /// The type for a type URL.
    pub fn from_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// State-of-the-world semantics: a listener or cluster missing from a response no longer
    /// exists; route configurations and endpoints are only ever added or replaced.
    pub fn absent_means_deleted(self) -> bool {
        matches!(self, Self::Listener | Self::Cluster)
    }

    /// A short name for logs (`LDS`, `RDS`, `CDS`, `EDS`).
    pub fn short(self) -> &'static str {
        match self {
            Self::Listener => "LDS",
            Self::RouteConfiguration => "RDS",
            Self::Cluster => "CDS",
            Self::ClusterLoadAssignment => "EDS",
        }
    }
}

/// One validated resource.
// A cluster (with its security config) is the largest; resources are decoded once per response
// and cached behind an `Arc`, so the size difference costs nothing worth a box in the API.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// A listener.
    Listener(ListenerConfig),
    /// A route configuration.
    RouteConfiguration(RouteConfig),
    /// A cluster.
    Cluster(ClusterConfig),
    /// A cluster's endpoints.
    ClusterLoadAssignment(EndpointsConfig),
}

/// A resource that failed to decode or validate: NACKed with this reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidResource {
    /// The resource's name, when it could be decoded that far.
    pub name: Option<String>,
    /// Why it was rejected.
    pub reason: String,
}

impl fmt::Display for InvalidResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "resource {n:?}: {}", self.reason),
            None => write!(f, "resource: {}", self.reason),
        }
    }
}

impl std::error::Error for InvalidResource {}

/// What validation returns inside a module: the reason only (the name is added by [`decode`]).
pub(crate) type Invalid = String;

/// Decodes and validates one resource of type `ty` from a response's `Any` (also unwrapping
/// `envoy.service.discovery.v3.Resource`, as gRPC does). Returns its name and the resource.
pub fn decode(ty: ResourceType, any: &Any) -> Result<(String, Resource), InvalidResource> {
    let unwrapped;
    let any = if any.type_url == envoy_types::pb::envoy::service::discovery::v3::Resource::type_url() {
        let wrapper = envoy_types::pb::envoy::service::discovery::v3::Resource::decode(any.value.as_slice())
            .map_err(|e| InvalidResource {
                name: None,
                reason: format!("cannot decode the Resource wrapper: {e}"),
            })?;
        unwrapped = wrapper.resource.ok_or_else(|| InvalidResource {
            name: Some(wrapper.name.clone()),
            reason: "Resource wrapper without a resource".into(),
        })?;
        &unwrapped
    } else {
        any
    };
    if any.type_url != ty.type_url() {
        return Err(InvalidResource {
            name: None,
            reason: format!("type URL {:?} in a {} response", any.type_url, ty.short()),
        });
    }
    decode_bytes(ty, &any.value)
}

/// Decodes and validates one resource from its protobuf bytes.
pub fn decode_bytes(ty: ResourceType, bytes: &[u8]) -> Result<(String, Resource), InvalidResource> {
    use envoy_types::pb::envoy::config as c;
    fn bad_proto(e: prost::DecodeError) -> InvalidResource {
        InvalidResource {
            name: None,
            reason: format!("cannot decode: {e}"),
        }
    }
    fn named<T>(name: &str, r: Result<T, Invalid>) -> Result<(String, T), InvalidResource> {
        // grpc-go: "empty resource name in ... resource" (nothing to attribute it to).
        if name.is_empty() {
            return Err(InvalidResource {
                name: None,
                reason: "empty resource name".into(),
            });
        }
        match r {
            Ok(v) => Ok((name.to_owned(), v)),
            Err(reason) => Err(InvalidResource {
                name: Some(name.to_owned()),
                reason,
            }),
        }
    }
    match ty {
        ResourceType::Listener => {
            let l = c::listener::v3::Listener::decode(bytes).map_err(bad_proto)?;
            named(&l.name, listener::validate(&l)).map(|(n, v)| (n, Resource::Listener(v)))
        }
        ResourceType::RouteConfiguration => {
            let r = c::route::v3::RouteConfiguration::decode(bytes).map_err(bad_proto)?;
            named(&r.name, route::validate(&r)).map(|(n, v)| (n, Resource::RouteConfiguration(v)))
        }
        ResourceType::Cluster => {
            let cl = c::cluster::v3::Cluster::decode(bytes).map_err(bad_proto)?;
            named(&cl.name, cluster::validate(&cl)).map(|(n, v)| (n, Resource::Cluster(v)))
        }
        ResourceType::ClusterLoadAssignment => {
            let a = c::endpoint::v3::ClusterLoadAssignment::decode(bytes).map_err(bad_proto)?;
            named(&a.cluster_name, endpoint::validate(&a))
                .map(|(n, v)| (n, Resource::ClusterLoadAssignment(v)))
        }
    }
}

/// A `FractionalPercent` as parts per million (capped at one million).
pub(crate) fn per_million(p: &envoy_types::pb::envoy::r#type::v3::FractionalPercent) -> u32 {
    let scale: u64 = match p.denominator {
        0 => 10_000, // HUNDRED
        1 => 100,    // TEN_THOUSAND
        _ => 1,      // MILLION
    };
    (u64::from(p.numerator) * scale).min(1_000_000) as u32
}

/// A protobuf `Duration` as a `std` one; negative durations are zero (no limit), as grpc-go
/// treats a non-positive `max_stream_duration`.
pub(crate) fn duration(d: &envoy_types::pb::google::protobuf::Duration) -> std::time::Duration {
    if d.seconds < 0 || (d.seconds == 0 && d.nanos <= 0) {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(d.seconds as u64, d.nanos.clamp(0, 999_999_999) as u32)
}
