use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use shoal_api::identity::{Labels, security_labels};
use shoal_ebpf_common::policy::{
    ENDPOINT_ENFORCE_EGRESS, ENDPOINT_ENFORCE_INGRESS, IDENTITY_ANY, IDENTITY_HOST,
    IDENTITY_KUBE_DNS, IDENTITY_WORLD_IPV4, IDENTITY_WORLD_IPV6, IPCACHE_FLAG_LOCAL_ENDPOINT,
    Ipcache4Key, Ipcache6Key, POLICY_EGRESS, POLICY_INGRESS, POLICY_PREFIX_ANY_PORT,
    POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL, PolicyKey,
};

use super::*;

const TCP: u8 = 6;
const UDP: u8 = 17;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn policy(namespace: &str, spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": namespace},
        "spec": spec,
    }))
    .expect("test policy is valid")
}

/// A pod of namespace `ns` with its own labels, IPs and ports.
fn pod(ns: &str, name: &str, own: &[(&str, &str)], ips: &[&str], ports: Vec<NamedPort>) -> PodView {
    PodView {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(own),
        ips: ips
            .iter()
            .map(|i| i.parse::<IpAddr>().expect("ip"))
            .collect(),
        ports,
        ..PodView::default()
    }
}

/// A small cluster: namespaces `prod` (team=blue), `dev` (team=red) and
/// `kube-system`; a web pod on this node in `prod`, a client in `dev`,
/// an api pod in `prod` on another node.
struct Cluster {
    namespaces: BTreeMap<String, Labels>,
    inputs: Inputs,
}

const WEB: u32 = 1000;
const CLIENT: u32 = 2000;
const API: u32 = 3000;

impl Cluster {
    fn new() -> Self {
        let namespaces: BTreeMap<String, Labels> = [
            (
                "prod".to_string(),
                labels(&[("team", "blue"), ("kubernetes.io/metadata.name", "prod")]),
            ),
            (
                "dev".to_string(),
                labels(&[("team", "red"), ("kubernetes.io/metadata.name", "dev")]),
            ),
        ]
        .into();
        let mut c = Self {
            namespaces,
            inputs: Inputs {
                local_dns: vec!["169.254.20.10".parse().expect("ip")],
                node_ips: vec!["172.20.0.11".parse().expect("ip")],
                remote_node_ips: vec!["172.20.0.12".parse().expect("ip")],
                ..Inputs::default()
            },
        };
        c.inputs
            .identities
            .insert(IDENTITY_KUBE_DNS, kube_dns_labels());
        c.add_pod(
            pod(
                "prod",
                "web",
                &[("app", "web")],
                &["10.244.1.5", "fd00:10:244:1::5"],
                vec![NamedPort {
                    name: "http".into(),
                    protocol: TCP,
                    port: 8080,
                }],
            ),
            WEB,
            Some(7),
        );
        c.add_pod(
            pod(
                "dev",
                "client",
                &[("app", "client")],
                &["10.244.1.6"],
                vec![],
            ),
            CLIENT,
            Some(8),
        );
        c.add_pod(
            pod(
                "prod",
                "api",
                &[("app", "api")],
                &["10.244.2.9", "fd00:10:244:2::9"],
                vec![NamedPort {
                    name: "grpc".into(),
                    protocol: TCP,
                    port: 9090,
                }],
            ),
            API,
            None,
        );
        c
    }

    /// Adds `pod` (with the endpoint `endpoint` when it is local) and its
    /// identity `identity`.
    fn add_pod(&mut self, mut pod: PodView, identity: u32, endpoint: Option<u32>) {
        let set = security_labels(
            &pod.labels,
            &pod.namespace,
            &self.namespaces[&pod.namespace],
        );
        self.inputs.identities.insert(identity, set);
        pod.identity = Some(identity);
        pod.local = endpoint.is_some();
        if let Some(endpoint) = endpoint {
            self.inputs.endpoints.push(LocalEndpoint {
                endpoint,
                pod: pod.clone(),
            });
        }
        self.inputs.pods.push(pod);
    }

    fn with(mut self, policies: Vec<NetworkPolicy>) -> Self {
        let mut cidrs = CidrIdentities::default();
        self.inputs.cidr_identities = cidrs.sync(&policy_cidrs(&policies)).clone();
        self.inputs.policies = policies;
        self
    }

    fn compiled(&self) -> Vec<EndpointPolicy> {
        compile(&self.inputs)
    }

    fn endpoint(&self, pod: &str) -> EndpointPolicy {
        self.compiled()
            .into_iter()
            .find(|e| e.pod == pod)
            .expect("endpoint compiled")
    }
}

fn allow(identity: u32, ports: Ports) -> Allow {
    Allow { identity, ports }
}

fn host() -> Allow {
    allow(IDENTITY_HOST, Ports::Any)
}

#[test]
fn no_policy_leaves_every_endpoint_open() {
    let c = Cluster::new().with(vec![]);
    for ep in c.compiled() {
        assert_eq!((ep.ingress, ep.egress), (None, None), "{}", ep.pod);
    }
    let want = desired(&c.inputs, &c.compiled());
    assert_eq!(want.endpoints[&7].flags, 0);
    assert_eq!(want.endpoints[&7].identity, WEB);
    assert!(want.policy.is_empty());
}

#[test]
fn deny_all_ingress_enforces_ingress_of_the_namespace_only_and_keeps_the_node() {
    let c = Cluster::new().with(vec![policy(
        "prod",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )]);
    let web = c.endpoint("prod/web");
    assert_eq!(web.ingress, Some([host()].into()));
    assert_eq!(web.egress, None);
    assert_eq!(c.endpoint("dev/client").ingress, None);
    let want = desired(&c.inputs, &c.compiled());
    assert_eq!(want.endpoints[&7].flags, ENDPOINT_ENFORCE_INGRESS);
    assert_eq!(want.endpoints[&8].flags, 0);
    assert_eq!(
        want.policy,
        [(
            POLICY_PREFIX_ANY_PROTO,
            PolicyKey {
                endpoint: 7,
                identity: IDENTITY_HOST,
                direction: POLICY_INGRESS,
                protocol: 0,
                dport: 0
            }
        )]
        .into()
    );
}

#[test]
fn allow_from_a_namespace_admits_its_pods_identities_only() {
    let c = Cluster::new().with(vec![
        policy("prod", json!({"podSelector": {}, "policyTypes": ["Ingress"]})),
        policy(
            "prod",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "red"}}}]}]}),
        ),
    ]);
    assert_eq!(
        c.endpoint("prod/web").ingress,
        Some([host(), allow(CLIENT, Ports::Any)].into())
    );
}

#[test]
fn pod_selector_stays_in_the_policy_namespace_and_both_selectors_must_match_together() {
    let only_pods = Cluster::new().with(vec![policy(
        "prod",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"podSelector": {}}]}]}),
    )]);
    // Every pod of prod (web, api), none of dev.
    assert_eq!(
        only_pods.endpoint("prod/web").ingress,
        Some([host(), allow(WEB, Ports::Any), allow(API, Ports::Any)].into())
    );
    let together = Cluster::new().with(vec![policy(
        "prod",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{
                   "namespaceSelector": {"matchLabels": {"team": "blue"}},
                   "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["api", "client"]}]}
               }]}]}),
    )]);
    assert_eq!(
        together.endpoint("prod/web").ingress,
        Some([host(), allow(API, Ports::Any)].into())
    );
    let either = Cluster::new().with(vec![policy(
        "prod",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"team": "red"}}},
            {"podSelector": {"matchLabels": {"app": "api"}}}
        ]}]}),
    )]);
    assert_eq!(
        either.endpoint("prod/web").ingress,
        Some([host(), allow(CLIENT, Ports::Any), allow(API, Ports::Any)].into())
    );
}

#[test]
fn egress_only_to_dns_allows_the_node_local_dns_on_port_53_and_nothing_else() {
    let c = Cluster::new().with(vec![policy(
        "prod",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                   "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                           "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}),
    )]);
    let web = c.endpoint("prod/web");
    assert_eq!(web.ingress, None);
    assert_eq!(
        web.egress,
        Some(
            [
                allow(IDENTITY_KUBE_DNS, Ports::Range(UDP, 53, 53)),
                allow(IDENTITY_KUBE_DNS, Ports::Range(TCP, 53, 53)),
            ]
            .into()
        )
    );
    let want = desired(&c.inputs, &c.compiled());
    assert_eq!(want.endpoints[&7].flags, ENDPOINT_ENFORCE_EGRESS);
    assert!(want.policy.contains(&(
        POLICY_PREFIX_FULL,
        PolicyKey {
            endpoint: 7,
            identity: IDENTITY_KUBE_DNS,
            direction: POLICY_EGRESS,
            protocol: UDP,
            dport: 53u16.to_be()
        }
    )));
    // The DNS server's address carries the kube-dns identity.
    assert_eq!(
        want.ipcache4[&(
            32,
            Ipcache4Key {
                addr: [169, 254, 20, 10]
            }
        )]
            .identity,
        IDENTITY_KUBE_DNS
    );
}

#[test]
fn ip_block_with_except_admits_the_block_but_not_the_except_and_one_family_only() {
    let c = Cluster::new().with(vec![policy(
        "prod",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [
            {"ipBlock": {"cidr": "172.20.0.0/24", "except": ["172.20.0.9/32"]}},
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.20.0.0/16"]}}
        ]}]}),
    )]);
    let ids = &c.inputs.cidr_identities;
    let block = ids[&"172.20.0.0/24".parse().expect("net")];
    let except = ids[&"172.20.0.9/32".parse().expect("net")];
    let ten = ids[&"10.0.0.0/8".parse().expect("net")];
    let lab = ids[&"172.20.0.0/16".parse().expect("net")];
    let ingress = c.endpoint("prod/web").ingress.expect("enforced");
    assert!(ingress.contains(&allow(block, Ports::Any)));
    assert!(ingress.contains(&allow(IDENTITY_WORLD_IPV4, Ports::Any)));
    assert!(!ingress.contains(&allow(except, Ports::Any)));
    assert!(!ingress.contains(&allow(ten, Ports::Any)));
    assert!(!ingress.contains(&allow(lab, Ports::Any)));
    assert!(!ingress.contains(&allow(IDENTITY_WORLD_IPV6, Ports::Any)));
    let want = desired(&c.inputs, &c.compiled());
    assert_eq!(
        want.ipcache4[&(
            32,
            Ipcache4Key {
                addr: [172, 20, 0, 9]
            }
        )]
            .identity,
        except
    );
    assert_eq!(
        want.ipcache4[&(
            24,
            Ipcache4Key {
                addr: [172, 20, 0, 0]
            }
        )]
            .identity,
        block
    );
    assert_eq!(
        want.ipcache4[&(0, Ipcache4Key::default())].identity,
        IDENTITY_WORLD_IPV4
    );
    assert_eq!(
        want.ipcache6[&(0, Ipcache6Key::default())].identity,
        IDENTITY_WORLD_IPV6
    );
}

#[test]
fn named_ports_resolve_against_the_local_pod_for_ingress_and_the_remote_pods_for_egress() {
    let c = Cluster::new().with(vec![policy(
        "prod",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "policyTypes": ["Ingress", "Egress"],
               "ingress": [{"ports": [{"port": "http"}, {"port": "nope"}]}],
               "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "grpc"}]}]}),
    )]);
    let web = c.endpoint("prod/web");
    assert_eq!(
        web.ingress,
        Some([host(), allow(IDENTITY_ANY, Ports::Range(TCP, 8080, 8080))].into())
    );
    assert_eq!(
        web.egress,
        Some([allow(API, Ports::Range(TCP, 9090, 9090))].into())
    );
}

#[test]
fn end_port_ranges_become_aligned_prefix_blocks() {
    assert_eq!(port_blocks(80, 80), vec![(80, 0)]);
    assert_eq!(port_blocks(32000, 32003), vec![(32000, 2)]);
    assert_eq!(
        port_blocks(32000, 32768),
        vec![(32000, 8), (32256, 9), (32768, 0)]
    );
    assert_eq!(port_blocks(1, 65535).len(), 16);
    let c = Cluster::new().with(vec![policy(
        "prod",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"ports": [{"protocol": "TCP", "port": 32000, "endPort": 32003}, {"protocol": "UDP"}]}]}),
    )]);
    let want = desired(&c.inputs, &c.compiled());
    let mine: BTreeSet<(u32, u8, u16)> = want
        .policy
        .iter()
        .filter(|(_, k)| k.identity == IDENTITY_ANY)
        .map(|(p, k)| (*p, k.protocol, u16::from_be(k.dport)))
        .collect();
    assert_eq!(
        mine,
        [
            (POLICY_PREFIX_FULL - 2, TCP, 32000),
            (POLICY_PREFIX_ANY_PORT, UDP, 0)
        ]
        .into()
    );
}

#[test]
fn policy_types_default_to_ingress_plus_egress_when_egress_rules_exist() {
    let c = Cluster::new().with(vec![policy(
        "prod",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "egress": [{"to": [{"namespaceSelector": {}}]}]}),
    )]);
    let web = c.endpoint("prod/web");
    assert_eq!(web.ingress, Some([host()].into()));
    assert_eq!(
        web.egress,
        Some(
            [
                allow(WEB, Ports::Any),
                allow(CLIENT, Ports::Any),
                allow(API, Ports::Any),
                allow(IDENTITY_KUBE_DNS, Ports::Any),
            ]
            .into()
        )
    );
}

#[test]
fn policies_selecting_one_pod_add_up() {
    let c = Cluster::new().with(vec![
        policy(
            "prod",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": 80}]}]}),
        ),
        policy(
            "prod",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "red"}}}], "ports": [{"port": 443}]}]}),
        ),
    ]);
    assert_eq!(
        c.endpoint("prod/web").ingress,
        Some(
            [
                host(),
                allow(API, Ports::Range(TCP, 80, 80)),
                allow(CLIENT, Ports::Range(TCP, 443, 443))
            ]
            .into()
        )
    );
}

#[test]
fn ipcache_holds_both_families_of_pods_and_nodes() {
    let c = Cluster::new().with(vec![]);
    let want = desired(&c.inputs, &c.compiled());
    let web6: std::net::Ipv6Addr = "fd00:10:244:1::5".parse().expect("ip");
    let v = want.ipcache6[&(
        128,
        Ipcache6Key {
            addr: web6.octets(),
        },
    )];
    assert_eq!((v.identity, v.flags), (WEB, IPCACHE_FLAG_LOCAL_ENDPOINT));
    let api = want.ipcache4[&(
        32,
        Ipcache4Key {
            addr: [10, 244, 2, 9],
        },
    )];
    assert_eq!((api.identity, api.flags), (API, 0));
    assert_eq!(
        want.ipcache4[&(
            32,
            Ipcache4Key {
                addr: [172, 20, 0, 11]
            }
        )]
            .identity,
        IDENTITY_HOST
    );
    assert_eq!(
        want.ipcache4[&(
            32,
            Ipcache4Key {
                addr: [172, 20, 0, 12]
            }
        )]
            .identity,
        shoal_ebpf_common::policy::IDENTITY_REMOTE_NODE
    );
}

#[test]
fn cidr_identities_keep_their_numbers_while_named() {
    let mut ids = CidrIdentities::default();
    let a: ipnet::IpNet = "10.0.0.0/8".parse().expect("net");
    let b: ipnet::IpNet = "192.168.0.0/16".parse().expect("net");
    let first = ids.sync(&[a].into())[&a];
    let both = ids.sync(&[a, b].into()).clone();
    assert_eq!(both[&a], first);
    assert_ne!(both[&b], first);
    assert!(first & shoal_ebpf_common::policy::IDENTITY_LOCAL_SCOPE != 0);
}

#[test]
fn writer_writes_only_changes_and_adds_before_it_removes() {
    let deny = Cluster::new().with(vec![policy(
        "prod",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )]);
    let open = Cluster::new().with(vec![policy(
        "prod",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
    )]);
    let mut writer = PolicyWriter::restore(MemoryMaps::default()).expect("restore");
    let first = desired(&deny.inputs, &deny.compiled());
    let changes = writer.apply(&first).expect("apply");
    assert!(changes.written > 0);
    assert_eq!(writer.apply(&first).expect("apply"), Changes::default());
    let start = writer.maps().log.len();
    let second = desired(&open.inputs, &open.compiled());
    writer.apply(&second).expect("apply");
    assert_eq!(writer.maps().state, second);
    let log = &writer.maps().log[start..];
    let last_put = log.iter().rposition(|l| l.starts_with("put"));
    let first_delete = log.iter().position(|l| l.starts_with("delete"));
    if let (Some(p), Some(d)) = (last_put, first_delete) {
        assert!(p < d, "a delete came before a put: {log:?}");
    }
    // A restarted agent takes the maps over and rewrites nothing.
    let mut again = PolicyWriter::restore(writer.maps().clone()).expect("restore");
    assert_eq!(again.apply(&second).expect("apply"), Changes::default());
}
