//! Request-key hashing.
//!
//! Envoy and grpc-go hash ring points and request keys with XXH64, seed 0. gRFC A76 lets a request
//! carry its hash key in a metadata header; when the header has several values they are joined with
//! `","` before hashing. [`native`] is the faster XXH3 used by [`Mode::Native`](crate::Mode::Native).
//!
//! # Examples
//!
//! ```
//! use pickwise::hash;
//!
//! // grpc-go's picker test vectors (gRFC A76).
//! assert_eq!(hash::xxh64(b""), 17241709254077376921);
//! assert_eq!(hash::xxh64(b"some-value"), 1094076000777946959);
//! assert_eq!(hash::xxh64_joined([&b"value1"[..], b"value2"]), 7597366331508923242);
//! ```

use xxhash_rust::xxh64::Xxh64;

/// XXH64 with seed 0 of `key`: the request hash Envoy and grpc-go use.
#[inline]
pub fn xxh64(key: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(key, 0)
}

/// XXH64 (seed 0) of `values` joined with `","`, without allocating (gRFC A76 multi-valued headers).
///
/// One value hashes like [`xxh64`] of that value; an empty iterator hashes like `xxh64(b"")`.
pub fn xxh64_joined<'a, I>(values: I) -> u64
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut hasher = Xxh64::new(0);
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            hasher.update(b",");
        }
        hasher.update(value);
    }
    hasher.digest()
}

/// XXH3 (64-bit, seed 0) of `key`: the request hash of [`Mode::Native`](crate::Mode::Native) rings.
#[inline]
pub fn native(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// SplitMix64's output function: a bijective 64-bit mixer (Steele, Lea, Flood 2014).
#[inline]
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The golden-ratio increment of SplitMix64's Weyl sequence.
pub(crate) const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// XXH64 (seed 0) of `"<key>_<i>"`: the name of a host's `i`-th ring point in Envoy and grpc-go.
pub(crate) fn point_name_hash(key: &[u8], i: u64) -> u64 {
    let mut digits = [0u8; 20];
    let digits = decimal(i, &mut digits);
    const STACK: usize = 128;
    if key.len() + 1 + digits.len() <= STACK {
        let mut buf = [0u8; STACK];
        let n = key.len();
        buf[..n].copy_from_slice(key);
        buf[n] = b'_';
        buf[n + 1..n + 1 + digits.len()].copy_from_slice(digits);
        xxh64(&buf[..n + 1 + digits.len()])
    } else {
        let mut hasher = Xxh64::new(0);
        hasher.update(key);
        hasher.update(b"_");
        hasher.update(digits);
        hasher.digest()
    }
}

/// Formats `v` in decimal into the tail of `buf`, returning the digits.
fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn point_names_match_formatting() {
        for (key, i) in [("127.0.0.1:94", 1u64), ("a", 0), ("", 12345), ("x", u64::MAX)] {
            let name = format!("{key}_{i}");
            assert_eq!(point_name_hash(key.as_bytes(), i), xxh64(name.as_bytes()));
        }
        let long = "k".repeat(300);
        assert_eq!(
            point_name_hash(long.as_bytes(), 7),
            xxh64(format!("{long}_7").as_bytes())
        );
    }

    #[test]
    fn envoy_basic_point() {
        assert_eq!(point_name_hash(b"127.0.0.1:94", 1), 833437586790550860);
    }

    #[test]
    fn joined_single_value_equals_plain() {
        assert_eq!(xxh64_joined([&b"abc"[..]]), xxh64(b"abc"));
        assert_eq!(xxh64_joined(core::iter::empty()), xxh64(b""));
    }
}
