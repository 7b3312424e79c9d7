//! DaemonSets as a user sees them with kubectl: one pod per node its
//! nodeSelector accepts, placed by the scheduler through the pod's
//! node-name affinity; a node that joins gets one, a node relabelled out
//! of the selector loses it, and a new image rolls node by node until
//! `kubectl rollout status` is done. No agent runs here: the test reports
//! the pods ready as the agent would.

use anyhow::Result;
use serde_json::Value;

use super::{
    ControlPlane,
    endpointslice::{get_json, set_pod_status, wait_for},
    job::settled,
    scheduler::add_node,
};

const DS: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      nodeSelector:
        role: edge
      containers:
      - name: c
        image: busybox:1
";

/// (pod, node, image) of the pods not being deleted, by node.
fn placed(list: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&p["metadata"]["name"]),
                s(&p["spec"]["nodeName"]),
                s(&p["spec"]["containers"][0]["image"]),
            )
        })
        .collect();
    out.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    out
}

/// Waits until the live pods sit on exactly `nodes`, all with `image`.
async fn wait_nodes(
    cp: &ControlPlane,
    nodes: &[&str],
    image: &str,
) -> Result<Vec<(String, String, String)>> {
    let list = wait_for(
        cp,
        &["pods", "-l", "app=agent"],
        &format!("pods on {nodes:?}"),
        |v| {
            let got = placed(v);
            let on: Vec<&str> = got.iter().map(|p| p.1.as_str()).collect();
            if on == nodes && got.iter().all(|p| p.2 == image) {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await?;
    Ok(placed(&list))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_follows_its_nodes_and_rolls_a_new_image() -> Result<()> {
    let cp = ControlPlane::start().await?;
    add_node(&cp, "edge-1", "4", Some(("role", "edge"))).await?;
    add_node(&cp, "core-1", "4", Some(("role", "core"))).await?;
    cp.ok(&["apply", "-f", "-"], Some(DS)).await?;

    let pods = wait_nodes(&cp, &["edge-1"], "busybox:1").await?;
    let pod = get_json(&cp, &["pod", &pods[0].0]).await?;
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "DaemonSet");
    assert!(
        pod["metadata"]["labels"]["controller-revision-hash"].is_string(),
        "{}",
        pod["metadata"]
    );
    let term = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchFields"][0];
    assert_eq!(term["key"], "metadata.name");
    assert_eq!(term["values"][0], "edge-1");

    // A node joins.
    add_node(&cp, "edge-2", "4", Some(("role", "edge"))).await?;
    wait_nodes(&cp, &["edge-1", "edge-2"], "busybox:1").await?;
    // A node leaves the selector, another joins it.
    cp.ok(
        &["label", "node", "edge-1", "role=core", "--overwrite"],
        None,
    )
    .await?;
    cp.ok(
        &["label", "node", "core-1", "role=edge", "--overwrite"],
        None,
    )
    .await?;
    let pods = wait_nodes(&cp, &["core-1", "edge-2"], "busybox:1").await?;
    for (i, (name, _, _)) in pods.iter().enumerate() {
        set_pod_status(&cp, name, u8::try_from(i + 20)?, true).await?;
    }
    wait_for(&cp, &["ds", "agent"], "2 desired, 2 ready", |v| {
        let s = &v["status"];
        let got = (
            s["desiredNumberScheduled"].as_i64(),
            s["numberReady"].as_i64(),
            s["numberAvailable"].as_i64(),
        );
        if got == (Some(2), Some(2), Some(2)) {
            Ok(())
        } else {
            Err(format!("status {s}"))
        }
    })
    .await?;

    // A new image rolls one node at a time: the test reports each new pod
    // ready as its node's agent would.
    cp.ok(&["set", "image", "ds/agent", "c=busybox:2"], None)
        .await?;
    let mut n = 30;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let list = get_json(&cp, &["pods", "-l", "app=agent"]).await?;
        let now = placed(&list);
        // maxUnavailable 1 of 2: one ready pod at every moment.
        let ready = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count();
        assert!(ready >= 1, "no ready pod left mid-rollout: {now:?}");
        if now.len() == 2 && now.iter().all(|p| p.2 == "busybox:2") {
            break;
        }
        for p in list["items"].as_array().into_iter().flatten() {
            let unready = p["status"]["phase"] != "Running";
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            if unready
                && p["spec"]["nodeName"].is_string()
                && p["metadata"]["deletionTimestamp"].is_null()
            {
                n += 1;
                set_pod_status(&cp, name, n, true).await?;
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the rollout did not finish: {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let pods = get_json(&cp, &["pods", "-l", "app=agent"]).await?;
    for (i, (name, _, image)) in placed(&pods).iter().enumerate() {
        if image == "busybox:2" {
            set_pod_status(&cp, name, u8::try_from(i + 40)?, true).await?;
        }
    }
    cp.ok(&["rollout", "status", "ds/agent", "--timeout=30s"], None)
        .await?;
    settled(&cp, "ds", "agent").await?;
    let history = cp.ok(&["rollout", "history", "ds/agent"], None).await?;
    assert!(
        history.contains('1') && history.contains('2'),
        "two revisions: {history}"
    );
    let described = cp.ok(&["describe", "ds", "agent"], None).await?;
    assert!(
        described.contains("SuccessfulCreate") && described.contains("SuccessfulDelete"),
        "{described}"
    );
    cp.stop().await
}
