//! The member facade: Raft over the log store, the keyspace and the peer
//! network; serves the peer protocol; writes, linearizable reads and
//! membership changes from any member (followers forward to the leader).

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use openraft::error::{ChangeMembershipError, RPCError};
use shoal_mvcc::{Command, CommandResult, Mvcc};
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinHandle,
    time::Instant,
};
use tonic::transport::server::TcpIncoming;

use crate::{
    config::{
        Config, LEADER_RETRY_INTERVAL, LOG_FILE, MAX_PEER_MESSAGE_BYTES, REMOVED_FILE,
        SHUTDOWN_TIMEOUT, SNAPSHOT_FILE, STATE_FILE,
    },
    error::Error,
    faults::MemberFaults,
    lease::{LeaseOracle, LeaseRequest, OracleSlot},
    log_store::LogStore,
    network::PeerNetwork,
    peer_service::PeerService,
    proposal::{Applied, Proposal, Proposer},
    proto::raft_peer_server::RaftPeerServer,
    state_machine::StateMachine,
    types::{
        Member, NodeId,
        typ::{ChangeMembers, CheckIsLeaderError, ClientWriteError, Raft, RaftError, RaftMetrics},
    },
};

/// Who leads, as this member currently sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    /// The leader, if one is known.
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: u64,
    /// Whether this member is the leader.
    pub is_self: bool,
}

impl Leadership {
    fn of(metrics: &RaftMetrics) -> Self {
        Self {
            leader: metrics.current_leader,
            term: metrics.current_term,
            is_self: metrics.current_leader == Some(metrics.id),
        }
    }
}

/// The answer a membership change expects.
fn membership(applied: Applied) -> Option<()> {
    matches!(applied, Applied::Membership).then_some(())
}

/// Whether this member was removed from its cluster, and the file that
/// keeps it so across a restart. Shared with the peer service, which hears
/// it from the member that removed this one.
pub(crate) struct Removal {
    removed: watch::Sender<bool>,
    marker: std::path::PathBuf,
}

impl Removal {
    fn new(data_dir: &std::path::Path) -> Self {
        Self {
            removed: watch::channel(false).0,
            marker: data_dir.join(REMOVED_FILE),
        }
    }

    /// Records the removal (once) and tells whoever watches.
    pub(crate) fn mark(&self, id: NodeId, how: &str) {
        if *self.removed.borrow() {
            return;
        }
        tracing::warn!(
            member = id,
            how,
            "this store member was removed from its cluster; it stops serving"
        );
        if let Err(e) = std::fs::write(&self.marker, format!("member {id:x}: {how}\n")) {
            tracing::warn!(file = %self.marker.display(), error = %e, "recording the removal");
        }
        self.removed.send_replace(true);
    }
}

/// One attempt of an operation that needs the leader.
enum Attempt<T> {
    Done(T),
    /// Worth retrying (no leader yet, leader unreachable); the error is
    /// returned if the wait runs out.
    Retry(Error),
    Fail(Error),
}

/// Background tasks stopped by `shutdown`.
struct Tasks {
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    leadership: JoinHandle<()>,
    /// Batches client writes.
    proposer: JoinHandle<()>,
}

/// A running control-plane member.
pub struct RaftNode {
    config: Config,
    raft: Raft,
    proposer: Proposer,
    mvcc: Arc<Mvcc>,
    network: PeerNetwork,
    leadership: watch::Receiver<Leadership>,
    installed_snapshots: watch::Receiver<u64>,
    tasks: Mutex<Option<Tasks>>,
    /// Lets `shutdown` wait until openraft dropped the log store.
    log_db: Weak<redb::Database>,
    /// The lessor answering lease requests while this member leads.
    lessor: OracleSlot,
    /// Whether this member was removed from its cluster.
    removal: Arc<Removal>,
}

impl RaftNode {
    /// Seeds a new member's data directory with a keyspace snapshot (from
    /// `etcdctl snapshot save` / `Mvcc::snapshot`): the keyspace is
    /// restored and its Raft state reset, so the member starts a new
    /// cluster holding that data. Refuses a directory that already holds a
    /// Raft log or keyspace.
    pub fn seed_data_dir(data_dir: &std::path::Path, keyspace: &[u8]) -> Result<(), Error> {
        let seed = |reason: String| Error::Seed {
            path: data_dir.to_path_buf(),
            reason,
        };
        let log = data_dir.join(crate::config::LOG_FILE);
        let state = data_dir.join(crate::config::STATE_FILE);
        if log.exists() || state.exists() {
            return Err(seed(
                "it already holds a member's data; restore into a new directory".to_owned(),
            ));
        }
        std::fs::create_dir_all(data_dir).map_err(|e| seed(format!("creating it: {e}")))?;
        let mvcc = Mvcc::open(&state).map_err(|e| seed(format!("opening the keyspace: {e}")))?;
        mvcc.restore(keyspace)
            .map_err(|e| seed(format!("restoring the snapshot: {e}")))?;
        let fresh = crate::state_machine::AppliedState::fresh()
            .map_err(|e| seed(format!("encoding the raft state: {e}")))?;
        mvcc.apply(&[], Some(&fresh))
            .map_err(|e| seed(format!("resetting the raft state: {e}")))?;
        Ok(())
    }

    /// Opens (or creates) the member's data in `config.data_dir`, starts
    /// Raft and serves the peer protocol on `config.peer_listen`. A new
    /// member then waits to be initialized or added to a cluster; a
    /// restarted one rejoins its cluster.
    pub async fn start(config: Config) -> Result<Self, Error> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| Error::DataDir {
            path: dir.clone(),
            source,
        })?;
        let marker = dir.join(REMOVED_FILE);
        if marker.exists() {
            return Err(Error::Removed { marker });
        }
        let log_path = dir.join(LOG_FILE);
        let log_store = LogStore::open(&log_path).map_err(|source| Error::OpenLog {
            path: log_path,
            source: Box::new(source),
        })?;
        let state_path = dir.join(STATE_FILE);
        let mvcc = Arc::new(
            Mvcc::open(&state_path).map_err(|source| Error::OpenKeyspace {
                path: state_path.clone(),
                source,
            })?,
        );
        Self::start_on(config, log_store, mvcc).await
    }

    /// Starts the member on storage already open (the data directory's
    /// files, or simulated disks in crash tests).
    pub(crate) async fn start_on(
        config: Config,
        log_store: LogStore,
        mvcc: Arc<Mvcc>,
    ) -> Result<Self, Error> {
        let id = config.id;
        let raft_config = config.raft_config()?;
        let dir = &config.data_dir;
        let state_machine = StateMachine::open(
            mvcc.clone(),
            dir.join(SNAPSHOT_FILE),
            config.apply_sync_commands,
            config.apply_sync_interval,
        )
        .map_err(|source| Error::AppliedState {
            path: dir.join(STATE_FILE),
            source: Box::new(source),
        })?;
        let installed_snapshots = state_machine.installed_snapshots();
        let listener = TcpListener::bind(config.peer_listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.peer_listen,
                source,
            })?;

        let faults = config
            .faults
            .clone()
            .map(|faults| MemberFaults { faults, id });
        let log_store = log_store.with_faults(faults.clone());
        let log_db = log_store.downgrade();
        let network = PeerNetwork::new(config.tls.as_ref().map(|t| t.client.clone()), faults);
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = &config.tls {
            server = server
                .tls_config(tls.server.clone())
                .map_err(|source| Error::PeerTls {
                    addr: config.peer_listen,
                    source,
                })?;
        }
        let raft = Raft::new(
            id,
            Arc::new(raft_config),
            network.clone(),
            log_store,
            state_machine,
        )
        .await?;

        let (proposer, proposer_task) = Proposer::start(raft.clone(), network.contacts());
        let (stop_server, stop) = oneshot::channel::<()>();
        let lessor = OracleSlot::default();
        let removal = Arc::new(Removal::new(dir));
        let service = RaftPeerServer::new(PeerService::new(
            id,
            raft.clone(),
            proposer.clone(),
            lessor.clone(),
            removal.clone(),
        ))
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tokio::spawn(server.add_service(service).serve_with_incoming_shutdown(
            incoming,
            async {
                // A dropped sender (the node dropped) stops the server too.
                let _ = stop.await;
            },
        ));

        let mut metrics = raft.metrics();
        let (leadership_tx, leadership) = watch::channel(Leadership::of(&metrics.borrow()));
        let watched = removal.clone();
        let leadership_task = tokio::spawn(async move {
            // A member learns of its own removal from the membership only
            // when it applies one without itself after one with itself
            // (a new member first applies the memberships from before it
            // was added); removed followers hear it from the peer service.
            let mut was_member = false;
            while metrics.changed().await.is_ok() {
                let (now, removed) = {
                    let m = metrics.borrow_and_update();
                    let config = &m.membership_config;
                    let member = config.membership().get_node(&id).is_some();
                    let applied = config.log_id().as_ref().map(|l| l.index)
                        <= m.last_applied.map(|l| l.index);
                    let removed = was_member && !member && applied;
                    was_member |= member;
                    (Leadership::of(&m), removed)
                };
                if removed {
                    watched.mark(id, "a membership without it was applied");
                }
                leadership_tx.send_if_modified(|seen| std::mem::replace(seen, now) != now);
            }
        });
        tracing::info!(id, name = %config.name, peer = %config.peer_url, "raft member started");

        Ok(Self {
            config,
            raft,
            proposer,
            mvcc,
            network,
            leadership,
            installed_snapshots,
            tasks: Mutex::new(Some(Tasks {
                stop_server,
                server,
                leadership: leadership_task,
                proposer: proposer_task,
            })),
            log_db,
            lessor,
            removal,
        })
    }

    /// Bootstraps a new cluster with these voters. Safe to call again on a
    /// member that is already initialized (a restarted member): that is
    /// not an error and changes nothing.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Member>) -> Result<(), Error> {
        if self.raft.is_initialized().await? {
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(RaftError::APIError(e)) => Err(Error::Initialize(e)),
            Err(RaftError::Fatal(e)) => Err(Error::Stopped(Box::new(e))),
        }
    }

    /// Replicates a command and returns its result once applied. On a
    /// follower the command is forwarded to the leader. Retries for up to
    /// `config.leader_wait` while there is no leader, then fails with
    /// [`Error::NoLeader`]. A forwarded command that failed in flight
    /// ([`Error::Forward`]) may or may not have been applied.
    pub async fn write(&self, command: Command) -> Result<CommandResult, Error> {
        self.propose(Proposal::Write(command), |applied| match applied {
            Applied::Write(result) => Some(result),
            Applied::Membership | Applied::Refused(_) => None,
        })
        .await
    }

    /// The index up to which a read must see applied entries to be
    /// linearizable: the leader's commit index, confirmed by a quorum
    /// (asked of the leader when this member is a follower).
    pub async fn read_index(&self) -> Result<u64, Error> {
        self.with_leader(|| self.try_read_index()).await
    }

    /// Waits until a read on this member's keyspace is linearizable (it
    /// sees every write acknowledged before this call). Returns the read
    /// index.
    pub async fn ensure_linearizable(&self) -> Result<u64, Error> {
        let index = self.read_index().await?;
        self.wait_applied(index, self.config.leader_wait).await?;
        Ok(index)
    }

    /// Waits until this member applied the log up to `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), Error> {
        if self.applied_index() >= index {
            return Ok(());
        }
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied index")
            .await
            .map(drop)
            .map_err(|e| Error::Apply {
                index,
                reason: e.to_string(),
            })
    }

    /// Registers the lessor that answers lease keep-alives and remaining
    /// TTLs while this member leads, for followers that forward them. The
    /// first registration stays.
    pub fn set_lessor(&self, lessor: Arc<dyn LeaseOracle>) {
        let _first_stays = self.lessor.set(lessor);
    }

    /// Renews a lease on the leader's lessor (this member's own when it
    /// leads, else the leader's, asked over the peer protocol): its TTL in
    /// seconds, or `None` if it does not exist or expired. Retries for up
    /// to `leader_wait` while there is no leader.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<Option<i64>, Error> {
        self.with_leader(|| self.try_lease(LeaseRequest::KeepAlive(id)))
            .await
    }

    /// Seconds left before a lease expires, from the leader's lessor (see
    /// [`lease_keep_alive`](Self::lease_keep_alive)).
    pub async fn lease_remaining(&self, id: i64) -> Result<Option<i64>, Error> {
        self.with_leader(|| self.try_lease(LeaseRequest::Remaining(id)))
            .await
    }

    /// Adds a member as a learner: it receives the log but does not vote.
    /// Promote it with [`promote`](Self::promote) once it caught up.
    pub async fn add_learner(&self, id: NodeId, member: Member) -> Result<(), Error> {
        self.propose(Proposal::AddLearner { id, member }, membership)
            .await
    }

    /// Makes exactly `voters` the voting members (each must already be a
    /// member); voters left out are removed from the cluster, learners
    /// stay learners.
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), Error> {
        self.propose(
            Proposal::ChangeMembership {
                changes: ChangeMembers::ReplaceAllVoters(voters),
                retain: false,
            },
            membership,
        )
        .await
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, id: NodeId) -> Result<(), Error> {
        self.propose(
            Proposal::ChangeMembership {
                changes: ChangeMembers::AddVoterIds(BTreeSet::from([id])),
                retain: true,
            },
            membership,
        )
        .await
    }

    /// Removes a member (voter or learner) from the cluster, if the
    /// leader's reconfiguration checks allow it (etcd's
    /// `--strict-reconfig-check`): [`Error::RemoveRefused`] otherwise. A
    /// removed leader steps down once the change is committed. The removed
    /// member is told, so it stops; this one stops if it removed itself.
    pub async fn remove(&self, id: NodeId) -> Result<(), Error> {
        let member = self
            .members()
            .into_iter()
            .find_map(|(m, member, _)| (m == id).then_some(member))
            .ok_or(Error::UnknownMember(id))?;
        self.propose(Proposal::Remove { id }, membership).await?;
        let index = self.applied_index();
        if id == self.id() {
            self.removal.mark(id, "it removed itself");
        } else {
            // Best effort: a member that is down learns nothing, and
            // refuses to start only if it got this (see REMOVED_FILE).
            let client = self.network.client(id, &member);
            tokio::spawn(async move {
                if let Err(e) = client.removed(index).await {
                    tracing::info!(member = id, error = %e, "could not tell the removed member");
                }
            });
        }
        Ok(())
    }

    /// etcd's publish: makes the membership hold this member's name and
    /// client URL as it runs now (a member added with `MemberAdd` has
    /// neither; the members of an initial cluster know only their own
    /// client URL). Returns whether the membership holds them; `false`
    /// while this member is not a voter yet (a learner publishes once
    /// promoted, so that its own promotion is not refused as a change in
    /// progress).
    pub async fn publish(&self) -> Result<bool, Error> {
        let id = self.id();
        let Some((current, false)) = self
            .members()
            .into_iter()
            .find_map(|(m, member, learner)| (m == id).then_some((member, learner)))
        else {
            return Ok(false);
        };
        if current.name == self.config.name && current.client_url == self.config.client_url {
            return Ok(true);
        }
        let member = Member {
            name: self.config.name.clone(),
            // What the others dial stays as it was added.
            peer_url: current.peer_url,
            client_url: self.config.client_url.clone(),
        };
        self.propose(
            Proposal::ChangeMembership {
                changes: ChangeMembers::SetNodes(BTreeMap::from([(id, member)])),
                retain: true,
            },
            membership,
        )
        .await?;
        Ok(true)
    }

    /// Turns true once this member was removed from its cluster (by
    /// itself, or another member told it): it should stop serving.
    pub fn removed(&self) -> watch::Receiver<bool> {
        self.removal.removed.subscribe()
    }

    /// The members in the latest membership this member knows (possibly
    /// not yet committed), by id, with whether each is a learner.
    pub fn members(&self) -> Vec<(NodeId, Member, bool)> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, member)| (*id, member.clone(), !voters.contains(id)))
            .collect()
    }

    /// The leader this member knows of. Not linearizable: a deposed leader
    /// may still think it leads for an election timeout.
    pub fn leader(&self) -> Option<NodeId> {
        self.leadership.borrow().leader
    }

    /// Whether this member thinks it is the leader (see [`leader`](Self::leader)).
    pub fn is_leader(&self) -> bool {
        self.leadership.borrow().is_self
    }

    /// Notified whenever the leader or the term changes; for work only the
    /// leader does (expiring leases), which must restart in every new term.
    pub fn leader_watch(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// Changes (counts up) each time a snapshot from the leader replaced
    /// this member's keyspace. The keyspace does not tell its subscribers
    /// about such a jump: watchers must then resync from `Mvcc::events`.
    pub fn snapshot_installs(&self) -> watch::Receiver<u64> {
        self.installed_snapshots.clone()
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The index of the last entry applied to the keyspace (0 for none).
    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |id| id.index)
    }

    /// The index of the last entry this member knows to be committed.
    pub async fn commit_index(&self) -> Result<u64, Error> {
        Ok(self
            .raft
            .with_raft_state(|state| state.committed.map_or(0, |id| id.index))
            .await?)
    }

    /// The replicated keyspace. Read it after
    /// [`ensure_linearizable`](Self::ensure_linearizable) for linearizable
    /// reads; never write to it directly.
    pub fn mvcc(&self) -> &Arc<Mvcc> {
        &self.mvcc
    }

    /// openraft's metrics (state, term, log indexes, membership,
    /// replication).
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.raft.metrics()
    }

    /// The underlying openraft instance, for what this facade does not
    /// offer.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Builds a snapshot of the keyspace now and purges the log up to it;
    /// members that lag behind it catch up with the snapshot. Returns the
    /// snapshot's last log index.
    pub async fn compact_log(&self) -> Result<u64, Error> {
        let applied = self.applied_index();
        self.raft.trigger().snapshot().await?;
        let metrics = self
            .raft
            .wait(Some(self.config.leader_wait))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot built",
            )
            .await
            .map_err(|e| Error::Apply {
                index: applied,
                reason: format!("building a snapshot: {e}"),
            })?;
        let index = metrics.snapshot.map_or(0, |s| s.index);
        self.raft.trigger().purge_log(index).await?;
        Ok(index)
    }

    /// Stops Raft and the peer server, and waits (bounded) until openraft
    /// released the storage: once this member and every clone of
    /// [`mvcc`](Self::mvcc) are dropped, the files are closed and the
    /// member can be started again from its data directory. Idempotent.
    pub async fn shutdown(&self) {
        let tasks = self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(tasks) = tasks else {
            return;
        };
        let id = self.config.id;
        // Raft first: in-flight peer requests then fail fast and the
        // server's graceful shutdown does not wait on them.
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(id, error = %e, "raft core task failed");
        }
        let _ = tasks.stop_server.send(());
        let mut server = tasks.server;
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(id, error = %e, "peer server failed"),
            Ok(Err(e)) => tracing::warn!(id, error = %e, "peer server task failed"),
            Err(_) => {
                tracing::warn!(
                    id,
                    "peer server did not stop in {SHUTDOWN_TIMEOUT:?}; aborting it"
                );
                server.abort();
            }
        }
        tasks.leadership.abort();
        tasks.proposer.abort();
        // openraft drops the log store and the state machine from its own
        // tasks shortly after the core stopped.
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        while Arc::strong_count(&self.mvcc) > 1 || self.log_db.strong_count() > 0 {
            if Instant::now() >= deadline {
                tracing::warn!(id, "storage still open {SHUTDOWN_TIMEOUT:?} after shutdown");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Applies are committed without an fsync; make them durable now so
        // a restart need not replay them (closing the keyspace would too,
        // but it stays open while anyone holds it).
        let mvcc = self.mvcc.clone();
        match tokio::task::spawn_blocking(move || mvcc.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(id, error = %e, "syncing the keyspace"),
            Err(e) => tracing::warn!(id, error = %e, "syncing the keyspace"),
        }
        tracing::info!(id, "raft member stopped");
    }

    /// The leader and its addresses, as far as this member knows.
    fn leader_member(&self) -> Option<(NodeId, Member)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let member = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .clone();
        Some((leader, member))
    }

    fn no_leader(&self) -> Error {
        Error::NoLeader {
            waited: self.config.leader_wait,
        }
    }

    /// Runs `attempt` until it is done, fails, or `leader_wait` passed.
    async fn with_leader<T, F, Fut>(&self, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let deadline = Instant::now() + self.config.leader_wait;
        loop {
            match attempt().await {
                Attempt::Done(value) => return Ok(value),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(e) if Instant::now() >= deadline => return Err(e),
                Attempt::Retry(e) => {
                    tracing::debug!(id = self.config.id, error = %e, "retrying");
                    tokio::time::sleep(LEADER_RETRY_INTERVAL).await;
                }
            }
        }
    }

    /// Proposes on the leader; `answer` takes the answer that fits the
    /// proposal.
    async fn propose<T>(
        &self,
        proposal: Proposal,
        answer: fn(Applied) -> Option<T>,
    ) -> Result<T, Error> {
        self.with_leader(|| self.try_propose(&proposal, answer))
            .await
    }

    async fn try_propose<T>(
        &self,
        proposal: &Proposal,
        answer: fn(Applied) -> Option<T>,
    ) -> Attempt<T> {
        let membership = |e: ChangeMembershipError<NodeId>| Attempt::Fail(Error::Membership(e));
        // Only a leader of another shoal version answers with the wrong kind.
        let fitting = |leader: NodeId, url: &str, applied: Applied| match answer(applied) {
            Some(value) => Attempt::Done(value),
            None => Attempt::Fail(Error::Forward {
                leader,
                url: url.to_owned(),
                reason: "the answer does not fit the proposal".to_owned(),
            }),
        };
        let Some((leader, member)) = self
            .leader_member()
            .filter(|(leader, _)| *leader != self.id())
        else {
            return match self.proposer.propose(proposal.clone()).await {
                Ok(Applied::Refused(reason)) => Attempt::Fail(Error::RemoveRefused(reason)),
                Ok(applied) => fitting(self.id(), &self.config.peer_url, applied),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    Attempt::Retry(self.no_leader())
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                    membership(e)
                }
                Err(RaftError::Fatal(e)) => Attempt::Fail(Error::Stopped(Box::new(e))),
            };
        };
        let forward_error = |reason: String| Error::Forward {
            leader,
            url: member.peer_url.clone(),
            reason,
        };
        match self.network.client(leader, &member).forward(proposal).await {
            Ok(Applied::Refused(reason)) => Attempt::Fail(Error::RemoveRefused(reason)),
            Ok(applied) => fitting(leader, &member.peer_url, applied),
            Err(RPCError::RemoteError(remote)) => match remote.source {
                RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => membership(e),
                // Refused before it was appended, or appended and then
                // truncated away (openraft answers pending proposals so
                // only when their entries are removed): it never applies,
                // so waiting for the next leader and retrying is safe.
                RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                    Attempt::Retry(self.no_leader())
                }
                // The leader stopped, perhaps with the entry appended and
                // replicated: a new leader may still commit it, so a retry
                // could apply it twice. The client gets the error instead.
                RaftError::Fatal(e) => Attempt::Fail(forward_error(e.to_string())),
            },
            // Nothing was delivered: safe to retry.
            Err(RPCError::Unreachable(e)) => Attempt::Retry(forward_error(e.to_string())),
            Err(e) => Attempt::Fail(forward_error(e.to_string())),
        }
    }

    async fn try_lease(&self, request: LeaseRequest) -> Attempt<Option<i64>> {
        let Some((leader, member)) = self.leader_member() else {
            return Attempt::Retry(self.no_leader());
        };
        if leader == self.id() {
            return match self.lessor.get() {
                Some(lessor) => Attempt::Done(request.answer(lessor.as_ref())),
                None => Attempt::Retry(self.no_leader()),
            };
        }
        match self.network.client(leader, &member).lease(request).await {
            Ok(answer) => Attempt::Done(answer),
            // Deposed, starting, or unreachable: ask the next leader. A
            // keep-alive that reached a lessor twice renewed it twice,
            // which is harmless.
            Err(e) => Attempt::Retry(Error::Forward {
                leader,
                url: member.peer_url.clone(),
                reason: e.to_string(),
            }),
        }
    }

    async fn try_read_index(&self) -> Attempt<u64> {
        let Some((leader, member)) = self
            .leader_member()
            .filter(|(leader, _)| *leader != self.id())
        else {
            return match self.raft.get_read_log_id().await {
                Ok((read_log_id, _applied)) => Attempt::Done(read_log_id.map_or(0, |id| id.index)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                    Attempt::Retry(self.no_leader())
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                    Attempt::Retry(Error::NoQuorum(e))
                }
                Err(RaftError::Fatal(e)) => Attempt::Fail(Error::Stopped(Box::new(e))),
            };
        };
        match self.network.client(leader, &member).read_index().await {
            Ok(index) => Attempt::Done(index),
            Err(RPCError::RemoteError(remote)) => match remote.source {
                RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)) => {
                    Attempt::Retry(Error::NoQuorum(e))
                }
                RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))
                | RaftError::Fatal(_) => Attempt::Retry(self.no_leader()),
            },
            // Reads change nothing: always safe to retry.
            Err(e) => Attempt::Retry(Error::Forward {
                leader,
                url: member.peer_url.clone(),
                reason: e.to_string(),
            }),
        }
    }
}
