//! Node lifecycle as a user sees it with kubectl: a node whose agent stops
//! renewing its Lease turns Unknown and gets the unreachable taints; the
//! ReplicaSet pod on it is evicted once its tolerationSeconds run out and
//! comes back on the healthy node; the taints go when the Lease is renewed
//! again. The agents are simulated: the test registers the Nodes and
//! renews their Leases itself.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use shoal_agent::node::{NodeConfig, register, renew_lease};
use tokio::task::JoinHandle;

use super::{ControlPlane, endpointslice::wait_for};

const RS: &str = "apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      tolerations:
      - key: node.kubernetes.io/unreachable
        operator: Exists
        effect: NoExecute
        tolerationSeconds: 2
      containers:
      - name: c
        image: busybox
        resources:
          requests:
            cpu: 100m
";

/// Registers a node and renews its Lease every 500 ms until aborted.
async fn heartbeat(cp: &ControlPlane, name: &str) -> Result<JoinHandle<()>> {
    let client = shoal_controllers::client_from_kubeconfig(&cp.kubeconfig).await?;
    let mut config = NodeConfig::new(name, cp.dir());
    config.addresses = vec!["172.20.0.12".parse()?];
    config.capacity_cpu = Some("2".into());
    config.capacity_memory = Some("4Gi".into());
    let node = register(&client, &config).await?;
    Ok(tokio::spawn(async move {
        loop {
            if let Err(e) = renew_lease(&client, &node, &config).await {
                eprintln!("test heartbeat: {e:#}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }))
}

fn taint_keys(node: &Value) -> Vec<String> {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            format!(
                "{}:{}",
                t["key"].as_str().unwrap_or(""),
                t["effect"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_heartbeating_loses_its_pods_to_another_node() -> Result<()> {
    let mut config = shoal_controllers::Config::default();
    config.node_lifecycle.grace_period = Duration::from_secs(3);
    config.node_lifecycle.period = Duration::from_millis(200);
    let cp = ControlPlane::start_with(config).await?;
    let lost = heartbeat(&cp, "lost").await?;
    cp.ok(&["apply", "-f", "-"], Some(RS)).await?;
    let pods = wait_for(
        &cp,
        &["pods", "-l", "app=web"],
        "the pod on node lost",
        |v| match v.pointer("/items/0/spec/nodeName").and_then(Value::as_str) {
            Some("lost") => Ok(()),
            other => Err(format!("on {other:?}")),
        },
    )
    .await?;
    let first = pods
        .pointer("/items/0/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let keep = heartbeat(&cp, "keep").await?;

    // The agent of "lost" dies.
    lost.abort();
    wait_for(&cp, &["node", "lost"], "node lost unreachable", |n| {
        let keys = taint_keys(n);
        let ready = n
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .map(|c| (c["status"].clone(), c["reason"].clone()));
        if keys.contains(&"node.kubernetes.io/unreachable:NoExecute".to_string())
            && keys.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_string())
            && ready == Some(("Unknown".into(), "NodeStatusUnknown".into()))
        {
            Ok(())
        } else {
            Err(format!("taints {keys:?}, Ready {ready:?}"))
        }
    })
    .await?;
    // The pod tolerates that for 2 s, then is evicted and replaced on "keep".
    wait_for(
        &cp,
        &["pods", "-l", "app=web"],
        "a replacement on node keep",
        |v| {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            let old_going = items.iter().any(|p| {
                p["metadata"]["name"] == first.as_str()
                    && p["metadata"]["deletionTimestamp"].is_string()
            }) || !items
                .iter()
                .any(|p| p["metadata"]["name"] == first.as_str());
            let replaced = items.iter().any(|p| {
                p["metadata"]["name"] != first.as_str() && p["spec"]["nodeName"] == "keep"
            });
            if old_going && replaced {
                Ok(())
            } else {
                Err(format!(
                    "old pod going: {old_going}, replacement on keep: {replaced}"
                ))
            }
        },
    )
    .await?;
    let events = cp
        .ok(
            &[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={first}"),
                "-o",
                "jsonpath={.items[*].reason}",
            ],
            None,
        )
        .await?;
    assert!(events.contains("TaintManagerEviction"), "{events}");

    // The agent comes back: the taints go.
    let back = heartbeat(&cp, "lost").await?;
    wait_for(&cp, &["node", "lost"], "node lost untainted", |n| {
        let keys = taint_keys(n);
        if keys.is_empty() {
            Ok(())
        } else {
            Err(format!("taints {keys:?}"))
        }
    })
    .await?;
    back.abort();
    keep.abort();
    cp.stop().await
}
