use serde_json::{Value, json};

use super::*;

const NOW: &str = "2026-01-01T01:00:00Z";

fn job(spec: Value, status: Value) -> anyhow::Result<Job> {
    let mut full = json!({
        "parallelism": 1, "backoffLimit": 6, "completionMode": "NonIndexed",
        "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "j"}},
        "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}
    });
    if let (Some(full), Some(spec)) = (full.as_object_mut(), spec.as_object()) {
        full.extend(spec.clone());
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "pi", "namespace": "default", "uid": "j"},
        "spec": full,
        "status": status,
    }))?)
}

/// A pod of the Job: `phase`, with the tracking finalizer or not, the
/// index annotation when given.
fn pod(name: &str, phase: &str, tracked: bool, index: Option<i32>) -> anyhow::Result<Pod> {
    let finalizers: Vec<&str> = if tracked {
        vec![TRACKING_FINALIZER]
    } else {
        vec![]
    };
    let annotations = index.map(|i| json!({COMPLETION_INDEX: i.to_string()}));
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "uid": format!("uid-{name}"), "finalizers": finalizers,
                     "annotations": annotations, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": phase}
    }))?)
}

fn names(pods: &[Pod]) -> Vec<String> {
    let mut v: Vec<String> = pods.iter().map(ResourceExt::name_any).collect();
    v.sort();
    v
}

fn cond(plan: &Plan, type_: &str) -> Option<String> {
    plan.status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
        .and_then(|c| c.reason.clone())
}

#[test]
fn pods_are_created_up_to_parallelism_and_the_completions_left() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    // (completions, parallelism, succeeded so far, running) → new pods.
    let table: &[(Option<i32>, i32, i32, usize, usize)] = &[
        (Some(3), 2, 0, 0, 2),
        (Some(3), 2, 0, 1, 1),
        (Some(3), 2, 2, 0, 1),
        (Some(3), 2, 3, 0, 0),
        (None, 3, 0, 0, 3),
        (None, 3, 1, 1, 0),
    ];
    for &(completions, parallelism, succeeded, running, want) in table {
        let j = job(
            json!({"completions": completions, "parallelism": parallelism}),
            json!({"succeeded": succeeded}),
        )?;
        let pods: Vec<Pod> = (0..running)
            .map(|i| pod(&format!("p{i}"), "Running", true, None))
            .collect::<anyhow::Result<_>>()?;
        let p = plan(&j, &pods, now);
        assert_eq!(
            p.create.len(),
            want,
            "completions {completions:?} parallelism {parallelism} succeeded {succeeded} running {running}"
        );
        assert!(p.delete.is_empty());
    }
    Ok(())
}

#[test]
fn a_finished_pod_is_uncounted_then_released_and_counted_once() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let j = job(
        json!({"completions": 3, "parallelism": 2}),
        json!({"succeeded": 1}),
    )?;
    let pods = [
        pod("done", "Succeeded", true, None)?,
        pod("counted", "Succeeded", false, None)?,
        pod("running", "Running", true, None)?,
    ];
    let p = plan(&j, &pods, now);
    assert_eq!(
        p.uncount.0,
        ["uid-done"],
        "recorded before its finalizer goes"
    );
    assert_eq!(names(&p.release), ["done"]);
    assert_eq!(p.status.succeeded, Some(2), "the released pod now counts");
    assert_eq!(p.status.active, Some(1));
    assert_eq!(p.create.len(), 0, "1 running covers the 1 completion left");

    // A uid already uncounted whose pod is gone counts without being
    // recorded again.
    let j = job(
        json!({"completions": 3}),
        json!({"succeeded": 1, "uncountedTerminatedPods": {"succeeded": ["uid-gone"]}}),
    )?;
    let p = plan(&j, &[], now);
    assert!(p.uncount.0.is_empty());
    assert_eq!(p.status.succeeded, Some(2));
    Ok(())
}

#[test]
fn the_job_completes_once_its_completions_succeeded() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let j = job(
        json!({"completions": 2, "parallelism": 2}),
        json!({"succeeded": 1}),
    )?;
    let p = plan(&j, &[pod("last", "Succeeded", true, None)?], now);
    assert_eq!(
        cond(&p, "SuccessCriteriaMet").as_deref(),
        Some(COMPLETIONS_REACHED)
    );
    assert_eq!(cond(&p, "Complete").as_deref(), Some(COMPLETIONS_REACHED));
    assert!(p.status.completion_time.is_some());
    assert!(p.events.iter().any(|e| e.1 == "Completed"));
    Ok(())
}

#[test]
fn more_failures_than_the_backoff_limit_fail_the_job() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let j = job(
        json!({"completions": 3, "parallelism": 2, "backoffLimit": 1}),
        json!({"failed": 1, "startTime": "2026-01-01T00:00:00Z"}),
    )?;
    let pods = [
        pod("f2", "Failed", true, None)?,
        pod("run", "Running", true, None)?,
    ];
    let p = plan(&j, &pods, now);
    assert_eq!(
        cond(&p, "FailureTarget").as_deref(),
        Some(BACKOFF_LIMIT_EXCEEDED)
    );
    assert_eq!(
        cond(&p, "Failed"),
        None,
        "not before its running pod is gone"
    );
    assert_eq!(names(&p.delete), ["run"]);
    assert_eq!(names(&p.release), ["f2", "run"]);
    assert_eq!(p.status.failed, Some(2));
    assert!(p.create.is_empty());

    // Within the limit: a replacement after the back-off.
    let j = job(json!({"completions": 1, "backoffLimit": 1}), json!({}))?;
    let mut failed = pod("f1", "Failed", false, None)?;
    failed.status = Some(serde_json::from_value(json!({"phase": "Failed",
        "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:59:55Z"}]}))?);
    let j2 = job(
        json!({"completions": 1, "backoffLimit": 1}),
        json!({"failed": 1}),
    )?;
    let p = plan(&j2, std::slice::from_ref(&failed), now);
    assert!(p.create.is_empty(), "10 s back-off after the first failure");
    assert_eq!(p.requeue, Some(Duration::from_secs(5)));
    let later = now + jiff::SignedDuration::from_secs(6);
    assert_eq!(plan(&j2, &[failed], later).create.len(), 1);
    assert_eq!(plan(&j, &[], now).create.len(), 1);
    Ok(())
}

#[test]
fn restarts_count_against_the_backoff_limit_with_restart_policy_on_failure() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let j = job(
        json!({"backoffLimit": 2, "template": {"spec": {"restartPolicy": "OnFailure",
            "containers": [{"name": "c", "image": "busybox"}]}}}),
        json!({}),
    )?;
    let mut p0 = pod("p", "Running", true, None)?;
    p0.status = Some(serde_json::from_value(json!({"phase": "Running",
        "containerStatuses": [{"name": "c", "image": "busybox", "imageID": "", "ready": false, "restartCount": 3}]}))?);
    let p = plan(&j, &[p0], now);
    assert_eq!(
        cond(&p, "FailureTarget").as_deref(),
        Some(BACKOFF_LIMIT_EXCEEDED)
    );
    Ok(())
}

#[test]
fn a_job_past_its_active_deadline_fails_with_deadline_exceeded() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let j = job(
        json!({"activeDeadlineSeconds": 60}),
        json!({"startTime": "2026-01-01T00:59:30Z"}),
    )?;
    let running = [pod("p", "Running", true, None)?];
    let p = plan(&j, &running, now);
    assert_eq!(cond(&p, "FailureTarget"), None);
    assert_eq!(
        p.requeue,
        Some(Duration::from_secs(30)),
        "looks again at the deadline"
    );
    let p = plan(&j, &running, now + jiff::SignedDuration::from_secs(31));
    assert_eq!(
        cond(&p, "FailureTarget").as_deref(),
        Some(DEADLINE_EXCEEDED)
    );
    assert_eq!(names(&p.delete), ["p"]);
    let p = plan(&j, &[], now + jiff::SignedDuration::from_secs(31));
    assert_eq!(cond(&p, "Failed").as_deref(), Some(DEADLINE_EXCEEDED));
    Ok(())
}

#[test]
fn an_indexed_job_runs_each_index_once_lowest_first() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let j = job(
        json!({"completionMode": "Indexed", "completions": 5, "parallelism": 2}),
        json!({"completedIndexes": "0"}),
    )?;
    let pods = [
        pod("pi-2-a", "Succeeded", true, Some(2))?,
        pod("pi-1-a", "Running", true, Some(1))?,
    ];
    let p = plan(&j, &pods, now);
    assert_eq!(p.create, [Some(3)]);
    assert_eq!(p.status.completed_indexes.as_deref(), Some("0,2"));

    let pod = new_pod(&j, Some(3));
    assert_eq!(pod.metadata.generate_name.as_deref(), Some("pi-3-"));
    assert_eq!(
        pod.annotations().get(COMPLETION_INDEX).map(String::as_str),
        Some("3")
    );
    assert_eq!(
        pod.labels().get(COMPLETION_INDEX).map(String::as_str),
        Some("3")
    );
    let spec = pod.spec.unwrap_or_default();
    assert_eq!(spec.hostname.as_deref(), Some("pi-3"));
    let env = spec.containers[0].env.clone().unwrap_or_default();
    assert_eq!(
        env[0]
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.annotations['batch.kubernetes.io/job-completion-index']")
    );
    assert!(
        pod.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&TRACKING_FINALIZER.to_string())
    );
    Ok(())
}

#[test]
fn completed_indexes_read_and_write_as_kubernetes_writes_them() {
    let set = parse_indexes("1,3-5,7");
    assert_eq!(set.iter().copied().collect::<Vec<_>>(), [1, 3, 4, 5, 7]);
    assert_eq!(format_indexes(&set), "1,3-5,7");
    assert_eq!(format_indexes(&[0, 1].into_iter().collect()), "0-1");
    assert_eq!(format_indexes(&BTreeSet::new()), "");
}

#[test]
fn a_suspended_job_stops_its_pods_and_a_finished_one_expires_after_its_ttl() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let j = job(
        json!({"suspend": true}),
        json!({"startTime": "2026-01-01T00:00:00Z"}),
    )?;
    let p = plan(&j, &[pod("p", "Running", true, None)?], now);
    assert_eq!(names(&p.delete), ["p"]);
    assert_eq!(cond(&p, "Suspended").as_deref(), Some("JobSuspended"));
    assert!(p.status.start_time.is_none());

    let done = json!({"completionTime": "2026-01-01T00:59:00Z", "succeeded": 1,
        "conditions": [{"type": "Complete", "status": "True"}]});
    let j = job(json!({"ttlSecondsAfterFinished": 100}), done)?;
    let p = plan(&j, &[], now);
    assert!(!p.expire);
    assert_eq!(p.requeue, Some(Duration::from_secs(40)));
    assert!(plan(&j, &[], now + jiff::SignedDuration::from_secs(40)).expire);
    Ok(())
}

/// A failed pod whose container `c` exited with `code`, with the
/// DisruptionTarget condition when `disrupted`.
fn exited(name: &str, code: i32, disrupted: bool) -> anyhow::Result<Pod> {
    let conditions: Vec<Value> = disrupted
        .then(|| json!({"type": "DisruptionTarget", "status": "True"}))
        .into_iter()
        .collect();
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                     "finalizers": [TRACKING_FINALIZER]},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Failed", "conditions": conditions, "containerStatuses": [{
            "name": "c", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code}}}]}
    }))?)
}

#[test]
fn the_pod_failure_policy_fails_the_job_ignores_or_counts_a_failure() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let policy = json!({"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In", "values": [42]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [0]}}
    ]});
    let j = job(
        json!({"completions": 3, "parallelism": 1, "backoffLimit": 6, "podFailurePolicy": policy}),
        json!({"startTime": "2026-01-01T00:00:00Z"}),
    )?;
    // (pod, failure reason, counted as failed)
    let table = [
        (exited("p", 42, false)?, Some(POD_FAILURE_POLICY), 1),
        (exited("p", 1, true)?, None, 0),
        (exited("p", 1, false)?, None, 1),
    ];
    for (pod, reason, failed) in table {
        let code = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default()[0]
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code);
        let p = plan(&j, std::slice::from_ref(&pod), now);
        assert_eq!(
            cond(&p, "FailureTarget").as_deref(),
            reason,
            "exit {code:?}"
        );
        assert_eq!(p.status.failed, Some(failed), "exit {code:?}");
        assert_eq!(names(&p.release), ["p"], "released either way");
    }
    let p = plan(&j, &[exited("p", 42, false)?], now);
    let message = p
        .status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed")
        .and_then(|c| c.message.clone());
    assert_eq!(
        message.as_deref(),
        Some(
            "Container c for pod default/p failed with exit code 42 matching FailJob rule at index 0"
        )
    );
    Ok(())
}

#[test]
fn a_success_policy_rule_ends_an_indexed_job_early() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let spec = |rules: Value| {
        json!({"completionMode": "Indexed", "completions": 5, "parallelism": 5,
               "successPolicy": {"rules": rules}})
    };
    // (rules, completed indexes, met)
    let table = [
        (json!([{"succeededIndexes": "0"}]), "0", true),
        (json!([{"succeededIndexes": "0-2"}]), "0,2", false),
        (
            json!([{"succeededIndexes": "0-2", "succeededCount": 2}]),
            "0,2",
            true,
        ),
        (json!([{"succeededCount": 3}]), "1,3", false),
        (
            json!([{"succeededIndexes": "4"}, {"succeededCount": 2}]),
            "1,3",
            true,
        ),
    ];
    for (rules, done, met) in table {
        let j = job(spec(rules.clone()), json!({"completedIndexes": done}))?;
        let running = [pod("pi-4-a", "Running", true, Some(4))?];
        let p = plan(&j, &running, now);
        assert_eq!(
            cond(&p, "SuccessCriteriaMet").as_deref() == Some("SuccessPolicy"),
            met,
            "{rules} with {done}"
        );
        assert_eq!(!p.delete.is_empty(), met, "the rest stop once met: {rules}");
    }
    let j = job(
        spec(json!([{"succeededCount": 2}])),
        json!({"completedIndexes": "1,3"}),
    )?;
    let p = plan(&j, &[], now);
    assert_eq!(cond(&p, "Complete").as_deref(), Some("SuccessPolicy"));
    let message = p
        .status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Complete")
        .and_then(|c| c.message.clone());
    assert_eq!(message.as_deref(), Some("Matched rules at index 0"));
    Ok(())
}
