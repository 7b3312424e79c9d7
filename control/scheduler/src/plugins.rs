//! The scheduling framework's data and plugins: what a node offers
//! ([`NodeInfo`]), what a pod asks for ([`PodInfo`]), filters that rule a
//! node out with Kubernetes' reason strings, and the least-allocated score.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};

/// A node's free room and the properties filters look at.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    /// The Node's name.
    pub name: String,
    /// Labels (nodeSelector, node affinity).
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
    /// CPU requested by the pods bound here.
    pub used_cpu_milli: u64,
    /// Memory requested by the pods bound here.
    pub used_memory: u64,
    /// Pods bound here.
    pub used_pods: u64,
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
        if !ready {
            taints.push(Taint {
                key: "node.kubernetes.io/not-ready".into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            });
        }
        if spec.unschedulable == Some(true) {
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
            used_cpu_milli: 0,
            used_memory: 0,
            used_pods: 0,
        }
    }
}

/// What a pod asks of a node.
#[derive(Clone, Debug, Default)]
pub struct PodInfo {
    /// `namespace/name`.
    pub key: String,
    /// CPU requested, millicores.
    pub cpu_milli: u64,
    /// Memory requested, bytes.
    pub memory: u64,
    /// `spec.nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity terms (any one must match).
    pub affinity_terms: Vec<NodeSelectorTerm>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
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
                    .unwrap_or(0)
            };
        let sum = |key: &str, f: fn(&str) -> Option<u64>| -> u64 {
            spec.containers.iter().map(|c| request(c, key, f)).sum()
        };
        let init_max = |key: &str, f: fn(&str) -> Option<u64>| -> u64 {
            spec.init_containers
                .iter()
                .flatten()
                .map(|c| request(c, key, f))
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
        let affinity_terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|s| s.node_selector_terms.clone())
            .unwrap_or_default();
        Self {
            key: format!("{ns}/{name}"),
            cpu_milli: sum("cpu", cpu_milli).max(init_max("cpu", cpu_milli))
                + overhead("cpu", cpu_milli),
            memory: sum("memory", bytes).max(init_max("memory", bytes)) + overhead("memory", bytes),
            node_selector: spec.node_selector.unwrap_or_default(),
            affinity_terms,
            tolerations: spec.tolerations.unwrap_or_default(),
        }
    }
}

/// Why a filter ruled a node out, in Kubernetes' words (the unit the
/// "0/N nodes are available" message counts).
pub type Reason = String;

/// The filters in the order Kubernetes runs them; the first that fails
/// names the reason.
pub fn filter(pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    if let Some(taint) = untolerated(pod, node) {
        let value = taint.value.clone().unwrap_or_default();
        return Err(vec![match taint.key.as_str() {
            "node.kubernetes.io/unschedulable" => "node(s) were unschedulable".to_string(),
            _ => format!("node(s) had untolerated taint {{{}: {value}}}", taint.key),
        }]);
    }
    if !selector_matches(pod, node) {
        return Err(vec![
            "node(s) didn't match Pod's node affinity/selector".into(),
        ]);
    }
    let mut insufficient = Vec::new();
    if node.used_pods + 1 > node.pods {
        insufficient.push("Too many pods".to_string());
    }
    if pod.cpu_milli > 0 && node.used_cpu_milli + pod.cpu_milli > node.cpu_milli {
        insufficient.push("Insufficient cpu".to_string());
    }
    if pod.memory > 0 && node.used_memory + pod.memory > node.memory {
        insufficient.push("Insufficient memory".to_string());
    }
    if insufficient.is_empty() {
        Ok(())
    } else {
        Err(insufficient)
    }
}

/// The first NoSchedule/NoExecute taint no toleration covers.
fn untolerated<'a>(pod: &PodInfo, node: &'a NodeInfo) -> Option<&'a Taint> {
    node.taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !pod.tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// Kubernetes' `Toleration.ToleratesTaint`.
fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
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

fn selector_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let selector_ok = pod
        .node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let affinity_ok = pod.affinity_terms.is_empty()
        || pod.affinity_terms.iter().any(|term| {
            // A term with no expressions matches nothing, as in Kubernetes.
            let exprs = term.match_expressions.as_deref().unwrap_or_default();
            !exprs.is_empty() && exprs.iter().all(|e| requirement(e, &node.labels))
        });
    selector_ok && affinity_ok
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

/// Least-allocated: the mean free fraction of CPU and memory after the
/// pod lands, 0..=100 (Kubernetes' default scoring strategy).
pub fn score(pod: &PodInfo, node: &NodeInfo) -> u64 {
    let free = |used: u64, want: u64, total: u64| -> u64 {
        if total == 0 {
            return 0;
        }
        total.saturating_sub(used + want) * 100 / total
    };
    (free(node.used_cpu_milli, pod.cpu_milli, node.cpu_milli)
        + free(node.used_memory, pod.memory, node.memory))
        / 2
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
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> NodeInfo {
        NodeInfo::from_node(&serde_json::from_value(v).expect("test node"))
    }

    fn ready_node(name: &str, cpu: &str, mem: &str) -> serde_json::Value {
        json!({"metadata": {"name": name, "labels": {"disk": "ssd"}},
               "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"},
                          "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn pod(v: serde_json::Value) -> PodInfo {
        PodInfo::from_pod(&serde_json::from_value(v).expect("test pod"))
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(cpu_milli("100m"), Some(100));
        assert_eq!(cpu_milli("2"), Some(2000));
        assert_eq!(cpu_milli("0.5"), Some(500));
        assert_eq!(bytes("128Mi"), Some(128 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("12Qi"), None);
    }

    #[test]
    fn requests_sum_containers_and_take_the_largest_init_container() {
        let p = pod(
            json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "200m"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1", "memory": "1Mi"}}}]}}),
        );
        assert_eq!((p.cpu_milli, p.memory), (1000, 64 << 20));
    }

    #[test]
    fn filters_name_kubernetes_reasons() {
        let small = node(ready_node("n1", "1", "1Gi"));
        let big = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "2", "memory": "2Gi"}}}]}}));
        assert_eq!(
            filter(&big, &small),
            Err(vec![
                "Insufficient cpu".to_string(),
                "Insufficient memory".to_string()
            ])
        );
        let not_ready =
            node(json!({"metadata": {"name": "n2"}, "status": {"allocatable": {"cpu": "4"}}}));
        assert_eq!(
            filter(&pod(json!({"metadata": {"name": "p"}})), &not_ready),
            Err(vec![
                "node(s) had untolerated taint {node.kubernetes.io/not-ready: }".to_string()
            ])
        );
        let tolerant = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]}}));
        assert_eq!(filter(&tolerant, &not_ready), Ok(()));
        let picky = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [], "nodeSelector": {"disk": "hdd"}}}),
        );
        assert_eq!(
            filter(&picky, &small),
            Err(vec![
                "node(s) didn't match Pod's node affinity/selector".to_string()
            ])
        );
        let affine = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd", "nvme"]}]}]}}}}}),
        );
        assert_eq!(filter(&affine, &small), Ok(()));
    }

    #[test]
    fn the_emptier_node_scores_higher_and_the_message_counts_reasons() {
        let mut busy = node(ready_node("a", "4", "4Gi"));
        busy.used_cpu_milli = 3000;
        busy.used_memory = 3 << 30;
        let idle = node(ready_node("b", "4", "4Gi"));
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]}}));
        assert!(score(&p, &idle) > score(&p, &busy));
        let mut reasons = BTreeMap::new();
        reasons.insert("Insufficient cpu".to_string(), 2);
        reasons.insert("node(s) were unschedulable".to_string(), 1);
        assert_eq!(
            unschedulable_message(3, &reasons),
            "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) were unschedulable."
        );
    }
}
