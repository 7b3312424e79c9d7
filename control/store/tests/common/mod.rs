//! What the store's integration tests share: loopback ports and members
//! run on the test's runtime.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use shoal_store::{Store, StoreConfig};
use tokio::{sync::oneshot, task::JoinHandle};

/// How long a member may take to start or stop.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn free_addr() -> Result<SocketAddr> {
    Ok(shoal_e2e::ports::free_loopback_addr()?)
}

/// A member running on the test's runtime; `stop` shuts it down like
/// SIGTERM does.
pub struct Member {
    pub client: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    /// The serving task; `None` once stopped.
    pub task: Option<JoinHandle<Result<(), shoal_store::Error>>>,
}

impl Member {
    pub async fn start(config: StoreConfig) -> Result<Self> {
        let store = Store::start(config).await.context("starting a member")?;
        let client = store.client_addr().context("no client address")?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(store.serve(async {
            let _ = rx.await;
        }));
        Ok(Self {
            client,
            stop: Some(tx),
            task: Some(task),
        })
    }

    pub async fn stop(&mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .context("member did not stop")???;
        }
        Ok(())
    }
}

/// Starts the members concurrently, as they start on separate machines
/// (none can finish alone before the others are up).
pub async fn start_all(configs: Vec<StoreConfig>) -> Result<Vec<Member>> {
    let starts: Vec<_> = configs
        .into_iter()
        .map(|c| tokio::spawn(Member::start(c)))
        .collect();
    let mut members = Vec::new();
    for s in starts {
        members.push(
            tokio::time::timeout(WAIT, s)
                .await
                .context("a member did not start")???,
        );
    }
    Ok(members)
}
