//! What only the leader can do: propose a log entry. A follower forwards a
//! [`Proposal`] to the leader over the peer protocol; the leader proposes
//! it the same way as its own.

use serde::{Deserialize, Serialize};
use shoal_mvcc::Command;

use crate::types::{
    Member, NodeId, TypeConfig,
    typ::{ChangeMembers, ClientWriteError, Raft, RaftError},
};

/// A log entry to propose on the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Proposal {
    /// A client write.
    Write(Command),
    /// Add a member as a learner (replicated to, not voting).
    AddLearner {
        /// Its id.
        id: NodeId,
        /// Its addresses.
        member: Member,
    },
    /// Change who votes (and, with `retain == false`, drop removed voters).
    ChangeMembership {
        /// The change.
        changes: ChangeMembers,
        /// Whether removed voters stay as learners.
        retain: bool,
    },
}

/// The leader's answer: the entry's log id, its result, and the membership
/// it installed if it was a membership change.
pub(crate) type Proposed = openraft::raft::ClientWriteResponse<TypeConfig>;

/// Proposes on this member, which must be the leader (otherwise
/// `ForwardToLeader`). Returns once the entry is committed and applied.
pub(crate) async fn propose(
    raft: &Raft,
    proposal: Proposal,
) -> Result<Proposed, RaftError<ClientWriteError>> {
    match proposal {
        Proposal::Write(command) => raft.client_write(command).await,
        // Not blocking until the learner caught up: that wait is unbounded
        // when the learner is down. A voter added while still lagging only
        // delays the membership commit until it has caught up.
        Proposal::AddLearner { id, member } => raft.add_learner(id, member, false).await,
        Proposal::ChangeMembership { changes, retain } => {
            raft.change_membership(changes, retain).await
        }
    }
}
