//! Strict decoding (`fieldValidation=Strict|Warn`): the fields of an object
//! that its kind's schema does not have. The object is decoded into its
//! k8s-openapi type, which drops what it does not know, and encoded again;
//! whatever the input has and the output lacks is unknown.

use k8s_openapi::api;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::Segment;

use crate::Kind;

/// How many values of the wrong type are set aside before giving up; each
/// costs one more decode of the object.
const MAX_REPAIRS: usize = 32;

/// The paths in `obj` that `kind`'s schema does not know, as Kubernetes
/// spells them in `unknown field "spec.containers[0].imagee"`. Empty for
/// kinds without a typed schema here. `null` values are ignored, as Go's
/// decoder ignores them; values of the wrong type are a decode error, not an
/// unknown field, and only hide unknown fields beneath them.
pub fn unknown_fields(kind: &Kind, obj: &Value) -> Vec<String> {
    let Some((known, pruned)) = roundtrip(kind, obj) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    collect(obj, &known, &mut Vec::new(), &pruned, &mut out);
    out
}

/// Kubernetes' error for a strict request with unknown fields: `strict
/// decoding error: unknown field "a", unknown field "b"`.
pub fn strict_error_message(unknown: &[String]) -> String {
    let fields: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    format!("strict decoding error: {}", fields.join(", "))
}

/// One step of a path through a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn roundtrip(kind: &Kind, obj: &Value) -> Option<(Value, Vec<Vec<Step>>)> {
    use api::{
        apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch,
        certificates::v1 as certificates, coordination::v1 as coordination, core::v1 as core,
        discovery::v1 as discovery, events::v1 as events, networking::v1 as networking,
        node::v1 as node, policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as scheduling,
        storage::v1 as storage,
    };
    match (kind.group, kind.version, kind.kind) {
        ("", "v1", "Namespace") => typed::<core::Namespace>(obj),
        ("", "v1", "Pod") => typed::<core::Pod>(obj),
        ("", "v1", "Binding") => typed::<core::Binding>(obj),
        ("", "v1", "Service") => typed::<core::Service>(obj),
        ("", "v1", "Endpoints") => typed::<core::Endpoints>(obj),
        ("", "v1", "Node") => typed::<core::Node>(obj),
        ("", "v1", "ConfigMap") => typed::<core::ConfigMap>(obj),
        ("", "v1", "Secret") => typed::<core::Secret>(obj),
        ("", "v1", "ServiceAccount") => typed::<core::ServiceAccount>(obj),
        ("", "v1", "PersistentVolume") => typed::<core::PersistentVolume>(obj),
        ("", "v1", "PersistentVolumeClaim") => typed::<core::PersistentVolumeClaim>(obj),
        ("", "v1", "Event") => typed::<core::Event>(obj),
        ("", "v1", "ResourceQuota") => typed::<core::ResourceQuota>(obj),
        ("", "v1", "LimitRange") => typed::<core::LimitRange>(obj),
        ("apps", "v1", "Deployment") => typed::<apps::Deployment>(obj),
        ("apps", "v1", "ReplicaSet") => typed::<apps::ReplicaSet>(obj),
        ("apps", "v1", "StatefulSet") => typed::<apps::StatefulSet>(obj),
        ("apps", "v1", "DaemonSet") => typed::<apps::DaemonSet>(obj),
        ("apps", "v1", "ControllerRevision") => typed::<apps::ControllerRevision>(obj),
        ("batch", "v1", "Job") => typed::<batch::Job>(obj),
        ("batch", "v1", "CronJob") => typed::<batch::CronJob>(obj),
        ("discovery.k8s.io", "v1", "EndpointSlice") => typed::<discovery::EndpointSlice>(obj),
        ("networking.k8s.io", "v1", "Ingress") => typed::<networking::Ingress>(obj),
        ("networking.k8s.io", "v1", "IngressClass") => typed::<networking::IngressClass>(obj),
        ("networking.k8s.io", "v1", "NetworkPolicy") => typed::<networking::NetworkPolicy>(obj),
        ("autoscaling", "v2", "HorizontalPodAutoscaler") => {
            typed::<autoscaling::HorizontalPodAutoscaler>(obj)
        }
        ("storage.k8s.io", "v1", "StorageClass") => typed::<storage::StorageClass>(obj),
        ("coordination.k8s.io", "v1", "Lease") => typed::<coordination::Lease>(obj),
        ("certificates.k8s.io", "v1", "CertificateSigningRequest") => {
            typed::<certificates::CertificateSigningRequest>(obj)
        }
        ("rbac.authorization.k8s.io", "v1", "Role") => typed::<rbac::Role>(obj),
        ("rbac.authorization.k8s.io", "v1", "ClusterRole") => typed::<rbac::ClusterRole>(obj),
        ("rbac.authorization.k8s.io", "v1", "RoleBinding") => typed::<rbac::RoleBinding>(obj),
        ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding") => {
            typed::<rbac::ClusterRoleBinding>(obj)
        }
        ("scheduling.k8s.io", "v1", "PriorityClass") => typed::<scheduling::PriorityClass>(obj),
        ("node.k8s.io", "v1", "RuntimeClass") => typed::<node::RuntimeClass>(obj),
        ("policy", "v1", "PodDisruptionBudget") => typed::<policy::PodDisruptionBudget>(obj),
        ("events.k8s.io", "v1", "Event") => typed::<events::Event>(obj),
        ("shoal.io", "v1alpha1", "Identity") => typed::<crate::identity::Identity>(obj),
        _ => None,
    }
}

/// Decodes and re-encodes `obj` as `T`. A value of the wrong type stops
/// the decoder; it is set aside (and remembered, so it is not reported as
/// unknown) and decoding tried again.
fn typed<T: DeserializeOwned + Serialize>(obj: &Value) -> Option<(Value, Vec<Vec<Step>>)> {
    let mut input = obj.clone();
    super::strip_nulls(&mut input);
    let mut pruned = Vec::new();
    for _ in 0..MAX_REPAIRS {
        let err = match serde_path_to_error::deserialize::<_, T>(&input) {
            Ok(typed) => return serde_json::to_value(&typed).ok().map(|v| (v, pruned)),
            Err(err) => err,
        };
        let steps: Vec<Step> = err
            .path()
            .iter()
            .filter_map(|s| match s {
                Segment::Seq { index } => Some(Step::Index(*index)),
                Segment::Map { key } => Some(Step::Key(key.clone())),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .collect();
        let steps = remove_at(&mut input, &steps)?;
        pruned.push(steps);
    }
    None
}

/// Removes the member holding the value at `steps`, going up to the nearest
/// object member so the remaining document keeps its indices; returns the
/// path removed.
fn remove_at(doc: &mut Value, steps: &[Step]) -> Option<Vec<Step>> {
    let last_key = steps.iter().rposition(|s| matches!(s, Step::Key(_)))?;
    let (parent, key) = steps.split_at(last_key);
    let Some(Step::Key(key)) = key.first() else {
        return None;
    };
    let mut node = doc;
    for step in parent {
        node = match step {
            Step::Key(k) => node.get_mut(k.as_str())?,
            Step::Index(i) => node.get_mut(*i)?,
        };
    }
    node.as_object_mut()?.remove(key)?;
    steps.get(..=last_key).map(<[Step]>::to_vec)
}

fn render(steps: &[Step]) -> String {
    let mut out = String::new();
    for s in steps {
        match s {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn collect(
    input: &Value,
    known: &Value,
    at: &mut Vec<Step>,
    pruned: &[Vec<Step>],
    out: &mut Vec<String>,
) {
    if pruned.iter().any(|p| p == at) {
        return;
    }
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            for (key, v) in i {
                if v.is_null() {
                    continue;
                }
                at.push(Step::Key(key.clone()));
                match k.get(key) {
                    Some(kv) => collect(v, kv, at, pruned, out),
                    None if !pruned.iter().any(|p| p == at) => out.push(render(at)),
                    None => {}
                }
                at.pop();
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (idx, (v, kv)) in i.iter().zip(k).enumerate() {
                at.push(Step::Index(idx));
                collect(v, kv, at, pruned, out);
                at.pop();
            }
        }
        _ => {}
    }
}
