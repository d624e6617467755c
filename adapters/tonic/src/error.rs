//! Errors the balancer returns to callers, always as a gRPC `Status` inside the boxed error so
//! tonic clients see the exact code and message; and [`error_chain`], how errors are logged.

use tonic::{Code, Status};

/// Why a request found no endpoint. Becomes `UNAVAILABLE` with a message naming the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoEndpoint {
    /// Discovery produced an empty endpoint set.
    EmptySet,
    /// Discovery failed before producing any endpoint.
    Discovery(String),
    /// Every endpoint is failing to connect (or failing health checks).
    AllFailing {
        /// Number of endpoints.
        endpoints: usize,
        /// The most recent connection error, if any.
        last_error: Option<String>,
    },
    /// Nothing became ready within the wait-for-ready deadline.
    Timeout {
        /// The deadline, in milliseconds.
        waited_ms: u64,
        /// What the balancer saw last.
        state: String,
    },
    /// The balancer task has stopped (the last clone of the channel was dropped): requests that
    /// were waiting for a picker end with this.
    Shutdown,
}

impl std::fmt::Display for NoEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EmptySet => f.write_str("pickwise: no endpoints (discovery produced an empty set)"),
            Self::Discovery(e) => write!(f, "pickwise: no endpoints yet, discovery failed: {e}"),
            Self::AllFailing {
                endpoints,
                last_error,
            } => {
                write!(f, "pickwise: all {endpoints} endpoints are failing")?;
                match last_error {
                    Some(e) => write!(f, " (last error: {e})"),
                    None => Ok(()),
                }
            }
            Self::Timeout { waited_ms, state } => {
                write!(
                    f,
                    "pickwise: no endpoint became ready within {waited_ms} ms ({state})"
                )
            }
            Self::Shutdown => f.write_str("pickwise: balancer shut down"),
        }
    }
}

impl std::error::Error for NoEndpoint {}

impl From<NoEndpoint> for Status {
    fn from(e: NoEndpoint) -> Self {
        Self::new(Code::Unavailable, e.to_string())
    }
}

/// An error and its sources, joined with ": " (a source whose text is already in the message is
/// skipped). Not part of the API (hidden from the docs): public only so that `pickwise-xds` logs
/// errors the same way with this one copy.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        src = s.source();
    }
    msg
}
