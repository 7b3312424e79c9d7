use std::collections::BTreeSet;

use openraft::{
    Membership,
    testing::{StoreBuilder, Suite, log_id},
};
use tempfile::TempDir;

use super::*;
use crate::log_store::LogStore;

#[test]
fn applied_state_round_trips_through_postcard() {
    let mut nodes = std::collections::BTreeMap::new();
    nodes.insert(
        1,
        crate::Member {
            name: "a".into(),
            peer_url: "http://127.0.0.1:1".into(),
            client_url: "http://127.0.0.1:2".into(),
        },
    );
    let state = AppliedState {
        last_applied: Some(log_id(3, 1, 9)),
        membership: StoredMembership::new(
            Some(log_id(2, 1, 4)),
            Membership::new(vec![BTreeSet::from([1])], nodes),
        ),
    };
    let bytes = postcard::to_stdvec(&state).expect("encode");
    assert_eq!(AppliedState::decode(Some(&bytes)).expect("decode"), state);
    assert_eq!(
        AppliedState::decode(None).expect("none"),
        AppliedState::default()
    );
    assert!(AppliedState::decode(Some(&[0xff, 0xff])).is_err());
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(&dir.path().join(crate::LOG_FILE)).expect("open log");
        let mvcc =
            Arc::new(Mvcc::open(&dir.path().join(crate::STATE_FILE)).expect("open keyspace"));
        let sm = StateMachine::open(
            mvcc,
            dir.path().join(crate::SNAPSHOT_FILE),
            // Small, so the suite sees both unsynced and durable applies.
            3,
            crate::DEFAULT_APPLY_SYNC_INTERVAL,
        )?;
        Ok((dir, log, sm))
    }
}

/// openraft's own conformance suite for log stores and state machines.
#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}
