//! The kinds the API serves. One static table: discovery, routing, storage
//! keys and `kubectl` short names all read it, so a kind is added in one
//! place.

/// Whether objects of a kind live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `/namespaces/<ns>/<resource>/<name>`.
    Namespaced,
    /// `/<resource>/<name>`.
    Cluster,
}

/// One served kind at one group version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// API group; empty for the legacy core group.
    pub group: &'static str,
    /// Version within the group.
    pub version: &'static str,
    /// `kind` in objects.
    pub kind: &'static str,
    /// Resource name in URLs (lowercase plural).
    pub plural: &'static str,
    /// Lowercase singular name (`kubectl get pod`).
    pub singular: &'static str,
    /// Namespaced or cluster-scoped.
    pub scope: Scope,
    /// `kubectl` short names.
    pub short_names: &'static [&'static str],
    /// Categories such as `all`.
    pub categories: &'static [&'static str],
    /// Subresources served under `<resource>/<name>/<sub>`.
    pub subresources: &'static [&'static str],
}

impl Kind {
    /// `apiVersion` as written in objects: `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind of a list of these objects.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// `plural.group` (`deployments.apps`), or the plural for core kinds.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Prefix of every key holding objects of this kind, ending in `/`.
    /// Core and unambiguous resources use Kubernetes' own layout
    /// (`/registry/pods/`); a plural served by two groups keeps them apart.
    pub fn storage_prefix(&self) -> String {
        if self.group.is_empty()
            || !KINDS
                .iter()
                .any(|k| k.plural == self.plural && k.group != self.group)
        {
            format!("/registry/{}/", self.plural)
        } else {
            format!("/registry/{}/{}/", self.group, self.plural)
        }
    }

    /// Whether objects live in namespaces.
    pub fn namespaced(&self) -> bool {
        self.scope == Scope::Namespaced
    }

    /// Whether `sub` is served for this kind.
    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one row of the kinds table; named fields would triple its length"
)]
const fn k(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    scope: Scope,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
) -> Kind {
    Kind {
        group,
        version,
        kind,
        plural,
        singular,
        scope,
        short_names,
        categories,
        subresources,
    }
}

use Scope::{Cluster, Namespaced};

const ALL: &[&str] = &["all"];
const STATUS: &[&str] = &["status"];
const STATUS_SCALE: &[&str] = &["status", "scale"];

/// Every kind the API serves, grouped as discovery lists them.
pub static KINDS: &[Kind] = &[
    // core/v1
    k(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        Cluster,
        &["ns"],
        &[],
        &["status", "finalize"],
    ),
    k(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        Namespaced,
        &["po"],
        ALL,
        &[
            "status",
            "binding",
            "log",
            "exec",
            "attach",
            "portforward",
            "eviction",
            "ephemeralcontainers",
        ],
    ),
    k(
        "",
        "v1",
        "Binding",
        "bindings",
        "binding",
        Namespaced,
        &[],
        &[],
        &[],
    ),
    k(
        "",
        "v1",
        "Service",
        "services",
        "service",
        Namespaced,
        &["svc"],
        ALL,
        &["status", "proxy"],
    ),
    k(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        "endpoints",
        Namespaced,
        &["ep"],
        &[],
        &[],
    ),
    k(
        "",
        "v1",
        "Node",
        "nodes",
        "node",
        Cluster,
        &["no"],
        &[],
        &["status", "proxy"],
    ),
    k(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        Namespaced,
        &["cm"],
        &[],
        &[],
    ),
    k(
        "",
        "v1",
        "Secret",
        "secrets",
        "secret",
        Namespaced,
        &[],
        &[],
        &[],
    ),
    k(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        Namespaced,
        &["sa"],
        &[],
        &["token"],
    ),
    k(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        Cluster,
        &["pv"],
        &[],
        STATUS,
    ),
    k(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        Namespaced,
        &["pvc"],
        &[],
        STATUS,
    ),
    k(
        "",
        "v1",
        "Event",
        "events",
        "event",
        Namespaced,
        &["ev"],
        &[],
        &[],
    ),
    k(
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        "resourcequota",
        Namespaced,
        &["quota"],
        &[],
        STATUS,
    ),
    k(
        "",
        "v1",
        "LimitRange",
        "limitranges",
        "limitrange",
        Namespaced,
        &["limits"],
        &[],
        &[],
    ),
    // apps/v1
    k(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        Namespaced,
        &["deploy"],
        ALL,
        STATUS_SCALE,
    ),
    k(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        Namespaced,
        &["rs"],
        ALL,
        STATUS_SCALE,
    ),
    k(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        Namespaced,
        &["sts"],
        ALL,
        STATUS_SCALE,
    ),
    k(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        Namespaced,
        &["ds"],
        ALL,
        STATUS,
    ),
    k(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        Namespaced,
        &[],
        &[],
        &[],
    ),
    // batch/v1
    k(
        "batch",
        "v1",
        "Job",
        "jobs",
        "job",
        Namespaced,
        &[],
        ALL,
        STATUS,
    ),
    k(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        "cronjob",
        Namespaced,
        &["cj"],
        ALL,
        STATUS,
    ),
    // discovery.k8s.io/v1
    k(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        Namespaced,
        &[],
        &[],
        &[],
    ),
    // networking.k8s.io/v1
    k(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        "ingress",
        Namespaced,
        &["ing"],
        &[],
        STATUS,
    ),
    k(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        "ingressclass",
        Cluster,
        &[],
        &[],
        &[],
    ),
    k(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        Namespaced,
        &["netpol"],
        &[],
        &[],
    ),
    // autoscaling/v2
    k(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        Namespaced,
        &["hpa"],
        ALL,
        STATUS,
    ),
    // storage.k8s.io/v1
    k(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        "storageclass",
        Cluster,
        &["sc"],
        &[],
        &[],
    ),
    // certificates.k8s.io/v1
    k(
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        "certificatesigningrequest",
        Cluster,
        &["csr"],
        &[],
        &["status", "approval"],
    ),
    // coordination.k8s.io/v1
    k(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        Namespaced,
        &[],
        &[],
        &[],
    ),
    // rbac.authorization.k8s.io/v1
    k(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        "role",
        Namespaced,
        &[],
        &[],
        &[],
    ),
    k(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        Cluster,
        &[],
        &[],
        &[],
    ),
    k(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        Namespaced,
        &[],
        &[],
        &[],
    ),
    k(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        Cluster,
        &[],
        &[],
        &[],
    ),
    // scheduling.k8s.io/v1
    k(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        "priorityclass",
        Cluster,
        &["pc"],
        &[],
        &[],
    ),
    // node.k8s.io/v1
    k(
        "node.k8s.io",
        "v1",
        "RuntimeClass",
        "runtimeclasses",
        "runtimeclass",
        Cluster,
        &[],
        &[],
        &[],
    ),
    // policy/v1
    k(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        Namespaced,
        &["pdb"],
        &[],
        STATUS,
    ),
    // events.k8s.io/v1
    k(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        "event",
        Namespaced,
        &["ev"],
        &[],
        &[],
    ),
    // shoal.io/v1alpha1: shoal's own kinds.
    k(
        crate::identity::GROUP,
        crate::identity::VERSION,
        crate::identity::KIND,
        crate::identity::PLURAL,
        "identity",
        Cluster,
        &[],
        &[],
        &[],
    ),
];

/// The kind served as `plural` in `group`/`version`.
pub fn find_resource(group: &str, version: &str, plural: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// Every kind served in `group`/`version`, in table order.
pub fn kinds_in<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static Kind> + 'a {
    KINDS
        .iter()
        .filter(move |k| k.group == group && k.version == version)
}

/// The kind named by an object's `apiVersion` and `kind`.
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static Kind> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    KINDS
        .iter()
        .find(|k| k.group == group && k.version == version && k.kind == kind)
}

/// The groups in discovery order, each with its versions (preferred first).
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for k in KINDS {
        match out.iter_mut().find(|(g, _)| *g == k.group) {
            Some((_, versions)) => {
                if !versions.contains(&k.version) {
                    versions.push(k.version);
                }
            }
            None => out.push((k.group, vec![k.version])),
        }
    }
    out
}

#[cfg(test)]
mod tests;
