//! The balancer end to end on loopback: real listeners, real backends (hyper servers in
//! the test), real health checks. Each test listens on its own 127.x.y.z address so
//! tests running in parallel never compete for ports.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::*;

/// Longest any wait in these tests may take before the test fails (never asserted on).
const PATIENCE: Duration = Duration::from_secs(30);

fn scope() -> Scope {
    Scope {
        region: "us-east-1".into(),
        account: "000000000000".into(),
    }
}

/// A loopback address no other test of this process uses.
fn unique_address() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    IpAddr::V4(Ipv4Addr::new(
        127,
        (pid % 200 + 20) as u8,
        (n / 250) as u8,
        (n % 250 + 2) as u8,
    ))
}

fn free_port(address: IpAddr) -> u16 {
    std::net::TcpListener::bind((address, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A backend HTTP server: `/health` answers 200 or 500, `/slow` waits for `release`,
/// anything else answers the backend's name.
struct Backend {
    name: &'static str,
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    slow_started: Arc<AtomicUsize>,
    release: Arc<Notify>,
    _server: Background,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let slow_started = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let (h, s, r) = (healthy.clone(), slow_started.clone(), release.clone());
        let server = Background::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (h, s, r) = (h.clone(), s.clone(), r.clone());
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (h, s, r) = (h.clone(), s.clone(), r.clone());
                    async move {
                        let (status, body) = match request.uri().path() {
                            "/health" if h.load(Ordering::SeqCst) => (200, "ok".to_string()),
                            "/health" => (500, "sick".to_string()),
                            "/slow" => {
                                let released = r.notified();
                                s.fetch_add(1, Ordering::SeqCst);
                                released.await;
                                (200, name.to_string())
                            }
                            "/headers" => (200, format!("{:?}", request.headers())),
                            _ => (200, name.to_string()),
                        };
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            name,
            addr,
            healthy,
            slow_started,
            release,
            _server: server,
        }
    }

    fn target(&self) -> Target {
        Target {
            id: self.addr.ip().to_string(),
            port: self.addr.port(),
        }
    }
}

/// `GET path` over a fresh connection: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn fast_health(protocol: Protocol) -> HealthCheck {
    HealthCheck {
        protocol,
        port: None,
        path: "/health".into(),
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(80),
        healthy_threshold: 1,
        unhealthy_threshold: 1,
        matcher: Matcher::default(),
    }
}

/// A balancer on a fresh address with one load balancer, target group and listener.
struct Fixture {
    balancer: Balancer,
    store: Arc<dyn Store>,
    group: String,
    listener: SocketAddr,
}

async fn fixture(protocol: Protocol, targets: &[Target]) -> Fixture {
    let store: Arc<dyn Store> = Arc::new(store::SqliteStore::in_memory().unwrap());
    let address = unique_address();
    let balancer = Balancer::start(store.clone(), scope(), address)
        .await
        .unwrap();
    let group = balancer
        .create_target_group(TargetGroupSpec {
            name: "web".into(),
            protocol,
            port: 8080,
            vpc_id: None,
            target_type: Some("ip".into()),
            health_check: fast_health(protocol),
        })
        .await
        .unwrap()
        .arn;
    let lb_type = match protocol {
        Protocol::Http => LoadBalancerType::Application,
        Protocol::Tcp => LoadBalancerType::Network,
    };
    let lb = balancer
        .create_load_balancer(LoadBalancerSpec {
            name: "web-lb".into(),
            lb_type,
            scheme: None,
            subnets: vec!["subnet-1".into()],
            security_groups: vec![],
        })
        .await
        .unwrap();
    let port = free_port(address);
    let listener = balancer
        .create_listener(ListenerSpec {
            load_balancer_arn: lb.arn,
            protocol,
            port,
            target_group_arn: group.clone(),
        })
        .await
        .unwrap();
    let listener = balancer.listener_address(&listener.arn).unwrap();
    balancer.register_targets(&group, targets).await.unwrap();
    Fixture {
        balancer,
        store,
        group,
        listener,
    }
}

impl Fixture {
    /// Waits until `target` is in `state` (`None`: gone).
    async fn wait_state(&self, target: &Target, state: Option<TargetState>) {
        let mut changes = self.balancer.changes();
        tokio::time::timeout(PATIENCE, async {
            while self.balancer.target_state(&self.group, target) != state {
                changes.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{target} never reached {state:?}"));
    }

    async fn bodies(&self, n: usize) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for _ in 0..n {
            let (status, body) = get(self.listener, "/").await;
            assert_eq!(status, 200, "{body}");
            *seen.entry(body).or_default() += 1;
        }
        seen
    }
}

#[tokio::test]
async fn round_robin_spreads_requests_evenly() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let f = fixture(Protocol::Http, &[a.target(), b.target()]).await;
    f.wait_state(&a.target(), Some(TargetState::Healthy)).await;
    f.wait_state(&b.target(), Some(TargetState::Healthy)).await;
    let seen = f.bodies(10).await;
    assert_eq!(seen.get(a.name), Some(&5), "{seen:?}");
    assert_eq!(seen.get(b.name), Some(&5), "{seen:?}");

    let (_, headers) = get(f.listener, "/headers").await;
    assert!(headers.contains("\"x-forwarded-for\": \"127."), "{headers}");
    assert!(
        headers.contains("\"x-forwarded-proto\": \"http\""),
        "{headers}"
    );
    let port = format!("\"x-forwarded-port\": \"{}\"", f.listener.port());
    assert!(headers.contains(&port), "{headers}");
    f.balancer.shutdown().await;
}

#[tokio::test]
async fn least_outstanding_requests_prefers_the_idle_target() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let f = fixture(Protocol::Http, &[a.target(), b.target()]).await;
    f.balancer
        .modify_target_group_attributes(
            &f.group,
            &[(ATTR_ALGORITHM.into(), "least_outstanding_requests".into())],
        )
        .await
        .unwrap();
    f.wait_state(&a.target(), Some(TargetState::Healthy)).await;
    f.wait_state(&b.target(), Some(TargetState::Healthy)).await;
    let listener = f.listener;
    let slow = tokio::spawn(async move { get(listener, "/slow").await });
    let busy = tokio::time::timeout(PATIENCE, async {
        loop {
            for backend in [&a, &b] {
                if backend.slow_started.load(Ordering::SeqCst) == 1 {
                    return backend;
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let idle = if busy.name == "a" { &b } else { &a };
    let seen = f.bodies(4).await;
    assert_eq!(seen.get(idle.name), Some(&4), "{seen:?}");
    busy.release.notify_waiters();
    assert_eq!(slow.await.unwrap(), (200, busy.name.to_string()));
    f.balancer.shutdown().await;
}

#[tokio::test]
async fn unhealthy_targets_get_no_traffic_until_they_recover() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let f = fixture(Protocol::Http, &[a.target(), b.target()]).await;
    f.wait_state(&a.target(), Some(TargetState::Healthy)).await;
    f.wait_state(&b.target(), Some(TargetState::Healthy)).await;
    a.healthy.store(false, Ordering::SeqCst);
    f.wait_state(&a.target(), Some(TargetState::Unhealthy))
        .await;
    let health = f
        .balancer
        .describe_target_health(&f.group, None)
        .await
        .unwrap();
    let sick = health.iter().find(|h| h.target == a.target()).unwrap();
    assert_eq!(sick.reason, Some(TargetReason::ResponseCodeMismatch));
    assert_eq!(f.bodies(4).await.get(b.name), Some(&4));

    a.healthy.store(true, Ordering::SeqCst);
    f.wait_state(&a.target(), Some(TargetState::Healthy)).await;
    assert_eq!(f.bodies(4).await.get(a.name), Some(&2));
    f.balancer.shutdown().await;
}

#[tokio::test]
async fn all_unhealthy_fails_open() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    a.healthy.store(false, Ordering::SeqCst);
    b.healthy.store(false, Ordering::SeqCst);
    let f = fixture(Protocol::Http, &[a.target(), b.target()]).await;
    f.wait_state(&a.target(), Some(TargetState::Unhealthy))
        .await;
    f.wait_state(&b.target(), Some(TargetState::Unhealthy))
        .await;
    let seen = f.bodies(4).await;
    assert_eq!((seen.get("a"), seen.get("b")), (Some(&2), Some(&2)));
    f.balancer.shutdown().await;
}

#[tokio::test]
async fn no_target_is_503_and_a_dead_target_is_502() {
    let f = fixture(Protocol::Http, &[]).await;
    let (status, body) = get(f.listener, "/").await;
    assert_eq!(status, 503);
    assert!(body.contains("no target"), "{body}");

    // A port nothing listens on: fail-open sends traffic there, and it fails.
    let dead = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let target = Target {
        id: "127.0.0.1".into(),
        port: dead,
    };
    f.balancer
        .register_targets(&f.group, std::slice::from_ref(&target))
        .await
        .unwrap();
    assert_eq!(get(f.listener, "/").await.0, 502);
    f.balancer.shutdown().await;
}

#[tokio::test]
async fn draining_finishes_in_flight_requests_and_refuses_new_ones() {
    let a = Backend::start("a").await;
    let f = fixture(Protocol::Http, &[a.target()]).await;
    f.wait_state(&a.target(), Some(TargetState::Healthy)).await;
    let listener = f.listener;
    let slow = tokio::spawn(async move { get(listener, "/slow").await });
    tokio::time::timeout(PATIENCE, async {
        while a.slow_started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    f.balancer
        .deregister_targets(&f.group, &[a.target()])
        .await
        .unwrap();
    assert_eq!(
        f.balancer.target_state(&f.group, &a.target()),
        Some(TargetState::Draining)
    );
    assert_eq!(
        get(f.listener, "/").await.0,
        503,
        "a draining target takes no new requests"
    );
    a.release.notify_waiters();
    assert_eq!(slow.await.unwrap(), (200, "a".to_string()));
    f.wait_state(&a.target(), None).await;
    f.balancer.shutdown().await;
}

#[tokio::test]
async fn deregistration_delay_caps_draining() {
    let a = Backend::start("a").await;
    let f = fixture(Protocol::Http, &[a.target()]).await;
    f.balancer
        .modify_target_group_attributes(&f.group, &[(ATTR_DEREGISTRATION_DELAY.into(), "1".into())])
        .await
        .unwrap();
    let attrs = f.balancer.target_group_attributes(&f.group).await.unwrap();
    assert_eq!(attrs.deregistration_delay, Duration::from_secs(1));
    f.wait_state(&a.target(), Some(TargetState::Healthy)).await;
    let listener = f.listener;
    // Never released: only the delay can end the drain.
    let slow = tokio::spawn(async move { get(listener, "/slow").await });
    tokio::time::timeout(PATIENCE, async {
        while a.slow_started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    f.balancer
        .deregister_targets(&f.group, &[a.target()])
        .await
        .unwrap();
    f.wait_state(&a.target(), None).await;
    slow.abort();
    f.balancer.shutdown().await;
}

#[tokio::test]
async fn tcp_listener_splices_bytes() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = echo.local_addr().unwrap();
    let _server = Background::spawn(async move {
        while let Ok((mut stream, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    let target = Target {
        id: addr.ip().to_string(),
        port: addr.port(),
    };
    let f = fixture(Protocol::Tcp, std::slice::from_ref(&target)).await;
    f.wait_state(&target, Some(TargetState::Healthy)).await;
    let mut client = TcpStream::connect(f.listener).await.unwrap();
    client
        .write_all(b"ping through the balancer")
        .await
        .unwrap();
    let mut buf = [0u8; 25];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping through the balancer");
    f.balancer.shutdown().await;
}

#[tokio::test]
async fn a_restart_rebuilds_from_the_store() {
    let a = Backend::start("a").await;
    let f = fixture(Protocol::Http, &[a.target()]).await;
    f.wait_state(&a.target(), Some(TargetState::Healthy)).await;
    let address = f.balancer.address();
    f.balancer.shutdown().await;
    assert!(
        TcpStream::connect(f.listener).await.is_err(),
        "listener stopped"
    );

    let again = Balancer::start(f.store.clone(), scope(), address)
        .await
        .unwrap();
    let group = again.target_group(&f.group).await.unwrap().unwrap();
    assert_eq!(group.name, "web");
    assert_eq!(group.load_balancer_arns.len(), 1);
    let f = Fixture {
        balancer: again,
        ..f
    };
    f.wait_state(&a.target(), Some(TargetState::Healthy)).await;
    assert_eq!(get(f.listener, "/").await, (200, "a".to_string()));
    f.balancer.shutdown().await;
}

#[tokio::test]
async fn management_errors_name_the_problem() {
    let a = Backend::start("a").await;
    let f = fixture(Protocol::Http, &[a.target()]).await;
    let b = &f.balancer;
    let spec = TargetGroupSpec {
        name: "web".into(),
        protocol: Protocol::Http,
        port: 80,
        vpc_id: None,
        target_type: None,
        health_check: HealthCheck::defaults(Protocol::Http),
    };
    let err = b.create_target_group(spec.clone()).await.unwrap_err();
    assert_eq!(err.code(), "DuplicateTargetGroupName");
    let err = b
        .create_target_group(TargetGroupSpec {
            name: "inst".into(),
            target_type: Some("instance".into()),
            ..spec.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ValidationError");

    let err = b.delete_target_group(&f.group).await.unwrap_err();
    assert_eq!(err.code(), "ResourceInUse");

    let missing = f.group.replace(":targetgroup/web/", ":targetgroup/nope/");
    let err = b
        .register_targets(&missing, &[a.target()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "TargetGroupNotFound");
    let err = b
        .register_targets(
            &f.group,
            &[Target {
                id: "i-0123".into(),
                port: 80,
            }],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidTarget");
    let stranger = Target {
        id: "10.9.9.9".into(),
        port: 80,
    };
    let err = b
        .deregister_targets(&f.group, std::slice::from_ref(&stranger))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidTarget");

    let [lb] = <[_; 1]>::try_from(b.describe_load_balancers(&[], &[]).await.unwrap()).unwrap();
    let [listener] =
        <[_; 1]>::try_from(b.describe_listeners(Some(&lb.arn), &[]).await.unwrap()).unwrap();
    let again = ListenerSpec {
        load_balancer_arn: lb.arn.clone(),
        protocol: Protocol::Http,
        port: listener.port,
        target_group_arn: f.group.clone(),
    };
    assert_eq!(
        b.create_listener(again.clone()).await.unwrap_err().code(),
        "DuplicateListener"
    );
    let tcp = ListenerSpec {
        protocol: Protocol::Tcp,
        port: free_port(b.address()),
        ..again
    };
    assert_eq!(
        b.create_listener(tcp).await.unwrap_err().code(),
        "UnsupportedProtocol"
    );

    // Deleting the load balancer stops its listener and frees the group.
    b.delete_load_balancer(&lb.arn).await.unwrap();
    assert!(TcpStream::connect(f.listener).await.is_err());
    assert_eq!(
        b.target_state(&f.group, &a.target()),
        Some(TargetState::Unused)
    );
    b.delete_target_group(&f.group).await.unwrap();
    assert!(b.target_group(&f.group).await.unwrap().is_none());
    assert!(f.store.list("elb/").await.unwrap().is_empty());
    b.shutdown().await;
}
