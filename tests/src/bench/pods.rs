//! `cargo xtask bench pods`: pod startup latency in a lab cluster of real
//! `shoal` processes (server + agents, runc containers), as Kubernetes'
//! pod startup SLO measures it: from the create request to the pod seen
//! Ready through a watch, per pod, p50 and p99. Two shapes: 100 pods on one
//! node, and 300 across three. Pods are created at a steady pace (the
//! density tests' way) from an image already on the nodes, so no pull is
//! timed, as the SLO excludes it. Then the agent's resident memory with its
//! 100 pods running.
//!
//! No kubelet runs on this machine, so the reference column is the
//! published figures: Kubernetes' SLO (p99 ≤ 5 s) and the goals the issue
//! sets against it; for memory, k3s's agent at about 256 MB.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use serde_json::json;

use super::{Row, Summary};
use crate::cluster::{ClusterConfig, LabCluster};

/// Kubernetes' pod startup SLO: p99 ≤ 5 s.
const SLO_P99_MS: f64 = 5_000.0;
/// The goals.
const GOAL_P50_MS: f64 = 250.0;
const GOAL_P99_MS: f64 = 1_000.0;
/// k3s's agent with pods, as the issue quotes it.
const K3S_AGENT_RSS_MB: f64 = 256.0;
/// Pods created per second.
const PACE: f64 = 10.0;
/// How long all pods of a case may take to be Ready.
const CASE_LIMIT: Duration = Duration::from_secs(300);

/// Runs the benchmark with the `shoal` binary given.
pub async fn run(shoal: Option<&Path>, work: &Path) -> Result<Vec<Row>> {
    let Some(shoal) = shoal else {
        bail!("the pods benchmark measures shoal only: pass --shoal (cargo xtask bench pods does)");
    };
    let dir = std::path::absolute(work.join("pods"))?;
    let mut cfg = ClusterConfig::new("bpods", 3, dir)?;
    cfg.shoal = shoal.to_path_buf();
    // Room for 100+ pods a node; the pods request little.
    cfg.capacity_cpu = "64".into();
    cfg.capacity_memory = "128Gi".into();
    let cluster = tokio::task::spawn_blocking(move || LabCluster::start(cfg))
        .await
        .context("starting the lab cluster")??;
    cluster.lab().connect_root(&[])?;
    let client = client(&cluster.kubeconfig).await?;

    let mut rows = Vec::new();
    let one = startup(&client, "one", 100, Some("node-1")).await?;
    rows.extend(latency_rows("100 pods on 1 node", &one));
    let rss = agent_rss_mb(&cluster, 0)?;
    rows.push(Row::lower(
        "agent with 100 pods",
        "RSS",
        "MB",
        rss,
        K3S_AGENT_RSS_MB,
        "k3s agent (published, ~256 MB); goal 60 MB",
    ));
    delete_namespace(&client, "one").await?;
    let three = startup(&client, "three", 300, None).await?;
    rows.extend(latency_rows("300 pods on 3 nodes", &three));
    delete_namespace(&client, "three").await?;
    drop(cluster);
    Ok(rows)
}

fn latency_rows(case: &str, s: &Summary) -> Vec<Row> {
    let case = format!("{case}, created {PACE}/s");
    vec![
        Row::lower(
            &case,
            "startup p50",
            "ms",
            s.p50_ms(),
            GOAL_P50_MS,
            "goal 250 ms (SLO: p99 5 s)",
        ),
        Row::lower(
            &case,
            "startup p99",
            "ms",
            s.p99_ms(),
            SLO_P99_MS,
            "Kubernetes SLO p99 5 s (goal 1 s)",
        ),
        Row::lower(
            &case,
            "startup p99 vs goal",
            "ms",
            s.p99_ms(),
            GOAL_P99_MS,
            "goal 1 s",
        ),
    ]
}

async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    client
        .apiserver_version()
        .await
        .context("reaching the lab cluster's API from this machine")?;
    Ok(client)
}

fn pod(name: &str, node: Option<&str>) -> Result<Pod> {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 0,
        "containers": [{
            "name": "c",
            "image": "busybox",
            "command": ["sleep", "3600"],
            "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}},
        }],
    });
    if let Some(node) = node {
        spec["nodeSelector"] = json!({"kubernetes.io/hostname": node});
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "startup"}},
        "spec": spec,
    }))?)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Creates `count` pods in namespace `ns` at [`PACE`], each timed from its
/// create request to the watch event that shows it Ready.
async fn startup(client: &Client, ns: &str, count: usize, node: Option<&str>) -> Result<Summary> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await
        .with_context(|| format!("creating namespace {ns}"))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let ready: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let ready = ready.clone();
        let stream = watcher(pods.clone(), watcher::Config::default());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let now = Instant::now();
                if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = event
                    && is_ready(&p)
                    && let Some(name) = p.metadata.name
                    && let Ok(mut r) = ready.lock()
                {
                    r.entry(name).or_insert(now);
                    if r.len() >= count {
                        break;
                    }
                }
            }
        })
    };
    // Let the watch start before the first create.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..count {
        let due = start + Duration::from_secs_f64(i as f64 / PACE);
        tokio::time::sleep_until(due.into()).await;
        let name = format!("p{i:03}");
        let body = pod(&name, node)?;
        let pods = pods.clone();
        let sent = sent.clone();
        creates.spawn(async move {
            let at = Instant::now();
            pods.create(&PostParams::default(), &body)
                .await
                .with_context(|| format!("creating pod {name}"))?;
            if let Ok(mut s) = sent.lock() {
                s.insert(name, at);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = creates.join_next().await {
        done??;
    }
    let deadline = start + CASE_LIMIT;
    loop {
        let n = ready.lock().map(|r| r.len()).unwrap_or_default();
        if n >= count {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {n} of {count} pods in {ns} were Ready after {CASE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();
    let elapsed = start.elapsed();
    let sent = sent.lock().map(|s| s.clone()).unwrap_or_default();
    let ready = ready.lock().map(|r| r.clone()).unwrap_or_default();
    let latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(name, at)| ready.get(name).map(|r| r.saturating_duration_since(*at)))
        .collect();
    ensure!(
        latencies.len() == count,
        "{} of {count} pods timed",
        latencies.len()
    );
    let s = Summary::new(latencies, 0, elapsed);
    println!(
        "  {ns}: {count} pods Ready in {:.1} s; startup p50 {:.0} ms, p99 {:.0} ms",
        elapsed.as_secs_f64(),
        s.p50_ms(),
        s.p99_ms()
    );
    Ok(s)
}

async fn delete_namespace(client: &Client, ns: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(ns, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting namespace {ns}"))?;
    let deadline = Instant::now() + CASE_LIMIT;
    while namespaces.get_opt(ns).await?.is_some() {
        ensure!(
            Instant::now() < deadline,
            "namespace {ns} still there after {CASE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// The resident set of node `i`'s agent, in MB.
fn agent_rss_mb(cluster: &LabCluster, i: usize) -> Result<f64> {
    let pid = cluster
        .agent_pid(i)
        .with_context(|| format!("the agent of node {} is not running", i + 1))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}
