//! Maintenance through etcd-client: status, snapshot, defragment, alarms.

use std::sync::Arc;

use anyhow::{Context, Result};
use etcd_client::{AlarmAction, AlarmType, GetOptions};
use shoal_etcd_api::{Backend, LocalBackend, LocalConfig, SERVER_VERSION, snapshot};
use shoal_mvcc::{Mvcc, RangeArgs};

use crate::common::{Server, within};

#[tokio::test]
async fn status_reports_version_leader_raft_progress_and_size() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    within(c.put("k", "v", None)).await??;
    let status = within(c.status()).await??;
    let header = status.header().context("status has a header")?;
    assert_eq!(status.version(), SERVER_VERSION);
    assert_eq!(
        status.leader(),
        header.member_id(),
        "a single member leads itself"
    );
    assert_eq!(header.revision(), 2);
    assert_eq!(status.raft_index(), 1, "one command applied");
    assert_eq!(status.raft_applied_index(), status.raft_index());
    assert_eq!(status.raft_term(), 1);
    assert!(status.db_size() > 0);
    server.stop().await
}

#[tokio::test]
async fn a_snapshot_download_restores_into_a_fresh_keyspace() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    for i in 0..50 {
        within(c.put(format!("snap/{i:02}"), format!("value {i}"), None)).await??;
    }
    let mut stream = within(c.snapshot()).await??;
    let mut file = Vec::new();
    while let Some(chunk) = within(stream.message()).await?? {
        file.extend_from_slice(chunk.blob());
    }
    assert_eq!(
        file.len() % 512,
        32,
        "etcdctl's length check: sectors plus a sha256"
    );
    let payload = snapshot::decode(&file)?;

    let dir = tempfile::tempdir()?;
    let restored = Arc::new(Mvcc::open(&dir.path().join("restored.redb"))?);
    restored.restore(payload)?;
    let backend = LocalBackend::start(restored, LocalConfig::default())?;
    let args = RangeArgs {
        key: b"snap/".to_vec(),
        range_end: b"snap0".to_vec(),
        ..RangeArgs::default()
    };
    let (result, revision) = backend.mvcc().range(&args)??;
    assert_eq!(result.count, 50);
    assert_eq!(revision, 51);
    assert_eq!(result.kvs[7].value, b"value 7");
    server.stop().await
}

#[tokio::test]
async fn defragment_keeps_the_data_and_alarms_are_empty() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    for i in 0..20 {
        within(c.put(format!("d/{i}"), vec![b'x'; 4096], None)).await??;
    }
    within(c.delete("d/", Some(etcd_client::DeleteOptions::new().with_prefix()))).await??;
    within(c.put("kept", "v", None)).await??;
    within(c.defragment()).await??;
    let r = within(c.get("kept", Some(GetOptions::new()))).await??;
    assert_eq!(r.kvs()[0].value(), b"v");
    let alarms = within(c.alarm(AlarmAction::Get, AlarmType::None, None)).await??;
    assert!(alarms.alarms().is_empty());
    server.stop().await
}
