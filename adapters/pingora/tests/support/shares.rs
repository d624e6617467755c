//! Shares per backend over a window of sequential requests through a proxy, and waiting for a
//! pickwise `weighted_round_robin` group to schedule by its backends' load reports.

#![allow(dead_code, unreachable_pub)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use pickwise::wrr::WrrConfig;
use pickwise_pingora::Shared;

use super::load::{self, HttpClient};
use super::wait;

/// The share of each backend (by `ip:port`) among `n` sequential GETs through `proxy`; any
/// failed request fails the test.
pub async fn window(client: &HttpClient, proxy: SocketAddr, n: usize) -> BTreeMap<String, f64> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..n {
        let backend = load::get(client, proxy, None)
            .await
            .expect("request through the proxy");
        *counts.entry(backend).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, c)| (k, c as f64 / n as f64))
        .collect()
}

/// The largest difference between `shares` and `want` (backends missing count 0).
pub fn max_error(shares: &BTreeMap<String, f64>, want: &[(String, f64)]) -> f64 {
    want.iter()
        .map(|(k, w)| (shares.get(k).copied().unwrap_or(0.0) - w).abs())
        .fold(0.0, f64::max)
}

/// Shares rounded for printing.
pub fn show(shares: &BTreeMap<String, f64>) -> String {
    shares
        .iter()
        .map(|(k, s)| format!("{k} {:.1}%", 100.0 * s))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sends requests through `proxy` until every backend in `addrs` has a usable load-report
/// weight in `shared` and the group has published a picker since (the first weight update
/// after the reports): from then on the picker schedules by the reports.
pub async fn until_weighted(
    client: &HttpClient,
    proxy: SocketAddr,
    shared: &Shared,
    config: &WrrConfig,
    addrs: &[String],
) {
    // The picker version when every backend first had a weight.
    let weighted_at: Cell<Option<u64>> = Cell::new(None);
    let weighted = &weighted_at;
    wait::until_async("every backend's load-report weight to reach the picker", || {
        let client = client.clone();
        async move {
            load::get(&client, proxy, None).await?;
            let now = shared.now();
            let weights: Vec<f64> = addrs
                .iter()
                .map(|a| shared.state(a).map_or(0.0, |s| s.load_weight(now, config)))
                .collect();
            let version = shared.picker_version();
            match weighted.get() {
                Some(v) if version > v => Ok(()),
                Some(_) => Err(format!("weights {weights:?}; no picker published since")),
                None if weights.iter().all(|w| *w > 0.0) => {
                    weighted.set(Some(version));
                    Err(format!("weights {weights:?} at picker version {version}"))
                }
                None => Err(format!("weights {weights:?}")),
            }
        }
    })
    .await;
}
