//! The node's pod network: sandboxes (namespace, veth, addresses, routes) and
//! the routes to other nodes' pods.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as SyncMutex, PoisonError, Weak};

use ipnet::IpNet;
use netlink_packet_route::address::AddressScope;
use netlink_packet_route::link::{InfoData, InfoVeth};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use nix::fcntl::{Flock, FlockArg};
use rtnetlink::{IpVersion, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::sync::Mutex;

use crate::config::{
    HOST_VETH_PREFIX, IPAM_DIR, IPAM_LOCK_FILE, IPAM_STATE_FILE, NETNS_DIR, NetworkConfig,
    POD_GATEWAY_V4, POD_GATEWAY_V6, POD_INTERFACE, RTPROT_SHOAL_PEER, RTPROT_SHOAL_POD,
};
use crate::error::Error;
use crate::ipam::{self, Allocation, Allocator};
use crate::netlink::{self, Netlink};
use crate::netns;

/// A pod's network sandbox as it exists on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The pod's uid.
    pub pod_uid: String,
    /// The bind-mounted network namespace; containers join it by this path.
    pub netns_path: PathBuf,
    /// The node-side end of the pod's veth.
    pub host_veth: String,
    /// The pod's IPv4 address (a /32 on its `eth0`).
    pub ipv4: Option<Ipv4Addr>,
    /// The pod's IPv6 address (a /128 on its `eth0`).
    pub ipv6: Option<Ipv6Addr>,
}

/// Called with a pod's host-side veth once it is up, before the sandbox is
/// handed back (the agent attaches its flow programs there).
pub type VethHook = Box<dyn Fn(&str) + Send + Sync>;

static VETH_HOOK: std::sync::OnceLock<VethHook> = std::sync::OnceLock::new();

/// Sets the process's [`VethHook`] (once; later calls are ignored and
/// return false). One agent runs per process, and the hook is the
/// dataplane's, which exists before any sandbox is made.
pub fn set_veth_hook(hook: VethHook) -> bool {
    VETH_HOOK.set(hook).is_ok()
}

/// A route to another node's pods: `pod_cidr via via`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    /// The peer node's name, for messages.
    pub node: String,
    /// The peer's podCIDR of one family.
    pub pod_cidr: IpNet,
    /// The peer's address on the node network, of the same family.
    pub via: IpAddr,
}

/// The node's pod network. Cheap to clone; use it on the tokio runtime it was
/// opened on (its netlink socket is driven by a task there).
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: NetworkConfig,
    netns_dir: PathBuf,
    ipam_path: PathBuf,
    /// The node's namespace, for threads that must write sysctls there.
    node_ns: File,
    /// A netlink socket in the node's namespace.
    node: Netlink,
    ipam: Mutex<Allocator>,
    /// Held for the life of the `Network`: two allocators over one state
    /// file would hand out the same address.
    _ipam_lock: Flock<File>,
    /// One lock per pod uid, so create and remove of one pod never interleave.
    pod_locks: SyncMutex<HashMap<String, Weak<Mutex<()>>>>,
    peer_routes: Mutex<()>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// Opens the IPAM state and enables forwarding (IPv4 `ip_forward`, IPv6
    /// `all.forwarding`, for the configured families) in the network
    /// namespace of the thread that calls it, which becomes the node
    /// namespace for the life of this `Network`. Needs a tokio runtime with
    /// I/O enabled.
    pub async fn open(cfg: NetworkConfig) -> Result<Network, Error> {
        // Both bind to the calling thread's namespace: take them before the
        // first await, which may resume on another thread.
        let node_ns = netns::current()?;
        let node = Netlink::here("Network::open")?;

        let netns_dir = cfg.data_dir.join(NETNS_DIR);
        let ipam_dir = cfg.data_dir.join(IPAM_DIR);
        for dir in [&netns_dir, &ipam_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io("creating the directory", dir, e))?;
        }
        let lock_path = ipam_dir.join(IPAM_LOCK_FILE);
        let lock = std::fs::File::create(&lock_path)
            .map_err(|e| Error::io("opening the IPAM lock", &lock_path, e))?;
        let ipam_lock =
            Flock::lock(lock, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                Error::DataDirInUse {
                    data_dir: cfg.data_dir.clone(),
                    lock: lock_path.clone(),
                    errno,
                }
            })?;
        let ipam_path = ipam_dir.join(IPAM_STATE_FILE);
        let state = ipam::load(&ipam_path)?;
        let allocator = Allocator::new(cfg.pod_cidr_v4, cfg.pod_cidr_v6, state)?;

        let (v4, v6) = (cfg.pod_cidr_v4.is_some(), cfg.pod_cidr_v6.is_some());
        netns::in_netns(
            &node_ns,
            "enabling forwarding in the node network namespace".to_owned(),
            move || {
                if v4 {
                    netns::write_sysctl("ipv4/ip_forward", "1")?;
                }
                if v6 {
                    netns::write_sysctl("ipv6/conf/all/forwarding", "1")?;
                }
                Ok(())
            },
        )
        .await?;

        tracing::debug!(data_dir = %cfg.data_dir.display(), ?cfg.pod_cidr_v4, ?cfg.pod_cidr_v6, "pod network open");
        Ok(Network {
            inner: Arc::new(Inner {
                cfg,
                netns_dir,
                ipam_path,
                node_ns,
                node,
                ipam: Mutex::new(allocator),
                _ipam_lock: ipam_lock,
                pod_locks: SyncMutex::new(HashMap::new()),
                peer_routes: Mutex::new(()),
            }),
        })
    }

    /// Creates the pod's sandbox, or completes and returns the existing one
    /// (idempotent, also after a crash half-way). Its addresses are persisted
    /// before they are configured. Returns once both veth ends are up. On
    /// error the sandbox may exist in part and keeps its addresses: create it
    /// again, or remove it.
    pub async fn create_sandbox(&self, pod_uid: &str) -> Result<Sandbox, Error> {
        validate_pod_uid(pod_uid)?;
        let _pod = self.lock_pod(pod_uid).await;
        let allocation = self.allocate(pod_uid).await?;
        let sandbox = self.sandbox(pod_uid, allocation);

        netns::create(sandbox.netns_path.clone(), pod_uid).await?;
        let pod_ns = netns::open(&sandbox.netns_path)?;
        let v6 = allocation.ipv6.is_some();
        let pod = Netlink::inside(
            &pod_ns,
            format!("pod {pod_uid}: opening netlink in the pod's network namespace"),
            "Network::create_sandbox",
            move || {
                if v6 {
                    // Every interface that later appears in the namespace
                    // (eth0) inherits these: no DAD delay on its addresses.
                    netns::write_sysctl("ipv6/conf/default/disable_ipv6", "0")?;
                    netns::write_sysctl("ipv6/conf/all/accept_dad", "0")?;
                    netns::write_sysctl("ipv6/conf/default/accept_dad", "0")?;
                }
                Ok(())
            },
        )
        .await?;

        let host_index = self
            .ensure_veth(pod_uid, &sandbox.host_veth, &pod_ns, &pod)
            .await?;
        self.configure_node_side(pod_uid, &sandbox, host_index, allocation)
            .await?;
        let eth0 = configure_pod_side(pod_uid, &pod, allocation, self.inner.cfg.mtu).await?;
        self.wait_until_up(pod_uid, &sandbox.host_veth, host_index, &pod, eth0)
            .await?;
        if let Some(hook) = VETH_HOOK.get() {
            // Before any container runs, so the pod's first packet is seen.
            hook(&sandbox.host_veth);
        }
        tracing::info!(pod = pod_uid, veth = %sandbox.host_veth, ipv4 = ?sandbox.ipv4, ipv6 = ?sandbox.ipv6, "sandbox ready");
        Ok(sandbox)
    }

    /// Removes the pod's veth (its node routes go with it), unmounts and
    /// deletes its namespace file, then releases its addresses. A sandbox
    /// that does not exist, or exists in part, is fine.
    pub async fn remove_sandbox(&self, pod_uid: &str) -> Result<(), Error> {
        validate_pod_uid(pod_uid)?;
        let _pod = self.lock_pod(pod_uid).await;
        let veth = host_veth_name(pod_uid);
        let node = &self.inner.node;
        let link = node.link(&veth).await.map_err(|e| {
            Error::netlink(
                format!("pod {pod_uid}: looking up {veth} in the node netns"),
                e,
            )
        })?;
        if let Some(link) = link {
            match netlink::alias(&link) {
                Some(alias) if alias != veth_alias(pod_uid) => {
                    tracing::warn!(pod = pod_uid, %veth, owner = alias, "veth belongs to another pod; left alone");
                }
                _ => node.del_link(link.header.index).await.map_err(|e| {
                    Error::netlink(
                        format!("pod {pod_uid}: deleting {veth} in the node netns"),
                        e,
                    )
                })?,
            }
        }
        netns::remove(&self.netns_path(pod_uid), pod_uid)?;

        let mut ipam = self.inner.ipam.lock().await;
        let mut next = ipam.clone();
        if next.release(pod_uid).is_some() {
            self.persist(&next).await?;
            *ipam = next;
        }
        tracing::info!(pod = pod_uid, "sandbox removed");
        Ok(())
    }

    /// Puts node-local service addresses (the node-local DNS server's
    /// `169.254.20.10` and `fd00::a:10`) on the node namespace's `lo`, so
    /// pods reach them through their default route and the node answers
    /// them itself. Idempotent.
    pub async fn add_local_addresses(&self, addrs: &[IpAddr]) -> Result<(), Error> {
        let node = &self.inner.node;
        let lo = node
            .link("lo")
            .await
            .map_err(|e| Error::netlink("looking up lo in the node netns", e))?
            .ok_or_else(|| {
                Error::namespace(
                    "adding node-local addresses: the node netns has no lo interface",
                    nix::errno::Errno::ENODEV,
                )
            })?;
        for ip in addrs {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            node.replace_address(
                lo.header.index,
                *ip,
                prefix,
                AddressScope::Host,
                ip.is_ipv6(),
            )
            .await
            .map_err(|e| Error::netlink(format!("adding {ip}/{prefix} to lo"), e))?;
        }
        Ok(())
    }

    /// The sandboxes on disk, with their addresses: every namespace file and
    /// every address allocation, so an agent that restarts can adopt them (or
    /// remove the ones whose pods are gone; a sandbox whose creation was
    /// interrupted shows up here too, and either call completes it).
    pub async fn sandboxes(&self) -> Result<Vec<Sandbox>, Error> {
        let mut uids = BTreeSet::new();
        let dir = &self.inner.netns_dir;
        let entries =
            std::fs::read_dir(dir).map_err(|e| Error::io("listing the sandboxes in", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("listing the sandboxes in", dir, e))?;
            if let Some(name) = entry.file_name().to_str()
                && validate_pod_uid(name).is_ok()
            {
                uids.insert(name.to_owned());
            }
        }
        let ipam = self.inner.ipam.lock().await;
        let allocations: BTreeMap<String, Allocation> =
            ipam.pods().map(|(uid, a)| (uid.clone(), *a)).collect();
        drop(ipam);
        uids.extend(allocations.keys().cloned());
        Ok(uids
            .into_iter()
            .map(|uid| {
                let allocation = allocations.get(&uid).copied().unwrap_or_default();
                self.sandbox(&uid, allocation)
            })
            .collect())
    }

    /// Makes the node's routes to other nodes' pod CIDRs exactly `peers`:
    /// adds the missing ones (replacing any route to the same CIDR, which
    /// shoal owns), then deletes every other route of the main table with
    /// protocol [`RTPROT_SHOAL_PEER`] (116). A peer route must not overlap the
    /// node's own pod CIDRs, and its next hop must be on-link.
    pub async fn set_peer_routes(&self, peers: &[PeerRoute]) -> Result<(), Error> {
        let desired = self.validate_peers(peers)?;
        let _serial = self.inner.peer_routes.lock().await;
        let node = &self.inner.node;
        let mut present = BTreeMap::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let routes = node
                .routes(version.clone())
                .await
                .map_err(|e| Error::netlink("listing the node's routes for peer routes", e))?;
            for route in routes {
                if is_main_table(&route)
                    && u8::from(route.header.protocol) == RTPROT_SHOAL_PEER
                    && let Some(key) = route_key(&route)
                {
                    present.insert(key, route);
                }
            }
        }
        for (key, peer) in desired.iter() {
            if present.contains_key(key) {
                continue;
            }
            let Some(route) = peer_route_message(key.0, key.1) else {
                continue;
            };
            node.replace_route(route).await.map_err(|e| {
                Error::netlink(
                    format!(
                        "node {}: adding the route {} via {} in the node netns",
                        peer.node, key.0, key.1
                    ),
                    e,
                )
            })?;
            tracing::info!(node = %peer.node, cidr = %key.0, via = %key.1, "peer route set");
        }
        // Stale routes go last: a peer whose address changed gets its new
        // route (a replace) before the old one is deleted, with no gap.
        for (key, route) in present.iter() {
            if !desired.contains_key(key) {
                node.del_route(route.clone()).await.map_err(|e| {
                    Error::netlink(
                        format!("deleting the stale peer route {} via {}", key.0, key.1),
                        e,
                    )
                })?;
                tracing::info!(cidr = %key.0, via = %key.1, "peer route removed");
            }
        }
        Ok(())
    }

    fn validate_peers<'p>(
        &self,
        peers: &'p [PeerRoute],
    ) -> Result<BTreeMap<(IpNet, IpAddr), &'p PeerRoute>, Error> {
        let own: Vec<IpNet> = [
            self.inner.cfg.pod_cidr_v4.map(IpNet::V4),
            self.inner.cfg.pod_cidr_v6.map(IpNet::V6),
        ]
        .into_iter()
        .flatten()
        .map(|net| net.trunc())
        .collect();
        let mut desired = BTreeMap::new();
        let mut by_cidr: BTreeMap<IpNet, &PeerRoute> = BTreeMap::new();
        for peer in peers {
            let invalid = |reason: String| Error::InvalidPeerRoute {
                node: peer.node.clone(),
                reason,
            };
            let cidr = peer.pod_cidr.trunc();
            if ipam::family_of(cidr.addr()) != ipam::family_of(peer.via) {
                return Err(invalid(format!(
                    "the pod CIDR {} and the next hop {} are of different families",
                    peer.pod_cidr, peer.via
                )));
            }
            if let Some(mine) = own
                .iter()
                .find(|mine| mine.contains(&cidr) || cidr.contains(*mine))
            {
                return Err(invalid(format!(
                    "the pod CIDR {} overlaps this node's own pod CIDR {mine}",
                    peer.pod_cidr
                )));
            }
            if let Some(other) = by_cidr.insert(cidr, peer)
                && other.via != peer.via
            {
                return Err(invalid(format!(
                    "the pod CIDR {cidr} is also routed via {} (node {})",
                    other.via, other.node
                )));
            }
            desired.insert((cidr, peer.via), peer);
        }
        Ok(desired)
    }

    fn netns_path(&self, pod_uid: &str) -> PathBuf {
        netns_path(&self.inner.cfg.data_dir, pod_uid)
    }

    fn sandbox(&self, pod_uid: &str, allocation: Allocation) -> Sandbox {
        Sandbox {
            pod_uid: pod_uid.to_owned(),
            netns_path: self.netns_path(pod_uid),
            host_veth: host_veth_name(pod_uid),
            ipv4: allocation.ipv4,
            ipv6: allocation.ipv6,
        }
    }

    async fn lock_pod(&self, pod_uid: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .inner
                .pod_locks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            locks.retain(|_, lock| lock.strong_count() > 0);
            match locks.get(pod_uid).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(Mutex::new(()));
                    locks.insert(pod_uid.to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    /// The pod's addresses, persisted before they are returned.
    async fn allocate(&self, pod_uid: &str) -> Result<Allocation, Error> {
        let mut ipam = self.inner.ipam.lock().await;
        let mut next = ipam.clone();
        let (allocation, changed) = next.allocate(pod_uid)?;
        if changed {
            self.persist(&next).await?;
            *ipam = next;
        }
        Ok(allocation)
    }

    async fn persist(&self, allocator: &Allocator) -> Result<(), Error> {
        let path = self.inner.ipam_path.clone();
        let state = allocator.state().clone();
        tokio::task::spawn_blocking(move || ipam::save(&path, &state))
            .await
            .map_err(|e| Error::Thread {
                context: "writing the IPAM state".to_owned(),
                reason: e.to_string(),
            })?
    }

    /// Makes sure the pod has a veth pair: `host` in the node namespace,
    /// `eth0` in the pod's. Returns the index of `host`.
    async fn ensure_veth(
        &self,
        pod_uid: &str,
        host: &str,
        pod_ns: &File,
        pod: &Netlink,
    ) -> Result<u32, Error> {
        let node = &self.inner.node;
        let alias = veth_alias(pod_uid);
        let lookup_host = |e| {
            Error::netlink(
                format!("pod {pod_uid}: looking up {host} in the node netns"),
                e,
            )
        };
        let lookup_eth0 = |e| {
            Error::netlink(
                format!("pod {pod_uid}: looking up {POD_INTERFACE} in the pod's netns"),
                e,
            )
        };
        let existing = node.link(host).await.map_err(lookup_host)?;
        let eth0 = pod.link(POD_INTERFACE).await.map_err(lookup_eth0)?;
        if let Some(link) = &existing {
            match netlink::alias(link) {
                Some(found) if found == alias && eth0.is_some() => return Ok(link.header.index),
                Some(found) if found != alias => {
                    return Err(Error::VethCollision {
                        pod: pod_uid.to_owned(),
                        veth: host.to_owned(),
                        owner: found.to_owned(),
                    });
                }
                // Ours without its pod end, or unnamed: a creation that was
                // interrupted before it named the veth.
                _ => {}
            }
            // Half a pair: start over.
            node.del_link(link.header.index).await.map_err(|e| {
                Error::netlink(
                    format!("pod {pod_uid}: deleting the stale {host} in the node netns"),
                    e,
                )
            })?;
        }
        if let Some(link) = pod.link(POD_INTERFACE).await.map_err(lookup_eth0)? {
            pod.del_link(link.header.index).await.map_err(|e| {
                Error::netlink(
                    format!("pod {pod_uid}: deleting the stale {POD_INTERFACE} in the pod's netns"),
                    e,
                )
            })?;
        }

        let mut peer = LinkUnspec::new_with_name(POD_INTERFACE).setns_by_fd(pod_ns.as_raw_fd());
        let mut veth = LinkVeth::new(host, POD_INTERFACE);
        if let Some(mtu) = self.inner.cfg.mtu {
            peer = peer.mtu(mtu);
            veth = veth.mtu(mtu);
        }
        let veth = veth
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        node.add_link(veth).await.map_err(|e| {
            Error::netlink(
                format!(
                    "pod {pod_uid}: creating the veth pair {host} (node) / {POD_INTERFACE} (pod)"
                ),
                e,
            )
        })?;
        let link = node
            .link(host)
            .await
            .map_err(lookup_host)?
            .ok_or_else(|| Error::Thread {
                context: format!("pod {pod_uid}: creating the veth pair"),
                reason: format!("{host} vanished right after it was created"),
            })?;
        Ok(link.header.index)
    }

    /// Waits until both ends of the veth are operationally up, so the pod can
    /// use IPv6 the moment this returns (the kernel starts IPv6 on a link
    /// only then). This is immediate unless both ends have the same ifindex
    /// in their namespaces, which the kernel's link watcher handles up to a
    /// second late.
    async fn wait_until_up(
        &self,
        pod_uid: &str,
        host: &str,
        host_index: u32,
        pod: &Netlink,
        eth0: u32,
    ) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + LINK_UP_TIMEOUT;
        loop {
            let host_up = self.inner.node.is_oper_up(host_index).await.map_err(|e| {
                Error::netlink(format!("pod {pod_uid}: reading the state of {host}"), e)
            })?;
            let eth0_up = pod.is_oper_up(eth0).await.map_err(|e| {
                Error::netlink(
                    format!("pod {pod_uid}: reading the state of {POD_INTERFACE}"),
                    e,
                )
            })?;
            if host_up && eth0_up {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    pod = pod_uid,
                    veth = host,
                    host_up,
                    eth0_up,
                    "veth not up yet; going on"
                );
                return Ok(());
            }
            tokio::time::sleep(LINK_UP_POLL).await;
        }
    }

    async fn configure_node_side(
        &self,
        pod_uid: &str,
        sandbox: &Sandbox,
        index: u32,
        allocation: Allocation,
    ) -> Result<(), Error> {
        let node = &self.inner.node;
        let host = &sandbox.host_veth;
        if allocation.ipv6.is_some() {
            let key = format!("ipv6/conf/{host}/disable_ipv6");
            netns::in_netns(
                &self.inner.node_ns,
                format!("pod {pod_uid}: enabling IPv6 on {host}"),
                move || netns::write_sysctl(&key, "0"),
            )
            .await?;
        }
        let mut message = LinkUnspec::new_with_index(index)
            .alias(veth_alias(pod_uid))
            .up();
        if let Some(mtu) = self.inner.cfg.mtu {
            message = message.mtu(mtu);
        }
        node.set_link(message.build()).await.map_err(|e| {
            Error::netlink(
                format!("pod {pod_uid}: bringing {host} up in the node netns"),
                e,
            )
        })?;
        if let Some(ip) = allocation.ipv4 {
            // Scope host: ARP from the pod for the gateway is answered, but
            // the node never uses it as a source, so node-to-pod traffic
            // comes from the node's own address.
            node.replace_address(index, POD_GATEWAY_V4.into(), 32, AddressScope::Host, false)
                .await
                .map_err(|e| {
                    Error::netlink(
                        format!("pod {pod_uid}: adding {POD_GATEWAY_V4}/32 to {host}"),
                        e,
                    )
                })?;
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(ip, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .protocol(RouteProtocol::Other(RTPROT_SHOAL_POD))
                .build();
            node.replace_route(route).await.map_err(|e| {
                Error::netlink(
                    format!("pod {pod_uid}: adding the route {ip}/32 dev {host}"),
                    e,
                )
            })?;
        }
        if let Some(ip) = allocation.ipv6 {
            node.replace_address(index, POD_GATEWAY_V6.into(), 64, AddressScope::Link, true)
                .await
                .map_err(|e| {
                    Error::netlink(
                        format!("pod {pod_uid}: adding {POD_GATEWAY_V6}/64 to {host}"),
                        e,
                    )
                })?;
            let route = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(ip, 128)
                .output_interface(index)
                .protocol(RouteProtocol::Other(RTPROT_SHOAL_POD))
                .build();
            node.replace_route(route).await.map_err(|e| {
                Error::netlink(
                    format!("pod {pod_uid}: adding the route {ip}/128 dev {host}"),
                    e,
                )
            })?;
        }
        Ok(())
    }
}

/// Configures `lo` and `eth0` in the pod; returns the index of `eth0`.
async fn configure_pod_side(
    pod_uid: &str,
    pod: &Netlink,
    allocation: Allocation,
    mtu: Option<u32>,
) -> Result<u32, Error> {
    let up = |name: &'static str, mtu: Option<u32>| async move {
        let link = pod
            .link(name)
            .await
            .map_err(|e| {
                Error::netlink(
                    format!("pod {pod_uid}: looking up {name} in the pod's netns"),
                    e,
                )
            })?
            .ok_or_else(|| Error::Thread {
                context: format!("pod {pod_uid}: configuring the pod's netns"),
                reason: format!("it has no {name} interface"),
            })?;
        let index = link.header.index;
        let mut message = LinkUnspec::new_with_index(index).up();
        if let Some(mtu) = mtu {
            message = message.mtu(mtu);
        }
        pod.set_link(message.build()).await.map_err(|e| {
            Error::netlink(
                format!("pod {pod_uid}: bringing {name} up in the pod's netns"),
                e,
            )
        })?;
        Ok::<u32, Error>(index)
    };
    up("lo", None).await?;
    let eth0 = up(POD_INTERFACE, mtu).await?;
    let protocol = RouteProtocol::Other(RTPROT_SHOAL_POD);
    if let Some(ip) = allocation.ipv4 {
        pod.replace_address(eth0, ip.into(), 32, AddressScope::Universe, false)
            .await
            .map_err(|e| {
                Error::netlink(
                    format!("pod {pod_uid}: adding {ip}/32 to {POD_INTERFACE}"),
                    e,
                )
            })?;
        let gateway = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(POD_GATEWAY_V4, 32)
            .output_interface(eth0)
            .scope(RouteScope::Link)
            .protocol(protocol)
            .build();
        pod.replace_route(gateway).await.map_err(|e| {
            Error::netlink(
                format!("pod {pod_uid}: adding the route {POD_GATEWAY_V4} dev {POD_INTERFACE} in the pod's netns"),
                e,
            )
        })?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(POD_GATEWAY_V4)
            .output_interface(eth0)
            .protocol(protocol)
            .build();
        pod.replace_route(default).await.map_err(|e| {
            Error::netlink(
                format!("pod {pod_uid}: adding the route default via {POD_GATEWAY_V4} in the pod's netns"),
                e,
            )
        })?;
    }
    if let Some(ip) = allocation.ipv6 {
        pod.replace_address(eth0, ip.into(), 128, AddressScope::Universe, true)
            .await
            .map_err(|e| {
                Error::netlink(
                    format!("pod {pod_uid}: adding {ip}/128 to {POD_INTERFACE}"),
                    e,
                )
            })?;
        let default = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(POD_GATEWAY_V6)
            .output_interface(eth0)
            .protocol(protocol)
            .build();
        pod.replace_route(default).await.map_err(|e| {
            Error::netlink(
                format!("pod {pod_uid}: adding the route default via {POD_GATEWAY_V6} dev {POD_INTERFACE} in the pod's netns"),
                e,
            )
        })?;
    }
    Ok(eth0)
}

/// `cidr via via`; `None` for mixed families, which `validate_peers` refuses.
fn peer_route_message(cidr: IpNet, via: IpAddr) -> Option<RouteMessage> {
    let protocol = RouteProtocol::Other(RTPROT_SHOAL_PEER);
    match (cidr, via) {
        (IpNet::V4(net), IpAddr::V4(via)) => Some(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .gateway(via)
                .protocol(protocol)
                .build(),
        ),
        (IpNet::V6(net), IpAddr::V6(via)) => Some(
            RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .gateway(via)
                .protocol(protocol)
                .build(),
        ),
        _ => None,
    }
}

fn is_main_table(route: &RouteMessage) -> bool {
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table));
    table == u32::from(RouteHeader::RT_TABLE_MAIN)
}

/// A route's destination and gateway, if it has a gateway.
fn route_key(route: &RouteMessage) -> Option<(IpNet, IpAddr)> {
    let prefix = route.header.destination_prefix_length;
    let mut destination = None;
    let mut gateway = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                destination = Some(IpAddr::V4(*a))
            }
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                destination = Some(IpAddr::V6(*a))
            }
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            _ => {}
        }
    }
    let destination = destination.unwrap_or(match gateway? {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    Some((IpNet::new(destination, prefix).ok()?, gateway?))
}

/// How long [`Network::create_sandbox`] waits for a new veth to come up.
const LINK_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
const LINK_UP_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Marks node-side veths with the pod they belong to (`ip link` shows it).
const VETH_ALIAS_PREFIX: &str = "shoal pod ";

fn veth_alias(pod_uid: &str) -> String {
    format!("{VETH_ALIAS_PREFIX}{pod_uid}")
}

/// The node-side veth of a pod: [`HOST_VETH_PREFIX`] and the first 12 hex
/// digits of the 64-bit FNV-1a hash of the uid (15 characters, the kernel's
/// limit). FNV-1a is fixed by its definition, so the name survives upgrades
/// and an agent can find the veths of the sandboxes it adopts.
pub fn host_veth_name(pod_uid: &str) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = pod_uid.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    format!("{HOST_VETH_PREFIX}{:012x}", hash >> 16)
}

/// Pod uids name files under the data directory: Kubernetes uids are UUIDs,
/// anything beyond letters, digits, `-`, `_` and `.` is refused.
fn validate_pod_uid(uid: &str) -> Result<(), Error> {
    let invalid = |reason| {
        Err(Error::InvalidPodUid {
            uid: uid.to_owned(),
            reason,
        })
    };
    if uid.is_empty() {
        return invalid("it is empty");
    }
    if uid.len() > 128 {
        return invalid("it is longer than 128 characters");
    }
    if uid.starts_with('.') {
        return invalid("it starts with a dot");
    }
    if !uid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return invalid("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// Where the sandbox of `pod_uid` keeps its namespace under `data_dir`.
pub fn netns_path(data_dir: &Path, pod_uid: &str) -> PathBuf {
    data_dir.join(NETNS_DIR).join(pod_uid)
}

#[cfg(test)]
mod tests;
