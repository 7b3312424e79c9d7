//! The scheduler as a user sees it with kubectl: pods land on nodes with
//! room (the emptier one first), follow their nodeSelector, wait Pending
//! with Kubernetes' "0/N nodes are available" message and a
//! FailedScheduling event when nothing fits, and are placed as soon as a
//! node that fits joins.

use std::time::Duration;

use anyhow::{Result, bail};
use shoal_agent::node::{NodeConfig, register};

use super::ControlPlane;

const WAIT: Duration = Duration::from_secs(20);

fn pod(name: &str, cpu: &str, selector: Option<(&str, &str)>) -> String {
    let selector = selector
        .map(|(k, v)| format!("  nodeSelector:\n    {k}: {v}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{selector}  containers:\n  - name: c\n    image: busybox\n    resources:\n      requests:\n        cpu: {cpu}\n        memory: 64Mi\n"
    )
}

/// Waits until `kubectl get pod NAME -o jsonpath=PATH` is not empty.
async fn wait_field(cp: &ControlPlane, name: &str, path: &str) -> Result<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = cp
            .ok(
                &["get", "pod", name, "-o", &format!("jsonpath={path}")],
                None,
            )
            .await?;
        if !out.trim().is_empty() {
            return Ok(out.trim().to_string());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("pod {name}: {path} stayed empty for {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for events about a pod (they are recorded just after the
/// binding or status they describe).
async fn wait_events(cp: &ControlPlane, pod: &str, path: &str) -> Result<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let selector = format!("involvedObject.name={pod}");
    let jsonpath = format!("jsonpath={path}");
    loop {
        let out = cp
            .ok(
                &[
                    "get",
                    "events",
                    "--field-selector",
                    &selector,
                    "-o",
                    &jsonpath,
                ],
                None,
            )
            .await?;
        if !out.trim().trim_matches(':').trim().is_empty() {
            return Ok(out);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no events about pod {pod} in {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) async fn add_node(
    cp: &ControlPlane,
    name: &str,
    cpu: &str,
    label: Option<(&str, &str)>,
) -> Result<()> {
    let client = shoal_controllers::client_from_kubeconfig(&cp.kubeconfig).await?;
    let mut config = NodeConfig::new(name, cp.dir());
    config.addresses = vec!["172.20.0.11".parse()?];
    config.capacity_cpu = Some(cpu.into());
    config.capacity_memory = Some("4Gi".into());
    config.labels = label
        .map(|(k, v)| vec![(k.to_string(), v.to_string())])
        .unwrap_or_default();
    register(&client, &config).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_placed_where_they_fit_and_wait_with_a_reason_otherwise() -> Result<()> {
    let cp = ControlPlane::start().await?;
    add_node(&cp, "small-1", "2", Some(("disk", "ssd"))).await?;
    add_node(&cp, "small-2", "2", None).await?;

    // Least-allocated: two 600m pods go to different nodes.
    cp.ok(&["apply", "-f", "-"], Some(&pod("a", "600m", None)))
        .await?;
    let a = wait_field(&cp, "a", "{.spec.nodeName}").await?;
    cp.ok(&["apply", "-f", "-"], Some(&pod("b", "600m", None)))
        .await?;
    let b = wait_field(&cp, "b", "{.spec.nodeName}").await?;
    assert_ne!(a, b, "the second pod goes to the emptier node");
    let events = wait_events(&cp, "a", "{.items[*].reason}: {.items[*].message}").await?;
    assert_eq!(
        events,
        format!("Scheduled: Successfully assigned default/a to {a}")
    );

    // nodeSelector.
    cp.ok(
        &["apply", "-f", "-"],
        Some(&pod("ssd", "100m", Some(("disk", "ssd")))),
    )
    .await?;
    assert_eq!(wait_field(&cp, "ssd", "{.spec.nodeName}").await?, "small-1");

    // Nothing fits 3 CPUs: Pending, with the reason and an event.
    cp.ok(&["apply", "-f", "-"], Some(&pod("big", "3", None)))
        .await?;
    let message = wait_field(
        &cp,
        "big",
        "{.status.conditions[?(@.type==\"PodScheduled\")].message}",
    )
    .await?;
    assert_eq!(message, "0/2 nodes are available: 2 Insufficient cpu.");
    let reason = cp
        .ok(&["get", "pod", "big", "-o", "jsonpath={.status.phase} {.status.conditions[?(@.type==\"PodScheduled\")].reason} {.spec.nodeName}"], None)
        .await?;
    assert_eq!(reason.trim(), "Pending Unschedulable");
    let events = wait_events(&cp, "big", "{.items[*].reason}").await?;
    assert_eq!(events, "FailedScheduling");

    // A node that fits joins: the pod is placed on it.
    add_node(&cp, "large", "4", None).await?;
    assert_eq!(wait_field(&cp, "big", "{.spec.nodeName}").await?, "large");
    cp.stop().await
}

fn prioritized_pod(name: &str, class: &str, cpu: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  priorityClassName: {class}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: busybox\n    resources:\n      requests:\n        cpu: {cpu}\n        memory: 64Mi\n"
    )
}

fn priority_class(name: &str, value: i32) -> String {
    format!(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: {name}\nvalue: {value}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_pod_preempts_the_fewest_lowest_priority_pods() -> Result<()> {
    let cp = ControlPlane::start().await?;
    add_node(&cp, "only", "2", None).await?;
    for (name, value) in [("low", 100), ("mid", 500), ("high", 1000)] {
        cp.ok(&["apply", "-f", "-"], Some(&priority_class(name, value)))
            .await?;
    }
    // 1800m of 2 CPUs taken by two low and one mid pod.
    for (name, class) in [("low-a", "low"), ("mid-a", "mid"), ("low-b", "low")] {
        cp.ok(
            &["apply", "-f", "-"],
            Some(&prioritized_pod(name, class, "600m")),
        )
        .await?;
        assert_eq!(wait_field(&cp, name, "{.spec.nodeName}").await?, "only");
    }
    let priority = cp
        .ok(
            &["get", "pod", "mid-a", "-o", "jsonpath={.spec.priority}"],
            None,
        )
        .await?;
    assert_eq!(
        priority, "500",
        "admission sets spec.priority from the class"
    );
    let unknown = cp
        .kubectl(
            &["apply", "-f", "-"],
            Some(&prioritized_pod("stray", "no-such-class", "1")),
        )
        .await?;
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("no PriorityClass with name no-such-class was found"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );

    // A 1-CPU high-priority pod needs two 600m pods gone: the two low ones.
    cp.ok(
        &["apply", "-f", "-"],
        Some(&prioritized_pod("urgent", "high", "1")),
    )
    .await?;
    assert_eq!(wait_field(&cp, "urgent", "{.spec.nodeName}").await?, "only");
    let left = cp
        .ok(
            &["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"],
            None,
        )
        .await?;
    assert_eq!(left.trim(), "mid-a urgent", "the mid-priority pod stays");
    let events = wait_events(&cp, "low-a", "{.items[*].reason}").await?;
    assert!(events.contains("Preempted"), "{events}");
    cp.stop().await
}

const LOCAL_PV: &str = "apiVersion: v1
kind: PersistentVolume
metadata:
  name: local-b
spec:
  capacity:
    storage: 1Gi
  accessModes: [ReadWriteOnce]
  storageClassName: local
  local:
    path: /mnt/disk
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - key: kubernetes.io/hostname
          operator: In
          values: [disk-b]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: local
  volumeName: local-b
  resources:
    requests:
      storage: 1Gi
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_a_local_volume_goes_to_the_volumes_node() -> Result<()> {
    let cp = ControlPlane::start().await?;
    add_node(&cp, "disk-a", "4", None).await?;
    add_node(&cp, "disk-b", "2", None).await?;
    cp.ok(&["apply", "-f", "-"], Some(LOCAL_PV)).await?;
    // disk-a has more room: without the volume the pod would go there.
    let with_claim = format!(
        "{}  volumes:\n  - name: data\n    persistentVolumeClaim:\n      claimName: data\n",
        pod("db", "500m", None)
    );
    cp.ok(&["apply", "-f", "-"], Some(&with_claim)).await?;
    assert_eq!(wait_field(&cp, "db", "{.spec.nodeName}").await?, "disk-b");
    cp.ok(&["apply", "-f", "-"], Some(&pod("free", "500m", None)))
        .await?;
    assert_eq!(wait_field(&cp, "free", "{.spec.nodeName}").await?, "disk-a");
    cp.stop().await
}

const SPREAD_RS: &str = "apiVersion: apps/v1
kind: ReplicaSet
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
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector:
              matchLabels:
                app: web
            topologyKey: kubernetes.io/hostname
      containers:
      - name: c
        image: busybox
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_affinity_puts_one_replica_per_node_and_says_why_the_fourth_waits() -> Result<()> {
    let cp = ControlPlane::start().await?;
    for name in ["h1", "h2", "h3"] {
        add_node(&cp, name, "4", None).await?;
    }
    cp.ok(&["apply", "-f", "-"], Some(SPREAD_RS)).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let nodes = loop {
        let out = cp
            .ok(
                &[
                    "get",
                    "pods",
                    "-l",
                    "app=web",
                    "-o",
                    "jsonpath={.items[*].spec.nodeName}",
                ],
                None,
            )
            .await?;
        let mut nodes: Vec<String> = out.split_whitespace().map(str::to_string).collect();
        if nodes.len() == 3 {
            nodes.sort();
            break nodes;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("three replicas were not placed: {out:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(nodes, ["h1", "h2", "h3"], "one replica per node");
    cp.ok(&["scale", "rs", "web", "--replicas=4"], None).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = cp
            .ok(
                &[
                    "get",
                    "pods",
                    "-l",
                    "app=web",
                    "-o",
                    "jsonpath={.items[*].status.conditions[?(@.type==\"PodScheduled\")].message}",
                ],
                None,
            )
            .await?;
        if out.contains("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.")
        {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the fourth replica's reason never showed: {out:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cp.stop().await
}
