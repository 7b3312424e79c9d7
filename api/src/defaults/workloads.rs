//! Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs and CronJobs.

use serde_json::{Value, json};

use super::pod::default_pod_spec;
use super::{
    Object, default_pvc_spec, default_str, default_value, existing, items, object, str_of,
};

const REVISION_HISTORY_LIMIT: i64 = 10;
const PROGRESS_DEADLINE_SECONDS: i64 = 600;
const JOB_BACKOFF_LIMIT: i64 = 6;
const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";
const LEGACY_JOB_NAME_LABEL: &str = "job-name";

/// The pod template's spec, when the object has a template.
fn template_spec(spec: &mut Object, restart: bool) {
    if let Some(pod_spec) = existing(spec, "template").and_then(|t| existing(t, "spec")) {
        default_pod_spec(pod_spec, restart);
    }
}

pub(super) fn default_deployment(root: &mut Object) {
    let Some(spec) = object(root, "spec") else {
        return;
    };
    default_value(spec, "replicas", json!(1));
    if let Some(strategy) = object(spec, "strategy") {
        default_str(strategy, "type", "RollingUpdate");
        if str_of(strategy, "type") == "RollingUpdate"
            && let Some(rolling) = object(strategy, "rollingUpdate")
        {
            default_value(rolling, "maxUnavailable", json!("25%"));
            default_value(rolling, "maxSurge", json!("25%"));
        }
    }
    default_value(spec, "revisionHistoryLimit", json!(REVISION_HISTORY_LIMIT));
    default_value(
        spec,
        "progressDeadlineSeconds",
        json!(PROGRESS_DEADLINE_SECONDS),
    );
    template_spec(spec, true);
}

pub(super) fn default_replica_set(root: &mut Object) {
    let Some(spec) = object(root, "spec") else {
        return;
    };
    default_value(spec, "replicas", json!(1));
    template_spec(spec, true);
}

pub(super) fn default_stateful_set(root: &mut Object) {
    let Some(spec) = object(root, "spec") else {
        return;
    };
    default_str(spec, "podManagementPolicy", "OrderedReady");
    if let Some(strategy) = object(spec, "updateStrategy") {
        if str_of(strategy, "type").is_empty() {
            strategy.insert("type".into(), json!("RollingUpdate"));
            default_value(strategy, "rollingUpdate", json!({}));
        }
        if str_of(strategy, "type") == "RollingUpdate"
            && let Some(rolling) = existing(strategy, "rollingUpdate")
        {
            default_value(rolling, "partition", json!(0));
        }
    }
    if let Some(policy) = object(spec, "persistentVolumeClaimRetentionPolicy") {
        default_str(policy, "whenDeleted", "Retain");
        default_str(policy, "whenScaled", "Retain");
    }
    default_value(spec, "replicas", json!(1));
    default_value(spec, "revisionHistoryLimit", json!(REVISION_HISTORY_LIMIT));
    template_spec(spec, true);
    for claim in items(spec, "volumeClaimTemplates") {
        // Embedded claims are written out with their type, as Kubernetes
        // shows them.
        default_str(claim, "apiVersion", "v1");
        default_str(claim, "kind", "PersistentVolumeClaim");
        if let Some(claim_spec) = object(claim, "spec") {
            default_pvc_spec(claim_spec);
        }
        if let Some(status) = object(claim, "status") {
            default_str(status, "phase", "Pending");
        }
    }
}

pub(super) fn default_daemon_set(root: &mut Object) {
    let Some(spec) = object(root, "spec") else {
        return;
    };
    if let Some(strategy) = object(spec, "updateStrategy") {
        default_str(strategy, "type", "RollingUpdate");
        if str_of(strategy, "type") == "RollingUpdate"
            && let Some(rolling) = object(strategy, "rollingUpdate")
        {
            default_value(rolling, "maxUnavailable", json!(1));
            default_value(rolling, "maxSurge", json!(0));
        }
    }
    default_value(spec, "revisionHistoryLimit", json!(REVISION_HISTORY_LIMIT));
    template_spec(spec, true);
}

pub(super) fn default_job(root: &mut Object) {
    let template_labels = root
        .get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .filter(|l| l.is_object())
        .cloned();
    let Some(spec) = object(root, "spec") else {
        return;
    };
    // Both unset: one pod, run once. Parallelism alone: a work queue, where
    // completions stay unset.
    let unset = |s: &Object, k: &str| s.get(k).is_none_or(Value::is_null);
    if unset(spec, "completions") && unset(spec, "parallelism") {
        spec.insert("completions".into(), json!(1));
    }
    default_value(spec, "parallelism", json!(1));
    let backoff = if unset(spec, "backoffLimitPerIndex") {
        JOB_BACKOFF_LIMIT
    } else {
        i64::from(i32::MAX)
    };
    default_value(spec, "backoffLimit", json!(backoff));
    default_value(spec, "completionMode", json!("NonIndexed"));
    default_value(spec, "suspend", json!(false));
    let has_failure_policy = !unset(spec, "podFailurePolicy");
    if let Some(policy) = existing(spec, "podFailurePolicy") {
        for rule in items(policy, "rules") {
            for pattern in items(rule, "onPodConditions") {
                default_str(pattern, "status", "True");
            }
        }
    }
    let replacement = if has_failure_policy {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    default_value(spec, "podReplacementPolicy", json!(replacement));
    template_spec(spec, false);
    // A Job without labels takes its pods' labels.
    if let Some(labels) = template_labels
        && let Some(meta) = object(root, "metadata")
        && meta
            .get("labels")
            .and_then(Value::as_object)
            .is_none_or(|l| l.is_empty())
    {
        meta.insert("labels".into(), labels);
    }
}

/// The selector Kubernetes generates for a Job whose `manualSelector` is not
/// set: its pods carry the Job's uid and name, and the selector picks the
/// uid. Needs both; without them nothing is generated.
pub(super) fn generate_job_selector(root: &mut Object) {
    let meta = root.get("metadata");
    let field = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (uid, name) = (field("uid"), field("name"));
    if uid.is_empty() || name.is_empty() {
        return;
    }
    let Some(spec) = object(root, "spec") else {
        return;
    };
    if spec.get("manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    if let Some(labels) = object(spec, "template")
        .and_then(|t| object(t, "metadata"))
        .and_then(|m| object(m, "labels"))
    {
        for (key, value) in [
            (LEGACY_JOB_NAME_LABEL, &name),
            (JOB_NAME_LABEL, &name),
            (LEGACY_CONTROLLER_UID_LABEL, &uid),
            (CONTROLLER_UID_LABEL, &uid),
        ] {
            labels.entry(key).or_insert_with(|| json!(value));
        }
    }
    if let Some(match_labels) = object(spec, "selector").and_then(|s| object(s, "matchLabels")) {
        match_labels
            .entry(CONTROLLER_UID_LABEL)
            .or_insert_with(|| json!(uid));
    }
}

pub(super) fn default_cron_job(root: &mut Object) {
    let Some(spec) = object(root, "spec") else {
        return;
    };
    default_str(spec, "concurrencyPolicy", "Allow");
    default_value(spec, "suspend", json!(false));
    default_value(spec, "successfulJobsHistoryLimit", json!(3));
    default_value(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(job_spec) = existing(spec, "jobTemplate").and_then(|t| existing(t, "spec")) {
        template_spec(job_spec, false);
    }
}
