//! Counters the admin listener serves on /metrics, Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Which listener a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Direction {
    /// The app's own connections, leaving the pod.
    Outbound,
    /// Connections to the app.
    Inbound,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

/// The sidecar's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (direction, tls) → connections proxied.
    connections: Mutex<BTreeMap<(Direction, bool), u64>>,
    /// direction → TLS handshakes that failed.
    handshake_failures: Mutex<BTreeMap<Direction, u64>>,
    /// reason → inbound connections refused.
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// client SPIFFE ID → inbound mTLS connections.
    clients: Mutex<BTreeMap<String, u64>>,
    renewals_ok: AtomicU64,
    renewals_failed: AtomicU64,
    cert_expiry: AtomicI64,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    if let Ok(mut map) = map.lock() {
        *map.entry(key).or_default() += 1;
    }
}

impl Metrics {
    pub(crate) fn connection(&self, direction: Direction, tls: bool) {
        bump(&self.connections, (direction, tls));
    }

    pub(crate) fn handshake_failed(&self, direction: Direction) {
        bump(&self.handshake_failures, direction);
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        bump(&self.refused, reason);
    }

    pub(crate) fn client(&self, id: &str) {
        bump(&self.clients, id.to_owned());
    }

    pub(crate) fn renewal(&self, ok: bool, expiry_unix: Option<i64>) {
        if ok {
            self.renewals_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.renewals_failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(expiry) = expiry_unix {
            self.cert_expiry.store(expiry, Ordering::Relaxed);
        }
    }

    /// Connections proxied through `direction` ("inbound"/"outbound") with
    /// or without TLS.
    pub fn connections(&self, direction: &str, tls: bool) -> u64 {
        self.connections.lock().map_or(0, |m| {
            m.iter()
                .filter(|((d, t), _)| d.label() == direction && *t == tls)
                .map(|(_, n)| *n)
                .sum()
        })
    }

    /// Handshakes failed on `direction`.
    pub fn handshake_failures(&self, direction: &str) -> u64 {
        self.handshake_failures.lock().map_or(0, |m| {
            m.iter()
                .filter(|(d, _)| d.label() == direction)
                .map(|(_, n)| *n)
                .sum()
        })
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP shoal_sidecar_connections_total Connections proxied, by listener and whether they were mutual TLS.\n");
        out.push_str("# TYPE shoal_sidecar_connections_total counter\n");
        if let Ok(m) = self.connections.lock() {
            for ((d, tls), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "shoal_sidecar_connections_total{{direction=\"{}\",tls=\"{tls}\"}} {n}",
                    d.label()
                );
            }
        }
        out.push_str("# HELP shoal_sidecar_tls_handshake_failures_total TLS handshakes that failed (bad certificate, wrong identity, timeout).\n");
        out.push_str("# TYPE shoal_sidecar_tls_handshake_failures_total counter\n");
        if let Ok(m) = self.handshake_failures.lock() {
            for (d, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "shoal_sidecar_tls_handshake_failures_total{{direction=\"{}\"}} {n}",
                    d.label()
                );
            }
        }
        out.push_str(
            "# HELP shoal_sidecar_inbound_refused_total Inbound connections refused, by reason.\n",
        );
        out.push_str("# TYPE shoal_sidecar_inbound_refused_total counter\n");
        if let Ok(m) = self.refused.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "shoal_sidecar_inbound_refused_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP shoal_sidecar_inbound_client_connections_total Inbound mutual-TLS connections by the client's SPIFFE ID.\n");
        out.push_str("# TYPE shoal_sidecar_inbound_client_connections_total counter\n");
        if let Ok(m) = self.clients.lock() {
            for (id, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "shoal_sidecar_inbound_client_connections_total{{client_id=\"{id}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP shoal_sidecar_cert_renewals_total Workload certificate requests to the mesh CA, by result.\n");
        out.push_str("# TYPE shoal_sidecar_cert_renewals_total counter\n");
        let _ = writeln!(
            out,
            "shoal_sidecar_cert_renewals_total{{result=\"ok\"}} {}",
            self.renewals_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "shoal_sidecar_cert_renewals_total{{result=\"error\"}} {}",
            self.renewals_failed.load(Ordering::Relaxed)
        );
        out.push_str("# HELP shoal_sidecar_cert_expiry_timestamp_seconds When the current workload certificate expires.\n");
        out.push_str("# TYPE shoal_sidecar_cert_expiry_timestamp_seconds gauge\n");
        let _ = writeln!(
            out,
            "shoal_sidecar_cert_expiry_timestamp_seconds {}",
            self.cert_expiry.load(Ordering::Relaxed)
        );
        out
    }
}
