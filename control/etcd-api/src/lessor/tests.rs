use shoal_mvcc::KvError;

use super::*;

fn grant(lessor: &Lessor, id: LeaseId, ttl: i64) {
    lessor.applied(
        &Command::LeaseGrant { id, ttl },
        &CommandResult {
            revision: 1,
            outcome: Ok(Outcome::LeaseGrant { id, ttl }),
        },
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_expires_after_its_ttl() {
    let lessor = Lessor::new();
    grant(&lessor, 7, 5);
    assert_eq!(lessor.remaining(7), Some(5));
    let start = Instant::now();
    assert_eq!(lessor.expired().await, 7);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    // Being revoked: no more keep-alives.
    assert_eq!(lessor.keep_alive(7), None);
    assert_eq!(lessor.remaining(7), None);
}

#[tokio::test(start_paused = true)]
async fn keep_alive_pushes_the_deadline_back() {
    let lessor = Lessor::new();
    grant(&lessor, 1, 10);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(lessor.keep_alive(1), Some(10));
    assert_eq!(lessor.expired().await, 1);
    assert_eq!(start.elapsed(), Duration::from_secs(18));
}

#[tokio::test(start_paused = true)]
async fn expiry_wakes_for_a_lease_granted_while_waiting() {
    let lessor = std::sync::Arc::new(Lessor::new());
    let waiter = tokio::spawn({
        let lessor = lessor.clone();
        async move { lessor.expired().await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    grant(&lessor, 3, 2);
    let id = tokio::time::timeout(Duration::from_secs(10), waiter).await;
    assert!(matches!(id, Ok(Ok(3))), "{id:?}");
}

#[tokio::test(start_paused = true)]
async fn revoked_leases_stop_and_failed_revokes_retry() {
    let lessor = Lessor::new();
    grant(&lessor, 1, 1);
    grant(&lessor, 2, 100);
    lessor.applied(
        &Command::LeaseRevoke { id: 2 },
        &CommandResult {
            revision: 2,
            outcome: Err(KvError::LeaseNotFound),
        },
    );
    assert_eq!(lessor.keep_alive(2), None);
    assert_eq!(lessor.expired().await, 1);
    lessor.revoke_failed(1);
    assert_eq!(lessor.expired().await, 1);
}

#[tokio::test(start_paused = true)]
async fn promotion_restarts_every_timer() {
    let lessor = Lessor::new();
    grant(&lessor, 1, 3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    lessor.promote([(1, 3), (2, 4)]);
    assert_eq!(lessor.remaining(1), Some(3));
    assert_eq!(lessor.remaining(2), Some(4));
}

#[tokio::test(start_paused = true)]
async fn adopt_times_new_leases_drops_gone_ones_and_keeps_deadlines() {
    let lessor = Lessor::new();
    grant(&lessor, 1, 10);
    grant(&lessor, 2, 10);
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Lease 2 was revoked elsewhere; lease 3 was granted through another member.
    lessor.adopt([(1, 10), (3, 5)]);
    assert_eq!(
        lessor.remaining(1),
        Some(6),
        "a running timer keeps its deadline"
    );
    assert_eq!(lessor.remaining(2), None);
    assert_eq!(lessor.remaining(3), Some(5));
    assert_eq!(lessor.expired().await, 3);
}
