//! Leader election on a coordination.k8s.io/v1 Lease, as client-go's
//! leaderelection: a candidate takes the Lease when it is free or its
//! holder stopped renewing it for `leaseDuration` (timed with this
//! process's clock from when the record last changed, so clocks need not
//! agree), renews it every `retryPeriod`, and gives up leading when it
//! could not renew for `renewDeadline` or someone else holds it. The work
//! runs only while leading: losing the Lease drops it.

use std::{
    future::Future,
    hash::{BuildHasher, Hasher},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tracing::{info, warn};

/// Where the control plane's Leases live.
pub const NAMESPACE: &str = "kube-system";
/// The scheduler's Lease.
pub const SCHEDULER_LEASE: &str = "shoal-scheduler";
/// The controllers' Lease.
pub const CONTROLLER_MANAGER_LEASE: &str = "shoal-controller-manager";

/// client-go's defaults: lease 15 s, renew deadline 10 s, retry 2 s.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops leading.
    pub renew_deadline: Duration,
    /// How often candidates try and the leader renews.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate for one Lease.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The Lease's name in [`NAMESPACE`].
    pub lease: String,
    /// This candidate's `holderIdentity`: hostname and a random id.
    pub identity: String,
    /// Durations.
    pub timing: Timing,
}

impl Candidate {
    /// A candidate for `lease` with a fresh identity.
    pub fn new(lease: &str, timing: Timing) -> Self {
        Self::named(lease, None, timing)
    }

    /// A candidate for `lease` whose identity starts with `host` instead
    /// of the host name: control-plane members sharing a machine tell
    /// apart by it which of them leads.
    pub fn named(lease: &str, host: Option<&str>, timing: Timing) -> Self {
        Self {
            lease: lease.to_string(),
            identity: identity_of(host),
            timing,
        }
    }
}

/// `<hostname>_<random uuid-shaped id>`, as kube components name themselves.
pub fn identity() -> String {
    identity_of(None)
}

/// `<host>_<random uuid-shaped id>`; the host name when `host` is `None`.
fn identity_of(host: Option<&str>) -> String {
    let host = host.filter(|h| !h.is_empty()).map_or_else(
        || {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "shoal".into())
        },
        str::to_owned,
    );
    let random = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    let (a, b) = (random(), random());
    format!(
        "{host}_{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// What this candidate last saw of the Lease.
struct Observed {
    holder: Option<String>,
    renew: Option<String>,
    at: Instant,
}

/// Runs `work` whenever this candidate leads, until the task is dropped.
pub async fn run_leading<F, Fut>(client: Client, candidate: Candidate, work: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let leases: Api<Lease> = Api::namespaced(client, NAMESPACE);
    let mut observed: Option<Observed> = None;
    let lease = &candidate.lease;
    loop {
        while !matches!(
            try_acquire_or_renew(&leases, &candidate, &mut observed).await,
            Ok(true)
        ) {
            tokio::time::sleep(candidate.timing.retry_period).await;
        }
        info!(lease = %lease, identity = %candidate.identity, "leading");
        let job = work();
        tokio::pin!(job);
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                () = &mut job => {
                    warn!(lease = %lease, "the work of the leader ended");
                    return;
                }
                () = tokio::time::sleep(candidate.timing.retry_period) => {
                    match try_acquire_or_renew(&leases, &candidate, &mut observed).await {
                        Ok(true) => renewed = Instant::now(),
                        Ok(false) => break,
                        Err(e) => {
                            warn!(lease = %lease, "renewing: {e}");
                            if renewed.elapsed() > candidate.timing.renew_deadline {
                                break;
                            }
                        }
                    }
                }
            }
        }
        warn!(lease = %lease, identity = %candidate.identity, "lost the lease: stopping");
    }
}

/// One round of client-go's tryAcquireOrRenew: whether we hold the Lease.
async fn try_acquire_or_renew(
    leases: &Api<Lease>,
    candidate: &Candidate,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let now = jiff::Timestamp::now();
    let seconds = i32::try_from(candidate.timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let mine = LeaseSpec {
        holder_identity: Some(candidate.identity.clone()),
        lease_duration_seconds: Some(seconds),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(0),
        ..LeaseSpec::default()
    };
    let Some(current) = leases.get_opt(&candidate.lease).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(candidate.lease.clone()),
                namespace: Some(NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            spec: Some(mine),
        };
        // Two candidates creating at once: one gets a 409 and tries again.
        leases.create(&PostParams::default(), &lease).await?;
        return Ok(true);
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let renew = spec.renew_time.as_ref().map(|t| t.0.to_string());
    let changed = observed
        .as_ref()
        .is_none_or(|o| o.holder != holder || o.renew != renew);
    if changed {
        *observed = Some(Observed {
            holder: holder.clone(),
            renew,
            at: Instant::now(),
        });
    }
    let held_by_me = holder.as_deref() == Some(candidate.identity.as_str());
    let duration = spec
        .lease_duration_seconds
        .map_or(candidate.timing.lease_duration, |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        });
    let expired = observed.as_ref().is_none_or(|o| o.at.elapsed() > duration);
    if holder.is_some() && !held_by_me && !expired {
        return Ok(false);
    }
    let mut next = current.clone();
    let mut spec_next = mine;
    if held_by_me {
        spec_next.acquire_time = spec.acquire_time.clone();
        spec_next.lease_transitions = spec.lease_transitions;
    } else {
        spec_next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    next.spec = Some(spec_next);
    // A replace at the resourceVersion read: two candidates racing for a
    // free Lease cannot both win (the loser's 409 is an error to retry).
    let lease = leases
        .replace(&candidate.lease, &PostParams::default(), &next)
        .await?;
    let spec = lease.spec.unwrap_or_default();
    *observed = Some(Observed {
        holder: spec.holder_identity,
        renew: spec.renew_time.map(|t| t.0.to_string()),
        at: Instant::now(),
    });
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_name_the_host_and_differ() {
        let (a, b) = (identity(), identity());
        assert_ne!(a, b);
        let (host, id) = a.rsplit_once('_').unwrap_or_default();
        assert!(!host.is_empty(), "{a}");
        assert_eq!(id.len(), 36, "uuid-shaped: {a}");
    }

    #[test]
    fn a_named_candidate_leads_its_identity_with_the_name() {
        let c = Candidate::named(SCHEDULER_LEASE, Some("cp-2"), Timing::default());
        let (host, id) = c.identity.rsplit_once('_').unwrap_or_default();
        assert_eq!(host, "cp-2", "{}", c.identity);
        assert_eq!(id.len(), 36, "uuid-shaped: {}", c.identity);
    }
}
