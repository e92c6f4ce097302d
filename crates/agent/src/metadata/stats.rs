//! Container statistics in the Docker stats JSON shape (`${URI}/stats`), read from the
//! container's cgroup and the task's veth counters.
//!
//! ```text
//! cgroup v1 (and hybrid)  <memory>/<parent>/<task>/<container>/memory.{usage,max_usage,limit}_in_bytes
//!                         <cpuacct>/.../cpuacct.{usage,usage_percpu,stat}, <cpu>/.../cpu.stat
//!                         <pids>/.../pids.current
//! cgroup v2               <root>/<parent>/<task>/<container>/memory.{current,peak,max,stat}
//!                         cpu.stat (usage_usec, user_usec, system_usec), pids.current
//! network                 /proc/net/dev, the host veth's line, rx and tx swapped:
//!                         what the host end receives, the task sent
//! ```
//!
//! A container's memory limit is its own or, when it has none, the task's. Like Docker,
//! `precpu_stats` is the previous reading of the same container (kept in the registry),
//! zero on the first; `system_cpu_usage` is the host's total from `/proc/stat`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sandbox::cgroup::Hierarchy;
use serde::Serialize;

/// `/proc/stat` counts in USER_HZ ticks, 100 per second on Linux.
const NANOS_PER_TICK: u64 = 10_000_000;
/// Docker's `preread` when there is no previous reading.
const NO_READING: &str = "0001-01-01T00:00:00Z";
/// The task's interface, as Docker names it in `networks`.
const TASK_INTERFACE: &str = "eth0";

/// Where the task cgroups are on this host.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CgroupLayout {
    /// v1 or hybrid: one hierarchy per controller.
    V1 {
        memory: PathBuf,
        cpuacct: Option<PathBuf>,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    /// The unified hierarchy.
    V2 { root: PathBuf },
}

impl CgroupLayout {
    /// The layout the sandbox driver uses: v1 wherever a v1 memory hierarchy is
    /// mounted, else the cgroup2 mount.
    pub fn detect(mounts: &[Hierarchy]) -> Option<Self> {
        let v1 = |controller: &str| {
            mounts
                .iter()
                .find(|h| !h.unified && h.controllers.iter().any(|c| c == controller))
                .map(|h| h.mount_point.clone())
        };
        if let Some(memory) = v1("memory") {
            return Some(CgroupLayout::V1 {
                memory,
                cpuacct: v1("cpuacct"),
                cpu: v1("cpu"),
                pids: v1("pids"),
            });
        }
        mounts.iter().find(|h| h.unified).map(|h| CgroupLayout::V2 {
            root: h.mount_point.clone(),
        })
    }

    /// Reads one cgroup (`relative` below each hierarchy); `fallback_limit` is the
    /// memory limit when the cgroup has none of its own.
    pub fn read(&self, relative: &Path, fallback_limit: u64) -> CgroupReading {
        let mut reading = match self {
            CgroupLayout::V1 {
                memory,
                cpuacct,
                cpu,
                pids,
            } => read_v1(
                &memory.join(relative),
                cpuacct.as_ref().map(|d| d.join(relative)),
                cpu.as_ref().map(|d| d.join(relative)),
                pids.as_ref().map(|d| d.join(relative)),
            ),
            CgroupLayout::V2 { root } => read_v2(&root.join(relative)),
        };
        if reading.memory.limit == 0 || reading.memory.limit > fallback_limit {
            reading.memory.limit = fallback_limit;
        }
        reading
    }
}

/// What one cgroup says, in Docker's units (bytes, nanoseconds).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CgroupReading {
    pub cpu: CpuUsage,
    pub throttling: Throttling,
    pub memory: MemoryStats,
    pub pids: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct CpuUsage {
    pub total_usage: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_usage: Vec<u64>,
    pub usage_in_kernelmode: u64,
    pub usage_in_usermode: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_time: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct MemoryStats {
    pub usage: u64,
    pub max_usage: u64,
    pub stats: BTreeMap<String, u64>,
    pub limit: u64,
}

/// `cpu_stats` and `precpu_stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct CpuStats {
    pub cpu_usage: CpuUsage,
    pub system_cpu_usage: u64,
    pub online_cpus: u32,
    pub throttling_data: Throttling,
}

/// One reading, kept to be the next reading's `precpu_stats`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CpuSample {
    pub read: String,
    pub stats: CpuStats,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct InterfaceStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// A container's stats document.
#[derive(Debug, Serialize)]
pub(crate) struct ContainerStats {
    read: String,
    preread: String,
    pids_stats: PidsStats,
    num_procs: u32,
    cpu_stats: CpuStats,
    precpu_stats: CpuStats,
    memory_stats: MemoryStats,
    name: String,
    id: String,
    networks: BTreeMap<&'static str, InterfaceStats>,
}

#[derive(Debug, Serialize)]
struct PidsStats {
    current: u64,
}

/// The host's side of a reading: `/proc/stat` totals at that moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct HostCpu {
    pub system_cpu_usage: u64,
    pub online_cpus: u32,
}

impl HostCpu {
    pub fn read() -> Self {
        fs::read_to_string("/proc/stat")
            .map(|text| parse_proc_stat(&text))
            .unwrap_or_default()
    }
}

impl CpuSample {
    /// The CPU part of a reading taken at `read`.
    pub fn new(read: String, cgroup: &CgroupReading, host: HostCpu) -> Self {
        CpuSample {
            read,
            stats: CpuStats {
                cpu_usage: cgroup.cpu.clone(),
                system_cpu_usage: host.system_cpu_usage,
                online_cpus: host.online_cpus,
                throttling_data: cgroup.throttling.clone(),
            },
        }
    }
}

/// Assembles the document of a reading (`current`, `cgroup`, `network`) and the
/// container's previous one.
pub(crate) fn container_stats(
    name: &str,
    id: &str,
    current: CpuSample,
    cgroup: CgroupReading,
    network: InterfaceStats,
    previous: Option<CpuSample>,
) -> ContainerStats {
    let previous = previous.unwrap_or(CpuSample {
        read: NO_READING.to_owned(),
        stats: CpuStats::default(),
    });
    ContainerStats {
        read: current.read,
        preread: previous.read,
        pids_stats: PidsStats {
            current: cgroup.pids,
        },
        num_procs: 0,
        cpu_stats: current.stats,
        precpu_stats: previous.stats,
        memory_stats: cgroup.memory,
        name: name.to_owned(),
        id: id.to_owned(),
        networks: BTreeMap::from([(TASK_INTERFACE, network)]),
    }
}

/// The task's `eth0` counters, from the host end of its veth pair (rx and tx swapped)
/// in `/proc/net/dev`, which (unlike sysfs) always shows the reader's own namespace.
pub(crate) fn read_veth(host_interface: &str) -> InterfaceStats {
    fs::read_to_string("/proc/net/dev")
        .ok()
        .and_then(|text| parse_net_dev(&text, host_interface))
        .unwrap_or_default()
}

/// One interface's line of `/proc/net/dev`: 8 receive counters, then 8 transmit ones.
fn parse_net_dev(text: &str, host_interface: &str) -> Option<InterfaceStats> {
    let counters: Vec<u64> = text.lines().find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        (name.trim() == host_interface).then(|| {
            counters
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect()
        })
    })?;
    let [rx_bytes, rx_packets, rx_errors, rx_dropped, _, _, _, _, tx_bytes, tx_packets, tx_errors, tx_dropped, ..] =
        counters[..]
    else {
        return None;
    };
    Some(InterfaceStats {
        rx_bytes: tx_bytes,
        rx_packets: tx_packets,
        rx_errors: tx_errors,
        rx_dropped: tx_dropped,
        tx_bytes: rx_bytes,
        tx_packets: rx_packets,
        tx_errors: rx_errors,
        tx_dropped: rx_dropped,
    })
}

fn read_v1(
    memory: &Path,
    cpuacct: Option<PathBuf>,
    cpu: Option<PathBuf>,
    pids: Option<PathBuf>,
) -> CgroupReading {
    let usage = read_u64(&memory.join("memory.usage_in_bytes")).unwrap_or(0);
    let memory_stats = MemoryStats {
        usage,
        max_usage: read_u64(&memory.join("memory.max_usage_in_bytes")).unwrap_or(usage),
        stats: read_flat_keyed(&memory.join("memory.stat")),
        limit: read_u64(&memory.join("memory.limit_in_bytes")).unwrap_or(0),
    };
    let cpu_usage = cpuacct.map_or_else(CpuUsage::default, |dir| {
        let ticks = read_flat_keyed(&dir.join("cpuacct.stat"));
        CpuUsage {
            total_usage: read_u64(&dir.join("cpuacct.usage")).unwrap_or(0),
            percpu_usage: fs::read_to_string(dir.join("cpuacct.usage_percpu"))
                .map(|t| {
                    t.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
                .unwrap_or_default(),
            usage_in_kernelmode: ticks.get("system").copied().unwrap_or(0) * NANOS_PER_TICK,
            usage_in_usermode: ticks.get("user").copied().unwrap_or(0) * NANOS_PER_TICK,
        }
    });
    let throttling = cpu.map_or_else(Throttling::default, |dir| {
        let stat = read_flat_keyed(&dir.join("cpu.stat"));
        Throttling {
            periods: stat.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: stat.get("nr_throttled").copied().unwrap_or(0),
            throttled_time: stat.get("throttled_time").copied().unwrap_or(0),
        }
    });
    CgroupReading {
        cpu: cpu_usage,
        throttling,
        memory: memory_stats,
        pids: pids
            .and_then(|dir| read_u64(&dir.join("pids.current")))
            .unwrap_or(0),
    }
}

fn read_v2(dir: &Path) -> CgroupReading {
    let usage = read_u64(&dir.join("memory.current")).unwrap_or(0);
    let cpu = read_flat_keyed(&dir.join("cpu.stat"));
    let micros = |key: &str| cpu.get(key).copied().unwrap_or(0) * 1000;
    CgroupReading {
        cpu: CpuUsage {
            total_usage: micros("usage_usec"),
            percpu_usage: Vec::new(),
            usage_in_kernelmode: micros("system_usec"),
            usage_in_usermode: micros("user_usec"),
        },
        throttling: Throttling {
            periods: cpu.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: cpu.get("nr_throttled").copied().unwrap_or(0),
            throttled_time: micros("throttled_usec"),
        },
        memory: MemoryStats {
            usage,
            // memory.peak exists from Linux 5.19 on.
            max_usage: read_u64(&dir.join("memory.peak")).unwrap_or(usage),
            stats: read_flat_keyed(&dir.join("memory.stat")),
            // "max" (no limit) does not parse: the caller's fallback applies.
            limit: read_u64(&dir.join("memory.max")).unwrap_or(0),
        },
        pids: read_u64(&dir.join("pids.current")).unwrap_or(0),
    }
}

/// The `cpu` line's jiffies (user to softirq, as Docker sums them) in nanoseconds, and
/// the number of `cpuN` lines.
fn parse_proc_stat(text: &str) -> HostCpu {
    let mut host = HostCpu::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {
                let ticks: u64 = fields.take(7).filter_map(|f| f.parse::<u64>().ok()).sum();
                host.system_cpu_usage = ticks * NANOS_PER_TICK;
            }
            Some(name) if name.starts_with("cpu") => host.online_cpus += 1,
            _ => {}
        }
    }
    host
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A cgroup "flat keyed" file: `key value` per line.
fn read_flat_keyed(path: &Path) -> BTreeMap<String, u64> {
    fs::read_to_string(path)
        .map(|text| {
            text.lines()
                .filter_map(|line| {
                    let (key, value) = line.split_once(' ')?;
                    Some((key.to_owned(), value.trim().parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        fs::create_dir_all(dir).unwrap();
        for (name, content) in files {
            fs::write(dir.join(name), content).unwrap();
        }
    }

    const TASK_LIMIT: u64 = 512 << 20;

    #[test]
    fn the_layout_follows_the_drivers_choice() {
        let hierarchy = |path: &str, unified, controllers: &[&str]| Hierarchy {
            mount_point: path.into(),
            unified,
            controllers: controllers.iter().map(|c| c.to_string()).collect(),
        };
        let hybrid = [
            hierarchy("/sys/fs/cgroup/unified", true, &[]),
            hierarchy("/sys/fs/cgroup/memory", false, &["memory"]),
            hierarchy("/sys/fs/cgroup/cpu,cpuacct", false, &["cpu", "cpuacct"]),
        ];
        assert_eq!(
            CgroupLayout::detect(&hybrid),
            Some(CgroupLayout::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                cpuacct: Some("/sys/fs/cgroup/cpu,cpuacct".into()),
                cpu: Some("/sys/fs/cgroup/cpu,cpuacct".into()),
                pids: None,
            })
        );
        assert_eq!(
            CgroupLayout::detect(&hybrid[..1]),
            Some(CgroupLayout::V2 {
                root: "/sys/fs/cgroup/unified".into()
            })
        );
        assert_eq!(CgroupLayout::detect(&[]), None);
    }

    #[test]
    fn v1_readings_convert_to_docker_units() {
        let root = tempfile::tempdir().unwrap();
        let relative = Path::new("skiff/t1/app");
        let memory = root.path().join("memory");
        let cpu = root.path().join("cpu,cpuacct");
        let pids = root.path().join("pids");
        write(
            &memory.join(relative),
            &[
                ("memory.usage_in_bytes", "1048576\n"),
                ("memory.max_usage_in_bytes", "2097152\n"),
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.stat", "cache 4096\nrss 8192\n"),
            ],
        );
        write(
            &cpu.join(relative),
            &[
                ("cpuacct.usage", "5000000000\n"),
                ("cpuacct.usage_percpu", "3000000000 2000000000 \n"),
                ("cpuacct.stat", "user 300\nsystem 150\n"),
                (
                    "cpu.stat",
                    "nr_periods 10\nnr_throttled 2\nthrottled_time 777\n",
                ),
            ],
        );
        write(&pids.join(relative), &[("pids.current", "4\n")]);
        let layout = CgroupLayout::V1 {
            memory,
            cpuacct: Some(cpu.clone()),
            cpu: Some(cpu),
            pids: Some(pids),
        };
        let reading = layout.read(relative, TASK_LIMIT);
        assert_eq!(
            reading.cpu,
            CpuUsage {
                total_usage: 5_000_000_000,
                percpu_usage: vec![3_000_000_000, 2_000_000_000],
                usage_in_kernelmode: 1_500_000_000,
                usage_in_usermode: 3_000_000_000,
            }
        );
        assert_eq!(reading.throttling.throttled_time, 777);
        assert_eq!(
            (reading.memory.usage, reading.memory.max_usage),
            (1 << 20, 2 << 20)
        );
        // No limit of its own: the task's.
        assert_eq!(reading.memory.limit, TASK_LIMIT);
        assert_eq!(reading.memory.stats["rss"], 8192);
        assert_eq!(reading.pids, 4);
    }

    #[test]
    fn v2_readings_convert_to_docker_units() {
        let root = tempfile::tempdir().unwrap();
        let relative = Path::new("skiff/t1/app");
        write(
            &root.path().join(relative),
            &[
                ("memory.current", "4096\n"),
                ("memory.max", "8192\n"),
                ("memory.stat", "anon 100\nfile 200\n"),
                (
                    "cpu.stat",
                    "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 3\n",
                ),
                ("pids.current", "2\n"),
            ],
        );
        let layout = CgroupLayout::V2 {
            root: root.path().to_owned(),
        };
        let reading = layout.read(relative, TASK_LIMIT);
        assert_eq!(reading.cpu.total_usage, 1_500_000);
        assert_eq!(reading.cpu.usage_in_usermode, 1_000_000);
        assert_eq!(reading.cpu.usage_in_kernelmode, 500_000);
        assert_eq!(reading.throttling.periods, 3);
        // No memory.peak before Linux 5.19: the current usage stands in.
        assert_eq!(
            (reading.memory.usage, reading.memory.max_usage),
            (4096, 4096)
        );
        assert_eq!(reading.memory.limit, 8192);
        assert_eq!(reading.pids, 2);
        fs::write(root.path().join(relative).join("memory.max"), "max\n").unwrap();
        assert_eq!(layout.read(relative, TASK_LIMIT).memory.limit, TASK_LIMIT);
    }

    #[test]
    fn host_cpu_totals_come_from_proc_stat() {
        let host = parse_proc_stat(
            "cpu  10 1 5 100 2 0 1 7 0 0\ncpu0 5 0 2 50 1 0 0 0 0 0\ncpu1 5 1 3 50 1 0 1 0 0 0\nintr 5\n",
        );
        assert_eq!(host.system_cpu_usage, 119 * NANOS_PER_TICK);
        assert_eq!(host.online_cpus, 2);
    }

    #[test]
    fn veth_counters_are_swapped_into_the_tasks_view() {
        let dev = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0
skabc:     100       1    2    3    0     0          0         0      900       9    4    5    0     0       0          0
";
        let stats = parse_net_dev(dev, "skabc").unwrap();
        assert_eq!((stats.rx_bytes, stats.tx_bytes), (900, 100));
        assert_eq!((stats.rx_packets, stats.tx_packets), (9, 1));
        assert_eq!((stats.rx_errors, stats.tx_errors), (4, 2));
        assert_eq!((stats.rx_dropped, stats.tx_dropped), (5, 3));
        assert_eq!(parse_net_dev(dev, "skab"), None);
        assert_eq!(parse_net_dev("skabc: 1 2\n", "skabc"), None);
    }

    #[test]
    fn the_document_has_dockers_shape_and_the_previous_reading() {
        let reading = CgroupReading {
            cpu: CpuUsage {
                total_usage: 20,
                ..Default::default()
            },
            memory: MemoryStats {
                usage: 5,
                max_usage: 6,
                limit: 7,
                ..Default::default()
            },
            pids: 3,
            ..Default::default()
        };
        let host = HostCpu {
            system_cpu_usage: 1000,
            online_cpus: 2,
        };
        let sample = CpuSample::new("T1".into(), &reading, host);
        let first = container_stats(
            "app",
            "t1-app",
            sample.clone(),
            reading.clone(),
            InterfaceStats::default(),
            None,
        );
        let first = serde_json::to_value(first).unwrap();
        assert_eq!(first["preread"], NO_READING);
        assert_eq!(first["precpu_stats"]["cpu_usage"]["total_usage"], 0);
        assert_eq!(
            first["memory_stats"],
            json!({"usage": 5, "max_usage": 6, "limit": 7, "stats": {}})
        );
        assert_eq!(first["pids_stats"], json!({"current": 3}));
        assert_eq!(
            (first["name"].as_str(), first["id"].as_str()),
            (Some("app"), Some("t1-app"))
        );
        assert_eq!(first["networks"]["eth0"]["rx_bytes"], 0);
        assert_eq!(first["cpu_stats"]["online_cpus"], 2);
        let current = CpuSample::new("T2".into(), &reading, host);
        let second = container_stats(
            "app",
            "t1-app",
            current,
            reading,
            InterfaceStats::default(),
            Some(sample),
        );
        let second = serde_json::to_value(second).unwrap();
        assert_eq!(second["preread"], "T1");
        assert_eq!(second["precpu_stats"]["cpu_usage"]["total_usage"], 20);
        assert_eq!(second["precpu_stats"]["system_cpu_usage"], 1000);
    }
}
