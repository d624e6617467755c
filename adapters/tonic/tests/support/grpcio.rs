//! gRPC C-core servers (Python `grpcio`, installed by `.ci/run`) as separate processes.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The modules the C-core scripts import (`grpcio_server.py`, pickwise-xds's `xds_client.py`).
pub const PYTHON_PROBE: &str = "import grpc; from grpc_health.v1 import health_pb2, health_pb2_grpc";

/// A reference implementation that cannot start. Under CI (`CI=true`) that fails the test: a
/// cross-check that did not run must not pass. Elsewhere the test is skipped with a loud note
/// (`None`), so a machine without Python can still run the rest of the suite.
pub fn reference_unavailable<T>(why: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("reference implementation unavailable on CI: {why}");
    }
    eprintln!(
        "\n!!!!! SKIPPED (not a pass): {why}\n!!!!! pip install grpcio grpcio-health-checking; CI=true makes this a failure\n"
    );
    None
}

/// Whether `python3` can import every module the scripts use; `Err` says why not.
pub fn python_ready() -> Result<(), String> {
    match Command::new("python3").args(["-c", PYTHON_PROBE]).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "python3 cannot import grpcio's modules: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("python3 does not run: {e}")),
    }
}

/// A running C-core server; killed (like a crashed process) when dropped or `kill`ed.
pub struct CoreServer {
    pub addr: String,
    child: Child,
}

impl CoreServer {
    /// Starts one answering after `delay_ms`; `None` when Python's `grpcio` is missing on this
    /// machine and this is not CI (see [`reference_unavailable`]). A server that has the modules
    /// but fails to start always panics.
    pub fn start(delay_ms: u64) -> Option<Self> {
        if let Err(why) = python_ready() {
            return reference_unavailable(&why);
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/grpcio_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(format!("--delay-ms={delay_ms}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the server's port");
        let Ok(port) = line.trim().parse::<u16>() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the C-core server did not print its port (got {line:?}); its stderr is above");
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
