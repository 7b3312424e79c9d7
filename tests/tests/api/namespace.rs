//! Namespace deletion as a user sees it: `kubectl delete namespace` with
//! objects inside (a Deployment and its pods, a Service, a ConfigMap)
//! completes, and nothing of the namespace is left.

use anyhow::{Result, bail};

use super::ControlPlane;

const CONTENTS: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: scratch
data:
  a: b
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: scratch
spec:
  selector:
    app: web
  ports:
  - port: 80
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: scratch
spec:
  replicas: 2
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_deletes_what_is_in_it_and_completes() -> Result<()> {
    let cp = ControlPlane::start().await?;
    // kubectl create sends protobuf, which shoal does not read: apply YAML.
    cp.ok(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: scratch\n"),
    )
    .await?;
    cp.ok(&["apply", "-f", "-"], Some(CONTENTS)).await?;
    super::endpointslice::wait_for(
        &cp,
        &["pods", "-n", "scratch"],
        "the Deployment's 2 pods",
        |v| match v["items"].as_array().map(Vec::len) {
            Some(2) => Ok(()),
            n => Err(format!("{n:?} pods")),
        },
    )
    .await?;

    // kubectl waits for the namespace to be gone (its default --wait).
    cp.ok(&["delete", "namespace", "scratch", "--timeout=30s"], None)
        .await?;
    let out = cp.kubectl(&["get", "namespace", "scratch"], None).await?;
    if out.status.success() {
        bail!(
            "namespace scratch is still there: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    for kind in [
        "pods",
        "deployments",
        "replicasets",
        "services",
        "configmaps",
        "endpointslices",
    ] {
        let left = cp
            .ok(&["get", kind, "-n", "scratch", "-o", "name"], None)
            .await?;
        assert!(left.trim().is_empty(), "{kind} left in scratch: {left}");
    }
    cp.stop().await
}
