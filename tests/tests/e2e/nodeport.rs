//! NodePort Services reached from outside the cluster: a lab cluster of two
//! nodes plus a third lab host that runs no agent (an outside client). The
//! tc programs on each node's external device translate its requests,
//! IPv4 and IPv6, with externalTrafficPolicy Cluster (the backend on the
//! other node sees the node's address) and Local (the backend sees the
//! client's address; a node without a local backend drops).

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::ready;
use shoal_agent::{PinnedMaps, Verdict};
use shoal_e2e::{
    cluster::{ClusterConfig, LabCluster},
    lab::Lab,
};

const WAIT: Duration = Duration::from_secs(90);

/// A pod on node-2 whose httpd answers `/cgi-bin/peer` with the address the
/// request came from (busybox httpd's CGI `REMOTE_ADDR`).
const ECHO_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: echo
  labels: {app: echo}
spec:
  nodeName: node-2
  containers:
  - name: httpd
    image: busybox
    command: ["sh", "-c", "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho peer=$REMOTE_ADDR\\n' > /www/cgi-bin/peer && chmod +x /www/cgi-bin/peer && exec httpd -f -p 8080 -h /www"]
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
---
"#;

/// The echo pod's NodePort Services, one per externalTrafficPolicy.
const NODEPORT_SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: np-cluster
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: np-local
spec:
  type: NodePort
  externalTrafficPolicy: Local
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// `GET /cgi-bin/peer` on `target` from inside lab host `netns` (a thread
/// that enters its network namespace); the body.
fn peer_of(netns: std::path::PathBuf, target: SocketAddr, timeout: Duration) -> Result<String> {
    std::thread::spawn(move || -> Result<String> {
        let ns = std::fs::File::open(&netns)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut s = std::net::TcpStream::connect_timeout(&target, timeout)
            .with_context(|| format!("connecting to {target}"))?;
        s.set_read_timeout(Some(timeout))?;
        write!(s, "GET /cgi-bin/peer HTTP/1.0\r\nHost: {target}\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .with_context(|| format!("reading from {target}"))?;
        // busybox's CGI replies end their headers with a bare "\n\n".
        let reply = reply.replace("\r\n", "\n");
        let body = reply.split_once("\n\n").map(|(_, b)| b.trim().to_owned());
        body.with_context(|| format!("no HTTP reply from {target}: {reply:?}"))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the fetch thread panicked"))?
}

/// What the agent of lab host `node` serves on `/metrics` (port 10256).
fn metrics_of(node: &shoal_e2e::lab::Host) -> Result<String> {
    let target = node.v4(10256);
    let netns = node.netns_path();
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

/// The value of the sample `name` (with its labels) in a metrics text.
fn sample(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

fn node_port(c: &LabCluster, service: &str) -> Result<u16> {
    let out = c.kubectl_ok(&["get", "service", service, "-o", "json"], None)?;
    let svc: Value = serde_json::from_str(&out).context("kubectl's service JSON")?;
    svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("service {service} has no nodePort: {svc}"))
}

fn verdict(c: &LabCluster, node: usize, v: Verdict) -> Result<u64> {
    let maps = PinnedMaps::new(c.host(node).pin_dir());
    Ok(maps
        .verdicts()?
        .iter()
        .find(|(k, _)| *k == v)
        .map_or(0, |(_, n)| *n))
}

/// Asserts the backend saw `want` as the request's source when the outside
/// host asked `target` (retrying while the agents program their maps).
fn expect_peer(c: &mut LabCluster, target: SocketAddr, want: IpAddr) -> Result<()> {
    let outside = c.host(2).netns_path();
    let body = c.wait_for(
        &format!("a reply through {target} from the outside host"),
        WAIT,
        |_| {
            Ok(Some(peer_of(
                outside.clone(),
                target,
                Duration::from_secs(3),
            )?))
        },
    )?;
    // busybox shows peers in brackets, IPv4 ones of its dual-stack socket
    // v4-mapped: `[::ffff:a.b.c.d]`, `[fd00::d]`.
    let seen = body.strip_prefix("peer=").unwrap_or_default();
    let seen = seen.trim_start_matches('[').trim_end_matches(']');
    let seen = seen.strip_prefix("::ffff:").unwrap_or(seen);
    ensure!(
        seen == want.to_string(),
        "through {target} the backend saw {body:?}, expected peer={want}"
    );
    Ok(())
}

#[test]
fn nodeport_from_outside_the_cluster_both_policies_both_families() -> Result<()> {
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    // host-3 is on the fabric but runs no agent: the outside client.
    let mut cfg = ClusterConfig::new(&Lab::unique_prefix(), 3, &dir)?;
    cfg.agents = 2;
    // Map sizes other than the defaults, to see the flags take.
    cfg.agent_args = ["--ct6-entries", "4096", "--affinity-entries", "2048"]
        .map(String::from)
        .to_vec();
    let mut c = LabCluster::start(cfg)?;
    for (map, entries) in [
        ("CT6_V1", 4096),
        ("LB4_AFFINITY_V1", 2048),
        ("LB6_AFFINITY_V1", 2048),
    ] {
        let path = c.host(0).pin_dir().join(map);
        let info = c.wait_for(&format!("node-1's pinned {map}"), WAIT, |_| {
            let out = std::process::Command::new("bpftool")
                .args(["--json", "map", "show", "pinned"])
                .arg(&path)
                .output()
                .context("running bpftool (cargo xtask setup installs it)")?;
            Ok(serde_json::from_slice::<Value>(&out.stdout).ok())
        })?;
        ensure!(
            info["max_entries"] == entries,
            "{map} on node-1 holds {} entries, the agent was told {entries}",
            info["max_entries"]
        );
    }
    c.apply(&format!("{ECHO_POD}{NODEPORT_SERVICES}"))?;
    c.wait_for("pod echo Ready", WAIT, |c| {
        let out = c.kubectl_ok(&["get", "pod", "echo", "-o", "json"], None)?;
        let pod: Value = serde_json::from_str(&out)?;
        Ok(ready(&pod).then_some(()))
    })?;
    let cluster_port = node_port(&c, "np-cluster")?;
    let local_port = node_port(&c, "np-local")?;
    let (node1, node2, outside) = (c.host(0).clone(), c.host(1).clone(), c.host(2).clone());

    // Cluster: node-1 has no backend; it forwards to node-2 with its own
    // address as the source.
    expect_peer(&mut c, node1.v4(cluster_port), IpAddr::V4(node1.ipv4()))?;
    expect_peer(&mut c, node1.v6(cluster_port), IpAddr::V6(node1.ipv6()))?;
    ensure!(
        verdict(&c, 0, Verdict::NodeportNewFlow)? >= 2,
        "node-1 counted no new NodePort flows"
    );
    ensure!(
        verdict(&c, 0, Verdict::NodeportReplyRevnat)? >= 2,
        "node-1 un-NATed no replies"
    );

    // `shoal dataplane conntrack` on node-1 shows the flows, SNATed.
    let table = shoal_e2e::cluster::shoal_dataplane(&node1, "conntrack")?;
    for client in [outside.ipv4().to_string(), format!("[{}]", outside.ipv6())] {
        let row = table
            .lines()
            .find(|l| l.contains("original") && l.contains(&client))
            .with_context(|| format!("no original-direction entry of {client} in:\n{table}"))?;
        ensure!(
            row.contains("snat") && row.contains(&format!(":{cluster_port}")),
            "the entry of {client} is not a SNATed flow to port {cluster_port}: {row}"
        );
    }

    // node-1's /metrics shows the conntrack map filling and the verdicts.
    let metrics = c.wait_for("node-1's dataplane metrics", WAIT, |_| {
        let text = metrics_of(&node1)?;
        Ok(text
            .contains("shoal_dataplane_conntrack_entries")
            .then_some(text))
    })?;
    let gauge = |name: &str| sample(&metrics, name);
    ensure!(
        gauge("shoal_dataplane_conntrack_entries{family=\"ipv4\"}").is_some_and(|n| n >= 2)
            && gauge("shoal_dataplane_conntrack_max_entries{family=\"ipv6\"}")
                .is_some_and(|n| n > 0)
            && gauge("shoal_dataplane_verdicts_total{reason=\"nodeport_new_flow\"}")
                .is_some_and(|n| n >= 2),
        "node-1's /metrics lacks the conntrack fill or the NodePort verdicts:\n{metrics}"
    );

    // Restart safety: with node-1's agent killed, its pinned TCX links keep
    // the programs attached; a new agent swaps its programs into them.
    c.kill_agent(0)?;
    expect_peer(&mut c, node1.v4(cluster_port), IpAddr::V4(node1.ipv4()))?;
    c.start_agent(0)?;
    let agent_log = dir.join("node-1").join("agent.log");
    c.wait_for("node-1's agent re-attached its tc programs", WAIT, |_| {
        let log = std::fs::read_to_string(&agent_log)?;
        Ok((log
            .matches("NodePort / LoadBalancer programs attached")
            .count()
            >= 2)
            .then_some(()))
    })?;
    expect_peer(&mut c, node1.v6(cluster_port), IpAddr::V6(node1.ipv6()))?;

    // Local on the backend's node: the client's own address arrives.
    expect_peer(&mut c, node2.v4(local_port), IpAddr::V4(outside.ipv4()))?;
    expect_peer(&mut c, node2.v6(local_port), IpAddr::V6(outside.ipv6()))?;
    // Cluster on the backend's node: no SNAT needed, the client shows too.
    expect_peer(&mut c, node2.v4(cluster_port), IpAddr::V4(outside.ipv4()))?;

    // Local on a node without a backend: dropped, with its own verdict.
    let before = verdict(&c, 0, Verdict::NodeportDropNoLocalBackend)?;
    for target in [node1.v4(local_port), node1.v6(local_port)] {
        let got = peer_of(outside.netns_path(), target, Duration::from_secs(2));
        ensure!(
            got.is_err(),
            "{target} (externalTrafficPolicy Local, no backend on node-1) answered: {got:?}"
        );
    }
    let after = verdict(&c, 0, Verdict::NodeportDropNoLocalBackend)?;
    ensure!(
        after >= before + 2,
        "node-1 did not count its ETP Local drops ({before} -> {after})"
    );

    Ok(())
}

/// The echo pod's dual-stack LoadBalancer Service.
const LB_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: lb-echo
spec:
  type: LoadBalancer
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// `ip ...` inside lab host `host`; its stdout.
fn ip_in(host: &shoal_e2e::lab::Host, args: &[&str]) -> Result<String> {
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
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The MAC address of `eth0` in lab host `host`.
fn fabric_mac(host: &shoal_e2e::lab::Host) -> Result<String> {
    let out = ip_in(
        host,
        &["-o", "link", "show", shoal_e2e::lab::HOST_INTERFACE],
    )?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no MAC address in {out:?}"))
}

#[test]
fn loadbalancer_ips_answered_on_the_fabric_by_one_node() -> Result<()> {
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    let mut cfg = ClusterConfig::new(&Lab::unique_prefix(), 3, &dir)?;
    cfg.agents = 2;
    let mut c = LabCluster::start(cfg)?;
    c.apply(&format!("{ECHO_POD}{LB_SERVICE}"))?;
    c.wait_for("pod echo Ready", WAIT, |c| {
        let out = c.kubectl_ok(&["get", "pod", "echo", "-o", "json"], None)?;
        let pod: Value = serde_json::from_str(&out)?;
        Ok(ready(&pod).then_some(()))
    })?;
    let ips: Vec<IpAddr> = c.wait_for("lb-echo's ingress IPs of both families", WAIT, |c| {
        let out = c.kubectl_ok(&["get", "service", "lb-echo", "-o", "json"], None)?;
        let svc: Value = serde_json::from_str(&out)?;
        let ips: Vec<IpAddr> = svc["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str()?.parse().ok())
            .collect();
        Ok((ips.iter().any(IpAddr::is_ipv4) && ips.iter().any(IpAddr::is_ipv6)).then_some(ips))
    })?;
    let (node1, node2, outside) = (c.host(0).clone(), c.host(1).clone(), c.host(2).clone());

    // The outside host reaches the pool on-link: it asks the fabric who
    // holds each address (ARP / NDP) instead of routing through a node.
    ip_in(
        &outside,
        &[
            "route",
            "replace",
            shoal_e2e::lab::LB_POOL_V4,
            "dev",
            "eth0",
        ],
    )?;
    ip_in(
        &outside,
        &[
            "-6",
            "route",
            "replace",
            shoal_e2e::lab::LB_POOL_V6,
            "dev",
            "eth0",
        ],
    )?;

    // node-2 hosts the only ready endpoint, so node-2 announces; with
    // externalTrafficPolicy Cluster and a local backend the client's own
    // address reaches the pod.
    for ip in &ips {
        let want = if ip.is_ipv4() {
            IpAddr::V4(outside.ipv4())
        } else {
            IpAddr::V6(outside.ipv6())
        };
        expect_peer(&mut c, SocketAddr::new(*ip, 80), want)?;
    }
    let mac = fabric_mac(&node2)?;
    for ip in &ips {
        let ip = ip.to_string();
        let neigh = ip_in(&outside, &["neigh", "show", &ip])?;
        ensure!(
            neigh.contains(&mac),
            "host-3 resolved {ip} to {neigh:?}, not node-2's MAC {mac}"
        );
    }
    ensure!(
        verdict(&c, 1, Verdict::L2ArpReplied)? >= 1 && verdict(&c, 1, Verdict::L2NdReplied)? >= 1,
        "node-2 counted no ARP / neighbour-solicitation answers"
    );
    ensure!(
        verdict(&c, 0, Verdict::L2ArpReplied)? == 0 && verdict(&c, 0, Verdict::L2NdReplied)? == 0,
        "node-1 answered for LoadBalancer IPs it does not announce"
    );
    ensure!(
        fabric_mac(&node1)? != mac,
        "node-1 and node-2 share a MAC address; the check above proves nothing"
    );
    Ok(())
}

/// Two selectorless UDP Services over the same two backends (probe servers
/// on lab hosts 3 and 4, port 8080): `udp-stale` is a NodePort, `udp-keep`
/// a ClusterIP that keeps both backends in the maps whatever `udp-stale`
/// does, so only the conntrack purge can move a flow off a backend that
/// left `udp-stale`.
const UDP_SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: udp-stale
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  ports: [{port: 80, targetPort: 8080, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata:
  name: udp-keep
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  ports: [{port: 80, targetPort: 8080, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata:
  name: udp-dead
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  ports: [{port: 80, targetPort: 9999, protocol: UDP}]
"#;

/// An EndpointSlice of `service` in `family` ("IPv4"/"IPv6") with
/// `addresses` on UDP port `port`.
fn udp_slice(service: &str, family: &str, addresses: &[IpAddr], port: u16) -> String {
    let suffix = family.to_lowercase();
    let endpoints: String = addresses
        .iter()
        .map(|a| format!("- addresses: [\"{a}\"]\n"))
        .collect();
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{suffix}\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: {family}\nports: [{{port: {port}, protocol: UDP}}]\nendpoints:\n{endpoints}"
    )
}

/// A UDP socket bound to `local` inside lab host `netns` (the socket stays
/// in that namespace whichever thread uses it).
fn udp_socket_in(netns: std::path::PathBuf, local: SocketAddr) -> Result<std::net::UdpSocket> {
    std::thread::spawn(move || -> Result<std::net::UdpSocket> {
        let ns = std::fs::File::open(&netns)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let s = std::net::UdpSocket::bind(local).with_context(|| format!("binding {local}"))?;
        s.set_read_timeout(Some(Duration::from_millis(700)))?;
        Ok(s)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the socket thread panicked"))?
}

/// Sends one datagram to `target` and returns the name of the backend that
/// answered (the probe server's first word), checking the answer comes
/// from `target` itself (reverse NAT).
fn udp_ask(s: &std::net::UdpSocket, target: SocketAddr) -> Result<String> {
    s.send_to(b"ping", target)
        .with_context(|| format!("sending to {target}"))?;
    let mut buf = [0u8; 1024];
    let (n, from) = s
        .recv_from(&mut buf)
        .with_context(|| format!("no answer from {target}"))?;
    ensure!(
        from == target,
        "the answer came from {from}, not from {target}: reverse NAT failed"
    );
    let body = String::from_utf8_lossy(&buf[..n]);
    body.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("an empty answer from {target}"))
}

#[test]
fn udp_flows_leave_a_backend_that_left_the_service_and_idle_flows_are_collected() -> Result<()> {
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    // node-1 runs the cluster; host-2 is the outside client; hosts 3 and 4
    // run the backends (no agent).
    let mut cfg = ClusterConfig::new(&Lab::unique_prefix(), 4, &dir)?;
    cfg.agents = 1;
    cfg.agent_args = [
        "--bpf-ct-timeout-regular-any",
        "3s",
        "--conntrack-gc-interval",
        "1s",
    ]
    .map(String::from)
    .to_vec();
    let mut c = LabCluster::start(cfg)?;
    let probe = shoal_e2e::lab::Probe::new(env!("CARGO_BIN_EXE_probe"));
    let mut servers = Vec::new();
    for i in [2, 3] {
        let h = c.host(i).clone();
        let addrs = [h.v4(8080), h.v6(8080)];
        servers.push(probe.serve(&h, &format!("b{}", i + 1), &[], &addrs)?);
    }
    let (node1, outside) = (c.host(0).clone(), c.host(1).clone());
    let (b3, b4) = (c.host(2).clone(), c.host(3).clone());
    let v4 = [IpAddr::V4(b3.ipv4()), IpAddr::V4(b4.ipv4())];
    let v6 = [IpAddr::V6(b3.ipv6()), IpAddr::V6(b4.ipv6())];
    let mut manifest = UDP_SERVICES.to_owned();
    for svc in ["udp-stale", "udp-keep"] {
        manifest.push_str(&udp_slice(svc, "IPv4", &v4, 8080));
        manifest.push_str(&udp_slice(svc, "IPv6", &v6, 8080));
    }
    // udp-dead's backend has nothing listening on its port.
    manifest.push_str(&udp_slice("udp-dead", "IPv4", &v4[..1], 9999));
    manifest.push_str(&udp_slice("udp-dead", "IPv6", &v6[..1], 9999));
    c.apply(&manifest)?;
    let port = node_port(&c, "udp-stale")?;

    for (family, target, local, both) in [
        (
            "IPv4",
            node1.v4(port),
            SocketAddr::from(([0, 0, 0, 0], 40999)),
            v4,
        ),
        (
            "IPv6",
            node1.v6(port),
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 40999)),
            v6,
        ),
    ] {
        let s = udp_socket_in(outside.netns_path(), local)?;
        let first = c.wait_for(&format!("a UDP answer through {target}"), WAIT, |_| {
            Ok(udp_ask(&s, target).ok())
        })?;
        // One source port, one flow: every datagram reaches the same backend.
        for _ in 0..5 {
            let again = udp_ask(&s, target)?;
            ensure!(
                again == first,
                "{family}: datagrams from one source port went to {first} and then {again}"
            );
        }
        // The backend the flow uses leaves udp-stale's EndpointSlice (it
        // stays in udp-keep's, so it stays in the maps and keeps answering).
        let (gone, kept) = if first == "b3" {
            (both[0], both[1])
        } else {
            (both[1], both[0])
        };
        let want = if first == "b3" { "b4" } else { "b3" };
        c.apply(&udp_slice("udp-stale", family, &[kept], 8080))?;
        // The same socket keeps sending (well within the UDP timeout, so
        // only the purge can move the flow): the next answers come from
        // the backend still in the Service.
        let moved = c.wait_for(
            &format!("{family}: the flow leaving {gone} ({first}) for {want}"),
            Duration::from_secs(15),
            |_| {
                let who = udp_ask(&s, target)?;
                Ok((who == want).then_some(who))
            },
        )?;
        for _ in 0..5 {
            let again = udp_ask(&s, target)?;
            ensure!(
                again == moved,
                "{family}: after the purge datagrams went to {moved} and then {again}"
            );
        }
    }

    // ICMP errors about translated flows: udp-dead's backend answers port
    // unreachable to node-1 (the SNAT address); node-1 translates the
    // error back, so the client's connected socket sees the NodePort
    // refuse, as it would a local port.
    let dead = node_port(&c, "udp-dead")?;
    for target in [node1.v4(dead), node1.v6(dead)] {
        let local = if target.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 41000))
        } else {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 41000))
        };
        let s = udp_socket_in(outside.netns_path(), local)?;
        s.connect(target)?;
        c.wait_for(
            &format!("{target} refused by the translated ICMP port unreachable"),
            WAIT,
            |_| {
                let refused =
                    |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionRefused;
                match s.send(b"ping") {
                    Err(e) if refused(&e) => return Ok(Some(())),
                    Err(e) => return Err(e.into()),
                    Ok(_) => {}
                }
                let mut buf = [0u8; 256];
                match s.recv(&mut buf) {
                    Err(e) if refused(&e) => Ok(Some(())),
                    Err(e) => Err(e.into()),
                    Ok(n) => {
                        anyhow::bail!("{target} answered {:?}", String::from_utf8_lossy(&buf[..n]))
                    }
                }
            },
        )?;
    }
    ensure!(
        verdict(&c, 0, Verdict::NodeportIcmpErrorRevnat)? >= 2,
        "node-1 counted no translated ICMP errors"
    );

    // The GC: with no more traffic, the flows idle past the 3 s UDP timeout
    // leave node-1's conntrack maps.
    let client4 = outside.ipv4().to_string();
    let client6 = format!("[{}]", outside.ipv6());
    let table = shoal_e2e::cluster::shoal_dataplane(&node1, "conntrack")?;
    ensure!(
        table.contains(&client4) && table.contains(&client6),
        "node-1 holds no conntrack entries of the client:\n{table}"
    );
    c.wait_for(
        "the idle UDP flows collected",
        Duration::from_secs(20),
        |_| {
            let table = shoal_e2e::cluster::shoal_dataplane(&node1, "conntrack")?;
            Ok((!table.contains(&client4) && !table.contains(&client6)).then_some(()))
        },
    )?;
    // Both kinds of deletion are counted on node-1's /metrics.
    let metrics = metrics_of(&node1)?;
    for reason in ["expired", "backend_left"] {
        let name = format!("shoal_dataplane_conntrack_gc_deleted_total{{reason=\"{reason}\"}}");
        ensure!(
            sample(&metrics, &name).is_some_and(|n| n >= 2),
            "node-1's /metrics: {name} should count both families' flows:\n{metrics}"
        );
    }
    drop(servers);
    Ok(())
}
