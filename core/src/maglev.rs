//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), compatible with Envoy's `maglev` LB.
//!
//! A lookup table of prime size `M` (Envoy's default 65537) holds an endpoint index per slot; a
//! lookup is `table[hash % M]`, O(1). Each endpoint has a permutation of the slots given by
//! `offset = xxh64(key, 0) % M` and `skip = xxh64(key, 1) % (M - 1) + 1`; endpoints, sorted by key,
//! take turns claiming their next free slot, weighted as Envoy does (an endpoint of weight `w` takes
//! a turn when `iteration * w >= target`, then `target += max_w`).
//!
//! The build walks each permutation incrementally (`pos += skip`, no division) and stores nothing
//! per slot but the final table: 4 bytes x `M` plus ~40 bytes per endpoint, instead of a full
//! `M`-entry permutation per endpoint.
//!
//! # Examples
//!
//! Envoy's `Basic` vector (table size 7):
//!
//! ```
//! use pickwise::Maglev;
//!
//! let hosts: Vec<(String, u32)> = (90..=95).map(|p| (format!("127.0.0.1:{p}"), 1)).collect();
//! let m = Maglev::build(&hosts, 7).unwrap();
//! let table: Vec<u32> = m.table().to_vec();
//! assert_eq!(table, [2, 4, 0, 1, 5, 0, 3]); // :92 :94 :90 :91 :95 :90 :93
//! ```

use alloc::vec::Vec;
use core::fmt;

use crate::ring::build::weight_of;
use xxhash_rust::xxh64::xxh64;

/// Envoy's default table size (prime).
pub const DEFAULT_TABLE_SIZE: u64 = 65_537;
/// Envoy's largest table size.
pub const MAX_TABLE_SIZE: u64 = 5_000_011;

/// Why a Maglev table could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MaglevError {
    /// No endpoints.
    Empty,
    /// The table size is not a prime, or is larger than [`MAX_TABLE_SIZE`].
    BadTableSize(u64),
    /// More endpoints than table slots.
    TooManyEndpoints {
        /// Endpoints given.
        endpoints: usize,
        /// Table size.
        table_size: u64,
    },
    /// Two endpoints share a key (input positions).
    DuplicateKey {
        /// First occurrence.
        first: usize,
        /// Repeat.
        second: usize,
    },
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("no endpoints to build a Maglev table from"),
            Self::BadTableSize(m) => write!(f, "Maglev table size {m} must be a prime <= {MAX_TABLE_SIZE}"),
            Self::TooManyEndpoints {
                endpoints,
                table_size,
            } => {
                write!(
                    f,
                    "{endpoints} endpoints do not fit a Maglev table of {table_size}"
                )
            }
            Self::DuplicateKey { first, second } => {
                write!(f, "endpoints {first} and {second} have the same key")
            }
        }
    }
}

impl core::error::Error for MaglevError {}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

/// A Maglev lookup table over endpoints named by their position in the build input.
#[derive(Clone, Debug)]
pub struct Maglev {
    table: Vec<u32>,
    endpoints: usize,
}

struct Entry {
    idx: u32,
    pos: u64,
    skip: u64,
    weight: f64,
    target: f64,
}

impl Maglev {
    /// Builds a table of `table_size` slots (a prime, e.g. [`DEFAULT_TABLE_SIZE`]) from
    /// `(key, weight)` pairs; weight 0 counts as 1.
    pub fn build<K: AsRef<[u8]>>(endpoints: &[(K, u32)], table_size: u64) -> Result<Self, MaglevError> {
        if endpoints.is_empty() {
            return Err(MaglevError::Empty);
        }
        if table_size > MAX_TABLE_SIZE || !is_prime(table_size) {
            return Err(MaglevError::BadTableSize(table_size));
        }
        if endpoints.len() as u64 > table_size {
            return Err(MaglevError::TooManyEndpoints {
                endpoints: endpoints.len(),
                table_size,
            });
        }
        let m = table_size;
        // Envoy sorts by key so the table does not depend on input order.
        let mut order: Vec<u32> = (0..endpoints.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            endpoints[a as usize]
                .0
                .as_ref()
                .cmp(endpoints[b as usize].0.as_ref())
        });
        if let Some(w) = order
            .windows(2)
            .find(|w| endpoints[w[0] as usize].0.as_ref() == endpoints[w[1] as usize].0.as_ref())
        {
            let (first, second) = (w[0].min(w[1]) as usize, w[0].max(w[1]) as usize);
            return Err(MaglevError::DuplicateKey { first, second });
        }
        let sum: u64 = endpoints.iter().map(|(_, w)| weight_of(*w)).sum();
        let mut entries: Vec<Entry> = order
            .iter()
            .map(|&i| {
                let (key, w) = &endpoints[i as usize];
                let key = key.as_ref();
                Entry {
                    idx: i,
                    pos: xxh64(key, 0) % m,
                    skip: xxh64(key, 1) % (m - 1) + 1,
                    weight: weight_of(*w) as f64 / sum as f64,
                    target: 0.0,
                }
            })
            .collect();
        let max_w = entries.iter().map(|e| e.weight).fold(0.0, f64::max);
        let mut table = alloc::vec![u32::MAX; m as usize];
        let mut filled = 0u64;
        let mut iteration = 1u64;
        while filled < m {
            for e in entries.iter_mut() {
                if filled == m {
                    break;
                }
                if (iteration as f64) * e.weight < e.target {
                    continue;
                }
                e.target += max_w;
                // Walk this endpoint's permutation to its next free slot.
                while table[e.pos as usize] != u32::MAX {
                    e.pos += e.skip;
                    if e.pos >= m {
                        e.pos -= m;
                    }
                }
                table[e.pos as usize] = e.idx;
                e.pos += e.skip;
                if e.pos >= m {
                    e.pos -= m;
                }
                filled += 1;
            }
            iteration += 1;
        }
        Ok(Self {
            table,
            endpoints: endpoints.len(),
        })
    }

    /// The endpoint index for `hash`: `table[hash % M]`.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u32> {
        let m = self.table.len() as u64;
        self.table.get((hash % m) as usize).copied()
    }

    /// The slots (endpoint index per slot).
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// Number of endpoints.
    pub fn endpoints(&self) -> usize {
        self.endpoints
    }

    /// Heap bytes held by the table.
    pub fn heap_bytes(&self) -> usize {
        self.table.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::String;

    fn hosts(ws: &[u32]) -> Vec<(String, u32)> {
        ws.iter()
            .enumerate()
            .map(|(i, &w)| (format!("127.0.0.1:{}", 90 + i), w))
            .collect()
    }

    #[test]
    fn envoy_basic_hostname_keys() {
        let hs: Vec<(String, u32)> = (90..=95).map(|p| (format!("{p}"), 1)).collect();
        let m = Maglev::build(&hs, 7).unwrap();
        let names: Vec<&str> = m.table().iter().map(|&i| hs[i as usize].0.as_str()).collect();
        assert_eq!(names, ["92", "95", "90", "93", "94", "91", "90"]);
    }

    #[test]
    fn envoy_weighted() {
        let m = Maglev::build(&hosts(&[1, 2]), 17).unwrap();
        assert_eq!(m.table(), [1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(Maglev::build::<&str>(&[], 7).unwrap_err(), MaglevError::Empty);
        assert_eq!(
            Maglev::build(&hosts(&[1]), 8).unwrap_err(),
            MaglevError::BadTableSize(8)
        );
        assert!(matches!(
            Maglev::build(&hosts(&[1; 8]), 7),
            Err(MaglevError::TooManyEndpoints { .. })
        ));
        assert!(matches!(
            Maglev::build(&[("a", 1), ("a", 1)], 7),
            Err(MaglevError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn every_slot_filled_and_balanced() {
        let hs: Vec<(String, u32)> = (0..100).map(|i| (format!("h{i}"), 1)).collect();
        let m = Maglev::build(&hs, DEFAULT_TABLE_SIZE).unwrap();
        let mut counts = alloc::vec![0u32; 100];
        for &i in m.table() {
            counts[i as usize] += 1;
        }
        let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        assert!(max - min <= 1, "{min}..{max}");
    }
}
