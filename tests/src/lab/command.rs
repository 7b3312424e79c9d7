//! Commands that run inside a lab host: its network namespace and cgroup.
#![expect(
    unsafe_code,
    reason = "pre_exec is unsafe; it only writes to and setns()es on fds opened before fork"
)]

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::sched::{CloneFlags, setns};

use super::{Result, io_error};

/// `program` set up to join the netns at `netns` and the cgroup `cgroup`
/// between fork and exec. Both are opened here, so a missing host fails
/// now with its path rather than as a bare errno from `spawn`.
pub(super) fn in_host(program: &OsStr, netns: &Path, cgroup: &Path) -> Result<Command> {
    let ns = File::open(netns).map_err(io_error("opening netns", netns))?;
    let procs_path = cgroup.join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(io_error("opening", procs_path))?;
    let mut command = Command::new(program);
    // SAFETY: the closure runs in the forked child and only makes two system
    // calls on descriptors that are already open (both async-signal-safe);
    // it allocates nothing. Both files are close-on-exec.
    unsafe {
        command.pre_exec(move || enter(&procs, &ns));
    }
    Ok(command)
}

fn enter(procs: &File, ns: &File) -> io::Result<()> {
    // "0" moves the writing process, i.e. this child.
    nix::unistd::write(procs, b"0")?;
    setns(ns, CloneFlags::CLONE_NEWNET)?;
    Ok(())
}
