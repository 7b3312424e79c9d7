//! What one container is: the agent's description, resolved from the pod
//! spec and the image the Kubernetes way, which [`crate::Bundle::write`]
//! turns into an OCI `config.json`.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use crate::{image::ImageConfig, user::User};

/// The search path a container gets when its image sets none (containerd's
/// and Docker's default).
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Kubernetes' CPU period (100 ms), in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CPU quota the kubelet sets (1 ms), in microseconds.
const MIN_CPU_QUOTA_US: i64 = 1_000;
/// The kubelet's cpu.shares for a container without a CPU request.
const MIN_CPU_SHARES: u64 = 2;

/// Why a container cannot be described.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither the pod nor the image gives a command.
    #[error(
        "container {container:?} has no command: its image sets no Entrypoint or Cmd; set `command` in the pod spec"
    )]
    NoCommand {
        /// The container's name.
        container: String,
    },
}

/// One container, ready to become an OCI bundle.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    /// The runtime's container id (letters, digits, `_`, `+`, `-`, `.`).
    pub id: String,
    /// The image's unpacked root filesystem ([`crate::Image::rootfs`]): the
    /// lower directory of the container's overlay.
    pub rootfs: PathBuf,
    /// The command line (see [`resolve_process`]).
    pub args: Vec<String>,
    /// The environment, `KEY=value`.
    pub env: Vec<String>,
    /// The working directory inside the container.
    pub cwd: String,
    /// Who the process runs as (see [`crate::resolve_user`]).
    pub user: User,
    /// The hostname (needs a UTS namespace that is not the host's).
    pub hostname: Option<String>,
    /// Which namespaces are new, joined or the host's.
    pub namespaces: Namespaces,
    /// The cgroup path under every controller, e.g.
    /// `/shoal/<node>/pod-<uid>/<container>`.
    pub cgroups_path: Option<String>,
    /// Volumes and other mounts, after the standard /proc, /dev and /sys.
    pub mounts: Vec<Mount>,
    /// Mount the root filesystem read-only (`readOnlyRootFilesystem`).
    pub read_only_rootfs: bool,
    /// All capabilities, host devices, no seccomp, no masked paths,
    /// writable /sys (`privileged: true`).
    pub privileged: bool,
    /// `capabilities.add` / `capabilities.drop` on top of Kubernetes'
    /// default set.
    pub capabilities: CapabilityChanges,
    /// Set no_new_privs (`allowPrivilegeEscalation: false`).
    pub no_new_privileges: bool,
    /// The seccomp profile.
    pub seccomp: Seccomp,
    /// Leave /proc unmasked (`procMount: Unmasked`).
    pub unmasked_proc: bool,
    /// cgroup limits.
    pub resources: Resources,
    /// The process's oom_score_adj (the kubelet's value for the pod's QoS
    /// class).
    pub oom_score_adj: Option<i32>,
    /// Namespaced sysctls (`securityContext.sysctls`).
    pub sysctls: BTreeMap<String, String>,
    /// OCI annotations recorded in config.json.
    pub annotations: BTreeMap<String, String>,
    /// The process runs on a terminal (`tty: true`); create it with
    /// [`crate::Runtime::create_with_stdio`] asking for one.
    pub terminal: bool,
}

impl ContainerSpec {
    /// A container running `args` as root in `/`, in new namespaces, with
    /// Kubernetes' defaults for everything else.
    pub fn new(id: impl Into<String>, rootfs: impl Into<PathBuf>, args: Vec<String>) -> Self {
        ContainerSpec {
            id: id.into(),
            rootfs: rootfs.into(),
            args,
            env: vec![DEFAULT_PATH_ENV.to_owned()],
            cwd: "/".to_owned(),
            user: User::default(),
            hostname: None,
            namespaces: Namespaces::default(),
            cgroups_path: None,
            mounts: Vec::new(),
            read_only_rootfs: false,
            privileged: false,
            capabilities: CapabilityChanges::default(),
            no_new_privileges: false,
            seccomp: Seccomp::default(),
            unmasked_proc: false,
            resources: Resources::default(),
            oom_score_adj: None,
            sysctls: BTreeMap::new(),
            annotations: BTreeMap::new(),
            terminal: false,
        }
    }
}

/// A namespace of the container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Namespace {
    /// A fresh namespace of its own.
    #[default]
    New,
    /// Join the namespace at this path (e.g. the pod's netns
    /// `/run/netns/<name>` or `/proc/<pid>/ns/ipc`).
    Join(PathBuf),
    /// Stay in the host's namespace (`hostNetwork`, `hostPID`, `hostIPC`).
    Host,
}

/// The namespaces a container gets; mount namespaces are always new.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// Network: new (no interfaces but lo), the pod's netns, or the host's.
    pub network: Namespace,
    /// IPC.
    pub ipc: Namespace,
    /// UTS (hostname).
    pub uts: Namespace,
    /// PID.
    pub pid: Namespace,
}

/// A mount inside the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Where, inside the container.
    pub destination: PathBuf,
    /// What.
    pub source: MountSource,
}

/// What a [`Mount`] mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountSource {
    /// A recursive bind mount of a host path.
    Bind {
        /// The host path.
        path: PathBuf,
        /// Mount it read-only.
        read_only: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Its size limit (the kernel's default, half of RAM, if None).
        size_bytes: Option<u64>,
        /// Its root directory's mode, e.g. `0o1777`.
        mode: u32,
    },
}

impl Mount {
    /// A bind mount of `path` at `destination`.
    pub fn bind(
        destination: impl Into<PathBuf>,
        path: impl Into<PathBuf>,
        read_only: bool,
    ) -> Self {
        Mount {
            destination: destination.into(),
            source: MountSource::Bind {
                path: path.into(),
                read_only,
            },
        }
    }

    /// A tmpfs at `destination`, world-writable with the sticky bit.
    pub fn tmpfs(destination: impl Into<PathBuf>, size_bytes: Option<u64>) -> Self {
        Mount {
            destination: destination.into(),
            source: MountSource::Tmpfs {
                size_bytes,
                mode: 0o1777,
            },
        }
    }
}

/// `securityContext.capabilities`: names with or without `CAP_`, any case;
/// `ALL` adds or drops every capability. Applied like containerd: add
/// `ALL`, drop `ALL`, then the named adds, then the named drops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapabilityChanges {
    /// Capabilities to add.
    pub add: Vec<String>,
    /// Capabilities to drop.
    pub drop: Vec<String>,
}

/// `securityContext.seccompProfile`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// shoal's default profile (see the `seccomp` module): what Docker's
    /// default profile refuses, refused with EPERM. Note that Kubernetes
    /// runs pods without a profile as Unconfined unless the kubelet's
    /// `--seccomp-default` is set; the agent chooses.
    #[default]
    RuntimeDefault,
    /// No seccomp filter.
    Unconfined,
}

/// cgroup limits of one container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// cpu.shares (relative weight; the kubelet derives it from the request).
    pub cpu_shares: Option<u64>,
    /// CPU time per period, in microseconds (from the limit).
    pub cpu_quota: Option<i64>,
    /// The CFS period, in microseconds.
    pub cpu_period: Option<u64>,
    /// Memory limit in bytes; swap is limited to the same (no swap).
    pub memory_limit: Option<i64>,
    /// Maximum number of processes and threads.
    pub pids_limit: Option<i64>,
}

impl Resources {
    /// The kubelet's mapping of `resources.requests.cpu`,
    /// `resources.limits.cpu` (millicores) and `resources.limits.memory`
    /// (bytes): shares = request × 1024 / 1000 (at least 2, 2 without a
    /// request), quota = limit × 100 ms / 1000 (at least 1 ms) per 100 ms.
    pub fn from_kubernetes(
        cpu_request_millis: Option<u64>,
        cpu_limit_millis: Option<u64>,
        memory_limit_bytes: Option<u64>,
    ) -> Resources {
        let shares = cpu_request_millis
            .map(|m| (m.saturating_mul(1024) / 1000).max(MIN_CPU_SHARES))
            .unwrap_or(MIN_CPU_SHARES);
        let quota = cpu_limit_millis.map(|m| {
            let q = m.saturating_mul(CPU_PERIOD_US) / 1000;
            i64::try_from(q).unwrap_or(i64::MAX).max(MIN_CPU_QUOTA_US)
        });
        Resources {
            cpu_shares: Some(shares),
            cpu_quota: quota,
            cpu_period: quota.map(|_| CPU_PERIOD_US),
            memory_limit: memory_limit_bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
            pids_limit: None,
        }
    }
}

/// A container's command line and environment after Kubernetes' rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedProcess {
    /// The command line.
    pub args: Vec<String>,
    /// The environment, `KEY=value`, later keys overriding earlier ones.
    pub env: Vec<String>,
}

/// Combines the image config with the pod's `command`, `args` and `env`
/// the way the kubelet and containerd do:
///
/// - `command` replaces the image's Entrypoint and, with it, its Cmd;
///   `args` replaces Cmd; with neither, Entrypoint + Cmd run.
/// - `$(VAR)` in `command` and `args` expands from the container's `env`
///   (`$$` escapes, unknown names stay as written).
/// - The environment is `HOSTNAME`, then the image's Env, then `env`, a
///   later key replacing an earlier one; `PATH` defaults to
///   [`DEFAULT_PATH_ENV`].
pub fn resolve_process(
    container: &str,
    image: &ImageConfig,
    command: &[String],
    args: &[String],
    env: &[(String, String)],
    hostname: Option<&str>,
) -> Result<ResolvedProcess, SpecError> {
    let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expand = |list: &[String]| -> Vec<String> {
        list.iter()
            .map(|s| expand_kubernetes_vars(s, |k| vars.get(k).copied()))
            .collect()
    };
    let argv: Vec<String> = match (command.is_empty(), args.is_empty()) {
        (false, _) => expand(command).into_iter().chain(expand(args)).collect(),
        (true, false) => image
            .entrypoint
            .iter()
            .cloned()
            .chain(expand(args))
            .collect(),
        (true, true) => image
            .entrypoint
            .iter()
            .chain(image.cmd.iter())
            .cloned()
            .collect(),
    };
    if argv.is_empty() {
        return Err(SpecError::NoCommand {
            container: container.to_owned(),
        });
    }

    let mut merged: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match merged.iter_mut().find(|(key, _)| key == k) {
        Some(entry) => entry.1 = v.to_owned(),
        None => merged.push((k.to_owned(), v.to_owned())),
    };
    if let Some(h) = hostname {
        set("HOSTNAME", h);
    }
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(k, v);
    }
    for (k, v) in env {
        set(k, v);
    }
    if !merged.iter().any(|(k, _)| k == "PATH") {
        let (k, v) = DEFAULT_PATH_ENV.split_once('=').unwrap_or(("PATH", ""));
        merged.push((k.to_owned(), v.to_owned()));
    }
    Ok(ResolvedProcess {
        args: argv,
        env: merged
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
    })
}

/// Kubernetes' `$(VAR)` expansion: `$(NAME)` becomes `lookup(NAME)` when
/// defined and stays as written otherwise; `$$` is a literal `$`.
pub fn expand_kubernetes_vars<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match lookup(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
