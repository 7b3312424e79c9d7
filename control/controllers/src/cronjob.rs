//! CronJobs: a Job from `jobTemplate` at each time `schedule` names (in
//! `timeZone`, UTC when unset), named `<cronjob>-<scheduled minutes since
//! the epoch>` so a time is never run twice. As in Kubernetes: a missed
//! time (the controller was down, the CronJob was suspended) is caught up
//! once — the most recent one only — unless it is older than
//! `startingDeadlineSeconds`; more than 100 missed times are reported as
//! TooManyMissedTimes; `concurrencyPolicy` Allow runs Jobs side by side,
//! Forbid skips a time while one runs, Replace deletes the running one;
//! finished Jobs beyond `successfulJobsHistoryLimit` /
//! `failedJobsHistoryLimit` are deleted, oldest first; the status lists the
//! active Jobs and the last scheduled and last successful times.
//!
//! The Jobs are listed from the API on every reconcile, so the active list
//! is never rebuilt from a lagging cache; the reconcile is a function of
//! the CronJob, its Jobs and `now` ([`plan`]), which the unit tests drive
//! with their own clock.

mod schedule;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures_util::FutureExt;
use jiff::{Timestamp, tz::TimeZone};
use k8s_openapi::{
    api::{
        batch::v1::{CronJob, CronJobStatus, Job},
        core::v1::ObjectReference,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams, PropagationPolicy},
    runtime::{controller::Action, reflector::ObjectRef},
};
use tracing::info;

pub use schedule::Schedule;

use crate::{
    control_loop::{self, RESYNC},
    events,
    workload::{controller_of, controller_ref, patch_status},
};

/// The annotation on a Job with the time it was scheduled for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// The component named in this controller's events (Kubernetes' own).
const COMPONENT: &str = "cronjob-controller";
/// More missed start times than this are reported (Kubernetes' figure).
const MANY_MISSED: usize = 100;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("cronjob {namespace}/{name}: {what}: {source}")]
    Api {
        /// The CronJob's namespace.
        namespace: String,
        /// The CronJob.
        name: String,
        /// What was being done.
        what: String,
        /// The API's answer.
        source: kube::Error,
    },
}

fn api_err(cj: &CronJob, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let namespace = cj.namespace().unwrap_or_default();
    let name = cj.name_any();
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
    let (cronjobs, cj_events) = control_loop::reflect(Api::<CronJob>::all(client.clone()));
    let (_jobs, job_events) = control_loop::reflect(Api::<Job>::all(client.clone()));
    let triggers = vec![
        control_loop::trigger(cj_events, |cj: &CronJob| [ObjectRef::from_obj(cj)]),
        control_loop::trigger(job_events, |job: &Job| {
            let ns = job.namespace().unwrap_or_default();
            controller_of(&job.metadata)
                .filter(|o| o.kind == "CronJob")
                .map(|o| ObjectRef::new(&o.name).within(&ns))
        }),
    ];
    control_loop::run(
        "cronjob controller",
        cronjobs,
        triggers,
        Arc::new(Ctx { client }),
        |cj, ctx| reconcile(cj, ctx).boxed(),
        |_, _| async {},
    )
    .await;
}

/// A Job's finished condition: "Complete" or "Failed".
fn finished(job: &Job) -> Option<&'static str> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    ["Complete", "Failed"].into_iter().find(|t| {
        conditions
            .iter()
            .any(|c| c.type_ == *t && c.status == "True")
    })
}

/// The name of the Job for a scheduled time.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// The zone the schedule is read in: `spec.timeZone`, else a `TZ=` prefix,
/// else UTC.
fn zone_of(cj: &CronJob, schedule: &Schedule) -> Result<TimeZone, String> {
    let name = cj
        .spec
        .as_ref()
        .and_then(|s| s.time_zone.clone())
        .or_else(|| schedule.zone.clone());
    match name.as_deref() {
        None | Some("" | "UTC" | "Local") => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name).map_err(|e| e.to_string()),
    }
}

/// What one reconcile does.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The status once the plan is carried out (the created Job's reference
    /// is added when it exists).
    status: CronJobStatus,
    /// Active Jobs to delete (concurrencyPolicy Replace).
    replace: Vec<String>,
    /// The Job to create.
    create: Option<Job>,
    /// Finished Jobs past the history limits.
    cleanup: Vec<String>,
    /// Events to record: (warning, reason, message).
    events: Vec<(bool, &'static str, String)>,
    /// When to look again (the next scheduled time).
    requeue: Option<Duration>,
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        namespace: job.namespace(),
        name: Some(job.name_any()),
        uid: job.uid(),
        resource_version: job.resource_version(),
        ..ObjectReference::default()
    }
}

/// Works out a reconcile from the CronJob, the Jobs it controls and `now`.
pub(crate) fn plan(cj: &CronJob, jobs: &[Job], now: Timestamp) -> Plan {
    let mut plan = Plan::default();
    let spec = cj.spec.clone().unwrap_or_default();
    let mut status = cj.status.clone().unwrap_or_default();
    let by_name: BTreeMap<String, &Job> = jobs.iter().map(|j| (j.name_any(), j)).collect();

    // The active list, as the Jobs are now.
    let mut active = Vec::new();
    for r in status.active.take().unwrap_or_default() {
        let name = r.name.clone().unwrap_or_default();
        match by_name.get(&name) {
            None => plan.events.push((
                false,
                "MissingJob",
                format!("Active job went missing: {name}"),
            )),
            Some(job) => match finished(job) {
                Some(how) => {
                    plan.events.push((
                        false,
                        "SawCompletedJob",
                        format!("Saw completed job: {name}, condition: {how}"),
                    ));
                    if how == "Complete"
                        && let Some(t) = job.status.as_ref().and_then(|s| s.completion_time.clone())
                        && status
                            .last_successful_time
                            .as_ref()
                            .is_none_or(|l| l.0 < t.0)
                    {
                        status.last_successful_time = Some(t);
                    }
                }
                None => active.push(r),
            },
        }
    }

    // History: the oldest finished Jobs beyond the limits go.
    for (how, limit) in [
        ("Complete", spec.successful_jobs_history_limit),
        ("Failed", spec.failed_jobs_history_limit),
    ] {
        let Some(limit) = limit else { continue };
        let mut done: Vec<&Job> = jobs.iter().filter(|j| finished(j) == Some(how)).collect();
        done.sort_by_key(|j| {
            let start = j
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0);
            // Never started sorts last, as in Kubernetes.
            (start.is_none(), start, j.name_any())
        });
        let keep = usize::try_from(limit.max(0)).unwrap_or(0);
        let excess = done.len().saturating_sub(keep);
        plan.cleanup
            .extend(done.iter().take(excess).map(|j| j.name_any()));
    }

    let finish = |mut plan: Plan, mut status: CronJobStatus, active: Vec<ObjectReference>| {
        status.active = Some(active);
        plan.status = status;
        plan
    };
    if cj.metadata.deletion_timestamp.is_some() || spec.suspend == Some(true) {
        return finish(plan, status, active);
    }
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            plan.events.push((
                true,
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            ));
            return finish(plan, status, active);
        }
    };
    let tz = match zone_of(cj, &schedule) {
        Ok(tz) => tz,
        Err(e) => {
            let zone = spec
                .time_zone
                .clone()
                .or(schedule.zone.clone())
                .unwrap_or_default();
            plan.events.push((
                true,
                "UnknownTimeZone",
                format!("invalid timeZone: {zone:?}: {e}"),
            ));
            return finish(plan, status, active);
        }
    };
    // The most recent time due, after the last one run (or the creation),
    // and no older than the starting deadline.
    let mut earliest = status
        .last_schedule_time
        .as_ref()
        .or(cj.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| t.0);
    if let Some(sds) = spec.starting_deadline_seconds {
        let limit = now - jiff::SignedDuration::from_secs(sds);
        if limit > earliest {
            earliest = limit;
        }
    }
    let due = schedule.due(earliest, now, &tz, MANY_MISSED);
    plan.requeue = due.next.map(|next| next.duration_since(now).unsigned_abs());
    let Some(scheduled) = due.last else {
        return finish(plan, status, active);
    };
    if due.missed > MANY_MISSED {
        plan.events.push((
            true,
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        ));
    }
    if let Some(sds) = spec.starting_deadline_seconds
        && scheduled + jiff::SignedDuration::from_secs(sds) < now
    {
        plan.events.push((
            true,
            "MissSchedule",
            format!("Missed scheduled time to start a job: {scheduled}"),
        ));
        return finish(plan, status, active);
    }
    let name = job_name(&cj.name_any(), scheduled);
    if active.iter().any(|r| r.name.as_deref() == Some(&name))
        || status
            .last_schedule_time
            .as_ref()
            .is_some_and(|t| t.0 == scheduled)
    {
        return finish(plan, status, active);
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            plan.events.push((
                false,
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            ));
            return finish(plan, status, active);
        }
        Some("Replace") => {
            plan.replace = active.drain(..).filter_map(|r| r.name).collect();
        }
        _ => {}
    }
    plan.create = Some(job_for(cj, &name, scheduled, &tz));
    status.last_schedule_time = Some(Time(scheduled));
    finish(plan, status, active)
}

/// The Job for `scheduled` from the template.
fn job_for(cj: &CronJob, name: &str, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let stamp = scheduled.to_zoned(tz.clone());
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%:z", &stamp)
            .map(|s| s.replace("+00:00", "Z"))
            .unwrap_or_else(|_| scheduled.to_string()),
    );
    Job {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: cj.namespace(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: controller_ref(cj).map(|o| vec![o]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = cj.namespace().unwrap_or_default();
    let cronjobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(cj) = cronjobs
        .get_opt(&cj.name_any())
        .await
        .map_err(api_err(&cj, "reading the cronjob"))?
    else {
        return Ok(Action::await_change());
    };
    let uid = cj.uid().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await
        .map_err(api_err(&cj, "listing jobs"))?
        .items
        .into_iter()
        .filter(|j| controller_of(&j.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    let now = Timestamp::now();
    let mut plan = plan(&cj, &jobs, now);

    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    for name in &plan.replace {
        delete_job(&ctx.client, &jobs_api, &cj, name, &background).await?;
    }
    if let Some(job) = plan.create.take() {
        let name = job.name_any();
        let created = match jobs_api.create(&PostParams::default(), &job).await {
            Ok(job) => {
                let message = format!("Created job {name}");
                events::normal(&ctx.client, COMPONENT, &cj, "SuccessfulCreate", &message).await;
                info!(cronjob = %format!("{ns}/{}", cj.name_any()), job = %name, "cronjob controller: created a job");
                Some(job)
            }
            // Made by an earlier reconcile whose status write was lost.
            Err(kube::Error::Api(s)) if s.code == 409 => jobs_api
                .get_opt(&name)
                .await
                .map_err(api_err(&cj, format!("reading job {name}")))?
                .filter(|j| controller_of(&j.metadata).is_some_and(|o| o.uid == uid)),
            Err(e) => {
                let message = format!("Error creating job: {e}");
                events::warning(&ctx.client, COMPONENT, &cj, "FailedCreate", &message).await;
                return Err(api_err(&cj, format!("creating job {name}"))(e));
            }
        };
        if let Some(job) = created.filter(|j| finished(j).is_none()) {
            plan.status
                .active
                .get_or_insert_with(Vec::new)
                .push(job_ref(&job));
        }
    }
    write_status(&ctx.client, &cj, &plan.status).await?;
    for (warn, reason, message) in &plan.events {
        if *warn {
            events::warning(&ctx.client, COMPONENT, &cj, reason, message).await;
        } else {
            events::normal(&ctx.client, COMPONENT, &cj, reason, message).await;
        }
    }
    for name in &plan.cleanup {
        delete_job(&ctx.client, &jobs_api, &cj, name, &background).await?;
    }
    Ok(Action::requeue(plan.requeue.map_or(RESYNC, |d| {
        (d + Duration::from_millis(100)).min(RESYNC)
    })))
}

async fn delete_job(
    client: &Client,
    api: &Api<Job>,
    cj: &CronJob,
    name: &str,
    dp: &DeleteParams,
) -> Result<(), Error> {
    match api.delete(name, dp).await {
        Ok(_) => {
            let message = format!("Deleted job {name}");
            events::normal(client, COMPONENT, cj, "SuccessfulDelete", &message).await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_err(cj, format!("deleting job {name}"))(e)),
    }
}

/// Writes `status` when it differs; an emptied active list is written as
/// null so the merge patch clears it.
async fn write_status(client: &Client, cj: &CronJob, status: &CronJobStatus) -> Result<(), Error> {
    let norm = |s: &CronJobStatus| {
        let mut s = s.clone();
        if s.active.as_ref().is_some_and(Vec::is_empty) {
            s.active = None;
        }
        // Resource versions change with every Job status write.
        for r in s.active.iter_mut().flatten() {
            r.resource_version = None;
        }
        s
    };
    if norm(&cj.status.clone().unwrap_or_default()) == norm(status) {
        return Ok(());
    }
    let mut body = serde_json::to_value(norm(status)).unwrap_or_default();
    if let Some(map) = body.as_object_mut() {
        map.entry("active").or_insert(serde_json::Value::Null);
    }
    patch_status(client, cj, &body)
        .await
        .map_err(api_err(cj, "writing status"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
