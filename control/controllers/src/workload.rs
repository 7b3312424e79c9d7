//! What the workload controllers share about pods and owners: the
//! controller reference, label selectors, and when a pod counts as active,
//! ready and available.

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::Pod,
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    core::{NamespaceResourceScope, Selector},
};

/// The owner reference marked `controller: true`, if any.
pub(crate) fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// A reference to `owner` as the controller of a dependent, blocking the
/// owner's foreground deletion until the dependent is gone.
pub(crate) fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    let mut r = owner.controller_owner_ref(&())?;
    r.block_owner_deletion = Some(true);
    Some(r)
}

/// The pods of `listed` (those `owner`'s selector matches) that `owner`
/// controls, orphans adopted first unless `owner` is being deleted, as
/// Kubernetes' controller-ref manager does.
pub(crate) async fn owned_pods<K: Resource<DynamicType = ()>>(
    api: &Api<Pod>,
    owner: &K,
    listed: Vec<Pod>,
) -> Result<Vec<Pod>, kube::Error> {
    let uid = owner.uid().unwrap_or_default();
    let deleting = owner.meta().deletion_timestamp.is_some();
    let mut mine = Vec::new();
    for pod in listed {
        match controller_of(&pod.metadata) {
            Some(o) if o.uid == uid => mine.push(pod),
            Some(_) => {}
            None if !deleting && pod.metadata.deletion_timestamp.is_none() => {
                if let Some(pod) = adopt(api, owner, pod).await? {
                    mine.push(pod);
                }
            }
            None => {}
        }
    }
    Ok(mine)
}

/// Makes `owner` the controller of an orphan pod its selector matches;
/// none when the pod changed or went meanwhile (the next reconcile sees it
/// again).
async fn adopt<K: Resource<DynamicType = ()>>(
    api: &Api<Pod>,
    owner: &K,
    mut pod: Pod,
) -> Result<Option<Pod>, kube::Error> {
    let Some(owner_ref) = controller_ref(owner) else {
        return Ok(None);
    };
    let pod_name = pod.name_any();
    pod.metadata
        .owner_references
        .get_or_insert_with(Vec::new)
        .push(owner_ref);
    match api.replace(&pod_name, &PostParams::default(), &pod).await {
        Ok(pod) => {
            tracing::info!(owner = %format!("{}/{}", K::kind(&()), owner.name_any()), pod = %pod_name, "adopted an orphan pod");
            Ok(Some(pod))
        }
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// A label selector as kube's `Selector`; none when it is missing, empty
/// (Kubernetes refuses empty selectors for workloads) or malformed.
pub(crate) fn selector(sel: Option<&LabelSelector>) -> Option<Selector> {
    let sel = sel?;
    let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty());
    if empty {
        return None;
    }
    Selector::try_from(sel.clone()).ok()
}

/// A pod that counts toward replicas: not finished and not being deleted.
pub(crate) fn pod_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// How long the pod has been Ready, or none when it is not.
pub(crate) fn ready_for(pod: &Pod, now: jiff::Timestamp) -> Option<Duration> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    let since = cond
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    Some(
        now.duration_since(since)
            .unsigned_abs()
            .min(Duration::from_secs(u64::from(u32::MAX))),
    )
    .map(|d| if since > now { Duration::ZERO } else { d })
}

/// Ready for at least `min_ready_seconds`.
pub(crate) fn pod_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    let need = Duration::from_secs(u64::try_from(min_ready_seconds.max(0)).unwrap_or(0));
    ready_for(pod, now).is_some_and(|d| d >= need)
}

/// Merge-patches `status` onto `obj` through its status subresource.
pub(crate) async fn patch_status<K>(
    client: &Client,
    obj: &K,
    status: &impl serde::Serialize,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
}
