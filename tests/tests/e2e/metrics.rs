//! Resource metrics for real: a two-node lab cluster whose agents report
//! their cgroups' CPU and memory, `kubectl top` reading them through the
//! apiserver's metrics.k8s.io, and a HorizontalPodAutoscaler scaling a
//! CPU-burning Deployment up and back down; then node-2's agent dies, its
//! node turns Unknown and its pod comes back on node-1 (node lifecycle).
//! One cluster serves every check, in sequence.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_e2e::{
    cluster::{ClusterConfig, LabCluster},
    lab::Lab,
};

/// A pod that holds about 8 MiB of its own memory (a shell variable).
const MEM_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: mem
  labels: {app: mem}
spec:
  nodeSelector: {kubernetes.io/hostname: node-2}
  containers:
  - name: hold
    image: busybox
    command: ["sh", "-c", "x=$(head -c 8000000 /dev/zero | tr '\\0' a); echo ${#x}; while :; do sleep 3600; done"]
"#;

/// A Deployment whose one pod burns CPU (capped at 200m, twice its
/// request), and an autoscaler aiming at 50% of the request.
const BURN: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: burn}
spec:
  replicas: 1
  selector: {matchLabels: {app: burn}}
  template:
    metadata: {labels: {app: burn}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burn
        image: busybox
        command: ["sh", "-c", "while :; do :; done"]
        resources:
          requests: {cpu: 100m}
          limits: {cpu: 200m}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: burn}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burn}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource:
      name: cpu
      target: {type: Utilization, averageUtilization: 50}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 0}
"#;

fn json(c: &LabCluster, args: &[&str]) -> Result<Value> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&c.kubectl_ok(&full, None)?).context("kubectl's JSON")
}

/// The messages of the autoscaler's SuccessfulRescale events.
fn rescales(c: &LabCluster) -> Result<Vec<String>> {
    let events = json(
        c,
        &[
            "events",
            "--field-selector",
            "involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name=burn",
        ],
    )?;
    Ok(events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == "SuccessfulRescale")
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect())
}

/// kubectl's `top` columns for one row: (name, cpu in millicores, memory in
/// MiB).
fn top_row(line: &str) -> Option<(String, u64, u64)> {
    let cols: Vec<&str> = line.split_whitespace().collect();
    let name = cols.first()?.to_string();
    let cpu = cols.get(1)?.strip_suffix('m')?.parse().ok()?;
    let memory = cols
        .iter()
        .skip(2)
        .find_map(|c| c.strip_suffix("Mi")?.parse().ok())?;
    Some((name, cpu, memory))
}

fn top(c: &LabCluster, args: &[&str]) -> Result<Vec<(String, u64, u64)>> {
    let mut full = vec!["top"];
    full.extend_from_slice(args);
    let out = c.kubectl_ok(&full, None)?;
    Ok(out.lines().skip(1).filter_map(top_row).collect())
}

/// One replica that prefers node-2 and tolerates its node being
/// unreachable or not ready for 2 s.
const MOVED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: moved}
spec:
  replicas: 1
  selector: {matchLabels: {app: moved}}
  template:
    metadata: {labels: {app: moved}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            preference:
              matchExpressions:
              - {key: kubernetes.io/hostname, operator: In, values: [node-2]}
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers:
      - name: sleep
        image: busybox
        command: ["sleep", "3600"]
"#;

/// The nodes of the Running, not terminating pods labelled `app=<app>`.
fn running_on(c: &LabCluster, app: &str) -> Result<Vec<String>> {
    let pods = json(c, &["pods", "-l", &format!("app={app}")])?;
    Ok(pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
        .collect())
}

#[test]
fn kubectl_top_and_the_horizontal_pod_autoscaler() -> Result<()> {
    // With SHOAL_KEEP_CLUSTER set, a failed run leaves everything for a look.
    let (dir, _tmp) = shoal_e2e::cluster::scratch_dir()?;
    let mut cfg = ClusterConfig::new(&Lab::unique_prefix(), 2, &dir)?;
    cfg.backoff_seconds = 1;
    // Twice the agents' 10 s Lease renewal, so a loaded machine does not
    // flap nodes.
    cfg.server_args = vec!["--node-monitor-grace-period".into(), "20s".into()];
    let mut c = LabCluster::start(cfg)?;

    // kubectl top nodes: both nodes with CPU and memory in use (the lab
    // nodes share one machine, so both see its load).
    let nodes = c.wait_for(
        "kubectl top nodes lists both nodes",
        Duration::from_secs(60),
        |c| {
            let rows = top(c, &["nodes"])?;
            Ok(
                (rows.len() == 2 && rows.iter().all(|(_, cpu, mem)| *cpu > 0 && *mem > 0))
                    .then_some(rows),
            )
        },
    )?;
    let names: Vec<&str> = nodes.iter().map(|(n, _, _)| n.as_str()).collect();
    ensure!(names == ["node-1", "node-2"], "top nodes: {nodes:?}");

    // kubectl top pods: a running pod with the memory it holds.
    c.apply(MEM_POD)?;
    let pods = c.wait_for(
        "kubectl top pods lists pod mem",
        Duration::from_secs(90),
        |c| {
            let rows = top(c, &["pods", "-n", "default"])?;
            Ok(rows
                .iter()
                .any(|(n, _, mem)| n == "mem" && *mem >= 7)
                .then_some(rows))
        },
    )?;
    ensure!(pods.len() == 1, "top pods: {pods:?}");
    let containers = c.kubectl_ok(&["top", "pods", "mem", "--containers"], None)?;
    ensure!(
        containers
            .lines()
            .any(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == ["mem", "hold"]),
        "kubectl top pods --containers:\n{containers}"
    );
    let raw = c.kubectl_ok(
        &[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dmem",
        ],
        None,
    )?;
    let list: Value = serde_json::from_str(&raw).context("PodMetricsList JSON")?;
    ensure!(
        list["kind"] == "PodMetricsList" && list["items"][0]["containers"][0]["name"] == "hold",
        "PodMetricsList: {list}"
    );
    let none = c.kubectl_ok(
        &[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dnone",
        ],
        None,
    )?;
    ensure!(
        none.contains("\"items\":[]"),
        "a selector matching nothing: {none}"
    );

    // The autoscaler scales the burning Deployment up to its maximum...
    c.apply(BURN)?;
    c.wait_for(
        "the autoscaler scales deployment burn to 3",
        Duration::from_secs(240),
        |c| {
            let d = json(c, &["deployment", "burn"])?;
            Ok((d["spec"]["replicas"] == 3).then_some(()))
        },
    )?;
    let up = rescales(&c)?;
    ensure!(
        up.iter().any(|m| m.starts_with("New size: ")
            && m.ends_with(
                "; reason: cpu resource utilization (percentage of request) above target"
            )),
        "SuccessfulRescale events: {up:?}"
    );
    let hpa = json(&c, &["hpa", "burn"])?;
    let condition = |t: &str| {
        hpa["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|x| x["type"] == t))
            .map(|x| {
                format!(
                    "{}/{}",
                    x["status"].as_str().unwrap_or(""),
                    x["reason"].as_str().unwrap_or("")
                )
            })
            .unwrap_or_default()
    };
    ensure!(
        condition("ScalingActive") == "True/ValidMetricFound"
            && condition("AbleToScale").starts_with("True/")
            && hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
                .as_i64()
                .is_some(),
        "autoscaler status: {}",
        hpa["status"]
    );

    // ...and, once the burn stops, back down to its minimum.
    c.kubectl_ok(
        &[
            "patch",
            "deployment",
            "burn",
            "--type=json",
            "-p",
            r#"[{"op": "replace", "path": "/spec/template/spec/containers/0/command", "value": ["sleep", "3600"]}]"#,
        ],
        None,
    )?;
    c.wait_for(
        "the autoscaler scales deployment burn back to 1",
        Duration::from_secs(240),
        |c| {
            let d = json(c, &["deployment", "burn"])?;
            Ok((d["spec"]["replicas"] == 1).then_some(()))
        },
    )?;
    let down = rescales(&c)?;
    ensure!(
        down.iter()
            .any(|m| m == "New size: 1; reason: All metrics below target"),
        "SuccessfulRescale events: {down:?}"
    );

    // A pod on node-2, to see it move when node-2's agent dies.
    c.apply(MOVED)?;
    c.wait_for(
        "deployment moved runs its pod on node-2",
        Duration::from_secs(60),
        |c| Ok((running_on(c, "moved")? == ["node-2"]).then_some(())),
    )?;

    // An agent that does not answer leaves its node out; the list still
    // works.
    c.kill_agent(1)?;
    let raw = c.kubectl_ok(
        &["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"],
        None,
    )?;
    let list: Value = serde_json::from_str(&raw).context("NodeMetricsList JSON")?;
    let listed: Vec<&str> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    ensure!(
        listed == ["node-1"],
        "node metrics with node-2's agent down: {list}"
    );

    // Its Lease expires: node-2 turns Unknown and tainted unreachable, the
    // pod is evicted after its 2 s toleration and its Deployment runs a new
    // one on node-1.
    c.wait_for(
        "node-2 Ready=Unknown with the unreachable NoExecute taint",
        Duration::from_secs(90),
        |c| {
            let node = json(c, &["node", "node-2"])?;
            let unknown = node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["type"] == "Ready" && k["status"] == "Unknown");
            let tainted = node["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| {
                    t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"
                });
            Ok((unknown && tainted).then_some(()))
        },
    )?;
    c.wait_for(
        "deployment moved runs its pod on node-1 after node-2 is lost",
        Duration::from_secs(60),
        |c| Ok((running_on(c, "moved")? == ["node-1"]).then_some(())),
    )?;
    Ok(())
}
