//! # pickwise
//!
//! The algorithm core of a client-side load balancer: a consistent-hash ring compatible with Envoy
//! and grpc-go, and a power-of-two-choices picker whose load lives in atomics.
//!
//! **Sans-IO.** This crate reads no clock, draws no randomness of its own, starts no thread and does
//! no I/O: callers pass `now` and random numbers in. It is `#![no_std]`; feature `alloc` adds owned
//! rings, `std` (default) implies `alloc`. Adapters such as `pickwise-tonic` bind it to real traffic.
//!
//! - [`ring`]: [`Ring`], [`FixedRing`], [`RingView`]: build, look up, walk to the next ready endpoint,
//!   measure disruption.
//! - [`hash`]: request-key hashing (XXH64 as Envoy/grpc-go, gRFC A76 joined values, XXH3).
//! - [`p2c`]: [`P2c`], power of two choices over [`EndpointState`]s (atomics, padded to a cache
//!   line); [`InFlight`] guards release their slot on drop.
//! - [`pool`]: [`Pool`]: cost [`Policy`] (least-request, peak-EWMA, go-zero) and passive outlier
//!   detection ([`OutlierConfig`], Envoy defaults).
//! - [`maglev`]: [`Maglev`] tables (Envoy-compatible), O(1) lookups (feature `alloc`).
//! - [`hashing`]: [`RingPicker`]: ring picks that skip unavailable endpoints, bounded load
//!   (Envoy `hash_balance_factor`) and pickwise's affinity-with-load.
//! - [`picker`]: [`Picker`], the one "which endpoint" decision every adapter calls, built from
//!   an [`LbPolicy`] named as gRPC service config names it (P2C, round robin, ring hash; panic
//!   routing when everything ready is ejected).
//! - [`balancer`]: [`Balancer`](balancer::Balancer), the balancer's life as a sans-IO state
//!   machine (membership, readiness, priorities and localities as gRPC's tree, timers) that
//!   publishes [`Prepared`](balancer::Prepared) pickers; every adapter drives one (feature `alloc`).
//! - [`prequal`]: Prequal (NSDI '24): a lock-free pool of probe answers (requests in flight and
//!   latency per server) and the hot-cold lexicographic rule, `LbPolicy::Prequal`.
//! - [`schedule`]: weighted round robin by grpc-go's static stride scheduler (O(1) amortised).
//! - [`outcome`]: what a response or error means for its endpoint (HTTP status, gRPC status
//!   with Envoy's mapping, connect failure, local/downstream error), classified once.
//! - [`subset`]: subsetting for large fleets: gRFC A68 random subsetting, the SRE book's
//!   deterministic subsetting and Finagle's deterministic aperture.
//!
//! Time is the caller's monotonic clock in nanoseconds, passed as `now: u64`; it must not go
//! backwards by more than the intervals involved (a backwards step only shortens elapsed time to 0).
//!
//! # Examples
//!
//! ```
//! use pickwise::{hash, Ring, RingConfig};
//!
//! let ring = Ring::build(&[("a:80", 1), ("b:80", 1), ("c:80", 1)], &RingConfig::grpc()).unwrap();
//! let owner = ring.lookup(hash::xxh64(b"session-7")).unwrap();
//! // Skip endpoints that are not ready: walk clockwise to the next one that is.
//! let ready = [true, false, true];
//! let chosen = ring.find(hash::xxh64(b"session-7"), |e| ready[e as usize]).unwrap();
//! assert!(ready[chosen as usize]);
//! # let _ = owner;
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

#[cfg(feature = "alloc")]
pub mod balancer;
mod endpoint;
mod error;
pub mod hash;
pub mod hashing;
mod inflight;
#[cfg(feature = "alloc")]
pub mod maglev;
mod math;
pub mod outcome;
pub mod p2c;
pub mod picker;
pub mod pool;
pub mod prequal;
pub mod ring;
mod rng;
pub mod schedule;
pub mod subset;
mod sync;
mod time;
pub mod wrr;

pub use endpoint::{EndpointState, Outcome};
pub use error::RingError;
pub use hashing::{HashPolicy, RingPicker};
pub use inflight::{Completion, InFlight};
#[cfg(feature = "alloc")]
pub use maglev::{Maglev, MaglevError};
pub use outcome::Observed;
pub use p2c::{P2c, PickError};
pub use picker::{LbPolicy, NoKey, Picker};
pub use pool::{
    EjectionReason, FailurePercentageEjection, OutlierConfig, Policy, Pool, PoolConfig, SuccessRateEjection,
};
#[cfg(feature = "alloc")]
pub use ring::Ring;
pub use ring::{FixedRing, Mode, RingConfig, RingView, MAX_RING_SIZE};
pub use rng::{Rng, SplitMix64};
