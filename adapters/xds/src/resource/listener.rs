//! LDS: the API listener named by the target, whose `HttpConnectionManager` names the route
//! configuration (RDS) or carries it inline (gRFC A27), with its HTTP filters (gRFC A39) and
//! default `max_stream_duration` (gRFC A31). The rules are grpc-go's
//! `processClientSideListener` and `processHTTPFilters`
//! (internal/xds/xdsclient/xdsresource/unmarshal_lds.go).

use std::collections::HashSet;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{config_source::ConfigSourceSpecifier, ConfigSource};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter::ConfigType, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::route::{self, RouteConfig};
use super::Invalid;

/// A validated listener.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    /// Where the routes come from.
    pub routes: RouteSource,
    /// gRFC A31: `common_http_protocol_options.max_stream_duration`, the RPC timeout of routes
    /// that set none (zero: no limit).
    pub max_stream_duration: Duration,
}

/// Where a listener's routes come from.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteSource {
    /// Routes from RDS, by route configuration name.
    Rds(String),
    /// Routes inline.
    Inline(RouteConfig),
}

const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const RBAC_PER_ROUTE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
const TYPED_STRUCT_V1: &str = "type.googleapis.com/udpa.type.v1.TypedStruct";
const TYPED_STRUCT_V3: &str = "type.googleapis.com/xds.type.v3.TypedStruct";

/// `xds.type.v3.TypedStruct` / `udpa.type.v1.TypedStruct`, as far as the filter type goes.
#[derive(Clone, PartialEq, Message)]
struct TypedStruct {
    #[prost(string, tag = "1")]
    type_url: String,
}

pub(super) fn validate(l: &Listener) -> Result<ListenerConfig, Invalid> {
    let api = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .ok_or("no api_listener (pickwise-xds is a client: it needs an API listener)")?;
    if api.type_url != HttpConnectionManager::type_url() {
        return Err(format!(
            "api_listener is {:?}, not an HttpConnectionManager",
            api.type_url
        ));
    }
    let hcm = HttpConnectionManager::decode(api.value.as_slice())
        .map_err(|e| format!("cannot decode the HttpConnectionManager: {e}"))?;
    if hcm.xff_num_trusted_hops != 0 {
        return Err("xff_num_trusted_hops must be unset or zero".into());
    }
    if !hcm.original_ip_detection_extensions.is_empty() {
        return Err("original_ip_detection_extensions must be empty".into());
    }
    let routes = match hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            if !ads_or_self(rds.config_source.as_ref()) {
                return Err("the RDS config_source is not ADS or self".into());
            }
            if rds.route_config_name.is_empty() {
                return Err("rds without a route_config_name".into());
            }
            RouteSource::Rds(rds.route_config_name)
        }
        Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Inline(route::validate(&rc)?),
        Some(_) => return Err("scoped routes are not supported".into()),
        None => return Err("HttpConnectionManager has neither rds nor route_config".into()),
    };
    let max_stream_duration = hcm
        .common_http_protocol_options
        .as_ref()
        .and_then(|o| o.max_stream_duration.as_ref())
        .map_or(Duration::ZERO, super::duration);
    http_filters(&hcm.http_filters)?;
    Ok(ListenerConfig {
        routes,
        max_stream_duration,
    })
}

/// Whether a config source is ADS or self (the only ones gRPC follows).
pub(super) fn ads_or_self(source: Option<&ConfigSource>) -> bool {
    matches!(
        source.and_then(|s| s.config_source_specifier.as_ref()),
        Some(ConfigSourceSpecifier::Ads(_) | ConfigSourceSpecifier::Self_(_))
    )
}

/// What pickwise knows of an HTTP filter on the client side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filter {
    /// The router: terminal, must be last.
    Router,
    /// A client filter grpc-go implements and pickwise accepts without applying (fault
    /// injection: see docs/xds.md).
    Ignored,
    /// Known, server side only.
    ServerOnly,
}

/// gRFC A39 (grpc-go `processHTTPFilters`): names present and unique; a filter whose type is
/// unknown or server-only NACKs unless `is_optional`; at least one filter; the last one is the
/// router and no terminal filter comes before it.
fn http_filters(filters: &[HttpFilter]) -> Result<(), Invalid> {
    let mut seen = HashSet::new();
    let mut kept = Vec::new();
    for f in filters {
        if f.name.is_empty() {
            return Err("an HTTP filter without a name".into());
        }
        if !seen.insert(f.name.as_str()) {
            return Err(format!("duplicate HTTP filter name {:?}", f.name));
        }
        let typed = match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let type_url = match typed {
            Some(any) => filter_type(any)?,
            None => String::new(),
        };
        let filter = match type_url.as_str() {
            ROUTER => Filter::Router,
            FAULT => Filter::Ignored,
            RBAC | RBAC_PER_ROUTE => Filter::ServerOnly,
            _ if f.is_optional => continue,
            other => {
                return Err(format!(
                    "HTTP filter {:?}: no implementation for {other:?}",
                    f.name
                ))
            }
        };
        if filter == Filter::ServerOnly {
            if f.is_optional {
                continue;
            }
            return Err(format!("HTTP filter {:?} is not supported client-side", f.name));
        }
        kept.push((f.name.as_str(), filter));
    }
    let Some((last, rest)) = kept.split_last() else {
        return Err("the HTTP filter list is empty".into());
    };
    if let Some((name, _)) = rest.iter().find(|(_, f)| *f == Filter::Router) {
        return Err(format!(
            "HTTP filter {name:?} is a terminal filter but it is not last in the filter chain"
        ));
    }
    if last.1 != Filter::Router {
        return Err(format!("HTTP filter {:?} is not a terminal filter", last.0));
    }
    Ok(())
}

const FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";

/// gRFC A39 per-route overrides (`typed_per_filter_config` of a virtual host, route or weighted
/// cluster), as grpc-go's `processHTTPFilterOverrides`: a `FilterConfig` wrapper may mark one
/// optional; an unknown, non-optional type NACKs; the router takes no override. Overrides are
/// validated, not applied (pickwise applies no HTTP filter).
pub(super) fn filter_overrides<'a>(
    overrides: impl IntoIterator<Item = (&'a String, &'a Any)>,
) -> Result<(), Invalid> {
    use envoy_types::pb::envoy::config::route::v3::FilterConfig;
    for (name, any) in overrides {
        let (config, optional) = if any.type_url == FILTER_CONFIG {
            let fc = FilterConfig::decode(any.value.as_slice())
                .map_err(|e| format!("filter override {name:?}: cannot decode FilterConfig: {e}"))?;
            if fc.disabled {
                continue;
            }
            (fc.config.unwrap_or_default(), fc.is_optional)
        } else {
            (any.clone(), false)
        };
        let type_url = filter_type(&config).map_err(|e| format!("filter override {name:?}: {e}"))?;
        match type_url.as_str() {
            ROUTER => {
                return Err(format!(
                    "filter override {name:?}: the router takes no config override"
                ))
            }
            FAULT | RBAC | RBAC_PER_ROUTE => {}
            _ if optional => {}
            other => {
                return Err(format!(
                    "filter override {name:?}: no implementation for {other:?}"
                ))
            }
        }
    }
    Ok(())
}

/// A filter config's type, unwrapping `TypedStruct`.
fn filter_type(any: &Any) -> Result<String, Invalid> {
    if any.type_url == TYPED_STRUCT_V1 || any.type_url == TYPED_STRUCT_V3 {
        let ts = TypedStruct::decode(any.value.as_slice())
            .map_err(|e| format!("cannot decode a TypedStruct filter config: {e}"))?;
        return Ok(ts.type_url);
    }
    Ok(any.type_url.clone())
}
