//! Service load-balancing maps, in Cilium's shape.
//!
//! `LB4_SERVICES_V1` / `LB6_SERVICES_V1` are keyed by (VIP, port, protocol,
//! slot, generation). Slot 0 (generation 0) is the frontend: its value holds
//! the backend count and the generation whose slots are live. Slots 1..=count
//! of that generation hold backend ids; the backends themselves live in
//! `LB4_BACKENDS_V1` / `LB6_BACKENDS_V1`, keyed by id.
//!
//! The writer fills the inactive generation's slots, then flips the
//! frontend in one map update, so a reader sees the old backend set or the
//! new one, never a mix.

/// Pinned name of the IPv4 services map.
pub const LB4_SERVICES: &str = "LB4_SERVICES_V1";
/// Pinned name of the IPv6 services map.
pub const LB6_SERVICES: &str = "LB6_SERVICES_V1";
/// Pinned name of the IPv4 backends map.
pub const LB4_BACKENDS: &str = "LB4_BACKENDS_V1";
/// Pinned name of the IPv6 backends map.
pub const LB6_BACKENDS: &str = "LB6_BACKENDS_V1";

/// The slot that holds a service's frontend.
pub const BACKEND_SLOT_FRONTEND: u16 = 0;
/// Backend slots alternate between these many generations.
pub const LB_GENERATIONS: u8 = 2;
/// The most backends one service may have (slots are `u16`, and the map is
/// sized for services times backends).
pub const MAX_BACKENDS_PER_SERVICE: u16 = 4096;

/// Key of `LB4_SERVICES_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Lb4Key {
    /// Service IP, network byte order.
    pub address: u32,
    /// Service port, network byte order.
    pub dport: u16,
    /// 0 = frontend, 1..=count = backend slots.
    pub backend_slot: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// Generation of a backend slot; 0 for the frontend.
    pub generation: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
}

/// Key of `LB6_SERVICES_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Lb6Key {
    /// Service IP, network byte order.
    pub address: [u8; 16],
    /// Service port, network byte order.
    pub dport: u16,
    /// 0 = frontend, 1..=count = backend slots.
    pub backend_slot: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// Generation of a backend slot; 0 for the frontend.
    pub generation: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
}

/// Value of both services maps: a frontend (slot 0) or a backend slot.
/// Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbService {
    /// Backend slot: the backend's id. Frontend: 0.
    pub backend_id: u32,
    /// Frontend: number of backend slots in the live generation.
    pub count: u16,
    /// Frontend: the service's reverse-NAT id.
    pub rev_nat_index: u16,
    /// Frontend: service flags (none defined yet).
    pub flags: u8,
    /// Frontend: the generation whose backend slots are live.
    pub generation: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
    /// Frontend: ClientIP session-affinity timeout in seconds, 0 = none.
    pub affinity_timeout: u32,
}

/// Value of `LB4_BACKENDS_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Lb4Backend {
    /// Backend IP, network byte order.
    pub address: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// Backend flags (none defined yet).
    pub flags: u8,
}

/// Value of `LB6_BACKENDS_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Lb6Backend {
    /// Backend IP, network byte order.
    pub address: [u8; 16],
    /// Backend port, network byte order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// Backend flags (none defined yet).
    pub flags: u8,
}

const _: () = {
    assert!(size_of::<Lb4Key>() == 12);
    assert!(size_of::<Lb6Key>() == 24);
    assert!(size_of::<LbService>() == 16);
    assert!(size_of::<Lb4Backend>() == 8);
    assert!(size_of::<Lb6Backend>() == 20);
    assert!(core::mem::offset_of!(Lb4Key, backend_slot) == 6);
    assert!(core::mem::offset_of!(Lb4Key, generation) == 9);
    assert!(core::mem::offset_of!(Lb6Key, dport) == 16);
    assert!(core::mem::offset_of!(Lb6Key, generation) == 21);
    assert!(core::mem::offset_of!(LbService, generation) == 9);
    assert!(core::mem::offset_of!(LbService, affinity_timeout) == 12);
    assert!(core::mem::offset_of!(Lb6Backend, port) == 16);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers with explicit padding;
    // every bit pattern is valid.
    #![expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    use super::*;
    unsafe impl aya::Pod for Lb4Key {}
    unsafe impl aya::Pod for Lb6Key {}
    unsafe impl aya::Pod for LbService {}
    unsafe impl aya::Pod for Lb4Backend {}
    unsafe impl aya::Pod for Lb6Backend {}
}
