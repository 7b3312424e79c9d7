//! A thousand watchers cost the store one watch per resource, and every
//! one of them sees every event.

use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use super::ControlPlane;

const WATCHERS: usize = 1000;

/// The store watches the API holds, from its Prometheus metrics.
async fn store_watches(cp: &ControlPlane) -> Result<u64> {
    let metrics = cp.ok(&["get", "--raw", "/metrics"], None).await?;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_apiserver_store_watches "))
        .and_then(|v| v.trim().parse().ok())
        .context("no shoal_apiserver_store_watches in /metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watchers_share_one_store_watch_per_resource() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let resources = shoal_api_resources();
    let before = store_watches(&cp).await?;
    ensure!(
        before == resources,
        "{before} store watches for {resources} resources"
    );

    let pki = cp.dir().join("pki");
    let ca = shoal_ca::ClusterCa::load(&pki)?;
    let client = ca.issue_client("watcher", &["system:masters"])?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(shoal_ca::client_config(
        ca.cert_pem(),
        Some(&client),
    )?));
    let mut streams = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        let tcp = TcpStream::connect(cp.addr).await?;
        let mut s = tls
            .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
            .await?;
        s.write_all(b"GET /api/v1/namespaces/default/configmaps?watch=1&resourceVersion=0 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        streams.push(BufReader::new(s));
    }
    for s in &mut streams {
        let mut status = String::new();
        s.read_line(&mut status).await?;
        ensure!(
            status.starts_with("HTTP/1.1 200"),
            "a watch was refused: {status:?}"
        );
    }
    let during = store_watches(&cp).await?;
    ensure!(
        during == resources,
        "with {WATCHERS} API watchers the store has {during} watches, not {resources}"
    );

    cp.ok(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fanout}\ndata: {a: b}\n"),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    for (i, s) in streams.iter_mut().enumerate() {
        let mut line = String::new();
        loop {
            line.clear();
            let n = tokio::time::timeout_at(deadline, s.read_line(&mut line))
                .await
                .with_context(|| format!("watcher {i} saw no event"))??;
            if n == 0 {
                bail!("watcher {i}'s stream ended");
            }
            if line.contains("\"type\":\"ADDED\"") && line.contains("\"name\":\"fanout\"") {
                break;
            }
        }
    }
    drop(streams);
    cp.stop().await
}

/// Resources with their own storage (one store watch each).
fn shoal_api_resources() -> u64 {
    let mut prefixes: Vec<String> = shoal_api::KINDS
        .iter()
        .map(|k| k.storage_prefix())
        .collect();
    prefixes.sort();
    prefixes.dedup();
    prefixes.len() as u64
}
