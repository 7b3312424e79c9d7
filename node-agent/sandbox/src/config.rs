//! The node's network settings and the fixed names and numbers sandboxes use.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

/// The gateway every pod routes IPv4 through: an address on each node-side
/// veth (scope host, so the node never picks it as a source address).
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The gateway every pod routes IPv6 through: a link-local address on each
/// node-side veth.
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The pod's interface, inside its namespace.
pub const POD_INTERFACE: &str = "eth0";

/// Node-side veth names are this prefix and 12 hex digits of a hash of the pod uid.
pub const HOST_VETH_PREFIX: &str = "shl";

/// Route protocol (`ip route show proto 115`) of the node's routes to its own
/// pods and of the routes inside pods.
pub const RTPROT_SHOAL_POD: u8 = 115;

/// Route protocol (`ip route show proto 116`) of the node's routes to other
/// nodes' pod CIDRs. [`crate::Network::set_peer_routes`] owns every route of
/// the main table with this protocol.
pub const RTPROT_SHOAL_PEER: u8 = 116;

/// Where the sandboxes' namespaces are mounted, under the data directory.
pub(crate) const NETNS_DIR: &str = "netns";

/// Where the IPAM state lives, under the data directory.
pub(crate) const IPAM_DIR: &str = "ipam";

/// The IPAM state file, in [`IPAM_DIR`].
pub(crate) const IPAM_STATE_FILE: &str = "state.json";

/// The lock a `Network` holds on its data directory, in [`IPAM_DIR`].
pub(crate) const IPAM_LOCK_FILE: &str = "lock";

/// The node's pod networking settings.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The agent's data directory; this crate owns `netns/` and `ipam/` in it.
    pub data_dir: PathBuf,
    /// The node's IPv4 podCIDR, e.g. `10.244.1.0/24`; `None` for no IPv4.
    pub pod_cidr_v4: Option<ipnet::Ipv4Net>,
    /// The node's IPv6 podCIDR, e.g. `fd00:10:244:1::/64`; `None` for no IPv6.
    pub pod_cidr_v6: Option<ipnet::Ipv6Net>,
    /// The MTU of both ends of every pod's veth; `None` keeps the kernel's 1500.
    pub mtu: Option<u32>,
}
