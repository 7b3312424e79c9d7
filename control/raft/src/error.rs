//! What can go wrong running a member.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use openraft::error::{ChangeMembershipError, Fatal, QuorumNotEnough};

use crate::{
    proposal::RemoveRefused,
    types::{
        NodeId,
        typ::{InitializeError, StorageError},
    },
};

/// A member's failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data directory could not be seeded from a snapshot.
    #[error("seeding {}: {reason}", path.display())]
    Seed {
        /// The data directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The timeouts or snapshot settings are inconsistent.
    #[error("member {id}: invalid raft config: {source}")]
    Config {
        /// The member.
        id: NodeId,
        /// openraft's complaint.
        source: Box<openraft::ConfigError>,
    },
    /// The peer listener's TLS settings were refused (a certificate or key
    /// that does not parse, a key that does not match its certificate).
    #[error("serving the peer protocol on {addr} with TLS: {source}")]
    PeerTls {
        /// The peer address.
        addr: SocketAddr,
        /// tonic's reason.
        source: tonic::transport::Error,
    },
    /// The data directory could not be created.
    #[error("creating data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Raft log database could not be opened.
    #[error("opening raft log {}: {source}", path.display())]
    OpenLog {
        /// The file.
        path: PathBuf,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// The keyspace could not be opened.
    #[error("opening keyspace {}: {source}", path.display())]
    OpenKeyspace {
        /// The file.
        path: PathBuf,
        /// The keyspace's error.
        source: shoal_mvcc::Error,
    },
    /// The keyspace's record of what it applied is unreadable.
    #[error("reading applied raft state from {}: {source}", path.display())]
    AppliedState {
        /// The keyspace file.
        path: PathBuf,
        /// Why.
        source: Box<StorageError>,
    },
    /// The peer address could not be bound.
    #[error("binding peer listener {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No leader was elected in time (no quorum of members up, or an
    /// election is still running). Retry later.
    #[error("no raft leader after {waited:?}; is a quorum of members up?")]
    NoLeader {
        /// How long it waited.
        waited: Duration,
    },
    /// The leader could not confirm its leadership with a quorum.
    #[error("raft leader could not reach a quorum: {0}")]
    NoQuorum(#[source] QuorumNotEnough<NodeId>),
    /// A request forwarded to the leader failed in flight; whether the
    /// leader applied it is unknown.
    #[error("forwarding to leader {leader} at {url}: {reason}")]
    Forward {
        /// The leader.
        leader: NodeId,
        /// Its peer URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// Bootstrapping the cluster failed.
    #[error("initializing the cluster: {0}")]
    Initialize(#[source] InitializeError),
    /// The membership change was refused.
    #[error("changing membership: {0}")]
    Membership(#[source] ChangeMembershipError<NodeId>),
    /// The member is not in the cluster membership.
    #[error("member {0} is not in the cluster")]
    UnknownMember(NodeId),
    /// The leader refused to remove a member (etcd's reconfiguration
    /// checks).
    #[error("removing the member: {0}")]
    RemoveRefused(RemoveRefused),
    /// This member was removed from its cluster: it must not start again
    /// from this data directory.
    #[error(
        "this store member was removed from its cluster ({}); it cannot rejoin with this data: remove {} and join again",
        marker.display(),
        marker.parent().map_or_else(|| marker.display().to_string(), |d| d.display().to_string())
    )]
    Removed {
        /// The file that records the removal.
        marker: PathBuf,
    },
    /// Waiting for the state machine to apply up to an index timed out.
    #[error("waiting for log index {index} to be applied: {reason}")]
    Apply {
        /// The index.
        index: u64,
        /// Timed out, or shutting down.
        reason: String,
    },
    /// Raft stopped: shut down, or a storage failure stopped it.
    #[error("raft stopped: {0}")]
    Stopped(#[source] Box<Fatal<NodeId>>),
}

impl From<Fatal<NodeId>> for Error {
    fn from(e: Fatal<NodeId>) -> Self {
        Error::Stopped(Box::new(e))
    }
}
