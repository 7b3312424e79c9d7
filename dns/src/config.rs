//! The server's configuration: every default is a named constant here.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use crate::Error;

/// The cluster domain Kubernetes uses unless told otherwise.
pub const DEFAULT_DOMAIN: &str = "cluster.local";
/// The node-local IPv4 address the agent binds inside each node (DESIGN.md, ports).
pub const DEFAULT_LISTEN_V4: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(169, 254, 20, 10)), 53);
/// The node-local IPv6 address the agent binds inside each node.
pub const DEFAULT_LISTEN_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0xa, 0x10)),
    53,
);
/// TTL of cluster records and of negative answers (kube-dns and CoreDNS use 5 s too).
pub const DEFAULT_TTL: u32 = 5;
/// Where upstream resolvers come from by default.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";
/// The EDNS UDP payload this server offers (the DNS Flag Day 2020 value).
pub const DEFAULT_UDP_PAYLOAD: u16 = 1232;
/// How long a TCP connection may stay idle before the server closes it.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one upstream attempt may take.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How many forwarded answers the cache keeps.
pub const DEFAULT_CACHE_SIZE: usize = 10_000;
/// The longest a forwarded answer is cached, whatever its TTL says.
pub const DEFAULT_CACHE_MAX_TTL: Duration = Duration::from_secs(300);
/// The longest a forwarded negative answer (NXDOMAIN, NODATA) is cached.
pub const DEFAULT_CACHE_NEGATIVE_MAX_TTL: Duration = Duration::from_secs(30);

/// Configuration of one DNS server.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cluster domain answered from the cluster view (`cluster.local`).
    pub domain: String,
    /// Addresses to serve on, each over UDP and TCP; port 0 picks one port for both.
    pub listen: Vec<SocketAddr>,
    /// TTL of cluster answers and of the SOA in negative answers, in seconds.
    pub ttl: u32,
    /// Resolvers for every name outside the cluster domain; empty refuses them.
    pub upstreams: Vec<SocketAddr>,
    /// The largest UDP answer offered to EDNS clients (clients without EDNS get 512 bytes).
    pub udp_payload: u16,
    /// Idle TCP connections are closed after this.
    pub tcp_idle_timeout: Duration,
    /// Timeout of one upstream attempt.
    pub upstream_timeout: Duration,
    /// Entries in the forwarding cache.
    pub cache_size: usize,
    /// Cap on the TTL of cached upstream answers.
    pub cache_max_ttl: Duration,
    /// Cap on the TTL of cached upstream negative answers.
    pub cache_negative_max_ttl: Duration,
    /// UDP sockets per listen address (SO_REUSEPORT), so receiving spreads over cores.
    pub udp_sockets: usize,
}

impl Default for Config {
    /// The node-local defaults; upstreams are empty until set (see [`Config::upstreams_from_resolv_conf`]).
    fn default() -> Self {
        Self {
            domain: DEFAULT_DOMAIN.to_owned(),
            listen: vec![DEFAULT_LISTEN_V4, DEFAULT_LISTEN_V6],
            ttl: DEFAULT_TTL,
            upstreams: Vec::new(),
            udp_payload: DEFAULT_UDP_PAYLOAD,
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            cache_size: DEFAULT_CACHE_SIZE,
            cache_max_ttl: DEFAULT_CACHE_MAX_TTL,
            cache_negative_max_ttl: DEFAULT_CACHE_NEGATIVE_MAX_TTL,
            udp_sockets: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl Config {
    /// The `nameserver` lines of a resolv.conf file, on port 53.
    pub fn upstreams_from_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ResolvConf {
            path: path.display().to_string(),
            source,
        })?;
        Ok(parse_resolv_conf(&text))
    }
}

/// Nameservers of a resolv.conf text; lines that do not parse are skipped,
/// as the C library does.
pub(crate) fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            // A link-local IPv6 nameserver may carry a zone (`fe80::1%eth0`), which
            // SocketAddr cannot hold: skip it rather than send to the wrong link.
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}
