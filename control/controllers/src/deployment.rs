//! Deployments: one ReplicaSet per pod template, named
//! `<deployment>-<pod-template-hash>`, rolled from the old ones to the new
//! one by the RollingUpdate (maxSurge / maxUnavailable) or Recreate
//! strategy, with Kubernetes' revision annotations (so `kubectl rollout
//! history` and `rollout undo` work), its status counts and its Available
//! and Progressing conditions (so `kubectl rollout status` finishes), and
//! old ReplicaSets beyond `revisionHistoryLimit` deleted.
//!
//! The ReplicaSets are listed from the API on every reconcile, so one made
//! a moment ago is never made twice; their status, written by the
//! ReplicaSet controller, is what the rollout steps on.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures_util::FutureExt;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec},
        core::v1::PodTemplateSpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, Time},
        util::intstr::IntOrString,
    },
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    core::SelectorExt,
    runtime::{controller::Action, reflector::ObjectRef},
};
use serde_json::json;
use tracing::{info, warn};

use crate::{
    control_loop::{self, RESYNC},
    events,
    workload::{controller_of, controller_ref, patch_status, selector},
};

/// The label (and RS name suffix) that tells one template's pods apart.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// The revision annotation on a Deployment and its ReplicaSets.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// The replicas the Deployment wanted when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// replicas + maxSurge when the ReplicaSet was last scaled.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// Annotations of a Deployment never copied onto its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION_ANNOTATION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS_ANNOTATION,
    MAX_REPLICAS_ANNOTATION,
    "deprecated.deployment.rollback.to",
];
/// The component named in this controller's events (Kubernetes' own).
const COMPONENT: &str = "deployment-controller";
/// Kubernetes' default `progressDeadlineSeconds`.
const DEFAULT_PROGRESS_DEADLINE: i32 = 600;
/// Kubernetes' default `revisionHistoryLimit`.
const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("deployment {namespace}/{name}: {what}: {source}")]
    Api {
        /// The Deployment's namespace.
        namespace: String,
        /// The Deployment.
        name: String,
        /// What was being done.
        what: String,
        /// The API's answer.
        source: kube::Error,
    },
    /// The ReplicaSet name for the template is held by something else.
    #[error(
        "deployment {namespace}/{name}: ReplicaSet {replicaset} exists with another template; retrying with status.collisionCount {collision_count}"
    )]
    HashCollision {
        /// The Deployment's namespace.
        namespace: String,
        /// The Deployment.
        name: String,
        /// The name taken.
        replicaset: String,
        /// The collision count now in the status.
        collision_count: i32,
    },
}

fn api_err(d: &Deployment, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let namespace = d.namespace().unwrap_or_default();
    let name = d.name_any();
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
    let (deployments, events) = control_loop::reflect(Api::<Deployment>::all(client.clone()));
    let (_sets, set_events) = control_loop::reflect(Api::<ReplicaSet>::all(client.clone()));
    let triggers = vec![
        control_loop::trigger(events, |d: &Deployment| [ObjectRef::from_obj(d)]),
        control_loop::trigger(set_events, |rs: &ReplicaSet| {
            let ns = rs.namespace().unwrap_or_default();
            controller_of(&rs.metadata)
                .filter(|o| o.kind == "Deployment")
                .map(|o| ObjectRef::new(&o.name).within(&ns))
        }),
    ];
    control_loop::run(
        "deployment controller",
        deployments,
        triggers,
        Arc::new(Ctx { client }),
        |d, ctx| reconcile(d, ctx).boxed(),
        |_, _| async {},
    )
    .await;
}

/// Kubernetes' `rand.SafeEncodeString` alphabet: no vowels, no 0/1/3, so
/// a hash never spells a word.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The pod-template-hash of a template: FNV-1a (32 bit) over the
/// template's JSON and the collision count, in Kubernetes' safe encoding.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(
        serde_json::to_string(template)
            .unwrap_or_default()
            .as_bytes(),
    );
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    hash.to_string()
        .bytes()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()]))
        .collect()
}

/// A template with the pod-template-hash label taken out (and an emptied
/// label map as none), for comparing an RS's template to the Deployment's.
fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(meta) = t.metadata.as_mut() {
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(POD_TEMPLATE_HASH_LABEL);
        }
        if meta.labels.as_ref().is_some_and(BTreeMap::is_empty) {
            meta.labels = None;
        }
    }
    t
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status.as_ref().map_or((0, 0, 0), |s| {
        (
            s.replicas,
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        )
    })
}

/// An IntOrString against `total`: a percentage rounded up (surge) or
/// down (unavailable), Kubernetes' `25%` when unset.
fn scaled(value: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match value {
        Some(IntOrString::Int(n)) => (*n).max(0),
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
            let scaled = i64::from(total) * pct;
            let v = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            i32::try_from(v).unwrap_or(i32::MAX).max(0)
        }
        None => scaled(Some(&IntOrString::String("25%".into())), total, round_up),
    }
}

/// (maxSurge, maxUnavailable) for a Deployment; both zero is not allowed
/// to stall a rollout, so maxUnavailable becomes one, as in Kubernetes.
fn surge_and_unavailable(d: &Deployment, replicas: i32) -> (i32, i32) {
    let spec = d.spec.as_ref();
    let strategy = spec.and_then(|s| s.strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return (0, 0);
    }
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), replicas, true);
    let mut unavailable = scaled(ru.and_then(|r| r.max_unavailable.as_ref()), replicas, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(replicas))
}

/// The ReplicaSet as it should be for the Deployment's current template.
fn new_replica_set(
    d: &Deployment,
    hash: &str,
    replicas: i32,
    revision: i64,
    max_replicas: i32,
) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let mut template = spec.template;
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    let labels = meta.labels.clone();
    let mut selector: LabelSelector = spec.selector;
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    ReplicaSet {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{}-{hash}", d.name_any())),
            namespace: d.namespace(),
            labels,
            annotations: Some(rs_annotations(
                d,
                revision,
                spec.replicas.unwrap_or(1),
                max_replicas,
            )),
            owner_references: controller_ref(d).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

fn rs_annotations(
    d: &Deployment,
    revision: i64,
    desired: i32,
    max: i32,
) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> = d
        .annotations()
        .iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    a.insert(REVISION_ANNOTATION.into(), revision.to_string());
    a.insert(DESIRED_REPLICAS_ANNOTATION.into(), desired.to_string());
    a.insert(MAX_REPLICAS_ANNOTATION.into(), max.to_string());
    a
}

/// What one reconcile decided for one ReplicaSet.
struct Plan {
    rs: ReplicaSet,
    replicas: i32,
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(spec) = d.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let Some(sel) = selector(Some(&spec.selector)) else {
        warn!(deployment = %format!("{ns}/{name}"), "deployment controller: spec.selector is empty or invalid; nothing to manage");
        return Ok(Action::await_change());
    };
    let uid = d.uid().unwrap_or_default();
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = rs_api
        .list(&ListParams::default())
        .await
        .map_err(api_err(&d, "listing its ReplicaSets"))?
        .items;
    let mut sets: Vec<ReplicaSet> = Vec::new();
    for rs in listed {
        match controller_of(&rs.metadata) {
            Some(o) if o.uid == uid => sets.push(rs),
            None if sel.matches(rs.labels()) && rs.metadata.deletion_timestamp.is_none() => {
                // An orphan ReplicaSet the selector matches is adopted.
                let mut rs = rs;
                if let Some(owner) = controller_ref(d.as_ref()) {
                    rs.metadata
                        .owner_references
                        .get_or_insert_with(Vec::new)
                        .push(owner);
                    let rs_name = rs.name_any();
                    if let Ok(adopted) = rs_api.replace(&rs_name, &PostParams::default(), &rs).await
                    {
                        sets.push(adopted);
                    }
                }
            }
            _ => {}
        }
    }
    sets.sort_by_key(|rs| {
        (
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            rs.name_any(),
        )
    });

    let template = without_hash(&spec.template);
    let new_index = sets.iter().position(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .map(without_hash)
            .as_ref()
            == Some(&template)
    });
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let (surge, max_unavailable) = surge_and_unavailable(&d, replicas);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let paused = spec.paused.unwrap_or(false);

    let mut plans: Vec<Plan> = sets
        .iter()
        .map(|rs| Plan {
            rs: rs.clone(),
            replicas: spec_replicas(rs),
        })
        .collect();
    let max_old_revision = sets
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_index)
        .map(|(_, rs)| revision(rs))
        .max()
        .unwrap_or(0);
    let mut created: Option<String> = None;

    if !paused {
        let olds_running = |plans: &[Plan], new: Option<usize>| {
            plans
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != new)
                .any(|(_, p)| p.replicas > 0 || status_of(&p.rs).0 > 0)
        };
        let mut new_index = new_index;
        if new_index.is_none() && !(recreate && olds_running(&plans, None)) {
            // The first ReplicaSet of a rollout gets every replica at once
            // when nothing else runs; a rolling one starts at zero and
            // grows below.
            let start = if recreate || plans.iter().all(|p| p.replicas == 0) {
                replicas
            } else {
                0
            };
            let rs = create_new(
                &ctx.client,
                &d,
                start,
                max_old_revision + 1,
                replicas + surge,
            )
            .await?;
            created = Some(rs.name_any());
            plans.push(Plan {
                rs,
                replicas: start,
            });
            new_index = Some(plans.len() - 1);
        }
        if recreate {
            for (i, p) in plans.iter_mut().enumerate() {
                if Some(i) != new_index {
                    p.replicas = 0;
                }
            }
            if let Some(n) = new_index
                && !olds_running(&plans, Some(n))
            {
                plans[n].replicas = replicas;
            }
        } else if let Some(n) = new_index {
            roll(&mut plans, n, replicas, surge, max_unavailable);
        }
        for p in &plans {
            if p.replicas != spec_replicas(&p.rs) {
                scale(
                    &ctx.client,
                    &d,
                    &p.rs,
                    p.replicas,
                    replicas,
                    replicas + surge,
                )
                .await?;
            }
        }
        if let Some(n) = new_index {
            let rs = &plans[n].rs;
            if created.is_none() && revision(rs) <= max_old_revision {
                // A template rolled back to: its ReplicaSet becomes the newest revision.
                let patch = json!({"metadata": {"annotations": {REVISION_ANNOTATION: (max_old_revision + 1).to_string()}}});
                rs_api
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map_err(api_err(
                        &d,
                        format!("updating the revision of ReplicaSet {}", rs.name_any()),
                    ))?;
            }
        }
        cleanup(&rs_api, &d, &plans, new_index).await?;
        let rev = new_index
            .map(|n| {
                let r = revision(&plans[n].rs);
                if created.is_none() && r <= max_old_revision {
                    max_old_revision + 1
                } else {
                    r
                }
            })
            .unwrap_or(max_old_revision);
        if rev > 0 && d.annotations().get(REVISION_ANNOTATION) != Some(&rev.to_string()) {
            let d_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
            let patch =
                json!({"metadata": {"annotations": {REVISION_ANNOTATION: rev.to_string()}}});
            d_api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_err(&d, "writing its revision annotation"))?;
        }
        write_status(
            &ctx.client,
            &d,
            &plans,
            new_index,
            replicas,
            max_unavailable,
            created.as_deref(),
        )
        .await?;
    } else {
        write_status(
            &ctx.client,
            &d,
            &plans,
            new_index,
            replicas,
            max_unavailable,
            None,
        )
        .await?;
    }
    // The progress deadline passes without any event: look again then.
    let deadline = spec
        .progress_deadline_seconds
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE);
    let wait = Duration::from_secs(u64::try_from(deadline.max(1)).unwrap_or(600) + 1).min(RESYNC);
    Ok(Action::requeue(wait))
}

/// One rolling-update step, as Kubernetes' `rolloutRolling`: grow the new
/// ReplicaSet within replicas + maxSurge, then shrink old ones (unhealthy
/// replicas first) while replicas - maxUnavailable stay available.
fn roll(plans: &mut [Plan], new: usize, replicas: i32, surge: i32, max_unavailable: i32) {
    let total = |plans: &[Plan]| plans.iter().map(|p| p.replicas).sum::<i32>();
    // The new ReplicaSet.
    let current = plans[new].replicas;
    if current > replicas {
        plans[new].replicas = replicas;
    } else if current < replicas {
        let max_total = replicas + surge;
        let all = total(plans);
        if all < max_total {
            let up = (max_total - all).min(replicas - current);
            plans[new].replicas = current + up;
        }
    }
    // The old ones.
    let old_count: i32 = plans
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != new)
        .map(|(_, p)| p.replicas)
        .sum();
    if old_count == 0 {
        return;
    }
    let min_available = replicas - max_unavailable;
    let new_unavailable = (plans[new].replicas - status_of(&plans[new].rs).2).max(0);
    let max_scaled_down = total(plans) - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return;
    }
    // Old replicas that are not available cost nothing to remove.
    let mut cleaned = 0;
    for (i, p) in plans.iter_mut().enumerate() {
        if i == new || cleaned >= max_scaled_down || p.replicas == 0 {
            continue;
        }
        let available = status_of(&p.rs).2;
        if p.replicas <= available {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(p.replicas - available);
        p.replicas -= down;
        cleaned += down;
    }
    let available: i32 = plans
        .iter()
        .map(|p| status_of(&p.rs).2.min(p.replicas))
        .sum();
    if available <= min_available {
        return;
    }
    let mut budget = available - min_available;
    for (i, p) in plans.iter_mut().enumerate() {
        if i == new || budget == 0 || p.replicas == 0 {
            continue;
        }
        let down = p.replicas.min(budget);
        p.replicas -= down;
        budget -= down;
    }
}

async fn create_new(
    client: &Client,
    d: &Deployment,
    replicas: i32,
    revision: i64,
    max_replicas: i32,
) -> Result<ReplicaSet, Error> {
    let ns = d.namespace().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let spec = d.spec.clone().unwrap_or_default();
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = pod_template_hash(&spec.template, collision);
    let rs = new_replica_set(d, &hash, replicas, revision, max_replicas);
    let rs_name = rs.name_any();
    match api.create(&PostParams::default(), &rs).await {
        Ok(rs) => {
            info!(deployment = %format!("{ns}/{}", d.name_any()), replicaset = %rs_name, replicas, "deployment controller: created a ReplicaSet for the new template");
            if replicas > 0 {
                let message = format!("Scaled up replica set {rs_name} from 0 to {replicas}");
                events::normal(client, COMPONENT, d, "ScalingReplicaSet", &message).await;
            }
            Ok(rs)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // The name is taken by a ReplicaSet this reconcile did not
            // pick as the template's: a hash collision. A new count gives
            // a new name next time.
            let collision_count = collision.unwrap_or(0).saturating_add(1);
            let d_api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
            let patch = json!({"status": {"collisionCount": collision_count}});
            d_api
                .patch_status(
                    &d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(api_err(d, "writing status.collisionCount"))?;
            Err(Error::HashCollision {
                namespace: ns,
                name: d.name_any(),
                replicaset: rs_name,
                collision_count,
            })
        }
        Err(e) => Err(api_err(d, format!("creating ReplicaSet {rs_name}"))(e)),
    }
}

async fn scale(
    client: &Client,
    d: &Deployment,
    rs: &ReplicaSet,
    replicas: i32,
    desired: i32,
    max: i32,
) -> Result<(), Error> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), &rs.namespace().unwrap_or_default());
    let patch = json!({
        "metadata": {"annotations": {
            DESIRED_REPLICAS_ANNOTATION: desired.to_string(),
            MAX_REPLICAS_ANNOTATION: max.to_string(),
        }},
        "spec": {"replicas": replicas},
    });
    api.patch(
        &rs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(api_err(
        d,
        format!("scaling ReplicaSet {} to {replicas}", rs.name_any()),
    ))?;
    let from = spec_replicas(rs);
    info!(deployment = %d.name_any(), replicaset = %rs.name_any(), from, to = replicas, "deployment controller: scaled a ReplicaSet");
    let direction = if replicas > from { "up" } else { "down" };
    let message = format!(
        "Scaled {direction} replica set {} from {from} to {replicas}",
        rs.name_any()
    );
    events::normal(client, COMPONENT, d, "ScalingReplicaSet", &message).await;
    Ok(())
}

/// Deletes the oldest fully scaled-down ReplicaSets beyond
/// `revisionHistoryLimit`.
async fn cleanup(
    api: &Api<ReplicaSet>,
    d: &Deployment,
    plans: &[Plan],
    new: Option<usize>,
) -> Result<(), Error> {
    let limit = d
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(DEFAULT_HISTORY_LIMIT)
        .max(0);
    let mut idle: Vec<&ReplicaSet> = plans
        .iter()
        .enumerate()
        .filter(|(i, p)| {
            Some(*i) != new
                && p.replicas == 0
                && spec_replicas(&p.rs) == 0
                && status_of(&p.rs).0 == 0
                && p.rs.metadata.deletion_timestamp.is_none()
        })
        .map(|(_, p)| &p.rs)
        .collect();
    let excess = idle
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(0));
    idle.sort_by_key(|rs| revision(rs));
    for rs in idle.into_iter().take(excess) {
        match api
            .delete(&rs.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {
                info!(deployment = %d.name_any(), replicaset = %rs.name_any(), "deployment controller: deleted an old ReplicaSet beyond revisionHistoryLimit")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(api_err(
                    d,
                    format!("deleting old ReplicaSet {}", rs.name_any()),
                )(e));
            }
        }
    }
    Ok(())
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    old: Option<&DeploymentCondition>,
    progressed: bool,
) -> DeploymentCondition {
    let now = Time(jiff::Timestamp::now());
    let same = old.is_some_and(|c| c.status == status);
    let unchanged = old.is_some_and(|c| {
        c.status == status
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(message.as_str())
    });
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: if same {
            old.and_then(|c| c.last_transition_time.clone())
        } else {
            Some(now.clone())
        },
        last_update_time: if unchanged && !progressed {
            old.and_then(|c| c.last_update_time.clone())
        } else {
            Some(now)
        },
    }
}

async fn write_status(
    client: &Client,
    d: &Deployment,
    plans: &[Plan],
    new: Option<usize>,
    replicas: i32,
    max_unavailable: i32,
    created: Option<&str>,
) -> Result<(), Error> {
    let old_status = d.status.clone().unwrap_or_default();
    let sum = |f: &dyn Fn(&Plan) -> i32| plans.iter().map(f).sum::<i32>();
    let total = sum(&|p| status_of(&p.rs).0);
    let ready = sum(&|p| status_of(&p.rs).1);
    let available = sum(&|p| status_of(&p.rs).2);
    let new_plan = new.map(|n| &plans[n]);
    let updated = new_plan.map_or(0, |p| status_of(&p.rs).0);
    let new_name = new_plan.map(|p| p.rs.name_any()).unwrap_or_default();
    let old_conds = old_status.conditions.clone().unwrap_or_default();
    let find = |t: &str| old_conds.iter().find(|c| c.type_ == t);

    let available_cond = if available >= replicas - max_unavailable {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            find("Available"),
            false,
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            find("Available"),
            false,
        )
    };
    let old_progress = find("Progressing");
    let numbers_moved = old_status.replicas != Some(total)
        || old_status.updated_replicas != Some(updated)
        || old_status.available_replicas != Some(available)
        || old_status.ready_replicas != Some(ready);
    let complete = new_plan
        .is_some_and(|p| p.replicas == replicas && status_of(&p.rs).2 >= replicas)
        && updated == replicas
        && total == replicas
        && available >= replicas;
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let deadline = d
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE);
    let progress_cond = if paused {
        condition(
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
            old_progress,
            false,
        )
    } else if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            old_progress,
            false,
        )
    } else if let Some(name) = created {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set \"{name}\""),
            old_progress,
            true,
        )
    } else {
        let timed_out = !numbers_moved
            && old_progress.is_some_and(|c| {
                c.status == "True"
                    && c.reason.as_deref() != Some("NewReplicaSetAvailable")
                    && c.last_update_time.as_ref().is_some_and(|t| {
                        jiff::Timestamp::now().duration_since(t.0).as_secs() > i64::from(deadline)
                    })
            })
            || old_progress
                .is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
        if timed_out && !numbers_moved {
            condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                old_progress,
                false,
            )
        } else {
            condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                old_progress,
                numbers_moved,
            )
        }
    };
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((replicas - available).max(0)),
        collision_count: old_status.collision_count,
        conditions: Some(vec![available_cond, progress_cond]),
        terminating_replicas: None,
    };
    // Compare without timestamps: a write only when something a reader
    // would see changed.
    let strip = |s: &DeploymentStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_update_time = None;
            c.last_transition_time = None;
        }
        s.conditions
            .get_or_insert_with(Vec::new)
            .sort_by(|a, b| a.type_.cmp(&b.type_));
        for v in [
            &mut s.replicas,
            &mut s.updated_replicas,
            &mut s.ready_replicas,
            &mut s.available_replicas,
            &mut s.unavailable_replicas,
        ] {
            if *v == Some(0) {
                *v = None;
            }
        }
        s
    };
    if strip(&old_status) == strip(&status) {
        return Ok(());
    }
    patch_status(client, d, &status)
        .await
        .map_err(api_err(d, "writing status"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
