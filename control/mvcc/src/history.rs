//! History: the events watchers replay, and compaction.
//!
//! Compacting at revision C keeps what a read at C or later, or a watch
//! from C, can see: every record at revision C or later, plus each key's
//! last record before C if that is a put (its value at C). Older records
//! and deletes before C become garbage. The `Compact` command only moves
//! the compact revision, which is what every read and watch checks; the
//! garbage is then removed a bounded number of records per applied batch
//! (in revision order, so a key's older records go before the record that
//! hides them). Garbage is never visible: reads at C or later find the
//! kept record first, and snapshots skip it, so two members that removed
//! different amounts of it still produce the same snapshot bytes.

use std::ops::Bound;

use redb::ReadableTable;

use crate::{
    batch::Batch,
    keyspace::{Base, KeyRange},
    store::Error,
    tables::{Pos, Record, storage},
    txn::Failure,
    types::{Event, EventKind, KeyValue, KvError, Revision},
};

/// etcd's compact checks (already compacted there, then future), then
/// moves the compact revision. Does not bump the revision.
pub(crate) fn compact(batch: &mut Batch<'_>, revision: Revision) -> Result<(), Failure> {
    let compacted = batch.base.compacted;
    if revision <= compacted {
        return Err(KvError::Compacted {
            compact_revision: compacted,
        }
        .into());
    }
    if revision > batch.base.current {
        return Err(KvError::FutureRevision.into());
    }
    batch.base.compacted = revision;
    Ok(())
}

/// Whether the record of `key` at `pos` is garbage under compact revision
/// `compacted`: it is before `compacted` and either a delete or not the
/// key's last record at or before `compacted`.
pub(crate) fn is_garbage<KI, KR, H, L>(
    base: &Base<KI, KR, H, L>,
    key: &[u8],
    kind: EventKind,
    pos: Pos,
    compacted: Revision,
) -> Result<bool, Error>
where
    KR: ReadableTable<(&'static [u8], i64, u32), &'static [u8]>,
    H: ReadableTable<(i64, u32), &'static [u8]>,
{
    if pos.0 >= compacted {
        return Ok(false);
    }
    if kind == EventKind::Delete {
        return Ok(true);
    }
    let newer = base
        .key_revs
        .range::<(&[u8], i64, u32)>((
            Bound::Excluded((key, pos.0, pos.1)),
            Bound::Included((key, compacted, u32::MAX)),
        ))
        .map_err(storage("key_revs: seek"))?
        .next()
        .is_some();
    Ok(newer)
}

/// Examines up to `budget` records from `cursor` on, removing garbage;
/// returns the new cursor. History below the cursor holds at most one
/// record per key (what a compact revision kept when the cursor passed),
/// and it is removed when the cursor reaches the key's next record.
pub(crate) fn compact_step(
    base: &mut crate::batch::WriteBase<'_>,
    cursor: Pos,
    budget: usize,
) -> Result<Pos, Error> {
    let compacted = base.compacted;
    if cursor.0 >= compacted {
        return Ok(cursor);
    }
    // Read a slice of history first: redb tables cannot be changed while
    // iterated.
    let mut heads: Vec<(Pos, Vec<u8>, EventKind)> = Vec::new();
    {
        let iter = base
            .history
            .range::<(i64, u32)>((Bound::Included(cursor), Bound::Excluded((compacted, 0))))
            .map_err(storage("history: scan for compaction"))?;
        for entry in iter.take(budget) {
            let (k, v) = entry.map_err(storage("history: read for compaction"))?;
            let head = Record::decode_head(v.value())?;
            heads.push((k.value(), head.key.to_vec(), head.kind));
        }
    }
    let done = heads.len() < budget;
    let mut next = cursor;
    for (pos, key, kind) in heads {
        // Whatever this record is, the key's older records are garbage
        // now. Usually there is one: the record an earlier, lower compact
        // revision kept, which the cursor passed then.
        let older: Vec<Pos> = base
            .key_revs
            .range::<(&[u8], i64, u32)>((
                Bound::Included((key.as_slice(), i64::MIN, 0)),
                Bound::Excluded((key.as_slice(), pos.0, pos.1)),
            ))
            .map_err(storage("key_revs: scan for compaction"))?
            .map(|e| {
                e.map(|(k, _)| {
                    let (_, rev, sub) = k.value();
                    (rev, sub)
                })
            })
            .collect::<Result<_, _>>()
            .map_err(storage("key_revs: read for compaction"))?;
        for old in older {
            remove(base, &key, old)?;
        }
        if is_garbage(base, &key, kind, pos, compacted)? {
            remove(base, &key, pos)?;
        }
        next = (pos.0, pos.1.saturating_add(1));
    }
    if done {
        next = (compacted, 0);
        tracing::debug!(compact_revision = compacted, "history compacted");
    }
    Ok(next)
}

fn remove(base: &mut crate::batch::WriteBase<'_>, key: &[u8], pos: Pos) -> Result<(), Error> {
    base.history
        .remove(pos)
        .map_err(storage("history: remove"))?;
    base.key_revs
        .remove((key, pos.0, pos.1))
        .map_err(storage("key_revs: remove"))?;
    Ok(())
}

/// Events with revision in `[start, end]` (`end` <= 0: no upper bound) for
/// keys in `range`, in history order, each with the key's previous value.
///
/// A watch from `start` fails when `start` < the compact revision (etcd's
/// `watcherGroup.chooseAll` compares `minRev < compactRev`); from the
/// compact revision itself every event is there, since compaction keeps
/// all records at that revision. The previous value of an event at the
/// compact revision is given only if it is itself at that revision (etcd
/// reads it at `mod_revision - 1`, which is compacted).
pub(crate) fn events<KI, KR, H, L>(
    base: &Base<KI, KR, H, L>,
    start: Revision,
    end: Revision,
    range: &KeyRange,
) -> Result<Result<Vec<(Revision, Event)>, KvError>, Error>
where
    KR: ReadableTable<(&'static [u8], i64, u32), &'static [u8]>,
    H: ReadableTable<(i64, u32), &'static [u8]>,
{
    let compacted = base.compacted;
    if start < compacted {
        return Ok(Err(KvError::Compacted {
            compact_revision: compacted,
        }));
    }
    let upper = if end <= 0 {
        Bound::Unbounded
    } else {
        Bound::Included((end, u32::MAX))
    };
    if end > 0 && end < start {
        return Ok(Ok(Vec::new()));
    }
    let iter = base
        .history
        .range::<(i64, u32)>((Bound::Included((start, 0)), upper))
        .map_err(storage("history: scan"))?;
    let mut out = Vec::new();
    for entry in iter {
        let (k, v) = entry.map_err(storage("history: read"))?;
        let pos = k.value();
        if !range.contains(Record::decode_head(v.value())?.key) {
            continue;
        }
        let record = Record::decode(v.value())?;
        let prev_kv = match record.prev {
            Some(prev) if !(pos.0 <= compacted && prev.0 < compacted) => {
                Some(prev_kv(base, &record.key, prev)?)
            }
            _ => None,
        };
        let kv = match record.kind {
            EventKind::Put => record.to_kv(pos),
            EventKind::Delete => KeyValue {
                key: record.key.clone(),
                mod_revision: pos.0,
                ..KeyValue::default()
            },
        };
        out.push((
            pos.0,
            Event {
                kind: record.kind,
                kv,
                prev_kv,
            },
        ));
    }
    Ok(Ok(out))
}

fn prev_kv<KI, KR, H, L>(
    base: &Base<KI, KR, H, L>,
    key: &[u8],
    prev: Pos,
) -> Result<KeyValue, Error>
where
    KR: ReadableTable<(&'static [u8], i64, u32), &'static [u8]>,
    H: ReadableTable<(i64, u32), &'static [u8]>,
{
    let record = base
        .record(prev)?
        .filter(|r| r.key == key && r.kind == EventKind::Put)
        .ok_or_else(|| {
            Error::Corrupt(format!(
                "history: previous record {prev:?} of key {:?} missing",
                String::from_utf8_lossy(key)
            ))
        })?;
    Ok(record.to_kv(prev))
}
