//! [`XdsBuilder`]: how an [`XdsChannel`] is configured, and where it starts (the xDS client and
//! the cluster [`manager`] tasks).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::bootstrap::Bootstrap;
use crate::client::{self, AdsBackoff, AdsKeepalive};
use crate::dispatch::{Router, Shared};
use crate::manager::{self, Template};
use crate::{XdsChannel, XdsError};

/// Builds an [`XdsChannel`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// // GRPC_XDS_BOOTSTRAP=/etc/grpc/bootstrap.json
/// let channel = pickwise_xds::XdsBuilder::new().build("xds:///greeter")?;
/// let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct XdsBuilder {
    bootstrap: Option<Bootstrap>,
    resource_timeout: Duration,
    wait_for_config: Duration,
    backoff: AdsBackoff,
    keepalive: AdsKeepalive,
    template: Template,
}

impl std::fmt::Debug for XdsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsBuilder")
            .field("bootstrap", &self.bootstrap)
            .field("resource_timeout", &self.resource_timeout)
            .field("wait_for_config", &self.wait_for_config)
            .field("backoff", &self.backoff)
            .field("keepalive", &self.keepalive)
            .finish_non_exhaustive()
    }
}

impl Default for XdsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl XdsBuilder {
    /// Bootstrap from the environment at [`build`](Self::build), gRPC's timers (15 s
    /// does-not-exist, 1 s–120 s reconnect backoff), requests wait up to 20 s for a first
    /// configuration, clusters use `pickwise_tonic::Builder::new()` (the policy comes from CDS).
    pub fn new() -> Self {
        Self {
            bootstrap: None,
            resource_timeout: Duration::from_secs(15),
            wait_for_config: Duration::from_secs(20),
            backoff: AdsBackoff::default(),
            keepalive: AdsKeepalive::default(),
            template: Arc::new(pickwise_tonic::Builder::new),
        }
    }

    /// Uses this bootstrap instead of the environment's.
    pub fn bootstrap(mut self, bootstrap: Bootstrap) -> Self {
        self.bootstrap = Some(bootstrap);
        self
    }

    /// The does-not-exist timer (gRPC: 15 s).
    pub fn resource_timeout(mut self, timeout: Duration) -> Self {
        self.resource_timeout = timeout;
        self
    }

    /// How long a request waits for the first configuration (bounded by its own deadline too).
    pub fn wait_for_config(mut self, wait: Duration) -> Self {
        self.wait_for_config = wait;
        self
    }

    /// Reconnect backoff of the ADS stream.
    pub fn ads_backoff(mut self, backoff: AdsBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// HTTP/2 keepalive of the ADS connection (gRPC: a ping every 5 min, 20 s to answer). A
    /// control plane that stops answering is then noticed and the stream re-established.
    pub fn ads_keepalive(mut self, keepalive: AdsKeepalive) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// The template each cluster's balancer starts from (connect timeout, keepalive, health
    /// checks, backoff...). Policy and outlier detection are then set from CDS.
    pub fn cluster_builder<F>(mut self, template: F) -> Self
    where
        F: Fn() -> pickwise_tonic::Builder + Send + Sync + 'static,
    {
        self.template = Arc::new(template);
        self
    }

    /// Starts the xDS client for `target` (`xds:///name` or `xds:name`). Must run inside a tokio
    /// runtime; the client stops when the last clone of the channel is dropped.
    pub fn build(self, target: &str) -> Result<XdsChannel, XdsError> {
        let name = parse_target(target)?;
        let bootstrap = match self.bootstrap {
            Some(b) => b,
            None => Bootstrap::from_env().map_err(XdsError::Bootstrap)?,
        };
        let options = client::Options {
            bootstrap,
            resource_timeout: self.resource_timeout,
            backoff: self.backoff,
            keepalive: self.keepalive,
            channel_target: target.to_owned(),
        };
        #[cfg(feature = "tls")]
        let providers = Arc::new(crate::upstream_tls::Providers::new(
            options.bootstrap.certificate_providers.clone(),
        ));
        let (state, ads) = client::spawn(options, name.to_owned());
        let (version, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            router: ArcSwap::from_pointee(Router::default()),
            version,
            wait_for_config: self.wait_for_config,
            channel_id: fastrand::u64(..),
            target: name.to_owned(),
        });
        // Each cluster's instruments carry the channel's target (`grpc.target`, gRFC A66).
        #[cfg(feature = "metrics")]
        let template: Template = {
            let (user, target) = (self.template, target.to_owned());
            Arc::new(move || user().target(target.clone()))
        };
        #[cfg(not(feature = "metrics"))]
        let template = self.template;
        let manager = tokio::spawn(manager::manage(
            shared.clone(),
            state,
            template,
            #[cfg(feature = "tls")]
            providers,
        ));
        Ok(XdsChannel::new(shared, [ads, manager]))
    }
}

fn parse_target(target: &str) -> Result<&str, XdsError> {
    let rest = target
        .strip_prefix("xds:")
        .ok_or_else(|| XdsError::Target(format!("{target:?} is not an xds: target")))?;
    let name = rest
        .strip_prefix("///")
        .or_else(|| {
            rest.strip_prefix("//")
                .and_then(|r| r.split_once('/').map(|(_, p)| p))
        })
        .unwrap_or(rest);
    if name.is_empty() {
        return Err(XdsError::Target(format!("{target:?} has no name")));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("xds:///greeter").unwrap(), "greeter");
        assert_eq!(parse_target("xds:greeter").unwrap(), "greeter");
        assert_eq!(parse_target("xds://authority/greeter").unwrap(), "greeter");
        assert!(parse_target("dns:///x").is_err());
        assert!(parse_target("xds:///").is_err());
    }
}
