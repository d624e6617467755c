//! gRFC A68 `random_subsetting`: rendezvous hashing. `order` arrives sorted by the client's
//! salted hash of each backend key, so the subset is its head; adding or removing one backend
//! changes a client's subset by at most one backend, and only if that backend ranks in its head.

use super::{take_along, Grow, Member};

pub(super) fn take<F: Fn(u32) -> bool>(
    order: &[u32],
    subset_size: u32,
    grow: &Grow<'_, F>,
    out: &mut [Member],
) -> usize {
    take_along(order, 0, subset_size, grow, out)
}
