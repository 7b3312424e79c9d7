//! Per-packet load balancing on the node's external device: attaches the
//! `nodeport_ingress` / `nodeport_egress` tc programs and writes the node's
//! part of their configuration (its addresses, its podCIDRs, the SNAT port
//! range).
//!
//! The programs are attached through TCX links pinned next to the maps
//! (`TC_NODEPORT_{INGRESS,EGRESS}_<device>`). A restarted agent loads the
//! new programs and swaps them into the pinned links in one kernel call
//! (`BPF_LINK_UPDATE`), so the device is never without them, and the
//! conntrack maps, pinned too, keep established flows going.

use std::{
    fs,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, MapData},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::TcAttachOptions,
    },
};
use ipnet::{Ipv4Net, Ipv6Net};
use shoal_ebpf_common::{NODEPORT_CONFIG, NODEPORT_ENABLED, NodeportConfig};

use super::{Dataplane, Error};

mod conntrack;
pub use conntrack::{
    Conntrack, CtGcConfig, CtTimeouts, SweepStats, boot_seconds, gc_totals, run_gc,
};

/// The tc programs on the external device: (program, direction, pin prefix).
pub const NODEPORT_PROGRAMS: [(&str, TcDirection, &str); 2] = [
    (
        "nodeport_ingress",
        TcDirection::Ingress,
        "TC_NODEPORT_INGRESS_",
    ),
    (
        "nodeport_egress",
        TcDirection::Egress,
        "TC_NODEPORT_EGRESS_",
    ),
];

/// Default first SNAT source port: above Linux's default ephemeral range
/// (32768-60999), so the node's own connections do not collide with it.
pub const DEFAULT_SNAT_PORT_MIN: u16 = 61_000;
/// Default last SNAT source port.
pub const DEFAULT_SNAT_PORT_MAX: u16 = 65_535;

/// A tc attach direction.
#[derive(Clone, Copy, Debug)]
pub enum TcDirection {
    /// Packets arriving on the device.
    Ingress,
    /// Packets leaving through it.
    Egress,
}

/// Sizes of the dataplane's LRU maps that grow with traffic (entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `CT4_V1` (a translated flow takes two).
    pub ct4: u32,
    /// `CT6_V1`.
    pub ct6: u32,
    /// `LB4_AFFINITY_V1` and `LB6_AFFINITY_V1` each (one entry per client
    /// and ClientIP-affine Service).
    pub affinity: u32,
    /// `FLOWS_V1` (one entry per flow and pod interface).
    pub flows: u32,
    /// The flow event ring buffer, in bytes (a power of two, at least a page).
    pub flow_ring_bytes: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            ct4: shoal_ebpf_common::CT_ENTRIES,
            ct6: shoal_ebpf_common::CT_ENTRIES,
            affinity: shoal_ebpf_common::LB_AFFINITY_ENTRIES,
            flows: shoal_ebpf_common::flow::FLOW_ENTRIES,
            flow_ring_bytes: shoal_ebpf_common::flow::FLOW_RING_BYTES,
        }
    }
}

/// What the tc programs need to know about the node.
#[derive(Clone, Debug)]
pub struct NodeportSetup {
    /// The external device (the one holding the node's InternalIP).
    pub device: String,
    /// The node's IPv4 address: external traffic to a backend on another
    /// node leaves with it as its source.
    pub node_ip4: Option<Ipv4Addr>,
    /// The node's IPv6 address, likewise.
    pub node_ip6: Option<Ipv6Addr>,
    /// This node's IPv4 podCIDR: backends inside it are local.
    pub pod_cidr4: Option<Ipv4Net>,
    /// This node's IPv6 podCIDR.
    pub pod_cidr6: Option<Ipv6Net>,
    /// SNAT source ports, inclusive.
    pub snat_ports: (u16, u16),
}

impl NodeportSetup {
    /// The map value the programs read.
    pub fn to_config(&self) -> NodeportConfig {
        let (net4, mask4) = match self.pod_cidr4 {
            Some(n) => (n.network().octets(), n.netmask().octets()),
            // A mask of all ones with a zero net: only 0.0.0.0 is "local".
            None => ([0; 4], [0xff; 4]),
        };
        let (net6, mask6) = match self.pod_cidr6 {
            Some(n) => (n.network().octets(), n.netmask().octets()),
            None => ([0; 16], [0xff; 16]),
        };
        NodeportConfig {
            node_ip4: self.node_ip4.map_or(0, |a| u32::from_ne_bytes(a.octets())),
            pod_net4: u32::from_ne_bytes(net4),
            pod_mask4: u32::from_ne_bytes(mask4),
            node_ip6: self.node_ip6.map_or([0; 16], |a| a.octets()),
            pod_net6: net6,
            pod_mask6: mask6,
            snat_port_min: self.snat_ports.0,
            snat_port_max: self.snat_ports.1,
            flags: NODEPORT_ENABLED,
            pad: [0; 3],
        }
    }
}

/// The device that holds `address` in this network namespace.
pub fn device_of(address: IpAddr) -> Result<String, Error> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| Error::Nodeport(format!("listing interface addresses: {e}")))?;
    for ifa in addrs {
        let Some(sa) = ifa.address else { continue };
        let ip = match (sa.as_sockaddr_in(), sa.as_sockaddr_in6()) {
            (Some(v4), _) => IpAddr::V4(v4.ip()),
            (_, Some(v6)) => IpAddr::V6(v6.ip()),
            _ => continue,
        };
        if ip == address {
            return Ok(ifa.interface_name);
        }
    }
    Err(Error::Nodeport(format!(
        "no interface holds the node address {address}; pass --lb-device"
    )))
}

impl Dataplane {
    /// Writes the node's NodePort configuration and loads the tc programs
    /// without attaching them (what [`attach_nodeport`](Self::attach_nodeport)
    /// does first; `BPF_PROG_TEST_RUN` tests stop here).
    pub fn configure_nodeport(&mut self, setup: &NodeportSetup) -> Result<(), Error> {
        let name = NODEPORT_CONFIG;
        let mut config: Array<&mut MapData, NodeportConfig> = self
            .ebpf
            .map_mut(name)
            .ok_or(Error::MissingMap(name))?
            .try_into()
            .map_err(|source| Error::Map { name, source })?;
        config
            .set(0, setup.to_config(), 0)
            .map_err(|source| Error::Map { name, source })?;
        for (program, _, _) in NODEPORT_PROGRAMS {
            let prog = self.classifier(program)?;
            if prog.fd().is_err() {
                prog.load().map_err(|source| Error::Program {
                    name: program,
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// The NodePort tc program `name`.
    pub(super) fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier, Error> {
        self.ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|source| Error::Program { name, source })
    }

    /// The file descriptor of a loaded program (for `BPF_PROG_TEST_RUN`).
    pub fn program_fd(&self, name: &str) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        Some(self.ebpf.program(name)?.fd().ok()?.as_fd())
    }

    /// Attaches the NodePort programs to `setup.device` (ingress and
    /// egress) and writes the node's configuration. Idempotent: links
    /// pinned by an earlier agent get the new programs atomically.
    pub fn attach_nodeport(&mut self, setup: &NodeportSetup) -> Result<(), Error> {
        self.configure_nodeport(setup)?;
        for (program, direction, pin) in NODEPORT_PROGRAMS {
            let pin = self.config.pin_dir.join(format!("{pin}{}", setup.device));
            let prog = self.classifier(program)?;
            attach_pinned(prog, program, &setup.device, direction, &pin)?;
        }
        self.set_l2_device(&setup.device)?;
        tracing::info!(
            device = %setup.device,
            node_ip4 = ?setup.node_ip4,
            node_ip6 = ?setup.node_ip6,
            pod_cidr4 = ?setup.pod_cidr4,
            pod_cidr6 = ?setup.pod_cidr6,
            "NodePort / LoadBalancer programs attached (tc, pinned TCX links)"
        );
        Ok(())
    }
}

pub(super) fn attach_pinned(
    prog: &mut SchedClassifier,
    name: &'static str,
    device: &str,
    direction: TcDirection,
    pin: &Path,
) -> Result<(), Error> {
    let program = |source| Error::Program { name, source };
    let id = match PinnedLink::from_pin(pin) {
        Ok(old) => {
            // Replace the program inside the pinned link: no gap.
            let link = FdLink::from(old).try_into().map_err(|e: LinkError| {
                Error::Nodeport(format!("pinned link {}: {e}", pin.display()))
            })?;
            match prog.attach_to_link(link) {
                Ok(id) => id,
                Err(e) => {
                    // The link is dead (its device went away): start over.
                    tracing::warn!(pin = %pin.display(), error = %e, "replacing a stale tc link");
                    remove_pin(pin)?;
                    attach_new(prog, device, direction).map_err(program)?
                }
            }
        }
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => {
            attach_new(prog, device, direction).map_err(program)?
        }
        Err(e) => {
            tracing::warn!(pin = %pin.display(), error = %e, "unreadable tc link pin; replacing it");
            remove_pin(pin)?;
            attach_new(prog, device, direction).map_err(program)?
        }
    };
    let link = prog.take_link(id).map_err(program)?;
    let link: FdLink = link
        .try_into()
        .map_err(|e: LinkError| Error::Nodeport(format!("tc link of {name}: {e}")))?;
    // A link taken over from the pin is pinned there already.
    remove_pin(pin)?;
    link.pin(pin)
        .map_err(|e| Error::Nodeport(format!("pinning {}: {e}", pin.display())))?;
    Ok(())
}

fn attach_new(
    prog: &mut SchedClassifier,
    device: &str,
    direction: TcDirection,
) -> Result<aya::programs::tc::SchedClassifierLinkId, aya::programs::ProgramError> {
    let attach_type = match direction {
        TcDirection::Ingress => TcAttachType::Ingress,
        TcDirection::Egress => TcAttachType::Egress,
    };
    // First: service translation happens before anything else on the device.
    prog.attach_with_options(
        device,
        attach_type,
        TcAttachOptions::TcxOrder(LinkOrder::first()),
    )
}

pub(super) fn remove_pin(pin: &Path) -> Result<(), Error> {
    match fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Nodeport(format!("removing {}: {e}", pin.display()))),
    }
}

/// Removes a pinned conntrack map whose size differs from `entries`, so
/// the next load creates it at the size asked for (its flows are lost).
pub(super) fn drop_resized_pin(pin_dir: &Path, name: &str, entries: u32) {
    let path: PathBuf = pin_dir.join(name);
    let Ok(map) = MapData::from_pin(&path) else {
        return;
    };
    let Ok(info) = map.info() else { return };
    if info.max_entries() != entries {
        tracing::warn!(
            map = name,
            pinned = info.max_entries(),
            wanted = entries,
            "map resized; its entries are dropped"
        );
        let _ = fs::remove_file(&path);
    }
}

/// Waits until node IPAM gave `node` its podCIDRs (they tell local
/// backends from remote ones), then attaches the NodePort programs to
/// `device` (default: the device holding the node's first address) and
/// writes the node's configuration. Failures are logged and retried.
pub async fn attach_when_ready(
    client: kube::Client,
    dataplane: std::sync::Arc<std::sync::Mutex<Dataplane>>,
    node: String,
    addresses: Vec<IpAddr>,
    device: Option<String>,
) {
    use k8s_openapi::api::core::v1::Node;
    let nodes: kube::Api<Node> = kube::Api::all(client);
    let mut said = false;
    loop {
        match try_attach(&nodes, &dataplane, &node, &addresses, device.as_deref()).await {
            Ok(true) => return,
            Ok(false) => {
                if !said {
                    tracing::info!(%node, "NodePort dataplane waits for the node's podCIDRs");
                    said = true;
                }
            }
            Err(e) => {
                tracing::warn!(%node, error = %e, "attaching the NodePort dataplane; retrying")
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn try_attach(
    nodes: &kube::Api<k8s_openapi::api::core::v1::Node>,
    dataplane: &std::sync::Mutex<Dataplane>,
    node: &str,
    addresses: &[IpAddr],
    device: Option<&str>,
) -> Result<bool, Error> {
    let object = match nodes.get(node).await {
        Ok(object) => object,
        // Not registered yet.
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(false),
        Err(e) => return Err(Error::Nodeport(format!("reading node {node}: {e}"))),
    };
    let cidrs = object.spec.and_then(|s| s.pod_cidrs).unwrap_or_default();
    if cidrs.is_empty() {
        return Ok(false);
    }
    let mut setup = NodeportSetup {
        device: String::new(),
        node_ip4: addresses.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        }),
        node_ip6: addresses.iter().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        }),
        pod_cidr4: None,
        pod_cidr6: None,
        snat_ports: (DEFAULT_SNAT_PORT_MIN, DEFAULT_SNAT_PORT_MAX),
    };
    for cidr in &cidrs {
        match cidr.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(n)) => setup.pod_cidr4 = Some(n),
            Ok(ipnet::IpNet::V6(n)) => setup.pod_cidr6 = Some(n),
            Err(e) => tracing::warn!(%node, cidr, error = %e, "spec.podCIDRs: not a CIDR; skipped"),
        }
    }
    setup.device = match device {
        Some(d) => d.to_owned(),
        None => {
            let first = addresses
                .first()
                .ok_or_else(|| Error::Nodeport("the node has no address; pass --node-ip".into()))?;
            device_of(*first)?
        }
    };
    let mut dp = dataplane
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    dp.attach_nodeport(&setup)?;
    Ok(true)
}
