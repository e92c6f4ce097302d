//! cgroup v1 (and hybrid hosts, whose controllers are all v1): one directory per
//! controller hierarchy.

use std::path::{Path, PathBuf};

use super::{
    create_dir, exists_anywhere, remove_everywhere, write, CgroupBackend, Hierarchy, TaskLimits,
    CPU_PERIOD_US,
};
use crate::SandboxError;

/// The v1 hierarchies the task's limits are written to.
#[derive(Debug, Clone)]
pub struct CgroupV1 {
    parent: PathBuf,
    memory: PathBuf,
    cpu: Option<PathBuf>,
    pids: Option<PathBuf>,
}

impl CgroupV1 {
    /// The v1 layout, if a v1 memory hierarchy is mounted.
    pub fn from_mounts(parent: &str, mounts: &[Hierarchy]) -> Option<Self> {
        let find = |controller: &str| {
            mounts
                .iter()
                .find(|h| !h.unified && h.controllers.iter().any(|c| c == controller))
                .map(|h| h.mount_point.clone())
        };
        Some(CgroupV1 {
            parent: PathBuf::from(parent),
            memory: find("memory")?,
            cpu: find("cpu"),
            pids: find("pids"),
        })
    }

    fn task_dir(&self, hierarchy: &Path, task_id: &str) -> PathBuf {
        hierarchy.join(&self.parent).join(task_id)
    }
}

impl CgroupBackend for CgroupV1 {
    fn create(&self, task_id: &str, limits: &TaskLimits) -> Result<(), SandboxError> {
        let memory = self.task_dir(&self.memory, task_id);
        create_dir(&memory)?;
        let bytes = limits.memory_bytes().to_string();
        write(&memory, "memory.limit_in_bytes", &bytes)?;
        if memory.join("memory.memsw.limit_in_bytes").exists() {
            // memsw >= memory must hold at every step: it is written second.
            write(&memory, "memory.memsw.limit_in_bytes", &bytes)?;
        }
        if let Some(cpu) = &self.cpu {
            let cpu = self.task_dir(cpu, task_id);
            create_dir(&cpu)?;
            write(&cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            write(&cpu, "cpu.cfs_quota_us", &limits.cpu_quota_us().to_string())?;
            write(&cpu, "cpu.shares", &limits.cpu_units.max(2).to_string())?;
        } else {
            tracing::warn!(
                task_id,
                "no v1 cpu hierarchy: the task's CPU is not limited"
            );
        }
        if let Some(pids) = &self.pids {
            let pids = self.task_dir(pids, task_id);
            create_dir(&pids)?;
            write(&pids, "pids.max", &limits.pids_limit.to_string())?;
        } else {
            tracing::warn!(
                task_id,
                "no v1 pids hierarchy: the task's process count is not limited"
            );
        }
        Ok(())
    }

    fn memory_dir(&self, task_id: &str, container: Option<&str>) -> PathBuf {
        let dir = self.task_dir(&self.memory, task_id);
        container.map_or_else(|| dir.clone(), |c| dir.join(c))
    }

    fn swap_limit_supported(&self) -> bool {
        self.memory.join("memory.memsw.limit_in_bytes").exists()
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
