//! openraft's state machine over the MVCC keyspace (`state.redb`).
//!
//! The keyspace stores, in the same transaction as the data, an opaque meta
//! blob: here the last applied log id and membership ([`AppliedState`]), so
//! a restarted member knows exactly what it applied. A batch of committed
//! entries is applied with one keyspace transaction.
//!
//! Applies are not fsynced: every applied entry is already durable in the
//! Raft log, so a crash only loses the keyspace's tail after its last
//! durable commit, and that commit's meta tells openraft where to replay
//! the log from on restart (`applied_state` is read from the keyspace as
//! it reopens, and the meta is in the same transaction as the data it
//! describes). What keeps the replay possible is that the log is never
//! purged past the keyspace's durable state: openraft purges only entries
//! covered by a snapshot, and a snapshot is returned only after a durable
//! commit of everything it holds. Applies are also made durable every
//! `sync_commands` commands or `sync_interval`, so a replay stays short,
//! and when the member shuts down.
//!
//! Snapshots are the keyspace's own full copy; the last one built or
//! installed is kept in `snapshot.bin` for lagging followers.

#![expect(
    clippy::result_large_err,
    reason = "openraft's storage traits return its large StorageError by value"
)]

#[cfg(test)]
mod tests;

use std::{
    fs,
    io::{self, Cursor, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    StorageIOError, storage::RaftStateMachine,
};
use serde::{Deserialize, Serialize};
use shoal_mvcc::{Command, CommandResult, Mvcc};
use tokio::sync::{Mutex, watch};

use crate::types::{
    NodeId, TypeConfig,
    typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership},
};

/// How often a snapshot is copied while applies race it before they are
/// held back for it.
const SNAPSHOT_OPTIMISTIC_TRIES: usize = 3;

/// What the state machine has applied: stored as the keyspace's meta blob.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppliedState {
    /// The last applied log id.
    pub last_applied: Option<LogId>,
    /// The last applied membership.
    pub membership: StoredMembership,
}

impl AppliedState {
    /// The meta of a keyspace that no Raft log has applied anything to.
    pub(crate) fn fresh() -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(&Self::default())
    }

    fn decode(meta: Option<&[u8]>) -> Result<Self, postcard::Error> {
        meta.map_or_else(|| Ok(Self::default()), postcard::from_bytes)
    }
}

/// A snapshot as kept in `snapshot.bin`.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// What the state machine and its snapshot builders share.
struct Shared {
    mvcc: Arc<Mvcc>,
    snapshot_path: PathBuf,
    /// Held while applying, installing a snapshot, and (when applies keep
    /// racing it) copying the keyspace for a snapshot.
    apply_lock: Mutex<()>,
    /// Counts snapshots installed from the leader.
    installed: watch::Sender<u64>,
}

/// The state machine handed to openraft.
pub(crate) struct StateMachine {
    shared: Arc<Shared>,
    applied: AppliedState,
    /// Make applies durable after this many commands...
    sync_commands: u64,
    /// ...or once the oldest unsynced one is this old.
    sync_interval: Duration,
    /// Commands (and command-less entries) applied since the last durable
    /// commit.
    unsynced: u64,
    /// When the oldest of those was applied.
    unsynced_since: Option<Instant>,
}

impl StateMachine {
    /// Wraps the keyspace, reading what it applied from its meta. Applies
    /// are made durable every `sync_commands` commands or `sync_interval`.
    pub(crate) fn open(
        mvcc: Arc<Mvcc>,
        snapshot_path: PathBuf,
        sync_commands: u64,
        sync_interval: Duration,
    ) -> Result<Self, StorageError> {
        let meta = mvcc
            .meta()
            .map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)))?;
        let applied = AppliedState::decode(meta.as_deref())
            .map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)))?;
        let (installed, _) = watch::channel(0);
        Ok(Self {
            shared: Arc::new(Shared {
                mvcc,
                snapshot_path,
                apply_lock: Mutex::new(()),
                installed,
            }),
            applied,
            sync_commands,
            sync_interval,
            unsynced: 0,
            unsynced_since: None,
        })
    }

    /// Changes each time a snapshot from the leader replaced the keyspace.
    pub(crate) fn installed_snapshots(&self) -> watch::Receiver<u64> {
        self.shared.installed.subscribe()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<CommandResult>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.applied.clone();
        let mut commands: Vec<Command> = Vec::new();
        // Per entry: how many commands it carries.
        let mut per_entry = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => per_entry.push(0),
                EntryPayload::Normal(batch) => {
                    per_entry.push(batch.len());
                    commands.extend(batch);
                }
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    per_entry.push(0);
                }
            }
        }
        if per_entry.is_empty() {
            return Ok(Vec::new());
        }
        let meta = postcard::to_stdvec(&applied)
            .map_err(|e| StorageIOError::write_state_machine(AnyError::new(&e)))?;
        let n_commands = commands.len();
        // Entries without commands count too: they are replayed as well.
        let weight = per_entry.iter().map(|&n| n.max(1) as u64).sum::<u64>();
        let sync = self.unsynced + weight >= self.sync_commands
            || self
                .unsynced_since
                .is_some_and(|since| since.elapsed() >= self.sync_interval);

        let _guard = self.shared.apply_lock.lock().await;
        let mvcc = self.shared.mvcc.clone();
        let results = blocking(ErrorSubject::StateMachine, ErrorVerb::Write, move || {
            let applied = if sync {
                mvcc.apply(&commands, Some(&meta))
            } else {
                mvcc.apply_unsynced(&commands, Some(&meta))
            };
            applied.map_err(|e| StorageIOError::write_state_machine(AnyError::new(&e)).into())
        })
        .await?;
        if results.len() != n_commands {
            return Err(StorageIOError::write_state_machine(AnyError::error(format!(
                "keyspace returned {} results for {n_commands} commands",
                results.len()
            )))
            .into());
        }
        self.applied = applied;
        if sync {
            self.unsynced = 0;
            self.unsynced_since = None;
        } else {
            self.unsynced += weight;
            self.unsynced_since.get_or_insert_with(Instant::now);
        }

        let mut results = results.into_iter();
        Ok(per_entry
            .into_iter()
            .map(|n| results.by_ref().take(n).collect())
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let signature = meta.signature();
        let encoded = postcard::to_stdvec(&applied).map_err(|e| {
            StorageIOError::write_snapshot(Some(signature.clone()), AnyError::new(&e))
        })?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };

        let _guard = self.shared.apply_lock.lock().await;
        let shared = self.shared.clone();
        blocking(
            ErrorSubject::Snapshot(Some(signature.clone())),
            ErrorVerb::Write,
            move || {
                let io = |e: AnyError| {
                    StorageError::from(StorageIOError::write_snapshot(Some(signature.clone()), e))
                };
                shared
                    .mvcc
                    .restore(&stored.data)
                    .map_err(|e| io(AnyError::new(&e)))?;
                // The keyspace's snapshot carries the meta it had when it was
                // copied; make sure what we report applied is the snapshot's.
                if shared
                    .mvcc
                    .meta()
                    .map_err(|e| io(AnyError::new(&e)))?
                    .as_deref()
                    != Some(&encoded[..])
                {
                    shared
                        .mvcc
                        .apply(&[], Some(&encoded))
                        .map_err(|e| io(AnyError::new(&e)))?;
                }
                write_snapshot_file(&shared.snapshot_path, &stored)
                    .map_err(|e| io(AnyError::new(&e)))
            },
        )
        .await?;
        self.applied = applied;
        // Restoring is a durable commit.
        self.unsynced = 0;
        self.unsynced_since = None;
        self.shared.installed.send_modify(|n| *n += 1);
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let path = self.shared.snapshot_path.clone();
        let stored = blocking(ErrorSubject::Snapshot(None), ErrorVerb::Read, move || {
            read_snapshot_file(&path)
                .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)).into())
        })
        .await?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// Builds a snapshot from the keyspace, off the state machine's task.
pub(crate) struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl SnapshotBuilder {
    /// The keyspace's full copy and the meta describing exactly it.
    ///
    /// The copy is one read transaction but the meta is read on its own:
    /// read it before and after the copy; if no apply committed in between
    /// (every apply moves the last applied log id) the copy is the state
    /// the meta describes. Applies keep running meanwhile; only when they
    /// keep racing the copy is it taken with applies held back.
    async fn consistent_copy(&self) -> Result<(Option<Vec<u8>>, Vec<u8>), StorageError> {
        let read = |e: AnyError| StorageError::from(StorageIOError::read_state_machine(e));
        for _ in 0..SNAPSHOT_OPTIMISTIC_TRIES {
            let mvcc = self.shared.mvcc.clone();
            let (before, data, after) =
                blocking(ErrorSubject::StateMachine, ErrorVerb::Read, move || {
                    let before = mvcc.meta().map_err(|e| read(AnyError::new(&e)))?;
                    let data = mvcc.snapshot().map_err(|e| read(AnyError::new(&e)))?;
                    let after = mvcc.meta().map_err(|e| read(AnyError::new(&e)))?;
                    Ok((before, data, after))
                })
                .await?;
            if before == after {
                return Ok((before, data));
            }
        }
        let _guard = self.shared.apply_lock.lock().await;
        let mvcc = self.shared.mvcc.clone();
        blocking(ErrorSubject::StateMachine, ErrorVerb::Read, move || {
            let meta = mvcc.meta().map_err(|e| read(AnyError::new(&e)))?;
            let data = mvcc.snapshot().map_err(|e| read(AnyError::new(&e)))?;
            Ok((meta, data))
        })
        .await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, data) = self.consistent_copy().await?;
        // openraft purges the log up to a snapshot once it has it: first
        // make durable every apply the copy holds (and any after), so the
        // keyspace a crash leaves never needs purged entries replayed.
        let mvcc = self.shared.mvcc.clone();
        blocking(ErrorSubject::StateMachine, ErrorVerb::Write, move || {
            mvcc.sync()
                .map_err(|e| StorageIOError::write_state_machine(AnyError::new(&e)).into())
        })
        .await?;
        let applied = AppliedState::decode(meta.as_deref())
            .map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)))?;
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or_default();
        let snapshot_id = match applied.last_applied {
            Some(last) => format!("{}-{}-{micros}", last.leader_id, last.index),
            None => format!("--{micros}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        };
        let stored = StoredSnapshot { meta, data };
        let path = self.shared.snapshot_path.clone();
        let signature = stored.meta.signature();
        let stored = blocking(
            ErrorSubject::Snapshot(Some(signature.clone())),
            ErrorVerb::Write,
            move || {
                write_snapshot_file(&path, &stored).map_err(|e| {
                    StorageIOError::write_snapshot(Some(signature), AnyError::new(&e))
                })?;
                Ok(stored)
            },
        )
        .await?;
        tracing::info!(snapshot = %stored.meta.snapshot_id, bytes = stored.data.len(), "built snapshot");
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

/// Replaces the snapshot file atomically (write, fsync, rename, fsync dir).
fn write_snapshot_file(path: &Path, snapshot: &StoredSnapshot) -> io::Result<()> {
    let bytes = postcard::to_stdvec(snapshot).map_err(io::Error::other)?;
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn read_snapshot_file(path: &Path) -> io::Result<Option<StoredSnapshot>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    postcard::from_bytes(&bytes).map(Some).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// Runs keyspace or file I/O on the blocking pool.
async fn blocking<T, F>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    f: F,
) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::from(StorageIOError::new(subject, verb, AnyError::new(&e))))?
}
