//! Kubernetes' defaulting (`pkg/apis/*/v1/defaults.go` and the `+default`
//! markers of `k8s.io/api`), applied to objects in their JSON form, plus
//! the create-time fill-ins that Kubernetes leaves to admission plugins and
//! registry strategies (service account, priority, default tolerations,
//! initial status, namespace finalizer, Job selectors).
//!
//! Defaulting works on `serde_json::Value` so that nothing the typed model
//! does not know is lost, and so that a value of the wrong type is left for
//! validation to report. Like Go's defaulters, an empty string or a zero
//! number in a non-pointer field counts as unset.

mod network;
mod pod;
mod workloads;

use serde_json::{Map, Value, json};

use crate::Kind;

type Object = Map<String, Value>;

/// Fills in the fields Kubernetes defaults for `kind`. Idempotent and safe
/// on every create and update; kinds without defaults are left as they are.
pub fn apply_defaults(kind: &Kind, obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    match (kind.group, kind.kind) {
        ("", "Pod") => pod::default_pod(root),
        ("", "Service") => network::default_service(root),
        ("", "Endpoints") => network::default_endpoints(root),
        ("", "Namespace") => default_namespace(root),
        ("", "Secret") => default_secret(root),
        ("", "PersistentVolumeClaim") => default_pvc(root),
        ("", "PersistentVolume") => default_pv(root),
        ("", "Node") => default_node(root),
        ("", "LimitRange") => default_limit_range(root),
        ("apps", "Deployment") => workloads::default_deployment(root),
        ("apps", "ReplicaSet") => workloads::default_replica_set(root),
        ("apps", "StatefulSet") => workloads::default_stateful_set(root),
        ("apps", "DaemonSet") => workloads::default_daemon_set(root),
        ("batch", "Job") => workloads::default_job(root),
        ("batch", "CronJob") => workloads::default_cron_job(root),
        ("discovery.k8s.io", "EndpointSlice") => network::default_endpoint_slice(root),
        ("networking.k8s.io", "NetworkPolicy") => network::default_network_policy(root),
        ("networking.k8s.io", "IngressClass") => network::default_ingress_class(root),
        ("autoscaling", "HorizontalPodAutoscaler") => default_hpa(root),
        ("storage.k8s.io", "StorageClass") => {
            default_str(root, "reclaimPolicy", "Delete");
            default_str(root, "volumeBindingMode", "Immediate");
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            default_str(root, "preemptionPolicy", "PreemptLowerPriority")
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            default_binding(root)
        }
        _ => {}
    }
}

/// What Kubernetes fills in once, when an object is created, outside its
/// defaulters: the Pod's service account, priority, not-ready/unreachable
/// tolerations and initial status (admission plugins ServiceAccount,
/// Priority and DefaultTolerationSeconds; the pod strategy), a Namespace's
/// `kubernetes` finalizer and Active phase, and a Job's generated selector
/// (which needs `metadata.uid` and `metadata.name`, so call this after
/// assigning them). Call after `apply_defaults`, on create only: on update
/// these would undo deliberate changes (a finalized namespace would get its
/// finalizer back).
pub fn prepare_for_create(kind: &Kind, obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    match (kind.group, kind.kind) {
        ("", "Pod") => pod::prepare_pod(root),
        ("", "Namespace") => {
            if let Some(spec) = object(root, "spec") {
                let finalizers = spec.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(list) = finalizers.as_array_mut()
                    && !list.iter().any(|f| f == "kubernetes")
                {
                    list.push(json!("kubernetes"));
                }
            }
            root.insert("status".into(), json!({"phase": "Active"}));
        }
        ("batch", "Job") => workloads::generate_job_selector(root),
        _ => {}
    }
}

/// The object at `key`, created when absent or null; `None` when the field
/// holds something else, which validation will report.
fn object<'a>(map: &'a mut Object, key: &str) -> Option<&'a mut Object> {
    let slot = map.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

/// The object at `key` when there is one.
fn existing<'a>(map: &'a mut Object, key: &str) -> Option<&'a mut Object> {
    map.get_mut(key)?.as_object_mut()
}

/// The objects in the list at `key`.
fn items<'a>(map: &'a mut Object, key: &str) -> impl Iterator<Item = &'a mut Object> {
    map.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// Sets `key` when absent or null (a nil pointer in Go).
fn default_value(map: &mut Object, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_string(), value);
    }
}

/// Sets `key` when absent, null or empty (an empty string in Go).
fn default_str(map: &mut Object, key: &str, value: &str) {
    if map
        .get(key)
        .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
    {
        map.insert(key.to_string(), json!(value));
    }
}

/// Sets `key` when absent, null or zero (a zero integer in Go).
fn default_int(map: &mut Object, key: &str, value: i64) {
    if map
        .get(key)
        .is_none_or(|v| v.is_null() || v.as_i64() == Some(0))
    {
        map.insert(key.to_string(), json!(value));
    }
}

fn str_of<'a>(map: &'a Object, key: &str) -> &'a str {
    map.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn default_namespace(root: &mut Object) {
    let name = root
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    // Namespaces created with generateName get the label once named.
    if !name.is_empty()
        && let Some(labels) = object(root, "metadata").and_then(|m| object(m, "labels"))
    {
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
    if let Some(status) = existing(root, "status") {
        default_str(status, "phase", "Active");
    }
}

/// `stringData` is write-only: Kubernetes merges it into `data` (winning
/// over the same key there) while decoding.
fn default_secret(root: &mut Object) {
    use base64::Engine as _;
    default_str(root, "type", "Opaque");
    // Anything but a map of strings is left in place for validation to
    // report, as is a `data` that is not a map.
    let mergeable = matches!(root.get("stringData"), Some(Value::Object(m)) if m.values().all(Value::is_string));
    if !mergeable || object(root, "data").is_none() {
        return;
    }
    let Some(Value::Object(string_data)) = root.remove("stringData") else {
        return;
    };
    if let Some(data) = object(root, "data") {
        for (k, v) in string_data {
            let text = v.as_str().unwrap_or_default();
            data.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
}

fn default_pvc_spec(spec: &mut Object) {
    default_value(spec, "volumeMode", json!("Filesystem"));
}

fn default_pvc(root: &mut Object) {
    if let Some(spec) = object(root, "spec") {
        default_pvc_spec(spec);
    }
    if let Some(status) = object(root, "status") {
        default_str(status, "phase", "Pending");
    }
}

fn default_pv(root: &mut Object) {
    if let Some(spec) = object(root, "spec") {
        default_str(spec, "persistentVolumeReclaimPolicy", "Retain");
        default_value(spec, "volumeMode", json!("Filesystem"));
        if let Some(host_path) = existing(spec, "hostPath") {
            default_value(host_path, "type", json!(""));
        }
    }
    if let Some(status) = object(root, "status") {
        default_str(status, "phase", "Pending");
    }
}

fn default_node(root: &mut Object) {
    let Some(status) = existing(root, "status") else {
        return;
    };
    if status.get("allocatable").is_none_or(Value::is_null)
        && let Some(capacity) = status.get("capacity").filter(|c| c.is_object()).cloned()
    {
        status.insert("allocatable".into(), capacity);
    }
}

/// Container limits default from max, default requests from the default
/// limit, then from min.
fn default_limit_range(root: &mut Object) {
    let Some(spec) = existing(root, "spec") else {
        return;
    };
    for item in items(spec, "limits") {
        if str_of(item, "type") != "Container" {
            continue;
        }
        let max = item
            .get("max")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let min = item
            .get("min")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if let Some(default) = object(item, "default") {
            for (k, v) in max {
                default.entry(k).or_insert(v);
            }
        }
        let default = item
            .get("default")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if let Some(request) = object(item, "defaultRequest") {
            for (k, v) in default.into_iter().chain(min) {
                request.entry(k).or_insert(v);
            }
        }
    }
}

/// HPA defaults: one replica at least, 80% CPU when no metric is named, and
/// the full scaling behavior once any of it is given.
fn default_hpa(root: &mut Object) {
    let Some(spec) = object(root, "spec") else {
        return;
    };
    default_value(spec, "minReplicas", json!(1));
    if spec
        .get("metrics")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]),
        );
    }
    let Some(behavior) = existing(spec, "behavior") else {
        return;
    };
    let rules = [
        (
            "scaleUp",
            0,
            json!([{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]),
        ),
        (
            "scaleDown",
            300,
            json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
        ),
    ];
    for (key, window, policies) in rules {
        if let Some(r) = object(behavior, key) {
            default_value(r, "stabilizationWindowSeconds", json!(window));
            default_value(r, "selectPolicy", json!("Max"));
            default_value(r, "policies", policies);
        }
    }
}

/// RBAC bindings name the RBAC group for roles, users and groups, and the
/// core group for service accounts.
fn default_binding(root: &mut Object) {
    if let Some(role_ref) = existing(root, "roleRef") {
        default_str(role_ref, "apiGroup", "rbac.authorization.k8s.io");
    }
    for subject in items(root, "subjects") {
        if subject
            .get("apiGroup")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty()
        {
            // A service account's group is "", which Kubernetes omits.
            if matches!(str_of(subject, "kind"), "User" | "Group") {
                subject.insert("apiGroup".into(), json!("rbac.authorization.k8s.io"));
            }
        }
    }
}

#[cfg(test)]
mod tests;
