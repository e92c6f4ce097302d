//! The resolver's answers, asked over sockets on 127.0.0.1 that each test owns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::authority::Catalog;
use hickory_server::proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::BinDecodable;
use hickory_server::proto::xfer::Protocol;
use hickory_server::resolver::config::{NameServerConfig, NameServerConfigGroup};
use hickory_server::store::forwarder::ForwardConfig;
use hickory_server::ServerFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::names::TTL;
use super::*;

/// Guards against a test hanging on a lost datagram; never reached when things work.
const PATIENCE: Duration = Duration::from_secs(30);

/// A resolver on ephemeral loopback ports, stopped when dropped.
struct TestResolver {
    names: Arc<ServiceNames>,
    udp: SocketAddr,
    tcp: SocketAddr,
    _server: ServerFuture<Catalog>,
}

impl TestResolver {
    async fn start(upstream: ForwardConfig) -> Self {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (udp_address, tcp_address) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let names = Arc::new(ServiceNames::default());
        let server = serve(udp, tcp, names.clone(), upstream).unwrap();
        Self {
            names,
            udp: udp_address,
            tcp: tcp_address,
            _server: server,
        }
    }

    /// One with no upstream and this table.
    async fn with_names(table: &[(&str, &[Ipv4Addr])]) -> Self {
        let resolver = Self::start(no_upstream()).await;
        resolver.names.replace(
            table
                .iter()
                .map(|(name, addresses)| (name.to_string(), addresses.to_vec()))
                .collect(),
        );
        resolver
    }

    async fn ask(&self, name: &str, rtype: RecordType) -> Message {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let query = query(name, rtype);
        socket
            .send_to(&query.to_vec().unwrap(), self.udp)
            .await
            .unwrap();
        let mut buffer = [0u8; 4096];
        let (len, _) = tokio::time::timeout(PATIENCE, socket.recv_from(&mut buffer))
            .await
            .expect("the resolver answers")
            .unwrap();
        let answer = Message::from_bytes(&buffer[..len]).unwrap();
        assert_eq!(answer.id(), query.id());
        answer
    }
}

fn no_upstream() -> ForwardConfig {
    ForwardConfig {
        name_servers: NameServerConfigGroup::new(),
        options: None,
    }
}

fn query(name: &str, rtype: RecordType) -> Message {
    let mut message = Message::new();
    message
        .set_id(rand::random())
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    message
}

fn addresses(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers()
        .iter()
        .map(|record| match record.data() {
            RData::A(A(address)) => *address,
            other => panic!("not an A record: {other:?}"),
        })
        .collect()
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 89, 0, last)
}

#[tokio::test]
async fn a_service_name_has_every_address_rotated_per_query() {
    let all = [ip(2), ip(3), ip(4)];
    let resolver = TestResolver::with_names(&[("web.prod.local", &all)]).await;
    let first = resolver.ask("web.prod.local.", RecordType::A).await;
    let second = resolver.ask("web.prod.local.", RecordType::A).await;
    for answer in [&first, &second] {
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert!(answer.authoritative());
        assert_eq!(
            addresses(answer).into_iter().collect::<BTreeSet<_>>(),
            BTreeSet::from(all)
        );
        assert!(answer.answers().iter().all(|record| record.ttl() == TTL));
    }
    assert_ne!(addresses(&first)[0], addresses(&second)[0]);
}

#[tokio::test]
async fn names_match_whatever_their_case() {
    let resolver = TestResolver::with_names(&[("web.prod.local", &[ip(2)])]).await;
    let answer = resolver.ask("WEB.Prod.LOCAL.", RecordType::A).await;
    assert_eq!(addresses(&answer), [ip(2)]);
}

#[tokio::test]
async fn the_aaaa_of_a_service_name_is_empty_and_no_error() {
    let resolver = TestResolver::with_names(&[("web.prod.local", &[ip(2)])]).await;
    let answer = resolver.ask("web.prod.local.", RecordType::AAAA).await;
    assert_eq!(answer.response_code(), ResponseCode::NoError);
    assert!(answer.answers().is_empty());
    assert_soa(&answer);
}

#[tokio::test]
async fn other_names_under_local_do_not_exist() {
    let resolver = TestResolver::with_names(&[("web.prod.local", &[ip(2)])]).await;
    for name in ["db.prod.local.", "web.test.local.", "x.web.prod.local."] {
        let answer = resolver.ask(name, RecordType::A).await;
        assert_eq!(answer.response_code(), ResponseCode::NXDomain, "{name}");
        assert!(answer.authoritative());
        assert_soa(&answer);
    }
    // The cluster's label exists, as the parent of its service names.
    let answer = resolver.ask("prod.local.", RecordType::A).await;
    assert_eq!(answer.response_code(), ResponseCode::NoError);
    assert!(answer.answers().is_empty());
}

/// A negative answer carries the zone's SOA, whose minimum bounds negative caching.
fn assert_soa(answer: &Message) {
    let [soa] = answer.name_servers() else {
        panic!("one SOA in the authority section: {answer:?}");
    };
    let RData::SOA(data) = soa.data() else {
        panic!("not an SOA: {soa:?}");
    };
    assert_eq!(soa.name().to_ascii(), "local.");
    assert_eq!(data.minimum(), TTL);
}

#[tokio::test]
async fn a_new_table_replaces_the_old_one_whole() {
    let resolver = TestResolver::with_names(&[("web.prod.local", &[ip(2)])]).await;
    resolver.names.replace(BTreeMap::from([(
        "api.prod.local".to_string(),
        vec![ip(7), ip(8)],
    )]));
    let gone = resolver.ask("web.prod.local.", RecordType::A).await;
    assert_eq!(gone.response_code(), ResponseCode::NXDomain);
    let api = resolver.ask("api.prod.local.", RecordType::A).await;
    assert_eq!(
        addresses(&api).into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([ip(7), ip(8)])
    );
}

#[tokio::test]
async fn a_service_without_healthy_tasks_has_no_address() {
    let resolver = TestResolver::with_names(&[("web.prod.local", &[])]).await;
    let answer = resolver.ask("web.prod.local.", RecordType::A).await;
    assert_eq!(answer.response_code(), ResponseCode::NoError);
    assert!(answer.answers().is_empty());
}

#[tokio::test]
async fn names_outside_local_are_left_out_of_the_table() {
    let resolver = TestResolver::with_names(&[
        ("web.prod.example", &[ip(2)]),
        ("local", &[ip(3)]),
        ("web.prod.local", &[ip(4)]),
    ])
    .await;
    let answer = resolver.ask("local.", RecordType::A).await;
    assert!(answer.answers().is_empty());
    let answer = resolver.ask("web.prod.local.", RecordType::A).await;
    assert_eq!(addresses(&answer), [ip(4)]);
}

#[tokio::test]
async fn queries_over_tcp_are_answered_too() {
    let resolver = TestResolver::with_names(&[("web.prod.local", &[ip(2)])]).await;
    let mut stream = TcpStream::connect(resolver.tcp).await.unwrap();
    let query = query("web.prod.local.", RecordType::A).to_vec().unwrap();
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend(query);
    stream.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut len))
        .await
        .expect("the resolver answers")
        .unwrap();
    let mut body = vec![0u8; u16::from_be_bytes(len).into()];
    stream.read_exact(&mut body).await.unwrap();
    assert_eq!(addresses(&Message::from_vec(&body).unwrap()), [ip(2)]);
}

/// A name server on loopback that answers every A query with `address`, as a host's
/// upstream would, and counts the queries it saw.
async fn fake_upstream(
    address: Ipv4Addr,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let (seen, queries) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buffer = [0u8; 4096];
        while let Ok((len, peer)) = socket.recv_from(&mut buffer).await {
            let request = Message::from_bytes(&buffer[..len]).unwrap();
            let question = request.queries()[0].clone();
            let _ = seen.send(question.name().to_ascii());
            let mut response = Message::new();
            response
                .set_id(request.id())
                .set_message_type(MessageType::Response)
                .set_recursion_desired(true)
                .set_recursion_available(true)
                .add_query(question.clone());
            if question.query_type() == RecordType::A {
                response.add_answer(Record::from_rdata(
                    question.name().clone(),
                    300,
                    RData::A(A(address)),
                ));
            }
            socket
                .send_to(&response.to_vec().unwrap(), peer)
                .await
                .unwrap();
        }
    });
    (local, queries)
}

#[tokio::test]
async fn other_names_are_forwarded_to_the_upstream() {
    let (upstream, mut seen) = fake_upstream(Ipv4Addr::new(192, 0, 2, 7)).await;
    let resolver = TestResolver::start(ForwardConfig {
        name_servers: vec![NameServerConfig::new(upstream, Protocol::Udp)].into(),
        options: None,
    })
    .await;
    let answer = resolver.ask("registry.example.", RecordType::A).await;
    assert_eq!(answer.response_code(), ResponseCode::NoError);
    assert!(!answer.authoritative());
    assert!(answer.recursion_available());
    assert_eq!(addresses(&answer), [Ipv4Addr::new(192, 0, 2, 7)]);
    assert_eq!(seen.recv().await.unwrap(), "registry.example.");
}

#[tokio::test]
async fn without_an_upstream_other_names_fail() {
    let resolver = TestResolver::start(no_upstream()).await;
    let answer = resolver.ask("registry.example.", RecordType::A).await;
    assert_eq!(answer.response_code(), ResponseCode::ServFail);
}

#[test]
fn the_hosts_name_servers_are_the_upstream_less_the_resolver_itself() {
    let gateway = Ipv4Addr::new(10, 89, 0, 1);
    let upstream = host_upstream(
        "search corp.example\nnameserver 127.0.0.53\nnameserver 10.89.0.1\noptions timeout:2\n",
        gateway.into(),
    );
    let servers: BTreeSet<SocketAddr> = upstream
        .name_servers
        .iter()
        .map(|server| server.socket_addr)
        .collect();
    assert_eq!(servers, BTreeSet::from(["127.0.0.53:53".parse().unwrap()]));
    assert!(upstream
        .name_servers
        .iter()
        .all(|s| s.trust_negative_responses));
    assert_eq!(upstream.options.unwrap().timeout, Duration::from_secs(2));
    assert!(host_upstream("", gateway.into()).name_servers.is_empty());
}

#[test]
fn the_search_domain_is_the_clusters_zone_in_lower_case() {
    assert_eq!(search_domain("Prod-1"), "prod-1.local");
}
