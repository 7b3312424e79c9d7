//! A shoal cluster in the lab: `shoal server` and an agent on `node-1`,
//! agents on the other nodes, each a real process inside its lab host
//! (network namespace and cgroup). `cargo xtask up` and the end-to-end
//! tests build the same cluster with [`LabCluster::start`].
//!
//! | what | where |
//! |---|---|
//! | API | `https://<node-1 IPv4>:6443`, admin kubeconfig at `<dir>/kubeconfig` |
//! | node `node-i` | lab host `host-i`, InternalIPs = the host's two addresses |
//! | agent state | `<dir>/node-i/agent`, pods' cgroups under the host's cgroup (`<host cgroup>/pods`) |
//! | logs | `<dir>/node-1/server.log`, `<dir>/node-i/agent.log` |

use std::{
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::lab::{self, Host, Lab};

/// The sidecar's image builder, xtask's own (`cargo xtask up` and the lab
/// tests import the same image).
#[path = "../../xtask/src/sidecar_image.rs"]
mod sidecar_image;

/// The injected sidecar's image, which every lab agent's store gets.
pub use sidecar_image::REFERENCE as SIDECAR_IMAGE;

/// The API's port on node-1.
pub const API_PORT: u16 = 6443;
/// kubectl of the version the tests target (the `kubectl` on PATH is a
/// dispatcher that asks the server first).
pub const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";

/// How to build a lab cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The lab prefix (namespaces `shoal-<prefix>-...`).
    pub prefix: String,
    /// How many nodes; node-1 runs the control plane too.
    pub nodes: usize,
    /// How many of them get an agent at start (the first ones); the others
    /// join later through [`LabCluster::start_agent`]. `nodes` by default.
    pub agents: usize,
    /// The `shoal` binary.
    pub shoal: PathBuf,
    /// Where every process keeps its state and logs.
    pub dir: PathBuf,
    /// First restart back-off of crashing containers, in seconds.
    pub backoff_seconds: u64,
    /// CPU each node advertises.
    pub capacity_cpu: String,
    /// Memory each node advertises.
    pub capacity_memory: String,
    /// More `shoal server` flags (e.g. `--node-monitor-grace-period 5s`).
    pub server_args: Vec<String>,
    /// More `shoal agent` flags, for every agent.
    pub agent_args: Vec<String>,
    /// Environment variables of every process (e.g. `OTEL_*`).
    pub env: Vec<(String, String)>,
    /// Control-plane members: node-1 runs the first `shoal server`, nodes 2
    /// to `servers` one each joined with `shoal server --join`, and every
    /// agent is given all of them (`--server A,B,C`). 1 by default.
    pub servers: usize,
}

impl ClusterConfig {
    /// `nodes` nodes under `dir`, with the `shoal` binary [`shoal_binary`]
    /// finds.
    pub fn new(prefix: &str, nodes: usize, dir: impl Into<PathBuf>) -> Result<Self> {
        Ok(Self {
            prefix: prefix.to_owned(),
            nodes,
            agents: nodes,
            shoal: shoal_binary()?,
            dir: dir.into(),
            backoff_seconds: 10,
            capacity_cpu: "4".to_owned(),
            capacity_memory: "8Gi".to_owned(),
            server_args: Vec::new(),
            agent_args: Vec::new(),
            env: Vec::new(),
            servers: 1,
        })
    }
}

/// `shoal dataplane VIEW` over the maps a lab agent pinned in `host`'s pin
/// directory (`/sys/fs/bpf/shoal/<name>`, so `--node <name>` finds it); the
/// table it printed, or an error with what it said.
pub fn shoal_dataplane(host: &Host, view: &str) -> Result<String> {
    let pins = host
        .pin_dir()
        .file_name()
        .and_then(|n| n.to_str())
        .context("pin dir name")?;
    let out = std::process::Command::new(shoal_binary()?)
        .args(["dataplane", view, "--node", pins])
        .output()
        .with_context(|| format!("running shoal dataplane {view}"))?;
    ensure!(
        out.status.success(),
        "shoal dataplane {view} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `shoal` binary: `$SHOAL_BIN`, else `shoal` next to the running
/// executable or one directory up (`target/debug/deps/..`).
pub fn shoal_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SHOAL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("finding the running executable")?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("shoal");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no shoal binary next to {} and SHOAL_BIN is not set: build it with `cargo build --bin shoal` (`cargo xtask test` does)",
        exe.display()
    )
}

/// A process of the cluster.
struct Proc {
    name: String,
    child: Child,
}

/// A running lab cluster; dropping it stops every process, removes what
/// the pods left on the nodes and tears the lab down (unless persisted).
pub struct LabCluster {
    cfg: ClusterConfig,
    lab: Lab,
    procs: Vec<Proc>,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    keep: bool,
}

impl LabCluster {
    /// Creates the lab, starts the control plane on node-1 and an agent on
    /// each of the first `agents` nodes, and waits until their Nodes are
    /// Ready.
    pub fn start(cfg: ClusterConfig) -> Result<LabCluster> {
        ensure!(
            cfg.shoal.is_file(),
            "the shoal binary {} does not exist",
            cfg.shoal.display()
        );
        std::fs::create_dir_all(&cfg.dir)
            .with_context(|| format!("creating {}", cfg.dir.display()))?;
        let lab = Lab::create(&cfg.prefix, cfg.nodes)
            .with_context(|| format!("creating lab {:?}", cfg.prefix))?;
        let kubeconfig = cfg.dir.join("node-1").join("server").join("kubeconfig");
        let mut cluster = LabCluster {
            cfg,
            lab,
            procs: Vec::new(),
            kubeconfig,
            keep: false,
        };
        cluster.start_server()?;
        for i in 1..cluster.cfg.servers.min(cluster.cfg.nodes) {
            cluster.start_joined_server(i)?;
        }
        for i in 0..cluster.cfg.agents.min(cluster.cfg.nodes) {
            cluster.start_agent(i)?;
        }
        cluster.wait_ready_nodes(Duration::from_secs(60))?;
        Ok(cluster)
    }

    /// The lab under the cluster.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// Node `i` (0-based)'s lab host (`host-<i+1>`).
    pub fn host(&self, i: usize) -> &Host {
        self.lab.host(i + 1)
    }

    /// Node `i`'s name (`node-<i+1>`).
    pub fn node_name(i: usize) -> String {
        format!("node-{}", i + 1)
    }

    /// Keeps the cluster running after this value is dropped.
    pub fn persist(&mut self) {
        self.keep = true;
        self.lab.persist();
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.cfg.dir.join(Self::node_name(i))
    }

    /// Starts `shoal ARGS` inside node `host`'s lab host, its output
    /// appended to `log` (so a restarted agent's log follows the first one's).
    fn spawn(&mut self, name: &str, host: usize, args: &[String], log: &Path) -> Result<()> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = self.lab.host(host + 1).command(&self.cfg.shoal)?;
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.cfg.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {} {args:?}", self.cfg.shoal.display()))?;
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
        });
        Ok(())
    }

    fn start_server(&mut self) -> Result<()> {
        let dir = self.node_dir(0);
        std::fs::create_dir_all(&dir)?;
        let host = self.lab.host(1);
        let args = vec![
            "server".into(),
            "--data-dir".into(),
            dir.join("server").display().to_string(),
            "--listen".into(),
            host.v4(API_PORT).to_string(),
            "--store-listen".into(),
            "127.0.0.1:2379".into(),
            "--store-peer-listen".into(),
            self.peer_listen(0),
            "--tls-san".into(),
            format!("{},{}", host.ipv4(), host.ipv6()),
        ];
        let args = [args, self.member_name(0), self.cfg.server_args.clone()].concat();
        self.spawn("server", 0, &args, &dir.join("server.log"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.kubeconfig.is_file() {
            self.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "shoal server wrote no kubeconfig in 30 s; see {}",
                dir.join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The store's peer address of member `i`: loopback for a control
    /// plane of one (as before), the host's address when others dial it.
    fn peer_listen(&self, i: usize) -> String {
        if self.cfg.servers > 1 {
            self.lab.host(i + 1).v4(2380).to_string()
        } else {
            "127.0.0.1:2380".to_owned()
        }
    }

    /// `--name node-<i+1>` for the members of a control plane of several.
    fn member_name(&self, i: usize) -> Vec<String> {
        if self.cfg.servers > 1 {
            vec!["--name".into(), Self::node_name(i)]
        } else {
            Vec::new()
        }
    }

    /// The API URL of every control-plane member, node-1's first.
    pub fn api_urls(&self) -> Vec<String> {
        (0..self.cfg.servers.clamp(1, self.cfg.nodes))
            .map(|i| format!("https://{}", self.lab.host(i + 1).v4(API_PORT)))
            .collect()
    }

    /// The admin kubeconfig member `i`'s server wrote (the same user and
    /// CA as [`LabCluster::kubeconfig`], its own address).
    pub fn member_kubeconfig(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("server").join("kubeconfig")
    }

    /// Starts member `i` (node `i`'s host) with `shoal server --join`
    /// through node-1 and waits until its API answers.
    fn start_joined_server(&mut self, i: usize) -> Result<()> {
        let join = self.server_join_args()?;
        let dir = self.node_dir(i);
        std::fs::create_dir_all(&dir)?;
        let host = self.lab.host(i + 1);
        let args = [
            vec![
                "server".to_owned(),
                "--data-dir".into(),
                dir.join("server").display().to_string(),
                "--listen".into(),
                host.v4(API_PORT).to_string(),
                "--store-listen".into(),
                "127.0.0.1:2379".into(),
                "--store-peer-listen".into(),
                self.peer_listen(i),
                "--tls-san".into(),
                format!("{},{}", host.ipv4(), host.ipv6()),
            ],
            self.member_name(i),
            join,
            self.cfg.server_args.clone(),
        ]
        .concat();
        let name = format!("server {}", Self::node_name(i));
        self.spawn(&name, i, &args, &dir.join("server.log"))?;
        let kubeconfig = self.member_kubeconfig(i);
        let host = self.lab.host(i + 1).clone();
        let cache = self.cfg.dir.join("kubectl-cache");
        self.wait_for(
            &format!("{name} serving the API"),
            Duration::from_secs(60),
            |_| {
                if !kubeconfig.is_file() {
                    return Ok(None);
                }
                let out = kubectl_in(
                    &host,
                    &kubeconfig,
                    &cache,
                    &["get", "--raw", "/readyz"],
                    None,
                )?;
                Ok(out.status.success().then_some(()))
            },
        )
    }

    /// `--join URL --token T --ca-cert-hash H` of joining servers, from
    /// `shoal token create --server-join` on node-1 (kept in
    /// `<dir>/server-join-args`).
    fn server_join_args(&self) -> Result<Vec<String>> {
        self.token_join_args(
            "server-join-args",
            &["--server-join", "--ttl", "12h"],
            "shoal server ",
        )
    }

    /// Starts node `i`'s agent (again, after [`LabCluster::kill_agent`]).
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let dir = self.node_dir(i);
        std::fs::create_dir_all(&dir)?;
        let host = self.lab.host(i + 1);
        let cgroup_parent = self.cgroup_parent(i)?;
        let mut join = self.join_args()?;
        if self.cfg.servers > 1
            && let Some(pos) = join.iter().position(|a| a == "--server")
            && pos + 1 < join.len()
        {
            join[pos + 1] = self.api_urls().join(",");
        }
        let args = vec![
            "agent".into(),
            "--node-name".into(),
            Self::node_name(i),
            "--node-ip".into(),
            format!("{},{}", host.ipv4(), host.ipv6()),
            "--data-dir".into(),
            dir.join("agent").display().to_string(),
            "--cgroup-parent".into(),
            cgroup_parent,
            "--capacity-cpu".into(),
            self.cfg.capacity_cpu.clone(),
            "--capacity-memory".into(),
            self.cfg.capacity_memory.clone(),
            "--heartbeat-seconds".into(),
            "2".into(),
            "--backoff-seconds".into(),
            self.cfg.backoff_seconds.to_string(),
            // The lab host's pin directory, which the lab removes.
            "--bpf-pin-dir".into(),
            host.pin_dir().display().to_string(),
            // Nothing in the lab may leave it: no upstream resolvers.
            "--dns-upstreams".into(),
            "none".into(),
        ];
        let args = [
            vec!["agent".to_owned()],
            join,
            args[1..].to_vec(),
            self.cfg.agent_args.clone(),
        ]
        .concat();
        self.import_sidecar_image(&dir.join("agent"))?;
        let name = format!("agent {}", Self::node_name(i));
        self.spawn(&name, i, &args, &dir.join("agent.log"))
    }

    /// The `shoal-sidecar` binary next to the `shoal` one, which the
    /// injected sidecar's image is built from.
    pub fn sidecar_binary(&self) -> Result<PathBuf> {
        let binary = self.cfg.shoal.with_file_name(sidecar_image::BINARY_NAME);
        ensure!(
            binary.is_file(),
            "no {} next to {}: build it with `cargo build --bin shoal-sidecar` (`cargo test` builds it with the sidecar's tests)",
            binary.display(),
            self.cfg.shoal.display()
        );
        Ok(binary)
    }

    /// Imports the sidecar's image ([`SIDECAR_IMAGE`], built next to the
    /// binary when older than it) into the image store of the agent whose
    /// data directory is `data_dir`, as `shoal image import` does: pods
    /// the apiserver injects find it there. Nothing without a built
    /// `shoal-sidecar` (only injected pods need it).
    fn import_sidecar_image(&self, data_dir: &Path) -> Result<()> {
        let Ok(binary) = self.sidecar_binary() else {
            return Ok(());
        };
        // A restarted agent's store has it already (from this cluster's
        // binary): importing again costs a second.
        let index = std::fs::read_to_string(data_dir.join("images").join("index.json"));
        if index.is_ok_and(|i| i.contains(SIDECAR_IMAGE)) {
            return Ok(());
        }
        // One build per test process: clusters starting side by side wait
        // for it instead of each compressing the same binary.
        static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let archive = {
            let _building = BUILDING
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            sidecar_image::write_if_stale(&binary, &binary.with_file_name("shoal-sidecar.oci.tar"))
                .context("building the sidecar's image")?
        };
        let out = std::process::Command::new(&self.cfg.shoal)
            .args(["image", "import", "--data-dir"])
            .arg(data_dir)
            .arg(&archive)
            .stdin(Stdio::null())
            .output()
            .context("running shoal image import")?;
        ensure!(
            out.status.success(),
            "shoal image import {} failed: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `--server URL --token T --ca-cert-hash H`: agents join as nodes do,
    /// with a bootstrap token the fixture creates once (kept in
    /// `<dir>/join-args`) with `shoal token create`.
    fn join_args(&self) -> Result<Vec<String>> {
        self.token_join_args(
            "join-args",
            &["--ttl", "12h", "--description", "lab agents"],
            "shoal agent ",
        )
    }

    /// The arguments of the join command that `shoal token create
    /// <create>` on node-1 prints after `command`, created once and kept
    /// in `<dir>/<file>`.
    fn token_join_args(&self, file: &str, create: &[&str], command: &str) -> Result<Vec<String>> {
        let saved = self.cfg.dir.join(file);
        if let Ok(text) = std::fs::read_to_string(&saved) {
            return Ok(text.split_whitespace().map(str::to_owned).collect());
        }
        let what = format!("shoal token create {}", create.join(" "));
        let out = self
            .lab
            .host(1)
            .command(&self.cfg.shoal)?
            .args(["token", "create"])
            .args(create)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {what}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let args = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(command))
            .with_context(|| {
                format!(
                    "{what} printed no `{}` command: {stdout}{}",
                    command.trim_end(),
                    String::from_utf8_lossy(&out.stderr)
                )
            })?
            .to_owned();
        std::fs::write(&saved, &args).with_context(|| format!("writing {}", saved.display()))?;
        Ok(args.split_whitespace().map(str::to_owned).collect())
    }

    /// Pods of node `i` live in this cgroup, below the lab host's, so the
    /// host's cgroup programs see them (relative to the cgroup roots).
    fn cgroup_parent(&self, i: usize) -> Result<String> {
        let host_cgroup = self.lab.host(i + 1).cgroup();
        let root = lab::cgroup2_root()?;
        let rel = host_cgroup.strip_prefix(&root).with_context(|| {
            format!("{} is not below {}", host_cgroup.display(), root.display())
        })?;
        Ok(format!("/{}/pods", rel.display()))
    }

    /// Kills node `i`'s agent with SIGKILL (its pods keep running).
    pub fn kill_agent(&mut self, i: usize) -> Result<()> {
        let name = format!("agent {}", Self::node_name(i));
        let Some(pos) = self.procs.iter().position(|p| p.name == name) else {
            bail!("{name} is not running");
        };
        let mut p = self.procs.remove(pos);
        p.child.kill().with_context(|| format!("killing {name}"))?;
        p.child.wait()?;
        Ok(())
    }

    /// The process id of node `i`'s agent, while it runs.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        let name = format!("agent {}", Self::node_name(i));
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// Fails naming the process that died and the end of its log.
    pub fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited ({status})", p.name);
            }
        }
        Ok(())
    }

    /// The end of every process's log, for failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut logs = vec![self.node_dir(0).join("server.log")];
        logs.extend(
            (1..self.cfg.servers.min(self.cfg.nodes)).map(|i| self.node_dir(i).join("server.log")),
        );
        logs.extend((0..self.cfg.nodes).map(|i| self.node_dir(i).join("agent.log")));
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out.push_str(&format!("--- {} (last {lines} lines)\n", log.display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// kubectl with the admin kubeconfig, run inside node-1's host.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        kubectl_in(
            self.lab.host(1),
            &self.kubeconfig,
            &self.cfg.dir.join("kubectl-cache"),
            args,
            stdin,
        )
    }

    /// kubectl that must succeed; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.kubectl(args, stdin)?;
        ensure!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.kubectl_ok(&["apply", "-f", "-"], Some(yaml))
    }

    /// Polls `check` until it returns `Some`, failing after `limit` with
    /// what it last said and the processes' logs.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&Self) -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        loop {
            match check(self) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!(
                    "{what}: not within {limit:?} (last error: {last})\n{}",
                    self.logs_tail(25)
                );
            }
            self.check_alive()
                .with_context(|| format!("while waiting for {what}\n{}", self.logs_tail(40)))?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until as many nodes as there are running agents report Ready.
    pub fn wait_ready_nodes(&mut self, limit: Duration) -> Result<()> {
        let want = self
            .procs
            .iter()
            .filter(|p| p.name.starts_with("agent "))
            .count();
        self.wait_for("every node Ready", limit, |c| {
            let out = c.kubectl_ok(
                &[
                    "get",
                    "nodes",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {.spec.podCIDRs}{\"\\n\"}{end}",
                ],
                None,
            )?;
            let ready = out
                .lines()
                .filter(|l| l.contains("=True") && l.contains("10.244."))
                .count();
            Ok((ready >= want).then_some(()))
        })
    }

    /// Stops every process and removes what pods left on the nodes.
    fn stop(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for p in &mut self.procs {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in &mut self.procs {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                }
            }
        }
        self.procs.clear();
        for i in 0..self.cfg.nodes {
            let Ok(parent) = self.cgroup_parent(i) else {
                continue;
            };
            let args = [
                "reset".to_owned(),
                "--data-dir".to_owned(),
                self.node_dir(i).join("agent").display().to_string(),
                "--cgroup-parent".to_owned(),
                parent,
            ];
            let out = self
                .lab
                .host(i + 1)
                .command(&self.cfg.shoal)
                .map_err(anyhow::Error::from)
                .and_then(|mut c| Ok(c.args(&args).output()?));
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => problems.push(format!(
                    "shoal reset on {}: {}",
                    Self::node_name(i),
                    String::from_utf8_lossy(&o.stderr)
                )),
                Err(e) => problems.push(format!("shoal reset on {}: {e:#}", Self::node_name(i))),
            }
        }
        problems
    }
}

/// Set to keep a failed test's cluster for a look (`cargo xtask down`
/// does not know it: remove it with `cargo xtask lab down --prefix P`).
pub const KEEP_ENV: &str = "SHOAL_KEEP_CLUSTER";

/// kubectl with `kubeconfig` (and its discovery cache in `cache`), run
/// inside `host`, `stdin` written to it.
pub fn kubectl_in(
    host: &Host,
    kubeconfig: &Path,
    cache: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output> {
    let mut cmd = host.command(KUBECTL)?;
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| {
        format!("running {KUBECTL} (installed with the Google Cloud SDK packages)")
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(input.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// A directory for a test's cluster: removed when the returned guard is
/// dropped, unless [`KEEP_ENV`] is set (then a failed run leaves it, and
/// the cluster, for a look).
pub fn scratch_dir() -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    let tmp = tempfile::tempdir().context("creating the cluster's directory")?;
    Ok(if std::env::var_os(KEEP_ENV).is_some() {
        (tmp.keep(), None)
    } else {
        (tmp.path().to_path_buf(), Some(tmp))
    })
}

impl Drop for LabCluster {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            self.lab.persist();
            eprintln!(
                "{KEEP_ENV} is set: keeping lab {:?} and {}",
                self.lab.prefix(),
                self.cfg.dir.display()
            );
            return;
        }
        for p in self.stop() {
            eprintln!("lab cluster teardown: {p}");
        }
    }
}

/// Removes a persisted lab cluster: stops its processes (by their data
/// directory), resets its nodes and removes the lab.
pub fn remove(prefix: &str, dir: &Path, shoal: &Path) -> Result<()> {
    // Processes whose command line names the cluster's directory.
    let needle = dir.display().to_string();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle)
                && (cmdline.contains(" agent ") || cmdline.contains(" server "))
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    if let Ok(lab) = Lab::attach(prefix) {
        for (i, host) in lab.hosts().iter().enumerate() {
            let node_dir = dir.join(LabCluster::node_name(i)).join("agent");
            if !node_dir.exists() {
                continue;
            }
            let root = lab::cgroup2_root()?;
            let parent = host
                .cgroup()
                .strip_prefix(&root)
                .map(|r| format!("/{}/pods", r.display()))
                .unwrap_or_default();
            let mut cmd = host.command(shoal)?;
            cmd.args(["reset", "--data-dir"])
                .arg(&node_dir)
                .args(["--cgroup-parent", &parent]);
            let _ = cmd.output();
        }
    }
    Lab::remove(prefix).with_context(|| format!("removing lab {prefix:?}"))?;
    Ok(())
}
