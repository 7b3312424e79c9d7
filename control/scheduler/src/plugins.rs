//! The scheduling framework's data and plugins: what a node offers
//! ([`NodeInfo`], [`Usage`]), what a pod asks for ([`PodInfo`]), what one
//! scheduling cycle precomputes over the cluster ([`Cycle`]), the filters
//! that rule a node out with Kubernetes' reason strings, and the scores,
//! normalised and weighted as kube-scheduler's default profile does.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::{
    api::core::v1::{
        Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, Taint, Toleration,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};

/// CPU a container without a request counts as when scoring (kube's
/// `DefaultMilliCPURequest`).
const DEFAULT_CPU_MILLI: u64 = 100;
/// Memory a container without a request counts as when scoring (kube's
/// `DefaultMemoryRequest`, 200 MB).
const DEFAULT_MEMORY: u64 = 200 * 1024 * 1024;
/// The highest score a plugin gives a node.
pub const MAX_SCORE: i64 = 100;

/// Score plugin weights of kube-scheduler's default profile.
const WEIGHT_TAINT: i64 = 3;
const WEIGHT_NODE_AFFINITY: i64 = 2;
const WEIGHT_POD_AFFINITY: i64 = 2;
const WEIGHT_SPREAD: i64 = 2;
const WEIGHT_FIT: i64 = 1;
const WEIGHT_BALANCED: i64 = 1;

/// A node's properties filters look at (what the Node object says).
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    /// The Node's name.
    pub name: String,
    /// Labels (nodeSelector, node affinity, topology keys).
    pub labels: BTreeMap<String, String>,
    /// Taints, plus `node.kubernetes.io/not-ready:NoSchedule` while the
    /// node is not Ready and `node.kubernetes.io/unschedulable:NoSchedule`
    /// when cordoned, as Kubernetes' node lifecycle adds them.
    pub taints: Vec<Taint>,
    /// Allocatable CPU in millicores.
    pub cpu_milli: u64,
    /// Allocatable memory in bytes.
    pub memory: u64,
    /// Most pods.
    pub pods: u64,
}

impl NodeInfo {
    /// What the scheduler needs of a Node.
    pub fn from_node(node: &Node) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.clone().unwrap_or_default();
        let mut taints = spec.taints.unwrap_or_default();
        let status = node.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let has = |taints: &[Taint], key: &str| taints.iter().any(|t| t.key == key);
        if !ready && !has(&taints, "node.kubernetes.io/not-ready") {
            taints.push(Taint {
                key: "node.kubernetes.io/not-ready".into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            });
        }
        if spec.unschedulable == Some(true) && !has(&taints, "node.kubernetes.io/unschedulable") {
            taints.push(Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            });
        }
        let alloc = status.allocatable.or(status.capacity).unwrap_or_default();
        let get = |k: &str, f: fn(&str) -> Option<u64>| alloc.get(k).and_then(|q| f(&q.0));
        Self {
            name,
            labels,
            taints,
            cpu_milli: get("cpu", cpu_milli).unwrap_or(0),
            memory: get("memory", bytes).unwrap_or(0),
            pods: get("pods", bytes).unwrap_or(110),
        }
    }
}

/// What the pods bound (or assumed) to a node take of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    /// CPU requested, millicores.
    pub cpu_milli: u64,
    /// Memory requested, bytes.
    pub memory: u64,
    /// Pods.
    pub pods: u64,
    /// CPU counted for scoring (containers without requests count 100m).
    pub nonzero_cpu: u64,
    /// Memory counted for scoring (containers without requests count 200 MB).
    pub nonzero_memory: u64,
    /// Host ports in use.
    pub host_ports: Vec<HostPort>,
}

impl Usage {
    /// Adds a pod's requests.
    pub fn add(&mut self, pod: &PodInfo) {
        self.cpu_milli += pod.cpu_milli;
        self.memory += pod.memory;
        self.pods += 1;
        self.nonzero_cpu += pod.nonzero_cpu;
        self.nonzero_memory += pod.nonzero_memory;
        self.host_ports.extend(pod.host_ports.iter().cloned());
    }

    /// Takes a pod's requests away again.
    pub fn remove(&mut self, pod: &PodInfo) {
        self.cpu_milli = self.cpu_milli.saturating_sub(pod.cpu_milli);
        self.memory = self.memory.saturating_sub(pod.memory);
        self.pods = self.pods.saturating_sub(1);
        self.nonzero_cpu = self.nonzero_cpu.saturating_sub(pod.nonzero_cpu);
        self.nonzero_memory = self.nonzero_memory.saturating_sub(pod.nonzero_memory);
        for port in &pod.host_ports {
            if let Some(i) = self.host_ports.iter().position(|p| p == port) {
                self.host_ports.swap_remove(i);
            }
        }
    }
}

/// A `hostPort` a container asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// `hostIP`; empty or `0.0.0.0` means every address.
    pub ip: String,
    /// The port.
    pub port: i32,
}

impl HostPort {
    fn conflicts(&self, other: &HostPort) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.port == other.port
            && self.protocol == other.protocol
            && (any(&self.ip) || any(&other.ip) || self.ip == other.ip)
    }
}

/// A label selector, converted once from `metav1.LabelSelector`.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    match_labels: BTreeMap<String, String>,
    expressions: Vec<(String, String, Vec<String>)>,
    /// A selector that could not be read selects nothing.
    invalid: bool,
}

impl Selector {
    /// From the API's LabelSelector; `None` selects nothing (as Kubernetes
    /// treats a nil selector in affinity terms).
    pub fn new(s: Option<&LabelSelector>) -> Self {
        let Some(s) = s else {
            return Self {
                invalid: true,
                ..Self::default()
            };
        };
        Self {
            match_labels: s.match_labels.clone().unwrap_or_default(),
            expressions: s
                .match_expressions
                .iter()
                .flatten()
                .map(|e| {
                    (
                        e.key.clone(),
                        e.operator.clone(),
                        e.values.clone().unwrap_or_default(),
                    )
                })
                .collect(),
            invalid: false,
        }
    }

    /// Whether labels match.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.invalid
            && self
                .match_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|(k, op, values)| {
                let have = labels.get(k);
                match op.as_str() {
                    "In" => have.is_some_and(|v| values.contains(v)),
                    "NotIn" => have.is_none_or(|v| !values.contains(v)),
                    "Exists" => have.is_some(),
                    "DoesNotExist" => have.is_none(),
                    _ => false,
                }
            })
    }
}

/// A pod (anti-)affinity term: pods matching `selector` in `namespaces`,
/// counted per value of `topology_key`.
#[derive(Clone, Debug)]
pub struct AffinityTerm {
    /// Which pods the term is about.
    pub selector: Selector,
    /// The namespaces searched (the pod's own when the term names none).
    pub namespaces: Vec<String>,
    /// `namespaceSelector: {}`: every namespace.
    pub all_namespaces: bool,
    /// The node label that defines a domain.
    pub topology_key: String,
}

impl AffinityTerm {
    fn new(term: &PodAffinityTerm, own_ns: &str) -> Self {
        let mut namespaces = term.namespaces.clone().unwrap_or_default();
        // Only the empty namespaceSelector ({}: every namespace) is read;
        // one with labels would need the Namespaces' labels, which the
        // scheduler does not watch, and so selects none beyond `namespaces`.
        let all_namespaces = term.namespace_selector.as_ref().is_some_and(|s| {
            s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
        });
        if namespaces.is_empty() && term.namespace_selector.is_none() {
            namespaces.push(own_ns.to_string());
        }
        Self {
            selector: Selector::new(term.label_selector.as_ref()),
            namespaces,
            all_namespaces,
            topology_key: term.topology_key.clone(),
        }
    }

    /// Whether an existing pod is one the term is about.
    pub fn matches(&self, pod: &PodInfo) -> bool {
        (self.all_namespaces || self.namespaces.contains(&pod.namespace))
            && self.selector.matches(&pod.labels)
    }
}

/// A topology spread constraint.
#[derive(Clone, Debug)]
pub struct SpreadConstraint {
    /// `maxSkew`.
    pub max_skew: i64,
    /// `topologyKey`.
    pub topology_key: String,
    /// `whenUnsatisfiable: DoNotSchedule` (a filter) rather than
    /// `ScheduleAnyway` (a score).
    pub hard: bool,
    /// Pods counted (in the pod's namespace).
    pub selector: Selector,
    /// `minDomains`.
    pub min_domains: Option<i64>,
}

/// What a pod asks of a node.
#[derive(Clone, Debug, Default)]
pub struct PodInfo {
    /// `namespace/name`.
    pub key: String,
    /// Namespace.
    pub namespace: String,
    /// Labels (what other pods' affinity terms match).
    pub labels: BTreeMap<String, String>,
    /// `spec.priority` (set from the PriorityClass by admission).
    pub priority: i32,
    /// `spec.schedulerName`.
    pub scheduler_name: String,
    /// CPU requested, millicores.
    pub cpu_milli: u64,
    /// Memory requested, bytes.
    pub memory: u64,
    /// CPU counted for scoring.
    pub nonzero_cpu: u64,
    /// Memory counted for scoring.
    pub nonzero_memory: u64,
    /// `spec.nodeName` asked for before scheduling.
    pub node_name: Option<String>,
    /// `spec.nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity terms (any one must match).
    pub affinity_terms: Vec<NodeSelectorTerm>,
    /// Preferred node affinity terms with their weights.
    pub preferred_node_terms: Vec<(i64, NodeSelectorTerm)>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// Host ports of its containers.
    pub host_ports: Vec<HostPort>,
    /// Required pod affinity.
    pub pod_affinity: Vec<AffinityTerm>,
    /// Required pod anti-affinity.
    pub pod_anti_affinity: Vec<AffinityTerm>,
    /// Preferred pod affinity with weights.
    pub preferred_pod_affinity: Vec<(i64, AffinityTerm)>,
    /// Preferred pod anti-affinity with weights.
    pub preferred_pod_anti_affinity: Vec<(i64, AffinityTerm)>,
    /// Topology spread constraints.
    pub spread: Vec<SpreadConstraint>,
    /// PersistentVolumeClaims its volumes name.
    pub claims: Vec<String>,
}

impl PodInfo {
    /// What the scheduler needs of a Pod: requests are the larger of the
    /// app containers' sum and the largest init container (limits stand in
    /// for missing requests, as defaulting does), plus the pod overhead.
    pub fn from_pod(pod: &Pod) -> Self {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let request =
            |c: &k8s_openapi::api::core::v1::Container, key: &str, f: fn(&str) -> Option<u64>| {
                let r = c.resources.as_ref();
                r.and_then(|r| r.requests.as_ref()?.get(key))
                    .or_else(|| r.and_then(|r| r.limits.as_ref()?.get(key)))
                    .and_then(|q| f(&q.0))
            };
        let sum = |key: &str, f: fn(&str) -> Option<u64>| -> u64 {
            spec.containers
                .iter()
                .map(|c| request(c, key, f).unwrap_or(0))
                .sum()
        };
        let nonzero = |key: &str, f: fn(&str) -> Option<u64>, default: u64| -> u64 {
            spec.containers
                .iter()
                .map(|c| request(c, key, f).filter(|v| *v > 0).unwrap_or(default))
                .sum()
        };
        let init_max = |key: &str, f: fn(&str) -> Option<u64>| -> u64 {
            spec.init_containers
                .iter()
                .flatten()
                .map(|c| request(c, key, f).unwrap_or(0))
                .max()
                .unwrap_or(0)
        };
        let overhead = |key: &str, f: fn(&str) -> Option<u64>| -> u64 {
            spec.overhead
                .as_ref()
                .and_then(|o| o.get(key))
                .and_then(|q| f(&q.0))
                .unwrap_or(0)
        };
        let affinity = spec.affinity.as_ref();
        let node_affinity = affinity.and_then(|a| a.node_affinity.as_ref());
        let affinity_terms = node_affinity
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|s| s.node_selector_terms.clone())
            .unwrap_or_default();
        let preferred_node_terms = node_affinity
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(|p| (i64::from(p.weight), p.preference.clone()))
            .collect();
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            terms
                .into_iter()
                .flatten()
                .map(|t| AffinityTerm::new(t, &ns))
                .collect()
        };
        let preferred =
            |terms: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
                terms
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        (
                            i64::from(t.weight),
                            AffinityTerm::new(&t.pod_affinity_term, &ns),
                        )
                    })
                    .collect::<Vec<_>>()
            };
        let claims = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
            .collect();
        let host_ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let port = p.host_port.filter(|p| *p > 0)?;
                Some(HostPort {
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    ip: p.host_ip.clone().unwrap_or_default(),
                    port,
                })
            })
            .collect();
        let spread = spec
            .topology_spread_constraints
            .iter()
            .flatten()
            .map(|c| SpreadConstraint {
                max_skew: i64::from(c.max_skew.max(1)),
                topology_key: c.topology_key.clone(),
                hard: c.when_unsatisfiable != "ScheduleAnyway",
                selector: Selector::new(c.label_selector.as_ref()),
                min_domains: c.min_domains.map(i64::from),
            })
            .collect();
        Self {
            key: format!("{ns}/{name}"),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            priority: spec.priority.unwrap_or(0),
            scheduler_name: spec
                .scheduler_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| crate::SCHEDULER_NAME.into()),
            cpu_milli: sum("cpu", cpu_milli).max(init_max("cpu", cpu_milli))
                + overhead("cpu", cpu_milli),
            memory: sum("memory", bytes).max(init_max("memory", bytes)) + overhead("memory", bytes),
            nonzero_cpu: nonzero("cpu", cpu_milli, DEFAULT_CPU_MILLI),
            nonzero_memory: nonzero("memory", bytes, DEFAULT_MEMORY),
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            affinity_terms,
            preferred_node_terms,
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            host_ports,
            pod_affinity: required(pa.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            pod_anti_affinity: required(paa.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_pod_affinity: preferred(pa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_pod_anti_affinity: preferred(paa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            spread,
            claims,
            namespace: ns,
        }
    }

    /// Whether scheduling this pod needs the other pods' placement
    /// (inter-pod affinity or topology spread).
    pub fn needs_cluster_view(&self) -> bool {
        !self.pod_affinity.is_empty()
            || !self.pod_anti_affinity.is_empty()
            || !self.preferred_pod_affinity.is_empty()
            || !self.preferred_pod_anti_affinity.is_empty()
            || !self.spread.is_empty()
    }
}

/// Per-value pod counts for one topology key.
type Domains = HashMap<String, i64>;

/// One spread constraint's counts over the eligible nodes.
#[derive(Clone, Debug, Default)]
struct SpreadCounts {
    counts: Domains,
    /// The smallest count over the eligible domains.
    min: i64,
    /// Whether the incoming pod matches the constraint's own selector.
    self_match: bool,
}

/// What one scheduling cycle precomputes over the cluster for a pod
/// (kube-scheduler's PreFilter/PreScore state), so that each node is then
/// checked without looking at every pod again.
#[derive(Clone, Debug, Default)]
pub struct Cycle {
    /// (topologyKey, value) domains existing pods' required anti-affinity
    /// keeps this pod out of.
    existing_anti: HashSet<(String, String)>,
    /// Per required affinity term: matching pods per domain.
    affinity: Vec<Domains>,
    /// No pod anywhere matches the affinity terms but the pod matches
    /// them itself: the first of a group may go anywhere (as in Kubernetes).
    affinity_self_ok: bool,
    /// Per required anti-affinity term: matching pods per domain.
    anti: Vec<Domains>,
    /// Per spread constraint (in the pod's order).
    spread: Vec<SpreadCounts>,
    /// Preferred inter-pod affinity: score per (topologyKey → value).
    preferred: HashMap<String, Domains>,
    /// Per bound PersistentVolume of the pod: its required node affinity
    /// terms (a local PV is reachable from its node only).
    pub volume_terms: Vec<Vec<NodeSelectorTerm>>,
    /// A claim that rules out every node (missing, or not bound yet).
    pub volume_error: Option<Reason>,
}

impl Cycle {
    /// Counts what the pod's terms need over `pods` (each with the labels
    /// of the node it is on); `nodes` are every node, for spread domains.
    pub fn new<'a>(
        pod: &PodInfo,
        nodes: impl Iterator<Item = &'a NodeInfo> + Clone,
        pods: impl Iterator<Item = (&'a BTreeMap<String, String>, &'a PodInfo)>,
    ) -> Self {
        let mut cycle = Cycle {
            affinity: vec![Domains::new(); pod.pod_affinity.len()],
            anti: vec![Domains::new(); pod.pod_anti_affinity.len()],
            ..Cycle::default()
        };
        // Spread counts only nodes the pod could go to by node affinity and
        // that carry every constraint's key (nodeAffinityPolicy: Honor).
        let eligible: HashMap<&str, bool> = if pod.spread.is_empty() {
            HashMap::new()
        } else {
            nodes
                .clone()
                .map(|n| {
                    let ok = selector_matches(pod, n)
                        && pod
                            .spread
                            .iter()
                            .all(|c| n.labels.contains_key(&c.topology_key));
                    (n.name.as_str(), ok)
                })
                .collect()
        };
        cycle.spread = pod
            .spread
            .iter()
            .map(|c| {
                let mut counts = Domains::new();
                for n in nodes.clone() {
                    if eligible.get(n.name.as_str()) == Some(&true)
                        && let Some(v) = n.labels.get(&c.topology_key)
                    {
                        counts.entry(v.clone()).or_insert(0);
                    }
                }
                SpreadCounts {
                    counts,
                    min: 0,
                    self_match: c.selector.matches(&pod.labels),
                }
            })
            .collect();
        let mut any_affinity_match = false;
        for (node_labels, other) in pods {
            for t in &other.pod_anti_affinity {
                if t.matches(pod)
                    && let Some(v) = node_labels.get(&t.topology_key)
                {
                    cycle
                        .existing_anti
                        .insert((t.topology_key.clone(), v.clone()));
                }
            }
            for (i, t) in pod.pod_affinity.iter().enumerate() {
                if t.matches(other) {
                    any_affinity_match = true;
                    if let Some(v) = node_labels.get(&t.topology_key) {
                        *cycle.affinity[i].entry(v.clone()).or_default() += 1;
                    }
                }
            }
            for (i, t) in pod.pod_anti_affinity.iter().enumerate() {
                if t.matches(other)
                    && let Some(v) = node_labels.get(&t.topology_key)
                {
                    *cycle.anti[i].entry(v.clone()).or_default() += 1;
                }
            }
            let weighted = pod
                .preferred_pod_affinity
                .iter()
                .map(|(w, t)| (*w, t))
                .chain(
                    pod.preferred_pod_anti_affinity
                        .iter()
                        .map(|(w, t)| (-*w, t)),
                );
            for (w, t) in weighted {
                if t.matches(other)
                    && let Some(v) = node_labels.get(&t.topology_key)
                {
                    *cycle
                        .preferred
                        .entry(t.topology_key.clone())
                        .or_default()
                        .entry(v.clone())
                        .or_default() += w;
                }
            }
            for (i, c) in pod.spread.iter().enumerate() {
                if other.namespace == pod.namespace
                    && c.selector.matches(&other.labels)
                    && let Some(v) = node_labels.get(&c.topology_key)
                    && let Some(n) = cycle.spread[i].counts.get_mut(v)
                {
                    *n += 1;
                }
            }
        }
        cycle.affinity_self_ok = !pod.pod_affinity.is_empty()
            && !any_affinity_match
            && pod.pod_affinity.iter().all(|t| t.matches(pod));
        for (s, c) in cycle.spread.iter_mut().zip(&pod.spread) {
            s.min = s.counts.values().copied().min().unwrap_or(0);
            if c.min_domains.is_some_and(|m| (s.counts.len() as i64) < m) {
                s.min = 0;
            }
        }
        cycle
    }
}

/// Why a filter ruled a node out, in Kubernetes' words (the unit the
/// "0/N nodes are available" message counts).
pub type Reason = String;

/// Reasons preemption cannot cure (kube's UnschedulableAndUnresolvable).
pub fn resolvable(reason: &str) -> bool {
    reason.starts_with("Insufficient ")
        || reason == "Too many pods"
        || reason == NO_FREE_PORTS
        || reason == ANTI_AFFINITY
        || reason == EXISTING_ANTI_AFFINITY
        || reason == SPREAD
}

const NO_FREE_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
const AFFINITY: &str = "node(s) didn't match pod affinity rules";
const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";
const SPREAD: &str = "node(s) didn't match pod topology spread constraints";
const VOLUME_CONFLICT: &str = "node(s) had volume node affinity conflict";
const SPREAD_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

/// The filters in the order Kubernetes runs them; the first that fails
/// names the reason(s).
pub fn filter(
    pod: &PodInfo,
    node: &NodeInfo,
    used: &Usage,
    cycle: &Cycle,
) -> Result<(), Vec<Reason>> {
    if let Some(taint) = untolerated(pod, node) {
        let value = taint.value.clone().unwrap_or_default();
        return Err(vec![match taint.key.as_str() {
            "node.kubernetes.io/unschedulable" => "node(s) were unschedulable".to_string(),
            _ => format!("node(s) had untolerated taint {{{}: {value}}}", taint.key),
        }]);
    }
    if pod.node_name.as_ref().is_some_and(|n| *n != node.name) {
        return Err(vec!["node(s) didn't match the requested node name".into()]);
    }
    if !selector_matches(pod, node) {
        return Err(vec![
            "node(s) didn't match Pod's node affinity/selector".into(),
        ]);
    }
    if pod
        .host_ports
        .iter()
        .any(|p| used.host_ports.iter().any(|u| u.conflicts(p)))
    {
        return Err(vec![NO_FREE_PORTS.into()]);
    }
    let mut insufficient = Vec::new();
    if used.pods + 1 > node.pods {
        insufficient.push("Too many pods".to_string());
    }
    if pod.cpu_milli > 0 && used.cpu_milli + pod.cpu_milli > node.cpu_milli {
        insufficient.push("Insufficient cpu".to_string());
    }
    if pod.memory > 0 && used.memory + pod.memory > node.memory {
        insufficient.push("Insufficient memory".to_string());
    }
    if !insufficient.is_empty() {
        return Err(insufficient);
    }
    volume_filter(node, cycle)?;
    spread_filter(pod, node, cycle)?;
    pod_affinity_filter(pod, node, cycle)
}

/// VolumeBinding for bound claims: the node must satisfy every bound
/// PersistentVolume's node affinity.
fn volume_filter(node: &NodeInfo, cycle: &Cycle) -> Result<(), Vec<Reason>> {
    if let Some(e) = &cycle.volume_error {
        return Err(vec![e.clone()]);
    }
    let conflict = cycle
        .volume_terms
        .iter()
        .any(|terms| !terms.iter().any(|t| term_matches(t, node)));
    if conflict {
        return Err(vec![VOLUME_CONFLICT.into()]);
    }
    Ok(())
}

fn spread_filter(pod: &PodInfo, node: &NodeInfo, cycle: &Cycle) -> Result<(), Vec<Reason>> {
    for (c, s) in pod.spread.iter().zip(&cycle.spread) {
        if !c.hard {
            continue;
        }
        let Some(v) = node.labels.get(&c.topology_key) else {
            return Err(vec![SPREAD_LABEL.into()]);
        };
        let count = s.counts.get(v).copied().unwrap_or(0);
        if count + i64::from(s.self_match) - s.min > c.max_skew {
            return Err(vec![SPREAD.into()]);
        }
    }
    Ok(())
}

fn pod_affinity_filter(pod: &PodInfo, node: &NodeInfo, cycle: &Cycle) -> Result<(), Vec<Reason>> {
    if !cycle.affinity_self_ok {
        let ok = pod.pod_affinity.iter().zip(&cycle.affinity).all(|(t, d)| {
            node.labels
                .get(&t.topology_key)
                .is_some_and(|v| d.get(v).copied().unwrap_or(0) > 0)
        });
        if !ok {
            return Err(vec![AFFINITY.into()]);
        }
    } else if pod
        .pod_affinity
        .iter()
        .any(|t| !node.labels.contains_key(&t.topology_key))
    {
        return Err(vec![AFFINITY.into()]);
    }
    let blocked = pod.pod_anti_affinity.iter().zip(&cycle.anti).any(|(t, d)| {
        node.labels
            .get(&t.topology_key)
            .is_some_and(|v| d.get(v).copied().unwrap_or(0) > 0)
    });
    if blocked {
        return Err(vec![ANTI_AFFINITY.into()]);
    }
    // Checked last, as kube-scheduler's InterPodAffinity does: a set of
    // mutually anti-affine replicas reads "didn't match pod anti-affinity".
    if cycle
        .existing_anti
        .iter()
        .any(|(k, v)| node.labels.get(k) == Some(v))
    {
        return Err(vec![EXISTING_ANTI_AFFINITY.into()]);
    }
    Ok(())
}

/// The first NoSchedule/NoExecute taint no toleration covers.
pub fn untolerated<'a>(pod: &PodInfo, node: &'a NodeInfo) -> Option<&'a Taint> {
    node.taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !pod.tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// Kubernetes' `Toleration.ToleratesTaint`.
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = tol.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = tol.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty()
                && tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// The pod's nodeSelector and required node affinity accept the node.
pub fn selector_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let selector_ok = pod
        .node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let affinity_ok = pod.affinity_terms.is_empty()
        || pod
            .affinity_terms
            .iter()
            .any(|term| term_matches(term, node));
    selector_ok && affinity_ok
}

fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    // A term with no requirements matches nothing, as in Kubernetes.
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    // `metadata.name` is the one field Kubernetes selects nodes by (a
    // DaemonSet pins each pod to its node with it).
    let node_fields = BTreeMap::from([("metadata.name".to_string(), node.name.clone())]);
    (!exprs.is_empty() || !fields.is_empty())
        && exprs.iter().all(|e| requirement(e, &node.labels))
        && fields.iter().all(|e| requirement(e, &node_fields))
}

fn requirement(e: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = e.values.as_deref().unwrap_or_default();
    let have = labels.get(&e.key);
    match e.operator.as_str() {
        "In" => have.is_some_and(|v| values.contains(v)),
        "NotIn" => have.is_none_or(|v| !values.contains(v)),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(want)) = (
                have.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|v| v.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if e.operator == "Gt" {
                have > want
            } else {
                have < want
            }
        }
        _ => false,
    }
}

/// How the resource-fit score values room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Emptier nodes first (spreads load; kube's default).
    LeastAllocated,
    /// Fuller nodes first (bin packing).
    MostAllocated,
}

/// One node's raw scores before normalisation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawScore {
    /// Resource fit, already 0..=100.
    pub fit: i64,
    /// Balanced allocation, already 0..=100.
    pub balanced: i64,
    /// Sum of the weights of matching preferred node affinity terms.
    pub node_affinity: i64,
    /// Untolerated PreferNoSchedule taints.
    pub taints: i64,
    /// Preferred inter-pod (anti-)affinity sum.
    pub pod_affinity: i64,
    /// Spread: weighted pods in this node's domains (lower is better);
    /// `None` when the node lacks a constraint's key.
    pub spread: Option<f64>,
}

/// The scores of one feasible node.
pub fn score(
    pod: &PodInfo,
    node: &NodeInfo,
    used: &Usage,
    cycle: &Cycle,
    strategy: Strategy,
) -> RawScore {
    let cpu = (used.nonzero_cpu + pod.nonzero_cpu, node.cpu_milli);
    let mem = (used.nonzero_memory + pod.nonzero_memory, node.memory);
    let part = |(req, total): (u64, u64)| -> i64 {
        if total == 0 || req > total {
            return 0;
        }
        let (req, total) = (req as i64, total as i64);
        match strategy {
            Strategy::LeastAllocated => (total - req) * MAX_SCORE / total,
            Strategy::MostAllocated => req * MAX_SCORE / total,
        }
    };
    let fit = (part(cpu) + part(mem)) / 2;
    let fraction = |(req, total): (u64, u64)| -> f64 {
        if total == 0 {
            1.0
        } else {
            (req as f64 / total as f64).min(1.0)
        }
    };
    let std = (fraction(cpu) - fraction(mem)).abs() / 2.0;
    let balanced = ((1.0 - std) * MAX_SCORE as f64) as i64;
    let node_affinity = pod
        .preferred_node_terms
        .iter()
        .filter(|(_, t)| term_matches(t, node))
        .map(|(w, _)| *w)
        .sum();
    let taints = node
        .taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| {
            !pod.tolerations.iter().any(|tol| {
                tol.effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
                    && tolerates(tol, t)
            })
        })
        .count() as i64;
    let pod_affinity = cycle
        .preferred
        .iter()
        .filter_map(|(k, d)| d.get(node.labels.get(k)?))
        .sum();
    let mut spread = Some(0.0);
    for (c, s) in pod.spread.iter().zip(&cycle.spread) {
        if c.hard {
            continue;
        }
        let Some(v) = node.labels.get(&c.topology_key) else {
            spread = None;
            break;
        };
        // kube weighs each constraint by log(domains + 2) and adds
        // maxSkew - 1 so that a larger skew allowance flattens the score.
        let weight = ((s.counts.len() + 2) as f64).ln();
        let count = s.counts.get(v).copied().unwrap_or(0);
        if let Some(total) = spread.as_mut() {
            *total += (count + c.max_skew - 1) as f64 * weight;
        }
    }
    RawScore {
        fit,
        balanced,
        node_affinity,
        taints,
        pod_affinity,
        spread,
    }
}

/// Normalises each plugin's raw scores over the feasible nodes and sums
/// them with the default profile's weights.
pub fn total_scores(raw: &[RawScore]) -> Vec<i64> {
    let max_na = raw.iter().map(|r| r.node_affinity).max().unwrap_or(0);
    let max_taints = raw.iter().map(|r| r.taints).max().unwrap_or(0);
    let (min_pa, max_pa) = raw.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
        (lo.min(r.pod_affinity), hi.max(r.pod_affinity))
    });
    let spreads = raw.iter().filter_map(|r| r.spread);
    let (min_sp, max_sp) = spreads.fold((f64::MAX, 0.0f64), |(lo, hi), s| (lo.min(s), hi.max(s)));
    raw.iter()
        .map(|r| {
            let na = if max_na > 0 {
                r.node_affinity * MAX_SCORE / max_na
            } else {
                0
            };
            let taints = if max_taints > 0 {
                MAX_SCORE - r.taints * MAX_SCORE / max_taints
            } else {
                MAX_SCORE
            };
            let pa = if max_pa > min_pa {
                (r.pod_affinity - min_pa) * MAX_SCORE / (max_pa - min_pa)
            } else {
                0
            };
            let spread = match r.spread {
                None => 0,
                Some(_) if max_sp <= 0.0 => MAX_SCORE,
                Some(s) => (MAX_SCORE as f64 * (max_sp + min_sp - s) / max_sp) as i64,
            };
            r.fit * WEIGHT_FIT
                + r.balanced * WEIGHT_BALANCED
                + na * WEIGHT_NODE_AFFINITY
                + taints * WEIGHT_TAINT
                + pa * WEIGHT_POD_AFFINITY
                + spread * WEIGHT_SPREAD
        })
        .collect()
}

/// Kubernetes' message for a pod no node takes:
/// `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {a: b}.`
pub fn unschedulable_message(total: usize, reasons: &BTreeMap<Reason, usize>) -> String {
    let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    if parts.is_empty() {
        return format!("0/{total} nodes are available.");
    }
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

/// A Kubernetes quantity in millis (CPU): `100m` → 100, `2` → 2000.
pub fn cpu_milli(q: &str) -> Option<u64> {
    quantity(q).map(|v| (v * 1000.0).ceil() as u64)
}

/// A Kubernetes quantity as a whole number (bytes, pods): `128Mi` → 134217728.
pub fn bytes(q: &str) -> Option<u64> {
    quantity(q).map(|v| v.ceil() as u64)
}

fn quantity(q: &str) -> Option<f64> {
    shoal_api::parse_quantity(q).filter(|v| v.is_finite() && *v >= 0.0)
}

#[cfg(test)]
mod tests;
