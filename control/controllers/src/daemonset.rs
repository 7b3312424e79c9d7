//! DaemonSets: one pod on every node the pod template fits — its
//! nodeSelector and required node affinity accept the node, and its
//! tolerations (plus the ones Kubernetes gives every daemon pod) cover the
//! node's NoSchedule and NoExecute taints. Each pod is pinned to its node
//! by a required node affinity on `metadata.name`, so the scheduler binds
//! it there. A node that joins gets a pod; a node that goes, or no longer
//! fits, loses it (a pod stays on a node whose new taint is only
//! NoSchedule, as in Kubernetes). Template changes roll out node by node
//! within `maxUnavailable` (RollingUpdate) or when the user deletes a pod
//! (OnDelete); each template is a ControllerRevision and pods carry its
//! `controller-revision-hash`.
//!
//! Pods are listed from the API on every reconcile (a consistent read);
//! nodes come from the watch cache, and every node change reconciles every
//! DaemonSet.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures_util::FutureExt;
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetStatus},
        core::v1::{
            Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
            Pod, Toleration,
        },
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use shoal_scheduler::plugins::{NodeInfo, PodInfo, selector_matches, untolerated};
use tracing::info;

use crate::{
    control_loop::{self, RESYNC},
    controller_revision::{self, REVISION_HASH_LABEL},
    events,
    workload::{
        controller_of, controller_ref, owned_pods, patch_status, pod_available, ready_for, selector,
    },
};

/// The component named in this controller's events (Kubernetes' own).
const COMPONENT: &str = "daemonset-controller";
/// Kubernetes' default `revisionHistoryLimit`.
const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("daemonset {namespace}/{name}: {what}: {source}")]
    Api {
        /// The DaemonSet's namespace.
        namespace: String,
        /// The DaemonSet.
        name: String,
        /// What was being done.
        what: String,
        /// The API's answer.
        source: kube::Error,
    },
}

fn api_err(ds: &DaemonSet, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let namespace = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
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
    nodes: Store<Node>,
}

/// Runs the controller until its watches end.
pub async fn run(client: Client) {
    let (sets, set_events) = control_loop::reflect(Api::<DaemonSet>::all(client.clone()));
    let (nodes, node_events) = control_loop::reflect(Api::<Node>::all(client.clone()));
    let (_pods, pod_events) = control_loop::reflect(Api::<Pod>::all(client.clone()));
    let every_set = {
        let sets = sets.clone();
        move |_: &Node| {
            sets.state()
                .iter()
                .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let triggers = vec![
        control_loop::trigger(set_events, |ds: &DaemonSet| [ObjectRef::from_obj(ds)]),
        control_loop::trigger(node_events, every_set),
        control_loop::trigger(pod_events, |pod: &Pod| {
            let ns = pod.namespace().unwrap_or_default();
            controller_of(&pod.metadata)
                .filter(|o| o.kind == "DaemonSet")
                .map(|o| ObjectRef::new(&o.name).within(&ns))
        }),
    ];
    control_loop::run(
        "daemonset controller",
        sets,
        triggers,
        Arc::new(Ctx { client, nodes }),
        |ds, ctx| reconcile(ds, ctx).boxed(),
        |_, _| async {},
    )
    .await;
}

/// The tolerations Kubernetes adds to every daemon pod, so it stays
/// through node trouble and lands on cordoned nodes.
fn default_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut out: Vec<Toleration> = [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
    .into_iter()
    .map(|(key, effect)| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Toleration::default()
    })
    .collect();
    if host_network {
        out.push(Toleration {
            key: Some("node.kubernetes.io/network-unavailable".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        });
    }
    out
}

/// A daemon pod from the template at revision `hash`, with the
/// tolerations every daemon pod gets, not yet pinned to a node.
fn daemon_pod(ds: &DaemonSet, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH_LABEL.into(), hash.into());
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in default_tolerations(spec.host_network == Some(true)) {
        let covered = tolerations
            .iter()
            .any(|have| have.key == t.key && have.effect == t.effect);
        if !covered {
            tolerations.push(t);
        }
    }
    Pod {
        metadata: kube::api::ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            namespace: ds.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: controller_ref(ds).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The daemon pod for `node`, pinned there through required node affinity
/// on `metadata.name` (replacing the template's required terms: the node
/// was checked against them already), as Kubernetes pins it.
fn new_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let mut pod = daemon_pod(ds, hash);
    let pin = NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
        }],
    };
    if let Some(spec) = pod.spec.as_mut() {
        spec.affinity
            .get_or_insert_with(Affinity::default)
            .node_affinity
            .get_or_insert_with(NodeAffinity::default)
            .required_during_scheduling_ignored_during_execution = Some(pin);
    }
    pod
}

/// The node a pod is on or pinned to.
fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

/// Whether the daemon pod should run on the node, and whether one that
/// runs there already may stay (only NoExecute taints evict).
fn fits(pod: &PodInfo, node: &Node) -> (bool, bool) {
    let info = NodeInfo::from_node(node);
    if !selector_matches(pod, &info) {
        return (false, false);
    }
    let run = untolerated(pod, &info).is_none();
    let mut no_execute = info;
    no_execute.taints.retain(|t| t.effect == "NoExecute");
    (run, untolerated(pod, &no_execute).is_none())
}

/// `maxUnavailable` against the number of nodes that should run a pod
/// (percentages round up), at least 1.
fn max_unavailable(ds: &DaemonSet, desired: usize) -> usize {
    let value = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.clone())
        .unwrap_or(IntOrString::Int(1));
    let n = match value {
        IntOrString::Int(i) => usize::try_from(i.max(0)).unwrap_or(0),
        IntOrString::String(s) => {
            let pct: usize = s.trim_end_matches('%').parse().unwrap_or(0);
            (desired * pct).div_ceil(100)
        }
    };
    n.max(1)
}

/// What one reconcile does.
#[derive(Debug, Default)]
struct Plan {
    /// Nodes that get a pod.
    create: Vec<String>,
    /// Pods to delete.
    delete: Vec<String>,
    status: DaemonSetStatus,
    /// When a pod becomes available by time alone (minReadySeconds).
    requeue: Option<Duration>,
}

fn plan(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    pods: &[Pod],
    hash: &str,
    now: jiff::Timestamp,
) -> Plan {
    let mut plan = Plan::default();
    let spec = ds.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let probe = PodInfo::from_pod(&daemon_pod(ds, hash));
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        by_node
            .entry(target_node(pod).unwrap_or_default())
            .or_default()
            .push(pod);
    }
    let (mut desired, mut current, mut misscheduled, mut ready, mut available, mut updated) =
        (0, 0, 0, 0, 0, 0);
    // Per node that should run a pod: (its one healthy pod if any).
    let mut placed: Vec<(&str, Option<&Pod>)> = Vec::new();
    let known: BTreeSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    for node in nodes {
        let name = node.name_any();
        let (run, stay) = fits(&probe, node);
        let mut here: Vec<&Pod> = by_node.get(&name).cloned().unwrap_or_default();
        // Finished pods are replaced.
        let (done, live): (Vec<&Pod>, Vec<&Pod>) = here.drain(..).partition(|p| {
            matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Failed" | "Succeeded")
            )
        });
        plan.delete.extend(done.iter().map(|p| p.name_any()));
        if run {
            desired += 1;
        }
        if !stay {
            if !live.is_empty() {
                misscheduled += 1;
            }
            plan.delete.extend(live.iter().map(|p| p.name_any()));
            continue;
        }
        if !run && !live.is_empty() {
            misscheduled += 1;
        }
        let mut live = live;
        // The oldest stays when there are several.
        live.sort_by_key(|p| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.name_any(),
            )
        });
        plan.delete
            .extend(live.iter().skip(1).map(|p| p.name_any()));
        let keep = live.first().copied();
        if run {
            match keep {
                None => plan.create.push(name.clone()),
                Some(pod) => {
                    current += 1;
                    if ready_for(pod, now).is_some() {
                        ready += 1;
                    }
                    if pod_available(pod, min_ready, now) {
                        available += 1;
                    } else if let Some(d) = ready_for(pod, now) {
                        let need = Duration::from_secs(u64::try_from(min_ready).unwrap_or(0));
                        let wait = need.saturating_sub(d);
                        plan.requeue = Some(plan.requeue.map_or(wait, |r| r.min(wait)));
                    }
                    if pod.labels().get(REVISION_HASH_LABEL).map(String::as_str) == Some(hash) {
                        updated += 1;
                    }
                }
            }
            placed.push((node_name(node), keep));
        }
    }
    // Pods on nodes that are gone.
    for (node, pods) in &by_node {
        if !known.contains(node) && !node.is_empty() {
            plan.delete.extend(pods.iter().map(|p| p.name_any()));
        }
    }

    // RollingUpdate: old pods go within maxUnavailable once the node set
    // is settled; the next reconcile puts the new pods in.
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    if rolling && plan.create.is_empty() && plan.delete.is_empty() {
        let limit = max_unavailable(ds, desired);
        let mut unavailable = 0;
        let mut free = Vec::new();
        let mut candidates = Vec::new();
        for (_, pod) in &placed {
            let Some(pod) = pod else { continue };
            let old = pod.labels().get(REVISION_HASH_LABEL).map(String::as_str) != Some(hash);
            let up = pod_available(pod, min_ready, now);
            match (old, up) {
                (false, false) => unavailable += 1,
                (false, true) => {}
                (true, false) => free.push(pod.name_any()),
                (true, true) => candidates.push(pod.name_any()),
            }
        }
        let room = limit.saturating_sub(unavailable).min(candidates.len());
        plan.delete.extend(free);
        plan.delete.extend(candidates.into_iter().take(room));
    }

    let to_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    plan.status = DaemonSetStatus {
        desired_number_scheduled: to_i32(desired),
        current_number_scheduled: to_i32(current),
        number_misscheduled: to_i32(misscheduled),
        number_ready: to_i32(ready),
        number_available: Some(to_i32(available)),
        number_unavailable: Some(to_i32(desired.saturating_sub(available))),
        updated_number_scheduled: Some(to_i32(updated)),
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    plan
}

fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = ds.namespace().unwrap_or_default();
    let Some(spec) = ds.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let Some(sel) = selector(Some(&spec.selector)) else {
        return Ok(Action::await_change());
    };
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels_from(&sel))
        .await
        .map_err(api_err(&ds, format!("listing the pods selected by {sel}")))?
        .items;
    let pods = owned_pods(&pods_api, ds.as_ref(), pods)
        .await
        .map_err(api_err(&ds, "adopting orphan pods"))?;
    let collision = ds.status.as_ref().and_then(|s| s.collision_count);
    let history = controller_revision::sync(&ctx.client, ds.as_ref(), &spec.template, collision)
        .await
        .map_err(api_err(
            &ds,
            "recording the template as a ControllerRevision",
        ))?;
    let now = jiff::Timestamp::now();
    let nodes = ctx.nodes.state();
    let mut plan = plan(&ds, &nodes, &pods, &history.hash, now);
    plan.status.collision_count = history.collision_count;

    for name in &plan.delete {
        match pods_api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                let message = format!("Deleted pod: {name}");
                events::normal(
                    &ctx.client,
                    COMPONENT,
                    ds.as_ref(),
                    "SuccessfulDelete",
                    &message,
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(&ds, format!("deleting pod {name}"))(e)),
        }
    }
    for node in &plan.create {
        let pod = new_pod(&ds, node, &history.hash);
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(pod) => {
                let message = format!("Created pod: {}", pod.name_any());
                events::normal(
                    &ctx.client,
                    COMPONENT,
                    ds.as_ref(),
                    "SuccessfulCreate",
                    &message,
                )
                .await;
            }
            Err(e) => {
                let message = format!("Error creating: {e}");
                events::warning(
                    &ctx.client,
                    COMPONENT,
                    ds.as_ref(),
                    "FailedCreate",
                    &message,
                )
                .await;
                return Err(api_err(&ds, format!("creating the pod for node {node}"))(e));
            }
        }
    }
    if !plan.create.is_empty() || !plan.delete.is_empty() {
        info!(daemonset = %format!("{ns}/{}", ds.name_any()), created = plan.create.len(), deleted = plan.delete.len(), "daemonset controller: synced pods");
    }
    let in_use: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.labels().get(REVISION_HASH_LABEL))
        .map(|h| format!("{}-{h}", ds.name_any()))
        .collect();
    let limit = spec.revision_history_limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    controller_revision::prune(&ctx.client, &history, &in_use, limit)
        .await
        .map_err(api_err(&ds, "deleting old ControllerRevisions"))?;
    write_status(&ctx.client, &ds, &plan.status).await?;
    let requeue = plan
        .requeue
        .map_or(RESYNC, |d| d + Duration::from_millis(100));
    Ok(Action::requeue(requeue))
}

async fn write_status(
    client: &Client,
    ds: &DaemonSet,
    status: &DaemonSetStatus,
) -> Result<(), Error> {
    let norm = |s: &DaemonSetStatus| {
        let mut s = s.clone();
        for v in [
            &mut s.number_available,
            &mut s.number_unavailable,
            &mut s.updated_number_scheduled,
        ] {
            if *v == Some(0) {
                *v = None;
            }
        }
        s
    };
    if ds.status.as_ref().map(norm) == Some(norm(status)) {
        return Ok(());
    }
    patch_status(client, ds, status)
        .await
        .map_err(api_err(ds, "writing status"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
