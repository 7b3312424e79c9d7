use openraft::{
    Entry, EntryPayload, RaftLogReader,
    storage::{RaftLogStorage, RaftLogStorageExt},
    testing::{blank_ent, log_id},
};
use shoal_mvcc::{Command, PutArgs};

use super::*;

fn put_ent(term: u64, index: u64, key: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(vec![Command::Put(PutArgs {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })]),
    }
}

fn open(dir: &tempfile::TempDir) -> LogStore {
    LogStore::open(&dir.path().join("raft-log.redb")).expect("open log store")
}

async fn indexes(store: &mut LogStore) -> Vec<u64> {
    store
        .try_get_log_entries(0..)
        .await
        .expect("read entries")
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

#[tokio::test]
async fn append_reads_back_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open(&dir);
        let empty = store.get_log_state().await.expect("log state");
        assert_eq!((empty.last_purged_log_id, empty.last_log_id), (None, None));

        store
            .blocking_append([
                blank_ent::<TypeConfig>(1, 1, 1),
                put_ent(1, 2, "a"),
                put_ent(1, 3, "b"),
            ])
            .await
            .expect("append");
        let entries = store.try_get_log_entries(2..=3).await.expect("read");
        assert_eq!(entries, vec![put_ent(1, 2, "a"), put_ent(1, 3, "b")]);
        store.save_vote(&Vote::new(2, 1)).await.expect("save vote");
        store
            .save_committed(Some(log_id(1, 1, 2)))
            .await
            .expect("save committed");
    }
    // Reopened: entries, vote and committed are still there.
    let mut store = open(&dir);
    let state = store.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 3)));
    assert_eq!(indexes(&mut store).await, vec![1, 2, 3]);
    assert_eq!(
        store.read_vote().await.expect("read vote"),
        Some(Vote::new(2, 1))
    );
    assert_eq!(
        store.read_committed().await.expect("read committed"),
        Some(log_id(1, 1, 2))
    );
}

#[tokio::test]
async fn truncate_and_purge_leave_no_hole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir);
    store
        .blocking_append((1..=10).map(|i| put_ent(1, i, "k")))
        .await
        .expect("append");

    store.truncate(log_id(1, 1, 8)).await.expect("truncate");
    assert_eq!(indexes(&mut store).await, (1..=7).collect::<Vec<_>>());

    store.purge(log_id(1, 1, 4)).await.expect("purge");
    assert_eq!(indexes(&mut store).await, vec![5, 6, 7]);
    let state = store.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 7)));

    // Everything purged: the last log id is the last purged one.
    store.purge(log_id(1, 1, 7)).await.expect("purge all");
    let state = store.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 7)));
    assert!(indexes(&mut store).await.is_empty());

    // A conflicting entry replaces the old one after truncation.
    store
        .blocking_append([put_ent(2, 8, "x")])
        .await
        .expect("append");
    assert_eq!(
        store.get_log_state().await.expect("state").last_log_id,
        Some(log_id(2, 1, 8))
    );
}

#[tokio::test]
async fn corrupt_entry_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir);
    store
        .blocking_append([put_ent(1, 1, "a")])
        .await
        .expect("append");
    {
        let txn = store.db.begin_write().expect("begin");
        txn.open_table(LOGS)
            .expect("table")
            .insert(2, [0xff_u8, 0xff, 0xff].as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }
    let err = store
        .try_get_log_entries(1..=2)
        .await
        .expect_err("garbage must not decode");
    assert!(
        err.to_string().contains("Logs"),
        "error names the logs: {err}"
    );
    assert!(
        store.get_log_state().await.is_err(),
        "last entry is garbage"
    );
}

#[tokio::test]
async fn entry_at_wrong_index_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir);
    {
        let bytes = postcard::to_stdvec(&put_ent(1, 5, "a")).expect("encode");
        let txn = store.db.begin_write().expect("begin");
        txn.open_table(LOGS)
            .expect("table")
            .insert(4, bytes.as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }
    let err = store
        .try_get_log_entries(..)
        .await
        .expect_err("index mismatch");
    assert!(err.to_string().contains("index 4"), "{err}");
}
