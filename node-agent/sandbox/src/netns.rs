//! Network namespaces: creating them as bind-mounted files, running code
//! inside one, and writing sysctls there.
//!
//! A thread's network namespace is its own (`setns(2)` and
//! `unshare(CLONE_NEWNET)` affect the calling thread only), so every piece of
//! work that must happen inside a namespace runs on a fresh, short-lived
//! `std::thread` that enters it and then exits. Tokio's threads never change
//! namespace. A netlink socket keeps the namespace it was opened in, so a
//! socket opened on such a thread can be driven from tokio afterwards.
//!
//! `/proc/sys/net` shows the namespace of the task that looks the path up
//! (the kernel resolves the sysctl table from `current` when the file is
//! opened), so sysctls are written from a thread inside the namespace. The
//! integration tests check this: forwarding is set in the node namespace the
//! test created and nowhere else.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::statfs::{NSFS_MAGIC, statfs};

use crate::error::Error;

/// Runs `work` on a new thread and waits for it without blocking tokio.
pub(crate) async fn on_fresh_thread<T, F>(context: String, work: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shoal-netns".to_owned())
        .spawn(move || {
            // The receiver only goes away if the caller was cancelled.
            let _ = tx.send(work());
        })
        .map_err(|e| Error::Thread {
            context: context.clone(),
            reason: format!("cannot start a thread: {e}"),
        })?;
    rx.await.map_err(|_| Error::Thread {
        context,
        reason: "the thread ended without an answer (it panicked)".to_owned(),
    })?
}

/// Runs `work` on a new thread that first enters the network namespace `ns`.
/// The thread exits afterwards, so its changed namespace goes with it.
pub(crate) async fn in_netns<T, F>(ns: &File, context: String, work: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    let ns = ns.try_clone().map_err(|e| Error::Thread {
        context: context.clone(),
        reason: format!("cannot duplicate the namespace handle: {e}"),
    })?;
    let ctx = context.clone();
    on_fresh_thread(context, move || {
        nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::namespace(format!("{ctx}: entering the network namespace"), e))?;
        work()
    })
    .await
}

/// Opens a handle on the calling thread's network namespace.
pub(crate) fn current() -> Result<File, Error> {
    let path = "/proc/thread-self/ns/net";
    File::open(path).map_err(|e| Error::io("opening the current network namespace", path, e))
}

/// Opens a namespace file (a bind mount made by [`create`]).
pub(crate) fn open(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|e| Error::io("opening the network namespace", path, e))
}

/// Whether `path` is a bind-mounted namespace (nsfs), not just a file.
pub(crate) fn is_mounted(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Makes `path` a new, empty network namespace unless it already is one.
/// Like `ip netns add`: a thread unshares its network namespace and bind-mounts
/// `/proc/thread-self/ns/net` onto the file, which keeps the namespace alive
/// after the thread exits.
pub(crate) async fn create(path: PathBuf, pod: &str) -> Result<(), Error> {
    if is_mounted(&path) {
        return Ok(());
    }
    let context = format!(
        "pod {pod}: creating the network namespace {}",
        path.display()
    );
    let ctx = context.clone();
    on_fresh_thread(context, move || {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("{ctx}: creating the mount point"), &path, e))?;
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::namespace(format!("{ctx}: unshare(CLONE_NEWNET)"), e))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            let _ = std::fs::remove_file(&path);
            Error::namespace(format!("{ctx}: bind-mounting the namespace"), e)
        })
    })
    .await
}

/// Unmounts and deletes a namespace file; a missing one is fine. The namespace
/// itself lives on while a process is still inside it.
pub(crate) fn remove(path: &Path, pod: &str) -> Result<(), Error> {
    // A file mounted more than once (by hand) needs one unmount per mount.
    for _ in 0..8 {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => break,
            Err(e) => {
                return Err(Error::namespace(
                    format!(
                        "pod {pod}: unmounting the network namespace {}",
                        path.display()
                    ),
                    e,
                ));
            }
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(
            format!("pod {pod}: deleting the network namespace file"),
            path,
            e,
        )),
    }
}

/// Writes a sysctl under `/proc/sys/net`, e.g. `ipv6/conf/all/forwarding`. Must
/// run on a thread inside the namespace it is meant for.
pub(crate) fn write_sysctl(key: &str, value: &str) -> Result<(), Error> {
    let path = Path::new("/proc/sys/net").join(key);
    std::fs::write(&path, value)
        .map_err(|e| Error::io(format!("setting sysctl to {value}"), &path, e))
}
