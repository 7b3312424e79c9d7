//! The sidecar's settings: every port and default a named constant here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Where the app's outbound connections arrive (captured or pointed here).
pub const OUTBOUND_PORT: u16 = 15001;
/// Where other sidecars' mTLS connections (and, in permissive mode,
/// plaintext clients) arrive.
pub const INBOUND_PORT: u16 = 15006;
/// /metrics and /ready.
pub const ADMIN_PORT: u16 = 15020;
/// The outbound listener's default address.
pub const DEFAULT_OUTBOUND_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), OUTBOUND_PORT);
/// The inbound listener's default address.
pub const DEFAULT_INBOUND_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), INBOUND_PORT);
/// The admin listener's default address.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), ADMIN_PORT);
/// Where Kubernetes mounts a pod's projected service-account token.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// How long the inbound listener waits for a client's first byte before
/// taking the connection for plaintext (a protocol where the server
/// speaks first).
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a TLS handshake (and the transport header after it) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The header the inbound side sets on HTTP/1 requests it received over
/// mTLS: the client's SPIFFE ID. It is removed from every other request,
/// so an app can trust it.
pub const CLIENT_ID_HEADER: &str = "shoal-client-id";
/// The first bytes a sidecar sends inside TLS, followed by the
/// destination port (u16, big endian): the inbound side forwards to that
/// port on localhost.
pub const TRANSPORT_MAGIC: &[u8; 4] = b"SHL1";

/// Whether the inbound listener takes plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// mTLS from meshed clients, plaintext from unmeshed ones (the default).
    Permissive,
    /// mTLS only: plaintext connections are closed and counted.
    Strict,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "permissive" => Ok(Self::Permissive),
            "strict" => Ok(Self::Strict),
            other => Err(format!(
                "mode {other:?} is neither \"permissive\" nor \"strict\""
            )),
        }
    }
}

/// What the listeners need to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// Permissive or strict inbound.
    pub mode: Mode,
    /// The trust domain peers' SPIFFE IDs must be in.
    pub trust_domain: String,
    /// Where the app listens (localhost).
    pub app_host: IpAddr,
    /// The app port a plaintext connection to the inbound listener itself
    /// goes to (one captured on its way to an app port keeps that port).
    pub app_port: Option<u16>,
    /// The inbound listener's port, for telling a captured connection from
    /// one addressed to the listener.
    pub inbound_port: u16,
    /// Ports the inbound side never forwards to (the sidecar's own).
    pub own_ports: Vec<u16>,
    /// See [`DEFAULT_DETECT_TIMEOUT`].
    pub detect_timeout: Duration,
}

impl Config {
    /// Defaults for `trust_domain`.
    pub fn new(trust_domain: &str) -> Self {
        Self {
            mode: Mode::Permissive,
            trust_domain: trust_domain.to_owned(),
            app_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            app_port: None,
            inbound_port: INBOUND_PORT,
            own_ports: vec![OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT],
            detect_timeout: DEFAULT_DETECT_TIMEOUT,
        }
    }
}
