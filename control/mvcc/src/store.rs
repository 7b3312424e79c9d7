//! API SKELETON (to be implemented): the persisted keyspace.

use std::{path::Path, sync::Arc};

use crate::types::*;

/// Storage failures (I/O, corruption). Logical refusals are [`KvError`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// redb failed.
    #[error("storage: {0}")]
    Storage(String),
}

/// What one apply call changed, broadcast to watchers in revision order.
#[derive(Clone, Debug)]
pub struct AppliedBatch {
    /// Events, in revision order (several revisions when a batch of
    /// commands was applied at once).
    pub events: Vec<(Revision, Event)>,
    /// The store revision after the batch.
    pub revision: Revision,
}

/// Sizes and revisions, for etcd's Maintenance.Status.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Current revision.
    pub revision: Revision,
    /// Compacted-up-to revision.
    pub compact_revision: Revision,
    /// Bytes of the database file.
    pub db_size: i64,
    /// Bytes in use (estimate).
    pub db_size_in_use: i64,
}

/// The keyspace.
pub struct Mvcc {}

impl Mvcc {
    /// Opens or creates the database at `path`.
    pub fn open(_path: &Path) -> Result<Self, Error> {
        todo!()
    }
    /// Applies commands in order in ONE durable (fsynced) transaction,
    /// storing `meta` (opaque to this crate: the Raft layer's last-applied
    /// log id and membership) in the same transaction. Returns one result
    /// per command. Broadcasts the events to subscribers after commit.
    pub fn apply(&self, _commands: &[Command], _meta: Option<&[u8]>) -> Result<Vec<CommandResult>, Error> {
        todo!()
    }
    /// The opaque meta blob last stored by `apply` or `restore`.
    pub fn meta(&self) -> Result<Option<Vec<u8>>, Error> {
        todo!()
    }
    /// A range read at `args.revision` (or the current revision).
    pub fn range(&self, _args: &RangeArgs) -> Result<Result<(RangeResult, Revision), KvError>, Error> {
        todo!()
    }
    /// Events with revision in `[start, end]` for keys in `[key, range_end)`
    /// (etcd range rules), with prev_kv filled. `KvError::Compacted` if
    /// `start` <= the compact revision.
    pub fn events(&self, _start: Revision, _end: Revision, _key: &[u8], _range_end: &[u8]) -> Result<Result<Vec<(Revision, Event)>, KvError>, Error> {
        todo!()
    }
    /// Subscribes to applied batches (live events).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<AppliedBatch>> {
        todo!()
    }
    /// Current revision.
    pub fn revision(&self) -> Revision {
        todo!()
    }
    /// Compact revision.
    pub fn compact_revision(&self) -> Revision {
        todo!()
    }
    /// All leases.
    pub fn leases(&self) -> Result<Vec<Lease>, Error> {
        todo!()
    }
    /// One lease.
    pub fn lease(&self, _id: LeaseId) -> Result<Option<Lease>, Error> {
        todo!()
    }
    /// Sizes for Maintenance.Status.
    pub fn status(&self) -> Result<Status, Error> {
        todo!()
    }
    /// A consistent full copy of the state (keyspace, history since the
    /// compact revision, leases, meta) as bytes, for Raft snapshots and
    /// `etcdctl snapshot save`.
    pub fn snapshot(&self) -> Result<Vec<u8>, Error> {
        todo!()
    }
    /// Replaces the whole state with a snapshot's, durably.
    pub fn restore(&self, _snapshot: &[u8]) -> Result<(), Error> {
        todo!()
    }
    /// Reclaims free space in the database file.
    pub fn defragment(&self) -> Result<(), Error> {
        todo!()
    }
}
