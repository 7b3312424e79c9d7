//! shoal's scheduler: watches Nodes and Pods, places each pending pod whose
//! `schedulerName` is `default-scheduler` on the feasible node with the best
//! score, and binds it through `pods/binding`, as kube-scheduler does.
//!
//! So far: the filters in [`plugins`] (taints and tolerations, cordoned and
//! not-ready nodes, nodeSelector and required node affinity, CPU, memory
//! and pod count against allocatable minus what is bound) and the
//! least-allocated score. A pod no node takes gets `PodScheduled=False`,
//! reason `Unschedulable`, Kubernetes' "0/N nodes are available: ..."
//! message and a `FailedScheduling` Event; it is tried again when a Node
//! changes or a pod goes away, and every few seconds. A bound pod gets a
//! `Scheduled` Event. One scheduler per cluster for now (no leader
//! election yet).

pub mod plugins;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use serde_json::json;
use tracing::{debug, info, warn};

use plugins::{NodeInfo, PodInfo, Reason};

/// The scheduler name pods ask for (or leave empty).
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// How often unschedulable pods are tried again without a cluster event.
const RETRY: Duration = Duration::from_secs(5);

enum Change {
    Node(Box<Event<Node>>),
    Pod(Box<Event<Pod>>),
}

/// What the scheduler knows of the cluster.
#[derive(Default)]
struct State {
    nodes: BTreeMap<String, NodeInfo>,
    /// Pod uid → (node, what it requested), for bound and assumed pods.
    bound: HashMap<String, (String, PodInfo)>,
    /// Pod uid → the pending pod.
    pending: BTreeMap<String, Pod>,
    /// Pod uid → the message last posted for it.
    posted: HashMap<String, String>,
}

impl State {
    /// What the bound and assumed pods use, per node: one pass over them.
    fn usage(&self) -> HashMap<&str, (u64, u64, u64)> {
        let mut used: HashMap<&str, (u64, u64, u64)> = HashMap::new();
        for (on, pod) in self.bound.values() {
            let u = used.entry(on.as_str()).or_default();
            u.0 += pod.cpu_milli;
            u.1 += pod.memory;
            u.2 += 1;
        }
        used
    }

    /// Applies a pod event; returns whether it may make room elsewhere.
    fn pod_changed(&mut self, pod: Pod) -> bool {
        let Some(uid) = pod.metadata.uid.clone() else {
            return false;
        };
        let spec = pod.spec.as_ref();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let terminal = matches!(phase, Some("Succeeded" | "Failed"));
        let node = spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        if pod.metadata.deletion_timestamp.is_some() && node.is_none() {
            self.pending.remove(&uid);
            return false;
        }
        match node {
            Some(_) if terminal => {
                self.pending.remove(&uid);
                self.bound.remove(&uid).is_some()
            }
            Some(node) => {
                self.pending.remove(&uid);
                self.posted.remove(&uid);
                self.bound.insert(uid, (node, PodInfo::from_pod(&pod)));
                false
            }
            None => {
                let name = spec
                    .and_then(|s| s.scheduler_name.as_deref())
                    .unwrap_or(SCHEDULER_NAME);
                if name == SCHEDULER_NAME && !terminal {
                    self.pending.insert(uid, pod);
                }
                false
            }
        }
    }

    fn pod_deleted(&mut self, pod: &Pod) {
        if let Some(uid) = pod.metadata.uid.as_ref() {
            self.pending.remove(uid);
            self.bound.remove(uid);
            self.posted.remove(uid);
        }
    }

    /// The best node for a pod, or the reasons each node refused it.
    fn place(&self, info: &PodInfo) -> Result<String, BTreeMap<Reason, usize>> {
        let mut best: Option<(u64, String)> = None;
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        let used = self.usage();
        for (name, node) in &self.nodes {
            let mut node = node.clone();
            if let Some(&(cpu, memory, pods)) = used.get(name.as_str()) {
                node.used_cpu_milli = cpu;
                node.used_memory = memory;
                node.used_pods = pods;
            }
            match plugins::filter(info, &node) {
                Ok(()) => {
                    let score = plugins::score(info, &node);
                    if best.as_ref().is_none_or(|(s, _)| score > *s) {
                        best = Some((score, name.clone()));
                    }
                }
                Err(why) => {
                    for r in why {
                        *reasons.entry(r).or_default() += 1;
                    }
                }
            }
        }
        best.map(|(_, n)| n).ok_or(reasons)
    }
}

/// Runs the scheduler until the task is dropped.
pub async fn run(client: Client) -> anyhow::Result<()> {
    let nodes = watcher::watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(|e| Change::Node(Box::new(e))));
    let pods = watcher::watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(|e| Change::Pod(Box::new(e))));
    let mut changes = stream::select(nodes.boxed(), pods.boxed());
    let mut state = State::default();
    let mut retry = tokio::time::interval(RETRY);
    let mut ready = (false, false);
    loop {
        let mut retry_all = false;
        tokio::select! {
            change = changes.next() => {
                let Some(change) = change else { return Ok(()) };
                match change {
                    Ok(Change::Node(e)) => {
                        retry_all = true;
                        match *e {
                            Event::Init => state.nodes.clear(),
                            Event::InitApply(n) | Event::Apply(n) => {
                                state.nodes.insert(n.name_any(), NodeInfo::from_node(&n));
                            }
                            Event::Delete(n) => {
                                state.nodes.remove(&n.name_any());
                            }
                            Event::InitDone => ready.0 = true,
                        }
                    }
                    Ok(Change::Pod(e)) => match *e {
                        Event::Init => {
                            state.bound.clear();
                            state.pending.clear();
                        }
                        Event::InitApply(p) | Event::Apply(p) => {
                            retry_all |= state.pod_changed(p);
                        }
                        Event::Delete(p) => {
                            state.pod_deleted(&p);
                            retry_all = true;
                        }
                        Event::InitDone => ready.1 = true,
                    },
                    Err(e) => warn!("scheduler: watch: {e}"),
                }
            }
            _ = retry.tick() => retry_all = true,
        }
        // Place nothing before both lists are complete: a node's bound
        // pods must be known before it looks free.
        if ready.0 && ready.1 {
            schedule_pending(&client, &mut state, retry_all).await;
        }
    }
}

/// Tries the pending pods: new ones always, those already refused only when
/// `retry_all`.
async fn schedule_pending(client: &Client, state: &mut State, retry_all: bool) {
    let uids: Vec<String> = state
        .pending
        .keys()
        .filter(|uid| retry_all || !state.posted.contains_key(*uid))
        .cloned()
        .collect();
    for uid in uids {
        let Some(pod) = state.pending.get(&uid).cloned() else {
            continue;
        };
        let info = PodInfo::from_pod(&pod);
        match state.place(&info) {
            Ok(node) => {
                if bind(client, &pod, &node).await {
                    state.pending.remove(&uid);
                    state.posted.remove(&uid);
                    // Assumed until the watch shows the pod bound.
                    state.bound.insert(uid, (node, info));
                } else {
                    state.posted.insert(uid, String::new());
                }
            }
            Err(reasons) => {
                let message = plugins::unschedulable_message(state.nodes.len(), &reasons);
                if state.posted.get(&uid) != Some(&message) {
                    unschedulable(client, &pod, &message).await;
                    state.posted.insert(uid, message);
                }
            }
        }
    }
}

async fn bind(client: &Client, pod: &Pod, node: &str) -> bool {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    match pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => {
            info!(pod = %format!("{ns}/{name}"), node, "scheduled");
            event(
                client,
                pod,
                "Normal",
                "Scheduled",
                &format!("Successfully assigned {ns}/{name} to {node}"),
            )
            .await;
            true
        }
        Err(e) => {
            // Deleted or bound meanwhile; the watch tells which.
            debug!(pod = %format!("{ns}/{name}"), node, "binding failed: {e}");
            false
        }
    }
}

async fn unschedulable(client: &Client, pod: &Pod, message: &str) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let now = jiff::Timestamp::now().to_string();
    let status = json!({"status": {"conditions": [{
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastProbeTime": null,
        "lastTransitionTime": now,
    }]}});
    if let Err(e) = pods
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        debug!(pod = %format!("{ns}/{name}"), "posting Unschedulable: {e}");
    }
    event(client, pod, "Warning", "FailedScheduling", message).await;
}

/// Records a core/v1 Event about the pod from `default-scheduler`.
async fn event(client: &Client, pod: &Pod, kind: &str, reason: &str, message: &str) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let stamp = jiff::Timestamp::now();
    let now = stamp.to_string();
    // Named as client-go's recorder names them: `<object>.<unix nanos in hex>`.
    let event_name = format!("{name}.{:x}", stamp.as_nanosecond());
    let body = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name, "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name, "uid": pod.metadata.uid},
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": SCHEDULER_NAME},
        "reportingComponent": SCHEDULER_NAME,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    let events: Api<CoreEvent> = Api::namespaced(client.clone(), &ns);
    let result = match serde_json::from_value::<CoreEvent>(body) {
        Ok(ev) => events.create(&PostParams::default(), &ev).await.map(|_| ()),
        Err(e) => {
            warn!("scheduler: building an event: {e}");
            return;
        }
    };
    if let Err(e) = result {
        warn!(pod = %format!("{ns}/{name}"), "recording event {reason}: {e}");
    }
}
