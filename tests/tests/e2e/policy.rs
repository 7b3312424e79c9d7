//! NetworkPolicy enforced in the pod interfaces' eBPF programs, asserted
//! with real TCP connections over both families in one lab cluster: three
//! nodes plus two lab hosts that run no agent (clients outside the
//! cluster, routed to the server pod through its node).
//!
//! The server pod runs on node-3; clients in three namespaces run on
//! node-2, so every allowed connection also proves that both nodes agree
//! on the clients' identities. The cases are the policies users try first:
//! egress only to DNS, deny all ingress, allow from a namespace, allow by
//! podSelector, ipBlock with except; refusals show up as
//! `policy_drop_*` counters (`shoal dataplane drops`, `/metrics`) and as
//! `dropped_policy` flow records. Last, a connection established before a
//! deny-all keeps working while new ones are refused.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_e2e::{
    cluster::{ClusterConfig, LabCluster},
    lab::{Host, Lab},
};

use super::ready;

const WAIT: Duration = Duration::from_secs(90);

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {team: dev}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {team: other}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: prod, labels: {app: server}}
spec:
  nodeSelector: {kubernetes.io/hostname: node-3}
  containers:
  - name: server
    image: busybox
    command: ["sh", "-c", "nc -ll -p 9000 -e hostname & nc -ll -p 9100 -e cat"]
    readinessProbe:
      tcpSocket: {port: 9000}
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: prod}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  ipFamilyPolicy: RequireDualStack
  selector: {app: server}
  ports: [{name: name, port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: prod, labels: {app: client}}
spec:
  nodeSelector: {kubernetes.io/hostname: node-2}
  containers: [{name: sh, image: busybox, command: ["sleep", "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: dev, labels: {app: client}}
spec:
  nodeSelector: {kubernetes.io/hostname: node-2}
  containers: [{name: sh, image: busybox, command: ["sleep", "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: other, labels: {app: client}}
spec:
  nodeSelector: {kubernetes.io/hostname: node-2}
  containers: [{name: sh, image: busybox, command: ["sleep", "3600"]}]
"#;

const EGRESS_DNS_ONLY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-only, namespace: other}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
"#;

const DENY_ALL_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

const ALLOW_FROM_DEV: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dev, namespace: prod}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: dev}}}]
"#;

const ALLOW_CLIENT: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client, namespace: prod}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: 9000}]
"#;

fn json(c: &LabCluster, args: &[&str]) -> Result<Value> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&c.kubectl_ok(&full, None)?).context("kubectl's JSON")
}

fn ips(v: &Value, field: &str) -> Vec<IpAddr> {
    v[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().or_else(|| x["ip"].as_str())?.parse().ok())
        .collect()
}

/// Whether pod `ns/pod` opens a TCP connection to `ip:port`, sends a line
/// and reads a reply within 2 s (port 9000 answers its name, 9100 echoes).
fn pod_connects(c: &LabCluster, ns: &str, pod: &str, ip: IpAddr, port: u16) -> Result<bool> {
    let script = format!("echo hi | nc -w 2 {ip} {port} | grep -q . && echo yes || echo no");
    let out = c.kubectl(&["exec", "-n", ns, pod, "--", "sh", "-c", &script], None)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => anyhow::bail!(
            "{ns}/{pod} → {ip}:{port}: {stdout:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Whether lab host `host` (outside the cluster) opens a TCP connection to
/// `target` and reads a reply within 2 s.
fn host_connects(host: &Host, target: SocketAddr) -> Result<bool> {
    let netns = host.netns_path();
    std::thread::spawn(move || -> Result<bool> {
        let ns = std::fs::File::open(&netns)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let timeout = Duration::from_secs(2);
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&target, timeout) else {
            return Ok(false);
        };
        s.set_read_timeout(Some(timeout))?;
        let mut reply = [0u8; 64];
        Ok(matches!(s.read(&mut reply), Ok(n) if n > 0))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the connect thread panicked"))?
}

/// Waits until `ns/pod` → each of `ips`:`port` connects (`want`) or is
/// refused (`!want`): policy changes take effect within a sync pass.
fn expect_pod(
    c: &mut LabCluster,
    (ns, pod): (&str, &str),
    ips: &[IpAddr],
    port: u16,
    want: bool,
) -> Result<()> {
    for ip in ips {
        let what = if want { "connects" } else { "is refused" };
        c.wait_for(&format!("{ns}/{pod} → {ip}:{port} {what}"), WAIT, |c| {
            Ok((pod_connects(c, ns, pod, *ip, port)? == want).then_some(()))
        })?;
    }
    Ok(())
}

/// Like [`expect_pod`] from a lab host outside the cluster.
fn expect_host(c: &mut LabCluster, host: &Host, targets: &[SocketAddr], want: bool) -> Result<()> {
    for target in targets {
        let what = if want { "connects" } else { "is refused" };
        c.wait_for(
            &format!("{} → {target} {what}", host.name()),
            WAIT,
            |_| Ok((host_connects(host, *target)? == want).then_some(())),
        )?;
    }
    Ok(())
}

/// `ip ...` inside lab host `host`.
fn ip_in(host: &Host, args: &[&str]) -> Result<()> {
    let out = host
        .command("ip")?
        .args(args)
        .output()
        .with_context(|| format!("running ip {args:?} in {}", host.name()))?;
    ensure!(
        out.status.success(),
        "ip {args:?} in {} failed: {}",
        host.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The count of `reason` in `shoal dataplane drops` on `host`.
fn drops(host: &Host, reason: &str) -> Result<u64> {
    let table = shoal_e2e::cluster::shoal_dataplane(host, "drops")?;
    table
        .lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(reason)).then(|| cols.next()?.parse().ok())?
        })
        .with_context(|| format!("no {reason} row in shoal dataplane drops:\n{table}"))
}

/// `GET /metrics` of the agent on `host`.
fn agent_metrics(host: &Host) -> Result<String> {
    let target = host.v4(10256);
    let netns = host.netns_path();
    std::thread::spawn(move || -> Result<String> {
        let ns = std::fs::File::open(&netns)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(s, "GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the metrics thread panicked"))?
}

/// Lines in `file` of pod `ns/pod`.
fn lines_in(c: &LabCluster, ns: &str, pod: &str, file: &str) -> Result<usize> {
    let out = c.kubectl_ok(
        &[
            "exec",
            "-n",
            ns,
            pod,
            "--",
            "sh",
            "-c",
            &format!("cat {file} 2>/dev/null | wc -l"),
        ],
        None,
    )?;
    out.trim()
        .parse()
        .with_context(|| format!("wc -l of {ns}/{pod}:{file}: {out:?}"))
}

#[test]
fn network_policy_enforced_with_real_connections_both_families() -> Result<()> {
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    // host-4 and host-5 are on the fabric but run no agent: clients
    // outside the cluster.
    let mut cfg = ClusterConfig::new(&Lab::unique_prefix(), 5, &dir)?;
    cfg.agents = 3;
    // Idle TCP flows leave the flow table after 3 s, so the last case can
    // show a connection outliving its entry.
    cfg.agent_args = ["--flow-tcp-idle", "3s"].map(String::from).to_vec();
    let mut c = LabCluster::start(cfg)?;
    c.apply(OBJECTS)?;
    c.wait_for("the server and the three clients Ready", WAIT, |c| {
        let pods = json(c, &["pods", "-A"])?;
        let n = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| ready(p))
            .count();
        Ok((n >= 4).then_some(()))
    })?;
    let server = ips(
        &json(&c, &["pod", "-n", "prod", "server"])?["status"],
        "podIPs",
    );
    let svc = ips(
        &json(&c, &["service", "-n", "prod", "server"])?["spec"],
        "clusterIPs",
    );
    ensure!(
        server.len() == 2 && svc.len() == 2,
        "the server should have two pod IPs ({server:?}) and its Service two ClusterIPs ({svc:?})"
    );
    let (node2, node3) = (c.host(1).clone(), c.host(2).clone());
    let (inside, excepted) = (c.host(3).clone(), c.host(4).clone());
    // The outside hosts reach the server pod through node-3.
    for host in [&inside, &excepted] {
        for ip in &server {
            let (prefix, via) = match ip {
                IpAddr::V4(_) => (format!("{ip}/32"), node3.ipv4().to_string()),
                IpAddr::V6(_) => (format!("{ip}/128"), node3.ipv6().to_string()),
            };
            ip_in(host, &["route", "replace", &prefix, "via", &via])?;
        }
    }
    let from_outside: Vec<SocketAddr> =
        server.iter().map(|ip| SocketAddr::new(*ip, 9000)).collect();

    // No policy: everyone reaches the server, both families.
    for ns in ["prod", "dev", "other"] {
        expect_pod(&mut c, (ns, "client"), &server, 9000, true)?;
    }
    expect_host(&mut c, &inside, &from_outside, true)?;
    expect_host(&mut c, &excepted, &from_outside, true)?;

    // Egress only to DNS: names resolve through the node-local DNS (the
    // kube-dns identity), TCP to a pod is refused, and through its Service.
    c.apply(EGRESS_DNS_ONLY)?;
    expect_pod(&mut c, ("other", "client"), &server, 9000, false)?;
    expect_pod(&mut c, ("other", "client"), &svc, 9000, false)?;
    let answer = c.wait_for("nslookup from other/client", WAIT, |c| {
        let out = c.kubectl(
            &[
                "exec",
                "-n",
                "other",
                "client",
                "--",
                "nslookup",
                "server.prod.svc.cluster.local",
            ],
            None,
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(
            (out.status.success() && svc.iter().any(|ip| text.contains(&ip.to_string())))
                .then_some(text),
        )
    })?;
    ensure!(
        svc.iter().all(|ip| answer.contains(&ip.to_string())),
        "nslookup server.prod should answer both ClusterIPs {svc:?}:\n{answer}"
    );
    ensure!(
        drops(&node2, "policy_drop_egress")? > 0,
        "node-2 counted no egress policy drops"
    );
    // The other namespaces are not selected by it.
    expect_pod(&mut c, ("dev", "client"), &server, 9000, true)?;
    c.kubectl_ok(
        &["delete", "networkpolicy", "-n", "other", "dns-only"],
        None,
    )?;
    expect_pod(&mut c, ("other", "client"), &server, 9000, true)?;

    // Deny all ingress: the prod client on node-2 is refused; the node's
    // own readiness probes still reach the server (host identity).
    c.apply(DENY_ALL_INGRESS)?;
    expect_pod(&mut c, ("prod", "client"), &server, 9000, false)?;
    expect_host(&mut c, &inside, &from_outside, false)?;
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        ready(&json(&c, &["pod", "-n", "prod", "server"])?),
        "deny-all ingress made the server's readiness probe fail: the node must reach its pods"
    );

    // Allow from a namespace: dev connects, other is refused.
    c.apply(ALLOW_FROM_DEV)?;
    expect_pod(&mut c, ("dev", "client"), &server, 9000, true)?;
    expect_pod(&mut c, ("dev", "client"), &svc, 9000, true)?;
    expect_pod(&mut c, ("other", "client"), &server, 9000, false)?;
    expect_pod(&mut c, ("prod", "client"), &server, 9000, false)?;

    // Allow by podSelector, TCP 9000 only: prod/client on node-2 reaches
    // the server on node-3 (both nodes gave its labels one identity); the
    // server's other port stays closed to it.
    c.apply(ALLOW_CLIENT)?;
    expect_pod(&mut c, ("prod", "client"), &server, 9000, true)?;
    expect_pod(&mut c, ("prod", "client"), &server, 9100, false)?;
    expect_pod(&mut c, ("other", "client"), &server, 9000, false)?;

    // ipBlock with except: the fabric is allowed but host-5.
    let allow_fabric = format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-fabric, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - from:
    - ipBlock: {{cidr: {v4}/{v4len}, except: [{x4}/32]}}
    - ipBlock: {{cidr: "{v6}/{v6len}", except: ["{x6}/128"]}}
"#,
        v4 = shoal_e2e::lab::NODE_NET_V4,
        v4len = shoal_e2e::lab::NODE_NET_V4_LEN,
        x4 = excepted.ipv4(),
        v6 = shoal_e2e::lab::NODE_NET_V6,
        v6len = shoal_e2e::lab::NODE_NET_V6_LEN,
        x6 = excepted.ipv6(),
    );
    c.apply(&allow_fabric)?;
    expect_host(&mut c, &inside, &from_outside, true)?;
    expect_host(&mut c, &excepted, &from_outside, false)?;
    // Through the NodePort (translated per packet on node-3's device,
    // externalTrafficPolicy Local keeps the client's address) policy sees
    // the backend and the real client: the same verdicts.
    let node_port = json(&c, &["service", "-n", "prod", "server"])?["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .context("the server Service has no nodePort")?;
    let via_node_port = [node3.v4(node_port), node3.v6(node_port)];
    expect_host(&mut c, &inside, &via_node_port, true)?;
    expect_host(&mut c, &excepted, &via_node_port, false)?;

    // The refusals are counted and reported as flows.
    ensure!(
        drops(&node3, "policy_drop_ingress")? > 0,
        "node-3 counted no ingress policy drops"
    );
    let metrics = agent_metrics(&node3)?;
    let counted = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("shoal_dataplane_verdicts_total{reason=\"policy_drop_ingress\"}")
        })
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    ensure!(
        counted > 0,
        "node-3's /metrics has no policy_drop_ingress count:\n{metrics}"
    );
    let node3_pins = node3.pin_dir();
    let node3_name = node3_pins
        .file_name()
        .and_then(|n| n.to_str())
        .context("node-3's pin dir name")?;
    let text = c.wait_for("a dropped_policy flow on node-3", WAIT, |_| {
        let out = std::process::Command::new(shoal_e2e::cluster::shoal_binary()?)
            .args([
                "flows",
                "--node",
                node3_name,
                "--verdict",
                "dropped_policy",
                "--port",
                "9000",
                "--last",
                "50",
            ])
            .output()
            .context("running shoal flows")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(text.contains(&excepted.ipv4().to_string()).then_some(text))
    })?;
    ensure!(
        text.lines()
            .all(|l| l.contains("DROPPED_POLICY") && l.contains("prod/server")),
        "shoal flows --verdict dropped_policy on node-3:\n{text}"
    );

    // A policy change applies to new connections only: connections made
    // while everything is allowed keep flowing after a deny-all.
    c.kubectl_ok(&["delete", "networkpolicy", "-n", "prod", "--all"], None)?;
    expect_pod(&mut c, ("prod", "client"), &server, 9100, true)?;
    let long = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: long, namespace: prod, labels: {{app: long}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: node-2}}
  containers:
  - name: sh
    image: busybox
    command: ["sh", "-c", "for a in {a4} {a6}; do (while true; do echo ping; sleep 1; while [ -f /tmp/pause ]; do sleep 1; done; done | nc $a 9100 >> /tmp/out-$a) & done; sleep 3600"]
"#,
        a4 = server[0],
        a6 = server[1],
    );
    c.apply(&long)?;
    let files: Vec<String> = server.iter().map(|ip| format!("/tmp/out-{ip}")).collect();
    for f in &files {
        c.wait_for(&format!("prod/long's connection writes {f}"), WAIT, |c| {
            Ok((lines_in(c, "prod", "long", f)? >= 2).then_some(()))
        })?;
    }
    c.apply(DENY_ALL_INGRESS)?;
    expect_pod(&mut c, ("prod", "client"), &server, 9100, false)?;
    let before: Vec<usize> = files
        .iter()
        .map(|f| lines_in(&c, "prod", "long", f))
        .collect::<Result<_>>()?;
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    for (f, n) in files.iter().zip(&before) {
        let after = lines_in(&c, "prod", "long", f)?;
        ensure!(
            after >= n + 2,
            "the connection established before deny-all stalled: {f} went from {n} to {after} lines in {:?}",
            since.elapsed()
        );
    }
    // And a new connection from the same pod is refused.
    expect_pod(&mut c, ("prod", "long"), &server, 9100, false)?;

    // Idle past --flow-tcp-idle, the connections leave the flow table
    // (counted by node-3's sweep); when the client speaks again the
    // connection is admitted because the server could reach the client
    // (its egress is not restricted), though deny-all refuses the
    // client's direction.
    let idle_ended = |c: &LabCluster| -> Result<u64> {
        let m = agent_metrics(c.host(2))?;
        Ok(m.lines()
            .find_map(|l| l.strip_prefix("shoal_flow_idle_ended_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    };
    let swept_before = idle_ended(&c)?;
    c.kubectl_ok(
        &["exec", "-n", "prod", "long", "--", "touch", "/tmp/pause"],
        None,
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let paused: Vec<usize> = files
        .iter()
        .map(|f| lines_in(&c, "prod", "long", f))
        .collect::<Result<_>>()?;
    c.wait_for("node-3's sweep ends both idle connections", WAIT, |c| {
        Ok((idle_ended(c)? >= swept_before + 2).then_some(()))
    })?;
    c.kubectl_ok(
        &["exec", "-n", "prod", "long", "--", "rm", "/tmp/pause"],
        None,
    )?;
    for (f, n) in files.iter().zip(&paused) {
        c.wait_for(&format!("{f} grows after the pause"), WAIT, |c| {
            Ok((lines_in(c, "prod", "long", f)? >= n + 3).then_some(()))
        })?;
    }
    Ok(())
}
