//! Leases through etcd-client: grant, keep-alive, time-to-live, revoke,
//! expiry.

use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{
    EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions,
};
use shoal_etcd_api::Config;
use tonic::Code;

use crate::common::{Server, grpc_error, within};

#[tokio::test]
async fn grant_keep_alive_time_to_live_and_revoke() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let lease = within(c.lease_grant(60, None)).await??;
    assert!(lease.id() > 0);
    assert_eq!(lease.ttl(), 60);
    within(c.put(
        "leased/a",
        "1",
        Some(PutOptions::new().with_lease(lease.id())),
    ))
    .await??;
    within(c.put(
        "leased/b",
        "2",
        Some(PutOptions::new().with_lease(lease.id())),
    ))
    .await??;

    let ttl =
        within(c.lease_time_to_live(lease.id(), Some(LeaseTimeToLiveOptions::new().with_keys())))
            .await??;
    assert_eq!(ttl.granted_ttl(), 60);
    assert!((58..=60).contains(&ttl.ttl()), "remaining {}", ttl.ttl());
    assert_eq!(ttl.keys(), [b"leased/a".to_vec(), b"leased/b".to_vec()]);

    let (mut keeper, mut responses) = within(c.lease_keep_alive(lease.id())).await??;
    within(keeper.keep_alive()).await??;
    let renewed = within(responses.message())
        .await??
        .context("keep-alive stream ended")?;
    assert_eq!((renewed.id(), renewed.ttl()), (lease.id(), 60));

    let leases = within(c.leases()).await??;
    assert_eq!(
        leases.leases().iter().map(|l| l.id()).collect::<Vec<_>>(),
        [lease.id()]
    );

    within(c.lease_revoke(lease.id())).await??;
    let left = within(c.get("leased/", Some(GetOptions::new().with_prefix()))).await??;
    assert_eq!(left.count(), 0, "revoking deletes the lease's keys");

    // A keep-alive for a lease that is gone answers TTL 0, like etcd.
    within(keeper.keep_alive()).await??;
    let gone = within(responses.message())
        .await??
        .context("keep-alive stream ended")?;
    assert_eq!(gone.ttl(), 0);
    let ttl = within(c.lease_time_to_live(lease.id(), None)).await??;
    assert_eq!(ttl.ttl(), -1, "etcd reports an unknown lease with TTL -1");
    server.stop().await
}

#[tokio::test]
async fn short_ttls_are_raised_and_chosen_ids_kept() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let lease = within(c.lease_grant(1, Some(LeaseGrantOptions::new().with_id(4242)))).await??;
    assert_eq!(
        (lease.id(), lease.ttl()),
        (4242, 2),
        "etcd's minimum TTL is 2 s by default"
    );
    let again = grpc_error(
        c.lease_grant(10, Some(LeaseGrantOptions::new().with_id(4242)))
            .await,
    );
    assert_eq!(
        again,
        (
            Code::FailedPrecondition,
            "etcdserver: lease already exists".to_owned()
        )
    );
    server.stop().await
}

#[tokio::test]
async fn unknown_leases_are_refused_with_not_found() -> Result<()> {
    let server = Server::start().await?;
    let mut c = server.client().await?;
    let not_found = (
        Code::NotFound,
        "etcdserver: requested lease not found".to_owned(),
    );
    assert_eq!(grpc_error(c.lease_revoke(777).await), not_found);
    let put = c
        .put("k", "v", Some(PutOptions::new().with_lease(777)))
        .await;
    assert_eq!(grpc_error(put), not_found);
    server.stop().await
}

#[tokio::test]
async fn an_expired_lease_deletes_its_keys() -> Result<()> {
    let config = Config {
        min_lease_ttl: 1,
        ..Config::default()
    };
    let server = Server::start_with(config, false).await?;
    let mut c = server.client().await?;
    let lease = within(c.lease_grant(1, None)).await??;
    assert_eq!(lease.ttl(), 1);
    within(c.put(
        "ephemeral",
        "v",
        Some(PutOptions::new().with_lease(lease.id())),
    ))
    .await??;
    let mut stream = within(c.watch("ephemeral", Some(WatchOptions::new()))).await??;
    loop {
        let r = within(stream.message()).await??.context("watch ended")?;
        if r.events()
            .iter()
            .any(|e| e.event_type() == EventType::Delete)
        {
            break;
        }
    }
    let r = within(c.get("ephemeral", None)).await??;
    assert!(r.kvs().is_empty());
    let ttl = within(c.lease_time_to_live(lease.id(), None)).await??;
    assert_eq!(ttl.ttl(), -1);
    // And one kept alive outlives its TTL (2 s, renewed every 0.5 s).
    let kept = within(c.lease_grant(2, None)).await??;
    within(c.put("kept", "v", Some(PutOptions::new().with_lease(kept.id())))).await??;
    let (mut keeper, mut responses) = within(c.lease_keep_alive(kept.id())).await??;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        within(keeper.keep_alive()).await??;
        let r = within(responses.message())
            .await??
            .context("keep-alive ended")?;
        assert_eq!(r.ttl(), 2);
    }
    assert_eq!(within(c.get("kept", None)).await??.count(), 1);
    server.stop().await
}
