//! `kubectl logs`, `exec` and `port-forward` through the apiserver to a
//! node agent's streaming server,
//! both in this process on loopback with real TLS: the agent serves log
//! files laid out as the agent writes them, kubectl reads them (`--tail`,
//! `-c`, `--previous`, `-f`), the agent refuses anyone but the apiserver,
//! and the errors are Kubernetes'.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::oneshot,
};

use super::{ControlPlane, KUBECTL, WAIT, free_addr};

/// How long a followed log may take to show an appended line.
const FOLLOW_WAIT: Duration = Duration::from_secs(10);

/// An agent streaming server on loopback, serving the logs under `data`.
struct Agent {
    addr: SocketAddr,
    data: tempfile::TempDir,
    serving_ca: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Agent {
    async fn start(cp: &ControlPlane) -> Result<Self> {
        Self::start_with(cp, |_| {}).await
    }

    /// An agent with `adjust` applied to its configuration.
    async fn start_with(
        cp: &ControlPlane,
        adjust: impl FnOnce(&mut shoal_agent::streaming::Config),
    ) -> Result<Self> {
        let ca = std::fs::read_to_string(cp.dir().join("pki").join(shoal_ca::CA_CERT_FILE))?;
        let data = tempfile::tempdir()?;
        let mut config = shoal_agent::streaming::Config::new("stream-node", data.path(), ca);
        config.listen = "127.0.0.1:0".parse()?;
        adjust(&mut config);
        let server = shoal_agent::streaming::Server::bind(config).await?;
        let addr = server.local_addr().context("the agent has no address")?;
        let serving_ca = server.serving_ca_pem().to_string();
        let (stop, rx) = oneshot::channel::<()>();
        tokio::spawn(server.serve(async {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            data,
            serving_ca,
            stop: Some(stop),
        })
    }

    /// `<data>/logs/<ns>_<pod>_<uid>/<container>/`, created.
    fn container_dir(&self, pod: &str, uid: &str, container: &str) -> Result<PathBuf> {
        let dir = self
            .data
            .path()
            .join("logs")
            .join(format!("default_{pod}_{uid}"))
            .join(container);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A Node whose status points at `addr` as its kubelet endpoint.
async fn node(cp: &ControlPlane, name: &str, addr: SocketAddr) -> Result<()> {
    cp.ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n"
        )),
    )
    .await?;
    let status = serde_json::json!({"status": {
        "addresses": [{"type": "InternalIP", "address": addr.ip().to_string()}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": addr.port()}},
    }});
    patch_status(cp, "node", name, &status).await
}

/// Merges `patch` into the status of `kind/name` (what the agent would
/// post).
async fn patch_status(
    cp: &ControlPlane,
    kind: &str,
    name: &str,
    patch: &serde_json::Value,
) -> Result<()> {
    cp.ok(
        &[
            "patch",
            kind,
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ],
        None,
    )
    .await?;
    Ok(())
}

/// Creates a pod with `containers` on `node` (unschedulable when `None`)
/// and returns its uid.
async fn pod(
    cp: &ControlPlane,
    name: &str,
    node: Option<&str>,
    containers: &[&str],
) -> Result<String> {
    let placement = match node {
        Some(n) => serde_json::json!({"nodeName": n}),
        None => serde_json::json!({"nodeSelector": {"shoal.io/test": "nowhere"}}),
    };
    let mut spec = serde_json::json!({
        "containers": containers
            .iter()
            .map(|c| serde_json::json!({"name": c, "image": "busybox"}))
            .collect::<Vec<_>>(),
    });
    if let (Some(s), Some(p)) = (spec.as_object_mut(), placement.as_object()) {
        s.extend(p.clone());
    }
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    });
    cp.ok(&["apply", "-f", "-"], Some(&manifest.to_string()))
        .await?;
    let uid = cp
        .ok(
            &["get", "pod", name, "-o", "jsonpath={.metadata.uid}"],
            None,
        )
        .await?;
    ensure!(!uid.is_empty(), "pod {name} has no uid");
    Ok(uid)
}

/// Runs kubectl and returns (success, stdout, stderr).
async fn kubectl(cp: &ControlPlane, args: &[&str]) -> Result<(bool, String, String)> {
    let out = cp.kubectl(args, None).await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn append(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_reads_the_agent_log_files_through_the_apiserver() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let agent = Agent::start(&cp).await?;
    node(&cp, "stream-node", agent.addr).await?;

    let uid = pod(&cp, "web", Some("stream-node"), &["app"]).await?;
    let app = agent.container_dir("web", &uid, "app")?;
    std::fs::write(app.join("0.log"), "first run 1\nfirst run 2\n")?;
    std::fs::write(app.join("1.log"), "line 1\nline 2\nline 3\n")?;

    // The current attempt, whole.
    assert_eq!(
        cp.ok(&["logs", "web"], None).await?,
        "line 1\nline 2\nline 3\n"
    );
    // --tail.
    assert_eq!(
        cp.ok(&["logs", "web", "--tail=2"], None).await?,
        "line 2\nline 3\n"
    );
    // --previous: the attempt before.
    assert_eq!(
        cp.ok(&["logs", "web", "--previous"], None).await?,
        "first run 1\nfirst run 2\n"
    );
    // --limit-bytes.
    assert_eq!(
        cp.ok(&["logs", "web", "--limit-bytes=4"], None).await?,
        "line"
    );

    // -c picks a container of a multi-container pod.
    let uid = pod(&cp, "multi", Some("stream-node"), &["a", "b"]).await?;
    std::fs::write(
        agent.container_dir("multi", &uid, "a")?.join("0.log"),
        "from a\n",
    )?;
    std::fs::write(
        agent.container_dir("multi", &uid, "b")?.join("0.log"),
        "from b\n",
    )?;
    assert_eq!(
        cp.ok(&["logs", "multi", "-c", "b"], None).await?,
        "from b\n"
    );
    // Without one, the API answers as Kubernetes does (kubectl itself
    // defaults to the first container, so ask the API directly).
    let (ok, _, err) = kubectl(
        &cp,
        &["get", "--raw", "/api/v1/namespaces/default/pods/multi/log"],
    )
    .await?;
    ensure!(!ok, "a log request without a container succeeded");
    ensure!(
        err.contains("a container name must be specified for pod multi, choose one of: [a b]"),
        "unexpected error: {err}"
    );
    let (ok, _, err) = kubectl(&cp, &["logs", "multi", "-c", "nope"]).await?;
    ensure!(
        !ok && err.contains("container nope is not valid for pod multi"),
        "unexpected answer for an unknown container: {err}"
    );

    // A pod with no previous attempt.
    let (ok, _, err) = kubectl(&cp, &["logs", "multi", "-c", "a", "--previous"]).await?;
    ensure!(
        !ok && err.contains("previous terminated container \"a\" in pod \"multi\" not found"),
        "unexpected answer for --previous without one: {err}"
    );

    cp.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_follow_streams_appended_lines_until_the_attempt_ends() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let agent = Agent::start(&cp).await?;
    node(&cp, "stream-node", agent.addr).await?;
    let uid = pod(&cp, "follow", Some("stream-node"), &["app"]).await?;
    let app = agent.container_dir("follow", &uid, "app")?;
    let log = app.join("0.log");
    std::fs::write(&log, "before\n")?;

    let mut child = tokio::process::Command::new(KUBECTL)
        .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
        .arg(format!(
            "--cache-dir={}",
            cp.dir().join("cache-follow").display()
        ))
        .args(["logs", "-f", "follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {KUBECTL}"))?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut seen = String::new();
    let mut wait_for = async |want: &str, seen: &mut String| -> Result<()> {
        let deadline = tokio::time::Instant::now() + FOLLOW_WAIT;
        let mut buf = [0u8; 4096];
        while !seen.contains(want) {
            let n = tokio::time::timeout_at(deadline, stdout.read(&mut buf))
                .await
                .with_context(|| {
                    format!("kubectl logs -f did not print {want:?}; so far {seen:?}")
                })??;
            if n == 0 {
                bail!("kubectl logs -f ended before {want:?}; it printed {seen:?}");
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Ok(())
    };
    wait_for("before\n", &mut seen).await?;
    append(&log, "after 1\n")?;
    wait_for("after 1\n", &mut seen).await?;
    append(&log, "after 2\n")?;
    wait_for("after 2\n", &mut seen).await?;
    assert_eq!(seen, "before\nafter 1\nafter 2\n");

    // A new attempt starts: the old one is over, and so is the follow.
    append(&log, "last words\n")?;
    std::fs::write(app.join("1.log"), "restarted\n")?;
    let status = tokio::time::timeout(FOLLOW_WAIT, child.wait())
        .await
        .context("kubectl logs -f kept following after the container restarted")??;
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await?;
    seen.push_str(&rest);
    ensure!(status.success(), "kubectl logs -f failed: {status}");
    assert_eq!(seen, "before\nafter 1\nafter 2\nlast words\n");
    cp.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_errors_are_kubernetes_and_the_agent_refuses_other_clients() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let agent = Agent::start(&cp).await?;
    node(&cp, "stream-node", agent.addr).await?;
    let uid = pod(&cp, "web", Some("stream-node"), &["app"]).await?;
    std::fs::write(
        agent.container_dir("web", &uid, "app")?.join("0.log"),
        "secret log line\n",
    )?;

    // Not scheduled: a 400 in Kubernetes' words.
    pod(&cp, "pending", None, &["app"]).await?;
    let (ok, _, err) = kubectl(&cp, &["logs", "pending"]).await?;
    ensure!(!ok, "logs of an unscheduled pod succeeded");
    ensure!(
        err.contains("Error from server (BadRequest)")
            && err.contains("container \"app\" in pod \"pending\" is waiting to start"),
        "unexpected error for an unscheduled pod: {err}"
    );

    // A node whose agent does not answer: a 500 naming the node.
    let closed = free_addr()?;
    node(&cp, "gone-node", closed).await?;
    pod(&cp, "stranded", Some("gone-node"), &["app"]).await?;
    let (ok, _, err) = kubectl(&cp, &["logs", "stranded"]).await?;
    ensure!(
        !ok && err.contains("Error from server (InternalError)")
            && err.contains("node \"gone-node\""),
        "unexpected error for an unreachable node: {err}"
    );

    // Directly at the agent: the apiserver's certificate reads the log...
    let pki = cp.dir().join("pki");
    let cert = |stem: &str| -> Result<shoal_ca::IssuedCert> {
        Ok(shoal_ca::IssuedCert {
            cert_pem: std::fs::read_to_string(pki.join(format!("{stem}.crt")))?,
            key_pem: std::fs::read_to_string(pki.join(format!("{stem}.key")))?,
            ca_pem: std::fs::read_to_string(pki.join(shoal_ca::CA_CERT_FILE))?,
        })
    };
    let path = format!("/containerLogs/default/web/app?podUID={uid}");
    let apiserver = cert(shoal_apiserver::KUBELET_CLIENT_CERT)?;
    let answer = raw_get(&agent, Some(&apiserver), &path).await?;
    ensure!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("secret log line"),
        "the apiserver's certificate was not served: {answer}"
    );
    // ...the cluster admin's certificate (same CA, another user) is refused...
    let admin = cert("admin")?;
    let answer = raw_get(&agent, Some(&admin), &path).await?;
    ensure!(
        answer.starts_with("HTTP/1.1 403") && !answer.contains("secret log line"),
        "the admin's certificate was not refused: {answer}"
    );
    // ...and so is a client without a certificate.
    // An error is the handshake failing, as it should.
    if let Ok(answer) = raw_get(&agent, None, &path).await {
        ensure!(
            !answer.contains("secret log line") && !answer.starts_with("HTTP/1.1 200"),
            "a client without a certificate was served: {answer}"
        );
    }
    cp.stop().await
}

/// Empty cgroups `<parent>/pod-<uid>/<container>` in every hierarchy
/// that accounts memory or CPU (v1 `memory`, `cpuacct`, and cgroup2),
/// removed on drop.
struct PodCgroup {
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    fn make(parent: &str, uid: &str, container: &str) -> Result<Self> {
        let base = Path::new("/sys/fs/cgroup");
        let roots: Vec<PathBuf> = if base.join("cgroup.controllers").exists() {
            vec![base.to_path_buf()]
        } else {
            ["memory", "cpuacct", "cpu,cpuacct", "unified"]
                .iter()
                .map(|d| base.join(d))
                .filter(|p| p.join("cgroup.procs").exists())
                .collect()
        };
        ensure!(
            !roots.is_empty(),
            "no cgroup hierarchy under /sys/fs/cgroup to make a pod cgroup in"
        );
        let rel = format!("{}/pod-{uid}/{container}", parent.trim_start_matches('/'));
        let mut dirs = Vec::new();
        for root in roots {
            let dir = root.join(&rel);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("making the cgroup {} (needs root)", dir.display()))?;
            dirs.push(root.join(parent.trim_start_matches('/')));
        }
        Ok(Self { dirs })
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&e.path());
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        for d in &self.dirs {
            remove(d);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_top_reads_the_agent_summary_through_the_apiserver() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let parent = format!("/shoal-api-test-top-{}", std::process::id());
    let agent = Agent::start_with(&cp, |c| {
        c.cgroup_parent = parent.clone();
        c.housekeeping = Duration::from_secs(1);
    })
    .await?;
    node(&cp, "stream-node", agent.addr).await?;
    let uid = pod(&cp, "web", Some("stream-node"), &["app"]).await?;
    agent.container_dir("web", &uid, "app")?;
    let _cgroup = PodCgroup::make(&parent, &uid, "app")?;

    // The agent samples every second; a rate needs two samples.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (nodes, pods) = loop {
        let (nodes_ok, nodes, _) = kubectl(&cp, &["top", "nodes", "--no-headers"]).await?;
        let (pods_ok, pods, err) =
            kubectl(&cp, &["top", "pods", "--containers", "--no-headers"]).await?;
        if nodes_ok && pods_ok && nodes.contains("stream-node") && pods.contains("app") {
            break (nodes, pods);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "kubectl top: nodes {nodes:?}, pods {pods:?} {err}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let row: Vec<&str> = nodes.split_whitespace().collect();
    ensure!(
        row.first() == Some(&"stream-node")
            && row.get(1).is_some_and(|c| c.ends_with('m'))
            && row.get(2).is_some_and(|m| m.ends_with("Mi")),
        "kubectl top nodes: {nodes}"
    );
    let row: Vec<&str> = pods.split_whitespace().collect();
    ensure!(
        row.get(..3) == Some(&["web", "app", "0m"][..]),
        "kubectl top pods --containers (an empty cgroup uses no CPU): {pods}"
    );

    // Straight at the agent, only the apiserver gets the summary.
    let pki = cp.dir().join("pki");
    let cert = |stem: &str| -> Result<shoal_ca::IssuedCert> {
        Ok(shoal_ca::IssuedCert {
            cert_pem: std::fs::read_to_string(pki.join(format!("{stem}.crt")))?,
            key_pem: std::fs::read_to_string(pki.join(format!("{stem}.key")))?,
            ca_pem: std::fs::read_to_string(pki.join(shoal_ca::CA_CERT_FILE))?,
        })
    };
    let apiserver = cert(shoal_apiserver::KUBELET_CLIENT_CERT)?;
    let answer = raw_get(&agent, Some(&apiserver), "/stats/summary").await?;
    ensure!(
        answer.starts_with("HTTP/1.1 200")
            && answer.contains("\"nodeName\":\"stream-node\"")
            && answer.contains(&format!("\"uid\":\"{uid}\"")),
        "the apiserver's summary: {answer}"
    );
    let answer = raw_get(&agent, Some(&cert("admin")?), "/stats/summary").await?;
    ensure!(
        answer.starts_with("HTTP/1.1 403") && !answer.contains("nodeName"),
        "the admin's certificate was not refused: {answer}"
    );
    cp.stop().await
}

/// A GET over TLS to the agent (trusting its serving certificate) with an
/// optional client certificate; the whole answer as text.
async fn raw_get(
    agent: &Agent,
    client: Option<&shoal_ca::IssuedCert>,
    path: &str,
) -> Result<String> {
    let config = shoal_ca::client_config(&agent.serving_ca, client)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(agent.addr).await?;
    let name = rustls::pki_types::ServerName::IpAddress(agent.addr.ip().into());
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out))
        .await
        .context("the agent did not answer")??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A real runc container (busybox, `sleep`) registered as the current
/// attempt of `container` in pod `pod`, deleted on drop.
struct Container {
    root: PathBuf,
    id: String,
}

impl Container {
    async fn start(agent: &Agent, pod: &str, uid: &str, container: &str) -> Result<Self> {
        Self::start_with(
            agent,
            pod,
            uid,
            container,
            &["/bin/busybox", "sleep", "600"],
            &[],
        )
        .await
    }

    /// A container running `args`, with `files` (path in the rootfs,
    /// contents) written into its rootfs first. The runtime's default spec
    /// gives it a network namespace of its own with loopback up.
    async fn start_with(
        agent: &Agent,
        pod: &str,
        uid: &str,
        container: &str,
        args: &[&str],
        files: &[(&str, &str)],
    ) -> Result<Self> {
        let busybox = Path::new("/bin/busybox");
        ensure!(
            busybox.exists(),
            "/bin/busybox is missing: the exec test runs a busybox container (apt-get install busybox-static)"
        );
        // The agent finds the container by its log's attempt and the
        // runtime's state directory.
        std::fs::write(agent.container_dir(pod, uid, container)?.join("0.log"), "")?;
        let id = format!("{uid}.{container}.0");
        let root = agent.data.path().join("runtime").join("default");
        let bundle = agent.data.path().join("bundles").join(&id);
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin"))?;
        std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh"))?;
        for (path, contents) in files {
            let path = rootfs.join(path.trim_start_matches('/'));
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, contents)?;
        }
        let spec = tokio::process::Command::new(shoal_runtime_binary())
            .arg("spec")
            .arg("--bundle")
            .arg(&bundle)
            .output()
            .await
            .context("running runc spec")?;
        ensure!(
            spec.status.success(),
            "runc spec: {}",
            String::from_utf8_lossy(&spec.stderr)
        );
        let path = bundle.join("config.json");
        let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        config["process"]["terminal"] = serde_json::json!(false);
        config["process"]["args"] = serde_json::json!(args);
        std::fs::write(&path, serde_json::to_vec(&config)?)?;
        let run_log = agent.data.path().join("runc-run.log");
        let run = tokio::process::Command::new(shoal_runtime_binary())
            .arg("--root")
            .arg(&root)
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            // The container writes to its log as the agent's do.
            .stdout(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(agent.container_dir(pod, uid, container)?.join("0.log"))?,
            )
            // A file, not a pipe: the detached container inherits it, and a
            // pipe would stay open as long as the container runs.
            .stderr(std::fs::File::create(&run_log)?)
            .status()
            .await
            .context("running runc run")?;
        ensure!(
            run.success(),
            "runc run: {}",
            std::fs::read_to_string(&run_log).unwrap_or_default()
        );
        Ok(Self { root, id })
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new(shoal_runtime_binary())
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "-f", &self.id])
            .status();
    }
}

fn shoal_runtime_binary() -> &'static str {
    "runc"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_runs_in_the_container_and_returns_its_exit_code() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let agent = Agent::start(&cp).await?;
    node(&cp, "stream-node", agent.addr).await?;
    let uid = pod(&cp, "shell", Some("stream-node"), &["app"]).await?;
    let _container = Container::start(&agent, "shell", &uid, "app").await?;

    let out = cp
        .kubectl(
            &[
                "exec",
                "shell",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
            None,
        )
        .await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err\n"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "kubectl exec's exit code: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Inside the container: its own root (busybox only), not the host's.
    assert_eq!(
        cp.ok(&["exec", "shell", "--", "busybox", "ls", "/bin"], None)
            .await?,
        "busybox\nsh\n"
    );
    cp.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_takes_stdin_and_runs_on_a_terminal_of_the_clients_size() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let agent = Agent::start(&cp).await?;
    node(&cp, "tty-node", agent.addr).await?;
    let uid = pod(&cp, "term", Some("tty-node"), &["app"]).await?;
    let _container = Container::start(&agent, "term", &uid, "app").await?;

    // -i: the client's stdin reaches the command, and its end too (the
    // command's `cat` ends, so it can go on and exit).
    let out = cp
        .kubectl(
            &[
                "exec",
                "-i",
                "term",
                "--",
                "sh",
                "-c",
                "cat; echo done; exit 5",
            ],
            Some("hello\nworld\n"),
        )
        .await?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\nworld\ndone\n",
        "kubectl exec -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(5), "kubectl exec -i's exit code");

    // -t: kubectl on a terminal of 33 rows and 101 columns (script(1)
    // gives it one) runs the command on a terminal of that size.
    let kubectl = format!(
        "{KUBECTL} --kubeconfig={} --cache-dir={}",
        cp.kubeconfig.display(),
        agent.data.path().join("kubectl-cache").display()
    );
    // runc finishes setting the terminal up while the command already
    // runs, so under load the first `stty` may fail ("No child processes",
    // with a plain `runc exec -t` too): ask a few times.
    let line = format!(
        "stty rows 33 cols 101; {kubectl} exec -i -t term -- sh -c 'tty; for i in 1 2 3 4 5 6; do stty size; sleep 0.3; done; exit 6'"
    );
    // script(1) types a NUL into the terminal when its own stdin ends:
    // keep that open.
    let mut script = tokio::process::Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running script(1)")?;
    let _open_stdin = script.stdin.take();
    let out = tokio::time::timeout(WAIT, script.wait_with_output())
        .await
        .context("kubectl exec -it under script(1) did not finish")??;
    let printed = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(
        printed.contains("/dev/pts/"),
        "the command has no terminal: {printed:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("33 101"),
        "the terminal does not have the client's size: {printed:?}"
    );
    assert_eq!(out.status.code(), Some(6), "kubectl exec -it's exit code");
    cp.stop().await
}

/// A running `kubectl port-forward`, stopped on drop.
struct PortForward {
    child: tokio::process::Child,
    stderr: Arc<std::sync::Mutex<String>>,
}

impl PortForward {
    /// Starts `kubectl port-forward <target> <ports...>` and waits until it
    /// says it is forwarding every port.
    async fn start(cp: &ControlPlane, target: &str, ports: &[&str]) -> Result<Self> {
        Self::start_env(cp, target, ports, &[]).await
    }

    /// The same with extra environment (kubectl's feature switches).
    async fn start_env(
        cp: &ControlPlane,
        target: &str,
        ports: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut child = tokio::process::Command::new(KUBECTL)
            .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                cp.dir().join(format!("cache-pf-{target}")).display()
            ))
            .args(["port-forward", "-v=4", "--address", "127.0.0.1", target])
            .args(ports)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("running kubectl port-forward")?;
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let stderr = stderr.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = stderr.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let mut stdout = child.stdout.take().context("no stdout")?;
        let mut seen = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while seen.matches("Forwarding from").count() < ports.len() {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout_at(deadline, stdout.read(&mut buf))
                .await
                .with_context(|| {
                    format!(
                        "kubectl port-forward {target} did not start forwarding: stdout {seen:?}, stderr {:?}",
                        stderr.lock().map(|s| s.clone()).unwrap_or_default()
                    )
                })??;
            if n == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bail!(
                    "kubectl port-forward {target} exited: stdout {seen:?}, stderr {:?}",
                    stderr.lock().map(|s| s.clone()).unwrap_or_default()
                );
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        // Keep draining stdout so kubectl never blocks writing to it.
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while matches!(stdout.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        Ok(Self { child, stderr })
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether kubectl is still running.
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// `GET /` over a new connection to `addr`; the whole answer.
async fn http_get(addr: SocketAddr) -> Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut out))
        .await
        .with_context(|| format!("no answer through {addr}"))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_reaches_a_port_inside_the_pod_network() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let agent = Agent::start(&cp).await?;
    node(&cp, "stream-node", agent.addr).await?;
    let uid = pod(&cp, "web", Some("stream-node"), &["app"]).await?;
    let _container = Container::start_with(
        &agent,
        "web",
        &uid,
        "app",
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
        &[("/www/index.html", "hello from the pod\n")],
    )
    .await?;
    let running = serde_json::json!({"status": {"phase": "Running"}});
    patch_status(&cp, "pod", "web", &running).await?;

    // A port that answers and one where nothing listens in the pod (the
    // container's own loopback: the host's 8080 is not the pod's).
    let (web, closed) = (free_addr()?, free_addr()?);
    let mut pf = PortForward::start(
        &cp,
        "pod/web",
        &[
            &format!("{}:8080", web.port()),
            &format!("{}:9", closed.port()),
        ],
    )
    .await?;
    for attempt in 1..=2 {
        let answer = http_get(web).await?;
        ensure!(
            answer.starts_with("HTTP/1.") && answer.ends_with("hello from the pod\n"),
            "connection {attempt} through the forward: {answer:?} (kubectl: {})",
            pf.stderr()
        );
    }
    // Two connections open at once, each getting its own answer.
    let (a, b) = tokio::join!(http_get(web), http_get(web));
    ensure!(a?.ends_with("hello from the pod\n") && b?.ends_with("hello from the pod\n"));

    // Nothing listens on 9 in the pod: that connection ends with no bytes
    // and kubectl reports the kubelet's error for it.
    let mut tcp = tokio::net::TcpStream::connect(closed).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut out)).await;
    ensure!(out.is_empty(), "bytes from a closed port: {out:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !pf.stderr().contains("error forwarding port 9 to pod web") {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "kubectl did not report the refused connection: {}",
            pf.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        pf.stderr().contains("connection refused"),
        "kubectl's error: {}",
        pf.stderr()
    );
    // kubectl 1.32 tunnels SPDY in WebSocket messages by default, and did
    // here without falling back to a plain SPDY upgrade.
    ensure!(
        pf.stderr()
            .contains("negotiated protocol: portforward.k8s.io")
            && !pf.stderr().contains("fallback"),
        "kubectl did not use the WebSocket tunnel: {}",
        pf.stderr()
    );
    // kubectl 1.32 itself closes the whole forward after an error on one
    // connection (as against a kubelet): it exits saying so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pf.running() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "kubectl kept running after the refused connection: {}",
            pf.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        pf.stderr().contains("lost connection to pod"),
        "{}",
        pf.stderr()
    );
    drop(pf);

    // kubectl resolves a service to one of its pods itself.
    cp.ok(&["label", "pod", "web", "app=web"], None).await?;
    cp.ok(
        &["create", "service", "clusterip", "web", "--tcp=80:8080"],
        None,
    )
    .await?;
    let via_service = free_addr()?;
    // kubectl resolves a service to one of its pods itself; this one speaks
    // plain SPDY/3.1 (kubectl's WebSocket tunnel switched off), as kubectl
    // before 1.31 does.
    let pf = PortForward::start_env(
        &cp,
        "svc/web",
        &[&format!("{}:80", via_service.port())],
        &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")],
    )
    .await?;
    let answer = http_get(via_service).await?;
    ensure!(
        answer.ends_with("hello from the pod\n"),
        "through svc/web: {answer:?} (kubectl: {})",
        pf.stderr()
    );
    drop(pf);

    // A pod that is not running: Kubernetes' words, from kubectl or the
    // apiserver.
    pod(&cp, "idle", Some("stream-node"), &["app"]).await?;
    let (ok, _, stderr) = kubectl(&cp, &["port-forward", "pod/idle", "18080:80"]).await?;
    ensure!(!ok, "port-forward to a pending pod succeeded");
    ensure!(
        stderr
            .contains("unable to forward port because pod is not running. Current status=Pending"),
        "{stderr}"
    );
    cp.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_attach_streams_what_the_container_prints_from_then_on() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let agent = Agent::start(&cp).await?;
    node(&cp, "stream-node", agent.addr).await?;
    let uid = pod(&cp, "talker", Some("stream-node"), &["app"]).await?;
    let _container = Container::start_with(
        &agent,
        "talker",
        &uid,
        "app",
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "i=0; while true; do echo line $i; i=$((i+1)); /bin/busybox sleep 0.2; done",
        ],
        &[],
    )
    .await?;
    let running = serde_json::json!({"status": {"phase": "Running"}});
    patch_status(&cp, "pod", "talker", &running).await?;
    let log = agent.container_dir("talker", &uid, "app")?.join("0.log");
    let deadline = tokio::time::Instant::now() + FOLLOW_WAIT;
    while !std::fs::read_to_string(&log)?.contains("line 3\n") {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the container wrote no output"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut child = tokio::process::Command::new(KUBECTL)
        .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
        .arg(format!(
            "--cache-dir={}",
            cp.dir().join("cache-attach").display()
        ))
        .args(["attach", "talker", "-c", "app"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running kubectl attach")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.lines().count() < 4 {
        let mut buf = [0u8; 1024];
        let n = match tokio::time::timeout_at(deadline, stdout.read(&mut buf)).await {
            Ok(n) => n?,
            Err(_) => 0,
        };
        if n == 0 {
            let _ = child.start_kill();
            let out = child.wait_with_output().await?;
            bail!(
                "kubectl attach gave {seen:?}, then stopped: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let numbers: Vec<u64> = seen
        .lines()
        .take(4)
        .map(|l| l.strip_prefix("line ").and_then(|n| n.parse().ok()))
        .collect::<Option<_>>()
        .with_context(|| format!("kubectl attach printed {seen:?}"))?;
    // Only what came after the attach (line 3 was already written), in
    // order, nothing lost or repeated.
    ensure!(numbers[0] > 3, "attach replayed old output: {seen:?}");
    ensure!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "attach output out of order: {seen:?}"
    );
    ensure!(
        matches!(child.try_wait(), Ok(None)),
        "kubectl attach ended while the container runs"
    );
    let _ = child.start_kill();

    // A container without stdin: true has no stdin to attach to: the
    // apiserver says so, for WebSocket and SPDY alike.
    let (ok, _, stderr) = kubectl(&cp, &["attach", "-i", "talker"]).await?;
    ensure!(!ok, "attach -i succeeded");
    ensure!(
        stderr.contains("was not created with stdin: true") && !stderr.contains("SPDY"),
        "{stderr}"
    );
    cp.stop().await
}
