//! `cargo xtask bench scheduler`: kube-scheduler's scheduler_perf
//! SchedulingBasic shapes on a release `shoal server` — 5,000 Nodes (4
//! CPU, 32 GiB, 110 pods; no agents, their Leases renewed by the bench as
//! agents would), then 10,000 and then 50,000 more pods requesting 100m
//! and 500 MiB each, created at 64 concurrency through the real apiserver
//! and store. It measures pods bound per second (from the first create to
//! the last binding, and steady state between the 10th and the 90th
//! percentile binding) and the create→bind latency seen on a watch, then
//! checks every placement: no node over its allocatable.
//!
//! The reference is Kubernetes' published scheduler_perf CI thresholds
//! for the same shapes (SchedulingBasic 5000Nodes_10000Pods: 680 pods/s,
//! 5000Nodes_50000Pods: 810 pods/s), and issue 6's goal of 3,000 pods/s.
//!
//! For a quick run on a debug build: `SHOAL_BENCH_NODES=200
//! SHOAL_BENCH_PODS=500,1000 bench scheduler --shoal target/debug/shoal`.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use super::{
    Row,
    api::{client::Conn, cpu_seconds},
    fleet::{
        CONCURRENCY, Fleet, JSON, NODE_CPU_MILLI, NODE_MEMORY, NODE_PODS, PodLite, WatchEvent,
        concurrently, create_namespace, env_usize, watch_events,
    },
    percentile,
};

/// Nodes (env `SHOAL_BENCH_NODES` overrides).
const NODES: usize = 5_000;
/// Pods per phase (env `SHOAL_BENCH_PODS`, comma-separated, overrides).
const PODS: [usize; 2] = [10_000, 50_000];
/// Kubernetes' scheduler_perf CI thresholds for those phases.
const KUBE_THRESHOLDS: [f64; 2] = [680.0, 810.0];
const KUBE_REFERENCE: &str = "Kubernetes scheduler_perf CI threshold (SchedulingBasic, 5000 nodes)";
const GOAL: &str = "goal (issue 6)";
const GOAL_PODS_PER_S: f64 = 3000.0;
const INFORMATIONAL: &str = "none (informational)";
/// How often each node's Lease is renewed (the kubelet's 10 s; env
/// `SHOAL_BENCH_LEASE_RENEW` in seconds overrides).
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// Pod requests, as scheduler_perf's pod-default.yaml.
const POD_CPU_MILLI: u64 = 100;
const POD_MEMORY: u64 = 500 << 20;

/// Watches the phase's namespace and records when each pod (by index) is
/// first seen bound, in µs since `epoch`.
async fn watch_binds(
    conn: Conn,
    ns: String,
    from_rv: String,
    pods: usize,
    epoch: Instant,
    stop: watch::Receiver<bool>,
) -> Vec<u64> {
    let mut bound = vec![0u64; pods];
    let mut count = 0;
    if pods == 0 {
        return bound;
    }
    let path = format!("/api/v1/namespaces/{ns}/pods");
    watch_events(
        conn,
        &path,
        from_rv,
        epoch,
        stop,
        |event: WatchEvent<PodLite>, now| {
            let Some(i) = event
                .object
                .metadata
                .name
                .strip_prefix("p")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|i| *i < pods)
            else {
                return false;
            };
            if event.object.spec.node_name.is_some_and(|n| !n.is_empty()) && bound[i] == 0 {
                bound[i] = now.max(1);
                count += 1;
            }
            count == pods
        },
    )
    .await;
    bound
}

fn pod(i: usize) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": format!("p{i:06}"), "labels": {"app": "sched-bench"}},
            "spec": {"containers": [{
                "name": "pause",
                "image": "registry.k8s.io/pause:3.10",
                "ports": [{"containerPort": 80}],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "500Mi"},
                    "limits": {"cpu": "100m", "memory": "500Mi"},
                },
            }]},
        })
        .to_string(),
    )
}

/// One phase's figures.
struct Phase {
    pods: usize,
    /// Bound pods per second, first create to last binding.
    overall: f64,
    /// Between the 10th and the 90th percentile binding.
    steady: f64,
    p50_ms: f64,
    p99_ms: f64,
    server_cpu_s: f64,
}

async fn phase(conns: &[Conn], pid: u32, pods: usize) -> Result<Phase> {
    let ns = format!("sched-{pods}");
    let rv = create_namespace(&conns[0], &ns).await?;
    let epoch = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(watch_binds(
        conns[0].clone(),
        ns.clone(),
        rv,
        pods,
        epoch,
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu_before = cpu_seconds(pid);
    let sent: Vec<(usize, u64, bool)> = concurrently(pods, CONCURRENCY, |i| {
        let conn = conns[i % conns.len()].clone();
        let path = format!("/api/v1/namespaces/{ns}/pods");
        async move {
            let at = epoch.elapsed().as_micros() as u64;
            let ok = matches!(
                conn.call(Method::POST, &path, JSON, Some(pod(i))).await,
                Ok((StatusCode::CREATED, _))
            );
            (i, at, ok)
        }
    })
    .await?;
    let failed = sent.iter().filter(|(_, _, ok)| !ok).count();
    ensure!(failed == 0, "{failed} of {pods} pod creates failed");
    let created_done = epoch.elapsed();
    eprintln!(
        "  {pods} pods created in {:.2} s",
        created_done.as_secs_f64()
    );
    // Generous: a debug build schedules far slower than a release one.
    let limit = Duration::from_secs(120) + Duration::from_millis(pods as u64 * 20);
    let waited = tokio::time::timeout(limit, async {
        loop {
            if watcher.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let _ = stop_tx.send(true);
    let bound = watcher.await.context("the bind watcher panicked")?;
    let server_cpu_s = cpu_seconds(pid) - cpu_before;
    let missing = bound.iter().filter(|b| **b == 0).count();
    if waited.is_err() || missing > 0 {
        bail!("{missing} of {pods} pods were not bound within {limit:?}");
    }
    let mut sent_at = vec![0u64; pods];
    for (i, at, _) in &sent {
        sent_at[*i] = *at;
    }
    let first = sent_at.iter().copied().min().unwrap_or(0);
    let mut binds: Vec<u64> = bound.clone();
    binds.sort_unstable();
    let last = binds.last().copied().unwrap_or(0);
    let overall = pods as f64 / ((last.saturating_sub(first)) as f64 / 1e6).max(1e-9);
    let (lo, hi) = (binds[pods / 10], binds[(pods * 9 / 10).min(pods - 1)]);
    let steady = (pods * 8 / 10) as f64 / ((hi.saturating_sub(lo)) as f64 / 1e6).max(1e-9);
    let mut latencies: Vec<Duration> = bound
        .iter()
        .zip(&sent_at)
        .map(|(b, s)| Duration::from_micros(b.saturating_sub(*s)))
        .collect();
    latencies.sort_unstable();
    Ok(Phase {
        pods,
        overall,
        steady,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        server_cpu_s,
    })
}

#[derive(Deserialize)]
struct PodList {
    items: Vec<PodLite>,
    #[serde(default)]
    metadata: ListMeta,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(default, rename = "continue")]
    continue_token: Option<String>,
}

/// Every pod's node, listed in pages; counts nodes over their
/// allocatable and pods left unbound.
async fn verify(conn: &Conn, nodes: usize) -> Result<(usize, usize)> {
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let path = if token.is_empty() {
            "/api/v1/pods?limit=5000".to_string()
        } else {
            format!("/api/v1/pods?limit=5000&continue={token}")
        };
        let (status, body) = conn.call(Method::GET, &path, JSON, None).await?;
        ensure!(status == StatusCode::OK, "listing pods: {status}");
        let page: PodList = serde_json::from_slice(&body)?;
        items.extend(page.items);
        token = page.metadata.continue_token.unwrap_or_default();
        if token.is_empty() {
            break;
        }
    }
    let list = PodList {
        items,
        metadata: ListMeta::default(),
    };
    let mut per_node: HashMap<String, u64> = HashMap::new();
    let mut unbound = 0;
    for p in &list.items {
        match p.spec.node_name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => *per_node.entry(n.to_string()).or_default() += 1,
            None => unbound += 1,
        }
    }
    let over = per_node
        .values()
        .filter(|n| {
            **n > NODE_PODS
                || **n * POD_CPU_MILLI > NODE_CPU_MILLI
                || **n * POD_MEMORY > NODE_MEMORY
        })
        .count();
    let fullest = per_node.values().copied().max().unwrap_or(0);
    eprintln!(
        "  placements: {} pods on {} of {nodes} nodes (fullest {fullest}), {unbound} unbound, {over} nodes over allocatable",
        list.items.len() - unbound,
        per_node.len(),
    );
    Ok((over, unbound))
}

/// Runs the scheduler benchmark and returns the rows.
pub async fn run(shoal_bin: Option<&Path>, work: &Path) -> Result<Vec<Row>> {
    let shoal_bin = shoal_bin.context("bench scheduler measures shoal itself: pass --shoal")?;
    let nodes = env_usize("SHOAL_BENCH_NODES").unwrap_or(NODES);
    let phases: Vec<usize> = std::env::var("SHOAL_BENCH_PODS")
        .ok()
        .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| PODS.to_vec());
    let renew =
        env_usize("SHOAL_BENCH_LEASE_RENEW").map_or(LEASE_RENEW, |s| Duration::from_secs(s as u64));
    let fleet = Fleet::start(shoal_bin, work, "scheduler", nodes, renew).await?;
    let (conns, pid) = (&fleet.conns, fleet.pid());

    let mut rows = Vec::new();
    let mut results = Vec::new();
    for (k, pods) in phases.iter().copied().enumerate() {
        eprintln!("bench scheduler: {pods} pods at {CONCURRENCY} concurrency");
        let p = phase(conns, pid, pods).await?;
        eprintln!(
            "  {:.0} pods/s overall, {:.0} steady, create→bind p50 {:.0} ms p99 {:.0} ms, server CPU {:.1} s",
            p.overall, p.steady, p.p50_ms, p.p99_ms, p.server_cpu_s
        );
        results.push((k, p));
    }
    let (over, unbound) = verify(&conns[0], nodes).await?;
    fleet.stop().await;
    ensure!(
        over == 0 && unbound == 0,
        "invalid placements: {over} nodes over their allocatable, {unbound} pods unbound"
    );
    for (k, p) in results {
        let case = format!("{nodes} nodes, {} pods", p.pods);
        let reference = KUBE_THRESHOLDS.get(k).copied().unwrap_or(f64::NAN);
        rows.push(Row::higher(
            &case,
            "overall",
            "pods/s",
            p.overall,
            reference,
            KUBE_REFERENCE,
        ));
        rows.push(Row::higher(
            &case,
            "steady",
            "pods/s",
            p.steady,
            reference,
            KUBE_REFERENCE,
        ));
        rows.push(Row::higher(
            &case,
            "overall",
            "pods/s",
            p.overall,
            GOAL_PODS_PER_S,
            GOAL,
        ));
        rows.push(Row::lower(
            &case,
            "p50 bind",
            "ms",
            p.p50_ms,
            f64::NAN,
            INFORMATIONAL,
        ));
        rows.push(Row::lower(
            &case,
            "p99 bind",
            "ms",
            p.p99_ms,
            f64::NAN,
            INFORMATIONAL,
        ));
    }
    Ok(rows)
}
