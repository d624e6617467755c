//! Atomic facade: `core`'s atomics, or `portable-atomic`'s with the `portable-atomic` feature
//! (for targets without compare-and-swap, e.g. `thumbv6m`, with portable-atomic's own cfgs), or
//! `loom`'s under `--cfg loom` (the model checks in `tests/loom.rs`).
//!
//! All load state is 32-bit so the core runs on targets without 64-bit atomics
//! (`thumbv7em-none-eabihf`). Statistics counters are 64-bit where the target has 64-bit atomics
//! (or with `portable-atomic`), else 32-bit and wrapping.

#[cfg(all(not(loom), not(feature = "portable-atomic")))]
pub(crate) use core::sync::atomic::{AtomicU32, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, Ordering};
#[cfg(all(not(loom), feature = "portable-atomic"))]
pub(crate) use portable_atomic::{AtomicU32, Ordering};

#[cfg(loom)]
pub(crate) type Counter = loom::sync::atomic::AtomicU64;
#[cfg(all(not(loom), not(feature = "portable-atomic"), target_has_atomic = "64"))]
pub(crate) type Counter = core::sync::atomic::AtomicU64;
#[cfg(all(not(loom), feature = "portable-atomic", target_has_atomic = "64"))]
pub(crate) type Counter = portable_atomic::AtomicU64;
#[cfg(all(not(loom), not(target_has_atomic = "64")))]
pub(crate) type Counter = AtomicU32;

/// Reads a statistics counter as `u64`.
#[inline]
pub(crate) fn read(c: &Counter) -> u64 {
    #[allow(clippy::useless_conversion)]
    u64::from(c.load(Ordering::Relaxed))
}
