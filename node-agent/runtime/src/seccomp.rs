//! shoal's `RuntimeDefault` seccomp profile.
//!
//! Docker's (and containerd's) default profile is an allow-list of about
//! 350 system calls whose effect is to refuse a few dozen dangerous ones.
//! shoal states those refusals directly: the default action is ALLOW and
//! the calls below fail with EPERM, unless the container holds the
//! capability that makes them legitimate (as Docker's profile does).
//!
//! | refused | unless |
//! |---|---|
//! | mount, umount2, pivot_root, unshare, setns, the new mount API (fsopen, fsconfig, fsmount, fspick, move_mount, open_tree, mount_setattr), swapon/swapoff, quotactl, lookup_dcookie, fanotify_init, name_to_handle_at, clone/clone3 with namespace flags | CAP_SYS_ADMIN |
//! | bpf | CAP_BPF or CAP_SYS_ADMIN |
//! | perf_event_open | CAP_PERFMON or CAP_SYS_ADMIN |
//! | init_module, finit_module, delete_module, create_module, query_module, get_kernel_syms | CAP_SYS_MODULE |
//! | reboot, kexec_load, kexec_file_load | CAP_SYS_BOOT |
//! | settimeofday, clock_settime, clock_adjtime, adjtimex | CAP_SYS_TIME |
//! | kcmp, process_vm_readv, process_vm_writev, pidfd_getfd, process_madvise, userfaultfd | CAP_SYS_PTRACE |
//! | iopl, ioperm | CAP_SYS_RAWIO |
//! | acct | CAP_SYS_PACCT |
//! | mbind, set_mempolicy, set_mempolicy_home_node, move_pages, migrate_pages | CAP_SYS_NICE |
//! | syslog | CAP_SYSLOG |
//! | vhangup | CAP_SYS_TTY_CONFIG |
//! | open_by_handle_at | CAP_DAC_READ_SEARCH |
//! | add_key, keyctl, request_key (keyrings are not namespaced), io_uring_setup/enter/register (Docker 25 refuses them too), nfsservctl, uselib, ustat, sysfs, _sysctl | never |
//!
//! `clone3` fails with ENOSYS instead, so libc falls back to `clone`, whose
//! flags a filter can read. Calls the kernel lacks or libseccomp does not
//! know are skipped by the runtime. Unlike Docker's list, `personality` is
//! not filtered by argument and socket families are not restricted.

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The clone flags that create namespaces.
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// Syscalls refused unless one of the capabilities is held.
const GATED: &[(&[Capability], &[&str])] = &[
    (
        &[Capability::SysAdmin],
        &[
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "swapon",
            "swapoff",
            "quotactl",
            "quotactl_fd",
            "lookup_dcookie",
            "fanotify_init",
            "name_to_handle_at",
        ],
    ),
    (&[Capability::Bpf, Capability::SysAdmin], &["bpf"]),
    (
        &[Capability::Perfmon, Capability::SysAdmin],
        &["perf_event_open"],
    ),
    (
        &[Capability::SysModule],
        &[
            "init_module",
            "finit_module",
            "delete_module",
            "create_module",
            "query_module",
            "get_kernel_syms",
        ],
    ),
    (
        &[Capability::SysBoot],
        &["reboot", "kexec_load", "kexec_file_load"],
    ),
    (
        &[Capability::SysTime],
        &["settimeofday", "clock_settime", "clock_adjtime", "adjtimex"],
    ),
    (
        &[Capability::SysPtrace],
        &[
            "kcmp",
            "process_vm_readv",
            "process_vm_writev",
            "pidfd_getfd",
            "process_madvise",
            "userfaultfd",
        ],
    ),
    (&[Capability::SysRawio], &["iopl", "ioperm"]),
    (&[Capability::SysPacct], &["acct"]),
    (
        &[Capability::SysNice],
        &[
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
            "move_pages",
            "migrate_pages",
        ],
    ),
    (&[Capability::Syslog], &["syslog"]),
    (&[Capability::SysTtyConfig], &["vhangup"]),
    (&[Capability::DacReadSearch], &["open_by_handle_at"]),
];

/// Syscalls no capability unlocks.
const REFUSED: &[&str] = &[
    "add_key",
    "keyctl",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "nfsservctl",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
];

/// The profile for a container holding `caps` (its bounding set).
pub(crate) fn runtime_default(caps: &[Capability]) -> LinuxSeccomp {
    let has = |any: &[Capability]| any.iter().any(|c| caps.contains(c));
    let mut refused: Vec<String> = REFUSED.iter().map(|s| (*s).to_owned()).collect();
    for (unless, calls) in GATED {
        if !has(unless) {
            refused.extend(calls.iter().map(|s| (*s).to_owned()));
        }
    }
    let mut syscalls = vec![errno(refused, EPERM, None)];
    if !has(&[Capability::SysAdmin]) {
        syscalls.push(errno(vec!["clone3".to_owned()], ENOSYS, None));
        for flag in CLONE_NAMESPACE_FLAGS {
            // x86 and arm pass clone's flags first.
            syscalls.push(errno(
                vec!["clone".to_owned()],
                EPERM,
                Some(arg(0, *flag, *flag, LinuxSeccompOperator::ScmpCmpMaskedEq)),
            ));
        }
    }
    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(LinuxSeccompAction::ScmpActAllow);
    seccomp.set_architectures(Some(architectures()));
    seccomp.set_syscalls(Some(syscalls));
    seccomp
}

fn errno(names: Vec<String>, errno: u32, arg: Option<LinuxSeccompArg>) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names);
    s.set_action(LinuxSeccompAction::ScmpActErrno);
    s.set_errno_ret(Some(errno));
    if let Some(a) = arg {
        s.set_args(Some(vec![a]));
    }
    s
}

fn arg(index: usize, value: u64, value_two: u64, op: LinuxSeccompOperator) -> LinuxSeccompArg {
    let builder = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    let builder = if op == LinuxSeccompOperator::ScmpCmpMaskedEq {
        builder.value_two(value_two)
    } else {
        builder
    };
    // Every field is set, so the builder cannot fail; fall back to the
    // same values rather than panic.
    builder.build().unwrap_or_default()
}

/// The architectures a process on this machine can use.
fn architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        _ => vec![Arch::ScmpArchNative],
    }
}
