//! The etcd API's [`Backend`] over a Raft member: writes are replicated
//! (followers forward them to the leader), linearizable reads wait for the
//! leader's read index, and the leader's lessor expires leases by proposing
//! their revoke.

use std::{
    collections::BTreeSet,
    sync::{Arc, Weak},
    time::Duration,
};

use shoal_etcd_api::{Backend, BackendError, Lessor, MemberInfo, RaftStatus};
use shoal_mvcc::{Command, CommandResult, LeaseId, Mvcc};
use shoal_raft::{Error as RaftError, LeaseOracle, Member, RaftNode, RemoveRefused};
use tokio::task::JoinHandle;

/// How often the leader reconciles its lease timers with the keyspace
/// (leases granted through other members reach it only through the log).
const LEASE_SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// Pause before proposing a failed revoke again.
const REVOKE_RETRY: Duration = Duration::from_secs(1);
/// How long adding a voting member may wait for it to catch up.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before publishing this member's name and client URL again.
const PUBLISH_RETRY: Duration = Duration::from_millis(500);

/// A Raft member as the etcd API's backend. Dropping it stops its tasks.
pub struct RaftBackend {
    inner: Arc<Inner>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

struct Inner {
    node: RaftNode,
    lessor: Arc<Lessor>,
    cluster_id: u64,
}

/// The lessor, as the leader's Raft member answers lease requests with it
/// (its own clients' and those followers forward).
struct LessorOracle {
    lessor: Arc<Lessor>,
    /// Weak: the member holds the oracle, and must be the last to hold its
    /// keyspace.
    mvcc: Weak<Mvcc>,
}

impl LessorOracle {
    /// Asks the lessor; a lease it does not time yet but the keyspace holds
    /// (granted through another member moments ago: the periodic sync
    /// has not adopted it) gets its full TTL first.
    fn ask(&self, id: LeaseId, ask: impl Fn(&Lessor) -> Option<i64>) -> Option<i64> {
        ask(&self.lessor).or_else(|| {
            let lease = self.mvcc.upgrade()?.lease(id).ok()??;
            self.lessor.adopt_lease(id, lease.ttl);
            ask(&self.lessor)
        })
    }
}

impl LeaseOracle for LessorOracle {
    fn keep_alive(&self, id: i64) -> Option<i64> {
        self.ask(id, |l| l.keep_alive(id))
    }

    fn remaining(&self, id: i64) -> Option<i64> {
        self.ask(id, |l| l.remaining(id))
    }
}

impl RaftBackend {
    /// Wraps a started member; spawns the lease tasks on the current runtime.
    pub fn new(node: RaftNode, cluster_id: u64) -> Self {
        let lessor = Arc::new(Lessor::new());
        node.set_lessor(Arc::new(LessorOracle {
            lessor: lessor.clone(),
            mvcc: Arc::downgrade(node.mvcc()),
        }));
        let inner = Arc::new(Inner {
            node,
            lessor,
            cluster_id,
        });
        let tasks = vec![
            tokio::spawn(follow_leadership(inner.clone())),
            tokio::spawn(expire_leases(inner.clone())),
            tokio::spawn(publish(inner.clone())),
        ];
        Self {
            inner,
            tasks: std::sync::Mutex::new(tasks),
        }
    }

    /// Stops the lease tasks (waiting until they are gone, so they no
    /// longer hold the member) and then the Raft member.
    pub async fn stop(&self) {
        let tasks = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        self.inner.node.shutdown().await;
    }

    /// The Raft member.
    pub fn node(&self) -> &RaftNode {
        &self.inner.node
    }
}

impl Drop for RaftBackend {
    fn drop(&mut self) {
        let tasks = self
            .tasks
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for t in tasks.iter() {
            t.abort();
        }
    }
}

fn map_err(e: RaftError) -> BackendError {
    match e {
        RaftError::NoLeader { .. } | RaftError::NoQuorum { .. } => BackendError::NoLeader,
        RaftError::Stopped(_) => BackendError::Stopped,
        RaftError::Forward { .. } => BackendError::Timeout,
        RaftError::UnknownMember { .. } | RaftError::RemoveRefused(RemoveRefused::NotFound) => {
            BackendError::MemberNotFound
        }
        RaftError::RemoveRefused(RemoveRefused::NotEnoughStartedMembers) => {
            BackendError::NotEnoughStartedMembers
        }
        RaftError::RemoveRefused(RemoveRefused::Unhealthy) => BackendError::Unhealthy,
        other => BackendError::Storage(other.to_string()),
    }
}

/// Gives every lease a full TTL when this member starts leading, drops the
/// timers when it stops, and while leading adopts leases granted through
/// other members.
async fn follow_leadership(inner: Arc<Inner>) {
    let mut leadership = inner.node.leader_watch();
    let mut leading = false;
    let mut tick = tokio::time::interval(LEASE_SYNC_INTERVAL);
    loop {
        let now_leading = leadership.borrow_and_update().is_self;
        if now_leading != leading {
            leading = now_leading;
            let leases = if leading {
                match inner.node.mvcc().leases() {
                    Ok(l) => l.into_iter().map(|l| (l.id, l.ttl)).collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading leases for the lessor");
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            tracing::info!(leading, leases = leases.len(), "lessor follows leadership");
            inner.lessor.promote(leases);
        } else if leading && let Ok(leases) = inner.node.mvcc().leases() {
            inner
                .lessor
                .adopt(leases.into_iter().map(|l| (l.id, l.ttl)));
        }
        tokio::select! {
            changed = leadership.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tick.tick() => {}
        }
    }
}

/// Publishes this member's name and client URL into the membership (etcd
/// members publish theirs when they start), retrying until it holds them.
async fn publish(inner: Arc<Inner>) {
    loop {
        match inner.node.publish().await {
            Ok(true) => {
                tracing::debug!(member = inner.node.id(), "name and client URL published");
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "publishing this member's name; retrying"),
        }
        tokio::time::sleep(PUBLISH_RETRY).await;
    }
}

/// Proposes the revoke of each lease whose deadline passes (on the leader;
/// a follower's lessor holds no timers).
async fn expire_leases(inner: Arc<Inner>) {
    loop {
        let id = inner.lessor.expired().await;
        let cmd = Command::LeaseRevoke { id };
        match inner.node.write(cmd.clone()).await {
            Ok(result) => {
                inner.lessor.applied(&cmd, &result);
                tracing::debug!(lease = id, "revoked expired lease");
            }
            Err(e) => {
                tracing::warn!(lease = id, error = %e, "could not revoke expired lease; retrying");
                inner.lessor.revoke_failed(id);
                tokio::time::sleep(REVOKE_RETRY).await;
            }
        }
    }
}

fn member_info(id: u64, m: &Member, is_learner: bool) -> MemberInfo {
    MemberInfo {
        id,
        name: m.name.clone(),
        peer_urls: vec![m.peer_url.clone()],
        client_urls: if m.client_url.is_empty() {
            Vec::new()
        } else {
            vec![m.client_url.clone()]
        },
        is_learner,
    }
}

impl Backend for RaftBackend {
    async fn write(&self, cmd: Command) -> Result<CommandResult, BackendError> {
        let result = self.inner.node.write(cmd.clone()).await.map_err(map_err)?;
        // Only the leader's lessor times leases: a follower's would revoke a
        // lease granted through it after one TTL, however often the leader
        // renewed it. The leader adopts leases granted elsewhere itself.
        if self.inner.node.is_leader() {
            self.inner.lessor.applied(&cmd, &result);
        }
        Ok(result)
    }

    async fn read_barrier(&self) -> Result<(), BackendError> {
        self.inner
            .node
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    fn mvcc(&self) -> &Mvcc {
        self.inner.node.mvcc()
    }

    fn raft_status(&self) -> RaftStatus {
        let node = &self.inner.node;
        let applied = node.applied_index();
        let id = node.id();
        RaftStatus {
            cluster_id: self.inner.cluster_id,
            member_id: id,
            term: node.term(),
            leader: node.leader(),
            commit_index: applied,
            applied_index: applied,
            is_learner: node
                .members()
                .iter()
                .any(|(m, _, learner)| *m == id && *learner),
        }
    }

    fn members(&self) -> Vec<MemberInfo> {
        self.inner
            .node
            .members()
            .iter()
            .map(|(id, m, learner)| member_info(*id, m, *learner))
            .collect()
    }

    async fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<MemberInfo, BackendError> {
        let node = &self.inner.node;
        let members = node.members();
        let peer_url = peer_urls.first().cloned().unwrap_or_default();
        if members.iter().any(|(_, m, _)| m.peer_url == peer_url) {
            return Err(BackendError::PeerUrlExists);
        }
        // Ids are never reused (a removed member may still run and say who
        // it is): like etcd, derive one from the peer URL and the time
        // instead of counting up from the members left.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut id = shoal_etcd_api::id_from(&[peer_url.as_bytes(), &now.to_le_bytes()]);
        while members.iter().any(|(m, _, _)| *m == id) {
            id = id.wrapping_add(1).max(1);
        }
        let member = Member {
            // etcd shows a member that has not started yet with no name.
            name: String::new(),
            peer_url,
            client_url: String::new(),
        };
        node.add_learner(id, member.clone())
            .await
            .map_err(map_err)?;
        if !is_learner {
            let voters: BTreeSet<u64> = members
                .iter()
                .filter(|(_, _, learner)| !learner)
                .map(|(id, _, _)| *id)
                .chain([id])
                .collect();
            match tokio::time::timeout(PROMOTE_TIMEOUT, node.change_membership(voters)).await {
                Ok(r) => r.map_err(map_err)?,
                Err(_) => return Err(BackendError::NotEnoughStartedMembers),
            }
        }
        Ok(member_info(id, &member, is_learner))
    }

    async fn member_remove(&self, id: u64) -> Result<(), BackendError> {
        self.inner.node.remove(id).await.map_err(map_err)
    }

    async fn member_promote(&self, id: u64) -> Result<(), BackendError> {
        let members = self.inner.node.members();
        match members.iter().find(|(m, _, _)| *m == id) {
            None => return Err(BackendError::MemberNotFound),
            Some((_, _, false)) => return Err(BackendError::MemberNotLearner),
            Some(_) => {}
        }
        self.inner.node.promote(id).await.map_err(map_err)
    }

    /// On a follower the leader's lessor answers, as etcd forwards it.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, BackendError> {
        self.inner
            .node
            .lease_keep_alive(id)
            .await
            .map_err(map_err)?
            .ok_or(BackendError::LeaseNotFound)
    }

    async fn lease_remaining(&self, id: LeaseId) -> Result<i64, BackendError> {
        self.inner
            .node
            .lease_remaining(id)
            .await
            .map_err(map_err)?
            .ok_or(BackendError::LeaseNotFound)
    }
}
