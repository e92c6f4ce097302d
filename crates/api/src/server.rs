//! The HTTP side of the API: one router serving the ECS JSON 1.1 protocol at `POST /`
//! and Skiff's native endpoints under `/skiff/v1/`, every request SigV4-verified, timed
//! and counted.
//!
//! ```text
//! POST /                               ECS: X-Amz-Target AmazonEC2ContainerServiceV20141113.<Op>
//! POST /  (form-encoded, no target)    AWS Query protocol, by Version: ELBv2 (2015-12-01),
//!                                      EC2 (2016-11-15)
//! POST /skiff/v1/images/load           import a docker-save / OCI layout tarball (streamed)
//! GET  /skiff/v1/images                list images
//! POST /skiff/v1/images/pull           pull {reference}: progress as JSON lines
//! POST /skiff/v1/images/remove         untag {reference}
//! POST /skiff/v1/images/prune          remove what nothing uses
//! POST /skiff/v1/registries/login      store {host, username, password} for pulls
//! GET  /skiff/v1/tasks/<id>/logs       container logs as JSON lines (?container=&follow=)
//! GET  /metrics                        Prometheus text format (unauthenticated, loopback)
//! ```
//!
//! The router only authenticates, parses and renders: operations are [`model::ops::Request`]
//! messages handled by [`control::Control`]; images and logs are the agent's; ELBv2 calls
//! are [`lb::Balancer`]'s; EC2 calls (VPCs, subnets, security groups) are the control
//! plane's too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use model::ops::Request;
use serde_json::json;

use crate::credentials::Credentials;
use crate::metrics::Metrics;
use crate::query::{Envelope, QueryFault};
use crate::sigv4::{self, Payload, RequestParts, VerifyParams};

const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";
const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The access keys the server accepts.
#[derive(Clone, Default)]
pub struct Keys {
    by_id: HashMap<String, Credentials>,
}

impl Keys {
    pub fn single(credentials: Credentials) -> Self {
        let mut keys = Keys::default();
        keys.by_id
            .insert(credentials.access_key_id.clone(), credentials);
        keys
    }

    fn get(&self, access_key_id: &str) -> Option<Credentials> {
        self.by_id.get(access_key_id).cloned()
    }
}

/// What the router serves from.
pub struct ApiState {
    pub control: control::Control,
    pub agent: agent::Agent,
    pub balancer: lb::Balancer,
    pub keys: Keys,
    pub region: String,
}

pub(crate) struct Shared {
    pub state: ApiState,
    pub metrics: Metrics,
}

pub(crate) type AppState = Arc<Shared>;

/// Builds the router.
pub fn router(state: ApiState) -> Router {
    let shared = Arc::new(Shared {
        state,
        metrics: Metrics::default(),
    });
    Router::new()
        .route("/", post(root))
        .route("/skiff/v1/images", get(crate::native::list_images))
        .route("/skiff/v1/images/load", post(crate::native::load_image))
        .route("/skiff/v1/images/pull", post(crate::native::pull_image))
        .route("/skiff/v1/images/remove", post(crate::native::remove_image))
        .route("/skiff/v1/images/prune", post(crate::native::prune_images))
        .route(
            "/skiff/v1/registries/login",
            post(crate::native::registry_login),
        )
        .route(
            "/skiff/v1/tasks/{task_id}/logs",
            get(crate::native::task_logs),
        )
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// An error on the wire: `{"__type": ..., "message": ...}` with the request id header.
pub(crate) struct WireError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl WireError {
    pub(crate) fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        WireError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            kind,
            message: message.into(),
        }
    }
}

impl IntoResponse for WireError {
    fn into_response(self) -> Response {
        let body = json!({"__type": self.kind, "message": self.message}).to_string();
        with_request_id((self.status, [("content-type", JSON_CONTENT_TYPE)], body).into_response())
    }
}

pub(crate) fn with_request_id(mut response: Response) -> Response {
    let id = model::arn::new_uuid();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-amzn-requestid", value);
    }
    response
}

/// Verifies the request's signature (for the ECS signing name) against the server's keys.
pub(crate) fn authenticate(
    state: &ApiState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    payload: Payload<'_>,
) -> Result<String, WireError> {
    authenticate_as(state, sigv4::ECS_SERVICE, method, uri, headers, payload)
}

/// Verifies the request's signature for the signing name `service`.
pub(crate) fn authenticate_as(
    state: &ApiState,
    service: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    payload: Payload<'_>,
) -> Result<String, WireError> {
    let parts = RequestParts {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers,
    };
    let params = VerifyParams {
        service,
        region: Some(&state.region),
        now: chrono::Utc::now(),
    };
    sigv4::verify(&parts, payload, &params, |id| state.keys.get(id))
        .map(|verified| verified.access_key_id)
        .map_err(|e| {
            let (kind, message) = e.aws_error();
            tracing::info!(error = %e, "request refused: bad signature");
            WireError::new(e.http_status(), kind, message)
        })
}

/// `POST /`: a form-encoded body without `X-Amz-Target` is the Query protocol; anything
/// else is ECS's JSON protocol.
async fn root(
    State(shared): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(crate::query::FORM_CONTENT_TYPE));
    if form && !headers.contains_key("x-amz-target") {
        query(&shared, &method, &uri, &headers, &body).await
    } else {
        ecs(State(shared), method, uri, headers, body).await
    }
}

/// Serves one Query protocol request: the `Version` picks the service.
async fn query(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let started = Instant::now();
    let request_id = model::arn::new_uuid();
    let request = match crate::query::QueryRequest::parse(body) {
        Ok(request) => request,
        Err(e) => {
            shared
                .metrics
                .record("unknown", e.code(), started.elapsed());
            return QueryFault::from(e).into_response(Envelope::Wrapped, &request_id);
        }
    };
    let (service, namespace, envelope) = match request.version.as_str() {
        crate::elbv2::VERSION => (
            crate::elbv2::SIGNING_NAME,
            crate::elbv2::NAMESPACE,
            Envelope::Wrapped,
        ),
        crate::ec2::VERSION => (
            crate::ec2::SIGNING_NAME,
            crate::ec2::NAMESPACE,
            Envelope::Ec2,
        ),
        other => {
            let fault = QueryFault::new(
                400,
                "InvalidAction",
                format!("API version {other} is not served here: Skiff speaks ELBv2 (2015-12-01) and EC2 (2016-11-15) over the Query protocol"),
            );
            return fault.into_response(Envelope::Wrapped, &request_id);
        }
    };
    let outcome = match authenticate_as(
        &shared.state,
        service,
        method,
        uri,
        headers,
        Payload::Bytes(body),
    ) {
        Ok(_) if envelope == Envelope::Ec2 => crate::ec2::handle(&shared.state, &request).await,
        Ok(_) => crate::elbv2::handle(&shared.state, &request).await,
        Err(e) => Err(QueryFault::new(e.status.as_u16(), e.kind, e.message)),
    };
    match outcome {
        Ok(result) => {
            shared
                .metrics
                .record(&request.action, "ok", started.elapsed());
            let xml = envelope.response(&request.action, namespace, result, &request_id);
            crate::query::xml_response(StatusCode::OK, xml, &request_id)
        }
        Err(fault) => {
            shared
                .metrics
                .record(&request.action, fault.code, started.elapsed());
            fault.into_response(envelope, &request_id)
        }
    }
}

async fn ecs(
    State(shared): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let operation = target.strip_prefix(TARGET_PREFIX).unwrap_or("");
    let response = match serve_ecs(&shared.state, &method, &uri, &headers, &body, operation).await {
        Ok(value) => {
            shared.metrics.record(operation, "ok", started.elapsed());
            with_request_id(
                (
                    StatusCode::OK,
                    [("content-type", JSON_CONTENT_TYPE)],
                    value.to_string(),
                )
                    .into_response(),
            )
        }
        Err(error) => {
            let label = if operation.is_empty() {
                "unknown"
            } else {
                operation
            };
            shared.metrics.record(label, error.kind, started.elapsed());
            error.into_response()
        }
    };
    response
}

async fn serve_ecs(
    state: &ApiState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    operation: &str,
) -> Result<serde_json::Value, WireError> {
    let access_key = authenticate(state, method, uri, headers, Payload::Bytes(body))?;
    if operation.is_empty() {
        return Err(WireError::new(
            400,
            "UnknownOperationException",
            format!("X-Amz-Target must be {TARGET_PREFIX}<Operation>"),
        ));
    }
    let request = Request::parse(operation, body)
        .map_err(|e| WireError::new(400, e.type_name(), e.to_string()))?;
    let span = tracing::debug_span!("ecs", operation, access_key = %access_key);
    let _entered = span.enter();
    state.control.handle(request).await.map_err(|e| {
        if e.http_status() >= 500 {
            tracing::error!(operation, error = %e, "operation failed");
        } else {
            tracing::debug!(operation, error = %e, "operation refused");
        }
        WireError::new(e.http_status(), e.type_name(), e.to_string())
    })
}

async fn metrics(State(shared): State<AppState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}
