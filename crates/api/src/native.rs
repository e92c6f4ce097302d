//! Skiff's native endpoints: what the ECS API has no operation for (image import,
//! container logs). Signed like the ECS API; errors in the same `__type`/`message` shape.

use std::io::Write;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use image::PullProgress;
use serde_json::json;
use supervisor::logs::{LogEntry, LogFollower, LogStream};

use crate::server::{authenticate, with_request_id, AppState, WireError};
use crate::sigv4::Payload;

/// How often a followed log is polled for new entries.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

fn images_json(images: &[image::Image]) -> serde_json::Value {
    json!({
        "images": images.iter().map(|i| json!({
            "digest": i.digest,
            "names": i.names,
            "size": i.size,
            "architecture": i.architecture,
            "os": i.os,
        })).collect::<Vec<_>>()
    })
}

fn image_error(e: &image::ImageError) -> WireError {
    WireError::new(400, "ClientException", model::error_chain(e))
}

/// Largest JSON body a native call takes.
const MAX_JSON_BODY: usize = 1 << 20;

/// A native call whose signature checked out, with its JSON body parsed.
pub(crate) struct SignedJson<T>(T);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for SignedJson<T> {
    type Rejection = WireError;

    async fn from_request(request: Request, shared: &AppState) -> Result<Self, WireError> {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, MAX_JSON_BODY)
            .await
            .map_err(|e| {
                WireError::new(
                    400,
                    "SerializationException",
                    format!("cannot read the request body: {e}"),
                )
            })?;
        authenticate(
            &shared.state,
            &parts.method,
            &parts.uri,
            &parts.headers,
            Payload::Bytes(&body),
        )?;
        serde_json::from_slice(&body).map(SignedJson).map_err(|e| {
            WireError::new(
                400,
                "SerializationException",
                format!("the request body is not valid: {e}"),
            )
        })
    }
}

/// A native call without a body whose signature checked out.
pub(crate) struct Signed;

impl FromRequestParts<AppState> for Signed {
    type Rejection = WireError;

    async fn from_request_parts(parts: &mut Parts, shared: &AppState) -> Result<Self, WireError> {
        authenticate(
            &shared.state,
            &parts.method,
            &parts.uri,
            &parts.headers,
            Payload::Bytes(b""),
        )?;
        Ok(Signed)
    }
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct ImageReference {
    reference: String,
}

/// Pulls an image, streaming one JSON line per progress event, then a last line with
/// either `image` or `error`.
pub(crate) async fn pull_image(
    State(shared): State<AppState>,
    SignedJson(request): SignedJson<ImageReference>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(256);
    let agent = shared.state.agent.clone();
    tokio::spawn(async move {
        let progress_tx = tx.clone();
        let result = agent
            .pull_image(&request.reference, move |p: PullProgress| {
                let line = json!({"progress": {
                    "layer": p.layer.to_string(), "index": p.index, "layers": p.layers,
                    "done": p.done, "total": p.total, "state": format!("{:?}", p.state),
                }});
                // A slow reader only loses progress lines, never the pull.
                let _ = progress_tx.try_send(Ok(format!("{line}\n")));
            })
            .await;
        let last = match result {
            Ok(image) => json!({"image": images_json(std::slice::from_ref(&image))["images"][0]}),
            Err(e) => {
                json!({"error": {"__type": "CannotPullContainerError", "message": model::error_chain(&e)}})
            }
        };
        let _ = tx.send(Ok(format!("{last}\n"))).await;
    });
    ndjson(Body::from_stream(receiver_stream(rx)))
}

pub(crate) async fn remove_image(
    State(shared): State<AppState>,
    SignedJson(request): SignedJson<ImageReference>,
) -> Response {
    store_call(
        &shared,
        move |images| images.remove(&request.reference),
        |outcome| json!({"untagged": outcome.untagged, "deleted": outcome.deleted}),
    )
    .await
}

pub(crate) async fn prune_images(
    State(shared): State<AppState>,
    _: SignedJson<serde::de::IgnoredAny>,
) -> Response {
    match shared.state.agent.prune_images().await {
        Ok(report) => with_request_id(
            axum::Json(json!({
                "imagesRemoved": report.images_removed,
                "blobsRemoved": report.blobs_removed,
                "layersRemoved": report.layers_removed,
                "bytesFreed": report.bytes_freed,
            }))
            .into_response(),
        ),
        Err(e) => image_error(&e).into_response(),
    }
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct Login {
    host: String,
    username: String,
    password: String,
}

pub(crate) async fn registry_login(
    State(shared): State<AppState>,
    SignedJson(login): SignedJson<Login>,
) -> Response {
    if login.host.is_empty() || login.username.is_empty() {
        return WireError::new(
            400,
            "InvalidParameterException",
            "host and username must not be empty",
        )
        .into_response();
    }
    match shared
        .state
        .agent
        .registry_login(&login.host, &login.username, &login.password)
    {
        Ok(()) => {
            tracing::info!(registry = %login.host, username = %login.username, "registry login stored");
            with_request_id(axum::Json(json!({})).into_response())
        }
        Err(e) => WireError::new(500, "ServerException", model::error_chain(&e)).into_response(),
    }
}

pub(crate) async fn list_images(State(shared): State<AppState>, _: Signed) -> Response {
    store_call(&shared, |images| images.list(), |list| images_json(&list)).await
}

/// Runs image-store work on the blocking pool and renders its result as JSON.
async fn store_call<T: Send + 'static>(
    shared: &AppState,
    work: impl FnOnce(image::ImageStore) -> Result<T, image::ImageError> + Send + 'static,
    render: impl FnOnce(T) -> serde_json::Value,
) -> Response {
    let images = shared.state.agent.images().clone();
    match tokio::task::spawn_blocking(move || work(images)).await {
        Ok(Ok(value)) => with_request_id(axum::Json(render(value)).into_response()),
        Ok(Err(e)) => image_error(&e).into_response(),
        Err(e) => WireError::new(500, "ServerException", e.to_string()).into_response(),
    }
}

pub(crate) async fn load_image(
    State(shared): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = authenticate(&shared.state, &method, &uri, &headers, Payload::Streamed) {
        return e.into_response();
    }
    match receive_and_load(&shared, body).await {
        Ok(images) => {
            for image in &images {
                tracing::info!(digest = %image.digest, names = ?image.names, "image loaded");
            }
            with_request_id(axum::Json(images_json(&images)).into_response())
        }
        Err(e) => e.into_response(),
    }
}

/// Spools the upload to a temporary file (archives are read out of order), then
/// imports it.
async fn receive_and_load(shared: &AppState, body: Body) -> Result<Vec<image::Image>, WireError> {
    let server_error = |what: &str, e: &dyn std::error::Error| {
        WireError::new(
            500,
            "ServerException",
            format!("{what}: {}", model::error_chain(e)),
        )
    };
    let mut spool =
        tempfile::tempfile().map_err(|e| server_error("cannot spool the upload", &e))?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            WireError::new(
                400,
                "ClientException",
                format!("the upload was interrupted: {e}"),
            )
        })?;
        spool
            .write_all(&chunk)
            .map_err(|e| server_error("cannot spool the upload", &e))?;
    }
    let images = shared.state.agent.images().clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Seek;
        spool.rewind()?;
        Ok::<_, std::io::Error>(images.load_archive(std::io::BufReader::new(spool)))
    })
    .await
    .map_err(|e| server_error("the import panicked", &e))?
    .map_err(|e| server_error("cannot read the spooled upload", &e))?
    .map_err(|e| image_error(&e))
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct LogsQuery {
    container: Option<String>,
    #[serde(default)]
    follow: bool,
}

pub(crate) async fn task_logs(
    State(shared): State<AppState>,
    Path(task_id): Path<String>,
    Query(query): Query<LogsQuery>,
    _: Signed,
) -> Response {
    let agent = shared.state.agent.clone();
    let not_found = |e: &dyn std::error::Error| {
        WireError::new(400, "InvalidParameterException", model::error_chain(e)).into_response()
    };
    // A task still being launched has no logs yet: with `follow`, wait for them.
    while query.follow && agent.is_active(&task_id) && agent.task_logs(&task_id).is_err() {
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
    let (task_dir, mut containers) =
        match (agent.task_logs(&task_id), agent.task_containers(&task_id)) {
            (Ok(dir), Ok(names)) => (dir, names),
            // Launching, without `follow`: nothing was logged yet.
            _ if agent.is_active(&task_id) => return ndjson(Body::empty()),
            (Err(e), _) | (_, Err(e)) => return not_found(&e),
        };
    if let Some(only) = &query.container {
        if !containers.contains(only) {
            return WireError::new(
                400,
                "InvalidParameterException",
                format!("task {task_id} has no container '{only}': it has {containers:?}"),
            )
            .into_response();
        }
        containers.retain(|c| c == only);
    }
    let mut followers = Vec::new();
    for name in &containers {
        match LogFollower::open(&task_dir, name, None) {
            Ok(f) => followers.push((name.clone(), f)),
            Err(e) => return not_found(&e),
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
    tokio::spawn(async move {
        loop {
            // Checked before reading, so the last read sees everything a stopped task wrote.
            let active = query.follow && agent.is_active(&task_id);
            let mut batch: Vec<(String, LogEntry)> = Vec::new();
            for (name, follower) in &mut followers {
                match follower.poll() {
                    Ok(entries) => batch.extend(entries.into_iter().map(|e| (name.clone(), e))),
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                }
            }
            batch.sort_by_key(|(_, e)| e.timestamp);
            for (name, entry) in batch {
                let line = json!({
                    "time": entry.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                    "container": name,
                    "stream": match entry.stream { LogStream::Stdout => "stdout", LogStream::Stderr => "stderr" },
                    "partial": entry.partial,
                    "message": entry.message,
                });
                if tx.send(Ok(format!("{line}\n"))).await.is_err() {
                    return;
                }
            }
            if !active {
                return;
            }
            tokio::time::sleep(FOLLOW_INTERVAL).await;
        }
    });
    ndjson(Body::from_stream(receiver_stream(rx)))
}

/// A response of JSON lines.
fn ndjson(body: Body) -> Response {
    with_request_id(([("content-type", "application/x-ndjson")], body).into_response())
}

fn receiver_stream(
    rx: tokio::sync::mpsc::Receiver<Result<String, std::io::Error>>,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
