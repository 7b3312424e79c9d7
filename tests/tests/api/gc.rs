//! Garbage collection as a user sees it with kubectl: deleting a
//! ReplicaSet deletes its pods (background), `--cascade=orphan` leaves
//! them running without an owner, `--cascade=foreground` removes the pods
//! before the ReplicaSet, and any object owned by a deleted object goes.

use anyhow::Result;
use serde_json::Value;

use super::{ControlPlane, endpointslice::wait_for};

fn replica_set(name: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: {name}
spec:
  replicas: 2
  selector:
    matchLabels:
      set: {name}
  template:
    metadata:
      labels:
        set: {name}
    spec:
      containers:
      - name: c
        image: busybox
"
    )
}

fn count(n: usize) -> impl Fn(&Value) -> Result<(), String> {
    move |v| match v["items"].as_array().map(Vec::len) {
        Some(got) if got == n => Ok(()),
        got => Err(format!("{got:?} objects")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_follow_their_owners_deletion() -> Result<()> {
    let cp = ControlPlane::start().await?;
    for name in ["bg", "keep", "fg"] {
        cp.ok(&["apply", "-f", "-"], Some(&replica_set(name)))
            .await?;
        wait_for(
            &cp,
            &["pods", "-l", &format!("set={name}")],
            "2 pods",
            count(2),
        )
        .await?;
    }

    // Background (kubectl's default): the pods go after the set.
    cp.ok(&["delete", "rs", "bg"], None).await?;
    wait_for(
        &cp,
        &["pods", "-l", "set=bg"],
        "bg's pods deleted",
        count(0),
    )
    .await?;

    // Orphan: the set goes, the pods stay, owned by nobody.
    cp.ok(&["delete", "rs", "keep", "--cascade=orphan"], None)
        .await?;
    wait_for(
        &cp,
        &["rs", "--field-selector", "metadata.name=keep"],
        "rs keep gone",
        count(0),
    )
    .await?;
    let kept = wait_for(
        &cp,
        &["pods", "-l", "set=keep"],
        "keep's pods released",
        |v| {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            let owned = items
                .iter()
                .filter(|p| {
                    !p["metadata"]["ownerReferences"]
                        .as_array()
                        .is_none_or(Vec::is_empty)
                })
                .count();
            if items.len() == 2 && owned == 0 {
                Ok(())
            } else {
                Err(format!("{} pods, {owned} still owned", items.len()))
            }
        },
    )
    .await?;
    assert_eq!(kept["items"].as_array().map(Vec::len), Some(2));

    // Foreground: the pods go, then the set.
    cp.ok(
        &[
            "delete",
            "rs",
            "fg",
            "--cascade=foreground",
            "--timeout=30s",
        ],
        None,
    )
    .await?;
    wait_for(
        &cp,
        &["pods", "-l", "set=fg"],
        "fg's pods deleted",
        count(0),
    )
    .await?;
    wait_for(
        &cp,
        &["rs", "--field-selector", "metadata.name=fg"],
        "rs fg gone",
        count(0),
    )
    .await?;

    // Any kind: a ConfigMap owned by another one goes with it.
    // kubectl create sends protobuf, which shoal does not read: apply YAML.
    cp.ok(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: parent\n"),
    )
    .await?;
    let uid = cp
        .ok(
            &[
                "get",
                "configmap",
                "parent",
                "-o",
                "jsonpath={.metadata.uid}",
            ],
            None,
        )
        .await?;
    let child = format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: child
  ownerReferences:
  - apiVersion: v1
    kind: ConfigMap
    name: parent
    uid: {uid}
"
    );
    cp.ok(&["apply", "-f", "-"], Some(&child)).await?;
    cp.ok(&["delete", "configmap", "parent"], None).await?;
    wait_for(
        &cp,
        &["configmaps", "--field-selector", "metadata.name=child"],
        "child gone",
        count(0),
    )
    .await?;
    cp.stop().await
}
