//! StatefulSets: pods with a stable identity — `<set>-<ordinal>`, with
//! hostname the pod's name and subdomain `serviceName` (their DNS names
//! under the headless Service), labels `statefulset.kubernetes.io/pod-name`
//! and `apps.kubernetes.io/pod-index` — and one PersistentVolumeClaim per
//! ordinal and `volumeClaimTemplates` entry, `<template>-<set>-<ordinal>`,
//! made before the pod and mounted by it. OrderedReady makes pods one at a
//! time, each once the one before is Running and Ready, and removes them
//! from the highest ordinal down; Parallel makes and removes them all at
//! once. Claims outlive their pods on scale-down and set deletion unless
//! `persistentVolumeClaimRetentionPolicy` says Delete. Template changes
//! roll from the highest ordinal down to `partition` (RollingUpdate), or
//! as the user deletes pods (OnDelete), over ControllerRevisions: pods
//! carry their revision's name in `controller-revision-hash` and the status
//! reports the current and update revisions.
//!
//! Pods and claims are listed from the API on every reconcile (a
//! consistent read).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures_util::FutureExt;
use k8s_openapi::api::{
    apps::v1::{StatefulSet, StatefulSetStatus},
    core::v1::{
        PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
    },
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{controller::Action, reflector::ObjectRef},
};
use tracing::info;

use crate::{
    control_loop::{self, RESYNC},
    controller_revision::{self, REVISION_HASH_LABEL},
    events,
    workload::{
        controller_of, controller_ref, owned_pods, patch_status, pod_available, ready_for, selector,
    },
};

/// The label with a StatefulSet pod's name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a StatefulSet pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// The component named in this controller's events (Kubernetes' own).
const COMPONENT: &str = "statefulset-controller";
/// Kubernetes' default `revisionHistoryLimit`.
const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("statefulset {namespace}/{name}: {what}: {source}")]
    Api {
        /// The StatefulSet's namespace.
        namespace: String,
        /// The StatefulSet.
        name: String,
        /// What was being done.
        what: String,
        /// The API's answer.
        source: kube::Error,
    },
}

fn api_err(set: &StatefulSet, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let namespace = set.namespace().unwrap_or_default();
    let name = set.name_any();
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
}

/// Runs the controller until its watches end.
pub async fn run(client: Client) {
    let (sets, set_events) = control_loop::reflect(Api::<StatefulSet>::all(client.clone()));
    let (_pods, pod_events) = control_loop::reflect(Api::<Pod>::all(client.clone()));
    let triggers = vec![
        control_loop::trigger(set_events, |s: &StatefulSet| [ObjectRef::from_obj(s)]),
        control_loop::trigger(pod_events, |pod: &Pod| {
            let ns = pod.namespace().unwrap_or_default();
            controller_of(&pod.metadata)
                .filter(|o| o.kind == "StatefulSet")
                .map(|o| ObjectRef::new(&o.name).within(&ns))
        }),
    ];
    control_loop::run(
        "statefulset controller",
        sets,
        triggers,
        Arc::new(Ctx { client }),
        |set, ctx| reconcile(set, ctx).boxed(),
        |_, _| async {},
    )
    .await;
}

/// The ordinal in a pod's name `<set>-<ordinal>`.
fn ordinal_of(set: &str, pod: &Pod) -> Option<i32> {
    pod.name_any()
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
        .filter(|i: &i32| *i >= 0)
}

/// The claim for template `claim` and ordinal `i`.
pub fn claim_name(claim: &str, set: &str, i: i32) -> String {
    format!("{claim}-{set}-{i}")
}

/// Running with the Ready condition True.
fn healthy(pod: &Pod, now: jiff::Timestamp) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && ready_for(pod, now).is_some()
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.labels().get(REVISION_HASH_LABEL).map(String::as_str)
}

fn failed(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Failed" | "Succeeded")
        )
}

/// What one reconcile does.
#[derive(Debug, Default)]
struct Plan {
    /// Pods to create: (ordinal, from the update revision rather than the
    /// current one).
    create: Vec<(i32, bool)>,
    /// Pods to delete.
    delete: Vec<String>,
    /// Claims to delete (retention policy whenScaled: Delete).
    delete_claims: Vec<String>,
    status: StatefulSetStatus,
    /// When a pod becomes available by time alone (minReadySeconds).
    requeue: Option<Duration>,
}

/// Works out a reconcile from the set, its pods, the claims that exist
/// and the current and update revision names.
fn plan(
    set: &StatefulSet,
    pods: &[Pod],
    claims: &[String],
    (current, update): (&str, &str),
    now: jiff::Timestamp,
) -> Plan {
    let mut plan = Plan::default();
    let spec = set.spec.clone().unwrap_or_default();
    let name = set.name_any();
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let end = start.saturating_add(replicas);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let on_delete = strategy.type_.as_deref() == Some("OnDelete");
    let partition = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);

    let mut by_ordinal: BTreeMap<i32, &Pod> = BTreeMap::new();
    for pod in pods {
        if let Some(i) = ordinal_of(&name, pod) {
            by_ordinal.insert(i, pod);
        }
    }

    // The status, from the pods as they are.
    let to_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let live: Vec<&Pod> = by_ordinal
        .values()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| to_i32(live.iter().filter(|p| f(p)).count());
    let updated = count(&|p| revision_of(p) == Some(update));
    let mut status = StatefulSetStatus {
        replicas: count(&|_| true),
        ready_replicas: Some(count(&|p| healthy(p, now))),
        available_replicas: Some(count(&|p| {
            healthy(p, now) && pod_available(p, min_ready, now)
        })),
        current_replicas: Some(count(&|p| revision_of(p) == Some(current))),
        updated_replicas: Some(updated),
        current_revision: Some(current.to_string()),
        update_revision: Some(update.to_string()),
        observed_generation: set.metadata.generation,
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    // The rollout is done once every replica is at the update revision.
    if updated >= replicas && live.len() == usize::try_from(replicas).unwrap_or(0) {
        status.current_revision = Some(update.to_string());
        status.current_replicas = Some(updated);
    }
    for p in &live {
        if let Some(d) = ready_for(p, now) {
            let need = Duration::from_secs(u64::try_from(min_ready).unwrap_or(0));
            if d < need {
                let wait = need - d;
                plan.requeue = Some(plan.requeue.map_or(wait, |r| r.min(wait)));
            }
        }
    }
    plan.status = status;
    if set.metadata.deletion_timestamp.is_some() {
        return plan;
    }

    // Replicas, lowest ordinal first: failed pods are replaced, missing
    // ones made; OrderedReady waits for each to be Running and Ready.
    for i in start..end {
        let pod = by_ordinal.get(&i).copied();
        match pod {
            None => {
                let from_update = on_delete || i >= partition;
                plan.create.push((i, from_update));
                if !parallel {
                    return plan;
                }
            }
            Some(p) if failed(p) => {
                plan.delete.push(p.name_any());
                if !parallel {
                    return plan;
                }
            }
            Some(p) if !parallel && !healthy(p, now) => return plan,
            Some(_) => {}
        }
    }

    // Condemned pods (ordinals outside the range), highest first.
    let condemned: Vec<&Pod> = by_ordinal
        .iter()
        .rev()
        .filter(|(i, _)| **i < start || **i >= end)
        .map(|(_, p)| *p)
        .collect();
    for p in &condemned {
        if p.metadata.deletion_timestamp.is_some() {
            if !parallel {
                return plan;
            }
            continue;
        }
        plan.delete.push(p.name_any());
        if !parallel {
            return plan;
        }
    }
    if !condemned.is_empty() {
        return plan;
    }

    // Claims of ordinals no longer in the range, when the policy says so.
    let when_scaled = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_scaled.as_deref())
        == Some("Delete");
    if when_scaled {
        for t in spec.volume_claim_templates.iter().flatten() {
            let tmpl = t.name_any();
            let prefix = format!("{tmpl}-{name}-");
            for claim in claims {
                let ordinal = claim
                    .strip_prefix(&prefix)
                    .and_then(|i| i.parse::<i32>().ok());
                if ordinal.is_some_and(|i| i < start || i >= end) {
                    plan.delete_claims.push(claim.clone());
                }
            }
        }
    }

    // RollingUpdate: the highest pod not at the update revision goes,
    // down to the partition, one at a time, each replacement healthy
    // before the next.
    if !on_delete {
        for i in (start.max(partition)..end).rev() {
            let Some(p) = by_ordinal.get(&i) else {
                return plan;
            };
            if revision_of(p) != Some(update) && p.metadata.deletion_timestamp.is_none() {
                plan.delete.push(p.name_any());
                return plan;
            }
            if !healthy(p, now) {
                return plan;
            }
        }
    }
    plan
}

/// The pod for ordinal `i` from `template` (the revision `revision`).
fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, revision: &str, i: i32) -> Pod {
    let spec = set.spec.clone().unwrap_or_default();
    let set_name = set.name_any();
    let name = format!("{set_name}-{i}");
    let meta = template.metadata.clone().unwrap_or_default();
    let mut pod_spec = template.spec.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), i.to_string());
    labels.insert(REVISION_HASH_LABEL.into(), revision.into());
    pod_spec.hostname = Some(name.clone());
    if let Some(service) = spec.service_name.filter(|s| !s.is_empty()) {
        pod_spec.subdomain = Some(service);
    }
    let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
    for claim in spec.volume_claim_templates.iter().flatten() {
        let tmpl = claim.name_any();
        volumes.retain(|v| v.name != tmpl);
        volumes.push(Volume {
            name: tmpl.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&tmpl, &set_name, i),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    if volumes.is_empty() {
        pod_spec.volumes = None;
    }
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: controller_ref(set).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// The claims of ordinal `i`, from the templates, labelled with the set's
/// selector; owned by the set when the set's deletion should take them.
fn new_claims(set: &StatefulSet, i: i32) -> Vec<PersistentVolumeClaim> {
    let spec = set.spec.clone().unwrap_or_default();
    let set_name = set.name_any();
    let owned = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    let selector_labels = spec.selector.match_labels.clone().unwrap_or_default();
    spec.volume_claim_templates
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let tmpl = t.name_any();
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector_labels.clone());
            PersistentVolumeClaim {
                metadata: kube::api::ObjectMeta {
                    name: Some(claim_name(&tmpl, &set_name, i)),
                    namespace: set.namespace(),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    owner_references: if owned {
                        controller_ref(set).map(|mut o| {
                            o.controller = Some(false);
                            vec![o]
                        })
                    } else {
                        None
                    },
                    ..Default::default()
                },
                spec: t.spec,
                status: None,
            }
        })
        .collect()
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = set.namespace().unwrap_or_default();
    let Some(spec) = set.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let Some(sel) = selector(Some(&spec.selector)) else {
        return Ok(Action::await_change());
    };
    let set_name = set.name_any();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels_from(&sel))
        .await
        .map_err(api_err(&set, format!("listing the pods selected by {sel}")))?
        .items;
    let pods = owned_pods(&pods_api, set.as_ref(), pods)
        .await
        .map_err(api_err(&set, "adopting orphan pods"))?;
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let claims: Vec<String> = if spec
        .volume_claim_templates
        .as_ref()
        .is_some_and(|v| !v.is_empty())
    {
        claims_api
            .list(&ListParams::default())
            .await
            .map_err(api_err(&set, "listing persistentvolumeclaims"))?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect()
    } else {
        Vec::new()
    };

    let collision = set.status.as_ref().and_then(|s| s.collision_count);
    let history = controller_revision::sync(&ctx.client, set.as_ref(), &spec.template, collision)
        .await
        .map_err(api_err(
            &set,
            "recording the template as a ControllerRevision",
        ))?;
    let update = history.current.name_any();
    let current = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|c| history.all.iter().any(|r| r.name_any() == *c))
        .unwrap_or_else(|| update.clone());
    let now = jiff::Timestamp::now();
    let mut plan = plan(&set, &pods, &claims, (&current, &update), now);
    plan.status.collision_count = history.collision_count;

    for (i, from_update) in &plan.create {
        let (revision, template) = if *from_update || current == update {
            (update.clone(), spec.template.clone())
        } else {
            let old = history
                .all
                .iter()
                .find(|r| r.name_any() == current)
                .and_then(controller_revision::template_of);
            match old {
                Some(t) => (current.clone(), t),
                None => (update.clone(), spec.template.clone()),
            }
        };
        let pod = new_pod(&set, &template, &revision, *i);
        let pod_name = pod.name_any();
        for claim in new_claims(&set, *i) {
            let claim_name = claim.name_any();
            if claims.contains(&claim_name) {
                continue;
            }
            match claims_api.create(&PostParams::default(), &claim).await {
                Ok(_) => {
                    let message = format!(
                        "create Claim {claim_name} Pod {pod_name} in StatefulSet {set_name} success"
                    );
                    events::normal(
                        &ctx.client,
                        COMPONENT,
                        set.as_ref(),
                        "SuccessfulCreate",
                        &message,
                    )
                    .await;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    let message = format!(
                        "create Claim {claim_name} for Pod {pod_name} in StatefulSet {set_name} failed error: {e}"
                    );
                    events::warning(
                        &ctx.client,
                        COMPONENT,
                        set.as_ref(),
                        "FailedCreate",
                        &message,
                    )
                    .await;
                    return Err(api_err(
                        &set,
                        format!("creating persistentvolumeclaim {claim_name}"),
                    )(e));
                }
            }
        }
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                let message = format!("create Pod {pod_name} in StatefulSet {set_name} successful");
                events::normal(
                    &ctx.client,
                    COMPONENT,
                    set.as_ref(),
                    "SuccessfulCreate",
                    &message,
                )
                .await;
            }
            // Still there from before (being deleted): the next reconcile sees it.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                let message =
                    format!("create Pod {pod_name} in StatefulSet {set_name} failed error: {e}");
                events::warning(
                    &ctx.client,
                    COMPONENT,
                    set.as_ref(),
                    "FailedCreate",
                    &message,
                )
                .await;
                return Err(api_err(&set, format!("creating pod {pod_name}"))(e));
            }
        }
    }
    for pod_name in &plan.delete {
        match pods_api.delete(pod_name, &DeleteParams::default()).await {
            Ok(_) => {
                let message = format!("delete Pod {pod_name} in StatefulSet {set_name} successful");
                events::normal(
                    &ctx.client,
                    COMPONENT,
                    set.as_ref(),
                    "SuccessfulDelete",
                    &message,
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(&set, format!("deleting pod {pod_name}"))(e)),
        }
    }
    for claim in &plan.delete_claims {
        match claims_api.delete(claim, &DeleteParams::default()).await {
            Ok(_) => {
                let message = format!("delete Claim {claim} in StatefulSet {set_name} successful");
                events::normal(
                    &ctx.client,
                    COMPONENT,
                    set.as_ref(),
                    "SuccessfulDelete",
                    &message,
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(api_err(
                    &set,
                    format!("deleting persistentvolumeclaim {claim}"),
                )(e));
            }
        }
    }
    if !plan.create.is_empty() || !plan.delete.is_empty() {
        info!(statefulset = %format!("{ns}/{set_name}"), created = plan.create.len(), deleted = plan.delete.len(), "statefulset controller: synced pods");
    }
    let in_use = pods
        .iter()
        .filter_map(|p| revision_of(p).map(str::to_string))
        .chain([current.clone()])
        .collect();
    let limit = spec.revision_history_limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    controller_revision::prune(&ctx.client, &history, &in_use, limit)
        .await
        .map_err(api_err(&set, "deleting old ControllerRevisions"))?;
    write_status(&ctx.client, &set, &plan.status).await?;
    Ok(Action::requeue(
        plan.requeue
            .map_or(RESYNC, |d| d + Duration::from_millis(100)),
    ))
}

async fn write_status(
    client: &Client,
    set: &StatefulSet,
    status: &StatefulSetStatus,
) -> Result<(), Error> {
    let norm = |s: &StatefulSetStatus| {
        let mut s = s.clone();
        for v in [
            &mut s.ready_replicas,
            &mut s.available_replicas,
            &mut s.current_replicas,
            &mut s.updated_replicas,
        ] {
            if *v == Some(0) {
                *v = None;
            }
        }
        s
    };
    if set.status.as_ref().map(norm) == Some(norm(status)) {
        return Ok(());
    }
    patch_status(client, set, status)
        .await
        .map_err(api_err(set, "writing status"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
