//! Starting a store member: Raft on the peer address, the etcd v3 API on the
//! client address; and `shoal store restore`.

use std::{collections::BTreeMap, future::Future, net::SocketAddr, path::Path, sync::Arc};

use shoal_raft::{Config as RaftConfig, Member, PeerTls, RaftNode};
use tokio::net::TcpListener;

use crate::{
    backend::RaftBackend,
    config::{ConfigError, StoreConfig},
    tls::{ListenerTls, TlsError},
};

/// Why a store member could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS certificate, key or CA was refused.
    #[error(transparent)]
    Tls(#[from] TlsError),

    /// The client address could not be bound.
    #[error("listening for clients on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Raft failed to start or bootstrap.
    #[error(transparent)]
    Raft(#[from] shoal_raft::Error),
    /// The etcd API server failed.
    #[error(transparent)]
    Api(#[from] shoal_etcd_api::Error),
    /// A snapshot file could not be read or is damaged.
    #[error("snapshot {path}: {reason}")]
    Snapshot {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// How long `serve` waits, after stopping, for the API's tasks to let go.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A running store member.
pub struct Store {
    backend: Arc<RaftBackend>,
    listener: Option<TcpListener>,
    config: StoreConfig,
}

impl Store {
    /// Starts Raft (rejoining from the data directory if it holds a
    /// member), bootstraps the initial cluster on first start, and binds the
    /// client address. Call [`Store::serve`] to answer clients.
    pub async fn start(mut config: StoreConfig) -> Result<Self, Error> {
        let cluster = config.cluster();
        let id = match &config.join {
            Some(joined) => joined.id,
            None => cluster.id_of(&config.name)?,
        };
        config.check_peer_urls()?;
        config.api.tls = config
            .client_tls
            .as_ref()
            .map(ListenerTls::rustls_server_config)
            .transpose()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        let client_url = format!(
            "{}://{}",
            config.client_scheme(),
            listener.local_addr().unwrap_or(config.listen)
        );
        let peer_url = match &config.join {
            Some(joined) => joined.peer_url.clone(),
            None => cluster
                .members
                .get(id as usize - 1)
                .map(|(_, url)| url.clone())
                .unwrap_or_else(|| format!("{}://{}", config.peer_scheme(), config.peer_listen)),
        };
        let mut raft_config = RaftConfig::new(
            id,
            config.name.clone(),
            config.data_dir.clone(),
            config.peer_listen,
            peer_url,
            client_url.clone(),
        );
        raft_config.tls = config.peer_tls.as_ref().map(|tls| PeerTls {
            server: tls.peer_server_config(),
            client: tls.peer_client_config(),
        });
        raft_config.faults = config.faults.clone();
        let node = RaftNode::start(raft_config).await?;
        // Every member must bootstrap the very same entry: openraft takes
        // the initial membership of each as the same log entry, so a member
        // that put its own client URL in would keep a membership the others
        // do not have. Each publishes its client URL once it runs; a
        // member alone has it from the start.
        let alone = cluster.members.len() == 1;
        let members: BTreeMap<u64, Member> = cluster
            .members
            .iter()
            .enumerate()
            .map(|(i, (name, url))| {
                (
                    i as u64 + 1,
                    Member {
                        name: name.clone(),
                        peer_url: url.clone(),
                        client_url: if alone {
                            client_url.clone()
                        } else {
                            String::new()
                        },
                    },
                )
            })
            .collect();
        // Every member bootstraps with the same membership; openraft accepts
        // the first and the rest are no-ops (as is a restart). A member
        // added to a running cluster learns the membership from the leader.
        let cluster_id = match &config.join {
            Some(joined) => joined.cluster_id,
            None => {
                node.initialize(members).await?;
                cluster_id(&cluster.members)
            }
        };
        tracing::info!(
            member = id,
            name = %config.name,
            client = %client_url,
            data_dir = %config.data_dir.display(),
            "store member started"
        );
        Ok(Self {
            backend: Arc::new(RaftBackend::new(node, cluster_id)),
            listener: Some(listener),
            config,
        })
    }

    /// The address clients connect to.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The backend (Raft member, keyspace, lessor).
    pub fn backend(&self) -> &Arc<RaftBackend> {
        &self.backend
    }

    /// Serves the etcd v3 API until `shutdown` completes or this member is
    /// removed from its cluster (as a removed etcd member stops), then
    /// stops Raft.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        let mut removed = self.backend.node().removed();
        let stop = async move {
            tokio::select! {
                () = shutdown => {}
                gone = async { removed.wait_for(|r| *r).await.is_err() } => {
                    if gone {
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        let served = shoal_etcd_api::serve(
            self.backend.clone(),
            listener,
            self.config.api.clone(),
            stop,
        )
        .await;
        self.backend.stop().await;
        // Connections and watch streams the API server spawned hold the
        // backend until they notice the shutdown; the keyspace file stays
        // locked until the last of them is gone, so a restart in the same
        // process (or `shoal server` restarting its store) waits for that.
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while Arc::strong_count(&self.backend) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if Arc::strong_count(&self.backend) > 1 {
            tracing::warn!("store still referenced {STOP_WAIT:?} after shutdown");
        }
        Ok(served?)
    }
}

/// A stable cluster id from the initial members' names and peer URLs.
fn cluster_id(members: &[(String, String)]) -> u64 {
    let parts: Vec<&[u8]> = members
        .iter()
        .flat_map(|(name, url)| [name.as_bytes(), b"=", url.as_bytes(), b","])
        .collect();
    shoal_etcd_api::id_from(&parts)
}

/// `shoal store restore`: seeds a new data directory from a snapshot file
/// written by `etcdctl snapshot save`, checking its integrity hash. Start
/// the member on that directory afterwards; it forms a new cluster with the
/// snapshot's keys, revisions and leases.
pub fn restore(snapshot: &Path, data_dir: &Path) -> Result<(), Error> {
    let fail = |reason: String| Error::Snapshot {
        path: snapshot.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(snapshot).map_err(|e| fail(e.to_string()))?;
    let keyspace = shoal_etcd_api::snapshot::decode(&bytes).map_err(|e| fail(e.to_string()))?;
    RaftNode::seed_data_dir(data_dir, keyspace)?;
    Ok(())
}
