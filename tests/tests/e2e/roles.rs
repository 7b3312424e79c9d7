//! The roles a newcomer runs, each a real `shoal` process inside its own
//! lab host: `shoal up` (a cluster of one that resumes from its data dir)
//! and a control plane of servers joined with `shoal server --join` and
//! `shoal up --join` (whose node carries the control-plane taint), an
//! agent given every server that fails over when the one it uses dies,
//! and members taken out with `etcdctl member remove` and `shoal leave`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::ready;
use shoal_e2e::{
    cluster::{kubectl_in, shoal_binary},
    lab::{self, Host, Lab},
};

pub(super) const WAIT: Duration = Duration::from_secs(90);

/// One `shoal` process in a lab host, its output appended to `log`.
pub(super) struct Role {
    name: String,
    pub(super) args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Role {
    pub(super) fn new(name: &str, dir: &Path, args: Vec<String>) -> Self {
        Self {
            name: name.to_owned(),
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    pub(super) fn start(&mut self, host: &Host) -> Result<()> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let err = out.try_clone()?;
        let child = host
            .command(shoal_binary()?)?
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}: shoal {:?}", self.name, self.args))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the exit.
    pub(super) fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL: no Lease released, no store member leaving politely.
    pub(super) fn kill(&mut self) {
        self.stop(Duration::ZERO);
    }

    /// Whether the process has exited (on its own).
    pub(super) fn exited(&mut self) -> Result<bool> {
        Ok(match &mut self.child {
            Some(child) => child.try_wait()?.is_some(),
            None => true,
        })
    }

    pub(super) fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            bail!("{} exited ({status})\n{}", self.name, self.tail(40));
        }
        Ok(())
    }

    pub(super) fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        let mut out = format!("--- {} (last {lines} lines)\n", self.log.display());
        for l in tail.into_iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill();
    }
}

/// kubectl with `kubeconfig`, inside `host`, that must succeed; its stdout.
pub(super) fn kubectl(
    host: &Host,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    let args: Vec<&str> = ["--request-timeout", "10s"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let cache = kubeconfig.with_extension("kubectl-cache");
    let out = kubectl_in(host, kubeconfig, &cache, &args, stdin)?;
    ensure!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` until it returns `Some`, failing after `limit` with what
/// it last said and the roles' logs; fails early if a role died.
pub(super) fn wait_for<T>(
    roles: &mut [&mut Role],
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        for r in roles.iter_mut() {
            r.check_alive()
                .with_context(|| format!("while waiting for {what}"))?;
        }
        if Instant::now() > deadline {
            let logs: String = roles.iter().map(|r| r.tail(25)).collect();
            bail!("{what}: not within {limit:?} (last error: {last})\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Node `name`'s Ready condition is True and it has its podCIDRs.
pub(super) fn node_ready(host: &Host, kubeconfig: &Path, name: &str) -> Result<Option<Value>> {
    let node: Value = serde_json::from_str(&kubectl(
        host,
        kubeconfig,
        &["get", "node", name, "-o", "json"],
        None,
    )?)?;
    let is_ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    Ok((is_ready && node["spec"]["podCIDRs"].is_array()).then_some(node))
}

/// The pod cgroup parent of agents in `host` (below the host's cgroup, so
/// the lab removes what they leave).
fn cgroup_parent(host: &Host) -> Result<String> {
    let root = lab::cgroup2_root()?;
    let rel = host.cgroup().strip_prefix(&root).with_context(|| {
        format!(
            "{} is not below {}",
            host.cgroup().display(),
            root.display()
        )
    })?;
    Ok(format!("/{}/pods", rel.display()))
}

/// The agent flags every lab node takes: its addresses, capacity, pins and
/// cgroups in the lab host, no DNS upstream (nothing leaves the lab).
pub(super) fn node_args(host: &Host, name: &str) -> Result<Vec<String>> {
    Ok([
        "--node-name",
        name,
        "--node-ip",
        &format!("{},{}", host.ipv4(), host.ipv6()),
        "--cgroup-parent",
        &cgroup_parent(host)?,
        "--bpf-pin-dir",
        &host.pin_dir().display().to_string(),
        "--dns-upstreams",
        "none",
        "--capacity-cpu",
        "4",
        "--capacity-memory",
        "8Gi",
        "--heartbeat-seconds",
        "2",
    ]
    .map(str::to_owned)
    .to_vec())
}

/// `shoal reset` of an agent's data dir, so no container outlives the test.
pub(super) fn reset(host: &Host, agent_dir: &Path) -> Result<()> {
    let out = host
        .command(shoal_binary()?)?
        .arg("reset")
        .arg("--data-dir")
        .arg(agent_dir)
        .arg("--cgroup-parent")
        .arg(cgroup_parent(host)?)
        .output()?;
    ensure!(
        out.status.success(),
        "shoal reset {}: {}",
        agent_dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// GET `http://addr/` from inside `host`'s network namespace.
fn fetch(host: &Host, addr: std::net::SocketAddr) -> Result<String> {
    use std::io::{Read, Write};
    let netns = host.netns_path();
    std::thread::spawn(move || -> Result<String> {
        let ns = std::fs::File::open(&netns)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(s, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        reply
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.trim().to_owned())
            .with_context(|| format!("no HTTP reply from {addr}: {reply:?}"))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the fetch thread panicked"))?
}

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: httpd
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
    readinessProbe:
      httpGet: {path: /, port: 8080}
      periodSeconds: 1
---
apiVersion: v1
kind: ConfigMap
metadata: {name: remembered}
data: {said: "before the restart"}
"#;

/// The pod `web` is Ready: its JSON.
fn web_ready(host: &Host, kubeconfig: &Path) -> Result<Option<Value>> {
    let pod: Value = serde_json::from_str(&kubectl(
        host,
        kubeconfig,
        &["get", "pod", "web", "-o", "json"],
        None,
    )?)?;
    Ok(ready(&pod).then_some(pod))
}

/// Every object's kind, namespace, name and uid, as a full listing shows
/// them (what must survive a restart or the loss of a member).
pub(super) fn listing(host: &Host, kubeconfig: &Path, kinds: &str) -> Result<Vec<String>> {
    let out = kubectl(
        host,
        kubeconfig,
        &[
            "get",
            kinds,
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name}/{.metadata.uid}{\"\\n\"}{end}",
        ],
        None,
    )?;
    let mut items: Vec<String> = out.lines().map(str::to_owned).collect();
    items.sort();
    Ok(items)
}

/// What `shoal up` resumes: the admin kubeconfig's CA and the objects.
const RESUMED_KINDS: &str = "namespaces,configmaps,pods,services,serviceaccounts,nodes";

#[test]
fn shoal_up_runs_a_pod_and_resumes_the_same_cluster_from_its_data_dir() -> Result<()> {
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    let lab = Lab::create(&Lab::unique_prefix(), 1).context("creating the lab")?;
    let host = lab.host(1);
    let data_dir = dir.join("up");
    let kubeconfig = dir.join("admin.kubeconfig");
    let args = [
        vec![
            "up".to_owned(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            host.v4(6443).to_string(),
            "--tls-san".into(),
            format!("{},{}", host.ipv4(), host.ipv6()),
            "--write-kubeconfig".into(),
            kubeconfig.display().to_string(),
        ],
        node_args(host, "up-1")?,
    ]
    .concat();
    let mut up = Role::new("up", &dir, args);
    let result = (|| -> Result<()> {
        up.start(host)?;
        let node = wait_for(&mut [&mut up], "node up-1 Ready", WAIT, || {
            if !kubeconfig.is_file() {
                return Ok(None);
            }
            node_ready(host, &kubeconfig, "up-1")
        })?;
        ensure!(
            node["metadata"]["labels"]
                .get("node-role.kubernetes.io/control-plane")
                .is_some(),
            "shoal up's node is not labelled a control-plane node: {}",
            node["metadata"]["labels"]
        );
        ensure!(
            node["spec"]["taints"].as_array().is_none_or(Vec::is_empty),
            "the node of a cluster of one must run pods, yet it is tainted: {}",
            node["spec"]["taints"]
        );
        ensure!(
            data_dir.join("kubeconfig").is_file(),
            "shoal up wrote no DATA_DIR/kubeconfig"
        );
        kubectl(host, &kubeconfig, &["apply", "-f", "-"], Some(WEB))?;
        let pod = wait_for(&mut [&mut up], "pod web Ready", WAIT, || {
            web_ready(host, &kubeconfig)
        })?;
        let ip: std::net::IpAddr = pod["status"]["podIP"]
            .as_str()
            .context("web has no podIP")?
            .parse()?;
        let answer = fetch(host, (ip, 8080).into())?;
        ensure!(answer == "web", "web answered {answer:?}");
        let ca_before = cluster_ca(&kubeconfig)?;
        let before = listing(host, &kubeconfig, RESUMED_KINDS)?;

        // Stop and start again on the same data dir: the same cluster.
        up.stop(Duration::from_secs(20));
        up.start(host)?;
        wait_for(&mut [&mut up], "node up-1 Ready again", WAIT, || {
            node_ready(host, &kubeconfig, "up-1")
        })?;
        ensure!(
            cluster_ca(&kubeconfig)? == ca_before,
            "the restarted shoal up has another cluster CA"
        );
        let pod_after = wait_for(&mut [&mut up], "pod web Ready again", WAIT, || {
            web_ready(host, &kubeconfig)
        })?;
        ensure!(
            pod_after["metadata"]["uid"] == pod["metadata"]["uid"],
            "pod web is another object after the restart"
        );
        let container = |p: &Value| p["status"]["containerStatuses"][0]["containerID"].clone();
        ensure!(
            container(&pod_after) == container(&pod),
            "the restarted shoal up restarted web's container instead of adopting it: {} then {}",
            container(&pod),
            container(&pod_after)
        );
        let ip: std::net::IpAddr = pod_after["status"]["podIP"]
            .as_str()
            .context("web has no podIP after the restart")?
            .parse()?;
        let answer = fetch(host, (ip, 8080).into())?;
        ensure!(answer == "web", "web answered {answer:?} after the restart");
        let after = listing(host, &kubeconfig, RESUMED_KINDS)?;
        let lost: Vec<&String> = before.iter().filter(|o| !after.contains(o)).collect();
        ensure!(
            lost.is_empty(),
            "objects gone or replaced after the restart: {lost:?}"
        );
        let said = kubectl(
            host,
            &kubeconfig,
            &[
                "get",
                "configmap",
                "remembered",
                "-o",
                "jsonpath={.data.said}",
            ],
            None,
        )?;
        ensure!(
            said == "before the restart",
            "configmap remembered says {said:?}"
        );
        Ok(())
    })();
    up.stop(Duration::from_secs(10));
    let cleaned = reset(host, &data_dir.join("agent"));
    result.and(cleaned)
}

/// The CA a kubeconfig trusts (base64 as written).
fn cluster_ca(kubeconfig: &Path) -> Result<String> {
    let text = std::fs::read_to_string(kubeconfig)?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
        .map(|v| v.trim().to_owned())
        .with_context(|| format!("{} has no certificate-authority-data", kubeconfig.display()))
}

/// The Leases' timing of the HA test's servers: takeovers in seconds.
const LEADER_ELECT: [&str; 6] = [
    "--leader-elect-lease-duration",
    "3s",
    "--leader-elect-renew-deadline",
    "2s",
    "--leader-elect-retry-period",
    "300ms",
];

/// `shoal server` flags of member `name` in `host`: the API and the store's
/// peer port on the host's address.
pub(super) fn server_args(host: &Host, dir: &Path, name: &str) -> Vec<String> {
    [
        vec![
            "server".to_owned(),
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            dir.join(name).display().to_string(),
            "--listen".into(),
            host.v4(6443).to_string(),
            "--tls-san".into(),
            format!("{},{}", host.ipv4(), host.ipv6()),
            "--store-peer-listen".into(),
            host.v4(2380).to_string(),
        ],
        LEADER_ELECT.map(str::to_owned).to_vec(),
    ]
    .concat()
}

/// The line of `shoal token create`'s output that starts with `prefix`,
/// without it, as arguments.
pub(super) fn join_line(output: &str, prefix: &str) -> Result<Vec<String>> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .map(|rest| rest.split_whitespace().map(str::to_owned).collect())
        .with_context(|| format!("no {prefix:?} line in: {output}"))
}

/// Whether member `dir`'s store leads, asked with etcdctl and the
/// `etcdctl.env` the server wrote, inside `host`.
pub(super) fn store_leads(host: &Host, dir: &Path) -> Result<bool> {
    let out = etcdctl_in(host, dir, &["endpoint", "status", "-w", "json"])?;
    ensure!(
        out.status.success(),
        "etcdctl endpoint status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout)?;
    let s = &status[0]["Status"];
    Ok(s["leader"].as_u64().is_some() && s["leader"] == s["header"]["member_id"])
}

/// etcdctl inside `host` with the `etcdctl.env` member `dir`'s server
/// wrote.
pub(super) fn etcdctl_in(host: &Host, dir: &Path, args: &[&str]) -> Result<std::process::Output> {
    let env = std::fs::read_to_string(dir.join("etcdctl.env"))?;
    let mut cmd = host.command("etcdctl")?;
    for line in env.lines() {
        if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .context("running etcdctl")
}

/// `etcdctl member list` through member `dir`'s store.
fn member_list(host: &Host, dir: &Path) -> Result<Vec<Value>> {
    let out = etcdctl_in(host, dir, &["member", "list", "-w", "json"])?;
    ensure!(
        out.status.success(),
        "etcdctl member list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout)?;
    Ok(list["members"].as_array().cloned().unwrap_or_default())
}

/// The members' names, sorted.
fn names(members: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = members
        .iter()
        .map(|m| m["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names
}

/// The members' ids by name.
fn member_ids(members: &[Value]) -> std::collections::BTreeMap<String, u64> {
    members
        .iter()
        .filter_map(|m| Some((m["name"].as_str()?.to_owned(), m["ID"].as_u64()?)))
        .collect()
}

/// Pod `name` in namespace ha runs on node-4.
fn pod_running(host: &Host, kubeconfig: &Path, name: &str) -> Result<Option<()>> {
    let out = kubectl(
        host,
        kubeconfig,
        &[
            "get",
            "pod",
            name,
            "-n",
            "ha",
            "-o",
            "jsonpath={.spec.nodeName}/{.status.phase}",
        ],
        None,
    )?;
    Ok((out == "node-4/Running").then_some(()))
}

/// What must survive the loss of a control-plane member.
const HA_KINDS: &str = "namespaces,configmaps,secrets,services,serviceaccounts,pods,deployments";

#[test]
fn three_servers_joined_with_a_token_survive_losing_the_first() -> Result<()> {
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    let lab = Lab::create(&Lab::unique_prefix(), 4).context("creating the lab")?;
    let hosts: Vec<&Host> = (1..=4).map(|i| lab.host(i)).collect();
    let kubeconfig = |i: usize| dir.join(format!("cp{}", i + 1)).join("kubeconfig");
    let mut cp1 = Role::new("cp1", &dir, server_args(hosts[0], &dir, "cp1"));
    cp1.start(hosts[0])?;
    wait_for(&mut [&mut cp1], "cp1's API", WAIT, || {
        Ok((kubeconfig(0).is_file()
            && kubectl(hosts[0], &kubeconfig(0), &["get", "--raw", "/readyz"], None).is_ok())
        .then_some(()))
    })?;
    let out = hosts[0]
        .command(shoal_binary()?)?
        .args(["token", "create", "--server-join", "--kubeconfig"])
        .arg(kubeconfig(0))
        .stdin(Stdio::null())
        .output()?;
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "shoal token create --server-join: {printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server_join = join_line(&printed, "shoal server ")?;
    let agent_join = join_line(&printed, "shoal agent ")?;

    // An agent's token does not open the control plane: the joiner stops
    // with the server's reason and joins nothing.
    let out = hosts[0]
        .command(shoal_binary()?)?
        .args(["token", "create", "--kubeconfig"])
        .arg(kubeconfig(0))
        .stdin(Stdio::null())
        .output()?;
    let agent_token = join_line(&String::from_utf8_lossy(&out.stdout), "shoal agent ")?;
    let refused_args = [server_args(hosts[1], &dir, "refused"), server_join.clone()].concat();
    let mut refused_args = refused_args;
    if let (Some(t), Some(a)) = (
        refused_args.iter().rposition(|a| a == "--token"),
        agent_token.iter().position(|a| a == "--token"),
    ) {
        refused_args[t + 1] = agent_token[a + 1].clone();
    }
    let out = hosts[1]
        .command(shoal_binary()?)?
        .args(&refused_args)
        .stdin(Stdio::null())
        .output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && said.contains("shoal token create --server-join"),
        "shoal server --join with an agent's token: {} {said}",
        out.status
    );
    ensure!(
        !dir.join("refused").join("joined.json").exists(),
        "a refused join left joined.json"
    );

    // cp2 joins as a server; cp3 with `shoal up --join`, so it is also a
    // node, tainted as a control-plane node.
    let mut joined = Vec::new();
    for (i, host) in hosts.iter().enumerate().take(3).skip(1) {
        let name = format!("cp{}", i + 1);
        let mut args = [server_args(host, &dir, &name), server_join.clone()].concat();
        if i == 2 {
            args[0] = "up".into();
            args.extend(node_args(host, &name)?);
        }
        let mut member = Role::new(&name, &dir, args);
        member.start(host)?;
        wait_for(&mut [&mut member], &format!("{name}'s API"), WAIT, || {
            Ok((kubeconfig(i).is_file()
                && kubectl(host, &kubeconfig(i), &["get", "--raw", "/readyz"], None).is_ok())
            .then_some(()))
        })?;
        joined.push(member);
    }
    let [cp2, cp3] = joined.as_mut_slice() else {
        bail!("two members joined");
    };

    // The agent is given every server, cp1 (which dies below) first: it
    // talks to cp1 through its load balancer and fails over.
    let mut agent_join = agent_join;
    if let Some(pos) = agent_join.iter().position(|a| a == "--server") {
        agent_join[pos + 1] = hosts[..3]
            .iter()
            .map(|h| format!("https://{}", h.v4(6443)))
            .collect::<Vec<_>>()
            .join(",");
    }
    let agent_dir = dir.join("node-4");
    let mut agent = Role::new(
        "agent",
        &dir,
        [
            vec![
                "agent".to_owned(),
                "--data-dir".into(),
                agent_dir.display().to_string(),
            ],
            agent_join,
            node_args(hosts[3], "node-4")?,
        ]
        .concat(),
    );
    let result = (|| -> Result<()> {
        agent.start(hosts[3])?;
        wait_for(&mut [&mut agent], "node-4 Ready", WAIT, || {
            node_ready(hosts[0], &kubeconfig(0), "node-4")
        })?;
        let cp3_node = wait_for(&mut [&mut *cp3], "node cp3 Ready", WAIT, || {
            node_ready(hosts[0], &kubeconfig(0), "cp3")
        })?;
        ensure!(
            cp3_node["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["key"] == "node-role.kubernetes.io/control-plane"
                    && t["effect"] == "NoSchedule"),
            "node cp3 (shoal up --join) lacks the control-plane taint: {}",
            cp3_node["spec"]
        );

        // Objects written through cp1.
        let mut yaml = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: ha}\n");
        for i in 0..5 {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}, namespace: ha}}\ndata: {{n: \"{i}\"}}\n"
            ));
        }
        yaml.push_str("---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ha}\nstringData: {k: v}\n");
        yaml.push_str("---\napiVersion: v1\nkind: Pod\nmetadata: {name: before, namespace: ha}\nspec:\n  containers: [{name: c, image: busybox, command: [sleep, \"3600\"]}]\n");
        kubectl(hosts[0], &kubeconfig(0), &["apply", "-f", "-"], Some(&yaml))?;
        wait_for(
            &mut [&mut cp1, &mut agent],
            "pod ha/before bound",
            WAIT,
            || {
                let node = kubectl(
                    hosts[0],
                    &kubeconfig(0),
                    &[
                        "get",
                        "pod",
                        "before",
                        "-n",
                        "ha",
                        "-o",
                        "jsonpath={.spec.nodeName}",
                    ],
                    None,
                )?;
                Ok((node == "node-4").then_some(()))
            },
        )?;
        // Three voting members, each with its own name (joined members
        // publish theirs, as etcd members do).
        let members = wait_for(
            &mut [&mut cp1],
            "three named voting store members",
            WAIT,
            || {
                let members = member_list(hosts[0], &dir.join("cp1"))?;
                Ok((members.len() == 3
                    && members.iter().all(|m| m["isLearner"] != true)
                    && names(&members) == ["cp1", "cp2", "cp3"])
                .then_some(members))
            },
        )?;
        let before = listing(hosts[0], &kubeconfig(0), HA_KINDS)?;
        let led = store_leads(hosts[0], &dir.join("cp1")).unwrap_or(false);

        // SIGKILL cp1: the API answers through cp2 within seconds.
        cp1.kill();
        let killed = Instant::now();
        wait_for(
            &mut [&mut *cp2, &mut *cp3],
            "the API through cp2",
            WAIT,
            || {
                Ok(kubectl(
                    hosts[1],
                    &kubeconfig(1),
                    &["get", "configmaps", "-n", "ha"],
                    None,
                )
                .is_ok()
                .then_some(()))
            },
        )?;
        let answered = killed.elapsed();
        ensure!(
            answered < Duration::from_secs(30),
            "the API through cp2 answered {answered:?} after cp1 (the store leader: {led}) was killed"
        );
        // A new pod is bound by a scheduler that took over.
        kubectl(
            hosts[1],
            &kubeconfig(1),
            &["apply", "-f", "-"],
            Some(
                "apiVersion: v1\nkind: Pod\nmetadata: {name: after, namespace: ha}\nspec:\n  containers: [{name: c, image: busybox, command: [sleep, \"3600\"]}]\n",
            ),
        )?;
        wait_for(
            &mut [&mut *cp2, &mut *cp3],
            "pod ha/after bound after cp1 died",
            WAIT,
            || {
                let node = kubectl(
                    hosts[1],
                    &kubeconfig(1),
                    &[
                        "get",
                        "pod",
                        "after",
                        "-n",
                        "ha",
                        "-o",
                        "jsonpath={.spec.nodeName}",
                    ],
                    None,
                )?;
                Ok((node == "node-4").then_some(()))
            },
        )?;
        // The agent failed over: its Lease is renewed through another
        // server and the new pod runs on it.
        let renewed = |host: &Host, i: usize| {
            kubectl(
                host,
                &kubeconfig(i),
                &[
                    "get",
                    "lease",
                    "node-4",
                    "-n",
                    "kube-node-lease",
                    "-o",
                    "jsonpath={.spec.renewTime}",
                ],
                None,
            )
        };
        let seen = renewed(hosts[1], 1)?;
        wait_for(
            &mut [&mut *cp2, &mut *cp3, &mut agent],
            "node-4's Lease renewed after cp1 died",
            WAIT,
            || Ok((renewed(hosts[1], 1)? != seen).then_some(())),
        )?;
        wait_for(
            &mut [&mut *cp2, &mut *cp3, &mut agent],
            "pod ha/after running on node-4 after cp1 died",
            WAIT,
            || pod_running(hosts[1], &kubeconfig(1), "after"),
        )?;
        // etcd's reconfiguration check: with cp1 down, removing cp3 would
        // leave cp1 and cp2 needing each other; refused. Like etcd, the
        // leader counts a member as started while it answered within the
        // last 5 s (HealthInterval): when cp1 was not the leader, the waits
        // above can end sooner than that, and the removal would then be
        // let through and wait for cp1. Ask once cp1 is surely down.
        if let Some(rest) = Duration::from_secs(7).checked_sub(killed.elapsed()) {
            std::thread::sleep(rest);
        }
        let ids = member_ids(&members);
        let refused = etcdctl_in(
            hosts[1],
            &dir.join("cp2"),
            // etcdctl's 5 s default is short on a loaded machine.
            &[
                "--command-timeout=20s",
                "member",
                "remove",
                &format!("{:x}", ids["cp3"]),
            ],
        )?;
        ensure!(
            !refused.status.success()
                && String::from_utf8_lossy(&refused.stderr).contains("not enough started members"),
            "removing cp3 while cp1 is down: {} {}",
            refused.status,
            String::from_utf8_lossy(&refused.stderr)
        );
        let after: Vec<String> = listing(hosts[1], &kubeconfig(1), HA_KINDS)?
            .into_iter()
            .filter(|o| !o.starts_with("Pod/ha/after/"))
            .collect();
        ensure!(
            after == before,
            "the listing through cp2 differs from the one before cp1 was killed:\nonly before: {:?}\nonly after: {:?}",
            before
                .iter()
                .filter(|o| !after.contains(o))
                .collect::<Vec<_>>(),
            after
                .iter()
                .filter(|o| !before.contains(o))
                .collect::<Vec<_>>()
        );
        // A joined member restarts from its data dir without the token:
        // with cp1 gone, cp3 alone has no quorum until cp2 is back.
        cp2.stop(Duration::from_secs(10));
        let without_join = cp2.args.len().saturating_sub(server_join.len());
        cp2.args.truncate(without_join);
        cp2.start(hosts[1])?;
        let again = wait_for(
            &mut [&mut *cp2, &mut *cp3],
            "the API through cp2 after its restart",
            WAIT,
            || {
                Ok(listing(hosts[1], &kubeconfig(1), HA_KINDS)
                    .ok()
                    .filter(|l| l.len() == after.len() + 1))
            },
        )?;
        ensure!(
            again
                .iter()
                .filter(|o| !o.starts_with("Pod/ha/after/"))
                .eq(after.iter()),
            "the listing through the restarted cp2 differs: {again:?}"
        );
        // cp1 is gone for good: `etcdctl member remove` through cp2.
        let removed = etcdctl_in(
            hosts[1],
            &dir.join("cp2"),
            &["member", "remove", &format!("{:x}", ids["cp1"])],
        )?;
        ensure!(
            removed.status.success(),
            "etcdctl member remove cp1: {}",
            String::from_utf8_lossy(&removed.stderr)
        );
        let left = names(&member_list(hosts[1], &dir.join("cp2"))?);
        ensure!(
            left == ["cp2", "cp3"],
            "members after removing cp1: {left:?}"
        );

        // cp3 leaves on purpose: `shoal leave` removes its member and its
        // `shoal up` stops; cp2 serves alone and node-4 keeps working
        // (failing over again if it talked to cp3).
        let out = hosts[2]
            .command(shoal_binary()?)?
            .args(["leave", "--data-dir"])
            .arg(dir.join("cp3"))
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "shoal leave on cp3: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(&mut [&mut *cp2], "cp3 stopped after leaving", WAIT, || {
            Ok(cp3.exited()?.then_some(()))
        })?;
        // Its node went with it, deleted through cp2 (cp1, which it joined
        // through, is gone).
        let said = String::from_utf8_lossy(&out.stdout);
        ensure!(
            said.contains("deleted node cp3 through"),
            "shoal leave on cp3 did not delete node cp3: {said}"
        );
        let nodes = kubectl(
            hosts[1],
            &kubeconfig(1),
            &["get", "nodes", "-o", "name"],
            None,
        )?;
        ensure!(
            !nodes.lines().any(|l| l == "node/cp3"),
            "node cp3 is still listed after shoal leave: {nodes}"
        );
        let left = names(&member_list(hosts[1], &dir.join("cp2"))?);
        ensure!(left == ["cp2"], "members after cp3 left: {left:?}");
        kubectl(
            hosts[1],
            &kubeconfig(1),
            &["apply", "-f", "-"],
            Some(
                "apiVersion: v1\nkind: Pod\nmetadata: {name: last, namespace: ha}\nspec:\n  containers: [{name: c, image: busybox, command: [sleep, \"3600\"]}]\n",
            ),
        )?;
        wait_for(
            &mut [&mut *cp2, &mut agent],
            "pod ha/last running on node-4 with cp2 alone",
            WAIT,
            || pod_running(hosts[1], &kubeconfig(1), "last"),
        )?;
        eprintln!(
            "members {}; API back {answered:?} after killing cp1 (store leader: {led})",
            members.len()
        );
        Ok(())
    })();
    agent.stop(Duration::from_secs(5));
    for member in &mut joined {
        member.stop(Duration::from_secs(5));
    }
    let cleaned = reset(hosts[3], &agent_dir).and(reset(hosts[2], &dir.join("cp3").join("agent")));
    result.and(cleaned)
}
