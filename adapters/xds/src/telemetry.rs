//! The xDS client's instruments (feature `metrics`), gRFC A78's `grpc.xds_client.*`, recorded
//! through the [`metrics`](https://docs.rs/metrics) facade as `pickwise-tonic` records its own
//! (each cluster's balancer then labels its instruments with the channel's target and the
//! cluster's name). Without the feature every method here is empty and nothing is compiled in.
//!
//! | instrument | when |
//! |---|---|
//! | `grpc.xds_client.connected` | 1 when an ADS stream is created, 0 when connecting fails or a stream fails before any response (gRFC A57), 1 again on the next first response |
//! | `grpc.xds_client.server_failure` | each time the server goes from connected to not |
//! | `grpc.xds_client.resource_updates_valid` / `_invalid` | per resource in each response (unchanged ones too) |
//! | `grpc.xds_client.resources` | the cache by authority, state and type, set after every change |
//!
//! Labels: `grpc.target` (the channel's target, `xds:///name`), `grpc.xds.server` (the
//! bootstrap's `server_uri`), `grpc.xds.resource_type` (`envoy.config.listener.v3.Listener`...),
//! `grpc.xds.authority` (`#old` for names that are not `xdstp://`) and `grpc.xds.cache_state`.

use crate::resource::ResourceType;

/// A cached resource's state as A78's `grpc.xds.cache_state` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CacheState {
    /// Requested, nothing received yet.
    Requested,
    /// Deleted by the server, or its does-not-exist timer fired.
    DoesNotExist,
    /// Received and valid.
    Acked,
    /// Received, and invalid with no earlier valid version.
    Nacked,
    /// A valid version is cached, the latest update was invalid.
    NackedButCached,
}

impl CacheState {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    const ALL: [Self; 5] = [
        Self::Requested,
        Self::DoesNotExist,
        Self::Acked,
        Self::Nacked,
        Self::NackedButCached,
    ];

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn label(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::DoesNotExist => "does_not_exist",
            Self::Acked => "acked",
            Self::Nacked => "nacked",
            Self::NackedButCached => "nacked_but_cached",
        }
    }
}

/// The authority of a resource name: `#old` unless it is an `xdstp://authority/...` name.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn authority(name: &str) -> &str {
    name.strip_prefix("xdstp://")
        .map_or("#old", |rest| rest.split('/').next().unwrap_or(""))
}

/// One xDS client's instruments (its channel target and server).
#[derive(Debug)]
pub(crate) struct XdsInstruments {
    #[cfg(feature = "metrics")]
    inner: enabled::Inner,
    /// The server is counted as connected (so a failure is counted once per fall).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    connected: bool,
}

impl XdsInstruments {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(target: &str, server: &str) -> Self {
        Self {
            #[cfg(feature = "metrics")]
            inner: enabled::Inner::new(target, server),
            connected: false,
        }
    }

    /// An ADS stream was created, or a first response arrived on one: connected.
    pub(crate) fn connected(&mut self) {
        #[cfg(feature = "metrics")]
        if !self.connected {
            self.inner.connected.set(1.0);
        }
        self.connected = true;
    }

    /// Connecting failed, or a stream ended before any response (gRFC A57): not connected, and
    /// a server failure if it was connected.
    pub(crate) fn failed(&mut self) {
        #[cfg(feature = "metrics")]
        {
            self.inner.connected.set(0.0);
            if self.connected {
                self.inner.server_failure.increment(1);
            }
        }
        self.connected = false;
    }

    /// `valid` and `invalid` resources of type `t` arrived in one response.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn updates(&self, t: ResourceType, valid: u64, invalid: u64) {
        #[cfg(feature = "metrics")]
        self.inner.updates(t, valid, invalid);
    }

    /// Sets the `grpc.xds_client.resources` gauges from the whole cache: each (authority,
    /// state, type) seen now or before is set (to 0 when nothing is in it any more).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn resources<'a>(&mut self, cache: impl Iterator<Item = (ResourceType, &'a str, CacheState)>) {
        #[cfg(feature = "metrics")]
        self.inner.resources(cache);
    }
}

#[cfg(feature = "metrics")]
mod enabled {
    use std::collections::BTreeMap;

    use metrics::{counter, gauge, Counter, Gauge, SharedString};

    use super::{authority, CacheState, ResourceType};

    #[derive(Debug)]
    pub(super) struct Inner {
        target: SharedString,
        pub(super) connected: Gauge,
        pub(super) server_failure: Counter,
        /// (valid, invalid) per type, in `ResourceType::ALL` order.
        updates: [(Counter, Counter); 4],
        /// Every (authority, type, state) gauge set so far, with its last value.
        resources: BTreeMap<(String, usize, usize), (Gauge, u64)>,
    }

    /// `type.googleapis.com/envoy.config.listener.v3.Listener` -> `envoy.config.listener.v3.Listener`.
    fn type_label(t: ResourceType) -> SharedString {
        let url = t.type_url();
        let name = url.rsplit('/').next().unwrap_or(&url).to_owned();
        SharedString::from(name)
    }

    impl Inner {
        pub(super) fn new(target: &str, server: &str) -> Self {
            describe();
            let target = SharedString::from(target.to_owned());
            let server = SharedString::from(server.to_owned());
            let (t, s) = (target.clone(), server.clone());
            let update = |name: &'static str, ty: ResourceType| counter!(name, "grpc.target" => t.clone(), "grpc.xds.server" => s.clone(), "grpc.xds.resource_type" => type_label(ty));
            let updates = ResourceType::ALL.map(|ty| {
                (
                    update("grpc.xds_client.resource_updates_valid", ty),
                    update("grpc.xds_client.resource_updates_invalid", ty),
                )
            });
            let connected = gauge!("grpc.xds_client.connected", "grpc.target" => t.clone(), "grpc.xds.server" => s.clone());
            connected.set(0.0);
            Self {
                server_failure: counter!("grpc.xds_client.server_failure", "grpc.target" => t, "grpc.xds.server" => s),
                connected,
                updates,
                resources: BTreeMap::new(),
                target,
            }
        }

        pub(super) fn updates(&self, t: ResourceType, valid: u64, invalid: u64) {
            let (v, i) = &self.updates[t as usize];
            if valid > 0 {
                v.increment(valid);
            }
            if invalid > 0 {
                i.increment(invalid);
            }
        }

        pub(super) fn resources<'a>(
            &mut self,
            cache: impl Iterator<Item = (ResourceType, &'a str, CacheState)>,
        ) {
            let mut counts: BTreeMap<(String, usize, usize), u64> = BTreeMap::new();
            for (t, name, state) in cache {
                let key = (authority(name).to_owned(), t as usize, state as usize);
                *counts.entry(key).or_default() += 1;
            }
            for (key, slot) in &mut self.resources {
                if !counts.contains_key(key) && slot.1 != 0 {
                    slot.0.set(0.0);
                    slot.1 = 0;
                }
            }
            for (key, n) in counts {
                let slot = self.resources.entry(key.clone()).or_insert_with(|| {
                    let (auth, t, state) = key;
                    let g = gauge!("grpc.xds_client.resources",
                        "grpc.target" => self.target.clone(),
                        "grpc.xds.authority" => auth,
                        "grpc.xds.cache_state" => CacheState::ALL[state].label(),
                        "grpc.xds.resource_type" => type_label(ResourceType::ALL[t]));
                    (g, u64::MAX)
                });
                if slot.1 != n {
                    slot.0.set(n as f64);
                    slot.1 = n;
                }
            }
        }
    }

    impl Drop for Inner {
        /// The client is gone (its channel dropped): not connected, nothing cached.
        fn drop(&mut self) {
            self.connected.set(0.0);
            for (gauge, _) in self.resources.values() {
                gauge.set(0.0);
            }
        }
    }

    /// Units and help text, once per process.
    fn describe() {
        use metrics::{describe_counter, describe_gauge};
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            describe_gauge!(
                "grpc.xds_client.connected",
                "Whether the xDS client has a working ADS stream to the xDS server (gRFC A78, {bool})."
            );
            describe_counter!(
                "grpc.xds_client.server_failure",
                "xDS servers going from healthy to unhealthy (gRFC A78, {failure})."
            );
            describe_counter!(
                "grpc.xds_client.resource_updates_valid",
                "Resources received that were valid, changed or not (gRFC A78, {resource})."
            );
            describe_counter!(
                "grpc.xds_client.resource_updates_invalid",
                "Resources received that were invalid (gRFC A78, {resource})."
            );
            describe_gauge!(
                "grpc.xds_client.resources",
                "Number of xDS resources by authority, cache state and type (gRFC A78, {resource})."
            );
        });
    }
}
