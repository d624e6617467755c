//! Shared benchmark machinery: every ring implementation behind one trait, key generation, and a
//! tiny timing loop. Used by the criterion benches (`cargo bench -p pickwise-benches`) and the
//! side-by-side `compare` binary.

// Peer crates' types have no `Debug`; this crate is internal.
#![allow(missing_debug_implementations)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use pickwise::{hash, Ring, RingConfig};

/// User + system CPU seconds from a `/proc` `stat` file: `/proc/PID/stat` for a process (all
/// threads), `/proc/thread-self/stat` for the calling thread.
pub fn proc_cpu_seconds(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the `(comm)`, which may hold spaces: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI Rust supports.
    Some((utime + stime) / 100.0)
}

/// Points (virtual nodes) per endpoint in the ring comparisons.
pub const POINTS: u32 = 100;

/// Endpoint names: `10.x.y.z:8080`.
pub fn endpoints(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}:8080", (i >> 16) & 255, (i >> 8) & 255, i & 255))
        .collect()
}

/// Stable identity of an endpoint name from [`endpoints`] (its position in the full list), so crates
/// that hash node values see the same node after another one is removed.
pub fn id_of(name: &str) -> u32 {
    let ip = name.split(':').next().unwrap_or("");
    ip.split('.')
        .skip(1)
        .fold(0u32, |acc, part| (acc << 8) | part.parse::<u32>().unwrap_or(0))
}

fn id_of_addr(addr: &SocketAddr) -> u32 {
    match addr.ip() {
        std::net::IpAddr::V4(v4) => u32::from(v4) & 0x00ff_ffff,
        std::net::IpAddr::V6(_) => 0,
    }
}

/// Node ids of `endpoints` and the table from id back to position.
fn id_table(endpoints: &[String]) -> (Vec<u32>, Vec<u32>) {
    let ids: Vec<u32> = endpoints.iter().map(|e| id_of(e)).collect();
    let mut index = vec![0u32; ids.iter().copied().max().unwrap_or(0) as usize + 1];
    for (i, &id) in ids.iter().enumerate() {
        index[id as usize] = i as u32;
    }
    (ids, index)
}

/// `count` random 16-byte ASCII keys (deterministic).
pub fn keys(count: usize, seed: u64) -> Vec<[u8; 16]> {
    let mut s = seed;
    (0..count)
        .map(|_| {
            let mut k = [0u8; 16];
            for b in &mut k {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *b = b'a' + ((s >> 33) % 26) as u8;
            }
            k
        })
        .collect()
}

/// A consistent-hash implementation under test: built from endpoint names, looks up 16-byte keys
/// (hashing included) and returns the endpoint index.
pub trait RingImpl: Sized {
    /// Display name.
    const NAME: &'static str;
    /// Builds over `endpoints` with about [`POINTS`] points each (where the crate has points).
    fn build(endpoints: &[String]) -> Self;
    /// The endpoint index for `key`.
    fn lookup(&self, key: &[u8]) -> usize;
}

/// pickwise, native mode (XXH3, 100 points per endpoint).
pub struct PickwiseNative(pub Ring);

impl RingImpl for PickwiseNative {
    const NAME: &'static str = "pickwise-native";
    fn build(endpoints: &[String]) -> Self {
        let list: Vec<(&str, u32)> = endpoints.iter().map(|e| (e.as_str(), 1)).collect();
        Self(Ring::build(&list, &RingConfig::native(POINTS)).expect("ring"))
    }
    #[inline]
    fn lookup(&self, key: &[u8]) -> usize {
        self.0.lookup(hash::native(key)).unwrap_or(0) as usize
    }
}

/// pickwise, Envoy-compatible mode (XXH64, ring size fixed at 100 x endpoints).
pub struct PickwiseEnvoy(pub Ring);

impl RingImpl for PickwiseEnvoy {
    const NAME: &'static str = "pickwise-envoy";
    fn build(endpoints: &[String]) -> Self {
        let list: Vec<(&str, u32)> = endpoints.iter().map(|e| (e.as_str(), 1)).collect();
        let size = u64::from(POINTS) * endpoints.len() as u64;
        let cfg = RingConfig::envoy()
            .with_min_ring_size(size)
            .with_max_ring_size(size);
        Self(Ring::build(&list, &cfg).expect("ring"))
    }
    #[inline]
    fn lookup(&self, key: &[u8]) -> usize {
        self.0.lookup(hash::xxh64(key)).unwrap_or(0) as usize
    }
}

/// pickwise Maglev table (Envoy-compatible, 65537 entries).
pub struct PickwiseMaglev(pub pickwise::Maglev);

impl RingImpl for PickwiseMaglev {
    const NAME: &'static str = "pickwise-maglev";
    fn build(endpoints: &[String]) -> Self {
        let list: Vec<(&str, u32)> = endpoints.iter().map(|e| (e.as_str(), 1)).collect();
        Self(pickwise::Maglev::build(&list, pickwise::maglev::DEFAULT_TABLE_SIZE).expect("maglev"))
    }
    #[inline]
    fn lookup(&self, key: &[u8]) -> usize {
        self.0.lookup(hash::native(key)).unwrap_or(0) as usize
    }
}

/// The baseline to beat: a plain binary search over a sorted `Vec<u64>` (same points as native).
pub struct BinarySearch {
    points: Vec<u64>,
    owners: Vec<u32>,
}

impl RingImpl for BinarySearch {
    const NAME: &'static str = "binary-search";
    fn build(endpoints: &[String]) -> Self {
        let ring = PickwiseNative::build(endpoints).0;
        let v = ring.view();
        Self {
            points: v.points().to_vec(),
            owners: v.owners().to_vec(),
        }
    }
    #[inline]
    fn lookup(&self, key: &[u8]) -> usize {
        let h = hash::native(key);
        let i = self.points.partition_point(|&p| p < h);
        self.owners[if i == self.points.len() { 0 } else { i }] as usize
    }
}

/// Cloudflare's `pingora-ketama` (nginx-compatible; fixed 160 points per unit of weight, CRC32).
pub struct Ketama(pub pingora_ketama::Continuum, Vec<u32>);

impl RingImpl for Ketama {
    const NAME: &'static str = "pingora-ketama";
    fn build(endpoints: &[String]) -> Self {
        let buckets: Vec<pingora_ketama::Bucket> = endpoints
            .iter()
            .map(|e| pingora_ketama::Bucket::new(e.parse::<SocketAddr>().expect("addr"), 1))
            .collect();
        Self(pingora_ketama::Continuum::new(&buckets), id_table(endpoints).1)
    }
    #[inline]
    fn lookup(&self, key: &[u8]) -> usize {
        // The crate answers with the address; map it back to the endpoint's position.
        self.0
            .node(key)
            .map_or(0, |addr| self.1[id_of_addr(&addr) as usize] as usize)
    }
}

/// `hashring` 0.3 (SipHash; one node per virtual point, so 100 `(endpoint, replica)` nodes each).
pub struct HashRingCrate(pub hashring::HashRing<(u32, u32)>, Vec<u32>);

impl RingImpl for HashRingCrate {
    const NAME: &'static str = "hashring";
    fn build(endpoints: &[String]) -> Self {
        let (ids, index) = id_table(endpoints);
        let mut ring = hashring::HashRing::new();
        for id in ids {
            for r in 0..POINTS {
                ring.add((id, r));
            }
        }
        Self(ring, index)
    }
    #[inline]
    fn lookup(&self, key: &[u8]) -> usize {
        self.0.get(&key).map_or(0, |n| self.1[n.0 as usize] as usize)
    }
}

/// A `conhash` node.
#[derive(Clone)]
pub struct ConNode(pub u32, pub String);

impl conhash::Node for ConNode {
    fn name(&self) -> String {
        self.1.clone()
    }
}

/// `conhash` 0.5 (MD5, BTreeMap; 100 replicas each).
pub struct ConHash(pub conhash::ConsistentHash<ConNode>);

impl RingImpl for ConHash {
    const NAME: &'static str = "conhash";
    fn build(endpoints: &[String]) -> Self {
        let mut ring = conhash::ConsistentHash::new();
        for (i, e) in endpoints.iter().enumerate() {
            ring.add(&ConNode(i as u32, e.clone()), POINTS as usize);
        }
        Self(ring)
    }
    #[inline]
    fn lookup(&self, key: &[u8]) -> usize {
        self.0.get(key).map_or(0, |n| n.0 as usize)
    }
}

/// The `maglev` crate 0.2 (table of 65537, as Envoy's default).
pub struct MaglevCrate(pub maglev::Maglev<u32>, Vec<u32>);

impl RingImpl for MaglevCrate {
    const NAME: &'static str = "maglev";
    fn build(endpoints: &[String]) -> Self {
        let (ids, index) = id_table(endpoints);
        Self(maglev::Maglev::with_capacity(ids, 65537), index)
    }
    #[inline]
    fn lookup(&self, key: &[u8]) -> usize {
        use maglev::ConsistentHasher;
        self.0.get(key).map_or(0, |&n| self.1[n as usize] as usize)
    }
}

/// `mpchash` 2 (multi-probe consistent hashing: one position per endpoint, 21 probes per lookup).
pub struct MpcHash(pub mpchash::HashRing<u32>, Vec<u32>);

impl RingImpl for MpcHash {
    const NAME: &'static str = "mpchash";
    fn build(endpoints: &[String]) -> Self {
        let (ids, index) = id_table(endpoints);
        let ring = mpchash::HashRing::new();
        for id in ids {
            ring.add(id);
        }
        Self(ring, index)
    }
    #[inline]
    fn lookup(&self, key: &[u8]) -> usize {
        self.0
            .node(&key)
            .map_or(0, |t| self.1[*t.node() as usize] as usize)
    }
}

/// Nanoseconds per lookup over `keys`, `rounds` passes, best of `reps`.
pub fn time_lookups<R: RingImpl>(ring: &R, keys: &[[u8; 16]], rounds: usize, reps: usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        let mut acc = 0usize;
        for _ in 0..rounds {
            for k in keys {
                acc = acc.wrapping_add(ring.lookup(black_box(k)));
            }
        }
        black_box(acc);
        best = best.min(start.elapsed().as_nanos() as f64 / (rounds * keys.len()) as f64);
    }
    best
}

/// Lookup counts per endpoint over `keys`: (coefficient of variation, max / mean).
pub fn distribution<R: RingImpl>(ring: &R, n: usize, keys: &[[u8; 16]]) -> (f64, f64) {
    let mut counts = vec![0u64; n];
    for k in keys {
        counts[ring.lookup(k) % n] += 1;
    }
    let mean = keys.len() as f64 / n as f64;
    let var = counts.iter().map(|&c| (c as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    let max = counts.iter().copied().max().unwrap_or(0) as f64;
    (var.sqrt() / mean, max / mean)
}

/// Fraction of `keys` whose endpoint changes when endpoint `victim` of `endpoints` is removed
/// (endpoints compared by name).
pub fn moved_fraction<R: RingImpl>(endpoints: &[String], victim: usize, keys: &[[u8; 16]]) -> f64 {
    let before = R::build(endpoints);
    let rest: Vec<String> = endpoints
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, e)| e.clone())
        .collect();
    let after = R::build(&rest);
    let moved = keys
        .iter()
        .filter(|k| endpoints[before.lookup(&k[..])] != rest[after.lookup(&k[..])])
        .count();
    moved as f64 / keys.len() as f64
}
