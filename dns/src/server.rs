//! Sockets: UDP and TCP on every configured address, served by hickory's
//! server with the [`crate::handler`] request handler.

use std::{future::Future, net::SocketAddr, os::fd::AsRawFd, sync::Arc};

use hickory_server::ServerFuture;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};

use crate::{
    Config, Error, forward::Forwarder, handler::Handler, metrics::Metrics, view::ClusterView,
};

/// A DNS server bound to its addresses, not yet serving.
pub struct Server {
    future: ServerFuture<Handler>,
    addrs: Vec<SocketAddr>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds UDP and TCP on every `config.listen` address; answers come from `view`.
    pub async fn bind(config: Config, view: ClusterView) -> Result<Self, Error> {
        if config.listen.is_empty() {
            return Err(Error::NoListen);
        }
        for upstream in &config.upstreams {
            if config.listen.contains(upstream) {
                return Err(Error::Loop {
                    upstream: *upstream,
                });
            }
        }
        let metrics = Arc::new(Metrics::default());
        let handler = Handler {
            forwarder: Forwarder::new(&config, Arc::clone(&metrics)),
            view,
            metrics: Arc::clone(&metrics),
            udp_payload: config.udp_payload,
        };
        let mut future = ServerFuture::new(handler);
        let mut addrs = Vec::new();
        for addr in &config.listen {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    protocol: "TCP",
                    addr: *addr,
                    source,
                })?;
            // Port 0: UDP takes the port TCP was given, so one address serves both.
            let addr = tcp.local_addr().map_err(|source| Error::Bind {
                protocol: "TCP",
                addr: *addr,
                source,
            })?;
            for _ in 0..config.udp_sockets.max(1) {
                future.register_socket(udp_socket(addr)?);
            }
            future.register_listener(tcp, config.tcp_idle_timeout);
            addrs.push(addr);
        }
        Ok(Self {
            future,
            addrs,
            metrics,
        })
    }

    /// The addresses served (UDP and TCP alike), with the ports picked for port 0.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The server's counters; [`Metrics::render`] gives Prometheus text.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Serves until `shutdown` completes, then stops the listeners and open connections.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let token = self.future.shutdown_token().clone();
        tokio::pin!(shutdown);
        tokio::select! {
            done = self.future.block_until_done() => {
                return done.map_err(|e| Error::Serve(e.to_string()));
            }
            () = &mut shutdown => {}
        }
        token.cancel();
        self.future
            .block_until_done()
            .await
            .map_err(|e| Error::Serve(e.to_string()))
    }
}

/// A UDP socket on `addr` with SO_REUSEPORT, so several sockets on one
/// address share the incoming queries (the kernel spreads them by flow).
fn udp_socket(addr: SocketAddr) -> Result<tokio::net::UdpSocket, Error> {
    let bind_err = |source: std::io::Error| Error::Bind {
        protocol: "UDP",
        addr,
        source,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| bind_err(e.into()))?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true).map_err(|e| bind_err(e.into()))?;
    if addr.is_ipv6() {
        // An IPv6 address serves IPv6 only; IPv4 has its own listen address.
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(|e| bind_err(e.into()))?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(|e| bind_err(e.into()))?;
    let std = std::net::UdpSocket::from(fd);
    tokio::net::UdpSocket::from_std(std).map_err(bind_err)
}
