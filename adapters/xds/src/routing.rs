//! Routing (gRFC A28): the virtual host for the target's authority, the first route matching a
//! request, the cluster among weighted clusters, and the request hash from `hash_policy`.

use http::HeaderMap;

use crate::resource::{ClusterWeight, HashPolicy, HashSource, Route, VirtualHost};

/// The virtual host for `authority` (grpc-go `FindBestMatchingVirtualHost`): an exact domain
/// beats a `*.suffix` wildcard, which beats a `prefix.*` one, which beats `*`; among the same
/// kind the longest domain wins. Case-insensitive.
pub(crate) fn virtual_host<'a>(hosts: &'a [VirtualHost], authority: &str) -> Option<&'a VirtualHost> {
    let authority = authority.to_ascii_lowercase();
    let mut best: Option<(u8, usize, &VirtualHost)> = None;
    for vh in hosts {
        for d in &vh.domains {
            let kind = if d == "*" {
                Some(1)
            } else if let Some(suffix) = d.strip_prefix('*') {
                (authority.ends_with(suffix) && !suffix.contains('*')).then_some(3)
            } else if let Some(prefix) = d.strip_suffix('*') {
                (authority.starts_with(prefix) && !prefix.contains('*')).then_some(2)
            } else {
                (*d == authority).then_some(4)
            };
            if let Some(kind) = kind {
                if best.is_none_or(|(k, len, _)| (kind, d.len()) > (k, len)) {
                    best = Some((kind, d.len(), vh));
                }
            }
        }
    }
    best.map(|(_, _, vh)| vh)
}

/// The first route matching a request's path and headers; `random` draws `runtime_fraction`.
pub(crate) fn find<'a>(
    routes: &'a [Route],
    path: &str,
    headers: &HeaderMap,
    random: &mut impl FnMut() -> u32,
) -> Option<&'a Route> {
    routes.iter().find(|r| {
        let m = &r.matcher;
        m.path.matches(path)
            && m.headers
                .iter()
                .all(|h| h.matches(header_value(headers, &h.name).as_deref()))
            && m.fraction_per_million.is_none_or(|f| random() % 1_000_000 < f)
    })
}

/// A header's values joined with `,`, as gRPC matches them; `content-type` is always
/// `application/grpc` and binary headers never match (gRFC A28).
fn header_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<std::borrow::Cow<'h, str>> {
    if name.ends_with("-bin") {
        return None;
    }
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    match values.next() {
        None => Some(first.into()),
        Some(second) => {
            let mut s = format!("{first},{second}");
            for v in values {
                s.push(',');
                s.push_str(v);
            }
            Some(s.into())
        }
    }
}

/// A cluster from weighted clusters, drawing `r` in `[0, total)`.
pub(crate) fn pick_cluster(clusters: &[ClusterWeight], r: u64) -> Option<&str> {
    let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut x = r % total;
    for c in clusters {
        let w = u64::from(c.weight);
        if x < w {
            return Some(&c.name);
        }
        x -= w;
    }
    None
}

/// The request hash from a route's hash policies, exactly as grpc-go's `generateHash`
/// (internal/xds/resolver/serviceconfig.go): `hash = rotl(hash, 1) ^ next` for each policy that
/// produced a hash; a `terminal` policy ends the walk once any policy so far produced one (it
/// need not be the terminal one); `-bin` headers are skipped; a header's values are joined with
/// `,` and rewritten by `regex_rewrite` before hashing. `None` when no policy produced a hash
/// (the ring then uses a random hash).
pub(crate) fn request_hash(policies: &[HashPolicy], headers: &HeaderMap, channel_id: u64) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for p in policies {
        let h = match &p.source {
            HashSource::Header { name, rewrite } => header_hash(headers, name, rewrite.as_ref()),
            HashSource::ChannelId => Some(channel_id),
        };
        if let Some(h) = h {
            hash = Some(hash.map_or(h, |prev| prev.rotate_left(1) ^ h));
        }
        if p.terminal && hash.is_some() {
            break;
        }
    }
    hash
}

fn header_hash(headers: &HeaderMap, name: &str, rewrite: Option<&(regex::Regex, String)>) -> Option<u64> {
    if name.ends_with("-bin") {
        return None;
    }
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    match rewrite {
        None => Some(pickwise_tonic::pickwise::hash::xxh64_joined(
            values.map(|v| v.as_bytes()),
        )),
        Some((re, substitution)) => {
            let joined = values
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
                .collect::<Vec<_>>()
                .join(",");
            let rewritten = re.replace_all(&joined, substitution.as_str());
            Some(pickwise_tonic::pickwise::hash::xxh64(rewritten.as_bytes()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vh(domains: &[&str]) -> VirtualHost {
        VirtualHost {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: Vec::new(),
        }
    }

    /// grpc-go `TestFindBestMatchingVirtualHost` facts.
    #[test]
    fn virtual_host_precedence_like_grpc_go() {
        let hosts = [
            vh(&["*"]),
            vh(&["foo.*"]),
            vh(&["*.bar.com"]),
            vh(&["foo.bar.com"]),
            vh(&["*.com"]),
        ];
        let pick = |a: &str| virtual_host(&hosts, a).map(|v| v.domains[0].clone());
        assert_eq!(pick("foo.bar.com").as_deref(), Some("foo.bar.com"));
        assert_eq!(pick("x.bar.com").as_deref(), Some("*.bar.com"));
        assert_eq!(pick("y.com").as_deref(), Some("*.com"));
        assert_eq!(pick("foo.net").as_deref(), Some("foo.*"));
        assert_eq!(pick("other").as_deref(), Some("*"));
        assert_eq!(pick("FOO.BAR.COM").as_deref(), Some("foo.bar.com"));
        assert!(virtual_host(&[vh(&["a"])], "b").is_none());
    }

    /// grpc-go `xdsresource/matcher_test.go` `TestFindBestMatchingVirtualHost`, case for case:
    /// virtual hosts with several domains, hosts matching more than one of them.
    #[test]
    fn grpc_go_find_best_matching_virtual_host() {
        let hosts = [
            vh(&["foo.bar.com"]),                      // oneExactMatch
            vh(&["*.bar.com"]),                        // oneSuffixMatch
            vh(&["foo.bar.*"]),                        // onePrefixMatch
            vh(&["*"]),                                // oneUniversalMatch
            vh(&["v2.foo.bar.com"]),                   // longExactMatch
            vh(&["pi.foo.bar.com", "314.*", "*.159"]), // multipleMatch
        ];
        let cases = [
            ("exact-match", "foo.bar.com", 0),
            ("suffix-match", "123.bar.com", 1),
            ("prefix-match", "foo.bar.org", 2),
            ("universal-match", "abc.123", 3),
            ("long-exact-match", "v2.foo.bar.com", 4),
            // Suffix "*.bar.com" and exact "pi.foo.bar.com": exact wins.
            ("multiple-match-exact", "pi.foo.bar.com", 5),
            // Suffix "*.159" and prefix "foo.bar.*": suffix wins.
            ("multiple-match-suffix", "foo.bar.159", 5),
            // Suffix "*.bar.com" and prefix "314.*": suffix wins.
            ("multiple-match-prefix", "314.bar.com", 1),
        ];
        for (name, host, want) in cases {
            let got = virtual_host(&hosts, host).map(|v| v as *const VirtualHost);
            assert_eq!(got, Some(&hosts[want] as *const VirtualHost), "{name}: {host}");
        }
    }

    #[test]
    fn weighted_clusters_split_by_weight() {
        let cs = [
            ClusterWeight {
                name: "a".into(),
                weight: 3,
            },
            ClusterWeight {
                name: "b".into(),
                weight: 1,
            },
        ];
        let a = (0..4000u64)
            .filter(|r| pick_cluster(&cs, *r) == Some("a"))
            .count();
        assert_eq!(a, 3000);
        assert_eq!(pick_cluster(&[], 7), None);
    }

    /// Hash policies as RDS delivers them (decoded and validated from the proto).
    fn policies(
        hps: Vec<envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy>,
    ) -> Vec<HashPolicy> {
        use envoy_types::pb::envoy::config::route::v3::route::Action;
        let mut rc = crate::control_plane::resources::route_config("rc", "x", "c");
        let Some(Action::Route(ra)) = &mut rc.virtual_hosts[0].routes[0].action else {
            unreachable!("route_config builds a route action")
        };
        ra.hash_policy = hps;
        let any = crate::control_plane::resources::any(&rc);
        match crate::resource::decode(crate::resource::ResourceType::RouteConfiguration, &any) {
            Ok((_, crate::resource::Resource::RouteConfiguration(rc))) => {
                rc.virtual_hosts[0].routes[0].hash_policies.clone()
            }
            other => panic!("route configuration rejected: {other:?}"),
        }
    }

    fn header(
        name: &str,
        terminal: bool,
        rewrite: Option<(&str, &str)>,
    ) -> envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy {
        use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy;
        use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, RegexMatcher};
        envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy {
            policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
                header_name: name.into(),
                regex_rewrite: rewrite.map(|(re, sub)| RegexMatchAndSubstitute {
                    pattern: Some(RegexMatcher {
                        regex: re.into(),
                        ..RegexMatcher::default()
                    }),
                    substitution: sub.into(),
                }),
            })),
            terminal,
        }
    }

    #[test]
    fn hash_policies_combine_like_envoy() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.insert("x-b", "2".parse().unwrap());
        let xa = pickwise_tonic::pickwise::hash::xxh64(b"1");
        let xb = pickwise_tonic::pickwise::hash::xxh64(b"2");
        let hash = |p| request_hash(&policies(p), &h, 0);
        assert_eq!(hash(vec![header("x-a", false, None)]), Some(xa));
        assert_eq!(
            hash(vec![header("x-a", false, None), header("x-b", false, None)]),
            Some(xa.rotate_left(1) ^ xb)
        );
        assert_eq!(
            hash(vec![header("x-a", true, None), header("x-b", false, None)]),
            Some(xa)
        );
        assert_eq!(
            hash(vec![header("x-none", true, None), header("x-b", false, None)]),
            Some(xb)
        );
        assert_eq!(hash(vec![header("x-none", false, None)]), None);
    }

    /// grpc-go `generateHash`: `if policy.Terminal && generatedHash { break }`: a terminal policy
    /// that produced nothing still ends the walk once an earlier policy produced a hash.
    #[test]
    fn terminal_stops_once_any_hash_exists() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.insert("x-b", "2".parse().unwrap());
        let xa = pickwise_tonic::pickwise::hash::xxh64(b"1");
        let p = policies(vec![
            header("x-a", false, None),
            header("x-none", true, None),
            header("x-b", false, None),
        ]);
        assert_eq!(request_hash(&p, &h, 0), Some(xa));
    }

    /// grpc-go skips hash policies on binary (`-bin`) headers.
    #[test]
    fn binary_headers_are_not_hashed() {
        let mut h = HeaderMap::new();
        h.insert("x-key-bin", "AAEC".parse().unwrap());
        assert_eq!(
            request_hash(&policies(vec![header("x-key-bin", false, None)]), &h, 0),
            None
        );
    }

    /// `regex_rewrite` is applied to the joined values before hashing (grpc-go
    /// `ReplaceAllString`).
    #[test]
    fn regex_rewrite_is_applied_before_hashing() {
        let p = policies(vec![header("x-user", false, Some((r"^user-(\d+)-.*$", "$1")))]);
        let hash_of = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-user", v.parse().unwrap());
            request_hash(&p, &h, 0)
        };
        assert_eq!(
            hash_of("user-42-abc"),
            Some(pickwise_tonic::pickwise::hash::xxh64(b"42"))
        );
        assert_eq!(hash_of("user-42-abc"), hash_of("user-42-xyz"));
    }
}
