//! ReplicaSets: keep `spec.replicas` pods from the template, adopt orphans
//! the selector matches, delete the least useful pods first (unscheduled,
//! then pending, then not ready, then the most recently ready, then the
//! newest) when there are too many, and report replicas, fully labeled,
//! ready and available counts in the status.
//!
//! Pods are listed from the API on every reconcile (a consistent read), so
//! pods created a moment ago are counted however far the watch lags.

use std::{cmp::Reverse, collections::BTreeSet, sync::Arc, time::Duration};

use futures_util::{FutureExt, future::join_all};
use k8s_openapi::api::{
    apps::v1::{ReplicaSet, ReplicaSetStatus},
    core::v1::Pod,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    core::{Selector, SelectorExt},
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use tracing::{info, warn};

use crate::{
    control_loop::{self, RESYNC},
    events,
    workload::{
        controller_of, controller_ref, owned_pods, patch_status, pod_active, pod_available,
        ready_for, selector,
    },
};

/// The component named in this controller's events (Kubernetes' own).
const COMPONENT: &str = "replicaset-controller";
/// Most pods created or deleted in one reconcile (Kubernetes' burst).
const BURST: usize = 500;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("replicaset {namespace}/{name}: {what}: {source}")]
    Api {
        /// The ReplicaSet's namespace.
        namespace: String,
        /// The ReplicaSet.
        name: String,
        /// What was being done.
        what: String,
        /// The API's answer.
        source: kube::Error,
    },
}

fn api_err(rs: &ReplicaSet, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let namespace = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let what = what.into();
    move |source| Error::Api {
        namespace,
        name,
        what,
        source,
    }
}

struct Ctx {
    client: Client,
    pods: Store<Pod>,
}

/// Runs the controller until its watches end.
pub async fn run(client: Client) {
    let (sets, set_events) = control_loop::reflect(Api::<ReplicaSet>::all(client.clone()));
    let (pods, pod_events) = control_loop::reflect(Api::<Pod>::all(client.clone()));
    let by_pod = {
        let sets = sets.clone();
        move |pod: &Pod| sets_of_pod(&sets, pod)
    };
    let triggers = vec![
        control_loop::trigger(set_events, |rs: &ReplicaSet| [ObjectRef::from_obj(rs)]),
        control_loop::trigger(pod_events, by_pod),
    ];
    control_loop::run(
        "replicaset controller",
        sets,
        triggers,
        Arc::new(Ctx { client, pods }),
        |rs, ctx| reconcile(rs, ctx).boxed(),
        |_, _| async {},
    )
    .await;
}

/// The ReplicaSet that controls a pod, or for an orphan every ReplicaSet
/// in its namespace that could adopt it.
fn sets_of_pod(sets: &Store<ReplicaSet>, pod: &Pod) -> Vec<ObjectRef<ReplicaSet>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(owner) = controller_of(&pod.metadata) {
        if owner.kind == "ReplicaSet" {
            return vec![ObjectRef::new(&owner.name).within(&ns)];
        }
        return Vec::new();
    }
    sets.state()
        .iter()
        .filter(|rs| rs.namespace().as_deref() == Some(&ns))
        .filter(|rs| {
            selector(rs.spec.as_ref().map(|s| &s.selector)).is_some_and(|s| s.matches(pod.labels()))
        })
        .map(|rs| ObjectRef::from_obj(rs.as_ref()))
        .collect()
}

/// The order pods are deleted in when scaling down: the first is the
/// least useful (Kubernetes' ActivePods ranking).
type Rank = (
    bool,
    u8,
    bool,
    Duration,
    Reverse<i32>,
    Reverse<Option<jiff::Timestamp>>,
    String,
);

fn deletion_rank(pod: &Pod, now: jiff::Timestamp) -> Rank {
    let spec = pod.spec.as_ref();
    let assigned = spec
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let ready = ready_for(pod, now);
    let restarts: i32 = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|c| c.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (
        assigned,
        phase,
        ready.is_some(),
        // Ready for less time goes first.
        ready.unwrap_or(Duration::ZERO),
        Reverse(restarts),
        // Newer goes first.
        Reverse(created),
        pod.name_any(),
    )
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let Some(spec) = rs.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let Some(sel) = selector(Some(&spec.selector)) else {
        warn!(replicaset = %format!("{ns}/{name}"), "replicaset controller: spec.selector is empty or invalid; nothing to manage");
        return Ok(Action::await_change());
    };
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = pods_api
        .list(&ListParams::default().labels_from(&sel))
        .await
        .map_err(api_err(&rs, format!("listing the pods selected by {sel}")))?
        .items;

    let deleting = rs.metadata.deletion_timestamp.is_some();
    let mine = owned_pods(&pods_api, rs.as_ref(), listed)
        .await
        .map_err(api_err(&rs, "adopting orphan pods"))?;
    if !deleting {
        release(&ctx, &pods_api, &rs, &sel).await?;
    }
    let now = jiff::Timestamp::now();
    let mut active: Vec<Pod> = mine.into_iter().filter(pod_active).collect();
    let status = status_of(&rs, &active, &sel, now);

    if !deleting {
        let want = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
        if active.len() < want {
            create_pods(
                &ctx.client,
                &pods_api,
                &rs,
                (want - active.len()).min(BURST),
            )
            .await?;
        } else if active.len() > want {
            active.sort_by_cached_key(|p| deletion_rank(p, now));
            let doomed: Vec<String> = active
                .iter()
                .take((active.len() - want).min(BURST))
                .map(|p| p.name_any())
                .collect();
            delete_pods(&ctx.client, &pods_api, &rs, &doomed).await?;
        }
    }
    write_status(&ctx.client, &rs, status).await?;

    // A pod that is ready but not yet for minReadySeconds becomes available
    // without any event: look again then.
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    if min_ready > 0 {
        let need = Duration::from_secs(u64::try_from(min_ready).unwrap_or(0));
        let soonest = active
            .iter()
            .filter_map(|p| ready_for(p, now))
            .filter(|d| *d < need)
            .map(|d| need - d)
            .min();
        if let Some(wait) = soonest {
            return Ok(Action::requeue(wait + Duration::from_millis(100)));
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// Lets go of the pods this ReplicaSet controls that its selector no
/// longer matches (relabelled to take them out of service, say): they
/// lose the owner reference and a replacement is made.
async fn release(ctx: &Ctx, api: &Api<Pod>, rs: &ReplicaSet, sel: &Selector) -> Result<(), Error> {
    let uid = rs.uid().unwrap_or_default();
    let ns = rs.namespace();
    let strays: Vec<String> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace() == ns && p.metadata.deletion_timestamp.is_none())
        .filter(|p| controller_of(&p.metadata).is_some_and(|o| o.uid == uid))
        .filter(|p| !sel.matches(p.labels()))
        .map(|p| p.name_any())
        .collect();
    for name in strays {
        // The cache may lag: decide on the pod as the API has it now.
        let Some(mut pod) = api
            .get_opt(&name)
            .await
            .map_err(api_err(rs, format!("reading pod {name}")))?
        else {
            continue;
        };
        let owned = controller_of(&pod.metadata).is_some_and(|o| o.uid == uid);
        if !owned || sel.matches(pod.labels()) {
            continue;
        }
        if let Some(refs) = pod.metadata.owner_references.as_mut() {
            refs.retain(|r| r.uid != uid);
        }
        match api.replace(&name, &PostParams::default(), &pod).await {
            Ok(_) => {
                info!(replicaset = %rs.name_any(), pod = %name, "replicaset controller: released a pod its selector no longer matches");
            }
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => return Err(api_err(rs, format!("releasing pod {name}"))(e)),
        }
    }
    Ok(())
}

/// A new pod from the template, controlled by the ReplicaSet.
fn new_pod(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: kube::api::ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: controller_ref(rs).map(|o| vec![o]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

async fn create_pods(
    client: &Client,
    api: &Api<Pod>,
    rs: &ReplicaSet,
    count: usize,
) -> Result<(), Error> {
    // Slow start, as Kubernetes does: batches of 1, 2, 4, ... so a
    // template the API refuses costs one failed create, not hundreds.
    let pod = new_pod(rs);
    let mut left = count;
    let mut batch = 1;
    while left > 0 {
        let n = batch.min(left);
        let pp = PostParams::default();
        let results = join_all((0..n).map(|_| api.create(&pp, &pod))).await;
        for result in results {
            let pod = result.map_err(api_err(rs, "creating a pod from spec.template"))?;
            let message = format!("Created pod: {}", pod.name_any());
            events::normal(client, COMPONENT, rs, "SuccessfulCreate", &message).await;
        }
        left -= n;
        batch *= 2;
    }
    info!(replicaset = %format!("{}/{}", rs.namespace().unwrap_or_default(), rs.name_any()), count, "replicaset controller: created pods");
    Ok(())
}

async fn delete_pods(
    client: &Client,
    api: &Api<Pod>,
    rs: &ReplicaSet,
    names: &[String],
) -> Result<(), Error> {
    let dp = DeleteParams::default();
    let results = join_all(names.iter().map(|n| api.delete(n, &dp))).await;
    for (name, result) in names.iter().zip(results) {
        match result {
            Ok(_) => {
                let message = format!("Deleted pod: {name}");
                events::normal(client, COMPONENT, rs, "SuccessfulDelete", &message).await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(rs, format!("deleting pod {name}"))(e)),
        }
    }
    info!(replicaset = %format!("{}/{}", rs.namespace().unwrap_or_default(), rs.name_any()), pods = ?names, "replicaset controller: deleted surplus pods");
    Ok(())
}

fn status_of(
    rs: &ReplicaSet,
    active: &[Pod],
    _sel: &Selector,
    now: jiff::Timestamp,
) -> ReplicaSetStatus {
    let template_labels: BTreeSet<(String, String)> = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| -> i32 {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.labels().get(k) == Some(v))
        })),
        ready_replicas: Some(count(&|p| ready_for(p, now).is_some())),
        available_replicas: Some(count(&|p| pod_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    }
}

async fn write_status(
    client: &Client,
    rs: &ReplicaSet,
    status: ReplicaSetStatus,
) -> Result<(), Error> {
    let normalize = |s: &ReplicaSetStatus| {
        let mut s = s.clone();
        for v in [
            &mut s.fully_labeled_replicas,
            &mut s.ready_replicas,
            &mut s.available_replicas,
        ] {
            if *v == Some(0) {
                *v = None;
            }
        }
        s
    };
    if rs.status.as_ref().map(normalize) == Some(normalize(&status)) {
        return Ok(());
    }
    patch_status(client, rs, &status)
        .await
        .map_err(api_err(rs, "writing status"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
