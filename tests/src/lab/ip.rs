//! iproute2's `ip`, run in batch mode so a host is wired by one process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{Error, Result};

/// Where `ip` is looked for after PATH (root's usual sbin directories are
/// often missing from a non-login PATH).
const FALLBACKS: [&str; 3] = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"];

/// The `ip` program.
#[derive(Debug, Clone)]
pub(super) struct Ip {
    path: PathBuf,
}

impl Ip {
    pub(super) fn find() -> Result<Ip> {
        let in_path = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("ip"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        in_path
            .into_iter()
            .chain(FALLBACKS.iter().map(PathBuf::from))
            .find(|p| is_executable(p))
            .map(|path| Ip { path })
            .ok_or(Error::IpMissing)
    }

    /// Runs `lines` as one `ip [-n netns] -b -` batch; stops at the first
    /// failing line.
    pub(super) fn batch(&self, netns: Option<&str>, lines: &[String]) -> Result<()> {
        self.spawn(netns, false, lines)?.wait()
    }

    /// Like [`Ip::batch`] but `-force`: every line is tried.
    pub(super) fn batch_force(&self, netns: Option<&str>, lines: &[String]) -> Result<()> {
        self.spawn(netns, true, lines)?.wait()
    }

    /// Starts a batch; [`Batch::wait`] reports how it ended.
    pub(super) fn spawn_batch(&self, netns: Option<&str>, lines: &[String]) -> Result<Batch> {
        self.spawn(netns, false, lines)
    }

    fn spawn(&self, netns: Option<&str>, force: bool, lines: &[String]) -> Result<Batch> {
        let mut command = Command::new(&self.path);
        if let Some(netns) = netns {
            command.args(["-n", netns]);
        }
        if force {
            command.arg("-force");
        }
        command.args(["-b", "-"]);
        let line = format!("{} {}", self.path.display(), command_args(&command));
        let spawn_error = |source| Error::Spawn {
            command: line.clone(),
            source,
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        let mut script = lines.join("\n");
        script.push('\n');
        // A few hundred bytes: fits the pipe, so this cannot block on ip.
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).map_err(spawn_error)?;
        }
        Ok(Batch {
            child,
            command: line,
            lines: lines.to_vec(),
        })
    }
}

/// A running `ip -b -`.
#[derive(Debug)]
pub(super) struct Batch {
    child: Child,
    command: String,
    lines: Vec<String>,
}

impl Batch {
    /// Waits for it; a failure names the command line and, where ip says
    /// which (`Command failed -:N`), the batch line that failed.
    pub(super) fn wait(self) -> Result<()> {
        let output = self
            .child
            .wait_with_output()
            .map_err(|source| Error::Spawn {
                command: self.command.clone(),
                source,
            })?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        let failed: Vec<&str> = stderr
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Command failed -:"))
            .filter_map(|n| n.trim().parse::<usize>().ok())
            .filter_map(|n| self.lines.get(n.checked_sub(1)?).map(String::as_str))
            .collect();
        let command = if failed.is_empty() {
            format!("{} <<< {:?}", self.command, self.lines.join("; "))
        } else {
            format!("{} <<< {:?}", self.command, failed.join("; "))
        };
        Err(Error::Command {
            command,
            status: output.status,
            stderr,
        })
    }
}

fn command_args(command: &Command) -> String {
    command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
