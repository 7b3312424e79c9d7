//! Loads shoal's eBPF programs, pins their maps under the node's bpffs
//! directory, attaches the programs, and hands out typed map writers.
//!
//! Attach order (documented because later programs depend on it): the
//! socket-level programs go on the node's cgroup v2 directory in the order
//! connect4, sendmsg4, recvmsg4, getpeername4, connect6, sendmsg6,
//! recvmsg6, getpeername6, all as bpf_links, which stack like
//! `BPF_F_ALLOW_MULTI` so a pod's own cgroup programs (the mesh's, later)
//! run as well.

mod inspect;
mod l2;
mod lb;
mod nodeport;
mod pod;

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError},
};
use shoal_ebpf_common::{
    Lb4Backend, Lb4Key, Lb6Backend, Lb6Key, LbAffinityMatchKey, LbService, Verdict,
};

pub use inspect::{
    AffinityRow, ConntrackRow, CtFill, format_affinity, format_conntrack, format_dataplane_metrics,
};
pub use inspect::{
    BackendRow, InspectError, PinnedMaps, ServiceRow, SlotRow, format_backends, format_services,
    format_verdicts,
};
pub use lb::{
    Departed, Family, Frontend, KvMap, LbError, LbWriter, MapWriteError, Programmed, Protocol, V4,
    V6,
};
pub use nodeport::{Conntrack, CtGcConfig, CtTimeouts, SweepStats, boot_seconds, run_gc};
pub use nodeport::{
    DEFAULT_SNAT_PORT_MAX, DEFAULT_SNAT_PORT_MIN, MapSizes, NODEPORT_PROGRAMS, NodeportSetup,
    attach_when_ready as attach_nodeport_when_ready, device_of,
};
pub use pod::POD_PROGRAMS;

/// The eBPF object, built by `build.rs` through aya-build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shoal"));

/// The programs attached to the node's cgroup, in attach order.
pub const SOCK_PROGRAMS: [&str; 8] = [
    "sock4_connect",
    "sock4_sendmsg",
    "sock4_recvmsg",
    "sock4_getpeername",
    "sock6_connect",
    "sock6_sendmsg",
    "sock6_recvmsg",
    "sock6_getpeername",
];

/// Root of every node's pins; each node pins under `<root>/<node>/`.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/shoal";

/// The global in the eBPF object that gates aya-log statements.
const AYA_LOG_LEVEL: &str = "AYA_LOG_LEVEL";

/// How the dataplane is loaded on one node.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where this node pins its maps (`/sys/fs/bpf/shoal/<node>`).
    pub pin_dir: PathBuf,
    /// The cgroup v2 directory whose processes get socket-level LB.
    pub cgroup: PathBuf,
    /// Whether eBPF-side debug logs are compiled in at load time. Off, the
    /// verifier removes them, so the fast path pays nothing.
    pub ebpf_debug_logs: bool,
}

impl Config {
    /// The default pin directory of a node.
    pub fn pin_dir_for(node: &str) -> PathBuf {
        Path::new(BPFFS_ROOT).join(node)
    }
}

/// Errors of loading and attaching the dataplane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pin directory could not be created.
    #[error(
        "creating pin directory {path}: {source} (is bpffs mounted at /sys/fs/bpf? `cargo xtask setup` mounts it)"
    )]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the object.
    #[error("loading the eBPF object (maps pinned under {pin_dir}): {source}")]
    Load {
        /// The pin directory.
        pin_dir: PathBuf,
        /// What aya said (boxed: it is large and errors are rare).
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program is missing from the object or has the wrong type.
    #[error("eBPF program {name}: {source}")]
    Program {
        /// The program.
        name: &'static str,
        /// What aya said.
        #[source]
        source: ProgramError,
    },
    /// A program is missing from the object.
    #[error("eBPF program {0} is not in the object; rebuild the agent")]
    MissingProgram(&'static str),
    /// The cgroup could not be opened.
    #[error("opening cgroup {path}: {source} (it must be a cgroup v2 directory)")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A map is missing or has the wrong type.
    #[error("eBPF map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// What aya said.
        #[source]
        source: MapError,
    },
    /// A map is missing from the object.
    #[error("eBPF map {0} is not in the object; rebuild the agent")]
    MissingMap(&'static str),
    /// The aya-log reader could not start.
    #[error("eBPF log reader: {0}")]
    Log(String),
    /// The NodePort tc programs could not be attached or configured.
    #[error("NodePort dataplane: {0}")]
    Nodeport(String),
}

/// A kernel hash map seen through the writer's [`KvMap`] trait.
pub struct KernelMap<K: aya::Pod, V: aya::Pod>(BpfHashMap<MapData, K, V>);

impl<K: aya::Pod, V: aya::Pod> KvMap<K, V> for KernelMap<K, V> {
    fn put(&mut self, key: K, value: V) -> Result<(), MapWriteError> {
        self.0
            .insert(key, value, 0)
            .map_err(|e| MapWriteError(e.to_string()))
    }

    fn delete(&mut self, key: &K) -> Result<(), MapWriteError> {
        match self.0.remove(key) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(MapWriteError(e.to_string())),
        }
    }
}

/// A service writer of family `F` over the kernel maps.
pub type KernelLbWriter<F> =
    LbWriter<F, KernelMap<<F as Family>::Key, LbService>, KernelMap<u32, <F as Family>::Backend>>;

/// The IPv4 service writer over the kernel maps.
pub type Lb4Writer = LbWriter<V4, KernelMap<Lb4Key, LbService>, KernelMap<u32, Lb4Backend>>;
/// The IPv6 service writer over the kernel maps.
pub type Lb6Writer = LbWriter<V6, KernelMap<Lb6Key, LbService>, KernelMap<u32, Lb6Backend>>;

/// The loaded, attached dataplane of one node. Dropping it detaches the
/// programs; the pinned maps stay.
pub struct Dataplane {
    ebpf: Ebpf,
    verdicts: PerCpuArray<MapData, u64>,
    /// Writes IPv4 services.
    pub lb4: Lb4Writer,
    /// Writes IPv6 services.
    pub lb6: Lb6Writer,
    config: Config,
}

impl Dataplane {
    /// Loads the object with maps pinned in `config.pin_dir` and attaches
    /// the socket programs to `config.cgroup`.
    pub fn load(config: Config) -> Result<Self, Error> {
        Self::load_sized(config, MapSizes::default())
    }

    /// [`load`](Self::load) with the LRU maps of `sizes` (a pinned one of
    /// another size is recreated empty).
    pub fn load_sized(config: Config, sizes: MapSizes) -> Result<Self, Error> {
        fs::create_dir_all(&config.pin_dir).map_err(|source| Error::PinDir {
            path: config.pin_dir.clone(),
            source,
        })?;
        let level: u8 = if config.ebpf_debug_logs {
            log::Level::Debug as u8
        } else {
            // Below every level: statements compile to nothing.
            0
        };
        let resizable = [
            (shoal_ebpf_common::CT4, sizes.ct4),
            (shoal_ebpf_common::CT6, sizes.ct6),
            (shoal_ebpf_common::LB4_AFFINITY, sizes.affinity),
            (shoal_ebpf_common::LB6_AFFINITY, sizes.affinity),
            (shoal_ebpf_common::flow::FLOWS, sizes.flows),
            // Verdicts are appended over releases: a pin of an older,
            // shorter array would leave the new reasons uncounted and
            // make reading them fail.
            (
                shoal_ebpf_common::VERDICTS,
                shoal_ebpf_common::Verdict::COUNT,
            ),
            (
                shoal_ebpf_common::flow::FLOW_STATS,
                shoal_ebpf_common::flow::FLOW_STAT_COUNT,
            ),
        ];
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&config.pin_dir);
        for (name, entries) in resizable {
            nodeport::drop_resized_pin(&config.pin_dir, name, entries);
            loader.map_max_entries(name, entries);
        }
        loader.map_max_entries(shoal_ebpf_common::flow::FLOW_EVENTS, sizes.flow_ring_bytes);
        let mut ebpf = loader
            .override_global(AYA_LOG_LEVEL, &level, false)
            .load(EBPF_OBJECT)
            .map_err(|source| Error::Load {
                pin_dir: config.pin_dir.clone(),
                source: Box::new(source),
            })?;
        let cgroup = fs::File::open(&config.cgroup).map_err(|source| Error::Cgroup {
            path: config.cgroup.clone(),
            source,
        })?;
        for name in SOCK_PROGRAMS {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram(name))?
                .try_into()
                .map_err(|source| Error::Program { name, source })?;
            program
                .load()
                .map_err(|source| Error::Program { name, source })?;
            // On kernels with bpf_link (5.7+) aya attaches through
            // BPF_LINK_CREATE, which takes no flags and always behaves as
            // BPF_F_ALLOW_MULTI; passing AllowMultiple there is EINVAL.
            program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|source| Error::Program { name, source })?;
        }
        // Pinned maps survive the agent: take over what they hold.
        let mut lb4 = restore_writer(
            take_hash(&mut ebpf, shoal_ebpf_common::LB4_SERVICES)?,
            take_hash(&mut ebpf, shoal_ebpf_common::LB4_BACKENDS)?,
        )?;
        let mut lb6 = restore_writer(
            take_hash(&mut ebpf, shoal_ebpf_common::LB6_SERVICES)?,
            take_hash(&mut ebpf, shoal_ebpf_common::LB6_BACKENDS)?,
        )?;
        attach_affinity_match(&mut ebpf, &mut lb4)?;
        attach_affinity_match(&mut ebpf, &mut lb6)?;
        if lb4.service_count() + lb6.service_count() > 0 {
            tracing::info!(
                ipv4 = lb4.service_count(),
                ipv6 = lb6.service_count(),
                "took over services from the pinned maps"
            );
        }
        let name = shoal_ebpf_common::VERDICTS;
        let verdicts = ebpf
            .take_map(name)
            .ok_or(Error::MissingMap(name))?
            .try_into()
            .map_err(|source| Error::Map { name, source })?;
        tracing::info!(
            pin_dir = %config.pin_dir.display(),
            cgroup = %config.cgroup.display(),
            programs = SOCK_PROGRAMS.len(),
            "dataplane loaded and attached"
        );
        Ok(Self {
            ebpf,
            verdicts,
            lb4,
            lb6,
            config,
        })
    }

    /// The configuration it was loaded with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Forwards eBPF-side aya-log records into this process's `log` /
    /// `tracing` output, on the current tokio runtime.
    #[expect(
        deprecated,
        reason = "its replacement is the same call marked unsafe; the logger owns its ring buffer fd for the AsyncFd's lifetime"
    )]
    pub fn spawn_log_forwarder(&mut self) -> Result<tokio::task::JoinHandle<()>, Error> {
        let logger =
            aya_log::EbpfLogger::init(&mut self.ebpf).map_err(|e| Error::Log(e.to_string()))?;
        let mut logger =
            tokio::io::unix::AsyncFd::with_interest(logger, tokio::io::Interest::READABLE)
                .map_err(|e| Error::Log(e.to_string()))?;
        Ok(tokio::spawn(async move {
            loop {
                let mut guard = match logger.readable_mut().await {
                    Ok(guard) => guard,
                    Err(e) => {
                        tracing::warn!(error = %e, "eBPF log reader stopped");
                        return;
                    }
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }))
    }

    /// Every verdict counter, summed over CPUs.
    pub fn verdicts(&self) -> Result<Vec<(Verdict, u64)>, Error> {
        let name = shoal_ebpf_common::VERDICTS;
        Verdict::ALL
            .iter()
            .map(|v| {
                let per_cpu = self
                    .verdicts
                    .get(&(*v as u32), 0)
                    .map_err(|source| Error::Map { name, source })?;
                Ok((*v, per_cpu.iter().sum()))
            })
            .collect()
    }
}

fn restore_writer<F: Family>(
    services: BpfHashMap<MapData, F::Key, LbService>,
    backends: BpfHashMap<MapData, u32, F::Backend>,
) -> Result<KernelLbWriter<F>, Error>
where
    F::Key: aya::Pod,
    F::Backend: aya::Pod,
{
    let read = |name: &'static str| move |source| Error::Map { name, source };
    let service_entries = services
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(read(F::SERVICES))?;
    let backend_entries = backends
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(read(F::BACKENDS))?;
    Ok(LbWriter::restore(
        KernelMap(services),
        KernelMap(backends),
        service_entries,
        backend_entries,
    ))
}

/// Hands the family's affinity match map to its writer, first making the
/// pinned map hold exactly what the taken-over services need (services
/// removed while the agent was down leave stale matches behind).
fn attach_affinity_match<F: Family>(
    ebpf: &mut Ebpf,
    writer: &mut KernelLbWriter<F>,
) -> Result<(), Error>
where
    F::Key: aya::Pod,
    F::Backend: aya::Pod,
{
    let name = F::AFFINITY_MATCH;
    let mut map: BpfHashMap<MapData, LbAffinityMatchKey, u32> = take_hash(ebpf, name)?;
    let wanted: std::collections::BTreeSet<LbAffinityMatchKey> =
        writer.affinity_matches().into_iter().collect();
    let present = map
        .keys()
        .collect::<Result<std::collections::BTreeSet<_>, _>>()
        .map_err(|source| Error::Map { name, source })?;
    for key in present.difference(&wanted) {
        match map.remove(key) {
            Ok(()) => {}
            Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Map { name, source }),
        }
    }
    for key in wanted.difference(&present) {
        map.insert(key, 1, 0)
            .map_err(|source| Error::Map { name, source })?;
    }
    writer.set_affinity_match(Box::new(KernelMap(map)));
    Ok(())
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<MapData, K, V>, Error> {
    ebpf.take_map(name)
        .ok_or(Error::MissingMap(name))?
        .try_into()
        .map_err(|source| Error::Map { name, source })
}
