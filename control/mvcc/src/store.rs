//! [`Mvcc`]: the keyspace's public face. It owns the redb database and
//! hands each call to the module that knows the noun: `batch` for apply,
//! `keyspace` for reads, `history` for events, `lease` for leases,
//! `snapshot` for snapshots; the layout is in `tables`.
//!
//! Locking: every call holds a shared lock on the database for the length
//! of its redb transaction; only `defragment` takes it exclusively (redb
//! compacts only with no transaction open), so readers wait for it, and
//! it waits for them. Reads never wait for an apply: redb read
//! transactions are snapshots. Applies and restores are serialized by a
//! mutex so that the broadcast order is the commit order.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicI64, Ordering},
    },
};

use redb::{
    Builder, Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, StorageBackend,
};
use tokio::sync::broadcast;

use crate::{
    batch::Batch,
    history,
    keyspace::{self, Base, KeyRange},
    lease, snapshot,
    tables::{
        HISTORY, KEY_INDEX, KEY_REVS, LEASE_KEYS, LEASES, META, META_RAFT, StoreMeta, storage,
    },
    txn::{self, Failure},
    types::*,
};

/// redb's page cache for the keyspace (redb's default is 1 GiB, held in
/// the process as the database grows). Compacted, a cluster's keyspace is
/// its live objects plus a few minutes of history: this holds the hot part
/// of a large cluster's.
const CACHE_BYTES: usize = 256 << 20;

/// Storage failures (I/O, corruption). Logical refusals are [`KvError`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// redb failed; the message names the table or operation.
    #[error("storage: {0}")]
    Storage(String),
    /// The database holds something this store could not have written (a
    /// damaged file or another layout version); restore from a snapshot.
    #[error("corrupt keyspace database: {0}")]
    Corrupt(String),
    /// `restore` was given bytes that are not a valid snapshot; nothing was
    /// changed.
    #[error("invalid keyspace snapshot: {0}")]
    InvalidSnapshot(String),
    /// `txn_read` was given a transaction that puts or deletes: it must be
    /// applied (proposed), not read.
    #[error("transaction has puts or deletes; it cannot be served as a read")]
    NotReadOnly,
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

/// Capacity of the applied-batch broadcast: a receiver that falls further
/// behind gets `Lagged` and re-reads history with [`Mvcc::events`].
const BROADCAST_CAPACITY: usize = 4096;

type ReadBase = Base<
    ReadOnlyTable<&'static [u8], &'static [u8]>,
    ReadOnlyTable<(&'static [u8], i64, u32), &'static [u8]>,
    ReadOnlyTable<(i64, u32), &'static [u8]>,
    ReadOnlyTable<i64, i64>,
>;

/// The tables of one read transaction.
struct ReadTables {
    base: ReadBase,
    lease_keys: ReadOnlyTable<(i64, &'static [u8]), ()>,
    meta: ReadOnlyTable<&'static str, &'static [u8]>,
}

impl ReadTables {
    fn open(txn: &ReadTransaction) -> Result<Self, Error> {
        let meta = txn.open_table(META).map_err(storage("meta: open"))?;
        let state = StoreMeta::read(&meta)?
            .ok_or_else(|| Error::Corrupt("meta: store not initialised".into()))?;
        Ok(Self {
            base: Base {
                key_index: txn
                    .open_table(KEY_INDEX)
                    .map_err(storage("key_index: open"))?,
                key_revs: txn
                    .open_table(KEY_REVS)
                    .map_err(storage("key_revs: open"))?,
                history: txn.open_table(HISTORY).map_err(storage("history: open"))?,
                leases: txn.open_table(LEASES).map_err(storage("leases: open"))?,
                current: state.revision,
                compacted: state.compacted,
            },
            lease_keys: txn
                .open_table(LEASE_KEYS)
                .map_err(storage("lease_keys: open"))?,
            meta,
        })
    }
}

/// The keyspace.
pub struct Mvcc {
    db: RwLock<Database>,
    apply_lock: Mutex<()>,
    revision: AtomicI64,
    compact_revision: AtomicI64,
    events: broadcast::Sender<Arc<AppliedBatch>>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Mvcc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mvcc")
            .field("path", &self.path)
            .field("revision", &self.revision())
            .field("compact_revision", &self.compact_revision())
            .finish_non_exhaustive()
    }
}

impl Mvcc {
    /// Opens or creates the database at `path`.
    ///
    /// A new database is built beside it (`<name>.creating`) and renamed
    /// into place once initialised and synced: redb's own creation is not
    /// crash-safe, and a crash there would leave a file that no longer
    /// opens. A leftover `.creating` file is such a crash and is replaced.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let io = |what: &str, p: &Path| {
            let what = what.to_owned();
            let p = p.display().to_string();
            move |e: std::io::Error| Error::Storage(format!("{what} {p}: {e}"))
        };
        if !path.exists() {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(".creating");
            let tmp = path.with_file_name(name);
            if tmp.exists() {
                std::fs::remove_file(&tmp).map_err(io("remove stale", &tmp))?;
            }
            let db = Database::create(&tmp)
                .map_err(|e| Error::Storage(format!("create {}: {e}", tmp.display())))?;
            drop(Self::init(db, None)?);
            std::fs::rename(&tmp, path).map_err(io("rename into place", path))?;
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("sync directory", dir))?;
        }
        let db = Builder::new()
            .set_cache_size(CACHE_BYTES)
            .open(path)
            .map_err(|e| Error::Storage(format!("open {}: {e}", path.display())))?;
        Self::init(db, Some(path.to_path_buf()))
    }

    /// Opens or creates the database on a redb storage backend (an
    /// in-memory one for tests, or a fault-injecting one). Unlike
    /// [`Mvcc::open`], creating a new database this way is not crash-safe:
    /// a backend cut off before the first open returned may not open
    /// again.
    pub fn open_with_backend(backend: impl StorageBackend) -> Result<Self, Error> {
        let db = Builder::new()
            .create_with_backend(backend)
            .map_err(storage("open database on backend"))?;
        Self::init(db, None)
    }

    fn init(db: Database, path: Option<PathBuf>) -> Result<Self, Error> {
        let mut txn = db.begin_write().map_err(storage("begin write (init)"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(storage("set durability"))?;
        let state = {
            // Opening creates the tables, so read transactions find them.
            let batch = Batch::open(&txn)?;
            drop(batch);
            let mut meta = txn.open_table(META).map_err(storage("meta: open"))?;
            match StoreMeta::read(&meta)? {
                Some(state) => state,
                None => {
                    StoreMeta::EMPTY.write(&mut meta)?;
                    StoreMeta::EMPTY
                }
            }
        };
        txn.commit().map_err(storage("commit (init)"))?;
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        Ok(Self {
            db: RwLock::new(db),
            apply_lock: Mutex::new(()),
            revision: AtomicI64::new(state.revision),
            compact_revision: AtomicI64::new(state.compacted),
            events,
            path,
        })
    }

    /// Runs `f` on the tables of one read transaction.
    fn read<T>(&self, f: impl FnOnce(&ReadTables) -> Result<T, Error>) -> Result<T, Error> {
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let txn = db.begin_read().map_err(storage("begin read"))?;
        let tables = ReadTables::open(&txn)?;
        f(&tables)
    }

    /// Applies commands in order in ONE durable (fsynced) transaction,
    /// storing `meta` (opaque to this crate: the Raft layer's last-applied
    /// log id and membership) in the same transaction. Returns one result
    /// per command. Broadcasts the events to subscribers after commit
    /// (batches without events are not broadcast). Also makes every
    /// earlier [`apply_unsynced`](Self::apply_unsynced) durable.
    pub fn apply(
        &self,
        commands: &[Command],
        meta: Option<&[u8]>,
    ) -> Result<Vec<CommandResult>, Error> {
        self.apply_with(commands, meta, Durability::Immediate)
    }

    /// Like [`apply`](Self::apply), but without the fsync: the batch is
    /// visible at once and reaches the disk with the next durable commit
    /// ([`apply`](Self::apply), [`sync`](Self::sync), `restore`) or when
    /// the store is closed. A crash before that loses it whole, with every
    /// unsynced batch after the last durable commit: the store reopens as
    /// of that commit, its `meta` included. For callers that can replay
    /// what they applied (the Raft state machine replays its log).
    pub fn apply_unsynced(
        &self,
        commands: &[Command],
        meta: Option<&[u8]>,
    ) -> Result<Vec<CommandResult>, Error> {
        self.apply_with(commands, meta, Durability::None)
    }

    /// Makes every batch applied so far durable (one empty fsynced
    /// commit).
    pub fn sync(&self) -> Result<(), Error> {
        let _serial = self
            .apply_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let mut txn = db.begin_write().map_err(storage("begin write (sync)"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(storage("set durability"))?;
        txn.commit().map_err(storage("commit (sync)"))
    }

    fn apply_with(
        &self,
        commands: &[Command],
        meta: Option<&[u8]>,
        durability: Durability,
    ) -> Result<Vec<CommandResult>, Error> {
        if commands.is_empty() && meta.is_none() {
            return Ok(Vec::new());
        }
        let _serial = self
            .apply_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let mut txn = db.begin_write().map_err(storage("begin write"))?;
        txn.set_durability(durability)
            .map_err(storage("set durability"))?;
        let (results, done) = {
            let mut batch = Batch::open(&txn)?;
            let mut results = Vec::with_capacity(commands.len());
            for command in commands {
                results.push(batch.apply(command)?);
            }
            (results, batch.finish(meta)?)
        };
        txn.commit().map_err(storage("commit batch"))?;
        self.revision.store(done.revision, Ordering::SeqCst);
        self.compact_revision
            .store(done.compacted, Ordering::SeqCst);
        if !done.events.is_empty() {
            // No receiver is not an error: nobody watches yet.
            let _ = self.events.send(Arc::new(AppliedBatch {
                events: done.events,
                revision: done.revision,
            }));
        }
        Ok(results)
    }

    /// The opaque meta blob last stored by `apply` or `restore`.
    pub fn meta(&self) -> Result<Option<Vec<u8>>, Error> {
        self.read(|t| {
            Ok(t.meta
                .get(META_RAFT)
                .map_err(storage("meta: get raft meta"))?
                .map(|v| v.value().to_vec()))
        })
    }

    /// A range read at `args.revision` (or the current revision); also
    /// returns the store revision the read saw (etcd's header revision).
    pub fn range(
        &self,
        args: &RangeArgs,
    ) -> Result<Result<(RangeResult, Revision), KvError>, Error> {
        self.read(|t| Ok(keyspace::range(&t.base, args)?.map(|r| (r, t.base.current))))
    }

    /// Evaluates a read-only transaction ([`TxnArgs::is_read_only`]) on
    /// the current state, with the same checks and results as applying it
    /// would give, without proposing it; also returns the store revision it
    /// saw. A transaction that writes is refused with
    /// [`Error::NotReadOnly`].
    pub fn txn_read(
        &self,
        args: &TxnArgs,
    ) -> Result<Result<(TxnResult, Revision), KvError>, Error> {
        if !args.is_read_only() {
            return Err(Error::NotReadOnly);
        }
        self.read(|t| match txn::txn(&t.base, args) {
            Ok((result, _no_writes)) => Ok(Ok((result, t.base.current))),
            Err(Failure::Refused(e)) => Ok(Err(e)),
            Err(Failure::Storage(e)) => Err(e),
        })
    }

    /// Events with revision in `[start, end]` (`end` <= 0: up to the
    /// current revision) for keys in `[key, range_end)` (etcd range rules),
    /// with prev_kv filled where history still has it.
    /// `KvError::Compacted` if `start` < the compact revision, as etcd's
    /// watch: a watch from the compact revision itself gets every event
    /// of that revision.
    pub fn events(
        &self,
        start: Revision,
        end: Revision,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<Result<Vec<(Revision, Event)>, KvError>, Error> {
        let range = KeyRange::new(key, range_end);
        self.read(|t| history::events(&t.base, start, end, &range))
    }

    /// Subscribes to applied batches (live events).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<AppliedBatch>> {
        self.events.subscribe()
    }

    /// Current revision (of the last committed batch).
    pub fn revision(&self) -> Revision {
        self.revision.load(Ordering::SeqCst)
    }

    /// Compact revision (0 if never compacted).
    pub fn compact_revision(&self) -> Revision {
        self.compact_revision.load(Ordering::SeqCst)
    }

    /// All leases, by id.
    pub fn leases(&self) -> Result<Vec<Lease>, Error> {
        self.read(|t| lease::all(&t.base.leases, &t.lease_keys))
    }

    /// One lease.
    pub fn lease(&self, id: LeaseId) -> Result<Option<Lease>, Error> {
        self.read(|t| lease::get(&t.base.leases, &t.lease_keys, id))
    }

    /// Sizes for Maintenance.Status. Opens a write transaction for redb's
    /// page counts, so it waits for a running apply.
    pub fn status(&self) -> Result<Status, Error> {
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let txn = db.begin_write().map_err(storage("begin write (status)"))?;
        let stats = txn.stats().map_err(storage("database stats"))?;
        txn.abort().map_err(storage("abort (status)"))?;
        let page = u64::try_from(stats.page_size()).unwrap_or(u64::MAX);
        let in_use = stats.allocated_pages().saturating_mul(page);
        let size = match &self.path {
            Some(path) => std::fs::metadata(path)
                .map_err(|e| Error::Storage(format!("stat {}: {e}", path.display())))?
                .len(),
            // A backend's length is not visible through redb; report the
            // allocated pages.
            None => in_use,
        };
        Ok(Status {
            revision: self.revision(),
            compact_revision: self.compact_revision(),
            db_size: i64::try_from(size).unwrap_or(i64::MAX),
            db_size_in_use: i64::try_from(in_use).unwrap_or(i64::MAX),
        })
    }

    /// A consistent full copy of the state (keyspace, history since the
    /// compact revision, leases, meta) as bytes, for Raft snapshots and
    /// `etcdctl snapshot save`. Equal states give equal bytes.
    pub fn snapshot(&self) -> Result<Vec<u8>, Error> {
        self.read(|t| {
            let meta = t
                .meta
                .get(META_RAFT)
                .map_err(storage("meta: get raft meta"))?
                .map(|v| v.value().to_vec());
            snapshot::export(&t.base, meta)
        })
    }

    /// Replaces the whole state with a snapshot's, durably, in one
    /// transaction. Bytes that are not a valid snapshot give
    /// [`Error::InvalidSnapshot`] and change nothing. Subscribers are not
    /// told: whoever restores (Raft installing a snapshot) must resync its
    /// watchers from [`Mvcc::events`].
    pub fn restore(&self, snapshot: &[u8]) -> Result<(), Error> {
        let checked = snapshot::check(snapshot)?;
        let _serial = self
            .apply_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let mut txn = db.begin_write().map_err(storage("begin write (restore)"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(storage("set durability"))?;
        snapshot::write(&txn, &checked)?;
        txn.commit().map_err(storage("commit restore"))?;
        tracing::info!(
            revision = checked.revision(),
            compact_revision = checked.compacted(),
            "keyspace restored from a snapshot"
        );
        self.revision.store(checked.revision(), Ordering::SeqCst);
        self.compact_revision
            .store(checked.compacted(), Ordering::SeqCst);
        Ok(())
    }

    /// Reclaims free space in the database file. Waits for running reads
    /// and applies and holds new ones back until done.
    pub fn defragment(&self) -> Result<(), Error> {
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        let compacted = db.compact().map_err(storage("defragment (redb compact)"))?;
        tracing::info!(compacted, "keyspace database defragmented");
        Ok(())
    }
}
