//! Per-packet load balancing on the node's external device: conntrack and
//! NAT for traffic from outside the node to NodePorts, LoadBalancer IPs and
//! externalIPs.
//!
//! `CT4_V1` / `CT6_V1` are LRU hashes keyed by a packet's 5-tuple and a
//! direction. A translated flow has two entries:
//! - `CT_DIR_ORIGINAL`, keyed as the client's packets arrive (client →
//!   frontend): rewrite the destination to the backend and, when the
//!   backend is on another node, the source to the node's address and an
//!   allocated port (SNAT);
//! - `CT_DIR_REPLY`, keyed as the backend's replies reach this node
//!   (backend → client, or backend → node address and SNAT port): rewrite
//!   the source back to the frontend and, after SNAT, the destination back
//!   to the client.
//!
//! Every rewrite field that is zero is left alone, so one value shape
//! serves both directions.

/// Pinned name of the IPv4 conntrack map.
pub const CT4: &str = "CT4_V1";
/// Pinned name of the IPv6 conntrack map.
pub const CT6: &str = "CT6_V1";
/// Pinned name of the per-node NodePort configuration (an array of one).
pub const NODEPORT_CONFIG: &str = "NODEPORT_CONFIG_V1";
/// Default size of each conntrack map (entries; a flow takes two).
pub const CT_ENTRIES: u32 = 131_072;

/// `LbService.flags`: the frontend may be reached from outside the node
/// (NodePort on a node address, externalIP, LoadBalancer ingress IP).
/// ClusterIPs never carry it, so the external device never translates them.
pub const SVC_FLAG_EXTERNAL: u8 = 1 << 0;
/// `LbService.flags`: `externalTrafficPolicy: Local`: traffic from outside
/// goes only to backends on this node, with the client's address kept.
pub const SVC_FLAG_ETP_LOCAL: u8 = 1 << 1;

/// Conntrack direction: the client's packets.
pub const CT_DIR_ORIGINAL: u8 = 0;
/// Conntrack direction: the backend's replies.
pub const CT_DIR_REPLY: u8 = 1;

/// `Ct*Value.flags`: the flow's source was translated to the node (SNAT),
/// its backend is on another node.
pub const CT_FLAG_SNAT: u8 = 1 << 0;
/// `Ct*Value.flags`: the backend is on this node.
pub const CT_FLAG_LOCAL_BACKEND: u8 = 1 << 1;
/// `Ct*Value.flags`: a TCP FIN or RST matched this entry; the agent's
/// conntrack GC gives the flow the short closing timeout from then on.
pub const CT_FLAG_CLOSING: u8 = 1 << 2;

/// `NodeportConfig.flags`: the config has been written (zeroed: the tc
/// programs pass everything).
pub const NODEPORT_ENABLED: u8 = 1 << 0;

/// Key of `CT4_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ct4Key {
    /// Source address, network byte order.
    pub saddr: u32,
    /// Destination address, network byte order.
    pub daddr: u32,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// `CT_DIR_ORIGINAL` or `CT_DIR_REPLY`.
    pub dir: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
}

/// Value of `CT4_V1`: what to rewrite a matching packet to. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ct4Value {
    /// New source address, 0 = unchanged.
    pub to_saddr: u32,
    /// New destination address, 0 = unchanged.
    pub to_daddr: u32,
    /// New source port, 0 = unchanged.
    pub to_sport: u16,
    /// New destination port, 0 = unchanged.
    pub to_dport: u16,
    /// The backend's id in `LB4_BACKENDS_V1` (the flow is re-balanced when
    /// it no longer names the same backend).
    pub backend_id: u32,
    /// The service's reverse-NAT id.
    pub rev_nat_index: u16,
    /// `CT_FLAG_*`.
    pub flags: u8,
    /// Explicit padding, always zero.
    pub pad: u8,
    /// When a packet last matched, seconds of CLOCK_BOOTTIME.
    pub last_seen: u32,
    /// Packets that matched (approximate: per-CPU increments race).
    pub packets: u32,
}

/// Key of `CT6_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ct6Key {
    /// Source address, network byte order.
    pub saddr: [u8; 16],
    /// Destination address, network byte order.
    pub daddr: [u8; 16],
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// `CT_DIR_ORIGINAL` or `CT_DIR_REPLY`.
    pub dir: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
}

/// Value of `CT6_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ct6Value {
    /// New source address, all zero = unchanged.
    pub to_saddr: [u8; 16],
    /// New destination address, all zero = unchanged.
    pub to_daddr: [u8; 16],
    /// New source port, 0 = unchanged.
    pub to_sport: u16,
    /// New destination port, 0 = unchanged.
    pub to_dport: u16,
    /// The backend's id in `LB6_BACKENDS_V1`.
    pub backend_id: u32,
    /// The service's reverse-NAT id.
    pub rev_nat_index: u16,
    /// `CT_FLAG_*`.
    pub flags: u8,
    /// Explicit padding, always zero.
    pub pad: u8,
    /// When a packet last matched, seconds of CLOCK_BOOTTIME.
    pub last_seen: u32,
    /// Packets that matched (approximate).
    pub packets: u32,
}

/// Value of `NODEPORT_CONFIG_V1[0]`: what the tc programs need to know
/// about the node. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeportConfig {
    /// The node's IPv4 address (SNAT source), 0 = none.
    pub node_ip4: u32,
    /// This node's IPv4 podCIDR, masked; a backend inside is local.
    pub pod_net4: u32,
    /// The podCIDR's mask (all ones with a zero net: no podCIDR).
    pub pod_mask4: u32,
    /// The node's IPv6 address, all zero = none.
    pub node_ip6: [u8; 16],
    /// This node's IPv6 podCIDR, masked.
    pub pod_net6: [u8; 16],
    /// Its mask.
    pub pod_mask6: [u8; 16],
    /// First SNAT source port (host byte order).
    pub snat_port_min: u16,
    /// Last SNAT source port (host byte order).
    pub snat_port_max: u16,
    /// `NODEPORT_ENABLED`.
    pub flags: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 3],
}

const _: () = {
    assert!(size_of::<Ct4Key>() == 16);
    assert!(size_of::<Ct4Value>() == 28);
    assert!(size_of::<Ct6Key>() == 40);
    assert!(size_of::<Ct6Value>() == 52);
    assert!(size_of::<NodeportConfig>() == 68);
    assert!(core::mem::offset_of!(Ct4Key, proto) == 12);
    assert!(core::mem::offset_of!(Ct6Key, sport) == 32);
    assert!(core::mem::offset_of!(Ct4Value, backend_id) == 12);
    assert!(core::mem::offset_of!(Ct6Value, backend_id) == 36);
    assert!(core::mem::offset_of!(NodeportConfig, snat_port_min) == 60);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers with explicit padding.
    #![expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    use super::*;
    unsafe impl aya::Pod for Ct4Key {}
    unsafe impl aya::Pod for Ct4Value {}
    unsafe impl aya::Pod for Ct6Key {}
    unsafe impl aya::Pod for Ct6Value {}
    unsafe impl aya::Pod for NodeportConfig {}
}
