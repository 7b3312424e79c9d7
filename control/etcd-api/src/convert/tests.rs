use tonic::Code;

use super::*;

fn put(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
    }
}

fn del(key: &str, range_end: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: key.into(),
                range_end: range_end.into(),
                prev_kv: false,
            },
        )),
    }
}

fn nested(success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestTxn(pb::TxnRequest {
            compare: vec![],
            success,
            failure,
        })),
    }
}

fn txn(success: Vec<pb::RequestOp>) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![],
        success,
        failure: vec![],
    }
}

fn message(r: Result<TxnArgs, Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

#[test]
fn key_value_fields_survive_the_wire() {
    let kv = KeyValue {
        key: b"k".to_vec(),
        create_revision: 2,
        mod_revision: 3,
        version: 2,
        value: b"v".to_vec(),
        lease: 7,
    };
    let pb = kv_to_pb(kv);
    assert_eq!(
        (
            pb.key.as_slice(),
            pb.create_revision,
            pb.mod_revision,
            pb.version,
            pb.lease
        ),
        (&b"k"[..], 2, 3, 2, 7)
    );
    assert_eq!(pb.value, b"v");
}

#[test]
fn events_carry_prev_kv_only_when_asked() {
    let ev = Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: b"k".to_vec(),
            mod_revision: 9,
            ..Default::default()
        },
        prev_kv: Some(KeyValue {
            key: b"k".to_vec(),
            value: b"old".to_vec(),
            ..Default::default()
        }),
    };
    let with = event_to_pb(&ev, true);
    assert_eq!(with.r#type, mvccpb::event::EventType::Delete as i32);
    assert_eq!(with.prev_kv.map(|kv| kv.value), Some(b"old".to_vec()));
    assert!(event_to_pb(&ev, false).prev_kv.is_none());
}

#[test]
fn empty_keys_are_refused_like_etcd() {
    let err = range_args(&pb::RangeRequest::default()).err();
    assert_eq!(
        err.map(|s| (s.code(), s.message().to_owned())),
        Some((
            Code::InvalidArgument,
            "etcdserver: key is not provided".to_owned()
        ))
    );
    assert!(put_args(pb::PutRequest::default()).is_err());
    assert!(delete_args(pb::DeleteRangeRequest::default()).is_err());
    let compare_without_key = pb::TxnRequest {
        compare: vec![pb::Compare::default()],
        success: vec![],
        failure: vec![],
    };
    assert_eq!(
        message(txn_args(compare_without_key, 128)).1,
        "etcdserver: key is not provided"
    );
}

#[test]
fn put_with_ignore_flags_and_values_is_refused() {
    let r = pb::PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(
        put_args(r).err().map(|s| s.message().to_owned()).as_deref(),
        Some(status::VALUE_PROVIDED)
    );
    let r = pb::PutRequest {
        key: b"k".to_vec(),
        lease: 5,
        ignore_lease: true,
        ..Default::default()
    };
    assert_eq!(
        put_args(r).err().map(|s| s.message().to_owned()).as_deref(),
        Some(status::LEASE_PROVIDED)
    );
}

#[test]
fn sorting_by_a_field_without_order_ascends() {
    let r = pb::RangeRequest {
        key: b"a".to_vec(),
        sort_target: range_request::SortTarget::Mod as i32,
        ..Default::default()
    };
    let args = range_args(&r).map_err(|s| s.message().to_owned());
    assert_eq!(
        args.map(|a| (a.sort_order, a.sort_target)),
        Ok((SortOrder::Ascend, SortTarget::Mod))
    );
    let bad = pb::RangeRequest {
        key: b"a".to_vec(),
        sort_order: 9,
        ..Default::default()
    };
    assert_eq!(
        range_args(&bad).err().map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
}

#[test]
fn too_many_ops_counts_the_largest_branch() {
    let ops: Vec<_> = (0..4).map(|i| put(&format!("k{i}"))).collect();
    assert_eq!(message(txn_args(txn(ops.clone()), 4)).0, Code::Ok);
    assert_eq!(
        message(txn_args(txn(ops), 3)),
        (Code::InvalidArgument, status::TOO_MANY_OPS.to_owned())
    );
}

#[test]
fn duplicate_puts_and_put_inside_deleted_range_are_refused() {
    let dup = message(txn_args(txn(vec![put("a"), put("a")]), 128));
    assert_eq!(
        dup,
        (Code::InvalidArgument, status::DUPLICATE_KEY.to_owned())
    );
    let in_deleted_range = message(txn_args(txn(vec![del("a", "c"), put("b")]), 128));
    assert_eq!(in_deleted_range.1, status::DUPLICATE_KEY);
    let deleted_key = message(txn_args(txn(vec![del("b", ""), put("b")]), 128));
    assert_eq!(deleted_key.1, status::DUPLICATE_KEY);
    // Outside the deleted range, and etcd takes a "from key" end literally.
    assert_eq!(
        message(txn_args(txn(vec![del("a", "b"), put("b")]), 128)).0,
        Code::Ok
    );
    assert_eq!(
        message(txn_args(txn(vec![del("a", "\0"), put("b")]), 128)).0,
        Code::Ok
    );
}

#[test]
fn nested_branches_may_put_the_same_key_but_not_twice_with_the_parent() {
    let both_branches = txn(vec![nested(vec![put("a")], vec![put("a")])]);
    assert_eq!(message(txn_args(both_branches, 128)).0, Code::Ok);
    let parent_too = txn(vec![nested(vec![put("a")], vec![]), put("a")]);
    assert_eq!(message(txn_args(parent_too, 128)).1, status::DUPLICATE_KEY);
    let deleted_in_child = txn(vec![nested(vec![del("a", "z")], vec![]), put("b")]);
    assert_eq!(
        message(txn_args(deleted_in_child, 128)).1,
        status::DUPLICATE_KEY
    );
}

#[test]
fn an_empty_txn_op_is_key_not_found() {
    let r = txn(vec![pb::RequestOp { request: None }]);
    assert_eq!(
        message(txn_args(r, 128)),
        (Code::InvalidArgument, status::KEY_NOT_FOUND.to_owned())
    );
}

#[test]
fn compares_take_the_union_value_of_their_target() {
    let c = pb::Compare {
        result: compare::CompareResult::Greater as i32,
        target: compare::CompareTarget::Mod as i32,
        key: b"k".to_vec(),
        range_end: vec![],
        target_union: Some(compare::TargetUnion::ModRevision(4)),
    };
    let args = txn_args(
        pb::TxnRequest {
            compare: vec![c.clone()],
            ..Default::default()
        },
        128,
    );
    let compare = args.map(|a| a.compare).map_err(|s| s.message().to_owned());
    assert_eq!(
        compare,
        Ok(vec![Compare {
            key: b"k".to_vec(),
            range_end: vec![],
            result: CompareResult::Greater,
            target: CompareTarget::Mod(4)
        }])
    );
    // A union that does not match the target compares against zero.
    let mismatched = pb::Compare {
        target_union: Some(compare::TargetUnion::Version(4)),
        ..c
    };
    let args = txn_args(
        pb::TxnRequest {
            compare: vec![mismatched],
            ..Default::default()
        },
        128,
    );
    assert_eq!(
        args.map(|a| a.compare[0].target.clone()).ok(),
        Some(CompareTarget::Mod(0))
    );
}

#[test]
fn txn_responses_nest_headers() {
    let header = pb::ResponseHeader {
        cluster_id: 1,
        member_id: 2,
        revision: 3,
        raft_term: 4,
    };
    let r = TxnResult {
        succeeded: true,
        responses: vec![
            ResponseOp::Put(PutResult { prev_kv: None }),
            ResponseOp::Range(RangeResult {
                kvs: vec![],
                more: false,
                count: 0,
            }),
        ],
    };
    let pb = txn_response(r, header);
    assert!(pb.succeeded);
    assert_eq!(pb.responses.len(), 2);
    match &pb.responses[1].response {
        Some(response_op::Response::ResponseRange(rr)) => assert_eq!(rr.header, Some(header)),
        other => panic!("expected a range response, got {other:?}"),
    }
}
