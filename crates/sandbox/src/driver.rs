//! The container driver: one supervisor-owned set of OCI containers per task.
//!
//! `launch` prepares everything on the host, then hands over to the supervisor:
//!
//! 1. validate ids, create `<state-root>/<task-id>/` (see [`supervisor::layout`]);
//! 2. write the task's `etc/hosts`, `etc/hostname`, `etc/resolv.conf`;
//! 3. create the task cgroup with the task's CPU, memory and pids limits;
//! 4. write one OCI bundle per container, users resolved from the image;
//! 5. write `spec.json` and `supervisor.json`, start `<supervisor> --task-dir DIR`, which
//!    daemonizes at once, and wait until its control socket answers.
//!
//! The supervisor then owns the containers. `attach` re-adopts a task after an agent
//! restart; `remove` cleans up after a stopped task (or a supervisor that died): runtime
//! state, leftover processes, cgroups in every hierarchy, bundles. Logs and the final
//! `status.json` stay for the agent to collect.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use supervisor::spec::{container_id, ContainerRuntime, RuntimeConfig};
use supervisor::{TaskDir, TaskPhase, TaskSpec};

use crate::bundle::{self, BundleContext};
use crate::cgroup::{self, CgroupBackend, TaskLimits};
use crate::client::SupervisorClient;
use crate::config::DriverConfig;
use crate::{user, SandboxError};

/// Runs each task's containers under a supervisor, isolated by namespaces and cgroups.
#[derive(Debug, Clone)]
pub struct ContainerDriver {
    config: Arc<DriverConfig>,
    cgroups: Arc<dyn CgroupBackend>,
}

impl ContainerDriver {
    /// A driver for this host's cgroup layout.
    pub fn new(config: DriverConfig) -> Result<Self, SandboxError> {
        let cgroups = cgroup::detect(&config.cgroup_parent)?;
        Ok(Self::with_cgroups(config, cgroups.into()))
    }

    /// A driver with an explicit cgroup backend.
    pub fn with_cgroups(config: DriverConfig, cgroups: Arc<dyn CgroupBackend>) -> Self {
        ContainerDriver {
            config: Arc::new(config),
            cgroups,
        }
    }

    pub fn config(&self) -> &DriverConfig {
        &self.config
    }

    pub fn cgroups(&self) -> &dyn CgroupBackend {
        &*self.cgroups
    }

    /// The directory of a task (which may not exist).
    pub fn task_dir(&self, task_id: &str) -> TaskDir {
        TaskDir::new(self.config.state_root.join(task_id))
    }

    /// Prepares the task and starts its supervisor; returns once the supervisor answers.
    pub async fn launch(&self, spec: TaskSpec) -> Result<SupervisorClient, SandboxError> {
        validate_ids(&spec)?;
        let task_id = spec.task_id.clone();
        let dir = self.task_dir(&task_id);
        let driver = self.clone();
        let prepared_dir = dir.clone();
        tokio::task::spawn_blocking(move || driver.prepare(&spec, &prepared_dir))
            .await
            .expect("task preparation does not panic")?;
        let client = SupervisorClient::new(task_id.clone(), dir.clone());
        let log = dir.supervisor_log();
        let launcher_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(SandboxError::io("open", &log))?;
        let program = &self.config.supervisor_program;
        let status = tokio::process::Command::new(program)
            .args(&self.config.supervisor_args)
            .arg("--task-dir")
            .arg(dir.root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(launcher_log)
            .status()
            .await
            .map_err(|source| SandboxError::SpawnSupervisor {
                program: program.clone(),
                source,
            })?;
        if !status.success() {
            return Err(SandboxError::LauncherFailed {
                program: program.clone(),
                status,
                log,
            });
        }
        self.wait_ready(&client, &dir).await?;
        tracing::info!(task_id = %task_id, "task sandbox launched");
        Ok(client)
    }

    /// Re-adopts the supervisor of a task launched earlier (by this or a previous agent).
    pub async fn attach(&self, task_id: &str) -> Result<SupervisorClient, SandboxError> {
        validate_task_id(task_id)?;
        let dir = self.task_dir(task_id);
        if !dir.spec().exists() {
            return Err(SandboxError::TaskNotFound {
                task_id: task_id.to_owned(),
            });
        }
        Ok(SupervisorClient::new(task_id.to_owned(), dir))
    }

    /// Re-adopts a task after an agent restart: [`ContainerDriver::attach`], then waits
    /// (up to the launch's readiness timeout) for a supervisor that is still starting,
    /// as one launched just before the previous agent died may be. Fails when the
    /// supervisor is gone; the caller then removes the sandbox.
    pub async fn adopt(&self, task_id: &str) -> Result<SupervisorClient, SandboxError> {
        let client = self.attach(task_id).await?;
        self.wait_ready(&client, &self.task_dir(task_id)).await?;
        Ok(client)
    }

    /// The tasks with a sandbox on this host (launched and not removed).
    pub fn tasks(&self) -> Result<Vec<String>, SandboxError> {
        let root = &self.config.state_root;
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(SandboxError::Io {
                    action: "list",
                    path: root.clone(),
                    source,
                })
            }
        };
        let mut tasks: Vec<String> = entries
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| validate_task_id(name).is_ok() && self.task_dir(name).spec().exists())
            .collect();
        tasks.sort();
        Ok(tasks)
    }

    /// Cleans up a stopped task: runtime state, leftover processes, cgroups and bundles.
    /// Logs, `status.json` and `supervisor.log` stay for the agent to collect.
    pub async fn remove(&self, task_id: &str) -> Result<(), SandboxError> {
        validate_task_id(task_id)?;
        if self.is_incomplete(task_id) {
            // A launch interrupted before its spec was written: no supervisor and no
            // container ever existed, only the directory and the cgroups.
            let driver = self.clone();
            let task_id = task_id.to_owned();
            return tokio::task::spawn_blocking(move || driver.cleanup(&task_id))
                .await
                .expect("task cleanup does not panic");
        }
        let client = self.attach(task_id).await?;
        match client.status().await {
            Ok(status) if status.phase != TaskPhase::Stopped => {
                return Err(SandboxError::TaskStillRunning {
                    task_id: task_id.to_owned(),
                })
            }
            Ok(_) => {}
            Err(SandboxError::SupervisorLost { .. }) => {
                tracing::warn!(
                    task_id,
                    "supervisor died before the task stopped; forcing cleanup"
                );
            }
            Err(error) => return Err(error),
        }
        let driver = self.clone();
        let task_id = task_id.to_owned();
        tokio::task::spawn_blocking(move || driver.cleanup(&task_id))
            .await
            .expect("task cleanup does not panic")
    }

    fn prepare(&self, spec: &TaskSpec, dir: &TaskDir) -> Result<(), SandboxError> {
        std::fs::create_dir_all(&self.config.state_root)
            .map_err(SandboxError::io("create", &self.config.state_root))?;
        if dir.root().is_dir() && !dir.spec().exists() {
            // A launch interrupted before its spec was written, or a sandbox removed
            // after its supervisor was lost, launched again: start from a clean
            // directory, keeping earlier logs.
            tracing::warn!(task_id = %spec.task_id, "relaunching over an earlier, incomplete sandbox of this task");
            self.cleanup(&spec.task_id)?;
        }
        match std::fs::create_dir(dir.root()) {
            Ok(()) => {}
            Err(error)
                if error.kind() == std::io::ErrorKind::AlreadyExists && !dir.spec().exists() => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SandboxError::TaskExists {
                    task_id: spec.task_id.clone(),
                })
            }
            Err(source) => {
                return Err(SandboxError::Io {
                    action: "create",
                    path: dir.root().to_owned(),
                    source,
                })
            }
        }
        let result = self.write_task(spec, dir);
        if result.is_err() {
            if let Err(error) = self.cgroups.remove(&spec.task_id) {
                tracing::warn!(task_id = %spec.task_id, error = %error, "cannot remove cgroup of failed launch");
            }
            if let Err(error) = std::fs::remove_dir_all(dir.root()) {
                tracing::warn!(task_id = %spec.task_id, error = %error, "cannot remove task directory of failed launch");
            }
        }
        result
    }

    fn write_task(&self, spec: &TaskSpec, dir: &TaskDir) -> Result<(), SandboxError> {
        let task_id = &spec.task_id;
        bundle::write_etc_files(spec, &dir.etc_dir())?;
        for path in [dir.logs_dir(), dir.runtime_dir()] {
            std::fs::create_dir_all(&path).map_err(SandboxError::io("create", &path))?;
        }
        let limits = TaskLimits {
            cpu_units: spec.cpu_units,
            memory_mib: spec.memory_mib,
            pids_limit: self.config.pids_limit,
        };
        self.cgroups.create(task_id, &limits)?;
        let host_nofile_hard = bundle::host_nofile_hard();
        let mut containers = Vec::new();
        for container in &spec.containers {
            let user = user::resolve(
                &container.name,
                &container.rootfs,
                container.user.as_deref(),
            )?;
            let context = BundleContext {
                etc_dir: &dir.etc_dir(),
                cgroups_path: self.cgroups.container_path(task_id, &container.name),
                swap_limit: self.cgroups.swap_limit_supported(),
                host_nofile_hard,
                user: &user,
            };
            let oci = bundle::build(spec, container, &context)?;
            let bundle_dir = dir.bundle(&container.name);
            std::fs::create_dir_all(&bundle_dir)
                .map_err(SandboxError::io("create", &bundle_dir))?;
            oci.save(bundle_dir.join("config.json"))
                .map_err(|source| SandboxError::OciSpec {
                    container: container.name.clone(),
                    source,
                })?;
            containers.push(ContainerRuntime {
                name: container.name.clone(),
                id: container_id(task_id, &container.name),
                bundle: bundle_dir,
                memory_cgroup: Some(self.cgroups.memory_dir(task_id, Some(&container.name))),
            });
        }
        let config = RuntimeConfig {
            runtime: self.config.runtime.clone(),
            runtime_root: self.config.runtime_root.clone(),
            log_max_bytes: self.config.log_max_bytes,
            task_memory_cgroup: Some(self.cgroups.memory_dir(task_id, None)),
            containers,
        };
        write_json(&dir.runtime_config(), &config)?;
        write_json(&dir.spec(), spec)
    }

    async fn wait_ready(
        &self,
        client: &SupervisorClient,
        dir: &TaskDir,
    ) -> Result<(), SandboxError> {
        let started = Instant::now();
        let not_ready = || SandboxError::SupervisorNotReady {
            task_id: client.task_id().to_owned(),
            timeout: self.config.ready_timeout,
            log: dir.supervisor_log(),
        };
        loop {
            if client.status().await.is_ok() {
                return Ok(());
            }
            // A supervisor that died while starting will never answer.
            let pid = std::fs::read_to_string(dir.pid_file())
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            let dead = pid.is_some_and(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
            });
            if dead || started.elapsed() > self.config.ready_timeout {
                return Err(not_ready());
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Whether the task's directory is a launch interrupted (by a crash) while it was
    /// being prepared: no spec yet, and no supervisor ever started (its log is opened
    /// once preparation is done). A removed sandbox has no spec either, but keeps its
    /// logs, the supervisor's among them.
    fn is_incomplete(&self, task_id: &str) -> bool {
        let dir = self.task_dir(task_id);
        dir.root().is_dir() && !dir.spec().exists() && !dir.supervisor_log().exists()
    }

    fn cleanup(&self, task_id: &str) -> Result<(), SandboxError> {
        let dir = self.task_dir(task_id);
        // Containers exist only once the spec does (the supervisor creates them).
        if dir.spec().exists() {
            let spec: TaskSpec = read_json(&dir.spec())?;
            for container in &spec.containers {
                let id = container_id(task_id, &container.name);
                if self.config.runtime_root.join(&id).exists() {
                    self.runtime_delete(&id, &dir.runtime_log(&container.name))?;
                }
            }
        }
        self.cgroups.remove(task_id)?;
        for path in [dir.bundles_dir(), dir.etc_dir(), dir.runtime_dir()] {
            remove_if_present(&path, |p| std::fs::remove_dir_all(p))?;
        }
        for path in [
            dir.runtime_config(),
            dir.pid_file(),
            dir.socket(),
            dir.spec(),
        ] {
            remove_if_present(&path, |p| std::fs::remove_file(p))?;
        }
        tracing::info!(task_id, "task sandbox removed");
        Ok(())
    }

    fn runtime_delete(&self, id: &str, log: &Path) -> Result<(), SandboxError> {
        let program = &self.config.runtime;
        let status = std::process::Command::new(program)
            .arg("--root")
            .arg(&self.config.runtime_root)
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json")
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| SandboxError::SpawnSupervisor {
                program: program.clone(),
                source,
            })?;
        if status.success() {
            tracing::info!(container_id = id, "deleted leftover runtime container");
            Ok(())
        } else {
            Err(SandboxError::RuntimeDelete {
                program: program.clone(),
                id: id.to_owned(),
                status,
                log: log.to_owned(),
            })
        }
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), SandboxError> {
    supervisor::control::write_atomically(path, value).map_err(|source| SandboxError::Supervisor {
        path: path.to_owned(),
        source,
    })
}

fn read_json<T: for<'de> serde::Deserialize<'de>>(path: &Path) -> Result<T, SandboxError> {
    let bytes = std::fs::read(path).map_err(SandboxError::io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|source| SandboxError::Json {
        path: path.to_owned(),
        source,
    })
}

fn validate_task_id(task_id: &str) -> Result<(), SandboxError> {
    if task_id.len() == 32
        && task_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(SandboxError::InvalidTaskId {
            task_id: task_id.to_owned(),
        })
    }
}

/// Ids and names become paths and runtime ids: refuse anything that could escape.
fn validate_ids(spec: &TaskSpec) -> Result<(), SandboxError> {
    validate_task_id(&spec.task_id)?;
    for container in &spec.containers {
        let name = &container.name;
        let valid = !name.is_empty()
            && name.len() <= 255
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(SandboxError::InvalidContainerName { name: name.clone() });
        }
    }
    Ok(())
}

/// Removes `path` with `remove`; a path already gone is fine.
fn remove_if_present(
    path: &Path,
    remove: fn(&Path) -> std::io::Result<()>,
) -> Result<(), SandboxError> {
    match remove(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(SandboxError::Io {
            action: "remove",
            path: path.to_path_buf(),
            source: error,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_the_state_root_are_refused() {
        assert!(validate_task_id(&"0123456789abcdef".repeat(2)).is_ok());
        for bad in [
            "../../etc",
            "ABCDEF0123456789abcdef0123456789",
            "",
            &"a".repeat(33),
        ] {
            assert!(
                matches!(
                    validate_task_id(bad),
                    Err(SandboxError::InvalidTaskId { .. })
                ),
                "{bad}"
            );
        }
        let mut spec = TaskSpec {
            task_id: "a".repeat(32),
            cpu_units: 256,
            memory_mib: 512,
            netns_path: "/n".into(),
            hostname: "h".into(),
            address: None,
            dns: None,
            containers: vec![supervisor::ContainerSpec::new("web_1-a", "/r", vec![])],
        };
        assert!(validate_ids(&spec).is_ok());
        spec.containers[0].name = "../x".into();
        assert!(matches!(
            validate_ids(&spec),
            Err(SandboxError::InvalidContainerName { .. })
        ));
    }
}
