//! Puts, deletes and transactions: etcd's request checks and apply logic.
//!
//! The order of checks follows etcd 3.4 so a request refused by etcd is
//! refused here with the same error: the gRPC layer's `checkTxnRequest`
//! (too many ops, empty keys) and `checkIntervals` (duplicate keys), then
//! the applier's compare evaluation, `checkRequestPut` and
//! `checkRequestRange` against the state before the txn, then execution.
//! etcd makes those checks before proposing; here they run on apply, which
//! is as deterministic.

use std::collections::BTreeSet;

use crate::{
    changes::{Overlay, Pending},
    keyspace::{self, KeyRange, View},
    store::Error,
    tables::KeyMeta,
    types::{
        Compare, CompareResult, CompareTarget, DeleteArgs, DeleteResult, KeyValue, KvError,
        PutArgs, PutResult, RequestOp, ResponseOp, TxnArgs, TxnResult,
    },
};

/// etcd's default `--max-txn-ops`.
pub(crate) const MAX_TXN_OPS: usize = 128;

/// Why a command did not apply: refused (deterministically) or the
/// storage failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A logical refusal: the command's result.
    Refused(KvError),
    /// A storage failure: the whole batch fails.
    Storage(Error),
}

impl From<KvError> for Failure {
    fn from(e: KvError) -> Self {
        Self::Refused(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Storage(e)
    }
}

/// Reads every key of `range` at the view's current revision.
fn current_keys(view: &impl View, range: &KeyRange) -> Result<Vec<(Vec<u8>, KeyMeta)>, Error> {
    let mut out = Vec::new();
    view.scan(range, view.current(), &mut |k, m| {
        out.push((k.to_vec(), *m));
        Ok(true)
    })?;
    Ok(out)
}

/// A standalone put (etcd's `applierV3backend.Put` without a txn): the
/// lease must exist, then ignore_value/ignore_lease need the key.
pub(crate) fn put<B: View>(base: &B, args: &PutArgs) -> Result<(PutResult, Pending), Failure> {
    if args.key.is_empty() {
        return Err(KvError::EmptyKey.into());
    }
    if args.lease != 0 && !base.lease_exists(args.lease)? {
        return Err(KvError::LeaseNotFound.into());
    }
    let mut overlay = Overlay::new(base);
    let result = exec_put(&mut overlay, args)?;
    Ok((result, overlay.into_pending()))
}

/// A standalone delete.
pub(crate) fn delete<B: View>(
    base: &B,
    args: &DeleteArgs,
) -> Result<(DeleteResult, Pending), Failure> {
    if args.key.is_empty() {
        return Err(KvError::EmptyKey.into());
    }
    let mut overlay = Overlay::new(base);
    let result = exec_delete(&mut overlay, args)?;
    Ok((result, overlay.into_pending()))
}

/// A transaction: checks, compares (all against the state before the
/// txn, nested ones included, as etcd's `compareToPath`), then the chosen
/// branches in order.
pub(crate) fn txn<B: View>(base: &B, args: &TxnArgs) -> Result<(TxnResult, Pending), Failure> {
    check_txn_request(args, MAX_TXN_OPS)?;
    check_intervals(&args.success)?;
    check_intervals(&args.failure)?;
    let mut path = Vec::new();
    compare_to_path(base, args, &mut path)?;
    let mut cursor = 0;
    check_requests(base, args, &path, &mut cursor, &check_put)?;
    let mut cursor = 0;
    check_requests(base, args, &path, &mut cursor, &check_range)?;
    let mut overlay = Overlay::new(base);
    let mut cursor = 0;
    let result = exec_txn(&mut overlay, args, &path, &mut cursor)?;
    Ok((result, overlay.into_pending()))
}

/// etcd's `checkTxnRequest`: at most `max_ops` compares or ops per branch
/// (a nested txn gets what its parent left), no empty keys.
fn check_txn_request(args: &TxnArgs, max_ops: usize) -> Result<(), KvError> {
    let ops = args
        .compare
        .len()
        .max(args.success.len())
        .max(args.failure.len());
    if ops > max_ops {
        return Err(KvError::TooManyOps);
    }
    if args.compare.iter().any(|c| c.key.is_empty()) {
        return Err(KvError::EmptyKey);
    }
    for op in args.success.iter().chain(&args.failure) {
        match op {
            RequestOp::Range(r) if r.key.is_empty() => return Err(KvError::EmptyKey),
            RequestOp::Put(p) if p.key.is_empty() => return Err(KvError::EmptyKey),
            RequestOp::Delete(d) if d.key.is_empty() => return Err(KvError::EmptyKey),
            RequestOp::Txn(t) => check_txn_request(t, max_ops - ops)?,
            _ => {}
        }
    }
    Ok(())
}

/// A deleted interval `[start, end)` as etcd's `checkIntervals` builds it:
/// a single-key delete is `[key, key + "\0")`; a delete with a range end
/// is `[key, range_end)` taken literally, so etcd's "\0" (= to the end of
/// the keyspace) end covers no key here, exactly as in etcd.
struct Deleted {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl Deleted {
    fn new(args: &DeleteArgs) -> Self {
        let end = if args.range_end.is_empty() {
            let mut e = args.key.clone();
            e.push(0);
            e
        } else {
            args.range_end.clone()
        };
        Self {
            start: args.key.clone(),
            end,
        }
    }

    fn covers(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && key < self.end.as_slice()
    }
}

type Intervals = (BTreeSet<Vec<u8>>, Vec<Deleted>);

/// etcd's `checkIntervals`: a key may not be put twice, nor put and
/// deleted, by the ops of one branch (nested txns included; the two
/// branches of a nested txn may put the same key).
fn check_intervals(ops: &[RequestOp]) -> Result<Intervals, KvError> {
    let mut dels: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::Delete(d) => Some(Deleted::new(d)),
            _ => None,
        })
        .collect();
    let covered = |dels: &[Deleted], key: &[u8]| dels.iter().any(|d| d.covers(key));
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || covered(&dels, k) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(KvError::DuplicateKey);
            }
            if covered(&dels, k) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key) || covered(&dels, &p.key) {
            return Err(KvError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// etcd's `compareToPath`: whether each txn (this one, then the nested
/// ones of the branch taken, depth first) takes its success branch.
fn compare_to_path(view: &impl View, args: &TxnArgs, path: &mut Vec<bool>) -> Result<(), Error> {
    let mut ok = true;
    for c in &args.compare {
        if !compare_holds(view, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    let ops = if ok { &args.success } else { &args.failure };
    for op in ops {
        if let RequestOp::Txn(t) = op {
            compare_to_path(view, t, path)?;
        }
    }
    Ok(())
}

/// etcd's `applyCompare`: every key of the range must satisfy the compare;
/// an empty range compares a zero key-value, except that a value compare
/// on no key fails.
fn compare_holds(view: &impl View, c: &Compare) -> Result<bool, Error> {
    let keys = current_keys(view, &KeyRange::new(&c.key, &c.range_end))?;
    if keys.is_empty() {
        if matches!(c.target, CompareTarget::Value(_)) {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    for (key, meta) in keys {
        let value = match c.target {
            CompareTarget::Value(_) => view.value(&key, &meta)?,
            _ => Vec::new(),
        };
        if !compare_kv(c, &meta.to_kv(&key, value)) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match &c.target {
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Create(r) => kv.create_revision.cmp(r),
        CompareTarget::Mod(r) => kv.mod_revision.cmp(r),
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Lease(l) => kv.lease.cmp(l),
    };
    match c.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
    }
}

/// etcd's `checkRequests`: runs `check` on every non-txn op of the
/// branches the path takes.
fn check_requests<V: View, F: Fn(&V, &RequestOp) -> Result<(), Failure>>(
    view: &V,
    args: &TxnArgs,
    path: &[bool],
    cursor: &mut usize,
    check: &F,
) -> Result<(), Failure> {
    let ops = if take_path(path, cursor)? {
        &args.success
    } else {
        &args.failure
    };
    for op in ops {
        match op {
            RequestOp::Txn(t) => check_requests(view, t, path, cursor, check)?,
            op => check(view, op)?,
        }
    }
    Ok(())
}

fn take_path(path: &[bool], cursor: &mut usize) -> Result<bool, Error> {
    let taken = path
        .get(*cursor)
        .copied()
        .ok_or_else(|| Error::Storage(format!("txn path too short at {}", *cursor)))?;
    *cursor += 1;
    Ok(taken)
}

/// etcd's `checkRequestPut`: ignore_value/ignore_lease need the key, a
/// lease must exist.
fn check_put<V: View>(view: &V, op: &RequestOp) -> Result<(), Failure> {
    let RequestOp::Put(p) = op else {
        return Ok(());
    };
    if (p.ignore_value || p.ignore_lease) && view.get(&p.key, view.current())?.is_none() {
        return Err(KvError::KeyNotFound.into());
    }
    if p.lease != 0 && !view.lease_exists(p.lease)? {
        return Err(KvError::LeaseNotFound.into());
    }
    Ok(())
}

/// etcd's `checkRequestRange`: no future or compacted revision.
fn check_range<V: View>(view: &V, op: &RequestOp) -> Result<(), Failure> {
    let RequestOp::Range(r) = op else {
        return Ok(());
    };
    if r.revision <= 0 {
        return Ok(());
    }
    if r.revision > view.current() {
        return Err(KvError::FutureRevision.into());
    }
    if r.revision < view.compacted() {
        return Err(KvError::Compacted {
            compact_revision: view.compacted(),
        }
        .into());
    }
    Ok(())
}

fn exec_txn<B: View>(
    overlay: &mut Overlay<'_, B>,
    args: &TxnArgs,
    path: &[bool],
    cursor: &mut usize,
) -> Result<TxnResult, Failure> {
    let succeeded = take_path(path, cursor)?;
    let ops = if succeeded {
        &args.success
    } else {
        &args.failure
    };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match op {
            RequestOp::Range(r) => ResponseOp::Range(keyspace::range(overlay, r)??),
            RequestOp::Put(p) => ResponseOp::Put(exec_put(overlay, p)?),
            RequestOp::Delete(d) => ResponseOp::Delete(exec_delete(overlay, d)?),
            RequestOp::Txn(t) => ResponseOp::Txn(exec_txn(overlay, t, path, cursor)?),
        };
        responses.push(response);
    }
    Ok(TxnResult {
        succeeded,
        responses,
    })
}

/// etcd's `applierV3backend.Put` inside a write: reads the key first when
/// the request needs its previous state.
fn exec_put<B: View>(overlay: &mut Overlay<'_, B>, args: &PutArgs) -> Result<PutResult, Failure> {
    let current = overlay.current();
    let prev = match overlay.get(&args.key, current)? {
        Some(meta) => Some((meta, overlay.value(&args.key, &meta)?)),
        None => None,
    };
    let (value, lease) = match &prev {
        None if args.ignore_value || args.ignore_lease => {
            return Err(KvError::KeyNotFound.into());
        }
        Some((meta, old)) => (
            if args.ignore_value {
                old.clone()
            } else {
                args.value.clone()
            },
            if args.ignore_lease {
                meta.lease
            } else {
                args.lease
            },
        ),
        None => (args.value.clone(), args.lease),
    };
    let prev_kv = if args.prev_kv {
        prev.as_ref().map(|(m, v)| m.to_kv(&args.key, v.clone()))
    } else {
        None
    };
    overlay.put(&args.key, value, lease, prev)?;
    Ok(PutResult { prev_kv })
}

/// etcd's DeleteRange: deletes every key of the range that exists now.
fn exec_delete<B: View>(
    overlay: &mut Overlay<'_, B>,
    args: &DeleteArgs,
) -> Result<DeleteResult, Failure> {
    let keys = current_keys(overlay, &KeyRange::new(&args.key, &args.range_end))?;
    let mut prev_kvs = Vec::new();
    let deleted = i64::try_from(keys.len()).unwrap_or(i64::MAX);
    for (key, meta) in keys {
        let value = overlay.value(&key, &meta)?;
        if args.prev_kv {
            prev_kvs.push(meta.to_kv(&key, value.clone()));
        }
        overlay.delete(&key, (meta, value))?;
    }
    Ok(DeleteResult { deleted, prev_kvs })
}

/// Deletes keys one by one (a lease revoke), each as a single-key delete.
pub(crate) fn delete_keys<B: View>(
    overlay: &mut Overlay<'_, B>,
    keys: &[Vec<u8>],
) -> Result<(), Error> {
    for key in keys {
        let current = overlay.current();
        let meta = overlay.get(key, current)?.ok_or_else(|| {
            Error::Corrupt(format!(
                "lease_keys: key {:?} is attached but does not exist",
                String::from_utf8_lossy(key)
            ))
        })?;
        let value = overlay.value(key, &meta)?;
        overlay.delete(key, (meta, value))?;
    }
    Ok(())
}
