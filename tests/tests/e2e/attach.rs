//! `kubectl attach -i/-t`, `kubectl run -i --rm` and `kubectl debug -i
//! --target`: containers whose spec asks for a stdin (and a terminal) get
//! one the agent keeps, driven by real kubectl in a one-node lab cluster.

use std::{
    io::{Read as _, Write as _},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::ready;
use shoal_e2e::{
    cluster::{ClusterConfig, KUBECTL, LabCluster},
    lab::Lab,
};

const WAIT: Duration = Duration::from_secs(60);

fn wait_running(c: &mut LabCluster, name: &str) -> Result<Value> {
    c.wait_for(&format!("pod {name} Running and Ready"), WAIT, |c| {
        let out = c.kubectl_ok(&["get", "pod", name, "-o", "json"], None)?;
        let pod: Value = serde_json::from_str(&out)?;
        Ok((pod["status"]["phase"] == "Running" && ready(&pod)).then_some(pod))
    })
}

/// A command run interactively in node-1's host: its stdin held open, its
/// stdout read as it comes.
struct Session {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    output: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Session {
    /// kubectl `args` (with the admin kubeconfig), or, with `terminal`,
    /// the same under `script` so kubectl sees a terminal.
    fn start(c: &LabCluster, args: &[&str], terminal: bool) -> Result<Session> {
        let cache = c.kubeconfig.with_file_name("kubectl-attach-cache");
        let mut kubectl = vec![
            KUBECTL.to_owned(),
            "--kubeconfig".to_owned(),
            c.kubeconfig.display().to_string(),
            "--cache-dir".to_owned(),
            cache.display().to_string(),
        ];
        kubectl.extend(args.iter().map(|a| (*a).to_owned()));
        let mut cmd = if terminal {
            let mut cmd = c.host(0).command("script")?;
            cmd.args(["-qfec", &kubectl.join(" "), "/dev/null"]);
            cmd
        } else {
            let mut cmd = c.host(0).command(&kubectl[0])?;
            cmd.args(&kubectl[1..]);
            cmd
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("running {kubectl:?}"))?;
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().context("kubectl's stdout")?;
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Ok(Session {
            child,
            stdin,
            output,
            seen: Vec::new(),
        })
    }

    fn send(&mut self, text: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        if let Err(e) = stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
        {
            while let Ok(data) = self.output.recv_timeout(Duration::from_secs(1)) {
                self.seen.extend_from_slice(&data);
            }
            bail!(
                "writing {text:?} to kubectl: {e}; it printed {:?}",
                String::from_utf8_lossy(&self.seen)
            );
        }
        Ok(())
    }

    /// Reads output until it contains `needle`.
    fn expect(&mut self, needle: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if String::from_utf8_lossy(&self.seen).contains(needle) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{needle:?} not in the output within {limit:?}: {:?}",
                    String::from_utf8_lossy(&self.seen)
                );
            }
            match self.output.recv_timeout(left) {
                Ok(data) => self.seen.extend_from_slice(&data),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "the output ended without {needle:?}: {:?}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    /// Closes stdin and waits for the command to end on its own.
    fn finish(mut self, limit: Duration) -> Result<String> {
        drop(self.stdin.take());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                while let Ok(data) = self.output.recv_timeout(Duration::from_secs(1)) {
                    self.seen.extend_from_slice(&data);
                }
                let out = String::from_utf8_lossy(&self.seen).into_owned();
                ensure!(status.success(), "kubectl exited with {status}: {out:?}");
                return Ok(out);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "kubectl did not end within {limit:?}: {:?}",
                    String::from_utf8_lossy(&self.seen)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn attach_gives_containers_stdin_and_terminals() -> Result<()> {
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    let mut cfg = ClusterConfig::new(&Lab::unique_prefix(), 1, &dir)?;
    cfg.backoff_seconds = 1;
    let mut c = LabCluster::start(cfg)?;

    // kubectl run -i --rm: stdin (stdinOnce) reaches the container, which
    // reads to the end of it; its output comes back and the pod is gone.
    let out = c.kubectl_ok(
        &[
            "run",
            "-i",
            "--rm",
            "--restart=Never",
            "--image=busybox",
            "once",
            "--",
            "sh",
            "-c",
            "read l; echo got:$l; cat; echo eof-seen",
        ],
        Some("hello\nmore\n"),
    )?;
    ensure!(
        out.contains("got:hello") && out.contains("more") && out.contains("eof-seen"),
        "kubectl run -i --rm fed 'hello' should print got:hello, the rest and eof-seen: {out:?}"
    );
    c.wait_for("pod once deleted by --rm", WAIT, |c| {
        let out = c.kubectl(&["get", "pod", "once"], None)?;
        Ok((!out.status.success()).then_some(()))
    })?;

    // A stdin: true pod (stdinOnce false): every attach session writes to
    // the same stdin, which stays open when a session ends; the output
    // also reaches kubectl logs.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: echo}
spec:
  containers:
  - name: cat
    image: busybox
    command: ["cat"]
    stdin: true
"#,
    )?;
    wait_running(&mut c, "echo")?;
    for round in ["ping-1", "ping-2"] {
        let mut s = Session::start(&c, &["attach", "-i", "echo"], false)?;
        // The session is ready once kubectl is attached; send until the
        // first line comes back (input before that would be lost output).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            s.send(&format!("{round}\n"))?;
            if s.expect(round, Duration::from_secs(2)).is_ok() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "kubectl attach -i echo never echoed {round}"
            );
        }
    }
    let pod = wait_running(&mut c, "echo")?;
    ensure!(
        pod["status"]["containerStatuses"][0]["restartCount"] == 0,
        "the cat container should still run its first attempt: {}",
        pod["status"]
    );
    let logs = c.kubectl_ok(&["logs", "echo"], None)?;
    ensure!(
        logs.contains("ping-1") && logs.contains("ping-2"),
        "kubectl logs echo: {logs:?}"
    );

    // A tty: true pod: kubectl attach -it (under script, so kubectl has a
    // terminal) drives a shell on the container's terminal; what it prints
    // is in kubectl logs too.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: term}
spec:
  containers:
  - name: sh
    image: busybox
    command: ["sh"]
    stdin: true
    tty: true
"#,
    )?;
    wait_running(&mut c, "term")?;
    let mut s = Session::start(&c, &["attach", "-it", "term"], true)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The terminal echoes the input: only computed values prove output.
        s.send("echo tty:$((6*7)); test -t 0 && echo on-a-$((1+1))-tty\n")?;
        if s.expect("on-a-2-tty", Duration::from_secs(2)).is_ok() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "kubectl attach -it term never answered"
        );
    }
    s.expect("tty:42", Duration::from_secs(5))?;
    drop(s);
    let logs = c.kubectl_ok(&["logs", "term"], None)?;
    ensure!(
        logs.contains("tty:42") && logs.contains("on-a-2-tty"),
        "kubectl logs term should show the terminal's output: {logs:?}"
    );

    // The terminal outlives an agent restart: the shell is not hung up,
    // the restarted agent attaches to it again and logs its output.
    c.kill_agent(0)?;
    c.start_agent(0)?;
    c.wait_ready_nodes(WAIT)?;
    // Until the agent has adopted the pod, attach is refused: try again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answered = false;
    let mut last = String::new();
    while !answered && Instant::now() < deadline {
        let mut s = Session::start(&c, &["attach", "-it", "term"], true)?;
        for _ in 0..5 {
            if let Err(e) = s.send("echo again:$((5*5))\n") {
                last = format!("{e:#}");
                break;
            }
            if s.expect("again:25", Duration::from_secs(2)).is_ok() {
                answered = true;
                break;
            }
        }
    }
    ensure!(
        answered,
        "kubectl attach -it term after the agent's restart never answered: {last}"
    );
    let pod = wait_running(&mut c, "term")?;
    ensure!(
        pod["status"]["containerStatuses"][0]["restartCount"] == 0,
        "the terminal's shell should have survived the agent's restart: {}",
        pod["status"]
    );
    c.wait_for("kubectl logs term after the restart", WAIT, |c| {
        let logs = c.kubectl_ok(&["logs", "term"], None)?;
        Ok(logs.contains("again:25").then_some(()))
    })?;

    // kubectl run -it --rm: a shell on a terminal until it exits.
    let s = Session::start(
        &c,
        &[
            "run",
            "-it",
            "--rm",
            "--restart=Never",
            "--image=busybox",
            "shell",
            "--",
            "sh",
        ],
        true,
    )?;
    let mut s = s;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        s.send("echo run:$((7*7))\n")?;
        if s.expect("run:49", Duration::from_secs(2)).is_ok() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "kubectl run -it shell never answered"
        );
    }
    s.send("exit\n")?;
    s.finish(Duration::from_secs(30))?;
    c.wait_for("pod shell deleted by --rm", WAIT, |c| {
        let out = c.kubectl(&["get", "pod", "shell"], None)?;
        Ok((!out.status.success()).then_some(()))
    })?;

    // kubectl debug -i --target: the ephemeral container joins the
    // target's PID namespace (ps shows the target's process) and reads
    // the session's stdin.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sleep", "31337"]
"#,
    )?;
    wait_running(&mut c, "app")?;
    let out = c.kubectl_ok(
        &[
            "debug",
            "-i",
            "app",
            "--image=busybox",
            "-c",
            "dbg",
            "--target=main",
            "--",
            "sh",
            "-c",
            "read l; echo got:$l; ps",
        ],
        Some("dbg-input\n"),
    )?;
    ensure!(
        out.contains("got:dbg-input") && out.contains("sleep 31337"),
        "kubectl debug -i --target=main should read its stdin and see the target's sleep: {out:?}"
    );

    // kubectl debug -it: a shell on the ephemeral container's terminal,
    // in the target's process namespace.
    let mut s = Session::start(
        &c,
        &[
            "debug",
            "-it",
            "app",
            "--image=busybox",
            "-c",
            "dbgt",
            "--target=main",
            "--",
            "sh",
        ],
        true,
    )?;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        s.send("echo dbg:$((3*3)); ps\n")?;
        if s.expect("dbg:9", Duration::from_secs(2)).is_ok() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "kubectl debug -it app never answered"
        );
    }
    s.expect("sleep 31337", Duration::from_secs(5))?;
    s.send("exit\n")?;
    s.finish(Duration::from_secs(30))?;
    Ok(())
}
