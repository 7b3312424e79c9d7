//! shoal's node agent. So far: the Node's registration, conditions and
//! Lease ([`node`]), and the eBPF dataplane, which loads the socket-level
//! service load balancer and writes its maps.

#![forbid(unsafe_code)]

mod dataplane;
pub mod node;

pub use dataplane::{
    BPFFS_ROOT, Config as DataplaneConfig, Dataplane, Error as DataplaneError, Family, Frontend,
    KernelMap, KvMap, Lb4Writer, Lb6Writer, LbError, LbWriter, MapWriteError, Protocol,
    SOCK_PROGRAMS, V4, V6,
};
pub use shoal_ebpf_common::Verdict;

/// Names of the pinned maps under the node's bpffs directory.
pub mod map_names {
    pub use shoal_ebpf_common::{
        LB4_BACKENDS, LB4_SERVICES, LB6_BACKENDS, LB6_SERVICES, SOCK4_REVNAT, SOCK6_REVNAT,
        VERDICTS,
    };
}
