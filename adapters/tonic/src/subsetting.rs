//! Subsetting in the balancer: which of the discovered endpoints this client connects to.
//!
//! The subsetter itself is the core's ([`pickwise::subset`]); this module turns the discovered
//! set and this client's identity (static, or its rank among peers from a discovery stream)
//! into the endpoints to keep, with weights, and grows the subset past endpoints known to fail.

use std::collections::{BTreeMap, BTreeSet};

use pickwise::subset::{Client, Subsetting};

/// Who this client is, for subsetting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Identity {
    /// Fixed index and count (or stable id).
    Static(Client),
    /// This client's id among the peer ids a discovery stream reports: index = its rank in the
    /// sorted peer set (which always includes it), count = the set's size.
    Peers { me: String },
}

/// Subsetting settings (see [`Builder::subset`](crate::Builder::subset)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SubsetConfig {
    pub(crate) strategy: Subsetting,
    pub(crate) identity: Identity,
    /// Grow the subset until this many of its endpoints are not failing.
    pub(crate) min_ready: u32,
}

/// Weight scale for fractional aperture weights: a full member gets 100 x its discovered weight.
const APERTURE_SCALE: f64 = 100.0;

impl SubsetConfig {
    /// The client identity, given the current peer set.
    pub(crate) fn client(&self, peers: &BTreeSet<String>) -> Client {
        match &self.identity {
            Identity::Static(c) => *c,
            Identity::Peers { me } => {
                let index = peers.iter().filter(|p| p.as_str() < me.as_str()).count();
                let count = peers.len() + usize::from(!peers.contains(me));
                Client::Index {
                    index: index as u32,
                    count: count.max(1) as u32,
                }
            }
        }
    }

    /// The endpoints to connect to, with weights: the subset of `discovered` (address ->
    /// weight) for `client`, grown past endpoints for which `failing` is true.
    pub(crate) fn desired(
        &self,
        client: Client,
        discovered: &BTreeMap<String, u32>,
        failing: impl Fn(&str) -> bool,
    ) -> Vec<(String, u32)> {
        let keys: Vec<&String> = discovered.keys().collect();
        let mut hashes = vec![0u64; keys.len()];
        let mut order = vec![0u32; keys.len()];
        let mut out = vec![
            pickwise::subset::Member {
                backend: 0,
                weight: 0.0
            };
            keys.len()
        ];
        let ready = |b: u32| !failing(keys[b as usize]);
        let scratch = pickwise::subset::Scratch {
            hashes: &mut hashes,
            order: &mut order,
        };
        // An error means no endpoints (or a zero size): connect to nothing.
        let Ok(len) =
            self.strategy
                .subset_ready_into(client, &keys, scratch, &mut out, ready, self.min_ready)
        else {
            return Vec::new();
        };
        out[..len]
            .iter()
            .map(|m| {
                let addr = keys[m.backend as usize];
                let base = discovered[addr].max(1);
                let weight = match self.strategy {
                    Subsetting::Aperture { .. } => (f64::from(base) * m.weight * APERTURE_SCALE)
                        .round()
                        .clamp(1.0, f64::from(u32::MAX))
                        as u32,
                    _ => base,
                };
                (addr.clone(), weight)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_rank_and_weights() {
        let cfg = SubsetConfig {
            strategy: Subsetting::Aperture { min_aperture: 2 },
            identity: Identity::Peers { me: "b".into() },
            min_ready: 1,
        };
        let peers: BTreeSet<String> = ["a", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(cfg.client(&peers), Client::Index { index: 1, count: 4 });
        let discovered: BTreeMap<String, u32> = (0..8).map(|i| (format!("10.0.0.{i}:1"), 1)).collect();
        let want = cfg.desired(cfg.client(&peers), &discovered, |_| false);
        // 8 backends, 4 clients, aperture 2: two backends' worth, exact units.
        let total: u32 = want.iter().map(|w| w.1).sum();
        assert_eq!(total, 200);
        // Everything failing: grows to all.
        assert_eq!(cfg.desired(cfg.client(&peers), &discovered, |_| true).len(), 8);
    }
}
