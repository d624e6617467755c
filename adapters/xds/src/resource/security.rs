//! CDS `transport_socket`: xDS-provided security for connections to a cluster's endpoints
//! (gRFC A29), validated as grpc-go's `securityConfigFromCluster` does
//! (internal/xds/xdsclient/xdsresource/unmarshal_cds.go), with its experimental flags at their
//! defaults (no `system_root_certs`, A82; no SNI, A101; no HTTP CONNECT, A86).
//!
//! What is read: an `envoy.transport_sockets.tls` socket holding an `UpstreamTlsContext`, whose
//! `CommonTlsContext` names certificate provider instances of the bootstrap (gRFC A29's
//! `CertificateProviderPluginInstance`; the deprecated `CertificateProviderInstance` fields too,
//! when the new ones give nothing) for the roots (required) and the identity (optional: mTLS),
//! and `match_subject_alt_names` (string matchers on the server's leaf certificate's SANs).
//! `sni`, `auto_host_sni`, `auto_sni_san_validation`, `allow_renegotiation`,
//! `max_session_keys`, `enforce_rsa_key_usage`, `alpn_protocols`, `trusted_ca`,
//! `watched_directory`, `allow_expired_certificate` and `trust_chain_verification` are ignored,
//! as grpc-go ignores them; the fields grpc-go rejects are NACKed with its reasons. Whether the
//! instance names exist in the bootstrap is checked by the client, which has the bootstrap
//! ([`check_providers`]).

#![allow(deprecated)] // The deprecated `CertificateProviderInstance` fields are read, as grpc-go reads them.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CertificateValidationContext, CommonTlsContext,
    UpstreamTlsContext,
};
use prost::{Message, Name};

use super::route::{string_matcher, HeaderMatch};
use super::Invalid;

/// The transport socket name grpc-go accepts.
const TLS_SOCKET: &str = "envoy.transport_sockets.tls";

/// A cluster's validated security configuration (grpc-go's `SecurityConfig`, client side).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SecurityConfig {
    /// The provider instance (and certificate name) of the roots that verify the server.
    pub root: CertProviderInstance,
    /// The provider instance of the certificate presented to the server (mTLS), if any.
    pub identity: Option<CertProviderInstance>,
    /// At least one SAN of the server's leaf certificate must match one of these (none: any
    /// certificate the roots verify is accepted).
    pub san_matchers: Vec<SanMatcher>,
}

/// A certificate provider instance named by a cluster: a key of the bootstrap's
/// `certificate_providers`, and the certificate name passed to it (`file_watcher` ignores it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertProviderInstance {
    /// `instance_name`.
    pub instance_name: String,
    /// `certificate_name`.
    pub certificate_name: String,
}

/// A `match_subject_alt_names` entry: an Envoy `StringMatcher`, applied as grpc-go applies it
/// to a SAN (`HandshakeInfo.matchSAN`).
#[derive(Clone, Debug, PartialEq)]
pub struct SanMatcher(HeaderMatch);

impl SanMatcher {
    /// Whether `san` matches; `dns`: it is a DNS SAN, which an `exact` pattern matches with
    /// DNS wildcard rules (`*.example.com` in the certificate), case-insensitively, as the xDS
    /// protos say and grpc-go does (`dnsMatch`).
    pub fn matches(&self, san: &str, dns: bool) -> bool {
        let lower = |s: &str, ic: bool| if ic { s.to_lowercase() } else { s.to_owned() };
        match &self.0 {
            HeaderMatch::Exact(p, _) if dns && !p.is_empty() => dns_match(p, san),
            HeaderMatch::Exact(p, ic) => lower(san, *ic) == lower(p, *ic),
            HeaderMatch::Prefix(p, ic) => lower(san, *ic).starts_with(&lower(p, *ic)),
            HeaderMatch::Suffix(p, ic) => lower(san, *ic).ends_with(&lower(p, *ic)),
            HeaderMatch::Contains(p, ic) => lower(san, *ic).contains(&lower(p, *ic)),
            HeaderMatch::Regex(r) => r.is_match(san),
            HeaderMatch::Range(..) | HeaderMatch::Present(_) => false,
        }
    }
}

/// grpc-go's `dnsMatch` (after grpc-java's `OkHostnameVerifier`): `host` is the matcher's
/// pattern, `san` a DNS SAN that may hold a wildcard in its left-most label only, matching one
/// label.
fn dns_match(host: &str, san: &str) -> bool {
    let abs = |s: &str| {
        let s = s.to_lowercase();
        if s.ends_with('.') {
            s
        } else {
            s + "."
        }
    };
    let (host, san) = (abs(host), abs(san));
    if !san.contains('*') {
        return host == san;
    }
    if san == "*." || !san.starts_with("*.") || san[1..].contains('*') {
        return false;
    }
    if host.len() < san.len() {
        return false;
    }
    match host.strip_suffix(&san[1..]) {
        Some(prefix) => !prefix.contains('.'),
        None => false,
    }
}

/// The cluster's security configuration (`None`: plaintext), or why it is NACKed.
pub(super) fn from_cluster(c: &Cluster) -> Result<Option<SecurityConfig>, Invalid> {
    if !c.transport_socket_matches.is_empty() {
        return Err("unsupported transport_socket_matches field is non-empty".into());
    }
    let Some(ts) = &c.transport_socket else {
        return Ok(None);
    };
    if ts.name != TLS_SOCKET {
        return Err(format!(
            "transport_socket field has unexpected name: {:?}",
            ts.name
        ));
    }
    let any = match &ts.config_type {
        Some(ConfigType::TypedConfig(any)) if any.type_url == UpstreamTlsContext::type_url() => any,
        Some(ConfigType::TypedConfig(any)) => {
            return Err(format!(
                "transport_socket missing typed_config or wrong type_url: {:?}",
                any.type_url
            ))
        }
        None => return Err("transport_socket missing typed_config or wrong type_url: \"\"".into()),
    };
    let upstream = UpstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| format!("failed to unmarshal UpstreamTlsContext in CDS response: {e}"))?;
    let common = upstream
        .common_tls_context
        .ok_or("UpstreamTlsContext in CDS response does not contain a CommonTlsContext".to_owned())?;
    from_common(&common).map(Some)
}

/// An instance as grpc-go holds it: two strings, both empty meaning unset (so an instance
/// message with neither set counts as absent, as in grpc-go's `SecurityConfig.Equal`).
fn instance(name: &str, cert: &str) -> Option<CertProviderInstance> {
    (!name.is_empty() || !cert.is_empty()).then(|| CertProviderInstance {
        instance_name: name.to_owned(),
        certificate_name: cert.to_owned(),
    })
}

/// The parts of a security config both ways of writing it fill in.
#[derive(Default, PartialEq)]
struct Partial {
    root: Option<CertProviderInstance>,
    identity: Option<CertProviderInstance>,
    san_matchers: Vec<SanMatcher>,
}

/// grpc-go `securityConfigFromCommonTLSContext` (client side): the new fields first; when they
/// give an error or nothing, the deprecated ones (an error there NACKs with both reasons).
fn from_common(common: &CommonTlsContext) -> Result<SecurityConfig, Invalid> {
    if common.tls_params.is_some() {
        return Err("unsupported tls_params field in CommonTlsContext message".into());
    }
    if common.custom_handshaker.is_some() {
        return Err("unsupported custom_handshaker field in CommonTlsContext message".into());
    }
    let new = new_fields(common);
    let sc = match new {
        Ok(sc) if sc != Partial::default() => sc,
        new => deprecated_fields(common).map_err(|e| match new {
            Err(first) => format!("{first}; failed to parse config using deprecated fields: {e}"),
            Ok(_) => format!("failed to parse config using deprecated fields: {e}"),
        })?,
    };
    let Some(root) = sc.root.filter(|r| !r.instance_name.is_empty()) else {
        return Err(
            "security configuration on the client-side does not contain root certificate provider instance name"
                .into(),
        );
    };
    Ok(SecurityConfig {
        root,
        identity: sc.identity.filter(|i| !i.instance_name.is_empty()),
        san_matchers: sc.san_matchers,
    })
}

fn matchers(v: &CertificateValidationContext) -> Result<Vec<SanMatcher>, Invalid> {
    v.match_subject_alt_names
        .iter()
        .map(|m| string_matcher(m).map(SanMatcher))
        .collect()
}

/// grpc-go `securityConfigFromCommonTLSContextUsingNewFields` (client side, A82 off).
fn new_fields(common: &CommonTlsContext) -> Result<Partial, Invalid> {
    let identity = common.tls_certificate_provider_instance.as_ref();
    if identity.is_none() && !common.tls_certificates.is_empty() {
        return Err("expected field tls_certificate_provider_instance is not set, while unsupported field tls_certificates is set in CommonTlsContext message".into());
    }
    if identity.is_none() && !common.tls_certificate_sds_secret_configs.is_empty() {
        return Err("expected field tls_certificate_provider_instance is not set, while unsupported field tls_certificate_sds_secret_configs is set in CommonTlsContext message".into());
    }
    let mut sc = Partial {
        identity: identity.and_then(|i| instance(&i.instance_name, &i.certificate_name)),
        ..Partial::default()
    };
    let v = match &common.validation_context_type {
        Some(ValidationContextType::ValidationContext(v)) => v,
        Some(ValidationContextType::CombinedValidationContext(c)) => match &c.default_validation_context {
            Some(v) => v,
            // grpc-go reads the missing default context as an empty one.
            None => &CertificateValidationContext::default(),
        },
        None => return Ok(sc),
        Some(_) => return Err("validation context contains unexpected type".into()),
    };
    if !v.verify_certificate_spki.is_empty() {
        return Err("unsupported verify_certificate_spki field in CommonTlsContext message".into());
    }
    if !v.verify_certificate_hash.is_empty() {
        return Err("unsupported verify_certificate_hash field in CommonTlsContext message".into());
    }
    if v.require_signed_certificate_timestamp.is_some_and(|b| b.value) {
        return Err(
            "unsupported require_signed_certificate_timestamp field in CommonTlsContext message".into(),
        );
    }
    if v.crl.is_some() {
        return Err("unsupported crl field in CommonTlsContext message".into());
    }
    if v.custom_validator_config.is_some() {
        return Err("unsupported custom_validator_config field in CommonTlsContext message".into());
    }
    let Some(root) = &v.ca_certificate_provider_instance else {
        return Err(
            "expected field ca_certificate_provider_instance is missing in CommonTlsContext message".into(),
        );
    };
    sc.root = instance(&root.instance_name, &root.certificate_name);
    sc.san_matchers = matchers(v)?;
    Ok(sc)
}

/// grpc-go `securityConfigFromCommonTLSContextWithDeprecatedFields` (client side).
fn deprecated_fields(common: &CommonTlsContext) -> Result<Partial, Invalid> {
    let mut sc = Partial {
        identity: common
            .tls_certificate_certificate_provider_instance
            .as_ref()
            .and_then(|i| instance(&i.instance_name, &i.certificate_name)),
        ..Partial::default()
    };
    match &common.validation_context_type {
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            if let Some(v) = &c.default_validation_context {
                sc.san_matchers = matchers(v)?;
            }
            sc.root = c
                .validation_context_certificate_provider_instance
                .as_ref()
                .and_then(|p| instance(&p.instance_name, &p.certificate_name));
        }
        Some(ValidationContextType::ValidationContextCertificateProviderInstance(p)) => {
            sc.root = instance(&p.instance_name, &p.certificate_name);
        }
        None => {}
        Some(_) => return Err("validation context contains unexpected type".into()),
    }
    Ok(sc)
}

/// grpc-go `securityConfigValidator`: the instances a cluster names must be in the bootstrap's
/// `certificate_providers` (pickwise keeps only `file_watcher` instances there, the one plugin
/// it has, as grpc-go keeps only registered plugins).
pub(crate) fn check_providers<V>(
    sc: &SecurityConfig,
    providers: &BTreeMap<String, V>,
) -> Result<(), Invalid> {
    if let Some(i) = &sc.identity {
        if !providers.contains_key(&i.instance_name) {
            return Err(format!(
                "identity certificate provider instance name {:?} missing in bootstrap configuration",
                i.instance_name
            ));
        }
    }
    if !providers.contains_key(&sc.root.instance_name) {
        return Err(format!(
            "root certificate provider instance name {:?} missing in bootstrap configuration",
            sc.root.instance_name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
    use envoy_types::pb::envoy::config::core::v3::{TransportSocket, TypedExtensionConfig};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        common_tls_context::{CertificateProviderInstance, CombinedCertificateValidationContext},
        CertificateProviderPluginInstance, SdsSecretConfig, TlsCertificate, TlsParameters,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        string_matcher::MatchPattern, RegexMatcher, StringMatcher,
    };
    use envoy_types::pb::google::protobuf::{Any, BoolValue};

    fn plugin(name: &str, cert: &str) -> CertificateProviderPluginInstance {
        CertificateProviderPluginInstance {
            instance_name: name.into(),
            certificate_name: cert.into(),
        }
    }

    fn old(name: &str, cert: &str) -> CertificateProviderInstance {
        CertificateProviderInstance {
            instance_name: name.into(),
            certificate_name: cert.into(),
        }
    }

    fn inst(name: &str, cert: &str) -> CertProviderInstance {
        CertProviderInstance {
            instance_name: name.into(),
            certificate_name: cert.into(),
        }
    }

    fn cluster_with(ts: Option<TransportSocket>) -> Cluster {
        Cluster {
            name: "c".into(),
            transport_socket: ts,
            ..Cluster::default()
        }
    }

    fn tls(common: Option<CommonTlsContext>) -> Cluster {
        let ctx = UpstreamTlsContext {
            common_tls_context: common,
            ..UpstreamTlsContext::default()
        };
        cluster_with(Some(TransportSocket {
            name: TLS_SOCKET.into(),
            config_type: Some(ConfigType::TypedConfig(Any {
                type_url: UpstreamTlsContext::type_url(),
                value: ctx.encode_to_vec(),
            })),
        }))
    }

    fn sm(p: MatchPattern, ignore_case: bool) -> StringMatcher {
        StringMatcher {
            match_pattern: Some(p),
            ignore_case,
        }
    }

    fn validation(v: CertificateValidationContext) -> Option<ValidationContextType> {
        Some(ValidationContextType::ValidationContext(v))
    }

    fn err(c: &Cluster) -> String {
        from_cluster(c).unwrap_err()
    }

    // grpc-go unmarshal_cds_test.go `TestValidateClusterWithSecurityConfig`: the NACK cases.
    #[test]
    fn nacks_what_grpc_go_nacks() {
        let mut c = cluster_with(None);
        c.transport_socket_matches = vec![TransportSocketMatch {
            name: "m".into(),
            ..TransportSocketMatch::default()
        }];
        assert!(err(&c).contains("transport_socket_matches"));

        let mut c = tls(Some(CommonTlsContext::default()));
        c.transport_socket.as_mut().unwrap().name = "unsupported-foo".into();
        assert!(err(&c).contains("unexpected name"));

        let mut c = tls(Some(CommonTlsContext::default()));
        c.transport_socket.as_mut().unwrap().config_type = Some(ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager".into(),
            value: vec![],
        }));
        assert!(err(&c).contains("wrong type_url"));
        c.transport_socket.as_mut().unwrap().config_type = None;
        assert!(err(&c).contains("wrong type_url"));

        let mut c = tls(Some(CommonTlsContext::default()));
        c.transport_socket.as_mut().unwrap().config_type = Some(ConfigType::TypedConfig(Any {
            type_url: UpstreamTlsContext::type_url(),
            value: vec![1, 2, 3, 4],
        }));
        assert!(err(&c).contains("failed to unmarshal"));

        assert!(err(&tls(None)).contains("does not contain a CommonTlsContext"));

        let with = |common: CommonTlsContext| err(&tls(Some(common)));
        assert!(with(CommonTlsContext {
            tls_params: Some(TlsParameters::default()),
            ..CommonTlsContext::default()
        })
        .contains("unsupported tls_params"));
        assert!(with(CommonTlsContext {
            custom_handshaker: Some(TypedExtensionConfig::default()),
            ..CommonTlsContext::default()
        })
        .contains("unsupported custom_handshaker"));
        // No validation context at all: no roots.
        assert!(with(CommonTlsContext::default())
            .contains("does not contain root certificate provider instance name"));
        // Identity only: still no roots (client side).
        assert!(with(CommonTlsContext {
            tls_certificate_provider_instance: Some(plugin("id", "")),
            ..CommonTlsContext::default()
        })
        .contains("root certificate provider"));
        assert!(with(CommonTlsContext {
            tls_certificates: vec![TlsCertificate::default()],
            validation_context_type: validation(CertificateValidationContext {
                ca_certificate_provider_instance: Some(plugin("root", "")),
                ..CertificateValidationContext::default()
            }),
            ..CommonTlsContext::default()
        })
        .contains("unsupported field tls_certificates"));
        assert!(with(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig::default()],
            validation_context_type: validation(CertificateValidationContext {
                ca_certificate_provider_instance: Some(plugin("root", "")),
                ..CertificateValidationContext::default()
            }),
            ..CommonTlsContext::default()
        })
        .contains("unsupported field tls_certificate_sds_secret_configs"));
        assert!(with(CommonTlsContext {
            validation_context_type: Some(ValidationContextType::ValidationContextSdsSecretConfig(
                SdsSecretConfig {
                    name: "foo-sds-secret".into(),
                    sds_config: None,
                }
            )),
            ..CommonTlsContext::default()
        })
        .contains("validation context contains unexpected type"));
        assert!(with(CommonTlsContext {
            validation_context_type: validation(CertificateValidationContext::default()),
            ..CommonTlsContext::default()
        })
        .contains("expected field ca_certificate_provider_instance is missing"));
        let unsupported: [(&str, CertificateValidationContext); 5] = [
            (
                "verify_certificate_spki",
                CertificateValidationContext {
                    verify_certificate_spki: vec!["spki".into()],
                    ..CertificateValidationContext::default()
                },
            ),
            (
                "verify_certificate_hash",
                CertificateValidationContext {
                    verify_certificate_hash: vec!["hash".into()],
                    ..CertificateValidationContext::default()
                },
            ),
            (
                "require_signed_certificate_timestamp",
                CertificateValidationContext {
                    require_signed_certificate_timestamp: Some(BoolValue { value: true }),
                    ..CertificateValidationContext::default()
                },
            ),
            (
                "crl",
                CertificateValidationContext {
                    crl: Some(Default::default()),
                    ..CertificateValidationContext::default()
                },
            ),
            (
                "custom_validator_config",
                CertificateValidationContext {
                    custom_validator_config: Some(TypedExtensionConfig::default()),
                    ..CertificateValidationContext::default()
                },
            ),
        ];
        for (field, mut v) in unsupported {
            v.ca_certificate_provider_instance = Some(plugin("root", ""));
            let e = with(CommonTlsContext {
                validation_context_type: validation(v),
                ..CommonTlsContext::default()
            });
            assert!(e.contains(&format!("unsupported {field} field")), "{field}: {e}");
        }
        // Matchers as grpc-go's StringMatcherFromProto: empty prefix, suffix, contains; a
        // regex that does not compile. Through the new fields and the deprecated ones.
        for bad in [
            sm(MatchPattern::Prefix(String::new()), false),
            sm(MatchPattern::Suffix(String::new()), false),
            sm(MatchPattern::Contains(String::new()), false),
            sm(
                MatchPattern::SafeRegex(RegexMatcher {
                    regex: "??".into(),
                    ..RegexMatcher::default()
                }),
                false,
            ),
        ] {
            let v = CertificateValidationContext {
                match_subject_alt_names: vec![bad.clone()],
                ca_certificate_provider_instance: Some(plugin("root", "")),
                ..CertificateValidationContext::default()
            };
            assert!(from_common(&CommonTlsContext {
                validation_context_type: validation(v),
                ..CommonTlsContext::default()
            })
            .is_err());
            let combined = CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_subject_alt_names: vec![bad],
                    ..CertificateValidationContext::default()
                }),
                validation_context_certificate_provider_instance: Some(old("root", "")),
                ..CombinedCertificateValidationContext::default()
            };
            assert!(from_common(&CommonTlsContext {
                validation_context_type: Some(ValidationContextType::CombinedValidationContext(combined)),
                ..CommonTlsContext::default()
            })
            .is_err());
        }
    }

    fn all_matchers() -> Vec<StringMatcher> {
        vec![
            sm(MatchPattern::Exact("san-exact".into()), true),
            sm(MatchPattern::Prefix("san-prefix".into()), false),
            sm(MatchPattern::Suffix("san-suffix".into()), false),
            sm(
                MatchPattern::SafeRegex(RegexMatcher {
                    regex: "san-regex-?".into(),
                    ..RegexMatcher::default()
                }),
                false,
            ),
            sm(MatchPattern::Contains("san-contains".into()), false),
        ]
    }

    // grpc-go's happy cases: new fields, deprecated fields, combined validation context.
    #[test]
    fn reads_new_and_deprecated_fields() {
        let want = |identity: Option<CertProviderInstance>, n: usize| SecurityConfig {
            root: inst("rootPluginInstance", "rootCertName"),
            identity,
            san_matchers: all_matchers()
                .iter()
                .take(n)
                .map(|m| SanMatcher(string_matcher(m).unwrap()))
                .collect(),
        };
        let id = Some(inst("identityPluginInstance", "identityCertName"));
        // validation_context_certificate_provider_instance (deprecated), no identity.
        let c = tls(Some(CommonTlsContext {
            validation_context_type: Some(
                ValidationContextType::ValidationContextCertificateProviderInstance(old(
                    "rootPluginInstance",
                    "rootCertName",
                )),
            ),
            ..CommonTlsContext::default()
        }));
        assert_eq!(from_cluster(&c).unwrap(), Some(want(None, 0)));
        // validation_context.ca_certificate_provider_instance (new), with identity.
        let c = tls(Some(CommonTlsContext {
            tls_certificate_provider_instance: Some(plugin("identityPluginInstance", "identityCertName")),
            validation_context_type: validation(CertificateValidationContext {
                ca_certificate_provider_instance: Some(plugin("rootPluginInstance", "rootCertName")),
                ..CertificateValidationContext::default()
            }),
            ..CommonTlsContext::default()
        }));
        assert_eq!(from_cluster(&c).unwrap(), Some(want(id.clone(), 0)));
        // Combined, deprecated fields.
        let c = tls(Some(CommonTlsContext {
            tls_certificate_certificate_provider_instance: Some(old(
                "identityPluginInstance",
                "identityCertName",
            )),
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_subject_alt_names: all_matchers(),
                        ..CertificateValidationContext::default()
                    }),
                    validation_context_certificate_provider_instance: Some(old(
                        "rootPluginInstance",
                        "rootCertName",
                    )),
                    ..CombinedCertificateValidationContext::default()
                },
            )),
            ..CommonTlsContext::default()
        }));
        assert_eq!(from_cluster(&c).unwrap(), Some(want(id.clone(), 5)));
        // Combined, new fields.
        let c = tls(Some(CommonTlsContext {
            tls_certificate_provider_instance: Some(plugin("identityPluginInstance", "identityCertName")),
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_subject_alt_names: all_matchers(),
                        ca_certificate_provider_instance: Some(plugin("rootPluginInstance", "rootCertName")),
                        ..CertificateValidationContext::default()
                    }),
                    ..CombinedCertificateValidationContext::default()
                },
            )),
            ..CommonTlsContext::default()
        }));
        assert_eq!(from_cluster(&c).unwrap(), Some(want(id, 5)));
        // An empty new-field instance counts as unset, so the deprecated fields are read.
        let c = tls(Some(CommonTlsContext {
            tls_certificate_provider_instance: Some(plugin("", "")),
            validation_context_type: Some(
                ValidationContextType::ValidationContextCertificateProviderInstance(old(
                    "rootPluginInstance",
                    "rootCertName",
                )),
            ),
            ..CommonTlsContext::default()
        }));
        assert_eq!(from_cluster(&c).unwrap(), Some(want(None, 0)));
        // No transport socket: plaintext.
        assert_eq!(from_cluster(&cluster_with(None)).unwrap(), None);
    }

    #[test]
    fn instance_names_must_be_in_the_bootstrap() {
        let sc = SecurityConfig {
            root: inst("root", ""),
            identity: Some(inst("id", "")),
            san_matchers: vec![],
        };
        let providers: BTreeMap<String, ()> = [("root".to_owned(), ())].into();
        let e = check_providers(&sc, &providers).unwrap_err();
        assert!(
            e.contains("identity certificate provider instance name \"id\" missing"),
            "{e}"
        );
        let providers: BTreeMap<String, ()> = [("id".to_owned(), ())].into();
        let e = check_providers(&sc, &providers).unwrap_err();
        assert!(
            e.contains("root certificate provider instance name \"root\" missing"),
            "{e}"
        );
        let providers: BTreeMap<String, ()> = [("id".to_owned(), ()), ("root".to_owned(), ())].into();
        assert!(check_providers(&sc, &providers).is_ok());
    }

    // grpc-go handshake_info_test.go `TestMatchingSANExists_*` and `TestDNSMatch`, as facts.
    #[test]
    fn san_matching_as_grpc_go() {
        let m = |p: MatchPattern, ic: bool| SanMatcher(string_matcher(&sm(p, ic)).unwrap());
        let exact = |s: &str, ic| m(MatchPattern::Exact(s.into()), ic);
        // DNS wildcards in the certificate, for exact patterns only.
        assert!(exact("foo.example.com", false).matches("*.example.com", true));
        assert!(!exact("foo.example.com", false).matches("*.example.com", false));
        assert!(!exact("sub.foo.example.com", false).matches("*.example.com", true));
        assert!(exact("FOO.example.com", false).matches("foo.EXAMPLE.com.", true));
        assert!(!exact("foo.example.com", false).matches("f*.example.com", true));
        assert!(!exact("foo.example.com", false).matches("*.*.com", true));
        assert!(!exact("foo", false).matches("*.", true));
        assert!(!exact("example.com", false).matches("*.example.com", true));
        // Case: ignore_case lowers both sides; otherwise exact bytes (non-DNS SANs).
        assert!(exact("spiffe://TD/ns/a", true).matches("spiffe://td/NS/a", false));
        assert!(!exact("spiffe://TD/ns/a", false).matches("spiffe://td/ns/a", false));
        assert!(m(MatchPattern::Prefix("spiffe://td/".into()), false).matches("spiffe://td/ns/a", false));
        assert!(m(MatchPattern::Suffix("/ns/A".into()), true).matches("spiffe://td/ns/a", false));
        assert!(m(MatchPattern::Contains("/ns/".into()), false).matches("spiffe://td/ns/a", false));
        let re = m(
            MatchPattern::SafeRegex(RegexMatcher {
                regex: "spiffe://td/ns/[a-z]+".into(),
                ..RegexMatcher::default()
            }),
            true,
        );
        assert!(re.matches("spiffe://td/ns/abc", false));
        // Full match, and ignore_case does not apply to regexes.
        assert!(!re.matches("spiffe://td/ns/ABC", false));
        assert!(!re.matches("x-spiffe://td/ns/abc", false));
        assert!(exact("192.168.1.1", false).matches("192.168.1.1", false));
    }
}
