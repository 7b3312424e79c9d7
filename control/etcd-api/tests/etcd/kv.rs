//! KV through etcd-client: reads, writes, transactions, compaction.

use anyhow::Result;
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;

use crate::common::{Server, grpc_error, within};

fn keys(r: &etcd_client::GetResponse) -> Vec<String> {
    r.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

#[tokio::test]
async fn put_and_get_with_prefix_limit_keys_only_and_count_only() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    for (k, v) in [
        ("/a/1", "one"),
        ("/a/2", "two"),
        ("/a/3", "three"),
        ("/b/1", "other"),
    ] {
        within(c.put(k, v, None)).await??;
    }

    let r = within(c.get("/a/2", None)).await??;
    assert_eq!(r.kvs().len(), 1);
    assert_eq!(r.kvs()[0].value(), b"two");
    assert_eq!(r.kvs()[0].version(), 1);
    assert_eq!(
        r.header().map(|h| h.revision()),
        Some(5),
        "4 puts after revision 1"
    );

    let r = within(c.get("/a/", Some(GetOptions::new().with_prefix()))).await??;
    assert_eq!(keys(&r), ["/a/1", "/a/2", "/a/3"]);
    assert_eq!(r.count(), 3);

    let r = within(c.get("/a/", Some(GetOptions::new().with_prefix().with_limit(2)))).await??;
    assert_eq!(keys(&r), ["/a/1", "/a/2"]);
    assert!(r.more());
    assert_eq!(r.count(), 3);

    let r = within(c.get(
        "/a/",
        Some(GetOptions::new().with_prefix().with_keys_only()),
    ))
    .await??;
    assert_eq!(keys(&r), ["/a/1", "/a/2", "/a/3"]);
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));

    let r = within(c.get("/", Some(GetOptions::new().with_prefix().with_count_only()))).await??;
    assert_eq!((r.count(), r.kvs().len()), (4, 0));

    let r = within(c.get("/a/1", Some(GetOptions::new().with_serializable()))).await??;
    assert_eq!(r.kvs()[0].value(), b"one");

    let missing = within(c.get("/nope", None)).await??;
    assert!(missing.kvs().is_empty());
    server.stop().await
}

#[tokio::test]
async fn get_at_an_older_revision_sees_the_old_value() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let first = within(c.put("k", "v1", None)).await??;
    let rev1 = first.header().map(|h| h.revision()).unwrap_or_default();
    within(c.put("k", "v2", Some(PutOptions::new().with_prev_key()))).await??;
    let r = within(c.get("k", Some(GetOptions::new().with_revision(rev1)))).await??;
    assert_eq!(r.kvs()[0].value(), b"v1");
    let r = within(c.get("k", None)).await??;
    let kv = &r.kvs()[0];
    assert_eq!(
        (kv.value(), kv.version(), kv.create_revision()),
        (&b"v2"[..], 2, rev1)
    );
    assert_eq!(kv.mod_revision(), rev1 + 1);

    let (code, message) = grpc_error(
        c.get("k", Some(GetOptions::new().with_revision(rev1 + 100)))
            .await,
    );
    assert_eq!(
        (code, message.as_str()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );
    server.stop().await
}

#[tokio::test]
async fn put_returns_the_previous_value_and_delete_the_deleted_ones() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    within(c.put("p/1", "a", None)).await??;
    let r = within(c.put("p/1", "b", Some(PutOptions::new().with_prev_key()))).await??;
    assert_eq!(
        r.prev_key().map(|kv| kv.value().to_vec()),
        Some(b"a".to_vec())
    );
    within(c.put("p/2", "c", None)).await??;

    let r = within(c.delete(
        "p/",
        Some(DeleteOptions::new().with_prefix().with_prev_key()),
    ))
    .await??;
    assert_eq!(r.deleted(), 2);
    let values: Vec<_> = r.prev_kvs().iter().map(|kv| kv.value().to_vec()).collect();
    assert_eq!(values, [b"b".to_vec(), b"c".to_vec()]);
    let r = within(c.get("p/", Some(GetOptions::new().with_prefix()))).await??;
    assert_eq!(r.count(), 0);

    let nothing = within(c.delete("p/1", None)).await??;
    assert_eq!(nothing.deleted(), 0);
    server.stop().await
}

#[tokio::test]
async fn txn_compares_version_value_create_and_mod() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;

    // Create-if-absent: version == 0.
    let create = Txn::new()
        .when([Compare::version("lock", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("lock", "me", None)])
        .or_else([TxnOp::get("lock", None)]);
    let r = within(c.txn(create.clone())).await??;
    assert!(r.succeeded());
    let created_at = r.header().map(|h| h.revision()).unwrap_or_default();
    let r = within(c.txn(create)).await??;
    assert!(!r.succeeded());
    match r.op_responses().first() {
        Some(TxnOpResponse::Get(g)) => assert_eq!(g.kvs()[0].value(), b"me"),
        other => panic!("expected the failure branch's get, got {other:?}"),
    }

    let by_value = Txn::new()
        .when([Compare::value("lock", CompareOp::Equal, "me")])
        .and_then([
            TxnOp::put("lock", "you", None),
            TxnOp::put("other", "x", None),
        ]);
    assert!(within(c.txn(by_value)).await??.succeeded());

    let by_create = Txn::new()
        .when([Compare::create_revision(
            "lock",
            CompareOp::Equal,
            created_at,
        )])
        .and_then([TxnOp::delete("other", None)]);
    assert!(within(c.txn(by_create)).await??.succeeded());

    let stale_mod = Txn::new()
        .when([Compare::mod_revision("lock", CompareOp::Equal, created_at)])
        .and_then([TxnOp::put("lock", "stale", None)]);
    assert!(!within(c.txn(stale_mod)).await??.succeeded());
    let r = within(c.get("lock", None)).await??;
    assert_eq!(r.kvs()[0].value(), b"you");
    assert!(within(c.get("other", None)).await??.kvs().is_empty());
    server.stop().await
}

#[tokio::test]
async fn read_only_txn_is_answered_without_a_proposal() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let put = within(c.put("ro", "1", None)).await??;
    let revision = put.header().map(|h| h.revision()).unwrap_or_default();
    let index = within(c.status()).await??.raft_index();

    let read = |serializable: bool| {
        let get = |key: &str| {
            let mut options = GetOptions::new();
            if serializable {
                options = options.with_serializable();
            }
            TxnOp::get(key, Some(options))
        };
        Txn::new()
            .when([Compare::value("ro", CompareOp::Equal, "1")])
            .and_then([get("ro"), get("missing")])
            .or_else([get("missing")])
    };
    for serializable in [false, true] {
        let r = within(c.txn(read(serializable))).await??;
        assert!(r.succeeded());
        assert_eq!(r.header().map(|h| h.revision()), Some(revision));
        match r.op_responses().as_slice() {
            [TxnOpResponse::Get(ro), TxnOpResponse::Get(missing)] => {
                assert_eq!(ro.kvs()[0].value(), b"1");
                assert!(missing.kvs().is_empty());
            }
            other => panic!("expected two gets, got {other:?}"),
        }
    }
    assert_eq!(
        within(c.status()).await??.raft_index(),
        index,
        "a read-only txn was proposed"
    );

    // A txn that may write is proposed, even when its compare fails.
    let write = Txn::new()
        .when([Compare::value("ro", CompareOp::Equal, "2")])
        .and_then([TxnOp::put("ro", "3", None)])
        .or_else([TxnOp::get("ro", None)]);
    assert!(!within(c.txn(write)).await??.succeeded());
    assert_eq!(within(c.status()).await??.raft_index(), index + 1);
    server.stop().await
}

#[tokio::test]
async fn txn_refuses_duplicate_keys_and_too_many_ops() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    assert_eq!(
        grpc_error(c.txn(dup).await),
        (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request".to_owned()
        )
    );
    let many: Vec<_> = (0..129)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    assert_eq!(
        grpc_error(c.txn(Txn::new().and_then(many)).await),
        (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request".to_owned()
        )
    );
    server.stop().await
}

#[tokio::test]
async fn compacted_revisions_cannot_be_read() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let mut revs = Vec::new();
    for v in ["1", "2", "3"] {
        let r = within(c.put("c", v, None)).await??;
        revs.push(r.header().map(|h| h.revision()).unwrap_or_default());
    }
    within(c.compact(revs[1], None)).await??;
    let (code, message) = grpc_error(
        c.get("c", Some(GetOptions::new().with_revision(revs[0])))
            .await,
    );
    assert_eq!(code, Code::OutOfRange);
    assert_eq!(
        message,
        "etcdserver: mvcc: required revision has been compacted"
    );
    // The compact revision itself is still readable, as in etcd.
    let r = within(c.get("c", Some(GetOptions::new().with_revision(revs[1])))).await??;
    assert_eq!(r.kvs()[0].value(), b"2");
    // Compacting again at or below it is refused.
    let again = grpc_error(c.compact(revs[0], None).await);
    assert_eq!(again.0, Code::OutOfRange);
    server.stop().await
}

#[tokio::test]
async fn a_range_ending_before_its_key_is_empty() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    within(c.put("m", "v", None)).await??;
    let r = within(c.get("z", Some(GetOptions::new().with_range("a")))).await??;
    assert_eq!((r.count(), r.kvs().len()), (0, 0));
    server.stop().await
}

#[tokio::test]
async fn an_empty_key_is_refused() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let put = grpc_error(c.put("", "v", None).await);
    assert_eq!(
        put,
        (
            Code::InvalidArgument,
            "etcdserver: key is not provided".to_owned()
        )
    );
    server.stop().await
}

#[tokio::test]
async fn values_over_one_and_a_half_mib_are_too_large() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    // Over etcd's limit but within gRPC's overhead allowance: the handler refuses it.
    let just_over = vec![b'x'; 1536 * 1024 + 1];
    let r = grpc_error(c.put("big", just_over, None).await);
    assert_eq!(
        r,
        (
            Code::InvalidArgument,
            "etcdserver: request is too large".to_owned()
        )
    );
    // Beyond the gRPC limit too: refused while decoding, same answer.
    let far_over = vec![b'x'; 3 * 1024 * 1024];
    let r = grpc_error(c.put("big", far_over, None).await);
    assert_eq!(
        r,
        (
            Code::InvalidArgument,
            "etcdserver: request is too large".to_owned()
        )
    );
    // Under the limit is fine, and the server is still serving.
    within(c.put("big", vec![b'x'; 1024 * 1024], None)).await??;
    let r = within(c.get("big", Some(GetOptions::new().with_count_only()))).await??;
    assert_eq!(r.count(), 1);
    server.stop().await
}
