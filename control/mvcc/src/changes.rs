//! The change set of one command being applied, kept in memory until the
//! command is known to succeed.
//!
//! A command either applies whole or not at all (a txn whose third op turns
//! out to be refused must leave no trace), so its writes are collected here
//! and only copied into the redb tables once it succeeded. [`Overlay`] lays
//! the change set over the tables as a [`View`], so reads inside a txn see
//! the txn's earlier writes at the txn's revision, as in etcd.

use std::collections::BTreeMap;

use crate::{
    keyspace::{KeyRange, View, Visit},
    store::Error,
    tables::{KeyMeta, Pos},
    types::{Event, EventKind, KeyValue, LeaseId, Revision},
};

/// One write of a command.
#[derive(Clone, Debug)]
pub(crate) struct Write {
    /// The key.
    pub key: Vec<u8>,
    /// Put or delete.
    pub kind: EventKind,
    /// The key's state after a put; for a delete only `mod_revision` and
    /// `sub` are set.
    pub meta: KeyMeta,
    /// The value written (empty for a delete).
    pub value: Vec<u8>,
    /// The key's state and value just before this write, if it existed.
    pub prev: Option<(KeyMeta, Vec<u8>)>,
}

impl Write {
    /// Where the previous state sits in history.
    pub(crate) fn prev_pos(&self) -> Option<Pos> {
        self.prev.as_ref().map(|(m, _)| m.pos())
    }

    /// The lease the key was attached to before this write.
    pub(crate) fn prev_lease(&self) -> LeaseId {
        self.prev.as_ref().map_or(0, |(m, _)| m.lease)
    }

    /// The watch event for this write.
    pub(crate) fn event(&self) -> Event {
        let kv = match self.kind {
            EventKind::Put => self.meta.to_kv(&self.key, self.value.clone()),
            EventKind::Delete => KeyValue {
                key: self.key.clone(),
                mod_revision: self.meta.mod_revision,
                ..KeyValue::default()
            },
        };
        Event {
            kind: self.kind,
            kv,
            prev_kv: self
                .prev
                .as_ref()
                .map(|(m, v)| m.to_kv(&self.key, v.clone())),
        }
    }
}

/// The writes of one command, all at revision `rev`.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The revision the writes get: the store's revision + 1.
    pub rev: Revision,
    /// In order; a write's index is its sub-revision.
    pub writes: Vec<Write>,
    /// Each written key's state after the writes (`None` = deleted).
    keys: BTreeMap<Vec<u8>, Option<KeyMeta>>,
}

/// A [`View`] of the tables with a command's pending writes on top.
pub(crate) struct Overlay<'a, B: View> {
    base: &'a B,
    pending: Pending,
}

impl<'a, B: View> Overlay<'a, B> {
    /// An empty change set over `base`.
    pub(crate) fn new(base: &'a B) -> Self {
        Self {
            pending: Pending {
                rev: base.current() + 1,
                writes: Vec::new(),
                keys: BTreeMap::new(),
            },
            base,
        }
    }

    /// The writes collected so far.
    pub(crate) fn into_pending(self) -> Pending {
        self.pending
    }

    fn next_sub(&self) -> Result<u32, Error> {
        u32::try_from(self.pending.writes.len())
            .map_err(|_| Error::Storage("too many writes in one revision".into()))
    }

    /// Puts `key` (etcd's `storeTxnWrite.put`): a new generation starts at
    /// this revision with version 1 if the key does not exist now.
    pub(crate) fn put(
        &mut self,
        key: &[u8],
        value: Vec<u8>,
        lease: LeaseId,
        prev: Option<(KeyMeta, Vec<u8>)>,
    ) -> Result<(), Error> {
        let rev = self.pending.rev;
        let (create_revision, version) = match &prev {
            Some((m, _)) => (m.create_revision, m.version + 1),
            None => (rev, 1),
        };
        let meta = KeyMeta {
            create_revision,
            mod_revision: rev,
            sub: self.next_sub()?,
            version,
            lease,
        };
        self.pending.writes.push(Write {
            key: key.to_vec(),
            kind: EventKind::Put,
            meta,
            value,
            prev,
        });
        self.pending.keys.insert(key.to_vec(), Some(meta));
        Ok(())
    }

    /// Deletes `key`, which exists with state `prev`.
    pub(crate) fn delete(&mut self, key: &[u8], prev: (KeyMeta, Vec<u8>)) -> Result<(), Error> {
        let meta = KeyMeta {
            create_revision: 0,
            mod_revision: self.pending.rev,
            sub: self.next_sub()?,
            version: 0,
            lease: 0,
        };
        self.pending.writes.push(Write {
            key: key.to_vec(),
            kind: EventKind::Delete,
            meta,
            value: Vec::new(),
            prev: Some(prev),
        });
        self.pending.keys.insert(key.to_vec(), None);
        Ok(())
    }

    fn has_writes(&self) -> bool {
        !self.pending.writes.is_empty()
    }
}

impl<B: View> View for Overlay<'_, B> {
    fn current(&self) -> Revision {
        if self.has_writes() {
            self.pending.rev
        } else {
            self.base.current()
        }
    }

    fn compacted(&self) -> Revision {
        self.base.compacted()
    }

    fn get(&self, key: &[u8], rev: Revision) -> Result<Option<KeyMeta>, Error> {
        if self.has_writes() && rev >= self.pending.rev {
            if let Some(state) = self.pending.keys.get(key) {
                return Ok(*state);
            }
            return self.base.get(key, self.base.current());
        }
        self.base.get(key, rev)
    }

    fn scan(&self, range: &KeyRange, rev: Revision, visit: &mut Visit<'_>) -> Result<(), Error> {
        if !self.has_writes() || rev < self.pending.rev {
            return self.base.scan(range, rev, visit);
        }
        if let Some(key) = range.single() {
            if let Some(meta) = self.get(key, rev)? {
                visit(key, &meta)?;
            }
            return Ok(());
        }
        let Some(bounds) = range.bounds() else {
            return Ok(());
        };
        // Merge the base's keys with the pending ones; a pending state
        // replaces the base's (and a pending delete hides it).
        let mut mine = self.pending.keys.range::<[u8], _>(bounds).peekable();
        let mut stopped = false;
        self.base
            .scan(range, self.base.current(), &mut |key, meta| {
                while let Some((k, state)) = mine.peek() {
                    match k.as_slice().cmp(key) {
                        std::cmp::Ordering::Less => {
                            if let Some(m) = state
                                && !visit(k, m)?
                            {
                                stopped = true;
                                return Ok(false);
                            }
                            mine.next();
                        }
                        std::cmp::Ordering::Equal => {
                            let go_on = match state {
                                Some(m) => visit(k, m)?,
                                None => true,
                            };
                            mine.next();
                            stopped = !go_on;
                            return Ok(go_on);
                        }
                        std::cmp::Ordering::Greater => break,
                    }
                }
                let go_on = visit(key, meta)?;
                stopped = !go_on;
                Ok(go_on)
            })?;
        if !stopped {
            for (k, state) in mine {
                if let Some(m) = state
                    && !visit(k, m)?
                {
                    break;
                }
            }
        }
        Ok(())
    }

    fn value(&self, key: &[u8], meta: &KeyMeta) -> Result<Vec<u8>, Error> {
        if self.has_writes() && meta.mod_revision == self.pending.rev {
            let write = usize::try_from(meta.sub)
                .ok()
                .and_then(|i| self.pending.writes.get(i))
                .filter(|w| w.key == key)
                .ok_or_else(|| Error::Corrupt(format!("pending write {} missing", meta.sub)))?;
            return Ok(write.value.clone());
        }
        self.base.value(key, meta)
    }

    fn lease_exists(&self, id: LeaseId) -> Result<bool, Error> {
        self.base.lease_exists(id)
    }
}
