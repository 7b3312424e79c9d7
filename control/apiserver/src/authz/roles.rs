//! The RBAC objects every cluster starts with, after Kubernetes' bootstrap
//! policy (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go`):
//! the user-facing `cluster-admin`, `admin`, `edit` and `view`, the roles
//! every authenticated user holds, and the roles of shoal's node agents,
//! scheduler and controller manager, each bound where Kubernetes binds it.
//!
//! shoal runs no ClusterRole aggregation controller, so `admin`, `edit`
//! and `view` carry their aggregated rules as written here; a role labelled
//! `aggregate-to-view` later is not folded into `view`.

use serde_json::{Value, json};

/// The API group of every object here.
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// `apiVersion` of every object here.
const API_VERSION: &str = "rbac.authorization.k8s.io/v1";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
const READ_WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

const CORE: &str = "";
const APPS: &str = "apps";
const AUTHENTICATION: &str = "authentication.k8s.io";
const AUTHORIZATION: &str = "authorization.k8s.io";
const AUTOSCALING: &str = "autoscaling";
const BATCH: &str = "batch";
const CERTIFICATES: &str = "certificates.k8s.io";
const COORDINATION: &str = "coordination.k8s.io";
const DISCOVERY: &str = "discovery.k8s.io";
const EVENTS: &str = "events.k8s.io";
const EXTENSIONS: &str = "extensions";
const NETWORKING: &str = "networking.k8s.io";
const POLICY: &str = "policy";
const SHOAL: &str = "shoal.io";
const STORAGE: &str = "storage.k8s.io";

/// Label keys that make Kubernetes' aggregation fold one role into another.
const TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// Every bootstrap ClusterRole, then every bootstrap ClusterRoleBinding,
/// as `rbac.authorization.k8s.io/v1` objects ready to store.
pub fn default_objects() -> Vec<Value> {
    let mut out = cluster_roles();
    out.extend(cluster_role_bindings());
    out
}

fn cluster_roles() -> Vec<Value> {
    let to_view = aggregate_to_view();
    let to_edit = aggregate_to_edit();
    let to_admin = aggregate_to_admin();
    // Kubernetes' aggregation controller concatenates the rules of the
    // selected roles in name order: `view` is built from
    // system:aggregate-to-view; `edit` from system:aggregate-to-edit then
    // view; `admin` from edit then system:aggregate-to-admin.
    let view = to_view.clone();
    let edit: Vec<Value> = to_edit.iter().chain(&view).cloned().collect();
    let admin: Vec<Value> = edit.iter().chain(&to_admin).cloned().collect();
    vec![
        // The root role: anything, anywhere, including every path.
        cluster_role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        // Just enough to learn whether the server is up and which APIs it
        // serves, for client negotiation.
        cluster_role(
            "system:discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/version",
                    "/version/",
                    "/openapi",
                    "/openapi/*",
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                ],
            )],
        ),
        cluster_role(
            "system:monitoring",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/metrics",
                    "/metrics/slis",
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/livez/*",
                    "/readyz/*",
                    "/healthz/*",
                ],
            )],
        ),
        // What a user may always learn about themselves.
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["create"],
                    &[AUTHORIZATION],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(&["create"], &[AUTHENTICATION], &["selfsubjectreviews"]),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![urls(
                &["get"],
                &["/livez", "/readyz", "/healthz", "/version", "/version/"],
            )],
        ),
        aggregated("admin", &[], TO_ADMIN, admin),
        aggregated("edit", &[(TO_ADMIN, "true")], TO_EDIT, edit),
        aggregated("view", &[(TO_EDIT, "true")], TO_VIEW, view),
        cluster_role("system:aggregate-to-admin", &[(TO_ADMIN, "true")], to_admin),
        cluster_role("system:aggregate-to-edit", &[(TO_EDIT, "true")], to_edit),
        cluster_role("system:aggregate-to-view", &[(TO_VIEW, "true")], to_view),
        cluster_role("system:node", &[], node_rules()),
        // What a bootstrap token may do: ask for a node's client
        // certificate and read the request back.
        cluster_role(
            "system:node-bootstrapper",
            &[],
            vec![rule(
                &["create", "get", "list", "watch"],
                &[CERTIFICATES],
                &["certificatesigningrequests"],
            )],
        ),
        cluster_role("system:kube-scheduler", &[], scheduler_rules()),
        cluster_role(
            "system:kube-controller-manager",
            &[],
            controller_manager_rules(),
        ),
    ]
}

fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", &[group("system:masters")]),
        binding("system:monitoring", &[group("system:monitoring")]),
        binding("system:discovery", &[group("system:authenticated")]),
        binding("system:basic-user", &[group("system:authenticated")]),
        binding(
            "system:public-info-viewer",
            &[
                group("system:authenticated"),
                group("system:unauthenticated"),
            ],
        ),
        // Kubernetes leaves this binding empty and lets its Node authorizer
        // decide; shoal's agents' group holds the role, and the node checks
        // (authz::node) keep each node to its own Node, Lease and pods.
        binding("system:node", &[group("system:nodes")]),
        // kubeadm's kubeadm:kubelet-bootstrap: joining nodes' tokens.
        binding("system:node-bootstrapper", &[group("system:bootstrappers")]),
        binding("system:kube-scheduler", &[user("system:kube-scheduler")]),
        binding(
            "system:kube-controller-manager",
            &[user("system:kube-controller-manager")],
        ),
    ]
}

/// Read access to what a namespace holds, short of secrets and of what
/// would let the reader act as someone else.
fn aggregate_to_view() -> Vec<Value> {
    vec![
        rule(
            READ,
            &[CORE],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ],
        ),
        rule(
            READ,
            &[CORE],
            &[
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ],
        ),
        // Reading namespaces from a namespaced binding means reading that
        // one namespace: how a user finds which namespaces they may use.
        rule(READ, &[CORE], &["namespaces"]),
        rule(READ, &[DISCOVERY], &["endpointslices"]),
        rule(
            READ,
            &[APPS],
            &[
                "controllerrevisions",
                "statefulsets",
                "statefulsets/status",
                "statefulsets/scale",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale",
            ],
        ),
        rule(
            READ,
            &[AUTOSCALING],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(
            READ,
            &[BATCH],
            &["jobs", "cronjobs", "cronjobs/status", "jobs/status"],
        ),
        rule(
            READ,
            &[EXTENSIONS],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(
            READ,
            &[POLICY],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        rule(
            READ,
            &[NETWORKING],
            &["networkpolicies", "ingresses", "ingresses/status"],
        ),
    ]
}

/// Every user-level action in a namespace; not `/status` writes, quotas
/// or limits, which belong to the system and the namespace's owner.
fn aggregate_to_edit() -> Vec<Value> {
    vec![
        // Read access to what escalates: exec, attach, secrets.
        rule(
            READ,
            &[CORE],
            &[
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
                "secrets",
                "services/proxy",
            ],
        ),
        rule(&["impersonate"], &[CORE], &["serviceaccounts"]),
        rule(
            WRITE,
            &[CORE],
            &[
                "pods",
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
            ],
        ),
        rule(&["create"], &[CORE], &["pods/eviction"]),
        rule(
            WRITE,
            &[CORE],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "events",
            ],
        ),
        rule(&["create"], &[CORE], &["serviceaccounts/token"]),
        rule(
            WRITE,
            &[APPS],
            &[
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        rule(WRITE, &[AUTOSCALING], &["horizontalpodautoscalers"]),
        rule(WRITE, &[BATCH], &["jobs", "cronjobs"]),
        rule(
            WRITE,
            &[EXTENSIONS],
            &[
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "ingresses",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(WRITE, &[POLICY], &["poddisruptionbudgets"]),
        rule(WRITE, &[NETWORKING], &["networkpolicies", "ingresses"]),
        rule(READ_WRITE, &[COORDINATION], &["leases"]),
    ]
}

/// `edit` plus granting access to others within the namespace.
fn aggregate_to_admin() -> Vec<Value> {
    vec![
        rule(
            &["create"],
            &[AUTHORIZATION],
            &["localsubjectaccessreviews"],
        ),
        rule(READ_WRITE, &[RBAC_GROUP], &["roles", "rolebindings"]),
    ]
}

/// Who may write an event: every system component.
fn events_rule() -> Value {
    rule(&["create", "update", "patch"], &[CORE, EVENTS], &["events"])
}

/// What shoal's node agent does: register and heartbeat its Node and its
/// Lease, read the pods, Services, endpoints, ConfigMaps and Secrets it
/// serves from, report pod status and remove pods it has finished.
/// Kubernetes narrows this per node with its Node authorizer and the
/// NodeRestriction admission plugin; shoal grants it to the whole group.
fn node_rules() -> Vec<Value> {
    vec![
        // Non-mutating reviews the agent uses to check callers.
        rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
        rule(
            &["create"],
            &[AUTHORIZATION],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        rule(READ, &[CORE], &["services", "endpoints", "pods"]),
        rule(READ, &[DISCOVERY], &["endpointslices"]),
        rule(&["create", "get", "list", "watch"], &[CORE], &["nodes"]),
        rule(&["update", "patch"], &[CORE], &["nodes", "nodes/status"]),
        events_rule(),
        rule(&["delete"], &[CORE], &["pods"]),
        // get: what kubectl patch --subresource=status reads first (the
        // same data as get pods).
        rule(&["get", "update", "patch"], &[CORE], &["pods/status"]),
        rule(&["create"], &[CORE], &["pods/eviction"]),
        rule(READ, &[CORE], &["secrets", "configmaps"]),
        // The volumes of a pod's claims, to mount them.
        rule(
            &["get"],
            &[CORE],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        // Node heartbeats live in kube-node-lease; a ClusterRole cannot
        // name a namespace, so, as in Kubernetes, the rule is cluster-wide.
        rule(
            &["get", "create", "update", "patch", "delete"],
            &[COORDINATION],
            &["leases"],
        ),
        rule(&["create"], &[CORE], &["serviceaccounts/token"]),
        // Renewing its own client certificate.
        rule(
            &["create", "get", "list", "watch"],
            &[CERTIFICATES],
            &["certificatesigningrequests"],
        ),
        // NetworkPolicy: what the agent compiles, and the security
        // identities it allocates for its pods.
        rule(READ, &[NETWORKING], &["networkpolicies"]),
        rule(READ, &[CORE], &["namespaces"]),
        rule(
            &["create", "get", "list", "watch"],
            &[SHOAL],
            &["identities"],
        ),
    ]
}

fn scheduler_rules() -> Vec<Value> {
    vec![
        events_rule(),
        // Leader election.
        rule(&["create"], &[COORDINATION], &["leases"]),
        named(
            &["get", "update"],
            &[COORDINATION],
            &["leases"],
            &["kube-scheduler"],
        ),
        rule(READ, &[CORE], &["nodes"]),
        rule(&["get", "list", "watch", "delete"], &[CORE], &["pods"]),
        rule(&["create"], &[CORE], &["pods/binding", "bindings"]),
        rule(&["patch", "update"], &[CORE], &["pods/status"]),
        // What selects pods, for spreading.
        rule(READ, &[CORE], &["services", "replicationcontrollers"]),
        rule(READ, &[APPS, EXTENSIONS], &["replicasets"]),
        rule(READ, &[APPS], &["statefulsets"]),
        rule(READ, &[POLICY], &["poddisruptionbudgets"]),
        rule(
            READ,
            &[CORE],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
        rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews"]),
        rule(READ, &[STORAGE], &["csinodes"]),
        // Pod affinity's namespaceSelector.
        rule(READ, &[CORE], &["namespaces"]),
        rule(READ, &[STORAGE], &["csidrivers"]),
        rule(READ, &[STORAGE], &["csistoragecapacities"]),
    ]
}

fn controller_manager_rules() -> Vec<Value> {
    vec![
        events_rule(),
        // Leader election.
        rule(&["create"], &[COORDINATION], &["leases"]),
        named(
            &["get", "update"],
            &[COORDINATION],
            &["leases"],
            &["kube-controller-manager"],
        ),
        rule(&["create"], &[CORE], &["secrets", "serviceaccounts"]),
        rule(&["delete"], &[CORE], &["secrets"]),
        rule(
            &["get"],
            &[CORE],
            &["namespaces", "secrets", "serviceaccounts", "configmaps"],
        ),
        rule(&["update"], &[CORE], &["secrets", "serviceaccounts"]),
        rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
        rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews"]),
        // Every shared informer.
        rule(&["list", "watch"], &["*"], &["*"]),
        rule(&["create"], &[CORE], &["serviceaccounts/token"]),
        // The identity garbage collector.
        rule(&["get", "delete"], &[SHOAL], &["identities"]),
    ]
}

/// `verbs` on `resources` in `groups`.
fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

/// [`rule`] narrowed to the objects `names`.
fn named(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Value {
    json!({
        "verbs": verbs,
        "apiGroups": groups,
        "resources": resources,
        "resourceNames": names,
    })
}

/// `verbs` on the non-resource paths `urls` (a trailing `*` is a prefix).
fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

/// The metadata Kubernetes stamps on bootstrap policy: the label that marks
/// it and the annotation that lets a restart restore missing rules.
fn metadata(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut all = serde_json::Map::new();
    all.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    for (k, v) in labels {
        all.insert((*k).into(), json!(v));
    }
    json!({
        "name": name,
        "labels": all,
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    })
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "ClusterRole",
        "metadata": metadata(name, labels),
        "rules": rules,
    })
}

/// A role Kubernetes builds by aggregation, written out with the rules the
/// aggregation would give it.
fn aggregated(name: &str, labels: &[(&str, &str)], selector: &str, rules: Vec<Value>) -> Value {
    let mut role = cluster_role(name, labels, rules);
    role["aggregationRule"] = json!({
        "clusterRoleSelectors": [{"matchLabels": {selector: "true"}}],
    });
    role
}

fn binding(role: &str, subjects: &[Value]) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "ClusterRoleBinding",
        "metadata": metadata(role, &[]),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

fn group(name: &str) -> Value {
    json!({"apiGroup": RBAC_GROUP, "kind": "Group", "name": name})
}

fn user(name: &str) -> Value {
    json!({"apiGroup": RBAC_GROUP, "kind": "User", "name": name})
}

#[cfg(test)]
mod tests;
