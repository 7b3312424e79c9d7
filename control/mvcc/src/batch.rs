//! Applying a batch of commands inside one redb write transaction.
//!
//! Each command runs against the tables as the previous commands of the
//! batch left them. A command's writes are collected in a change set and
//! copied into the tables only when the whole command succeeded, so a
//! refused command leaves nothing behind while the batch goes on.

use redb::{Table, WriteTransaction};

use crate::{
    changes::Pending,
    history,
    keyspace::Base,
    lease,
    store::Error,
    tables::{
        HISTORY, KEY_INDEX, KEY_REVS, LEASE_KEYS, LEASES, META, META_RAFT, RevEntry, StoreMeta,
        encode_record, storage,
    },
    txn::{self, Failure},
    types::{Command, CommandResult, Event, EventKind, Outcome, Revision},
};

/// The tables of a write transaction as a view.
pub(crate) type WriteBase<'t> = Base<
    Table<'t, &'static [u8], &'static [u8]>,
    Table<'t, (&'static [u8], i64, u32), &'static [u8]>,
    Table<'t, (i64, u32), &'static [u8]>,
    Table<'t, i64, i64>,
>;

/// How many history records one batch may remove when catching up with a
/// compaction: bounds the time one apply spends on it (etcd also compacts
/// in batches, in the background).
pub(crate) const COMPACTION_BUDGET: usize = 10_000;

/// What a filled batch leaves for the caller once committed.
pub(crate) struct Finished {
    /// The store revision.
    pub revision: Revision,
    /// The compact revision.
    pub compacted: Revision,
    /// The events of the batch, in order.
    pub events: Vec<(Revision, Event)>,
}

/// A write transaction being filled by commands.
pub(crate) struct Batch<'t> {
    /// The keyspace tables (also the view commands read).
    pub base: WriteBase<'t>,
    /// `lease_keys`.
    pub lease_keys: Table<'t, (i64, &'static [u8]), ()>,
    /// `meta`.
    pub meta: Table<'t, &'static str, &'static [u8]>,
    /// Physical compaction progress.
    pub cursor: crate::tables::Pos,
    /// Events of the committed commands, in order.
    pub events: Vec<(Revision, Event)>,
}

impl<'t> Batch<'t> {
    /// Opens the tables (creating them in a new store).
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Self, Error> {
        let meta = txn.open_table(META).map_err(storage("meta: open"))?;
        let state = StoreMeta::read(&meta)?.unwrap_or(StoreMeta::EMPTY);
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
            cursor: state.cursor,
            events: Vec::new(),
        })
    }

    /// Applies one command; a refusal is its result, a storage failure is
    /// the batch's.
    pub(crate) fn apply(&mut self, command: &Command) -> Result<CommandResult, Error> {
        let outcome = match self.run(command) {
            Ok(outcome) => Ok(outcome),
            Err(Failure::Refused(e)) => Err(e),
            Err(Failure::Storage(e)) => return Err(e),
        };
        Ok(CommandResult {
            revision: self.base.current,
            outcome,
        })
    }

    fn run(&mut self, command: &Command) -> Result<Outcome, Failure> {
        match command {
            Command::Put(args) => {
                let (result, pending) = txn::put(&self.base, args)?;
                self.commit(pending)?;
                Ok(Outcome::Put(result))
            }
            Command::Delete(args) => {
                let (result, pending) = txn::delete(&self.base, args)?;
                self.commit(pending)?;
                Ok(Outcome::Delete(result))
            }
            Command::Txn(args) => {
                let (result, pending) = txn::txn(&self.base, args)?;
                self.commit(pending)?;
                Ok(Outcome::Txn(result))
            }
            Command::Compact { revision } => {
                history::compact(self, *revision)?;
                Ok(Outcome::Compact)
            }
            Command::LeaseGrant { id, ttl } => {
                lease::grant(self, *id, *ttl)?;
                Ok(Outcome::LeaseGrant { id: *id, ttl: *ttl })
            }
            Command::LeaseRevoke { id } => {
                lease::revoke(self, *id)?;
                Ok(Outcome::LeaseRevoke)
            }
        }
    }

    /// Copies a succeeded command's writes into the tables: history, the
    /// per-key revision list, live keys and lease attachments; the store's
    /// revision moves to theirs if there was any.
    pub(crate) fn commit(&mut self, pending: Pending) -> Result<(), Error> {
        if pending.writes.is_empty() {
            return Ok(());
        }
        let rev = pending.rev;
        for write in pending.writes {
            let pos = write.meta.pos();
            let (create_revision, version, lease) = match write.kind {
                EventKind::Put => (
                    write.meta.create_revision,
                    write.meta.version,
                    write.meta.lease,
                ),
                EventKind::Delete => (0, 0, 0),
            };
            let record = encode_record(
                &write.key,
                write.kind,
                create_revision,
                version,
                lease,
                write.prev_pos(),
                &write.value,
            );
            self.base
                .history
                .insert(pos, record.as_slice())
                .map_err(storage("history: insert"))?;
            let entry = RevEntry {
                kind: write.kind,
                create_revision,
                version,
                lease,
            };
            self.base
                .key_revs
                .insert(
                    (write.key.as_slice(), pos.0, pos.1),
                    entry.encode().as_slice(),
                )
                .map_err(storage("key_revs: insert"))?;
            match write.kind {
                EventKind::Put => {
                    self.base
                        .key_index
                        .insert(write.key.as_slice(), write.meta.encode().as_slice())
                        .map_err(storage("key_index: insert"))?;
                }
                EventKind::Delete => {
                    self.base
                        .key_index
                        .remove(write.key.as_slice())
                        .map_err(storage("key_index: remove"))?;
                }
            }
            // Attaching a key to a lease detaches it from its previous one;
            // a deleted key leaves its lease.
            let prev_lease = write.prev_lease();
            if prev_lease != 0 {
                self.lease_keys
                    .remove((prev_lease, write.key.as_slice()))
                    .map_err(storage("lease_keys: remove"))?;
            }
            if write.kind == EventKind::Put && lease != 0 {
                self.lease_keys
                    .insert((lease, write.key.as_slice()), ())
                    .map_err(storage("lease_keys: insert"))?;
            }
            self.events.push((rev, write.event()));
        }
        self.base.current = rev;
        Ok(())
    }

    /// Stores the store-wide values and the caller's meta, and lets
    /// physical compaction catch up a little.
    pub(crate) fn finish(mut self, raft_meta: Option<&[u8]>) -> Result<Finished, Error> {
        self.cursor = history::compact_step(&mut self.base, self.cursor, COMPACTION_BUDGET)?;
        StoreMeta {
            revision: self.base.current,
            compacted: self.base.compacted,
            cursor: self.cursor,
        }
        .write(&mut self.meta)?;
        if let Some(raft_meta) = raft_meta {
            self.meta
                .insert(META_RAFT, raft_meta)
                .map_err(storage("meta: insert raft meta"))?;
        }
        Ok(Finished {
            revision: self.base.current,
            compacted: self.base.compacted,
            events: self.events,
        })
    }
}
