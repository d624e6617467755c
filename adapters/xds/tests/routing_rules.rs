//! RDS matchers against grpc-go's rules (internal/xds/matcher/string_matcher.go,
//! internal/xds/xdsclient/xdsresource/unmarshal_rds.go), through the public resource decoder.
// The deprecated header matcher fields are what control planes still send.
#![allow(deprecated)]

use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route::Action, route_match::PathSpecifier, HeaderMatcher,
    RouteConfiguration,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::BoolValue;
use pickwise_xds::control_plane::resources;
use pickwise_xds::resource::{self, Resource, ResourceType, Route};

/// A route configuration whose one route is changed by `edit`.
fn routes(edit: impl FnOnce(&mut envoy_types::pb::envoy::config::route::v3::Route)) -> RouteConfiguration {
    let mut rc = resources::route_config("rc", "greeter", "backends");
    edit(&mut rc.virtual_hosts[0].routes[0]);
    rc
}

fn decode(rc: &RouteConfiguration) -> Result<Route, String> {
    match resource::decode(ResourceType::RouteConfiguration, &resources::any(rc)) {
        Ok((_, Resource::RouteConfiguration(rc))) => Ok(rc.virtual_hosts[0].routes[0].clone()),
        Ok(other) => Err(format!("not a route configuration: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

fn regex(re: &str) -> RegexMatcher {
    RegexMatcher {
        regex: re.into(),
        ..RegexMatcher::default()
    }
}

fn header(specifier: HeaderMatchSpecifier) -> HeaderMatcher {
    HeaderMatcher {
        name: "x-version".into(),
        header_match_specifier: Some(specifier),
        ..HeaderMatcher::default()
    }
}

fn matches_header(route: &Route, value: &str) -> bool {
    route.matcher.headers.iter().all(|h| h.matches(Some(value)))
}

/// grpc-go compiles `safe_regex` as `^(?:re)$`: `v1|v10` matches `v10` (a leftmost-first search
/// takes `v1` and fails the full-match check).
#[test]
fn safe_regex_is_a_full_match_over_every_alternative() {
    let path = decode(&routes(|r| {
        r.r#match.as_mut().unwrap().path_specifier =
            Some(PathSpecifier::SafeRegex(regex("/pkg.Svc/(Get|GetAll)")));
    }))
    .unwrap();
    assert!(path.matcher.path.matches("/pkg.Svc/Get"));
    assert!(path.matcher.path.matches("/pkg.Svc/GetAll"));
    assert!(!path.matcher.path.matches("/pkg.Svc/GetAllX"));

    let h = decode(&routes(|r| {
        r.r#match.as_mut().unwrap().headers =
            vec![header(HeaderMatchSpecifier::SafeRegexMatch(regex("v1|v10")))];
    }))
    .unwrap();
    assert!(matches_header(&h, "v1"));
    assert!(matches_header(&h, "v10"), "v1|v10 must match v10");
    assert!(!matches_header(&h, "v100"));
}

/// grpc-go ignores `case_sensitive` for a path regex and `ignore_case` for a `safe_regex`
/// string matcher.
#[test]
fn case_insensitivity_does_not_apply_to_regexes() {
    let path = decode(&routes(|r| {
        let m = r.r#match.as_mut().unwrap();
        m.path_specifier = Some(PathSpecifier::SafeRegex(regex("/pkg.Svc/.*")));
        m.case_sensitive = Some(BoolValue { value: false });
    }))
    .unwrap();
    assert!(path.matcher.path.matches("/pkg.Svc/Get"));
    assert!(!path.matcher.path.matches("/PKG.SVC/Get"));

    let h = decode(&routes(|r| {
        r.r#match.as_mut().unwrap().headers =
            vec![header(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::SafeRegex(regex("canary"))),
                ignore_case: true,
            }))];
    }))
    .unwrap();
    assert!(matches_header(&h, "canary"));
    assert!(!matches_header(&h, "CANARY"));

    // Non-regex matchers keep case folding.
    let exact = decode(&routes(|r| {
        r.r#match.as_mut().unwrap().headers =
            vec![header(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact("canary".into())),
                ignore_case: true,
            }))];
    }))
    .unwrap();
    assert!(matches_header(&exact, "CANARY"));
}

/// grpc-go's `StringMatcherFromProto` rejects an empty prefix, suffix or contains, also when they
/// come from the deprecated header matcher fields.
#[test]
fn empty_string_matcher_patterns_are_nacked() {
    for spec in [
        HeaderMatchSpecifier::PrefixMatch(String::new()),
        HeaderMatchSpecifier::SuffixMatch(String::new()),
        HeaderMatchSpecifier::ContainsMatch(String::new()),
        HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::Prefix(String::new())),
            ignore_case: false,
        }),
    ] {
        let rc = routes(|r| r.r#match.as_mut().unwrap().headers = vec![header(spec.clone())]);
        assert!(decode(&rc).is_err(), "{spec:?} must be NACKed");
    }
    // An empty exact match is fine.
    let rc = routes(|r| {
        r.r#match.as_mut().unwrap().headers = vec![header(HeaderMatchSpecifier::ExactMatch(String::new()))]
    });
    assert!(decode(&rc).is_ok());
}

/// gRFC A31 as grpc-go parses it: `grpc_timeout_header_max` wins over `max_stream_duration`.
#[test]
fn max_stream_duration_prefers_grpc_timeout_header_max() {
    use envoy_types::pb::envoy::config::route::v3::route_action::MaxStreamDuration;
    use envoy_types::pb::google::protobuf::Duration as PbDuration;
    let ms = |n: i32| PbDuration {
        seconds: 0,
        nanos: n * 1_000_000,
    };
    let with = |msd: MaxStreamDuration| {
        decode(&routes(|r| {
            let Some(Action::Route(ra)) = &mut r.action else {
                unreachable!()
            };
            ra.max_stream_duration = Some(msd);
        }))
        .unwrap()
        .max_stream_duration
    };
    assert_eq!(
        with(MaxStreamDuration {
            max_stream_duration: Some(ms(300)),
            grpc_timeout_header_max: Some(ms(200)),
            ..MaxStreamDuration::default()
        }),
        Some(std::time::Duration::from_millis(200))
    );
    assert_eq!(
        with(MaxStreamDuration {
            max_stream_duration: Some(ms(300)),
            ..MaxStreamDuration::default()
        }),
        Some(std::time::Duration::from_millis(300))
    );
    assert_eq!(decode(&routes(|_| {})).unwrap().max_stream_duration, None);
}

/// An invalid `regex_rewrite` pattern in a hash policy NACKs (grpc-go
/// `hashPoliciesProtoToSlice`).
#[test]
fn invalid_hash_policy_regex_rewrite_is_nacked() {
    use envoy_types::pb::envoy::config::route::v3::route_action::{hash_policy, HashPolicy};
    use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;
    let rc = routes(|r| {
        let Some(Action::Route(ra)) = &mut r.action else {
            unreachable!()
        };
        ra.hash_policy = vec![HashPolicy {
            policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
                header_name: "x-user".into(),
                regex_rewrite: Some(RegexMatchAndSubstitute {
                    pattern: Some(regex("(unclosed")),
                    substitution: String::new(),
                }),
            })),
            terminal: false,
        }];
    });
    assert!(decode(&rc).is_err());
}
