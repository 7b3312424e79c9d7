//! The OCI runtime driver: runc (default) or crun, run as commands.
//!
//! Containers are created detached with their stdout and stderr appended
//! to a log file (an O_APPEND file, not a pipe, so logs keep flowing while
//! the agent restarts). The runtime's own errors go to a JSON log in the
//! bundle, read back when a command fails.
//!
//! crun refuses hybrid cgroup hosts (v1 controllers plus cgroup2): on such a
//! host every crun command runs in a private mount namespace with cgroup2
//! unmounted, after joining the container's cgroup2 directory (so programs
//! attached to the pod's cgroup2 directory still see the container).

use std::{
    io,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use nix::sys::signal::Signal;
use serde::Deserialize;
use tokio::process::Command;

use crate::{
    bundle::{Bundle, BundleError},
    cgroup::CgroupMounts,
    console::{self, Consoles, ContainerStdio},
};

/// The default runtime binary.
pub const RUNC: &str = "runc";
/// The alternative runtime.
pub const CRUN: &str = "crun";

/// What the crun wrapper runs: join the container's cgroup2 directory (when
/// given), hide cgroup2, then become the runtime.
const CRUN_HYBRID_WRAPPER: &str = r#"
if [ -n "$SHOAL_CGROUP2_DIR" ]; then
  mkdir -p "$SHOAL_CGROUP2_DIR" && echo $$ > "$SHOAL_CGROUP2_DIR/cgroup.procs" || exit 125
fi
umount -l "$SHOAL_CGROUP2_MOUNT" || exit 125
exec "$@"
"#;

/// Errors of runtime commands.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime has no container with this id.
    #[error("container {id:?} does not exist in the {runtime} root {root}")]
    NotFound {
        /// The container id.
        id: String,
        /// The runtime binary.
        runtime: String,
        /// Its state directory.
        root: PathBuf,
    },
    /// The container is not running (e.g. kill or exec after it exited).
    #[error("container {id:?} is not running: {message}")]
    NotRunning {
        /// The container id.
        id: String,
        /// The runtime's message.
        message: String,
    },
    /// The runtime binary could not be started.
    #[error(
        "could not run {binary}: {source}; install it (`cargo xtask setup` installs runc and crun)"
    )]
    Spawn {
        /// The binary.
        binary: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A runtime command failed.
    #[error("`{command}` for container {id:?} failed: {message}")]
    Failed {
        /// The command, e.g. `runc create`.
        command: String,
        /// The container id.
        id: String,
        /// The runtime's error message.
        message: String,
    },
    /// The runtime printed something this driver does not understand.
    #[error("`{command}` printed output that does not parse: {source}")]
    Parse {
        /// The command.
        command: String,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// An exec did not finish in time; its process was killed.
    #[error("exec in container {id:?} timed out after {timeout:?}")]
    ExecTimeout {
        /// The container id.
        id: String,
        /// The timeout.
        timeout: Duration,
    },
    /// A file the driver needs could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The container's bundle is unusable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::Io { what, path, source }
}

/// The lifecycle state the runtime reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Being created.
    Creating,
    /// Created, its process waiting for `start`.
    Created,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// Its init process has exited.
    Stopped,
    /// Something else.
    Other(String),
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "creating" => Status::Creating,
            "created" => Status::Created,
            "running" => Status::Running,
            "paused" => Status::Paused,
            "stopped" => Status::Stopped,
            _ => Status::Other(s),
        })
    }
}

/// A container as `runc state` / `runc list` describe it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ContainerState {
    /// The container id.
    pub id: String,
    /// The init process's pid (0 once stopped, for some runtimes).
    #[serde(default)]
    pub pid: u32,
    /// The lifecycle state.
    pub status: Status,
    /// The bundle directory.
    #[serde(default)]
    pub bundle: PathBuf,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
}

/// A command to run in a running container (probes, `kubectl exec`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// The command line.
    pub args: Vec<String>,
    /// Extra environment (`KEY=value`) over the container's.
    pub env: Vec<String>,
    /// Kill the command after this long.
    pub timeout: Option<Duration>,
}

/// What an exec printed and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// The command's exit code (128 + signal if killed by one).
    pub exit_code: i32,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

/// Which runtime a binary is, for the few places they differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Runc,
    Crun,
}

/// An OCI runtime binary and its state directory.
#[derive(Debug)]
pub struct Runtime {
    binary: PathBuf,
    root: PathBuf,
    kind: Kind,
    /// Set when crun must be wrapped: the cgroup2 mount to hide.
    hide_cgroup2: Option<PathBuf>,
    cgroups: CgroupMounts,
    exec_seq: AtomicU64,
}

impl Runtime {
    /// runc with its state under `root` (one root per node agent).
    pub fn runc(root: impl Into<PathBuf>) -> Runtime {
        Runtime::new(RUNC, root)
    }

    /// crun with its state under `root`.
    pub fn crun(root: impl Into<PathBuf>) -> Runtime {
        Runtime::new(CRUN, root)
    }

    /// `binary` (a path or a name on PATH; runc-compatible, crun detected
    /// by name) with its state under `root`.
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Runtime {
        let binary = binary.into();
        let kind = if binary
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("crun"))
        {
            Kind::Crun
        } else {
            Kind::Runc
        };
        let cgroups = CgroupMounts::detect().unwrap_or_default();
        let hide_cgroup2 = match kind {
            Kind::Crun if cgroups.is_hybrid() => cgroups.v2.clone(),
            _ => None,
        };
        Runtime {
            binary,
            root: root.into(),
            kind,
            hide_cgroup2,
            cgroups,
            exec_seq: AtomicU64::new(0),
        }
    }

    /// The runtime binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The runtime's state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host's cgroup hierarchies, as detected when this was built.
    pub fn cgroups(&self) -> &CgroupMounts {
        &self.cgroups
    }

    pub(crate) fn name(&self) -> String {
        self.binary.to_string_lossy().into_owned()
    }

    /// A runtime command; with crun on a hybrid host, wrapped so crun sees
    /// cgroup v1 only, joining `cgroup2_dir` first.
    pub(crate) fn command(&self, cgroup2_dir: Option<&Path>) -> Command {
        let mut cmd = match &self.hide_cgroup2 {
            Some(mount) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                    .arg(CRUN_HYBRID_WRAPPER)
                    .arg("shoal-crun")
                    .arg(&self.binary)
                    .env("SHOAL_CGROUP2_MOUNT", mount)
                    .env("SHOAL_CGROUP2_DIR", cgroup2_dir.unwrap_or(Path::new("")));
                c
            }
            None => Command::new(&self.binary),
        };
        cmd.arg("--root").arg(&self.root);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// The process name of the helper a failed `crun exec` may leave behind
    /// as a zombie for this process to reap (see
    /// [`crate::exit::reap_stray_helpers`]); none for runc.
    pub(crate) fn stray_helper_comm(&self) -> Option<String> {
        (self.kind == Kind::Crun).then(|| {
            self.binary
                .file_name()
                .map(|n| n.to_string_lossy().chars().take(15).collect())
                .unwrap_or_default()
        })
    }

    /// Global flags sending the runtime's own log to `path` as JSON.
    pub(crate) fn log_args(&self, cmd: &mut Command, path: &Path) {
        match self.kind {
            Kind::Runc => {
                cmd.arg("--log").arg(path).args(["--log-format", "json"]);
            }
            Kind::Crun => {
                let mut flag = std::ffi::OsString::from("--log=file:");
                flag.push(path);
                cmd.arg(flag).arg("--log-format=json");
            }
        }
    }

    /// The container's cgroup2 directory, from its bundle's cgroupsPath.
    pub(crate) fn cgroup2_dir(&self, bundle: &Bundle) -> Option<PathBuf> {
        self.hide_cgroup2.as_ref()?;
        let config = bundle.config().ok()?;
        let path = config.linux().as_ref()?.cgroups_path().clone()?;
        self.cgroups.v2_dir(&path.to_string_lossy())
    }

    /// Runs a command that prints nothing useful, mapping failures.
    async fn run(&self, mut cmd: Command, verb: &str, id: &str) -> Result<Vec<u8>, RuntimeError> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = cmd.output().await.map_err(|source| RuntimeError::Spawn {
            binary: self.name(),
            source,
        })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(self.failure(verb, id, &String::from_utf8_lossy(&out.stderr)))
    }

    pub(crate) fn failure(&self, verb: &str, id: &str, message: &str) -> RuntimeError {
        let message = clean_message(message);
        let lower = message.to_lowercase();
        let missing = lower.contains("does not exist")
            || (lower.contains("no such file or directory") && lower.contains("status"));
        if verb == "create" {
            RuntimeError::Failed {
                command: format!("{} {verb}", self.name()),
                id: id.to_owned(),
                message,
            }
        } else if missing {
            RuntimeError::NotFound {
                id: id.to_owned(),
                runtime: self.name(),
                root: self.root.clone(),
            }
        } else if lower.contains("not running") || lower.contains("stopped container") {
            RuntimeError::NotRunning {
                id: id.to_owned(),
                message,
            }
        } else {
            RuntimeError::Failed {
                command: format!("{} {verb}", self.name()),
                id: id.to_owned(),
                message,
            }
        }
    }

    /// Creates container `id` from `bundle`, its stdout and stderr appended
    /// to `log_path` (created if missing). The container waits for
    /// [`Runtime::start`]. Returns its init pid: with the agent a child
    /// subreaper, the init becomes the agent's child when the runtime exits,
    /// so [`crate::ExitWatcher`] can wait for it.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Bundle,
        log_path: &Path,
    ) -> Result<u32, RuntimeError> {
        self.create_with_stdio(
            id,
            bundle,
            log_path,
            ContainerStdio::default(),
            &Consoles::new(),
        )
        .await
    }

    /// [`Runtime::create`] for a container whose spec asks for a stdin or
    /// a terminal (`stdio`): the stdin FIFO or the terminal's master is
    /// kept in `consoles` for attach sessions, and a terminal's output is
    /// copied to `log_path`. The bundle's config must ask for a terminal
    /// exactly when `stdio.tty` does.
    pub async fn create_with_stdio(
        &self,
        id: &str,
        bundle: &Bundle,
        log_path: &Path,
        stdio: ContainerStdio,
        consoles: &Consoles,
    ) -> Result<u32, RuntimeError> {
        if let Some(dir) = log_path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(io_err("creating the log directory", dir))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(io_err("opening the container log", log_path))?;
        let log2 = log.try_clone().map_err(io_err("duplicating", log_path))?;
        let runtime_log = bundle.dir().join("runtime.log");
        let pid_file = bundle.dir().join("init.pid");
        let _ = tokio::fs::remove_file(&runtime_log).await;
        let _ = tokio::fs::remove_file(&pid_file).await;
        let cgroup2 = self.cgroup2_dir(bundle);
        let mut cmd = self.command(cgroup2.as_deref());
        self.log_args(&mut cmd, &runtime_log);
        cmd.arg("create")
            .arg("--bundle")
            .arg(bundle.dir())
            .arg("--pid-file")
            .arg(&pid_file);
        let mut socket = None;
        let mut writer = None;
        if stdio.tty {
            let s = console::ConsoleSocket::bind()
                .map_err(io_err("binding a console socket for", bundle.dir()))?;
            cmd.arg("--console-socket").arg(s.path());
            socket = Some(s);
        } else if stdio.stdin {
            let fifo = bundle.dir().join(console::STDIN_FIFO);
            let prepared = console::prepare_fifo(bundle.dir(), stdio.stdin_once)
                .map_err(io_err("making the stdin FIFO", &fifo))?;
            cmd.stdin(Stdio::from(prepared.stdin));
            writer = prepared.writer;
        }
        let tty_log = match &socket {
            Some(_) => Some(log.try_clone().map_err(io_err("duplicating", log_path))?),
            None => None,
        };
        cmd.arg(id)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let mut child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
            binary: self.name(),
            source,
        })?;
        // runc sends the terminal's master while it creates the container.
        let (status, master) = match &socket {
            Some(socket) => {
                let first = tokio::select! {
                    fd = socket.receive(Duration::from_secs(60)) => Err(fd),
                    status = child.wait() => Ok(status),
                };
                match first {
                    Err(fd) => (child.wait().await, Some(fd)),
                    Ok(status) => {
                        let fd = match &status {
                            Ok(s) if s.success() => {
                                Some(socket.receive(Duration::from_secs(1)).await)
                            }
                            _ => None,
                        };
                        (status, fd)
                    }
                }
            }
            None => (child.wait().await, None),
        };
        let status = status.map_err(|source| RuntimeError::Spawn {
            binary: self.name(),
            source,
        })?;
        if !status.success() {
            let log = tokio::fs::read_to_string(&runtime_log)
                .await
                .unwrap_or_default();
            let message = json_log_error(&log)
                .unwrap_or_else(|| format!("exited with {status}; see {}", log_path.display()));
            return Err(self.failure("create", id, &message));
        }
        let pid = tokio::fs::read_to_string(&pid_file)
            .await
            .map_err(io_err("reading the pid file", &pid_file))?;
        let pid = pid.trim().parse().map_err(|_| RuntimeError::Failed {
            command: format!("{} create", self.name()),
            id: id.to_owned(),
            message: format!("the pid file {} holds {pid:?}", pid_file.display()),
        })?;
        if let Some(writer) = writer {
            console::hold_writer(consoles, id, writer);
        }
        if let (Some(_), Some(log)) = (&socket, tty_log) {
            let master = master
                .unwrap_or_else(|| Err(std::io::Error::other("runc sent no terminal")))
                .map_err(io_err("receiving the terminal of", bundle.dir()))?;
            console::hold_terminal(consoles, id, bundle.dir(), master, stdio, log)
                .map_err(io_err("holding the terminal of", bundle.dir()))?;
        }
        Ok(pid)
    }

    /// Starts the created container's process.
    pub async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut cmd = self.command(None);
        cmd.arg("start").arg(id);
        self.run(cmd, "start", id).await.map(drop)
    }

    /// The container's state.
    pub async fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let mut cmd = self.command(None);
        cmd.arg("state").arg(id);
        let out = self.run(cmd, "state", id).await?;
        serde_json::from_slice(&out).map_err(|source| RuntimeError::Parse {
            command: format!("{} state {id}", self.name()),
            source,
        })
    }

    /// Every container in this runtime's root.
    pub async fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        let mut cmd = self.command(None);
        cmd.args(["list", "--format", "json"]);
        let out = self.run(cmd, "list", "").await?;
        let list: Option<Vec<ContainerState>> =
            serde_json::from_slice(&out).map_err(|source| RuntimeError::Parse {
                command: format!("{} list", self.name()),
                source,
            })?;
        Ok(list.unwrap_or_default())
    }

    /// Sends `signal` to the container's init process. A process running
    /// as PID 1 ignores signals it has no handler for (SIGTERM included):
    /// stopping escalates to SIGKILL after the grace period.
    pub async fn kill(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        let mut cmd = self.command(None);
        cmd.arg("kill").arg(id).arg((signal as i32).to_string());
        self.run(cmd, "kill", id).await.map(drop)
    }

    /// Deletes the container from the runtime (its cgroup goes with it);
    /// `force` kills it first if it is still running. The bundle stays.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let cgroup2 = match self.hide_cgroup2 {
            Some(_) => self
                .state(id)
                .await
                .ok()
                .and_then(|s| self.cgroup2_dir(&Bundle::open(&s.bundle))),
            None => None,
        };
        let mut cmd = self.command(None);
        cmd.arg("delete");
        if force {
            cmd.arg("--force");
        }
        cmd.arg(id);
        self.run(cmd, "delete", id).await?;
        // crun does not know about the cgroup2 directory the wrapper made.
        if let Some(dir) = cgroup2 {
            let _ = tokio::fs::remove_dir(&dir).await;
        }
        Ok(())
    }

    /// Runs a command in the running container as its own process runs
    /// (user, capabilities, cwd, environment plus `request.env`), without
    /// a terminal, and collects its output.
    pub async fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecOutput, RuntimeError> {
        let prepared = self.prepare_exec(id, request, false).await?;
        let result = self
            .exec_process(
                id,
                &prepared.bundle,
                &prepared.process_path,
                &prepared.pid_path,
                &prepared.log_path,
                request.timeout,
            )
            .await;
        prepared.remove().await;
        result
    }

    /// Writes the process description of an exec in the container: its
    /// own process's user, capabilities, cwd and environment plus
    /// `request.env`, running `request.args`, with a terminal or not.
    pub(crate) async fn prepare_exec(
        &self,
        id: &str,
        request: &ExecRequest,
        terminal: bool,
    ) -> Result<PreparedExec, RuntimeError> {
        if request.args.is_empty() {
            return Err(RuntimeError::Failed {
                command: format!("{} exec", self.name()),
                id: id.to_owned(),
                message: "no command given".into(),
            });
        }
        let state = self.state(id).await?;
        if state.status != Status::Running {
            return Err(RuntimeError::NotRunning {
                id: id.to_owned(),
                message: format!("its state is {:?}", state.status),
            });
        }
        let bundle = Bundle::open(&state.bundle);
        let config = bundle.config()?;
        let mut process = config.process().clone().unwrap_or_default();
        process.set_args(Some(request.args.clone()));
        process.set_terminal(Some(terminal));
        let mut env = process.env().clone().unwrap_or_default();
        for kv in &request.env {
            let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
            env.push(kv.clone());
        }
        if terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
            // What the kubelet's runtimes set for a terminal.
            env.push("TERM=xterm".into());
        }
        process.set_env(Some(env));

        let n = self.exec_seq.fetch_add(1, Ordering::Relaxed);
        let base = bundle
            .dir()
            .join(format!("exec-{}-{n}", std::process::id()));
        let prepared = PreparedExec {
            process_path: base.with_extension("json"),
            pid_path: base.with_extension("pid"),
            log_path: base.with_extension("log"),
            bundle,
        };
        let data = serde_json::to_vec(&process).map_err(|source| RuntimeError::Parse {
            command: format!("{} exec {id}", self.name()),
            source,
        })?;
        tokio::fs::write(&prepared.process_path, data)
            .await
            .map_err(io_err("writing", &prepared.process_path))?;
        Ok(prepared)
    }

    async fn exec_process(
        &self,
        id: &str,
        bundle: &Bundle,
        process_path: &Path,
        pid_path: &Path,
        log_path: &Path,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        let cgroup2 = self.cgroup2_dir(bundle);
        let mut cmd = self.command(cgroup2.as_deref());
        self.log_args(&mut cmd, log_path);
        cmd.arg("exec")
            .arg("--process")
            .arg(process_path)
            .arg("--pid-file")
            .arg(pid_path)
            .arg(id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
            binary: self.name(),
            source,
        })?;
        let pid_of_runtime = child.id();
        let wait = child.wait_with_output();
        tokio::pin!(wait);
        let out = match timeout {
            None => wait.await,
            Some(t) => match tokio::time::timeout(t, &mut wait).await {
                Ok(out) => out,
                Err(_) => {
                    // Kill the command itself: the runtime waits for it and
                    // then exits, leaving no orphan behind.
                    if let Ok(pid) = tokio::fs::read_to_string(pid_path).await
                        && let Ok(pid) = pid.trim().parse::<i32>()
                    {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            Signal::SIGKILL,
                        );
                    } else if let Some(pid) = pid_of_runtime {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            Signal::SIGKILL,
                        );
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(5), &mut wait).await;
                    return Err(RuntimeError::ExecTimeout {
                        id: id.to_owned(),
                        timeout: t,
                    });
                }
            },
        };
        let out = out.map_err(|source| RuntimeError::Spawn {
            binary: self.name(),
            source,
        })?;
        let code = out.status.code().unwrap_or(-1);
        if code != 0
            && let Some(comm) = self.stray_helper_comm()
        {
            crate::exit::reap_stray_helpers(&comm);
        }
        // runc and crun exit 255 when they could not start the command; the
        // reason is in their log.
        if code == 255 || code == -1 {
            let log = tokio::fs::read_to_string(log_path)
                .await
                .unwrap_or_default();
            if let Some(message) = json_log_error(&log) {
                return Err(self.failure("exec", id, &message));
            }
        }
        Ok(ExecOutput {
            exit_code: code,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

/// The files of one exec: its process description, the pid file and the
/// runtime's log, next to the container's bundle.
pub(crate) struct PreparedExec {
    pub(crate) bundle: Bundle,
    pub(crate) process_path: PathBuf,
    pub(crate) pid_path: PathBuf,
    pub(crate) log_path: PathBuf,
}

impl PreparedExec {
    /// Removes the files.
    pub(crate) async fn remove(&self) {
        for p in [&self.process_path, &self.pid_path, &self.log_path] {
            let _ = tokio::fs::remove_file(p).await;
        }
    }
}

/// The last error in a runtime's JSON log (`{"level":"error","msg":...}`).
pub(crate) fn json_log_error(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error" || v["level"] == "fatal")
        .filter_map(|v| v["msg"].as_str().map(str::to_owned))
        .next_back()
}

/// runc prints logrus lines (`time="..." level=error msg="..."`); keep the
/// message.
fn clean_message(stderr: &str) -> String {
    let lines: Vec<String> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| match l.find("msg=\"") {
            Some(i) => l[i + 5..].trim_end_matches('"').replace("\\\"", "\""),
            None => l.to_owned(),
        })
        .collect();
    let mut unique: Vec<String> = Vec::new();
    for l in lines {
        if !unique.contains(&l) {
            unique.push(l);
        }
    }
    unique.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_messages_are_cleaned() {
        assert_eq!(
            clean_message(
                "time=\"2026-11-23T15:29:17Z\" level=error msg=\"container does not exist\"\n"
            ),
            "container does not exist"
        );
        assert_eq!(
            json_log_error(
                "{\"level\":\"info\",\"msg\":\"x\"}\n{\"level\":\"error\",\"msg\":\"exec failed: \\\"nope\\\"\"}\n"
            )
            .as_deref(),
            Some("exec failed: \"nope\"")
        );
        let rt = Runtime::runc("/run/x");
        assert!(matches!(
            rt.failure("state", "c", "container does not exist"),
            RuntimeError::NotFound { .. }
        ));
        assert!(matches!(
            rt.failure(
                "exec",
                "c",
                "exec failed: cannot exec in a stopped container"
            ),
            RuntimeError::NotRunning { .. }
        ));
        assert!(matches!(
            rt.failure(
                "state",
                "c",
                "error opening file `/r/c/status`: No such file or directory"
            ),
            RuntimeError::NotFound { .. }
        ));
        assert!(matches!(
            rt.failure("create", "c", "rootfs does not exist"),
            RuntimeError::Failed { .. }
        ));
    }
}
