//! Jobs: pods from the template until `completions` of them succeed (or,
//! without completions, until one does), at most `parallelism` at a time,
//! in NonIndexed or Indexed completion mode; given up with the Failed
//! condition when more pods fail than `backoffLimit` allows
//! (`BackoffLimitExceeded`) or the Job runs past `activeDeadlineSeconds`
//! (`DeadlineExceeded`) or a `podFailurePolicy` FailJob rule matches a
//! failed pod (`PodFailurePolicy`, the message naming the pod, container
//! and exit code or condition; Ignore rules keep a failure uncounted);
//! ended early, Complete, by a `successPolicy` rule an Indexed Job meets
//! (`SuccessPolicy`); paused by `suspend`; deleted
//! `ttlSecondsAfterFinished` after it finished.
//!
//! Finished pods are counted as Kubernetes counts them: every pod carries
//! the `batch.kubernetes.io/job-tracking` finalizer, a finished pod's uid
//! goes to `status.uncountedTerminatedPods` first, then the finalizer is
//! removed, then the uid moves into `succeeded`/`failed` — so a pod
//! deleted right after it finished is still counted, exactly once.
//!
//! The Job and its pods are read from the API on every reconcile (a
//! consistent read): the counts are never written from a lagging cache.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures_util::{FutureExt, future::join_all};
use k8s_openapi::{
    api::{
        batch::v1::{
            Job, JobCondition, JobStatus, PodFailurePolicy, SuccessPolicyRule,
            UncountedTerminatedPods,
        },
        core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy},
    core::DynamicObject,
    runtime::{controller::Action, reflector::ObjectRef},
};
use serde_json::json;
use tracing::info;

use crate::{
    control_loop::{self, RESYNC},
    events,
    workload::{controller_of, controller_ref, patch_status, ready_for, selector},
};

/// The finalizer that keeps a Job's pod until the Job counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// The completion index of an Indexed Job's pod (annotation and label).
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The environment variable an Indexed Job's containers find their index in.
const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The component named in this controller's events (Kubernetes' own).
const COMPONENT: &str = "job-controller";
/// Most pods created or deleted in one reconcile (Kubernetes' burst).
const BURST: usize = 500;
/// Kubernetes' default `backoffLimit`.
const DEFAULT_BACKOFF_LIMIT: i32 = 6;
/// The delay before the pod after the first failure; it doubles with each
/// further failure, up to [`MAX_BACKOFF`] (Kubernetes' figures).
const BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(360);

const BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
const BACKOFF_MESSAGE: &str = "Job has reached the specified backoff limit";
const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
const DEADLINE_MESSAGE: &str = "Job was active longer than specified deadline";
const POD_FAILURE_POLICY: &str = "PodFailurePolicy";
const SUCCESS_POLICY: &str = "SuccessPolicy";
const COMPLETIONS_REACHED: &str = "CompletionsReached";
const COMPLETIONS_MESSAGE: &str = "Reached expected number of succeeded pods";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("job {namespace}/{name}: {what}: {source}")]
    Api {
        /// The Job's namespace.
        namespace: String,
        /// The Job.
        name: String,
        /// What was being done.
        what: String,
        /// The API's answer.
        source: kube::Error,
    },
}

fn api_err(job: &Job, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let what = what.into();
    move |source| Error::Api {
        namespace,
        name,
        what,
        source,
    }
}

struct Ctx {
    client: Client,
}

/// Runs the controller until its watches end.
pub async fn run(client: Client) {
    let (jobs, job_events) = control_loop::reflect(Api::<Job>::all(client.clone()));
    let (_pods, pod_events) = control_loop::reflect(Api::<Pod>::all(client.clone()));
    let triggers = vec![
        control_loop::trigger(job_events, |j: &Job| [ObjectRef::from_obj(j)]),
        control_loop::trigger(pod_events, |pod: &Pod| {
            let ns = pod.namespace().unwrap_or_default();
            controller_of(&pod.metadata)
                .filter(|o| o.kind == "Job")
                .map(|o| ObjectRef::new(&o.name).within(&ns))
        }),
    ];
    let ctx = Arc::new(Ctx { client });
    control_loop::run(
        "job controller",
        jobs,
        triggers,
        ctx,
        |job, ctx| reconcile(job, ctx).boxed(),
        |obj, ctx| async move { release_orphans(&ctx.client, &obj).await },
    )
    .await;
}

/// A deleted Job's pods lose the tracking finalizer, so the garbage
/// collector (or the user) can delete them.
async fn release_orphans(client: &Client, job: &ObjectRef<DynamicObject>) {
    let ns = job.namespace.clone().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let live_uid = match jobs.get_opt(&job.name).await {
        Ok(j) => j.and_then(|j| j.uid()),
        Err(e) => {
            tracing::warn!("job controller: reading job {ns}/{}: {e}", job.name);
            return;
        }
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let lp = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={}", job.name));
    let Ok(list) = pods.list(&lp).await else {
        return;
    };
    for pod in list.items {
        let owner = controller_of(&pod.metadata).map(|o| o.uid.clone());
        if has_finalizer(&pod) && owner.is_some() && owner != live_uid {
            let _ = remove_finalizer(&pods, &pod).await;
        }
    }
}

/// Where the reconcile found a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Active,
    Succeeded,
    Failed,
    /// Deleted, not yet finished.
    Terminating,
}

fn fate(pod: &Pod) -> Fate {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => Fate::Succeeded,
        Some("Failed") => Fate::Failed,
        _ if pod.metadata.deletion_timestamp.is_some() => Fate::Terminating,
        _ => Fate::Active,
    }
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

fn pod_index(pod: &Pod) -> Option<i32> {
    pod.annotations()
        .get(COMPLETION_INDEX)
        .or_else(|| pod.labels().get(COMPLETION_INDEX))
        .and_then(|i| i.parse().ok())
}

/// Parses `status.completedIndexes` ("1,3-5,7"); malformed parts are
/// skipped.
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Writes indexes as `status.completedIndexes` holds them: ascending,
/// every run of consecutive indexes as `first-last`.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    parts.join(",")
}

fn condition(job: &Job, type_: &str) -> Option<JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .cloned()
}

/// When the Job finished (Complete or Failed), if it did.
fn finished_at(job: &Job) -> Option<jiff::Timestamp> {
    let done = condition(job, "Complete").or_else(|| condition(job, "Failed"))?;
    job.status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .or(done.last_transition_time.as_ref())
        .map(|t| t.0)
}

/// When a failed pod stopped: its containers' finish, else its last
/// condition change, else its deletion.
fn failed_at(pod: &Pod) -> Option<jiff::Timestamp> {
    let status = pod.status.as_ref();
    let finished = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    finished
        .or_else(|| {
            status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
                .max()
        })
        .or_else(|| pod.metadata.deletion_timestamp.as_ref().map(|t| t.0))
}

/// What `podFailurePolicy` makes of a failed pod.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The Job fails, for this reason.
    FailJob(String),
    /// The failure does not count toward `backoffLimit`.
    Ignore,
    /// A failure like any other.
    Count,
}

/// The first rule of `policy` a failed pod matches (a container's non-zero
/// exit code, or a pod condition), as Kubernetes evaluates them.
fn judge(policy: Option<&PodFailurePolicy>, pod: &Pod) -> Verdict {
    let Some(policy) = policy else {
        return Verdict::Count;
    };
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let status = pod.status.clone().unwrap_or_default();
    let containers: Vec<(String, i32)> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter_map(|c| {
            let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
            (code != 0).then(|| (c.name.clone(), code))
        })
        .collect();
    for (index, rule) in policy.rules.iter().enumerate() {
        let action = rule.action.as_str();
        let matched = if let Some(req) = &rule.on_exit_codes {
            containers
                .iter()
                .filter(|(c, _)| req.container_name.as_ref().is_none_or(|want| want == c))
                .find(|(_, code)| match req.operator.as_str() {
                    "In" => req.values.contains(code),
                    "NotIn" => !req.values.contains(code),
                    _ => false,
                })
                .map(|(c, code)| {
                    format!("Container {c} for pod {ns}/{name} failed with exit code {code} matching {action} rule at index {index}")
                })
        } else {
            rule.on_pod_conditions.iter().flatten().find_map(|pattern| {
                status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == pattern.type_ && c.status == pattern.status)
                    .then(|| {
                        format!(
                            "Pod {ns}/{name} has condition {} matching {action} rule at index {index}",
                            pattern.type_
                        )
                    })
            })
        };
        if let Some(message) = matched {
            return match action {
                "FailJob" => Verdict::FailJob(message),
                "Ignore" => Verdict::Ignore,
                _ => Verdict::Count,
            };
        }
    }
    Verdict::Count
}

/// A successPolicy rule is met: every index of `succeededIndexes` (or
/// `succeededCount` of them) completed, or `succeededCount` indexes at all.
fn rule_met(rule: &SuccessPolicyRule, completed: &BTreeSet<i32>) -> bool {
    let want = rule
        .succeeded_count
        .map(|c| usize::try_from(c.max(0)).unwrap_or(0));
    match rule.succeeded_indexes.as_deref() {
        Some(indexes) => {
            let indexes = parse_indexes(indexes);
            let done = indexes.intersection(completed).count();
            match want {
                Some(n) => done >= n,
                None => done == indexes.len(),
            }
        }
        None => want.is_some_and(|n| completed.len() >= n),
    }
}

/// The event reason for a failure condition's reason.
fn event_reason(reason: &str) -> &'static str {
    match reason {
        DEADLINE_EXCEEDED => DEADLINE_EXCEEDED,
        POD_FAILURE_POLICY => POD_FAILURE_POLICY,
        _ => BACKOFF_LIMIT_EXCEEDED,
    }
}

/// What one reconcile does, worked out from the Job and its pods.
#[derive(Debug, Default)]
struct Plan {
    /// Finished pods' uids to add to `uncountedTerminatedPods` before their
    /// finalizers go (succeeded, failed).
    uncount: (Vec<String>, Vec<String>),
    /// Pods whose tracking finalizer to remove.
    release: Vec<Pod>,
    /// Pods to delete.
    delete: Vec<Pod>,
    /// Pods to create: `None` for NonIndexed, the index for Indexed.
    create: Vec<Option<i32>>,
    /// The status once the above is done.
    status: JobStatus,
    /// Events to record: (warning, reason, message).
    events: Vec<(bool, &'static str, String)>,
    /// Delete the Job (its TTL after finishing ran out).
    expire: bool,
    /// Look again after this long (a deadline, a back-off, a TTL).
    requeue: Option<Duration>,
}

fn true_condition(type_: &str, reason: &str, message: &str, now: jiff::Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets condition `c` (keeping the transition time when the status does
/// not change).
fn set_condition(conditions: &mut Vec<JobCondition>, c: JobCondition) {
    match conditions.iter_mut().find(|o| o.type_ == c.type_) {
        Some(old) if old.status == c.status && old.reason == c.reason => {}
        Some(old) => *old = c,
        None => conditions.push(c),
    }
}

fn to_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Completes `plan` with the status counts: the pods it deletes are
/// released first (they are not failures) and counted as terminating.
fn finish(
    plan: &mut Plan,
    mut status: JobStatus,
    conditions: Vec<JobCondition>,
    (live, ready, terminating): (usize, usize, i32),
) {
    for pod in &plan.delete {
        if has_finalizer(pod) && !plan.release.iter().any(|p| p.uid() == pod.uid()) {
            plan.release.push(pod.clone());
        }
    }
    status.active = Some(to_i32(live));
    status.ready = Some(to_i32(ready));
    status.terminating = Some(terminating);
    status.conditions = Some(conditions);
    plan.status = status;
}

fn plan(job: &Job, pods: &[Pod], now: jiff::Timestamp) -> Plan {
    let mut plan = Plan::default();
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let mut conditions = old.conditions.clone().unwrap_or_default();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let deleting = job.metadata.deletion_timestamp.is_some();
    let finished = finished_at(job).is_some();

    // Counting: finished pods still carrying the finalizer are recorded as
    // uncounted, then released; uncounted pods already released count.
    let uncounted = old.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut pending_ok: BTreeSet<String> = uncounted
        .succeeded
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut pending_failed: BTreeSet<String> = uncounted
        .failed
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut completed = parse_indexes(old.completed_indexes.as_deref().unwrap_or_default());
    let mut active = Vec::new();
    let mut terminating = 0;
    let mut failed_pods = Vec::new();
    let mut fail_job: Option<String> = None;
    for pod in pods {
        let uid = pod.uid().unwrap_or_default();
        let f = fate(pod);
        match f {
            Fate::Active => active.push(pod),
            Fate::Terminating => terminating += 1,
            Fate::Failed => failed_pods.push(pod),
            Fate::Succeeded => {}
        }
        if f == Fate::Succeeded
            && indexed
            && let Some(i) = pod_index(pod).filter(|i| spec.completions.is_none_or(|c| *i < c))
        {
            completed.insert(i);
        }
        if !has_finalizer(pod) {
            continue;
        }
        if f == Fate::Failed && !pending_failed.contains(&uid) {
            match judge(spec.pod_failure_policy.as_ref(), pod) {
                // Not a failure: let go uncounted.
                Verdict::Ignore => {
                    plan.release.push(pod.clone());
                    continue;
                }
                Verdict::FailJob(message) => {
                    fail_job.get_or_insert(message);
                }
                Verdict::Count => {}
            }
        }
        let done = match f {
            Fate::Succeeded => Some(true),
            // A deleted pod that never finished counts as failed, as in
            // Kubernetes.
            Fate::Failed | Fate::Terminating => Some(false),
            // Once the Job is done or gone, its running pods are let go.
            Fate::Active if finished || deleting => {
                plan.release.push(pod.clone());
                None
            }
            Fate::Active => None,
        };
        if let Some(ok) = done {
            let set = if ok {
                &mut pending_ok
            } else {
                &mut pending_failed
            };
            if set.insert(uid.clone()) {
                if ok {
                    plan.uncount.0.push(uid);
                } else {
                    plan.uncount.1.push(uid);
                }
            }
            plan.release.push(pod.clone());
        }
    }
    // Every uncounted pod is released by the end of this reconcile.
    let succeeded = old.succeeded.unwrap_or(0) + to_i32(pending_ok.len());
    let failed = old.failed.unwrap_or(0) + to_i32(pending_failed.len());
    status.succeeded = Some(succeeded);
    status.failed = Some(failed);
    status.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());
    if indexed {
        status.completed_indexes = Some(format_indexes(&completed));
    }

    let mut ready = active
        .iter()
        .filter(|p| ready_for(p, now).is_some())
        .count();
    let mut live = active.len();

    if finished || deleting {
        if let Some(at) = finished_at(job)
            && let Some(ttl) = spec.ttl_seconds_after_finished
            && !deleting
        {
            let expires = at + jiff::SignedDuration::from_secs(i64::from(ttl.max(0)));
            if now >= expires {
                plan.expire = true;
            } else {
                plan.requeue = Some(expires.duration_since(now).unsigned_abs());
            }
        }
        finish(&mut plan, status, conditions, (live, ready, terminating));
        return plan;
    }

    // Suspended: no pods run; resuming restarts the clock.
    let suspended = spec.suspend == Some(true);
    let was_suspended = conditions
        .iter()
        .any(|c| c.type_ == "Suspended" && c.status == "True");
    if suspended {
        if !was_suspended {
            set_condition(
                &mut conditions,
                true_condition("Suspended", "JobSuspended", "Job suspended", now),
            );
            plan.events
                .push((false, "Suspended", "Job suspended".to_string()));
        }
        plan.delete.extend(active.iter().map(|p| (*p).clone()));
        status.start_time = None;
        finish(
            &mut plan,
            status,
            conditions,
            (0, 0, terminating + to_i32(live)),
        );
        return plan;
    }
    if was_suspended {
        let mut c = true_condition("Suspended", "JobResumed", "Job resumed", now);
        c.status = "False".into();
        set_condition(&mut conditions, c);
        plan.events
            .push((false, "Resumed", "Job resumed".to_string()));
        status.start_time = None;
    }
    let start = status.start_time.as_ref().map_or(now, |t| t.0);
    status.start_time = Some(Time(start));

    // Failure: too many failed pods (or, with restartPolicy OnFailure,
    // container restarts), or past the deadline.
    let backoff_limit = spec.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT);
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let restarts: i32 = if on_failure {
        active
            .iter()
            .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
            .flatten()
            .map(|c| c.restart_count)
            .sum()
    } else {
        0
    };
    let past_deadline = spec.active_deadline_seconds.map(|ads| {
        let end = start + jiff::SignedDuration::from_secs(ads.max(0));
        (now >= end, end)
    });
    let failure: Option<(String, String)> = conditions
        .iter()
        .find(|c| c.type_ == "FailureTarget" && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
        .or_else(|| {
            fail_job
                .map(|m| (POD_FAILURE_POLICY.to_string(), m))
                .or_else(|| {
                    (failed.saturating_add(restarts) > backoff_limit)
                        .then(|| (BACKOFF_LIMIT_EXCEEDED.into(), BACKOFF_MESSAGE.into()))
                })
                .or_else(|| {
                    past_deadline
                        .is_some_and(|(past, _)| past)
                        .then(|| (DEADLINE_EXCEEDED.into(), DEADLINE_MESSAGE.into()))
                })
        });
    if let Some((reason, message)) = failure {
        let (reason, message) = (reason.as_str(), message.as_str());
        if condition(job, "FailureTarget").is_none() {
            set_condition(
                &mut conditions,
                true_condition("FailureTarget", reason, message, now),
            );
            plan.events
                .push((true, event_reason(reason), message.to_string()));
        }
        // The running pods are stopped; the Job fails once none is left.
        plan.delete.extend(active.iter().map(|p| (*p).clone()));
        if active.is_empty() && terminating == 0 {
            set_condition(
                &mut conditions,
                true_condition("Failed", reason, message, now),
            );
        }
        finish(
            &mut plan,
            status,
            conditions,
            (0, 0, terminating + to_i32(live)),
        );
        return plan;
    }

    // Success.
    let success = if indexed {
        spec.completions
            .is_some_and(|c| to_i32(completed.len()) >= c)
    } else {
        match spec.completions {
            Some(c) => succeeded >= c,
            // A work queue: done once one pod succeeded and the rest ended.
            None => succeeded > 0 && active.is_empty(),
        }
    };
    // A successPolicy rule an Indexed Job meets ends it early.
    let by_policy = spec
        .success_policy
        .as_ref()
        .filter(|_| indexed)
        .and_then(|p| p.rules.iter().position(|r| rule_met(r, &completed)))
        .map(|i| {
            (
                SUCCESS_POLICY.to_string(),
                format!("Matched rules at index {i}"),
            )
        });
    let criteria = conditions
        .iter()
        .find(|c| c.type_ == "SuccessCriteriaMet" && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
        .or(by_policy)
        .or_else(|| success.then(|| (COMPLETIONS_REACHED.into(), COMPLETIONS_MESSAGE.into())));
    if let Some((reason, message)) = criteria {
        let (reason, message) = (reason.as_str(), message.as_str());
        set_condition(
            &mut conditions,
            true_condition("SuccessCriteriaMet", reason, message, now),
        );
        plan.delete.extend(active.iter().map(|p| (*p).clone()));
        if active.is_empty() && terminating == 0 {
            set_condition(
                &mut conditions,
                true_condition("Complete", reason, message, now),
            );
            status.completion_time = Some(Time(now));
            plan.events
                .push((false, "Completed", "Job completed".to_string()));
            if let Some(ttl) = spec.ttl_seconds_after_finished {
                plan.requeue = Some(Duration::from_secs(u64::try_from(ttl.max(0)).unwrap_or(0)));
            }
        }
        finish(
            &mut plan,
            status,
            conditions,
            (0, 0, terminating + to_i32(live)),
        );
        return plan;
    }

    // Back-off after failures: the next pod waits 10s, 20s, 40s... from the
    // last failure.
    let parallelism = usize::try_from(spec.parallelism.unwrap_or(1).max(0)).unwrap_or(0);
    let mut wait = None;
    if failed > 0 {
        let shift = u32::try_from(failed - 1).unwrap_or(0).min(6);
        let delay = (BACKOFF * 2u32.pow(shift)).min(MAX_BACKOFF);
        if let Some(last) = failed_pods.iter().filter_map(|p| failed_at(p)).max() {
            let until = last + jiff::SignedDuration::try_from(delay).unwrap_or_default();
            if now < until {
                wait = Some(until.duration_since(now).unsigned_abs());
            }
        }
    }

    if indexed {
        let completions = spec.completions.unwrap_or(0);
        let mut running: BTreeMap<i32, Vec<&Pod>> = BTreeMap::new();
        for pod in &active {
            match pod_index(pod) {
                Some(i) if (0..completions).contains(&i) && !completed.contains(&i) => {
                    running.entry(i).or_default().push(pod);
                }
                // Out of range, already completed or without an index.
                _ => plan.delete.push((*pod).clone()),
            }
        }
        // One pod per index: the extra ones go, then the highest indexes
        // beyond parallelism.
        for pods in running.values_mut() {
            plan.delete.extend(pods.drain(1..).map(|p| (*p).clone()));
        }
        let mut kept: Vec<i32> = running.keys().copied().collect();
        while kept.len() > parallelism {
            if let Some(i) = kept.pop()
                && let Some(p) = running.get(&i).and_then(|v| v.first())
            {
                plan.delete.push((*p).clone());
            }
        }
        if wait.is_none() {
            let room = parallelism.saturating_sub(kept.len()).min(BURST);
            plan.create = (0..completions)
                .filter(|i| !completed.contains(i) && !kept.contains(i))
                .take(room)
                .map(Some)
                .collect();
        }
    } else {
        let want = match spec.completions {
            Some(c) => parallelism.min(usize::try_from((c - succeeded).max(0)).unwrap_or(0)),
            None if succeeded > 0 => active.len().min(parallelism),
            None => parallelism,
        };
        if active.len() > want {
            let mut ranked = active.clone();
            // Not ready first, then the newest.
            ranked.sort_by_key(|p| {
                (
                    ready_for(p, now).is_some(),
                    std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
                )
            });
            plan.delete.extend(
                ranked
                    .iter()
                    .take(active.len() - want)
                    .map(|p| (*p).clone()),
            );
        } else if wait.is_none() {
            plan.create = vec![None; (want - active.len()).min(BURST)];
        }
    }
    for pod in &plan.delete {
        if fate(pod) == Fate::Active {
            live -= 1;
            terminating += 1;
            if ready_for(pod, now).is_some() {
                ready -= 1;
            }
        }
    }
    live += plan.create.len();
    plan.requeue = [
        wait,
        past_deadline.map(|(_, end)| end.duration_since(now).unsigned_abs()),
    ]
    .into_iter()
    .flatten()
    .min();
    finish(&mut plan, status, conditions, (live, ready, terminating));
    plan
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    // The counts are written from the Job as the API has it now.
    let Some(job) = jobs
        .get_opt(&job.name_any())
        .await
        .map_err(api_err(&job, "reading the job"))?
    else {
        return Ok(Action::await_change());
    };
    if job
        .spec
        .as_ref()
        .and_then(|s| s.managed_by.as_deref())
        .is_some_and(|m| m != "kubernetes.io/job-controller")
    {
        return Ok(Action::await_change());
    }
    let Some(sel) = selector(job.spec.as_ref().and_then(|s| s.selector.as_ref())) else {
        return Ok(Action::await_change());
    };
    let uid = job.uid().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels_from(&sel))
        .await
        .map_err(api_err(&job, format!("listing the pods selected by {sel}")))?
        .items
        .into_iter()
        .filter(|p| controller_of(&p.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    let now = jiff::Timestamp::now();
    let plan = plan(&job, &pods, now);

    if !plan.uncount.0.is_empty() || !plan.uncount.1.is_empty() {
        let old = job
            .status
            .as_ref()
            .and_then(|s| s.uncounted_terminated_pods.clone())
            .unwrap_or_default();
        let mut ok = old.succeeded.unwrap_or_default();
        ok.extend(plan.uncount.0.iter().cloned());
        let mut failed = old.failed.unwrap_or_default();
        failed.extend(plan.uncount.1.iter().cloned());
        patch_status(
            &ctx.client,
            &job,
            &json!({"uncountedTerminatedPods": {"succeeded": ok, "failed": failed}}),
        )
        .await
        .map_err(api_err(
            &job,
            "recording finished pods in status.uncountedTerminatedPods",
        ))?;
    }
    for pod in &plan.release {
        remove_finalizer(&pods_api, pod).await.map_err(api_err(
            &job,
            format!(
                "removing the {TRACKING_FINALIZER} finalizer from pod {}",
                pod.name_any()
            ),
        ))?;
    }
    for pod in &plan.delete {
        let name = pod.name_any();
        match pods_api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                events::normal(
                    &ctx.client,
                    COMPONENT,
                    &job,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {name}"),
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(&job, format!("deleting pod {name}"))(e)),
        }
    }
    create_pods(&ctx.client, &pods_api, &job, &plan.create).await?;
    write_status(&ctx.client, &job, &plan.status).await?;
    for (warn, reason, message) in &plan.events {
        if *warn {
            events::warning(&ctx.client, COMPONENT, &job, reason, message).await;
        } else {
            events::normal(&ctx.client, COMPONENT, &job, reason, message).await;
        }
    }
    if plan.expire {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            ..DeleteParams::default()
        };
        match jobs.delete(&job.name_any(), &dp).await {
            Ok(_) => {
                info!(job = %format!("{ns}/{}", job.name_any()), "job controller: deleted a finished job past ttlSecondsAfterFinished");
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(api_err(
                    &job,
                    "deleting the job after ttlSecondsAfterFinished",
                )(e));
            }
        }
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(plan.requeue.map_or(RESYNC, |d| {
        (d + Duration::from_millis(100)).min(RESYNC)
    })))
}

async fn remove_finalizer(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let rest: Vec<&String> = pod
        .finalizers()
        .iter()
        .filter(|f| *f != TRACKING_FINALIZER)
        .collect();
    // The resourceVersion makes the patch fail if the finalizers changed
    // meanwhile; the next reconcile tries again.
    let patch = json!({"metadata": {
        "finalizers": rest,
        "resourceVersion": pod.resource_version(),
    }});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// A new pod from the template, for `index` in an Indexed Job.
fn new_pod(job: &Job, index: Option<i32>) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let meta = spec.template.metadata.unwrap_or_default();
    let mut pod_spec = spec.template.spec.unwrap_or_default();
    let name = job.name_any();
    let mut labels = meta.labels.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let generate_name = match index {
        Some(i) => {
            labels.insert(COMPLETION_INDEX.into(), i.to_string());
            annotations.insert(COMPLETION_INDEX.into(), i.to_string());
            if pod_spec.hostname.is_none() {
                pod_spec.hostname = Some(format!("{name}-{i}"));
            }
            // The index reaches the containers through the downward API,
            // as Kubernetes injects it.
            let env = EnvVar {
                name: INDEX_ENV.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: None,
                        field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                    }),
                    ..EnvVarSource::default()
                }),
            };
            let containers = pod_spec
                .init_containers
                .iter_mut()
                .flatten()
                .chain(pod_spec.containers.iter_mut());
            for c in containers {
                let envs = c.env.get_or_insert_with(Vec::new);
                if !envs.iter().any(|e| e.name == INDEX_ENV) {
                    envs.push(env.clone());
                }
            }
            format!("{name}-{i}-")
        }
        None => format!("{name}-"),
    };
    let mut finalizers = meta.finalizers.unwrap_or_default();
    finalizers.push(TRACKING_FINALIZER.into());
    Pod {
        metadata: kube::api::ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(finalizers),
            owner_references: controller_ref(job).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

async fn create_pods(
    client: &Client,
    api: &Api<Pod>,
    job: &Job,
    indexes: &[Option<i32>],
) -> Result<(), Error> {
    // Slow start, as Kubernetes does: batches of 1, 2, 4, ...
    let mut left = indexes;
    let mut batch = 1;
    while !left.is_empty() {
        let (now, rest) = left.split_at(batch.min(left.len()));
        let pp = PostParams::default();
        let pods: Vec<Pod> = now.iter().map(|i| new_pod(job, *i)).collect();
        let results = join_all(pods.iter().map(|p| api.create(&pp, p))).await;
        for result in results {
            match result {
                Ok(pod) => {
                    let message = format!("Created pod: {}", pod.name_any());
                    events::normal(client, COMPONENT, job, "SuccessfulCreate", &message).await;
                }
                Err(e) => {
                    let message = format!("Error creating: {e}");
                    events::warning(client, COMPONENT, job, "FailedCreate", &message).await;
                    return Err(api_err(job, "creating a pod from spec.template")(e));
                }
            }
        }
        left = rest;
        batch *= 2;
    }
    if !indexes.is_empty() {
        info!(job = %format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any()), count = indexes.len(), "job controller: created pods");
    }
    Ok(())
}

/// Writes `status` when it differs from the Job's; lists and times that
/// are gone are written as null so the merge patch clears them.
async fn write_status(client: &Client, job: &Job, status: &JobStatus) -> Result<(), Error> {
    let zero_is_none = |s: &JobStatus| {
        let mut s = s.clone();
        for v in [
            &mut s.active,
            &mut s.ready,
            &mut s.succeeded,
            &mut s.failed,
            &mut s.terminating,
        ] {
            if *v == Some(0) {
                *v = None;
            }
        }
        if s.uncounted_terminated_pods.as_ref().is_some_and(|u| {
            u.succeeded.as_ref().is_none_or(Vec::is_empty)
                && u.failed.as_ref().is_none_or(Vec::is_empty)
        }) {
            s.uncounted_terminated_pods = None;
        }
        if s.conditions.as_ref().is_some_and(Vec::is_empty) {
            s.conditions = None;
        }
        if s.completed_indexes.as_deref() == Some("") {
            s.completed_indexes = None;
        }
        s
    };
    let current = zero_is_none(&job.status.clone().unwrap_or_default());
    let mut want = zero_is_none(status);
    if current == want {
        return Ok(());
    }
    want.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());
    let mut body = serde_json::to_value(&want).unwrap_or_default();
    if let Some(map) = body.as_object_mut() {
        for key in [
            "active",
            "ready",
            "succeeded",
            "failed",
            "terminating",
            "startTime",
            "completionTime",
            "conditions",
        ] {
            map.entry(key).or_insert(serde_json::Value::Null);
        }
        map.insert(
            "uncountedTerminatedPods".into(),
            json!({"succeeded": null, "failed": null}),
        );
    }
    patch_status(client, job, &body)
        .await
        .map_err(api_err(job, "writing status"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
