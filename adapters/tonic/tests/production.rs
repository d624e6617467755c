//! Production semantics against real servers on 127.0.0.1 (issue: deadlines, sticky failure,
//! deploys): each test names the grpc-go or tower behaviour it checks. Every loop is bounded.

mod support;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pickwise_tonic::{discover, Builder, ConnectivityState, OutlierConfig, Policy};
use support::backend::Backend;
use support::client::*;
use support::net::{Banner, Blackhole, PausableProxy, ResetAfterHeaders};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use tower::Service;

fn check(timeout: Option<Duration>) -> tonic::Request<HealthCheckRequest> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    req
}

/// grpc-go `picker_wrapper.go`: a request waiting for a picker ends with DEADLINE_EXCEEDED at its
/// own deadline. The endpoint accepts TCP and never speaks HTTP/2 (connect timeout 3 s); the old
/// code answered UNAVAILABLE after the 3 s connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_bounds_the_wait_for_a_silent_endpoint() {
    let _serial = serial().await;
    let hole = Blackhole::start();
    let channel = builder()
        .connect_timeout(Duration::from_secs(3))
        .build_static([hole.addr.to_string()]);
    let mut client = HealthClient::new(channel);
    let start = Instant::now();
    let err = client
        .check(check(Some(Duration::from_millis(100))))
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_millis(800),
        "{took:?}"
    );
}

/// grpc-go `http2_client.go`: the server is sent what remains of the deadline after the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sees_the_remaining_deadline() {
    let _serial = serial().await;
    let backend = Backend::start();
    let proxy = PausableProxy::start(backend.addr, true); // connecting: no preface yet
    let channel = builder().build_static([proxy.addr.to_string()]);
    let mut client = HealthClient::new(channel);
    let call = tokio::spawn(async move { client.check(check(Some(Duration::from_secs(2)))).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.pause(false);
    call.await.unwrap().expect("served once the endpoint is ready");
    let sent = backend
        .knobs
        .last_timeout
        .lock()
        .unwrap()
        .clone()
        .expect("grpc-timeout sent");
    let mut h = http::HeaderMap::new();
    h.insert("grpc-timeout", sent.parse().unwrap());
    let ms = parse_ms(&sent);
    assert!(
        (1000..=1650).contains(&ms),
        "server saw {sent} ({ms} ms) of a 2 s deadline after a 400 ms wait"
    );
}

fn parse_ms(v: &str) -> u64 {
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().unwrap();
    match unit {
        "n" => n / 1_000_000,
        "u" => n / 1_000,
        "m" => n,
        "S" => n * 1000,
        "M" => n * 60_000,
        _ => n * 3_600_000,
    }
}

/// One RPC's deadline never tears down the connection (grpc-go: per-RPC errors do not change
/// connectivity): 50 calls with a 10 ms deadline against a 30 ms backend use one connection and
/// publish no new pickers; the old code reconnected on each (about 90 pickers). The deadline
/// still counts as a failure for the cost policy (go-zero's list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_deadlines_never_tear_down_the_connection() {
    let _serial = serial().await;
    let backend = Backend::start();
    backend.set_delay(30);
    let channel = builder()
        .outlier(OutlierConfig::disabled())
        .build_static([backend.addr.to_string()]);
    assert_eq!(channel.wait_ready(1, Duration::from_secs(5)).await, 1);
    let pickers = channel.picker_version();
    let mut client = HealthClient::new(channel.clone());
    for _ in 0..50 {
        let err = client
            .check(check(Some(Duration::from_millis(10))))
            .await
            .unwrap_err();
        // Whoever gives up first answers: the client (DEADLINE_EXCEEDED) or tonic's server, which
        // reports its expired deadline as CANCELLED "Timeout expired".
        assert!(
            err.code() == Code::DeadlineExceeded
                || (err.code() == Code::Cancelled && err.message().contains("Timeout")),
            "{err:?}"
        );
    }
    assert!(
        channel.picker_version() - pickers <= 1,
        "{} new pickers",
        channel.picker_version() - pickers
    );
    assert_eq!(backend.connections(), 1);
    let stats = channel.stats();
    assert_eq!(stats[0].state, ConnectivityState::Ready);
    assert_eq!(stats[0].failures, 50);
    assert!(
        stats[0].latency.unwrap() >= Duration::from_millis(9),
        "{:?}",
        stats[0].latency
    );
    backend.set_delay(0);
    client
        .check(check(Some(Duration::from_secs(1))))
        .await
        .expect("the connection still works");
    assert_no_in_flight(&channel);
}

/// A stream reset after response headers is a failure, whatever code it maps to (the old code
/// took RST_STREAM(CANCEL) as CANCELLED, which is not a failure code, so a server resetting
/// every stream was never ejected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_headers_is_a_failure() {
    let _serial = serial().await;
    let server = ResetAfterHeaders::start();
    let channel = builder()
        .outlier(OutlierConfig::disabled())
        .build_static([server.addr.to_string()]);
    assert_eq!(channel.wait_ready(1, Duration::from_secs(5)).await, 1);
    let mut client = HealthClient::new(channel.clone());
    for _ in 0..3 {
        let _ = client
            .check(check(Some(Duration::from_secs(2))))
            .await
            .unwrap_err();
    }
    let s = &channel.stats()[0];
    assert_eq!((s.picks, s.failures, s.in_flight), (3, 3, 0), "{s:?}");
}

/// Sticky TRANSIENT_FAILURE (grpc-go `balancer/base`): once every endpoint has failed, fail-fast
/// requests fail at once even while reconnect attempts are in flight (the old code let them
/// wait for the attempt, up to the connect timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_failing_fails_fast_while_reconnecting() {
    let _serial = serial().await;
    let holes: Vec<Blackhole> = (0..3).map(|_| Blackhole::start()).collect();
    let channel = builder()
        .connect_timeout(Duration::from_millis(400))
        .build_static(holes.iter().map(|h| h.addr.to_string()));
    // Connecting for the first time: requests wait (and, with a deadline, end at it).
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Each endpoint failed once and is reconnecting (attempts take 400 ms each).
    for _ in 0..20 {
        let err = unavailable_within(&channel, Duration::from_millis(100)).await;
        assert!(err.message().contains("failing"), "{err:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A stream whose `poll_next` panics if polled again after it ended (legal for a `Stream`).
struct EndsOnce {
    items: Vec<Result<discover::Change<String, u32>, std::io::Error>>,
    ended: bool,
}

impl tokio_stream::Stream for EndsOnce {
    type Item = Result<discover::Change<String, u32>, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        assert!(!self.ended, "polled after the end");
        if self.items.is_empty() {
            self.ended = true;
            return Poll::Ready(None);
        }
        Poll::Ready(Some(self.items.remove(0)))
    }
}

/// grpc-go `TestPickFirst_ResolverError_NoPreviousUpdate`: a discovery stream that ends (or errors)
/// before its first update fails requests at once, saying so (the old code let every request
/// wait the full wait-for-ready bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_that_ends_or_errors_before_its_first_update_fails_at_once() {
    let _serial = serial().await;
    let ended = builder().build(EndsOnce {
        items: vec![],
        ended: false,
    });
    let err = unavailable_within(&ended, Duration::from_millis(300)).await;
    assert!(err.message().contains("ended before its first update"), "{err:?}");
    let failed = builder().build(EndsOnce {
        items: vec![Err(std::io::Error::other("resolver exploded"))],
        ended: false,
    });
    let err = unavailable_within(&failed, Duration::from_millis(300)).await;
    assert!(err.message().contains("resolver exploded"), "{err:?}");
}

/// A batch of queued discovery changes keeps its end-of-stream: the stream is never polled
/// again after it ended (the old batch loop dropped the end and polled on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_end_of_stream_is_not_dropped() {
    let _serial = serial().await;
    let backend = Backend::start();
    let channel = builder().build(EndsOnce {
        // The end is queued right behind the insert, in the same batch.
        items: vec![Ok(discover::Change::Insert(backend.addr.to_string(), 1))],
        ended: false,
    });
    assert_eq!(channel.wait_ready(1, Duration::from_secs(5)).await, 1);
    for _ in 0..5 {
        call(&channel, None)
            .await
            .expect("served from the last endpoint set");
    }
}

/// DNS discovery's resolver task stops as soon as the last channel clone is dropped (the old one
/// lived until its next re-resolution, 30 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_stops_with_the_channel() {
    let _serial = serial().await;
    let backend = Backend::start();
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let channel = builder().build(discover::dns(
        format!("localhost:{}", backend.addr.port()),
        Duration::from_secs(3600),
    ));
    assert!(channel.wait_ready(1, Duration::from_secs(5)).await >= 1);
    assert!(metrics.num_alive_tasks() > before);
    drop(channel);
    let deadline = Instant::now() + Duration::from_secs(2);
    while metrics.num_alive_tasks() > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        before,
        "balancer, connection or DNS tasks outlived the channel"
    );
}

/// Dropping the last channel stops the balancer and wakes requests waiting for a picker with the
/// documented error (`NoEndpoint::Shutdown`), instead of leaving them to the wait bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_wakes_waiting_requests() {
    let _serial = serial().await;
    let hole = Blackhole::start();
    let mut channel = builder()
        .connect_timeout(Duration::from_secs(5))
        .wait_for_ready(Duration::from_secs(5))
        .build_static([hole.addr.to_string()]);
    let req = http::Request::builder()
        .uri("http://pickwise.test/grpc.health.v1.Health/Check")
        .body(tonic::body::Body::empty())
        .unwrap();
    let fut = channel.call(req);
    let start = Instant::now();
    let waiting = tokio::spawn(fut);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(channel);
    let err = waiting.await.unwrap().unwrap_err();
    let status = err.downcast::<tonic::Status>().expect("a Status");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("shut down"), "{status:?}");
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
}

/// tower `CompleteOnResponse`: latency is sampled when response headers arrive, and the slot is
/// held until the stream ends; a 1.5 s server stream does not make its endpoint look slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_does_not_make_its_endpoint_look_slow() {
    let _serial = serial().await;
    let backend = Backend::start();
    backend
        .knobs
        .stream_ms
        .store(1500, std::sync::atomic::Ordering::Relaxed);
    let channel = builder()
        .p2c(Policy::PeakEwma)
        .build_static([backend.addr.to_string()]);
    assert_eq!(channel.wait_ready(1, Duration::from_secs(5)).await, 1);
    let mut client = HealthClient::new(channel.clone());
    let mut stream = client.watch(check(None)).await.unwrap().into_inner();
    assert!(stream.next().await.is_some());
    assert_eq!(
        channel.stats()[0].in_flight,
        1,
        "the slot is held while the stream runs"
    );
    while stream.next().await.is_some() {}
    let s = &channel.stats()[0];
    assert_eq!(s.in_flight, 0);
    assert!(s.latency.unwrap() < Duration::from_millis(200), "{:?}", s.latency);
}

/// A paused backend (the proxy stops moving bytes, sockets stay open): with HTTP/2 keepalive on
/// the endpoint template the connection is declared dead within interval + timeout, its stuck
/// request fails, and traffic moves to the healthy backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_finds_a_paused_backend() {
    let _serial = serial().await;
    let (paused, healthy) = (Backend::start(), Backend::start());
    let proxy = PausableProxy::start(paused.addr, false);
    let channel = Builder::new()
        .backoff(fast_backoff())
        .connect_timeout(Duration::from_millis(500))
        .p2c(Policy::LeastRequest)
        .endpoint(|addr| {
            Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .http2_keep_alive_interval(Duration::from_millis(200))
                .keep_alive_timeout(Duration::from_millis(300))
                .keep_alive_while_idle(true))
        })
        .build_static([proxy.addr.to_string(), healthy.addr.to_string()]);
    assert_eq!(channel.wait_ready(2, Duration::from_secs(5)).await, 2);
    proxy.pause(true);
    let paused_at = Instant::now();
    // Requests that land on the paused backend hang until keepalive declares it dead.
    let stuck: Vec<_> = (0..4)
        .map(|_| {
            let ch = channel.clone();
            tokio::spawn(async move {
                let r = call(&ch, None).await;
                (r.is_ok(), Instant::now())
            })
        })
        .collect();
    let mut failed_at = None;
    for t in stuck {
        let (ok, at) = t.await.unwrap();
        if !ok {
            failed_at = Some(at);
        }
    }
    if let Some(at) = failed_at {
        let took = at - paused_at;
        assert!(
            took < Duration::from_millis(1500),
            "stuck requests failed after {took:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while channel.ready_endpoints() > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(channel.ready_endpoints(), 1, "the paused backend left the picker");
    assert!(
        paused_at.elapsed() < Duration::from_millis(1800),
        "{:?}",
        paused_at.elapsed()
    );
    for _ in 0..20 {
        assert_eq!(call(&channel, None).await.unwrap(), healthy.addr.to_string());
    }
    assert_no_in_flight(&channel);
}

/// READY means the server's HTTP/2 preface (a SETTINGS frame) arrived, not that some byte did
/// (grpc-go): a port that greets with an SSH banner never becomes pickable, and requests fail
/// fast instead of being sent into it (the old code marked it READY on the first byte).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_http2_server_never_becomes_ready() {
    let _serial = serial().await;
    let ssh = Banner::start(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n");
    let backend = Backend::start();
    let channel = builder()
        .p2c(Policy::LeastRequest)
        .build_static([ssh.addr.to_string(), backend.addr.to_string()]);
    assert_eq!(channel.wait_ready(1, Duration::from_secs(5)).await, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(channel.ready_endpoints(), 1);
    for _ in 0..20 {
        assert_eq!(call(&channel, None).await.unwrap(), backend.addr.to_string());
    }
    let ssh_stats = channel
        .stats()
        .into_iter()
        .find(|s| s.address == ssh.addr.to_string())
        .unwrap();
    assert_ne!(ssh_stats.state, ConnectivityState::Ready);
    assert_eq!(ssh_stats.picks, 0);
}

/// A request queued behind a busy endpoint (its connection admits one request at a time) ends at
/// its own deadline with DEADLINE_EXCEEDED, not when the endpoint gets to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_bounds_the_wait_on_a_busy_endpoint() {
    let _serial = serial().await;
    let backend = Backend::start();
    backend.set_delay(600);
    let channel = builder()
        .endpoint(|addr| {
            Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.concurrency_limit(1))
        })
        .build_static([backend.addr.to_string()]);
    assert_eq!(channel.wait_ready(1, Duration::from_secs(5)).await, 1);
    let first = {
        let ch = channel.clone();
        tokio::spawn(async move { HealthClient::new(ch).check(check(None)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    let err = HealthClient::new(channel.clone())
        .check(check(Some(Duration::from_millis(100))))
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(
        err.code() == Code::DeadlineExceeded
            || (err.code() == Code::Cancelled && err.message().contains("Timeout")),
        "{err:?}"
    );
    assert!(took < Duration::from_millis(400), "{took:?}");
    first.await.unwrap().expect("the first request completes");
}
