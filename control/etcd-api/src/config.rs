//! Limits and intervals of the etcd API, with etcd 3.4's defaults.

use std::{sync::Arc, time::Duration};

/// Largest request a write may be (etcd's `--max-request-bytes` default,
/// 1.5 MiB); larger ones get "etcdserver: request is too large".
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// What gRPC may receive on top of the largest request (etcd's
/// `grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Most operations in one transaction branch (etcd's `--max-txn-ops`).
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// Shortest lease TTL in seconds; shorter grants are raised to it. etcd
/// derives it from the election timeout: ceil(1.5 × 1 s) = 2 s by default.
pub const DEFAULT_MIN_LEASE_TTL: i64 = 2;
/// Longest lease TTL in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// How often idle watchers that asked for it get a progress notification
/// (etcd's `--experimental-watch-progress-notify-interval` default).
pub const DEFAULT_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// How long a client may take to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection whose TLS handshake failed is read (and what it
/// sends dropped) after the alert went out, so that closing it does not
/// reset the connection and lose the alert before the client read it.
pub const TLS_REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// The etcd version Maintenance.Status reports: the API shoal speaks.
pub const SERVER_VERSION: &str = "3.4.30";

/// Settings of the etcd services.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest write request, in bytes.
    pub max_request_bytes: usize,
    /// Most operations in one transaction branch.
    pub max_txn_ops: usize,
    /// Shortest lease TTL, in seconds.
    pub min_lease_ttl: i64,
    /// Interval of watch progress notifications.
    pub progress_notify_interval: Duration,
    /// TLS on the client listener (etcd's `--cert-file` and friends; its
    /// ALPN should offer `h2`); `None` serves plain HTTP/2.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            min_lease_ttl: DEFAULT_MIN_LEASE_TTL,
            progress_notify_interval: DEFAULT_PROGRESS_NOTIFY_INTERVAL,
            tls: None,
        }
    }
}
