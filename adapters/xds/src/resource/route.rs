//! RDS: virtual hosts, routes and their actions (gRFC A28), validated into matchers the request
//! path runs without allocating.

use super::Invalid;
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route::Action, route_action::hash_policy::PolicySpecifier,
    route_action::ClusterSpecifier, route_match::PathSpecifier, RouteConfiguration,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatcher, StringMatcher,
};

/// A validated route configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteConfig {
    /// Virtual hosts, in order.
    pub virtual_hosts: Vec<VirtualHost>,
}

/// A virtual host: the routes for the authorities its domains match.
#[derive(Clone, Debug, PartialEq)]
pub struct VirtualHost {
    /// Domain patterns: exact, `*.suffix`, `prefix.*` or `*`.
    pub domains: Vec<String>,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
}

/// One route.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// What it matches.
    pub matcher: RouteMatch,
    /// What a match does.
    pub action: RouteAction,
    /// How the request hash is computed (ring hash, Maglev).
    pub hash_policies: Vec<HashPolicy>,
    /// gRFC A31: the route's `max_stream_duration` (`grpc_timeout_header_max` if set, else
    /// `max_stream_duration`); `None`: the listener's default applies.
    pub max_stream_duration: Option<std::time::Duration>,
}

/// A route's match.
#[derive(Clone, Debug)]
pub struct RouteMatch {
    /// The path condition.
    pub path: PathMatch,
    /// Header conditions (all must hold).
    pub headers: Vec<HeaderMatcher>,
    /// `runtime_fraction`: matches this many requests per million.
    pub fraction_per_million: Option<u32>,
}

impl PartialEq for RouteMatch {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.headers == other.headers
            && self.fraction_per_million == other.fraction_per_million
    }
}

/// A path condition (`:path` is `/service/method`).
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// Starts with (the bool: case sensitive).
    Prefix(String, bool),
    /// Equals.
    Exact(String, bool),
    /// Matches the whole path (`safe_regex`, compiled as `^(?:re)$`; `case_sensitive` does not
    /// apply to it, as in grpc-go).
    Regex(regex::Regex),
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Prefix(a, x), Self::Prefix(b, y)) | (Self::Exact(a, x), Self::Exact(b, y)) => {
                a == b && x == y
            }
            (Self::Regex(a), Self::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl PathMatch {
    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Prefix(p, true) => path.starts_with(p.as_str()),
            Self::Prefix(p, false) => path
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            Self::Exact(p, true) => path == p,
            Self::Exact(p, false) => path.eq_ignore_ascii_case(p),
            Self::Regex(r) => full_match(r, path),
        }
    }
}

/// `r` is anchored (`^(?:re)$`, see [`regex()`]), so any match is a full match; a leftmost-first
/// search would take `v1` in `v1|v10` and miss `v10`.
fn full_match(r: &regex::Regex, s: &str) -> bool {
    r.is_match(s)
}

/// A header condition.
#[derive(Clone, Debug)]
pub struct HeaderMatcher {
    /// The header (lower case).
    pub name: String,
    /// The condition on its value.
    pub matcher: HeaderMatch,
    /// Negates the result.
    pub invert: bool,
}

impl PartialEq for HeaderMatcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.invert == other.invert && self.matcher == other.matcher
    }
}

impl PartialEq for HeaderMatch {
    fn eq(&self, other: &Self) -> bool {
        use HeaderMatch::*;
        match (self, other) {
            (Exact(a, x), Exact(b, y))
            | (Prefix(a, x), Prefix(b, y))
            | (Suffix(a, x), Suffix(b, y))
            | (Contains(a, x), Contains(b, y)) => a == b && x == y,
            (Regex(a), Regex(b)) => a.as_str() == b.as_str(),
            (Range(a, b), Range(c, d)) => (a, b) == (c, d),
            (Present(a), Present(b)) => a == b,
            _ => false,
        }
    }
}

/// A condition on a header's value (all values joined with `,`, as gRPC does).
#[derive(Clone, Debug)]
pub enum HeaderMatch {
    /// Equals (the bool: ignore case).
    Exact(String, bool),
    /// Starts with.
    Prefix(String, bool),
    /// Ends with.
    Suffix(String, bool),
    /// Contains.
    Contains(String, bool),
    /// Matches the whole value.
    Regex(regex::Regex),
    /// An integer in `[start, end)`.
    Range(i64, i64),
    /// Present (true) or absent (false).
    Present(bool),
}

impl HeaderMatcher {
    /// Whether a header with `value` (`None`: absent) satisfies this matcher.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let hit = match (&self.matcher, value) {
            (HeaderMatch::Present(want), v) => v.is_some() == *want,
            (_, None) => return false, // absent never matches, inverted or not (Envoy)
            (HeaderMatch::Exact(p, ic), Some(v)) => cmp(v, p, *ic, |v, p| v == p),
            (HeaderMatch::Prefix(p, ic), Some(v)) => cmp(v, p, *ic, |v, p| v.starts_with(p)),
            (HeaderMatch::Suffix(p, ic), Some(v)) => cmp(v, p, *ic, |v, p| v.ends_with(p)),
            (HeaderMatch::Contains(p, ic), Some(v)) => cmp(v, p, *ic, |v, p| v.contains(p)),
            (HeaderMatch::Regex(r), Some(v)) => full_match(r, v),
            (HeaderMatch::Range(lo, hi), Some(v)) => v.parse::<i64>().is_ok_and(|n| *lo <= n && n < *hi),
        };
        hit != self.invert
    }
}

fn cmp(v: &str, p: &str, ignore_case: bool, f: impl Fn(&str, &str) -> bool) -> bool {
    if ignore_case {
        f(&v.to_ascii_lowercase(), &p.to_ascii_lowercase())
    } else {
        f(v, p)
    }
}

/// What a matched route does.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteAction {
    /// Send to one of these clusters, by weight (one entry for `cluster`).
    Clusters(Vec<ClusterWeight>),
    /// A route gRPC clients cannot follow (redirect, direct response, non-forwarding): matching
    /// requests fail with `UNAVAILABLE`, as in grpc-go.
    Unsupported(String),
}

/// A cluster and its weight in a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterWeight {
    /// The cluster name (CDS).
    pub name: String,
    /// Its weight.
    pub weight: u32,
}

/// One `hash_policy` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct HashPolicy {
    /// Where the hash comes from.
    pub source: HashSource,
    /// Stop at this policy if it produced a hash.
    pub terminal: bool,
}

/// Hash sources gRPC supports.
#[derive(Clone, Debug)]
pub enum HashSource {
    /// XXH64 of a header's values joined with `,`, after `regex_rewrite` if any. Binary
    /// (`-bin`) headers are never hashed (grpc-go `generateHash`).
    Header {
        /// The header name, lower case.
        name: String,
        /// `regex_rewrite`: every match of the pattern is replaced by the substitution (`$1`
        /// refers to a group, as in grpc-go's Go `regexp`).
        rewrite: Option<(regex::Regex, String)>,
    },
    /// `filter_state` `io.grpc.channel_id`: one hash per channel.
    ChannelId,
}

impl PartialEq for HashSource {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Header { name: a, rewrite: x }, Self::Header { name: b, rewrite: y }) => {
                a == b
                    && match (x, y) {
                        (None, None) => true,
                        (Some((r, s)), Some((q, t))) => r.as_str() == q.as_str() && s == t,
                        _ => false,
                    }
            }
            (Self::ChannelId, Self::ChannelId) => true,
            _ => false,
        }
    }
}

pub(super) fn validate(rc: &RouteConfiguration) -> Result<RouteConfig, Invalid> {
    // grpc-go `processClusterSpecifierPlugins`: pickwise implements no cluster specifier plugin,
    // so a required one NACKs and an optional one is known by name (its routes are skipped).
    let mut optional_plugins = std::collections::HashSet::new();
    for p in &rc.cluster_specifier_plugins {
        let ext = p.extension.as_ref();
        let name = ext.map_or("", |e| e.name.as_str());
        if !p.is_optional {
            let type_url = ext
                .and_then(|e| e.typed_config.as_ref())
                .map_or("", |t| t.type_url.as_str());
            return Err(format!(
                "cluster specifier plugin {name:?} of type {type_url:?} is not supported"
            ));
        }
        optional_plugins.insert(name);
    }
    let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
    for vh in &rc.virtual_hosts {
        retry_policy(vh.retry_policy.as_ref()).map_err(|e| format!("virtual host {:?}: {e}", vh.name))?;
        super::listener::filter_overrides(&vh.typed_per_filter_config)
            .map_err(|e| format!("virtual host {:?}: {e}", vh.name))?;
        let mut routes = Vec::new();
        for r in &vh.routes {
            if let Some(route) = route(r, &optional_plugins)
                .map_err(|e| format!("virtual host {:?}, route {:?}: {e}", vh.name, r.name))?
            {
                routes.push(route);
            }
        }
        virtual_hosts.push(VirtualHost {
            domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            routes,
        });
    }
    Ok(RouteConfig { virtual_hosts })
}

/// A route, `None` if gRPC ignores it (query parameter matchers, A28).
// The deprecated header matchers are still what control planes send; gRPC honours them.
#[allow(deprecated)]
fn route(
    r: &envoy_types::pb::envoy::config::route::v3::Route,
    optional_plugins: &std::collections::HashSet<&str>,
) -> Result<Option<Route>, Invalid> {
    let m = r.r#match.as_ref().ok_or("no match")?;
    if !m.query_parameters.is_empty() {
        return Ok(None);
    }
    let case_sensitive = m.case_sensitive.is_none_or(|b| b.value);
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone(), case_sensitive),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone(), case_sensitive),
        Some(PathSpecifier::SafeRegex(re)) => PathMatch::Regex(regex(re)?),
        Some(_) => return Err("unsupported path matcher".into()),
        None => return Err("no path matcher".into()),
    };
    let mut headers = Vec::new();
    for h in &m.headers {
        // grpc-go (unmarshal_rds.go) turns the deprecated exact/prefix/suffix/contains fields into
        // a StringMatcher, so they are validated as one (empty prefix, suffix, contains NACK).
        let matcher = match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::ExactMatch(s)) => string_matcher(&StringMatcher {
                match_pattern: Some(MatchPattern::Exact(s.clone())),
                ignore_case: false,
            })?,
            Some(HeaderMatchSpecifier::PrefixMatch(s)) => string_matcher(&StringMatcher {
                match_pattern: Some(MatchPattern::Prefix(s.clone())),
                ignore_case: false,
            })?,
            Some(HeaderMatchSpecifier::SuffixMatch(s)) => string_matcher(&StringMatcher {
                match_pattern: Some(MatchPattern::Suffix(s.clone())),
                ignore_case: false,
            })?,
            Some(HeaderMatchSpecifier::ContainsMatch(s)) => string_matcher(&StringMatcher {
                match_pattern: Some(MatchPattern::Contains(s.clone())),
                ignore_case: false,
            })?,
            Some(HeaderMatchSpecifier::SafeRegexMatch(re)) => HeaderMatch::Regex(regex(re)?),
            Some(HeaderMatchSpecifier::RangeMatch(r)) => HeaderMatch::Range(r.start, r.end),
            Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderMatch::Present(*p),
            Some(HeaderMatchSpecifier::StringMatch(s)) => string_matcher(s)?,
            None => return Err(format!("header matcher {:?} without a condition", h.name)),
        };
        headers.push(HeaderMatcher {
            name: h.name.to_ascii_lowercase(),
            matcher,
            invert: h.invert_match,
        });
    }
    let fraction_per_million = m
        .runtime_fraction
        .as_ref()
        .and_then(|f| f.default_value.as_ref())
        .map(super::per_million);
    let mut hash_policies = Vec::new();
    let action = match &r.action {
        Some(Action::Route(ra)) => {
            for hp in &ra.hash_policy {
                // grpc-go `hashPoliciesProtoToSlice` (unmarshal_rds.go): any header name is
                // accepted (one that cannot be present never produces a hash); an invalid
                // `regex_rewrite` pattern NACKs.
                let source = match &hp.policy_specifier {
                    Some(PolicySpecifier::Header(h)) => {
                        let rewrite = match &h.regex_rewrite {
                            Some(rr) => {
                                let pattern = rr.pattern.as_ref().map_or("", |p| p.regex.as_str());
                                let re = regex::RegexBuilder::new(pattern)
                                    .size_limit(1 << 20)
                                    .build()
                                    .map_err(|e| format!("hash_policy regex_rewrite {pattern:?}: {e}"))?;
                                Some((re, rr.substitution.clone()))
                            }
                            None => None,
                        };
                        HashSource::Header {
                            name: h.header_name.to_ascii_lowercase(),
                            rewrite,
                        }
                    }
                    Some(PolicySpecifier::FilterState(f)) if f.key == "io.grpc.channel_id" => {
                        HashSource::ChannelId
                    }
                    _ => continue, // gRPC ignores the other hash policies
                };
                hash_policies.push(HashPolicy {
                    source,
                    terminal: hp.terminal,
                });
            }
            match &ra.cluster_specifier {
                // grpc-go accepts any cluster name here, empty included.
                Some(ClusterSpecifier::Cluster(c)) => RouteAction::Clusters(vec![ClusterWeight {
                    name: c.clone(),
                    weight: 1,
                }]),
                Some(ClusterSpecifier::WeightedClusters(w)) => {
                    let mut out = Vec::new();
                    let mut sum: u64 = 0;
                    for c in &w.clusters {
                        let weight = c.weight.map_or(0, |w| w.value);
                        if weight > 0 {
                            super::listener::filter_overrides(&c.typed_per_filter_config)?;
                        }
                        sum += u64::from(weight);
                        if weight > 0 {
                            out.push(ClusterWeight {
                                name: c.name.clone(),
                                weight,
                            });
                        }
                    }
                    if sum == 0 || sum > u64::from(u32::MAX) {
                        return Err(format!("weighted_clusters weights sum to {sum}, need 1..=2^32-1"));
                    }
                    RouteAction::Clusters(out)
                }
                // grpc-go `routesProtoToSlice`: a plugin the configuration does not define NACKs;
                // an optional, unsupported one skips the route.
                Some(ClusterSpecifier::ClusterSpecifierPlugin(name)) => {
                    if optional_plugins.contains(name.as_str()) {
                        return Ok(None);
                    }
                    return Err(format!(
                        "cluster specifier plugin {name:?} is not in the route configuration"
                    ));
                }
                // A28: cluster_header, an unset or unknown specifier: the route is ignored.
                Some(_) | None => return Ok(None),
            }
        }
        Some(Action::NonForwardingAction(_)) => RouteAction::Unsupported("non-forwarding action".into()),
        Some(Action::Redirect(_)) => RouteAction::Unsupported("redirect action".into()),
        Some(Action::DirectResponse(_)) => RouteAction::Unsupported("direct response action".into()),
        Some(Action::FilterAction(_)) => RouteAction::Unsupported("filter action".into()),
        None => return Err("no action".into()),
    };
    if let Some(Action::Route(ra)) = &r.action {
        retry_policy(ra.retry_policy.as_ref())?;
    }
    super::listener::filter_overrides(&r.typed_per_filter_config)?;
    // gRFC A31 (grpc-go unmarshal_rds.go): grpc_timeout_header_max wins over
    // max_stream_duration.
    let max_stream_duration = match &r.action {
        Some(Action::Route(ra)) => ra.max_stream_duration.as_ref().and_then(|m| {
            m.grpc_timeout_header_max
                .as_ref()
                .or(m.max_stream_duration.as_ref())
                .map(super::duration)
        }),
        _ => None,
    };
    Ok(Some(Route {
        matcher: RouteMatch {
            path,
            headers,
            fraction_per_million,
        },
        action,
        hash_policies,
        max_stream_duration,
    }))
}

/// gRFC A44 as grpc-go's `generateRetryConfig` validates it: `num_retries` at least 1, backoff
/// intervals positive. Retries are not applied (see docs/xds.md).
fn retry_policy(rp: Option<&envoy_types::pb::envoy::config::route::v3::RetryPolicy>) -> Result<(), Invalid> {
    let Some(rp) = rp else {
        return Ok(());
    };
    if let Some(n) = rp.num_retries.map(|v| v.value).filter(|n| *n < 1) {
        return Err(format!("retry_policy.num_retries = {n}; must be >= 1"));
    }
    let positive =
        |d: &envoy_types::pb::google::protobuf::Duration| d.seconds > 0 || (d.seconds == 0 && d.nanos > 0);
    if let Some(b) = &rp.retry_back_off {
        if !b.base_interval.as_ref().is_some_and(positive) {
            return Err("retry_policy.retry_back_off.base_interval must be > 0".into());
        }
        if b.max_interval.as_ref().is_some_and(|d| !positive(d)) {
            return Err("retry_policy.retry_back_off.max_interval must be > 0".into());
        }
    }
    Ok(())
}

/// A `safe_regex`, anchored as grpc-go's `CompileSafeRegex` (internal/xds/matcher/
/// string_matcher.go) does: the pattern must compile on its own, then `^(?:re)$` is what runs.
/// No case folding: grpc-go ignores `case_sensitive` and `ignore_case` for regexes.
fn regex(re: &RegexMatcher) -> Result<regex::Regex, Invalid> {
    let build = |p: &str| {
        regex::RegexBuilder::new(p)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("regex {:?}: {e}", re.regex))
    };
    build(&re.regex)?;
    build(&format!("^(?:{})$", re.regex))
}

/// grpc-go `StringMatcherFromProto` (internal/xds/matcher/string_matcher.go): empty prefix,
/// suffix and contains are invalid; `ignore_case` does not apply to `safe_regex`.
pub(super) fn string_matcher(s: &StringMatcher) -> Result<HeaderMatch, Invalid> {
    let ic = s.ignore_case;
    let non_empty = |what: &str, p: &str| {
        if p.is_empty() {
            Err(format!("empty {what} is not allowed in a string matcher"))
        } else {
            Ok(p.to_owned())
        }
    };
    Ok(match &s.match_pattern {
        Some(MatchPattern::Exact(p)) => HeaderMatch::Exact(p.clone(), ic),
        Some(MatchPattern::Prefix(p)) => HeaderMatch::Prefix(non_empty("prefix", p)?, ic),
        Some(MatchPattern::Suffix(p)) => HeaderMatch::Suffix(non_empty("suffix", p)?, ic),
        Some(MatchPattern::Contains(p)) => HeaderMatch::Contains(non_empty("contains", p)?, ic),
        Some(MatchPattern::SafeRegex(re)) => HeaderMatch::Regex(regex(re)?),
        _ => return Err("unsupported string matcher".into()),
    })
}
