//! Watch through etcd-client: live events, history, many watchers on one
//! stream, cancel, compaction, progress, and a client too slow to keep up.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use etcd_client::{
    EventType, GetOptions, WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};
use shoal_etcd_api::Config;

use crate::common::{Server, within};

/// The next response on the stream.
async fn next(stream: &mut WatchStream) -> Result<WatchResponse> {
    within(stream.message())
        .await??
        .context("watch stream ended")
}

/// The next response that carries events.
async fn next_events(stream: &mut WatchStream) -> Result<WatchResponse> {
    loop {
        let r = next(stream).await?;
        if !r.events().is_empty() || r.canceled() {
            return Ok(r);
        }
    }
}

fn summary(r: &WatchResponse) -> Vec<(EventType, String, String)> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv();
            (
                e.event_type(),
                kv.map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                    .unwrap_or_default(),
                kv.map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_prefix_watch_sees_puts_and_deletes_with_prev_kv() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let mut stream = within(c.watch(
        "/w/",
        Some(WatchOptions::new().with_prefix().with_prev_key()),
    ))
    .await??;
    let created = next(&mut stream).await?;
    assert!(created.created());
    let id = created.watch_id();

    within(c.put("/w/a", "1", None)).await??;
    within(c.put("/other", "x", None)).await??;
    within(c.put("/w/a", "2", None)).await??;
    within(c.delete("/w/a", None)).await??;

    let r = next_events(&mut stream).await?;
    assert_eq!(r.watch_id(), id);
    assert_eq!(
        summary(&r),
        [(EventType::Put, "/w/a".to_owned(), "1".to_owned())]
    );
    assert!(
        r.events()[0].prev_kv().is_none(),
        "a creation has no previous value"
    );
    let r = next_events(&mut stream).await?;
    assert_eq!(
        summary(&r),
        [(EventType::Put, "/w/a".to_owned(), "2".to_owned())]
    );
    assert_eq!(
        r.events()[0].prev_kv().map(|kv| kv.value().to_vec()),
        Some(b"1".to_vec())
    );
    let r = next_events(&mut stream).await?;
    assert_eq!(r.events()[0].event_type(), EventType::Delete);
    assert_eq!(
        r.events()[0].prev_kv().map(|kv| kv.value().to_vec()),
        Some(b"2".to_vec())
    );
    let delete_rev = r.header().map(|h| h.revision());
    assert_eq!(r.events()[0].kv().map(|kv| kv.mod_revision()), delete_rev);
    server.stop().await
}

#[tokio::test]
async fn a_watch_from_a_past_revision_replays_history_then_goes_live() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let first = within(c.put("h", "1", None)).await??;
    let start = first.header().map(|h| h.revision()).unwrap_or_default();
    within(c.put("h", "2", None)).await??;
    within(c.put("h", "3", None)).await??;

    let mut stream =
        within(c.watch("h", Some(WatchOptions::new().with_start_revision(start)))).await??;
    assert!(next(&mut stream).await?.created());
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let r = next_events(&mut stream).await?;
        seen.extend(summary(&r).into_iter().map(|(_, _, v)| v));
    }
    assert_eq!(seen, ["1", "2", "3"]);
    within(c.put("h", "4", None)).await??;
    let r = next_events(&mut stream).await?;
    assert_eq!(summary(&r)[0].2, "4", "live after history, no duplicates");
    server.stop().await
}

#[tokio::test]
async fn many_watchers_share_one_stream_and_cancel_alone() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let mut stream = within(c.watch("x", None)).await??;
    let x = next(&mut stream).await?;
    within(stream.watch("y", None)).await??;
    let y = next(&mut stream).await?;
    within(stream.watch(
        "z",
        Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])),
    ))
    .await??;
    let z = next(&mut stream).await?;
    assert!(x.created() && y.created() && z.created());
    assert_eq!(
        (x.watch_id(), y.watch_id(), z.watch_id()),
        (0, 1, 2),
        "etcd numbers watchers from 0"
    );

    within(c.put("y", "1", None)).await??;
    within(c.put("x", "1", None)).await??;
    within(c.put("z", "1", None)).await??;
    within(c.delete("z", None)).await??;
    let r = next_events(&mut stream).await?;
    assert_eq!((r.watch_id(), summary(&r)[0].1.as_str()), (1, "y"));
    let r = next_events(&mut stream).await?;
    assert_eq!((r.watch_id(), summary(&r)[0].1.as_str()), (0, "x"));
    let r = next_events(&mut stream).await?;
    assert_eq!(
        (r.watch_id(), r.events()[0].event_type()),
        (2, EventType::Delete),
        "NOPUT hides the put"
    );

    within(stream.cancel(0)).await??;
    let r = next(&mut stream).await?;
    assert!(r.canceled());
    assert_eq!(r.watch_id(), 0);
    within(c.put("x", "2", None)).await??;
    within(c.put("y", "2", None)).await??;
    let r = next_events(&mut stream).await?;
    assert_eq!(r.watch_id(), 1, "the canceled watcher gets nothing more");
    server.stop().await
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_is_created_then_canceled() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let mut last = 0;
    for v in ["1", "2", "3"] {
        last = within(c.put("k", v, None))
            .await??
            .header()
            .map(|h| h.revision())
            .unwrap_or_default();
    }
    within(c.compact(last, None)).await??;
    let mut stream =
        within(c.watch("k", Some(WatchOptions::new().with_start_revision(2)))).await??;
    let created = next(&mut stream).await?;
    assert!(created.created() && !created.canceled());
    let canceled = next(&mut stream).await?;
    assert!(canceled.canceled());
    assert_eq!(canceled.watch_id(), created.watch_id());
    assert_eq!(canceled.compact_revision(), last);
    assert_eq!(
        canceled.cancel_reason(),
        "etcdserver: mvcc: required revision has been compacted"
    );

    // From the compact revision itself is allowed, as in etcd.
    within(stream.watch("k", Some(WatchOptions::new().with_start_revision(last)))).await??;
    assert!(next(&mut stream).await?.created());
    let r = next_events(&mut stream).await?;
    assert_eq!(summary(&r)[0].2, "3");
    server.stop().await
}

#[tokio::test]
async fn idle_watchers_get_progress_notifications() -> Result<()> {
    let config = Config {
        progress_notify_interval: Duration::from_millis(200),
        ..Config::default()
    };
    let server = Server::start_with(config, false).await?;
    let mut c = server.client().await?;
    let put = within(c.put("elsewhere", "v", None)).await??;
    let rev = put.header().map(|h| h.revision()).unwrap_or_default();
    let mut stream =
        within(c.watch("quiet", Some(WatchOptions::new().with_progress_notify()))).await??;
    let created = next(&mut stream).await?;
    let progress = next(&mut stream).await?;
    assert!(!progress.created() && !progress.canceled() && progress.events().is_empty());
    assert_eq!(progress.watch_id(), created.watch_id());
    assert_eq!(progress.header().map(|h| h.revision()), Some(rev));

    // On request too, for the whole stream (watch id -1), at the newest revision.
    let put = within(c.put("elsewhere", "w", None)).await??;
    within(stream.request_progress()).await??;
    let want = put.header().map(|h| h.revision());
    loop {
        let r = next(&mut stream).await?;
        if r.watch_id() == -1 {
            assert_eq!(r.header().map(|h| h.revision()), want);
            break;
        }
    }
    server.stop().await
}

#[tokio::test]
async fn a_client_too_slow_for_the_event_feed_still_gets_every_event_once() -> Result<()> {
    // In memory: thousands of revisions fast. The client stops reading, so
    // once ~3 MB of responses are in flight the stream blocks, and the rest
    // of the 6000 batches overflow the keyspace's broadcast buffer (4096).
    const PUTS: i64 = 6000;
    let server = Server::start_with(Config::default(), true).await?;
    let mut c = server.client().await?;
    let mut stream = within(c.watch("s/", Some(WatchOptions::new().with_prefix()))).await??;
    assert!(next(&mut stream).await?.created());
    let value = vec![b'v'; 8192];
    let first = within(c.put("s/0", value.clone(), None)).await??;
    let first_rev = first.header().map(|h| h.revision()).unwrap_or_default();
    for i in 1..PUTS {
        within(c.put(format!("s/{i}"), value.clone(), None)).await??;
    }
    let mut expected = first_rev;
    while expected < first_rev + PUTS {
        let r = next_events(&mut stream).await?;
        for e in r.events() {
            let rev = e.kv().map(|kv| kv.mod_revision()).unwrap_or_default();
            if rev != expected {
                bail!("expected the event of revision {expected}, got {rev}");
            }
            expected += 1;
        }
    }
    let all = within(c.get(
        "s/",
        Some(GetOptions::new().with_prefix().with_count_only()),
    ))
    .await??;
    assert_eq!(all.count(), PUTS);
    server.stop().await
}

#[tokio::test]
async fn shutdown_ends_open_watches_with_server_stopped() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let mut stream = within(c.watch("any", None)).await??;
    assert!(next(&mut stream).await?.created());
    // Stopping waits for open streams: it would hang if watches stayed open.
    server.stop().await?;
    match within(stream.message()).await? {
        Err(etcd_client::Error::GRpcStatus(s)) => {
            assert_eq!(
                (s.code(), s.message()),
                (tonic::Code::Unavailable, "etcdserver: server stopped")
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    Ok(())
}
