//! gRPC's priority policy (grpc-go `balancer/priority`, gRFC A56 / A27) as data: which priority
//! serves, when a priority that never connects is given up, and when an unused one is closed.
//!
//! Rules, as grpc-go's `balancer_priority.go` states them:
//! - Children are walked from priority 0. A child not yet started is started (its endpoints are
//!   told to connect, its 10 s failover timer runs) and serves: lower priorities connect only when
//!   needed.
//! - A child serves when it is READY or IDLE, or CONNECTING while its failover timer runs (its
//!   first attempt, or a reconnect after READY); the lowest priority serves when nothing else does.
//! - A child that reported TRANSIENT_FAILURE stays failed until it reports READY again: going back
//!   to CONNECTING (reconnecting, or an endpoint added to it) starts no timer and pulls no traffic
//!   back, so the next priority keeps serving.
//! - Children below the one serving are stopped; their connections are kept for
//!   [`BalancerConfig::retention_ns`](super::BalancerConfig::retention_ns) (grpc-go's sub-balancer
//!   cache, 15 s) so a flap back reuses them, then closed.

use super::Connectivity;

/// One priority's state (grpc-go's `childBalancer`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Child {
    /// Started: its endpoints are asked to connect.
    pub(crate) started: bool,
    /// Reported TRANSIENT_FAILURE since it was last READY or IDLE.
    pub(crate) reported_tf: bool,
    /// The failover timer: while it runs, CONNECTING keeps this child in use.
    pub(crate) init_deadline: Option<u64>,
    /// Stopped and kept until then (connections cached); `None` while started.
    pub(crate) retire_at: Option<u64>,
    /// Its aggregate state as last evaluated.
    pub(crate) state: Connectivity,
    /// Its endpoints by effective state (Idle, Connecting, Ready, TransientFailure), kept
    /// incrementally so a state change costs O(1), not a scan of every endpoint.
    pub(crate) counts: [u32; 4],
    /// Every READY endpoint is ejected by outlier detection (seen at the last sweep): the
    /// priority policy takes it as TRANSIENT_FAILURE, as gRPC's ejection reports.
    pub(crate) all_ejected: bool,
}

/// The index of `state` in [`Child::counts`].
pub(crate) fn slot_index(state: Connectivity) -> usize {
    match state {
        Connectivity::Idle => 0,
        Connectivity::Connecting => 1,
        Connectivity::Ready => 2,
        Connectivity::TransientFailure => 3,
    }
}

impl Child {
    /// grpc-go `handleChildStateUpdate`: the flags a new aggregate state sets.
    pub(crate) fn observe(&mut self, state: Connectivity, now: u64, failover_ns: u64) {
        match state {
            Connectivity::Ready | Connectivity::Idle => {
                self.reported_tf = false;
                self.init_deadline = None;
            }
            Connectivity::TransientFailure => {
                self.reported_tf = true;
                self.init_deadline = None;
            }
            Connectivity::Connecting => {
                if !self.reported_tf && self.init_deadline.is_none() && self.state != state {
                    self.init_deadline = Some(now.saturating_add(failover_ns));
                }
            }
        }
        self.state = state;
    }

    /// Starts (or restarts) the child: its timer runs and it is presumed connecting.
    pub(crate) fn start(&mut self, now: u64, failover_ns: u64) {
        self.started = true;
        self.retire_at = None;
        self.reported_tf = false;
        self.init_deadline = Some(now.saturating_add(failover_ns));
        self.state = Connectivity::Connecting;
    }

    /// Stops the child; its connections are kept until `now + retention_ns`.
    pub(crate) fn stop(&mut self, now: u64, retention_ns: u64) {
        self.started = false;
        self.init_deadline = None;
        self.retire_at = Some(now.saturating_add(retention_ns));
    }

    /// Whether this started child serves (the last child always may).
    pub(crate) fn serves(&self, last: bool) -> bool {
        match self.state {
            Connectivity::Ready | Connectivity::Idle => true,
            Connectivity::Connecting => self.init_deadline.is_some() || last,
            Connectivity::TransientFailure => last,
        }
    }
}

impl Child {
    /// Endpoints in the child.
    pub(crate) fn members(&self) -> u32 {
        self.counts.iter().sum()
    }

    /// The child's aggregate state from its counts: round robin's rules ([`aggregate`]), or for
    /// ring hash gRFC A42's (grpc-go `ringhash.go` `aggregatedStateLocked`): READY if any; else
    /// TRANSIENT_FAILURE if two or more are; else CONNECTING if any is, or if exactly one of
    /// several failed (the ring walks past it); else IDLE if any; else TRANSIENT_FAILURE.
    pub(crate) fn aggregate(&self, ring_hash: bool) -> Connectivity {
        let [idle, connecting, ready, tf] = self.counts;
        if !ring_hash {
            let states = [
                (idle > 0).then_some(Connectivity::Idle),
                (connecting > 0).then_some(Connectivity::Connecting),
                (ready > 0).then_some(Connectivity::Ready),
            ];
            return aggregate(states.into_iter().flatten());
        }
        if ready > 0 {
            Connectivity::Ready
        } else if tf > 1 {
            Connectivity::TransientFailure
        } else if connecting > 0 || (tf == 1 && self.members() > 1) {
            Connectivity::Connecting
        } else if idle > 0 {
            Connectivity::Idle
        } else {
            Connectivity::TransientFailure
        }
    }
}

/// The aggregate of endpoint states (grpc-go `endpointsharding` / `balancer/base`): READY if any
/// is; else CONNECTING if any is (sticky failures count as failing); else IDLE if any is; else
/// TRANSIENT_FAILURE (also for no endpoints).
pub(crate) fn aggregate(states: impl IntoIterator<Item = Connectivity>) -> Connectivity {
    let (mut connecting, mut idle) = (false, false);
    for s in states {
        match s {
            Connectivity::Ready => return Connectivity::Ready,
            Connectivity::Connecting => connecting = true,
            Connectivity::Idle => idle = true,
            Connectivity::TransientFailure => {}
        }
    }
    if connecting {
        Connectivity::Connecting
    } else if idle {
        Connectivity::Idle
    } else {
        Connectivity::TransientFailure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_child_reconnecting_does_not_serve() {
        let mut c = Child::default();
        c.start(0, 10);
        assert!(c.serves(false));
        c.observe(Connectivity::TransientFailure, 1, 10);
        assert!(!c.serves(false));
        c.observe(Connectivity::Connecting, 2, 10);
        assert!(!c.serves(false), "sticky: no timer after a failure");
        assert!(c.serves(true), "the last priority always serves");
        c.observe(Connectivity::Ready, 3, 10);
        assert!(c.serves(false));
        // READY -> CONNECTING (connection lost): a fresh timer.
        c.observe(Connectivity::Connecting, 4, 10);
        assert_eq!(c.init_deadline, Some(14));
    }

    #[test]
    fn ring_hash_aggregation_is_a42s() {
        let child = |counts| Child {
            counts,
            ..Child::default()
        };
        // Two failed, one connecting: TRANSIENT_FAILURE for ring hash, CONNECTING otherwise.
        assert_eq!(
            child([0, 1, 0, 2]).aggregate(true),
            Connectivity::TransientFailure
        );
        assert_eq!(child([0, 1, 0, 2]).aggregate(false), Connectivity::Connecting);
        // One of several failed, the rest idle: CONNECTING (the ring walks past it).
        assert_eq!(child([2, 0, 0, 1]).aggregate(true), Connectivity::Connecting);
        assert_eq!(
            child([0, 0, 0, 1]).aggregate(true),
            Connectivity::TransientFailure
        );
        assert_eq!(child([1, 0, 1, 3]).aggregate(true), Connectivity::Ready);
    }

    #[test]
    fn aggregate_rules() {
        use Connectivity::*;
        assert_eq!(aggregate([TransientFailure, Ready]), Ready);
        assert_eq!(aggregate([TransientFailure, Connecting, Idle]), Connecting);
        assert_eq!(aggregate([TransientFailure, Idle]), Idle);
        assert_eq!(aggregate([TransientFailure]), TransientFailure);
        assert_eq!(aggregate([]), TransientFailure);
    }
}
