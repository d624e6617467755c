//! LDS: the API listener named by the target, whose `HttpConnectionManager` names the route
//! configuration (RDS) or carries it inline (gRFC A27).

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use prost::{Message, Name};

use super::route::{self, RouteConfig};
use super::Invalid;

/// A validated listener: where its routes come from.
#[derive(Clone, Debug, PartialEq)]
pub enum ListenerConfig {
    /// Routes from RDS, by route configuration name.
    Rds(String),
    /// Routes inline.
    Inline(RouteConfig),
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
    match hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) if !rds.route_config_name.is_empty() => {
            Ok(ListenerConfig::Rds(rds.route_config_name))
        }
        Some(RouteSpecifier::Rds(_)) => Err("rds without a route_config_name".into()),
        Some(RouteSpecifier::RouteConfig(rc)) => Ok(ListenerConfig::Inline(route::validate(&rc)?)),
        Some(_) => Err("scoped routes are not supported".into()),
        None => Err("HttpConnectionManager has neither rds nor route_config".into()),
    }
}
