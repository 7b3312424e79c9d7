//! The agent's Node as an operator sees it with kubectl: it registers with
//! the capacity it was told to advertise, its dual-stack InternalIPs and
//! the well-known labels, shows Ready with the pressure conditions false,
//! gets its pod CIDRs from node IPAM, keeps its Lease in kube-node-lease
//! fresh, and registers again when the Node is deleted under it.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use shoal_agent::node::{NodeConfig, Thresholds, register, run};

use super::ControlPlane;

const WAIT: Duration = Duration::from_secs(15);

/// Polls `kubectl get <args> -o jsonpath=<path>` until `pred` holds.
async fn wait_for(
    cp: &ControlPlane,
    args: &[&str],
    path: &str,
    pred: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let jsonpath = format!("jsonpath={path}");
    let mut all = args.to_vec();
    all.extend(["-o", &jsonpath]);
    loop {
        let out = cp.kubectl(&all, None).await?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && pred(&text) {
            return Ok(text);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "kubectl get {args:?} {path} never matched in {WAIT:?}; last: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_registers_its_node_and_keeps_its_lease_fresh() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let client = shoal_controllers::client_from_kubeconfig(&cp.kubeconfig).await?;
    let mut config = NodeConfig::new("worker-1", cp.dir());
    config.addresses = vec!["172.20.0.11".parse()?, "fd00:172:20::b".parse()?];
    config.capacity_cpu = Some("8".into());
    config.capacity_memory = Some("16Gi".into());
    config.heartbeat = Duration::from_millis(500);
    // The machine's own disk may well be past the kubelet's 10 % default:
    // thresholds that cannot trip make the conditions deterministic.
    config.thresholds = Thresholds {
        memory_available: 0,
        nodefs_available: 0.0,
        pids_used: 1.0,
    };
    let (tx, mut rx) = tokio::sync::watch::channel::<Option<Node>>(None);
    let agent = tokio::spawn(run(client, config, tx));

    let ready = wait_for(
        &cp,
        &["get", "node", "worker-1"],
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        |s| s == "True",
    )
    .await?;
    assert_eq!(ready, "True");
    let out = cp.ok(&["get", "nodes", "-o", "wide"], None).await?;
    let row = out
        .lines()
        .find(|l| l.starts_with("worker-1 "))
        .with_context(|| format!("no worker-1 row in:\n{out}"))?;
    assert!(
        row.contains(" Ready ") && row.contains("172.20.0.11") && row.contains("v1.33.0-shoal"),
        "kubectl get nodes -o wide shows the node Ready with its InternalIP and version: {row}"
    );
    let capacity = cp
        .ok(
            &["get", "node", "worker-1", "-o", "jsonpath={.status.capacity.cpu} {.status.capacity.memory} {.status.allocatable.pods}"],
            None,
        )
        .await?;
    assert_eq!(capacity, "8 16Gi 110");
    let addresses = cp
        .ok(
            &[
                "get",
                "node",
                "worker-1",
                "-o",
                "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
            ],
            None,
        )
        .await?;
    assert_eq!(addresses, "172.20.0.11 fd00:172:20::b");
    let labels = cp
        .ok(
            &[
                "get",
                "nodes",
                "-l",
                "kubernetes.io/hostname=worker-1,kubernetes.io/os=linux",
                "-o",
                "name",
            ],
            None,
        )
        .await?;
    assert_eq!(labels.trim(), "node/worker-1");
    let pressure = cp
        .ok(
            &["get", "node", "worker-1", "-o", "jsonpath={.status.conditions[?(@.type==\"MemoryPressure\")].status} {.status.conditions[?(@.type==\"DiskPressure\")].status} {.status.conditions[?(@.type==\"PIDPressure\")].status}"],
            None,
        )
        .await?;
    assert_eq!(pressure, "False False False");

    // A node past its disk threshold says so.
    let mut full = NodeConfig::new("worker-full", cp.dir());
    full.thresholds.nodefs_available = 1.01;
    full.thresholds.memory_available = 0;
    full.thresholds.pids_used = 1.0;
    register(
        &shoal_controllers::client_from_kubeconfig(&cp.kubeconfig).await?,
        &full,
    )
    .await?;
    let disk = cp
        .ok(
            &["get", "node", "worker-full", "-o", "jsonpath={.status.conditions[?(@.type==\"DiskPressure\")].status} {.status.conditions[?(@.type==\"DiskPressure\")].reason}"],
            None,
        )
        .await?;
    assert_eq!(disk, "True KubeletHasDiskPressure");

    // Node IPAM's ranges reach the agent.
    let cidrs = wait_for(
        &cp,
        &["get", "node", "worker-1"],
        "{.spec.podCIDRs[*]}",
        |s| s.split_whitespace().count() == 2,
    )
    .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = rx
            .borrow_and_update()
            .as_ref()
            .and_then(|n| n.spec.as_ref()?.pod_cidrs.clone())
            .map(|c| c.join(" "));
        if seen.as_deref() == Some(cidrs.as_str()) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the agent never saw its podCIDRs {cidrs:?} (saw {seen:?})");
        }
        tokio::time::timeout(WAIT, rx.changed()).await??;
    }

    // The Lease is owned by the Node and renewed.
    let owner = wait_for(
        &cp,
        &["get", "lease", "-n", "kube-node-lease", "worker-1"],
        "{.spec.holderIdentity} {.spec.leaseDurationSeconds} {.metadata.ownerReferences[0].kind}",
        |s| !s.is_empty(),
    )
    .await?;
    assert_eq!(owner, "worker-1 40 Node");
    let first = cp
        .ok(
            &[
                "get",
                "lease",
                "-n",
                "kube-node-lease",
                "worker-1",
                "-o",
                "jsonpath={.spec.renewTime}",
            ],
            None,
        )
        .await?;
    wait_for(
        &cp,
        &["get", "lease", "-n", "kube-node-lease", "worker-1"],
        "{.spec.renewTime}",
        |s| !s.is_empty() && s != first,
    )
    .await?;

    // Deleted under the agent: it registers again.
    cp.ok(&["delete", "node", "worker-1", "--wait=false"], None)
        .await?;
    wait_for(
        &cp,
        &["get", "node", "worker-1"],
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        |s| s == "True",
    )
    .await?;
    agent.abort();
    cp.stop().await
}
