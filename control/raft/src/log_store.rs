//! The Raft log on redb (`raft-log.redb`): entries keyed by index, plus the
//! vote, the committed log id and the last purged log id.
//!
//! Every write is one redb transaction. `append` writes its whole batch in
//! one durable transaction and reports the entries flushed only after the
//! commit returned: one fsync per append.
//!
//! Group commit does not happen here: openraft 0.9 calls the log store
//! from its core task only, one call at a time, and waits for an append's
//! flush before it runs its next command, so no two appends are ever
//! pending together to share an fsync (a writer thread gathering them
//! would always find one). Client writes are batched before they reach
//! openraft instead (`proposal`): each append then carries a batch, and a
//! follower's append carries every entry of an AppendEntries.

#![expect(
    clippy::result_large_err,
    reason = "openraft's storage traits return its large StorageError by value"
)]

#[cfg(test)]
mod tests;

use std::{
    fmt::Debug,
    io,
    ops::{Bound, RangeBounds},
    path::Path,
    sync::{Arc, Weak},
    time::Duration,
};

use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader, StorageIOError,
    storage::{LogFlushed, RaftLogStorage},
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    faults::MemberFaults,
    types::{
        NodeId, TypeConfig,
        typ::{Entry, LogId, StorageError, Vote},
    },
};

/// Log entries by index, postcard-encoded.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
/// Raft's persistent state other than entries, postcard-encoded by key.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged_log_id";

/// The Raft log. Clones share the database (the log reader is a clone).
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<Database>,
    /// A slow disk, in fault campaigns.
    faults: Option<MemberFaults>,
}

impl LogStore {
    /// Opens or creates the log database at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self, redb::Error> {
        Self::init(Database::create(path)?)
    }

    /// Opens or creates the log on a redb storage backend (a simulated
    /// disk, in crash tests).
    #[cfg(test)]
    pub(crate) fn open_with_backend(
        backend: impl redb::StorageBackend,
    ) -> Result<Self, redb::Error> {
        Self::init(redb::Builder::new().create_with_backend(backend)?)
    }

    fn init(db: Database) -> Result<Self, redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(LOGS)?;
        txn.open_table(STATE)?;
        txn.commit()?;
        Ok(Self {
            db: Arc::new(db),
            faults: None,
        })
    }

    /// The same log, its durable writes slowed down by `faults`.
    pub(crate) fn with_faults(self, faults: Option<MemberFaults>) -> Self {
        Self { faults, ..self }
    }

    /// How much longer than the disk a durable write takes now.
    fn fsync_delay(&self) -> Duration {
        self.faults
            .as_ref()
            .map(|f| f.faults.fsync_delay(f.id))
            .unwrap_or_default()
    }

    /// A handle that does not keep the database open, to learn when every
    /// clone is gone (the file is closed).
    pub(crate) fn downgrade(&self) -> Weak<Database> {
        Arc::downgrade(&self.db)
    }

    fn read_state<T: DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        let io = |e: AnyError| StorageIOError::new(subject.clone(), ErrorVerb::Read, e);
        let txn = self.db.begin_read().map_err(|e| io(AnyError::new(&e)))?;
        let table = txn.open_table(STATE).map_err(|e| io(AnyError::new(&e)))?;
        let Some(bytes) = table.get(key).map_err(|e| io(AnyError::new(&e)))? else {
            return Ok(None);
        };
        let value = postcard::from_bytes(bytes.value())
            .map_err(|e| io(AnyError::new(&e).add_context(|| format!("decoding {key}"))))?;
        Ok(Some(value))
    }

    /// Writes one state key in its own transaction, off the async runtime.
    async fn write_state<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes = postcard::to_stdvec(value).map_err(|e| {
            StorageIOError::new(subject.clone(), ErrorVerb::Write, AnyError::new(&e))
        })?;
        let db = self.db.clone();
        let slow = if matches!(durability, Durability::Immediate) {
            self.fsync_delay()
        } else {
            Duration::ZERO
        };
        blocking(subject.clone(), ErrorVerb::Write, move || {
            let mut txn = db.begin_write()?;
            txn.set_durability(durability)?;
            txn.open_table(STATE)?.insert(key, bytes.as_slice())?;
            txn.commit()?;
            slow_disk(slow);
            Ok(())
        })
        .await
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let io = |e: AnyError| StorageIOError::read_logs(e);
        let txn = self.db.begin_read().map_err(|e| io(AnyError::new(&e)))?;
        let table = txn.open_table(LOGS).map_err(|e| io(AnyError::new(&e)))?;
        let Some((_, bytes)) = table.last().map_err(|e| io(AnyError::new(&e)))? else {
            return Ok(None);
        };
        let entry: Entry = decode_entry(bytes.value())?;
        Ok(Some(entry.log_id))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let io = |e: AnyError| StorageIOError::read_logs(e);
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let txn = self.db.begin_read().map_err(|e| io(AnyError::new(&e)))?;
        let table = txn.open_table(LOGS).map_err(|e| io(AnyError::new(&e)))?;
        let mut entries = Vec::new();
        for item in table.range(bounds).map_err(|e| io(AnyError::new(&e)))? {
            let (index, bytes) = item.map_err(|e| io(AnyError::new(&e)))?;
            let entry = decode_entry(bytes.value())?;
            if entry.log_id.index != index.value() {
                return Err(io(AnyError::error(format!(
                    "log entry stored at index {} has log id {}",
                    index.value(),
                    entry.log_id
                )))
                .into());
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_state(LAST_PURGED, ErrorSubject::Logs)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_state(VOTE, vote, Durability::Immediate, ErrorSubject::Vote)
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_state(VOTE, ErrorSubject::Vote)
    }

    /// Not fsynced: the committed log id only has to be a lower bound after
    /// a crash, and the next append or vote makes it durable.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_state(COMMITTED, &committed, Durability::None, ErrorSubject::Store)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_state::<Option<LogId>>(COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let batch = entries
            .into_iter()
            .map(|entry| {
                postcard::to_stdvec(&entry)
                    .map(|bytes| (entry.log_id.index, bytes))
                    .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let db = self.db.clone();
        let slow = self.fsync_delay();
        let written = blocking(ErrorSubject::Logs, ErrorVerb::Write, move || {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut table = txn.open_table(LOGS)?;
                for (index, bytes) in &batch {
                    table.insert(index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            slow_disk(slow);
            Ok(())
        })
        .await;
        match &written {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(io::Error::other(e.to_string()))),
        }
        written
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        let slow = self.fsync_delay();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.open_table(LOGS)?
                .retain_in(log_id.index.., |_, _| false)?;
            txn.commit()?;
            slow_disk(slow);
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let purged = postcard::to_stdvec(&log_id)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.open_table(STATE)?
                .insert(LAST_PURGED, purged.as_slice())?;
            txn.open_table(LOGS)?
                .retain_in(..=log_id.index, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }
}

/// A slow disk's fsync: the write is durable, the caller hears of it late.
fn slow_disk(delay: Duration) {
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageIOError::read_logs(AnyError::new(&e)).into())
}

/// Runs a redb write on the blocking pool: commits fsync.
async fn blocking<F>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    f: F,
) -> Result<(), StorageError>
where
    F: FnOnce() -> Result<(), redb::Error> + Send + 'static,
{
    let io = |e: AnyError| StorageError::from(StorageIOError::new(subject.clone(), verb, e));
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(io(AnyError::new(&e))),
        Err(e) => Err(io(AnyError::new(&e))),
    }
}
