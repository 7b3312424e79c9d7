//! Drain as a user runs it: `kubectl cordon`, then `kubectl drain
//! --ignore-daemonsets` evicts through the eviction API; a
//! PodDisruptionBudget with minAvailable 1 over two pods lets one go and
//! refuses the other (429, Kubernetes' message) until the first one's
//! replacement is Ready on the other node. No agent runs: the test sets
//! the pods' readiness as the agent would.

use anyhow::{Result, bail};
use serde_json::Value;
use shoal_agent::node::{NodeConfig, register};

use super::{
    ControlPlane,
    endpointslice::{set_pod_status, wait_for},
};

const RS: &str = "apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web
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
      terminationGracePeriodSeconds: 0
      containers:
      - name: c
        image: busybox
        resources:
          requests:
            cpu: 100m
";

const PDB: &str = "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
spec:
  minAvailable: 1
  selector:
    matchLabels:
      app: web
";

async fn add_node(cp: &ControlPlane, name: &str) -> Result<()> {
    let client = shoal_controllers::client_from_kubeconfig(&cp.kubeconfig).await?;
    let mut config = NodeConfig::new(name, cp.dir());
    config.addresses = vec!["172.20.0.13".parse()?];
    config.capacity_cpu = Some("2".into());
    config.capacity_memory = Some("4Gi".into());
    register(&client, &config).await?;
    Ok(())
}

/// (name, node, ready) of the pods of the set.
fn pods(list: &Value) -> Vec<(String, String, bool)> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                ready,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_evicts_what_the_disruption_budget_allows_and_waits_for_the_rest() -> Result<()> {
    let cp = ControlPlane::start().await?;
    add_node(&cp, "old").await?;
    cp.ok(&["apply", "-f", "-"], Some(RS)).await?;
    let list = wait_for(&cp, &["pods", "-l", "app=web"], "two pods on old", |v| {
        let p = pods(v);
        if p.len() == 2 && p.iter().all(|(_, n, _)| n == "old") {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await?;
    for (i, (name, _, _)) in pods(&list).iter().enumerate() {
        set_pod_status(&cp, name, 10 + i as u8, true).await?;
    }
    cp.ok(&["apply", "-f", "-"], Some(PDB)).await?;
    wait_for(&cp, &["pdb", "web"], "the budget allows one", |v| {
        let s = &v["status"];
        let got = (
            s["currentHealthy"].as_i64(),
            s["desiredHealthy"].as_i64(),
            s["expectedPods"].as_i64(),
            s["disruptionsAllowed"].as_i64(),
        );
        if got == (Some(2), Some(1), Some(2), Some(1)) {
            Ok(())
        } else {
            Err(format!("(healthy, desired, expected, allowed) = {got:?}"))
        }
    })
    .await?;
    add_node(&cp, "new").await?;
    cp.ok(&["cordon", "old"], None).await?;

    // Drain in the background; meanwhile the evicted pod's replacement
    // lands on "new" and the test marks it Ready, which frees the budget
    // for the second eviction.
    let drain = cp.kubectl(
        &["drain", "old", "--ignore-daemonsets", "--timeout=25s"],
        None,
    );
    let helper = async {
        let list = wait_for(
            &cp,
            &["pods", "-l", "app=web"],
            "a replacement on new",
            |v| {
                if pods(v).iter().any(|(_, n, _)| n == "new") {
                    Ok(())
                } else {
                    Err(format!("{:?}", pods(v)))
                }
            },
        )
        .await?;
        // Still one on "old": the budget held it back.
        let p = pods(&list);
        if !p.iter().any(|(_, n, _)| n == "old") {
            bail!("both pods left old at once: {p:?}");
        }
        if let Some((name, _, _)) = p.iter().find(|(_, n, _)| n == "new") {
            set_pod_status(&cp, name, 20, true).await?;
        }
        anyhow::Ok(())
    };
    let (out, helped) = tokio::join!(drain, helper);
    helped?;
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drain failed: {stdout}\n{stderr}");
    assert!(stdout.contains("node/old drained"), "{stdout}");
    assert!(
        stderr.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "the second eviction was refused first: {stderr}"
    );
    let list = wait_for(&cp, &["pods", "-l", "app=web"], "both pods on new", |v| {
        let p = pods(v);
        if p.len() == 2 && p.iter().all(|(_, n, _)| n == "new") {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await?;
    assert_eq!(pods(&list).len(), 2);
    let unschedulable = cp
        .ok(
            &["get", "node", "old", "-o", "jsonpath={.spec.unschedulable}"],
            None,
        )
        .await?;
    assert_eq!(unschedulable, "true");
    cp.stop().await
}
