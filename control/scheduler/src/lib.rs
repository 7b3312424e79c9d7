//! shoal's scheduler: watches Nodes and Pods, places each pending pod whose
//! `schedulerName` is one of its profiles on the feasible node with the
//! best score, and binds it through `pods/binding`, as kube-scheduler does.
//!
//! - [`queue`]: pending pods by priority, then age; per-pod back-off (1 s
//!   doubling to 10 s); unschedulable pods moved back on Node adds and
//!   updates and on pods going away.
//! - [`plugins`]: filters (unschedulable/taints, nodeName, nodeSelector and
//!   required node affinity, host ports, resources, topology spread
//!   DoNotSchedule, required pod affinity and anti-affinity) and scores
//!   (resource fit, balanced allocation, preferred node and pod affinity,
//!   topology spread ScheduleAnyway, PreferNoSchedule taints) weighted as
//!   kube-scheduler's default profile.
//!   Pods whose PersistentVolumeClaims are bound go only where the
//!   volumes' node affinity allows (local PVs). A claim of a
//!   WaitForFirstConsumer StorageClass is not bound yet: the scheduler
//!   picks the pod's node, writes it to the claim's
//!   [`SELECTED_NODE`] annotation for the provisioner and binds the pod
//!   once the claim is bound.
//! - [`preemption`]: a pod that fits nowhere evicts the fewest,
//!   lowest-priority pods that make room on one node.
//!
//! Profiles: `default-scheduler` scores resource fit least-allocated
//! (spreading), [`BIN_PACKING`] (`shoal-bin-packing`) most-allocated.
//! As kube-scheduler, only a share of the feasible nodes is scored on big
//! clusters (percentageOfNodesToScore's adaptive default), starting where
//! the previous pod's search stopped.
//!
//! A pod no node takes gets `PodScheduled=False`, reason `Unschedulable`,
//! Kubernetes' "0/N nodes are available: ..." message and a
//! `FailedScheduling` Event; a bound pod gets a `Scheduled` Event.

pub mod plugins;
mod preemption;
pub mod queue;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt, stream};
use k8s_openapi::api::core::v1::{
    Event as CoreEvent, Node, NodeSelectorTerm, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

use plugins::{Cycle, NodeInfo, PodInfo, Reason, Strategy, Usage};

/// The default profile's scheduler name (pods that leave it empty get it).
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// The bin-packing profile: resource fit scored most-allocated, so pods
/// fill nodes before new ones are used.
pub const BIN_PACKING: &str = "shoal-bin-packing";
/// The claim annotation naming the node a WaitForFirstConsumer claim's
/// volume must be reachable from (Kubernetes' AnnSelectedNode).
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Bindings in flight at once.
const MAX_BINDINGS: usize = 128;
/// Below this many nodes every node is scored (kube's minFeasibleNodesToFind).
const MIN_FEASIBLE_NODES: usize = 100;
/// Pods placed between two yields to the runtime.
const YIELD_EVERY: u64 = 32;
/// How often parked pods are checked against [`queue::MAX_UNSCHEDULABLE`].
const FLUSH: Duration = Duration::from_secs(5);

/// The scoring strategy of a profile, or `None` if the name is not ours.
fn profile(name: &str) -> Option<Strategy> {
    match name {
        SCHEDULER_NAME => Some(Strategy::LeastAllocated),
        BIN_PACKING => Some(Strategy::MostAllocated),
        _ => None,
    }
}

enum Change {
    Node(Box<Event<Node>>),
    Pod(Box<Event<Pod>>),
    Claim(Box<Event<PersistentVolumeClaim>>),
    Volume(Box<Event<PersistentVolume>>),
    Class(Box<Event<StorageClass>>),
    Budget(Box<Event<PodDisruptionBudget>>),
}

/// A pod bound to (or assumed on) a node.
struct Bound {
    node: String,
    info: Arc<PodInfo>,
    name: String,
    /// Not yet seen bound by the watch: the binding is in flight.
    assumed: bool,
    /// Has a deletionTimestamp (going away; not a preemption victim).
    terminating: bool,
}

/// A PersistentVolumeClaim as scheduling sees it.
struct Claim {
    /// The volume it is bound to.
    volume: Option<String>,
    class: String,
    /// Its [`SELECTED_NODE`] annotation.
    selected: Option<String>,
}

/// A pod's WaitForFirstConsumer claims that are not bound yet.
#[derive(Default)]
struct Delayed {
    /// Claims no node was chosen for yet (names).
    unselected: Vec<String>,
    /// A claim has its node and waits for its volume.
    waiting: bool,
}

/// A PodDisruptionBudget as preemption weighs it.
struct Budget {
    namespace: String,
    name: String,
    selector: plugins::Selector,
    allowed: i32,
}

/// What the scheduler knows of the cluster.
#[derive(Default)]
struct State {
    nodes: HashMap<String, NodeInfo>,
    /// Node names in a stable order (the search rotates over it).
    order: Vec<String>,
    order_dirty: bool,
    next_start: usize,
    usage: HashMap<String, Usage>,
    /// Pod uids per node.
    on_node: HashMap<String, HashSet<String>>,
    /// Pod uid → where it is bound or assumed.
    bound: HashMap<String, Bound>,
    /// Bound pods with required anti-affinity (every pod checks them).
    anti_pods: HashSet<String>,
    /// Pod uid → the pending pod.
    pending: HashMap<String, Arc<Pod>>,
    /// Pod uid → the Unschedulable message last posted for it.
    posted: HashMap<String, String>,
    queue: queue::Queue,
    /// Pending pod uid → the node preemption made room on for it; the
    /// room stays reserved from pods of lower priority.
    nominated: HashMap<String, (String, Arc<PodInfo>)>,
    /// PodDisruptionBudgets, for choosing preemption victims.
    budgets: Vec<Budget>,
    /// PersistentVolumeClaim `namespace/name` → what scheduling needs of it.
    claims: HashMap<String, Claim>,
    /// StorageClasses with volumeBindingMode WaitForFirstConsumer.
    delayed_classes: HashSet<String>,
    /// PersistentVolume name → its required node affinity terms.
    volumes: HashMap<String, Vec<NodeSelectorTerm>>,
    /// Tie-breaking among equal scores.
    rng: u64,
}

/// A decision for one pod.
enum Outcome {
    Bind(String),
    Unschedulable(BTreeMap<Reason, usize>),
}

impl State {
    fn add_bound(&mut self, uid: String, bound: Bound) {
        self.usage
            .entry(bound.node.clone())
            .or_default()
            .add(&bound.info);
        self.on_node
            .entry(bound.node.clone())
            .or_default()
            .insert(uid.clone());
        if !bound.info.pod_anti_affinity.is_empty() {
            self.anti_pods.insert(uid.clone());
        }
        self.bound.insert(uid, bound);
    }

    fn remove_bound(&mut self, uid: &str) -> Option<Bound> {
        let bound = self.bound.remove(uid)?;
        if let Some(u) = self.usage.get_mut(&bound.node) {
            u.remove(&bound.info);
        }
        if let Some(set) = self.on_node.get_mut(&bound.node) {
            set.remove(uid);
        }
        self.anti_pods.remove(uid);
        Some(bound)
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
        match node {
            Some(_) if terminal => {
                self.forget_pending(&uid);
                self.remove_bound(&uid).is_some()
            }
            Some(node) => {
                self.forget_pending(&uid);
                let info = Arc::new(PodInfo::from_pod(&pod));
                let freed = self.remove_bound(&uid).is_some_and(|old| old.node != node);
                self.add_bound(
                    uid,
                    Bound {
                        node,
                        info,
                        name: pod.name_any(),
                        assumed: false,
                        terminating: pod.metadata.deletion_timestamp.is_some(),
                    },
                );
                freed
            }
            None => {
                if self.bound.get(&uid).is_some_and(|b| b.assumed) {
                    // Our binding is in flight; its result decides.
                    return false;
                }
                let name = spec
                    .and_then(|s| s.scheduler_name.as_deref())
                    .unwrap_or(SCHEDULER_NAME);
                if pod.metadata.deletion_timestamp.is_some() || terminal || profile(name).is_none()
                {
                    self.forget_pending(&uid);
                    return false;
                }
                let priority = spec.and_then(|s| s.priority).unwrap_or(0);
                let created = pod
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default();
                self.queue.add(&uid, priority, &created);
                let nominated = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.nominated_node_name.clone())
                    .filter(|n| !n.is_empty());
                match nominated {
                    Some(node) => {
                        let info = Arc::new(PodInfo::from_pod(&pod));
                        self.nominated.insert(uid.clone(), (node, info));
                    }
                    None => {
                        self.nominated.remove(&uid);
                    }
                }
                self.pending.insert(uid, Arc::new(pod));
                false
            }
        }
    }

    fn forget_pending(&mut self, uid: &str) {
        self.nominated.remove(uid);
        self.pending.remove(uid);
        self.posted.remove(uid);
        self.queue.remove(uid);
    }

    fn pod_deleted(&mut self, pod: &Pod) -> bool {
        let Some(uid) = pod.metadata.uid.as_ref() else {
            return false;
        };
        self.forget_pending(uid);
        self.remove_bound(uid).is_some()
    }

    fn node_order(&mut self) -> &[String] {
        if self.order_dirty {
            self.order = self.nodes.keys().cloned().collect();
            self.order.sort();
            self.order_dirty = false;
        }
        &self.order
    }

    /// The cluster view a pod's inter-pod terms need: every bound pod when
    /// the pod has such terms, else only those with anti-affinity.
    fn cycle(&self, pod: &PodInfo, skip: &HashSet<&str>) -> Cycle {
        let mut cycle = self.pod_cycle(pod, skip);
        for claim in &pod.claims {
            let found = self.claims.get(&format!("{}/{claim}", pod.namespace));
            match found.map(|c| (c, c.volume.as_ref())) {
                None => {
                    cycle.volume_error =
                        Some(format!("persistentvolumeclaim \"{claim}\" not found"));
                }
                Some((c, None)) if self.delayed_classes.contains(&c.class) => {
                    // Its volume will be made where the pod goes; once a
                    // node is chosen, only that node.
                    if let Some(node) = &c.selected {
                        cycle.volume_terms.push(vec![NodeSelectorTerm {
                            match_fields: Some(vec![
                                k8s_openapi::api::core::v1::NodeSelectorRequirement {
                                    key: "metadata.name".into(),
                                    operator: "In".into(),
                                    values: Some(vec![node.clone()]),
                                },
                            ]),
                            ..NodeSelectorTerm::default()
                        }]);
                    }
                }
                Some((_, None)) => {
                    cycle.volume_error =
                        Some("pod has unbound immediate PersistentVolumeClaims".into());
                }
                Some((_, Some(volume))) => match self.volumes.get(volume) {
                    Some(terms) if terms.is_empty() => {}
                    Some(terms) => cycle.volume_terms.push(terms.clone()),
                    None => {
                        cycle.volume_error = Some("pvc(s) bound to non-existent pv(s)".into());
                    }
                },
            }
        }
        cycle
    }

    /// The pod's unbound WaitForFirstConsumer claims.
    fn delayed(&self, pod: &PodInfo) -> Delayed {
        let mut delayed = Delayed::default();
        for name in &pod.claims {
            let Some(c) = self.claims.get(&format!("{}/{name}", pod.namespace)) else {
                continue;
            };
            if c.volume.is_some() || !self.delayed_classes.contains(&c.class) {
                continue;
            }
            match c.selected {
                Some(_) => delayed.waiting = true,
                None => delayed.unselected.push(name.clone()),
            }
        }
        delayed
    }

    fn pod_cycle(&self, pod: &PodInfo, skip: &HashSet<&str>) -> Cycle {
        if !pod.needs_cluster_view() && self.anti_pods.is_empty() {
            return Cycle::default();
        }
        let with_labels = |uid: &String| {
            if skip.contains(uid.as_str()) {
                return None;
            }
            let b = self.bound.get(uid)?;
            Some((&self.nodes.get(&b.node)?.labels, &*b.info))
        };
        if pod.needs_cluster_view() {
            Cycle::new(
                pod,
                self.nodes.values(),
                self.bound.keys().filter_map(with_labels),
            )
        } else {
            Cycle::new(
                pod,
                self.nodes.values(),
                self.anti_pods.iter().filter_map(with_labels),
            )
        }
    }

    /// Filters (a share of) the nodes, scores the feasible ones and picks
    /// the best, or counts why every node refused.
    fn place(&mut self, info: &PodInfo, strategy: Strategy) -> Outcome {
        let cycle = self.cycle(info, &HashSet::new());
        let n = self.node_order().len();
        let want = feasible_to_find(n);
        let start = if n == 0 { 0 } else { self.next_start % n };
        let mut feasible: Vec<(String, plugins::RawScore)> = Vec::new();
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        let empty = Usage::default();
        // Room preemption freed for a pending pod of at least this priority
        // counts as taken (kube's nominated pods).
        let mut reserved: HashMap<&str, Usage> = HashMap::new();
        for (node, other) in self.nominated.values() {
            if other.key != info.key && other.priority >= info.priority {
                reserved
                    .entry(node.as_str())
                    .or_insert_with(|| self.usage.get(node).cloned().unwrap_or_default())
                    .add(other);
            }
        }
        let mut processed = 0;
        for i in 0..n {
            let name = &self.order[(start + i) % n];
            processed += 1;
            let Some(node) = self.nodes.get(name) else {
                continue;
            };
            let used = reserved
                .get(name.as_str())
                .or_else(|| self.usage.get(name))
                .unwrap_or(&empty);
            match plugins::filter(info, node, used, &cycle) {
                Ok(()) => {
                    let score = plugins::score(info, node, used, &cycle, strategy);
                    feasible.push((name.clone(), score));
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(why) => {
                    for r in why {
                        *reasons.entry(r).or_default() += 1;
                    }
                }
            }
        }
        let next = if n == 0 { 0 } else { (start + processed) % n };
        if feasible.is_empty() {
            self.next_start = next;
            return Outcome::Unschedulable(reasons);
        }
        let raw: Vec<plugins::RawScore> = feasible.iter().map(|(_, s)| s.clone()).collect();
        let totals = plugins::total_scores(&raw);
        let best = totals.iter().copied().max().unwrap_or(0);
        // Among equal best scores, one at random (reservoir sampling), as
        // kube-scheduler does, so ties do not pile onto one node.
        let mut chosen = 0;
        let mut seen = 0u64;
        for (i, t) in totals.iter().enumerate() {
            if *t == best {
                seen += 1;
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                if self.rng.is_multiple_of(seen) {
                    chosen = i;
                }
            }
        }
        self.next_start = next;
        Outcome::Bind(feasible.swap_remove(chosen).0)
    }
}

/// How many feasible nodes to find before scoring (kube's adaptive
/// percentageOfNodesToScore: 50% minus 1% per 125 nodes, at least 5%,
/// at least 100 nodes).
fn feasible_to_find(nodes: usize) -> usize {
    if nodes < MIN_FEASIBLE_NODES {
        return nodes.max(1);
    }
    let percent = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percent / 100).max(MIN_FEASIBLE_NODES)
}

/// The outcome of a binding, reported back to the loop.
struct BindResult {
    uid: String,
    pod: Arc<Pod>,
    ok: bool,
}

/// Runs the scheduler until the task is dropped.
pub async fn run(client: Client) -> anyhow::Result<()> {
    let nodes = watcher::watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(|e| Change::Node(Box::new(e))));
    let pods = watcher::watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(|e| Change::Pod(Box::new(e))));
    let claims = watcher::watcher(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(|e| Change::Claim(Box::new(e))));
    let budgets = watcher::watcher(
        Api::<PodDisruptionBudget>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(|e| Change::Budget(Box::new(e))));
    let volumes = watcher::watcher(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(|e| Change::Volume(Box::new(e))));
    let classes = watcher::watcher(
        Api::<StorageClass>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(|e| Change::Class(Box::new(e))));
    let mut changes = stream::select_all([
        nodes.boxed(),
        pods.boxed(),
        claims.boxed(),
        volumes.boxed(),
        classes.boxed(),
        budgets.boxed(),
    ]);
    let mut state = State {
        rng: 0x9E37_79B9_7F4A_7C15,
        ..State::default()
    };
    let (bound_tx, mut bound_rx) = mpsc::unbounded_channel::<BindResult>();
    let bindings = Arc::new(Semaphore::new(MAX_BINDINGS));
    let mut flush = tokio::time::interval(FLUSH);
    let mut ready = (false, false);
    let mut scheduled = 0u64;
    loop {
        // Take in everything already delivered before deciding anything.
        loop {
            let Some(change) = changes.next().now_or_never() else {
                break;
            };
            let Some(change) = change else {
                return Ok(());
            };
            apply(&mut state, change, &mut ready);
        }
        while let Ok(result) = bound_rx.try_recv() {
            binding_done(&mut state, result);
        }
        // Place nothing before both lists are complete: a node's bound
        // pods must be known before it looks free.
        if ready.0
            && ready.1
            && let Some(uid) = state.queue.pop(Instant::now())
        {
            schedule_one(&client, &mut state, &uid, &bound_tx, &bindings).await;
            // A long queue never waits on anything: let the bindings and
            // the rest of the process run now and then.
            scheduled += 1;
            if scheduled.is_multiple_of(YIELD_EVERY) {
                tokio::task::yield_now().await;
            }
            continue;
        }
        let wake = state.queue.next_wakeup();
        tokio::select! {
            change = changes.next() => {
                let Some(change) = change else { return Ok(()) };
                apply(&mut state, change, &mut ready);
            }
            Some(result) = bound_rx.recv() => binding_done(&mut state, result),
            _ = flush.tick() => state.queue.flush_unschedulable(Instant::now()),
            _ = sleep_until(wake) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn apply(state: &mut State, change: Result<Change, watcher::Error>, ready: &mut (bool, bool)) {
    let now = Instant::now();
    match change {
        Ok(Change::Node(e)) => match *e {
            Event::Init => {}
            Event::InitApply(n) | Event::Apply(n) => {
                let name = n.name_any();
                if !state.nodes.contains_key(&name) {
                    state.order_dirty = true;
                }
                state.nodes.insert(name, NodeInfo::from_node(&n));
                state.queue.move_all(now);
            }
            Event::Delete(n) => {
                state.nodes.remove(&n.name_any());
                state.order_dirty = true;
            }
            Event::InitDone => {
                ready.0 = true;
                state.queue.move_all(now);
            }
        },
        Ok(Change::Pod(e)) => match *e {
            Event::Init => {}
            Event::InitApply(p) | Event::Apply(p) => {
                if state.pod_changed(p) {
                    state.queue.move_all(now);
                }
            }
            Event::Delete(p) => {
                if state.pod_deleted(&p) {
                    state.queue.move_all(now);
                }
            }
            Event::InitDone => ready.1 = true,
        },
        Ok(Change::Claim(e)) => match *e {
            Event::Init | Event::InitDone => {}
            Event::InitApply(c) | Event::Apply(c) => {
                let key = format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any());
                let selected = c
                    .annotations()
                    .get(SELECTED_NODE)
                    .filter(|n| !n.is_empty())
                    .cloned();
                let spec = c.spec.unwrap_or_default();
                let volume = spec.volume_name.filter(|v| !v.is_empty());
                let class = spec.storage_class_name.unwrap_or_default();
                state.claims.insert(
                    key,
                    Claim {
                        volume,
                        class,
                        selected,
                    },
                );
                state.queue.move_all(now);
            }
            Event::Delete(c) => {
                let key = format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any());
                state.claims.remove(&key);
            }
        },
        Ok(Change::Volume(e)) => match *e {
            Event::Init | Event::InitDone => {}
            Event::InitApply(v) | Event::Apply(v) => {
                let name = v.name_any();
                let terms = v
                    .spec
                    .and_then(|s| s.node_affinity)
                    .and_then(|a| a.required)
                    .map(|r| r.node_selector_terms)
                    .unwrap_or_default();
                state.volumes.insert(name, terms);
                state.queue.move_all(now);
            }
            Event::Delete(v) => {
                state.volumes.remove(&v.name_any());
            }
        },
        Ok(Change::Class(e)) => match *e {
            Event::Init => state.delayed_classes.clear(),
            Event::InitDone => {}
            Event::InitApply(k) | Event::Apply(k) => {
                if k.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") {
                    state.delayed_classes.insert(k.name_any());
                } else {
                    state.delayed_classes.remove(&k.name_any());
                }
                state.queue.move_all(now);
            }
            Event::Delete(k) => {
                state.delayed_classes.remove(&k.name_any());
            }
        },
        Ok(Change::Budget(e)) => match *e {
            Event::Init => state.budgets.clear(),
            Event::InitDone => {}
            Event::InitApply(b) | Event::Apply(b) => {
                let (namespace, name) = (b.namespace().unwrap_or_default(), b.name_any());
                state
                    .budgets
                    .retain(|x| !(x.namespace == namespace && x.name == name));
                state.budgets.push(Budget {
                    selector: plugins::Selector::new(
                        b.spec.as_ref().and_then(|s| s.selector.as_ref()),
                    ),
                    allowed: b.status.as_ref().map_or(0, |s| s.disruptions_allowed),
                    namespace,
                    name,
                });
            }
            Event::Delete(b) => {
                let (namespace, name) = (b.namespace().unwrap_or_default(), b.name_any());
                state
                    .budgets
                    .retain(|x| !(x.namespace == namespace && x.name == name));
            }
        },
        Err(e) => warn!("scheduler: watch: {e}"),
    }
}

fn binding_done(state: &mut State, result: BindResult) {
    if result.ok {
        return;
    }
    // Undo the assumption unless the watch already settled the pod.
    if state.bound.get(&result.uid).is_some_and(|b| b.assumed) {
        state.remove_bound(&result.uid);
        let priority = result
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.priority)
            .unwrap_or(0);
        let created = result
            .pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        state
            .queue
            .retry(&result.uid, priority, &created, Instant::now());
        state.pending.insert(result.uid, result.pod);
        state.queue.move_all(Instant::now());
    }
}

async fn schedule_one(
    client: &Client,
    state: &mut State,
    uid: &str,
    bound_tx: &mpsc::UnboundedSender<BindResult>,
    bindings: &Arc<Semaphore>,
) {
    let Some(pod) = state.pending.get(uid).cloned() else {
        state.queue.remove(uid);
        return;
    };
    let info = PodInfo::from_pod(&pod);
    let Some(strategy) = profile(&info.scheduler_name) else {
        state.forget_pending(uid);
        return;
    };
    let delayed = state.delayed(&info);
    if delayed.waiting && delayed.unselected.is_empty() {
        // A claim's volume is being made on the chosen node; the claim's
        // binding moves the pod back.
        state.queue.unschedulable(uid, Instant::now());
        return;
    }
    match state.place(&info, strategy) {
        Outcome::Bind(node) if !delayed.unselected.is_empty() => {
            // VolumeBinding's PreBind: the claims learn the node; the pod
            // binds once they are bound.
            state.queue.unschedulable(uid, Instant::now());
            let client = client.clone();
            let ns = info.namespace.clone();
            tokio::spawn(async move {
                select_node(&client, &ns, &delayed.unselected, &node).await;
            });
        }
        Outcome::Bind(node) => {
            state.forget_pending(uid);
            state.add_bound(
                uid.to_string(),
                Bound {
                    node: node.clone(),
                    name: pod.name_any(),
                    info: Arc::new(info),
                    assumed: true,
                    terminating: false,
                },
            );
            let client = client.clone();
            let tx = bound_tx.clone();
            let permits = bindings.clone();
            let uid = uid.to_string();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let ok = bind(&client, &pod, &node).await;
                let _ = tx.send(BindResult { uid, pod, ok });
            });
        }
        Outcome::Unschedulable(reasons) => {
            state.queue.unschedulable(uid, Instant::now());
            let message = plugins::unschedulable_message(state.nodes.len(), &reasons);
            if let Some(plan) = preemption::plan(state, uid, &info, &pod, &reasons) {
                state
                    .nominated
                    .insert(uid.to_string(), (plan.node.clone(), Arc::new(info.clone())));
                preemption::execute(client, &pod, plan).await;
            }
            if state.posted.get(uid) != Some(&message) {
                state.posted.insert(uid.to_string(), message.clone());
                let client = client.clone();
                tokio::spawn(async move { unschedulable(&client, &pod, &message).await });
            }
        }
    }
}

/// Writes `node` into each claim's [`SELECTED_NODE`] annotation.
async fn select_node(client: &Client, ns: &str, claims: &[String], node: &str) {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let patch = json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
    for claim in claims {
        match api
            .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(claim = %format!("{ns}/{claim}"), node, "scheduler: node selected for a WaitForFirstConsumer claim")
            }
            Err(e) => {
                warn!(claim = %format!("{ns}/{claim}"), node, "scheduler: selecting the node of a claim: {e}")
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
            debug!(pod = %format!("{ns}/{name}"), node, "scheduled");
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
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
        .await
    {
        debug!(pod = %format!("{ns}/{name}"), "posting Unschedulable: {e}");
    }
    info!(pod = %format!("{ns}/{name}"), "{message}");
    event(client, pod, "Warning", "FailedScheduling", message).await;
}

/// Records a core/v1 Event about the pod from the scheduler.
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

#[cfg(test)]
mod tests;
