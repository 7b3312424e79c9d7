//! Service behaviour users notice, in a two-node lab cluster driven by
//! kubectl: no nftables ruleset on any node; a pod reaches its own
//! Service (ClusterIP and NodePort) when it is the backend picked
//! (hairpin); ClientIP session affinity keeps a pod and the node each on
//! one backend, and a 2 s timeout expires; a Service scaled 0→4→0 refuses connects at once at 0, from a
//! pod and from the node; a long-lived connection through a ClusterIP
//! survives its node's agent restarting; a pod whose readiness fails stops
//! receiving new connections within a second of its EndpointSlice saying
//! so. One cluster serves every check, in sequence, both families each
//! time. (A rolling update under a client loop is in `workloads.rs`; the
//! iptables checks in `pods.rs`.)

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::ready;
use shoal_e2e::{
    cluster::{ClusterConfig, LabCluster},
    lab::{Host, Lab, Probe},
};

const WAIT: Duration = Duration::from_secs(90);
const CONNECT: Duration = Duration::from_secs(3);
/// How long after the test sees an endpoint turn not-ready a new
/// connection may still land on it.
const READINESS_MARGIN: Duration = Duration::from_secs(1);

/// Two pods, one per node: `nc` answers port 9000 with the pod's name and
/// echoes port 9100; httpd serves `/ready` for the readiness probe, which
/// fails once the file is removed.
const ECHO: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: NAME
  labels: {app: echo, pod: NAME}
spec:
  nodeSelector: {kubernetes.io/hostname: NODE}
  containers:
  - name: echo
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && touch /www/ready && httpd -p 8080 -h /www && (nc -ll -p 9100 -e cat &) && exec nc -ll -p 9000 -e hostname"]
    readinessProbe:
      httpGet: {path: /ready, port: 8080}
      periodSeconds: 1
      failureThreshold: 1
"#;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: echo}
  ports: [{name: name, port: 80, targetPort: 9000}, {name: cat, port: 81, targetPort: 9100}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: echo}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{name: name, port: 80, targetPort: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: scaled}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: scaled}
  ports: [{name: name, port: 80, targetPort: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: scaled-sticky}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: scaled}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 2}}
  ports: [{name: name, port: 80, targetPort: 9000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: scaled}
spec:
  replicas: 0
  selector: {matchLabels: {app: scaled}}
  template:
    metadata: {labels: {app: scaled}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: busybox
        command: ["nc", "-ll", "-p", "9000", "-e", "hostname"]
---
apiVersion: v1
kind: Service
metadata: {name: hairpin}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  selector: {pod: echo-a}
  ports: [{name: name, port: 80, targetPort: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeSelector: {kubernetes.io/hostname: node-2}
  containers:
  - name: sh
    image: busybox
    command: ["sleep", "3600"]
"#;

fn probe() -> Probe {
    Probe::new(env!("CARGO_BIN_EXE_probe"))
}

fn json(c: &LabCluster, args: &[&str]) -> Result<Value> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&c.kubectl_ok(&full, None)?).context("kubectl's JSON")
}

/// The Service's ClusterIPs, IPv4 first.
fn cluster_ips(c: &LabCluster, service: &str) -> Result<Vec<IpAddr>> {
    let svc = json(c, &["service", service])?;
    let ips = svc["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str()?.parse().ok())
        .collect::<Vec<IpAddr>>();
    ensure!(
        ips.len() == 2 && ips[0].is_ipv4() && ips[1].is_ipv6(),
        "service {service} should have an IPv4 and an IPv6 ClusterIP: {}",
        svc["spec"]
    );
    Ok(ips)
}

/// One TCP connection from node `i`'s netns: the name of the pod that
/// answered, or the probe's error report.
fn name_from_node(c: &LabCluster, i: usize, addr: SocketAddr) -> Result<Result<String, Value>> {
    let reply = probe().tcp(c.host(i), addr, CONNECT)?;
    if reply["ok"] != true {
        return Ok(Err(reply));
    }
    Ok(Ok(reply["body"]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_owned()))
}

/// `kubectl exec client -- sh -c SCRIPT`: (exit code, stdout, stderr).
fn exec_client(c: &LabCluster, script: &str) -> Result<(Option<i32>, String, String)> {
    let out = c.kubectl(&["exec", "client", "--", "sh", "-c", script], None)?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `host` for `nc`: IPv6 literals as they are.
fn nc_target(ip: IpAddr, port: u16) -> String {
    format!("{ip} {port}")
}

#[test]
fn services_behave_as_users_expect_in_a_lab_cluster() -> Result<()> {
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    let mut cfg = ClusterConfig::new(&Lab::unique_prefix(), 2, &dir)?;
    cfg.backoff_seconds = 1;
    let mut c = LabCluster::start(cfg)?;

    for (name, node) in [("echo-a", "node-1"), ("echo-b", "node-2")] {
        c.apply(&ECHO.replace("NAME", name).replace("NODE", node))?;
    }
    c.apply(SERVICES)?;
    c.wait_for("echo-a, echo-b and client Ready", WAIT, |c| {
        let pods = json(c, &["pods"])?;
        let ready: Vec<&str> = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| ready(p))
            .filter_map(|p| p["metadata"]["name"].as_str())
            .collect();
        Ok(["echo-a", "echo-b", "client"]
            .iter()
            .all(|n| ready.contains(n))
            .then_some(()))
    })?;
    let echo = cluster_ips(&c, "echo")?;
    // Both pods answer through the Service, from either node, both
    // families, once the agents have programmed it.
    for i in 0..2 {
        for ip in &echo {
            let addr = SocketAddr::new(*ip, 80);
            c.wait_for(
                &format!("node-{} reaches both pods via {addr}", i + 1),
                WAIT,
                |c| {
                    let mut seen = BTreeMap::new();
                    for _ in 0..16 {
                        if let Ok(name) = name_from_node(c, i, addr)? {
                            *seen.entry(name).or_insert(0) += 1;
                        }
                    }
                    Ok((seen.len() == 2).then_some(()))
                },
            )?;
        }
    }

    no_nftables_ruleset(&c)?;
    hairpin(&mut c)?;
    client_ip_affinity(&c)?;
    scaled_to_zero_refuses_at_once(&mut c)?;
    connection_survives_agent_restart(&mut c, &echo)?;
    readiness_failure_stops_new_connections(&mut c, &echo)?;
    Ok(())
}

/// Hairpin: echo-a, the only backend of `hairpin`, reaches its own
/// Service through both ClusterIPs and through the NodePort on its node's
/// addresses, is picked as the backend each time and answers itself.
fn hairpin(c: &mut LabCluster) -> Result<()> {
    let svc = json(c, &["service", "hairpin"])?;
    let port = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .context("hairpin has no nodePort")?;
    let mut targets: Vec<String> = cluster_ips(c, "hairpin")?
        .into_iter()
        .map(|ip| nc_target(ip, 80))
        .collect();
    let node1 = c.host(0).clone();
    targets.push(format!("{} {port}", node1.ipv4()));
    targets.push(format!("{} {port}", node1.ipv6()));
    for target in targets {
        let script = format!("nc -w 3 {target} </dev/null");
        let answered = c.wait_for(
            &format!("echo-a reaching itself through {target}"),
            WAIT,
            |c| {
                let out = c.kubectl(&["exec", "echo-a", "--", "sh", "-c", &script], None)?;
                let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                Ok((out.status.success() && !stdout.is_empty()).then_some(stdout))
            },
        )?;
        ensure!(
            answered == "echo-a",
            "echo-a → {target} (hairpin) was answered by {answered:?}"
        );
    }
    Ok(())
}

/// `nft list ruleset` in every node's netns shows no table: nothing
/// shoal runs writes nftables (iptables-save is checked in `pods.rs`).
fn no_nftables_ruleset(c: &LabCluster) -> Result<()> {
    for i in 0..2 {
        let out = c
            .host(i)
            .command("nft")?
            .args(["list", "ruleset"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| {
                format!(
                    "running nft on node-{} (cargo xtask setup installs nftables)",
                    i + 1
                )
            })?;
        ensure!(
            out.status.success(),
            "nft list ruleset on node-{} failed: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            text.trim().is_empty(),
            "nft list ruleset on node-{} shows rules:\n{text}",
            i + 1
        );
    }
    Ok(())
}

/// Which replicas `n` connections from node-1 to `addr` reached, and how
/// many each.
fn node_spread(c: &LabCluster, addr: SocketAddr, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut names = BTreeMap::new();
    for _ in 0..n {
        let name =
            name_from_node(c, 0, addr)?.map_err(|e| anyhow::anyhow!("node-1 → {addr}: {e}"))?;
        *names.entry(name).or_insert(0) += 1;
    }
    Ok(names)
}

/// sessionAffinity: ClientIP keeps 20 connections of the node (its netns
/// is one client) and of a pod (another) each on one backend, both
/// families, while the plain Service spreads the same client's connections.
fn client_ip_affinity(c: &LabCluster) -> Result<()> {
    let sticky = cluster_ips(c, "sticky")?;
    for ip in &sticky {
        let addr = SocketAddr::new(*ip, 80);
        let names = node_spread(c, addr, 20)?;
        ensure!(
            names.len() == 1,
            "node-1 → {addr} (ClientIP affinity): 20 connections went to {names:?}"
        );
        // `shoal dataplane affinity` on node-1 shows the entry, live.
        let table = shoal_e2e::cluster::shoal_dataplane(c.host(0), "affinity")?;
        ensure!(
            table
                .lines()
                .any(|l| l.contains(&format!("{addr}/TCP")) && l.contains(" yes ")),
            "shoal dataplane affinity on node-1 shows no live entry for {addr}: {table}"
        );
        let script = format!(
            "for i in $(seq 20); do nc -w 3 {} </dev/null || exit 1; done",
            nc_target(*ip, 80)
        );
        let (code, stdout, stderr) = exec_client(c, &script)?;
        let mut names = BTreeMap::new();
        for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
            *names.entry(line.trim().to_owned()).or_insert(0) += 1;
        }
        ensure!(
            code == Some(0) && names.values().sum::<i32>() == 20 && names.len() == 1,
            "pod client → {addr} (ClientIP affinity): exit {code:?}, answers {names:?}, stderr {stderr:?}"
        );
    }
    // The same client without affinity: both pods answer.
    for ip in cluster_ips(c, "echo")? {
        let addr = SocketAddr::new(ip, 80);
        let script = format!(
            "for i in $(seq 20); do nc -w 3 {} </dev/null || exit 1; done",
            nc_target(ip, 80)
        );
        let (code, stdout, stderr) = exec_client(c, &script)?;
        let names: std::collections::BTreeSet<&str> = stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        ensure!(
            code == Some(0) && names.len() == 2,
            "pod client → {addr} (no affinity): exit {code:?}, answers {names:?}, stderr {stderr:?}"
        );
    }
    Ok(())
}

/// A connect from node-1's netns to every ClusterIP of `scaled`: the
/// probe's replies.
fn probe_scaled(c: &LabCluster, ips: &[IpAddr]) -> Result<Vec<Value>> {
    ips.iter()
        .map(|ip| Ok(probe().tcp(c.host(0), SocketAddr::new(*ip, 80), CONNECT)?))
        .collect()
}

fn refused(reply: &Value) -> bool {
    reply["ok"] == false && reply["raw_os_error"] == libc::ECONNREFUSED
}

/// Replicas of `scaled` while it is scaled up.
const REPLICAS: usize = 4;

/// At 0 endpoints, connects to the ClusterIPs fail at once with
/// ECONNREFUSED (not a timeout), from the node and from a pod on the
/// other node; at 4 every replica answers; back at 0 they are refused
/// again.
fn scaled_to_zero_refuses_at_once(c: &mut LabCluster) -> Result<()> {
    let ips = cluster_ips(c, "scaled")?;
    let check_refused = |c: &mut LabCluster, when: &str| -> Result<()> {
        c.wait_for(&format!("{when}: connects to scaled refused"), WAIT, |c| {
            Ok(probe_scaled(c, &ips)?.iter().all(refused).then_some(()))
        })?;
        for ip in &ips {
            let addr = SocketAddr::new(*ip, 80);
            let started = Instant::now();
            let reply = probe().tcp(c.host(0), addr, CONNECT)?;
            let took = started.elapsed();
            ensure!(
                refused(&reply) && took < Duration::from_secs(2),
                "{when}: node-1 → {addr} must be refused at once: {reply} after {took:?}"
            );
            let script = format!("nc -w 5 {} </dev/null", nc_target(*ip, 80));
            let started = Instant::now();
            let (code, stdout, stderr) = exec_client(c, &script)?;
            let took = started.elapsed();
            ensure!(
                code != Some(0) && stderr.contains("Connection refused"),
                "{when}: pod client → {addr} must be refused: exit {code:?} after {took:?}, {stdout:?} {stderr:?}"
            );
        }
        Ok(())
    };
    check_refused(c, "0 replicas")?;

    c.kubectl_ok(
        &[
            "scale",
            "deployment",
            "scaled",
            "--replicas",
            &REPLICAS.to_string(),
        ],
        None,
    )?;
    for service in ["scaled", "scaled-sticky"] {
        c.wait_for(
            &format!("{service}: {REPLICAS} ready endpoints per family"),
            WAIT,
            |c| {
                let slices = json(
                    c,
                    &[
                        "endpointslices",
                        "-l",
                        &format!("kubernetes.io/service-name={service}"),
                    ],
                )?;
                let ready = slices["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
                    .filter(|e| e["conditions"]["ready"] == true)
                    .count();
                Ok((ready == 2 * REPLICAS).then_some(()))
            },
        )?;
    }
    c.wait_for(
        "scaled: every replica answers on both ClusterIPs",
        WAIT,
        |c| {
            for ip in &ips {
                let addr = SocketAddr::new(*ip, 80);
                let mut seen = std::collections::BTreeSet::new();
                for _ in 0..24 {
                    if let Ok(name) = name_from_node(c, 0, addr)? {
                        seen.insert(name);
                    }
                }
                if seen.len() < REPLICAS || !seen.iter().all(|n| n.starts_with("scaled-")) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )?;
    short_affinity_expires(c)?;
    for ip in &ips {
        let (code, stdout, stderr) =
            exec_client(c, &format!("nc -w 5 {} </dev/null", nc_target(*ip, 80)))?;
        ensure!(
            code == Some(0) && stdout.trim().starts_with("scaled-"),
            "pod client → {ip}: a replica must answer: exit {code:?} {stdout:?} {stderr:?}"
        );
    }

    c.kubectl_ok(&["scale", "deployment", "scaled", "--replicas", "0"], None)?;
    // Until its pods are gone, terminating endpoints still serve (they
    // are used when no endpoint is ready), some already without a pod.
    c.wait_for("scaled: every replica gone", WAIT, |c| {
        let pods = json(c, &["pods", "-l", "app=scaled"])?;
        Ok(pods["items"]
            .as_array()
            .is_none_or(|a| a.is_empty())
            .then_some(()))
    })?;
    check_refused(c, "back at 0 replicas")
}

/// `scaled-sticky` (ClientIP, timeoutSeconds 2, over the 4 replicas):
/// node-1's connections stay on one replica while it keeps using the
/// Service; after 2 s without traffic each connect picks anew, so 6 such
/// picks do not all land on one replica (odds 4^-5 per family).
fn short_affinity_expires(c: &LabCluster) -> Result<()> {
    let ips = cluster_ips(c, "scaled-sticky")?;
    let mut picks = vec![std::collections::BTreeSet::new(); ips.len()];
    for (k, ip) in ips.iter().enumerate() {
        let addr = SocketAddr::new(*ip, 80);
        let names = node_spread(c, addr, 20)?;
        ensure!(
            names.len() == 1,
            "node-1 → {addr} (ClientIP affinity, 2 s): 20 back-to-back connections went to {names:?}"
        );
        picks[k].extend(names.into_keys());
    }
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(2500));
        for (k, ip) in ips.iter().enumerate() {
            let addr = SocketAddr::new(*ip, 80);
            let name =
                name_from_node(c, 0, addr)?.map_err(|e| anyhow::anyhow!("node-1 → {addr}: {e}"))?;
            picks[k].insert(name);
        }
    }
    for (ip, names) in ips.iter().zip(&picks) {
        ensure!(
            names.len() >= 2,
            "node-1 → {ip}:80: 6 picks, each after the 2 s affinity timeout, all went to {names:?}"
        );
    }
    Ok(())
}

/// `busybox nc ADDR PORT` in node-1's netns: a long-lived TCP connection
/// to the `cat` port, which echoes every line.
struct LongLived {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
    exchanged: u32,
}

impl LongLived {
    fn open(host: &Host, addr: SocketAddr) -> Result<Self> {
        let mut child = host
            .command("busybox")?
            .args(["nc", &addr.ip().to_string(), &addr.port().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running busybox nc on node-1")?;
        let stdin = child.stdin.take().context("nc's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("nc's stdout")?);
        let (tx, rx) = std::sync::mpsc::channel();
        let mut conn = Self {
            child,
            stdin,
            stdout,
            addr,
            exchanged: 0,
        };
        // The first exchange proves the connection is up; it must not hang.
        let handle = thread::spawn(move || {
            let r = conn.exchange("hello");
            let _ = tx.send(());
            (conn, r)
        });
        rx.recv_timeout(CONNECT * 2)
            .map_err(|_| anyhow::anyhow!("no echo through {addr} within {:?}", CONNECT * 2))?;
        let (conn, r) = handle
            .join()
            .map_err(|_| anyhow::anyhow!("the nc thread panicked"))?;
        r?;
        Ok(conn)
    }

    /// Sends one line and reads it back.
    fn exchange(&mut self, what: &str) -> Result<()> {
        self.exchanged += 1;
        let line = format!("{what} {}", self.exchanged);
        writeln!(self.stdin, "{line}")
            .with_context(|| format!("writing to the connection through {}", self.addr))?;
        self.stdin.flush()?;
        let mut back = String::new();
        self.stdout.read_line(&mut back)?;
        ensure!(
            back.trim_end() == line,
            "the connection through {} echoed {back:?} for {line:?} (nc exited: {:?})",
            self.addr,
            self.child.try_wait()
        );
        Ok(())
    }
}

impl Drop for LongLived {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection through each ClusterIP stays up and keeps exchanging
/// data while node-1's agent is killed and started again.
fn connection_survives_agent_restart(c: &mut LabCluster, echo: &[IpAddr]) -> Result<()> {
    let mut conns = echo
        .iter()
        .map(|ip| LongLived::open(c.host(0), SocketAddr::new(*ip, 81)))
        .collect::<Result<Vec<_>>>()?;
    // Reads block: a stalled connection is caught by the watchdog below.
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        let pids: Vec<u32> = conns.iter().map(|c| c.child.id()).collect();
        thread::spawn(move || {
            let deadline = Instant::now() + WAIT * 2;
            while !done.load(Ordering::Relaxed) {
                if Instant::now() > deadline {
                    for pid in &pids {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(*pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let result = (|| -> Result<()> {
        c.kill_agent(0)?;
        for conn in &mut conns {
            conn.exchange("agent down")?;
        }
        thread::sleep(Duration::from_secs(1));
        for conn in &mut conns {
            conn.exchange("agent still down")?;
        }
        c.start_agent(0)?;
        c.wait_ready_nodes(WAIT)?;
        // The restarted agent has re-synced its services: a new connection
        // through the ClusterIP works again.
        for ip in echo {
            let addr = SocketAddr::new(*ip, 80);
            c.wait_for(&format!("node-1 → {addr} after the restart"), WAIT, |c| {
                Ok(name_from_node(c, 0, addr)?.ok())
            })?;
        }
        for conn in &mut conns {
            conn.exchange("agent back")?;
        }
        Ok(())
    })();
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    result
}

/// One request of the readiness client loop.
struct Sample {
    started: Instant,
    answer: Result<String, Value>,
}

/// echo-b's readiness starts failing while clients on node-1 connect in a
/// loop through both ClusterIPs: once the EndpointSlices (as kubectl shows
/// them) say echo-b is not ready, no connection started later than
/// READINESS_MARGIN after that lands on it, and none fails.
fn readiness_failure_stops_new_connections(c: &mut LabCluster, echo: &[IpAddr]) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = echo
        .iter()
        .map(|ip| {
            let host = c.host(0).clone();
            let addr = SocketAddr::new(*ip, 80);
            let stop = stop.clone();
            thread::spawn(move || -> Result<Vec<Sample>> {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let reply = probe().tcp(&host, addr, CONNECT)?;
                    let answer = if reply["ok"] == true {
                        Ok(reply["body"].as_str().unwrap_or_default().trim().to_owned())
                    } else {
                        Err(reply)
                    };
                    samples.push(Sample { started, answer });
                }
                Ok(samples)
            })
        })
        .collect();

    let result = (|| -> Result<Instant> {
        thread::sleep(Duration::from_secs(1));
        c.kubectl_ok(&["exec", "echo-b", "--", "rm", "/www/ready"], None)?;
        // Both families' slices list echo-b as not ready (or not at all).
        let not_ready = c.wait_for("echo-b not ready in both EndpointSlices", WAIT, |c| {
            let slices = json(
                c,
                &["endpointslices", "-l", "kubernetes.io/service-name=echo"],
            )?;
            let slices: Vec<&Value> = slices["items"].as_array().into_iter().flatten().collect();
            let families: std::collections::BTreeSet<&str> = slices
                .iter()
                .filter_map(|s| s["addressType"].as_str())
                .collect();
            let still_ready = slices
                .iter()
                .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
                .any(|e| e["targetRef"]["name"] == "echo-b" && e["conditions"]["ready"] != false);
            Ok((families.len() == 2 && !still_ready).then(Instant::now))
        })?;
        thread::sleep(READINESS_MARGIN + Duration::from_secs(2));
        Ok(not_ready)
    })();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for (client, ip) in clients.into_iter().zip(echo) {
        let samples = client
            .join()
            .map_err(|_| anyhow::anyhow!("the client thread for {ip} panicked"))??;
        all.push((*ip, samples));
    }
    let not_ready = result?;
    let cutoff = not_ready + READINESS_MARGIN;
    for (ip, samples) in &all {
        if let Some(failed) = samples.iter().find(|s| s.answer.is_err()) {
            bail!(
                "node-1 → {ip}:80: a request failed while echo-b turned not ready: {:?}",
                failed.answer
            );
        }
        let before = samples
            .iter()
            .filter(|s| s.started < not_ready)
            .filter(|s| s.answer.as_deref() == Ok("echo-b"))
            .count();
        let after: Vec<&Sample> = samples.iter().filter(|s| s.started > cutoff).collect();
        let late: Vec<Duration> = after
            .iter()
            .filter(|s| s.answer.as_deref() == Ok("echo-b"))
            .map(|s| s.started - not_ready)
            .collect();
        ensure!(
            before > 0,
            "node-1 → {ip}:80: echo-b never answered before it turned not ready"
        );
        ensure!(
            after.len() >= 5,
            "node-1 → {ip}:80: only {} requests after the cutoff",
            after.len()
        );
        ensure!(
            late.is_empty(),
            "node-1 → {ip}:80: {} of {} connections started more than {READINESS_MARGIN:?} after the EndpointSlice said echo-b is not ready still landed on it (at {late:?})",
            late.len(),
            after.len()
        );
    }
    Ok(())
}
