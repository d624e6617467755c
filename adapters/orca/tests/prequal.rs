//! Prequal's server side over real tonic servers on loopback: `PrequalLayer` counting requests
//! in flight (and releasing them when calls end or are cancelled), the per-RIF latency
//! estimate, the gRPC probe (`PrequalServer` and `prequal::probe`), piggybacked headers, and
//! the header format.
//!
//! Waits are bounded by `DEADLINE`: on calls, on the handlers' arrival signals, or polling the
//! state until it holds. Handler sleeps only shape latencies; nothing is proven by sleeping.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pickwise_orca::prequal::{
    probe, Estimator, PrequalLayer, PrequalServer, ProbeReport, ProbeState, HEADER_LATENCY_US, HEADER_RIF,
};
use tokio::sync::{mpsc, Semaphore};
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};

const DEADLINE: Duration = Duration::from_secs(10);
const WORK_PATH: &str = "/test.Worker/Work";

// ===== a test service: slow, gated or failing calls =====

/// What a call asks the worker to do.
#[derive(Clone, Copy, PartialEq, prost::Message)]
struct Work {
    /// Wait for a permit of the gate before anything else.
    #[prost(bool, tag = "1")]
    gated: bool,
    /// Then sleep this long.
    #[prost(uint64, tag = "2")]
    sleep_ms: u64,
    /// Then answer `RESOURCE_EXHAUSTED` (a trailers-only response) instead of OK.
    #[prost(bool, tag = "3")]
    fail: bool,
}

/// `test.Worker/Work`: signals its arrival, then does what the request says.
#[derive(Clone)]
struct Worker {
    gate: Arc<Semaphore>,
    arrived: mpsc::UnboundedSender<()>,
}

impl tonic::server::NamedService for Worker {
    const NAME: &'static str = "test.Worker";
}

impl tonic::server::UnaryService<Work> for Worker {
    type Response = Work;
    type Future = BoxFuture<tonic::Response<Work>, Status>;

    fn call(&mut self, request: tonic::Request<Work>) -> Self::Future {
        let work = *request.get_ref();
        let this = self.clone();
        Box::pin(async move {
            let _ = this.arrived.send(());
            if work.gated {
                this.gate.acquire().await.unwrap().forget();
            }
            tokio::time::sleep(Duration::from_millis(work.sleep_ms)).await;
            if work.fail {
                return Err(Status::resource_exhausted("refused"));
            }
            Ok(tonic::Response::new(work))
        })
    }
}

impl<B> Service<http::Request<B>> for Worker
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(method, req).await)
        })
    }
}

// ===== harness =====

struct Harness {
    state: ProbeState,
    channel: Channel,
    /// Permits release gated calls.
    gate: Arc<Semaphore>,
    /// One message per call that reached its handler.
    arrived: mpsc::UnboundedReceiver<()>,
}

impl Harness {
    /// A server on 127.0.0.1:0 with `PrequalLayer` over everything, `PrequalServer` (when
    /// `probes`) and the worker, counting in a state with `estimator`; and a channel to it.
    async fn start(estimator: Estimator, probes: bool) -> Self {
        let state = ProbeState::with_estimator(estimator);
        let gate = Arc::new(Semaphore::new(0));
        let (tx, arrived) = mpsc::unbounded_channel();
        let worker = Worker {
            gate: gate.clone(),
            arrived: tx,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let router = Server::builder()
            .layer(PrequalLayer::new(state.clone()))
            .add_optional_service(probes.then(|| PrequalServer::new(state.clone())))
            .add_service(worker);
        tokio::spawn(async move { router.serve_with_incoming(incoming).await.unwrap() });
        Self {
            state,
            channel: connect(addr).await,
            gate,
            arrived,
        }
    }

    /// Starts `n` gated calls in tasks and waits until all reached the handler.
    async fn hold(&mut self, n: usize) -> Vec<tokio::task::JoinHandle<Result<MetadataMap, Status>>> {
        let calls = (0..n)
            .map(|_| {
                let channel = self.channel.clone();
                tokio::spawn(work(
                    channel,
                    Work {
                        gated: true,
                        ..Default::default()
                    },
                ))
            })
            .collect();
        for _ in 0..n {
            tokio::time::timeout(DEADLINE, self.arrived.recv())
                .await
                .expect("a held call never reached its handler");
        }
        calls
    }

    async fn probe(&self) -> ProbeReport {
        tokio::time::timeout(DEADLINE, probe(self.channel.clone()))
            .await
            .expect("probe timed out")
            .expect("probe failed")
    }

    /// Polls until the server counts `rif` requests in flight.
    async fn until_rif(&self, rif: u32) {
        let state = self.state.clone();
        tokio::time::timeout(DEADLINE, async move {
            while state.rif() != rif {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("RIF stayed at {} (expected {rif})", self.state.rif()));
    }
}

async fn connect(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    tokio::time::timeout(DEADLINE, endpoint.connect())
        .await
        .expect("connect timed out")
        .unwrap()
}

/// Calls `Work`; returns the response's initial metadata, or the status.
async fn work(channel: Channel, request: Work) -> Result<MetadataMap, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(WORK_PATH);
    let codec = tonic_prost::ProstCodec::<Work, Work>::default();
    let call = grpc.unary(tonic::Request::new(request), path, codec);
    let response = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("call timed out")?;
    Ok(response.metadata().clone())
}

fn piggybacked(metadata: &MetadataMap) -> Option<ProbeReport> {
    ProbeReport::from_headers(&metadata.clone().into_headers())
}

/// A state whose samples do not age out during a test.
fn long_lived() -> Estimator {
    Estimator::RecentMedian {
        max_age: Duration::from_secs(60),
    }
}

// ===== requests in flight =====

#[tokio::test]
async fn rif_counts_concurrent_slow_calls_and_returns_to_zero() {
    let mut h = Harness::start(long_lived(), true).await;
    assert_eq!(h.probe().await.rif, 0);
    let calls = h.hold(5).await;
    assert_eq!(h.state.rif(), 5);
    assert_eq!(
        h.probe().await.rif,
        5,
        "probes see the held calls and do not count themselves"
    );
    h.gate.add_permits(2);
    h.until_rif(3).await;
    assert_eq!(h.probe().await.rif, 3);
    h.gate.add_permits(3);
    for call in calls {
        call.await.unwrap().expect("held call failed");
    }
    h.until_rif(0).await;
    assert_eq!(h.probe().await.rif, 0);
}

#[tokio::test]
async fn cancelled_calls_stop_counting() {
    let mut h = Harness::start(long_lived(), true).await;
    let calls = h.hold(4).await;
    assert_eq!(h.probe().await.rif, 4);
    // The client gives up on three: their streams are reset, the server drops the handlers.
    for call in &calls[..3] {
        call.abort();
    }
    h.until_rif(1).await;
    assert_eq!(h.probe().await.rif, 1);
    h.gate.add_permits(1);
    let mut calls = calls;
    calls.pop().unwrap().await.unwrap().expect("the last call failed");
    h.until_rif(0).await;
    // Cancelled calls hold no permit: the next gated call still waits for its own.
    let held = h.hold(1).await;
    assert_eq!(h.state.rif(), 1);
    for call in held {
        call.abort();
    }
    h.until_rif(0).await;
}

#[tokio::test]
async fn failed_calls_stop_counting() {
    let h = Harness::start(long_lived(), true).await;
    for _ in 0..3 {
        let status = work(
            h.channel.clone(),
            Work {
                fail: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
    }
    h.until_rif(0).await;
}

// ===== latency estimate =====

/// Calls `Work` sleeping `ms`, one at a time; returns how long each took as the client saw it.
async fn timed_calls(h: &Harness, sleeps_ms: &[u64]) -> Vec<Duration> {
    let mut took = Vec::new();
    for &sleep_ms in sleeps_ms {
        let start = Instant::now();
        let metadata = work(
            h.channel.clone(),
            Work {
                sleep_ms,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        took.push(start.elapsed());
        // Piggybacked on the response: the RIF without the call itself.
        assert_eq!(piggybacked(&metadata).map(|r| r.rif), Some(h.state.rif()));
    }
    took
}

/// The estimator's median: the upper middle value, in µs.
fn upper_median(values: impl IntoIterator<Item = Duration>) -> u32 {
    let mut v: Vec<u32> = values.into_iter().map(ProbeReport::saturating_us).collect();
    v.sort_unstable();
    v[v.len() / 2]
}

/// Each call's latency as the server measures it lies between its sleep and what the client
/// saw, so the median of the calls that arrived at a RIF lies between the medians of those.
#[tokio::test]
async fn latency_estimate_is_the_median_of_calls_that_arrived_at_that_rif() {
    let mut h = Harness::start(long_lived(), true).await;
    let ms = Duration::from_millis;
    // At RIF 0: three fast calls, one at a time.
    let fast = [1, 2, 3];
    let fast_took = timed_calls(&h, &fast).await;
    // At RIF 2: five calls of 20..100 ms, one at a time, while two others are held.
    let held_since = Instant::now();
    let held = h.hold(2).await;
    let slow = [100, 20, 80, 40, 60];
    let slow_took = timed_calls(&h, &slow).await;
    h.until_rif(2).await;
    let at_2 = h.probe().await;
    assert_eq!(at_2.rif, 2);
    let (low, high) = (upper_median(slow.map(ms)), upper_median(slow_took.clone()));
    assert!(
        (low..=high).contains(&at_2.latency_us),
        "estimate at RIF 2: {} µs, expected the median of {slow_took:?}",
        at_2.latency_us
    );
    assert_eq!(at_2, h.state.report());

    h.gate.add_permits(2);
    for call in held {
        call.await.unwrap().unwrap();
    }
    let held_took = held_since.elapsed();
    h.until_rif(0).await;
    // Back at RIF 0, not the RIF-2 samples: RIF 0's bucket holds the fast calls and the first
    // held call (it arrived while nothing else was in flight).
    let at_0 = h.probe().await;
    let low = upper_median(fast.map(ms).into_iter().chain([Duration::ZERO]));
    let high = upper_median(fast_took.iter().copied().chain([held_took]));
    assert!(
        (low..=high).contains(&at_0.latency_us),
        "estimate at RIF 0: {} µs, expected the median of {fast_took:?} and one held call",
        at_0.latency_us
    );
}

#[tokio::test]
async fn rif_only_reports_zero_latency() {
    let mut h = Harness::start(Estimator::RifOnly, true).await;
    work(
        h.channel.clone(),
        Work {
            sleep_ms: 5,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let held = h.hold(3).await;
    assert_eq!(
        h.probe().await,
        ProbeReport {
            rif: 3,
            latency_us: 0
        }
    );
    for call in held {
        call.abort();
    }
    h.until_rif(0).await;
}

// ===== probes and headers =====

#[tokio::test]
async fn piggybacked_headers_on_responses_and_errors() {
    let mut h = Harness::start(long_lived(), true).await;
    let ok = work(h.channel.clone(), Work::default()).await.unwrap();
    assert!(
        ok.get(HEADER_RIF).is_some() && ok.get(HEADER_LATENCY_US).is_some(),
        "{ok:?}"
    );
    assert_eq!(piggybacked(&ok).map(|r| r.rif), Some(0));

    let held = h.hold(1).await;
    let status = work(
        h.channel.clone(),
        Work {
            fail: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // Trailers-only: the report travels with the status in the only header block.
    assert_eq!(piggybacked(status.metadata()).map(|r| r.rif), Some(1));
    for call in held {
        call.abort();
    }
    h.until_rif(0).await;
}

#[tokio::test]
async fn probe_on_a_server_without_the_service_is_unimplemented() {
    let h = Harness::start(long_lived(), false).await;
    let status = tokio::time::timeout(DEADLINE, probe(h.channel.clone()))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}

#[tokio::test]
async fn probe_runs_in_a_spawned_task() {
    let h = Harness::start(long_lived(), true).await;
    // The probe future is `Send`: the tonic adapter probes from its own tasks.
    let report = tokio::spawn(probe(h.channel.clone())).await.unwrap().unwrap();
    assert_eq!(report.rif, 0);
}

#[test]
fn header_round_trip_and_bad_input() {
    let report = ProbeReport {
        rif: 17,
        latency_us: 25_000,
    };
    let mut headers = http::HeaderMap::new();
    report.to_headers(&mut headers);
    assert_eq!(headers[HEADER_RIF], "17");
    assert_eq!(headers[HEADER_LATENCY_US], "25000");
    assert_eq!(ProbeReport::from_headers(&headers), Some(report));

    for (rif, latency) in [
        ("", "1"),
        ("1", "-1"),
        ("x", "1"),
        ("1", "2.5"),
        ("+1", "1"),
        ("1", "1 1"),
    ] {
        let mut headers = http::HeaderMap::new();
        headers.insert(HEADER_RIF, rif.parse().unwrap());
        headers.insert(HEADER_LATENCY_US, latency.parse().unwrap());
        assert_eq!(ProbeReport::from_headers(&headers), None, "{rif:?} {latency:?}");
    }
    let mut only_rif = http::HeaderMap::new();
    only_rif.insert(HEADER_RIF, "1".parse().unwrap());
    assert_eq!(ProbeReport::from_headers(&only_rif), None);
}
