//! The xDS bootstrap (gRFC A27): which control plane to talk to and who this client is.
//!
//! Read from `GRPC_XDS_BOOTSTRAP` (a file path) or `GRPC_XDS_BOOTSTRAP_CONFIG` (the JSON itself),
//! in that order, so one file drives pickwise, grpc-go and gRPC C-core clients alike.
//!
//! ```json
//! {
//!   "xds_servers": [{"server_uri": "localhost:18000", "channel_creds": [{"type": "insecure"}],
//!                    "server_features": ["xds_v3"]}],
//!   "node": {"id": "client-1", "cluster": "web", "locality": {"zone": "eu-west-1a"}}
//! }
//! ```
//!
//! The first server is used (A27: the others are fallbacks, gRFC A71, not supported here).
//! `channel_creds` must list `insecure` (the first supported type wins, as in gRPC; TLS and
//! `google_default` creds are not supported yet). `server_features` honoured:
//! `ignore_resource_deletion` (gRFC A53: a listener or cluster missing from a response is kept).

use std::fmt;

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use serde_json::{Map, Value};

/// The environment variable holding the bootstrap file's path.
pub const BOOTSTRAP_ENV: &str = "GRPC_XDS_BOOTSTRAP";
/// The environment variable holding the bootstrap JSON itself.
pub const BOOTSTRAP_CONFIG_ENV: &str = "GRPC_XDS_BOOTSTRAP_CONFIG";

/// A parsed bootstrap.
#[derive(Clone, Debug, PartialEq)]
pub struct Bootstrap {
    /// The control plane's address as written (`host:port`, or `dns:///host:port`).
    pub server_uri: String,
    /// The server's `server_features`.
    pub server_features: Vec<String>,
    /// The `node` sent in the first request of each stream.
    pub node: Node,
}

/// Why a bootstrap was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BootstrapError {
    /// Neither environment variable is set.
    NotSet,
    /// The file could not be read.
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        error: String,
    },
    /// Not JSON, or a field has the wrong shape or value.
    Invalid(String),
}

impl fmt::Display for BootstrapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSet => write!(
                f,
                "xDS bootstrap not found: set {BOOTSTRAP_ENV} to a bootstrap file's path or {BOOTSTRAP_CONFIG_ENV} to its JSON"
            ),
            Self::Read { path, error } => write!(f, "xDS bootstrap {path}: {error}"),
            Self::Invalid(why) => write!(f, "xDS bootstrap: {why}"),
        }
    }
}

impl std::error::Error for BootstrapError {}

fn invalid(why: impl Into<String>) -> BootstrapError {
    BootstrapError::Invalid(why.into())
}

impl Bootstrap {
    /// From the environment: `GRPC_XDS_BOOTSTRAP` (a path) first, then
    /// `GRPC_XDS_BOOTSTRAP_CONFIG` (the JSON), as gRPC reads them.
    pub fn from_env() -> Result<Self, BootstrapError> {
        if let Some(path) = std::env::var_os(BOOTSTRAP_ENV).filter(|p| !p.is_empty()) {
            let path = path.to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).map_err(|e| BootstrapError::Read {
                path: path.clone(),
                error: e.to_string(),
            })?;
            return Self::from_json(&text);
        }
        match std::env::var(BOOTSTRAP_CONFIG_ENV) {
            Ok(json) if !json.is_empty() => Self::from_json(&json),
            _ => Err(BootstrapError::NotSet),
        }
    }

    /// From bootstrap JSON.
    pub fn from_json(json: &str) -> Result<Self, BootstrapError> {
        let v: Value = serde_json::from_str(json).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let root = v
            .as_object()
            .ok_or_else(|| invalid("the bootstrap must be a JSON object"))?;
        let servers = root
            .get("xds_servers")
            .and_then(Value::as_array)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("xds_servers must be a non-empty list"))?;
        let server = servers[0]
            .as_object()
            .ok_or_else(|| invalid("xds_servers[0] must be an object"))?;
        let server_uri = server
            .get("server_uri")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("xds_servers[0].server_uri must be a non-empty string"))?
            .to_owned();
        let creds = server
            .get("channel_creds")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("xds_servers[0].channel_creds must be a list"))?;
        let types: Vec<&str> = creds
            .iter()
            .filter_map(|c| c.get("type").and_then(Value::as_str))
            .collect();
        if !types.contains(&"insecure") {
            return Err(invalid(format!(
                "no supported channel_creds type in {types:?} (pickwise-xds supports \"insecure\")"
            )));
        }
        let server_features = server
            .get("server_features")
            .and_then(Value::as_array)
            .map(|f| f.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        let node = match root.get("node") {
            None => Node::default(),
            Some(Value::Object(n)) => node(n)?,
            Some(_) => return Err(invalid("node must be an object")),
        };
        Ok(Self {
            server_uri,
            server_features,
            node: Node {
                user_agent_name: "pickwise-xds".into(),
                user_agent_version_type: Some(
                    envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(
                        env!("CARGO_PKG_VERSION").into(),
                    ),
                ),
                client_features: vec!["envoy.lb.does_not_support_overprovisioning".into()],
                ..node
            },
        })
    }

    /// Whether the server has `feature` in its `server_features`.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.server_features.iter().any(|f| f == feature)
    }

    /// The control plane's URI for tonic (`http://host:port`).
    pub(crate) fn endpoint_uri(&self) -> String {
        let s = self.server_uri.as_str();
        let s = s.strip_prefix("dns:///").unwrap_or(s);
        if s.contains("://") {
            s.to_owned()
        } else {
            format!("http://{s}")
        }
    }
}

fn string(o: &Map<String, Value>, key: &str) -> Result<String, BootstrapError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(invalid(format!("node.{key} must be a string"))),
    }
}

fn node(n: &Map<String, Value>) -> Result<Node, BootstrapError> {
    let locality = match n.get("locality") {
        None => None,
        Some(Value::Object(l)) => Some(Locality {
            region: string(l, "region")?,
            zone: string(l, "zone")?,
            sub_zone: string(l, "sub_zone")?,
        }),
        Some(_) => return Err(invalid("node.locality must be an object")),
    };
    let metadata = match n.get("metadata") {
        None => None,
        Some(Value::Object(m)) => Some(prost_struct(m)),
        Some(_) => return Err(invalid("node.metadata must be an object")),
    };
    Ok(Node {
        id: string(n, "id")?,
        cluster: string(n, "cluster")?,
        locality,
        metadata,
        ..Node::default()
    })
}

fn prost_struct(m: &Map<String, Value>) -> envoy_types::pb::google::protobuf::Struct {
    envoy_types::pb::google::protobuf::Struct {
        fields: m.iter().map(|(k, v)| (k.clone(), prost_value(v))).collect(),
    }
}

fn prost_value(v: &Value) -> envoy_types::pb::google::protobuf::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(envoy_types::pb::google::protobuf::ListValue {
            values: a.iter().map(prost_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(prost_struct(o)),
    };
    envoy_types::pb::google::protobuf::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_grpc_bootstrap() {
        let b = Bootstrap::from_json(
            r#"{"xds_servers":[{"server_uri":"dns:///cp.internal:18000",
                 "channel_creds":[{"type":"google_default"},{"type":"insecure"}],
                 "server_features":["xds_v3","ignore_resource_deletion"]}],
                "node":{"id":"c1","cluster":"web","locality":{"zone":"z1"},"metadata":{"team":"a","n":1}}}"#,
        )
        .unwrap();
        assert_eq!(b.endpoint_uri(), "http://cp.internal:18000");
        assert!(b.has_feature("ignore_resource_deletion"));
        assert_eq!(b.node.id, "c1");
        assert_eq!(b.node.locality.as_ref().unwrap().zone, "z1");
        assert_eq!(b.node.metadata.as_ref().unwrap().fields.len(), 2);
    }

    #[test]
    fn rejects_what_grpc_rejects() {
        for bad in [
            "nope",
            "[]",
            r#"{"xds_servers":[]}"#,
            r#"{"xds_servers":[{"server_uri":""}]}"#,
            r#"{"xds_servers":[{"server_uri":"a:1"}]}"#,
            r#"{"xds_servers":[{"server_uri":"a:1","channel_creds":[{"type":"tls"}]}]}"#,
            r#"{"xds_servers":[{"server_uri":"a:1","channel_creds":[{"type":"insecure"}]}],"node":{"id":3}}"#,
        ] {
            assert!(
                matches!(Bootstrap::from_json(bad), Err(BootstrapError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
