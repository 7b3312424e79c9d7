//! The agent's client-side load balancer for the API, as k3s's agent runs
//! one: a TCP listener on loopback that hands each connection to one of
//! the control-plane servers (`shoal agent --server URL1,URL2,URL3`), the
//! one that last answered first. Every client in the agent (kube-rs
//! watches, the Node Lease) talks to `https://127.0.0.1:<port>`; TLS goes
//! through untouched, and every apiserver's serving certificate names
//! 127.0.0.1. When the server in use stops answering, its connections are
//! closed, so the clients reconnect and reach another server.

#[cfg(test)]
mod tests;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// How long a connection to a server may take before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the server in use is checked; one that does not accept a
/// connection has its connections closed and the next one takes over.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    /// A server URL is not `https://HOST:PORT`.
    #[error("--server {url:?} is not an API URL such as https://10.0.0.1:6443: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No server was given.
    #[error("the API load balancer needs at least one --server URL")]
    NoServers,
    /// The loopback listener could not be bound.
    #[error("binding the API load balancer on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// One control-plane server.
struct Server {
    /// `HOST:PORT`, as dialled.
    authority: String,
    /// Bumped when the server stopped answering: its connections close.
    down: watch::Sender<u64>,
}

/// The servers and which one is in use.
struct Pool {
    servers: Vec<Server>,
    /// The index of the server that last accepted a connection.
    current: AtomicUsize,
}

impl Pool {
    /// The servers in the order to try them: the one in use, then the
    /// ones after it.
    fn order(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.servers.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        (0..n).map(move |i| (first + i) % n)
    }

    /// Connects to the first server that accepts, making it the one in use.
    async fn connect(&self) -> Option<(usize, TcpStream)> {
        for i in self.order() {
            let server = &self.servers[i];
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&server.authority)).await
            {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let previous = self.current.swap(i, Ordering::Relaxed);
                    if previous != i {
                        tracing::info!(
                            from = %self.servers[previous % self.servers.len()].authority,
                            to = %server.authority,
                            "the agent's API connections fail over to another server"
                        );
                    }
                    return Some((i, stream));
                }
                Ok(Err(e)) => {
                    tracing::debug!(server = %server.authority, error = %e, "API server refused");
                }
                Err(_) => {
                    tracing::debug!(server = %server.authority, "API server did not answer in time");
                }
            }
        }
        None
    }
}

/// A running balancer; dropping it stops it.
pub struct ApiBalancer {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ApiBalancer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// `HOST:PORT` of an `https://HOST:PORT` URL (port 443 when left out).
pub fn authority_of(url: &str) -> Result<String, BalancerError> {
    let bad = |reason: &str| BalancerError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("the API speaks https://"));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(443)))
}

impl ApiBalancer {
    /// Listens on `127.0.0.1` (a free port) and balances over `servers`
    /// (`https://HOST:PORT` URLs), preferring the first.
    pub async fn start(servers: &[String]) -> Result<Self, BalancerError> {
        if servers.is_empty() {
            return Err(BalancerError::NoServers);
        }
        let servers = servers
            .iter()
            .map(|url| {
                Ok(Server {
                    authority: authority_of(url)?,
                    down: watch::channel(0).0,
                })
            })
            .collect::<Result<Vec<_>, BalancerError>>()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BalancerError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| BalancerError::Bind { addr, source })?;
        let pool = Arc::new(Pool {
            servers,
            current: AtomicUsize::new(0),
        });
        tracing::info!(
            %addr,
            servers = ?pool.servers.iter().map(|s| s.authority.as_str()).collect::<Vec<_>>(),
            "API load balancer started"
        );
        let tasks = vec![
            tokio::spawn(accept(listener, pool.clone())),
            tokio::spawn(check(pool)),
        ];
        Ok(Self { addr, tasks })
    }

    /// The URL the agent's clients use: `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn accept(listener: TcpListener, pool: Arc<Pool>) {
    loop {
        let (mut client, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "API load balancer: accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let pool = pool.clone();
        tokio::spawn(async move {
            let Some((i, mut server)) = pool.connect().await else {
                tracing::warn!("no API server accepts a connection; the client retries");
                return;
            };
            let mut down = pool.servers[i].down.subscribe();
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = down.changed() => {
                    tracing::debug!(server = %pool.servers[i].authority, "closing a connection to a server that stopped answering");
                }
            }
        });
    }
}

/// Checks the server in use; when it does not accept a connection, closes
/// its connections (a dead host would leave them hanging until TCP gives
/// up) and moves on to the next that does.
async fn check(pool: Arc<Pool>) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = pool.servers.len();
        let i = pool.current.load(Ordering::Relaxed) % n;
        let server = &pool.servers[i];
        let up = matches!(
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&server.authority)).await,
            Ok(Ok(_))
        );
        if up {
            continue;
        }
        tracing::warn!(server = %server.authority, "API server stopped answering; failing over");
        server.down.send_modify(|g| *g += 1);
        // Makes the next one in use if it answers (connect moves on).
        pool.current.store((i + 1) % n, Ordering::Relaxed);
        if let Some((_, stream)) = pool.connect().await {
            drop(stream);
        }
    }
}
