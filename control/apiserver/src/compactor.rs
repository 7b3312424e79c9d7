//! Compacts the store's history, as kube-apiserver does every
//! `--etcd-compaction-interval`: without it the store keeps every revision
//! of every object forever (each pod binding, status write and lease
//! renewal), and its disk, snapshots and memory grow with the cluster's
//! age instead of its size.
//!
//! The algorithm is kube-apiserver's (`storage/etcd3/compact.go`), so
//! several apiservers over one store compact once per interval between
//! them: each round, a transaction compares the version of
//! `compact_rev_key` with the version this server last saw; the winner
//! stores the current revision there and compacts to the revision stored
//! in the round before. History therefore always reaches back at least
//! one interval, which is what watchers resuming from a resourceVersion
//! and `continue` tokens rely on.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

/// The key whose version counts compaction rounds (kube-apiserver's name,
/// so a shoal apiserver and a kube-apiserver over one etcd take turns).
pub const COMPACT_REV_KEY: &str = "compact_rev_key";

/// Runs one round every `interval` until the task is aborted.
pub async fn run(mut client: Client, interval: Duration) {
    // (rounds seen: the key's version; the revision to compact to next)
    let mut state = (0_i64, 0_i64);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match round(&mut client, state).await {
            Ok(next) => state = next,
            Err(e) => tracing::warn!("compacting the store's history: {e}"),
        }
    }
}

/// One round: `seen` is the key's version this server last saw, `rev` the
/// revision recorded then. Returns the new pair.
pub async fn round(
    client: &mut Client,
    (seen, rev): (i64, i64),
) -> Result<(i64, i64), etcd_client::Error> {
    let txn = Txn::new()
        .when([Compare::version(COMPACT_REV_KEY, CompareOp::Equal, seen)])
        .and_then([TxnOp::put(COMPACT_REV_KEY, rev.to_string(), None)])
        .or_else([TxnOp::get(COMPACT_REV_KEY, None)]);
    let resp = client.txn(txn).await?;
    let current = resp.header().map_or(0, |h| h.revision());
    if !resp.succeeded() {
        // Another apiserver took this round: follow its count.
        let version = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.version()),
                _ => None,
            })
            .unwrap_or(seen);
        return Ok((version, current));
    }
    if rev > 0 {
        client.compact(rev, None).await?;
        tracing::info!(revision = rev, "compacted the store's history");
    }
    Ok((seen + 1, current))
}
