//! `POST pods/<name>/eviction` (policy/v1 Eviction, as `kubectl drain`
//! sends it): deletes the pod unless that would break the
//! PodDisruptionBudget covering it. An allowed eviction takes one from the
//! budget's `status.disruptionsAllowed` (a compare-and-swap on the budget,
//! retried on conflict) and records the pod in `status.disruptedPods`, so
//! the disruption controller does not count it healthy before its deletion
//! shows; a refused one is a 429 in Kubernetes' words.

use serde_json::{Value, json};
use shoal_api::Kind;

use super::{
    Body, PATCH_RETRIES, Reply, Resources, Written, decode_body, delete_options, object_key,
};
use crate::{request::Query, status::ApiError};

/// Kubernetes' refusal message.
pub const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

fn too_many_requests(cause: String) -> ApiError {
    ApiError {
        code: 429,
        reason: "TooManyRequests",
        message: VIOLATION.to_string(),
        details: Some(json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]})),
    }
}

/// Whether a `metav1.LabelSelector` (as JSON) selects `labels`; a missing
/// or empty selector selects nothing, as for PodDisruptionBudgets in policy/v1
/// an empty one selects every pod.
pub(crate) fn selects(selector: Option<&Value>, labels: &Value) -> bool {
    let Some(selector) = selector.filter(|s| s.is_object()) else {
        return false;
    };
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let match_labels_ok = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let expressions_ok = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let have = label(key);
            match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => have.is_some_and(|v| values.contains(&v)),
                "NotIn" => have.is_none_or(|v| !values.contains(&v)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        });
    match_labels_ok && expressions_ok
}

fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

impl Resources {
    /// Evicts a pod, honouring its PodDisruptionBudget.
    pub(super) async fn evict(
        &self,
        kind: &'static Kind,
        ns: Option<&str>,
        name: &str,
        body: Body<'_>,
    ) -> Result<Reply, ApiError> {
        let eviction = decode_body(&body)?;
        let ns = ns.unwrap_or("default");
        let options = eviction
            .get("deleteOptions")
            .filter(|o| o.is_object())
            .map(|o| serde_json::to_vec(o).unwrap_or_default())
            .unwrap_or_default();
        let opts = delete_options(
            &Body {
                content_type: "application/json",
                bytes: &options,
            },
            &Query::default(),
        )?;
        let key = object_key(kind, Some(ns), name);
        let pod = self.get_stored(kind, &key, name).await?.value;
        let phase = pod.pointer("/status/phase").and_then(Value::as_str);
        // As Kubernetes: a pod that is done, not yet running, or already
        // going is deleted without asking any budget.
        let exempt = matches!(phase, Some("Succeeded" | "Failed" | "Pending"))
            || pod
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|t| !t.is_null());
        if !exempt {
            self.take_from_budget(ns, name, &pod).await?;
        }
        self.delete(kind, &key, name, &opts).await?;
        Ok(Reply::json(
            201,
            &crate::status::success(json!({"name": name, "kind": "pods"})),
        ))
    }

    async fn take_from_budget(&self, ns: &str, name: &str, pod: &Value) -> Result<(), ApiError> {
        let Some(pdb_kind) = shoal_api::find_resource("policy", "v1", "poddisruptionbudgets")
        else {
            return Ok(());
        };
        let labels = pod
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or_else(|| json!({}));
        for _ in 0..PATCH_RETRIES {
            let prefix = format!("/registry/poddisruptionbudgets/{ns}/");
            let page = self.storage.list(&prefix, None, 0, None).await?;
            let matching: Vec<_> = page
                .items
                .into_iter()
                .filter(|(_, s)| selects(s.value.pointer("/spec/selector"), &labels))
                .collect();
            let Some((pdb_key, stored)) = matching.first() else {
                return Ok(());
            };
            if matching.len() > 1 {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
            let mut pdb = stored.value.clone();
            let pdb_name = pdb
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let generation = pdb.pointer("/metadata/generation").and_then(Value::as_i64);
            let observed = pdb
                .pointer("/status/observedGeneration")
                .and_then(Value::as_i64);
            if observed.is_none() || observed < generation {
                return Err(too_many_requests(format!(
                    "The disruption budget {pdb_name} is still being processed by the server."
                )));
            }
            let status = |k: &str| pdb.pointer(&format!("/status/{k}")).and_then(Value::as_i64);
            let healthy = status("currentHealthy").unwrap_or(0);
            let desired = status("desiredHealthy").unwrap_or(0);
            // An unready pod may go while the budget is met without it
            // (unhealthyPodEvictionPolicy IfHealthyBudget).
            if !pod_ready(pod) && healthy >= desired {
                return Ok(());
            }
            let allowed = status("disruptionsAllowed").unwrap_or(0);
            if allowed <= 0 {
                return Err(too_many_requests(format!(
                    "The disruption budget {pdb_name} needs {desired} healthy pods and has {healthy} currently"
                )));
            }
            pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
            if !pdb["status"]["disruptedPods"].is_object() {
                pdb["status"]["disruptedPods"] = json!({});
            }
            pdb["status"]["disruptedPods"][name] = json!(super::now());
            match self.storage.update(pdb_key, &pdb, stored.rev).await? {
                Written::Ok(_) => return Ok(()),
                Written::Rejected(_) | Written::Taken(_) => continue,
            }
        }
        Err(ApiError::conflict(
            pdb_kind.group,
            pdb_kind.plural,
            "the pod's disruption budget",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_select_pods_by_labels_and_expressions() {
        let labels = json!({"app": "web", "tier": "front"});
        let cases = [
            (json!({"matchLabels": {"app": "web"}}), true),
            (json!({"matchLabels": {"app": "db"}}), false),
            (json!({}), true),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "back"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
                false,
            ),
        ];
        for (selector, want) in cases {
            assert_eq!(selects(Some(&selector), &labels), want, "{selector}");
        }
        assert!(!selects(None, &labels), "no selector selects nothing");
    }
}
