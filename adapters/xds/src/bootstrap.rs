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
//! `server_features` honoured: `ignore_resource_deletion` (gRFC A53: a listener or cluster
//! missing from a response is kept).
//!
//! # Credentials and certificate providers
//!
//! `channel_creds` is a list; the first type pickwise supports wins, as in gRPC: `insecure`,
//! and `tls` (gRFC A65) with the crate's `tls` feature. A `tls` entry's `config` holds
//! `ca_certificate_file`, `certificate_file`, `private_key_file` and `refresh_interval`, read
//! as grpc-go's `file_watcher` plugin reads them (`credentials/tls/certprovider/pemfile`): the
//! key and certificate come together and from one directory, `refresh_interval` is a protobuf
//! JSON duration (`"600s"`, the default 10 minutes), and the files are read again at that
//! interval, a change applying to the next handshake. Without any file, the platform's roots
//! verify the server and no client certificate is sent.
//!
//! ```json
//! {"server_uri": "unix:///etc/istio/proxy/XDS", "channel_creds": [{"type": "insecure"}]}
//! {"server_uri": "cp.internal:443", "channel_creds": [{"type": "tls", "config": {
//!    "ca_certificate_file": "/certs/ca.pem", "certificate_file": "/certs/cert.pem",
//!    "private_key_file": "/certs/key.pem", "refresh_interval": "60s"}}]}
//! ```
//!
//! `certificate_providers` (gRFC A29) maps instance names to `{"plugin_name", "config"}`;
//! `file_watcher` configs are validated as above (and must name at least one file), other
//! plugins are ignored as grpc-go ignores them. Clusters' `UpstreamTlsContext`s name these
//! instances for TLS to the endpoints (feature `tls`); a name missing here NACKs the cluster. `server_listener_resource_name_template` must
//! be a string; [`Bootstrap::server_listener_resource_name`] fills it in as grpc-go's xDS server
//! does.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// The credentials to the control plane: the first supported entry of `channel_creds`.
    pub channel_creds: ChannelCreds,
    /// `certificate_providers` (gRFC A29): `file_watcher` instances by name (instances of
    /// other plugins are ignored, as in grpc-go).
    pub certificate_providers: BTreeMap<String, FileWatcherConfig>,
    /// `server_listener_resource_name_template`, if set.
    pub server_listener_resource_name_template: Option<String>,
    /// The names in `authorities` (gRFC A47; federation itself is not supported), for the
    /// template check of `xdstp:` names.
    pub authorities: Vec<String>,
}

/// Credentials to the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelCreds {
    /// Plaintext HTTP/2.
    Insecure,
    /// TLS (gRFC A65); files as the `file_watcher` plugin reads them (all of them optional).
    Tls(FileWatcherConfig),
}

/// The config of a `file_watcher` certificate provider (grpc-go `pemfile`), also the `config`
/// of `tls` channel creds (gRFC A65).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileWatcherConfig {
    /// `certificate_file`: the PEM certificate chain presented to the peer.
    pub certificate_file: Option<PathBuf>,
    /// `private_key_file`: its PEM private key.
    pub private_key_file: Option<PathBuf>,
    /// `ca_certificate_file`: PEM roots that verify the peer.
    pub ca_certificate_file: Option<PathBuf>,
    /// `refresh_interval`: how often the files are read again (default 10 minutes; `0s`
    /// means grpc-go's provider default, 1 hour).
    pub refresh_interval: Duration,
}

/// `refresh_interval` when the config has none (grpc-go `pemfile.defaultRefreshInterval`).
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(600);

impl Default for FileWatcherConfig {
    fn default() -> Self {
        Self {
            certificate_file: None,
            private_key_file: None,
            ca_certificate_file: None,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
        }
    }
}

impl FileWatcherConfig {
    /// Whether no file is named (`tls` creds then use the platform's roots).
    pub fn is_empty(&self) -> bool {
        self.certificate_file.is_none()
            && self.private_key_file.is_none()
            && self.ca_certificate_file.is_none()
    }

    /// The interval the files are re-read at (`0s` is grpc-go's provider default, 1 hour).
    pub fn effective_refresh_interval(&self) -> Duration {
        if self.refresh_interval.is_zero() {
            Duration::from_secs(3600)
        } else {
            self.refresh_interval
        }
    }

    /// Parses a config object as grpc-go's `pemfile.pluginConfigFromJSON` (absent: empty);
    /// `at_least_one_file` as its `validate` (`tls` creds skip that check when every file is
    /// absent).
    fn from_json(v: Option<&Value>, what: &str, at_least_one_file: bool) -> Result<Self, BootstrapError> {
        let mut c = Self::default();
        let o = match v {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) => Some(o),
            Some(_) => return Err(invalid(format!("{what}: config must be an object"))),
        };
        if let Some(o) = o {
            let file = |key: &str| -> Result<Option<PathBuf>, BootstrapError> {
                match o.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) if s.is_empty() => Ok(None),
                    Some(Value::String(s)) => Ok(Some(PathBuf::from(s))),
                    Some(_) => Err(invalid(format!("{what}: {key} must be a string"))),
                }
            };
            c.certificate_file = file("certificate_file")?;
            c.private_key_file = file("private_key_file")?;
            c.ca_certificate_file = file("ca_certificate_file")?;
            if let Some(d) = o.get("refresh_interval") {
                c.refresh_interval = d.as_str().and_then(proto_duration).ok_or_else(|| {
                    invalid(format!(
                        "{what}: refresh_interval must be a duration like \"600s\", got {d}"
                    ))
                })?;
            }
        }
        if c.is_empty() && !at_least_one_file {
            return Ok(c);
        }
        if c.is_empty() {
            return Err(invalid(format!(
                "{what}: at least one credential file needs to be specified"
            )));
        }
        if c.certificate_file.is_some() != c.private_key_file.is_some() {
            return Err(invalid(format!(
                "{what}: private key file and identity cert file should be both specified or not specified"
            )));
        }
        let dir = |p: &Option<PathBuf>| {
            p.as_deref()
                .map(|p| p.parent().unwrap_or(Path::new("")).to_owned())
        };
        if dir(&c.certificate_file) != dir(&c.private_key_file) {
            return Err(invalid(format!(
                "{what}: certificate and key file must be in the same directory"
            )));
        }
        Ok(c)
    }
}

/// A protobuf JSON `Duration` (`"1.5s"`, `"600s"`); negative ones are refused.
fn proto_duration(s: &str) -> Option<Duration> {
    let n = s.strip_suffix('s')?;
    let (secs, frac) = n.split_once('.').unwrap_or((n, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (n.contains('.') && frac.is_empty()) {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(Duration::new(secs.parse().ok()?, nanos))
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
        let mut channel_creds = None;
        let mut types = Vec::new();
        for c in creds {
            let t = c.get("type").and_then(Value::as_str).unwrap_or_default();
            types.push(t);
            match t {
                "insecure" => channel_creds = Some(ChannelCreds::Insecure),
                "tls" if cfg!(feature = "tls") => {
                    channel_creds = Some(ChannelCreds::Tls(FileWatcherConfig::from_json(
                        c.get("config"),
                        "channel_creds tls",
                        false,
                    )?))
                }
                _ => continue,
            }
            break;
        }
        let Some(channel_creds) = channel_creds else {
            let supported = if cfg!(feature = "tls") {
                "\"insecure\" and \"tls\""
            } else {
                "\"insecure\" (and \"tls\" with its `tls` feature)"
            };
            return Err(invalid(format!(
                "no supported channel_creds type in {types:?} (pickwise-xds supports {supported})"
            )));
        };
        let mut certificate_providers = BTreeMap::new();
        match root.get("certificate_providers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (name, p) in m {
                    let what = format!("certificate_providers.{name}");
                    let plugin = p
                        .get("plugin_name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| invalid(format!("{what}.plugin_name must be a string")))?;
                    if plugin == "file_watcher" {
                        let c = FileWatcherConfig::from_json(p.get("config"), &what, true)?;
                        certificate_providers.insert(name.clone(), c);
                    }
                }
            }
            Some(_) => return Err(invalid("certificate_providers must be an object")),
        }
        let server_listener_resource_name_template = match root.get("server_listener_resource_name_template")
        {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) if t.is_empty() => None,
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => return Err(invalid("server_listener_resource_name_template must be a string")),
        };
        let authorities = match root.get("authorities") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => m.keys().cloned().collect(),
            Some(_) => return Err(invalid("authorities must be an object")),
        };
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
            channel_creds,
            certificate_providers,
            server_listener_resource_name_template,
            authorities,
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

    /// The Listener name an xDS server listening on `addr` (`host:port`) asks for, as grpc-go
    /// builds it (`xds/server.go`, `bootstrap.PopulateResourceTemplate`): every `%s` replaced by
    /// `addr`, percent-encoded (but for `/`) in an `xdstp:` template, whose authority must be
    /// in `authorities`. Errors as grpc-go does when the template is missing.
    pub fn server_listener_resource_name(&self, addr: &str) -> Result<String, BootstrapError> {
        let Some(t) = &self.server_listener_resource_name_template else {
            return Err(invalid(
                "missing server_listener_resource_name_template in the bootstrap configuration",
            ));
        };
        if let Some(rest) = t.strip_prefix("xdstp://") {
            let authority = rest.split('/').next().unwrap_or_default();
            if !self.authorities.iter().any(|a| a == authority) {
                return Err(invalid(format!(
                    "server_listener_resource_name_template {t:?}: authority {authority:?} not in authorities"
                )));
            }
        }
        if !t.contains("%s") {
            return Ok(t.clone());
        }
        let addr = if t.starts_with("xdstp:") {
            addr.split('/').map(path_escape).collect::<Vec<_>>().join("/")
        } else {
            addr.to_owned()
        };
        Ok(t.replace("%s", &addr))
    }

    /// The control plane's URI for tonic (`http://host:port`, or `unix:///path` as written;
    /// with TLS creds pickwise's connector does TLS, and requests say `https`).
    pub(crate) fn endpoint_uri(&self) -> String {
        let s = self.server_uri.as_str();
        let s = s.strip_prefix("dns:///").unwrap_or(s);
        if s.contains("://") || s.starts_with("unix:") {
            s.to_owned()
        } else {
            format!("http://{s}")
        }
    }
}

/// Go's `url.PathEscape`: everything but unreserved characters and `$&+:=@` escaped.
fn path_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+:=@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
            r#"{"xds_servers":[{"server_uri":"a:1","channel_creds":[{"type":"google_default"}]}]}"#,
            r#"{"xds_servers":[{"server_uri":"a:1","channel_creds":[{"type":"insecure"}]}],"node":{"id":3}}"#,
        ] {
            assert!(
                matches!(Bootstrap::from_json(bad), Err(BootstrapError::Invalid(_))),
                "{bad}"
            );
        }
    }

    fn with(extra: &str, creds: &str) -> Result<Bootstrap, BootstrapError> {
        Bootstrap::from_json(&format!(
            r#"{{"xds_servers":[{{"server_uri":"a:1","channel_creds":[{creds}]}}]{extra}}}"#
        ))
    }

    #[test]
    fn insecure_wins_when_first_supported() {
        let b = with(
            "",
            r#"{"type":"google_default"},{"type":"insecure"},{"type":"tls"}"#,
        )
        .unwrap();
        assert_eq!(b.channel_creds, ChannelCreds::Insecure);
        assert!(b.certificate_providers.is_empty());
        assert_eq!(b.server_listener_resource_name_template, None);
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_channel_creds_as_grpc_go_reads_them() {
        let b = with(
            "",
            r#"{"type":"tls","config":{"ca_certificate_file":"/c/ca.pem","certificate_file":"/c/cert.pem",
                "private_key_file":"/c/key.pem","refresh_interval":"1.5s","unknown":1}},{"type":"insecure"}"#,
        )
        .unwrap();
        assert_eq!(
            b.channel_creds,
            ChannelCreds::Tls(FileWatcherConfig {
                certificate_file: Some("/c/cert.pem".into()),
                private_key_file: Some("/c/key.pem".into()),
                ca_certificate_file: Some("/c/ca.pem".into()),
                refresh_interval: Duration::from_millis(1500),
            })
        );
        assert_eq!(b.endpoint_uri(), "http://a:1");
        // No config, or an empty one: the platform's roots, default interval.
        for creds in [r#"{"type":"tls"}"#, r#"{"type":"tls","config":{}}"#] {
            let b = with("", creds).unwrap();
            assert_eq!(b.channel_creds, ChannelCreds::Tls(FileWatcherConfig::default()));
            assert_eq!(DEFAULT_REFRESH_INTERVAL, Duration::from_secs(600));
        }
        // Only roots is fine; a key without its certificate, or in another directory, is not.
        assert!(with("", r#"{"type":"tls","config":{"ca_certificate_file":"/ca.pem"}}"#).is_ok());
        for bad in [
            r#"{"type":"tls","config":{"private_key_file":"/c/key.pem"}}"#,
            r#"{"type":"tls","config":{"certificate_file":"/c/cert.pem"}}"#,
            r#"{"type":"tls","config":{"certificate_file":"/a/cert.pem","private_key_file":"/b/key.pem"}}"#,
            r#"{"type":"tls","config":{"ca_certificate_file":7}}"#,
            r#"{"type":"tls","config":{"ca_certificate_file":"/ca.pem","refresh_interval":"10"}}"#,
            r#"{"type":"tls","config":{"ca_certificate_file":"/ca.pem","refresh_interval":"-1s"}}"#,
            r#"{"type":"tls","config":{"ca_certificate_file":"/ca.pem","refresh_interval":60}}"#,
            r#"{"type":"tls","config":"x"}"#,
        ] {
            assert!(matches!(with("", bad), Err(BootstrapError::Invalid(_))), "{bad}");
        }
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_needs_the_feature() {
        let e = with("", r#"{"type":"tls"}"#).unwrap_err();
        assert!(e.to_string().contains("`tls` feature"), "{e}");
        assert_eq!(
            with("", r#"{"type":"tls"},{"type":"insecure"}"#)
                .unwrap()
                .channel_creds,
            ChannelCreds::Insecure
        );
    }

    #[test]
    fn durations_as_protobuf_json() {
        assert_eq!(proto_duration("600s"), Some(Duration::from_secs(600)));
        assert_eq!(proto_duration("0.000000001s"), Some(Duration::from_nanos(1)));
        assert_eq!(proto_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "s", "1", "1.s", ".5s", "1.0000000001s", "-1s", "1m", "1 s"] {
            assert_eq!(proto_duration(bad), None, "{bad}");
        }
        let zero = FileWatcherConfig {
            refresh_interval: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(zero.effective_refresh_interval(), Duration::from_secs(3600));
    }

    #[test]
    fn certificate_providers_file_watcher_validated_others_ignored() {
        let b = with(
            r#","certificate_providers":{
                "fw":{"plugin_name":"file_watcher","config":{"certificate_file":"/c/cert.pem","private_key_file":"/c/key.pem","refresh_interval":"60s"}},
                "ca":{"plugin_name":"file_watcher","config":{"ca_certificate_file":"/c/ca.pem"}},
                "mesh":{"plugin_name":"meshca","config":{"anything":[1,2]}}}"#,
            r#"{"type":"insecure"}"#,
        )
        .unwrap();
        assert_eq!(b.certificate_providers.keys().collect::<Vec<_>>(), ["ca", "fw"]);
        assert_eq!(
            b.certificate_providers["fw"].refresh_interval,
            Duration::from_secs(60)
        );
        assert_eq!(
            b.certificate_providers["ca"].refresh_interval,
            DEFAULT_REFRESH_INTERVAL
        );
        for bad in [
            r#","certificate_providers":[]"#,
            r#","certificate_providers":{"fw":{"config":{}}}"#,
            // A file_watcher instance must name a file (tls creds need not).
            r#","certificate_providers":{"fw":{"plugin_name":"file_watcher","config":{}}}"#,
            r#","certificate_providers":{"fw":{"plugin_name":"file_watcher"}}"#,
            r#","certificate_providers":{"fw":{"plugin_name":"file_watcher","config":{"private_key_file":"/k.pem"}}}"#,
        ] {
            assert!(
                matches!(
                    with(bad, r#"{"type":"insecure"}"#),
                    Err(BootstrapError::Invalid(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn server_listener_resource_name_template_as_grpc_go() {
        let insecure = r#"{"type":"insecure"}"#;
        let b = with(
            r#","server_listener_resource_name_template":"grpc/server?xds.resource.listening_address=%s""#,
            insecure,
        )
        .unwrap();
        assert_eq!(
            b.server_listener_resource_name("0.0.0.0:8080").unwrap(),
            "grpc/server?xds.resource.listening_address=0.0.0.0:8080"
        );
        // grpc-go template_test.go: xdstp names percent-encode the address (but for `/`).
        let b = with(
            r#","server_listener_resource_name_template":"xdstp://auth/envoy.config.listener.v3.Listener/%s","authorities":{"auth":{}}"#,
            insecure,
        )
        .unwrap();
        assert_eq!(
            b.server_listener_resource_name("[::1]:8080").unwrap(),
            "xdstp://auth/envoy.config.listener.v3.Listener/%5B::1%5D:8080"
        );
        assert_eq!(
            b.server_listener_resource_name("a b/c;d").unwrap(),
            "xdstp://auth/envoy.config.listener.v3.Listener/a%20b/c%3Bd"
        );
        // No `%s`: the template is the name.
        let b = with(r#","server_listener_resource_name_template":"fixed""#, insecure).unwrap();
        assert_eq!(b.server_listener_resource_name("x:1").unwrap(), "fixed");
        // Missing (grpc-go: an xDS server cannot start), or an authority not listed.
        assert!(with("", insecure)
            .unwrap()
            .server_listener_resource_name("x:1")
            .is_err());
        let b = with(
            r#","server_listener_resource_name_template":"xdstp://other/%s""#,
            insecure,
        )
        .unwrap();
        assert!(b.server_listener_resource_name("x:1").is_err());
        assert!(matches!(
            with(r#","server_listener_resource_name_template":3"#, insecure),
            Err(BootstrapError::Invalid(_))
        ));
    }

    #[test]
    fn unix_server_uri_as_istio_agent_writes_it() {
        let b = Bootstrap::from_json(
            r#"{"xds_servers":[{"server_uri":"unix:///etc/istio/proxy/XDS","channel_creds":[{"type":"insecure"}],
                "server_features":["xds_v3"]}],"node":{"id":"sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local"}}"#,
        )
        .unwrap();
        assert_eq!(b.endpoint_uri(), "unix:///etc/istio/proxy/XDS");
    }
}
