//! Jobs and CronJobs: completion settings, restart policies that let a pod
//! finish, generated selectors, schedules, and a template that stays fixed.

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec};

use super::cron;
use super::meta;
use super::names::NameRule;
use super::path::Path;
use super::pod::{self, semantic_json};
use super::{FieldError, FieldErrorKind, go_value};

const NEGATIVE_MSG: &str = "must be greater than or equal to 0";
const FIELD_IMMUTABLE: &str = "field is immutable";
/// The cronjob controller appends an 11-character suffix to job names,
/// which must stay DNS labels of at most 63 characters.
const CRON_JOB_NAME_MAX: usize = 52;
const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

fn non_negative(value: Option<i64>, path: &Path) -> Option<FieldError> {
    value
        .filter(|v| *v < 0)
        .map(|v| FieldError::invalid(path, v.to_string(), NEGATIVE_MSG))
}

/// `validateJobSpec`: the checks a Job and a CronJob's job template share.
fn validate_job_spec(spec: &JobSpec, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (field, value) in [
        ("parallelism", spec.parallelism.map(i64::from)),
        ("completions", spec.completions.map(i64::from)),
        ("activeDeadlineSeconds", spec.active_deadline_seconds),
        ("backoffLimit", spec.backoff_limit.map(i64::from)),
        (
            "ttlSecondsAfterFinished",
            spec.ttl_seconds_after_finished.map(i64::from),
        ),
    ] {
        errs.extend(non_negative(value, &path.child(field)));
    }
    match spec.completion_mode.as_deref() {
        None | Some("NonIndexed") => {}
        Some("Indexed") => {
            if spec.completions.is_none() {
                errs.push(FieldError::required(
                    &path.child("completions"),
                    "when completion mode is Indexed",
                ));
            }
        }
        Some(other) => {
            errs.push(FieldError::not_supported(
                &path.child("completionMode"),
                other,
                &["NonIndexed", "Indexed"],
            ));
        }
    }
    if let Some(policy) = spec.pod_replacement_policy.as_deref()
        && !["TerminatingOrFailed", "Failed"].contains(&policy)
    {
        errs.push(FieldError::not_supported(
            &path.child("podReplacementPolicy"),
            policy,
            &["TerminatingOrFailed", "Failed"],
        ));
    }
    let tp = path.child("template");
    errs.extend(pod::validate_pod_template_spec(&spec.template, &tp));
    let restart = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or_default();
    let rp = tp.child("spec").child("restartPolicy");
    match restart {
        "" | "Always" => errs.push(FieldError::required(
            &rp,
            "valid values: \"OnFailure\", \"Never\"",
        )),
        "OnFailure" | "Never" => {}
        other => errs.push(FieldError::not_supported(
            &rp,
            other,
            &["OnFailure", "Never"],
        )),
    }
    errs
}

/// A Job on create or update. Without `manualSelector` the selector is
/// generated from the Job's uid (see `apply_defaults`); until it is, a
/// missing selector is not an error.
pub(crate) fn validate_job(job: &Job, old: Option<&Job>) -> Vec<FieldError> {
    let meta_path = Path::new("metadata");
    let mut errs = Vec::new();
    if let Some(old) = old {
        errs.extend(meta::validate_object_meta_update(
            &job.metadata,
            &old.metadata,
            &meta_path,
        ));
    }
    errs.extend(meta::validate_object_meta(
        &job.metadata,
        NameRule::Subdomain,
        &meta_path,
    ));
    let empty = JobSpec::default();
    let spec = job.spec.as_ref().unwrap_or(&empty);
    let path = Path::new("spec");
    let manual = spec.manual_selector == Some(true);
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    if let Some(sel) = &spec.selector
        && !manual
        && !uid.is_empty()
    {
        let expected =
            std::collections::BTreeMap::from([(CONTROLLER_UID_LABEL.to_string(), uid.to_string())]);
        if meta::selector_matches(sel, Some(&expected)) == Some(false) {
            errs.push(FieldError::invalid(
                &path.child("selector"),
                go_value::label_selector(sel),
                "`selector` not auto-generated",
            ));
        }
    }
    errs.extend(validate_job_spec(spec, &path));
    match &spec.selector {
        None if manual => errs.push(FieldError::required(&path.child("selector"), "")),
        None => {}
        Some(sel) => {
            errs.extend(meta::validate_label_selector(sel, &path.child("selector")));
            let labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.as_ref());
            if meta::selector_matches(sel, labels) == Some(false) {
                errs.push(FieldError::invalid(
                    &path.child("template").child("metadata").child("labels"),
                    go_value::string_map(labels),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        errs.extend(validate_job_spec_update(
            spec,
            old_spec,
            old.and_then(|o| o.status.as_ref())
                .is_some_and(|s| s.start_time.is_some()),
            &path,
        ));
    }
    errs
}

fn validate_job_spec_update(
    new: &JobSpec,
    old: &JobSpec,
    started: bool,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let elastic = new.completion_mode.as_deref() == Some("Indexed")
        && new.completions == new.parallelism
        && old.completions == old.parallelism;
    if new.completions != old.completions && !elastic {
        let value = new
            .completions
            .map_or_else(go_value::null, |c| c.to_string());
        errs.push(FieldError::invalid(
            &path.child("completions"),
            value,
            FIELD_IMMUTABLE,
        ));
    }
    if old.selector.is_some() {
        errs.extend(meta::immutable_selector(
            new.selector.as_ref(),
            old.selector.as_ref(),
            &path.child("selector"),
        ));
    }
    // A suspended Job that never started may still be steered to other
    // nodes: its scheduling directives and template metadata may change.
    let mut old_template = old.template.clone();
    if old.suspend == Some(true) && !started {
        let (n, o) = (&new.template, &mut old_template);
        o.metadata.clone_from(&n.metadata);
        if let (Some(ns), Some(os)) = (n.spec.as_ref(), o.spec.as_mut()) {
            os.node_selector.clone_from(&ns.node_selector);
            os.tolerations.clone_from(&ns.tolerations);
            os.scheduling_gates.clone_from(&ns.scheduling_gates);
            os.affinity.clone_from(&ns.affinity);
        }
    }
    if semantic_json(&new.template) != semantic_json(&old_template) {
        errs.push(FieldError::invalid(
            &path.child("template"),
            "core.PodTemplateSpec{...}",
            FIELD_IMMUTABLE,
        ));
    }
    if old.completion_mode.is_some() && new.completion_mode != old.completion_mode {
        let value = new
            .completion_mode
            .as_deref()
            .map_or_else(go_value::null, go_value::quote);
        errs.push(FieldError::invalid(
            &path.child("completionMode"),
            value,
            FIELD_IMMUTABLE,
        ));
    }
    if semantic_json(&new.pod_failure_policy) != semantic_json(&old.pod_failure_policy) {
        errs.push(FieldError::invalid(
            &path.child("podFailurePolicy"),
            "batch.PodFailurePolicy{...}",
            FIELD_IMMUTABLE,
        ));
    }
    if new.backoff_limit_per_index != old.backoff_limit_per_index {
        let value = new
            .backoff_limit_per_index
            .map_or_else(go_value::null, |v| v.to_string());
        errs.push(FieldError::invalid(
            &path.child("backoffLimitPerIndex"),
            value,
            FIELD_IMMUTABLE,
        ));
    }
    errs
}

/// A CronJob on create or update.
pub(crate) fn validate_cron_job(cj: &CronJob, old: Option<&CronJob>) -> Vec<FieldError> {
    let meta_path = Path::new("metadata");
    let mut errs = Vec::new();
    if let Some(old) = old {
        errs.extend(meta::validate_object_meta_update(
            &cj.metadata,
            &old.metadata,
            &meta_path,
        ));
    }
    errs.extend(meta::validate_object_meta(
        &cj.metadata,
        NameRule::Subdomain,
        &meta_path,
    ));
    let empty = CronJobSpec::default();
    let spec = cj.spec.as_ref().unwrap_or(&empty);
    let old_spec = old.and_then(|o| o.spec.as_ref());
    let path = Path::new("spec");

    let sp = path.child("schedule");
    if spec.schedule.is_empty() {
        errs.push(FieldError::required(&sp, ""));
    } else {
        if let Err(msg) = cron::parse_standard(&spec.schedule) {
            errs.push(FieldError::invalid_str(&sp, &spec.schedule, msg));
        }
        let tz_allowed = old_spec.is_some_and(|o| o.schedule.contains("TZ"));
        if spec.schedule.contains("TZ") {
            if !tz_allowed {
                errs.push(FieldError::invalid_str(
                    &sp,
                    &spec.schedule,
                    "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
                ));
            } else if spec.time_zone.is_some() {
                errs.push(FieldError::invalid_str(
                    &sp,
                    &spec.schedule,
                    "cannot use both timeZone field and TZ or CRON_TZ in schedule",
                ));
            }
        }
    }
    errs.extend(non_negative(
        spec.starting_deadline_seconds,
        &path.child("startingDeadlineSeconds"),
    ));
    if let Some(tz) = spec.time_zone.as_deref()
        && old_spec.is_none_or(|o| o.time_zone.as_deref() != Some(tz))
    {
        let tp = path.child("timeZone");
        if tz.eq_ignore_ascii_case("local") {
            errs.push(FieldError::invalid_str(
                &tp,
                tz,
                "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
            ));
        } else if let Err(msg) = cron::check_location(tz) {
            errs.push(FieldError::invalid_str(&tp, tz, msg));
        }
    }
    if let Some(policy) = spec.concurrency_policy.as_deref() {
        let cp = path.child("concurrencyPolicy");
        match policy {
            "Allow" | "Forbid" | "Replace" => {}
            "" => errs.push(FieldError::required(&cp, "")),
            other => errs.push(FieldError::not_supported(
                &cp,
                other,
                &["Allow", "Forbid", "Replace"],
            )),
        }
    }
    let jp = path.child("jobTemplate");
    let empty_job = JobSpec::default();
    let job_spec = spec.job_template.spec.as_ref().unwrap_or(&empty_job);
    errs.extend(validate_job_spec(job_spec, &jp.child("spec")));
    if let Some(sel) = &job_spec.selector {
        errs.push(FieldError::invalid(
            &jp.child("spec").child("selector"),
            go_value::label_selector(sel),
            "`selector` will be auto-generated",
        ));
    }
    if job_spec.manual_selector == Some(true) {
        errs.push(FieldError::new(
            &jp.child("spec").child("manualSelector"),
            FieldErrorKind::NotSupported,
            Some("true".to_string()),
            "supported values: \"nil\", \"false\"",
        ));
    }
    for (field, value) in [
        (
            "successfulJobsHistoryLimit",
            spec.successful_jobs_history_limit,
        ),
        ("failedJobsHistoryLimit", spec.failed_jobs_history_limit),
    ] {
        errs.extend(non_negative(value.map(i64::from), &path.child(field)));
    }
    let name = cj.metadata.name.as_deref().unwrap_or_default();
    if old.is_none() && name.len() > CRON_JOB_NAME_MAX {
        errs.push(FieldError::invalid_str(
            &meta_path.child("name"),
            name,
            format!("must be no more than {CRON_JOB_NAME_MAX} characters"),
        ));
    }
    errs
}
