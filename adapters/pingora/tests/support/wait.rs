//! Waiting for a state the test can observe, never for a guessed duration: a bounded poll of the
//! condition that panics, naming what never happened and how things last stood, once
//! [`DEADLINE`] passes. The deadline only turns a hang into a clear failure; no test passes or
//! fails by how fast the machine is.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::{Duration, Instant};

/// How long a condition may take: generous, for a debug build on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often a condition is checked.
const EVERY: Duration = Duration::from_millis(2);

/// Polls `cond` until it returns `Ok`; its `Err` says how things stand (for the panic message).
pub async fn until(what: &str, mut cond: impl FnMut() -> Result<(), String>) {
    until_async(what, || std::future::ready(cond())).await;
}

/// [`until`] with an async condition.
pub async fn until_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        match cond().await {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("waited {DEADLINE:?} for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(EVERY).await,
        }
    }
}

/// [`until`] for a thread outside any runtime (or a synchronous helper), blocking it.
pub fn blocking(what: &str, mut cond: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match cond() {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("waited {DEADLINE:?} for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(EVERY),
        }
    }
}
