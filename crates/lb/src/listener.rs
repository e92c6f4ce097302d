//! The data plane: a listener's accept loop and the two ways it forwards.
//!
//! - HTTP (application load balancers): each client connection is served by hyper's
//!   HTTP/1.1 server with keep-alive; every request picks a target on its own and goes
//!   out through one pooled keep-alive client shared by the listener. Hop-by-hop headers
//!   are dropped; `X-Forwarded-For` (appended), `-Proto` and `-Port` are set. The target's
//!   lease is held until the response body has been sent, so least outstanding requests
//!   and draining see the whole request. No target: `503`; a target that cannot be
//!   reached or fails mid-response: `502`.
//! - TCP (network load balancers): each connection picks a target, connects, and bytes
//!   are copied both ways until either side closes; the lease covers the connection.
//!
//! Every connection task lives in the accept loop's `JoinSet`, so stopping the listener
//! (dropping its [`Background`]) closes its connections too.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::config::Protocol;
use crate::pool::{Lease, TargetPool};
use crate::Background;

/// How long a TCP listener waits for a target to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection to a target is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type ProxyBody = BoxBody<Bytes, hyper::Error>;
type TargetClient = Client<HttpConnector, Incoming>;

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Starts serving `listener`, forwarding to `pool` with `protocol`.
pub(crate) fn serve(
    listener: TcpListener,
    protocol: Protocol,
    pool: Arc<TargetPool>,
) -> Background {
    Background::spawn(async move {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client: TargetClient = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(port, %error, "listener cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let pool = pool.clone();
            match protocol {
                Protocol::Http => {
                    let client = client.clone();
                    connections.spawn(serve_http(stream, peer, port, pool, client));
                }
                Protocol::Tcp => {
                    connections.spawn(splice(stream, peer, pool));
                }
            }
        }
    })
}

async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    pool: Arc<TargetPool>,
    client: TargetClient,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let pool = pool.clone();
        let client = client.clone();
        async move { Ok::<_, Infallible>(forward(request, peer, port, &pool, &client).await) }
    });
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%peer, %error, "client connection ended with an error");
    }
}

async fn forward(
    mut request: Request<Incoming>,
    peer: SocketAddr,
    port: u16,
    pool: &TargetPool,
    client: &TargetClient,
) -> Response<ProxyBody> {
    let Some(lease) = pool.pick() else {
        return text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable: no target is registered for this load balancer\n",
        );
    };
    let target = lease.addr();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: Uri = match format!("http://{target}{path}").parse() {
        Ok(uri) => uri,
        Err(_) => {
            return text_response(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: invalid request target\n",
            )
        }
    };
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    headers.insert("x-forwarded-port", HeaderValue::from(port));

    match client.request(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(
                parts,
                LeasedBody {
                    body,
                    _lease: lease,
                }
                .boxed(),
            )
        }
        Err(error) => {
            tracing::debug!(%target, %error, "target failed the request");
            text_response(
                StatusCode::BAD_GATEWAY,
                "502 Bad Gateway: the target did not answer\n",
            )
        }
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
}

fn text_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A target's response body that keeps the target's lease until it is fully sent.
struct LeasedBody {
    body: Incoming,
    _lease: Lease,
}

impl Body for LeasedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Forwards one TCP connection to a target, byte for byte.
async fn splice(mut client: TcpStream, peer: SocketAddr, pool: Arc<TargetPool>) {
    let Some(lease) = pool.pick() else {
        tracing::debug!(%peer, "no target for a TCP connection: closing it");
        return;
    };
    let target = lease.addr();
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %target, %error, "cannot connect to the target");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, %target, "the target did not accept the connection in time");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%peer, %target, %error, "TCP connection ended with an error");
    }
    drop(lease);
}
