//! gRPC C-core servers (Python `grpcio`, installed by `.ci/run`) as separate processes.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running C-core server; killed (like a crashed process) when dropped or `kill`ed.
pub struct CoreServer {
    pub addr: String,
    child: Child,
}

impl CoreServer {
    /// Starts one answering after `delay_ms`; `None` (with a note on stderr) when Python's
    /// `grpcio` is not installed on this machine.
    pub fn start(delay_ms: u64) -> Option<Self> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/grpcio_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(format!("--delay-ms={delay_ms}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .ok()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take()?).read_line(&mut line).ok()?;
        let Ok(port) = line.trim().parse::<u16>() else {
            eprintln!("SKIPPED: Python grpcio is not installed (pip install grpcio grpcio-health-checking)");
            let _ = child.kill();
            let _ = child.wait();
            return None;
        };
        Some(Self {
            addr: format!("127.0.0.1:{port}"),
            child,
        })
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CoreServer {
    fn drop(&mut self) {
        self.kill();
    }
}
