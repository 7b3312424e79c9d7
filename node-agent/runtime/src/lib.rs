//! shoal's container runtime layer: the local OCI image store, OCI bundles
//! and the runc/crun driver the node agent runs pod containers with.
//!
//! The agent's path for one container:
//!
//! 1. [`ImageStore::ensure`] the pod's image (pulling it as its
//!    [`PullPolicy`] says from registries the [`RegistryConfig`] allows,
//!    else [`ImageStore::resolve`] from the store) and unpack it with
//!    [`Image::rootfs`] (seed the store at start with
//!    [`ImageStore::import_if_missing`]`(`[`BUSYBOX_REFERENCE`]`,
//!    `[`busybox_archive`]`())`);
//! 2. describe the container with [`resolve_process`], [`resolve_user`] and
//!    [`ContainerSpec`], and write it with [`Bundle::write`];
//! 3. [`Runtime::create`] with a log file, [`ExitWatcher::watch`] the pid,
//!    [`Runtime::start`];
//! 4. an [`ExitEvent`] arrives when its init exits (with `oom_killed`);
//!    [`Runtime::delete`], [`Bundle::remove`], and
//!    [`CgroupMounts::remove`] the pod's cgroup once its last container is
//!    gone.
//!
//! Logs are read with [`read_log`] and [`follow_log`]; probes run through
//! [`Runtime::exec`].

mod bundle;
mod cgroup;
mod console;
mod exec;
mod exit;
mod image;
mod layer;
mod log;
mod pull;
mod reference;
mod root_path;
mod runtime;
mod seccomp;
mod spec;
mod user;

pub use bundle::{Bundle, BundleError, DEFAULT_CAPABILITIES, oci_config};
pub use cgroup::CgroupMounts;
pub use console::{
    AttachError, AttachInput, Consoles, ContainerStdio, STDIN_FIFO, adopt_terminal,
    release_terminal,
};
pub use exec::{ExecProcess, ExecReader, ExecStdio, ExecWriter, Resizer};
pub use exit::{ExitEvent, ExitStatus, ExitWatcher, Recovered, set_subreaper};
pub use image::{
    BUSYBOX_ARCHIVE, BUSYBOX_REFERENCE, Image, ImageConfig, ImageError, ImageRef, ImageStore,
    busybox_archive,
};
pub use layer::LayerError;
pub use log::{LogChunk, LogError, LogOptions, follow_log, read_log, rotate as rotate_log};
pub use pull::{Credentials, PullError, PullPolicy, RegistryConfig};
pub use reference::{Reference, ReferenceError};
pub use runtime::{
    CRUN, ContainerState, ExecOutput, ExecRequest, RUNC, Runtime, RuntimeError, Status,
};
pub use spec::{
    CPU_PERIOD_US, CapabilityChanges, ContainerSpec, DEFAULT_PATH_ENV, Mount, MountSource,
    Namespace, Namespaces, ResolvedProcess, Resources, Seccomp, SpecError, expand_kubernetes_vars,
    resolve_process,
};
pub use user::{User, UserError, resolve_user};
