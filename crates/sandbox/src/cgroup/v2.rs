//! cgroup v2: one unified hierarchy; controllers must be enabled in each ancestor's
//! `cgroup.subtree_control` before a child can use them.

use std::path::PathBuf;

use super::{
    create_dir, exists_anywhere, remove_everywhere, write, CgroupBackend, Hierarchy, TaskLimits,
    CPU_PERIOD_US,
};
use crate::SandboxError;

/// The controllers a task cgroup needs.
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// The unified hierarchy.
#[derive(Debug, Clone)]
pub struct CgroupV2 {
    root: PathBuf,
    parent: PathBuf,
}

impl CgroupV2 {
    /// The v2 layout, if a cgroup2 mount offers the memory controller.
    pub fn from_mounts(parent: &str, mounts: &[Hierarchy]) -> Option<Self> {
        let root = mounts.iter().find(|h| {
            h.unified
                && std::fs::read_to_string(h.mount_point.join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        })?;
        Some(CgroupV2 {
            root: root.mount_point.clone(),
            parent: PathBuf::from(parent),
        })
    }

    /// Enables the task controllers for the children of `dir`.
    fn delegate(&self, dir: &std::path::Path) -> Result<(), SandboxError> {
        let available =
            std::fs::read_to_string(dir.join("cgroup.controllers")).map_err(|source| {
                SandboxError::Cgroup {
                    path: dir.join("cgroup.controllers"),
                    source,
                }
            })?;
        let enable: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        write(dir, "cgroup.subtree_control", &enable.join(" "))
    }
}

impl CgroupBackend for CgroupV2 {
    fn create(&self, task_id: &str, limits: &TaskLimits) -> Result<(), SandboxError> {
        let parent = self.root.join(&self.parent);
        let task = parent.join(task_id);
        create_dir(&task)?;
        self.delegate(&self.root)?;
        self.delegate(&parent)?;
        write(&task, "memory.max", &limits.memory_bytes().to_string())?;
        if task.join("memory.swap.max").exists() {
            write(&task, "memory.swap.max", "0")?;
        }
        write(
            &task,
            "cpu.max",
            &format!("{} {CPU_PERIOD_US}", limits.cpu_quota_us()),
        )?;
        write(&task, "pids.max", &limits.pids_limit.to_string())?;
        self.delegate(&task)
    }

    fn memory_dir(&self, task_id: &str, container: Option<&str>) -> PathBuf {
        let dir = self.root.join(&self.parent).join(task_id);
        container.map_or_else(|| dir.clone(), |c| dir.join(c))
    }

    fn swap_limit_supported(&self) -> bool {
        self.root
            .join(&self.parent)
            .join("memory.swap.max")
            .exists()
    }

    fn container_path(&self, task_id: &str, container: &str) -> String {
        format!("/{}/{task_id}/{container}", self.parent.display())
    }

    fn remove(&self, task_id: &str) -> Result<(), SandboxError> {
        remove_everywhere(&self.parent.join(task_id))
    }

    fn exists(&self, task_id: &str) -> bool {
        exists_anywhere(&self.parent.join(task_id))
    }
}
