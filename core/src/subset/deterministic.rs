//! Deterministic subsetting (Google SRE book, chapter 20, "Load Balancing in the Datacenter"):
//! clients are grouped into rounds of `subset_count = backends / subset_size` clients; round `r`
//! shuffles the (canonically ordered) backends with seed `r`, and client `i` of the round takes
//! the `i`-th slice of `subset_size`. Within a round every backend serves at most one client,
//! so connections are even to one per round; the `backends % subset_size` left over differ per
//! round.

use super::{take_along, Client, Grow, Member};
use crate::rng::{Rng, SplitMix64};

pub(super) fn take<F: Fn(u32) -> bool>(
    client: Client,
    order: &mut [u32],
    subset_size: u32,
    grow: &Grow<'_, F>,
    out: &mut [Member],
) -> usize {
    let n = order.len();
    let k = (subset_size as usize).min(n);
    let subset_count = (n / k).max(1);
    let index = client.index() as usize;
    let round = (index / subset_count) as u64;
    let slice = index % subset_count;
    // Fisher-Yates with the round as seed: every client of the round shuffles alike.
    let mut rng = SplitMix64::new(round ^ 0x5eed_5eed_5eed_5eed);
    for i in (1..n).rev() {
        let j = (((rng.next_u64() >> 32) * (i as u64 + 1)) >> 32) as usize;
        order.swap(i, j);
    }
    take_along(order, slice * k, k as u32, grow, out)
}
