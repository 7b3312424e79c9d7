//! The stdin and terminal of containers whose spec asks for them
//! (`stdin: true`, `tty: true`), kept by the agent for `kubectl attach`.
//!
//! Without a terminal, stdin is a FIFO in the bundle (`stdin`). A container
//! without `stdinOnce` holds the FIFO open read-write itself, so it never
//! reads end of input, and every attach session (of this agent or of a
//! restarted one) opens the FIFO to write. With `stdinOnce` the container
//! holds only the read end and the agent the one writer, which the first
//! attach session takes and closes when it ends: the container then reads
//! end of input, as in Kubernetes.
//!
//! With a terminal, runc hands the agent the terminal's master through
//! `--console-socket`. The agent copies everything the container prints
//! into its log file (so `kubectl logs` shows it), and attach sessions
//! write to the master and resize it. A small holder process (`sleep`, its
//! stdin the master, its pid in the bundle's `console.pid`) keeps the
//! terminal open while the agent restarts, so the container is not hung
//! up; the restarted agent takes the master back from the holder
//! (`pidfd_getfd`) when it adopts the container.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read as _, Write as _},
    os::fd::OwnedFd,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use rustix::{
    fs::{Mode, OFlags},
    net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags},
    termios::{Winsize, tcsetwinsize},
};

#[cfg(test)]
mod tests;

/// The FIFO in a bundle that is the stdin of a container without a
/// terminal.
pub const STDIN_FIFO: &str = "stdin";
/// The file in a bundle naming the process that holds the terminal.
const HOLDER_PID: &str = "console.pid";
/// What holds a terminal while the agent restarts: a process that only
/// waits, its stdin the master.
const HOLDER: &[&str] = &["sleep", "infinity"];

/// What a container's spec asks for its stdio.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerStdio {
    /// `stdin: true`: the container gets a stdin attach sessions write to.
    pub stdin: bool,
    /// `stdinOnce: true`: stdin is closed when the first attach session
    /// ends.
    pub stdin_once: bool,
    /// `tty: true`: the container runs on a terminal (stdout and stderr
    /// are one stream).
    pub tty: bool,
}

/// One container's stdin or terminal held by the agent.
struct Console {
    /// `stdinOnce` without a terminal: the one writer of the FIFO, until
    /// the first attach session takes it.
    writer: Mutex<Option<File>>,
    /// With a terminal: its master.
    terminal: Option<OwnedFd>,
    /// The container has a stdin.
    stdin: bool,
    /// Stdin closes when the first attach session ends.
    once: bool,
    /// That session has ended.
    closed: AtomicBool,
    /// The process keeping the terminal open across agent restarts.
    holder: Option<u32>,
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(pid) = self.holder {
            stop_holder(pid);
        }
    }
}

/// The stdins and terminals of every container that has one, by container
/// id; shared by the pod workers (which create them) and the streaming
/// server (which attaches to them).
#[derive(Clone, Default)]
pub struct Consoles {
    inner: Arc<Mutex<HashMap<String, Arc<Console>>>>,
}

impl std::fmt::Debug for Consoles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Consoles").field("held", &n).finish()
    }
}

/// What an attach session writes the client's input to.
pub struct AttachInput {
    /// The container's stdin (with a terminal, the terminal's master);
    /// none when the session did not ask for it or the container's stdin
    /// is closed. Dropping it ends the session's input.
    pub stdin: Option<File>,
    console: Option<Arc<Console>>,
    /// The container's bundle (where a closed stdinOnce is remembered).
    bundle_dir: PathBuf,
}

impl AttachInput {
    /// Whether the container runs on a terminal the agent holds.
    pub fn is_terminal(&self) -> bool {
        self.console.as_ref().is_some_and(|c| c.terminal.is_some())
    }

    /// Sets the container's terminal to `columns` x `rows` (its foreground
    /// process gets SIGWINCH); nothing without a terminal.
    pub fn resize(&self, columns: u16, rows: u16) {
        if let Some(master) = self.console.as_ref().and_then(|c| c.terminal.as_ref()) {
            let _ = tcsetwinsize(
                master,
                Winsize {
                    ws_row: rows,
                    ws_col: columns,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                },
            );
        }
    }
}

impl Drop for AttachInput {
    fn drop(&mut self) {
        // stdinOnce: the first session that had stdin closes it for good.
        if self.stdin.is_some()
            && let Some(c) = &self.console
            && c.once
        {
            c.closed.store(true, Ordering::SeqCst);
            if c.terminal.is_some() {
                let _ = std::fs::write(self.bundle_dir.join(STDIN_CLOSED), b"");
            }
        }
    }
}

/// Why an attach session gets no stdin.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The container was not created with a stdin the agent can write.
    #[error(
        "the container has no stdin this agent can write: its spec does not set stdin: true, or it runs on a terminal that was lost when the agent restarted"
    )]
    NoStdin,
    /// The agent restarted and has not taken the terminal back yet.
    #[error(
        "the agent restarted and is still taking back the container's terminal; try again in a moment"
    )]
    NotYetAdopted,
    /// The FIFO could not be opened.
    #[error("opening the container's stdin {path}: {source}")]
    Open {
        /// The FIFO.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl Consoles {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets container `id`'s stdin or terminal (it exited).
    pub fn remove(&self, id: &str) {
        if let Ok(mut m) = self.inner.lock() {
            m.remove(id);
        }
    }

    /// Whether the agent holds a terminal for container `id`.
    pub fn has_terminal(&self, id: &str) -> bool {
        self.get(id).is_some_and(|c| c.terminal.is_some())
    }

    fn get(&self, id: &str) -> Option<Arc<Console>> {
        self.inner.lock().ok()?.get(id).cloned()
    }

    fn insert(&self, id: &str, console: Console) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(id.to_owned(), Arc::new(console));
        }
    }

    /// The input of an attach session to container `id` (bundle in
    /// `bundle_dir`): its stdin when `stdin` asks for it, and its terminal.
    pub fn attach(
        &self,
        id: &str,
        bundle_dir: &Path,
        stdin: bool,
    ) -> Result<AttachInput, AttachError> {
        let console = self.get(id);
        let Some(console) = console else {
            // No stdinOnce writer and no terminal: a plain FIFO, if any.
            if !stdin {
                return Ok(AttachInput {
                    stdin: None,
                    console: None,
                    bundle_dir: bundle_dir.to_path_buf(),
                });
            }
            if bundle_dir.join(HOLDER_PID).exists() {
                return Err(AttachError::NotYetAdopted);
            }
            let path = bundle_dir.join(STDIN_FIFO);
            return match open_fifo_writer(&path) {
                Ok(f) => Ok(AttachInput {
                    stdin: Some(f),
                    console: None,
                    bundle_dir: bundle_dir.to_path_buf(),
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(AttachError::NoStdin),
                Err(source) => Err(AttachError::Open { path, source }),
            };
        };
        if !stdin {
            return Ok(AttachInput {
                stdin: None,
                console: Some(console),
                bundle_dir: bundle_dir.to_path_buf(),
            });
        }
        if !console.stdin {
            return Err(AttachError::NoStdin);
        }
        let writer = match &console.terminal {
            Some(_) if console.closed.load(Ordering::SeqCst) => None,
            Some(master) => Some(File::from(master.try_clone().map_err(|source| {
                AttachError::Open {
                    path: PathBuf::from("/dev/ptmx"),
                    source,
                }
            })?)),
            None => {
                let taken = console.writer.lock().ok().and_then(|mut w| w.take());
                if taken.is_some() {
                    // Nobody may open it again: its end of input is near.
                    let _ = std::fs::remove_file(bundle_dir.join(STDIN_FIFO));
                }
                taken
            }
        };
        Ok(AttachInput {
            stdin: writer,
            console: Some(console),
            bundle_dir: bundle_dir.to_path_buf(),
        })
    }
}

/// Opens a FIFO to write without waiting for a reader (there is none when
/// the container is gone: ENXIO), then makes writes blocking again.
fn open_fifo_writer(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)?;
    Ok(File::from(fd))
}

/// What `runc create` gets as stdin for a container without a terminal,
/// and what the agent keeps.
pub(crate) struct PreparedStdin {
    /// The container's stdin.
    pub stdin: File,
    /// stdinOnce: the agent's writer.
    pub writer: Option<File>,
}

/// Makes the stdin FIFO in `bundle_dir` for a container asking for stdin
/// without a terminal.
pub(crate) fn prepare_fifo(bundle_dir: &Path, once: bool) -> io::Result<PreparedStdin> {
    let path = bundle_dir.join(STDIN_FIFO);
    let _ = std::fs::remove_file(&path);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )?;
    // Read-write opens never wait for the other end.
    let rw = File::from(rustix::fs::open(
        &path,
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )?);
    if !once {
        return Ok(PreparedStdin {
            stdin: rw,
            writer: None,
        });
    }
    // The read end: it does not wait, a writer (ours) exists.
    let ro = File::from(rustix::fs::open(
        &path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?);
    Ok(PreparedStdin {
        stdin: ro,
        writer: Some(rw),
    })
}

/// A Unix socket `runc create --console-socket` sends a terminal master to.
pub(crate) struct ConsoleSocket {
    path: PathBuf,
    listener: tokio::net::UnixListener,
}

static SOCKETS: AtomicU64 = AtomicU64::new(0);

impl ConsoleSocket {
    /// Binds a fresh socket (under the temporary directory: socket paths
    /// are short, bundle paths may not be).
    pub(crate) fn bind() -> io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "shoal-console-{}-{}.sock",
            std::process::id(),
            SOCKETS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        Ok(Self { path, listener })
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the master runc sends, waiting at most `wait`.
    pub(crate) async fn receive(&self, wait: Duration) -> io::Result<OwnedFd> {
        let (stream, _) = tokio::time::timeout(wait, self.listener.accept())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no connection from runc"))??;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(wait))?;
        tokio::task::spawn_blocking(move || receive_fd(&stream))
            .await
            .map_err(io::Error::other)?
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one message carrying one file descriptor (SCM_RIGHTS).
fn receive_fd(stream: &std::os::unix::net::UnixStream) -> io::Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(&mut name)];
    rustix::net::recvmsg(stream, &mut iov, &mut ancillary, RecvFlags::CMSG_CLOEXEC)?;
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(io::Error::other(
        "runc sent no terminal on the console socket",
    ))
}

/// Holds container `id`'s terminal `master` and copies what it prints to
/// `log` until the container's last process closes the terminal.
pub(crate) fn hold_terminal(
    consoles: &Consoles,
    id: &str,
    bundle_dir: &Path,
    master: OwnedFd,
    stdio: ContainerStdio,
    log: File,
) -> io::Result<()> {
    let holder = std::process::Command::new(HOLDER[0])
        .args(&HOLDER[1..])
        .stdin(std::process::Stdio::from(master.try_clone()?))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()?;
    let pid = holder.id();
    // Reaped by a thread of its own: it ends when the container does.
    std::thread::spawn(move || {
        let mut holder = holder;
        let _ = holder.wait();
    });
    std::fs::write(bundle_dir.join(HOLDER_PID), pid.to_string())?;
    let stdin_open = !(stdio.stdin_once && bundle_dir.join(STDIN_CLOSED).exists());
    start_terminal(consoles, id, master, stdio, Some(pid), log, stdin_open)
}

/// A marker in the bundle: a stdinOnce terminal's stdin was closed.
const STDIN_CLOSED: &str = "stdin.closed";

/// Takes back the terminal of container `id` (bundle in `bundle_dir`) from
/// the holder a previous agent left, and copies its output to `log_path`
/// again; nothing when the container has no terminal.
pub fn adopt_terminal(
    consoles: &Consoles,
    id: &str,
    bundle_dir: &Path,
    log_path: &Path,
    stdio: ContainerStdio,
) -> io::Result<()> {
    let Ok(text) = std::fs::read_to_string(bundle_dir.join(HOLDER_PID)) else {
        return Ok(());
    };
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("console.pid holds {text:?}")))?;
    // The pid must still be the holder: its stdin a terminal master.
    let link = std::fs::read_link(format!("/proc/{pid}/fd/0"))?;
    if !link.to_string_lossy().contains("ptmx") {
        return Err(io::Error::other(format!(
            "process {pid} is no longer the terminal's holder (its stdin is {})",
            link.display()
        )));
    }
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).ok_or_else(|| io::Error::other("pid 0"))?,
        rustix::process::PidfdFlags::empty(),
    )?;
    let master =
        rustix::process::pidfd_getfd(&pidfd, 0, rustix::process::PidfdGetfdFlags::empty())?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    let stdin_open = !(stdio.stdin_once && bundle_dir.join(STDIN_CLOSED).exists());
    start_terminal(
        consoles,
        id,
        master,
        stdio,
        u32::try_from(pid).ok(),
        log,
        stdin_open,
    )
}

/// Stops a holder (its container is gone).
fn stop_holder(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Stops the holder a previous agent left for container `bundle_dir`'s
/// terminal, if any (the container exited while no agent ran).
pub fn release_terminal(bundle_dir: &Path) {
    if let Ok(text) = std::fs::read_to_string(bundle_dir.join(HOLDER_PID))
        && let Ok(pid) = text.trim().parse::<u32>()
        && std::fs::read_link(format!("/proc/{pid}/fd/0"))
            .is_ok_and(|l| l.to_string_lossy().contains("ptmx"))
    {
        stop_holder(pid);
    }
}

/// Registers a terminal and copies its output to `log`.
fn start_terminal(
    consoles: &Consoles,
    id: &str,
    master: OwnedFd,
    stdio: ContainerStdio,
    holder: Option<u32>,
    mut log: File,
    stdin_open: bool,
) -> io::Result<()> {
    let mut reader = File::from(master.try_clone()?);
    consoles.insert(
        id,
        Console {
            writer: Mutex::new(None),
            terminal: Some(master),
            stdin: stdio.stdin,
            once: stdio.stdin_once,
            closed: AtomicBool::new(!stdin_open),
            holder,
        },
    );
    let consoles = consoles.clone();
    let id = id.to_owned();
    std::thread::Builder::new()
        .name("shoal-console".into())
        .spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            // EIO once the terminal's last slave is closed: the end.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || log.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            consoles.remove(&id);
        })?;
    Ok(())
}

/// Holds container `id`'s stdinOnce writer until the first attach takes it.
pub(crate) fn hold_writer(consoles: &Consoles, id: &str, writer: File) {
    consoles.insert(
        id,
        Console {
            writer: Mutex::new(Some(writer)),
            terminal: None,
            stdin: true,
            once: true,
            closed: AtomicBool::new(false),
            holder: None,
        },
    );
}
