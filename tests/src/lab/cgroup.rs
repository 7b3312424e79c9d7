//! The lab's cgroup v2 directories: finding the hierarchy, creating host
//! directories, and emptying and removing a lab's subtree.

use std::io;
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Error, Removed, Result, WAIT, io_error, mounts, wait_until};

const FALLBACK: &str = "/sys/fs/cgroup";

/// Where the cgroup v2 hierarchy is mounted: the first `cgroup2` mount in
/// mountinfo (on hybrid hosts `/sys/fs/cgroup/unified`), else
/// `/sys/fs/cgroup` if that is cgroup2.
pub(super) fn mount_point() -> Result<PathBuf> {
    if let Some(m) = mounts::mounts().into_iter().find(|m| m.fstype == "cgroup2") {
        return Ok(m.point);
    }
    let is_cgroup2 = nix::sys::statfs::statfs(FALLBACK)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if is_cgroup2 {
        Ok(PathBuf::from(FALLBACK))
    } else {
        Err(Error::NoCgroup2)
    }
}

/// Where each cgroup v1 hierarchy is mounted (none on a pure cgroup v2
/// machine).
pub(super) fn v1_mount_points() -> Vec<PathBuf> {
    mounts::mounts()
        .into_iter()
        .filter(|m| m.fstype == "cgroup")
        .map(|m| m.point)
        .collect()
}

pub(super) fn create(dir: &Path) -> Result<()> {
    std::fs::create_dir(dir).map_err(io_error("creating cgroup", dir))
}

/// Kills every process under `root`, waits for them to leave and removes
/// `root` and every directory below it, deepest first.
pub(super) fn remove_tree(root: &Path, removed: &mut Removed, problems: &mut Vec<String>) {
    if !root.exists() {
        return;
    }
    let mut dirs = Vec::new();
    collect_dirs(root, &mut dirs, problems);
    removed.killed += dirs.iter().map(|d| procs(d).len()).sum::<usize>();

    if !kill_all(root, &dirs) {
        problems.push(format!(
            "processes in {} still running {} s after SIGKILL: {:?}",
            root.display(),
            WAIT.as_secs(),
            dirs.iter().flat_map(|d| procs(d)).collect::<Vec<_>>()
        ));
    }

    // Children before parents.
    for dir in dirs.iter().rev() {
        match std::fs::remove_dir(dir) {
            Ok(()) => removed.cgroups.push(dir.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => problems.push(io_error("removing cgroup", dir)(e).to_string()),
        }
    }
}

/// `root` and every cgroup below it, parents before children.
fn collect_dirs(root: &Path, out: &mut Vec<PathBuf>, problems: &mut Vec<String>) {
    out.push(root.to_owned());
    match std::fs::read_dir(root) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    collect_dirs(&entry.path(), out, problems);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => problems.push(io_error("listing cgroup", root)(e).to_string()),
    }
}

/// The pids in one cgroup (not its children).
fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether the subtree holds no process (live ones; zombies have left).
fn is_empty(root: &Path, dirs: &[PathBuf]) -> bool {
    match std::fs::read_to_string(root.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l.trim() == "populated 0"),
        Err(_) => dirs.iter().all(|d| procs(d).is_empty()),
    }
}

/// SIGKILLs everything in the subtree and waits until it is empty.
fn kill_all(root: &Path, dirs: &[PathBuf]) -> bool {
    if is_empty(root, dirs) {
        return true;
    }
    // cgroup.kill (Linux 5.14+) kills the whole subtree at once, including
    // processes forked while it runs.
    let killed_by_kernel = std::fs::write(root.join("cgroup.kill"), "1").is_ok();
    wait_until(WAIT, || {
        if !killed_by_kernel {
            for pid in dirs.iter().flat_map(|d| procs(d)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        is_empty(root, dirs)
    })
}
