//! Events about what a controller did (created a pod, scaled a
//! ReplicaSet), recorded as core/v1 Events on the object they concern so
//! `kubectl describe` lists them, named as client-go's recorder names them.

use k8s_openapi::api::core::v1::Event;
use kube::{Api, Client, Resource, ResourceExt, api::PostParams};
use serde_json::json;
use tracing::warn;

/// Records a Normal event about `obj` from `component`. Best effort: an
/// event that cannot be written is logged, never retried.
pub(crate) async fn normal<K>(
    client: &Client,
    component: &str,
    obj: &K,
    reason: &str,
    message: &str,
) where
    K: Resource<DynamicType = ()>,
{
    record(client, component, obj, "Normal", reason, message).await;
}

/// Records a Warning event (a failed create, a Job that gave up), as
/// [`normal`] does.
pub(crate) async fn warning<K>(
    client: &Client,
    component: &str,
    obj: &K,
    reason: &str,
    message: &str,
) where
    K: Resource<DynamicType = ()>,
{
    record(client, component, obj, "Warning", reason, message).await;
}

async fn record<K>(
    client: &Client,
    component: &str,
    obj: &K,
    type_: &str,
    reason: &str,
    message: &str,
) where
    K: Resource<DynamicType = ()>,
{
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let stamp = jiff::Timestamp::now();
    let now = stamp.to_string();
    let body = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{name}.{:x}", stamp.as_nanosecond()), "namespace": ns},
        "involvedObject": {
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "namespace": ns,
            "name": name,
            "uid": obj.uid(),
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    let event = match serde_json::from_value::<Event>(body) {
        Ok(event) => event,
        Err(e) => {
            warn!("{component}: building event {reason}: {e}");
            return;
        }
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        warn!(object = %format!("{ns}/{name}"), "{component}: recording event {reason}: {e}");
    }
}
