//! Container `hostPort`s: a pod's port reached at its node's addresses from
//! a lab host outside the cluster and from another node, IPv4 and IPv6,
//! TCP and UDP, through the eBPF NodePort path (no iptables, no portmap);
//! gone with the pod; a second pod asking the same hostPort is not
//! scheduled on that node, and one forced there (`nodeName`) is refused by the agent with a
//! Warning event naming the port.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::ready;
use shoal_e2e::{
    cluster::{ClusterConfig, LabCluster},
    lab::Lab,
};

const WAIT: Duration = Duration::from_secs(90);

/// A pod with `hostPort: 8081` (`placement` puts it on a node) whose httpd
/// answers `/cgi-bin/peer` with its name and the request's source address.
fn pod(name: &str, placement: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  {placement}
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: busybox
    command: ["sh", "-c", "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho {name} peer=$REMOTE_ADDR\\n' > /www/cgi-bin/peer && chmod +x /www/cgi-bin/peer && exec httpd -f -p 8080 -h /www"]
    ports:
    - {{containerPort: 8080, hostPort: 8081}}
    - {{containerPort: 8082, hostPort: 8082, protocol: UDP}}
    readinessProbe:
      tcpSocket: {{port: 8080}}
      periodSeconds: 1
"#
    )
}

/// `GET /cgi-bin/peer` on `target` from inside lab host `netns`; the body.
fn fetch(netns: PathBuf, target: SocketAddr) -> Result<String> {
    std::thread::spawn(move || -> Result<String> {
        let ns = std::fs::File::open(&netns)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let timeout = Duration::from_secs(3);
        let mut s = std::net::TcpStream::connect_timeout(&target, timeout)
            .with_context(|| format!("connecting to {target}"))?;
        s.set_read_timeout(Some(timeout))?;
        write!(s, "GET /cgi-bin/peer HTTP/1.0\r\nHost: {target}\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .with_context(|| format!("reading from {target}"))?;
        let reply = reply.replace("\r\n", "\n");
        let body = reply.split_once("\n\n").map(|(_, b)| b.trim().to_owned());
        body.with_context(|| format!("no HTTP reply from {target}: {reply:?}"))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the fetch thread panicked"))?
}

/// A UDP socket bound to `local` inside lab host `netns`.
fn udp_socket_in(netns: PathBuf, local: SocketAddr) -> Result<std::net::UdpSocket> {
    std::thread::spawn(move || -> Result<std::net::UdpSocket> {
        let ns = std::fs::File::open(&netns)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        std::net::UdpSocket::bind(local).with_context(|| format!("binding {local}"))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the socket thread panicked"))?
}

/// Asserts that `client` reaching `target` gets the pod `name`'s reply and
/// that the pod saw the client's own address (a local backend: no SNAT).
fn expect_reply(
    c: &mut LabCluster,
    client: &shoal_e2e::lab::Host,
    target: SocketAddr,
    name: &str,
    source: IpAddr,
) -> Result<()> {
    let netns = client.netns_path();
    let body = c.wait_for(
        &format!("{name}'s reply through {target} from {}", client.name()),
        WAIT,
        |_| Ok(Some(fetch(netns.clone(), target)?)),
    )?;
    // busybox shows IPv4 peers of its dual-stack socket v4-mapped.
    let want = [
        format!("{name} peer=[{source}]"),
        format!("{name} peer=[::ffff:{source}]"),
        format!("{name} peer={source}"),
    ];
    ensure!(
        want.contains(&body),
        "{} through {target} got {body:?}, expected one of {want:?}",
        client.name()
    );
    Ok(())
}

fn pod_json(c: &LabCluster, name: &str) -> Result<Value> {
    let out = c.kubectl_ok(&["get", "pod", name, "-o", "json"], None)?;
    serde_json::from_str(&out).context("kubectl's pod JSON")
}

#[test]
fn host_port_reached_from_outside_and_other_nodes_both_families_and_not_shared() -> Result<()> {
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    // host-3 is on the fabric but runs no agent: the outside client.
    let mut cfg = ClusterConfig::new(&Lab::unique_prefix(), 3, &dir)?;
    cfg.agents = 2;
    let mut c = LabCluster::start(cfg)?;
    let on_node2 = "nodeSelector: {kubernetes.io/hostname: node-2}";
    c.apply(&pod("hp-web", on_node2))?;
    c.wait_for("pod hp-web Ready", WAIT, |c| {
        Ok(ready(&pod_json(c, "hp-web")?).then_some(()))
    })?;
    let (node1, node2, outside) = (c.host(0).clone(), c.host(1).clone(), c.host(2).clone());

    // From outside the cluster, both families, the client's own address
    // arriving at the pod.
    expect_reply(
        &mut c,
        &outside,
        node2.v4(8081),
        "hp-web",
        IpAddr::V4(outside.ipv4()),
    )?;
    expect_reply(
        &mut c,
        &outside,
        node2.v6(8081),
        "hp-web",
        IpAddr::V6(outside.ipv6()),
    )?;
    // From another node of the cluster.
    expect_reply(
        &mut c,
        &node1,
        node2.v4(8081),
        "hp-web",
        IpAddr::V4(node1.ipv4()),
    )?;
    expect_reply(
        &mut c,
        &node1,
        node2.v6(8081),
        "hp-web",
        IpAddr::V6(node1.ipv6()),
    )?;
    // node-1 has no pod with that hostPort: nothing answers there.
    let got = fetch(outside.netns_path(), node1.v4(8081));
    ensure!(
        got.is_err(),
        "node-1:8081 answered without a hostPort pod: {got:?}"
    );

    // UDP: a datagram from outside to node-2:8082 is translated to the pod
    // (busybox has no UDP server to answer it: node-2's conntrack shows
    // the flow rewritten to the pod's address, as a local backend).
    let web = pod_json(&c, "hp-web")?;
    let pod_ips: Vec<String> = web["status"]["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["ip"].as_str().map(str::to_owned))
        .collect();
    for (target, client) in [
        (node2.v4(8082), IpAddr::V4(outside.ipv4())),
        (node2.v6(8082), IpAddr::V6(outside.ipv6())),
    ] {
        let pod_ip: IpAddr = pod_ips
            .iter()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .find(|ip| ip.is_ipv6() == target.is_ipv6())
            .with_context(|| format!("hp-web has no address of {target}'s family: {pod_ips:?}"))?;
        let rewritten = format!("dst={}", SocketAddr::new(pod_ip, 8082));
        let client = SocketAddr::new(client, 0).to_string();
        let client = client.trim_end_matches(":0");
        let bind = SocketAddr::new(
            if target.is_ipv6() {
                IpAddr::V6(outside.ipv6())
            } else {
                IpAddr::V4(outside.ipv4())
            },
            0,
        );
        let socket = udp_socket_in(outside.netns_path(), bind)?;
        c.wait_for(
            &format!("a UDP flow through {target} to the pod"),
            WAIT,
            |_| {
                socket.send_to(b"hostport", target)?;
                let table = shoal_e2e::cluster::shoal_dataplane(&node2, "conntrack")?;
                let row = table.lines().find(|l| {
                    l.contains("original")
                        && l.contains(client)
                        && l.contains(&rewritten)
                        && l.contains("local-backend")
                });
                anyhow::ensure!(
                    row.is_some(),
                    "no flow of {client} rewritten to {rewritten} in:\n{table}"
                );
                Ok(Some(()))
            },
        )?;
    }

    // The scheduler keeps a second pod asking 8081 off node-2.
    c.apply(&pod("hp-second", on_node2))?;
    c.wait_for("hp-second Unschedulable", WAIT, |c| {
        let pod = pod_json(c, "hp-second")?;
        let unschedulable = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable");
        Ok(unschedulable.then_some(pod))
    })
    .and_then(|pod| {
        ensure!(
            pod["spec"]["nodeName"].is_null() && pod["status"]["phase"] == "Pending",
            "hp-second was placed: {pod}"
        );
        Ok(())
    })?;
    c.kubectl_ok(&["delete", "pod", "hp-second", "--wait=false"], None)?;

    // One bound there directly (bypassing the scheduler) runs but does not
    // get the port: the agent says so in an event, and hp-web keeps it.
    c.apply(&pod("hp-forced", "nodeName: node-2"))?;
    c.wait_for("the HostPortConflict event of hp-forced", WAIT, |c| {
        let out = c.kubectl_ok(&["get", "events", "-o", "json"], None)?;
        let events: Value = serde_json::from_str(&out)?;
        let found: Vec<&Value> = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| {
                e["involvedObject"]["name"] == "hp-forced" && e["reason"] == "HostPortConflict"
            })
            .collect();
        Ok(
            (!found.is_empty())
                .then(|| Value::from(found.into_iter().cloned().collect::<Vec<_>>())),
        )
    })
    .and_then(|events| {
        let messages: Vec<&str> = events
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["message"].as_str())
            .collect();
        ensure!(
            messages.len() == 1,
            "one event per refused pod expected: {messages:?}"
        );
        let m = messages[0];
        let want = [
            format!("{}/TCP (held by pod default/hp-web)", node2.v4(8081)),
            format!("{}/TCP (held by pod default/hp-web)", node2.v6(8081)),
            format!("{}/UDP (held by pod default/hp-web)", node2.v4(8082)),
        ];
        ensure!(
            want.iter().all(|w| m.contains(w.as_str())),
            "the event does not name each port and its holder: {m:?}, expected {want:?}"
        );
        Ok(())
    })?;
    expect_reply(
        &mut c,
        &outside,
        node2.v4(8081),
        "hp-web",
        IpAddr::V4(outside.ipv4()),
    )?;
    // A pod on node-2 reaches hp-web at its node's addresses too (the
    // socket programs translate its connect).
    c.wait_for("pod hp-forced Ready", WAIT, |c| {
        Ok(ready(&pod_json(c, "hp-forced")?).then_some(()))
    })?;
    for url in [
        format!("http://{}/cgi-bin/peer", node2.v4(8081)),
        format!("http://{}/cgi-bin/peer", node2.v6(8081)),
    ] {
        let body = c.wait_for(
            &format!("hp-web's reply to hp-forced at {url}"),
            WAIT,
            |c| {
                let cmd = format!("timeout 5 wget -q -O - {url}");
                let out = c.kubectl_ok(&["exec", "hp-forced", "--", "sh", "-c", &cmd], None)?;
                Ok(Some(out))
            },
        )?;
        ensure!(
            body.trim().starts_with("hp-web peer="),
            "hp-forced fetching {url} got {body:?}, not hp-web's reply"
        );
    }
    c.kubectl_ok(&["delete", "pod", "hp-forced"], None)?;

    // Once the pod is gone, the port no longer answers, in either family.
    c.kubectl_ok(&["delete", "pod", "hp-web"], None)?;
    for target in [node2.v4(8081), node2.v6(8081)] {
        let netns = outside.netns_path();
        c.wait_for(&format!("{target} to stop answering"), WAIT, |_| {
            Ok(fetch(netns.clone(), target).err().map(|_| ()))
        })?;
    }
    Ok(())
}
