//! Reading the keyspace: etcd's key ranges, a [`View`] of the keys at any
//! revision, and the Range request on top of it.
//!
//! The same range code serves plain reads (a view over a redb read
//! transaction) and reads inside a transaction being applied (a view over
//! the write transaction plus the transaction's own pending writes, see
//! `changes`), which is how reads in a txn see its earlier writes.

use std::{cmp::Ordering, ops::Bound};

use redb::ReadableTable;

use crate::{
    store::Error,
    tables::{KeyMeta, Pos, Record, RevEntry, storage},
    types::{KeyValue, KvError, LeaseId, RangeArgs, RangeResult, Revision, SortOrder, SortTarget},
};

/// Bounds of a key range for an ordered map.
pub(crate) type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// A key range with etcd's `range_end` rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyRange {
    start: Vec<u8>,
    end: End,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// `range_end` empty: just `start`.
    Single,
    /// `range_end` = `[0]`: every key >= `start`.
    Unbounded,
    /// `[start, end)`.
    Before(Vec<u8>),
}

impl KeyRange {
    /// etcd's rules: empty `range_end` = the single key; `"\0"` = every
    /// key >= `key`; otherwise `[key, range_end)`.
    pub(crate) fn new(key: &[u8], range_end: &[u8]) -> Self {
        let end = match range_end {
            [] => End::Single,
            [0] => End::Unbounded,
            end => End::Before(end.to_vec()),
        };
        Self {
            start: key.to_vec(),
            end,
        }
    }

    /// The single key, if this range is one.
    pub(crate) fn single(&self) -> Option<&[u8]> {
        match self.end {
            End::Single => Some(&self.start),
            _ => None,
        }
    }

    /// Whether `key` is in the range.
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            End::Single => key == self.start.as_slice(),
            End::Unbounded => key >= self.start.as_slice(),
            End::Before(end) => key >= self.start.as_slice() && key < end.as_slice(),
        }
    }

    /// Whether `key` is past the end (ranges are walked in key order).
    pub(crate) fn is_past(&self, key: &[u8]) -> bool {
        match &self.end {
            End::Single => key > self.start.as_slice(),
            End::Unbounded => false,
            End::Before(end) => key >= end.as_slice(),
        }
    }

    /// Bounds for an ordered map, `None` when the range is empty (an end
    /// at or before the start, which a B-tree range would refuse).
    pub(crate) fn bounds(&self) -> Option<KeyBounds<'_>> {
        let start = Bound::Included(self.start.as_slice());
        match &self.end {
            End::Single => Some((start, Bound::Included(self.start.as_slice()))),
            End::Unbounded => Some((start, Bound::Unbounded)),
            End::Before(end) if end.as_slice() > self.start.as_slice() => {
                Some((start, Bound::Excluded(end.as_slice())))
            }
            End::Before(_) => None,
        }
    }

    /// The first key of the range.
    pub(crate) fn start(&self) -> &[u8] {
        &self.start
    }
}

/// Called for each key of a scan in key order; returns whether to go on.
pub(crate) type Visit<'v> = dyn FnMut(&[u8], &KeyMeta) -> Result<bool, Error> + 'v;

/// The keyspace as seen at some moment: the current state and, through
/// history, every revision since the compact revision.
pub(crate) trait View {
    /// The revision of the state this view shows as current.
    fn current(&self) -> Revision;
    /// The compact revision: reads below it are refused.
    fn compacted(&self) -> Revision;
    /// The key's state at `rev` (`rev` >= current means the current state),
    /// `None` if it did not exist then.
    fn get(&self, key: &[u8], rev: Revision) -> Result<Option<KeyMeta>, Error>;
    /// Visits, in key order, every key of `range` that existed at `rev`.
    fn scan(&self, range: &KeyRange, rev: Revision, visit: &mut Visit<'_>) -> Result<(), Error>;
    /// The value of `key` in the state `meta` (as returned by this view).
    fn value(&self, key: &[u8], meta: &KeyMeta) -> Result<Vec<u8>, Error>;
    /// Whether the lease exists.
    fn lease_exists(&self, id: LeaseId) -> Result<bool, Error>;
}

/// A [`View`] straight over the tables of one redb transaction (read or
/// write; redb's `ReadableTable` covers both).
pub(crate) struct Base<KI, KR, H, L> {
    /// `key_index`.
    pub key_index: KI,
    /// `key_revs`.
    pub key_revs: KR,
    /// `history`.
    pub history: H,
    /// `leases`.
    pub leases: L,
    /// The revision the tables are at.
    pub current: Revision,
    /// The compact revision.
    pub compacted: Revision,
}

impl<KI, KR, H, L> Base<KI, KR, H, L>
where
    KR: ReadableTable<(&'static [u8], i64, u32), &'static [u8]>,
    H: ReadableTable<(i64, u32), &'static [u8]>,
{
    /// The key's last revision-list entry at or before `rev`.
    pub(crate) fn entry_at(
        &self,
        key: &[u8],
        rev: Revision,
    ) -> Result<Option<(Pos, RevEntry)>, Error> {
        let mut iter = self
            .key_revs
            .range((key, i64::MIN, 0u32)..=(key, rev, u32::MAX))
            .map_err(storage("key_revs: seek"))?;
        match iter.next_back() {
            None => Ok(None),
            Some(entry) => {
                let (k, v) = entry.map_err(storage("key_revs: read"))?;
                let (_, r, s) = k.value();
                Ok(Some(((r, s), RevEntry::decode(v.value())?)))
            }
        }
    }

    /// The history record at `pos`.
    pub(crate) fn record(&self, pos: Pos) -> Result<Option<Record>, Error> {
        match self.history.get(pos).map_err(storage("history: get"))? {
            None => Ok(None),
            Some(v) => Ok(Some(Record::decode(v.value())?)),
        }
    }

    /// The first key in `key_revs` strictly after all entries of `after`
    /// (or at/after `from` when `after` is `None`).
    fn next_history_key(
        &self,
        from: &[u8],
        after: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, Error> {
        let lower = match after {
            Some(k) => Bound::Excluded((k, i64::MAX, u32::MAX)),
            None => Bound::Included((from, i64::MIN, 0u32)),
        };
        let mut iter = self
            .key_revs
            .range::<(&[u8], i64, u32)>((lower, Bound::Unbounded))
            .map_err(storage("key_revs: scan"))?;
        match iter.next() {
            None => Ok(None),
            Some(entry) => {
                let (k, _) = entry.map_err(storage("key_revs: read"))?;
                Ok(Some(k.value().0.to_vec()))
            }
        }
    }
}

impl<KI, KR, H, L> View for Base<KI, KR, H, L>
where
    KI: ReadableTable<&'static [u8], &'static [u8]>,
    KR: ReadableTable<(&'static [u8], i64, u32), &'static [u8]>,
    H: ReadableTable<(i64, u32), &'static [u8]>,
    L: ReadableTable<i64, i64>,
{
    fn current(&self) -> Revision {
        self.current
    }

    fn compacted(&self) -> Revision {
        self.compacted
    }

    fn get(&self, key: &[u8], rev: Revision) -> Result<Option<KeyMeta>, Error> {
        if rev >= self.current {
            return match self.key_index.get(key).map_err(storage("key_index: get"))? {
                None => Ok(None),
                Some(v) => Ok(Some(KeyMeta::decode(v.value())?)),
            };
        }
        Ok(self
            .entry_at(key, rev)?
            .and_then(|(pos, entry)| entry.live(pos)))
    }

    fn scan(&self, range: &KeyRange, rev: Revision, visit: &mut Visit<'_>) -> Result<(), Error> {
        if let Some(key) = range.single() {
            if let Some(meta) = self.get(key, rev)? {
                visit(key, &meta)?;
            }
            return Ok(());
        }
        let Some(bounds) = range.bounds() else {
            return Ok(());
        };
        if rev >= self.current {
            let iter = self
                .key_index
                .range::<&[u8]>(bounds)
                .map_err(storage("key_index: scan"))?;
            for entry in iter {
                let (k, v) = entry.map_err(storage("key_index: read"))?;
                let meta = KeyMeta::decode(v.value())?;
                if !visit(k.value(), &meta)? {
                    break;
                }
            }
            return Ok(());
        }
        // A past revision: every key with history in the range, each at its
        // last change at or before `rev` (etcd's keyIndex walk).
        let mut key = self.next_history_key(range.start(), None)?;
        while let Some(k) = key {
            if range.is_past(&k) {
                break;
            }
            if let Some((pos, entry)) = self.entry_at(&k, rev)?
                && let Some(meta) = entry.live(pos)
                && !visit(&k, &meta)?
            {
                break;
            }
            key = self.next_history_key(range.start(), Some(&k))?;
        }
        Ok(())
    }

    fn value(&self, key: &[u8], meta: &KeyMeta) -> Result<Vec<u8>, Error> {
        let record = self.record(meta.pos())?.ok_or_else(|| {
            Error::Corrupt(format!(
                "history: no record at {:?} for key {:?}",
                meta.pos(),
                String::from_utf8_lossy(key)
            ))
        })?;
        if record.key != key {
            return Err(Error::Corrupt(format!(
                "history: record at {:?} is for another key",
                meta.pos()
            )));
        }
        Ok(record.value)
    }

    fn lease_exists(&self, id: LeaseId) -> Result<bool, Error> {
        Ok(self
            .leases
            .get(id)
            .map_err(storage("leases: get"))?
            .is_some())
    }
}

/// The sort etcd applies: `sort_order` NONE with a target other than KEY
/// sorts ascending (etcd's `applierV3backend.Range`); NONE by key is key
/// order, which the scan already gives.
fn effective_order(args: &RangeArgs) -> SortOrder {
    if args.sort_order == SortOrder::None && args.sort_target != SortTarget::Key {
        SortOrder::Ascend
    } else {
        args.sort_order
    }
}

fn filtered_out(args: &RangeArgs, meta: &KeyMeta) -> bool {
    (args.max_mod_revision != 0 && meta.mod_revision > args.max_mod_revision)
        || (args.min_mod_revision != 0 && meta.mod_revision < args.min_mod_revision)
        || (args.max_create_revision != 0 && meta.create_revision > args.max_create_revision)
        || (args.min_create_revision != 0 && meta.create_revision < args.min_create_revision)
}

/// Orders two scanned keys by a sort target other than the value.
fn compare_meta(target: SortTarget, a: &(Vec<u8>, KeyMeta), b: &(Vec<u8>, KeyMeta)) -> Ordering {
    match target {
        SortTarget::Key | SortTarget::Value => a.0.cmp(&b.0),
        SortTarget::Version => a.1.version.cmp(&b.1.version),
        SortTarget::Create => a.1.create_revision.cmp(&b.1.create_revision),
        SortTarget::Mod => a.1.mod_revision.cmp(&b.1.mod_revision),
    }
}

/// etcd's Range: revision checks, then the keys of the range at that
/// revision; `count` is every key in the range (before the min/max
/// filters, as etcd counts), then filters, sort, `limit` and `more`.
///
/// Sorting is stable: keys with equal sort fields stay in key order (etcd
/// uses Go's unstable sort, whose tie order is unspecified).
pub(crate) fn range(
    view: &impl View,
    args: &RangeArgs,
) -> Result<Result<RangeResult, KvError>, Error> {
    if args.key.is_empty() {
        return Ok(Err(KvError::EmptyKey));
    }
    let current = view.current();
    if args.revision > current {
        return Ok(Err(KvError::FutureRevision));
    }
    let rev = if args.revision <= 0 {
        current
    } else {
        args.revision
    };
    let compacted = view.compacted();
    if rev < compacted {
        return Ok(Err(KvError::Compacted {
            compact_revision: compacted,
        }));
    }
    let range = KeyRange::new(&args.key, &args.range_end);
    let order = effective_order(args);
    let filters = args.min_mod_revision != 0
        || args.max_mod_revision != 0
        || args.min_create_revision != 0
        || args.max_create_revision != 0;
    let key_order = order == SortOrder::None
        || (order == SortOrder::Ascend && args.sort_target == SortTarget::Key);
    let limit = usize::try_from(args.limit)
        .ok()
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);

    let mut count: i64 = 0;
    let mut picked: Vec<(Vec<u8>, KeyMeta)> = Vec::new();
    view.scan(&range, rev, &mut |key, meta| {
        count += 1;
        if args.count_only {
            return Ok(true);
        }
        // Without filters or a sort, only the first `limit` keys are
        // returned; the rest are only counted.
        let keep = if !filters && key_order {
            picked.len() < limit
        } else {
            !filtered_out(args, meta)
        };
        if keep {
            picked.push((key.to_vec(), *meta));
        }
        Ok(true)
    })?;
    if args.count_only {
        return Ok(Ok(RangeResult {
            kvs: Vec::new(),
            more: false,
            count,
        }));
    }
    let matched = if !filters && key_order {
        usize::try_from(count).unwrap_or(usize::MAX)
    } else {
        picked.len()
    };
    let more = matched > limit;

    let kvs = if !key_order && args.sort_target == SortTarget::Value {
        // Values decide the order, so all of them are read first.
        let mut kvs = fetch(view, picked, false)?;
        match order {
            SortOrder::Descend => kvs.sort_by(|a, b| b.value.cmp(&a.value)),
            _ => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        kvs.truncate(limit);
        if args.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        kvs
    } else {
        if !key_order {
            let target = args.sort_target;
            match order {
                SortOrder::Descend => picked.sort_by(|a, b| compare_meta(target, b, a)),
                _ => picked.sort_by(|a, b| compare_meta(target, a, b)),
            }
        }
        picked.truncate(limit);
        fetch(view, picked, args.keys_only)?
    };
    Ok(Ok(RangeResult { kvs, more, count }))
}

/// Builds the key-values, reading values unless `keys_only`.
fn fetch(
    view: &impl View,
    picked: Vec<(Vec<u8>, KeyMeta)>,
    keys_only: bool,
) -> Result<Vec<KeyValue>, Error> {
    picked
        .into_iter()
        .map(|(key, meta)| {
            let value = if keys_only {
                Vec::new()
            } else {
                view.value(&key, &meta)?
            };
            Ok(meta.to_kv(&key, value))
        })
        .collect()
}
