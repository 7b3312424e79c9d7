//! Pods and pod specs: `SetDefaults_Pod`, `SetDefaults_PodSpec`, the
//! container, probe and volume defaulters, and the Pod's create-time
//! admission fill-ins.

use serde_json::{Value, json};

use super::{Object, default_int, default_str, default_value, existing, items, object, str_of};
use crate::validation::quantity;

/// What `kubectl get pod` shows for a pod that asked for no class.
const DEFAULT_SCHEDULER: &str = "default-scheduler";
const TERMINATION_GRACE_SECONDS: i64 = 30;
/// `0644`: files projected from ConfigMaps, Secrets and the downward API.
const DEFAULT_FILE_MODE: i64 = 0o644;
/// Bound service account tokens live an hour unless asked otherwise.
const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// DefaultTolerationSeconds: how long a pod stays on a node that stopped
/// reporting before it is evicted.
const NOT_READY_TOLERATION_SECONDS: i64 = 300;
/// The built-in priority classes resolve without a lookup.
const SYSTEM_PRIORITIES: &[(&str, i64)] = &[
    ("system-node-critical", 2_000_001_000),
    ("system-cluster-critical", 2_000_000_000),
];

pub(super) fn default_pod(root: &mut Object) {
    let Some(spec) = object(root, "spec") else {
        return;
    };
    default_pod_spec(spec, true);
    for key in ["containers", "initContainers"] {
        for c in items(spec, key) {
            requests_from_limits(c);
        }
    }
    default_value(spec, "enableServiceLinks", json!(true));
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        for key in ["containers", "initContainers"] {
            for c in items(spec, key) {
                for port in items(c, "ports") {
                    if let Some(cp) = port.get("containerPort").cloned() {
                        default_int(port, "hostPort", cp.as_i64().unwrap_or_default());
                    }
                }
            }
        }
    }
}

/// Requests default to limits for each resource given only a limit; only
/// for Pods, so templates keep what their authors wrote.
fn requests_from_limits(c: &mut Object) {
    let Some(resources) = existing(c, "resources") else {
        return;
    };
    let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    if let Some(requests) = object(resources, "requests") {
        for (k, v) in limits {
            requests.entry(k).or_insert(v);
        }
    }
}

/// `SetDefaults_PodSpec` and the defaulters of everything inside it, for
/// Pods and templates alike. `restart` is false for Job templates, where
/// Kubernetes' `Always` would only be rejected by validation.
pub(super) fn default_pod_spec(spec: &mut Object, restart: bool) {
    default_str(spec, "dnsPolicy", "ClusterFirst");
    if restart {
        default_str(spec, "restartPolicy", "Always");
    }
    default_value(spec, "securityContext", json!({}));
    default_value(
        spec,
        "terminationGracePeriodSeconds",
        json!(TERMINATION_GRACE_SECONDS),
    );
    default_str(spec, "schedulerName", DEFAULT_SCHEDULER);
    // The v1 conversion keeps the deprecated serviceAccount in step with
    // serviceAccountName, reading it when only it is given.
    if str_of(spec, "serviceAccountName").is_empty() {
        let legacy = str_of(spec, "serviceAccount").to_string();
        if !legacy.is_empty() {
            spec.insert("serviceAccountName".into(), json!(legacy));
        }
    }
    let account = str_of(spec, "serviceAccountName").to_string();
    if !account.is_empty() {
        spec.insert("serviceAccount".into(), json!(account));
    }
    for vol in items(spec, "volumes") {
        default_volume(vol);
    }
    for key in ["initContainers", "containers", "ephemeralContainers"] {
        for c in items(spec, key) {
            default_container(c);
        }
    }
}

fn default_volume(vol: &mut Object) {
    if !vol.iter().any(|(k, v)| k != "name" && !v.is_null()) {
        vol.insert("emptyDir".into(), json!({}));
    }
    if let Some(host_path) = existing(vol, "hostPath") {
        default_value(host_path, "type", json!(""));
    }
    for key in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(source) = existing(vol, key) {
            default_value(source, "defaultMode", json!(DEFAULT_FILE_MODE));
        }
    }
    if let Some(downward) = existing(vol, "downwardAPI") {
        default_field_refs(downward);
    }
    if let Some(projected) = existing(vol, "projected") {
        for source in items(projected, "sources") {
            if let Some(downward) = existing(source, "downwardAPI") {
                default_field_refs(downward);
            }
            if let Some(token) = existing(source, "serviceAccountToken") {
                default_value(token, "expirationSeconds", json!(TOKEN_EXPIRATION_SECONDS));
            }
        }
    }
    if let Some(spec) = existing(vol, "ephemeral")
        .and_then(|e| existing(e, "volumeClaimTemplate"))
        .and_then(|t| existing(t, "spec"))
    {
        super::default_pvc_spec(spec);
    }
}

fn default_field_refs(downward: &mut Object) {
    for item in items(downward, "items") {
        if let Some(field_ref) = existing(item, "fieldRef") {
            default_str(field_ref, "apiVersion", "v1");
        }
    }
}

/// `Always` for `:latest` or an untagged image, `IfNotPresent` otherwise
/// (a digest pins the image, an unparsable name is left to fail later).
fn pull_policy(image: &str) -> &'static str {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last = name.rsplit('/').next().unwrap_or_default();
    let tag = last.split_once(':').map(|(_, t)| t);
    let (domain, path) = match name.split_once('/') {
        Some((d, p)) if d.contains(['.', ':']) || d == "localhost" => (d, p),
        _ => ("", name),
    };
    let parsable = !name.is_empty()
        && !name.chars().any(char::is_whitespace)
        && !path.chars().any(|c| c.is_ascii_uppercase())
        && !domain.chars().any(char::is_whitespace);
    match (parsable, tag, digest) {
        (false, _, _) => "IfNotPresent",
        (true, Some("latest"), _) | (true, None, None) => "Always",
        _ => "IfNotPresent",
    }
}

fn default_container(c: &mut Object) {
    if c.get("imagePullPolicy")
        .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
    {
        let policy = pull_policy(str_of(c, "image"));
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    default_str(c, "terminationMessagePath", "/dev/termination-log");
    default_str(c, "terminationMessagePolicy", "File");
    // A struct, not a pointer, in Go: every container shows `resources: {}`.
    default_value(c, "resources", json!({}));
    for port in items(c, "ports") {
        default_str(port, "protocol", "TCP");
    }
    for env in items(c, "env") {
        if let Some(field_ref) = existing(env, "valueFrom").and_then(|v| existing(v, "fieldRef")) {
            default_str(field_ref, "apiVersion", "v1");
        }
    }
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = existing(c, key) {
            default_int(probe, "timeoutSeconds", 1);
            default_int(probe, "periodSeconds", 10);
            default_int(probe, "successThreshold", 1);
            default_int(probe, "failureThreshold", 3);
            if let Some(http) = existing(probe, "httpGet") {
                default_http_get(http);
            }
        }
    }
    if let Some(lifecycle) = existing(c, "lifecycle") {
        for key in ["postStart", "preStop"] {
            if let Some(http) = existing(lifecycle, key).and_then(|h| existing(h, "httpGet")) {
                default_http_get(http);
            }
        }
    }
}

fn default_http_get(http: &mut Object) {
    default_str(http, "path", "/");
    default_str(http, "scheme", "HTTP");
}

/// The create-time fill-ins of the ServiceAccount, Priority and
/// DefaultTolerationSeconds admission plugins and of the pod strategy.
pub(super) fn prepare_pod(root: &mut Object) {
    let qos = root.get("spec").and_then(Value::as_object).map(qos_class);
    if let Some(spec) = object(root, "spec") {
        default_str(spec, "serviceAccountName", "default");
        let account = str_of(spec, "serviceAccountName").to_string();
        spec.insert("serviceAccount".into(), json!(account));
        // Other classes need the PriorityClass object; the apiserver's
        // admission resolves those.
        let class = str_of(spec, "priorityClassName");
        let priority = match SYSTEM_PRIORITIES.iter().find(|(name, _)| *name == class) {
            Some((_, p)) => Some(*p),
            None if class.is_empty() => Some(0),
            None => None,
        };
        if let Some(p) = priority {
            default_value(spec, "priority", json!(p));
            default_str(spec, "preemptionPolicy", "PreemptLowerPriority");
        }
        add_default_tolerations(spec);
    }
    if let Some(status) = object(root, "status") {
        default_str(status, "phase", "Pending");
        if let Some(qos) = qos {
            default_str(status, "qosClass", qos);
        }
    }
}

fn add_default_tolerations(spec: &mut Object) {
    let tolerates = |spec: &Object, key: &str| {
        spec.get("tolerations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|t| {
                let k = t.get("key").and_then(Value::as_str).unwrap_or_default();
                let effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
                (k == key || k.is_empty()) && (effect == "NoExecute" || effect.is_empty())
            })
    };
    let mut add = Vec::new();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        if !tolerates(spec, key) {
            add.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": NOT_READY_TOLERATION_SECONDS,
            }));
        }
    }
    if add.is_empty() {
        return;
    }
    let list = spec.entry("tolerations").or_insert_with(|| json!([]));
    if list.is_null() {
        *list = json!([]);
    }
    if let Some(list) = list.as_array_mut() {
        list.extend(add);
    }
}

/// `GetPodQOS`: Guaranteed when every container limits cpu and memory and
/// requests what it limits, BestEffort when nothing asks for cpu or memory.
fn qos_class(spec: &Object) -> &'static str {
    let mut requests = std::collections::BTreeMap::<&str, f64>::new();
    let mut limits = std::collections::BTreeMap::<&str, f64>::new();
    let mut guaranteed = true;
    let containers = ["containers", "initContainers"]
        .into_iter()
        .filter_map(|k| spec.get(k).and_then(Value::as_array))
        .flatten();
    for c in containers {
        let resources = c.get("resources");
        let mut found = 0;
        for (kind, into) in [("requests", &mut requests), ("limits", &mut limits)] {
            let list = resources
                .and_then(|r| r.get(kind))
                .and_then(Value::as_object);
            for (name, q) in list.into_iter().flatten() {
                let name = match name.as_str() {
                    "cpu" => "cpu",
                    "memory" => "memory",
                    _ => continue,
                };
                let Some(v) = quantity::parse_json(q).filter(|v| *v > 0.0) else {
                    continue;
                };
                *into.entry(name).or_default() += v;
                if kind == "limits" {
                    found += 1;
                }
            }
        }
        if found < 2 {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    let matches = requests.iter().all(|(k, v)| {
        limits
            .get(k)
            .is_some_and(|l| (l - v).abs() <= f64::EPSILON * l.abs().max(1.0))
    });
    if guaranteed && matches && requests.len() == limits.len() {
        "Guaranteed"
    } else {
        "Burstable"
    }
}
