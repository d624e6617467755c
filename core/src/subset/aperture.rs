//! Finagle's deterministic aperture (`finagle-core` `loadbalancer/aperture`:
//! `DeterministicAperture`, `Ring`, `ProcessCoordinate`).
//!
//! Backends sit evenly on a unit ring in the canonical order (backend `b` spans
//! `[b / n, (b + 1) / n)`); clients sit on a second unit ring at `index / count`. A client's arc
//! starts at its coordinate and is `N / count` wide, `N = ceil(aperture * count / n)` (Finagle's
//! `dApertureWidth`): the smallest whole number of client units that covers `aperture` backends.
//! Every point of the ring is then covered by exactly `N` arcs, so every backend's summed weight
//! over all clients is exactly `N`: even load when clients send at equal rates. A backend's
//! weight in one client's subset is the share of it inside the arc (Finagle's `Ring.weight`).
//!
//! Arithmetic is exact: positions are integers in units of `1 / (n * count)`, where a backend is
//! `count` units wide and a client unit is `n` units wide.

use super::{Client, Grow, Member};

pub(super) fn take<F: Fn(u32) -> bool>(
    client: Client,
    order: &[u32],
    min_aperture: u32,
    grow: &Grow<'_, F>,
    out: &mut [Member],
) -> usize {
    let n = order.len() as u64;
    let c = u64::from(client.count());
    let total = u128::from(n) * u128::from(c); // the ring, in units
    let aperture = u64::from(min_aperture).min(n);
    // Finagle's dApertureWidth, in whole client units.
    let mut units = (aperture * c).div_ceil(n).max(1);
    let start = match client {
        Client::Index { .. } => u128::from(client.index()) * u128::from(n),
        Client::Stable { .. } => ((client.coordinate() * total as f64) as u128).min(total - 1),
    };
    // Grow one backend's worth of client units at a time until enough are ready.
    let step = c.div_ceil(n).max(1);
    loop {
        let width = (u128::from(units) * u128::from(n)).min(total);
        let len = arc(order, start, width, c, total, out);
        if width >= total || grow.enough(&out[..len]) {
            return len;
        }
        units += step;
    }
}

/// The members covered by `[start, start + width)` on a ring of `total` units where each backend
/// spans `backend_units`.
fn arc(
    order: &[u32],
    start: u128,
    width: u128,
    backend_units: u64,
    total: u128,
    out: &mut [Member],
) -> usize {
    let n = order.len();
    if width >= total {
        for (slot, &b) in out.iter_mut().zip(order) {
            *slot = Member {
                backend: b,
                weight: 1.0,
            };
        }
        return n;
    }
    let unit = u128::from(backend_units);
    let (mut pos, mut left) = (start, width);
    let mut len = 0;
    let mut b = (start / unit) as usize;
    while left > 0 {
        let end = (b as u128 + 1) * unit;
        let take = (end - pos).min(left);
        let backend = order[b % n];
        let weight = take as f64 / unit as f64;
        if len > 0 && out[0].backend == backend {
            // The arc came around to the backend it started in: one member.
            out[0].weight += weight;
        } else {
            out[len] = Member { backend, weight };
            len += 1;
        }
        pos += take;
        left -= take;
        b += 1;
    }
    len
}
