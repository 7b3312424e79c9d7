//! Unit tests of the service sync: what a Service and its slices become,
//! and which map writes the sync makes for each change (against an
//! in-memory stand-in for the maps).

use std::{collections::HashMap, net::SocketAddr};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

use super::*;
use crate::dataplane::{MapWriteError, Protocol};

fn service(name: &str, extra_spec: Value) -> Service {
    let mut spec = json!({
        "type": "ClusterIP",
        "clusterIP": "10.96.0.20",
        "clusterIPs": ["10.96.0.20", "fd00:10:96::20"],
        "ipFamilies": ["IPv4", "IPv6"],
        "ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
        ],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .expect("a valid Service")
}

/// An endpoint: (address, ready, serving, terminating, node).
type Ep<'a> = (&'a str, bool, bool, bool, &'a str);

fn slice(name: &str, service: &str, address_type: &str, endpoints: &[Ep<'_>]) -> EndpointSlice {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(addr, ready, serving, terminating, node)| {
            json!({
                "addresses": [addr],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                "nodeName": node,
            })
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": "default",
            "labels": {SERVICE_NAME_LABEL: service},
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "dns", "port": 5353, "protocol": "UDP"},
        ],
    }))
    .expect("a valid EndpointSlice")
}

fn node() -> NodeView {
    NodeView {
        name: "node-1".into(),
        addresses: vec![
            "172.20.0.11".parse().expect("literal"),
            "fd00:172:20::b".parse().expect("literal"),
        ],
        local_dns: Vec::new(),
    }
}

fn fe(addr: &str, port: u16, protocol: Protocol) -> Frontend {
    Frontend {
        address: addr.parse().expect("literal"),
        port,
        protocol,
    }
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().expect("literal")).collect()
}

const READY: bool = true;

fn two_ready_v4_v6() -> [EndpointSlice; 2] {
    [
        slice(
            "web-v4",
            "web",
            "IPv4",
            &[
                ("10.244.1.5", READY, true, false, "node-1"),
                ("10.244.2.5", READY, true, false, "node-2"),
            ],
        ),
        slice(
            "web-v6",
            "web",
            "IPv6",
            &[
                ("fd00:10:244:1::5", READY, true, false, "node-1"),
                ("fd00:10:244:2::5", READY, true, false, "node-2"),
            ],
        ),
    ]
}

#[test]
fn the_cluster_dns_service_goes_to_this_nodes_dns_server() {
    let mut dns: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "spec": {
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00:10:96::a"],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
        }
    }))
    .expect("a valid Service");
    let mut local = node();
    local.local_dns = vec![
        "169.254.20.10".parse().expect("literal"),
        "fd00::a:10".parse().expect("literal"),
    ];
    let out = frontends(&dns, [], &local);
    assert_eq!(out.len(), 4, "{out:?}");
    assert_eq!(
        out[&fe("10.96.0.10", 53, Protocol::Udp)].backends,
        addrs(&["169.254.20.10:53"])
    );
    assert_eq!(
        out[&fe("fd00:10:96::a", 53, Protocol::Tcp)].backends,
        addrs(&["[fd00::a:10]:53"])
    );
    // Without a node-local server it is an ordinary Service (no endpoints).
    assert!(
        frontends(&dns, [], &node())
            .values()
            .all(|t| t.backends.is_empty())
    );
    // Another Service with the same name elsewhere is not redirected.
    dns.metadata.namespace = Some("default".into());
    assert!(
        frontends(&dns, [], &local)
            .values()
            .all(|t| t.backends.is_empty())
    );
}

#[test]
fn a_dual_stack_service_gets_a_frontend_per_cluster_ip_and_port_with_its_family_backends() {
    let slices = two_ready_v4_v6();
    let out = frontends(&service("web", json!({})), &slices, &node());
    let want = [
        (
            fe("10.96.0.20", 80, Protocol::Tcp),
            addrs(&["10.244.1.5:8080", "10.244.2.5:8080"]),
        ),
        (
            fe("10.96.0.20", 53, Protocol::Udp),
            addrs(&["10.244.1.5:5353", "10.244.2.5:5353"]),
        ),
        (
            fe("fd00:10:96::20", 80, Protocol::Tcp),
            addrs(&["[fd00:10:244:1::5]:8080", "[fd00:10:244:2::5]:8080"]),
        ),
        (
            fe("fd00:10:96::20", 53, Protocol::Udp),
            addrs(&["[fd00:10:244:1::5]:5353", "[fd00:10:244:2::5]:5353"]),
        ),
    ];
    assert_eq!(out.len(), want.len(), "{out:?}");
    for (frontend, backends) in want {
        assert_eq!(
            out.get(&frontend).map(|t| &t.backends),
            Some(&backends),
            "{frontend}: {out:?}"
        );
    }
}

#[test]
fn only_ready_endpoints_serve_and_terminating_ones_only_when_none_is_ready() {
    let mixed = [slice(
        "web-a",
        "web",
        "IPv4",
        &[
            ("10.244.1.5", true, true, false, "node-1"),
            ("10.244.1.6", false, false, false, "node-1"),
            ("10.244.1.7", false, true, true, "node-1"),
        ],
    )];
    let out = frontends(&service("web", json!({})), &mixed, &node());
    assert_eq!(
        out[&fe("10.96.0.20", 80, Protocol::Tcp)].backends,
        addrs(&["10.244.1.5:8080"]),
        "not ready and terminating endpoints are left out while one is ready"
    );

    let terminating = [slice(
        "web-a",
        "web",
        "IPv4",
        &[
            ("10.244.1.6", false, false, false, "node-1"),
            ("10.244.1.7", false, true, true, "node-1"),
            ("10.244.1.8", false, false, true, "node-1"),
        ],
    )];
    let out = frontends(&service("web", json!({})), &terminating, &node());
    assert_eq!(
        out[&fe("10.96.0.20", 80, Protocol::Tcp)].backends,
        addrs(&["10.244.1.7:8080"]),
        "with none ready, serving terminating endpoints take the traffic"
    );

    let none: [EndpointSlice; 0] = [];
    let out = frontends(&service("web", json!({})), &none, &node());
    let empty = &out[&fe("fd00:10:96::20", 80, Protocol::Tcp)];
    assert!(
        empty.backends.is_empty(),
        "a service without endpoints keeps its frontend, empty, so connects are refused"
    );
}

#[test]
fn node_ports_external_ips_and_load_balancer_ips_become_frontends() {
    let slices = two_ready_v4_v6();
    let svc = service(
        "web",
        json!({
            "type": "LoadBalancer",
            "externalIPs": ["192.0.2.10"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
        }),
    );
    let mut svc = svc;
    svc.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
        {"ip": "10.250.0.5"},
        {"ip": "fd00:10:250::5"},
        {"ip": "10.250.0.6", "ipMode": "Proxy"},
    ]}}))
    .expect("a valid status");
    let out = frontends(&svc, &slices, &node());
    let v4 = addrs(&["10.244.1.5:8080", "10.244.2.5:8080"]);
    let v6 = addrs(&["[fd00:10:244:1::5]:8080", "[fd00:10:244:2::5]:8080"]);
    for (frontend, backends) in [
        (fe("172.20.0.11", 30080, Protocol::Tcp), &v4),
        (fe("fd00:172:20::b", 30080, Protocol::Tcp), &v6),
        (fe("192.0.2.10", 80, Protocol::Tcp), &v4),
        (fe("10.250.0.5", 80, Protocol::Tcp), &v4),
        (fe("fd00:10:250::5", 80, Protocol::Tcp), &v6),
    ] {
        assert_eq!(
            out.get(&frontend).map(|t| &t.backends),
            Some(backends),
            "{frontend}: {out:?}"
        );
    }
    assert!(
        !out.contains_key(&fe("10.250.0.6", 80, Protocol::Tcp)),
        "an ingress IP in ipMode Proxy is the load balancer's, not a frontend"
    );
    assert_eq!(
        out.len(),
        7,
        "2 ClusterIPs + 2 NodePorts + 3 external: {out:?}"
    );
}

#[test]
fn internal_traffic_policy_local_keeps_this_nodes_endpoints_and_sctp_is_skipped() {
    let slices = two_ready_v4_v6();
    let svc = service(
        "web",
        json!({
            "internalTrafficPolicy": "Local",
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "sig", "port": 90, "protocol": "SCTP"},
            ],
        }),
    );
    let out = frontends(&svc, &slices, &node());
    assert_eq!(out.len(), 2, "SCTP ports get no frontend: {out:?}");
    let t = &out[&fe("10.96.0.20", 80, Protocol::Tcp)];
    assert_eq!(t.backends, addrs(&["10.244.1.5:8080"]));
    assert_eq!(t.affinity_timeout, 600);
    let t = &out[&fe("fd00:10:96::20", 80, Protocol::Tcp)];
    assert_eq!(t.backends, addrs(&["[fd00:10:244:1::5]:8080"]));

    let headless = service("web", json!({"clusterIP": "None", "clusterIPs": ["None"]}));
    assert!(frontends(&headless, &slices, &node()).is_empty());
}

/// The maps as a map, with a log of writes.
#[derive(Default)]
struct FakeMaps {
    held: HashMap<Frontend, Target>,
    writes: Vec<String>,
    fail: bool,
    announced: std::collections::BTreeSet<IpAddr>,
}

impl ServiceMaps for FakeMaps {
    fn upsert(&mut self, frontend: Frontend, target: &Target) -> Result<(), LbError> {
        if self.fail {
            return Err(LbError::Map {
                map: "LB4_SERVICES_V1",
                frontend,
                source: MapWriteError("E2BIG".into()),
            });
        }
        self.writes.push(format!("upsert {frontend}"));
        self.held.insert(frontend, target.clone());
        Ok(())
    }
    fn remove(&mut self, frontend: Frontend) -> Result<(), LbError> {
        self.writes.push(format!("remove {frontend}"));
        self.held.remove(&frontend);
        Ok(())
    }
    fn programmed(&self) -> Vec<Programmed> {
        self.held
            .iter()
            .map(|(f, t)| Programmed {
                frontend: *f,
                backends: t.backends.clone(),
                affinity_timeout: t.affinity_timeout,
                flags: t.flags,
            })
            .collect()
    }
    fn collect_retired(&mut self) -> Result<(), LbError> {
        Ok(())
    }
    fn set_announced(&mut self, address: IpAddr, on: bool) -> Result<(), String> {
        self.writes.push(format!(
            "{} {address}",
            if on { "announce" } else { "withdraw" }
        ));
        if on {
            self.announced.insert(address);
        } else {
            self.announced.remove(&address);
        }
        Ok(())
    }
    fn announced(&self) -> Vec<IpAddr> {
        self.announced.iter().copied().collect()
    }
}

fn listed(state: &mut State, services: Vec<Service>, slices: Vec<EndpointSlice>) {
    state.service_event(Event::Init);
    for s in services {
        state.service_event(Event::InitApply(s));
    }
    state.service_event(Event::InitDone);
    state.slice_event(Event::Init);
    for s in slices {
        state.slice_event(Event::InitApply(s));
    }
    state.slice_event(Event::InitDone);
}

#[test]
fn nothing_is_written_before_both_lists_and_one_change_rewrites_one_service() {
    let mut maps = FakeMaps::default();
    let mut state = State::new(node(), &maps);
    state.service_event(Event::Init);
    state.service_event(Event::InitApply(service("web", json!({}))));
    state.service_event(Event::InitDone);
    state.flush(&mut maps);
    assert!(
        maps.writes.is_empty(),
        "services listed before their slices must not be programmed empty: {:?}",
        maps.writes
    );
    let mut other = service(
        "api",
        json!({"clusterIPs": ["10.96.0.21"], "clusterIP": "10.96.0.21"}),
    );
    other.metadata.name = Some("api".into());
    state.service_event(Event::Apply(other));
    let mut slices = two_ready_v4_v6().to_vec();
    slices.push(slice(
        "api-v4",
        "api",
        "IPv4",
        &[("10.244.3.1", true, true, false, "node-3")],
    ));
    state.slice_event(Event::Init);
    for s in slices {
        state.slice_event(Event::InitApply(s));
    }
    state.slice_event(Event::InitDone);
    state.flush(&mut maps);
    assert!(state.is_synced());
    assert_eq!(maps.held.len(), 6, "4 for web, 2 for api: {:?}", maps.held);

    // One endpoint of web's IPv4 slice stops being ready.
    maps.writes.clear();
    state.slice_event(Event::Apply(slice(
        "web-v4",
        "web",
        "IPv4",
        &[
            ("10.244.1.5", true, true, false, "node-1"),
            ("10.244.2.5", false, false, false, "node-2"),
        ],
    )));
    state.flush(&mut maps);
    maps.writes.sort();
    assert_eq!(
        maps.writes,
        ["upsert 10.96.0.20:53/UDP", "upsert 10.96.0.20:80/TCP"],
        "only the frontends whose backends changed are written"
    );
    assert_eq!(
        maps.held[&fe("10.96.0.20", 80, Protocol::Tcp)].backends,
        addrs(&["10.244.1.5:8080"])
    );

    // A resync with nothing changed writes nothing.
    maps.writes.clear();
    state.mark_all();
    state.flush(&mut maps);
    assert!(maps.writes.is_empty(), "{:?}", maps.writes);

    // Deleting web removes its frontends and nothing else.
    state.service_event(Event::Delete(service("web", json!({}))));
    state.flush(&mut maps);
    maps.writes.sort();
    assert_eq!(
        maps.writes,
        [
            "remove 10.96.0.20:53/UDP",
            "remove 10.96.0.20:80/TCP",
            "remove [fd00:10:96::20]:53/UDP",
            "remove [fd00:10:96::20]:80/TCP",
        ]
    );
    assert_eq!(maps.held.len(), 2);
}

#[test]
fn after_a_restart_the_maps_are_taken_over_and_stale_frontends_collected() {
    // The maps as a previous agent left them: web as it still is, and a
    // frontend of a Service deleted while no agent ran.
    let mut maps = FakeMaps::default();
    let slices = two_ready_v4_v6();
    for (f, t) in frontends(&service("web", json!({})), &slices, &node()) {
        maps.held.insert(f, t);
    }
    maps.held.insert(
        fe("10.96.0.99", 80, Protocol::Tcp),
        Target {
            backends: addrs(&["10.244.9.9:80"]),
            affinity_timeout: 0,
            flags: 0,
        },
    );
    let mut state = State::new(node(), &maps);
    listed(&mut state, vec![service("web", json!({}))], slices.to_vec());
    state.flush(&mut maps);
    assert_eq!(
        maps.writes,
        ["remove 10.96.0.99:80/TCP"],
        "unchanged services are not rewritten; the deleted one is collected"
    );
    assert_eq!(maps.held.len(), 4);
}

#[test]
fn a_failed_write_is_retried_and_a_relist_drops_what_disappeared() {
    let mut maps = FakeMaps {
        fail: true,
        ..FakeMaps::default()
    };
    let mut state = State::new(node(), &maps);
    listed(
        &mut state,
        vec![service("web", json!({}))],
        two_ready_v4_v6().to_vec(),
    );
    state.flush(&mut maps);
    assert!(maps.held.is_empty());
    maps.fail = false;
    state.retry_failed();
    state.flush(&mut maps);
    assert_eq!(maps.held.len(), 4, "the retry programs what failed");

    // The watch restarts and web is gone from the new list.
    maps.writes.clear();
    listed(&mut state, vec![], two_ready_v4_v6().to_vec());
    state.flush(&mut maps);
    assert!(maps.held.is_empty(), "{:?}", maps.held);
    assert_eq!(maps.writes.len(), 4);
}

fn lb_service() -> Service {
    let mut svc = service(
        "web",
        json!({"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
    );
    svc.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
        {"ip": "10.250.0.5"},
        {"ip": "fd00:10:250::5"},
    ]}}))
    .expect("a valid status");
    svc
}

#[test]
fn the_first_node_by_name_with_a_ready_endpoint_announces_the_load_balancer_ips() {
    let on_both = |node1_ready: bool| {
        slice(
            "web-v4",
            "web",
            "IPv4",
            &[
                ("10.244.1.5", true, true, false, "node-2"),
                ("10.244.0.5", node1_ready, node1_ready, false, "node-1"),
            ],
        )
    };
    let node2 = NodeView {
        name: "node-2".into(),
        ..node()
    };
    let mut maps1 = FakeMaps::default();
    let mut maps2 = FakeMaps::default();
    let mut state1 = State::new(node(), &maps1);
    let mut state2 = State::new(node2, &maps2);
    listed(&mut state1, vec![lb_service()], vec![on_both(true)]);
    listed(&mut state2, vec![lb_service()], vec![on_both(true)]);
    state1.flush(&mut maps1);
    state2.flush(&mut maps2);
    let both: Vec<IpAddr> = vec![
        "10.250.0.5".parse().expect("literal"),
        "fd00:10:250::5".parse().expect("literal"),
    ];
    // Both nodes serve; "node-1" sorts first and alone answers ARP/NDP.
    assert_eq!(maps1.announced(), both);
    assert!(maps2.announced().is_empty());

    // node-1's endpoint stops being ready: it withdraws, node-2 takes over.
    state1.slice_event(Event::Apply(on_both(false)));
    state2.slice_event(Event::Apply(on_both(false)));
    state1.flush(&mut maps1);
    state2.flush(&mut maps2);
    assert!(maps1.announced().is_empty());
    assert!(maps1.writes.contains(&"withdraw 10.250.0.5".to_owned()));
    assert_eq!(maps2.announced(), both);

    // A ClusterIP Service is never announced, and a restarted agent
    // withdraws what its pinned maps announced for Services now gone.
    let mut pinned = FakeMaps::default();
    pinned.set_announced(both[0], true).expect("fake");
    let mut state = State::new(node(), &pinned);
    listed(
        &mut state,
        vec![service("web", json!({}))],
        vec![on_both(true)],
    );
    state.flush(&mut pinned);
    assert!(pinned.announced().is_empty());
}

fn hostport_pod(
    name: &str,
    host_ip: Option<&str>,
    extra_spec: Value,
) -> k8s_openapi::api::core::v1::Pod {
    let mut port = json!({"containerPort": 80, "hostPort": 8081, "protocol": "TCP"});
    if let Some(ip) = host_ip {
        port["hostIP"] = json!(ip);
    }
    let mut spec = json!({
        "nodeName": "node-1",
        "containers": [{"name": "web", "image": "busybox", "ports": [
            port,
            {"containerPort": 53, "hostPort": 5353, "protocol": "UDP"},
            {"containerPort": 9000},
        ]}],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
        "status": {"phase": "Running", "podIP": "10.244.1.7",
            "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00:10:244:1::7"}]},
    }))
    .expect("a valid Pod")
}

#[test]
fn host_ports_become_local_external_frontends_on_the_node_addresses() {
    use shoal_ebpf_common::{SVC_FLAG_ETP_LOCAL, SVC_FLAG_EXTERNAL};
    let out = hostport::frontends(&hostport_pod("web", None, json!({})), &node());
    assert_eq!(
        out.len(),
        4,
        "TCP 8081 and UDP 5353 on both addresses: {out:?}"
    );
    let t = &out[&fe("172.20.0.11", 8081, Protocol::Tcp)];
    assert_eq!(t.backends, addrs(&["10.244.1.7:80"]));
    assert_eq!(t.flags, SVC_FLAG_EXTERNAL | SVC_FLAG_ETP_LOCAL);
    assert_eq!(
        out[&fe("fd00:172:20::b", 5353, Protocol::Udp)].backends,
        addrs(&["[fd00:10:244:1::7]:53"])
    );

    // hostIP keeps the TCP port to that address only.
    let out = hostport::frontends(
        &hostport_pod("web", Some("fd00:172:20::b"), json!({})),
        &node(),
    );
    assert!(out.contains_key(&fe("fd00:172:20::b", 8081, Protocol::Tcp)));
    assert!(!out.contains_key(&fe("172.20.0.11", 8081, Protocol::Tcp)));
    assert!(out.contains_key(&fe("172.20.0.11", 5353, Protocol::Udp)));
    let out = hostport::frontends(&hostport_pod("web", Some("0.0.0.0"), json!({})), &node());
    assert_eq!(out.len(), 4, "0.0.0.0 is every address");

    // A hostNetwork pod binds the node's ports itself; a finished pod has none.
    let host_net = hostport_pod("web", None, json!({"hostNetwork": true}));
    assert!(hostport::frontends(&host_net, &node()).is_empty());
    let mut done = hostport_pod("web", None, json!({}));
    if let Some(s) = done.status.as_mut() {
        s.phase = Some("Succeeded".into());
    }
    assert!(hostport::frontends(&done, &node()).is_empty());
}

#[test]
fn a_second_pod_on_a_taken_host_port_is_refused_once_and_served_when_the_first_goes() {
    let mut maps = FakeMaps::default();
    let mut state = State::new(node(), &maps);
    state.expect_pods();
    listed(&mut state, vec![], vec![]);
    state.flush(&mut maps);
    assert!(
        !state.is_synced(),
        "the pod list is awaited before the first pass"
    );
    state.pod_event(Event::Init);
    state.pod_event(Event::InitApply(hostport_pod("a", None, json!({}))));
    state.pod_event(Event::InitDone);
    state.flush(&mut maps);
    assert!(state.is_synced());
    assert_eq!(maps.held.len(), 4);

    let mut b = hostport_pod("b", None, json!({}));
    if let Some(s) = b.status.as_mut() {
        s.pod_ip = Some("10.244.1.8".into());
        s.pod_ips =
            serde_json::from_value(json!([{"ip": "10.244.1.8"}, {"ip": "fd00:10:244:1::8"}]))
                .expect("literal");
    }
    state.pod_event(Event::Apply(b.clone()));
    state.flush(&mut maps);
    let conflicts = state.take_conflicts();
    assert_eq!(conflicts.len(), 4, "{conflicts:?}");
    assert!(
        conflicts
            .iter()
            .all(|c| c.pod.1 == "b" && c.holder == "pod default/a")
    );
    assert_eq!(
        maps.held[&fe("172.20.0.11", 8081, Protocol::Tcp)].backends,
        addrs(&["10.244.1.7:80"]),
        "the first pod keeps its port"
    );
    state.retry_failed();
    state.flush(&mut maps);
    assert!(state.take_conflicts().is_empty(), "reported once");

    state.pod_event(Event::Delete(hostport_pod("a", None, json!({}))));
    state.flush(&mut maps);
    state.retry_failed();
    state.flush(&mut maps);
    assert_eq!(
        maps.held[&fe("172.20.0.11", 8081, Protocol::Tcp)].backends,
        addrs(&["10.244.1.8:80"]),
        "the waiting pod gets the port once the holder is gone"
    );

    state.pod_event(Event::Delete(b));
    state.flush(&mut maps);
    assert!(maps.held.is_empty(), "{:?}", maps.held);
}

#[test]
fn after_a_restart_a_host_port_stays_with_the_pod_the_maps_serve() {
    // The maps as the previous agent left them: 8081 and 5353 go to "z".
    let mut z = hostport_pod("z", None, json!({}));
    if let Some(s) = z.status.as_mut() {
        s.pod_ip = Some("10.244.1.9".into());
        s.pod_ips =
            serde_json::from_value(json!([{"ip": "10.244.1.9"}, {"ip": "fd00:10:244:1::9"}]))
                .expect("literal");
    }
    let mut maps = FakeMaps::default();
    for (f, t) in hostport::frontends(&z, &node()) {
        maps.held.insert(f, t);
    }
    let mut state = State::new(node(), &maps);
    state.expect_pods();
    listed(&mut state, vec![], vec![]);
    // "a" (forced onto the node) sorts first but must not take them over.
    state.pod_event(Event::Init);
    state.pod_event(Event::InitApply(hostport_pod("a", None, json!({}))));
    state.pod_event(Event::InitApply(z));
    state.pod_event(Event::InitDone);
    state.flush(&mut maps);
    assert!(maps.writes.is_empty(), "{:?}", maps.writes);
    assert_eq!(
        maps.held[&fe("172.20.0.11", 8081, Protocol::Tcp)].backends,
        addrs(&["10.244.1.9:80"])
    );
    let conflicts = state.take_conflicts();
    assert_eq!(conflicts.len(), 4, "{conflicts:?}");
    assert!(
        conflicts
            .iter()
            .all(|c| c.pod.1 == "a" && c.holder == "pod default/z")
    );
}
