//! StatefulSets as a user sees them with kubectl: scaled 0 → 3 the pods
//! come one at a time as `web-0`, `web-1`, `web-2`, each with its claim
//! `data-web-<i>` made first; scaled 3 → 1 they go from the top and the
//! claims stay; a new image replaces the remaining pod under the same name
//! and `kubectl rollout status` finishes. No agent runs here: the test
//! reports each pod Running and Ready as the agent would.

use anyhow::Result;
use serde_json::Value;

use super::{
    ControlPlane,
    endpointslice::{get_json, set_pod_status, wait_for},
    job::settled,
};

const STS: &str = "apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  replicas: 0
  serviceName: web
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
        image: nginx:1
        volumeMounts:
        - name: data
          mountPath: /data
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests:
          storage: 1Gi
";

/// Names of the items not being deleted.
fn live(list: &Value) -> Vec<String> {
    let mut out: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

async fn wait_live(cp: &ControlPlane, what: &[&str], want: &[&str]) -> Result<Value> {
    wait_for(cp, what, &format!("{what:?}: {want:?}"), |v| {
        let got = live(v);
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_scaled_up_and_down_keeps_its_names_and_claims() -> Result<()> {
    let cp = ControlPlane::start().await?;
    cp.ok(&["apply", "-f", "-"], Some(STS)).await?;
    cp.ok(&["scale", "sts", "web", "--replicas=3"], None)
        .await?;

    // One at a time: web-1 only once web-0 is Running and Ready.
    for (i, upto) in [
        ["web-0"].as_slice(),
        &["web-0", "web-1"],
        &["web-0", "web-1", "web-2"],
    ]
    .into_iter()
    .enumerate()
    {
        wait_live(&cp, &["pods", "-l", "app=web"], upto).await?;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let pods = get_json(&cp, &["pods", "-l", "app=web"]).await?;
        assert_eq!(live(&pods), upto, "no pod before the previous one is ready");
        let name = format!("web-{i}");
        let pod = get_json(&cp, &["pod", &name]).await?;
        assert_eq!(pod["spec"]["hostname"].as_str(), Some(name.as_str()));
        assert_eq!(pod["spec"]["subdomain"], "web");
        assert_eq!(
            pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"].as_str(),
            Some(name.as_str())
        );
        assert_eq!(
            pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"].as_str(),
            Some(i.to_string().as_str())
        );
        let claim = format!("data-web-{i}");
        let volume = pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "data")
            .map(|v| v["persistentVolumeClaim"]["claimName"].clone());
        assert_eq!(volume, Some(Value::String(claim.clone())));
        cp.ok(&["get", "pvc", &claim], None).await?;
        set_pod_status(&cp, &name, u8::try_from(i + 10)?, true).await?;
    }
    wait_for(&cp, &["sts", "web"], "3 ready replicas", |v| {
        let s = &v["status"];
        if (s["replicas"].as_i64(), s["readyReplicas"].as_i64()) == (Some(3), Some(3)) {
            Ok(())
        } else {
            Err(format!("status {s}"))
        }
    })
    .await?;

    // Down to 1: from the top, claims kept.
    cp.ok(&["scale", "sts", "web", "--replicas=1"], None)
        .await?;
    wait_live(&cp, &["pods", "-l", "app=web"], &["web-0"]).await?;
    let claims = get_json(&cp, &["pvc"]).await?;
    assert_eq!(live(&claims), ["data-web-0", "data-web-1", "data-web-2"]);
    let described = cp.ok(&["describe", "sts", "web"], None).await?;
    for want in [
        "create Claim data-web-0 Pod web-0 in StatefulSet web success",
        "create Pod web-2 in StatefulSet web successful",
        "delete Pod web-2 in StatefulSet web successful",
    ] {
        assert!(
            described.contains(want),
            "kubectl describe sts shows {want:?}: {described}"
        );
    }

    // A new image: web-0 is replaced under its name.
    let before = cp
        .ok(
            &["get", "pod", "web-0", "-o", "jsonpath={.metadata.uid}"],
            None,
        )
        .await?;
    cp.ok(&["set", "image", "sts/web", "c=nginx:2"], None)
        .await?;
    wait_for(
        &cp,
        &["pods", "-l", "app=web"],
        "web-0 again, with nginx:2",
        |v| {
            let again = v["items"].as_array().into_iter().flatten().any(|p| {
                p["metadata"]["name"] == "web-0"
                    && p["spec"]["containers"][0]["image"] == "nginx:2"
                    && p["metadata"]["uid"].as_str() != Some(before.as_str())
            });
            if again {
                Ok(())
            } else {
                Err(format!("{:?}", live(v)))
            }
        },
    )
    .await?;
    set_pod_status(&cp, "web-0", 20, true).await?;
    cp.ok(&["rollout", "status", "sts/web", "--timeout=30s"], None)
        .await?;
    settled(&cp, "sts", "web").await?;
    let sts = get_json(&cp, &["sts", "web"]).await?;
    assert_eq!(
        sts["status"]["currentRevision"],
        sts["status"]["updateRevision"]
    );
    let revisions = get_json(&cp, &["controllerrevisions"]).await?;
    assert_eq!(live(&revisions).len(), 2, "one revision per template");
    cp.stop().await
}
