//! The mesh's mutating admission step: a new pod whose namespace is
//! labelled `shoal.io/inject=enabled`, or that is annotated
//! `shoal.io/inject: "true"` (and not `"false"`), gets the sidecar as a
//! native sidecar from the template in `shoal_sidecar::inject`. It runs
//! before the ServiceAccount plugin, so the sidecar is admitted like any
//! container the user wrote.

use serde_json::{Value, json};
use shoal_sidecar::inject::{self, Injection};

use crate::{rest::object_key, status::ApiError, storage::Storage};

/// Adds the sidecar to `pod` when it asks for it. `injection` is `None`
/// when this server does not know an address of the mesh CA that pods
/// reach: such a pod is refused, naming the flag to give.
pub(crate) async fn admit_pod(
    storage: &Storage,
    injection: Option<&Injection>,
    pod: &mut Value,
) -> Result<(), ApiError> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let kind = shoal_api::find_resource("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not served"))?;
    // From the store, not the watch cache: a label set moments ago counts.
    let namespace = storage.get(&object_key(kind, None, &ns)).await?;
    let labels = namespace
        .as_ref()
        .and_then(|n| n.value.pointer("/metadata/labels"))
        .and_then(Value::as_object);
    if !inject::wanted(pod, labels) {
        return Ok(());
    }
    let Some(injection) = injection else {
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        return Err(ApiError {
            details: Some(json!({"name": name, "kind": "pods"})),
            ..ApiError::forbidden(format!(
                "pods \"{name}\" is forbidden: it asks for the mesh sidecar ({} on the pod or its namespace {ns}) but this API server knows no address of the mesh CA that pods reach: start shoal server with --listen on an address of the node or with --mesh-ca-listen, or set {}: \"false\" on the pod",
                inject::INJECT_KEY,
                inject::INJECT_KEY,
            ))
        });
    };
    inject::inject(pod, injection);
    Ok(())
}
