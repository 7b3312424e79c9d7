//! A single-member store: commands apply straight to the keyspace, one at a
//! time, and a local lessor revokes expired leases. It is shoal's
//! single-member mode and the backend of this crate's tests.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use shoal_mvcc::{Command, CommandResult, LeaseId, Mvcc};
use tokio::task::JoinHandle;

use crate::{
    backend::{Backend, BackendError, MemberInfo, RaftStatus},
    lessor::Lessor,
};

/// Prefix of the meta blob this backend stores with every apply: the
/// applied index follows as 8 little-endian bytes. Meta written by anything
/// else (the Raft store) is ignored, and the index starts from 0.
const META_TAG: &[u8] = b"shoal-local-index:";
/// Pause before proposing a failed lease revoke again.
const REVOKE_RETRY: Duration = Duration::from_secs(1);

/// Identity of the single member.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// The member's name (`etcdctl member list` shows it).
    pub name: String,
    /// URLs clients reach it on.
    pub client_urls: Vec<String>,
    /// URLs peers would reach it on (informational).
    pub peer_urls: Vec<String>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            client_urls: vec!["http://127.0.0.1:2379".to_owned()],
            peer_urls: vec!["http://127.0.0.1:2380".to_owned()],
        }
    }
}

/// The single-member [`Backend`]. Dropping it stops its lease expiry task.
pub struct LocalBackend {
    inner: Arc<Inner>,
    expiry: JoinHandle<()>,
}

struct Inner {
    mvcc: Arc<Mvcc>,
    /// Serializes applies, so the applied index and the lessor follow the
    /// keyspace in order.
    apply: Mutex<()>,
    applied_index: AtomicU64,
    lessor: Lessor,
    member: MemberInfo,
    cluster_id: u64,
}

impl LocalBackend {
    /// Starts serving `mvcc` as a single member: every lease gets a full TTL
    /// from now, and expired leases are revoked by a task on the current
    /// tokio runtime (so call it inside one).
    pub fn start(mvcc: Arc<Mvcc>, config: LocalConfig) -> Result<Self, BackendError> {
        let applied_index = mvcc
            .meta()?
            .and_then(|meta| {
                let index = meta.strip_prefix(META_TAG)?;
                Some(u64::from_le_bytes(index.try_into().ok()?))
            })
            .unwrap_or(0);
        let lessor = Lessor::new();
        lessor.promote(mvcc.leases()?.into_iter().map(|l| (l.id, l.ttl)));
        let member_id = id_from(&[
            config.name.as_bytes(),
            config.peer_urls.join(",").as_bytes(),
        ]);
        let inner = Arc::new(Inner {
            mvcc,
            apply: Mutex::new(()),
            applied_index: AtomicU64::new(applied_index),
            lessor,
            cluster_id: id_from(&[b"shoal-cluster:", config.name.as_bytes()]),
            member: MemberInfo {
                id: member_id,
                name: config.name,
                peer_urls: config.peer_urls,
                client_urls: config.client_urls,
                is_learner: false,
            },
        });
        let expiry = tokio::spawn(expire_leases(inner.clone()));
        Ok(Self { inner, expiry })
    }

    /// The lessor, for inspection.
    pub fn lessor(&self) -> &Lessor {
        &self.inner.lessor
    }
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        self.expiry.abort();
    }
}

impl Inner {
    /// Applies one command durably (blocking: call from a blocking thread).
    fn apply(&self, cmd: Command) -> Result<CommandResult, BackendError> {
        let _serial = self.apply.lock().unwrap_or_else(PoisonError::into_inner);
        let index = self.applied_index.load(Ordering::Acquire) + 1;
        let mut meta = META_TAG.to_vec();
        meta.extend_from_slice(&index.to_le_bytes());
        let result = self
            .mvcc
            .apply(std::slice::from_ref(&cmd), Some(&meta))?
            .pop()
            .ok_or_else(|| {
                BackendError::Storage("the keyspace returned no result for a command".to_owned())
            })?;
        self.applied_index.store(index, Ordering::Release);
        self.lessor.applied(&cmd, &result);
        Ok(result)
    }
}

async fn apply_blocking(inner: &Arc<Inner>, cmd: Command) -> Result<CommandResult, BackendError> {
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || inner.apply(cmd))
        .await
        .map_err(|_| BackendError::Stopped)?
}

/// Proposes the revoke of each lease whose deadline passes.
async fn expire_leases(inner: Arc<Inner>) {
    loop {
        let id = inner.lessor.expired().await;
        match apply_blocking(&inner, Command::LeaseRevoke { id }).await {
            Ok(_) => tracing::debug!(lease = id, "revoked expired lease"),
            Err(e) => {
                tracing::warn!(lease = id, error = %e, "could not revoke expired lease; retrying");
                inner.lessor.revoke_failed(id);
                tokio::time::sleep(REVOKE_RETRY).await;
            }
        }
    }
}

/// A stable non-zero id from some bytes (FNV-1a), like etcd's ids derived
/// from names and URLs.
pub fn id_from(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

impl Backend for LocalBackend {
    async fn write(&self, cmd: Command) -> Result<CommandResult, BackendError> {
        apply_blocking(&self.inner, cmd).await
    }

    async fn read_barrier(&self) -> Result<(), BackendError> {
        // Every committed command is applied before `write` returns.
        Ok(())
    }

    fn mvcc(&self) -> &Mvcc {
        &self.inner.mvcc
    }

    fn raft_status(&self) -> RaftStatus {
        let index = self.inner.applied_index.load(Ordering::Acquire);
        RaftStatus {
            cluster_id: self.inner.cluster_id,
            member_id: self.inner.member.id,
            term: 1,
            leader: Some(self.inner.member.id),
            commit_index: index,
            applied_index: index,
            is_learner: false,
        }
    }

    fn members(&self) -> Vec<MemberInfo> {
        vec![self.inner.member.clone()]
    }

    async fn member_add(
        &self,
        _peer_urls: Vec<String>,
        _is_learner: bool,
    ) -> Result<MemberInfo, BackendError> {
        Err(BackendError::Unsupported(
            "shoal: this store runs as a single member and cannot add members; start it with peers to run a Raft cluster".to_owned(),
        ))
    }

    async fn member_remove(&self, id: u64) -> Result<(), BackendError> {
        if id != self.inner.member.id {
            return Err(BackendError::MemberNotFound);
        }
        Err(BackendError::Unsupported(
            "shoal: cannot remove the only member of a single-member store".to_owned(),
        ))
    }

    async fn member_promote(&self, id: u64) -> Result<(), BackendError> {
        if id != self.inner.member.id {
            return Err(BackendError::MemberNotFound);
        }
        Err(BackendError::MemberNotLearner)
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, BackendError> {
        self.inner
            .lessor
            .keep_alive(id)
            .ok_or(BackendError::LeaseNotFound)
    }

    async fn lease_remaining(&self, id: LeaseId) -> Result<i64, BackendError> {
        self.inner
            .lessor
            .remaining(id)
            .ok_or(BackendError::LeaseNotFound)
    }
}
