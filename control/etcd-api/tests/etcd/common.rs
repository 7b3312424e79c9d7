//! A store served on 127.0.0.1:0 for one test.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use etcd_client::Client;
use shoal_etcd_api::{Config, LocalBackend, LocalConfig, serve};
use shoal_mvcc::Mvcc;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::Code;

/// Bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running server; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub backend: Arc<LocalBackend>,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// A server with etcd's defaults on a file-backed keyspace.
    pub async fn start() -> Result<Self> {
        Self::start_with(Config::default(), false).await
    }

    /// A server with `config`; `in_memory` keeps the keyspace in memory
    /// (no fsync), for tests that write thousands of revisions.
    pub async fn start_with(config: Config, in_memory: bool) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mvcc = if in_memory {
            Mvcc::open_with_backend(redb::backends::InMemoryBackend::new())?
        } else {
            Mvcc::open(&dir.path().join("keyspace.redb"))?
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let backend = Arc::new(LocalBackend::start(
            Arc::new(mvcc),
            LocalConfig {
                name: "shoal-test".to_owned(),
                client_urls: vec![format!("http://{addr}")],
                peer_urls: vec!["http://127.0.0.1:2380".to_owned()],
            },
        )?);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let backend = backend.clone();
            async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Err(e) = serve(backend, listener, config, shutdown).await {
                    panic!("server failed: {e}");
                }
            }
        });
        Ok(Self {
            addr,
            backend,
            dir,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected etcd-client.
    pub async fn client(&self) -> Result<Client> {
        within(Client::connect([self.endpoint()], None))
            .await?
            .context("connect etcd-client")
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within(task).await??;
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Runs `f` with the [`WAIT`] bound.
pub async fn within<F: Future>(f: F) -> Result<F::Output> {
    tokio::time::timeout(WAIT, f).await.context("timed out")
}

/// The gRPC code and message of a failed etcd-client call.
pub fn grpc_error<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>) -> (Code, String) {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => (s.code(), s.message().to_owned()),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}
