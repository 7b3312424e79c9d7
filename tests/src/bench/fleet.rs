//! A fleet of simulated nodes for the control-plane benchmarks (scheduler,
//! controllers): Node objects with a Ready status and allocatable, and
//! their Leases renewed by the bench as agents would, with no agent
//! behind them; plus the pieces those benches share: bounded concurrency,
//! env knobs, and a resumable watch read line by line.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::json;
use tokio::{sync::watch, task::JoinHandle};

use super::api::{
    Server,
    client::{ApiClient, Conn},
};

pub(super) const JSON: &str = "application/json";
/// Creates in flight at once.
pub(super) const CONCURRENCY: usize = 64;
/// HTTP/2 connections the requests share.
const CONNS: usize = 4;
/// Node allocatable, as scheduler_perf's node-default.yaml.
pub(super) const NODE_CPU_MILLI: u64 = 4_000;
pub(super) const NODE_MEMORY: u64 = 32 << 30;
pub(super) const NODE_PODS: u64 = 110;

/// Runs `f(0..count)` as tasks, at most `limit` at once; results in
/// completion order.
pub(super) async fn concurrently<T, Fut>(
    count: usize,
    limit: usize,
    f: impl Fn(usize) -> Fut,
) -> Result<Vec<T>>
where
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(count);
    let mut next = 0;
    while next < count || !set.is_empty() {
        while next < count && set.len() < limit {
            set.spawn(f(next));
            next += 1;
        }
        if let Some(r) = set.join_next().await {
            out.push(r.context("a benchmark task panicked")?);
        }
    }
    Ok(out)
}

/// A count from the environment (a debug run's smaller scale).
pub(super) fn env_usize(key: &str) -> Option<usize> {
    std::env::var(key).ok()?.trim().parse().ok()
}

/// The `i`th simulated node's name.
pub(super) fn node_name(i: usize) -> String {
    format!("sched-node-{i:05}")
}

/// Sends `body` as JSON and fails on anything but a 2xx.
pub(super) async fn expect_ok(
    conn: &Conn,
    method: Method,
    path: &str,
    body: serde_json::Value,
) -> Result<Bytes> {
    let (status, reply) = conn
        .call(
            method.clone(),
            path,
            JSON,
            Some(Bytes::from(body.to_string())),
        )
        .await?;
    ensure!(
        status.is_success(),
        "{method} {path}: {status} {}",
        String::from_utf8_lossy(&reply)
    );
    Ok(reply)
}

/// Creates a namespace and returns its resourceVersion, where a watch
/// of what happens in it starts.
pub(super) async fn create_namespace(conn: &Conn, name: &str) -> Result<String> {
    let created = expect_ok(
        conn,
        Method::POST,
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .await?;
    serde_json::from_slice::<serde_json::Value>(&created)?
        .pointer("/metadata/resourceVersion")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .with_context(|| format!("namespace {name} came back without a resourceVersion"))
}

/// Registers the nodes: the Node, then its status (Ready, allocatable).
async fn create_nodes(conns: &[Conn], nodes: usize) -> Result<()> {
    let results: Vec<Result<()>> = concurrently(nodes, CONCURRENCY, |i| {
            let conn = conns[i % conns.len()].clone();
            async move {
                let name = node_name(i);
                let node = json!({
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": name, "labels": {
                        "kubernetes.io/hostname": name,
                        "topology.kubernetes.io/zone": format!("zone-{}", i % 10),
                    }},
                });
                let created = expect_ok(&conn, Method::POST, "/api/v1/nodes", node).await?;
                let mut node: serde_json::Value = serde_json::from_slice(&created)?;
                let resources = json!({"cpu": "4", "memory": "32Gi", "pods": "110"});
                node["status"] = json!({
                    "capacity": resources,
                    "allocatable": resources,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                    "lastHeartbeatTime": k8s_openapi::jiff::Timestamp::now().to_string()}],
                });
                // Unconditional (no resourceVersion), as the node IPAM
                // controller may have written the podCIDRs in between.
                if let Some(meta) = node["metadata"].as_object_mut() {
                    meta.remove("resourceVersion");
                }
                expect_ok(&conn, Method::PUT, &format!("/api/v1/nodes/{name}/status"), node).await?;
                Ok(())
            }
        })
        .await?;
    results.into_iter().collect()
}

fn lease(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                 "renewTime": k8s_openapi::jiff::Timestamp::now().to_string()},
    })
}

/// Renews every node's Lease each `every`, spread over the interval, as
/// agents would, until `stop`.
async fn heartbeats(conn: Conn, nodes: usize, every: Duration, mut stop: watch::Receiver<bool>) {
    const BATCH: usize = 50;
    let batches = nodes.div_ceil(BATCH).max(1);
    loop {
        let round = Instant::now();
        for b in 0..batches {
            if *stop.borrow() {
                return;
            }
            let renewals = (b * BATCH..((b + 1) * BATCH).min(nodes)).map(|i| {
                let conn = conn.clone();
                async move {
                    let name = node_name(i);
                    let path = format!(
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
                    );
                    let _ = conn
                        .call(
                            Method::PUT,
                            &path,
                            JSON,
                            Some(Bytes::from(lease(&name).to_string())),
                        )
                        .await;
                }
            });
            let mut set: tokio::task::JoinSet<()> = renewals.collect();
            while set.join_next().await.is_some() {}
            let next = round + every.mul_f64((b + 1) as f64 / batches as f64);
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// A `shoal server` with simulated nodes whose Leases are being renewed;
/// [`Fleet::stop`] ends the renewals and the server.
pub(super) struct Fleet {
    server: Server,
    /// Opens more connections.
    pub client: ApiClient,
    /// Connections the bench's requests share.
    pub conns: Vec<Conn>,
    stop: watch::Sender<bool>,
    beats: JoinHandle<()>,
}

impl Fleet {
    /// Starts a server with its data under `<work>/<area>`, registers
    /// `nodes` Nodes and their Leases, starts renewing the Leases each
    /// `renew`, and gives the scheduler's node cache time to fill.
    pub(super) async fn start(
        shoal_bin: &Path,
        work: &Path,
        area: &str,
        nodes: usize,
        renew: Duration,
    ) -> Result<Self> {
        let dir = work.join(area);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        eprintln!(
            "bench {area}: starting shoal server (data in {})",
            dir.display()
        );
        // Pod CIDRs for every simulated node (the default /16 and /56 hold
        // 256 nodes' ranges); nothing is routed, no agent runs.
        let mut server = Server::start_with(
            shoal_bin,
            &dir,
            &["--cluster-cidrs", "10.128.0.0/9,fd00:10:244::/48"],
        )?;
        let client = server.wait_ready().await?;
        let mut conns = Vec::new();
        for _ in 0..CONNS {
            conns.push(client.connect().await?);
        }
        eprintln!("bench {area}: {nodes} nodes and their Leases");
        let started = Instant::now();
        create_nodes(&conns, nodes).await?;
        let leases: Vec<Result<()>> = concurrently(nodes, CONCURRENCY, |i| {
            let conn = conns[i % conns.len()].clone();
            async move {
                expect_ok(
                    &conn,
                    Method::POST,
                    "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                    lease(&node_name(i)),
                )
                .await
                .map(|_| ())
            }
        })
        .await?;
        leases.into_iter().collect::<Result<()>>()?;
        eprintln!("  registered in {:.1} s", started.elapsed().as_secs_f64());
        let (stop, stop_rx) = watch::channel(false);
        let beats = tokio::spawn(heartbeats(client.connect().await?, nodes, renew, stop_rx));
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(Self {
            server,
            client,
            conns,
            stop,
            beats,
        })
    }

    /// The server's process id.
    pub(super) fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// Stops renewing the Leases and the server.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.beats.await;
        drop(self.server);
    }
}

/// What a watched object must tell the watch: where to resume.
pub(super) trait Watched: DeserializeOwned {
    /// The object's `metadata.resourceVersion`.
    fn resource_version(&self) -> &str;
}

/// One watch event, the object decoded as `T`.
#[derive(Deserialize)]
pub(super) struct WatchEvent<T> {
    /// ADDED, MODIFIED, DELETED (ERROR and BOOKMARK are not passed on).
    #[serde(rename = "type")]
    pub kind: String,
    /// The object.
    pub object: T,
}

/// Watches `path` (a collection; `?watch=1&resourceVersion=` is added)
/// from `from_rv`, reopening where it left off when the stream ends, and
/// hands each event to `on_event` with the µs since `epoch` it arrived
/// at, until `on_event` returns true or `stop` is set.
pub(super) async fn watch_events<T: Watched>(
    conn: Conn,
    path: &str,
    from_rv: String,
    epoch: Instant,
    mut stop: watch::Receiver<bool>,
    mut on_event: impl FnMut(WatchEvent<T>, u64) -> bool,
) {
    let mut rv = from_rv;
    let mut buf = BytesMut::new();
    'watch: while !*stop.borrow() {
        let url = format!("{path}?watch=1&resourceVersion={rv}");
        let opened = tokio::select! {
            _ = stop.changed() => break 'watch,
            o = conn.open(Method::GET, &url, JSON, None) => o,
        };
        let Ok((StatusCode::OK, mut body)) = opened else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        buf.clear();
        loop {
            let frame = tokio::select! {
                biased;
                _ = stop.changed() => break 'watch,
                f = body.frame() => f,
            };
            let Some(Ok(frame)) = frame else { break };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let now = epoch.elapsed().as_micros() as u64;
            buf.extend_from_slice(&data);
            let mut start = 0;
            let mut done = false;
            while let Some(nl) = memchr::memchr(b'\n', &buf[start..]) {
                let line = &buf[start..start + nl];
                start += nl + 1;
                let Ok(event) = serde_json::from_slice::<WatchEvent<T>>(line) else {
                    continue;
                };
                if event.kind == "ERROR" || event.kind == "BOOKMARK" {
                    continue;
                }
                if !event.object.resource_version().is_empty() {
                    rv = event.object.resource_version().to_owned();
                }
                done |= on_event(event, now);
            }
            let _ = buf.split_to(start);
            if done {
                break 'watch;
            }
        }
    }
}

/// The fields of a pod the benches read.
#[derive(Deserialize, Default)]
pub(super) struct PodLite {
    #[serde(default)]
    pub metadata: MetaLite,
    #[serde(default)]
    pub spec: SpecLite,
}

/// A pod's metadata, as far as the benches read it.
#[derive(Deserialize, Default)]
pub(super) struct MetaLite {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "resourceVersion")]
    pub resource_version: String,
    #[serde(default, rename = "deletionTimestamp")]
    pub deletion_timestamp: Option<String>,
    #[serde(default)]
    pub labels: HashMap<String, String>,
}

/// A pod's spec, as far as the benches read it.
#[derive(Deserialize, Default)]
pub(super) struct SpecLite {
    #[serde(default, rename = "nodeName")]
    pub node_name: Option<String>,
}

impl Watched for PodLite {
    fn resource_version(&self) -> &str {
        &self.metadata.resource_version
    }
}
