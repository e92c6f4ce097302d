//! The task metadata endpoint v4, at `169.254.170.2:80` as tasks see it.
//!
//! ```text
//!  task netns                          host (agent)
//!  wget $ECS_CONTAINER_METADATA_URI_V4 --default route--> bridge: gateway/len,
//!   = http://169.254.170.2/v4/<token>                           169.254.170.2/32
//!                                                       socket bound to the bridge
//!  GET /v4/<token>             this container's document
//!  GET /v4/<token>/task        the task's document, every container
//!  GET /v4/<token>/stats       this container's Docker stats
//!  GET /v4/<token>/task/stats  DockerId -> stats, every container
//! ```
//!
//! `/v3/<token>...` (`ECS_CONTAINER_METADATA_URI`) serves the same documents.
//!
//! `169.254.170.2/32` is on the task bridge (`net::HostNetwork::init` keeps it there
//! with the gateway address, so it survives agent restarts for tasks that outlive the
//! agent); the agent listens on it with the socket bound to the bridge device, so that several agents on one host, each with its own bridge, can all serve
//! the same address. The caller is identified by the connection's source address,
//! which the per-task anti-spoofing rules guarantee is the sender's own; see
//! [`registry`] for the isolation decision. Every refusal is the same short 404.

mod documents;
mod registry;
mod stats;

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path as UrlPath, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

pub(crate) use registry::{Registry, TaskEndpoint};

use documents::{ClockDrift, HostFacts};
use registry::TaskRecord;
use stats::{CgroupLayout, CpuSample, HostCpu};

/// Where tasks reach the metadata endpoint (`HostNetwork::init` puts it on the bridge).
pub(crate) use net::METADATA_ADDRESS;
const METADATA_PORT: u16 = 80;
/// `adjtimex`'s state when the clock is not synchronized.
const TIME_ERROR: i32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error(
        "cannot listen on {METADATA_ADDRESS}:{METADATA_PORT} on bridge {bridge} for the task \
         metadata endpoint: stop whatever holds port {METADATA_PORT} on all addresses"
    )]
    Listen {
        bridge: String,
        #[source]
        source: io::Error,
    },
}

/// The environment every container gets: the v4 URI and the older v3 one.
pub(crate) fn container_environment(token: &str) -> [(String, String); 2] {
    [
        (
            "ECS_CONTAINER_METADATA_URI_V4".to_owned(),
            format!("http://{METADATA_ADDRESS}/v4/{token}"),
        ),
        (
            "ECS_CONTAINER_METADATA_URI".to_owned(),
            format!("http://{METADATA_ADDRESS}/v3/{token}"),
        ),
    ]
}

/// Where the server finds what it measures on the host.
#[derive(Debug, Clone)]
pub(crate) struct HostPaths {
    /// The agent's `<state>/tasks`: each task's writable layers.
    pub agent_tasks: PathBuf,
    /// The sandbox driver's state root: each task's `etc/resolv.conf`.
    pub sandbox_root: PathBuf,
    /// Task cgroups are `<cgroup_parent>/<task id>/<container>` in every hierarchy.
    pub cgroup_parent: String,
}

struct Server {
    registry: Arc<Registry>,
    paths: HostPaths,
    cgroups: Option<CgroupLayout>,
}

/// Gives the bridge the endpoint's address and serves the endpoint on it until the
/// process ends.
pub(crate) async fn start(
    bridge: &str,
    registry: Arc<Registry>,
    paths: HostPaths,
) -> Result<(), MetadataError> {
    let listener = listen(bridge).map_err(|source| MetadataError::Listen {
        bridge: bridge.to_owned(),
        source,
    })?;
    let cgroups = sandbox::cgroup::Hierarchy::mounted()
        .ok()
        .and_then(|mounts| CgroupLayout::detect(&mounts));
    if cgroups.is_none() {
        tracing::warn!("no cgroup hierarchy found: metadata stats will be empty");
    }
    let server = Arc::new(Server {
        registry,
        paths,
        cgroups,
    });
    let app = Router::new()
        .route("/{version}/{token}", get(container))
        .route("/{version}/{token}/task", get(task))
        .route("/{version}/{token}/stats", get(container_stats))
        .route("/{version}/{token}/task/stats", get(task_stats))
        .fallback(|| async { not_found() })
        .with_state(server);
    tracing::info!(bridge, address = %METADATA_ADDRESS, "task metadata endpoint listening");
    let bridge = bridge.to_owned();
    tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            tracing::error!(bridge, error = %e, "the task metadata endpoint stopped");
        }
    });
    Ok(())
}

/// A listening socket on the endpoint's address, bound to the bridge device.
fn listen(bridge: &str) -> io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind_device(Some(bridge.as_bytes()))?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(
        METADATA_ADDRESS,
        METADATA_PORT,
    )))?;
    socket.listen(1024)
}

/// The task that called and the container its token names; any request that does not
/// resolve to one (another address, an unknown token, an unknown version) is answered
/// 404 before a handler runs.
struct Caller {
    record: TaskRecord,
    container: String,
}

impl FromRequestParts<Arc<Server>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        server: &Arc<Server>,
    ) -> Result<Self, Self::Rejection> {
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(parts, server)
            .await
            .map_err(|_| not_found())?;
        let UrlPath((version, token)) =
            UrlPath::<(String, String)>::from_request_parts(parts, server)
                .await
                .map_err(|_| not_found())?;
        let (record, container) = server
            .caller(peer, &version, &token)
            .ok_or_else(not_found)?;
        Ok(Caller { record, container })
    }
}

impl Server {
    /// The calling task and the container its token names, if both agree.
    fn caller(&self, peer: SocketAddr, version: &str, token: &str) -> Option<(TaskRecord, String)> {
        let SocketAddr::V4(peer) = peer else {
            return None;
        };
        if !matches!(version, "v3" | "v4") {
            return None;
        }
        let found = self.registry.resolve(*peer.ip(), token);
        if found.is_none() {
            tracing::debug!(caller = %peer.ip(), "metadata request refused");
        }
        found
    }

    /// Facts of the host for the documents; `storage` walks the writable layers.
    async fn host_facts(self: &Arc<Self>, record: &TaskRecord, storage: bool) -> HostFacts {
        let server = self.clone();
        let task_id = record.plan.task_id.clone();
        let measured = tokio::task::spawn_blocking(move || {
            let resolv = supervisor::layout::TaskDir::new(server.paths.sandbox_root.join(&task_id))
                .etc_dir()
                .join("resolv.conf");
            let (name_servers, search_list) =
                documents::parse_resolv_conf(&std::fs::read_to_string(resolv).unwrap_or_default());
            let storage_utilized_mib = if storage {
                disk_usage(&server.paths.agent_tasks.join(&task_id).join("containers")) >> 20
            } else {
                0
            };
            HostFacts {
                name_servers,
                search_list,
                storage_utilized_mib,
                clock: clock_drift(),
            }
        })
        .await;
        measured.unwrap_or_else(|e| {
            tracing::error!(error = %e, "measuring metadata host facts panicked");
            HostFacts {
                name_servers: Vec::new(),
                search_list: Vec::new(),
                storage_utilized_mib: 0,
                clock: clock_drift(),
            }
        })
    }

    /// Reads one container's stats.
    fn stats(&self, record: &TaskRecord, container: &str) -> stats::ContainerStats {
        let task_id = &record.plan.task_id;
        let relative = Path::new(&self.paths.cgroup_parent)
            .join(task_id)
            .join(container);
        let task_limit = u64::from(record.plan.memory_mib) << 20;
        let cgroup = self
            .cgroups
            .as_ref()
            .map(|layout| layout.read(&relative, task_limit))
            .unwrap_or_default();
        let network = stats::read_veth(&record.endpoint.host_interface);
        let current = CpuSample::new(documents::rfc3339(model::now()), &cgroup, HostCpu::read());
        let previous = self
            .registry
            .swap_cpu_sample(task_id, container, current.clone());
        stats::container_stats(
            container,
            &documents::docker_id(record, container),
            current,
            cgroup,
            network,
            previous,
        )
    }
}

async fn container(State(server): State<Arc<Server>>, caller: Caller) -> Response {
    let Caller {
        record,
        container: name,
    } = caller;
    let host = server.host_facts(&record, false).await;
    match documents::container_document(&record, &name, &host) {
        Some(document) => json(&document),
        None => not_found(),
    }
}

async fn task(State(server): State<Arc<Server>>, Caller { record, .. }: Caller) -> Response {
    let host = server.host_facts(&record, true).await;
    json(&documents::task_document(&record, &host))
}

async fn container_stats(State(server): State<Arc<Server>>, caller: Caller) -> Response {
    let Caller {
        record,
        container: name,
    } = caller;
    let reader = server.clone();
    match tokio::task::spawn_blocking(move || reader.stats(&record, &name)).await {
        Ok(document) => json(&document),
        Err(e) => internal_error(&e),
    }
}

async fn task_stats(State(server): State<Arc<Server>>, Caller { record, .. }: Caller) -> Response {
    let reader = server.clone();
    let all = tokio::task::spawn_blocking(move || {
        record
            .plan
            .containers
            .iter()
            .map(|c| {
                (
                    documents::docker_id(&record, &c.name),
                    reader.stats(&record, &c.name),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    })
    .await;
    match all {
        Ok(all) => json(&all),
        Err(e) => internal_error(&e),
    }
}

fn json<T: Serialize>(document: &T) -> Response {
    Json(document).into_response()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

fn internal_error(error: &tokio::task::JoinError) -> Response {
    tracing::error!(error = %error, "reading metadata stats panicked");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
}

/// Bytes allocated below `dir`, not following symbolic links.
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.path().symlink_metadata() else {
                continue;
            };
            total += metadata.blocks() * 512;
            if metadata.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

/// The host clock's error bound and synchronization, as the kernel's NTP state says.
fn clock_drift() -> ClockDrift {
    // SAFETY: an all-zero `timex` is valid; with `modes` 0 adjtimex only reads.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `timex` is a valid, exclusively borrowed `struct timex`.
    let state = unsafe { libc::adjtimex(&mut timex) };
    ClockDrift {
        clock_error_bound: timex.maxerror as f64 / 1000.0,
        reference_timestamp: documents::rfc3339(model::now().floor()),
        clock_synchronization_status: if state < 0 || state == TIME_ERROR {
            "NOT_SYNCHRONIZED"
        } else {
            "SYNCHRONIZED"
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_gets_both_uris_with_its_token() {
        let env = container_environment("00ff");
        assert_eq!(
            env,
            [
                (
                    "ECS_CONTAINER_METADATA_URI_V4".to_owned(),
                    "http://169.254.170.2/v4/00ff".to_owned()
                ),
                (
                    "ECS_CONTAINER_METADATA_URI".to_owned(),
                    "http://169.254.170.2/v3/00ff".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn disk_usage_counts_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/upper/b")).unwrap();
        std::fs::write(dir.path().join("a/upper/b/file"), vec![1u8; 3 << 20]).unwrap();
        let used = disk_usage(dir.path());
        assert!(used >= 3 << 20, "{used}");
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
    }
}
