//! HorizontalPodAutoscalers against the in-process control plane (no
//! agents, so no metrics): a target above its maximum is scaled down at
//! once with Kubernetes' reason, pods without metrics leave scaling
//! inactive with Kubernetes' condition, a missing target is reported as
//! such, and metrics.k8s.io answers empty lists.

use anyhow::{Result, ensure};
use serde_json::Value;

use super::{
    ControlPlane,
    endpointslice::{get_json, wait_for},
};

const DEPLOYMENTS: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: wide
spec:
  replicas: 5
  selector:
    matchLabels: {app: wide}
  template:
    metadata:
      labels: {app: wide}
    spec:
      containers:
      - name: c
        image: busybox
        resources:
          requests: {cpu: 100m}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: idle
spec:
  replicas: 2
  selector:
    matchLabels: {app: idle}
  template:
    metadata:
      labels: {app: idle}
    spec:
      containers:
      - name: c
        image: busybox
        resources:
          requests: {cpu: 100m}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: idle
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: idle}
  minReplicas: 1
  maxReplicas: 5
  metrics:
  - type: Resource
    resource:
      name: cpu
      target: {type: Utilization, averageUtilization: 50}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: orphan
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: nowhere}
  maxReplicas: 2
";

/// What `kubectl autoscale deployment wide --min=1 --max=3
/// --cpu-percent=50` means, in autoscaling/v2 (kubectl 1.32 posts v1,
/// which shoal does not serve).
const WIDE_HPA: &str = "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: wide
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: wide}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource:
      name: cpu
      target: {type: Utilization, averageUtilization: 50}
";

/// `type=status/reason` of an autoscaler's condition, or why not.
fn condition(hpa: &Value, type_: &str) -> String {
    hpa["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .map(|c| {
            format!(
                "{type_}={}/{}",
                c["status"].as_str().unwrap_or_default(),
                c["reason"].as_str().unwrap_or_default()
            )
        })
        .unwrap_or_else(|| format!("no {type_} in {}", hpa["status"]))
}

fn expect(hpa: &Value, want: &[&str]) -> Result<(), String> {
    let got: Vec<String> = want
        .iter()
        .map(|w| condition(hpa, w.split('=').next().unwrap_or_default()))
        .collect();
    if got.iter().zip(want).all(|(g, w)| g == w) {
        Ok(())
    } else {
        Err(format!("{got:?}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscalers_keep_min_max_and_report_missing_metrics_and_targets() -> Result<()> {
    let cp = ControlPlane::start().await?;
    cp.ok(&["apply", "-f", "-"], Some(DEPLOYMENTS)).await?;
    cp.ok(&["apply", "-f", "-"], Some(WIDE_HPA)).await?;

    // Five replicas over a maximum of three: scaled down without metrics.
    wait_for(&cp, &["deployment", "wide"], "wide scaled to 3", |d| {
        if d["spec"]["replicas"] == 3 {
            Ok(())
        } else {
            Err(format!("replicas {}", d["spec"]["replicas"]))
        }
    })
    .await?;
    let hpa = wait_for(&cp, &["hpa", "wide"], "wide's status", |h| {
        expect(
            h,
            &[
                "AbleToScale=True/SucceededRescale",
                "ScalingLimited=True/TooManyReplicas",
            ],
        )
    })
    .await?;
    ensure!(
        hpa["status"]["currentReplicas"] == 5 && hpa["status"]["desiredReplicas"] == 3,
        "wide's status: {}",
        hpa["status"]
    );
    let events = get_json(
        &cp,
        &[
            "events",
            "--field-selector",
            "involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name=wide",
        ],
    )
    .await?;
    ensure!(
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["reason"] == "SuccessfulRescale"
                && e["message"]
                    == "New size: 3; reason: Current number of replicas above Spec.MaxReplicas"),
        "wide's events: {events}"
    );

    // Pods that never ran have no metrics: scaling is not active, and the
    // count stays.
    wait_for(&cp, &["hpa", "idle"], "idle without metrics", |h| {
        expect(
            h,
            &[
                "AbleToScale=True/SucceededGetScale",
                "ScalingActive=False/FailedGetResourceMetric",
            ],
        )?;
        // The first sync may come before the Deployment's pods exist.
        if h.to_string()
            .contains("did not receive metrics for targeted pods")
        {
            Ok(())
        } else {
            Err(format!("message: {}", h["status"]))
        }
    })
    .await?;
    let described = cp.ok(&["describe", "hpa", "idle"], None).await?;
    ensure!(
        described.contains("did not receive metrics for targeted pods"),
        "kubectl describe hpa idle:\n{described}"
    );
    let idle = get_json(&cp, &["deployment", "idle"]).await?;
    ensure!(idle["spec"]["replicas"] == 2, "idle: {}", idle["spec"]);

    // A target that does not exist.
    wait_for(&cp, &["hpa", "orphan"], "orphan's status", |h| {
        expect(h, &["AbleToScale=False/FailedGetScale"])
    })
    .await?;

    // No agents: metrics.k8s.io answers, with nothing in it.
    let nodes = cp
        .ok(
            &["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"],
            None,
        )
        .await?;
    ensure!(
        nodes.contains("\"kind\":\"NodeMetricsList\"") && nodes.contains("\"items\":[]"),
        "{nodes}"
    );
    let missing = cp
        .kubectl(
            &[
                "get",
                "--raw",
                "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nope",
            ],
            None,
        )
        .await?;
    let stderr = String::from_utf8_lossy(&missing.stderr);
    ensure!(
        !missing.status.success() && stderr.contains("NotFound"),
        "a missing PodMetrics: {stderr}"
    );
    Ok(())
}
