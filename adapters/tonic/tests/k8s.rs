//! `discover::EndpointSlices` against a stand-in Kubernetes API server this test runs (hyper,
//! HTTP/1.1, no auth): it answers the EndpointSlice list JSON and a `?watch=true` stream of
//! newline-delimited watch events, as the API server does. No cluster is involved: what is
//! checked is pickwise's reading of the list/watch protocol and of the endpoint conditions.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pickwise_tonic::discover::{Change, Endpoint, EndpointSlices};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

const PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
const WAIT: Duration = Duration::from_secs(15);

type Body = StreamBody<UnboundedReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// The stand-in API server: the list it answers, the first watch's events, the queries it saw.
struct ApiServer {
    addr: SocketAddr,
    events: mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>,
    queries: Arc<Mutex<Vec<String>>>,
}

impl ApiServer {
    async fn start(list: Vec<Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (events, watch_rx) = mpsc::unbounded_channel();
        let watch_rx = Arc::new(Mutex::new(Some(watch_rx)));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let list = Arc::new(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSliceList",
            "metadata": {"resourceVersion": "100"},
            "items": list,
        }));
        let seen = queries.clone();
        tokio::spawn(async move {
            loop {
                let (io, _) = listener.accept().await.unwrap();
                let (list, watch_rx, seen) = (list.clone(), watch_rx.clone(), seen.clone());
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let query = req.uri().query().unwrap_or_default().to_owned();
                    assert_eq!(req.uri().path(), PATH);
                    seen.lock().unwrap().push(query.clone());
                    let (tx, rx) = mpsc::unbounded_channel();
                    let rx = if query.split('&').any(|kv| kv == "watch=true") {
                        // The first watch streams the test's events; later ones stay open, empty.
                        match watch_rx.lock().unwrap().take() {
                            Some(rx) => rx,
                            None => {
                                std::mem::forget(tx);
                                rx
                            }
                        }
                    } else {
                        tx.send(Ok(Frame::data(Bytes::from(list.to_string())))).unwrap();
                        rx
                    };
                    let body: Body = StreamBody::new(UnboundedReceiverStream::new(rx));
                    let response = hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(body)
                        .unwrap();
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service),
                );
            }
        });
        Self {
            addr,
            events,
            queries,
        }
    }

    fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Sends one watch event (`ADDED`, `MODIFIED`, `DELETED`) on the open watch.
    fn event(&self, kind: &str, object: Value) {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        self.events.send(Ok(Frame::data(Bytes::from(line)))).unwrap();
    }
}

/// An EndpointSlice of Service `backends` with ports `metrics` and `port_name` (50051).
fn slice(name: &str, version: u32, port_name: &str, endpoints: Value) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "resourceVersion": version.to_string(),
            "labels": {"kubernetes.io/service-name": "backends"},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "metrics", "port": 9090, "protocol": "TCP"},
            {"name": port_name, "port": 50051, "protocol": "TCP"},
        ],
        "endpoints": endpoints,
    })
}

fn ep(address: &str, ready: Option<bool>, serving: bool, terminating: bool, zone: Option<&str>) -> Value {
    let mut conditions = json!({"serving": serving, "terminating": terminating});
    if let Some(ready) = ready {
        conditions["ready"] = json!(ready);
    }
    let mut e = json!({"addresses": [address], "conditions": conditions});
    if let Some(zone) = zone {
        e["zone"] = json!(zone);
    }
    e
}

fn member(locality: u32, locality_weight: u32) -> Endpoint {
    Endpoint {
        locality,
        locality_weight,
        ..Endpoint::default()
    }
}

type Stream = std::pin::Pin<
    Box<dyn futures_core::Stream<Item = Result<Change<String, Endpoint>, pickwise_tonic::BoxError>> + Send>,
>;

/// Applies the stream's changes until `state` equals `expected` (bounded); returns how many.
async fn settle(
    stream: &mut Stream,
    state: &mut BTreeMap<String, Endpoint>,
    expected: &[(&str, Endpoint)],
) -> usize {
    let expected: BTreeMap<String, Endpoint> =
        expected.iter().map(|(a, e)| (a.to_string(), e.clone())).collect();
    let mut applied = 0;
    while *state != expected {
        let change = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("the stream stopped at {state:?}, expected {expected:?}"))
            .expect("the stream ended")
            .expect("unexpected watch error");
        match change {
            Change::Insert(a, e) => {
                state.insert(a, e);
            }
            Change::Remove(a) => assert!(state.remove(&a).is_some(), "removed {a}, which was not there"),
        }
        applied += 1;
    }
    applied
}

#[tokio::test]
async fn endpoint_slices_follow_conditions_zones_and_ports() {
    let api = ApiServer::start(vec![
        slice(
            "backends-a",
            1,
            "grpc",
            json!([
                ep("10.0.0.1", Some(true), true, false, Some("zone-a")),
                // Starting: not ready, not serving.
                ep("10.0.0.2", Some(false), false, false, Some("zone-a")),
                // Draining: serving and terminating.
                ep("10.0.0.3", Some(false), true, true, Some("zone-a")),
            ]),
        ),
        slice(
            "backends-b",
            2,
            "grpc",
            json!([
                ep("10.0.1.1", Some(true), true, false, Some("zone-b")),
                // No `ready` condition: the API says to read it as ready.
                ep("10.0.1.2", None, true, false, Some("zone-b")),
            ]),
        ),
    ])
    .await;
    let mut stream: Stream = Box::pin(
        EndpointSlices::new(api.client(), "default", "backends")
            .port("grpc")
            .into_stream(),
    );
    let mut state = BTreeMap::new();

    // Ready endpoints on the `grpc` port; zones become localities (ids in address order), each
    // weighted by its number of members.
    settle(
        &mut stream,
        &mut state,
        &[
            ("10.0.0.1:50051", member(1, 1)),
            ("10.0.1.1:50051", member(2, 2)),
            ("10.0.1.2:50051", member(2, 2)),
        ],
    )
    .await;
    let list = api.queries.lock().unwrap()[0].clone();
    assert!(
        list.contains("labelSelector=kubernetes.io%2Fservice-name%3Dbackends"),
        "{list}"
    );

    // 10.0.0.1 starts terminating (still serving: it drains, out of new picks), 10.0.0.2 is ready.
    api.event(
        "MODIFIED",
        slice(
            "backends-a",
            3,
            "grpc",
            json!([
                ep("10.0.0.1", Some(false), true, true, Some("zone-a")),
                ep("10.0.0.2", Some(true), true, false, Some("zone-a")),
            ]),
        ),
    );
    let n = settle(
        &mut stream,
        &mut state,
        &[
            ("10.0.0.2:50051", member(1, 1)),
            ("10.0.1.1:50051", member(2, 2)),
            ("10.0.1.2:50051", member(2, 2)),
        ],
    )
    .await;
    assert_eq!(n, 2, "only the differences");

    // A slice goes away.
    api.event("DELETED", slice("backends-b", 4, "grpc", json!([])));
    let n = settle(&mut stream, &mut state, &[("10.0.0.2:50051", member(1, 1))]).await;
    assert_eq!(n, 2);

    // A slice without the `grpc` port contributes nothing; once it has it, its IPv6 endpoint
    // without a zone joins (locality 0).
    let mut v6 = slice(
        "backends-c",
        5,
        "http",
        json!([ep("fd00::1", Some(true), true, false, None)]),
    );
    v6["addressType"] = json!("IPv6");
    api.event("ADDED", v6.clone());
    v6["ports"][1]["name"] = json!("grpc");
    v6["metadata"]["resourceVersion"] = json!("6");
    api.event("MODIFIED", v6);
    let n = settle(
        &mut stream,
        &mut state,
        &[
            ("10.0.0.2:50051", member(1, 1)),
            ("[fd00::1]:50051", member(0, 1)),
        ],
    )
    .await;
    assert_eq!(n, 1);
    // The watch resumed from the list's resourceVersion.
    let queries = api.queries.lock().unwrap().clone();
    assert!(
        queries
            .iter()
            .any(|q| q.contains("watch=true") && q.contains("resourceVersion=100")),
        "{queries:?}"
    );
}
