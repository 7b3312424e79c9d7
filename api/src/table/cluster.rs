//! Printers for cluster policy and configuration kinds: RBAC bindings,
//! storage, priority and runtime classes, disruption budgets, autoscalers
//! and leases. Roles and cluster roles have no printer in Kubernetes and get
//! the default table.

use serde_json::Value;

use super::fields::{
    arr_at, i64_at, map_at, opt_bool_at, opt_i64_at, opt_str_at, scalar_text, str_at,
};
use super::{AGE, Clock, Column, NAME, Printer, name, no_conditions};
use crate::kinds::Kind;

/// The printer for a cluster policy or configuration kind.
pub(super) fn printer(kind: &Kind) -> Option<&'static Printer> {
    match (kind.group, kind.kind) {
        ("rbac.authorization.k8s.io", "RoleBinding") => Some(&ROLE_BINDING),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => Some(&CLUSTER_ROLE_BINDING),
        ("storage.k8s.io", "StorageClass") => Some(&STORAGE_CLASS),
        ("scheduling.k8s.io", "PriorityClass") => Some(&PRIORITY_CLASS),
        ("node.k8s.io", "RuntimeClass") => Some(&RUNTIME_CLASS),
        ("policy", "PodDisruptionBudget") => Some(&POD_DISRUPTION_BUDGET),
        ("autoscaling", "HorizontalPodAutoscaler") => Some(&HORIZONTAL_POD_AUTOSCALER),
        ("coordination.k8s.io", "Lease") => Some(&LEASE),
        ("certificates.k8s.io", "CertificateSigningRequest") => Some(&CERTIFICATE_SIGNING_REQUEST),
        _ => None,
    }
}

static ROLE_BINDING: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Role",
            "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace.",
        ),
        AGE,
        Column::string("Users", "Users in the roleBinding").wide(),
        Column::string("Groups", "Groups in the roleBinding").wide(),
        Column::string("ServiceAccounts", "ServiceAccounts in the roleBinding").wide(),
    ],
    cells: binding_cells,
    conditions: no_conditions,
};

static CLUSTER_ROLE_BINDING: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Role",
            "RoleRef can only reference a ClusterRole in the global namespace.",
        ),
        AGE,
        Column::string("Users", "Users in the clusterRoleBinding").wide(),
        Column::string("Groups", "Groups in the clusterRoleBinding").wide(),
        Column::string(
            "ServiceAccounts",
            "ServiceAccounts in the clusterRoleBinding",
        )
        .wide(),
    ],
    cells: binding_cells,
    conditions: no_conditions,
};

/// ROLE as `Kind/name`, then the subjects split into users, groups and
/// service accounts (`namespace/name`), each joined with `, `.
fn binding_cells(binding: &Value, clock: &Clock) -> Vec<Value> {
    let role = format!(
        "{}/{}",
        str_at(binding, "/roleRef/kind"),
        str_at(binding, "/roleRef/name")
    );
    let mut users: Vec<String> = Vec::new();
    let mut groups: Vec<String> = Vec::new();
    let mut service_accounts: Vec<String> = Vec::new();
    for subject in arr_at(binding, "/subjects") {
        let subject_name = str_at(subject, "/name");
        match str_at(subject, "/kind") {
            "User" => users.push(subject_name.to_string()),
            "Group" => groups.push(subject_name.to_string()),
            "ServiceAccount" => {
                service_accounts.push(format!("{}/{subject_name}", str_at(subject, "/namespace")));
            }
            _ => {}
        }
    }
    vec![
        name(binding),
        Value::from(role),
        clock.age(binding),
        Value::from(users.join(", ")),
        Value::from(groups.join(", ")),
        Value::from(service_accounts.join(", ")),
    ]
}

static STORAGE_CLASS: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Provisioner",
            "provisioner indicates the type of the provisioner.",
        ),
        Column::string(
            "ReclaimPolicy",
            "reclaimPolicy controls the reclaimPolicy for dynamically provisioned PersistentVolumes of this storage class.",
        ),
        Column::string(
            "VolumeBindingMode",
            "volumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound.",
        ),
        Column::string(
            "AllowVolumeExpansion",
            "allowVolumeExpansion shows whether the storage class allow volume expand.",
        ),
        AGE,
    ],
    cells: storage_class_cells,
    conditions: no_conditions,
};

const DEFAULT_CLASS_ANNOTATIONS: [&str; 2] = [
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
];

fn storage_class_cells(class: &Value, clock: &Clock) -> Vec<Value> {
    let annotations = map_at(class, "/metadata/annotations");
    let is_default = DEFAULT_CLASS_ANNOTATIONS.iter().any(|key| {
        annotations
            .and_then(|a| a.get(*key))
            .and_then(Value::as_str)
            == Some("true")
    });
    let class_name = str_at(class, "/metadata/name");
    let shown_name = if is_default {
        format!("{class_name} (default)")
    } else {
        class_name.to_string()
    };
    vec![
        Value::from(shown_name),
        Value::from(str_at(class, "/provisioner")),
        Value::from(opt_str_at(class, "/reclaimPolicy").unwrap_or("Delete")),
        Value::from(opt_str_at(class, "/volumeBindingMode").unwrap_or("Immediate")),
        Value::from(opt_bool_at(class, "/allowVolumeExpansion").unwrap_or(false)),
        clock.age(class),
    ]
}

static PRIORITY_CLASS: Printer = Printer {
    columns: &[
        NAME,
        Column::integer(
            "Value",
            "value represents the integer value of this priority class.",
        ),
        Column::boolean(
            "Global-Default",
            "globalDefault specifies whether this PriorityClass should be considered as the default priority for pods that do not have any priority class.",
        ),
        AGE,
        Column::string(
            "PreemptionPolicy",
            "preemptionPolicy is the Policy for preempting pods with lower priority.",
        ),
    ],
    cells: priority_class_cells,
    conditions: no_conditions,
};

fn priority_class_cells(class: &Value, clock: &Clock) -> Vec<Value> {
    vec![
        name(class),
        Value::from(i64_at(class, "/value")),
        Value::from(opt_bool_at(class, "/globalDefault").unwrap_or(false)),
        clock.age(class),
        Value::from(str_at(class, "/preemptionPolicy")),
    ]
}

static RUNTIME_CLASS: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Handler",
            "handler specifies the underlying runtime and configuration that the CRI implementation will use.",
        ),
        AGE,
    ],
    cells: runtime_class_cells,
    conditions: no_conditions,
};

fn runtime_class_cells(class: &Value, clock: &Clock) -> Vec<Value> {
    vec![
        name(class),
        Value::from(str_at(class, "/handler")),
        clock.age(class),
    ]
}

static POD_DISRUPTION_BUDGET: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Min Available",
            "The minimum number of pods that must be available.",
        ),
        Column::string(
            "Max Unavailable",
            "The maximum number of pods that may be unavailable.",
        ),
        Column::integer(
            "Allowed Disruptions",
            "Calculated number of pods that may be disrupted at this time.",
        ),
        AGE,
    ],
    cells: pod_disruption_budget_cells,
    conditions: no_conditions,
};

fn pod_disruption_budget_cells(pdb: &Value, clock: &Clock) -> Vec<Value> {
    let int_or_string =
        |pointer: &str| scalar_text(pdb.pointer(pointer)).unwrap_or_else(|| "N/A".to_string());
    vec![
        name(pdb),
        Value::from(int_or_string("/spec/minAvailable")),
        Value::from(int_or_string("/spec/maxUnavailable")),
        Value::from(i64_at(pdb, "/status/disruptionsAllowed")),
        clock.age(pdb),
    ]
}

static HORIZONTAL_POD_AUTOSCALER: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Reference",
            "scaleTargetRef points to the target resource to scale.",
        ),
        Column::string(
            "Targets",
            "metrics contains the specifications for which to use to calculate the desired replica count.",
        ),
        Column::string(
            "MinPods",
            "minReplicas is the lower limit for the number of replicas to which the autoscaler can scale down.",
        ),
        Column::string(
            "MaxPods",
            "maxReplicas is the upper limit for the number of replicas to which the autoscaler can scale up.",
        ),
        Column::string(
            "Replicas",
            "currentReplicas is current number of replicas of pods managed by this autoscaler.",
        ),
        AGE,
    ],
    cells: horizontal_pod_autoscaler_cells,
    conditions: no_conditions,
};

/// A quantity field as text; Go prints a nil quantity as `<nil>`.
fn quantity(v: &Value, pointer: &str) -> String {
    scalar_text(v.pointer(pointer)).unwrap_or_else(|| "<nil>".to_string())
}

/// Kubernetes' `formatHPAMetrics` for `autoscaling/v2`: `current/target`
/// per metric, at most two, then ` + N more...`.
fn format_hpa_metrics(hpa: &Value) -> String {
    const MAX: usize = 2;
    let specs = arr_at(hpa, "/spec/metrics");
    if specs.is_empty() {
        return "<none>".to_string();
    }
    let statuses = arr_at(hpa, "/status/currentMetrics");
    let mut list: Vec<String> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let status = statuses.get(i);
        // The status of this metric's source, if it has reported one.
        let current = |source: &str| status.and_then(|s| s.get(source)).filter(|c| !c.is_null());
        let entry = match str_at(spec, "/type") {
            source @ ("External" | "Object") => {
                let key = if source == "External" {
                    "external"
                } else {
                    "object"
                };
                if spec
                    .pointer(&format!("/{key}/target/averageValue"))
                    .is_some()
                {
                    let now = current(key)
                        .and_then(|c| scalar_text(c.pointer("/current/averageValue")))
                        .unwrap_or_else(|| "<unknown>".to_string());
                    format!(
                        "{now}/{} (avg)",
                        quantity(spec, &format!("/{key}/target/averageValue"))
                    )
                } else {
                    let now = current(key)
                        .map(|c| quantity(c, "/current/value"))
                        .unwrap_or_else(|| "<unknown>".to_string());
                    format!("{now}/{}", quantity(spec, &format!("/{key}/target/value")))
                }
            }
            "Pods" => {
                let now = current("pods")
                    .map(|c| quantity(c, "/current/averageValue"))
                    .unwrap_or_else(|| "<unknown>".to_string());
                format!("{now}/{}", quantity(spec, "/pods/target/averageValue"))
            }
            source @ ("Resource" | "ContainerResource") => {
                let key = if source == "Resource" {
                    "resource"
                } else {
                    "containerResource"
                };
                let resource = str_at(spec, &format!("/{key}/name"));
                if spec
                    .pointer(&format!("/{key}/target/averageValue"))
                    .is_some()
                {
                    let now = current(key)
                        .map(|c| quantity(c, "/current/averageValue"))
                        .unwrap_or_else(|| "<unknown>".to_string());
                    format!(
                        "{resource}: {now}/{}",
                        quantity(spec, &format!("/{key}/target/averageValue"))
                    )
                } else {
                    let now = current(key)
                        .and_then(|c| opt_i64_at(c, "/current/averageUtilization"))
                        .map_or_else(|| "<unknown>".to_string(), |u| format!("{u}%"));
                    let target = opt_i64_at(spec, &format!("/{key}/target/averageUtilization"))
                        .map_or_else(|| "<auto>".to_string(), |u| format!("{u}%"));
                    format!("{resource}: {now}/{target}")
                }
            }
            _ => "<unknown type>".to_string(),
        };
        list.push(entry);
    }
    let count = list.len();
    if count > MAX {
        list.truncate(MAX);
        return format!("{} + {} more...", list.join(", "), count - MAX);
    }
    list.join(", ")
}

fn horizontal_pod_autoscaler_cells(hpa: &Value, clock: &Clock) -> Vec<Value> {
    let reference = format!(
        "{}/{}",
        str_at(hpa, "/spec/scaleTargetRef/kind"),
        str_at(hpa, "/spec/scaleTargetRef/name")
    );
    let min_pods = opt_i64_at(hpa, "/spec/minReplicas")
        .map_or_else(|| "<unset>".to_string(), |n| n.to_string());
    vec![
        name(hpa),
        Value::from(reference),
        Value::from(format_hpa_metrics(hpa)),
        Value::from(min_pods),
        Value::from(i64_at(hpa, "/spec/maxReplicas")),
        Value::from(i64_at(hpa, "/status/currentReplicas")),
        clock.age(hpa),
    ]
}

static LEASE: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Holder",
            "holderIdentity contains the identity of the holder of a current lease.",
        ),
        AGE,
    ],
    cells: lease_cells,
    conditions: no_conditions,
};

fn lease_cells(lease: &Value, clock: &Clock) -> Vec<Value> {
    vec![
        name(lease),
        Value::from(str_at(lease, "/spec/holderIdentity")),
        clock.age(lease),
    ]
}

static CERTIFICATE_SIGNING_REQUEST: Printer = Printer {
    columns: &[
        NAME,
        AGE,
        Column::string(
            "SignerName",
            "Name of the signer that will sign the certificate",
        ),
        Column::string(
            "Requestor",
            "Name of the user that requested the certificate",
        ),
        Column::string(
            "RequestedDuration",
            "Duration of the certificate as requested, if any",
        ),
        Column::string(
            "Condition",
            "Condition of the request: Pending, Approved, Denied, Issued",
        ),
    ],
    cells: csr_cells,
    conditions: no_conditions,
};

fn csr_cells(csr: &Value, clock: &Clock) -> Vec<Value> {
    let signer = opt_str_at(csr, "/spec/signerName").filter(|s| !s.is_empty());
    let duration = opt_i64_at(csr, "/spec/expirationSeconds").map_or_else(
        || "<none>".to_string(),
        |s| super::fields::human_duration(i128::from(s) * 1_000_000_000),
    );
    vec![
        name(csr),
        clock.age(csr),
        Value::from(signer.unwrap_or("<none>")),
        Value::from(str_at(csr, "/spec/username")),
        Value::from(duration),
        Value::from(csr_condition(csr)),
    ]
}

/// kubectl's `extractCSRStatus`: Denied over Approved over Pending, then
/// `,Failed` and `,Issued` as they apply.
fn csr_condition(csr: &Value) -> String {
    let has = |ty: &str| {
        arr_at(csr, "/status/conditions").iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some(ty)
                && c.get("status").and_then(Value::as_str) != Some("False")
        })
    };
    let mut out = if has("Denied") {
        "Denied".to_string()
    } else if has("Approved") {
        "Approved".to_string()
    } else {
        "Pending".to_string()
    };
    if has("Failed") {
        out.push_str(",Failed");
    }
    if !str_at(csr, "/status/certificate").is_empty() {
        out.push_str(",Issued");
    }
    out
}
