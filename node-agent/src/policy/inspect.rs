//! `shoal dataplane policy` and `shoal dataplane identities`: the pinned
//! policy maps as tables, like `cilium bpf policy get` and `cilium bpf
//! ipcache list`. Reads only.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use shoal_ebpf_common::policy::{
    ENDPOINT_ENFORCE_EGRESS, ENDPOINT_ENFORCE_INGRESS, IPCACHE_FLAG_LOCAL_ENDPOINT, POLICY_INGRESS,
    POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL,
};

use super::compile::{Desired, protocol_name, reserved_name};

/// One `POLICY_V1` entry, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRow {
    /// Ifindex of the endpoint's host-side veth.
    pub endpoint: u32,
    /// The endpoint's own identity.
    pub endpoint_identity: u32,
    /// `Ingress` or `Egress`.
    pub direction: &'static str,
    /// The remote identity (0 = any).
    pub identity: u32,
    /// `ANY`, `TCP`, `UDP`...
    pub protocol: String,
    /// `ANY`, `80`, `32000-32767`.
    pub ports: String,
}

/// The identity as a listing shows it: number and reserved name.
fn identity_text(identity: u32) -> String {
    match reserved_name(identity) {
        Some("any") => "ANY".to_string(),
        Some(name) => format!("{name}({identity})"),
        None => identity.to_string(),
    }
}

/// Every policy entry of `maps`, endpoint by endpoint, with the endpoints
/// that enforce a direction but allow nothing in it shown as a `DENY` row.
pub fn policy_rows(maps: &Desired) -> Vec<PolicyRow> {
    let mut out = Vec::new();
    for (prefix, key) in &maps.policy {
        let (protocol, ports) = match *prefix {
            POLICY_PREFIX_ANY_PROTO => ("ANY".to_string(), "ANY".to_string()),
            POLICY_PREFIX_ANY_PORT => (protocol_name(key.protocol), "ANY".to_string()),
            p => {
                let first = u16::from_be(key.dport);
                let bits = POLICY_PREFIX_FULL.saturating_sub(p).min(16);
                let last = u32::from(first) + (1u32 << bits) - 1;
                let ports = if bits == 0 {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                };
                (protocol_name(key.protocol), ports)
            }
        };
        out.push(PolicyRow {
            endpoint: key.endpoint,
            endpoint_identity: maps.endpoints.get(&key.endpoint).map_or(0, |e| e.identity),
            direction: if key.direction == POLICY_INGRESS {
                "Ingress"
            } else {
                "Egress"
            },
            identity: key.identity,
            protocol,
            ports,
        });
    }
    out
}

/// One line of the policy table, columns padded.
fn policy_line(out: &mut String, cells: [&str; 7]) {
    let [endpoint, identity, direction, verdict, remote, proto, ports] = cells;
    let _ = writeln!(
        out,
        "{endpoint:<9} {identity:<9} {direction:<9} {verdict:<8} {remote:<26} {proto:<6} {ports}"
    );
}

/// `shoal dataplane policy`: per endpoint, which directions are enforced,
/// then every allow entry.
pub fn format_policy(maps: &Desired) -> String {
    let rows = policy_rows(maps);
    let mut out = String::new();
    policy_line(
        &mut out,
        [
            "ENDPOINT",
            "IDENTITY",
            "DIRECTION",
            "VERDICT",
            "REMOTE",
            "PROTO",
            "PORT(S)",
        ],
    );
    for (endpoint, info) in &maps.endpoints {
        let endpoint_text = endpoint.to_string();
        let identity = info.identity.to_string();
        for (flag, direction) in [
            (ENDPOINT_ENFORCE_INGRESS, "Ingress"),
            (ENDPOINT_ENFORCE_EGRESS, "Egress"),
        ] {
            let (e, i) = (endpoint_text.as_str(), identity.as_str());
            if info.flags & flag == 0 {
                let cells = [e, i, direction, "ALLOW", "ANY(no-policy)", "ANY", "ANY"];
                policy_line(&mut out, cells);
                continue;
            }
            for r in rows
                .iter()
                .filter(|r| r.endpoint == *endpoint && r.direction == direction)
            {
                let remote = identity_text(r.identity);
                let cells = [e, i, direction, "ALLOW", &remote, &r.protocol, &r.ports];
                policy_line(&mut out, cells);
            }
            let cells = [e, i, direction, "DENY", "ANY(default-deny)", "ANY", "ANY"];
            policy_line(&mut out, cells);
        }
    }
    out
}

/// One ipcache entry: (prefix as text, identity, flags).
pub fn identity_rows(maps: &Desired) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for ((prefix, key), value) in &maps.ipcache4 {
        out.push((
            format!("{}/{prefix}", Ipv4Addr::from(key.addr)),
            value.identity,
            value.flags,
        ));
    }
    for ((prefix, key), value) in &maps.ipcache6 {
        out.push((
            format!("{}/{prefix}", Ipv6Addr::from(key.addr)),
            value.identity,
            value.flags,
        ));
    }
    out
}

/// `shoal dataplane identities`: the ipcache, address → identity.
pub fn format_identities(maps: &Desired) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<44} {:<32} FLAGS", "PREFIX", "IDENTITY");
    for (prefix, identity, flags) in identity_rows(maps) {
        let flags = if flags & IPCACHE_FLAG_LOCAL_ENDPOINT != 0 {
            "local-endpoint"
        } else {
            "-"
        };
        let _ = writeln!(out, "{prefix:<44} {:<32} {flags}", identity_text(identity));
    }
    out
}
