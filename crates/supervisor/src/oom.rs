//! Reading a memory cgroup's OOM-kill counter, on cgroup v1 and v2.
//!
//! v2 exposes `oom_kill N` in `memory.events`; v1 (kernel 4.13+) in `memory.oom_control`.
//! The supervisor reads the counter of a container's cgroup, and of the task's cgroup, after
//! the container exits: a non-zero count (or a task count that grew) means the kernel's
//! OOM killer took one of its processes.

use std::path::Path;

/// The number of processes the OOM killer killed in the cgroup at `dir`, or `None` when
/// the cgroup or its counter is gone.
pub fn oom_kills(dir: &Path) -> Option<u64> {
    ["memory.events", "memory.oom_control"]
        .iter()
        .find_map(|file| std::fs::read_to_string(dir.join(file)).ok())
        .and_then(|text| parse_oom_kill(&text))
}

fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v1), Some(2));
        assert_eq!(parse_oom_kill(v2), Some(1));
        assert_eq!(parse_oom_kill("oom_kill_disable 0\n"), None);
    }

    #[test]
    fn reads_whichever_file_exists() {
        let temp = tempfile::tempdir().unwrap();
        assert_eq!(oom_kills(temp.path()), None);
        std::fs::write(temp.path().join("memory.oom_control"), "oom_kill 3\n").unwrap();
        assert_eq!(oom_kills(temp.path()), Some(3));
    }
}
