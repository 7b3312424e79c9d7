//! Running the `probe` test binary (tests/src/bin/probe.rs) inside lab
//! hosts: servers that name themselves, and clients that report in JSON.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Error, Host, Result, WAIT};

/// How long a client probe may run beyond its own timeout before it is
/// killed as hung.
const GRACE: Duration = Duration::from_secs(10);

/// The `probe` binary; tests get its path from `env!("CARGO_BIN_EXE_probe")`.
#[derive(Debug, Clone)]
pub struct Probe {
    path: PathBuf,
}

impl Probe {
    /// The probe at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Probe {
        Probe { path: path.into() }
    }

    /// Starts `probe serve --name NAME` on `host`, listening on every `tcp`
    /// and `udp` address; returns once all of them are bound. The server
    /// is killed when the returned handle is dropped.
    pub fn serve(
        &self,
        host: &Host,
        name: &str,
        tcp: &[SocketAddr],
        udp: &[SocketAddr],
    ) -> Result<ProbeServer> {
        let mut command = host.command(&self.path)?;
        command.args(["serve", "--name", name]);
        for addr in tcp {
            command.arg("--tcp").arg(addr.to_string());
        }
        for addr in udp {
            command.arg("--udp").arg(addr.to_string());
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                command: format!(
                    "{} serve --name {name} (on {})",
                    self.path.display(),
                    host.name()
                ),
                source,
            })?;
        let stdout = child.stdout.take();
        let server = ProbeServer {
            host: host.name().to_owned(),
            name: name.to_owned(),
            pid: child.id(),
            child,
        };
        let (tx, rx) = mpsc::channel();
        let Some(stdout) = stdout else {
            return Err(server.error("stdout was not captured".to_owned()));
        };
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(WAIT) {
            Ok(Some(Ok(line)))
                if serde_json::from_str::<Value>(&line).is_ok_and(|v| v["ready"] == true) =>
            {
                Ok(server)
            }
            Ok(Some(Ok(line))) => {
                Err(server.error(format!("expected {{\"ready\":true}}, got {line:?}")))
            }
            Ok(_) => {
                Err(server.error("exited before it was ready (see its stderr above)".to_owned()))
            }
            Err(_) => Err(server.error(format!("not ready after {} s", WAIT.as_secs()))),
        }
    }

    /// Runs `probe ARGS...` on `host` and returns the JSON object on the
    /// last line it printed, whether it exited 0 or 1 (`{"ok":false,...}`).
    /// `timeout` is how long the probe itself may take; one that runs
    /// 10 s longer is killed and reported.
    pub fn run(&self, host: &Host, args: &[&str], timeout: Duration) -> Result<Value> {
        let line = format!("probe {} (on {})", args.join(" "), host.name());
        let mut child = host
            .command(&self.path)?
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                command: line.clone(),
                source,
            })?;
        let probe_error = |message: String| Error::Probe {
            host: host.name().to_owned(),
            message: format!("`{line}`: {message}"),
        };
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > timeout + GRACE => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(probe_error(format!(
                        "still running after {:?}; killed",
                        timeout + GRACE
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => return Err(probe_error(format!("waiting for it: {e}"))),
            }
        };
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).map_err(|e| {
            probe_error(format!(
                "exited with {status} without a JSON line ({e}); stdout {stdout:?}, stderr {stderr:?}"
            ))
        })
    }

    /// `probe tcp ADDR --timeout-ms T` on `host`.
    pub fn tcp(&self, host: &Host, addr: SocketAddr, timeout: Duration) -> Result<Value> {
        let (addr, ms) = (addr.to_string(), timeout.as_millis().to_string());
        self.run(host, &["tcp", &addr, "--timeout-ms", &ms], timeout)
    }

    /// `probe udp ADDR --timeout-ms T` on `host` (unconnected socket).
    pub fn udp(&self, host: &Host, addr: SocketAddr, timeout: Duration) -> Result<Value> {
        let (addr, ms) = (addr.to_string(), timeout.as_millis().to_string());
        self.run(host, &["udp", &addr, "--timeout-ms", &ms], timeout)
    }
}

/// A running `probe serve`; killed (and reaped) on drop.
#[derive(Debug)]
pub struct ProbeServer {
    child: Child,
    host: String,
    name: String,
    pid: u32,
}

impl ProbeServer {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name it answers with (the first word of every reply).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn error(&self, message: String) -> Error {
        Error::Probe {
            host: self.host.clone(),
            message: format!("server {:?}: {message}", self.name),
        }
    }
}

impl Drop for ProbeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
