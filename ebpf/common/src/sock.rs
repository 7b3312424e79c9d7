//! Socket-level reverse NAT: what a socket's backend address was translated
//! from, so `recvmsg` and `getpeername` show the service address again.
//! Keyed by socket cookie, LRU so closed sockets age out.

/// Pinned name of the IPv4 socket reverse-NAT map.
pub const SOCK4_REVNAT: &str = "SOCK4_REVNAT_V1";
/// Pinned name of the IPv6 socket reverse-NAT map.
pub const SOCK6_REVNAT: &str = "SOCK6_REVNAT_V1";
/// Default size of each socket reverse-NAT map.
pub const SOCK_REVNAT_ENTRIES: u32 = 65_536;

/// Key of `SOCK4_REVNAT_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Sock4RevnatKey {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// Backend IP, network byte order.
    pub address: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub pad: u16,
}

/// Value of `SOCK4_REVNAT_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Sock4RevnatValue {
    /// Service IP, network byte order.
    pub address: u32,
    /// Service port, network byte order.
    pub port: u16,
    /// The service's reverse-NAT id.
    pub rev_nat_index: u16,
}

/// Key of `SOCK6_REVNAT_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Sock6RevnatKey {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// Backend IP, network byte order.
    pub address: [u8; 16],
    /// Backend port, network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub pad: [u8; 6],
}

/// Value of `SOCK6_REVNAT_V1`. Do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Sock6RevnatValue {
    /// Service IP, network byte order.
    pub address: [u8; 16],
    /// Service port, network byte order.
    pub port: u16,
    /// The service's reverse-NAT id.
    pub rev_nat_index: u16,
}

const _: () = {
    assert!(size_of::<Sock4RevnatKey>() == 16);
    assert!(size_of::<Sock4RevnatValue>() == 8);
    assert!(size_of::<Sock6RevnatKey>() == 32);
    assert!(size_of::<Sock6RevnatValue>() == 20);
    assert!(core::mem::offset_of!(Sock4RevnatKey, address) == 8);
    assert!(core::mem::offset_of!(Sock6RevnatKey, port) == 24);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers with explicit padding.
    #![expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    use super::*;
    unsafe impl aya::Pod for Sock4RevnatKey {}
    unsafe impl aya::Pod for Sock4RevnatValue {}
    unsafe impl aya::Pod for Sock6RevnatKey {}
    unsafe impl aya::Pod for Sock6RevnatValue {}
}
