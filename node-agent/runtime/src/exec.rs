//! Streaming exec: `kubectl exec` with its output as it comes, `-i` (the
//! client's stdin) and `-t` (a terminal).
//!
//! Without a terminal the command's stdio are pipes. With one, the agent
//! opens a pseudo-terminal and gives its slave to the runtime as stdin,
//! stdout and stderr; `runc exec -t` (not detached) then makes the
//! container's own terminal, copies between the two, and on SIGWINCH
//! resizes the container's terminal to the slave's size. So a resize is:
//! set the size on our side, then signal the runtime.

use std::{
    os::fd::OwnedFd,
    pin::Pin,
    process::Stdio,
    task::{Context, Poll},
};

use nix::sys::signal::Signal;
use rustix::{
    fs::{Mode, OFlags},
    pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt},
    termios::{Winsize, tcsetwinsize},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    process::Child,
};

use crate::runtime::{ExecRequest, PreparedExec, Runtime, RuntimeError, json_log_error};

/// What the command's stdio are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecStdio {
    /// The caller writes the command's stdin.
    pub stdin: bool,
    /// The command runs on a terminal (stdout and stderr are one stream).
    pub tty: bool,
    /// The terminal's first size (columns, rows); 80x24 if not given.
    pub size: Option<(u16, u16)>,
}

/// A terminal's size when the client gives none: 80 columns, 24 rows.
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// A boxed reader of the command's output.
pub type ExecReader = Pin<Box<dyn AsyncRead + Send>>;
/// A boxed writer of the command's input.
pub type ExecWriter = Pin<Box<dyn AsyncWrite + Send>>;

/// A running exec: its stdio and, with a terminal, the terminal.
pub struct ExecProcess {
    /// The command's stdin, when asked for; dropping it closes the input.
    pub stdin: Option<ExecWriter>,
    /// The command's stdout (with a terminal: everything it prints).
    pub stdout: Option<ExecReader>,
    /// The command's stderr (none with a terminal).
    pub stderr: Option<ExecReader>,
    terminal: Option<OwnedFd>,
    /// The terminal's size when it started.
    size: (u16, u16),
    child: Child,
    prepared: PreparedExec,
    id: String,
    /// crun's helper name, when its failures may leave zombies to reap.
    stray_helper: Option<String>,
}

impl Runtime {
    /// Starts `request.args` in the running container with the stdio
    /// `stdio` asks for; the caller streams them and then calls
    /// [`ExecProcess::wait`].
    pub async fn exec_streaming(
        &self,
        id: &str,
        request: &ExecRequest,
        stdio: ExecStdio,
    ) -> Result<ExecProcess, RuntimeError> {
        let prepared = self.prepare_exec(id, request, stdio.tty).await?;
        match self.spawn_exec(id, &prepared, stdio) {
            Ok(spawned) => Ok(ExecProcess {
                stdin: spawned.stdin,
                stdout: spawned.stdout,
                stderr: spawned.stderr,
                terminal: spawned.terminal,
                size: stdio.size.unwrap_or(DEFAULT_SIZE),
                child: spawned.child,
                prepared,
                id: id.to_owned(),
                stray_helper: self.stray_helper_comm(),
            }),
            Err(e) => {
                prepared.remove().await;
                Err(e)
            }
        }
    }

    fn spawn_exec(
        &self,
        id: &str,
        prepared: &PreparedExec,
        stdio: ExecStdio,
    ) -> Result<Spawned, RuntimeError> {
        let cgroup2 = self.cgroup2_dir(&prepared.bundle);
        let mut cmd = self.command(cgroup2.as_deref());
        self.log_args(&mut cmd, &prepared.log_path);
        cmd.arg("exec");
        if stdio.tty {
            cmd.arg("--tty");
        }
        cmd.arg("--process")
            .arg(&prepared.process_path)
            .arg("--pid-file")
            .arg(&prepared.pid_path)
            .arg(id)
            .kill_on_drop(true);
        let spawn_err = |source| RuntimeError::Spawn {
            binary: self.name(),
            source,
        };
        if stdio.tty {
            let (master, slave) =
                open_terminal(stdio.size.unwrap_or(DEFAULT_SIZE)).map_err(spawn_err)?;
            let slave = std::fs::File::from(slave);
            cmd.stdin(Stdio::from(slave.try_clone().map_err(spawn_err)?))
                .stdout(Stdio::from(slave.try_clone().map_err(spawn_err)?))
                .stderr(Stdio::from(slave));
            let child = cmd.spawn().map_err(spawn_err)?;
            // The command held the slave; ours are closed now, so the
            // master reads EOF (EIO) once the runtime exits.
            let reader = std::fs::File::from(master.try_clone().map_err(spawn_err)?);
            let writer = std::fs::File::from(master.try_clone().map_err(spawn_err)?);
            let stdin: Option<ExecWriter> = stdio
                .stdin
                .then(|| Box::pin(tokio::fs::File::from_std(writer)) as ExecWriter);
            let stdout: ExecReader = Box::pin(TerminalReader(tokio::fs::File::from_std(reader)));
            return Ok(Spawned {
                child,
                stdin,
                stdout: Some(stdout),
                stderr: None,
                terminal: Some(master),
            });
        }
        cmd.stdin(if stdio.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let stdin = child.stdin.take().map(|w| Box::pin(w) as ExecWriter);
        let stdout = child.stdout.take().map(|r| Box::pin(r) as ExecReader);
        let stderr = child.stderr.take().map(|r| Box::pin(r) as ExecReader);
        Ok(Spawned {
            child,
            stdin,
            stdout,
            stderr,
            terminal: None,
        })
    }
}

/// A started exec's process and stdio, before it becomes an [`ExecProcess`].
struct Spawned {
    child: Child,
    stdin: Option<ExecWriter>,
    stdout: Option<ExecReader>,
    stderr: Option<ExecReader>,
    terminal: Option<OwnedFd>,
}

/// Resizes an exec's terminal; usable while another task streams it.
#[derive(Debug)]
pub struct Resizer {
    master: OwnedFd,
    runtime_pid: Option<u32>,
    size: std::sync::Mutex<(u16, u16)>,
}

impl Resizer {
    /// Sets the terminal to `columns` x `rows`.
    pub fn resize(&self, columns: u16, rows: u16) {
        // Clients repeat the size; each signal would interrupt the
        // command's terminal calls for nothing.
        if let Ok(mut size) = self.size.lock() {
            if *size == (columns, rows) {
                return;
            }
            *size = (columns, rows);
        }
        let master = &self.master;
        let size = Winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if tcsetwinsize(master, size).is_err() {
            return;
        }
        // The runtime resizes the container's terminal on SIGWINCH.
        if let Some(pid) = self.runtime_pid
            && let Ok(pid) = i32::try_from(pid)
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGWINCH);
        }
    }
}

impl ExecProcess {
    /// A handle resizing the terminal; none without a terminal.
    pub fn resizer(&self) -> Option<Resizer> {
        let master = self.terminal.as_ref()?.try_clone().ok()?;
        Some(Resizer {
            master,
            runtime_pid: self.child.id(),
            size: std::sync::Mutex::new(self.size),
        })
    }

    /// Waits for the command and returns its exit code (128 + signal if a
    /// signal ended it); removes the exec's files.
    pub async fn wait(mut self) -> Result<i32, RuntimeError> {
        drop(self.stdin.take());
        let status = self.child.wait().await;
        let result = match status {
            Err(source) => Err(RuntimeError::Spawn {
                binary: "exec".into(),
                source,
            }),
            Ok(status) => {
                let code = status.code().unwrap_or(-1);
                if code != 0
                    && let Some(comm) = &self.stray_helper
                {
                    crate::exit::reap_stray_helpers(comm);
                }
                // runc and crun exit 255 when they could not start the
                // command; the reason is in their log.
                let log = if code == 255 || code == -1 {
                    tokio::fs::read_to_string(&self.prepared.log_path)
                        .await
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                match json_log_error(&log) {
                    Some(message) => Err(RuntimeError::Failed {
                        command: "exec".into(),
                        id: self.id.clone(),
                        message,
                    }),
                    None => Ok(code),
                }
            }
        };
        self.prepared.remove().await;
        result
    }

    /// Kills the command (the client went away).
    pub async fn kill(&mut self) {
        if let Ok(pid) = tokio::fs::read_to_string(&self.prepared.pid_path).await
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
    }
}

/// Opens a pseudo-terminal of `size` (columns, rows): (master, slave).
fn open_terminal(size: (u16, u16)) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    tcsetwinsize(
        &master,
        Winsize {
            ws_row: size.1,
            ws_col: size.0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok((master, slave))
}

/// The master side of a terminal: once every slave is closed, reads fail
/// with EIO, which means end of output.
struct TerminalReader(tokio::fs::File);

impl AsyncRead for TerminalReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(e))
                if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) =>
            {
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}
