//! ClientIP session affinity for the socket-level LB, in Cilium's shape.
//!
//! `LB4_AFFINITY_V1` / `LB6_AFFINITY_V1` remember, per client and service,
//! which backend the client was last sent to and when. The client of a
//! socket is its network namespace (`bpf_get_netns_cookie`): a pod has its
//! own, so it stands for the pod IP; the node's processes share the node's.
//! LRU, so clients that went away age out.
//!
//! `LB4_AFFINITY_MATCH_V1` / `LB6_AFFINITY_MATCH_V1` hold one entry per
//! (backend, service) pair that is live in a service with affinity; the
//! agent writes them before a backend becomes selectable and deletes them
//! once it left the service. An affinity entry whose pair has no match
//! entry is ignored, so a removed backend never receives affine clients,
//! at the cost of one lookup per hit instead of a scan in the agent.
//!
//! Both are per family because backend ids and reverse-NAT ids are.

/// Pinned name of the IPv4 affinity map.
pub const LB4_AFFINITY: &str = "LB4_AFFINITY_V1";
/// Pinned name of the IPv6 affinity map.
pub const LB6_AFFINITY: &str = "LB6_AFFINITY_V1";
/// Pinned name of the IPv4 affinity match map.
pub const LB4_AFFINITY_MATCH: &str = "LB4_AFFINITY_MATCH_V1";
/// Pinned name of the IPv6 affinity match map.
pub const LB6_AFFINITY_MATCH: &str = "LB6_AFFINITY_MATCH_V1";
/// Default size of each affinity map (clients × services with affinity).
pub const LB_AFFINITY_ENTRIES: u32 = 65_536;
/// Default size of each affinity match map (backends of services with
/// affinity).
pub const LB_AFFINITY_MATCH_ENTRIES: u32 = 65_536;

/// Key of `LB4_AFFINITY_V1` and `LB6_AFFINITY_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LbAffinityKey {
    /// The client: `bpf_get_netns_cookie` of the socket's namespace.
    pub client: u64,
    /// The service's reverse-NAT id.
    pub rev_nat_index: u16,
    /// Explicit padding, always zero.
    pub pad: [u8; 6],
}

/// Value of `LB4_AFFINITY_V1` and `LB6_AFFINITY_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbAffinityValue {
    /// When the client last used the entry (`bpf_ktime_get_ns`).
    pub last_used_ns: u64,
    /// The backend the client goes to.
    pub backend_id: u32,
    /// Explicit padding, always zero.
    pub pad: u32,
}

/// Key of `LB4_AFFINITY_MATCH_V1` and `LB6_AFFINITY_MATCH_V1`: a backend
/// that is live in a service with affinity. The value is a `u32`, 1.
/// Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct LbAffinityMatchKey {
    /// The backend's id.
    pub backend_id: u32,
    /// The service's reverse-NAT id.
    pub rev_nat_index: u16,
    /// Explicit padding, always zero.
    pub pad: u16,
}

const _: () = {
    assert!(size_of::<LbAffinityKey>() == 16);
    assert!(size_of::<LbAffinityValue>() == 16);
    assert!(size_of::<LbAffinityMatchKey>() == 8);
    assert!(core::mem::offset_of!(LbAffinityKey, rev_nat_index) == 8);
    assert!(core::mem::offset_of!(LbAffinityValue, backend_id) == 8);
    assert!(core::mem::offset_of!(LbAffinityMatchKey, rev_nat_index) == 4);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers with explicit padding;
    // every bit pattern is valid.
    #![expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    use super::*;
    unsafe impl aya::Pod for LbAffinityKey {}
    unsafe impl aya::Pod for LbAffinityValue {}
    unsafe impl aya::Pod for LbAffinityMatchKey {}
}
