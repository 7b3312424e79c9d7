//! PersistentVolumes as a user sees them with kubectl: a claim binds to
//! the smallest volume that fits and both show Bound; a claim nothing fits
//! waits with Kubernetes' FailedBinding event; a claim without a class
//! gets the default `local-path` class and waits for its first consumer;
//! a pod using it is scheduled, the claim gets the pod's node, a volume is
//! provisioned there (under that node's agent data dir) and bound, and
//! the pod binds to that node; a claim deleted while its pod runs waits
//! for the pod (pvc-protection), then its provisioned volume is deleted
//! (reclaimPolicy Delete); a static one is released (Retain).

use anyhow::Result;
use serde_json::Value;

use super::{
    ControlPlane,
    endpointslice::{get_json, wait_for},
    scheduler::add_node,
};

const VOLUMES: &str = "apiVersion: v1
kind: PersistentVolume
metadata:
  name: pv-small
spec:
  capacity:
    storage: 1Gi
  accessModes: [ReadWriteOnce]
  storageClassName: \"\"
  hostPath:
    path: /tmp/pv-small
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: pv-big
spec:
  capacity:
    storage: 5Gi
  accessModes: [ReadWriteOnce]
  storageClassName: \"\"
  hostPath:
    path: /tmp/pv-big
";

fn claim(name: &str, class: Option<&str>, size: &str) -> String {
    let class = class
        .map(|c| format!("  storageClassName: \"{c}\"\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\nspec:\n{class}  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: {size}\n"
    )
}

fn phase(want: &'static str) -> impl Fn(&Value) -> Result<(), String> {
    move |v| match v["status"]["phase"].as_str() {
        Some(p) if p == want => Ok(()),
        other => Err(format!("phase {other:?}")),
    }
}

/// The reasons and messages of the events about `name`.
async fn events(cp: &ControlPlane, name: &str, reason: &str) -> Result<Value> {
    let selector = format!("involvedObject.name={name},reason={reason}");
    wait_for(
        cp,
        &["events", "--field-selector", &selector],
        &format!("a {reason} event about {name}"),
        |v| match v["items"].as_array() {
            Some(items) if !items.is_empty() => Ok(()),
            _ => Err("no such event".into()),
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_bind_to_the_smallest_volume_that_fits_or_wait_saying_why() -> Result<()> {
    let cp = ControlPlane::start().await?;
    cp.ok(&["apply", "-f", "-"], Some(VOLUMES)).await?;
    cp.ok(
        &["apply", "-f", "-"],
        Some(&claim("data", Some(""), "500Mi")),
    )
    .await?;
    let pvc = wait_for(&cp, &["pvc", "data"], "claim data Bound", phase("Bound")).await?;
    assert_eq!(
        pvc["spec"]["volumeName"], "pv-small",
        "the smallest that fits"
    );
    assert_eq!(pvc["status"]["capacity"]["storage"], "1Gi");
    assert_eq!(
        pvc["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"],
        "yes"
    );
    let pv = wait_for(&cp, &["pv", "pv-small"], "pv-small Bound", phase("Bound")).await?;
    assert_eq!(pv["spec"]["claimRef"]["name"], "data");
    assert_eq!(pv["spec"]["claimRef"]["uid"], pvc["metadata"]["uid"]);
    let big = get_json(&cp, &["pv", "pv-big"]).await?;
    assert_eq!(big["status"]["phase"], "Available");

    // Nothing is big enough and no class can make one.
    cp.ok(
        &["apply", "-f", "-"],
        Some(&claim("huge", Some(""), "20Gi")),
    )
    .await?;
    let failed = events(&cp, "huge", "FailedBinding").await?;
    assert_eq!(
        failed["items"][0]["message"],
        "no persistent volumes available for this claim and no storage class is set"
    );
    assert_eq!(failed["items"][0]["type"], "Warning");
    assert_eq!(
        get_json(&cp, &["pvc", "huge"]).await?["status"]["phase"],
        "Pending"
    );

    // A static volume's default reclaimPolicy is Retain: released, kept.
    cp.ok(&["delete", "pvc", "data"], None).await?;
    wait_for(
        &cp,
        &["pv", "pv-small"],
        "pv-small Released",
        phase("Released"),
    )
    .await?;
    cp.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_class_claim_waits_for_its_pod_and_gets_a_volume_on_the_pods_node() -> Result<()>
{
    let cp = ControlPlane::start().await?;
    let sc = get_json(&cp, &["storageclass", "local-path"]).await?;
    assert_eq!(sc["provisioner"], "shoal.io/local-path");
    assert_eq!(sc["volumeBindingMode"], "WaitForFirstConsumer");
    assert_eq!(sc["reclaimPolicy"], "Delete");
    assert_eq!(
        sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"],
        "true"
    );

    cp.ok(&["apply", "-f", "-"], Some(&claim("data", None, "1Gi")))
        .await?;
    let pvc = get_json(&cp, &["pvc", "data"]).await?;
    assert_eq!(
        pvc["spec"]["storageClassName"], "local-path",
        "the default class"
    );
    let waiting = events(&cp, "data", "WaitForFirstConsumer").await?;
    assert_eq!(
        waiting["items"][0]["message"],
        "waiting for first consumer to be created before binding"
    );
    assert_eq!(
        get_json(&cp, &["pvc", "data"]).await?["status"]["phase"],
        "Pending"
    );

    add_node(&cp, "store-a", "4", None).await?;
    add_node(&cp, "store-b", "4", None).await?;
    let pod = "apiVersion: v1
kind: Pod
metadata:
  name: db
spec:
  containers:
  - name: c
    image: busybox
    volumeMounts:
    - name: data
      mountPath: /data
  volumes:
  - name: data
    persistentVolumeClaim:
      claimName: data
";
    cp.ok(&["apply", "-f", "-"], Some(pod)).await?;
    let pvc = wait_for(&cp, &["pvc", "data"], "claim data Bound", phase("Bound")).await?;
    let node = pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        node == "store-a" || node == "store-b",
        "selected node {node:?}"
    );
    let volume = pvc["spec"]["volumeName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        volume,
        format!(
            "pvc-{}",
            pvc["metadata"]["uid"].as_str().unwrap_or_default()
        )
    );
    let pv = get_json(&cp, &["pv", &volume]).await?;
    // Under the agent's data dir, as its Node says.
    let root = get_json(&cp, &["node", &node]).await?["metadata"]["annotations"]
        ["storage.shoal.io/local-path-root"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(root.ends_with("/storage"), "local-path root {root:?}");
    assert_eq!(pv["spec"]["hostPath"]["path"], format!("{root}/{volume}"));
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
            [0],
        node.as_str()
    );
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    let placed = wait_for(
        &cp,
        &["pod", "db"],
        "pod db bound",
        |v| match v["spec"]["nodeName"].as_str() {
            Some(n) if !n.is_empty() => Ok(()),
            _ => Err("not bound".into()),
        },
    )
    .await?;
    assert_eq!(
        placed["spec"]["nodeName"],
        node.as_str(),
        "the pod goes where its volume is"
    );

    // A claim in use stays, Terminating, until its pod is gone; then,
    // reclaim Delete: the claim gone, the volume goes too.
    assert_eq!(
        pvc["metadata"]["finalizers"][0],
        "kubernetes.io/pvc-protection"
    );
    cp.ok(&["delete", "pvc", "data", "--wait=false"], None)
        .await?;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let held = get_json(&cp, &["pvc", "data"]).await?;
    assert!(
        held["metadata"]["deletionTimestamp"].is_string(),
        "{held:#}"
    );
    assert_eq!(
        get_json(&cp, &["pv", &volume]).await?["status"]["phase"],
        "Bound"
    );
    cp.ok(
        &["delete", "pod", "db", "--grace-period=0", "--force"],
        None,
    )
    .await?;
    wait_for(
        &cp,
        &["pv"],
        "the provisioned volume deleted",
        |v| match v["items"].as_array() {
            Some(items) if items.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await?;
    let gone = cp.kubectl(&["get", "pvc", "data"], None).await?;
    assert!(
        !gone.status.success(),
        "the claim should be gone with its pod"
    );
    cp.stop().await
}
