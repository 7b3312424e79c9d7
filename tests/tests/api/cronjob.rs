//! CronJobs as a user sees them with kubectl. The test does not wait for a
//! minute boundary: it sets `status.lastScheduleTime` three minutes back,
//! as if the controller had been down since, and the controller catches up
//! as Kubernetes does — one Job, for the most recent missed minute, named
//! after it. The Job runs (the test finishes its pod as the agent would),
//! leaves the active list and sets lastSuccessfulTime; a second Job made
//! with `kubectl create job --from=cronjob/...` finishes too and, with a
//! history limit of 1, the older one is deleted.

use anyhow::{Context, Result};
use k8s_openapi::jiff;
use serde_json::{Value, json};

use super::{
    ControlPlane,
    endpointslice::{get_json, wait_for},
    job::{finish_pod, settled},
};

const CRONJOB: &str = "apiVersion: batch/v1
kind: CronJob
metadata:
  name: tick
spec:
  schedule: '*/1 * * * *'
  successfulJobsHistoryLimit: 1
  jobTemplate:
    metadata:
      labels:
        app: tick
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: c
            image: busybox
";

fn job_names(list: &Value) -> Vec<String> {
    let mut out: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

/// The Jobs that completed.
fn complete(list: &Value) -> Vec<String> {
    let mut out: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| {
            j["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Complete" && c["status"] == "True")
        })
        .filter_map(|j| j["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

/// Waits for the one pod of `job` and finishes it.
async fn run_job(cp: &ControlPlane, job: &str) -> Result<()> {
    let selector = format!("batch.kubernetes.io/job-name={job}");
    let pods = wait_for(
        cp,
        &["pods", "-l", &selector],
        &format!("a pod of {job}"),
        |v| {
            if v["items"].as_array().is_some_and(|a| a.len() == 1) {
                Ok(())
            } else {
                Err(format!("{v}"))
            }
        },
    )
    .await?;
    let pod = pods["items"][0]["metadata"]["name"]
        .as_str()
        .context("a pod name")?
        .to_string();
    finish_pod(cp, &pod, "Succeeded").await?;
    cp.ok(
        &[
            "wait",
            "--for=condition=complete",
            &format!("job/{job}"),
            "--timeout=30s",
        ],
        None,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cronjob_catches_up_a_missed_minute_and_keeps_its_history() -> Result<()> {
    let cp = ControlPlane::start().await?;
    cp.ok(&["create", "-f", "-"], Some(CRONJOB)).await?;
    let down_since = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(3);
    let status =
        json!({"status": {"lastScheduleTime": down_since.round(jiff::Unit::Second)?.to_string()}});
    cp.ok(
        &[
            "patch",
            "cronjob",
            "tick",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        None,
    )
    .await?;

    let cj = wait_for(
        &cp,
        &["cronjob", "tick"],
        "one active job",
        |v| match v["status"]["active"].as_array() {
            Some(a) if a.len() == 1 => Ok(()),
            _ => Err(format!("status {}", v["status"])),
        },
    )
    .await?;
    let job = cj["status"]["active"][0]["name"]
        .as_str()
        .context("the active job's name")?
        .to_string();
    let minutes: i64 = job
        .strip_prefix("tick-")
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("job {job} is named tick-<minutes since the epoch>"))?;
    let scheduled = jiff::Timestamp::from_second(minutes * 60)?;
    assert!(
        scheduled > down_since && scheduled <= jiff::Timestamp::now(),
        "{scheduled}"
    );
    assert_eq!(
        cj["status"]["lastScheduleTime"].as_str(),
        Some(scheduled.to_string().as_str())
    );
    let spawned = get_json(&cp, &["job", &job]).await?;
    assert_eq!(spawned["metadata"]["labels"]["app"], "tick");
    assert_eq!(spawned["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    assert_eq!(
        spawned["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .as_str(),
        Some(scheduled.to_string().as_str())
    );
    // Suspended from here on, so a minute boundary during the test adds
    // no Job.
    cp.ok(
        &[
            "patch",
            "cronjob",
            "tick",
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":true}}"#,
        ],
        None,
    )
    .await?;
    let jobs = get_json(&cp, &["jobs"]).await?;
    for other in job_names(&jobs) {
        let n: i64 = other
            .strip_prefix("tick-")
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        assert!(
            n >= minutes,
            "the missed minutes run once, not one Job each: {other}"
        );
    }

    run_job(&cp, &job).await?;
    wait_for(
        &cp,
        &["cronjob", "tick"],
        "no active job, a last successful time",
        |v| {
            let s = &v["status"];
            if s["active"].as_array().is_none_or(Vec::is_empty)
                && s["lastSuccessfulTime"].is_string()
            {
                Ok(())
            } else {
                Err(format!("status {s}"))
            }
        },
    )
    .await?;

    // A manual run counts in the history: the older Job goes. Start times
    // are whole seconds and, as in Kubernetes, equal ones sort by name
    // ("manual" before "tick-..."), so the manual Job starts in a later
    // second than the scheduled one for "older" to be the scheduled one.
    let started = get_json(&cp, &["job", &job]).await?["status"]["startTime"]
        .as_str()
        .context("the scheduled job's startTime")?
        .parse::<jiff::Timestamp>()?;
    let later = started + jiff::SignedDuration::from_millis(1100);
    if let Ok(wait) = std::time::Duration::try_from(jiff::Timestamp::now().duration_until(later)) {
        tokio::time::sleep(wait).await;
    }
    cp.ok(&["create", "job", "manual", "--from=cronjob/tick"], None)
        .await?;
    run_job(&cp, "manual").await?;
    wait_for(&cp, &["jobs"], "only the newest successful job kept", |v| {
        let names = complete(v);
        if names == ["manual"] {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await?;
    settled(&cp, "cronjob", "tick").await?;
    let described = cp.ok(&["describe", "cronjob", "tick"], None).await?;
    for want in [
        format!("Created job {job}"),
        "SawCompletedJob".into(),
        format!("Deleted job {job}"),
    ] {
        assert!(
            described.contains(&want),
            "kubectl describe cronjob shows {want}: {described}"
        );
    }
    cp.stop().await
}
