//! Turning a [`TaskPlan`] into what the sandbox runs: each container's image resolved,
//! its root filesystem mounted (shared read-only layers plus a per-task writable layer),
//! and its process settings merged from the plan and the image, as Docker merges them.

use std::path::{Path, PathBuf};

use image::{Image, ImageStore};
use model::agent::{ContainerPlan, TaskPlan};
use supervisor::spec::{Condition, ContainerSpec, Dependency, DnsConfig, HealthCheck, TaskSpec};

use crate::dns;
use crate::metadata::{self, TaskEndpoint};

const PLAN_FILE: &str = "plan.json";
const FINISHED_FILE: &str = "finished";
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Writes the plan where a restarted agent finds it (atomically).
pub(crate) fn save_plan(dir: &Path, plan: &TaskPlan) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{PLAN_FILE}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec(plan).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, dir.join(PLAN_FILE))
}

pub(crate) fn load_plan(dir: &Path) -> Option<TaskPlan> {
    let bytes = std::fs::read(dir.join(PLAN_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Marks a task whose clean-up is complete, so a restarted agent leaves it alone.
pub(crate) fn mark_finished(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join(FINISHED_FILE), b"")
}

pub(crate) fn is_finished(dir: &Path) -> bool {
    dir.join(FINISHED_FILE).exists()
}

/// The directories of one container's root filesystem.
pub(crate) struct RootfsDirs {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub target: PathBuf,
}

pub(crate) fn rootfs_dirs(task_dir: &Path, container: &str) -> RootfsDirs {
    let base = task_dir.join("containers").join(container);
    RootfsDirs {
        upper: base.join("upper"),
        work: base.join("work"),
        target: base.join("rootfs"),
    }
}

/// Mounts the container's root filesystem from its image's layers. A launch redone
/// after a restart first drops the mount the interrupted one may have left.
///
/// The mount is always writable, even for `readonlyRootFilesystem`: the runtime must
/// still create the mount points of `/etc/hosts`, `/etc/resolv.conf` and the like in
/// it, and makes the root read-only itself afterwards (the OCI `root.readonly`), as
/// Docker does.
pub(crate) fn mount_rootfs(
    images: &ImageStore,
    image: &Image,
    dirs: &RootfsDirs,
) -> Result<(), String> {
    image::rootfs::unmount_rootfs(&dirs.target).map_err(|e| model::error_chain(&e))?;
    for dir in [&dirs.upper, &dirs.work, &dirs.target] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    image::rootfs::mount_rootfs(
        &images.layer_dirs(image),
        &dirs.upper,
        &dirs.work,
        &dirs.target,
        false,
    )
    .map_err(|e| model::error_chain(&e))
}

/// Unmounts every container root filesystem of the task and removes its writable
/// layers. Safe to repeat.
pub(crate) fn release_storage(task_dir: &Path) -> Result<(), String> {
    let containers = task_dir.join("containers");
    let entries = match std::fs::read_dir(&containers) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot list {}: {e}", containers.display())),
    };
    for entry in entries.flatten() {
        let target = entry.path().join("rootfs");
        image::rootfs::unmount_rootfs(&target).map_err(|e| model::error_chain(&e))?;
    }
    std::fs::remove_dir_all(&containers)
        .map_err(|e| format!("cannot remove {}: {e}", containers.display()))
}

/// The hostname Fargate gives a task: its private DNS name.
pub(crate) fn hostname(plan: &TaskPlan) -> String {
    format!(
        "ip-{}.ec2.internal",
        plan.network.address.to_string().replace('.', "-")
    )
}

/// Builds the sandbox's task spec from the plan, each container's image, and the
/// task's metadata endpoint (each container's URIs). The task asks the resolver on its
/// gateway, and short names are its cluster's service names.
pub(crate) fn task_spec(
    plan: &TaskPlan,
    netns_path: PathBuf,
    containers: &[(ContainerPlan, Image, PathBuf)],
    endpoint: &TaskEndpoint,
) -> Result<TaskSpec, String> {
    let mut specs = Vec::new();
    for (c, image, rootfs) in containers {
        let token = endpoint.token(&c.name).ok_or_else(|| {
            format!(
                "ResourceInitializationError: container {} has no metadata endpoint token",
                c.name
            )
        })?;
        specs.push(container_spec(c, image, rootfs.clone(), token)?);
    }
    Ok(TaskSpec {
        task_id: plan.task_id.clone(),
        cpu_units: plan.cpu_units,
        memory_mib: u64::from(plan.memory_mib),
        netns_path,
        hostname: hostname(plan),
        address: Some(plan.network.address),
        dns: Some(DnsConfig {
            nameserver: plan.network.gateway,
            search: vec![dns::search_domain(&plan.cluster)],
        }),
        containers: specs,
    })
}

fn container_spec(
    c: &ContainerPlan,
    image: &Image,
    rootfs: PathBuf,
    metadata_token: &str,
) -> Result<ContainerSpec, String> {
    let config = &image.config;
    // Docker's rule: an entrypoint given by the user also replaces the image's CMD.
    let args: Vec<String> = if c.entry_point.is_empty() {
        let mut args = config.entrypoint.clone();
        args.extend(c.command.clone().unwrap_or_else(|| config.cmd.clone()));
        args
    } else {
        let mut args = c.entry_point.clone();
        args.extend(c.command.clone().unwrap_or_default());
        args
    };
    if args.is_empty() {
        return Err(format!(
            "CannotStartContainerError: container {} has no command: the image defines no entrypoint or cmd, so set entryPoint or command in the task definition",
            c.name
        ));
    }
    let mut env = config.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.into());
    }
    // The agent's own variables come last: like ECS, it sets them whatever the task
    // definition says.
    let agent_env = metadata::container_environment(metadata_token);
    for (name, value) in c.environment.iter().chain(&agent_env) {
        let entry = format!("{name}={value}");
        match env
            .iter_mut()
            .find(|e| e.split('=').next() == Some(name.as_str()))
        {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    }
    let mut spec = ContainerSpec::new(c.name.clone(), rootfs, args);
    spec.readonly_rootfs = c.readonly_root_filesystem;
    spec.env = env;
    spec.cwd = c
        .working_directory
        .clone()
        .or_else(|| config.working_dir.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".into());
    spec.user = c
        .user
        .clone()
        .or_else(|| config.user.clone())
        .filter(|u| !u.is_empty());
    spec.essential = c.essential;
    spec.depends_on = c
        .depends_on
        .iter()
        .map(|(container, condition)| {
            let condition = match condition.as_str() {
                "START" => Condition::Start,
                "COMPLETE" => Condition::Complete,
                "SUCCESS" => Condition::Success,
                _ => Condition::Healthy,
            };
            Dependency {
                container: container.clone(),
                condition,
            }
        })
        .collect();
    spec.stop_timeout = std::time::Duration::from_secs(u64::from(c.stop_timeout_secs));
    spec.memory_mib = c.memory_mib;
    spec.memory_reservation_mib = c.memory_reservation_mib;
    spec.cpu_shares = (c.cpu > 0).then_some(c.cpu.max(2));
    spec.nofile = c.nofile;
    spec.add_capabilities = c.add_capabilities.clone();
    spec.health_check = c.health_check.as_ref().map(|check| HealthCheck {
        command: check.command.clone(),
        interval: secs(check.interval_secs),
        timeout: secs(check.timeout_secs),
        retries: check.retries,
        start_period: secs(check.start_period_secs),
    });
    Ok(spec)
}

fn secs(secs: u32) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(secs))
}
