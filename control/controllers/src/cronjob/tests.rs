use jiff::Timestamp;
use serde_json::{Value, json};

use super::*;

fn ts(s: &str) -> anyhow::Result<Timestamp> {
    Ok(s.parse()?)
}

fn next(spec: &str, after: &str, zone: &str) -> anyhow::Result<String> {
    let tz = TimeZone::get(zone)?;
    let s = Schedule::parse(spec).map_err(anyhow::Error::msg)?;
    Ok(s.next_after(ts(after)?, &tz)
        .map(|t| t.to_string())
        .unwrap_or_default())
}

#[test]
fn schedules_fire_when_kubernetes_fires_them() -> anyhow::Result<()> {
    // (schedule, after, zone, next)
    let table = [
        (
            "*/1 * * * *",
            "2026-01-01T00:00:30Z",
            "UTC",
            "2026-01-01T00:01:00Z",
        ),
        (
            "*/15 * * * *",
            "2026-01-01T00:15:00Z",
            "UTC",
            "2026-01-01T00:30:00Z",
        ),
        (
            "5 4 * * *",
            "2026-01-01T04:05:00Z",
            "UTC",
            "2026-01-02T04:05:00Z",
        ),
        (
            "0 9 * * mon-fri",
            "2026-01-02T10:00:00Z",
            "UTC",
            "2026-01-05T09:00:00Z",
        ),
        (
            "0 0 1 jan,jul *",
            "2026-02-01T00:00:00Z",
            "UTC",
            "2026-07-01T00:00:00Z",
        ),
        // Both day fields restricted: either day runs (the 13th or a Friday).
        (
            "0 0 13 * 5",
            "2026-01-01T00:00:00Z",
            "UTC",
            "2026-01-02T00:00:00Z",
        ),
        // One of them `*`: both must match — a Friday the 13th.
        (
            "0 0 13 * *",
            "2026-01-14T00:00:00Z",
            "UTC",
            "2026-02-13T00:00:00Z",
        ),
        (
            "@hourly",
            "2026-01-01T00:59:59Z",
            "UTC",
            "2026-01-01T01:00:00Z",
        ),
        (
            "@daily",
            "2026-01-01T00:00:00Z",
            "UTC",
            "2026-01-02T00:00:00Z",
        ),
        (
            "@weekly",
            "2026-01-01T00:00:00Z",
            "UTC",
            "2026-01-04T00:00:00Z",
        ),
        (
            "@monthly",
            "2026-01-01T00:00:00Z",
            "UTC",
            "2026-02-01T00:00:00Z",
        ),
        (
            "@yearly",
            "2026-01-01T00:00:00Z",
            "UTC",
            "2027-01-01T00:00:00Z",
        ),
        // 09:00 in New York is 14:00 UTC in winter and 13:00 in summer.
        (
            "0 9 * * *",
            "2026-01-01T00:00:00Z",
            "America/New_York",
            "2026-01-01T14:00:00Z",
        ),
        (
            "0 9 * * *",
            "2026-07-01T00:00:00Z",
            "America/New_York",
            "2026-07-01T13:00:00Z",
        ),
        ("0 0 30 2 *", "2026-01-01T00:00:00Z", "UTC", ""),
    ];
    for (spec, after, zone, want) in table {
        assert_eq!(
            next(spec, after, zone)?,
            want,
            "{spec} after {after} in {zone}"
        );
    }
    let s = Schedule::parse("TZ=Europe/Paris 0 12 * * *").map_err(anyhow::Error::msg)?;
    assert_eq!(s.zone.as_deref(), Some("Europe/Paris"));
    for bad in [
        "* * * *",
        "60 * * * *",
        "* * * * 7",
        "@every 1x",
        "@every 10",
        "*/0 * * * *",
        "x * * * *",
    ] {
        assert!(Schedule::parse(bad).is_err(), "{bad} is refused");
    }
    // `@every` counts from the last run, not from the clock.
    let every = Schedule::parse("@every 1h30m").map_err(anyhow::Error::msg)?;
    let due = every.due(
        ts("2026-01-01T00:00:10Z")?,
        ts("2026-01-01T03:10:00Z")?,
        &TimeZone::UTC,
        100,
    );
    assert_eq!(due.last, Some(ts("2026-01-01T03:00:10Z")?));
    assert_eq!(due.missed, 2);
    assert_eq!(due.next, Some(ts("2026-01-01T04:30:10Z")?));
    Ok(())
}

fn cronjob(spec: Value, status: Value) -> anyhow::Result<CronJob> {
    let mut full = json!({
        "schedule": "*/1 * * * *", "concurrencyPolicy": "Allow", "suspend": false,
        "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 1,
        "jobTemplate": {"metadata": {"labels": {"app": "tick"}}, "spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}
    });
    if let (Some(full), Some(spec)) = (full.as_object_mut(), spec.as_object()) {
        full.extend(spec.clone());
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "tick", "namespace": "default", "uid": "c",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": full,
        "status": status,
    }))?)
}

/// A Job of the CronJob, started at `start`, finished as `how` (or not).
fn job(name: &str, start: &str, how: Option<&str>) -> anyhow::Result<Job> {
    let conditions: Vec<Value> = how
        .map(|t| json!({"type": t, "status": "True"}))
        .into_iter()
        .collect();
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "status": {"startTime": start, "completionTime": how.map(|_| start), "conditions": conditions}
    }))?)
}

fn active(names: &[&str]) -> Value {
    json!(
        names
            .iter()
            .map(|n| json!({"kind": "Job", "name": n, "namespace": "default"}))
            .collect::<Vec<_>>()
    )
}

fn reasons(plan: &Plan) -> Vec<&str> {
    plan.events.iter().map(|e| e.1).collect()
}

fn active_names(plan: &Plan) -> Vec<String> {
    plan.status
        .active
        .iter()
        .flatten()
        .filter_map(|r| r.name.clone())
        .collect()
}

#[test]
fn a_due_time_creates_its_job_once_and_the_next_is_awaited() -> anyhow::Result<()> {
    let cj = cronjob(json!({}), json!({}))?;
    // Created at 00:00; at 00:00:40 nothing is due: look again at 00:01.
    let p = plan(&cj, &[], ts("2026-01-01T00:00:40Z")?);
    assert!(p.create.is_none());
    assert_eq!(p.requeue, Some(Duration::from_secs(20)));

    let now = ts("2026-01-01T00:01:05Z")?;
    let p = plan(&cj, &[], now);
    let name = p.create.as_ref().map(ResourceExt::name_any);
    // 2026-01-01T00:01Z is 29,453,761 minutes after the epoch.
    assert_eq!(name.as_deref(), Some("tick-29453761"));
    assert_eq!(
        p.status.last_schedule_time.as_ref().map(|t| t.0),
        Some(ts("2026-01-01T00:01:00Z")?)
    );
    let created = p.create.unwrap_or_default();
    assert_eq!(
        created.labels().get("app").map(String::as_str),
        Some("tick")
    );
    assert_eq!(
        created
            .annotations()
            .get(SCHEDULED_TIMESTAMP)
            .map(String::as_str),
        Some("2026-01-01T00:01:00Z")
    );
    assert_eq!(created.owner_references()[0].kind, "CronJob");

    // Run already: not again.
    let cj = cronjob(
        json!({}),
        json!({"lastScheduleTime": "2026-01-01T00:01:00Z",
        "active": active(&["tick-29453761"])}),
    )?;
    let running = job("tick-29453761", "2026-01-01T00:01:00Z", None)?;
    let p = plan(&cj, &[running], now);
    assert!(p.create.is_none());
    assert_eq!(active_names(&p), ["tick-29453761"]);
    Ok(())
}

#[test]
fn missed_times_run_once_unless_past_the_starting_deadline() -> anyhow::Result<()> {
    let now = ts("2026-01-01T00:10:30Z")?;
    // Down since 00:02: only 00:10 runs.
    let cj = cronjob(
        json!({}),
        json!({"lastScheduleTime": "2026-01-01T00:02:00Z"}),
    )?;
    let p = plan(&cj, &[], now);
    assert_eq!(
        p.create.as_ref().map(ResourceExt::name_any).as_deref(),
        Some("tick-29453770")
    );
    assert!(!reasons(&p).contains(&"TooManyMissedTimes"));

    // An hourly job whose hour passed 10 minutes ago with a 60 s deadline.
    let cj = cronjob(
        json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 60}),
        json!({}),
    )?;
    let p = plan(&cj, &[], ts("2026-01-01T01:10:00Z")?);
    assert!(p.create.is_none(), "too late to start");
    let p = plan(&cj, &[], ts("2026-01-01T01:00:30Z")?);
    assert!(p.create.is_some(), "within the deadline");

    // More than 100 missed: reported, the last one still runs.
    let cj = cronjob(
        json!({}),
        json!({"lastScheduleTime": "2026-01-01T00:00:00Z"}),
    )?;
    let p = plan(&cj, &[], ts("2026-01-01T03:00:10Z")?);
    assert!(
        reasons(&p).contains(&"TooManyMissedTimes"),
        "{:?}",
        reasons(&p)
    );
    assert!(p.create.is_some());
    Ok(())
}

#[test]
fn concurrency_policy_allows_forbids_or_replaces_a_running_job() -> anyhow::Result<()> {
    let now = ts("2026-01-01T00:02:05Z")?;
    let status =
        json!({"lastScheduleTime": "2026-01-01T00:01:00Z", "active": active(&["tick-29453761"])});
    let running = [job("tick-29453761", "2026-01-01T00:01:00Z", None)?];
    // (policy, creates, replaced, active after)
    let table: &[(&str, bool, &[&str], &[&str])] = &[
        ("Allow", true, &[], &["tick-29453761"]),
        ("Forbid", false, &[], &["tick-29453761"]),
        ("Replace", true, &["tick-29453761"], &[]),
    ];
    for &(policy, creates, replaced, after) in table {
        let cj = cronjob(json!({"concurrencyPolicy": policy}), status.clone())?;
        let p = plan(&cj, &running, now);
        assert_eq!(p.create.is_some(), creates, "{policy}");
        assert_eq!(p.replace, replaced, "{policy}");
        assert_eq!(active_names(&p), after, "{policy}");
    }
    Ok(())
}

#[test]
fn finished_jobs_leave_the_active_list_and_old_ones_are_deleted() -> anyhow::Result<()> {
    let now = ts("2026-01-01T00:05:30Z")?;
    let cj = cronjob(
        json!({"successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1}),
        json!({"lastScheduleTime": "2026-01-01T00:05:00Z", "active": active(&["j5", "gone"])}),
    )?;
    let jobs = [
        job("j1", "2026-01-01T00:01:00Z", Some("Complete"))?,
        job("j2", "2026-01-01T00:02:00Z", Some("Failed"))?,
        job("j3", "2026-01-01T00:03:00Z", Some("Failed"))?,
        job("j4", "2026-01-01T00:04:00Z", Some("Complete"))?,
        job("j5", "2026-01-01T00:05:00Z", Some("Complete"))?,
    ];
    let p = plan(&cj, &jobs, now);
    assert!(active_names(&p).is_empty());
    assert_eq!(
        p.status.last_successful_time.as_ref().map(|t| t.0),
        Some(ts("2026-01-01T00:05:00Z")?)
    );
    assert_eq!(
        p.cleanup,
        ["j1", "j4", "j2"],
        "all but the newest of each kind"
    );
    assert_eq!(reasons(&p), ["SawCompletedJob", "MissingJob"]);
    Ok(())
}

#[test]
fn a_suspended_cronjob_or_an_unknown_zone_starts_nothing() -> anyhow::Result<()> {
    let now = ts("2026-01-01T00:02:05Z")?;
    let cj = cronjob(json!({"suspend": true}), json!({}))?;
    assert!(plan(&cj, &[], now).create.is_none());
    let cj = cronjob(json!({"timeZone": "Mars/Olympus"}), json!({}))?;
    let p = plan(&cj, &[], now);
    assert!(p.create.is_none());
    assert_eq!(reasons(&p), ["UnknownTimeZone"]);
    Ok(())
}
