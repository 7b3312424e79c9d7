//! The NetworkPolicy compiler: pure functions from policies, pods,
//! namespaces and identities to what each local endpoint allows, and from
//! that to the exact entries of the policy, endpoint and ipcache maps.
//!
//! Kubernetes' semantics: a pod no policy selects for a direction allows
//! everything that way; once one does, only what the union of the
//! selecting policies' rules allows passes. Peers become identities: a
//! `podSelector` matches the pod labels of identities in the policy's
//! namespace, a `namespaceSelector` the namespace labels every identity
//! carries (both together: both must match), an `ipBlock` the node-local
//! CIDR identities inside its CIDR and outside its `except`s. Like Cilium,
//! an ipBlock therefore matches addresses the cluster does not own: a pod
//! IP inside the CIDR carries its pod's identity, not the CIDR's. The node
//! itself may always reach its pods (Kubernetes: probes), so enforced
//! ingress always allows `host`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use shoal_api::identity::{self as id, Labels};
use shoal_ebpf_common::policy::{
    ENDPOINT_ENFORCE_EGRESS, ENDPOINT_ENFORCE_INGRESS, EndpointInfo, IDENTITY_ANY, IDENTITY_HOST,
    IDENTITY_REMOTE_NODE, IDENTITY_WORLD_IPV4, IDENTITY_WORLD_IPV6, IPCACHE_FLAG_LOCAL_ENDPOINT,
    Ipcache4Key, Ipcache6Key, IpcacheValue, POLICY_EGRESS, POLICY_INGRESS, POLICY_PREFIX_ANY_PORT,
    POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL, PolicyKey,
};

/// IANA protocol numbers NetworkPolicy names.
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

/// A container port a pod declares (named ports resolve against these).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NamedPort {
    /// `ports[].name`.
    pub name: String,
    /// IANA protocol.
    pub protocol: u8,
    /// `containerPort`.
    pub port: u16,
}

/// A pod as policy sees it, local or remote.
#[derive(Clone, Debug, Default)]
pub struct PodView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The pod's own labels (a policy's `podSelector` is matched on these
    /// for local pods).
    pub labels: Labels,
    /// Its identity, once allocated.
    pub identity: Option<u32>,
    /// Its IPs (`status.podIPs`).
    pub ips: Vec<IpAddr>,
    /// Declared container ports.
    pub ports: Vec<NamedPort>,
    /// Whether it runs on this node.
    pub local: bool,
}

/// A pod on this node with a dataplane endpoint.
#[derive(Clone, Debug)]
pub struct LocalEndpoint {
    /// Ifindex of the pod's host-side veth.
    pub endpoint: u32,
    /// The pod.
    pub pod: PodView,
}

/// What the compiler works from.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Every NetworkPolicy.
    pub policies: Vec<NetworkPolicy>,
    /// Every identity by number (cluster-wide ones and the reserved
    /// kube-dns one) with its label set.
    pub identities: BTreeMap<u32, Labels>,
    /// Every pod of the cluster (named egress ports, ipcache).
    pub pods: Vec<PodView>,
    /// This node's pods with endpoints.
    pub endpoints: Vec<LocalEndpoint>,
    /// Node-local identity of each ipBlock / except CIDR
    /// ([`CidrIdentities`]).
    pub cidr_identities: BTreeMap<IpNet, u32>,
    /// This node's addresses (`host`).
    pub node_ips: Vec<IpAddr>,
    /// The other nodes' addresses (`remote-node`).
    pub remote_node_ips: Vec<IpAddr>,
    /// Addresses of the node-local DNS server (the reserved kube-dns
    /// identity).
    pub local_dns: Vec<IpAddr>,
}

/// The ports an allow entry covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ports {
    /// Every protocol and port.
    Any,
    /// Every port of one protocol.
    Protocol(u8),
    /// `first..=last` of one protocol.
    Range(u8, u16, u16),
}

/// One allowed (remote identity, ports) pair of an endpoint's direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Allow {
    /// The remote identity, or `IDENTITY_ANY`.
    pub identity: u32,
    /// What ports.
    pub ports: Ports,
}

/// What one local endpoint allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Ifindex of the pod's host-side veth.
    pub endpoint: u32,
    /// `namespace/name` of the pod.
    pub pod: String,
    /// The pod's identity (0 until allocated).
    pub identity: u32,
    /// `None`: no policy selects the pod for ingress (all allowed).
    pub ingress: Option<BTreeSet<Allow>>,
    /// `None`: no policy selects the pod for egress (all allowed).
    pub egress: Option<BTreeSet<Allow>>,
}

/// Every map entry the dataplane should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// `POLICY_V1`: (prefix length, key).
    pub policy: BTreeSet<(u32, PolicyKey)>,
    /// `ENDPOINTS_V1`: ifindex → info.
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// `IPCACHE4_V1`: (prefix length, address) → value.
    pub ipcache4: BTreeMap<(u32, Ipcache4Key), IpcacheValue>,
    /// `IPCACHE6_V1`: (prefix length, address) → value.
    pub ipcache6: BTreeMap<(u32, Ipcache6Key), IpcacheValue>,
}

/// Whether `selector` selects `labels` (`LabelSelectorAsSelector`; an
/// empty selector selects everything, an unknown operator nothing).
pub fn selects(selector: &LabelSelector, labels: &Labels) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_labels
        && selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or(&[]);
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// The IANA number of a NetworkPolicy / container port protocol; TCP when
/// unset, as Kubernetes defaults it.
pub fn protocol_number(protocol: Option<&str>) -> Option<u8> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Some(TCP),
        "UDP" => Some(UDP),
        "SCTP" => Some(SCTP),
        _ => None,
    }
}

/// The name of an IANA protocol number, for listings.
pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        TCP => "TCP".to_string(),
        UDP => "UDP".to_string(),
        SCTP => "SCTP".to_string(),
        other => other.to_string(),
    }
}

/// Every CIDR (blocks and excepts) the policies name: each needs a
/// node-local identity in the ipcache.
pub fn policy_cidrs(policies: &[NetworkPolicy]) -> BTreeSet<IpNet> {
    let mut out = BTreeSet::new();
    for policy in policies {
        let Some(spec) = &policy.spec else { continue };
        let ingress = spec
            .ingress
            .iter()
            .flatten()
            .flat_map(|r| r.from.iter().flatten());
        let egress = spec
            .egress
            .iter()
            .flatten()
            .flat_map(|r| r.to.iter().flatten());
        for peer in ingress.chain(egress) {
            let Some(block) = &peer.ip_block else {
                continue;
            };
            let cidrs = std::iter::once(&block.cidr).chain(block.except.iter().flatten());
            for cidr in cidrs {
                if let Ok(net) = cidr.parse::<IpNet>() {
                    let net = net.trunc();
                    if net.prefix_len() > 0 {
                        out.insert(net);
                    }
                }
            }
        }
    }
    out
}

/// Node-local identities of CIDRs, stable while a CIDR stays named (so a
/// policy edit does not renumber every other CIDR's entries).
#[derive(Clone, Debug, Default)]
pub struct CidrIdentities {
    by_cidr: BTreeMap<IpNet, u32>,
    next: u32,
}

impl CidrIdentities {
    /// Makes the table hold exactly `cidrs`, keeping known numbers.
    pub fn sync(&mut self, cidrs: &BTreeSet<IpNet>) -> &BTreeMap<IpNet, u32> {
        self.by_cidr.retain(|c, _| cidrs.contains(c));
        for cidr in cidrs {
            if !self.by_cidr.contains_key(cidr) {
                let used: BTreeSet<u32> = self.by_cidr.values().copied().collect();
                let mut n = self.next;
                while used.contains(&(shoal_ebpf_common::policy::IDENTITY_LOCAL_SCOPE | n)) {
                    n = (n + 1) & 0x00ff_ffff;
                }
                self.by_cidr
                    .insert(*cidr, shoal_ebpf_common::policy::IDENTITY_LOCAL_SCOPE | n);
                self.next = (n + 1) & 0x00ff_ffff;
            }
        }
        &self.by_cidr
    }
}

/// Which directions a policy covers (`policyTypes`, or Kubernetes'
/// default: Ingress always, Egress when it has egress rules).
fn policy_types(policy: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = &policy.spec else {
        return (true, false);
    };
    match &spec.policy_types {
        Some(types) => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        None => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// The identities a peer selects, seen from a policy in `namespace`.
fn peer_identities(peer: &NetworkPolicyPeer, namespace: &str, inputs: &Inputs) -> BTreeSet<u32> {
    if let Some(block) = &peer.ip_block {
        return block_identities(&block.cidr, block.except.as_deref().unwrap_or(&[]), inputs);
    }
    inputs
        .identities
        .iter()
        .filter(|(_, set)| {
            let ns_ok = match &peer.namespace_selector {
                Some(sel) => selects(sel, &id::namespace_labels(set)),
                None => id::namespace(set) == Some(namespace),
            };
            let pod_ok = match &peer.pod_selector {
                Some(sel) => selects(sel, &id::pod_labels(set)),
                None => true,
            };
            ns_ok && pod_ok
        })
        .map(|(n, _)| *n)
        .collect()
}

/// The CIDR identities an ipBlock admits: those of the known CIDRs inside
/// `cidr` and inside none of `except`, plus the family's world identity
/// for a `/0`.
fn block_identities(cidr: &str, except: &[String], inputs: &Inputs) -> BTreeSet<u32> {
    let Ok(block) = cidr.parse::<IpNet>().map(|n| n.trunc()) else {
        return BTreeSet::new();
    };
    let excepts: Vec<IpNet> = except
        .iter()
        .filter_map(|e| e.parse::<IpNet>().ok().map(|n| n.trunc()))
        .collect();
    let mut out: BTreeSet<u32> = inputs
        .cidr_identities
        .iter()
        .filter(|(net, _)| block.contains(*net) && !excepts.iter().any(|e| e.contains(*net)))
        .map(|(_, n)| *n)
        .collect();
    if block.prefix_len() == 0 && !excepts.iter().any(|e| e.prefix_len() == 0) {
        out.insert(match block {
            IpNet::V4(_) => IDENTITY_WORLD_IPV4,
            IpNet::V6(_) => IDENTITY_WORLD_IPV6,
        });
    }
    out
}

/// What a rule's port admits before named ports are resolved.
enum RulePort {
    Resolved(Ports),
    Named(u8, String),
}

fn rule_port(port: &NetworkPolicyPort) -> Option<RulePort> {
    let protocol = protocol_number(port.protocol.as_deref())?;
    Some(match &port.port {
        None => RulePort::Resolved(Ports::Protocol(protocol)),
        Some(IntOrString::Int(n)) => {
            let first = u16::try_from(*n).ok().filter(|p| *p > 0)?;
            let last = match port.end_port {
                Some(end) => u16::try_from(end).ok().filter(|e| *e >= first)?,
                None => first,
            };
            RulePort::Resolved(Ports::Range(protocol, first, last))
        }
        Some(IntOrString::String(name)) => match name.parse::<u16>() {
            // kubectl sends "80" as a string from some YAML; Kubernetes
            // reads a number-looking name as that number.
            Ok(n) if n > 0 => RulePort::Resolved(Ports::Range(protocol, n, n)),
            _ => RulePort::Named(protocol, name.clone()),
        },
    })
}

/// Ports of `pod` declared as `name` with `protocol`.
fn named_ports(pod: &PodView, protocol: u8, name: &str) -> Vec<u16> {
    pod.ports
        .iter()
        .filter(|p| p.protocol == protocol && p.name == name)
        .map(|p| p.port)
        .collect()
}

/// The allow entries of one rule of a policy in `namespace` selecting
/// `ep`, in `direction`.
fn rule_allows(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    namespace: &str,
    ep: &LocalEndpoint,
    egress: bool,
    inputs: &Inputs,
) -> BTreeSet<Allow> {
    // An absent or empty list means "everything" in both fields.
    let identities: Option<BTreeSet<u32>> = match peers {
        Some(peers) if !peers.is_empty() => Some(
            peers
                .iter()
                .flat_map(|p| peer_identities(p, namespace, inputs))
                .collect(),
        ),
        _ => None,
    };
    let rule_ports: Vec<RulePort> = match ports {
        Some(ports) if !ports.is_empty() => ports.iter().filter_map(rule_port).collect(),
        _ => vec![RulePort::Resolved(Ports::Any)],
    };
    let mut out = BTreeSet::new();
    for port in &rule_ports {
        match port {
            RulePort::Resolved(ports) => match &identities {
                None => {
                    out.insert(Allow {
                        identity: IDENTITY_ANY,
                        ports: *ports,
                    });
                }
                Some(ids) => out.extend(ids.iter().map(|identity| Allow {
                    identity: *identity,
                    ports: *ports,
                })),
            },
            // Ingress: the port is the local pod's. Egress: each remote
            // pod's own, so it is resolved per peer pod.
            RulePort::Named(protocol, name) if !egress => {
                for p in named_ports(&ep.pod, *protocol, name) {
                    let ports = Ports::Range(*protocol, p, p);
                    match &identities {
                        None => {
                            out.insert(Allow {
                                identity: IDENTITY_ANY,
                                ports,
                            });
                        }
                        Some(ids) => out.extend(ids.iter().map(|identity| Allow {
                            identity: *identity,
                            ports,
                        })),
                    }
                }
            }
            RulePort::Named(protocol, name) => {
                for pod in &inputs.pods {
                    let Some(identity) = pod.identity else {
                        continue;
                    };
                    if identities
                        .as_ref()
                        .is_some_and(|ids| !ids.contains(&identity))
                    {
                        continue;
                    }
                    for p in named_ports(pod, *protocol, name) {
                        out.insert(Allow {
                            identity,
                            ports: Ports::Range(*protocol, p, p),
                        });
                    }
                }
            }
        }
    }
    out
}

/// What every local endpoint allows, in endpoint order.
pub fn compile(inputs: &Inputs) -> Vec<EndpointPolicy> {
    let mut out = Vec::new();
    for ep in &inputs.endpoints {
        let mut ingress: Option<BTreeSet<Allow>> = None;
        let mut egress: Option<BTreeSet<Allow>> = None;
        for policy in &inputs.policies {
            let namespace = policy.metadata.namespace.as_deref().unwrap_or("default");
            if namespace != ep.pod.namespace {
                continue;
            }
            let Some(spec) = &policy.spec else { continue };
            // An absent podSelector is the empty one: every pod.
            if !spec
                .pod_selector
                .as_ref()
                .is_none_or(|sel| selects(sel, &ep.pod.labels))
            {
                continue;
            }
            let (covers_ingress, covers_egress) = policy_types(policy);
            if covers_ingress {
                let set = ingress.get_or_insert_with(BTreeSet::new);
                for rule in spec.ingress.iter().flatten() {
                    set.extend(rule_allows(
                        rule.from.as_deref(),
                        rule.ports.as_deref(),
                        namespace,
                        ep,
                        false,
                        inputs,
                    ));
                }
            }
            if covers_egress {
                let set = egress.get_or_insert_with(BTreeSet::new);
                for rule in spec.egress.iter().flatten() {
                    set.extend(rule_allows(
                        rule.to.as_deref(),
                        rule.ports.as_deref(),
                        namespace,
                        ep,
                        true,
                        inputs,
                    ));
                }
            }
        }
        if let Some(set) = &mut ingress {
            set.insert(Allow {
                identity: IDENTITY_HOST,
                ports: Ports::Any,
            });
        }
        out.push(EndpointPolicy {
            endpoint: ep.endpoint,
            pod: format!("{}/{}", ep.pod.namespace, ep.pod.name),
            identity: ep.pod.identity.unwrap_or(0),
            ingress,
            egress,
        });
    }
    out
}

/// Splits `first..=last` into aligned power-of-two blocks: (start, number
/// of wildcard low bits).
pub fn port_blocks(first: u16, last: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let mut start = u32::from(first);
    let end = u32::from(last);
    while start <= end {
        let mut bits = start.trailing_zeros().min(16);
        while bits > 0 && start + (1 << bits) - 1 > end {
            bits -= 1;
        }
        // `start` stays below 65536 inside the loop.
        out.push((u16::try_from(start).unwrap_or(u16::MAX), bits));
        start += 1 << bits;
    }
    out
}

/// The `POLICY_V1` entries of one allow entry.
pub fn policy_entries(endpoint: u32, direction: u8, allow: &Allow) -> Vec<(u32, PolicyKey)> {
    let key = |protocol: u8, dport: u16| PolicyKey {
        endpoint,
        identity: allow.identity,
        direction,
        protocol,
        dport: dport.to_be(),
    };
    match allow.ports {
        Ports::Any => vec![(POLICY_PREFIX_ANY_PROTO, key(0, 0))],
        Ports::Protocol(p) => vec![(POLICY_PREFIX_ANY_PORT, key(p, 0))],
        Ports::Range(p, first, last) => port_blocks(first, last)
            .into_iter()
            .map(|(start, bits)| (POLICY_PREFIX_FULL - bits, key(p, start)))
            .collect(),
    }
}

/// What the maps should hold for `compiled` endpoints and the ipcache.
pub fn desired(inputs: &Inputs, compiled: &[EndpointPolicy]) -> Desired {
    let mut out = Desired::default();
    for ep in compiled {
        let mut flags = 0;
        for (direction, set, flag) in [
            (POLICY_INGRESS, &ep.ingress, ENDPOINT_ENFORCE_INGRESS),
            (POLICY_EGRESS, &ep.egress, ENDPOINT_ENFORCE_EGRESS),
        ] {
            if let Some(set) = set {
                flags |= flag;
                for allow in set {
                    out.policy
                        .extend(policy_entries(ep.endpoint, direction, allow));
                }
            }
        }
        out.endpoints.insert(
            ep.endpoint,
            EndpointInfo {
                identity: ep.identity,
                flags,
            },
        );
    }
    let mut put = |net: IpNet, identity: u32, flags: u32| {
        let value = IpcacheValue { identity, flags };
        let prefix = u32::from(net.prefix_len());
        match net {
            IpNet::V4(n) => {
                out.ipcache4.insert(
                    (
                        prefix,
                        Ipcache4Key {
                            addr: n.network().octets(),
                        },
                    ),
                    value,
                );
            }
            IpNet::V6(n) => {
                out.ipcache6.insert(
                    (
                        prefix,
                        Ipcache6Key {
                            addr: n.network().octets(),
                        },
                    ),
                    value,
                );
            }
        }
    };
    put(IpNet::V4(ipnet::Ipv4Net::default()), IDENTITY_WORLD_IPV4, 0);
    put(IpNet::V6(ipnet::Ipv6Net::default()), IDENTITY_WORLD_IPV6, 0);
    for (net, identity) in &inputs.cidr_identities {
        put(*net, *identity, 0);
    }
    for ip in &inputs.remote_node_ips {
        put(IpNet::from(*ip), IDENTITY_REMOTE_NODE, 0);
    }
    for ip in &inputs.node_ips {
        put(IpNet::from(*ip), IDENTITY_HOST, 0);
    }
    for ip in &inputs.local_dns {
        put(
            IpNet::from(*ip),
            shoal_ebpf_common::policy::IDENTITY_KUBE_DNS,
            0,
        );
    }
    for pod in &inputs.pods {
        let Some(identity) = pod.identity else {
            continue;
        };
        let flags = if pod.local {
            IPCACHE_FLAG_LOCAL_ENDPOINT
        } else {
            0
        };
        for ip in &pod.ips {
            put(IpNet::from(*ip), identity, flags);
        }
    }
    out
}

/// The name of a reserved or node-local identity, for listings.
pub fn reserved_name(identity: u32) -> Option<&'static str> {
    use shoal_ebpf_common::policy as p;
    match identity {
        p::IDENTITY_ANY => Some("any"),
        p::IDENTITY_HOST => Some("reserved:host"),
        p::IDENTITY_WORLD => Some("reserved:world"),
        p::IDENTITY_REMOTE_NODE => Some("reserved:remote-node"),
        p::IDENTITY_WORLD_IPV4 => Some("reserved:world-ipv4"),
        p::IDENTITY_WORLD_IPV6 => Some("reserved:world-ipv6"),
        p::IDENTITY_KUBE_DNS => Some("reserved:kube-dns"),
        n if n & p::IDENTITY_LOCAL_SCOPE != 0 => Some("local:cidr"),
        _ => None,
    }
}

/// The labels of the reserved kube-dns identity: what kube-dns pods carry
/// in a Kubernetes cluster, so policies written for them select it.
pub fn kube_dns_labels() -> Labels {
    let pod: Labels = [("k8s-app".to_string(), "kube-dns".to_string())].into();
    let ns: Labels = [(
        "kubernetes.io/metadata.name".to_string(),
        "kube-system".to_string(),
    )]
    .into();
    id::security_labels(&pod, "kube-system", &ns)
}
