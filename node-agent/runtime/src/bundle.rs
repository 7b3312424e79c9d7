//! OCI bundles: a directory with `config.json` and the container's root
//! filesystem, an overlay whose lower directory is the shared image rootfs
//! and whose upper and work directories belong to the container.
//!
//! ```text
//! <bundle>/config.json
//! <bundle>/rootfs/   overlay mount point (mounted in the host's namespace)
//! <bundle>/upper/    the container's changes
//! <bundle>/work/     overlayfs scratch
//! ```
//!
//! A read-only root filesystem still gets an overlay: the runtime creates
//! mount points (for volumes, /dev/shm...) in the root before it remounts it
//! read-only, and those must land in the container's upper directory, never
//! in the image shared by every container.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use nix::mount::{MntFlags, MsFlags};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilities, LinuxCpu, LinuxDevice, LinuxDeviceCgroup,
    LinuxDeviceType, LinuxMemory, LinuxNamespace, LinuxNamespaceType, LinuxPids, LinuxResources,
    Mount as OciMount, Process, Root, Spec, User as OciUser,
};

use crate::{
    seccomp,
    spec::{ContainerSpec, MountSource, Namespace, Seccomp},
};

/// Kubernetes' (containerd's) default capabilities.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability up to Linux 6.x, for `privileged` and `add: [ALL]`, in
/// kernel order: the index is the capability's number.
const ALL_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Paths Kubernetes masks in /proc and /sys.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Kubernetes makes read-only in /proc.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Why a bundle could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A field of the container spec is unusable.
    #[error("container {container:?}: {reason}")]
    Invalid {
        /// The container id.
        container: String,
        /// What is wrong, and with which field.
        reason: String,
    },
    /// A file operation failed.
    #[error("container {container:?}: {what} {path}: {source}")]
    Io {
        /// The container id.
        container: String,
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// oci-spec refused the configuration.
    #[error("container {container:?}: building config.json: {source}")]
    Oci {
        /// The container id.
        container: String,
        /// The underlying error.
        source: oci_spec::OciSpecError,
    },
}

/// An OCI bundle directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    /// Creates the bundle for `spec` in `dir`: mounts the overlay root
    /// filesystem (unless already mounted, e.g. after an agent restart) and
    /// writes config.json. Needs root (it mounts). An existing bundle keeps
    /// its upper directory, so the container's changes survive; call
    /// [`Bundle::remove`] first for a fresh root filesystem.
    pub fn write(dir: &Path, spec: &ContainerSpec) -> Result<Bundle, BundleError> {
        let id = &spec.id;
        validate_id(id)?;
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            let container = id.clone();
            move |source| BundleError::Io {
                container,
                what,
                path,
                source,
            }
        };
        let bundle = Bundle {
            dir: dir.to_path_buf(),
        };
        if !spec.rootfs.is_dir() {
            return Err(BundleError::Invalid {
                container: id.clone(),
                reason: format!(
                    "the image root filesystem {} is not a directory; unpack the image first",
                    spec.rootfs.display()
                ),
            });
        }
        for sub in ["rootfs", "upper", "work"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io("creating", &d))?;
        }
        // The overlay's root directory takes its attributes from upper.
        let upper = dir.join("upper");
        fs::set_permissions(&upper, fs::Permissions::from_mode(0o755))
            .map_err(io("setting permissions of", &upper))?;
        let rootfs = bundle.rootfs();
        if !is_mount_point(&rootfs).map_err(io("checking", &rootfs))? {
            let lower = spec
                .rootfs
                .canonicalize()
                .map_err(io("resolving", &spec.rootfs))?;
            let upper = upper.canonicalize().map_err(io("resolving", &upper))?;
            let work = dir.join("work");
            let work = work.canonicalize().map_err(io("resolving", &work))?;
            for p in [&lower, &upper, &work] {
                let s = p.to_string_lossy();
                if s.contains([',', ':', '\\']) {
                    return Err(BundleError::Invalid {
                        container: id.clone(),
                        reason: format!(
                            "overlayfs cannot use the path {s} (it contains ',', ':' or '\\'); move the data directory"
                        ),
                    });
                }
            }
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            );
            nix::mount::mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                MsFlags::empty(),
                Some(options.as_str()),
            )
            .map_err(|e| io("mounting the overlay root filesystem on", &rootfs)(e.into()))?;
        }
        let config = oci_config(spec)?;
        let path = bundle.config_path();
        let partial = dir.join("config.json.partial");
        let data = serde_json::to_vec_pretty(&config).map_err(|e| BundleError::Invalid {
            container: id.clone(),
            reason: format!("serialising config.json: {e}"),
        })?;
        fs::write(&partial, data).map_err(io("writing", &partial))?;
        fs::rename(&partial, &path).map_err(io("writing", &path))?;
        Ok(bundle)
    }

    /// The bundle already in `dir`.
    pub fn open(dir: &Path) -> Bundle {
        Bundle {
            dir: dir.to_path_buf(),
        }
    }

    /// The bundle directory (what `runc create --bundle` takes).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The container's root filesystem mount point.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The path of config.json.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Reads config.json back.
    pub fn config(&self) -> Result<Spec, BundleError> {
        let path = self.config_path();
        let data = fs::read(&path).map_err(|source| BundleError::Io {
            container: self.name(),
            what: "reading",
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&data).map_err(|e| BundleError::Invalid {
            container: self.name(),
            reason: format!("{} does not parse: {e}", path.display()),
        })
    }

    /// Unmounts the root filesystem and deletes the directory, the
    /// container's changes with it. Call after the runtime deleted the
    /// container. A missing bundle is not an error.
    pub fn remove(&self) -> Result<(), BundleError> {
        let rootfs = self.rootfs();
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            let container = self.name();
            move |source| BundleError::Io {
                container,
                what,
                path,
                source,
            }
        };
        while is_mount_point(&rootfs).unwrap_or(false) {
            nix::mount::umount2(&rootfs, MntFlags::MNT_DETACH)
                .map_err(|e| io("unmounting", &rootfs)(e.into()))?;
        }
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io("removing", &self.dir)(e)),
            _ => Ok(()),
        }
    }

    fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Whether `path` is a mount point: its device differs from its parent's.
fn is_mount_point(path: &Path) -> io::Result<bool> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let parent = fs::metadata(path.join(".."))?;
    Ok(meta.dev() != parent.dev() || meta.ino() == parent.ino())
}

/// runc's rule for container ids.
fn validate_id(id: &str) -> Result<(), BundleError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(BundleError::Invalid {
            container: id.to_owned(),
            reason: "a container id is letters, digits, '_', '+', '-' and '.'".into(),
        })
    }
}

/// The capabilities this process may hand on (its bounding set), as a bit
/// mask by capability number; None if /proc does not say.
fn bounding_set() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The capability set of `spec`, or an error naming an unknown capability
/// or one the agent itself lacks. "All" means all the agent has, as
/// containerd does.
fn capabilities(spec: &ContainerSpec) -> Result<Vec<Capability>, BundleError> {
    let invalid = |reason: String| BundleError::Invalid {
        container: spec.id.clone(),
        reason,
    };
    let parse = |name: &str| -> Result<Capability, BundleError> {
        serde_json::from_value::<Capability>(serde_json::Value::String(name.trim().to_owned()))
            .map_err(|_| {
                invalid(format!(
                    "securityContext.capabilities: unknown capability {name:?} (use names like NET_ADMIN or CAP_NET_ADMIN)"
                ))
            })
    };
    let bounding = bounding_set().unwrap_or(u64::MAX);
    let held = |cap: Capability| {
        ALL_CAPABILITIES
            .iter()
            .position(|n| parse(n).ok() == Some(cap))
            .is_none_or(|bit| bounding & (1 << bit) != 0)
    };
    let all = || {
        ALL_CAPABILITIES
            .iter()
            .enumerate()
            .filter(|(bit, _)| bounding & (1 << bit) != 0)
            .filter_map(|(_, n)| parse(n).ok())
    };
    if spec.privileged {
        return Ok(all().collect());
    }
    let is_all = |n: &String| n.trim().eq_ignore_ascii_case("ALL");
    let changes = &spec.capabilities;
    let mut set: Vec<Capability> = DEFAULT_CAPABILITIES
        .iter()
        .map(|n| parse(n))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|c| held(*c))
        .collect();
    if changes.add.iter().any(is_all) {
        set = all().collect();
    }
    if changes.drop.iter().any(is_all) {
        set.clear();
    }
    for name in changes.add.iter().filter(|n| !is_all(n)) {
        let cap = parse(name)?;
        if !held(cap) {
            return Err(invalid(format!(
                "securityContext.capabilities.add: the node agent itself lacks {cap}, so no container on this node can have it"
            )));
        }
        if !set.contains(&cap) {
            set.push(cap);
        }
    }
    for name in changes.drop.iter().filter(|n| !is_all(n)) {
        let cap = parse(name)?;
        set.retain(|c| *c != cap);
    }
    Ok(set)
}

/// The OCI runtime configuration for `spec` (root path `rootfs`, relative
/// to the bundle).
pub fn oci_config(spec: &ContainerSpec) -> Result<Spec, BundleError> {
    let oci = |source| BundleError::Oci {
        container: spec.id.clone(),
        source,
    };
    let invalid = |reason: String| BundleError::Invalid {
        container: spec.id.clone(),
        reason,
    };
    if spec.args.is_empty() {
        return Err(invalid("args is empty: a container needs a command".into()));
    }
    if !spec.cwd.starts_with('/') {
        return Err(invalid(format!(
            "workingDir {:?} is not an absolute path",
            spec.cwd
        )));
    }

    let caps = capabilities(spec)?;
    let cap_set: HashSet<Capability> = caps.iter().copied().collect();
    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(Some(cap_set.clone()));
    capabilities.set_effective(Some(cap_set.clone()));
    capabilities.set_permitted(Some(cap_set));
    capabilities.set_inheritable(Some(HashSet::new()));
    capabilities.set_ambient(Some(HashSet::new()));

    let mut user = OciUser::default();
    user.set_uid(spec.user.uid);
    user.set_gid(spec.user.gid);
    if !spec.user.additional_gids.is_empty() {
        user.set_additional_gids(Some(spec.user.additional_gids.clone()));
    }

    let mut process = Process::default();
    process.set_terminal(Some(spec.terminal));
    process.set_user(user);
    process.set_args(Some(spec.args.clone()));
    let mut env = spec.env.clone();
    // As container runtimes do for a terminal the spec does not describe.
    if spec.terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".to_owned());
    }
    process.set_env(Some(env));
    process.set_cwd(PathBuf::from(&spec.cwd));
    process.set_capabilities(Some(capabilities));
    process.set_no_new_privileges(Some(spec.no_new_privileges));
    process.set_oom_score_adj(spec.oom_score_adj);
    process.set_rlimits(None);

    let mut root = Root::default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(spec.read_only_rootfs));

    let mut namespaces = vec![ns(LinuxNamespaceType::Mount, &Namespace::New)];
    for (typ, n) in [
        (LinuxNamespaceType::Pid, &spec.namespaces.pid),
        (LinuxNamespaceType::Ipc, &spec.namespaces.ipc),
        (LinuxNamespaceType::Uts, &spec.namespaces.uts),
        (LinuxNamespaceType::Network, &spec.namespaces.network),
    ] {
        if *n != Namespace::Host {
            namespaces.push(ns(typ, n));
        }
    }
    let hostname = spec
        .hostname
        .clone()
        .filter(|_| spec.namespaces.uts != Namespace::Host);

    let r = &spec.resources;
    let mut resources = LinuxResources::default();
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(spec.privileged);
    rule.set_access(Some("rwm".to_owned()));
    resources.set_devices(Some(vec![rule]));
    if let Some(limit) = r.memory_limit {
        let mut memory = LinuxMemory::default();
        memory.set_limit(Some(limit));
        memory.set_swap(Some(limit));
        resources.set_memory(Some(memory));
    }
    if r.cpu_shares.is_some() || r.cpu_quota.is_some() {
        let mut cpu = LinuxCpu::default();
        cpu.set_shares(r.cpu_shares);
        cpu.set_quota(r.cpu_quota);
        cpu.set_period(r.cpu_period);
        resources.set_cpu(Some(cpu));
    }
    if let Some(limit) = r.pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(limit);
        resources.set_pids(Some(pids));
    }

    let confined = !spec.privileged;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .masked_paths(if confined && !spec.unmasked_proc {
            MASKED_PATHS.iter().map(|s| (*s).to_owned()).collect()
        } else {
            Vec::new()
        })
        .readonly_paths(if confined && !spec.unmasked_proc {
            READONLY_PATHS.iter().map(|s| (*s).to_owned()).collect()
        } else {
            Vec::new()
        })
        .build()
        .map_err(oci)?;
    if let Some(path) = &spec.cgroups_path {
        if !path.starts_with('/') {
            return Err(invalid(format!(
                "cgroups path {path:?} must be absolute, like /shoal/<node>/pod-<uid>/<container>"
            )));
        }
        linux.set_cgroups_path(Some(PathBuf::from(path)));
    }
    if confined && spec.seccomp == Seccomp::RuntimeDefault {
        linux.set_seccomp(Some(seccomp::runtime_default(&caps)));
    }
    if !spec.sysctls.is_empty() {
        linux.set_sysctl(Some(
            spec.sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ));
    }
    if spec.privileged {
        linux.set_devices(Some(host_devices()));
    }

    let mut oci_spec = Spec::default();
    oci_spec.set_version("1.0.2".to_owned());
    oci_spec.set_root(Some(root));
    oci_spec.set_process(Some(process));
    oci_spec.set_hostname(hostname);
    oci_spec.set_mounts(Some(mounts(spec)?));
    oci_spec.set_linux(Some(linux));
    oci_spec.set_annotations(if spec.annotations.is_empty() {
        None
    } else {
        Some(
            spec.annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        )
    });
    Ok(oci_spec)
}

fn ns(typ: LinuxNamespaceType, n: &Namespace) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    if let Namespace::Join(path) = n {
        ns.set_path(Some(path.clone()));
    }
    ns
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> OciMount {
    let mut m = OciMount::default();
    m.set_destination(PathBuf::from(destination));
    m.set_typ(Some(typ.to_owned()));
    m.set_source(Some(PathBuf::from(source)));
    m.set_options(Some(options.iter().map(|o| (*o).to_owned()).collect()));
    m
}

/// /proc, /dev, /sys and cgroups as runc's and containerd's defaults have
/// them, then the spec's own mounts.
fn mounts(spec: &ContainerSpec) -> Result<Vec<OciMount>, BundleError> {
    let sys_mode = if spec.privileged { "rw" } else { "ro" };
    let mut out = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
    ];
    for m in &spec.mounts {
        let dest = m.destination.to_string_lossy().into_owned();
        if !dest.starts_with('/') {
            return Err(BundleError::Invalid {
                container: spec.id.clone(),
                reason: format!("mount destination {dest:?} is not an absolute path"),
            });
        }
        out.push(match &m.source {
            MountSource::Bind { path, read_only } => mount(
                &dest,
                "bind",
                &path.to_string_lossy(),
                &["rbind", "rprivate", if *read_only { "ro" } else { "rw" }],
            ),
            MountSource::Tmpfs { size_bytes, mode } => {
                let mode = format!("mode={mode:o}");
                let size = size_bytes.map(|s| format!("size={s}"));
                let mut options = vec!["nosuid", "nodev", mode.as_str()];
                if let Some(s) = &size {
                    options.push(s);
                }
                mount(&dest, "tmpfs", "tmpfs", &options)
            }
        });
    }
    Ok(out)
}

/// The host's device nodes, for privileged containers (as containerd's
/// `WithHostDevices`): /dev and one level of subdirectories, minus the
/// per-container pseudo-filesystems.
fn host_devices() -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::from("/dev")];
    let mut depth = 0;
    while depth < 2 && !dirs.is_empty() {
        let mut next = Vec::new();
        for dir in dirs {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    continue;
                };
                let ft = meta.file_type();
                if ft.is_dir() {
                    let name = e.file_name();
                    if !["pts", "shm", "mqueue", "fd"].iter().any(|s| name == **s) {
                        next.push(path);
                    }
                    continue;
                }
                let typ = if ft.is_char_device() {
                    LinuxDeviceType::C
                } else if ft.is_block_device() {
                    LinuxDeviceType::B
                } else {
                    continue;
                };
                if path == Path::new("/dev/console") {
                    continue;
                }
                let rdev = meta.rdev();
                let mut d = LinuxDevice::default();
                d.set_path(path);
                d.set_typ(typ);
                d.set_major(nix::sys::stat::major(rdev) as i64);
                d.set_minor(nix::sys::stat::minor(rdev) as i64);
                d.set_file_mode(Some(meta.mode() & 0o7777));
                d.set_uid(Some(meta.uid()));
                d.set_gid(Some(meta.gid()));
                out.push(d);
            }
        }
        dirs = next;
        depth += 1;
    }
    out
}

#[cfg(test)]
mod tests;
