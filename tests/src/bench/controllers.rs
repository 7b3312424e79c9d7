//! `cargo xtask bench controllers`: a Deployment of 3,000 replicas on
//! simulated nodes (the scheduler bench's fleet: Node objects and renewed
//! Leases, no agents) on a release `shoal server`. The bench plays the
//! kubelet: each pod it sees bound gets status Running with Ready=True and
//! a podIP through pods/status, and each pod it sees marked for deletion
//! is removed with grace 0, concurrently and as fast as they come. It
//! measures, from the apply: all pods created (seen on a watch), all
//! bound, all Ready (as the bench marks them); then a rolling update (a
//! template change) until the rollout is complete — updatedReplicas =
//! availableReplicas = replicas and the old ReplicaSet at 0.
//!
//! The reference is issue 7's goal (3,000 pods created in ≤ 2 s). No
//! Kubernetes runs here to measure in the same run; the other reference is
//! a bound derived from kube-controller-manager's documented default
//! client rate limit (`--kube-api-qps` 20), not a measurement.
//!
//! For a quick run on a debug build: `SHOAL_BENCH_NODES=50
//! SHOAL_BENCH_REPLICAS=100 bench controllers --shoal target/debug/shoal`.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};

use super::{
    Row,
    api::{client::Conn, cpu_seconds},
    fleet::{
        CONCURRENCY, Fleet, JSON, PodLite, WatchEvent, create_namespace, env_usize, expect_ok,
        watch_events,
    },
};

/// Simulated nodes (env `SHOAL_BENCH_NODES` overrides): room for the
/// replicas and the rollout's surge at about 3 pods a node, as
/// Kubernetes' density tests load them (30 pods a node at most).
const NODES: usize = 1_000;
/// The Deployment's replicas (env `SHOAL_BENCH_REPLICAS` overrides).
const REPLICAS: usize = 3_000;
const LEASE_RENEW: Duration = Duration::from_secs(10);
const NAMESPACE: &str = "controllers-bench";
const DEPLOYMENT: &str = "bench";
const GOAL: &str = "goal (issue 7): 3,000 pods created in <= 2 s";
const GOAL_CREATED_S: f64 = 2.0;
/// kube-controller-manager's default `--kube-api-qps` (20/s, burst 30)
/// spaces its pod creates: 3,000 take about 150 s whatever the hardware.
const KCM_REFERENCE: &str =
    "derived from kube-controller-manager's default --kube-api-qps 20 (not measured)";
const KCM_CREATES_PER_S: f64 = 20.0;
const INFORMATIONAL: &str = "none (informational)";

/// When the bench saw each step of one pod, in µs since the epoch (0 =
/// not yet).
#[derive(Default, Clone)]
struct PodTimes {
    /// Its ReplicaSet's pod-template-hash.
    hash: String,
    seen: u64,
    bound: u64,
    ready: u64,
    deleting: bool,
}

/// What the simulated kubelet does to a pod.
enum Work {
    /// Status Running, Ready=True, a podIP.
    Start(String),
    /// Removes a pod marked for deletion (its containers "stopped").
    Remove(String),
}

type Pods = Arc<Mutex<HashMap<String, PodTimes>>>;

fn lock(pods: &Pods) -> std::sync::MutexGuard<'_, HashMap<String, PodTimes>> {
    pods.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records every pod event and hands bound and deleted pods to the
/// kubelet.
async fn watch_pods(
    conn: Conn,
    from_rv: String,
    epoch: Instant,
    pods: Pods,
    work: mpsc::UnboundedSender<Work>,
    stop: watch::Receiver<bool>,
) {
    let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    watch_events(
        conn,
        &path,
        from_rv,
        epoch,
        stop,
        |event: WatchEvent<PodLite>, now| {
            if event.kind == "DELETED" {
                return false;
            }
            let pod = event.object;
            let mut pods = lock(&pods);
            let times = pods
                .entry(pod.metadata.name.clone())
                .or_insert_with(|| PodTimes {
                    hash: pod
                        .metadata
                        .labels
                        .get("pod-template-hash")
                        .cloned()
                        .unwrap_or_default(),
                    seen: now.max(1),
                    ..PodTimes::default()
                });
            if pod.metadata.deletion_timestamp.is_some() {
                if !times.deleting {
                    times.deleting = true;
                    let _ = work.send(Work::Remove(pod.metadata.name));
                }
            } else if pod.spec.node_name.is_some_and(|n| !n.is_empty()) && times.bound == 0 {
                times.bound = now.max(1);
                let _ = work.send(Work::Start(pod.metadata.name));
            }
            false
        },
    )
    .await;
}

/// Plays the kubelet of every simulated node: starts bound pods and
/// removes deleted ones, `CONCURRENCY` at once.
async fn kubelet(
    conns: Vec<Conn>,
    epoch: Instant,
    pods: Pods,
    mut work: mpsc::UnboundedReceiver<Work>,
) -> Result<()> {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let mut started = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(job) = work.recv().await {
        let permit = slots.clone().acquire_owned().await?;
        let conn = conns[started % conns.len()].clone();
        started += 1;
        let pods = pods.clone();
        let ip = format!("10.244.{}.{}", (started >> 8) & 0xff, started & 0xff);
        tasks.spawn(async move {
            let _permit = permit;
            match job {
                Work::Start(name) => {
                    let now = k8s_openapi::jiff::Timestamp::now().to_string();
                    let status = json!({"status": {
                        "phase": "Running",
                        "podIP": ip,
                        "podIPs": [{"ip": ip}],
                        "startTime": now,
                        "conditions": [
                            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                            {"type": "Ready", "status": "True", "lastTransitionTime": now},
                        ],
                    }});
                    let path = format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}/status");
                    if let Ok((status, _)) = conn
                        .merge_patch(&path, Bytes::from(status.to_string()))
                        .await
                        && status.is_success()
                        && let Some(t) = lock(&pods).get_mut(&name)
                    {
                        t.ready = (epoch.elapsed().as_micros() as u64).max(1);
                    }
                }
                Work::Remove(name) => {
                    let path =
                        format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}?gracePeriodSeconds=0");
                    let _ = conn.call(Method::DELETE, &path, JSON, None).await;
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn deployment(replicas: usize) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": DEPLOYMENT}},
            "template": {
                "metadata": {"labels": {"app": DEPLOYMENT}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}},
                }]},
            },
        },
    })
}

/// Polls until `done` holds for the pods of the ReplicaSet with `hash`
/// (any, if empty) — at least `replicas` of them — or `limit` passes.
async fn wait_pods(
    pods: &Pods,
    replicas: usize,
    limit: Duration,
    what: &str,
    done: impl Fn(&PodTimes) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let count = lock(pods).values().filter(|t| done(t)).count();
        if count >= replicas {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {count} of {replicas} pods {what} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Deserialize, Default)]
struct DeploymentLite {
    #[serde(default)]
    metadata: DeploymentMeta,
    #[serde(default)]
    status: DeploymentStatusLite,
}

#[derive(Deserialize, Default)]
struct DeploymentMeta {
    #[serde(default)]
    generation: i64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeploymentStatusLite {
    #[serde(default)]
    observed_generation: i64,
    #[serde(default)]
    replicas: usize,
    #[serde(default)]
    updated_replicas: usize,
    #[serde(default)]
    available_replicas: usize,
}

/// Polls the Deployment until its rollout is complete as `kubectl
/// rollout status` judges it.
async fn wait_rollout(conn: &Conn, replicas: usize, limit: Duration) -> Result<()> {
    let path = format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{DEPLOYMENT}");
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = conn.call(Method::GET, &path, JSON, None).await?;
        ensure!(status == StatusCode::OK, "reading the Deployment: {status}");
        let d: DeploymentLite = serde_json::from_slice(&body)?;
        let s = &d.status;
        if s.observed_generation >= d.metadata.generation
            && s.updated_replicas == replicas
            && s.replicas == replicas
            && s.available_replicas == replicas
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "rollout not complete within {limit:?}: {} of {replicas} updated, {} available, {} in all",
                s.updated_replicas,
                s.available_replicas,
                s.replicas
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Deserialize)]
struct ReplicaSetList {
    items: Vec<ReplicaSetLite>,
}

#[derive(Deserialize)]
struct ReplicaSetLite {
    metadata: ReplicaSetMeta,
    spec: ReplicaSetSpec,
}

#[derive(Deserialize)]
struct ReplicaSetMeta {
    name: String,
    #[serde(default)]
    labels: HashMap<String, String>,
}

#[derive(Deserialize)]
struct ReplicaSetSpec {
    #[serde(default)]
    replicas: usize,
}

/// Every ReplicaSet but the one with `hash` must be scaled to 0.
async fn old_sets_at_zero(conn: &Conn, hash: &str) -> Result<()> {
    let path = format!("/apis/apps/v1/namespaces/{NAMESPACE}/replicasets");
    let (status, body) = conn.call(Method::GET, &path, JSON, None).await?;
    ensure!(status == StatusCode::OK, "listing ReplicaSets: {status}");
    let list: ReplicaSetList = serde_json::from_slice(&body)?;
    for rs in list.items {
        let current = rs
            .metadata
            .labels
            .get("pod-template-hash")
            .map(String::as_str)
            == Some(hash);
        ensure!(
            current || rs.spec.replicas == 0,
            "old ReplicaSet {} still has {} replicas after the rollout",
            rs.metadata.name,
            rs.spec.replicas
        );
    }
    Ok(())
}

/// The latest of the pods' times (`at`) among those `of` selects, in
/// seconds after `from` µs.
fn last(pods: &Pods, from: u64, of: impl Fn(&PodTimes) -> bool, at: fn(&PodTimes) -> u64) -> f64 {
    let latest = lock(pods)
        .values()
        .filter(|t| of(t))
        .map(at)
        .max()
        .unwrap_or(0);
    latest.saturating_sub(from) as f64 / 1e6
}

/// Runs the controllers benchmark and returns the rows.
pub async fn run(shoal_bin: Option<&Path>, work: &Path) -> Result<Vec<Row>> {
    let shoal_bin = shoal_bin.context("bench controllers measures shoal itself: pass --shoal")?;
    let nodes = env_usize("SHOAL_BENCH_NODES").unwrap_or(NODES);
    let replicas = env_usize("SHOAL_BENCH_REPLICAS").unwrap_or(REPLICAS);
    ensure!(replicas > 0, "SHOAL_BENCH_REPLICAS must be at least 1");
    let fleet = Fleet::start(shoal_bin, work, "controllers", nodes, LEASE_RENEW).await?;
    let (client, conns, pid) = (&fleet.client, &fleet.conns, fleet.pid());

    let rv = create_namespace(&conns[0], NAMESPACE).await?;
    let epoch = Instant::now();
    let pods: Pods = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (work_tx, work_rx) = mpsc::unbounded_channel();
    let watcher = tokio::spawn(watch_pods(
        client.connect().await?,
        rv,
        epoch,
        pods.clone(),
        work_tx,
        stop_rx,
    ));
    let kubelet = tokio::spawn(kubelet(conns.clone(), epoch, pods.clone(), work_rx));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Generous: a debug build is far slower than a release one.
    let limit = Duration::from_secs(120) + Duration::from_millis(replicas as u64 * 40);

    eprintln!("bench controllers: a Deployment of {replicas} replicas");
    let cpu_before = cpu_seconds(pid);
    let applied = epoch.elapsed().as_micros() as u64;
    expect_ok(
        &conns[0],
        Method::POST,
        &format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments"),
        deployment(replicas),
    )
    .await?;
    wait_pods(&pods, replicas, limit, "created", |t| t.seen > 0).await?;
    wait_pods(&pods, replicas, limit, "bound", |t| t.bound > 0).await?;
    wait_pods(&pods, replicas, limit, "Ready", |t| t.ready > 0).await?;
    let first_hash = lock(&pods)
        .values()
        .next()
        .map(|t| t.hash.clone())
        .unwrap_or_default();
    let of_first = |t: &PodTimes| t.hash == first_hash;
    let created_s = last(&pods, applied, of_first, |t| t.seen);
    let bound_s = last(&pods, applied, of_first, |t| t.bound);
    let ready_s = last(&pods, applied, of_first, |t| t.ready);
    eprintln!(
        "  apply → {replicas} pods created {created_s:.2} s, bound {bound_s:.2} s, Ready {ready_s:.2} s"
    );

    eprintln!("bench controllers: rolling update (template changed)");
    let updated = Instant::now();
    let patch =
        json!({"spec": {"template": {"metadata": {"annotations": {"bench/revision": "2"}}}}});
    let (status, body) = conns[0]
        .merge_patch(
            &format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{DEPLOYMENT}"),
            Bytes::from(patch.to_string()),
        )
        .await?;
    ensure!(
        status.is_success(),
        "updating the Deployment's template: {status} {}",
        String::from_utf8_lossy(&body)
    );
    wait_rollout(&conns[0], replicas, limit).await?;
    let rollout_s = updated.elapsed().as_secs_f64();
    let server_cpu_s = cpu_seconds(pid) - cpu_before;
    let new_hash = lock(&pods)
        .values()
        .find(|t| t.hash != first_hash)
        .map(|t| t.hash.clone())
        .context("the rollout made no pods of a new template")?;
    old_sets_at_zero(&conns[0], &new_hash).await?;
    eprintln!("  rollout complete in {rollout_s:.2} s; server CPU {server_cpu_s:.1} s");

    let _ = stop_tx.send(true);
    let _ = watcher.await;
    kubelet.await.context("the simulated kubelet panicked")??;
    fleet.stop().await;

    let case = format!("Deployment {replicas} replicas, {nodes} nodes");
    let kcm_created_s = replicas as f64 / KCM_CREATES_PER_S;
    Ok(vec![
        Row::lower(&case, "created", "s", created_s, GOAL_CREATED_S, GOAL),
        Row::lower(
            &case,
            "created",
            "s",
            created_s,
            kcm_created_s,
            KCM_REFERENCE,
        ),
        Row::lower(&case, "bound", "s", bound_s, f64::NAN, INFORMATIONAL),
        Row::lower(&case, "ready", "s", ready_s, f64::NAN, INFORMATIONAL),
        Row::lower(&case, "rollout", "s", rollout_s, f64::NAN, INFORMATIONAL),
        Row::lower(
            &case,
            "server CPU",
            "s",
            server_cpu_s,
            f64::NAN,
            INFORMATIONAL,
        ),
    ])
}
