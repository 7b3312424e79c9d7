//! Security identities (`shoal.io/v1alpha1` `Identity`, cluster-scoped): a
//! number per distinct security-relevant label set, agreed on by every
//! node, which NetworkPolicy is compiled against.
//!
//! An Identity is named by its number and holds the label set in
//! `securityLabels`. The set is a pod's labels (minus the per-rollout
//! hashes Cilium also drops, so a rollout keeps its identity), the pod's
//! namespace as [`NAMESPACE_LABEL`], and the namespace's labels each
//! prefixed with [`NAMESPACE_LABELS_PREFIX`].
//!
//! Allocation is create-if-absent at a number derived from the label set:
//! [`preferred_number`] hashes the set (FNV-1a over the sorted pairs, the
//! same on every node and every build) into the cluster range; the
//! allocator tries to create that name, and on a conflict reads the
//! existing object: same labels, that is the identity; other labels (a
//! hash collision), try [`next_number`]. Every node walks the same
//! sequence, so two nodes racing for one label set meet at one number.

use std::collections::BTreeMap;

/// API group of shoal's own kinds.
pub const GROUP: &str = "shoal.io";
/// Version of shoal's own kinds.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of an Identity.
pub const API_VERSION: &str = "shoal.io/v1alpha1";
/// `kind` of an Identity.
pub const KIND: &str = "Identity";
/// Resource name of Identities.
pub const PLURAL: &str = "identities";
/// The field holding the label set.
pub const LABELS_FIELD: &str = "securityLabels";

/// The label naming the pod's namespace, as in Cilium and Kubernetes.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix of the namespace's own labels in a label set.
pub const NAMESPACE_LABELS_PREFIX: &str = "shoal.io/namespace.labels.";

/// Pod labels left out of the set: they change with every rollout
/// (Deployments, StatefulSets, DaemonSets) and would give each revision a
/// new identity. A NetworkPolicy selecting on them matches nothing.
pub const IGNORED_POD_LABELS: &[&str] = &["pod-template-hash", "controller-revision-hash"];

/// First number of a cluster-wide identity (below: reserved ones).
pub const MIN: u32 = 256;
/// Last number of a cluster-wide identity.
pub const MAX: u32 = 65_535;

/// A label set: sorted key → value.
pub type Labels = BTreeMap<String, String>;

/// The security label set of a pod with `pod_labels` in namespace
/// `namespace` whose own labels are `namespace_labels`.
pub fn security_labels<'a>(
    pod_labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    namespace: &str,
    namespace_labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Labels {
    let mut set: Labels = pod_labels
        .into_iter()
        .filter(|(k, _)| !IGNORED_POD_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    set.insert(NAMESPACE_LABEL.to_string(), namespace.to_string());
    for (k, v) in namespace_labels {
        set.insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
    }
    set
}

/// The pod's own labels of a label set (namespace entries left out).
pub fn pod_labels(set: &Labels) -> Labels {
    set.iter()
        .filter(|(k, _)| *k != NAMESPACE_LABEL && !k.starts_with(NAMESPACE_LABELS_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The namespace's labels of a label set, prefix removed.
pub fn namespace_labels(set: &Labels) -> Labels {
    set.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(NAMESPACE_LABELS_PREFIX)
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect()
}

/// The namespace of a label set.
pub fn namespace(set: &Labels) -> Option<&str> {
    set.get(NAMESPACE_LABEL).map(String::as_str)
}

/// The first number tried for `set`: a stable hash into `MIN..=MAX`.
pub fn preferred_number(set: &Labels) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for (k, v) in set {
        // A separator byte that cannot appear in keys or values keeps
        // ("ab","c") and ("a","bc") apart.
        for byte in k.bytes().chain([0]).chain(v.bytes()).chain([0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    let span = u64::from(MAX - MIN + 1);
    // The remainder is below `span`, which fits in u32.
    MIN + u32::try_from(hash % span).unwrap_or(0)
}

/// The number tried after `n` collided: the next one, wrapping in range.
pub fn next_number(n: u32) -> u32 {
    if n >= MAX { MIN } else { n + 1 }
}

/// The number of an Identity named `name`, if it is one in range.
pub fn parse_name(name: &str) -> Option<u32> {
    if name.starts_with('0') || name.starts_with('+') {
        return None;
    }
    name.parse::<u32>().ok().filter(|n| (MIN..=MAX).contains(n))
}

/// An `Identity` object as stored; the API reads objects through it to
/// find unknown fields (`fieldValidation=Strict`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// `shoal.io/v1alpha1`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// `Identity`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Name (the number), labels, timestamps.
    #[serde(default)]
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    /// The label set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub security_labels: Labels,
}

/// An Identity object for `number` holding `set`.
pub fn object(number: u32, set: &Labels) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": number.to_string()},
        LABELS_FIELD: set,
    })
}

/// The label set of an Identity object; `None` when the field is missing
/// or not a map of strings.
pub fn labels_of(obj: &serde_json::Value) -> Option<Labels> {
    let map = obj.get(LABELS_FIELD)?.as_object()?;
    map.iter()
        .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
        .collect()
}

#[cfg(test)]
mod tests;
