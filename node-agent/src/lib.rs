//! shoal's node agent. So far: the Node's registration, conditions and
//! Lease ([`node`]), the pods bound to the node made real ([`pods`]), the
//! eBPF dataplane, which loads the socket-level
//! service load balancer and writes its maps, and the service sync
//! ([`services`]) that programs those maps from Services and
//! EndpointSlices. [`bootstrap`] joins a cluster with a bootstrap token.

#![forbid(unsafe_code)]

pub mod api_balancer;
pub mod bootstrap;
pub mod cert_rotation;
mod dataplane;
pub mod flows;
pub mod node;
pub mod pods;
pub mod policy;
pub mod services;
pub mod streaming;

pub use dataplane::{
    AffinityRow, ConntrackRow, CtFill, format_affinity, format_conntrack, format_dataplane_metrics,
};
pub use dataplane::{
    BPFFS_ROOT, BackendRow, Config as DataplaneConfig, Dataplane, Error as DataplaneError, Family,
    Frontend, InspectError, KernelMap, KvMap, Lb4Writer, Lb6Writer, LbError, LbWriter,
    MapWriteError, PinnedMaps, Programmed, Protocol, SOCK_PROGRAMS, ServiceRow, SlotRow, V4, V6,
    format_backends, format_services, format_verdicts,
};
pub use dataplane::{
    Conntrack, CtGcConfig, CtTimeouts, Departed, SweepStats, boot_seconds as ct_boot_seconds,
};
pub use dataplane::{
    DEFAULT_SNAT_PORT_MAX, DEFAULT_SNAT_PORT_MIN, MapSizes, NODEPORT_PROGRAMS, NodeportSetup,
    POD_PROGRAMS, attach_nodeport_when_ready, device_of,
};
pub use shoal_ebpf_common::Verdict;
pub use shoal_ebpf_common::{SVC_FLAG_ETP_LOCAL, SVC_FLAG_EXTERNAL};

/// Names of the pinned maps under the node's bpffs directory.
pub mod map_names {
    pub use shoal_ebpf_common::{
        LB4_BACKENDS, LB4_SERVICES, LB6_BACKENDS, LB6_SERVICES, SOCK4_REVNAT, SOCK6_REVNAT,
        VERDICTS,
    };
}
