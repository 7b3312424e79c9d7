//! What can go wrong while wiring a pod's network.

use std::fmt;
use std::path::PathBuf;

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Errors from [`crate::Network`]. Each message names the pod, the interface,
/// address or route involved, and what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pod uid cannot be used as a file name under the data directory.
    #[error("pod uid {uid:?} cannot name a sandbox: {reason}")]
    InvalidPodUid {
        /// The uid as given.
        uid: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A configured pod CIDR leaves no address for pods.
    #[error(
        "the {family} pod CIDR {cidr} has no address to hand out (its network address, its first \
         address, which belongs to the node, and its broadcast address are never given to pods); \
         give the node a larger podCIDR"
    )]
    CidrTooSmall {
        /// The family of the CIDR.
        family: Family,
        /// The CIDR as configured.
        cidr: ipnet::IpNet,
    },

    /// Every address of a pod CIDR is held by a pod.
    #[error("pod {pod}: the {family} pod CIDR {cidr} is exhausted ({in_use} addresses in use)")]
    Exhausted {
        /// The pod that asked for an address.
        pod: String,
        /// The family that ran out.
        family: Family,
        /// The node's pod CIDR of that family.
        cidr: ipnet::IpNet,
        /// How many addresses of the CIDR pods hold.
        in_use: u128,
    },

    /// The persisted IPAM state cannot be used.
    #[error(
        "the IPAM state {path} cannot be read: {reason}; it records which pod holds which address, \
         so repair it rather than deleting it while sandboxes exist"
    )]
    IpamState {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Another `Network` (another agent) holds the data directory's lock.
    #[error(
        "the data directory {data_dir} is in use: another shoal agent holds {lock} ({errno}); \
         give every agent its own data directory"
    )]
    DataDirInUse {
        /// The data directory.
        data_dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// What `flock` said.
        errno: nix::errno::Errno,
    },

    /// A file system operation failed.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done, e.g. "writing the IPAM state".
        action: String,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },

    /// A netlink request failed.
    #[error("{context}: {}", netlink_reason(.error))]
    Netlink {
        /// The pod, interface, address or route and what was being done.
        context: String,
        /// The netlink error.
        error: rtnetlink::Error,
    },

    /// A namespace or mount system call failed.
    #[error("{context}: {error}")]
    Namespace {
        /// What was being done, naming the pod and the path.
        context: String,
        /// The errno.
        error: nix::errno::Errno,
    },

    /// The node-side interface name of the pod is taken by another pod (whose
    /// uid hashes to the same name) or by another program.
    #[error(
        "pod {pod}: the node interface {veth} already exists with the alias {owner:?}; another \
         pod's uid hashes to the same name, or another program made it: remove it first"
    )]
    VethCollision {
        /// The pod being created.
        pod: String,
        /// The node-side veth name.
        veth: String,
        /// The alias found on the existing interface (`shoal pod <uid>` for a pod's).
        owner: String,
    },

    /// A peer route asked of [`crate::Network::set_peer_routes`] is not valid.
    #[error("peer route for node {node}: {reason}")]
    InvalidPeerRoute {
        /// The peer node.
        node: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A helper thread that enters a network namespace could not run.
    #[error("{context}: {reason}")]
    Thread {
        /// What the thread was meant to do.
        context: String,
        /// Why it did not.
        reason: String,
    },

    /// The call was made outside a tokio runtime.
    #[error("{what} must be called from within a tokio runtime")]
    NoRuntime {
        /// The operation.
        what: &'static str,
    },
}

/// Netlink errors carry an errno; show it as the OS would.
fn netlink_reason(error: &rtnetlink::Error) -> String {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.to_io().to_string(),
        other => other.to_string(),
    }
}

impl Error {
    pub(crate) fn io(
        action: impl Into<String>,
        path: impl Into<PathBuf>,
        error: std::io::Error,
    ) -> Self {
        Error::Io {
            action: action.into(),
            path: path.into(),
            error,
        }
    }

    pub(crate) fn netlink(context: impl Into<String>, error: rtnetlink::Error) -> Self {
        Error::Netlink {
            context: context.into(),
            error,
        }
    }

    pub(crate) fn namespace(context: impl Into<String>, error: nix::errno::Errno) -> Self {
        Error::Namespace {
            context: context.into(),
            error,
        }
    }
}

/// The errno of a netlink error, if it is one.
pub(crate) fn netlink_errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}
