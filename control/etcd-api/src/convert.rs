//! Between etcd's wire messages and the keyspace's types, with etcd's
//! request validation (`v3rpc/key.go`): what etcd refuses before proposing,
//! shoal refuses here with the same status.

use std::collections::HashSet;

use shoal_mvcc::{
    Compare, CompareResult, CompareTarget, DeleteArgs, DeleteResult, Event, EventKind, KeyValue,
    PutArgs, PutResult, RangeArgs, RangeResult, RequestOp, ResponseOp, SortOrder, SortTarget,
    TxnArgs, TxnResult,
};
use tonic::Status;

use crate::{
    proto::{
        etcdserverpb::{self as pb, compare, range_request, request_op, response_op},
        mvccpb,
    },
    status::{self, invalid},
};

/// A key-value on the wire.
pub(crate) fn kv_to_pb(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// An event on the wire; `prev_kv` only when the watcher asked for it.
pub(crate) fn event_to_pb(ev: &Event, with_prev_kv: bool) -> mvccpb::Event {
    let kind = match ev.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(kv_to_pb(ev.kv.clone())),
        prev_kv: if with_prev_kv {
            ev.prev_kv.clone().map(kv_to_pb)
        } else {
            None
        },
    }
}

/// A range request as keyspace arguments, after etcd's checks.
pub(crate) fn range_args(r: &pb::RangeRequest) -> Result<RangeArgs, Status> {
    if r.key.is_empty() {
        return Err(invalid(status::EMPTY_KEY));
    }
    let sort_target = match range_request::SortTarget::try_from(r.sort_target) {
        Ok(range_request::SortTarget::Key) => SortTarget::Key,
        Ok(range_request::SortTarget::Version) => SortTarget::Version,
        Ok(range_request::SortTarget::Create) => SortTarget::Create,
        Ok(range_request::SortTarget::Mod) => SortTarget::Mod,
        Ok(range_request::SortTarget::Value) => SortTarget::Value,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: range request has unknown sort_target {}; use 0-4 (KEY, VERSION, CREATE, MOD, VALUE)",
                r.sort_target
            )));
        }
    };
    let sort_order = match range_request::SortOrder::try_from(r.sort_order) {
        // etcd sorts by a target other than the key ascending when no order
        // is given (the keyspace returns key order otherwise).
        Ok(range_request::SortOrder::None) if sort_target != SortTarget::Key => SortOrder::Ascend,
        Ok(range_request::SortOrder::None) => SortOrder::None,
        Ok(range_request::SortOrder::Ascend) => SortOrder::Ascend,
        Ok(range_request::SortOrder::Descend) => SortOrder::Descend,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: range request has unknown sort_order {}; use 0-2 (NONE, ASCEND, DESCEND)",
                r.sort_order
            )));
        }
    };
    Ok(RangeArgs {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

/// A put request as keyspace arguments, after etcd's checks.
pub(crate) fn put_args(r: pb::PutRequest) -> Result<PutArgs, Status> {
    check_put(&r)?;
    Ok(PutArgs {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    })
}

fn check_put(r: &pb::PutRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(invalid(status::EMPTY_KEY));
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(invalid(status::VALUE_PROVIDED));
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(invalid(status::LEASE_PROVIDED));
    }
    Ok(())
}

/// A delete request as keyspace arguments, after etcd's checks.
pub(crate) fn delete_args(r: pb::DeleteRangeRequest) -> Result<DeleteArgs, Status> {
    if r.key.is_empty() {
        return Err(invalid(status::EMPTY_KEY));
    }
    Ok(DeleteArgs {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    })
}

/// A transaction as keyspace arguments, after etcd's checks: size,
/// empty keys and ops, and a key written twice in one branch.
pub(crate) fn txn_args(r: pb::TxnRequest, max_txn_ops: usize) -> Result<TxnArgs, Status> {
    check_txn(&r, max_txn_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    txn_from_pb(r)
}

/// etcd's `checkTxnRequest`: nested transactions share the op budget.
fn check_txn(r: &pb::TxnRequest, max_txn_ops: usize) -> Result<(), Status> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_txn_ops {
        return Err(invalid(status::TOO_MANY_OPS));
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(invalid(status::EMPTY_KEY));
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) if r.key.is_empty() => {
                return Err(invalid(status::EMPTY_KEY));
            }
            Some(request_op::Request::RequestRange(_)) => {}
            Some(request_op::Request::RequestPut(p)) => check_put(p)?,
            Some(request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                return Err(invalid(status::EMPTY_KEY));
            }
            Some(request_op::Request::RequestDeleteRange(_)) => {}
            Some(request_op::Request::RequestTxn(t)) => check_txn(t, max_txn_ops - ops)?,
            None => return Err(invalid(status::KEY_NOT_FOUND)),
        }
    }
    Ok(())
}

/// A delete's key interval `[start, end)`; a single key is `[k, k\0)`.
/// Like etcd, a "from key" end (`\0`) is taken literally, so it overlaps
/// nothing.
type Interval = (Vec<u8>, Vec<u8>);

fn point_in(key: &[u8], dels: &[Interval]) -> bool {
    dels.iter()
        .any(|(start, end)| start.as_slice() <= key && key < end.as_slice())
}

/// etcd's `checkIntervals`: within one branch (including nested
/// transactions), no key may be put twice or both put and deleted. The two
/// branches of a nested transaction may put the same key.
fn check_intervals(ops: &[pb::RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>), Status> {
    let mut dels: Vec<Interval> = Vec::new();
    for op in ops {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &op.request {
            let end = if d.range_end.is_empty() {
                let mut e = d.key.clone();
                e.push(0);
                e
            } else {
                d.range_end.clone()
            };
            dels.push((d.key.clone(), end));
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || point_in(k, &dels) {
                return Err(invalid(status::DUPLICATE_KEY));
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || point_in(&k, &dels) {
                return Err(invalid(status::DUPLICATE_KEY));
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || point_in(&p.key, &dels) {
            return Err(invalid(status::DUPLICATE_KEY));
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

fn txn_from_pb(r: pb::TxnRequest) -> Result<TxnArgs, Status> {
    Ok(TxnArgs {
        compare: r
            .compare
            .into_iter()
            .map(compare_from_pb)
            .collect::<Result<_, _>>()?,
        success: r
            .success
            .into_iter()
            .map(op_from_pb)
            .collect::<Result<_, _>>()?,
        failure: r
            .failure
            .into_iter()
            .map(op_from_pb)
            .collect::<Result<_, _>>()?,
    })
}

fn op_from_pb(op: pb::RequestOp) -> Result<RequestOp, Status> {
    Ok(match op.request {
        Some(request_op::Request::RequestRange(r)) => RequestOp::Range(range_args(&r)?),
        Some(request_op::Request::RequestPut(p)) => RequestOp::Put(put_args(p)?),
        Some(request_op::Request::RequestDeleteRange(d)) => RequestOp::Delete(delete_args(d)?),
        Some(request_op::Request::RequestTxn(t)) => RequestOp::Txn(txn_from_pb(t)?),
        None => return Err(invalid(status::KEY_NOT_FOUND)),
    })
}

/// A compare; like etcd, a missing or mismatched `target_union` compares
/// against the zero value of the target.
fn compare_from_pb(c: pb::Compare) -> Result<Compare, Status> {
    use compare::TargetUnion as U;
    let result = match compare::CompareResult::try_from(c.result) {
        Ok(compare::CompareResult::Equal) => CompareResult::Equal,
        Ok(compare::CompareResult::Greater) => CompareResult::Greater,
        Ok(compare::CompareResult::Less) => CompareResult::Less,
        Ok(compare::CompareResult::NotEqual) => CompareResult::NotEqual,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: compare on key {:?} has unknown result {}; use 0-3 (EQUAL, GREATER, LESS, NOT_EQUAL)",
                String::from_utf8_lossy(&c.key),
                c.result
            )));
        }
    };
    let target = match compare::CompareTarget::try_from(c.target) {
        Ok(compare::CompareTarget::Version) => CompareTarget::Version(match c.target_union {
            Some(U::Version(v)) => v,
            _ => 0,
        }),
        Ok(compare::CompareTarget::Create) => CompareTarget::Create(match c.target_union {
            Some(U::CreateRevision(v)) => v,
            _ => 0,
        }),
        Ok(compare::CompareTarget::Mod) => CompareTarget::Mod(match c.target_union {
            Some(U::ModRevision(v)) => v,
            _ => 0,
        }),
        Ok(compare::CompareTarget::Value) => CompareTarget::Value(match c.target_union {
            Some(U::Value(v)) => v,
            _ => Vec::new(),
        }),
        Ok(compare::CompareTarget::Lease) => CompareTarget::Lease(match c.target_union {
            Some(U::Lease(v)) => v,
            _ => 0,
        }),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: compare on key {:?} has unknown target {}; use 0-4 (VERSION, CREATE, MOD, VALUE, LEASE)",
                String::from_utf8_lossy(&c.key),
                c.target
            )));
        }
    };
    Ok(Compare {
        key: c.key,
        range_end: c.range_end,
        result,
        target,
    })
}

/// A range result on the wire.
pub(crate) fn range_response(r: RangeResult, header: pb::ResponseHeader) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
        more: r.more,
        count: r.count,
    }
}

/// A put result on the wire.
pub(crate) fn put_response(r: PutResult, header: pb::ResponseHeader) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(header),
        prev_kv: r.prev_kv.map(kv_to_pb),
    }
}

/// A delete result on the wire.
pub(crate) fn delete_response(
    r: DeleteResult,
    header: pb::ResponseHeader,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv_to_pb).collect(),
    }
}

/// A transaction result on the wire; nested responses carry the same
/// header as the transaction.
pub(crate) fn txn_response(r: TxnResult, header: pb::ResponseHeader) -> pb::TxnResponse {
    let responses = r
        .responses
        .into_iter()
        .map(|op| {
            let h = header;
            let response = match op {
                ResponseOp::Range(r) => response_op::Response::ResponseRange(range_response(r, h)),
                ResponseOp::Put(p) => response_op::Response::ResponsePut(put_response(p, h)),
                ResponseOp::Delete(d) => {
                    response_op::Response::ResponseDeleteRange(delete_response(d, h))
                }
                ResponseOp::Txn(t) => response_op::Response::ResponseTxn(txn_response(t, h)),
            };
            pb::ResponseOp {
                response: Some(response),
            }
        })
        .collect();
    pb::TxnResponse {
        header: Some(header),
        succeeded: r.succeeded,
        responses,
    }
}

#[cfg(test)]
mod tests;
