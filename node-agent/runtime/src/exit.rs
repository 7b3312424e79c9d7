//! Noticing container exits.
//!
//! The agent makes itself a child subreaper ([`set_subreaper`]), so a
//! detached container's init becomes its child once `runc create` exits.
//! The watcher waits for those specific pids (never `waitpid(-1)`:
//! tokio::process reaps its own children) whenever SIGCHLD arrives and on a
//! fallback poll. Containers that are not its children (the agent
//! restarted and adopted them) are polled through /proc; their exit code
//! cannot be known and is reported as [`ExitStatus::Unknown`].

use std::{collections::HashMap, fs, io, time::Duration};

use nix::{
    errno::Errno,
    sys::wait::{WaitPidFlag, WaitStatus, waitpid},
    unistd::Pid,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    bundle::Bundle,
    cgroup::CgroupMounts,
    runtime::{ContainerState, Runtime, RuntimeError, Status},
};

/// Makes this process a child subreaper (PR_SET_CHILD_SUBREAPER): orphaned
/// descendants, such as container inits after `runc create` exits, become
/// its children instead of init's. Call once at agent start.
pub fn set_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// How a container's init process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// It ended while nobody could wait for it (e.g. the agent was down).
    Unknown,
}

impl ExitStatus {
    /// The code Kubernetes reports: the exit code, or 128 + the signal.
    pub fn code(&self) -> Option<i32> {
        match self {
            ExitStatus::Exited(c) => Some(*c),
            ExitStatus::Signaled(s) => Some(128 + s),
            ExitStatus::Unknown => None,
        }
    }
}

/// A container's init process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    /// The container id.
    pub id: String,
    /// Its init pid.
    pub pid: u32,
    /// How it ended.
    pub status: ExitStatus,
    /// The kernel's OOM killer killed a process in its cgroup: Kubernetes'
    /// reason `OOMKilled`.
    pub oom_killed: bool,
    /// When the watcher noticed.
    pub finished_at: jiff::Timestamp,
}

/// What [`ExitWatcher::recover`] found in the runtime at agent start.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// Containers still created or running, now watched.
    pub running: Vec<ContainerState>,
    /// Containers that stopped while the agent was down.
    pub exited: Vec<ExitEvent>,
}

struct Watched {
    id: String,
    cgroups_path: Option<String>,
    /// Not our child: polled through /proc, with its start time to notice
    /// pid reuse.
    adopted: Option<u64>,
}

/// Hands out exit events for the containers it is told to watch. Cheap to
/// clone; the background task ends when every clone is dropped.
#[derive(Clone, Debug)]
pub struct ExitWatcher {
    tx: mpsc::UnboundedSender<(u32, String, Option<String>)>,
}

impl ExitWatcher {
    /// Starts the watcher task on the current tokio runtime; exits arrive on
    /// the returned receiver. `poll` is the fallback interval (signals can
    /// be missed or coalesced; adopted containers are only polled).
    pub fn start(poll: Duration) -> (ExitWatcher, mpsc::UnboundedReceiver<ExitEvent>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u32, String, Option<String>)>();
        let (events, out) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut sigchld = match signal(SignalKind::child()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGCHLD; polling for container exits only");
                    None
                }
            };
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let cgroups = CgroupMounts::detect().unwrap_or_default();
            let mut watched: HashMap<u32, Watched> = HashMap::new();
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some((pid, id, cgroups_path)) => {
                            watched.insert(pid, Watched { id, cgroups_path, adopted: None });
                        }
                        None => break,
                    },
                    _ = async {
                        match sigchld.as_mut() {
                            Some(s) => { s.recv().await; }
                            None => std::future::pending::<()>().await,
                        }
                    } => {}
                    _ = tick.tick() => {}
                }
                watched.retain(|pid, w| match check(*pid, w) {
                    Some(status) => {
                        let oom_killed = w
                            .cgroups_path
                            .as_deref()
                            .and_then(|p| cgroups.oom_kills(p))
                            .is_some_and(|n| n > 0);
                        let _ = events.send(ExitEvent {
                            id: w.id.clone(),
                            pid: *pid,
                            status,
                            oom_killed,
                            finished_at: jiff::Timestamp::now(),
                        });
                        false
                    }
                    None => true,
                });
            }
        });
        (ExitWatcher { tx }, out)
    }

    /// Watches container `id` whose init is `pid` (from
    /// [`Runtime::create`]); `cgroups_path` is its cgroup, checked for OOM
    /// kills when it exits (before the runtime deletes it). An init that has
    /// already exited is reported at once.
    pub fn watch(&self, id: &str, pid: u32, cgroups_path: Option<&str>) {
        let _ = self
            .tx
            .send((pid, id.to_owned(), cgroups_path.map(str::to_owned)));
    }

    /// At agent start: watches every created or running container of
    /// `runtime` and reports the ones that stopped while nobody watched,
    /// with an unknown exit code (their OOM kills are still counted).
    pub async fn recover(&self, runtime: &Runtime) -> Result<Recovered, RuntimeError> {
        let mut out = Recovered::default();
        for state in runtime.list().await? {
            let cgroups_path = Bundle::open(&state.bundle)
                .config()
                .ok()
                .and_then(|c| c.linux().as_ref()?.cgroups_path().clone())
                .map(|p| p.to_string_lossy().into_owned());
            match state.status {
                Status::Created | Status::Running | Status::Paused | Status::Creating
                    if state.pid > 0 =>
                {
                    self.watch(&state.id, state.pid, cgroups_path.as_deref());
                    out.running.push(state);
                }
                _ => {
                    let oom_killed = cgroups_path
                        .as_deref()
                        .and_then(|p| runtime.cgroups().oom_kills(p))
                        .is_some_and(|n| n > 0);
                    out.exited.push(ExitEvent {
                        id: state.id.clone(),
                        pid: state.pid,
                        status: ExitStatus::Unknown,
                        oom_killed,
                        finished_at: jiff::Timestamp::now(),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Whether `pid` has ended, and how.
fn check(pid: u32, w: &mut Watched) -> Option<ExitStatus> {
    let Ok(raw) = i32::try_from(pid) else {
        return Some(ExitStatus::Unknown);
    };
    if w.adopted.is_none() {
        match waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Some(ExitStatus::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Some(ExitStatus::Signaled(sig as i32)),
            Ok(_) => return None,
            Err(Errno::EINTR) => return None,
            Err(_) => {
                // ECHILD: not our child; poll it from now on.
                match start_time(pid) {
                    Some((start, false)) => w.adopted = Some(start),
                    _ => return Some(ExitStatus::Unknown),
                }
            }
        }
    }
    match (start_time(pid), w.adopted) {
        (Some((start, false)), Some(known)) if start == known => None,
        _ => Some(ExitStatus::Unknown),
    }
}

/// Reaps zombies that a runtime helper left as this process's children:
/// when `crun exec` fails to start the command, its forked helper (already
/// inside the container's pid namespace) outlives it, becomes the agent's
/// child and, unreaped, keeps the container's init from ever finishing its
/// exit. Only zombies named `comm` that live in a nested pid namespace are
/// taken, so neither tokio's children nor container inits are touched.
pub(crate) fn reap_stray_helpers(comm: &str) {
    let me = std::process::id();
    let Some(my_depth) = proc_status(me).map(|s| s.ns_depth) else {
        return;
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Some(st) = proc_status(pid) else {
            continue;
        };
        if st.ppid == me
            && st.zombie
            && st.name == comm
            && st.ns_depth > my_depth
            && let Ok(raw) = i32::try_from(pid)
        {
            let _ = waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG));
            tracing::debug!(pid, comm, "reaped a runtime helper left behind");
        }
    }
}

struct ProcStatus {
    name: String,
    zombie: bool,
    ppid: u32,
    /// How many pid namespaces deep (entries in NSpid).
    ns_depth: usize,
}

fn proc_status(pid: u32) -> Option<ProcStatus> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
            .map(str::to_owned)
    };
    Some(ProcStatus {
        name: field("Name:")?,
        zombie: field("State:")?.starts_with('Z'),
        ppid: field("PPid:")?.parse().ok()?,
        ns_depth: field("NSpid:")?.split_whitespace().count(),
    })
}

/// The process's start time (field 22 of /proc/<pid>/stat) and whether it
/// is a zombie; None if it is gone.
fn start_time(pid: u32) -> Option<(u64, bool)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let zombie = fields.first().is_some_and(|s| *s == "Z" || *s == "X");
    let start = fields.get(19)?.parse().ok()?;
    Some((start, zombie))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_as_kubernetes_reports_them() {
        assert_eq!(ExitStatus::Exited(3).code(), Some(3));
        assert_eq!(ExitStatus::Signaled(9).code(), Some(137));
        assert_eq!(ExitStatus::Unknown.code(), None);
        let me = std::process::id();
        assert!(matches!(start_time(me), Some((_, false))));
    }
}
