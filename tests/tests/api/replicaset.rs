//! ReplicaSets as a user sees them with kubectl: the replicas exist as
//! pods from the template, owned by the set; an orphan the selector matches
//! is adopted instead of making a new pod; scaling down removes the
//! not-ready pod first; the status counts ready pods. No agent runs here:
//! the test sets the pods' status as the agent would.

use anyhow::{Result, bail};
use serde_json::Value;

use super::{
    ControlPlane,
    endpointslice::{get_json, set_pod_status, wait_for},
};

const RS: &str = "apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: front
spec:
  replicas: 3
  selector:
    matchLabels:
      app: front
  template:
    metadata:
      labels:
        app: front
        tier: web
    spec:
      containers:
      - name: c
        image: busybox
";

const ORPHAN: &str = "apiVersion: v1
kind: Pod
metadata:
  name: orphan
  labels:
    app: front
spec:
  containers:
  - name: c
    image: busybox
";

fn names(list: &Value) -> Vec<String> {
    let mut out: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    out.sort();
    out
}

fn count(n: usize) -> impl Fn(&Value) -> Result<(), String> {
    move |v| {
        let got = names(v);
        if got.len() == n {
            Ok(())
        } else {
            Err(format!("{} pods: {got:?}", got.len()))
        }
    }
}

const PODS: &[&str] = &["pods", "-l", "app=front"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicaset_keeps_its_pods_adopts_orphans_and_drops_unready_ones_first() -> Result<()> {
    let cp = ControlPlane::start().await?;
    cp.ok(&["apply", "-f", "-"], Some(ORPHAN)).await?;
    cp.ok(&["apply", "-f", "-"], Some(RS)).await?;

    let pods = wait_for(&cp, PODS, "3 pods: the orphan and 2 new ones", count(3)).await?;
    let rs_uid = cp
        .ok(
            &["get", "rs", "front", "-o", "jsonpath={.metadata.uid}"],
            None,
        )
        .await?;
    for pod in pods["items"].as_array().into_iter().flatten() {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ReplicaSet", "{name}");
        assert_eq!(owner["uid"].as_str(), Some(rs_uid.as_str()), "{name}");
        assert_eq!(owner["controller"], true, "{name}");
        assert_eq!(owner["blockOwnerDeletion"], true, "{name}");
        if name != "orphan" {
            assert!(name.starts_with("front-"), "generateName front-: {name}");
            assert_eq!(pod["metadata"]["labels"]["tier"], "web", "template labels");
        }
    }
    assert!(
        names(&pods).contains(&"orphan".to_string()),
        "the orphan was adopted"
    );
    let described = cp.ok(&["describe", "rs", "front"], None).await?;
    assert!(
        described.contains("SuccessfulCreate") && described.contains("Created pod: front-"),
        "kubectl describe rs lists the creations: {described}"
    );

    // The status follows the pods the agent reports ready.
    let all = names(&pods);
    for (i, name) in all.iter().enumerate() {
        let n = u8::try_from(i + 10)?;
        set_pod_status(&cp, name, n, name != "orphan").await?;
    }
    wait_for(
        &cp,
        &["rs", "front"],
        "status 3 replicas, 2 ready and available",
        |v| {
            let s = &v["status"];
            let got = (
                s["replicas"].as_i64(),
                s["readyReplicas"].as_i64(),
                s["availableReplicas"].as_i64(),
                s["fullyLabeledReplicas"].as_i64(),
                s["observedGeneration"] == v["metadata"]["generation"],
            );
            if got == (Some(3), Some(2), Some(2), Some(2), true) {
                Ok(())
            } else {
                Err(format!("status {s}"))
            }
        },
    )
    .await?;

    // Scaling down removes the pod that is not ready.
    cp.ok(&["scale", "rs", "front", "--replicas=2"], None)
        .await?;
    let left = wait_for(&cp, PODS, "2 pods", count(2)).await?;
    assert!(
        !names(&left).contains(&"orphan".to_string()),
        "the not-ready pod went first: {:?}",
        names(&left)
    );

    // A deleted pod is replaced.
    let victim = names(&left)[0].clone();
    cp.ok(&["delete", "pod", &victim], None).await?;
    let now = wait_for(&cp, PODS, "2 pods again", |v| {
        let got = names(v);
        if got.len() == 2 && !got.contains(&victim) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await?;
    if names(&now).len() != 2 {
        bail!("expected 2 pods: {now}");
    }
    let rs = get_json(&cp, &["rs", "front"]).await?;
    assert_eq!(rs["spec"]["replicas"], 2);

    // A pod relabelled out of the selector is let go and replaced.
    let taken = names(&now)[0].clone();
    cp.ok(&["label", "pod", &taken, "app=debug", "--overwrite"], None)
        .await?;
    wait_for(&cp, PODS, "a replacement for the relabelled pod", |v| {
        let got = names(v);
        if got.len() == 2 && !got.contains(&taken) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await?;
    wait_for(&cp, &["pod", &taken], "the relabelled pod released", |v| {
        match v["metadata"]["ownerReferences"].as_array() {
            None => Ok(()),
            Some(refs) if refs.is_empty() => Ok(()),
            Some(refs) => Err(format!("still owned: {refs:?}")),
        }
    })
    .await?;
    cp.stop().await
}
