//! Jobs as a user sees them with kubectl: pods run `parallelism` at a time
//! until `completions` succeeded and `kubectl wait --for=condition=complete`
//! returns; a Job whose pods fail more than `backoffLimit` allows ends
//! Failed with BackoffLimitExceeded. No agent runs here: the test finishes
//! the pods as the agent would.

use anyhow::Result;
use serde_json::{Value, json};

use super::{
    ControlPlane,
    endpointslice::{get_json, wait_for},
};

fn job(name: &str, completions: u32, parallelism: u32, backoff_limit: u32) -> String {
    format!(
        "apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
  completions: {completions}
  parallelism: {parallelism}
  backoffLimit: {backoff_limit}
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: c
        image: busybox
"
    )
}

/// The Job's pods that have not finished, by name.
fn running(list: &Value) -> Vec<String> {
    let mut out: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

/// Fails when `kind/name` keeps changing once there is nothing left to do
/// (a controller rewriting the same status in a loop).
pub(super) async fn settled(cp: &ControlPlane, kind: &str, name: &str) -> Result<()> {
    let rv = |v: Value| {
        v["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string)
    };
    let before = rv(get_json(cp, &[kind, name]).await?);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let after = rv(get_json(cp, &[kind, name]).await?);
    anyhow::ensure!(
        before == after,
        "{kind}/{name} changed from {before:?} to {after:?} with nothing to do"
    );
    Ok(())
}

pub(super) async fn finish_pod(cp: &ControlPlane, name: &str, phase: &str) -> Result<()> {
    let status = json!({"status": {"phase": phase}});
    cp.ok(
        &[
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        None,
    )
    .await?;
    Ok(())
}

async fn wait_running(cp: &ControlPlane, job: &str, n: usize) -> Result<Vec<String>> {
    let selector = format!("batch.kubernetes.io/job-name={job}");
    let list = wait_for(
        cp,
        &["pods", "-l", &selector],
        &format!("{n} running pods of {job}"),
        |v| {
            let got = running(v);
            if got.len() == n {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await?;
    Ok(running(&list))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_its_completions_and_one_that_keeps_failing_gives_up() -> Result<()> {
    let cp = ControlPlane::start().await?;
    cp.ok(&["create", "-f", "-"], Some(&job("pi", 3, 2, 6)))
        .await?;

    let first = wait_running(&cp, "pi", 2).await?;
    let uid = cp
        .ok(
            &["get", "job", "pi", "-o", "jsonpath={.metadata.uid}"],
            None,
        )
        .await?;
    let pod = get_json(&cp, &["pod", &first[0]]).await?;
    let meta = &pod["metadata"];
    assert!(first[0].starts_with("pi-"), "{}", first[0]);
    assert_eq!(meta["labels"]["batch.kubernetes.io/job-name"], "pi");
    assert_eq!(meta["labels"]["job-name"], "pi");
    assert_eq!(
        meta["labels"]["batch.kubernetes.io/controller-uid"].as_str(),
        Some(uid.as_str())
    );
    assert_eq!(
        meta["labels"]["controller-uid"].as_str(),
        Some(uid.as_str())
    );
    assert_eq!(
        meta["finalizers"],
        json!(["batch.kubernetes.io/job-tracking"])
    );
    assert_eq!(meta["ownerReferences"][0]["kind"], "Job");
    assert_eq!(meta["ownerReferences"][0]["controller"], true);

    for name in &first {
        finish_pod(&cp, name, "Succeeded").await?;
    }
    // Two done, one to go: one more pod, not two.
    let third = wait_running(&cp, "pi", 1).await?;
    assert!(!first.contains(&third[0]));
    wait_for(&cp, &["job", "pi"], "2 succeeded, 1 active", |v| {
        let s = &v["status"];
        if (s["succeeded"].as_i64(), s["active"].as_i64()) == (Some(2), Some(1)) {
            Ok(())
        } else {
            Err(format!("status {s}"))
        }
    })
    .await?;
    finish_pod(&cp, &third[0], "Succeeded").await?;
    cp.ok(
        &[
            "wait",
            "--for=condition=complete",
            "job/pi",
            "--timeout=30s",
        ],
        None,
    )
    .await?;
    settled(&cp, "job", "pi").await?;
    let done = get_json(&cp, &["job", "pi"]).await?;
    assert_eq!(done["status"]["succeeded"], 3);
    assert!(
        done["status"]["completionTime"].is_string(),
        "{}",
        done["status"]
    );
    let table = cp.ok(&["get", "job", "pi"], None).await?;
    assert!(
        table.contains("Complete") && table.contains("3/3"),
        "kubectl get job: {table}"
    );
    let pods = get_json(&cp, &["pods", "-l", "batch.kubernetes.io/job-name=pi"]).await?;
    for p in pods["items"].as_array().into_iter().flatten() {
        assert!(
            p["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "counted pods are let go: {}",
            p["metadata"]
        );
    }
    let described = cp.ok(&["describe", "job", "pi"], None).await?;
    assert!(
        described.contains("SuccessfulCreate") && described.contains("Completed"),
        "kubectl describe job lists the creations and completion: {described}"
    );

    // Two pods fail at once: more than backoffLimit 1 allows.
    cp.ok(&["create", "-f", "-"], Some(&job("flaky", 4, 2, 1)))
        .await?;
    for name in wait_running(&cp, "flaky", 2).await? {
        finish_pod(&cp, &name, "Failed").await?;
    }
    cp.ok(
        &[
            "wait",
            "--for=condition=failed",
            "job/flaky",
            "--timeout=30s",
        ],
        None,
    )
    .await?;
    let failed = get_json(&cp, &["job", "flaky"]).await?;
    let reason = failed["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Failed")
        .map(|c| c["reason"].clone());
    assert_eq!(reason, Some(json!("BackoffLimitExceeded")));
    assert_eq!(failed["status"]["failed"], 2);
    let described = cp.ok(&["describe", "job", "flaky"], None).await?;
    assert!(
        described.contains("BackoffLimitExceeded") && described.contains("Warning"),
        "a Warning event says why: {described}"
    );

    // A FailJob rule of the pod failure policy: the first matching exit
    // code fails the Job, whatever backoffLimit says.
    let policy = "  podFailurePolicy:
    rules:
    - action: FailJob
      onExitCodes:
        operator: In
        values: [42]
  backoffLimit";
    cp.ok(
        &["create", "-f", "-"],
        Some(&job("strict", 1, 1, 6).replace("  backoffLimit", policy)),
    )
    .await?;
    let pod = wait_running(&cp, "strict", 1).await?;
    let status = json!({"status": {"phase": "Failed", "containerStatuses": [{
        "name": "c", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 42}}}]}});
    cp.ok(
        &[
            "patch",
            "pod",
            &pod[0],
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        None,
    )
    .await?;
    cp.ok(
        &[
            "wait",
            "--for=condition=failed",
            "job/strict",
            "--timeout=30s",
        ],
        None,
    )
    .await?;
    let strict = get_json(&cp, &["job", "strict"]).await?;
    let failed = strict["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Failed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(failed["reason"], "PodFailurePolicy");
    assert_eq!(
        failed["message"].as_str(),
        Some(format!("Container c for pod default/{} failed with exit code 42 matching FailJob rule at index 0", pod[0]).as_str())
    );

    // Indexed: one pod per index, the index in its name, annotation and
    // environment.
    cp.ok(
        &["create", "-f", "-"],
        Some(&job("idx", 2, 2, 6).replace(
            "  backoffLimit",
            "  completionMode: Indexed\n  backoffLimit",
        )),
    )
    .await?;
    let pods = wait_running(&cp, "idx", 2).await?;
    settled(&cp, "job", "idx").await?;
    for name in &pods {
        let pod = get_json(&cp, &["pod", name]).await?;
        let index =
            pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"].as_str();
        assert!(
            name.starts_with(&format!("idx-{}-", index.unwrap_or("?"))),
            "{name}"
        );
        assert_eq!(
            pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"].as_str(),
            index
        );
        assert_eq!(
            pod["spec"]["hostname"].as_str(),
            index.map(|x| format!("idx-{x}")).as_deref()
        );
        assert_eq!(
            pod["spec"]["containers"][0]["env"][0]["name"],
            "JOB_COMPLETION_INDEX"
        );
    }
    for name in &pods {
        finish_pod(&cp, name, "Succeeded").await?;
    }
    cp.ok(
        &[
            "wait",
            "--for=condition=complete",
            "job/idx",
            "--timeout=30s",
        ],
        None,
    )
    .await?;
    let idx = get_json(&cp, &["job", "idx"]).await?;
    assert_eq!(idx["status"]["completedIndexes"], "0-1");

    // A Job deleted while its pod runs: the pod loses the tracking
    // finalizer and goes with it.
    cp.ok(&["create", "-f", "-"], Some(&job("sleepy", 1, 1, 6)))
        .await?;
    wait_running(&cp, "sleepy", 1).await?;
    cp.ok(&["delete", "job", "sleepy"], None).await?;
    wait_for(
        &cp,
        &["pods", "-l", "batch.kubernetes.io/job-name=sleepy"],
        "the deleted Job's pod gone",
        |v| match v["items"].as_array() {
            Some(items) if !items.is_empty() => Err(format!("{} left", items.len())),
            _ => Ok(()),
        },
    )
    .await?;
    cp.stop().await
}
