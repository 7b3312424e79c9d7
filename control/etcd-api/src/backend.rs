//! What the etcd API needs from the store underneath it: replicated writes,
//! read barriers, the local keyspace, cluster identity and membership, and
//! the leader's lessor. [`crate::LocalBackend`] is the single-member
//! implementation; the Raft store implements it for clusters.

use std::future::Future;

use shoal_mvcc::{Command, CommandResult, LeaseId, Mvcc};

/// The store the etcd services run on.
///
/// Every method that can wait returns a `Send` future so the services can
/// run on tonic's multi-threaded runtime. Logical refusals of a command
/// (compacted revision, unknown lease, ...) are in
/// [`CommandResult::outcome`], not in [`BackendError`].
pub trait Backend: Send + Sync + 'static {
    /// Replicates and applies one command; returns its result once this
    /// member has applied it (so a read that follows sees it).
    fn write(
        &self,
        cmd: Command,
    ) -> impl Future<Output = Result<CommandResult, BackendError>> + Send;

    /// Waits until this member has applied everything committed before the
    /// call (etcd's ReadIndex), so a local read after it is linearizable.
    fn read_barrier(&self) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// The local keyspace, for reads, history and subscriptions.
    fn mvcc(&self) -> &Mvcc;

    /// Identity and Raft progress, for response headers and Status. Called
    /// for every response: keep it cheap.
    fn raft_status(&self) -> RaftStatus;

    /// The cluster's members.
    fn members(&self) -> Vec<MemberInfo>;

    /// Adds a member with these peer URLs (already validated); returns it
    /// with its new id.
    fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> impl Future<Output = Result<MemberInfo, BackendError>> + Send;

    /// Removes a member.
    fn member_remove(&self, id: u64) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Promotes a learner to a voting member.
    fn member_promote(&self, id: u64) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Renews a lease on the leader's lessor (in memory, like etcd's);
    /// returns its TTL in seconds, or [`BackendError::LeaseNotFound`] if it
    /// does not exist or has expired.
    fn lease_keep_alive(
        &self,
        id: LeaseId,
    ) -> impl Future<Output = Result<i64, BackendError>> + Send;

    /// Seconds left before a lease expires, from the leader's lessor, or
    /// [`BackendError::LeaseNotFound`].
    fn lease_remaining(
        &self,
        id: LeaseId,
    ) -> impl Future<Output = Result<i64, BackendError>> + Send;
}

/// Identity and Raft progress of the member serving a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// The cluster's id.
    pub cluster_id: u64,
    /// This member's id.
    pub member_id: u64,
    /// The current Raft term.
    pub term: u64,
    /// The leader's member id, if there is one.
    pub leader: Option<u64>,
    /// The Raft commit index.
    pub commit_index: u64,
    /// The Raft applied index.
    pub applied_index: u64,
    /// Whether this member is a non-voting learner.
    pub is_learner: bool,
}

/// One cluster member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its id.
    pub id: u64,
    /// Its name (empty until it has started).
    pub name: String,
    /// URLs its peers reach it on.
    pub peer_urls: Vec<String>,
    /// URLs clients reach it on.
    pub client_urls: Vec<String>,
    /// Whether it is a non-voting learner.
    pub is_learner: bool,
}

/// Why the store could not serve a request. Each maps to the gRPC status
/// etcd returns for it (see `status.rs`); the messages are etcd's where
/// clients match on them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// There is no leader (election in progress, or no quorum).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// This member is not the leader and could not forward the request.
    #[error("etcdserver: no leader (this member is not the leader; leader: {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<u64>,
    },
    /// The leader changed while the request was in flight.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The request was not committed in time.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The member is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The lease does not exist (or has expired).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// No member has that id.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// A member already uses one of those peer URLs.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// Promote was asked for a voting member.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// The learner has not caught up with the leader yet.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// The change would leave too few started members for a quorum.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    /// Removing a running member would break the active quorum while
    /// others are down (etcd's `ErrUnhealthy`).
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// This store cannot do that (for example membership changes on a
    /// single-member store); the text says what to use instead.
    #[error("{0}")]
    Unsupported(String),
    /// The local database failed.
    #[error("etcdserver: storage: {0}")]
    Storage(String),
}

impl From<shoal_mvcc::Error> for BackendError {
    fn from(e: shoal_mvcc::Error) -> Self {
        BackendError::Storage(e.to_string())
    }
}
