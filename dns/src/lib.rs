//! shoal-dns: the node-local cluster DNS server. Names in the cluster domain
//! are answered from an in-memory [`ClusterView`] that [`watch`] keeps fresh
//! from the API; every other name goes to upstream resolvers with a cache.
//!
//! ```no_run
//! # async fn run(client: kube::Client) -> Result<(), shoal_dns::Error> {
//! let config = shoal_dns::Config::default();
//! let view = shoal_dns::ClusterView::new(&config.domain, config.ttl)?;
//! tokio::spawn(shoal_dns::watch(client, view.clone()));
//! let server = shoal_dns::Server::bind(config, view).await?;
//! let metrics = server.metrics(); // metrics.render() on /metrics
//! server.serve(std::future::pending()).await
//! # }
//! ```
#![forbid(unsafe_code)]

mod config;
mod forward;
mod handler;
mod metrics;
mod server;
mod view;
mod watch;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

pub use config::{
    Config, DEFAULT_CACHE_MAX_TTL, DEFAULT_CACHE_NEGATIVE_MAX_TTL, DEFAULT_CACHE_SIZE,
    DEFAULT_DOMAIN, DEFAULT_LISTEN_V4, DEFAULT_LISTEN_V6, DEFAULT_RESOLV_CONF,
    DEFAULT_TCP_IDLE_TIMEOUT, DEFAULT_TTL, DEFAULT_UDP_PAYLOAD, DEFAULT_UPSTREAM_TIMEOUT,
};
pub use metrics::Metrics;
pub use server::Server;
pub use view::{ClusterView, Kind3 as WatchedKind, Lookup, dashed, reverse_ip, undashed};
pub use watch::watch;

/// What can go wrong configuring or running the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster domain is not a DNS name.
    #[error(
        "cluster domain {domain:?} is not a DNS name ({reason}); use a name like `cluster.local`"
    )]
    Domain {
        /// The configured domain.
        domain: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The resolv.conf with the upstreams could not be read.
    #[error(
        "reading upstream resolvers from {path}: {source}; set the upstreams explicitly instead"
    )]
    ResolvConf {
        /// The file.
        path: String,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// A listen address could not be bound.
    #[error(
        "binding DNS over {protocol} on {addr}: {source}; is the address on this host and the port free?"
    )]
    Bind {
        /// UDP or TCP.
        protocol: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// No listen address was configured.
    #[error("the DNS config lists no listen address; set `listen` to at least one address")]
    NoListen,
    /// An upstream is one of the server's own addresses.
    #[error(
        "upstream {upstream} is one of this server's listen addresses, so forwarding would loop; remove it from `upstreams`"
    )]
    Loop {
        /// The upstream.
        upstream: SocketAddr,
    },
    /// The server stopped on a socket error.
    #[error("the DNS server stopped: {0}")]
    Serve(String),
}
