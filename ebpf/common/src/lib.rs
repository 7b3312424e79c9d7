//! Map keys, values, names and verdict codes shared by shoal's eBPF programs
//! and the agent that writes their maps.
//!
//! Every type here is `#[repr(C)]` with explicit padding and a compile-time
//! size assert, so the kernel side and the userspace side agree byte for
//! byte. Addresses and ports are stored in network byte order, exactly as the
//! kernel hands them to the programs. Do not reorder fields.

#![no_std]
#![cfg_attr(not(feature = "user"), forbid(unsafe_code))]

mod affinity;
pub mod flow;
mod l2;
mod lb;
mod nodeport;
pub mod policy;
mod sock;
mod verdict;

pub use affinity::{
    LB_AFFINITY_ENTRIES, LB_AFFINITY_MATCH_ENTRIES, LB4_AFFINITY, LB4_AFFINITY_MATCH, LB6_AFFINITY,
    LB6_AFFINITY_MATCH, LbAffinityKey, LbAffinityMatchKey, LbAffinityValue,
};
pub use l2::{L2_ANNOUNCE_ENTRIES, L2_ANNOUNCE4, L2_ANNOUNCE6, L2_DEVICE, L2Device};
pub use lb::{
    BACKEND_SLOT_FRONTEND, LB_GENERATIONS, LB4_BACKENDS, LB4_SERVICES, LB6_BACKENDS, LB6_SERVICES,
    Lb4Backend, Lb4Key, Lb6Backend, Lb6Key, LbService, MAX_BACKENDS_PER_SERVICE,
};
pub use nodeport::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_ENTRIES, CT_FLAG_CLOSING, CT_FLAG_LOCAL_BACKEND,
    CT_FLAG_SNAT, CT4, CT6, Ct4Key, Ct4Value, Ct6Key, Ct6Value, NODEPORT_CONFIG, NODEPORT_ENABLED,
    NodeportConfig, SVC_FLAG_ETP_LOCAL, SVC_FLAG_EXTERNAL,
};
pub use sock::{SOCK_REVNAT_ENTRIES, SOCK4_REVNAT, SOCK6_REVNAT, Sock4RevnatKey, Sock4RevnatValue};
pub use sock::{Sock6RevnatKey, Sock6RevnatValue};
pub use verdict::{VERDICTS, Verdict};

/// IANA protocol number of TCP, as in `bpf_sock_addr.protocol`.
pub const IPPROTO_TCP: u8 = 6;
/// IANA protocol number of UDP, as in `bpf_sock_addr.protocol`.
pub const IPPROTO_UDP: u8 = 17;
