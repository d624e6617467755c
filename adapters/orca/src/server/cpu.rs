//! CPU utilization from the OS: [`CpuSampler`] keeps a [`ServerMetricsRecorder`]'s
//! `cpu_utilization` current.
//!
//! On Linux it reads the aggregate `cpu` line of `/proc/stat` each period and reports
//! busy time / total time over the last period, in [0, 1] for the whole machine (all CPUs).
//! Busy is everything but `idle` and `iowait`; `guest`/`guest_nice` are already counted in
//! `user`/`nice` and are left out of the total (proc(5)). Elsewhere the sampler does nothing.

use std::time::Duration;

use super::metrics::ServerMetricsRecorder;

/// Cumulative CPU times from one `/proc/stat` reading, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks spent doing anything but idle or waiting for I/O.
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

impl CpuTimes {
    /// Parses the aggregate `cpu ` line of a `/proc/stat` text.
    pub fn parse_proc_stat(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line
            .split_ascii_whitespace()
            .skip(1)
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        if f.len() < 4 {
            return None;
        }
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        let total: u64 = f.iter().take(8).sum();
        let idle = f[3] + f.get(4).copied().unwrap_or(0);
        Some(Self {
            busy: total.saturating_sub(idle),
            total,
        })
    }

    /// Reads `/proc/stat` now; `None` where it does not exist or cannot be parsed.
    pub fn read() -> Option<Self> {
        if cfg!(target_os = "linux") {
            Self::parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
        } else {
            None
        }
    }

    /// Utilization between `earlier` and `self`, `None` if no time passed.
    pub fn utilization_since(&self, earlier: &Self) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total).filter(|&t| t > 0)?;
        let busy = self.busy.saturating_sub(earlier.busy).min(total);
        Some(busy as f64 / total as f64)
    }
}

/// A background task (tokio) setting a recorder's CPU utilization every period; stops when
/// dropped. A no-op where the OS gives no CPU times.
#[derive(Debug)]
pub struct CpuSampler {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl CpuSampler {
    /// Starts sampling into `recorder` every `period` (floored at 10 ms). Must be called
    /// inside a tokio runtime when supported.
    pub fn start(recorder: ServerMetricsRecorder, period: Duration) -> Self {
        let Some(mut last) = CpuTimes::read() else {
            return Self { task: None };
        };
        let period = period.max(Duration::from_millis(10));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(now) = CpuTimes::read() else { return };
                if let Some(u) = now.utilization_since(&last) {
                    recorder.set_cpu_utilization(u);
                }
                last = now;
            }
        });
        Self { task: Some(task) }
    }

    /// Whether this sampler runs (the OS gave CPU times).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for CpuSampler {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_deltas() {
        let a = CpuTimes::parse_proc_stat("cpu  100 0 100 700 100 0 0 0 50 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(
            a,
            CpuTimes {
                busy: 200,
                total: 1000
            }
        );
        let b = CpuTimes::parse_proc_stat("cpu  400 0 100 900 100 0 0 0 0 0\n").unwrap();
        assert_eq!(b.utilization_since(&a), Some(0.6));
        assert_eq!(a.utilization_since(&a), None);
        assert_eq!(CpuTimes::parse_proc_stat("cpu0 1 2 3 4"), None);
        assert_eq!(CpuTimes::parse_proc_stat("cpu  1 x 3 4"), None);
    }
}
