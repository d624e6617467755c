//! Servers that recycle connections (gRPC's `max_connection_age`: GOAWAY, then close after a
//! grace period) must not lose RPCs: an RPC the server never processed is retried
//! transparently (gRFC A6), and a draining connection is replaced at once. gRPC C-core servers
//! (Python grpcio, separate processes) recycle every 300 ms; 16 RPCs in flight for 5 s, through
//! pickwise with one endpoint and with P2C over three. tonic's own `Channel` runs the same load
//! for comparison (printed, not asserted). C-core's own client loses 0 here (design.md §12).
//!
//! Without Python's grpcio the test is skipped with a note, except under `CI=true`, where it
//! fails: a cross-check that did not run must not pass.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pickwise_tonic::{BalancedChannel, Policy};
use support::client::*;
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const AGE_MS: u64 = 300;
/// Streams the server accepted before its GOAWAY must finish within the grace period or C-core
/// fails them ("max connection age"; processed, so no client retries them, C-core's neither).
/// 200 ms leaves room on a loaded 2-core machine.
const GRACE_MS: u64 = 200;
const IN_FLIGHT: usize = 16;
const RUN: Duration = Duration::from_secs(5);

/// A C-core Health server recycling its connections every `age` ms (C-core adds +-10% jitter)
/// with a `grace` ms grace period. Prints its port, serves until stdin closes.
const SERVER: &str = r#"
import sys
from concurrent import futures
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

class Health(health_pb2_grpc.HealthServicer):
    def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

age, grace = int(sys.argv[1]), int(sys.argv[2])
server = grpc.server(
    futures.ThreadPoolExecutor(max_workers=32),
    options=[("grpc.max_connection_age_ms", age), ("grpc.max_connection_age_grace_ms", grace)],
)
port = server.add_insecure_port("127.0.0.1:0")
health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
server.start()
print(port, flush=True)
sys.stdin.read()
server.stop(0)
"#;

/// One recycling C-core server process; killed when dropped.
struct Recycling {
    addr: String,
    child: Child,
}

impl Recycling {
    fn start() -> Result<Self, String> {
        let mut child = Command::new("python3")
            .args(["-c", SERVER, &AGE_MS.to_string(), &GRACE_MS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("python3 does not run: {e}"))?;
        let mut line = String::new();
        let read = child
            .stdout
            .take()
            .map(|out| BufReader::new(out).read_line(&mut line));
        match (read, line.trim().parse::<u16>()) {
            (Some(Ok(_)), Ok(port)) => Ok(Self {
                addr: format!("127.0.0.1:{port}"),
                child,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err("the grpcio server did not start (pip install grpcio grpcio-health-checking)".into())
            }
        }
    }
}

impl Drop for Recycling {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` servers; `None` (skip) if they cannot start, a failure under `CI=true`.
fn servers(n: usize) -> Option<Vec<Recycling>> {
    match (0..n).map(|_| Recycling::start()).collect() {
        Ok(s) => Some(s),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("C-core servers unavailable on CI: {why}")
        }
        Err(why) => {
            eprintln!("\n!!!!! SKIPPED (not a pass): {why}; CI=true makes this a failure\n");
            None
        }
    }
}

/// What a run saw: RPCs that succeeded and failed, and a few of the failures.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    samples: Vec<String>,
}

/// `IN_FLIGHT` loops of Health/Check (2 s deadline each) for `RUN` through `client`.
async fn run<S>(client: HealthClient<S>) -> Tally
where
    S: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    S::ResponseBody: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
    S::Error: Into<tonic::codegen::StdError>,
    S::Future: Send,
{
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let end = Instant::now() + RUN;
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (mut client, ok, failed, samples) =
                (client.clone(), ok.clone(), failed.clone(), samples.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    let mut req = tonic::Request::new(HealthCheckRequest {
                        service: String::new(),
                    });
                    req.set_timeout(Duration::from_secs(2));
                    match client.check(req).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(s) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut samples = samples.lock().unwrap();
                            if samples.len() < 5 {
                                samples.push(format!("{:?}: {}", s.code(), s.message()));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let samples = samples.lock().unwrap().clone();
    Tally {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        samples,
    }
}

async fn pickwise(channel: &BalancedChannel, n: usize) -> Tally {
    assert_eq!(channel.wait_ready(n, Duration::from_secs(10)).await, n);
    let tally = run(HealthClient::new(channel.clone())).await;
    assert_no_in_flight(channel);
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycled_connections_lose_no_rpcs() {
    let _serial = serial().await;
    let Some(core) = servers(3) else { return };

    let single = builder().build_static([core[0].addr.clone()]);
    let single = pickwise(&single, 1).await;
    println!(
        "pickwise, one endpoint: {} ok, {} failed {:?}",
        single.ok, single.failed, single.samples
    );

    let p2c = builder()
        .p2c(Policy::PeakEwma)
        .build_static(core.iter().map(|s| s.addr.clone()));
    let p2c = pickwise(&p2c, 3).await;
    println!(
        "pickwise, P2C over three: {} ok, {} failed {:?}",
        p2c.ok, p2c.failed, p2c.samples
    );

    // tonic's own Channel to one of them, for comparison (not asserted).
    let direct = Channel::from_shared(format!("http://{}", core[0].addr))
        .unwrap()
        .connect()
        .await
        .expect("tonic connects");
    let direct = run(HealthClient::new(direct)).await;
    println!(
        "tonic Channel, one endpoint: {} ok, {} failed {:?}",
        direct.ok, direct.failed, direct.samples
    );

    assert!(single.ok > 1000 && p2c.ok > 1000, "{single:?} {p2c:?}");
    assert_eq!(single.failed, 0, "one endpoint lost RPCs: {single:?}");
    assert_eq!(p2c.failed, 0, "P2C lost RPCs: {p2c:?}");
}

/// An HTTP/2 server (h2 directly) that refuses the first `refuse` streams with
/// `RST_STREAM(REFUSED_STREAM)` before reading them, then answers Health/Check SERVING; it
/// records the request body of every stream it served.
struct Refusing {
    addr: String,
    streams: Arc<AtomicU64>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Refusing {
    async fn start(refuse: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let streams = Arc::new(AtomicU64::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (streams.clone(), bodies.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (count, seen) = (count.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(sock).await else {
                        return;
                    };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        if count.fetch_add(1, Ordering::SeqCst) < refuse {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        let seen = seen.clone();
                        tokio::spawn(async move {
                            let mut body = req.into_body();
                            let mut data = Vec::new();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                                data.extend_from_slice(&chunk);
                            }
                            seen.lock().unwrap().push(data);
                            let head = http::Response::builder()
                                .status(200)
                                .header("content-type", "application/grpc")
                                .body(())
                                .unwrap();
                            let Ok(mut send) = respond.send_response(head, false) else {
                                return;
                            };
                            // One gRPC message: HealthCheckResponse { status: SERVING (1) }.
                            let msg = vec![0, 0, 0, 0, 2, 0x08, 0x01];
                            let _ = send.send_data(msg.into(), false);
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let _ = send.send_trailers(trailers);
                        });
                    }
                });
            }
        });
        Self {
            addr,
            streams,
            bodies,
        }
    }
}

async fn check_service(channel: &BalancedChannel, service: String) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(HealthCheckRequest { service });
    req.set_timeout(Duration::from_secs(2));
    HealthClient::new(channel.clone()).check(req).await.map(|_| ())
}

/// A refused stream is retried with the same body, and the endpoint records no failure; a body
/// larger than the retry buffer is not retried; retries are bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_retried_with_their_body_within_bounds() {
    let _serial = serial().await;
    // Refused twice, then served: the call succeeds with the body the caller sent.
    let server = Refusing::start(2).await;
    let channel = builder().build_static([server.addr.clone()]);
    assert_eq!(channel.wait_ready(1, Duration::from_secs(5)).await, 1);
    check_service(&channel, "svc-42".into())
        .await
        .expect("retried past the refusals");
    assert_eq!(server.streams.load(Ordering::SeqCst), 3);
    let bodies = server.bodies.lock().unwrap().clone();
    // gRPC frame of HealthCheckRequest { service: "svc-42" }.
    let mut want = vec![0, 0, 0, 0, 8, 0x0a, 6];
    want.extend_from_slice(b"svc-42");
    assert_eq!(bodies, vec![want]);
    let stats = channel.stats();
    assert_eq!(
        stats[0].failures, 0,
        "refusals are not the endpoint's failures: {stats:?}"
    );
    assert_no_in_flight(&channel);

    // A body past the 256 KiB retry buffer: one attempt, the refusal reaches the caller.
    let big = Refusing::start(1).await;
    let channel = builder().build_static([big.addr.clone()]);
    assert_eq!(channel.wait_ready(1, Duration::from_secs(5)).await, 1);
    let service = "x".repeat(pickwise_tonic::RETRY_BUFFER + 1);
    check_service(&channel, service)
        .await
        .expect_err("not replayable");
    assert_eq!(big.streams.load(Ordering::SeqCst), 1);
    assert_no_in_flight(&channel);

    // Refused every time: at most MAX_RETRIES retries, then the error.
    let always = Refusing::start(u64::MAX).await;
    let channel = builder().build_static([always.addr.clone()]);
    assert_eq!(channel.wait_ready(1, Duration::from_secs(5)).await, 1);
    let err = check_service(&channel, "s".into())
        .await
        .expect_err("always refused");
    assert_eq!(
        always.streams.load(Ordering::SeqCst),
        u64::from(pickwise_tonic::MAX_RETRIES) + 1,
        "{err:?}"
    );
    assert_no_in_flight(&channel);
}
