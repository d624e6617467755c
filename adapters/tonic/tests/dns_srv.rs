//! `discover::DnsSrv` against a DNS server this test runs on 127.0.0.1 (a small UDP responder that
//! encodes its answers with hickory-proto, serving SRV and A records with a TTL of 1 s): the
//! stream yields the endpoints with SRV weight and priority, follows record changes as TTLs
//! expire, yields nothing when an answer is unchanged, and keeps the last set through failures.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use pickwise_tonic::discover::hickory_resolver::config::{NameServerConfig, ResolverConfig};
use pickwise_tonic::discover::hickory_resolver::name_server::TokioConnectionProvider;
use pickwise_tonic::discover::hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use pickwise_tonic::discover::hickory_resolver::proto::rr::rdata::{A, SRV};
use pickwise_tonic::discover::hickory_resolver::proto::rr::{Name, RData, Record};
use pickwise_tonic::discover::hickory_resolver::proto::xfer::Protocol;
use pickwise_tonic::discover::hickory_resolver::TokioResolver;
use pickwise_tonic::discover::{Change, DnsSrv, Endpoint};
use tokio::net::UdpSocket;
use tokio::sync::watch;

const SERVICE: &str = "_grpc._tcp.backends.test.";
const TTL: u32 = 1;
/// Bound on every wait for the stream (TTL 1 s, so a change shows within about 1 s).
const WAIT: Duration = Duration::from_secs(15);

/// The zone the responder serves, and whether it answers SERVFAIL instead.
#[derive(Default)]
struct Zone {
    records: Vec<Record>,
    servfail: bool,
}

struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    /// How many SRV queries it has answered.
    srv_queries: watch::Receiver<u64>,
}

impl DnsServer {
    async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let (count_tx, srv_queries) = watch::channel(0u64);
        let served = zone.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = socket.recv_from(&mut buf).await.unwrap();
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut reply = Message::new();
                reply
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(query.op_code())
                    .set_recursion_desired(query.recursion_desired())
                    .set_recursion_available(true)
                    .set_authoritative(true);
                let is_srv = {
                    let zone = served.lock().unwrap();
                    let mut is_srv = false;
                    for q in query.queries() {
                        reply.add_query(q.clone());
                        is_srv |= q.query_type()
                            == pickwise_tonic::discover::hickory_resolver::proto::rr::RecordType::SRV;
                        if zone.servfail {
                            reply.set_response_code(ResponseCode::ServFail);
                            continue;
                        }
                        let answers = zone
                            .records
                            .iter()
                            .filter(|r| r.name() == q.name() && r.record_type() == q.query_type())
                            .cloned();
                        reply.add_answers(answers);
                    }
                    is_srv
                };
                socket.send_to(&reply.to_vec().unwrap(), peer).await.unwrap();
                if is_srv {
                    count_tx.send_modify(|c| *c += 1);
                }
            }
        });
        Self {
            addr,
            zone,
            srv_queries,
        }
    }

    fn set(&self, records: Vec<Record>) {
        self.zone.lock().unwrap().records = records;
    }

    fn servfail(&self, on: bool) {
        self.zone.lock().unwrap().servfail = on;
    }

    fn resolver(&self) -> TokioResolver {
        let mut config = ResolverConfig::new();
        config.add_name_server(NameServerConfig::new(self.addr, Protocol::Udp));
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default()).build()
    }

    /// Waits until it has answered `n` more SRV queries than now.
    async fn queries(&mut self, n: u64) {
        let target = *self.srv_queries.borrow_and_update() + n;
        tokio::time::timeout(WAIT, self.srv_queries.wait_for(|c| *c >= target))
            .await
            .expect("the stream did not re-resolve in time")
            .unwrap();
    }
}

fn srv(priority: u16, weight: u16, port: u16, target: &str) -> Record {
    Record::from_rdata(
        Name::from_ascii(SERVICE).unwrap(),
        TTL,
        RData::SRV(SRV::new(
            priority,
            weight,
            port,
            Name::from_ascii(target).unwrap(),
        )),
    )
}

fn a(name: &str, ip: [u8; 4]) -> Record {
    Record::from_rdata(
        Name::from_ascii(name).unwrap(),
        TTL,
        RData::A(A::from(Ipv4Addr::from(ip))),
    )
}

fn ep(weight: u32, priority: u32) -> Endpoint {
    Endpoint {
        weight,
        priority,
        ..Endpoint::default()
    }
}

type Stream = std::pin::Pin<
    Box<dyn futures_core::Stream<Item = Result<Change<String, Endpoint>, pickwise_tonic::BoxError>> + Send>,
>;

/// Applies the stream's changes to `state` until it equals `expected` (bounded); returns the
/// changes it applied.
async fn settle(
    stream: &mut Stream,
    state: &mut BTreeMap<String, Endpoint>,
    expected: &[(&str, Endpoint)],
) -> Vec<Change<String, Endpoint>> {
    let expected: BTreeMap<String, Endpoint> =
        expected.iter().map(|(a, e)| (a.to_string(), e.clone())).collect();
    let mut applied = Vec::new();
    while *state != expected {
        let change = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("the stream stopped at {state:?}, expected {expected:?}"))
            .expect("the stream ended")
            .expect("unexpected resolution error");
        match &change {
            Change::Insert(a, e) => {
                state.insert(a.clone(), e.clone());
            }
            Change::Remove(a) => {
                assert!(state.remove(a).is_some(), "removed {a}, which was not there");
            }
        }
        applied.push(change);
    }
    applied
}

#[tokio::test]
async fn srv_records_become_endpoints_and_follow_changes() {
    let mut server = DnsServer::start().await;
    server.set(vec![
        srv(0, 10, 5001, "a.backends.test."),
        srv(1, 5, 5002, "b.backends.test."),
        a("a.backends.test.", [127, 0, 0, 1]),
        a("b.backends.test.", [127, 0, 0, 2]),
    ]);
    let mut stream: Stream = Box::pin(DnsSrv::new(SERVICE).resolver(server.resolver()).into_stream());
    let mut state = BTreeMap::new();

    // SRV weight -> endpoint weight, SRV priority -> priority, port from SRV, address from A.
    let first = settle(
        &mut stream,
        &mut state,
        &[("127.0.0.1:5001", ep(10, 0)), ("127.0.0.2:5002", ep(5, 1))],
    )
    .await;
    assert_eq!(first.len(), 2, "{first:?}");

    // Unchanged answers (two more re-resolutions as the TTL expires) yield nothing.
    server.queries(2).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(50), stream.next())
            .await
            .is_err(),
        "an unchanged answer yielded a change"
    );

    // Records change: b's SRV goes, a's weight changes, a gets a second address.
    server.set(vec![
        srv(0, 20, 5001, "a.backends.test."),
        a("a.backends.test.", [127, 0, 0, 1]),
        a("a.backends.test.", [127, 0, 0, 3]),
    ]);
    let second = settle(
        &mut stream,
        &mut state,
        &[("127.0.0.1:5001", ep(20, 0)), ("127.0.0.3:5001", ep(20, 0))],
    )
    .await;
    // Only the differences: one remove, one re-insert (weight), one insert.
    assert_eq!(second.len(), 3, "{second:?}");
}

#[tokio::test]
async fn failures_keep_the_last_set() {
    let server = DnsServer::start().await;
    server.set(vec![
        srv(0, 1, 6001, "a.backends.test."),
        a("a.backends.test.", [127, 0, 0, 1]),
    ]);
    let mut stream: Stream = Box::pin(DnsSrv::new(SERVICE).resolver(server.resolver()).into_stream());
    let mut state = BTreeMap::new();
    settle(&mut stream, &mut state, &[("127.0.0.1:6001", ep(1, 0))]).await;

    // The server fails: the stream yields an error, and no removal.
    server.servfail(true);
    let item = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no error in time")
        .expect("the stream ended");
    assert!(item.is_err(), "expected a resolution error, got {item:?}");

    // It recovers with one more target: the next change is that insert, nothing was removed.
    server.set(vec![
        srv(0, 1, 6001, "a.backends.test."),
        srv(0, 1, 6002, "b.backends.test."),
        a("a.backends.test.", [127, 0, 0, 1]),
        a("b.backends.test.", [127, 0, 0, 2]),
    ]);
    server.servfail(false);
    loop {
        let item = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("no change in time")
            .expect("the stream ended");
        match item {
            // Retries while the failure is still cached or backing off.
            Err(_) => continue,
            Ok(change) => {
                assert!(
                    matches!(&change, Change::Insert(a, e) if a == "127.0.0.2:6002" && *e == ep(1, 0)),
                    "{change:?}"
                );
                break;
            }
        }
    }
}
