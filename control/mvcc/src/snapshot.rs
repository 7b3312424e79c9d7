//! Whole-store snapshots, for Raft snapshots and `etcdctl snapshot`.
//!
//! A snapshot holds the logical state only: revision, compact revision,
//! the caller's meta, leases and the history records compaction keeps (the
//! live keys, their values and lease attachments all follow from
//! history). Compaction garbage not yet removed is left out and the
//! previous-record pointers no read can follow are cleared, so equal
//! states give equal bytes whatever each store's physical history.
//!
//! Layout: 8 bytes of magic, an FNV-1a 64 checksum of the body (little
//! endian), then the body as postcard. Restoring checks the checksum, then
//! that the history is a history this store could have written, before
//! changing anything.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::{
    history,
    keyspace::Base,
    lease::MAX_LEASE_TTL,
    store::Error,
    tables::{
        HISTORY, KEY_INDEX, KEY_REVS, KeyMeta, LEASE_KEYS, LEASES, META, META_RAFT, Pos, Record,
        StoreMeta, storage,
    },
    types::{EventKind, LeaseId, Revision},
};

const MAGIC: &[u8; 8] = b"shoalkv\x01";

#[derive(Serialize, Deserialize)]
struct Body {
    revision: Revision,
    compact_revision: Revision,
    meta: Option<Vec<u8>>,
    leases: Vec<(LeaseId, i64)>,
    history: Vec<(Pos, Record)>,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Serializes the state seen by one read transaction.
pub(crate) fn export<KI, KR, H, L>(
    base: &Base<KI, KR, H, L>,
    meta: Option<Vec<u8>>,
) -> Result<Vec<u8>, Error>
where
    KR: ReadableTable<(&'static [u8], i64, u32), &'static [u8]>,
    H: ReadableTable<(i64, u32), &'static [u8]>,
    L: ReadableTable<i64, i64>,
{
    let compacted = base.compacted;
    let mut leases = Vec::new();
    for entry in base.leases.iter().map_err(storage("leases: scan"))? {
        let (id, ttl) = entry.map_err(storage("leases: read"))?;
        leases.push((id.value(), ttl.value()));
    }
    let mut records = Vec::new();
    for entry in base.history.iter().map_err(storage("history: scan"))? {
        let (k, v) = entry.map_err(storage("history: read"))?;
        let pos = k.value();
        let head = Record::decode_head(v.value())?;
        if history::is_garbage(base, head.key, head.kind, pos, compacted)? {
            continue;
        }
        let mut record = Record::decode(v.value())?;
        record.prev = visible_prev(pos, record.prev, compacted);
        records.push((pos, record));
    }
    let body = postcard::to_allocvec(&Body {
        revision: base.current,
        compact_revision: compacted,
        meta,
        leases,
        history: records,
    })
    .map_err(|e| Error::Storage(format!("snapshot: encode: {e}")))?;
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&fnv1a(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The previous-record pointer a read can follow: none before the compact
/// revision (such records are never replayed), none into compacted history
/// from an event at the compact revision.
fn visible_prev(pos: Pos, prev: Option<Pos>, compacted: Revision) -> Option<Pos> {
    match prev {
        Some(p) if pos.0 >= compacted && !(pos.0 == compacted && p.0 < compacted) => Some(p),
        _ => None,
    }
}

/// A checked snapshot, ready to be written.
pub(crate) struct Checked {
    body: Body,
    live: BTreeMap<Vec<u8>, KeyMeta>,
}

impl Checked {
    /// The revision the snapshot is at.
    pub(crate) fn revision(&self) -> Revision {
        self.body.revision
    }
    /// Its compact revision.
    pub(crate) fn compacted(&self) -> Revision {
        self.body.compact_revision
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidSnapshot(msg.into())
}

/// Decodes and checks a snapshot without touching the store.
pub(crate) fn check(bytes: &[u8]) -> Result<Checked, Error> {
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(invalid("not a shoal keyspace snapshot (bad magic)"));
    }
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&bytes[8..16]);
    let body_bytes = &bytes[16..];
    if u64::from_le_bytes(sum) != fnv1a(body_bytes) {
        return Err(invalid("checksum mismatch (truncated or damaged)"));
    }
    let (body, rest): (Body, _) = postcard::take_from_bytes(body_bytes)
        .map_err(|e| invalid(format!("undecodable body: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid("trailing bytes after the body"));
    }
    let c = body.compact_revision;
    if body.revision < 1 || c < 0 || c > body.revision {
        return Err(invalid(format!(
            "revision {} / compact revision {c} out of order",
            body.revision
        )));
    }
    let mut ids = BTreeSet::new();
    let mut last_id = None;
    for &(id, ttl) in &body.leases {
        if id == 0 || ttl > MAX_LEASE_TTL || last_id.is_some_and(|l| l >= id) {
            return Err(invalid(format!(
                "lease {id} (ttl {ttl}) invalid or out of order"
            )));
        }
        last_id = Some(id);
        ids.insert(id);
    }
    // Each key's last record so far: position, kind, state.
    let mut last: BTreeMap<Vec<u8>, (Pos, EventKind, KeyMeta)> = BTreeMap::new();
    let mut prev_pos: Option<Pos> = None;
    for (pos, r) in &body.history {
        let bad = |why: &str| invalid(format!("history record {pos:?}: {why}"));
        if prev_pos.is_some_and(|p| p >= *pos) {
            return Err(bad("out of order"));
        }
        prev_pos = Some(*pos);
        if pos.0 < 1 || pos.0 > body.revision || r.key.is_empty() {
            return Err(bad("revision out of range or empty key"));
        }
        let before = last.get(&r.key).copied();
        if pos.0 <= c && before.is_some_and(|(p, _, _)| p.0 < c) {
            return Err(bad("compacted record kept"));
        }
        if pos.0 < c && r.kind == EventKind::Delete {
            return Err(bad("compacted delete kept"));
        }
        let expected_prev = match before {
            Some((p, EventKind::Put, _)) => visible_prev(*pos, Some(p), c),
            _ => None,
        };
        if r.prev != expected_prev {
            return Err(bad(
                "previous-record pointer does not match the key's history",
            ));
        }
        match r.kind {
            EventKind::Delete => {
                if r.create_revision != 0 || r.version != 0 || r.lease != 0 || !r.value.is_empty() {
                    return Err(bad("delete with a value"));
                }
                if pos.0 > c && !matches!(before, Some((_, EventKind::Put, _))) {
                    return Err(bad("delete of a key that does not exist"));
                }
            }
            EventKind::Put => {
                let ok = match before {
                    Some((_, EventKind::Put, m)) => {
                        r.create_revision == m.create_revision && r.version == m.version + 1
                    }
                    Some((_, EventKind::Delete, _)) => r.create_revision == pos.0 && r.version == 1,
                    None if pos.0 > c => r.create_revision == pos.0 && r.version == 1,
                    None => r.version >= 1 && r.create_revision >= 1 && r.create_revision <= pos.0,
                };
                if !ok {
                    return Err(bad("create revision or version inconsistent"));
                }
            }
        }
        let meta = KeyMeta {
            create_revision: r.create_revision,
            mod_revision: pos.0,
            sub: pos.1,
            version: r.version,
            lease: r.lease,
        };
        last.insert(r.key.clone(), (*pos, r.kind, meta));
    }
    match body.history.last() {
        Some((pos, _)) if pos.0 == body.revision => {}
        None if body.revision == 1 => {}
        _ => return Err(invalid("revision does not match the last history record")),
    }
    let mut live = BTreeMap::new();
    for (key, (_, kind, meta)) in last {
        if kind == EventKind::Put {
            if meta.lease != 0 && !ids.contains(&meta.lease) {
                return Err(invalid(format!(
                    "key {:?} is attached to missing lease {}",
                    String::from_utf8_lossy(&key),
                    meta.lease
                )));
            }
            live.insert(key, meta);
        }
    }
    Ok(Checked { body, live })
}

/// Replaces every table's content with the snapshot's, inside `txn`.
pub(crate) fn write(txn: &WriteTransaction, snap: &Checked) -> Result<(), Error> {
    txn.delete_table(HISTORY)
        .map_err(storage("history: drop"))?;
    txn.delete_table(KEY_REVS)
        .map_err(storage("key_revs: drop"))?;
    txn.delete_table(KEY_INDEX)
        .map_err(storage("key_index: drop"))?;
    txn.delete_table(LEASES).map_err(storage("leases: drop"))?;
    txn.delete_table(LEASE_KEYS)
        .map_err(storage("lease_keys: drop"))?;
    txn.delete_table(META).map_err(storage("meta: drop"))?;
    {
        let mut history = txn.open_table(HISTORY).map_err(storage("history: open"))?;
        let mut key_revs = txn
            .open_table(KEY_REVS)
            .map_err(storage("key_revs: open"))?;
        for (pos, r) in &snap.body.history {
            history
                .insert(*pos, r.encode().as_slice())
                .map_err(storage("history: insert"))?;
            key_revs
                .insert(
                    (r.key.as_slice(), pos.0, pos.1),
                    r.rev_entry().encode().as_slice(),
                )
                .map_err(storage("key_revs: insert"))?;
        }
    }
    {
        let mut key_index = txn
            .open_table(KEY_INDEX)
            .map_err(storage("key_index: open"))?;
        let mut lease_keys = txn
            .open_table(LEASE_KEYS)
            .map_err(storage("lease_keys: open"))?;
        for (key, meta) in &snap.live {
            key_index
                .insert(key.as_slice(), meta.encode().as_slice())
                .map_err(storage("key_index: insert"))?;
            if meta.lease != 0 {
                lease_keys
                    .insert((meta.lease, key.as_slice()), ())
                    .map_err(storage("lease_keys: insert"))?;
            }
        }
        let mut leases = txn.open_table(LEASES).map_err(storage("leases: open"))?;
        for &(id, ttl) in &snap.body.leases {
            leases.insert(id, ttl).map_err(storage("leases: insert"))?;
        }
    }
    let mut meta = txn.open_table(META).map_err(storage("meta: open"))?;
    StoreMeta {
        revision: snap.body.revision,
        compacted: snap.body.compact_revision,
        cursor: (snap.body.compact_revision, 0),
    }
    .write(&mut meta)?;
    if let Some(m) = &snap.body.meta {
        meta.insert(META_RAFT, m.as_slice())
            .map_err(storage("meta: insert raft meta"))?;
    }
    Ok(())
}

/// A readable dump of a snapshot (values shown by length), for test
/// failure messages.
#[cfg(test)]
pub(crate) fn describe(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let Some(body) = bytes
        .get(16..)
        .and_then(|b| postcard::take_from_bytes::<Body>(b).ok())
        .map(|(b, _)| b)
    else {
        return format!("<{} undecodable bytes>", bytes.len());
    };
    let mut out = format!(
        "revision {} compact {} meta {:?} leases {:?}\n",
        body.revision, body.compact_revision, body.meta, body.leases
    );
    for (pos, r) in &body.history {
        let _ = writeln!(
            out,
            "  {pos:?} {} {:?} create {} version {} lease {} prev {:?} value {}B",
            String::from_utf8_lossy(&r.key),
            r.kind,
            r.create_revision,
            r.version,
            r.lease,
            r.prev,
            r.value.len()
        );
    }
    out
}
