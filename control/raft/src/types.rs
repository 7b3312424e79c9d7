//! The Raft type configuration: what the log carries and who the members
//! are.

use std::{fmt, io::Cursor};

use serde::{Deserialize, Serialize};
use shoal_mvcc::{Command, CommandResult};

/// A member's id, unique in the cluster and never reused.
pub type NodeId = u64;

/// A control-plane member, as recorded in the Raft membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its human name (etcd's member name).
    pub name: String,
    /// Where its peers reach it, e.g. `http://10.0.0.1:2380`.
    pub peer_url: String,
    /// Where clients reach its etcd API, e.g. `http://10.0.0.1:2379`.
    pub client_url: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (peer {}, client {})",
            self.name, self.peer_url, self.client_url
        )
    }
}

openraft::declare_raft_types!(
    /// shoal's openraft types: a log entry carries a batch of MVCC
    /// [`Command`]s (client writes proposed together, so that one append
    /// and one fsync serve them all), applying it yields one
    /// [`CommandResult`] per command, members are [`Member`]s.
    pub TypeConfig:
        D = Vec<Command>,
        R = Vec<CommandResult>,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// openraft's generic types, instantiated for [`TypeConfig`].
pub(crate) mod typ {
    use super::{Member, NodeId, TypeConfig};

    pub type Raft = openraft::Raft<TypeConfig>;
    pub type Entry = openraft::Entry<TypeConfig>;
    pub type LogId = openraft::LogId<NodeId>;
    pub type Vote = openraft::Vote<NodeId>;
    pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
    pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
    pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
    pub type StorageError = openraft::StorageError<NodeId>;
    pub type RaftMetrics = openraft::RaftMetrics<NodeId, Member>;
    pub type ChangeMembers = openraft::ChangeMembers<NodeId, Member>;

    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
    pub type RpcError<E = openraft::error::Infallible> =
        openraft::error::RPCError<NodeId, Member, RaftError<E>>;
    pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, Member>;
    pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, Member>;
    pub type InitializeError = openraft::error::InitializeError<NodeId, Member>;
}
