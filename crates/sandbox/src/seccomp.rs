//! The seccomp profile: Docker's default denials, as a deny list.
//!
//! The default action is to allow, and every system call Docker's default profile refuses
//! to a container without extra capabilities fails with `EPERM` instead: kernel keyring,
//! BPF, module loading, kexec, reboot, swap, clock setting, mounts and namespace creation
//! (`unshare`, `setns`, and `clone` with any `CLONE_NEW*` flag), `ptrace` and friends
//! unless `SYS_PTRACE` was added, and obsolete or information-leaking calls. `clone3`
//! returns `ENOSYS` (its flags live in memory seccomp cannot inspect), so libc falls back
//! to `clone`, whose flags are checked. Names unknown to the runtime's libseccomp are
//! skipped by the runtime.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator,
    LinuxSyscall,
};

const EPERM: u32 = libc::EPERM as u32;
const ENOSYS: u32 = libc::ENOSYS as u32;

/// Denied to every container.
const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "_sysctl",
    "sysfs",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// Denied unless the container was given `SYS_PTRACE`.
const PTRACE: &[&str] = &[
    "kcmp",
    "pidfd_getfd",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
];

/// Every `CLONE_NEW*` flag: creating any namespace is refused.
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// The profile for a container; `ptrace_allowed` when `SYS_PTRACE` was added.
pub fn profile(ptrace_allowed: bool) -> LinuxSeccomp {
    let deny = |names: Vec<&str>, errno: u32| {
        LinuxSyscall::default()
            .set_names(names.into_iter().map(str::to_owned).collect())
            .set_action(LinuxSeccompAction::ScmpActErrno)
            .set_errno_ret(Some(errno))
            .clone()
    };
    let mut names: Vec<&str> = DENIED.to_vec();
    if !ptrace_allowed {
        names.extend_from_slice(PTRACE);
    }
    let mut syscalls = vec![deny(names, EPERM), deny(vec!["clone3"], ENOSYS)];
    // Several rules for one call are OR-ed: any namespace flag set means EPERM.
    for flag in CLONE_NAMESPACE_FLAGS {
        let mut rule = deny(vec!["clone"], EPERM);
        let arg = LinuxSeccompArgBuilder::default()
            .index(clone_flags_index())
            .value(*flag)
            .value_two(*flag)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()
            .expect("every field of a seccomp argument is set");
        rule.set_args(Some(vec![arg]));
        syscalls.push(rule);
    }
    let mut seccomp = LinuxSeccomp::default();
    seccomp
        .set_default_action(LinuxSeccompAction::ScmpActAllow)
        .set_architectures(Some(architectures()))
        .set_syscalls(Some(syscalls));
    seccomp
}

/// The architectures a process on this host can issue system calls for: listing the
/// compat ABIs makes the filter apply to 32-bit calls too.
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

/// `clone`'s flags argument; it comes second on s390.
fn clone_flags_index() -> usize {
    if cfg!(target_arch = "s390x") {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(seccomp: &LinuxSeccomp) -> Vec<String> {
        seccomp
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|rule| rule.args().is_none() && rule.errno_ret() == Some(EPERM))
            .flat_map(|rule| rule.names().clone())
            .collect()
    }

    #[test]
    fn denies_the_dangerous_set_with_eperm() {
        let seccomp = profile(false);
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
        let names = denied(&seccomp);
        for call in [
            "keyctl",
            "bpf",
            "mount",
            "unshare",
            "setns",
            "ptrace",
            "reboot",
            "init_module",
        ] {
            assert!(names.iter().any(|n| n == call), "{call} must be denied");
        }
        let json = serde_json::to_value(&seccomp).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(json["syscalls"][0]["action"], "SCMP_ACT_ERRNO");
    }

    #[test]
    fn sys_ptrace_allows_ptrace_only() {
        let names = denied(&profile(true));
        assert!(!names
            .iter()
            .any(|n| n == "ptrace" || n == "process_vm_readv"));
        assert!(names.iter().any(|n| n == "keyctl"));
    }

    #[test]
    fn clone_with_any_namespace_flag_is_denied() {
        let seccomp = profile(false);
        let clone_rules: Vec<_> = seccomp
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|rule| rule.names() == &vec!["clone".to_owned()])
            .collect();
        assert_eq!(clone_rules.len(), CLONE_NAMESPACE_FLAGS.len());
        let arg = clone_rules[0].args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(Some(arg.value()), arg.value_two());
    }
}
