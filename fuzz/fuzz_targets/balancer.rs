//! The core balancer's life under arbitrary event sequences (membership with priorities and
//! localities, connectivity, time, outcomes, policy switches, picks): no panic; a pick returns a
//! READY endpoint of the serving priority; Connect events only for endpoints the balancer wants
//! connected; timers never in the past once handled; in-flight counts return to zero.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pickwise::balancer::{Balancer, BalancerConfig, Connectivity, EndpointSpec, Event, OwnerConnecting};
use pickwise::{
    EndpointState, FailurePercentageEjection, InFlight, LbPolicy, OutlierConfig, Outcome, Pool, PoolConfig,
    SplitMix64,
};

#[derive(Arbitrary, Debug)]
enum Op {
    Insert { key: u8, weight: u8, priority: u8, locality: u8, locality_weight: u8, hash_key: Option<u8> },
    Remove { key: u8 },
    State { key: u8, state: u8 },
    Advance { ms: u16 },
    Call { key: Option<u64>, failed: bool },
    Policy { which: u8 },
    /// A Prequal probe answer (or one piggybacked on a response), then owed probes taken.
    Answer { key: u8, rif: u32, latency_us: u32, take: u8 },
}

#[derive(Arbitrary, Debug)]
struct Params {
    policy: u8,
    walk: bool,
    outlier: bool,
}

fn policy(which: u8) -> LbPolicy {
    match which % 5 {
        0 => LbPolicy::RoundRobin,
        4 => LbPolicy::Prequal(pickwise::prequal::PrequalConfig {
            pool_size: which / 5 % 40,
            removes_per_query: f32::from(which / 5 % 3),
            ..Default::default()
        }),
        1 => LbPolicy::P2c(pickwise::Policy::PeakEwma),
        2 => LbPolicy::from_name("ring_hash_experimental").unwrap(),
        _ => LbPolicy::Maglev {
            table_size: 251,
            no_key: pickwise::NoKey::RandomHash,
        },
    }
}

fuzz_target!(|input: (Params, Vec<Op>)| {
    let (p, ops) = input;
    let mut outlier = OutlierConfig {
        interval_ms: 1000,
        ..OutlierConfig::default()
    };
    if p.outlier {
        outlier.failure_percentage = Some(FailurePercentageEjection {
            request_volume: 3,
            minimum_hosts: 1,
            ..Default::default()
        });
    }
    let pool = Arc::new(Pool::new(PoolConfig {
        outlier,
        ..PoolConfig::default()
    }));
    let mut config = BalancerConfig::new(policy(p.policy));
    if p.walk {
        config.owner_connecting = OwnerConnecting::Walk;
    }
    let mut b: Balancer<String, Arc<EndpointState>> = Balancer::new(config, pool.clone());
    let mut now = 0u64;
    let mut rng = SplitMix64::new(7);
    let addr = |k: u8| format!("10.0.0.{}:80", k % 24);
    for op in ops.into_iter().take(400) {
        match op {
            Op::Insert { key, weight, priority, locality, locality_weight, hash_key } => {
                let spec = EndpointSpec {
                    weight: u32::from(weight),
                    priority: u32::from(priority % 4) * if priority > 250 { u32::MAX / 3 } else { 1 },
                    locality: u32::from(locality % 5),
                    locality_weight: u32::from(locality_weight),
                    hash_key: hash_key.map(|h| format!("hk{}", h % 8).into()),
                };
                b.insert(now, addr(key), spec, Arc::new(EndpointState::new(1)));
            }
            Op::Remove { key } => b.remove(now, &addr(key)),
            Op::State { key, state } => {
                let s = [Connectivity::Idle, Connectivity::Connecting, Connectivity::Ready, Connectivity::TransientFailure]
                    [usize::from(state % 4)];
                b.handle_connectivity(now, &addr(key), s);
            }
            Op::Advance { ms } => {
                now += u64::from(ms) * 1_000_000;
                b.handle_timeout(now);
                if let Some(t) = b.poll_timeout() {
                    assert!(t > now, "a timer in the past after handling it");
                }
            }
            Op::Call { key, failed } => {
                let picker = b.picker(now, 3);
                if let Ok(e) = picker.pick(now, key, &mut rng) {
                    let (k, _) = b.iter().find(|(_, t)| Arc::ptr_eq(t, e)).expect("a member");
                    assert_eq!(b.connectivity(k), Some(Connectivity::Ready));
                    assert_eq!(Some(b.spec(k).unwrap().priority), b.priority_in_use());
                    let outcome = if failed { Outcome::Failure } else { Outcome::Success };
                    let _ = InFlight::start(&**e, &*pool, now).complete(now + 1_000_000, outcome);
                }
            }
            Op::Policy { which } => b.set_policy(policy(which)),
            Op::Answer { key, rif, latency_us, take } => {
                let picker = b.picker(now, 3);
                if let Some(e) = b.get(&addr(key)) {
                    let report = pickwise::prequal::ProbeReport { rif, latency_us };
                    picker.record_probe(e, report, now, &mut rng);
                }
                let mut out = [usize::MAX; 8];
                let n = picker.probe_targets(now, &mut rng, &mut out[..usize::from(take % 9)]);
                assert!(out[..n].iter().all(|&i| i < picker.ready().len()));
                if let Some(probes) = picker.probes() {
                    assert!(probes.len() <= pickwise::prequal::MAX_POOL_SIZE);
                }
            }
        }
        while let Some(ev) = b.poll_event() {
            if let Event::Connect(k) = ev {
                assert!(b.wants_connection(&k));
            }
        }
    }
    assert!(b.iter().all(|(_, e)| e.in_flight() == 0));
});
