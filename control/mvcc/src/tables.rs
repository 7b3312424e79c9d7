//! The redb tables and their byte layouts.
//!
//! | table        | key                          | value                                   |
//! |--------------|------------------------------|-----------------------------------------|
//! | `history`    | `(revision, sub)`            | a [`Record`]: key, put/delete, create revision, version, lease, pointer to the previous record of the key, value |
//! | `key_revs`   | `(key, revision, sub)`       | a [`RevEntry`]: put/delete, create revision, version, lease |
//! | `key_index`  | `key`                        | a [`KeyMeta`] of the live (not deleted) key |
//! | `leases`     | `lease id`                   | granted TTL                             |
//! | `lease_keys` | `(lease id, key)`            | `()`                                    |
//! | `meta`       | name                         | bytes (see the `META_*` names)          |
//!
//! `history` is etcd's `key` bucket: every change, in revision order, so a
//! watch replays a revision range with one sequential scan. `key_revs` is
//! etcd's in-memory `keyIndex`, kept on disk so a store of a million keys
//! opens instantly: a reverse seek in it finds a key's state at any
//! revision. `key_index` holds only live keys, so a read at the current
//! revision (nearly every read) walks exactly the keys it returns and never
//! touches history for keys-only or count-only reads.
//!
//! The small records are fixed-width big-endian, not postcard: they are
//! read on every lookup and a fixed layout decodes without allocation. A
//! history record ends with the raw value so a value of 1.5 MiB is copied
//! once, and the head (key, kind) decodes without touching the value.

use redb::TableDefinition;

use crate::{
    store::Error,
    types::{EventKind, KeyValue, LeaseId, Revision},
};

/// A position in history: etcd's `revision{main, sub}`. Writes of one
/// revision (a transaction) get subs 0, 1, ... in the order they happened.
pub(crate) type Pos = (Revision, u32);

/// Every change: `(revision, sub)` -> [`Record`].
pub(crate) const HISTORY: TableDefinition<(i64, u32), &[u8]> = TableDefinition::new("history");
/// Per-key revision list: `(key, revision, sub)` -> [`RevEntry`].
pub(crate) const KEY_REVS: TableDefinition<(&[u8], i64, u32), &[u8]> =
    TableDefinition::new("key_revs");
/// Live keys: `key` -> [`KeyMeta`].
pub(crate) const KEY_INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("key_index");
/// Leases: `id` -> granted TTL.
pub(crate) const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");
/// Keys attached to leases: `(id, key)`.
pub(crate) const LEASE_KEYS: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("lease_keys");
/// Store-wide values.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Layout version; a store written with another one is refused.
pub(crate) const META_FORMAT: &str = "format";
/// The current revision (i64).
pub(crate) const META_REVISION: &str = "revision";
/// The compact revision (i64); 0 = never compacted.
pub(crate) const META_COMPACT_REVISION: &str = "compact_revision";
/// How far physical compaction got (a [`Pos`]): history before it holds
/// only records that compaction keeps.
pub(crate) const META_COMPACT_CURSOR: &str = "compact_cursor";
/// The caller's opaque blob (Raft's applied log id and membership).
pub(crate) const META_RAFT: &str = "raft_meta";

/// The only layout this build reads and writes.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Builds a closure mapping any redb error to [`Error::Storage`] naming
/// what was being done, for `map_err`.
pub(crate) fn storage<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Storage(format!("{what}: {e}"))
}

/// Encoding of `EventKind` in records.
fn kind_byte(kind: EventKind) -> u8 {
    match kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    }
}

fn kind_from(b: u8, table: &str) -> Result<EventKind, Error> {
    match b {
        0 => Ok(EventKind::Put),
        1 => Ok(EventKind::Delete),
        other => Err(Error::Corrupt(format!(
            "{table}: unknown event kind {other}"
        ))),
    }
}

/// A cursor over a byte slice that reports truncation as corruption.
struct Reader<'a> {
    buf: &'a [u8],
    table: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(Error::Corrupt(format!("{}: record truncated", self.table)));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }
    fn i64(&mut self) -> Result<i64, Error> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_be_bytes(b))
    }
    fn end(&self) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Corrupt(format!(
                "{}: trailing bytes in record",
                self.table
            )))
        }
    }
}

/// A live key's latest state (`key_index` value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyMeta {
    /// Revision of the creation of this generation of the key.
    pub create_revision: Revision,
    /// Revision of the last change.
    pub mod_revision: Revision,
    /// Sub-revision of the last change (its place in `history`).
    pub sub: u32,
    /// Changes since creation, 1 after creation.
    pub version: i64,
    /// Attached lease, 0 if none.
    pub lease: LeaseId,
}

impl KeyMeta {
    const LEN: usize = 8 + 8 + 4 + 8 + 8;

    /// Where this state's record sits in history.
    pub(crate) fn pos(&self) -> Pos {
        (self.mod_revision, self.sub)
    }

    /// The key-value this state describes.
    pub(crate) fn to_kv(self, key: &[u8], value: Vec<u8>) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value,
            lease: self.lease,
        }
    }

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0..8].copy_from_slice(&self.create_revision.to_be_bytes());
        out[8..16].copy_from_slice(&self.mod_revision.to_be_bytes());
        out[16..20].copy_from_slice(&self.sub.to_be_bytes());
        out[20..28].copy_from_slice(&self.version.to_be_bytes());
        out[28..36].copy_from_slice(&self.lease.to_be_bytes());
        out
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<Self, Error> {
        let mut r = Reader {
            buf,
            table: "key_index",
        };
        let meta = Self {
            create_revision: r.i64()?,
            mod_revision: r.i64()?,
            sub: r.u32()?,
            version: r.i64()?,
            lease: r.i64()?,
        };
        r.end()?;
        Ok(meta)
    }
}

/// One entry of a key's revision list (`key_revs` value); the revision and
/// sub are in the table key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RevEntry {
    /// Put or delete.
    pub kind: EventKind,
    /// For a put: the key's create revision; 0 for a delete.
    pub create_revision: Revision,
    /// For a put: the key's version; 0 for a delete.
    pub version: i64,
    /// For a put: the key's lease; 0 for a delete.
    pub lease: LeaseId,
}

impl RevEntry {
    const LEN: usize = 1 + 8 + 8 + 8;

    /// The key's state at this entry, if it is a put.
    pub(crate) fn live(&self, pos: Pos) -> Option<KeyMeta> {
        match self.kind {
            EventKind::Delete => None,
            EventKind::Put => Some(KeyMeta {
                create_revision: self.create_revision,
                mod_revision: pos.0,
                sub: pos.1,
                version: self.version,
                lease: self.lease,
            }),
        }
    }

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = kind_byte(self.kind);
        out[1..9].copy_from_slice(&self.create_revision.to_be_bytes());
        out[9..17].copy_from_slice(&self.version.to_be_bytes());
        out[17..25].copy_from_slice(&self.lease.to_be_bytes());
        out
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<Self, Error> {
        let mut r = Reader {
            buf,
            table: "key_revs",
        };
        let entry = Self {
            kind: kind_from(r.u8()?, "key_revs")?,
            create_revision: r.i64()?,
            version: r.i64()?,
            lease: r.i64()?,
        };
        r.end()?;
        Ok(entry)
    }
}

/// One change (`history` value).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Record {
    /// The key.
    pub key: Vec<u8>,
    /// Put or delete.
    pub kind: EventKind,
    /// For a put: create revision; 0 for a delete.
    pub create_revision: Revision,
    /// For a put: version; 0 for a delete.
    pub version: i64,
    /// For a put: lease; 0 for a delete.
    pub lease: LeaseId,
    /// Where the key's previous state (a put) is in history, if the key
    /// existed just before this change: the watch's `prev_kv`.
    pub prev: Option<Pos>,
    /// For a put: the value; empty for a delete.
    pub value: Vec<u8>,
}

/// The start of a [`Record`], decoded without copying the value.
pub(crate) struct RecordHead<'a> {
    /// The key.
    pub key: &'a [u8],
    /// Put or delete.
    pub kind: EventKind,
}

impl Record {
    /// The per-key entry matching this record.
    pub(crate) fn rev_entry(&self) -> RevEntry {
        RevEntry {
            kind: self.kind,
            create_revision: self.create_revision,
            version: self.version,
            lease: self.lease,
        }
    }

    /// The key-value as a watcher sees it (etcd's shape for a delete: the
    /// key and the deleting revision only).
    pub(crate) fn to_kv(&self, pos: Pos) -> KeyValue {
        KeyValue {
            key: self.key.clone(),
            create_revision: self.create_revision,
            mod_revision: pos.0,
            version: self.version,
            value: self.value.clone(),
            lease: self.lease,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        encode_record(
            &self.key,
            self.kind,
            self.create_revision,
            self.version,
            self.lease,
            self.prev,
            &self.value,
        )
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<Self, Error> {
        let (head, rest) = decode_parts(buf)?;
        Ok(Self {
            key: head.1.to_vec(),
            kind: head.0,
            create_revision: rest.create_revision,
            version: rest.version,
            lease: rest.lease,
            prev: rest.prev,
            value: rest.value.to_vec(),
        })
    }

    pub(crate) fn decode_head(buf: &[u8]) -> Result<RecordHead<'_>, Error> {
        let ((kind, key), _) = decode_parts(buf)?;
        Ok(RecordHead { key, kind })
    }
}

/// Encodes a history record from borrowed parts (the apply path holds the
/// value in its pending write and should not clone it to encode it).
pub(crate) fn encode_record(
    key: &[u8],
    kind: EventKind,
    create_revision: Revision,
    version: i64,
    lease: LeaseId,
    prev: Option<Pos>,
    value: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 4 + key.len() + 8 * 3 + 13 + value.len());
    out.push(kind_byte(kind));
    // Key lengths are bounded by the request size limit far below 4 GiB.
    out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&create_revision.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&lease.to_be_bytes());
    match prev {
        None => out.extend_from_slice(&[0u8; 13]),
        Some((rev, sub)) => {
            out.push(1);
            out.extend_from_slice(&rev.to_be_bytes());
            out.extend_from_slice(&sub.to_be_bytes());
        }
    }
    out.extend_from_slice(value);
    out
}

struct RecordRest<'a> {
    create_revision: Revision,
    version: i64,
    lease: LeaseId,
    prev: Option<Pos>,
    value: &'a [u8],
}

type RecordParts<'a> = ((EventKind, &'a [u8]), RecordRest<'a>);

fn decode_parts(buf: &[u8]) -> Result<RecordParts<'_>, Error> {
    let mut r = Reader {
        buf,
        table: "history",
    };
    let kind = kind_from(r.u8()?, "history")?;
    let key_len = r.u32()? as usize;
    let key = r.take(key_len)?;
    let create_revision = r.i64()?;
    let version = r.i64()?;
    let lease = r.i64()?;
    let has_prev = r.u8()?;
    let prev_rev = r.i64()?;
    let prev_sub = r.u32()?;
    let prev = match has_prev {
        0 => None,
        1 => Some((prev_rev, prev_sub)),
        other => return Err(Error::Corrupt(format!("history: bad prev flag {other}"))),
    };
    Ok((
        (kind, key),
        RecordRest {
            create_revision,
            version,
            lease,
            prev,
            value: r.buf,
        },
    ))
}

/// Reads an i64 stored in `meta`.
pub(crate) fn decode_i64(name: &str, buf: &[u8]) -> Result<i64, Error> {
    let b: [u8; 8] = buf
        .try_into()
        .map_err(|_| Error::Corrupt(format!("meta {name}: expected 8 bytes, got {}", buf.len())))?;
    Ok(i64::from_be_bytes(b))
}

/// Reads a [`Pos`] stored in `meta`.
pub(crate) fn decode_pos(name: &str, buf: &[u8]) -> Result<Pos, Error> {
    if buf.len() != 12 {
        return Err(Error::Corrupt(format!(
            "meta {name}: expected 12 bytes, got {}",
            buf.len()
        )));
    }
    let (rev, sub) = buf.split_at(8);
    let mut s = [0u8; 4];
    s.copy_from_slice(sub);
    Ok((decode_i64(name, rev)?, u32::from_be_bytes(s)))
}

/// Encodes a [`Pos`] for `meta`.
pub(crate) fn encode_pos(pos: Pos) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&pos.0.to_be_bytes());
    out[8..].copy_from_slice(&pos.1.to_be_bytes());
    out
}

/// The store-wide values every transaction starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoreMeta {
    /// The current revision.
    pub revision: Revision,
    /// The compact revision (0 = never compacted).
    pub compacted: Revision,
    /// How far physical compaction got.
    pub cursor: Pos,
}

impl StoreMeta {
    /// A fresh store: etcd's empty store is at revision 1.
    pub(crate) const EMPTY: StoreMeta = StoreMeta {
        revision: 1,
        compacted: 0,
        cursor: (0, 0),
    };

    /// Reads the values from `meta`; `None` if the store was never
    /// initialised.
    pub(crate) fn read(
        meta: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Option<Self>, Error> {
        let get = |name: &'static str| -> Result<Option<Vec<u8>>, Error> {
            Ok(meta
                .get(name)
                .map_err(storage("meta: get"))?
                .map(|v| v.value().to_vec()))
        };
        let Some(format) = get(META_FORMAT)? else {
            return Ok(None);
        };
        if format != FORMAT_VERSION.to_be_bytes() {
            return Err(Error::Corrupt(format!(
                "meta format: this build reads layout {FORMAT_VERSION}, the store has {format:?}"
            )));
        }
        let need = |name: &'static str| -> Result<Vec<u8>, Error> {
            get(name)?.ok_or_else(|| Error::Corrupt(format!("meta {name}: missing")))
        };
        Ok(Some(Self {
            revision: decode_i64(META_REVISION, &need(META_REVISION)?)?,
            compacted: decode_i64(META_COMPACT_REVISION, &need(META_COMPACT_REVISION)?)?,
            cursor: decode_pos(META_COMPACT_CURSOR, &need(META_COMPACT_CURSOR)?)?,
        }))
    }

    /// Writes the values into `meta`.
    pub(crate) fn write(
        &self,
        meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    ) -> Result<(), Error> {
        let w = "meta: insert";
        meta.insert(META_FORMAT, FORMAT_VERSION.to_be_bytes().as_slice())
            .map_err(storage(w))?;
        meta.insert(META_REVISION, self.revision.to_be_bytes().as_slice())
            .map_err(storage(w))?;
        meta.insert(
            META_COMPACT_REVISION,
            self.compacted.to_be_bytes().as_slice(),
        )
        .map_err(storage(w))?;
        meta.insert(META_COMPACT_CURSOR, encode_pos(self.cursor).as_slice())
            .map_err(storage(w))?;
        Ok(())
    }
}
