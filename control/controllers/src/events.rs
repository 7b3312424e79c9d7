//! Events about what a controller did (created a pod, scaled a
//! ReplicaSet), recorded as core/v1 Events on the object they concern so
//! `kubectl describe` lists them, named as client-go's recorder names them.
//!
//! Like client-go's recorder, recording never waits for the API (the write
//! runs on its own task; the time stamp is taken when the event happens)
//! and a spam filter keeps one source from flooding the API about one
//! object: a bucket of 25 events per (component, object) refilled at one
//! per 5 minutes (`EventSourceObjectSpamFilter`'s defaults); events past
//! it are dropped. A ReplicaSet of 3,000 pods thus records 25
//! SuccessfulCreate events, as kube-controller-manager does.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Event;
use kube::{Api, Client, Resource, ResourceExt, api::PostParams};
use serde_json::json;
use tracing::{debug, warn};

/// client-go's `defaultSpamBurst`.
const SPAM_BURST: f64 = 25.0;
/// client-go's `defaultSpamQPS`: one event per 5 minutes.
const SPAM_REFILL: Duration = Duration::from_secs(300);
/// Buckets kept before full ones are forgotten.
const SPAM_KEYS: usize = 4096;

/// Per (component, object) token buckets: (tokens, last refill).
fn buckets() -> &'static Mutex<HashMap<String, (f64, Instant)>> {
    static BUCKETS: OnceLock<Mutex<HashMap<String, (f64, Instant)>>> = OnceLock::new();
    BUCKETS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Takes a token from `key`'s bucket; false when it is empty.
fn allow(key: &str, now: Instant) -> bool {
    let Ok(mut map) = buckets().lock() else {
        return true;
    };
    let refill = |(tokens, at): (f64, Instant)| {
        let gained = now.saturating_duration_since(at).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        (tokens + gained).min(SPAM_BURST)
    };
    if map.len() >= SPAM_KEYS {
        map.retain(|_, b| refill(*b) < SPAM_BURST);
    }
    let tokens = map.get(key).copied().map_or(SPAM_BURST, refill);
    if tokens < 1.0 {
        map.insert(key.to_owned(), (tokens, now));
        return false;
    }
    map.insert(key.to_owned(), (tokens - 1.0, now));
    true
}

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
    let key = format!(
        "{component}/{}/{}/{ns}/{name}/{}",
        K::api_version(&()),
        K::kind(&()),
        obj.uid().unwrap_or_default()
    );
    if !allow(&key, Instant::now()) {
        debug!(object = %format!("{ns}/{name}"), "{component}: event {reason} dropped by the spam filter");
        return;
    }
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let (component, reason) = (component.to_owned(), reason.to_owned());
    tokio::spawn(async move {
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            warn!(object = %format!("{ns}/{name}"), "{component}: recording event {reason}: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_gets_25_events_per_object_then_one_per_5_minutes() {
        let t0 = Instant::now();
        let key = "test-spam/apps/v1/ReplicaSet/ns/web/uid-1";
        let allowed = (0..3000).filter(|_| allow(key, t0)).count();
        assert_eq!(allowed, 25, "a burst of 25, the rest dropped");
        assert!(!allow(key, t0 + Duration::from_secs(299)));
        assert!(
            allow(key, t0 + Duration::from_secs(301)),
            "refilled after 5 minutes"
        );
        assert!(
            allow("test-spam/apps/v1/ReplicaSet/ns/other/uid-2", t0),
            "another object has its own bucket"
        );
    }
}
