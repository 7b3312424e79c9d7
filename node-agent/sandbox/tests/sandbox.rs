//! Sandboxes in real network namespaces. Needs root (CI runs as root).
//!
//! Every test builds its own "node" namespaces and runs the `Network` on a
//! thread inside one, the way an agent runs inside a lab host. Every
//! namespace the tests create, the pods' included, gets `unreachable` routes
//! for the service CIDRs and has no default route, so nothing leaves them.

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use shoal_sandbox::{Error, Network, NetworkConfig, PeerRoute, Sandbox, host_veth_name};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command; panics with its output if it fails.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command inside the namespace mounted at `ns`.
fn ns_run(ns: &Path, args: &[&str]) -> String {
    let net = format!("--net={}", ns.display());
    let mut all = vec!["nsenter", net.as_str(), "--"];
    all.extend_from_slice(args);
    run(&all)
}

fn fence(ns: &Path) {
    ns_run(ns, &["ip", "route", "add", "unreachable", "10.96.0.0/16"]);
    ns_run(
        ns,
        &["ip", "route", "add", "unreachable", "fd00:10:96::/112"],
    );
}

fn pings(from: &Path, to: impl std::fmt::Display) -> bool {
    let net = format!("--net={}", from.display());
    let to = to.to_string();
    Command::new("nsenter")
        .args([
            net.as_str(),
            "--",
            "busybox",
            "ping",
            "-c1",
            "-W1",
            to.as_str(),
        ])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn assert_pings(from: &Path, to: impl std::fmt::Display) {
    let to = to.to_string();
    assert!(pings(from, &to), "{} cannot ping {to}", from.display());
}

/// A namespace made with `ip netns add`, deleted on drop.
struct Node {
    name: String,
}

impl Node {
    fn new(tag: &str) -> Node {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests create network namespaces and need root (CI runs them as root)"
        );
        let name = format!(
            "shoal-sbx-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let node = Node { name };
        run(&["ip", "-n", &node.name, "link", "set", "lo", "up"]);
        fence(&node.path());
        node
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <this namespace> <command>` (split on spaces).
    fn ip(&self, command: &str) -> String {
        let mut all = vec!["ip", "-n", self.name.as_str()];
        all.extend(command.split_whitespace());
        run(&all)
    }

    /// Gives the node its addresses on its `uplink` veth. Without DAD its
    /// link-local address is usable at once, as a long-running node's is:
    /// the kernel solicits neighbours for forwarded IPv6 packets from it.
    fn uplink(&self, v4: &str, v6: &str) {
        let no_dad = "echo 0 > /proc/sys/net/ipv6/conf/uplink/accept_dad";
        ns_run(&self.path(), &["sh", "-c", no_dad]);
        self.ip(&format!("addr add {v4} dev uplink"));
        self.ip(&format!("addr add {v6} dev uplink nodad"));
        self.ip("link set uplink up");
    }

    /// Waits until `uplink` is operationally up with its IPv6 addresses
    /// usable, as on a node that has been running for a while.
    fn wait_uplink(&self) {
        for _ in 0..300 {
            let link = self.ip("-o link show uplink");
            let addrs = self.ip("-o -6 addr show uplink");
            if link.contains("state UP") && !addrs.contains("tentative") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{}: uplink did not come up", self.name);
    }

    /// Runs `work` on a thread inside this namespace, on its own runtime,
    /// like an agent in a lab host.
    fn agent<T, F, Fut>(&self, work: F) -> T
    where
        T: Send,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
    {
        let path = self.path();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let ns = std::fs::File::open(&path).expect("open the node netns");
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("enter the node netns");
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime")
                        .block_on(work())
                })
                .join()
                .expect("agent thread panicked")
        })
    }

    fn links(&self) -> String {
        self.ip("-o link show")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// An agent data directory; unmounts any pod namespace left in it on drop
/// (a failed test), so the temporary directory can go.
struct DataDir {
    dir: tempfile::TempDir,
}

impl DataDir {
    fn new() -> DataDir {
        DataDir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    fn netns_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path().join("netns"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn config(&self, v4: Option<&str>, v6: Option<&str>) -> NetworkConfig {
        NetworkConfig {
            data_dir: self.path(),
            pod_cidr_v4: v4.map(|c| c.parse().expect("v4 cidr")),
            pod_cidr_v6: v6.map(|c| c.parse().expect("v6 cidr")),
            mtu: None,
        }
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        for name in self.netns_files() {
            let path = self.dir.path().join("netns").join(name);
            let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The forwarding sysctls of the namespace the tests run in.
fn root_forwarding() -> (String, String) {
    let read =
        |key: &str| std::fs::read_to_string(format!("/proc/sys/net/{key}")).unwrap_or_default();
    (read("ipv4/ip_forward"), read("ipv6/conf/all/forwarding"))
}

fn fence_pods(sandboxes: &[&Sandbox]) {
    for sandbox in sandboxes {
        fence(&sandbox.netns_path);
    }
}

#[test]
fn two_pods_on_one_node_reach_each_other_and_the_node_over_both_families() {
    let node = Node::new("one");
    node.ip("link add uplink type veth peer name uplink-peer");
    node.ip("link set uplink-peer up");
    node.uplink("172.31.0.1/24", "fd00:172:31::1/64");
    node.wait_uplink();
    let data = DataDir::new();
    let mut cfg = data.config(Some("10.244.1.0/24"), Some("fd00:10:244:1::/64"));
    cfg.mtu = Some(1450);
    let forwarding_before = root_forwarding();

    let (a, b, again) = node.agent(|| async {
        let net = Network::open(cfg).await.expect("open");
        let a = net.create_sandbox("pod-a").await.expect("create a");
        let b = net.create_sandbox("pod-b").await.expect("create b");
        let again = net.create_sandbox("pod-a").await.expect("create a again");
        (a, b, again)
    });
    fence_pods(&[&a, &b]);

    assert_eq!(
        again, a,
        "creating an existing sandbox returns it unchanged"
    );
    let (a4, a6) = (a.ipv4.expect("a has IPv4"), a.ipv6.expect("a has IPv6"));
    let (b4, b6) = (b.ipv4.expect("b has IPv4"), b.ipv6.expect("b has IPv6"));
    assert_ne!(a4, b4);
    assert_ne!(a6, b6);
    for ip in [a4, b4] {
        assert_eq!(ip.octets()[..3], [10, 244, 1]);
        assert!(!matches!(ip.octets()[3], 0 | 1 | 255), "{ip} is reserved");
    }
    for ip in [a6, b6] {
        assert_eq!(ip.segments()[..4], [0xfd00, 0x10, 0x244, 1]);
        assert!(
            u128::from(ip) & 0xffff_ffff_ffff_ffff > 1,
            "{ip} is reserved"
        );
    }
    assert_eq!(a.host_veth, host_veth_name("pod-a"));
    assert_eq!(a.netns_path, data.path().join("netns").join("pod-a"));

    // What the node and the pod look like.
    let host = node.ip(&format!("-o link show {}", a.host_veth));
    assert!(
        host.contains("mtu 1450") && host.contains("state UP"),
        "{host}"
    );
    let eth0 = ns_run(&a.netns_path, &["ip", "-o", "link", "show", "eth0"]);
    assert!(eth0.contains("mtu 1450"), "{eth0}");
    let addrs = ns_run(&a.netns_path, &["ip", "-o", "addr", "show", "eth0"]);
    assert!(
        addrs.contains(&format!("{a4}/32")) && addrs.contains(&format!("{a6}/128")),
        "{addrs}"
    );
    assert!(
        !addrs.contains("tentative"),
        "DAD is off in the pod: {addrs}"
    );
    for key in ["ipv4/ip_forward", "ipv6/conf/all/forwarding"] {
        let value = ns_run(&node.path(), &["cat", &format!("/proc/sys/net/{key}")]);
        assert_eq!(value.trim(), "1", "{key} in the node netns");
    }
    assert_eq!(
        root_forwarding(),
        forwarding_before,
        "forwarding is set in the node netns only"
    );
    let route = node.ip(&format!("route get {a4}"));
    assert!(
        route.contains("src 172.31.0.1"),
        "node-to-pod traffic comes from the node's address: {route}"
    );

    // Pod to pod, pod to node, node to pod, both families.
    assert_pings(&a.netns_path, b4);
    assert_pings(&a.netns_path, b6);
    assert_pings(&b.netns_path, a4);
    assert_pings(&b.netns_path, a6);
    assert_pings(&a.netns_path, "172.31.0.1");
    assert_pings(&a.netns_path, "fd00:172:31::1");
    assert_pings(&node.path(), a4);
    assert_pings(&node.path(), a6);

    let cfg = data.config(Some("10.244.1.0/24"), Some("fd00:10:244:1::/64"));
    let left = node.agent(|| async {
        let net = Network::open(cfg).await.expect("open");
        net.remove_sandbox("pod-a").await.expect("remove a");
        net.remove_sandbox("pod-a")
            .await
            .expect("removing twice is fine");
        let left = net.sandboxes().await.expect("list");
        net.remove_sandbox("pod-b").await.expect("remove b");
        left
    });
    assert_eq!(left, vec![b.clone()], "only b was left after removing a");
    let links = node.links();
    assert!(
        !links.contains(&a.host_veth) && !links.contains(&b.host_veth),
        "{links}"
    );
    let routes = node.ip("route show proto 115");
    assert!(routes.trim().is_empty(), "no pod routes left: {routes}");
    assert!(data.netns_files().is_empty(), "{:?}", data.netns_files());
}

#[test]
fn addresses_survive_an_agent_restart_and_sandboxes_are_adopted() {
    let node = Node::new("restart");
    let data = DataDir::new();
    let cidrs = (Some("10.244.2.0/29"), Some("fd00:10:244:2::/64"));

    let cfg = data.config(cidrs.0, cidrs.1);
    let (a, b) = node.agent(|| async {
        let net = Network::open(cfg).await.expect("open");
        let a = net.create_sandbox("pod-a").await.expect("create a");
        let b = net.create_sandbox("pod-b").await.expect("create b");
        (a, b)
    });
    fence_pods(&[&a, &b]);
    let veth_a = node.ip(&format!("-o link show {}", a.host_veth));

    // A new Network over the same data directory: the agent restarted.
    let cfg = data.config(cidrs.0, cidrs.1);
    let second = data.config(cidrs.0, cidrs.1);
    let (listed, adopted, more, in_use) = node.agent(|| async {
        let net = Network::open(cfg).await.expect("reopen");
        let in_use = Network::open(second).await.map(|_| ());
        let listed = net.sandboxes().await.expect("list");
        let adopted = net.create_sandbox("pod-a").await.expect("adopt a");
        let more = futures_util::future::join_all(
            ["pod-c", "pod-d", "pod-e"].map(|uid| net.create_sandbox(uid)),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("create c, d, e at once");
        (listed, adopted, more, in_use)
    });
    fence_pods(&more.iter().collect::<Vec<_>>());

    assert_eq!(
        listed,
        vec![a.clone(), b.clone()],
        "sandboxes() lists what existed before the restart"
    );
    assert_eq!(adopted, a, "an adopted sandbox keeps its addresses");
    let err = in_use.expect_err("two Networks over one data directory");
    assert!(matches!(err, Error::DataDirInUse { .. }), "{err}");
    let ifindex = |line: &str| line.split(':').next().unwrap_or_default().to_owned();
    let veth_after = node.ip(&format!("-o link show {}", a.host_veth));
    assert_eq!(
        ifindex(&veth_after),
        ifindex(&veth_a),
        "adopting does not recreate the veth"
    );
    let mut v4: Vec<IpAddr> = vec![];
    let mut v6: Vec<IpAddr> = vec![];
    for sandbox in [&a, &b].into_iter().chain(&more) {
        v4.push(sandbox.ipv4.expect("v4").into());
        v6.push(sandbox.ipv6.expect("v6").into());
    }
    for list in [&mut v4, &mut v6] {
        let n = list.len();
        list.sort();
        list.dedup();
        assert_eq!(list.len(), n, "every pod has its own address: {list:?}");
    }
    assert_pings(&more[2].netns_path, a.ipv4.expect("v4"));
    assert_pings(&more[2].netns_path, a.ipv6.expect("v6"));

    // Half a sandbox (its veth deleted behind the agent's back, or a crash
    // mid-way) is completed by creating it again, with the same addresses.
    node.ip(&format!("link del {}", b.host_veth));
    assert!(!pings(&more[2].netns_path, b.ipv4.expect("v4")));
    let cfg = data.config(cidrs.0, cidrs.1);
    let repaired = node.agent(|| async {
        let net = Network::open(cfg).await.expect("reopen");
        net.create_sandbox("pod-b").await.expect("repair b")
    });
    assert_eq!(repaired, b);
    assert_pings(&more[2].netns_path, b.ipv4.expect("v4"));
    assert_pings(&more[2].netns_path, b.ipv6.expect("v6"));

    let cfg = data.config(cidrs.0, cidrs.1);
    let left = node.agent(|| async {
        let net = Network::open(cfg).await.expect("reopen");
        for sandbox in net.sandboxes().await.expect("list") {
            net.remove_sandbox(&sandbox.pod_uid).await.expect("remove");
        }
        net.sandboxes().await.expect("list")
    });
    assert!(left.is_empty(), "{left:?}");
    assert!(data.netns_files().is_empty());
    assert!(!node.links().contains("shl"), "{}", node.links());
}

#[test]
fn a_full_pod_cidr_is_a_clear_error_until_a_pod_leaves() {
    let node = Node::new("full");
    let data = DataDir::new();
    let cfg = data.config(Some("10.244.3.0/29"), None);
    let stray = data.path().join("netns").join("pod-stray");
    let (created, err, after, freed, listed_stray) = node.agent(|| async {
        let net = Network::open(cfg).await.expect("open");
        let mut created = vec![];
        for i in 0..5 {
            created.push(
                net.create_sandbox(&format!("pod-{i}"))
                    .await
                    .expect("create"),
            );
        }
        let err = net
            .create_sandbox("pod-5")
            .await
            .expect_err("a /29 holds five pods");
        let after = net.sandboxes().await.expect("list");
        net.remove_sandbox("pod-2").await.expect("remove");
        let freed = net
            .create_sandbox("pod-5")
            .await
            .expect("a freed address is handed out again");
        // A namespace file left by a crash before it was mounted.
        std::fs::write(&stray, b"").expect("stray file");
        let all = net.sandboxes().await.expect("list");
        let listed_stray = all.iter().find(|s| s.pod_uid == "pod-stray").cloned();
        for sandbox in all {
            net.remove_sandbox(&sandbox.pod_uid).await.expect("remove");
        }
        (created, err, after, freed, listed_stray)
    });
    let listed_stray = listed_stray.expect("sandboxes() lists a stray namespace file");
    assert_eq!((listed_stray.ipv4, listed_stray.ipv6), (None, None));

    assert_eq!(
        err.to_string(),
        "pod pod-5: the IPv4 pod CIDR 10.244.3.0/29 is exhausted (5 addresses in use)"
    );
    assert!(matches!(err, Error::Exhausted { .. }));
    assert_eq!(
        after.len(),
        5,
        "the failed pod left nothing behind: {after:?}"
    );
    assert!(
        created.iter().all(|s| s.ipv6.is_none()),
        "no IPv6 without an IPv6 CIDR"
    );
    assert_eq!(freed.ipv4, created[2].ipv4);
    assert!(data.netns_files().is_empty());
}

#[test]
fn pods_on_two_nodes_reach_each_other_through_peer_routes() {
    let node1 = Node::new("n1");
    let node2 = Node::new("n2");
    // Distinct ifindexes: the kernel's link watcher handles a veth whose
    // ends share one up to a second late, and IPv6 waits for it.
    node1.ip(&format!(
        "link add uplink index 11 type veth peer name uplink index 12 netns {}",
        node2.name
    ));
    node1.uplink("172.31.0.1/24", "fd00:172:31::1/64");
    node2.uplink("172.31.0.2/24", "fd00:172:31::2/64");
    node1.wait_uplink();
    node2.wait_uplink();
    let (data1, data2) = (DataDir::new(), DataDir::new());
    let cidrs1 = (Some("10.244.1.0/24"), Some("fd00:10:244:1::/64"));
    let cidrs2 = (Some("10.244.2.0/24"), Some("fd00:10:244:2::/64"));
    let route = |node: &str, cidr: &str, via: &str| PeerRoute {
        node: node.to_owned(),
        pod_cidr: cidr.parse().expect("cidr"),
        via: via.parse().expect("ip"),
    };
    let to_node2 = vec![
        route("node-2", "10.244.2.0/24", "172.31.0.2"),
        route("node-2", "fd00:10:244:2::/64", "fd00:172:31::2"),
    ];
    // A third node (never started): it first has the address .4, then .3,
    // and later leaves; its routes must follow.
    let mut to_node2_and_3_old = to_node2.clone();
    to_node2_and_3_old.push(route("node-3", "10.244.3.0/24", "172.31.0.4"));
    to_node2_and_3_old.push(route("node-3", "fd00:10:244:3::/64", "fd00:172:31::4"));
    let mut to_node2_and_3 = to_node2.clone();
    to_node2_and_3.push(route("node-3", "10.244.3.0/24", "172.31.0.3"));
    to_node2_and_3.push(route("node-3", "fd00:10:244:3::/64", "fd00:172:31::3"));
    let to_node1 = vec![
        route("node-1", "10.244.1.0/24", "172.31.0.1"),
        route("node-1", "fd00:10:244:1::/64", "fd00:172:31::1"),
    ];

    let cfg = data1.config(cidrs1.0, cidrs1.1);
    let (p1, mixed, overlap) = node1.agent(|| async {
        let net = Network::open(cfg).await.expect("open node 1");
        let p1 = net.create_sandbox("pod-1").await.expect("create");
        net.set_peer_routes(&to_node2_and_3_old)
            .await
            .expect("peer routes");
        net.set_peer_routes(&to_node2_and_3)
            .await
            .expect("peer routes after node 3 moved");
        net.set_peer_routes(&to_node2_and_3)
            .await
            .expect("setting the same routes again");
        let mixed = net
            .set_peer_routes(&[route("node-2", "10.244.2.0/24", "fd00:172:31::2")])
            .await;
        let overlap = net
            .set_peer_routes(&[route("node-2", "10.244.0.0/16", "172.31.0.2")])
            .await;
        (p1, mixed, overlap)
    });
    let cfg = data2.config(cidrs2.0, cidrs2.1);
    let p2 = node2.agent(|| async {
        let net = Network::open(cfg).await.expect("open node 2");
        let p2 = net.create_sandbox("pod-2").await.expect("create");
        net.set_peer_routes(&to_node1).await.expect("peer routes");
        p2
    });
    fence_pods(&[&p1, &p2]);

    let err = mixed
        .expect_err("a v4 CIDR via a v6 next hop is refused")
        .to_string();
    assert!(
        err.contains("node-2") && err.contains("different families"),
        "{err}"
    );
    let err = overlap
        .expect_err("a CIDR over our own is refused")
        .to_string();
    assert!(
        err.contains("overlaps this node's own pod CIDR 10.244.1.0/24"),
        "{err}"
    );
    let v4 = node1.ip("route show proto 116");
    let v6 = node1.ip("-6 route show proto 116");
    assert!(
        v4.contains("10.244.2.0/24 via 172.31.0.2") && v4.contains("10.244.3.0/24 via 172.31.0.3"),
        "{v4}"
    );
    assert!(
        v6.contains("fd00:10:244:2::/64 via fd00:172:31::2")
            && v6.contains("fd00:10:244:3::/64 via fd00:172:31::3"),
        "{v6}"
    );
    assert!(
        !v4.contains("172.31.0.4") && !v6.contains("fd00:172:31::4"),
        "node 3's old next hop is gone: {v4}{v6}"
    );

    let (ip1_4, ip1_6) = (p1.ipv4.expect("v4"), p1.ipv6.expect("v6"));
    let (ip2_4, ip2_6) = (p2.ipv4.expect("v4"), p2.ipv6.expect("v6"));
    assert_pings(&p1.netns_path, ip2_4);
    assert_pings(&p1.netns_path, ip2_6);
    assert_pings(&p2.netns_path, ip1_4);
    assert_pings(&p2.netns_path, ip1_6);

    // Node 3 leaves: its routes go, node 2's stay.
    let cfg = data1.config(cidrs1.0, cidrs1.1);
    node1.agent(|| async {
        let net = Network::open(cfg).await.expect("reopen node 1");
        net.set_peer_routes(&to_node2).await.expect("peer routes");
    });
    let v4 = node1.ip("route show proto 116");
    let v6 = node1.ip("-6 route show proto 116");
    assert!(
        v4.contains("10.244.2.0/24 via 172.31.0.2") && !v4.contains("10.244.3.0"),
        "{v4}"
    );
    assert!(
        v6.contains("fd00:10:244:2::/64") && !v6.contains("fd00:10:244:3::"),
        "{v6}"
    );
    assert_pings(&p1.netns_path, ip2_4);
    assert_pings(&p1.netns_path, ip2_6);

    // No peers at all: node 1 has no way to node 2's pods (it has no
    // default route, so the ping fails at once with "unreachable").
    let cfg = data1.config(cidrs1.0, cidrs1.1);
    node1.agent(|| async {
        let net = Network::open(cfg).await.expect("reopen node 1");
        net.set_peer_routes(&[]).await.expect("peer routes");
    });
    let peer_routes = node1.ip("route show proto 116") + &node1.ip("-6 route show proto 116");
    assert!(peer_routes.trim().is_empty(), "{peer_routes}");
    assert!(!pings(&p1.netns_path, ip2_4));
    let pod_routes = node1.ip("route show proto 115");
    assert!(
        pod_routes.contains(&ip1_4.to_string()),
        "pod routes are not peer routes: {pod_routes}"
    );

    for (node, data, cidrs) in [(&node1, &data1, cidrs1), (&node2, &data2, cidrs2)] {
        let cfg = data.config(cidrs.0, cidrs.1);
        node.agent(|| async {
            let net = Network::open(cfg).await.expect("reopen");
            for sandbox in net.sandboxes().await.expect("list") {
                net.remove_sandbox(&sandbox.pod_uid).await.expect("remove");
            }
        });
    }
}
