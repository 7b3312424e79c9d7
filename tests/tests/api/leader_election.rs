//! Leader election as an operator sees it: two schedulers against one
//! apiserver, only the holder of kube-system/shoal-scheduler places pods;
//! when the leader dies the other takes the Lease and schedules within the
//! lease duration; a scheduler that loses its Lease stops placing pods.
//! (The same with three `shoal server` processes, killed for real:
//! `tests/ha.rs`.)

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime};
use kube::{Api, api::PostParams};
use shoal_agent::node::{NodeConfig, register};
use shoal_controllers::leader_election::{self, Candidate, Timing};

use super::ControlPlane;

const LEASE: Duration = Duration::from_secs(3);

fn timing() -> Timing {
    Timing {
        lease_duration: LEASE,
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
    }
}

fn pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: c\n    image: busybox\n"
    )
}

async fn holder(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases
        .get_opt(leader_election::SCHEDULER_LEASE)
        .await?
        .and_then(|l| l.spec?.holder_identity))
}

/// How long until the pod is bound, if within `limit`.
async fn bound_within(cp: &ControlPlane, name: &str, limit: Duration) -> Result<Option<Duration>> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let node = cp
            .ok(
                &["get", "pod", name, "-o", "jsonpath={.spec.nodeName}"],
                None,
            )
            .await?;
        if !node.trim().is_empty() {
            return Ok(Some(start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_scheduler_takes_over_within_the_lease_when_the_leader_dies() -> Result<()> {
    let config = shoal_controllers::Config {
        leader_election: timing(),
        ..shoal_controllers::Config::default()
    };
    let cp = ControlPlane::start_with(config).await?;
    let client = shoal_controllers::client_from_kubeconfig(&cp.kubeconfig).await?;
    let mut node = NodeConfig::new("n1", cp.dir());
    node.addresses = vec!["172.20.0.14".parse()?];
    node.capacity_cpu = Some("4".into());
    register(&client, &node).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), leader_election::NAMESPACE);

    // The control plane's scheduler leads; a second one waits.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(h) = holder(&leases).await? {
            break h;
        }
        if Instant::now() > deadline {
            bail!("nobody took the scheduler's Lease");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let second = Candidate::new(leader_election::SCHEDULER_LEASE, timing());
    let second_id = second.identity.clone();
    let standby = {
        let client = client.clone();
        tokio::spawn(leader_election::run_leading(
            client.clone(),
            second,
            move || {
                let client = client.clone();
                async move {
                    let _ = shoal_scheduler::run(client).await;
                }
            },
        ))
    };
    cp.ok(&["apply", "-f", "-"], Some(&pod("before"))).await?;
    assert!(
        bound_within(&cp, "before", Duration::from_secs(10))
            .await?
            .is_some()
    );
    assert_eq!(holder(&leases).await?.as_deref(), Some(first.as_str()));

    // The leader dies (its process would; here its tasks stop, the Lease
    // is not released).
    cp.controllers.abort();
    let died = Instant::now();
    cp.ok(&["apply", "-f", "-"], Some(&pod("after"))).await?;
    let Some(_) = bound_within(&cp, "after", Duration::from_secs(15)).await? else {
        bail!("no scheduler bound the pod after the leader died");
    };
    let took = died.elapsed();
    assert!(
        took < LEASE + Duration::from_secs(3),
        "the standby scheduled {took:?} after the leader died (lease {LEASE:?})"
    );
    assert_eq!(holder(&leases).await?.as_deref(), Some(second_id.as_str()));

    // Someone else takes the Lease and keeps it: the standby stops
    // scheduling.
    let intruder = {
        let leases = leases.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(mut lease) = leases.get(leader_election::SCHEDULER_LEASE).await
                    && let Some(spec) = lease.spec.as_mut()
                {
                    spec.holder_identity = Some("intruder".into());
                    spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
                    let _ = leases
                        .replace(
                            leader_election::SCHEDULER_LEASE,
                            &PostParams::default(),
                            &lease,
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    cp.ok(&["apply", "-f", "-"], Some(&pod("orphaned"))).await?;
    let placed = bound_within(&cp, "orphaned", Duration::from_secs(3)).await?;
    intruder.abort();
    standby.abort();
    assert_eq!(placed, None, "a scheduler without the Lease placed a pod");
    cp.stop().await
}
