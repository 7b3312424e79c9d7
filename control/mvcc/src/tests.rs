//! Behaviour an etcd client would notice: revisions, ranges, txns, leases,
//! history, snapshots and persistence.

use std::sync::Arc;

use redb::backends::InMemoryBackend;

use crate::*;

/// Asserts two snapshots are byte-identical, showing their content if not.
#[track_caller]
pub(crate) fn assert_same_snapshot(a: &[u8], b: &[u8], what: &str) {
    if a != b {
        panic!(
            "{what}: snapshots differ\n--- left\n{}--- right\n{}",
            crate::snapshot::describe(a),
            crate::snapshot::describe(b)
        );
    }
}

pub(crate) fn mem() -> Mvcc {
    Mvcc::open_with_backend(InMemoryBackend::new()).expect("open in-memory store")
}

pub(crate) fn put(key: &str, value: &str) -> Command {
    Command::Put(PutArgs {
        key: key.into(),
        value: value.into(),
        ..PutArgs::default()
    })
}

fn put_lease(key: &str, value: &str, lease: LeaseId) -> Command {
    Command::Put(PutArgs {
        key: key.into(),
        value: value.into(),
        lease,
        ..PutArgs::default()
    })
}

fn del(key: &str, range_end: &str) -> Command {
    Command::Delete(DeleteArgs {
        key: key.into(),
        range_end: range_end.into(),
        prev_kv: true,
    })
}

fn one(s: &Mvcc, c: Command) -> CommandResult {
    let mut r = s.apply(&[c], None).expect("apply");
    assert_eq!(r.len(), 1);
    r.remove(0)
}

fn ok(s: &Mvcc, c: Command) -> (Outcome, Revision) {
    let r = one(s, c);
    (r.outcome.expect("command refused"), r.revision)
}

fn refused(s: &Mvcc, c: Command) -> KvError {
    let before = s.snapshot().expect("snapshot");
    let r = one(s, c);
    assert_eq!(
        s.snapshot().expect("snapshot"),
        before,
        "a refused command changed the store"
    );
    r.outcome.expect_err("command applied")
}

fn rng(key: &str, range_end: &str) -> RangeArgs {
    RangeArgs {
        key: key.into(),
        range_end: range_end.into(),
        ..RangeArgs::default()
    }
}

fn read(s: &Mvcc, args: &RangeArgs) -> RangeResult {
    s.range(args).expect("storage").expect("range refused").0
}

fn get(s: &Mvcc, key: &str) -> Option<KeyValue> {
    read(s, &rng(key, "")).kvs.into_iter().next()
}

fn keys(r: &RangeResult) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

fn all_keys(s: &Mvcc) -> Vec<String> {
    keys(&read(s, &rng("\0", "\0")))
}

#[test]
fn the_store_is_shared_across_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Mvcc>();
    shareable::<Arc<AppliedBatch>>();
}

#[test]
fn revisions_and_versions_across_put_delete_recreate() {
    let s = mem();
    assert_eq!(s.revision(), 1, "an empty store is at revision 1, as etcd");
    let (_, rev) = ok(&s, put("a", "1"));
    assert_eq!(rev, 2, "the first write is revision 2");
    let kv = get(&s, "a").expect("a");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    let (_, rev) = ok(&s, put("a", "2"));
    assert_eq!(rev, 3);
    let kv = get(&s, "a").expect("a");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version, kv.value),
        (2, 3, 2, b"2".to_vec())
    );
    let (out, rev) = ok(&s, del("a", ""));
    assert_eq!(rev, 4);
    let Outcome::Delete(d) = out else {
        panic!("not a delete")
    };
    assert_eq!(d.deleted, 1);
    assert_eq!(d.prev_kvs[0].value, b"2");
    assert_eq!(get(&s, "a"), None);
    let (out, rev) = ok(&s, del("a", ""));
    assert_eq!(rev, 4, "a delete of nothing does not bump the revision");
    assert!(matches!(
        out,
        Outcome::Delete(DeleteResult { deleted: 0, .. })
    ));
    let (_, rev) = ok(&s, put("a", "3"));
    assert_eq!(rev, 5);
    let kv = get(&s, "a").expect("a");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (5, 5, 1),
        "a recreated key starts a new generation"
    );
    assert_eq!(s.revision(), 5);
    assert_eq!(s.status().expect("status").revision, 5);
}

#[test]
fn batch_results_carry_the_revision_after_each_command() {
    let s = mem();
    let r = s
        .apply(
            &[
                put("a", "1"),
                put("", "x"),
                put("b", "1"),
                Command::LeaseGrant { id: 7, ttl: 10 },
            ],
            Some(b"meta-1"),
        )
        .expect("apply");
    let revs: Vec<_> = r.iter().map(|r| r.revision).collect();
    assert_eq!(revs, vec![2, 2, 3, 3]);
    assert_eq!(r[1].outcome, Err(KvError::EmptyKey));
    assert_eq!(s.meta().expect("meta"), Some(b"meta-1".to_vec()));
    s.apply(&[put("c", "1")], None).expect("apply");
    assert_eq!(
        s.meta().expect("meta"),
        Some(b"meta-1".to_vec()),
        "None leaves meta as is"
    );
}

#[test]
fn range_end_forms() {
    let s = mem();
    for k in ["a", "ab", "abc", "b", "c"] {
        ok(&s, put(k, k));
    }
    assert_eq!(
        keys(&read(&s, &rng("ab", ""))),
        ["ab"],
        "empty end: one key"
    );
    assert_eq!(
        keys(&read(&s, &rng("a", "b"))),
        ["a", "ab", "abc"],
        "[key, end)"
    );
    assert_eq!(
        keys(&read(&s, &rng("ab", "\0"))),
        ["ab", "abc", "b", "c"],
        "\\0 end: every key >= key"
    );
    assert_eq!(
        keys(&read(&s, &rng("\0", "\0"))),
        ["a", "ab", "abc", "b", "c"],
        "\\0 and \\0: all keys"
    );
    assert!(read(&s, &rng("c", "a")).kvs.is_empty(), "end before key");
    assert!(read(&s, &rng("zz", "")).kvs.is_empty());
    assert_eq!(
        s.range(&rng("", "")).expect("storage"),
        Err(KvError::EmptyKey)
    );
}

#[test]
fn limit_more_count_keys_only_count_only() {
    let s = mem();
    for k in ["a", "b", "c", "d", "e"] {
        ok(&s, put(k, "v"));
    }
    let r = read(
        &s,
        &RangeArgs {
            limit: 2,
            ..rng("a", "\0")
        },
    );
    assert_eq!(keys(&r), ["a", "b"]);
    assert!(r.more);
    assert_eq!(r.count, 5, "count is every key in the range");
    let r = read(
        &s,
        &RangeArgs {
            limit: 5,
            ..rng("a", "\0")
        },
    );
    assert!(!r.more);
    let r = read(
        &s,
        &RangeArgs {
            count_only: true,
            ..rng("a", "\0")
        },
    );
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 5);
    let r = read(
        &s,
        &RangeArgs {
            keys_only: true,
            ..rng("a", "c")
        },
    );
    assert_eq!(keys(&r), ["a", "b"]);
    assert!(
        r.kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.version == 1)
    );
}

#[test]
fn historical_reads_and_compaction_errors() {
    let s = mem();
    ok(&s, put("a", "1")); // 2
    ok(&s, put("a", "2")); // 3
    ok(&s, put("b", "1")); // 4
    ok(&s, del("a", "")); // 5
    let at = |rev| RangeArgs {
        revision: rev,
        ..rng("\0", "\0")
    };
    assert_eq!(read(&s, &at(2)).kvs[0].value, b"1");
    assert_eq!(keys(&read(&s, &at(4))), ["a", "b"]);
    assert_eq!(read(&s, &at(4)).kvs[0].value, b"2");
    assert_eq!(keys(&read(&s, &at(5))), ["b"]);
    assert_eq!(keys(&read(&s, &at(1))), Vec::<String>::new());
    let future = s.range(&at(6)).expect("storage").expect_err("future");
    assert_eq!(future, KvError::FutureRevision);
    assert_eq!(
        future.to_string(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    let (_, rev) = ok(&s, Command::Compact { revision: 3 });
    assert_eq!(rev, 5, "compaction does not bump the revision");
    assert_eq!(s.compact_revision(), 3);
    let err = s.range(&at(2)).expect("storage").expect_err("compacted");
    assert_eq!(
        err,
        KvError::Compacted {
            compact_revision: 3
        }
    );
    assert_eq!(
        err.to_string(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        read(&s, &at(3)).kvs[0].value,
        b"2",
        "a read at the compact revision still works"
    );
    assert_eq!(keys(&read(&s, &at(4))), ["a", "b"]);
    assert_eq!(
        refused(&s, Command::Compact { revision: 3 }),
        KvError::Compacted {
            compact_revision: 3
        }
    );
    assert_eq!(
        refused(&s, Command::Compact { revision: 9 }),
        KvError::FutureRevision
    );
    ok(&s, Command::Compact { revision: 5 });
    assert_eq!(keys(&read(&s, &at(5))), ["b"]);
    // A range inside a txn is checked the same way.
    let t = Command::Txn(TxnArgs {
        success: vec![RequestOp::Range(at(4))],
        ..TxnArgs::default()
    });
    assert_eq!(
        refused(&s, t),
        KvError::Compacted {
            compact_revision: 5
        }
    );
}

#[test]
fn sort_orders_and_targets() {
    let s = mem();
    ok(&s, put("c", "1")); // 2
    ok(&s, put("a", "3")); // 3
    ok(&s, put("b", "2")); // 4
    ok(&s, put("c", "4")); // 5: c version 2
    let sorted = |order, target| {
        keys(&read(
            &s,
            &RangeArgs {
                sort_order: order,
                sort_target: target,
                ..rng("a", "\0")
            },
        ))
    };
    assert_eq!(sorted(SortOrder::None, SortTarget::Key), ["a", "b", "c"]);
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Key), ["c", "b", "a"]);
    assert_eq!(
        sorted(SortOrder::Ascend, SortTarget::Create),
        ["c", "a", "b"]
    );
    assert_eq!(
        sorted(SortOrder::None, SortTarget::Create),
        ["c", "a", "b"],
        "etcd sorts ascending when only a target is given"
    );
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Mod), ["c", "b", "a"]);
    assert_eq!(
        sorted(SortOrder::Ascend, SortTarget::Value),
        ["b", "a", "c"]
    );
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Version),
        ["c", "a", "b"],
        "ties stay in key order"
    );
    let r = read(
        &s,
        &RangeArgs {
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Value,
            limit: 2,
            keys_only: true,
            ..rng("a", "\0")
        },
    );
    assert_eq!(keys(&r), ["c", "a"], "limit applies after the sort");
    assert!(r.more);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
}

#[test]
fn mod_and_create_revision_filters() {
    let s = mem();
    ok(&s, put("a", "1")); // 2
    ok(&s, put("b", "1")); // 3
    ok(&s, put("c", "1")); // 4
    ok(&s, put("a", "2")); // 5
    let filtered = |args: RangeArgs| read(&s, &args);
    let r = filtered(RangeArgs {
        min_mod_revision: 4,
        ..rng("a", "\0")
    });
    assert_eq!(keys(&r), ["a", "c"]);
    assert_eq!(r.count, 3, "count is taken before the filters, as etcd");
    let r = filtered(RangeArgs {
        max_create_revision: 3,
        min_create_revision: 3,
        ..rng("a", "\0")
    });
    assert_eq!(keys(&r), ["b"]);
    let r = filtered(RangeArgs {
        max_mod_revision: 4,
        limit: 1,
        ..rng("a", "\0")
    });
    assert_eq!(keys(&r), ["b"]);
    assert!(r.more);
}

fn cmp(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        key: key.into(),
        range_end: Vec::new(),
        result,
        target,
    }
}

fn txn_succeeds(s: &Mvcc, compare: Vec<Compare>) -> bool {
    let (out, _) = ok(
        s,
        Command::Txn(TxnArgs {
            compare,
            ..TxnArgs::default()
        }),
    );
    let Outcome::Txn(t) = out else {
        panic!("not a txn")
    };
    t.succeeded
}

#[test]
fn txn_compares_on_every_target_including_missing_keys() {
    use CompareResult::*;
    use CompareTarget::*;
    let s = mem();
    ok(&s, Command::LeaseGrant { id: 9, ttl: 60 });
    ok(&s, put_lease("a", "m", 9)); // 2
    ok(&s, put("a2", "x")); // 3
    let cases = [
        (cmp("a", Equal, Version(1)), true),
        (cmp("a", Greater, Version(0)), true),
        (cmp("a", Equal, Create(2)), true),
        (cmp("a", Less, Mod(3)), true),
        (cmp("a", NotEqual, Mod(2)), false),
        (cmp("a", Equal, Value(b"m".to_vec())), true),
        (cmp("a", Greater, Value(b"a".to_vec())), true),
        (cmp("a", Equal, Lease(9)), true),
        (cmp("a", Equal, Lease(0)), false),
        // A missing key compares as a zero key-value...
        (cmp("zz", Equal, Version(0)), true),
        (cmp("zz", Equal, Create(0)), true),
        (cmp("zz", Equal, Mod(0)), true),
        (cmp("zz", Equal, Lease(0)), true),
        (cmp("zz", Greater, Version(0)), false),
        // ...except that a value compare on no key always fails.
        (cmp("zz", Equal, Value(Vec::new())), false),
        (cmp("zz", NotEqual, Value(b"x".to_vec())), false),
    ];
    for (c, want) in cases {
        assert_eq!(txn_succeeds(&s, vec![c.clone()]), want, "{c:?}");
    }
    // With a range end every key in the range must hold.
    let ranged = |result, target| Compare {
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        result,
        target,
    };
    assert!(txn_succeeds(&s, vec![ranged(Equal, Version(1))]));
    assert!(!txn_succeeds(&s, vec![ranged(Equal, Create(2))]));
    assert!(txn_succeeds(&s, vec![ranged(Greater, Mod(1))]));
    // An empty range compares as a missing key.
    let empty = Compare {
        key: b"x".to_vec(),
        range_end: b"y".to_vec(),
        result: Equal,
        target: Version(0),
    };
    assert!(txn_succeeds(&s, vec![empty]));
    assert_eq!(s.revision(), 3, "read-only txns do not bump the revision");
}

#[test]
fn txn_writes_share_one_revision_and_reads_see_earlier_writes() {
    let s = mem();
    ok(&s, put("c", "old")); // 2
    let mut sub = s.subscribe();
    let t = TxnArgs {
        compare: vec![cmp("c", CompareResult::Equal, CompareTarget::Version(1))],
        success: vec![
            RequestOp::Put(PutArgs {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
                ..PutArgs::default()
            }),
            RequestOp::Range(rng("a", "")),
            RequestOp::Delete(DeleteArgs {
                key: b"c".to_vec(),
                ..DeleteArgs::default()
            }),
            RequestOp::Range(rng("\0", "\0")),
            RequestOp::Range(RangeArgs {
                revision: 2,
                ..rng("\0", "\0")
            }),
        ],
        failure: vec![],
    };
    let (out, rev) = ok(&s, Command::Txn(t));
    assert_eq!(rev, 3, "all writes of a txn share one revision");
    let Outcome::Txn(t) = out else {
        panic!("not a txn")
    };
    assert!(t.succeeded);
    let ResponseOp::Range(r) = &t.responses[1] else {
        panic!("not a range")
    };
    assert_eq!(r.kvs[0].value, b"1", "a read sees the txn's earlier put");
    assert_eq!(r.kvs[0].mod_revision, 3);
    let ResponseOp::Range(r) = &t.responses[3] else {
        panic!("not a range")
    };
    assert_eq!(keys(r), ["a"], "and its earlier delete");
    let ResponseOp::Range(r) = &t.responses[4] else {
        panic!("not a range")
    };
    assert_eq!(keys(r), ["c"], "a historical read inside the txn");
    let batch = sub.try_recv().expect("batch broadcast");
    let evs: Vec<_> = batch
        .events
        .iter()
        .map(|(rev, e)| (*rev, e.kind, e.kv.key.clone()))
        .collect();
    assert_eq!(
        evs,
        vec![
            (3, EventKind::Put, b"a".to_vec()),
            (3, EventKind::Delete, b"c".to_vec())
        ]
    );
    let hist = s
        .events(3, 3, b"\0", b"\0")
        .expect("storage")
        .expect("events");
    assert_eq!(hist, batch.events, "history replays what was broadcast");
}

fn txn_put(key: &str) -> RequestOp {
    RequestOp::Put(PutArgs {
        key: key.into(),
        ..PutArgs::default()
    })
}

fn txn_del(key: &str, end: &str) -> RequestOp {
    RequestOp::Delete(DeleteArgs {
        key: key.into(),
        range_end: end.into(),
        prev_kv: false,
    })
}

fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
    RequestOp::Txn(TxnArgs {
        compare: vec![],
        success,
        failure,
    })
}

fn txn_of(success: Vec<RequestOp>) -> Command {
    Command::Txn(TxnArgs {
        success,
        ..TxnArgs::default()
    })
}

#[test]
fn duplicate_keys_in_a_txn_are_refused() {
    let s = mem();
    ok(&s, put("b", "1"));
    let dup = KvError::DuplicateKey;
    assert_eq!(refused(&s, txn_of(vec![txn_put("a"), txn_put("a")])), dup);
    assert_eq!(
        refused(&s, txn_of(vec![txn_put("b"), txn_del("b", "")])),
        dup
    );
    assert_eq!(
        refused(&s, txn_of(vec![txn_del("a", "c"), txn_put("b")])),
        dup,
        "a put into a deleted range"
    );
    assert_eq!(
        refused(
            &s,
            txn_of(vec![txn_put("a"), nested(vec![txn_put("a")], vec![])])
        ),
        dup
    );
    assert_eq!(
        refused(
            &s,
            txn_of(vec![nested(vec![txn_del("b", "")], vec![]), txn_put("b")])
        ),
        dup
    );
    assert_eq!(
        dup.to_string(),
        "etcdserver: duplicate key given in txn request"
    );
    // The two branches of a nested txn are exclusive: both may put a key.
    ok(
        &s,
        txn_of(vec![nested(vec![txn_put("x")], vec![txn_put("x")])]),
    );
    // Two deletes of the same key are allowed.
    ok(&s, txn_of(vec![txn_del("b", ""), txn_del("b", "")]));
    // The failure branch is checked too, even when it does not run.
    let t = Command::Txn(TxnArgs {
        compare: vec![],
        success: vec![],
        failure: vec![txn_put("q"), txn_put("q")],
    });
    assert_eq!(refused(&s, t), dup);
}

#[test]
fn too_many_ops_in_a_txn() {
    let s = mem();
    let many = |n: usize| txn_of((0..n).map(|i| txn_put(&format!("k{i:03}"))).collect());
    assert_eq!(refused(&s, many(129)), KvError::TooManyOps);
    let (_, rev) = ok(&s, many(128));
    assert_eq!(rev, 2);
    assert_eq!(all_keys(&s).len(), 128);
    // A nested txn gets what its parent left: 100 + 29 > 128.
    let inner = nested((0..29).map(|i| txn_put(&format!("n{i}"))).collect(), vec![]);
    let mut ops: Vec<_> = (0..100).map(|i| txn_put(&format!("o{i}"))).collect();
    ops.push(inner);
    assert_eq!(refused(&s, txn_of(ops)), KvError::TooManyOps);
}

#[test]
fn nested_txn_compares_see_the_state_before_the_outer_txn() {
    let s = mem();
    let inner = RequestOp::Txn(TxnArgs {
        compare: vec![cmp("a", CompareResult::Equal, CompareTarget::Version(0))],
        success: vec![txn_put("inner-saw-no-a")],
        failure: vec![txn_put("inner-saw-a")],
    });
    let (out, rev) = ok(&s, txn_of(vec![txn_put("a"), inner]));
    assert_eq!(rev, 2);
    assert_eq!(all_keys(&s), ["a", "inner-saw-no-a"]);
    let Outcome::Txn(t) = out else {
        panic!("not a txn")
    };
    let ResponseOp::Txn(inner) = &t.responses[1] else {
        panic!("not a txn")
    };
    assert!(inner.succeeded);
    assert_eq!(inner.responses.len(), 1);
}

#[test]
fn put_checks_and_flags() {
    let s = mem();
    assert_eq!(refused(&s, put("", "v")), KvError::EmptyKey);
    assert_eq!(refused(&s, put_lease("a", "v", 5)), KvError::LeaseNotFound);
    let ignore_value = |key: &str| {
        Command::Put(PutArgs {
            key: key.into(),
            ignore_value: true,
            prev_kv: true,
            ..PutArgs::default()
        })
    };
    let err = refused(&s, ignore_value("a"));
    assert_eq!(err, KvError::KeyNotFound);
    assert_eq!(err.to_string(), "etcdserver: key not found");
    ok(&s, Command::LeaseGrant { id: 5, ttl: 30 });
    ok(&s, put_lease("a", "v1", 5)); // 2
    let (out, rev) = ok(&s, ignore_value("a"));
    assert_eq!(rev, 3);
    let Outcome::Put(p) = out else {
        panic!("not a put")
    };
    assert_eq!(p.prev_kv.expect("prev").value, b"v1");
    let kv = get(&s, "a").expect("a");
    assert_eq!(
        (kv.value.as_slice(), kv.version, kv.lease),
        (&b"v1"[..], 2, 0)
    );
    ok(&s, put_lease("a", "v2", 5));
    ok(
        &s,
        Command::Put(PutArgs {
            key: b"a".to_vec(),
            value: b"v3".to_vec(),
            ignore_lease: true,
            ..PutArgs::default()
        }),
    );
    let kv = get(&s, "a").expect("a");
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"v3"[..], 5));
    // Inside a txn the same checks apply, before anything is written.
    let t = txn_of(vec![
        txn_put("b"),
        RequestOp::Put(PutArgs {
            key: b"c".to_vec(),
            ignore_value: true,
            ..PutArgs::default()
        }),
    ]);
    assert_eq!(refused(&s, t), KvError::KeyNotFound);
    let t = txn_of(vec![RequestOp::Put(PutArgs {
        key: b"c".to_vec(),
        lease: 77,
        ..PutArgs::default()
    })]);
    assert_eq!(refused(&s, t), KvError::LeaseNotFound);
    let (out, _) = ok(
        &s,
        Command::Put(PutArgs {
            key: b"a".to_vec(),
            value: b"v4".to_vec(),
            ..PutArgs::default()
        }),
    );
    assert_eq!(
        out,
        Outcome::Put(PutResult { prev_kv: None }),
        "prev_kv only when asked"
    );
}

fn lease_keys(s: &Mvcc, id: LeaseId) -> Vec<String> {
    s.lease(id)
        .expect("storage")
        .expect("lease")
        .keys
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

#[test]
fn leases_attach_detach_and_revoke() {
    let s = mem();
    let (out, rev) = ok(&s, Command::LeaseGrant { id: 1, ttl: 10 });
    assert_eq!(out, Outcome::LeaseGrant { id: 1, ttl: 10 });
    assert_eq!(rev, 1, "a grant does not bump the revision");
    ok(&s, Command::LeaseGrant { id: 2, ttl: 20 });
    assert_eq!(
        refused(&s, Command::LeaseGrant { id: 1, ttl: 5 }),
        KvError::LeaseExists
    );
    assert_eq!(
        refused(
            &s,
            Command::LeaseGrant {
                id: 3,
                ttl: 9_000_000_001
            }
        ),
        KvError::LeaseTtlTooLarge
    );
    ok(
        &s,
        Command::LeaseGrant {
            id: 3,
            ttl: 9_000_000_000,
        },
    );
    ok(&s, put_lease("a", "1", 1)); // 2
    ok(&s, put_lease("b", "1", 1)); // 3
    ok(&s, put_lease("c", "1", 2)); // 4
    ok(&s, put_lease("a", "2", 2)); // 5: moves a to lease 2
    assert_eq!(lease_keys(&s, 1), ["b"]);
    assert_eq!(lease_keys(&s, 2), ["a", "c"]);
    ok(&s, put("c", "2")); // 6: detaches c
    assert_eq!(lease_keys(&s, 2), ["a"]);
    ok(&s, del("b", "")); // 7
    assert_eq!(lease_keys(&s, 1), Vec::<String>::new());
    ok(&s, put_lease("d", "1", 2)); // 8
    let ids: Vec<_> = s.leases().expect("leases").iter().map(|l| l.id).collect();
    assert_eq!(ids, [1, 2, 3]);

    let mut sub = s.subscribe();
    let (out, rev) = ok(&s, Command::LeaseRevoke { id: 2 });
    assert_eq!(out, Outcome::LeaseRevoke);
    assert_eq!(rev, 9, "all the lease's keys go at one revision");
    assert_eq!(all_keys(&s), ["c"]);
    assert_eq!(s.lease(2).expect("storage"), None);
    let batch = sub.try_recv().expect("broadcast");
    let evs: Vec<_> = batch
        .events
        .iter()
        .map(|(r, e)| {
            (
                *r,
                e.kind,
                e.kv.key.clone(),
                e.prev_kv.clone().map(|p| p.value),
            )
        })
        .collect();
    assert_eq!(
        evs,
        vec![
            (9, EventKind::Delete, b"a".to_vec(), Some(b"2".to_vec())),
            (9, EventKind::Delete, b"d".to_vec(), Some(b"1".to_vec())),
        ]
    );
    let (_, rev) = ok(&s, Command::LeaseRevoke { id: 1 });
    assert_eq!(rev, 9, "revoking a lease without keys does not bump");
    assert_eq!(
        refused(&s, Command::LeaseRevoke { id: 1 }),
        KvError::LeaseNotFound
    );
    assert_eq!(
        refused(&s, Command::LeaseGrant { id: 0, ttl: 5 }),
        KvError::LeaseNotFound
    );
}

#[test]
fn events_with_prev_kv_across_a_compaction() {
    let s = mem();
    ok(&s, put("a", "1")); // 2
    ok(&s, put("b", "1")); // 3
    ok(&s, put("a", "2")); // 4
    ok(&s, del("b", "")); // 5
    ok(&s, put("a", "3")); // 6
    ok(&s, put("c", "1")); // 7
    let ev = |start, end, key: &str, end_key: &str| {
        s.events(start, end, key.as_bytes(), end_key.as_bytes())
            .expect("storage")
    };
    let all = ev(0, 0, "\0", "\0").expect("events");
    assert_eq!(all.len(), 6);
    assert_eq!(all[2].1.prev_kv.as_ref().expect("prev").value, b"1");
    assert_eq!(all[3].1.kind, EventKind::Delete);
    assert_eq!(all[3].1.kv.mod_revision, 5);
    assert_eq!(
        all[3].1.kv.version, 0,
        "a delete event carries only the key"
    );
    assert_eq!(ev(3, 5, "b", "").expect("events").len(), 2);
    assert_eq!(ev(4, 6, "a", "").expect("events").len(), 2);

    ok(&s, Command::Compact { revision: 4 });
    // Let physical compaction run.
    ok(&s, put("d", "1")); // 8
    assert_eq!(
        ev(3, 0, "\0", "\0"),
        Err(KvError::Compacted {
            compact_revision: 4
        })
    );
    let from_c = ev(4, 0, "\0", "\0").expect("a watch from the compact revision works");
    let revs: Vec<_> = from_c.iter().map(|(r, _)| *r).collect();
    assert_eq!(revs, [4, 5, 6, 7, 8]);
    assert_eq!(
        from_c[0].1.prev_kv, None,
        "the previous value of an event at the compact revision is compacted"
    );
    assert_eq!(
        from_c[1]
            .1
            .prev_kv
            .as_ref()
            .expect("b's value at 3 is kept")
            .value,
        b"1"
    );
    assert_eq!(
        from_c[2]
            .1
            .prev_kv
            .as_ref()
            .expect("a's value at 4 is kept")
            .value,
        b"2"
    );
    // Reads at the compact revision still see every key as it was.
    let r = read(
        &s,
        &RangeArgs {
            revision: 4,
            ..rng("\0", "\0")
        },
    );
    assert_eq!(keys(&r), ["a", "b"]);
    assert_eq!(r.kvs[1].value, b"1");
}

#[test]
fn subscribers_get_each_batch_after_apply() {
    let s = mem();
    let mut sub = s.subscribe();
    s.apply(&[put("a", "1"), put("b", "1"), del("a", "")], None)
        .expect("apply");
    let batch = sub.try_recv().expect("a batch");
    assert_eq!(batch.revision, 4);
    let revs: Vec<_> = batch.events.iter().map(|(r, _)| *r).collect();
    assert_eq!(revs, [2, 3, 4]);
    s.apply(&[Command::Txn(TxnArgs::default())], None)
        .expect("apply");
    assert!(sub.try_recv().is_err(), "nothing changed, nothing sent");
}

/// A store with a bit of everything: leases, deletes, a txn, a compaction
/// and meta.
fn populated() -> Mvcc {
    let s = mem();
    s.apply(
        &[
            Command::LeaseGrant { id: 10, ttl: 100 },
            Command::LeaseGrant { id: 11, ttl: 200 },
            put("a", "1"),
            put_lease("b", "1", 10),
            put("c", "1"),
            put("a", "2"),
            del("c", ""),
            Command::Txn(TxnArgs {
                compare: vec![],
                success: vec![txn_put("d"), txn_del("a", "")],
                failure: vec![],
            }),
            put_lease("e", "big", 11),
            Command::Compact { revision: 5 },
            put("a", "3"),
        ],
        Some(b"raft-meta"),
    )
    .expect("apply");
    s
}

fn observable(s: &Mvcc) -> impl PartialEq + std::fmt::Debug {
    let reads: Vec<_> = (s.compact_revision()..=s.revision())
        .map(|rev| {
            s.range(&RangeArgs {
                revision: rev,
                ..rng("\0", "\0")
            })
            .expect("storage")
        })
        .collect();
    (
        s.revision(),
        s.compact_revision(),
        reads,
        s.events(s.compact_revision(), 0, b"\0", b"\0")
            .expect("storage"),
        s.leases().expect("leases"),
        s.meta().expect("meta"),
    )
}

#[test]
fn snapshot_restore_round_trip() {
    let s = populated();
    let snap = s.snapshot().expect("snapshot");
    assert_eq!(
        snap,
        s.snapshot().expect("snapshot"),
        "snapshots are stable"
    );
    let fresh = mem();
    fresh.restore(&snap).expect("restore");
    assert_eq!(observable(&fresh), observable(&s));
    assert_eq!(fresh.snapshot().expect("snapshot"), snap);
    // The restored store goes on like the original.
    let next = [put("z", "1"), Command::LeaseRevoke { id: 10 }];
    let a = s.apply(&next, None).expect("apply");
    let b = fresh.apply(&next, None).expect("apply");
    assert_eq!(a, b);
    assert_eq!(
        s.snapshot().expect("snapshot"),
        fresh.snapshot().expect("snapshot")
    );
    // Restoring over a store with content replaces all of it.
    let other = populated();
    other.apply(&[put("only-here", "1")], None).expect("apply");
    other.restore(&snap).expect("restore");
    assert_eq!(other.snapshot().expect("snapshot"), snap);
    assert_eq!(other.revision(), 9);
}

#[test]
fn restore_of_garbage_fails_and_leaves_the_store_intact() {
    let s = populated();
    let before = s.snapshot().expect("snapshot");
    let view = observable(&s);
    let mut flipped = before.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let truncated = &before[..before.len() - 3];
    for bad in [&b"not a snapshot"[..], &[], truncated, &flipped] {
        let err = s.restore(bad).expect_err("garbage restored");
        assert!(matches!(err, Error::InvalidSnapshot(_)), "{err}");
    }
    assert_eq!(s.snapshot().expect("snapshot"), before);
    assert_eq!(observable(&s), view);
}

#[test]
fn reopen_after_close_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kv.redb");
    let (snap, view_rev) = {
        let s = Mvcc::open(&path).expect("open");
        s.apply(
            &[
                Command::LeaseGrant { id: 4, ttl: 40 },
                put_lease("a", "1", 4),
                put("b", &"x".repeat(200_000)),
                put("a", "2"),
                Command::Compact { revision: 3 },
            ],
            Some(b"applied=5"),
        )
        .expect("apply");
        (s.snapshot().expect("snapshot"), s.revision())
    };
    let s = Mvcc::open(&path).expect("reopen");
    assert_eq!(s.revision(), view_rev);
    assert_eq!(s.compact_revision(), 3);
    assert_eq!(s.meta().expect("meta"), Some(b"applied=5".to_vec()));
    assert_eq!(get(&s, "b").expect("b").value.len(), 200_000);
    assert_eq!(s.snapshot().expect("snapshot"), snap);
    let st = s.status().expect("status");
    assert!(
        st.db_size >= st.db_size_in_use && st.db_size_in_use > 200_000,
        "{st:?}"
    );
    s.defragment().expect("defragment");
    assert_eq!(s.snapshot().expect("snapshot"), snap);
}

#[test]
fn unsynced_applies_are_visible_and_kept_by_a_clean_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kv.redb");
    let snap = {
        let s = Mvcc::open(&path).expect("open");
        let mut events = s.subscribe();
        s.apply_unsynced(&[put("a", "1")], Some(b"applied=1"))
            .expect("apply unsynced");
        assert_eq!(get(&s, "a").expect("a").value, b"1");
        assert_eq!(s.meta().expect("meta"), Some(b"applied=1".to_vec()));
        assert_eq!(events.try_recv().expect("event").revision, 2);
        s.apply_unsynced(&[put("b", "2")], Some(b"applied=2"))
            .expect("apply unsynced");
        s.sync().expect("sync");
        s.apply_unsynced(&[put("c", "3")], Some(b"applied=3"))
            .expect("apply unsynced");
        s.snapshot().expect("snapshot")
    };
    // Closing the store makes the last unsynced batch durable too.
    let s = Mvcc::open(&path).expect("reopen");
    assert_eq!(s.meta().expect("meta"), Some(b"applied=3".to_vec()));
    assert_eq!(s.snapshot().expect("snapshot"), snap);
}

fn range_op(key: &str) -> RequestOp {
    RequestOp::Range(rng(key, ""))
}

#[test]
fn read_only_txn_is_served_as_a_read_with_the_applied_result() {
    let s = mem();
    ok(&s, put("a", "1"));
    ok(&s, put("b", "2"));
    let args = TxnArgs {
        compare: vec![cmp(
            "a",
            CompareResult::Equal,
            CompareTarget::Value(b"1".to_vec()),
        )],
        success: vec![range_op("a"), range_op("b")],
        failure: vec![range_op("b")],
    };
    assert!(args.is_read_only());
    let (read, revision) = s.txn_read(&args).expect("storage").expect("read-only txn");
    assert_eq!(revision, s.revision());
    // Applying the same txn gives the same result and changes nothing.
    let (applied, applied_rev) = ok(&s, Command::Txn(args));
    assert_eq!(applied, Outcome::Txn(read));
    assert_eq!(applied_rev, revision);
    assert_eq!(s.revision(), revision);

    // Puts, deletes and nested txns are writes (etcd's isTxnReadonly).
    for op in [
        txn_put("c"),
        txn_del("a", ""),
        nested(vec![range_op("a")], vec![]),
    ] {
        let args = TxnArgs {
            success: vec![range_op("a")],
            failure: vec![op],
            ..TxnArgs::default()
        };
        assert!(!args.is_read_only(), "{args:?}");
        assert!(matches!(s.txn_read(&args), Err(Error::NotReadOnly)));
    }
    // Refusals are the same as on apply.
    let too_many = TxnArgs {
        success: (0..200).map(|i| range_op(&format!("k{i}"))).collect(),
        ..TxnArgs::default()
    };
    assert_eq!(
        s.txn_read(&too_many)
            .expect("storage")
            .expect_err("refused"),
        refused(&s, Command::Txn(too_many))
    );
}

#[test]
fn open_replaces_a_database_whose_creation_crashed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kv.redb");
    let leftover = dir.path().join("kv.redb.creating");
    std::fs::write(&leftover, b"half a database").expect("write");
    let s = Mvcc::open(&path).expect("open");
    assert_eq!(s.revision(), 1);
    assert!(!leftover.exists(), "the half-created file is gone");
    s.apply(&[put("a", "1")], None).expect("apply");
    drop(s);
    assert_eq!(Mvcc::open(&path).expect("reopen").revision(), 2);
}

#[test]
fn large_compaction_completes_over_several_batches_without_visible_change() {
    let s = mem();
    let keys: Vec<String> = (0..50).map(|i| format!("k{i:02}")).collect();
    let mut n = 0;
    for _ in 0..25 {
        let batch: Vec<_> = (0..1000)
            .map(|i| {
                n += 1;
                if i % 7 == 0 {
                    del(&keys[(n * 13) % keys.len()], "")
                } else {
                    put(&keys[n % keys.len()], &n.to_string())
                }
            })
            .collect();
        s.apply(&batch, None).expect("apply");
    }
    let c = s.revision() - 100;
    let at_c = RangeArgs {
        revision: c,
        ..rng("\0", "\0")
    };
    let before_c = read(&s, &at_c);
    let now = read(&s, &rng("\0", "\0"));
    let events = s.events(c + 1, 0, b"\0", b"\0").expect("storage");
    s.apply(&[Command::Compact { revision: c }], None)
        .expect("apply");
    let snap = s.snapshot().expect("snapshot");
    for _ in 0..4 {
        // Each batch removes a bounded share of the garbage; nothing a
        // reader or a snapshot sees changes meanwhile.
        assert_eq!(read(&s, &at_c), before_c);
        assert_eq!(read(&s, &rng("\0", "\0")), now);
        assert_same_snapshot(&s.snapshot().expect("snapshot"), &snap, "mid-compaction");
        assert_eq!(s.events(c + 1, 0, b"\0", b"\0").expect("storage"), events);
        s.apply(&[Command::Txn(TxnArgs::default())], None)
            .expect("apply");
    }
}

#[test]
fn readers_run_while_batches_apply() {
    let s = Arc::new(mem());
    let writer = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            for i in 0..200 {
                s.apply(&[put("a", &i.to_string()), put("b", &i.to_string())], None)
                    .expect("apply");
            }
        })
    };
    let mut last = 0;
    while !writer.is_finished() {
        let (r, rev) = s.range(&rng("a", "c")).expect("storage").expect("range");
        assert!(rev >= last, "revisions never go back");
        last = rev;
        if r.kvs.len() == 2 {
            assert_eq!(r.kvs[0].value, r.kvs[1].value, "a batch is seen whole");
        }
    }
    writer.join().expect("writer");
    assert_eq!(s.revision(), 401);
}

#[test]
fn a_key_written_twice_in_one_revision_where_etcd_allows_it() {
    // etcd's checkIntervals lets a nested txn put a key that a later
    // sibling txn deletes; both writes happen at the txn's revision.
    let s = mem();
    ok(&s, put("a", "0")); // 2
    let (_, rev) = ok(
        &s,
        txn_of(vec![
            nested(vec![txn_put("a")], vec![]),
            nested(vec![txn_del("a", "")], vec![]),
        ]),
    );
    assert_eq!(rev, 3);
    assert_eq!(get(&s, "a"), None);
    let evs = s.events(3, 3, b"a", b"").expect("storage").expect("events");
    let shape: Vec<_> = evs
        .iter()
        .map(|(r, e)| {
            (
                *r,
                e.kind,
                e.kv.version,
                e.prev_kv.as_ref().map(|p| p.version),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (3, EventKind::Put, 2, Some(1)),
            (3, EventKind::Delete, 0, Some(2))
        ]
    );
    let fresh = mem();
    fresh
        .restore(&s.snapshot().expect("snapshot"))
        .expect("such a history restores");
    assert_eq!(observable(&fresh), observable(&s));
}

/// A plain model of etcd's keyspace: the keys at every revision.
#[derive(Default)]
struct Model {
    states: Vec<std::collections::BTreeMap<Vec<u8>, KeyValue>>,
}

impl Model {
    fn current(&self) -> std::collections::BTreeMap<Vec<u8>, KeyValue> {
        self.states.last().cloned().unwrap_or_default()
    }
    fn rev(&self) -> Revision {
        self.states.len() as Revision
    }
    fn put(&mut self, key: &[u8], value: &[u8]) {
        let mut next = self.current();
        let rev = self.rev() + 1;
        let kv = match next.get(key) {
            Some(old) => KeyValue {
                value: value.to_vec(),
                mod_revision: rev,
                version: old.version + 1,
                ..old.clone()
            },
            None => KeyValue {
                key: key.to_vec(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                value: value.to_vec(),
                lease: 0,
            },
        };
        next.insert(key.to_vec(), kv);
        self.states.push(next);
    }
    fn delete(&mut self, from: &[u8], to: &[u8]) {
        let mut next = self.current();
        let before = next.len();
        next.retain(|k, _| !(k.as_slice() >= from && k.as_slice() < to));
        if next.len() != before {
            self.states.push(next);
        }
    }
}

#[test]
fn reads_at_every_revision_match_a_model_before_and_after_compaction() {
    let s = mem();
    let mut model = Model::default();
    model.states.push(Default::default()); // revision 1: empty
    let mut r = Rng(7);
    let key = |r: &mut Rng| vec![b'a' + r.below(8) as u8];
    for i in 0..300 {
        let batch: Vec<Command> = (0..1 + r.below(5))
            .map(|_| {
                let k = key(&mut r);
                if r.below(4) == 0 {
                    let mut end = k.clone();
                    end[0] += 1 + r.below(3) as u8;
                    model.delete(&k, &end);
                    Command::Delete(DeleteArgs {
                        key: k,
                        range_end: end,
                        prev_kv: false,
                    })
                } else {
                    let v = format!("{i}").into_bytes();
                    model.put(&k, &v);
                    Command::Put(PutArgs {
                        key: k,
                        value: v,
                        ..PutArgs::default()
                    })
                }
            })
            .collect();
        s.apply(&batch, None).expect("apply");
    }
    assert_eq!(s.revision(), model.rev());
    let check = |model: &Model, from: Revision| {
        for rev in from..=model.rev() {
            let got = read(
                &s,
                &RangeArgs {
                    revision: rev,
                    ..rng("\0", "\0")
                },
            );
            let want: Vec<KeyValue> = model.states[rev as usize - 1].values().cloned().collect();
            assert_eq!(got.kvs, want, "revision {rev}");
        }
    };
    check(&model, 1);
    for c in [40, 41, 150, model.rev() - 3] {
        s.apply(&[Command::Compact { revision: c }, put("zz", "tick")], None)
            .expect("apply");
        model.put(b"zz", b"tick");
        check(&model, c);
        assert!(
            s.range(&RangeArgs {
                revision: c - 1,
                ..rng("a", "")
            })
            .expect("storage")
            .is_err()
        );
    }
}

pub(crate) use crate::testing::Rng;

/// A key from a small keyspace, so keys collide often.
fn random_key(r: &mut Rng) -> Vec<u8> {
    format!("k{}", r.below(12)).into_bytes()
}

/// A random command over a small keyspace, so keys collide often.
pub(crate) fn random_command(r: &mut Rng, max_rev: Revision) -> Command {
    match r.below(20) {
        0..=7 => Command::Put(PutArgs {
            key: random_key(r),
            value: vec![b'v'; r.below(3000) as usize],
            lease: if r.below(3) == 0 {
                1 + r.below(3) as i64
            } else {
                0
            },
            prev_kv: r.below(2) == 0,
            ignore_value: r.below(10) == 0,
            ignore_lease: false,
        }),
        8..=9 => {
            let key = random_key(r);
            let range_end = match r.below(3) {
                0 => Vec::new(),
                1 => b"k5".to_vec(),
                _ => vec![0],
            };
            Command::Delete(DeleteArgs {
                key,
                range_end,
                prev_kv: r.below(2) == 0,
            })
        }
        10..=13 => {
            let key = random_key(r);
            Command::Txn(TxnArgs {
                compare: vec![Compare {
                    key: key.clone(),
                    range_end: Vec::new(),
                    result: CompareResult::Greater,
                    target: CompareTarget::Version(r.below(3) as i64),
                }],
                success: vec![
                    RequestOp::Put(PutArgs {
                        key: key.clone(),
                        value: r.next_u64().to_be_bytes().to_vec(),
                        ..PutArgs::default()
                    }),
                    RequestOp::Delete(DeleteArgs {
                        key: random_key(r),
                        ..DeleteArgs::default()
                    }),
                    RequestOp::Range(RangeArgs {
                        key: b"k".to_vec(),
                        range_end: b"l".to_vec(),
                        ..RangeArgs::default()
                    }),
                ],
                failure: vec![RequestOp::Put(PutArgs {
                    key: random_key(r),
                    value: b"f".to_vec(),
                    ..PutArgs::default()
                })],
            })
        }
        14..=15 => Command::Compact {
            revision: 1 + r.below(max_rev.max(1) as u64) as i64,
        },
        16..=17 => Command::LeaseGrant {
            id: 1 + r.below(3) as i64,
            ttl: 10,
        },
        _ => Command::LeaseRevoke {
            id: 1 + r.below(3) as i64,
        },
    }
}

#[test]
fn same_commands_give_identical_snapshots_whatever_the_batching() {
    for seed in 0..8 {
        let mut r = Rng(seed);
        let commands: Vec<_> = (0..400)
            .map(|i| random_command(&mut r, 2 + i / 2))
            .collect();
        let one_by_one = mem();
        let mut results_a = Vec::new();
        for c in &commands {
            results_a.extend(
                one_by_one
                    .apply(std::slice::from_ref(c), None)
                    .expect("apply"),
            );
        }
        let batched = mem();
        let mut results_b = Vec::new();
        let mut rest = &commands[..];
        while !rest.is_empty() {
            let n = (1 + r.below(40) as usize).min(rest.len());
            results_b.extend(batched.apply(&rest[..n], None).expect("apply"));
            rest = &rest[n..];
        }
        assert_eq!(results_a, results_b, "seed {seed}");
        assert_same_snapshot(
            &one_by_one.snapshot().expect("snapshot"),
            &batched.snapshot().expect("snapshot"),
            &format!("seed {seed}"),
        );
        assert_eq!(observable(&one_by_one), observable(&batched), "seed {seed}");
    }
}
