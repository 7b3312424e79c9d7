//! Pod sandboxes: a network namespace per pod (no pause container), a veth
//! into it, dual-stack addresses from the node's podCIDRs, and routes.
//!
//! # Routing
//!
//! Every pod is routed, not bridged, in the style of Calico and Cilium:
//!
//! | where | what |
//! |---|---|
//! | pod `eth0` | `<podIPv4>/32`, `<podIPv6>/128` (no DAD: usable at once) |
//! | pod routes | `169.254.1.1 dev eth0 scope link`, `default via 169.254.1.1 dev eth0`, `default via fe80::1 dev eth0` |
//! | node veth (`shl` + 12 hex) | `169.254.1.1/32 scope host`, `fe80::1/64` (no DAD), so the pod's ARP and NDP for its gateway are answered |
//! | node routes to pods | `<podIPv4>/32 dev <veth> scope link proto 115`, `<podIPv6>/128 dev <veth> proto 115` |
//! | node routes to peers | `<peer podCIDR> via <peer node IP> proto 116` (both families), owned by [`Network::set_peer_routes`] |
//!
//! The gateway address is scope host on the node, so the node never picks it
//! as a source: node-to-pod traffic (probes) comes from the node's own
//! address. Pod-to-pod traffic on one node goes up one veth and down the
//! other; across nodes it follows the peer routes, which need the peers on
//! the same L2 segment. [`Network::open`] turns on IPv4 and IPv6 forwarding in
//! the node namespace (IPv6 forwarding makes the kernel ignore router
//! advertisements on interfaces whose `accept_ra` is 1).
//!
//! # On disk
//!
//! Under the agent's data directory: `netns/<pod uid>` is the pod's
//! namespace, bind-mounted like `ip netns add` does; `ipam/state.json` holds
//! which pod has which address, written (atomically, fsynced) before an
//! address is used, so a restarted agent never hands one out twice and can
//! adopt its sandboxes through [`Network::sandboxes`]. Unlike `ip netns`,
//! `netns/` is not made a shared mount point: every user of the files (the
//! agent, runc) runs in the agent's mount namespace, and a plain directory
//! leaves nothing to unmount when the data directory goes. One data
//! directory belongs to one agent process at a time.
//!
//! Node-side veths carry the alias `shoal pod <uid>` (`ip link` shows it), so
//! a name collision between two uids is reported instead of one pod taking
//! over the other's veth.
//!
//! # Namespaces and threads
//!
//! Work inside another namespace runs on a short-lived thread that enters it
//! (`setns`) and exits; tokio's threads never change namespace. A netlink
//! socket opened on such a thread stays in that namespace and is driven from
//! tokio afterwards. Sysctls under `/proc/sys/net` are written from such a
//! thread too: the kernel resolves them for the namespace of the thread that
//! opens the file. [`Network::open`] treats the namespace of the thread that
//! calls it as the node's; the runtime must have I/O enabled, and the
//! `Network` must be used on that runtime.
//!
//! [`Network::create_sandbox`] returns once both veth ends are operationally
//! up, so IPv6 works the moment a container starts.

#![forbid(unsafe_code)]

mod config;
mod error;
mod ipam;
mod netlink;
mod netns;
mod network;

pub use config::{
    HOST_VETH_PREFIX, NetworkConfig, POD_GATEWAY_V4, POD_GATEWAY_V6, POD_INTERFACE,
    RTPROT_SHOAL_PEER, RTPROT_SHOAL_POD,
};
pub use error::{Error, Family};
pub use network::{
    Network, PeerRoute, Sandbox, VethHook, host_veth_name, netns_path, set_veth_hook,
};
