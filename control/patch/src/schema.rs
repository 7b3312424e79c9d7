//! Patch strategies and merge keys of the built-in kinds, from the
//! `patchStrategy` and `patchMergeKey` struct tags of k8s.io/api and
//! k8s.io/apimachinery at release-1.33 (the Kubernetes API shoal serves).
//!
//! Only fields that differ from the default are listed, plus the object
//! fields that lead to them: an unlisted map field merges key by key and an
//! unlisted list field is replaced whole. Lists of structs that Kubernetes
//! replaces (tolerations, envFrom, readinessGates, resizePolicy, Node
//! spec.taints, Endpoints subsets, containerStatuses...) are therefore simply
//! absent. So are merge lists nested only inside replaced lists (e.g.
//! ContainerStatus volumeMounts), which a patch can never reach by merging.

use crate::type_ref::TypeRef;

/// How a field's value is patched when both the live object and the patch
/// have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// Maps merge key by key; lists are replaced.
    Default,
    /// Lists merge: by `merge_key` for lists of objects, as a set for lists
    /// of scalars.
    Merge,
    /// Maps are replaced whole (`patchStrategy:"replace"`).
    Replace,
}

/// One field of an object type with a non-default patch behaviour, or with
/// such fields below it.
#[derive(Debug)]
pub(crate) struct Field {
    /// The JSON field name.
    pub(crate) name: &'static str,
    /// How the field's value is patched.
    pub(crate) strategy: Strategy,
    /// `patchStrategy` includes `retainKeys`: the object (or each list
    /// element) is one of a union, so fields the new value leaves out are
    /// cleared. Patches say so with `$retainKeys`; apply bodies rely on this.
    pub(crate) retain_keys: bool,
    /// The key list elements are matched by.
    pub(crate) merge_key: Option<&'static str>,
    /// The type of the value, or of list elements.
    pub(crate) schema: Schema,
}

/// The patch-relevant fields of one object type.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schema {
    fields: &'static [Field],
}

impl Schema {
    /// A type with no special fields: what unknown kinds and unlisted fields
    /// get.
    pub(crate) const EMPTY: Schema = Schema { fields: &[] };

    /// The field named `name`, if it behaves differently from the default.
    pub(crate) fn field(self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|field| field.name == name)
    }
}

/// The schema of a built-in kind, or None for kinds shoal has no table for.
pub(crate) fn for_type(type_ref: &TypeRef<'_>) -> Option<Schema> {
    KINDS
        .iter()
        .find(|(api_version, kind, _)| {
            *api_version == type_ref.api_version && *kind == type_ref.kind
        })
        .map(|(_, _, fields)| Schema { fields })
}

const fn object(name: &'static str, fields: &'static [Field]) -> Field {
    Field {
        name,
        strategy: Strategy::Default,
        retain_keys: false,
        merge_key: None,
        schema: Schema { fields },
    }
}

const fn merge_by(name: &'static str, key: &'static str, fields: &'static [Field]) -> Field {
    Field {
        name,
        strategy: Strategy::Merge,
        retain_keys: false,
        merge_key: Some(key),
        schema: Schema { fields },
    }
}

/// `patchStrategy:"merge,retainKeys"`: merged by key, each element a union.
const fn merge_by_retaining(name: &'static str, key: &'static str) -> Field {
    Field {
        retain_keys: true,
        ..merge_by(name, key, NONE)
    }
}

/// A list of scalars merged as a set.
const fn merge_scalars(name: &'static str) -> Field {
    Field {
        name,
        strategy: Strategy::Merge,
        retain_keys: false,
        merge_key: None,
        schema: Schema::EMPTY,
    }
}

/// `patchStrategy:"retainKeys"` on an object: a union.
const fn retaining(name: &'static str) -> Field {
    Field {
        retain_keys: true,
        ..object(name, NONE)
    }
}

/// `patchStrategy:"replace"` on an object.
const fn replaced(name: &'static str) -> Field {
    Field {
        strategy: Strategy::Replace,
        ..object(name, NONE)
    }
}

const NONE: &[Field] = &[];

const OBJECT_META: &[Field] = &[
    merge_by("ownerReferences", "uid", NONE),
    merge_scalars("finalizers"),
];

const METADATA: Field = object("metadata", OBJECT_META);

/// Kinds whose only special fields are in metadata.
const METADATA_ONLY: &[Field] = &[METADATA];

/// A status whose only special field is `conditions`, merged by type.
const STATUS_CONDITIONS: &[Field] = &[merge_by("conditions", "type", NONE)];

/// Container and EphemeralContainer (EphemeralContainerCommon).
const CONTAINER: &[Field] = &[
    merge_by("ports", "containerPort", NONE),
    merge_by("env", "name", NONE),
    merge_by("volumeMounts", "mountPath", NONE),
    merge_by("volumeDevices", "devicePath", NONE),
];

const POD_SPEC: &[Field] = &[
    merge_by_retaining("volumes", "name"),
    merge_by("initContainers", "name", CONTAINER),
    merge_by("containers", "name", CONTAINER),
    merge_by("ephemeralContainers", "name", CONTAINER),
    merge_by("imagePullSecrets", "name", NONE),
    merge_by("hostAliases", "ip", NONE),
    merge_by("topologySpreadConstraints", "topologyKey", NONE),
    merge_by("schedulingGates", "name", NONE),
    merge_by_retaining("resourceClaims", "name"),
];

const POD_STATUS: &[Field] = &[
    merge_by("conditions", "type", NONE),
    merge_by("hostIPs", "ip", NONE),
    merge_by("podIPs", "ip", NONE),
    merge_by_retaining("resourceClaimStatuses", "name"),
];

const POD: &[Field] = &[
    METADATA,
    object("spec", POD_SPEC),
    object("status", POD_STATUS),
];

const POD_TEMPLATE_SPEC: &[Field] = &[METADATA, object("spec", POD_SPEC)];

const TEMPLATE: Field = object("template", POD_TEMPLATE_SPEC);

/// ReplicaSet, StatefulSet, DaemonSet, ReplicationController: a pod
/// template in spec, conditions in status.
const WORKLOAD: &[Field] = &[
    METADATA,
    object("spec", &[TEMPLATE]),
    object("status", STATUS_CONDITIONS),
];

const DEPLOYMENT: &[Field] = &[
    METADATA,
    object("spec", &[TEMPLATE, retaining("strategy")]),
    object("status", STATUS_CONDITIONS),
];

const JOB_SPEC: &[Field] = &[TEMPLATE];

const JOB: &[Field] = &[
    METADATA,
    object("spec", JOB_SPEC),
    object("status", STATUS_CONDITIONS),
];

const CRON_JOB: &[Field] = &[
    METADATA,
    object(
        "spec",
        &[object("jobTemplate", &[METADATA, object("spec", JOB_SPEC)])],
    ),
];

const POD_TEMPLATE: &[Field] = &[METADATA, TEMPLATE];

/// Kinds whose special fields are metadata and status conditions.
const WITH_STATUS_CONDITIONS: &[Field] = &[METADATA, object("status", STATUS_CONDITIONS)];

const SERVICE: &[Field] = &[
    METADATA,
    object("spec", &[merge_by("ports", "port", NONE)]),
    object("status", STATUS_CONDITIONS),
];

const SERVICE_ACCOUNT: &[Field] = &[METADATA, merge_by("secrets", "name", NONE)];

const NODE: &[Field] = &[
    METADATA,
    object("spec", &[merge_scalars("podCIDRs")]),
    object(
        "status",
        &[
            merge_by("conditions", "type", NONE),
            merge_by("addresses", "type", NONE),
        ],
    ),
];

const COMPONENT_STATUS: &[Field] = &[METADATA, merge_by("conditions", "type", NONE)];

const POD_DISRUPTION_BUDGET: &[Field] = &[
    METADATA,
    object("spec", &[replaced("selector")]),
    object("status", STATUS_CONDITIONS),
];

const CSI_NODE: &[Field] = &[
    METADATA,
    object("spec", &[merge_by("drivers", "name", NONE)]),
];

const WEBHOOK: &[Field] = &[merge_by("matchConditions", "name", NONE)];

const WEBHOOK_CONFIGURATION: &[Field] = &[METADATA, merge_by("webhooks", "name", WEBHOOK)];

const VALIDATING_ADMISSION_POLICY: &[Field] = &[
    METADATA,
    object(
        "spec",
        &[
            merge_by("matchConditions", "name", NONE),
            merge_by("variables", "name", NONE),
        ],
    ),
];

/// (apiVersion, kind, fields) for every built-in kind the apiserver serves.
const KINDS: &[(&str, &str, &[Field])] = &[
    // core/v1
    ("v1", "Pod", POD),
    ("v1", "PodTemplate", POD_TEMPLATE),
    ("v1", "ReplicationController", WORKLOAD),
    ("v1", "Service", SERVICE),
    ("v1", "ServiceAccount", SERVICE_ACCOUNT),
    ("v1", "Node", NODE),
    ("v1", "Namespace", WITH_STATUS_CONDITIONS),
    ("v1", "PersistentVolumeClaim", WITH_STATUS_CONDITIONS),
    ("v1", "ComponentStatus", COMPONENT_STATUS),
    ("v1", "ConfigMap", METADATA_ONLY),
    ("v1", "Secret", METADATA_ONLY),
    ("v1", "Endpoints", METADATA_ONLY),
    ("v1", "Event", METADATA_ONLY),
    ("v1", "LimitRange", METADATA_ONLY),
    ("v1", "ResourceQuota", METADATA_ONLY),
    ("v1", "PersistentVolume", METADATA_ONLY),
    ("v1", "Binding", METADATA_ONLY),
    // apps/v1
    ("apps/v1", "Deployment", DEPLOYMENT),
    ("apps/v1", "ReplicaSet", WORKLOAD),
    ("apps/v1", "StatefulSet", WORKLOAD),
    ("apps/v1", "DaemonSet", WORKLOAD),
    ("apps/v1", "ControllerRevision", METADATA_ONLY),
    // batch/v1
    ("batch/v1", "Job", JOB),
    ("batch/v1", "CronJob", CRON_JOB),
    // autoscaling
    (
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        WITH_STATUS_CONDITIONS,
    ),
    ("autoscaling/v1", "HorizontalPodAutoscaler", METADATA_ONLY),
    // policy/v1
    ("policy/v1", "PodDisruptionBudget", POD_DISRUPTION_BUDGET),
    // networking.k8s.io/v1
    ("networking.k8s.io/v1", "Ingress", METADATA_ONLY),
    ("networking.k8s.io/v1", "IngressClass", METADATA_ONLY),
    ("networking.k8s.io/v1", "NetworkPolicy", METADATA_ONLY),
    (
        "networking.k8s.io/v1",
        "ServiceCIDR",
        WITH_STATUS_CONDITIONS,
    ),
    ("networking.k8s.io/v1", "IPAddress", METADATA_ONLY),
    // discovery, coordination, scheduling, node, events
    ("discovery.k8s.io/v1", "EndpointSlice", METADATA_ONLY),
    ("coordination.k8s.io/v1", "Lease", METADATA_ONLY),
    ("scheduling.k8s.io/v1", "PriorityClass", METADATA_ONLY),
    ("node.k8s.io/v1", "RuntimeClass", METADATA_ONLY),
    ("events.k8s.io/v1", "Event", METADATA_ONLY),
    // rbac.authorization.k8s.io/v1
    ("rbac.authorization.k8s.io/v1", "Role", METADATA_ONLY),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", METADATA_ONLY),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", METADATA_ONLY),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        METADATA_ONLY,
    ),
    // storage.k8s.io/v1
    ("storage.k8s.io/v1", "StorageClass", METADATA_ONLY),
    ("storage.k8s.io/v1", "CSIDriver", METADATA_ONLY),
    ("storage.k8s.io/v1", "CSINode", CSI_NODE),
    ("storage.k8s.io/v1", "VolumeAttachment", METADATA_ONLY),
    ("storage.k8s.io/v1", "CSIStorageCapacity", METADATA_ONLY),
    // admissionregistration.k8s.io/v1
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
        WEBHOOK_CONFIGURATION,
    ),
    (
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        WEBHOOK_CONFIGURATION,
    ),
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingAdmissionPolicy",
        VALIDATING_ADMISSION_POLICY,
    ),
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingAdmissionPolicyBinding",
        METADATA_ONLY,
    ),
    // flowcontrol.apiserver.k8s.io/v1
    (
        "flowcontrol.apiserver.k8s.io/v1",
        "FlowSchema",
        WITH_STATUS_CONDITIONS,
    ),
    (
        "flowcontrol.apiserver.k8s.io/v1",
        "PriorityLevelConfiguration",
        WITH_STATUS_CONDITIONS,
    ),
    // certificates, apiextensions
    (
        "certificates.k8s.io/v1",
        "CertificateSigningRequest",
        METADATA_ONLY,
    ),
    (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        METADATA_ONLY,
    ),
];

#[cfg(test)]
mod tests;
