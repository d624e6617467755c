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

/// The request hash from a route's hash policies, combined as Envoy and gRPC do
/// (`hash = rotl(hash, 1) ^ next`; a terminal policy that produced a hash ends the walk).
/// `None` when no policy produced one (the ring then uses a random hash).
pub(crate) fn request_hash(policies: &[HashPolicy], headers: &HeaderMap, channel_id: u64) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for p in policies {
        let h = match &p.source {
            HashSource::Header(name) => {
                let mut values = headers.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    None
                } else {
                    Some(pickwise_tonic::pickwise::hash::xxh64_joined(
                        values.map(|v| v.as_bytes()),
                    ))
                }
            }
            HashSource::ChannelId => Some(channel_id),
        };
        if let Some(h) = h {
            hash = Some(hash.map_or(h, |prev| prev.rotate_left(1) ^ h));
            if p.terminal {
                break;
            }
        }
    }
    hash
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

    #[test]
    fn hash_policies_combine_like_envoy() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.insert("x-b", "2".parse().unwrap());
        let p = |name: &'static str, terminal| HashPolicy {
            source: HashSource::Header(http::HeaderName::from_static(name)),
            terminal,
        };
        let xa = pickwise_tonic::pickwise::hash::xxh64(b"1");
        let xb = pickwise_tonic::pickwise::hash::xxh64(b"2");
        assert_eq!(request_hash(&[p("x-a", false)], &h, 0), Some(xa));
        assert_eq!(
            request_hash(&[p("x-a", false), p("x-b", false)], &h, 0),
            Some(xa.rotate_left(1) ^ xb)
        );
        assert_eq!(request_hash(&[p("x-a", true), p("x-b", false)], &h, 0), Some(xa));
        assert_eq!(
            request_hash(&[p("x-none", true), p("x-b", false)], &h, 0),
            Some(xb)
        );
        assert_eq!(request_hash(&[p("x-none", false)], &h, 0), None);
    }
}
