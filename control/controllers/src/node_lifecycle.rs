//! The node lifecycle controller, as Kubernetes' node-lifecycle-controller
//! and its NoExecute taint manager:
//!
//! - a node whose Lease in `kube-node-lease` has not been renewed for the
//!   grace period (seen from here, so clocks need not agree) gets its
//!   conditions set to `Unknown` (reason `NodeStatusUnknown`) and the
//!   `node.kubernetes.io/unreachable` taints (NoSchedule and NoExecute);
//!   a node whose agent reports `Ready=False` gets the
//!   `node.kubernetes.io/not-ready` ones; both go once the node is healthy;
//! - pods on a node with a NoExecute taint they do not tolerate are
//!   deleted; pods that tolerate it for `tolerationSeconds` are deleted
//!   that long after the taint was added (admission gives every pod 300 s
//!   for not-ready and unreachable). Their controllers recreate them
//!   elsewhere.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt, stream};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Pod, Taint},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::reflector::Store,
};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::{control_loop::reflect, events};

/// Where node heartbeat Leases live.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// kube-controller-manager's `--node-monitor-grace-period` default.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(40);
/// How often nodes and tainted nodes' pods are looked at.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(1);
/// The taint of a node whose agent stopped renewing its Lease.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node whose agent reports it not Ready.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
const COMPONENT: &str = "node-controller";
/// The conditions the agent posts and this controller marks Unknown.
const CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// How the controller judges nodes.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a Lease may go unrenewed before the node is unreachable.
    pub grace_period: Duration,
    /// How often the controller looks.
    pub period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grace_period: DEFAULT_GRACE_PERIOD,
            period: DEFAULT_PERIOD,
        }
    }
}

/// What the controller concludes about a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Ready,
    NotReady,
    Unreachable,
}

/// When a node's Lease was last seen renewed.
struct Seen {
    renew: Option<String>,
    at: Instant,
}

/// Runs the controller until the task is dropped.
pub async fn run(client: Client, config: Config) {
    let (nodes, node_events) = reflect(Api::<Node>::all(client.clone()));
    let (leases, lease_events) = reflect(Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE));
    let (pods, pod_events) = reflect(Api::<Pod>::all(client.clone()));
    let mut watches = stream::select_all([
        node_events.map(|_| ()).boxed(),
        lease_events.map(|_| ()).boxed(),
        pod_events.map(|_| ()).boxed(),
    ]);
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut tick = tokio::time::interval(config.period);
    loop {
        tokio::select! {
            e = watches.next() => if e.is_none() { return },
            _ = tick.tick() => {
                if loaded(&nodes) && loaded(&leases) && loaded(&pods) {
                    pass(&client, &config, &nodes, &leases, &pods, &mut seen).await;
                }
            }
        }
    }
}

/// Whether a Store has loaded its first list.
fn loaded<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.wait_until_ready().now_or_never().is_some()
}

async fn pass(
    client: &Client,
    config: &Config,
    nodes: &Store<Node>,
    leases: &Store<Lease>,
    pods: &Store<Pod>,
    seen: &mut HashMap<String, Seen>,
) {
    let now = Instant::now();
    let renewals: HashMap<String, Option<String>> = leases
        .state()
        .iter()
        .map(|l| {
            let renew = l
                .spec
                .as_ref()
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0.to_string());
            (l.name_any(), renew)
        })
        .collect();
    let nodes = nodes.state();
    let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    seen.retain(|name, _| names.contains(name));
    let mut tainted: HashMap<String, Vec<Taint>> = HashMap::new();
    for node in &nodes {
        let name = node.name_any();
        let renew = renewals.get(&name).cloned().flatten();
        let entry = seen.entry(name.clone()).or_insert(Seen {
            renew: renew.clone(),
            at: now,
        });
        if entry.renew != renew {
            entry.renew = renew;
            entry.at = now;
        }
        let health = if now.duration_since(entry.at) > config.grace_period {
            Health::Unreachable
        } else {
            match ready_status(node).as_deref() {
                Some("False") => Health::NotReady,
                _ => Health::Ready,
            }
        };
        if health == Health::Unreachable && ready_status(node).as_deref() != Some("Unknown") {
            mark_unknown(client, node).await;
        }
        let taints = match set_taints(client, node, health).await {
            Some(t) => t,
            None => node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default(),
        };
        let no_execute: Vec<Taint> = taints
            .into_iter()
            .filter(|t| t.effect == "NoExecute")
            .collect();
        if !no_execute.is_empty() {
            tainted.insert(name, no_execute);
        }
    }
    if !tainted.is_empty() {
        evict(client, pods, &tainted).await;
    }
}

fn ready_status(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

/// Sets the agent's conditions to Unknown, as the kubelet went quiet.
async fn mark_unknown(client: &Client, node: &Node) {
    let name = node.name_any();
    let now = jiff::Timestamp::now().to_string();
    let conditions: Vec<_> = CONDITIONS
        .iter()
        .map(|t| {
            json!({
                "type": t,
                "status": "Unknown",
                "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastTransitionTime": now,
            })
        })
        .collect();
    let patch = json!({"status": {"conditions": conditions}});
    let api: Api<Node> = Api::all(client.clone());
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => info!(node = %name, "node unreachable: its Lease was not renewed"),
        Err(e) => warn!(node = %name, "marking the node Unknown: {e}"),
    }
}

/// Makes the node's lifecycle taints match its health; returns the taints
/// it now has if they changed.
async fn set_taints(client: &Client, node: &Node, health: Health) -> Option<Vec<Taint>> {
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let wanted_key = match health {
        Health::Ready => None,
        Health::NotReady => Some(NOT_READY),
        Health::Unreachable => Some(UNREACHABLE),
    };
    let ours = |t: &Taint| {
        (t.key == UNREACHABLE || t.key == NOT_READY)
            && (t.effect == "NoExecute" || t.effect == "NoSchedule")
    };
    let mut next: Vec<Taint> = current
        .iter()
        .filter(|t| !ours(t) || Some(t.key.as_str()) == wanted_key)
        .cloned()
        .collect();
    if let Some(key) = wanted_key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !next.iter().any(|t| t.key == key && t.effect == effect) {
                next.push(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    time_added: (effect == "NoExecute").then(|| {
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
                    }),
                    value: None,
                });
            }
        }
    }
    if next == current {
        return None;
    }
    let name = node.name_any();
    // The resourceVersion makes this a compare-and-swap: taints someone
    // else set meanwhile are not lost (the next pass tries again).
    let patch = json!({
        "metadata": {"resourceVersion": node.resource_version()},
        "spec": {"taints": next},
    });
    let api: Api<Node> = Api::all(client.clone());
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            info!(node = %name, ?wanted_key, "node taints updated");
            Some(next)
        }
        Err(e) => {
            debug!(node = %name, "updating taints: {e}");
            None
        }
    }
}

/// The NoExecute taint manager: deletes pods that do not tolerate their
/// node's NoExecute taints, or whose tolerationSeconds ran out.
async fn evict(client: &Client, pods: &Store<Pod>, tainted: &HashMap<String, Vec<Taint>>) {
    let now = jiff::Timestamp::now();
    for pod in pods.state() {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) else {
            continue;
        };
        let Some(taints) = tainted.get(node) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        if !due(taints, &tolerations, now) {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let condition = json!({"status": {"conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint",
            "lastTransitionTime": now.to_string(),
        }]}});
        if let Err(e) = api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(&condition),
            )
            .await
        {
            debug!(pod = %format!("{ns}/{name}"), "DisruptionTarget: {e}");
        }
        events::normal(
            client,
            COMPONENT,
            &*pod,
            "TaintManagerEviction",
            &format!("Marking for deletion Pod {ns}/{name}"),
        )
        .await;
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => info!(pod = %format!("{ns}/{name}"), node, "evicted by NoExecute taint"),
            Err(e) => warn!(pod = %format!("{ns}/{name}"), "evicting: {e}"),
        }
    }
}

/// Whether a pod on a node with these NoExecute taints must go now.
fn due(
    taints: &[Taint],
    tolerations: &[k8s_openapi::api::core::v1::Toleration],
    now: jiff::Timestamp,
) -> bool {
    taints.iter().any(|taint| {
        let matching: Vec<_> = tolerations
            .iter()
            .filter(|t| shoal_scheduler::plugins::tolerates(t, taint))
            .collect();
        if matching.is_empty() {
            return true;
        }
        // Tolerated forever if any matching toleration has no limit;
        // otherwise for the shortest limit, from when the taint came.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            return false;
        }
        let seconds = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let added = taint.time_added.as_ref().map(|t| t.0).unwrap_or(now);
        let deadline = added
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .unwrap_or(added);
        now >= deadline
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Toleration;

    fn taint(key: &str, added_secs_ago: i64, now: jiff::Timestamp) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            time_added: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                now - jiff::SignedDuration::from_secs(added_secs_ago),
            )),
            value: None,
        }
    }

    fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    #[test]
    fn pods_go_when_their_toleration_runs_out() {
        let now = jiff::Timestamp::now();
        let cases = [
            ("no toleration", taint(UNREACHABLE, 0, now), vec![], true),
            (
                "300 s, taint 10 s old",
                taint(UNREACHABLE, 10, now),
                vec![toleration(UNREACHABLE, Some(300))],
                false,
            ),
            (
                "300 s, taint 301 s old",
                taint(UNREACHABLE, 301, now),
                vec![toleration(UNREACHABLE, Some(300))],
                true,
            ),
            (
                "forever",
                taint(UNREACHABLE, 10_000, now),
                vec![toleration(UNREACHABLE, None)],
                false,
            ),
            (
                "tolerates the other taint only",
                taint(NOT_READY, 0, now),
                vec![toleration(UNREACHABLE, None)],
                true,
            ),
            (
                "the shortest of two matching",
                taint(UNREACHABLE, 20, now),
                vec![
                    toleration(UNREACHABLE, Some(300)),
                    toleration(UNREACHABLE, Some(10)),
                ],
                true,
            ),
        ];
        for (what, t, tols, want) in cases {
            assert_eq!(due(&[t], &tols, now), want, "{what}");
        }
    }
}
