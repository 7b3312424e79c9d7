//! NetworkPolicy in identities, in Cilium's shape: the maps the agent's
//! policy writer fills and the pod-interface programs read.
//!
//! - `IPCACHE4_V1` / `IPCACHE6_V1` (LPM tries): an address → the security
//!   identity of whoever holds it. Pod IPs (/32, /128) carry their pod's
//!   cluster identity, node IPs `host` (this node) or `remote-node`, every
//!   ipBlock CIDR and `except` CIDR a node-local CIDR identity, and the
//!   default routes `world-ipv4` / `world-ipv6`. Longest prefix wins, so
//!   an address inside an `except` gets the except's identity, which no
//!   rule allows.
//! - `ENDPOINTS_V1` (hash): a local pod, keyed by the ifindex of its
//!   host-side veth (what `skb->ifindex` is at tc on that veth) → its own
//!   identity and whether ingress / egress are enforced. A pod that no
//!   NetworkPolicy selects for a direction has the flag clear and is not
//!   looked up in `POLICY_V1` for it (Kubernetes: default allow).
//! - `POLICY_V1` (LPM trie): (endpoint, remote identity, direction,
//!   protocol, destination port) → allow. The prefix covers endpoint,
//!   identity and direction always; protocol and the port's bits are
//!   covered as far as the rule names them, so "any protocol", "any port
//!   of TCP" and an `endPort` range (split into aligned power-of-two
//!   blocks) are single entries. A lookup is at most two trie walks: the
//!   remote identity, then [`IDENTITY_ANY`] (rules whose peer is
//!   everything). NetworkPolicy has no deny rules, so any hit allows.

/// Pinned name of the per-endpoint policy map.
pub const POLICY: &str = "POLICY_V1";
/// Pinned name of the IPv4 address → identity map.
pub const IPCACHE4: &str = "IPCACHE4_V1";
/// Pinned name of the IPv6 address → identity map.
pub const IPCACHE6: &str = "IPCACHE6_V1";
/// Pinned name of the local endpoint map.
pub const ENDPOINTS: &str = "ENDPOINTS_V1";

/// Size of `POLICY_V1` (rules × peers × port blocks over all local pods).
pub const POLICY_ENTRIES: u32 = 65_536;
/// Size of each ipcache map (pod IPs, node IPs and ipBlock CIDRs).
pub const IPCACHE_ENTRIES: u32 = 65_536;
/// Size of `ENDPOINTS_V1` (pods on one node).
pub const ENDPOINTS_ENTRIES: u32 = 4_096;

/// Map flags of the LPM tries (`BPF_F_NO_PREALLOC`, which the kernel
/// requires for them); the programs must declare them with the same.
pub const LPM_MAP_FLAGS: u32 = 1;

/// In a [`PolicyKey`]: any remote identity. Never assigned to anything.
pub const IDENTITY_ANY: u32 = 0;
/// Reserved identity of this node itself (its addresses, its processes:
/// the agent's probes).
pub const IDENTITY_HOST: u32 = 1;
/// Reserved identity of every address the ipcache knows nothing more
/// specific about (outside the cluster).
pub const IDENTITY_WORLD: u32 = 2;
/// Reserved identity of the other nodes' addresses.
pub const IDENTITY_REMOTE_NODE: u32 = 6;
/// Reserved identity of IPv4 addresses outside everything else (the
/// ipcache's `0.0.0.0/0`), so `ipBlock: 0.0.0.0/0` does not admit IPv6.
pub const IDENTITY_WORLD_IPV4: u32 = 9;
/// Reserved identity of IPv6 addresses outside everything else (`::/0`).
pub const IDENTITY_WORLD_IPV6: u32 = 10;
/// Reserved identity of the node-local DNS server's addresses, which
/// answer for `kube-system/kube-dns`. It carries the labels of kube-dns
/// pods (`k8s-app: kube-dns` in `kube-system`), so "allow egress to
/// kube-dns" policies select it as they would select DNS pods.
pub const IDENTITY_KUBE_DNS: u32 = 16;
/// First identity of a pod label set, allocated cluster-wide through the
/// `Identity` kind (`shoal.io/v1alpha1`).
pub const IDENTITY_CLUSTER_MIN: u32 = 256;
/// Last cluster-wide identity.
pub const IDENTITY_CLUSTER_MAX: u32 = 65_535;
/// Node-local identities (ipBlock CIDRs) are this bit plus a counter, as
/// Cilium's local scope; they never leave the node.
pub const IDENTITY_LOCAL_SCOPE: u32 = 1 << 24;

/// `PolicyKey::direction` of traffic into the endpoint (remote = source).
pub const POLICY_INGRESS: u8 = 0;
/// `PolicyKey::direction` of traffic out of the endpoint (remote =
/// destination).
pub const POLICY_EGRESS: u8 = 1;

/// Prefix length of a `POLICY_V1` entry that allows every protocol and
/// port: endpoint, identity and direction only.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
/// Prefix length of an entry that allows every port of one protocol.
pub const POLICY_PREFIX_ANY_PORT: u32 = 80;
/// Prefix length of an entry for exactly one port.
pub const POLICY_PREFIX_FULL: u32 = 96;

/// `PolicyValue::flags`: the traffic is allowed.
pub const POLICY_FLAG_ALLOW: u32 = 1;

/// `EndpointInfo::flags`: ingress is enforced (some policy selects the pod
/// for ingress); without it every ingress is allowed.
pub const ENDPOINT_ENFORCE_INGRESS: u32 = 1;
/// `EndpointInfo::flags`: egress is enforced.
pub const ENDPOINT_ENFORCE_EGRESS: u32 = 2;

/// `IpcacheValue::flags`: the address is a pod on this node.
pub const IPCACHE_FLAG_LOCAL_ENDPOINT: u32 = 1;

/// The data part of a `POLICY_V1` LPM key (the map key is this behind a
/// `u32` prefix length). Fields are matched in this order, so the port
/// comes last and is in network byte order: its high bits come first and a
/// shorter prefix is a port range. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct PolicyKey {
    /// The local endpoint: ifindex of the pod's host-side veth.
    pub endpoint: u32,
    /// The remote side's identity, or [`IDENTITY_ANY`].
    pub identity: u32,
    /// [`POLICY_INGRESS`] or [`POLICY_EGRESS`].
    pub direction: u8,
    /// IANA protocol (6 TCP, 17 UDP, 132 SCTP).
    pub protocol: u8,
    /// Destination port, network byte order.
    pub dport: u16,
}

/// Value of `POLICY_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyValue {
    /// [`POLICY_FLAG_ALLOW`].
    pub flags: u32,
    /// Explicit padding, always zero.
    pub pad: u32,
}

/// Value of `ENDPOINTS_V1`, keyed by the host-side veth's ifindex (`u32`).
/// Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// The pod's own identity.
    pub identity: u32,
    /// [`ENDPOINT_ENFORCE_INGRESS`] | [`ENDPOINT_ENFORCE_EGRESS`].
    pub flags: u32,
}

/// Data part of an `IPCACHE4_V1` LPM key: the address, network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Ipcache4Key {
    /// IPv4 address octets.
    pub addr: [u8; 4],
}

/// Data part of an `IPCACHE6_V1` LPM key: the address, network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Ipcache6Key {
    /// IPv6 address octets.
    pub addr: [u8; 16],
}

/// Value of both ipcache maps. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IpcacheValue {
    /// The identity of the address's holder.
    pub identity: u32,
    /// [`IPCACHE_FLAG_LOCAL_ENDPOINT`].
    pub flags: u32,
}

const _: () = {
    assert!(size_of::<PolicyKey>() == 12);
    assert!(core::mem::offset_of!(PolicyKey, identity) == 4);
    assert!(core::mem::offset_of!(PolicyKey, direction) == 8);
    assert!(core::mem::offset_of!(PolicyKey, protocol) == 9);
    assert!(core::mem::offset_of!(PolicyKey, dport) == 10);
    assert!(POLICY_PREFIX_FULL as usize == size_of::<PolicyKey>() * 8);
    assert!(size_of::<PolicyValue>() == 8);
    assert!(size_of::<EndpointInfo>() == 8);
    assert!(size_of::<Ipcache4Key>() == 4);
    assert!(size_of::<Ipcache6Key>() == 16);
    assert!(size_of::<IpcacheValue>() == 8);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers with explicit padding;
    // every bit pattern is valid.
    #![expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    use super::*;
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for Ipcache4Key {}
    unsafe impl aya::Pod for Ipcache6Key {}
    unsafe impl aya::Pod for IpcacheValue {}
}
