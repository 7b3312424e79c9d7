//! What only the leader can do: propose a log entry. A follower forwards a
//! [`Proposal`] to the leader over the peer protocol; the leader proposes
//! it the same way as its own.
//!
//! Client writes are batched (group commit): openraft 0.9 writes each
//! proposal as its own log append and waits for that append's fsync before
//! it looks at the next, so one command per entry costs one fsync per
//! write. Instead, writes queue here; a gatherer takes everything queued
//! whenever a batch slot is free and proposes it as one entry, which is
//! appended, fsynced, replicated and applied once. Under load a batch
//! holds whatever arrived while the previous ones were committing; a lone
//! write goes at once.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use openraft::error::Fatal;
use serde::{Deserialize, Serialize};
use shoal_mvcc::{Command, CommandResult};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    task::JoinHandle,
};

use crate::{
    config::{MAX_BATCH_BYTES, MAX_BATCH_COMMANDS, MAX_BATCHES_IN_FLIGHT, WRITE_QUEUE},
    network::Contacts,
    types::{
        Member, NodeId,
        typ::{ChangeMembers, ClientWriteError, Raft, RaftError},
    },
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
    /// Remove a member (voter or learner), if etcd's reconfiguration
    /// checks allow it (see [`Proposer::may_remove`]).
    Remove {
        /// Its id.
        id: NodeId,
    },
}

/// How recently a member must have answered the leader to count as
/// active for a removal (etcd's `HealthInterval`).
pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// Why the leader refused to remove a member: etcd's strict
/// reconfiguration checks (`--strict-reconfig-check`, on by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoveRefused {
    /// Fewer than a quorum of the remaining voters are up (removing the
    /// last member is refused so too).
    #[error("not enough started members: the voters left would have no quorum")]
    NotEnoughStartedMembers,
    /// Removing this running member would leave fewer active voters than
    /// a quorum needs while others are down.
    #[error("unhealthy cluster: removing it would break the active quorum")]
    Unhealthy,
    /// No member has that id.
    #[error("no such member")]
    NotFound,
}

/// The leader's answer to a proposal, once it is committed and applied.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Applied {
    /// A client write's result.
    Write(CommandResult),
    /// A membership change took effect.
    Membership,
    /// The leader refused the change.
    Refused(RemoveRefused),
}

/// What a proposal fails with on the leader.
pub(crate) type ProposeError = RaftError<ClientWriteError>;

/// A client write waiting for its batch.
struct Queued {
    command: Command,
    /// Its encoded size, for the batch budget.
    bytes: usize,
    reply: oneshot::Sender<Result<CommandResult, ProposeError>>,
}

/// Proposes on this member, which must be the leader (otherwise
/// `ForwardToLeader`). Clones share the batching queue.
#[derive(Clone)]
pub(crate) struct Proposer {
    raft: Raft,
    writes: mpsc::Sender<Queued>,
    /// When the other members last answered this one.
    contacts: Contacts,
}

impl Proposer {
    /// Starts the gatherer that batches client writes; it stops when
    /// every clone of the proposer is dropped (or the task is aborted).
    pub(crate) fn start(raft: Raft, contacts: Contacts) -> (Self, JoinHandle<()>) {
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let task = tokio::spawn(gather(raft.clone(), queue));
        (
            Self {
                raft,
                writes,
                contacts,
            },
            task,
        )
    }

    /// etcd's `mayRemoveMember`, on the leader: a learner always goes; a
    /// voter only if a quorum of the voters left is active, and a running
    /// voter only if the active voters keep a quorum without it. Returns
    /// the change to propose, or why not.
    fn may_remove(&self, id: NodeId) -> Result<ChangeMembers, RemoveRefused> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(RemoveRefused::NotFound);
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if !voters.contains(&id) {
            return Ok(ChangeMembers::RemoveNodes(BTreeSet::from([id])));
        }
        let remove = ChangeMembers::RemoveVoters(BTreeSet::from([id]));
        let me = metrics.id;
        // Only the leader hears from every member; elsewhere openraft
        // refuses the change (ForwardToLeader) and it is asked again there.
        if metrics.current_leader != Some(me) {
            return Ok(remove);
        }
        let active = |m: NodeId| m == me || self.contacts.active(m, HEALTH_INTERVAL);
        let left = voters.iter().filter(|m| **m != id).count();
        let started = voters.iter().filter(|m| **m != id && active(**m)).count();
        if started < left / 2 + 1 {
            return Err(RemoveRefused::NotEnoughStartedMembers);
        }
        // A member that is down is not part of the active quorum.
        if id != me && !active(id) {
            return Ok(remove);
        }
        let active_voters = voters.iter().filter(|m| active(**m)).count();
        if active_voters - 1 < 1 + (voters.len() - 1) / 2 {
            return Err(RemoveRefused::Unhealthy);
        }
        Ok(remove)
    }

    /// Proposes and returns once the entry is committed and applied.
    pub(crate) async fn propose(&self, proposal: Proposal) -> Result<Applied, ProposeError> {
        match proposal {
            Proposal::Write(command) => self.write(command).await.map(Applied::Write),
            // Not blocking until the learner caught up: that wait is
            // unbounded when the learner is down. A voter added while
            // still lagging only delays the membership commit until it
            // has caught up.
            Proposal::AddLearner { id, member } => self
                .raft
                .add_learner(id, member, false)
                .await
                .map(|_| Applied::Membership),
            Proposal::ChangeMembership { changes, retain } => self
                .raft
                .change_membership(changes, retain)
                .await
                .map(|_| Applied::Membership),
            Proposal::Remove { id } => match self.may_remove(id) {
                Ok(changes) => self
                    .raft
                    .change_membership(changes, false)
                    .await
                    .map(|_| Applied::Membership),
                Err(refused) => Ok(Applied::Refused(refused)),
            },
        }
    }

    async fn write(&self, command: Command) -> Result<CommandResult, ProposeError> {
        // An unencodable command fails in the log store, with its error.
        let bytes = postcard::experimental::serialized_size(&command).unwrap_or(0);
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            command,
            bytes,
            reply,
        };
        let stopped = || RaftError::Fatal(Fatal::Stopped);
        self.writes.send(queued).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Takes queued writes into batches, at most [`MAX_BATCHES_IN_FLIGHT`]
/// proposed at a time: waiting for a free slot before taking is what lets
/// writes pile up into the next batch while the current ones commit.
async fn gather(raft: Raft, mut queue: mpsc::Receiver<Queued>) {
    let slots = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    // A write that did not fit the previous batch.
    let mut carried: Option<Queued> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(write) => write,
            None => match queue.recv().await {
                Some(write) => write,
                None => return,
            },
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS {
            let Ok(write) = queue.try_recv() else {
                break;
            };
            if bytes + write.bytes > MAX_BATCH_BYTES {
                carried = Some(write);
                break;
            }
            bytes += write.bytes;
            batch.push(write);
        }
        tokio::spawn(commit(raft.clone(), batch, slot));
    }
}

/// Proposes one batch as one log entry and answers each write with its
/// own result (or everyone with the entry's error).
async fn commit(raft: Raft, batch: Vec<Queued>, _slot: OwnedSemaphorePermit) {
    let (commands, replies): (Vec<Command>, Vec<_>) = batch
        .into_iter()
        .map(|queued| (queued.command, queued.reply))
        .unzip();
    let n = commands.len();
    match raft.client_write(commands).await {
        Ok(response) => {
            if response.data.len() != n {
                // The state machine answers every command; if it did not,
                // the writes see the proposer as stopped rather than a
                // result that is not theirs.
                tracing::error!(
                    commands = n,
                    results = response.data.len(),
                    log_id = %response.log_id,
                    "batch applied with a result count that does not match"
                );
                return;
            }
            for (reply, result) in replies.into_iter().zip(response.data) {
                // A writer that gave up waiting is not an error.
                let _ = reply.send(Ok(result));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
