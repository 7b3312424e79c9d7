//! Preemption, as kube-scheduler's DefaultPreemption: a pod that fits
//! nowhere looks for the node where removing lower-priority pods makes it
//! fit, keeps back (reprieves) every victim it can, highest priority
//! first, and picks the node with the fewest budget violations, then
//! whose victims have the lowest highest priority, then the lowest sum of priorities, then are fewest. The
//! victims get a `DisruptionTarget` condition and a `Preempted` Event and
//! are deleted gracefully; the preemptor's `status.nominatedNodeName`
//! names the node, and it is scheduled when the victims are gone.
//!
//! PodDisruptionBudgets are weighed as Kubernetes does: pods whose
//! eviction would break a budget are reprieved first, and the node with
//! the fewest such violations wins; a budget never stops a preemption.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use tracing::{debug, info};

use crate::{
    State,
    plugins::{self, PodInfo, Reason},
};

/// A victim: uid, namespace/name and priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Victim {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub priority: i32,
}

/// The node to preempt on and whom to remove.
#[derive(Debug)]
pub(crate) struct Plan {
    pub node: String,
    pub victims: Vec<Victim>,
}

/// The best preemption for `info`, if one exists.
pub(crate) fn plan(
    state: &State,
    uid: &str,
    info: &PodInfo,
    pod: &Pod,
    reasons: &BTreeMap<Reason, usize>,
) -> Option<Plan> {
    if !reasons.keys().any(|r| plugins::resolvable(r)) {
        return None;
    }
    // Already nominated and victims still leaving there: wait for them.
    let nominated = pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref());
    if let Some(node) = nominated
        && state.on_node.get(node).is_some_and(|uids| {
            uids.iter().any(|u| {
                state
                    .bound
                    .get(u)
                    .is_some_and(|b| b.terminating && b.info.priority < info.priority)
            })
        })
    {
        return None;
    }
    let needs_view = info.needs_cluster_view() || !state.anti_pods.is_empty();
    let plain = state.cycle(info, &HashSet::new());
    let empty = plugins::Usage::default();
    let mut best: Option<((usize, i32, i64, usize), Plan)> = None;
    for name in &state.order {
        let Some(node) = state.nodes.get(name) else {
            continue;
        };
        let used = state.usage.get(name).unwrap_or(&empty);
        match plugins::filter(info, node, used, &plain) {
            Ok(()) => continue,
            Err(why) if !why.iter().all(|r| plugins::resolvable(r)) => continue,
            Err(_) => {}
        }
        let lower: Vec<(&String, &crate::Bound)> = state
            .on_node
            .get(name)
            .into_iter()
            .flatten()
            .filter(|u| u.as_str() != uid)
            .filter_map(|u| Some((u, state.bound.get(u)?)))
            .filter(|(_, b)| !b.terminating && b.info.priority < info.priority)
            .collect();
        if lower.is_empty() {
            continue;
        }
        let mut used = used.clone();
        let mut skip: HashSet<&str> = HashSet::new();
        for (u, b) in &lower {
            used.remove(&b.info);
            skip.insert(u.as_str());
        }
        let fits = |used: &plugins::Usage, skip: &HashSet<&str>| {
            let cycle = if needs_view {
                state.cycle(info, skip)
            } else {
                plugins::Cycle::default()
            };
            plugins::filter(info, node, used, &cycle).is_ok()
        };
        if !fits(&used, &skip) {
            continue;
        }
        // Reprieve first the pods a PodDisruptionBudget protects, then the
        // rest, the most important first in each group; whoever must still
        // go is a victim (kube's selectVictimsOnNode).
        let mut budgets: Vec<i32> = state.budgets.iter().map(|b| b.allowed).collect();
        let mut protected = |b: &crate::Bound| {
            let mut hit = false;
            for (i, budget) in state.budgets.iter().enumerate() {
                if budget.namespace == b.info.namespace && budget.selector.matches(&b.info.labels) {
                    budgets[i] -= 1;
                    hit |= budgets[i] < 0;
                }
            }
            hit
        };
        let mut lower: Vec<(bool, &String, &crate::Bound)> = lower
            .into_iter()
            .map(|(u, b)| (protected(b), u, b))
            .collect();
        lower.sort_by_key(|(p, _, b)| (std::cmp::Reverse(*p), std::cmp::Reverse(b.info.priority)));
        let mut victims = Vec::new();
        let mut violations = 0usize;
        for (violates, u, b) in lower {
            used.add(&b.info);
            skip.remove(u.as_str());
            if !fits(&used, &skip) {
                used.remove(&b.info);
                skip.insert(u.as_str());
                violations += usize::from(violates);
                victims.push(Victim {
                    uid: u.clone(),
                    namespace: b.info.namespace.clone(),
                    name: b.name.clone(),
                    priority: b.info.priority,
                });
            }
        }
        if victims.is_empty() {
            // Fits without anyone leaving (room freed meanwhile).
            continue;
        }
        let key = (
            violations,
            victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN),
            victims.iter().map(|v| i64::from(v.priority)).sum::<i64>(),
            victims.len(),
        );
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((
                key,
                Plan {
                    node: name.clone(),
                    victims,
                },
            ));
        }
    }
    best.map(|(_, plan)| plan)
}

/// Deletes the victims and nominates the node for the preemptor.
pub(crate) async fn execute(client: &Client, preemptor: &Pod, plan: Plan) {
    let ns = preemptor.namespace().unwrap_or_default();
    let name = preemptor.name_any();
    let preemptor_uid = preemptor.metadata.uid.clone().unwrap_or_default();
    info!(
        pod = %format!("{ns}/{name}"),
        node = %plan.node,
        victims = plan.victims.len(),
        "preempting"
    );
    for v in &plan.victims {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &v.namespace);
        let now = jiff::Timestamp::now().to_string();
        let condition = json!({"status": {"conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "PreemptionByScheduler",
            "message": format!("{}: preempting to accommodate a higher priority pod", crate::SCHEDULER_NAME),
            "lastTransitionTime": now,
        }]}});
        if let Err(e) = pods
            .patch_status(
                &v.name,
                &PatchParams::default(),
                &Patch::Strategic(&condition),
            )
            .await
        {
            debug!(pod = %format!("{}/{}", v.namespace, v.name), "DisruptionTarget: {e}");
        }
        let victim = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(v.name.clone()),
                namespace: Some(v.namespace.clone()),
                uid: Some(v.uid.clone()),
                ..Default::default()
            },
            ..Pod::default()
        };
        crate::event(
            client,
            &victim,
            "Normal",
            "Preempted",
            &format!("Preempted by pod {preemptor_uid} on node {}", plan.node),
        )
        .await;
        if let Err(e) = pods.delete(&v.name, &DeleteParams::default()).await {
            debug!(pod = %format!("{}/{}", v.namespace, v.name), "deleting a victim: {e}");
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let status = json!({"status": {"nominatedNodeName": plan.node}});
    if let Err(e) = pods
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        debug!(pod = %format!("{ns}/{name}"), "nominating {}: {e}", plan.node);
    }
}
