//! `cargo xtask bench dataplane`, the API side of part (b): how long after
//! an EndpointSlice write to the API its new endpoint is in the node's
//! eBPF map. A release `shoal server` (API + bundled store on loopback) and
//! the agent's real service sync (`shoal_agent::services::run`, kube-rs
//! watches) programming a lab host's pinned maps; the bench replaces the
//! slice's second endpoint and polls the pinned map until a live slot
//! names it. Timed from the moment the write is sent (so it includes the
//! write's own commit), against issue 8's goal.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use shoal_agent::{
    Dataplane, DataplaneConfig, PinnedMaps,
    services::{SyncConfig, run as sync},
};

use super::{Row, Summary, dns};
use crate::lab::Lab;

/// Endpoint changes timed.
const CHANGES: usize = 50;
/// How long one change may take before the bench gives up.
const LIMIT: Duration = Duration::from_secs(10);
const NAMESPACE: &str = "default";
const NAME: &str = "bench-propagation";
const GOAL: &str = "goal (issue 8): one endpoint change in the map <= 50 ms after the API write";
const GOAL_MS: f64 = 50.0;

/// Runs it; `shoal` is the release binary whose `server` is the API.
pub async fn run(shoal: Option<&Path>, work: &Path) -> Result<Vec<Row>> {
    let shoal = shoal.context("the API-to-map figure needs the shoal binary for its API server")?;
    let dir = work.join("dataplane");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _server = dns::start_server(shoal, &dir)?;
    let client = dns::client(&dir.join("data/kubeconfig")).await?;

    let lab = tokio::task::spawn_blocking(|| Lab::create(&Lab::unique_prefix(), 1))
        .await?
        .context("creating the lab")?;
    let host = lab.host(1);
    let dataplane = Dataplane::load(DataplaneConfig {
        pin_dir: host.pin_dir().to_path_buf(),
        cgroup: host.cgroup().to_path_buf(),
        ebpf_debug_logs: false,
    })
    .context("loading the dataplane in the lab host")?;
    let dataplane = Arc::new(Mutex::new(dataplane));
    let config = SyncConfig::new("node-1", vec![IpAddr::V4(host.ipv4())]);
    let agent = tokio::spawn(sync(client.clone(), dataplane.clone(), config));

    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": NAME},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
    }))?;
    let service = services
        .create(&PostParams::default(), &service)
        .await
        .with_context(|| format!("creating Service {NAMESPACE}/{NAME}"))?;
    let vip: IpAddr = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .with_context(|| format!("Service {NAMESPACE}/{NAME} got no spec.clusterIP"))?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let maps = PinnedMaps::new(host.pin_dir());

    let mut latencies = Vec::with_capacity(CHANGES);
    let started = Instant::now();
    // Change 0 creates the slice and is not counted (the first watch
    // event of a new object).
    for k in 0..=CHANGES {
        let second = Ipv4Addr::new(10, 244, 1, (k % 250 + 2) as u8);
        let slice = slice([Ipv4Addr::new(10, 244, 0, 2), second]);
        let sent = Instant::now();
        if k == 0 {
            let slice: EndpointSlice = serde_json::from_value(slice)?;
            slices
                .create(&PostParams::default(), &slice)
                .await
                .map(drop)
        } else {
            slices
                .patch(
                    &format!("{NAME}-1"),
                    &PatchParams::default(),
                    &Patch::Merge(&slice),
                )
                .await
                .map(drop)
        }
        .with_context(|| format!("writing EndpointSlice {NAMESPACE}/{NAME}-1"))?;
        let want = SocketAddr::new(IpAddr::V4(second), 8080);
        loop {
            let holds = maps
                .services()
                .context("reading the pinned maps")?
                .iter()
                .any(|row| {
                    row.frontend.address == vip && row.slots.iter().any(|s| s.backend == Some(want))
                });
            if holds {
                break;
            }
            if sent.elapsed() > LIMIT {
                bail!("{want} was not in the map of {vip} {LIMIT:?} after the slice write");
            }
            if agent.is_finished() {
                bail!("the service sync stopped");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        if k > 0 {
            latencies.push(sent.elapsed());
        }
    }
    let summary = Summary::new(latencies, 0, started.elapsed());
    agent.abort();
    let _ = agent.await;
    ensure!(
        Arc::strong_count(&dataplane) == 1,
        "the dataplane is still shared after the sync stopped"
    );
    drop(dataplane);
    println!(
        "endpoint change, API write to map ({CHANGES} changes, 1 Service): p50 {:.2} ms, p99 {:.2} ms",
        summary.p50_ms(),
        summary.p99_ms()
    );
    let case = "one endpoint change, API write to map (1 service)";
    Ok(vec![
        Row::lower(case, "p99", "ms", summary.p99_ms(), GOAL_MS, GOAL),
        Row::lower(case, "p50", "ms", summary.p50_ms(), GOAL_MS, GOAL),
    ])
}

/// The Service's slice with endpoints `[a, b]`.
fn slice([a, b]: [Ipv4Addr; 2]) -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{NAME}-1"), "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": NAME},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [a.to_string()], "conditions": {"ready": true}},
            {"addresses": [b.to_string()], "conditions": {"ready": true}},
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}
