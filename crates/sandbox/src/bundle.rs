//! The OCI runtime bundle of one container, and the task's shared `/etc` files.
//!
//! Each container gets private pid, mount, ipc, uts and cgroup namespaces and joins the
//! task's network namespace. Its process runs with Docker's default capabilities (plus
//! the allowed additions) in the bounding, effective and permitted sets, with
//! `no_new_privileges`, the [`crate::seccomp`] profile, runc's masked and read-only
//! `/proc` and `/sys` paths, and a `nofile` limit clamped to what the host allows. The
//! task's `hosts`, `hostname` and `resolv.conf` are bind-mounted read-only.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    get_default_maskedpaths, get_default_mounts, get_default_readonly_paths, Capability,
    LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};
use supervisor::{ContainerSpec, DnsConfig, TaskSpec};

use crate::seccomp;
use crate::user::ResolvedUser;
use crate::SandboxError;

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Capabilities a task definition may add (Fargate's rule).
const ADDABLE: &[&str] = &["SYS_PTRACE"];

/// runc's defaults, which the brief lists; oci-spec's defaults are a superset.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What the bundle needs besides the specs.
#[derive(Debug, Clone)]
pub struct BundleContext<'a> {
    /// The task's `etc` directory holding hosts, hostname, resolv.conf.
    pub etc_dir: &'a Path,
    /// The container's OCI `cgroupsPath`.
    pub cgroups_path: String,
    /// Whether memory+swap can be limited.
    pub swap_limit: bool,
    /// The host's hard `nofile` limit.
    pub host_nofile_hard: u64,
    pub user: &'a ResolvedUser,
}

/// The OCI config of `container`.
pub fn build(
    task: &TaskSpec,
    container: &ContainerSpec,
    context: &BundleContext<'_>,
) -> Result<Spec, SandboxError> {
    let error = |source| SandboxError::OciSpec {
        container: container.name.clone(),
        source,
    };
    let capabilities = capabilities(container)?;
    let (soft, hard) = nofile(container, context.host_nofile_hard);
    let user = context.user;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids.clone())
                .build()
                .map_err(error)?,
        )
        .args(container.args.clone())
        .env(environment(task, container, user))
        .cwd(if container.cwd.is_empty() {
            "/"
        } else {
            container.cwd.as_str()
        })
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(capabilities.clone())
                .effective(capabilities.clone())
                .permitted(capabilities)
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()
                .map_err(error)?,
        )
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(soft)
            .hard(hard)
            .build()
            .map_err(error)?])
        .no_new_privileges(true)
        .build()
        .map_err(error)?;

    let mut mounts = get_default_mounts();
    for file in ["hosts", "hostname", "resolv.conf"] {
        mounts.push(
            MountBuilder::default()
                .destination(PathBuf::from("/etc").join(file))
                .typ("bind")
                .source(context.etc_dir.join(file))
                .options(
                    ["rbind", "ro", "nosuid", "nodev", "noexec"]
                        .map(String::from)
                        .to_vec(),
                )
                .build()
                .map_err(error)?,
        );
    }

    let namespace = |typ, path: Option<&Path>| {
        let builder = LinuxNamespaceBuilder::default().typ(typ);
        match path {
            Some(path) => builder.path(path),
            None => builder,
        }
        .build()
    };
    let namespaces = vec![
        namespace(LinuxNamespaceType::Pid, None).map_err(error)?,
        namespace(LinuxNamespaceType::Mount, None).map_err(error)?,
        namespace(LinuxNamespaceType::Ipc, None).map_err(error)?,
        namespace(LinuxNamespaceType::Uts, None).map_err(error)?,
        namespace(LinuxNamespaceType::Cgroup, None).map_err(error)?,
        namespace(LinuxNamespaceType::Network, Some(&task.netns_path)).map_err(error)?,
    ];

    let mut memory = LinuxMemoryBuilder::default();
    if let Some(limit) = container.memory_mib {
        let bytes = mib(limit);
        memory = memory.limit(bytes);
        if context.swap_limit {
            memory = memory.swap(bytes);
        }
    }
    if let Some(reservation) = container.memory_reservation_mib {
        memory = memory.reservation(mib(reservation));
    }
    let mut resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(error)?])
        .memory(memory.build().map_err(error)?);
    if let Some(shares) = container.cpu_shares {
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .shares(u64::from(shares.max(2)))
                .build()
                .map_err(error)?,
        );
    }

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&context.cgroups_path))
        .resources(resources.build().map_err(error)?)
        .masked_paths(merged(get_default_maskedpaths(), MASKED))
        .readonly_paths(merged(get_default_readonly_paths(), READONLY))
        .seccomp(seccomp::profile(
            container.add_capabilities.iter().any(|c| c == "SYS_PTRACE"),
        ))
        .build()
        .map_err(error)?;

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(&container.rootfs)
                .readonly(container.readonly_rootfs)
                .build()
                .map_err(error)?,
        )
        .hostname(task.hostname.clone())
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(error)
}

fn mib(value: u64) -> i64 {
    i64::try_from(value.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX)
}

fn merged(mut defaults: Vec<String>, extra: &[&str]) -> Vec<String> {
    for path in extra {
        if !defaults.iter().any(|p| p == path) {
            defaults.push((*path).to_owned());
        }
    }
    defaults
}

fn capabilities(container: &ContainerSpec) -> Result<HashSet<Capability>, SandboxError> {
    let mut set: HashSet<Capability> = DEFAULT_CAPABILITIES.iter().copied().collect();
    for added in &container.add_capabilities {
        let name = added.trim_start_matches("CAP_");
        let refused = || SandboxError::CapabilityNotAllowed {
            container: container.name.clone(),
            capability: added.clone(),
        };
        if !ADDABLE.contains(&name) {
            return Err(refused());
        }
        set.insert(name.parse().map_err(|_| refused())?);
    }
    Ok(set)
}

/// The container's `nofile` limit, clamped to the host's hard limit: a process without
/// CAP_SYS_RESOURCE cannot raise it further, and failing the task would help nobody.
pub fn nofile(container: &ContainerSpec, host_hard: u64) -> (u64, u64) {
    let (soft, hard) = container.nofile.unwrap_or(supervisor::spec::DEFAULT_NOFILE);
    if hard <= host_hard {
        return (soft.min(hard), hard);
    }
    tracing::warn!(container = %container.name, requested_soft = soft, requested_hard = hard, host_hard, "nofile limit exceeds the host's hard limit; clamping");
    (soft.min(host_hard), host_hard)
}

/// The host's hard `nofile` limit.
pub fn host_nofile_hard() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own and touches nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_max
    } else {
        1024
    }
}

fn environment(task: &TaskSpec, container: &ContainerSpec, user: &ResolvedUser) -> Vec<String> {
    let mut env = container.env.clone();
    let has = |env: &[String], key: &str| env.iter().any(|e| e.split('=').next() == Some(key));
    if !has(&env, "PATH") {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={}", task.hostname));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", user.home.as_deref().unwrap_or("/")));
    }
    env
}

/// Writes the task's `hosts`, `hostname` and `resolv.conf` into `etc_dir`.
pub fn write_etc_files(task: &TaskSpec, etc_dir: &Path) -> Result<(), SandboxError> {
    fs::create_dir_all(etc_dir).map_err(SandboxError::io("create", etc_dir))?;
    let resolv = match &task.dns {
        Some(dns) => resolv_conf(dns),
        None => host_resolv_conf(&fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
    };
    let files = [
        ("hosts", hosts(task)),
        ("hostname", format!("{}\n", task.hostname)),
        ("resolv.conf", resolv),
    ];
    for (name, content) in files {
        let path = etc_dir.join(name);
        fs::write(&path, content).map_err(SandboxError::io("write", path))?;
    }
    Ok(())
}

/// Localhost, and the task's address with its hostname and, for a dotted hostname such
/// as `ip-10-0-1-23.ec2.internal`, its first label too.
fn hosts(task: &TaskSpec) -> String {
    let address = task
        .address
        .map_or_else(|| "127.0.1.1".to_owned(), |a| a.to_string());
    let names = match task.hostname.split_once('.') {
        Some((short, _)) if !short.is_empty() => format!("{} {short}", task.hostname),
        _ => task.hostname.clone(),
    };
    format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{names}\n")
}

/// The task's own resolver: one name server and the search domains.
fn resolv_conf(dns: &DnsConfig) -> String {
    let mut text = format!("nameserver {}\n", dns.nameserver);
    if !dns.search.is_empty() {
        text.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    text
}

/// The host's resolver configuration minus loopback name servers, which would point into
/// the task's own network namespace.
fn host_resolv_conf(host: &str) -> String {
    host.lines()
        .filter(|line| {
            let mut words = line.split_whitespace();
            !(words.next() == Some("nameserver")
                && words
                    .next()
                    .is_some_and(|ip| ip.starts_with("127.") || ip == "::1"))
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskSpec {
        TaskSpec {
            task_id: "a".repeat(32),
            cpu_units: 512,
            memory_mib: 1024,
            netns_path: "/run/netns/t".into(),
            hostname: "ip-10-0-0-5".into(),
            address: Some("10.0.0.5".parse().unwrap()),
            dns: None,
            containers: vec![],
        }
    }

    fn user() -> ResolvedUser {
        ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: None,
        }
    }

    fn build_json(container: &ContainerSpec) -> serde_json::Value {
        let user = user();
        let context = BundleContext {
            etc_dir: Path::new("/task/etc"),
            cgroups_path: "/skiff/t/app".into(),
            swap_limit: true,
            host_nofile_hard: 20000,
            user: &user,
        };
        serde_json::to_value(build(&task(), container, &context).unwrap()).unwrap()
    }

    #[test]
    fn isolation_settings() {
        let mut container = ContainerSpec::new("app", "/rootfs/app", vec!["sh".into()]);
        container.readonly_rootfs = true;
        container.memory_mib = Some(64);
        container.cpu_shares = Some(128);
        let spec = build_json(&container);
        assert_eq!(spec["root"]["readonly"], true);
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        let namespaces = spec["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(namespaces.len(), 6);
        let network = namespaces.iter().find(|n| n["type"] == "network").unwrap();
        assert_eq!(network["path"], "/run/netns/t");
        let bounding = spec["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert_eq!(bounding.len(), DEFAULT_CAPABILITIES.len());
        assert!(!bounding.iter().any(|c| c == "CAP_SYS_ADMIN"));
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(spec["linux"]["resources"]["memory"]["swap"], 64 << 20);
        assert_eq!(spec["linux"]["resources"]["cpu"]["shares"], 128);
        assert_eq!(spec["linux"]["cgroupsPath"], "/skiff/t/app");
        for path in ["/proc/kcore", "/sys/firmware", "/proc/scsi"] {
            assert!(spec["linux"]["maskedPaths"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == path));
        }
        assert!(spec["linux"]["readonlyPaths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/proc/sysrq-trigger"));
        let mounts = spec["mounts"].as_array().unwrap();
        let hosts = mounts
            .iter()
            .find(|m| m["destination"] == "/etc/hosts")
            .unwrap();
        assert_eq!(hosts["source"], "/task/etc/hosts");
        assert!(hosts["options"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "ro"));
        assert!(mounts.iter().any(|m| m["destination"] == "/sys/fs/cgroup"));
        let env = spec["process"]["env"].as_array().unwrap();
        assert!(env.iter().any(|e| e == "HOSTNAME=ip-10-0-0-5"));
    }

    #[test]
    fn only_sys_ptrace_may_be_added() {
        let mut container = ContainerSpec::new("app", "/r", vec!["sh".into()]);
        container.add_capabilities = vec!["SYS_PTRACE".into()];
        let spec = build_json(&container);
        assert!(spec["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "CAP_SYS_PTRACE"));
        container.add_capabilities = vec!["SYS_ADMIN".into()];
        let user = user();
        let context = BundleContext {
            etc_dir: Path::new("/e"),
            cgroups_path: String::new(),
            swap_limit: false,
            host_nofile_hard: 1024,
            user: &user,
        };
        assert!(matches!(
            build(&task(), &container, &context),
            Err(SandboxError::CapabilityNotAllowed { .. })
        ));
    }

    #[test]
    fn nofile_is_clamped_to_the_host() {
        let mut container = ContainerSpec::new("app", "/r", vec![]);
        assert_eq!(nofile(&container, 20000), (20000, 20000));
        assert_eq!(nofile(&container, 1 << 20), (65535, 65535));
        container.nofile = Some((1024, 4096));
        assert_eq!(nofile(&container, 20000), (1024, 4096));
    }

    #[test]
    fn etc_files_name_the_task_and_its_resolver() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = task();
        task.hostname = "ip-10-0-0-5.ec2.internal".into();
        task.dns = Some(DnsConfig {
            nameserver: "10.0.0.1".parse().unwrap(),
            search: vec!["prod.local".into()],
        });
        write_etc_files(&task, dir.path()).unwrap();
        let read = |name| fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(
            read("resolv.conf"),
            "nameserver 10.0.0.1\nsearch prod.local\n"
        );
        assert_eq!(read("hostname"), "ip-10-0-0-5.ec2.internal\n");
        let hosts = read("hosts");
        let lines: Vec<&str> = hosts.lines().collect();
        assert_eq!(lines[0], "127.0.0.1\tlocalhost");
        assert_eq!(lines[2], "10.0.0.5\tip-10-0-0-5.ec2.internal ip-10-0-0-5");
    }

    #[test]
    fn an_undotted_hostname_is_listed_once() {
        assert!(hosts(&task()).ends_with("10.0.0.5\tip-10-0-0-5\n"));
    }

    #[test]
    fn a_task_without_a_resolver_gets_the_hosts_minus_loopback_servers() {
        let resolv =
            host_resolv_conf("nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch ec2.internal\n");
        assert_eq!(resolv, "nameserver 10.0.0.2\nsearch ec2.internal\n");
    }
}
