//! What one Service and its EndpointSlices mean for the maps: its frontends
//! (ClusterIPs, NodePorts on this node's addresses, externalIPs and
//! load-balancer ingress IPs), each with the backends a client of that
//! frontend may reach, chosen as kube-proxy chooses them.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort},
    discovery::v1::EndpointSlice,
};

use shoal_ebpf_common::{SVC_FLAG_ETP_LOCAL, SVC_FLAG_EXTERNAL};

use crate::dataplane::{Frontend, Protocol};

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Kubernetes' default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// What one frontend is programmed with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// The backends, sorted; empty makes connects fail with ECONNREFUSED.
    pub backends: Vec<SocketAddr>,
    /// ClientIP session-affinity timeout in seconds, 0 = none.
    pub affinity_timeout: u32,
    /// `SVC_FLAG_*`: whether traffic from outside the node may use the
    /// frontend (NodePorts, externalIPs, LoadBalancer IPs; never ClusterIPs)
    /// and whether it keeps to this node's backends (externalTrafficPolicy
    /// Local).
    pub flags: u8,
}

/// Every frontend of one Service.
pub type Frontends = BTreeMap<Frontend, Target>;

/// The node the frontends are computed for.
#[derive(Clone, Debug, Default)]
pub struct NodeView {
    /// The Node's name (`internalTrafficPolicy: Local` keeps endpoints
    /// whose `nodeName` is this).
    pub name: String,
    /// The node's own addresses: each NodePort becomes a frontend on each.
    pub addresses: Vec<IpAddr>,
    /// The node-local DNS server's addresses: the cluster DNS Service
    /// ([`CLUSTER_DNS_SERVICE`]) goes to these, on the client's own node,
    /// instead of to endpoints. Empty: it is treated like any Service.
    pub local_dns: Vec<IpAddr>,
}

/// The cluster DNS Service, `(namespace, name)`.
pub const CLUSTER_DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// The frontends of `service` with backends from `slices` (those labelled
/// with its name, any address type). ExternalName Services have none;
/// headless ones only their NodePorts/external addresses, if any.
pub fn frontends<'a>(
    service: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice> + Clone,
    node: &NodeView,
) -> Frontends {
    let mut out = Frontends::new();
    let Some(spec) = &service.spec else {
        return out;
    };
    let name = service_name(service);
    if spec.type_.as_deref() == Some("ExternalName") {
        return out;
    }
    let cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default()
        .iter()
        .filter(|ip| !ip.is_empty() && ip.as_str() != "None")
        .filter_map(|ip| parse_ip(&name, "spec.clusterIPs", ip))
        .collect();
    let external: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| parse_ip(&name, "spec.externalIPs", ip))
        .chain(
            service
                .status
                .iter()
                .filter_map(|s| s.load_balancer.as_ref())
                .flat_map(|lb| lb.ingress.iter().flatten())
                // ipMode Proxy: the load balancer proxies to the nodes and
                // the IP must not short-circuit to the backends.
                .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|i| i.ip.as_deref())
                .filter_map(|ip| parse_ip(&name, "status.loadBalancer.ingress[].ip", ip)),
        )
        .collect();
    let local_only = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_flags = SVC_FLAG_EXTERNAL
        | if spec.external_traffic_policy.as_deref() == Some("Local") {
            SVC_FLAG_ETP_LOCAL
        } else {
            0
        };
    let affinity_timeout = if spec.session_affinity.as_deref() == Some("ClientIP") {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
    } else {
        0
    };

    for port in spec.ports.iter().flatten() {
        let Some(protocol) = protocol_of(&name, port) else {
            continue;
        };
        let Ok(service_port) = u16::try_from(port.port) else {
            tracing::warn!(service = %name, port = port.port, "service port out of range; skipped");
            continue;
        };
        let mut add = |address: IpAddr, port_number: u16, local: bool, flags: u8| {
            let frontend = Frontend {
                address,
                port: port_number,
                protocol,
            };
            let backends = backends(
                slices.clone(),
                address.is_ipv6(),
                port,
                protocol,
                local.then_some(node.name.as_str()),
            );
            out.entry(frontend).or_insert(Target {
                backends,
                affinity_timeout,
                flags,
            });
        };
        for ip in &cluster_ips {
            add(*ip, service_port, local_only, 0);
        }
        // From inside the cluster, NodePorts and external addresses behave
        // as with externalTrafficPolicy Cluster (kube-proxy short-circuits
        // in-cluster clients the same way): every endpoint is eligible.
        for ip in &external {
            add(*ip, service_port, false, external_flags);
        }
        if let Some(node_port) = port
            .node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        {
            for ip in &node.addresses {
                add(*ip, node_port, false, external_flags);
            }
        }
    }
    let is_cluster_dns = service.metadata.namespace.as_deref() == Some(CLUSTER_DNS_SERVICE.0)
        && service.metadata.name.as_deref() == Some(CLUSTER_DNS_SERVICE.1);
    if is_cluster_dns && !node.local_dns.is_empty() {
        // Every DNS query stays on the client's node: the agent's own
        // server answers on the same port number as the Service.
        for (frontend, target) in out.iter_mut() {
            target.backends = node
                .local_dns
                .iter()
                .filter(|ip| ip.is_ipv6() == frontend.address.is_ipv6())
                .map(|ip| SocketAddr::new(*ip, frontend.port))
                .collect();
        }
    }
    out
}

/// The LoadBalancer ingress IPs this node answers ARP / NDP for on the
/// fabric: all of them when it is the Service's announcer, none otherwise.
///
/// No election: every agent computes the same answer from the same
/// EndpointSlices. The announcer is, among the nodes hosting a ready
/// endpoint of the Service (any port, any family), the one whose name
/// sorts first. Such a node can serve under both externalTrafficPolicies
/// (Local needs a local endpoint; Cluster any), and a node that loses its
/// last ready endpoint hands the addresses to the next name. A Service
/// without ready endpoints is announced by no one: it could not answer.
/// `ipMode: Proxy` addresses belong to an outside load balancer and are
/// never announced.
pub fn announced<'a>(
    service: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &NodeView,
) -> Vec<IpAddr> {
    let is_lb = service
        .spec
        .as_ref()
        .is_some_and(|s| s.type_.as_deref() == Some("LoadBalancer"));
    if !is_lb || announcer(slices) != Some(node.name.as_str()) {
        return Vec::new();
    }
    let name = service_name(service);
    let mut ips: Vec<IpAddr> = service
        .status
        .iter()
        .filter_map(|s| s.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_deref())
        .filter_map(|ip| parse_ip(&name, "status.loadBalancer.ingress[].ip", ip))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The first node name, in byte order, among those hosting a ready
/// endpoint in `slices`.
pub fn announcer<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Option<&'a str> {
    slices
        .into_iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.node_name.as_deref())
        .filter(|n| !n.is_empty())
        .min()
}

/// `namespace/name` of a Service, for logs.
pub fn service_name(service: &Service) -> String {
    format!(
        "{}/{}",
        service.metadata.namespace.as_deref().unwrap_or_default(),
        service.metadata.name.as_deref().unwrap_or_default()
    )
}

fn parse_ip(service: &str, field: &str, ip: &str) -> Option<IpAddr> {
    match ip.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            tracing::warn!(%service, field, value = ip, "not an IP address; skipped");
            None
        }
    }
}

fn protocol_of(service: &str, port: &ServicePort) -> Option<Protocol> {
    match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        other => {
            // SCTP has no socket-level load balancing here yet.
            tracing::warn!(
                %service,
                port = port.port,
                protocol = other,
                "service port protocol is not load-balanced (only TCP and UDP); skipped"
            );
            None
        }
    }
}

/// The backends of one service port in one family: ready endpoints, or,
/// when none is ready, those still serving while they terminate
/// (Kubernetes' terminating-endpoint fallback). `local_node` keeps only
/// endpoints on that node (internalTrafficPolicy Local).
fn backends<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ipv6: bool,
    port: &ServicePort,
    protocol: Protocol,
    local_node: Option<&str>,
) -> Vec<SocketAddr> {
    let wanted_type = if ipv6 { "IPv6" } else { "IPv4" };
    let port_name = port.name.as_deref().unwrap_or_default();
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices {
        if slice.address_type != wanted_type {
            continue;
        }
        let Some(target_port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or_default() == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol_name(protocol)
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            if local_node.is_some_and(|n| endpoint.node_name.as_deref() != Some(n)) {
                continue;
            }
            // kube-proxy uses an endpoint's first address; the others are
            // fungible by definition.
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .filter(|ip| ip.is_ipv6() == ipv6)
            else {
                continue;
            };
            let conditions = endpoint.conditions.as_ref();
            // Unset `ready` means ready; unset `serving` follows `ready`.
            let is_ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let addr = SocketAddr::new(ip, target_port);
            if is_ready {
                ready.push(addr);
            } else if serving && is_terminating {
                terminating.push(addr);
            }
        }
    }
    let mut chosen = if ready.is_empty() { terminating } else { ready };
    chosen.sort();
    chosen.dedup();
    chosen
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}
