//! Deployments, ReplicaSets, StatefulSets and DaemonSets: selectors that
//! match their templates, update strategies, and what may change later.

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec, StatefulSet,
    StatefulSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta;
use super::names::{self, NameRule};
use super::path::Path;
use super::pod::{self, semantic_json};
use super::{FieldError, go_value};

const NEGATIVE_MSG: &str = "must be greater than or equal to 0";
const SELECTOR_MISMATCH: &str = "`selector` does not match template `labels`";

fn non_negative(value: Option<i32>, path: &Path) -> Option<FieldError> {
    value
        .filter(|v| *v < 0)
        .map(|v| FieldError::invalid(path, v.to_string(), NEGATIVE_MSG))
}

fn template_labels(t: &PodTemplateSpec) -> Option<&std::collections::BTreeMap<String, String>> {
    t.metadata.as_ref().and_then(|m| m.labels.as_ref())
}

fn is_empty_selector(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty())
}

/// The selector checks shared by Deployments, ReplicaSets and
/// StatefulSets: required, well formed, not empty. `present` says whether
/// the object carried a selector at all (the typed form cannot tell).
fn validate_selector(
    sel: &LabelSelector,
    present: bool,
    what: &str,
    path: &Path,
) -> Vec<FieldError> {
    if !present {
        return vec![FieldError::required(path, "")];
    }
    let mut errs = meta::validate_label_selector(sel, path);
    if is_empty_selector(sel) {
        errs.push(FieldError::invalid(
            path,
            go_value::label_selector(sel),
            format!("empty selector is invalid for {what}"),
        ));
    }
    errs
}

/// `ValidatePodTemplateSpecForReplicaSet`.
fn validate_template_for_replicas(
    t: &PodTemplateSpec,
    selector: Option<&LabelSelector>,
    kind: &str,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    errs.extend(selector_mismatch(t, selector, path));
    errs.extend(pod::validate_pod_template_spec(t, path));
    errs.extend(always_restart(t, kind, path));
    errs
}

/// A missing selector matches nothing, so the template never matches it.
fn selector_mismatch(
    t: &PodTemplateSpec,
    selector: Option<&LabelSelector>,
    path: &Path,
) -> Option<FieldError> {
    let labels = template_labels(t);
    let matches = match selector {
        None => Some(false),
        Some(sel) if is_empty_selector(sel) => Some(true),
        Some(sel) => meta::selector_matches(sel, labels),
    };
    (matches == Some(false)).then(|| {
        FieldError::invalid(
            &path.child("metadata").child("labels"),
            go_value::string_map(labels),
            SELECTOR_MISMATCH,
        )
    })
}

fn always_restart(t: &PodTemplateSpec, kind: &str, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = t.spec.as_ref();
    if let Some(policy) = spec.and_then(|s| s.restart_policy.as_deref())
        && policy != "Always"
    {
        errs.push(FieldError::not_supported(
            &path.child("spec").child("restartPolicy"),
            policy,
            &["Always"],
        ));
    }
    if spec.is_some_and(|s| s.active_deadline_seconds.is_some()) {
        errs.push(FieldError::forbidden(
            &path.child("spec").child("activeDeadlineSeconds"),
            format!("activeDeadlineSeconds in {kind} is not Supported"),
        ));
    }
    errs
}

fn meta_checks(new: &ObjectMeta, old: Option<&ObjectMeta>, rule: NameRule) -> Vec<FieldError> {
    let path = Path::new("metadata");
    let mut errs = Vec::new();
    if let Some(old) = old {
        errs.extend(meta::validate_object_meta_update(new, old, &path));
    }
    errs.extend(meta::validate_object_meta(new, rule, &path));
    errs
}

/// A Deployment on create or update. `present` says whether the object
/// carried `spec.selector`: the typed form fills a missing one in.
pub(crate) fn validate_deployment(
    d: &Deployment,
    present: bool,
    old: Option<&Deployment>,
) -> Vec<FieldError> {
    let mut errs = meta_checks(&d.metadata, old.map(|o| &o.metadata), NameRule::Subdomain);
    let empty = DeploymentSpec::default();
    let spec = d.spec.as_ref().unwrap_or(&empty);
    let path = Path::new("spec");
    errs.extend(non_negative(spec.replicas, &path.child("replicas")));
    errs.extend(validate_selector(
        &spec.selector,
        present,
        "deployment",
        &path.child("selector"),
    ));
    errs.extend(validate_template_for_replicas(
        &spec.template,
        present.then_some(&spec.selector),
        "ReplicaSet",
        &path.child("template"),
    ));
    if let Some(strategy) = &spec.strategy {
        let sp = path.child("strategy");
        match strategy.type_.as_deref().unwrap_or("RollingUpdate") {
            "Recreate" => {
                if strategy.rolling_update.is_some() {
                    errs.push(FieldError::forbidden(
                        &sp.child("rollingUpdate"),
                        "may not be specified when strategy `type` is 'Recreate'",
                    ));
                }
            }
            "RollingUpdate" => {
                if let Some(ru) = &strategy.rolling_update {
                    let rp = sp.child("rollingUpdate");
                    let unavailable = ru
                        .max_unavailable
                        .clone()
                        .unwrap_or(IntOrString::String("25%".into()));
                    let surge = ru
                        .max_surge
                        .clone()
                        .unwrap_or(IntOrString::String("25%".into()));
                    errs.extend(positive_int_or_percent(
                        &unavailable,
                        &rp.child("maxUnavailable"),
                    ));
                    errs.extend(positive_int_or_percent(&surge, &rp.child("maxSurge")));
                    if int_or_percent_value(&unavailable) == 0 && int_or_percent_value(&surge) == 0
                    {
                        errs.push(FieldError::invalid(
                            &rp.child("maxUnavailable"),
                            go_value::int_or_string(&unavailable),
                            "may not be 0 when `maxSurge` is 0",
                        ));
                    }
                    errs.extend(not_more_than_100_percent(
                        &unavailable,
                        &rp.child("maxUnavailable"),
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                &sp.child("type"),
                other,
                &["Recreate", "RollingUpdate"],
            )),
        }
    }
    errs.extend(non_negative(
        spec.min_ready_seconds,
        &path.child("minReadySeconds"),
    ));
    errs.extend(non_negative(
        spec.revision_history_limit,
        &path.child("revisionHistoryLimit"),
    ));
    if let Some(pds) = spec.progress_deadline_seconds {
        errs.extend(non_negative(
            Some(pds),
            &path.child("progressDeadlineSeconds"),
        ));
        if pds <= spec.min_ready_seconds.unwrap_or(0) {
            errs.push(FieldError::invalid(
                &path.child("progressDeadlineSeconds"),
                pds.to_string(),
                "must be greater than minReadySeconds",
            ));
        }
    }
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        errs.extend(meta::immutable_selector(
            Some(&spec.selector),
            Some(&old_spec.selector),
            &path.child("selector"),
        ));
    }
    errs
}

/// A ReplicaSet on create or update.
pub(crate) fn validate_replica_set(
    rs: &ReplicaSet,
    present: bool,
    old: Option<&ReplicaSet>,
) -> Vec<FieldError> {
    let mut errs = meta_checks(&rs.metadata, old.map(|o| &o.metadata), NameRule::Subdomain);
    let empty = ReplicaSetSpec::default();
    let spec = rs.spec.as_ref().unwrap_or(&empty);
    let path = Path::new("spec");
    errs.extend(non_negative(spec.replicas, &path.child("replicas")));
    errs.extend(non_negative(
        spec.min_ready_seconds,
        &path.child("minReadySeconds"),
    ));
    // Kubernetes words this one as for deployments too.
    errs.extend(validate_selector(
        &spec.selector,
        present,
        "deployment",
        &path.child("selector"),
    ));
    match &spec.template {
        Some(t) => errs.extend(validate_template_for_replicas(
            t,
            present.then_some(&spec.selector),
            "ReplicaSet",
            &path.child("template"),
        )),
        None => errs.push(FieldError::required(&path.child("template"), "")),
    }
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        errs.extend(meta::immutable_selector(
            Some(&spec.selector),
            Some(&old_spec.selector),
            &path.child("selector"),
        ));
    }
    errs
}

/// A StatefulSet on create or update.
pub(crate) fn validate_stateful_set(
    ss: &StatefulSet,
    present: bool,
    old: Option<&StatefulSet>,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let path = Path::new("spec");
    let empty = StatefulSetSpec::default();
    let spec = ss.spec.as_ref().unwrap_or(&empty);
    match old {
        // Names are not checked again on update: older releases accepted
        // subdomains, and such objects must stay deletable.
        Some(old) => errs.extend(meta::validate_object_meta_update(
            &ss.metadata,
            &old.metadata,
            &Path::new("metadata"),
        )),
        None => errs.extend(meta::validate_object_meta(
            &ss.metadata,
            NameRule::Label,
            &Path::new("metadata"),
        )),
    }
    match spec.pod_management_policy.as_deref() {
        None | Some("OrderedReady" | "Parallel") => {}
        Some("") => errs.push(FieldError::required(&path.child("podManagementPolicy"), "")),
        Some(other) => errs.push(FieldError::invalid_str(
            &path.child("podManagementPolicy"),
            other,
            "must be 'OrderedReady' or 'Parallel'",
        )),
    }
    if let Some(strategy) = &spec.update_strategy {
        let sp = path.child("updateStrategy");
        match strategy.type_.as_deref() {
            Some("OnDelete") => {
                if strategy.rolling_update.is_some() {
                    errs.push(FieldError::invalid(
                        &sp.child("rollingUpdate"),
                        "apps.RollingUpdateStatefulSetStrategy{...}",
                        "only allowed for updateStrategy 'RollingUpdate'",
                    ));
                }
            }
            None | Some("RollingUpdate") => {
                if let Some(ru) = &strategy.rolling_update {
                    let rp = sp.child("rollingUpdate");
                    errs.extend(non_negative(ru.partition, &rp.child("partition")));
                    if let Some(mu) = &ru.max_unavailable {
                        let mp = rp.child("maxUnavailable");
                        errs.extend(positive_int_or_percent(mu, &mp));
                        if int_or_percent_value(mu) == 0 {
                            errs.push(FieldError::invalid(&mp, go_value::int_or_string(mu), "cannot be 0"));
                        }
                        errs.extend(not_more_than_100_percent(mu, &mp));
                    }
                }
            }
            Some(other) => errs.push(FieldError::invalid(
                &sp,
                format!("apps.StatefulSetUpdateStrategy{{Type:{}, RollingUpdate:(*apps.RollingUpdateStatefulSetStrategy)(nil)}}", go_value::quote(other)),
                "must be 'RollingUpdate' or 'OnDelete'",
            )),
        }
    }
    if let Some(policy) = &spec.persistent_volume_claim_retention_policy {
        let pp = path.child("persistentVolumeClaimRetentionPolicy");
        for (field, value) in [
            ("whenDeleted", &policy.when_deleted),
            ("whenScaled", &policy.when_scaled),
        ] {
            if let Some(v) = value.as_deref()
                && !["Retain", "Delete"].contains(&v)
            {
                errs.push(FieldError::not_supported(
                    &pp.child(field),
                    v,
                    &["Retain", "Delete"],
                ));
            }
        }
    }
    errs.extend(non_negative(spec.replicas, &path.child("replicas")));
    errs.extend(non_negative(
        spec.min_ready_seconds,
        &path.child("minReadySeconds"),
    ));
    errs.extend(validate_selector(
        &spec.selector,
        present,
        "statefulset",
        &path.child("selector"),
    ));
    // Kubernetes checks only the template's metadata here: mounts may name
    // volumeClaimTemplates, which are not pod volumes.
    let tp = path.child("template");
    errs.extend(selector_mismatch(
        &spec.template,
        present.then_some(&spec.selector),
        &tp,
    ));
    let tmeta = spec.template.metadata.as_ref();
    errs.extend(meta::validate_labels(
        tmeta.and_then(|m| m.labels.as_ref()),
        &tp.child("labels"),
    ));
    errs.extend(meta::validate_annotations(
        tmeta.and_then(|m| m.annotations.as_ref()),
        &tp.child("annotations"),
    ));
    errs.extend(always_restart(&spec.template, "StatefulSet", &tp));

    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        let mut clone = spec.clone();
        clone.replicas = old_spec.replicas;
        clone.template = old_spec.template.clone();
        clone.update_strategy.clone_from(&old_spec.update_strategy);
        clone.min_ready_seconds = old_spec.min_ready_seconds;
        clone.ordinals.clone_from(&old_spec.ordinals);
        clone
            .persistent_volume_claim_retention_policy
            .clone_from(&old_spec.persistent_volume_claim_retention_policy);
        if semantic_json(&clone) != semantic_json(old_spec) {
            errs.push(FieldError::forbidden(
                &path,
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }
    errs
}

/// A DaemonSet on create or update.
pub(crate) fn validate_daemon_set(
    ds: &DaemonSet,
    present: bool,
    old: Option<&DaemonSet>,
) -> Vec<FieldError> {
    let mut errs = meta_checks(&ds.metadata, old.map(|o| &o.metadata), NameRule::Subdomain);
    let empty = DaemonSetSpec::default();
    let spec = ds.spec.as_ref().unwrap_or(&empty);
    let path = Path::new("spec");
    // Unlike the other workloads, Kubernetes reports a missing DaemonSet
    // selector only through the template mismatch below.
    if present {
        errs.extend(meta::validate_label_selector(
            &spec.selector,
            &path.child("selector"),
        ));
    }
    let tp = path.child("template");
    errs.extend(selector_mismatch(
        &spec.template,
        present.then_some(&spec.selector),
        &tp,
    ));
    if present && is_empty_selector(&spec.selector) {
        errs.push(FieldError::invalid(
            &path.child("selector"),
            go_value::label_selector(&spec.selector),
            "empty selector is invalid for daemonset",
        ));
    }
    errs.extend(pod::validate_pod_template_spec(&spec.template, &tp));
    errs.extend(always_restart(&spec.template, "DaemonSet", &tp));
    errs.extend(non_negative(
        spec.min_ready_seconds,
        &path.child("minReadySeconds"),
    ));
    if let Some(strategy) = &spec.update_strategy {
        let sp = path.child("updateStrategy");
        match strategy.type_.as_deref().unwrap_or("RollingUpdate") {
            "OnDelete" => {}
            "RollingUpdate" => match &strategy.rolling_update {
                None if strategy.type_.is_some() => {
                    errs.push(FieldError::required(&sp.child("rollingUpdate"), ""))
                }
                None => {}
                Some(ru) => {
                    let rp = sp.child("rollingUpdate");
                    let unavailable = ru.max_unavailable.clone().unwrap_or(IntOrString::Int(1));
                    let surge = ru.max_surge.clone().unwrap_or(IntOrString::Int(0));
                    errs.extend(positive_int_or_percent(
                        &unavailable,
                        &rp.child("maxUnavailable"),
                    ));
                    errs.extend(positive_int_or_percent(&surge, &rp.child("maxSurge")));
                    errs.extend(not_more_than_100_percent(
                        &unavailable,
                        &rp.child("maxUnavailable"),
                    ));
                    errs.extend(not_more_than_100_percent(&surge, &rp.child("maxSurge")));
                    let has_unavailable = int_or_percent_value(&unavailable) != 0;
                    let has_surge = int_or_percent_value(&surge) != 0;
                    if has_unavailable && has_surge {
                        errs.push(FieldError::invalid(
                            &rp.child("maxSurge"),
                            go_value::int_or_string(&surge),
                            "may not be set when maxUnavailable is non-zero",
                        ));
                    } else if !has_unavailable && !has_surge {
                        errs.push(FieldError::required(
                            &rp.child("maxUnavailable"),
                            "cannot be 0 when maxSurge is 0",
                        ));
                    }
                }
            },
            other => errs.push(FieldError::not_supported(
                &sp,
                other,
                &["RollingUpdate", "OnDelete"],
            )),
        }
    }
    errs.extend(non_negative(
        spec.revision_history_limit,
        &path.child("revisionHistoryLimit"),
    ));
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        errs.extend(meta::immutable_selector(
            Some(&spec.selector),
            Some(&old_spec.selector),
            &path.child("selector"),
        ));
    }
    errs
}

/// `ValidatePositiveIntOrPercent`.
fn positive_int_or_percent(v: &IntOrString, path: &Path) -> Vec<FieldError> {
    match v {
        IntOrString::String(s) => names::percent(s)
            .into_iter()
            .map(|msg| FieldError::invalid(path, go_value::int_or_string(v), msg))
            .collect(),
        IntOrString::Int(i) => non_negative(Some(*i), path).into_iter().collect(),
    }
}

fn percent_value(v: &IntOrString) -> Option<i64> {
    match v {
        IntOrString::String(s) if names::percent(s).is_empty() => {
            s.trim_end_matches('%').parse().ok()
        }
        _ => None,
    }
}

/// `getIntOrPercentValue`: a malformed string counts as 0.
fn int_or_percent_value(v: &IntOrString) -> i64 {
    match (percent_value(v), v) {
        (Some(p), _) => p,
        (None, IntOrString::Int(i)) => (*i).into(),
        (None, IntOrString::String(s)) => s.parse().unwrap_or(0),
    }
}

fn not_more_than_100_percent(v: &IntOrString, path: &Path) -> Option<FieldError> {
    percent_value(v).filter(|p| *p > 100).map(|_| {
        FieldError::invalid(
            path,
            go_value::int_or_string(v),
            "must not be greater than 100%",
        )
    })
}
