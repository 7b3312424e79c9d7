//! Node IPAM as an operator sees it with kubectl: every Node that joins
//! gets an IPv4 /24 and an IPv6 /64 from the cluster CIDRs, no two Nodes
//! share one, a Node that brings its own keeps it, and a deleted Node's
//! ranges go to the next Node.

use std::time::Duration;

use anyhow::{Result, bail};

use super::ControlPlane;

/// How long a Node may wait for its ranges.
const ASSIGN_WAIT: Duration = Duration::from_secs(15);

fn node(name: &str, pod_cidrs: Option<&[&str]>) -> String {
    let spec = match pod_cidrs {
        Some(cidrs) => format!(
            "spec:\n  podCIDR: {}\n  podCIDRs: [{}]\n",
            cidrs[0],
            cidrs.join(", ")
        ),
        None => String::new(),
    };
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n{spec}")
}

/// `kubectl get node NAME -o jsonpath={.spec.podCIDRs}` once it is set.
async fn pod_cidrs(cp: &ControlPlane, name: &str) -> Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + ASSIGN_WAIT;
    loop {
        let out = cp
            .ok(
                &["get", "node", name, "-o", "jsonpath={.spec.podCIDRs[*]}"],
                None,
            )
            .await?;
        let cidrs: Vec<String> = out.split_whitespace().map(String::from).collect();
        if !cidrs.is_empty() {
            let single = cp
                .ok(
                    &["get", "node", name, "-o", "jsonpath={.spec.podCIDR}"],
                    None,
                )
                .await?;
            if single.trim() != cidrs[0] {
                bail!(
                    "node {name}: spec.podCIDR {single:?} is not the first of podCIDRs {cidrs:?}"
                );
            }
            return Ok(cidrs);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("node {name} got no podCIDRs in {ASSIGN_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_dual_stack_pod_cidrs_and_deleted_ones_are_reused() -> Result<()> {
    let cp = ControlPlane::start().await?;
    // A node that brings its own ranges keeps them.
    cp.ok(
        &["apply", "-f", "-"],
        Some(&node("own", Some(&["10.244.0.0/24", "fd00:10:244::/64"]))),
    )
    .await?;
    for name in ["node-1", "node-2"] {
        cp.ok(&["apply", "-f", "-"], Some(&node(name, None)))
            .await?;
    }
    let own = pod_cidrs(&cp, "own").await?;
    let one = pod_cidrs(&cp, "node-1").await?;
    let two = pod_cidrs(&cp, "node-2").await?;
    assert_eq!(own, ["10.244.0.0/24", "fd00:10:244::/64"]);
    let mut all = vec![own.clone(), one.clone(), two.clone()];
    for cidrs in &all {
        assert_eq!(cidrs.len(), 2, "one range per family: {cidrs:?}");
        assert!(
            cidrs[0].starts_with("10.244.") && cidrs[0].ends_with("/24"),
            "IPv4 first, a /24 of 10.244.0.0/16: {cidrs:?}"
        );
        assert!(
            cidrs[1].starts_with("fd00:10:244:") && cidrs[1].ends_with("/64"),
            "then a /64 of fd00:10:244::/56: {cidrs:?}"
        );
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3, "no two nodes share a range: {all:?}");

    // A deleted node's ranges are the next ones handed out.
    cp.ok(&["delete", "node", "node-1"], None).await?;
    cp.ok(&["apply", "-f", "-"], Some(&node("node-3", None)))
        .await?;
    let three = pod_cidrs(&cp, "node-3").await?;
    assert_eq!(three, one, "node-3 reuses node-1's ranges");
    cp.stop().await
}
