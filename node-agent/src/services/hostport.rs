//! Container `hostPort`s, served by the same eBPF service path as NodePorts
//! (no iptables, no portmap plugin): each `hostPort` of a pod bound to this
//! node becomes a frontend on the node's addresses (or on its `hostIP`
//! only) whose single backend is the pod at its `containerPort`, as
//! Cilium's HostPort service type does. The frontend is external (reachable
//! from outside the node) and local-only (the backend is on this node, so
//! the tc program never SNATs it); the socket programs translate clients on
//! the node and in its pods the same way.
//!
//! Such frontends are owned, in the sync's bookkeeping, by a pseudo
//! Service key whose namespace is [`OWNER_PREFIX`] + the pod's namespace (a
//! namespace is a DNS label: it never contains `:`), so the conflict rules
//! of Services apply: a frontend already held by another pod (or Service)
//! is not taken over, and the pod gets a Warning event naming the port.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;
use shoal_ebpf_common::{SVC_FLAG_ETP_LOCAL, SVC_FLAG_EXTERNAL};

use super::{Frontends, NodeView, ServiceKey, Target};
use crate::dataplane::Protocol;

/// The namespace prefix of the owner keys of hostPort frontends.
pub const OWNER_PREFIX: &str = "hostport:";

/// The owner key of `pod`'s hostPort frontends.
pub fn owner(namespace: &str, name: &str) -> ServiceKey {
    (format!("{OWNER_PREFIX}{namespace}"), name.to_owned())
}

/// The pod `(namespace, name)` an owner key stands for, if it is one.
pub fn pod_of(key: &ServiceKey) -> Option<(&str, &str)> {
    key.0
        .strip_prefix(OWNER_PREFIX)
        .map(|ns| (ns, key.1.as_str()))
}

/// The hostPort frontends `pod` asks for on `node`: none for a hostNetwork
/// pod (it binds the node's ports itself), a pod that has finished
/// (Succeeded / Failed) or one without an address yet.
pub fn frontends(pod: &Pod, node: &NodeView) -> Frontends {
    let mut out = Frontends::new();
    let Some(spec) = &pod.spec else {
        return out;
    };
    if spec.host_network == Some(true) {
        return out;
    }
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return out;
    }
    let pod_ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .chain(
            status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
        )
        .collect();
    let name = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    for port in spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
    {
        let Some(host_port) = port
            .host_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        let Some(container_port) = u16::try_from(port.container_port).ok().filter(|p| *p != 0)
        else {
            continue;
        };
        let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                tracing::warn!(pod = %name, host_port, protocol = other,
                    "hostPort protocol is not served (only TCP and UDP); skipped");
                continue;
            }
        };
        // An empty or unspecified hostIP means every node address.
        let host_ip: Option<IpAddr> = match port.host_ip.as_deref().unwrap_or_default() {
            "" => None,
            ip => match ip.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() => None,
                Ok(ip) => Some(ip),
                Err(_) => {
                    tracing::warn!(pod = %name, host_ip = ip, "hostIP is not an IP address; skipped");
                    continue;
                }
            },
        };
        for address in &node.addresses {
            if host_ip.is_some_and(|h| h != *address) {
                continue;
            }
            let Some(backend) = pod_ips.iter().find(|ip| ip.is_ipv6() == address.is_ipv6()) else {
                continue;
            };
            out.entry(crate::dataplane::Frontend {
                address: *address,
                port: host_port,
                protocol,
            })
            .or_insert(Target {
                backends: vec![SocketAddr::new(*backend, container_port)],
                affinity_timeout: 0,
                flags: SVC_FLAG_EXTERNAL | SVC_FLAG_ETP_LOCAL,
            });
        }
    }
    out
}
