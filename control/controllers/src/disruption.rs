//! The disruption controller: keeps each PodDisruptionBudget's status —
//! `expectedPods`, `desiredHealthy`, `currentHealthy`,
//! `disruptionsAllowed`, `observedGeneration`, the `DisruptionAllowed`
//! condition — from the pods its selector matches and `minAvailable` or
//! `maxUnavailable` (a count or a percentage of the owning controllers'
//! scale), as Kubernetes' does. The eviction API reads that status.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use futures_util::{FutureExt, StreamExt, stream};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet, StatefulSet},
        core::v1::Pod,
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{Api, Client, ResourceExt, runtime::reflector::Store};
use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::control_loop::reflect;

/// How often budgets are recomputed when something changed.
const PERIOD: Duration = Duration::from_millis(500);
/// How long an evicted pod counts as disrupted before its deletion must
/// have shown (kube's DeletionTimeout).
const DELETION_TIMEOUT: i64 = 120;

/// Runs the controller until the task is dropped.
pub async fn run(client: Client) {
    let (pdbs, pdb_events) = reflect(Api::<PodDisruptionBudget>::all(client.clone()));
    let (pods, pod_events) = reflect(Api::<Pod>::all(client.clone()));
    let mut watches = stream::select_all([
        pdb_events.map(|_| ()).boxed(),
        pod_events.map(|_| ()).boxed(),
    ]);
    let mut tick = tokio::time::interval(PERIOD);
    let mut dirty = true;
    loop {
        tokio::select! {
            e = watches.next() => match e {
                None => return,
                Some(()) => dirty = true,
            },
            _ = tick.tick() => {
                let loaded = pdbs.wait_until_ready().now_or_never().is_some()
                    && pods.wait_until_ready().now_or_never().is_some();
                if dirty && loaded {
                    dirty = false;
                    for pdb in pdbs.state() {
                        if let Err(e) = reconcile(&client, &pdb, &pods).await {
                            dirty = true;
                            warn!(pdb = %format!("{}/{}", pdb.namespace().unwrap_or_default(), pdb.name_any()), "disruption: {e}");
                        }
                    }
                }
            }
        }
    }
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `minAvailable`/`maxUnavailable` against `total`: a count, or a
/// percentage rounded up (as Kubernetes' GetScaledValueFromIntOrPercent).
fn scaled(v: &IntOrString, total: i32) -> Result<i32, String> {
    match v {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let p: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value {s:?}: a count or a percentage"))?;
            Ok(((p * i64::from(total) + 99) / 100) as i32)
        }
    }
}

/// The scale of the controllers owning `pods` (Deployment through its
/// ReplicaSet, StatefulSet, ReplicaSet), each counted once.
async fn expected_scale(client: &Client, ns: &str, pods: &[&Pod]) -> Result<i32, kube::Error> {
    let mut owners: BTreeMap<(String, String), ()> = BTreeMap::new();
    for pod in pods {
        if let Some(o) = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
        {
            owners.insert((o.kind.clone(), o.name.clone()), ());
        }
    }
    let mut total = 0;
    let mut counted: HashMap<(String, String), ()> = HashMap::new();
    for (kind, name) in owners.into_keys() {
        let (kind, name, replicas) = match kind.as_str() {
            "ReplicaSet" => {
                let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns)
                    .get(&name)
                    .await?;
                let deployment = rs
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                    .map(|o| o.name.clone());
                match deployment {
                    Some(d) => {
                        let dep = Api::<Deployment>::namespaced(client.clone(), ns)
                            .get(&d)
                            .await?;
                        let r = dep.spec.and_then(|s| s.replicas).unwrap_or(1);
                        ("Deployment".to_string(), d, r)
                    }
                    None => (kind, name, rs.spec.and_then(|s| s.replicas).unwrap_or(1)),
                }
            }
            "StatefulSet" => {
                let ss = Api::<StatefulSet>::namespaced(client.clone(), ns)
                    .get(&name)
                    .await?;
                (kind, name, ss.spec.and_then(|s| s.replicas).unwrap_or(1))
            }
            // Other owners (Jobs, DaemonSets) have no scale: each pod counts.
            _ => (kind, name, 0),
        };
        if counted.insert((kind, name), ()).is_none() {
            total += replicas;
        }
    }
    Ok(total)
}

async fn reconcile(
    client: &Client,
    pdb: &PodDisruptionBudget,
    pods: &Store<Pod>,
) -> Result<(), kube::Error> {
    let ns = pdb.namespace().unwrap_or_default();
    let name = pdb.name_any();
    let spec = pdb.spec.clone().unwrap_or_default();
    let selector = spec
        .selector
        .as_ref()
        .map(|s| serde_json::to_value(s).unwrap_or(Value::Null));
    let all = pods.state();
    let matching: Vec<&Pod> = all
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| {
            let labels = serde_json::to_value(p.labels()).unwrap_or(Value::Null);
            selects(selector.as_ref(), &labels)
        })
        .map(|p| &**p)
        .collect();
    let now = jiff::Timestamp::now();
    // Evicted pods stay out of the healthy count until they are gone (or
    // the eviction is too old to trust).
    let old_status = pdb.status.clone().unwrap_or_default();
    let mut disrupted: BTreeMap<String, String> = BTreeMap::new();
    for (pod_name, at) in old_status.disrupted_pods.iter().flatten() {
        let alive = matching
            .iter()
            .any(|p| p.name_any() == *pod_name && p.metadata.deletion_timestamp.is_none());
        let fresh = now.duration_since(at.0).as_secs() < DELETION_TIMEOUT;
        if alive && fresh {
            disrupted.insert(pod_name.clone(), at.0.to_string());
        }
    }
    let healthy = matching
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !disrupted.contains_key(&p.name_any()))
        .filter(|p| ready(p))
        .count() as i32;
    let (expected, desired) = match (&spec.min_available, &spec.max_unavailable) {
        (Some(IntOrString::Int(n)), _) => (matching.len() as i32, *n),
        (Some(min @ IntOrString::String(_)), _) => {
            let scale = expected_scale(client, &ns, &matching).await?;
            match scaled(min, scale) {
                Ok(d) => (scale, d),
                Err(e) => {
                    debug!(pdb = %format!("{ns}/{name}"), "minAvailable: {e}");
                    (scale, scale)
                }
            }
        }
        (None, Some(max)) => {
            let scale = expected_scale(client, &ns, &matching).await?;
            match scaled(max, scale) {
                Ok(m) => (scale, (scale - m).max(0)),
                Err(e) => {
                    debug!(pdb = %format!("{ns}/{name}"), "maxUnavailable: {e}");
                    (scale, scale)
                }
            }
        }
        (None, None) => (matching.len() as i32, 0),
    };
    let allowed = (healthy - desired).max(0);
    let generation = pdb.metadata.generation.unwrap_or(0);
    let (cond_status, reason, message) = if allowed > 0 {
        ("True", "SufficientPods", "")
    } else {
        ("False", "InsufficientPods", "")
    };
    let old_condition = old_status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed");
    let transition = match old_condition {
        Some(c) if c.status == cond_status => c.last_transition_time.0.to_string(),
        _ => now.to_string(),
    };
    let unchanged = old_status.current_healthy == healthy
        && old_status.desired_healthy == desired
        && old_status.expected_pods == expected
        && old_status.disruptions_allowed == allowed
        && old_status.observed_generation == Some(generation)
        && old_condition.is_some_and(|c| c.status == cond_status)
        && old_status.disrupted_pods.as_ref().map_or(0, |d| d.len()) == disrupted.len();
    if unchanged {
        return Ok(());
    }
    let status = json!({
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "disruptionsAllowed": allowed,
        "observedGeneration": generation,
        "disruptedPods": disrupted,
        "conditions": [{
            "type": "DisruptionAllowed",
            "status": cond_status,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": transition,
        }],
    });
    // Replaced whole, at the resourceVersion read: an eviction that took
    // from the budget meanwhile makes this a conflict, retried next pass.
    let mut next = pdb.clone();
    next.metadata.managed_fields = None;
    next.status = Some(serde_json::from_value(status).unwrap_or_default());
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    api.replace_status(&name, &kube::api::PostParams::default(), &next)
        .await?;
    Ok(())
}

/// A LabelSelector (as JSON) against labels; an empty selector selects
/// every pod (policy/v1), a missing one none.
fn selects(selector: Option<&Value>, labels: &Value) -> bool {
    let Some(selector) = selector.filter(|s| s.is_object()) else {
        return false;
    };
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let labels_ok = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let exprs_ok = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|e| {
            let have = label(e.get("key").and_then(Value::as_str).unwrap_or(""));
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => have.is_some_and(|v| values.contains(&v)),
                "NotIn" => have.is_none_or(|v| !values.contains(&v)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        });
    labels_ok && exprs_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_scale_counts_and_percentages_as_kubernetes() {
        let cases = [
            (IntOrString::Int(2), 5, 2),
            (IntOrString::String("50%".into()), 5, 3),
            (IntOrString::String("100%".into()), 4, 4),
            (IntOrString::String("10%".into()), 1, 1),
        ];
        for (v, total, want) in cases {
            assert_eq!(scaled(&v, total), Ok(want), "{v:?} of {total}");
        }
        assert!(scaled(&IntOrString::String("half".into()), 4).is_err());
    }
}
