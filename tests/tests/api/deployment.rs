//! Deployments as a user drives them with kubectl: apply makes a
//! ReplicaSet `<name>-<pod-template-hash>` and its pods, `rollout status`
//! finishes, `scale` goes up and down, a new image rolls to a new
//! ReplicaSet (revision 2) while the old one drains, and `rollout undo`
//! brings the first template back as revision 3. No agent runs here: a
//! stand-in marks every pod Running and Ready as an agent would.

use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::{
    ControlPlane,
    endpointslice::{get_json, wait_for},
};

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: c
        image: busybox
";

/// Stands in for the agents: every pod in `namespace` that is not Ready
/// becomes Running and Ready with an address, a moment after it appears.
pub(super) async fn ready_agent(cp: &ControlPlane, namespace: &str) -> Result<JoinHandle<()>> {
    let client = shoal_controllers::client_from_kubeconfig(&cp.kubeconfig).await?;
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    Ok(tokio::spawn(async move {
        let mut next: u32 = 1;
        loop {
            if let Ok(list) = pods.list(&ListParams::default()).await {
                for pod in list.items {
                    let ready = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    if ready || pod.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    let ip = format!("10.244.{}.{}", (next >> 8) & 0xff, next & 0xff);
                    next += 1;
                    let now = k8s_openapi::jiff::Timestamp::now().to_string();
                    let status = json!({"status": {
                        "phase": "Running",
                        "podIP": ip,
                        "podIPs": [{"ip": ip}],
                        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]
                    }});
                    let name = pod.metadata.name.unwrap_or_default();
                    let _ = pods
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }))
}

/// The ReplicaSets of `app=web` as (name, revision, spec.replicas, image).
fn sets(list: &Value) -> Vec<(String, String, i64, String)> {
    let mut out: Vec<(String, String, i64, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|rs| {
            (
                rs["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                rs["spec"]["replicas"].as_i64().unwrap_or(-1),
                rs["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// Waits until exactly `n` live pods carry `app=web`, every one with
/// `hash` as its pod-template-hash.
async fn wait_pods(cp: &ControlPlane, n: usize, hash: &str) -> Result<Value> {
    wait_for(
        cp,
        &["pods", "-l", "app=web"],
        &format!("{n} pods of {hash}"),
        |v| {
            let live: Vec<&Value> = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .collect();
            let hashes: Vec<&str> = live
                .iter()
                .map(|p| {
                    p["metadata"]["labels"]["pod-template-hash"]
                        .as_str()
                        .unwrap_or_default()
                })
                .collect();
            if live.len() == n && hashes.iter().all(|h| *h == hash) {
                Ok(())
            } else {
                Err(format!("{} pods with hashes {hashes:?}", live.len()))
            }
        },
    )
    .await
}

async fn rollout_status(cp: &ControlPlane) -> Result<()> {
    let out = cp
        .ok(
            &["rollout", "status", "deployment/web", "--timeout=30s"],
            None,
        )
        .await?;
    if !out.contains("successfully rolled out") {
        bail!("kubectl rollout status said: {out}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_scales_rolls_to_a_new_image_and_back() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let agent = ready_agent(&cp, "default").await?;
    cp.ok(&["apply", "-f", "-"], Some(DEPLOYMENT)).await?;

    let first = wait_for(
        &cp,
        &["rs", "-l", "app=web"],
        "one ReplicaSet",
        |v| match sets(v).as_slice() {
            [(_, rev, 3, _)] if rev == "1" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await?;
    let rs = &first["items"][0];
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(rs["metadata"]["name"], format!("web-{hash}"));
    assert_eq!(
        rs["spec"]["selector"]["matchLabels"]["pod-template-hash"],
        hash.as_str()
    );
    assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    wait_pods(&cp, 3, &hash).await?;
    rollout_status(&cp).await?;
    let d = get_json(&cp, &["deployment", "web"]).await?;
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    let conds = d["status"]["conditions"].to_string();
    assert!(
        conds.contains("NewReplicaSetAvailable") && conds.contains("MinimumReplicasAvailable"),
        "{conds}"
    );

    let described = cp.ok(&["describe", "deployment", "web"], None).await?;
    assert!(
        described.contains("ScalingReplicaSet")
            && described.contains(&format!("Scaled up replica set web-{hash} from 0 to 3")),
        "kubectl describe deployment lists the scaling: {described}"
    );

    // kubectl scale, up and down.
    cp.ok(&["scale", "deployment", "web", "--replicas=5"], None)
        .await?;
    wait_pods(&cp, 5, &hash).await?;
    cp.ok(&["scale", "deployment", "web", "--replicas=1"], None)
        .await?;
    wait_pods(&cp, 1, &hash).await?;
    cp.ok(&["scale", "deployment", "web", "--replicas=3"], None)
        .await?;
    wait_pods(&cp, 3, &hash).await?;
    rollout_status(&cp).await?;

    // A new image: a second ReplicaSet, revision 2, the old one drained.
    cp.ok(&["set", "image", "deployment/web", "c=busybox:v2"], None)
        .await?;
    rollout_status(&cp).await?;
    let two = wait_for(
        &cp,
        &["rs", "-l", "app=web"],
        "revision 2 at 3, revision 1 at 0",
        |v| match sets(v).as_slice() {
            [(_, r1, 0, i1), (_, r2, 3, i2)]
                if r1 == "1" && r2 == "2" && i1 == "busybox" && i2 == "busybox:v2" =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        },
    )
    .await?;
    let second_hash = sets(&two)[1].0.trim_start_matches("web-").to_string();
    wait_pods(&cp, 3, &second_hash).await?;
    let d = get_json(&cp, &["deployment", "web"]).await?;
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );

    // kubectl rollout undo: the first template is back, as revision 3.
    cp.ok(&["rollout", "undo", "deployment/web"], None).await?;
    rollout_status(&cp).await?;
    wait_for(
        &cp,
        &["rs", "-l", "app=web"],
        "the first ReplicaSet back as revision 3",
        |v| match sets(v).as_slice() {
            [(_, r2, 0, _), (name, r3, 3, image)]
                if r2 == "2"
                    && r3 == "3"
                    && image == "busybox"
                    && *name == format!("web-{hash}") =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        },
    )
    .await?;
    wait_pods(&cp, 3, &hash).await?;
    let d = get_json(&cp, &["deployment", "web"]).await?;
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox"
    );
    let history = cp
        .ok(&["rollout", "history", "deployment/web"], None)
        .await?;
    assert!(history.contains('2') && history.contains('3'), "{history}");

    agent.abort();
    cp.stop().await
}

const RECREATE: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: rec
spec:
  replicas: 2
  strategy:
    type: Recreate
  selector:
    matchLabels:
      app: rec
  template:
    metadata:
      labels:
        app: rec
    spec:
      containers:
      - name: c
        image: busybox
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreate_deployment_never_runs_old_and_new_pods_together() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let agent = ready_agent(&cp, "default").await?;
    cp.ok(&["apply", "-f", "-"], Some(RECREATE)).await?;
    let out = cp
        .ok(
            &["rollout", "status", "deployment/rec", "--timeout=30s"],
            None,
        )
        .await?;
    assert!(out.contains("successfully rolled out"), "{out}");

    cp.ok(&["set", "image", "deployment/rec", "c=busybox:v2"], None)
        .await?;
    // Until the new pods are all there, every look finds one template's
    // pods only.
    let deadline = tokio::time::Instant::now() + super::endpointslice::CATCH_UP;
    loop {
        let pods = get_json(&cp, &["pods", "-l", "app=rec"]).await?;
        let mut images: Vec<String> = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        images.sort();
        images.dedup();
        assert!(images.len() <= 1, "old and new pods at once: {images:?}");
        let done = pods["items"].as_array().map(Vec::len) == Some(2) && images == ["busybox:v2"];
        if done {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the Recreate rollout did not finish: {pods}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = cp
        .ok(
            &["rollout", "status", "deployment/rec", "--timeout=30s"],
            None,
        )
        .await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    let d = get_json(&cp, &["deployment", "rec"]).await?;
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    agent.abort();
    cp.stop().await
}

const STUCK: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: stuck
spec:
  replicas: 1
  progressDeadlineSeconds: 2
  selector:
    matchLabels:
      app: stuck
  template:
    metadata:
      labels:
        app: stuck
    spec:
      containers:
      - name: c
        image: busybox
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_makes_no_progress_exceeds_its_deadline() -> Result<()> {
    let cp = ControlPlane::start().await?;
    // No stand-in agent: the pod never becomes ready.
    cp.ok(&["apply", "-f", "-"], Some(STUCK)).await?;
    let out = cp
        .kubectl(
            &["rollout", "status", "deployment/stuck", "--timeout=30s"],
            None,
        )
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "rollout status succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("exceeded its progress deadline"), "{err}");
    let d = get_json(&cp, &["deployment", "stuck"]).await?;
    let conds = d["status"]["conditions"].to_string();
    assert!(
        conds.contains("ProgressDeadlineExceeded") && conds.contains("MinimumReplicasUnavailable"),
        "{conds}"
    );
    cp.stop().await
}
