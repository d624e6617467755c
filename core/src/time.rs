//! The clock helpers: the caller's monotonic nanoseconds (`now: u64`) to the wrapping 32-bit
//! millisecond stamps kept in atomics, and the unsigned distance between two stamps (exact up to
//! 49 days; a clock that stepped back by up to 2^20 ms, 17 minutes, reads as "no time passed").
//! Used by [`endpoint`](crate::endpoint), [`pool`](crate::pool) and [`p2c`](crate::p2c); imports
//! nothing.

/// Intervals measured backwards by at most this much read as 0 (a clock that stepped back).
const BACKWARDS_MS: u32 = 1 << 20;

/// Caller's clock in nanoseconds to the wrapping millisecond stamp stored in atomics.
#[inline]
pub(crate) fn millis(now_ns: u64) -> u32 {
    (now_ns / 1_000_000) as u32
}

/// Milliseconds from stamp `since` to `now_ms`, unsigned (exact up to 49 days); a small backwards
/// step reads as 0.
#[inline]
pub(crate) fn elapsed_ms(now_ms: u32, since: u32) -> u32 {
    let d = now_ms.wrapping_sub(since);
    if d > u32::MAX - BACKWARDS_MS {
        0
    } else {
        d
    }
}
