//! Layer-2 announcement of LoadBalancer ingress IPs on the lab fabric: the
//! external device's ingress program answers ARP requests and ICMPv6
//! neighbour solicitations for the addresses this node announces.
//!
//! `L2_ANNOUNCE4_V1` is keyed by an IPv4 address (network byte order),
//! `L2_ANNOUNCE6_V1` by an IPv6 address; the value is always 1. The agent
//! adds an address when this node is the one chosen to announce it and
//! removes it when it stops being that node. `L2_DEVICE_V1` (an array of
//! one) holds the external device's MAC address, the answers' sender.

/// Pinned name of the announced IPv4 addresses.
pub const L2_ANNOUNCE4: &str = "L2_ANNOUNCE4_V1";
/// Pinned name of the announced IPv6 addresses.
pub const L2_ANNOUNCE6: &str = "L2_ANNOUNCE6_V1";
/// Pinned name of the external device's link-layer identity.
pub const L2_DEVICE: &str = "L2_DEVICE_V1";
/// Most addresses one node announces per family.
pub const L2_ANNOUNCE_ENTRIES: u32 = 4_096;

/// Value of `L2_DEVICE_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct L2Device {
    /// The external device's MAC address; all zero: answer nothing.
    pub mac: [u8; 6],
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
    /// The external device's ifindex (informational: answers leave
    /// through the device the request came in on).
    pub ifindex: u32,
}

const _: () = {
    assert!(size_of::<L2Device>() == 12);
    assert!(core::mem::offset_of!(L2Device, ifindex) == 8);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: a plain `#[repr(C)]` struct of integers with explicit padding.
    #![expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    use super::*;
    unsafe impl aya::Pod for L2Device {}
}
