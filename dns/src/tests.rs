//! Unit tests: a view built in code, queried through `lookup` and through a
//! real server on loopback with hickory's wire format.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType},
};
use k8s_openapi::api::{core::v1::Pod, core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::json;
use tokio::net::UdpSocket;

use crate::{ClusterView, Config, Lookup, Server, WatchedKind, config::parse_resolv_conf};

fn service(ns: &str, name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    }))
    .expect("a valid Service")
}

fn slice(ns: &str, name: &str, svc: &str, family: &str, body: serde_json::Value) -> EndpointSlice {
    let mut v = json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": family,
    });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), body.as_object()) {
        obj.extend(extra.clone());
    }
    serde_json::from_value(v).expect("a valid EndpointSlice")
}

fn pod(ns: &str, name: &str, ips: &[&str]) -> Pod {
    let ips: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "status": {"podIP": ips.first().and_then(|v| v.get("ip")).cloned(), "podIPs": ips},
    }))
    .expect("a valid Pod")
}

fn view() -> ClusterView {
    let v = ClusterView::new("cluster.local", 5).expect("a valid domain");
    for k in [
        WatchedKind::Services,
        WatchedKind::EndpointSlices,
        WatchedKind::Pods,
    ] {
        v.mark_synced(k);
    }
    v
}

/// The answers' data as text, sorted.
fn data(l: &Lookup) -> Vec<String> {
    match l {
        Lookup::Records { answers, .. } => {
            let mut v: Vec<String> = answers.iter().map(|r| r.data().to_string()).collect();
            v.sort();
            v
        }
        other => panic!("expected records, got {other:?}"),
    }
}

fn dual_stack_web(v: &ClusterView) {
    v.apply_service(&service(
        "default",
        "web",
        json!({
            "clusterIP": "10.96.0.20",
            "clusterIPs": ["10.96.0.20", "fd00:10:96::14"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        }),
    ));
}

#[test]
fn a_cluster_ip_service_answers_a_and_aaaa_per_family_with_the_ttl() {
    let v = view();
    dual_stack_web(&v);
    let a = v.lookup("web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&a), ["10.96.0.20"]);
    let aaaa = v.lookup("web.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(data(&aaaa), ["fd00:10:96::14"]);
    if let Lookup::Records { answers, .. } = a {
        assert_eq!(answers[0].ttl(), 5);
        assert_eq!(
            answers[0].name().to_ascii(),
            "web.default.svc.cluster.local."
        );
    }
    // A single-stack service has no AAAA: the name exists, so NODATA.
    v.apply_service(&service(
        "default",
        "v4only",
        json!({"clusterIP": "10.96.0.21", "clusterIPs": ["10.96.0.21"]}),
    ));
    assert_eq!(
        v.lookup("v4only.default.svc.cluster.local.", RecordType::AAAA),
        Lookup::NoData
    );
    assert_eq!(
        v.lookup("v4only.default.svc.cluster.local.", RecordType::TXT),
        Lookup::NoData
    );
}

#[test]
fn srv_names_each_named_port_with_the_service_as_target_and_its_addresses_as_additionals() {
    let v = view();
    dual_stack_web(&v);
    let srv = v.lookup("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(data(&srv), ["0 100 80 web.default.svc.cluster.local."]);
    let Lookup::Records { additionals, .. } = srv else {
        panic!("SRV records expected");
    };
    let mut extra: Vec<String> = additionals.iter().map(|r| r.data().to_string()).collect();
    extra.sort();
    assert_eq!(extra, ["10.96.0.20", "fd00:10:96::14"]);
    assert_eq!(
        data(&v.lookup("_dns._udp.web.default.svc.cluster.local.", RecordType::SRV)),
        ["0 100 53 web.default.svc.cluster.local."]
    );
    // The protocol label exists (NODATA); a port that is not there does not (NXDOMAIN).
    assert_eq!(
        v.lookup("_tcp.web.default.svc.cluster.local.", RecordType::SRV),
        Lookup::NoData
    );
    assert_eq!(
        v.lookup("_grpc._tcp.web.default.svc.cluster.local.", RecordType::SRV),
        Lookup::NxDomain
    );
}

fn headless_db(v: &ClusterView) {
    v.apply_service(&service(
        "data",
        "db",
        json!({"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"name": "pg", "port": 5432}]}),
    ));
    v.apply_endpoint_slice(&slice(
        "data",
        "db-v4",
        "db",
        "IPv4",
        json!({
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.6"], "conditions": {}},
                {"addresses": ["10.244.3.7"], "hostname": "db-2", "conditions": {"ready": false}},
            ],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        }),
    ));
    v.apply_endpoint_slice(&slice(
        "data",
        "db-v6",
        "db",
        "IPv6",
        json!({
            "endpoints": [{"addresses": ["fd00:10:244:1::5"], "hostname": "db-0"}],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        }),
    ));
}

#[test]
fn a_headless_service_answers_its_ready_endpoints_and_their_hostnames() {
    let v = view();
    headless_db(&v);
    assert_eq!(
        data(&v.lookup("db.data.svc.cluster.local.", RecordType::A)),
        ["10.244.1.5", "10.244.2.6"],
        "the unready endpoint is left out; an unset ready counts as ready"
    );
    assert_eq!(
        data(&v.lookup("db.data.svc.cluster.local.", RecordType::AAAA)),
        ["fd00:10:244:1::5"]
    );
    assert_eq!(
        data(&v.lookup("db-0.db.data.svc.cluster.local.", RecordType::A)),
        ["10.244.1.5"]
    );
    assert_eq!(
        data(&v.lookup("db-0.db.data.svc.cluster.local.", RecordType::AAAA)),
        ["fd00:10:244:1::5"]
    );
    assert_eq!(
        data(&v.lookup("10-244-2-6.db.data.svc.cluster.local.", RecordType::A)),
        ["10.244.2.6"]
    );
    assert_eq!(
        v.lookup("db-2.db.data.svc.cluster.local.", RecordType::A),
        Lookup::NxDomain
    );
    let mut srv = data(&v.lookup("_pg._tcp.db.data.svc.cluster.local.", RecordType::SRV));
    srv.sort();
    assert_eq!(
        srv,
        [
            "0 100 5432 10-244-2-6.db.data.svc.cluster.local.",
            "0 100 5432 db-0.db.data.svc.cluster.local.",
        ]
    );
    // The endpoint turns unready: it leaves the answer at once.
    v.apply_endpoint_slice(&slice(
        "data",
        "db-v4",
        "db",
        "IPv4",
        json!({
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": false}},
                {"addresses": ["10.244.2.6"], "conditions": {}},
            ],
        }),
    ));
    assert_eq!(
        data(&v.lookup("db.data.svc.cluster.local.", RecordType::A)),
        ["10.244.2.6"]
    );
    // publishNotReadyAddresses brings unready endpoints back.
    v.apply_service(&service(
        "data",
        "db",
        json!({"clusterIP": "None", "publishNotReadyAddresses": true}),
    ));
    assert_eq!(
        data(&v.lookup("db.data.svc.cluster.local.", RecordType::A)),
        ["10.244.1.5", "10.244.2.6"]
    );
    // Slices gone: the service still exists, with nothing to answer.
    v.delete_endpoint_slice("data", "db-v4");
    v.delete_endpoint_slice("data", "db-v6");
    assert_eq!(
        v.lookup("db.data.svc.cluster.local.", RecordType::A),
        Lookup::NoData
    );
    assert_eq!(
        v.lookup("db-0.db.data.svc.cluster.local.", RecordType::A),
        Lookup::NxDomain
    );
}

#[test]
fn an_external_name_service_is_a_cname_for_every_type() {
    let v = view();
    v.apply_service(&service(
        "default",
        "ext",
        json!({"type": "ExternalName", "externalName": "db.example.org"}),
    ));
    for t in [
        RecordType::A,
        RecordType::AAAA,
        RecordType::CNAME,
        RecordType::TXT,
    ] {
        assert_eq!(
            data(&v.lookup("ext.default.svc.cluster.local.", t)),
            ["db.example.org."],
            "{t}"
        );
    }
}

#[test]
fn pod_records_exist_for_pods_the_view_knows_in_both_families() {
    let v = view();
    v.apply_pod(&pod("default", "p", &["10.244.1.9", "fd00:10:244:1::9"]));
    assert_eq!(
        data(&v.lookup("10-244-1-9.default.pod.cluster.local.", RecordType::A)),
        ["10.244.1.9"]
    );
    assert_eq!(
        data(&v.lookup(
            "fd00-10-244-1--9.default.pod.cluster.local.",
            RecordType::AAAA
        )),
        ["fd00:10:244:1::9"]
    );
    // The fully written IPv6 form names the same pod.
    assert_eq!(
        data(&v.lookup(
            "fd00-0010-0244-0001-0000-0000-0000-0009.default.pod.cluster.local.",
            RecordType::AAAA
        )),
        ["fd00:10:244:1::9"]
    );
    assert_eq!(
        v.lookup("10-244-1-9.default.pod.cluster.local.", RecordType::AAAA),
        Lookup::NoData
    );
    assert_eq!(
        v.lookup("10-244-1-9.other.pod.cluster.local.", RecordType::A),
        Lookup::NxDomain,
        "another namespace has no such pod"
    );
    assert_eq!(
        v.lookup("10-244-1-10.default.pod.cluster.local.", RecordType::A),
        Lookup::NxDomain
    );
    assert_eq!(
        v.lookup("default.pod.cluster.local.", RecordType::A),
        Lookup::NoData
    );
    v.delete_pod("default", "p");
    assert_eq!(
        v.lookup("10-244-1-9.default.pod.cluster.local.", RecordType::A),
        Lookup::NxDomain
    );
}

fn ptr(v: &ClusterView, ip: &str) -> Option<String> {
    let ip: IpAddr = ip.parse().expect("an address");
    let owner = Name::from_str("x.arpa.").expect("a name");
    v.reverse(&owner, ip).map(|r| r.data().to_string())
}

#[test]
fn ptr_names_service_endpoint_and_pod_addresses_in_both_families() {
    let v = view();
    dual_stack_web(&v);
    headless_db(&v);
    v.apply_pod(&pod("data", "db-0", &["10.244.1.5", "fd00:10:244:1::5"]));
    v.apply_pod(&pod("default", "lone", &["10.244.4.4", "fd00:10:244:4::4"]));
    assert_eq!(
        ptr(&v, "10.96.0.20").as_deref(),
        Some("web.default.svc.cluster.local.")
    );
    assert_eq!(
        ptr(&v, "fd00:10:96::14").as_deref(),
        Some("web.default.svc.cluster.local.")
    );
    // A pod behind a headless service is named by its endpoint hostname first.
    assert_eq!(
        ptr(&v, "10.244.1.5").as_deref(),
        Some("db-0.db.data.svc.cluster.local.")
    );
    assert_eq!(
        ptr(&v, "fd00:10:244:1::5").as_deref(),
        Some("db-0.db.data.svc.cluster.local.")
    );
    assert_eq!(
        ptr(&v, "10.244.4.4").as_deref(),
        Some("10-244-4-4.default.pod.cluster.local.")
    );
    assert_eq!(
        ptr(&v, "fd00:10:244:4::4").as_deref(),
        Some("fd00-10-244-4--4.default.pod.cluster.local.")
    );
    assert_eq!(ptr(&v, "10.1.2.3"), None);
    v.delete_service("default", "web");
    assert_eq!(ptr(&v, "10.96.0.20"), None);
    assert_eq!(
        crate::reverse_ip("20.0.96.10.in-addr.arpa."),
        Some("10.96.0.20".parse().expect("an address"))
    );
    assert_eq!(
        crate::reverse_ip(
            "4.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa."
        ),
        Some("fd00:10:96::14".parse().expect("an address"))
    );
    assert_eq!(crate::reverse_ip("0.96.10.in-addr.arpa."), None);
}

#[test]
fn nxdomain_and_nodata_follow_what_exists() {
    let v = view();
    dual_stack_web(&v);
    // The domain, `svc`, and a namespace with services exist; nothing else does.
    assert!(matches!(
        v.lookup("cluster.local.", RecordType::SOA),
        Lookup::Records { .. }
    ));
    assert_eq!(v.lookup("cluster.local.", RecordType::A), Lookup::NoData);
    assert_eq!(
        v.lookup("svc.cluster.local.", RecordType::A),
        Lookup::NoData
    );
    assert_eq!(
        v.lookup("default.svc.cluster.local.", RecordType::A),
        Lookup::NoData
    );
    assert_eq!(
        v.lookup("nope.svc.cluster.local.", RecordType::A),
        Lookup::NxDomain
    );
    assert_eq!(
        v.lookup("nope.default.svc.cluster.local.", RecordType::A),
        Lookup::NxDomain
    );
    // A search-path expansion of an outside name (ndots 5) is answered here, negatively.
    assert_eq!(
        v.lookup("example.com.default.svc.cluster.local.", RecordType::A),
        Lookup::NxDomain
    );
    v.delete_service("default", "web");
    assert_eq!(
        v.lookup("web.default.svc.cluster.local.", RecordType::A),
        Lookup::NxDomain
    );
    assert_eq!(
        v.lookup("default.svc.cluster.local.", RecordType::A),
        Lookup::NxDomain,
        "the namespace label goes with its last service"
    );
    assert!(v.is_empty());
}

#[test]
fn a_relist_drops_what_is_gone() {
    let v = view();
    dual_stack_web(&v);
    v.replace_services(&[service(
        "default",
        "api",
        json!({"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30"]}),
    )]);
    assert_eq!(
        v.lookup("web.default.svc.cluster.local.", RecordType::A),
        Lookup::NxDomain
    );
    assert_eq!(
        data(&v.lookup("api.default.svc.cluster.local.", RecordType::A)),
        ["10.96.0.30"]
    );
}

#[test]
fn names_and_resolv_conf_parse() {
    assert_eq!(
        crate::dashed("10.244.1.5".parse().expect("ip")),
        "10-244-1-5"
    );
    assert_eq!(
        crate::dashed("fd00:10:244::5".parse().expect("ip")),
        "fd00-10-244--5"
    );
    assert_eq!(
        crate::undashed("fd00-10-244--5"),
        "fd00:10:244::5".parse().ok()
    );
    assert_eq!(crate::undashed("10-244-1"), None);
    assert_eq!(crate::undashed("db-0"), None);
    let ups = parse_resolv_conf(
        "# comment\nsearch x\nnameserver 10.0.0.2\nnameserver fd00::53\nnameserver fe80::1%eth0\nnameserver bogus\n",
    );
    assert_eq!(
        ups,
        [
            "10.0.0.2:53".parse::<SocketAddr>().expect("addr"),
            "[fd00::53]:53".parse().expect("addr"),
        ]
    );
    assert!(ClusterView::new("", 5).is_err());
}

/// A server on loopback over `v`, with no upstreams.
async fn serve(v: ClusterView) -> (SocketAddr, std::sync::Arc<crate::Metrics>) {
    let config = Config {
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        udp_sockets: 1,
        ..Config::default()
    };
    let server = Server::bind(config, v).await.expect("binds on loopback");
    let addr = server.local_addrs()[0];
    let metrics = server.metrics();
    tokio::spawn(server.serve(std::future::pending()));
    (addr, metrics)
}

async fn ask(addr: SocketAddr, msg: &Message) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    let bytes = msg.to_vec().expect("encodes");
    sock.send_to(&bytes, addr).await.expect("sends");
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("an answer in 5 s")
        .expect("receives");
    Message::from_vec(&buf[..n]).expect("a DNS message")
}

fn question(name: &str, t: RecordType, edns: bool) -> Message {
    let mut m = Message::new();
    m.set_id(7)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_str(name).expect("a name"), t));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m
}

#[tokio::test]
async fn over_udp_negative_answers_carry_the_soa_and_big_answers_truncate() {
    let v = view();
    dual_stack_web(&v);
    v.apply_service(&service("big", "many", json!({"clusterIP": "None"})));
    let endpoints: Vec<_> = (0..100)
        .map(|i| json!({"addresses": [format!("10.244.7.{i}")]}))
        .collect();
    v.apply_endpoint_slice(&slice(
        "big",
        "many-1",
        "many",
        "IPv4",
        json!({"endpoints": endpoints}),
    ));
    let (addr, metrics) = serve(v).await;

    let r = ask(
        addr,
        &question("web.default.svc.cluster.local.", RecordType::A, true),
    )
    .await;
    assert_eq!(r.response_code(), ResponseCode::NoError);
    assert!(r.authoritative() && r.recursion_available());
    assert_eq!(r.answers().len(), 1);
    assert!(r.extensions().is_some(), "EDNS answered with EDNS");

    let r = ask(
        addr,
        &question("nope.default.svc.cluster.local.", RecordType::A, true),
    )
    .await;
    assert_eq!(r.response_code(), ResponseCode::NXDomain);
    assert!(r.answers().is_empty());
    let soa: Vec<&Record> = r.name_servers().iter().collect();
    assert_eq!(soa.len(), 1);
    assert!(matches!(soa[0].data(), RData::SOA(_)));
    assert_eq!(soa[0].ttl(), 5);

    let r = ask(
        addr,
        &question("web.default.svc.cluster.local.", RecordType::MX, false),
    )
    .await;
    assert_eq!(r.response_code(), ResponseCode::NoError);
    assert!(r.answers().is_empty());
    assert_eq!(r.name_servers().len(), 1, "NODATA carries the SOA too");

    // 100 addresses: over 512 bytes without EDNS, over 1232 with it.
    let r = ask(
        addr,
        &question("many.big.svc.cluster.local.", RecordType::A, false),
    )
    .await;
    assert!(r.truncated(), "no EDNS: truncated at 512 bytes");
    let r = ask(
        addr,
        &question("many.big.svc.cluster.local.", RecordType::A, true),
    )
    .await;
    assert!(r.truncated(), "EDNS 1232: still too big");

    let mut chaos = question("version.bind.", RecordType::TXT, false);
    chaos.queries_mut()[0].set_query_class(DNSClass::CH);
    assert_eq!(
        ask(addr, &chaos).await.response_code(),
        ResponseCode::Refused
    );

    let mut future = question("web.default.svc.cluster.local.", RecordType::A, true);
    if let Some(e) = future.extensions_mut() {
        e.set_version(1);
    }
    let r = ask(addr, &future).await;
    // BADVERS and BADSIG share code 16; hickory decodes it as BADSIG.
    assert_eq!(
        u16::from(r.response_code()),
        u16::from(ResponseCode::BADVERS)
    );

    // Outside the domain with no upstream configured: refused, not forwarded.
    let r = ask(addr, &question("example.com.", RecordType::A, true)).await;
    assert_eq!(r.response_code(), ResponseCode::Refused);

    assert_eq!(metrics.queries("A", "NXDOMAIN"), 1);
    let text = metrics.render();
    assert!(
        text.contains("shoal_dns_queries_total{type=\"A\",rcode=\"NXDOMAIN\"} 1"),
        "{text}"
    );
    assert!(text.contains("shoal_dns_request_duration_seconds_count"));
}

#[tokio::test]
async fn before_the_first_list_cluster_names_fail_so_clients_retry() {
    let v = ClusterView::new("cluster.local", 5).expect("a valid domain");
    let (addr, _) = serve(v.clone()).await;
    let r = ask(
        addr,
        &question("web.default.svc.cluster.local.", RecordType::A, true),
    )
    .await;
    assert_eq!(r.response_code(), ResponseCode::ServFail);
    for k in [
        WatchedKind::Services,
        WatchedKind::EndpointSlices,
        WatchedKind::Pods,
    ] {
        v.mark_synced(k);
    }
    v.wait_synced().await;
    let r = ask(
        addr,
        &question("web.default.svc.cluster.local.", RecordType::A, true),
    )
    .await;
    assert_eq!(r.response_code(), ResponseCode::NXDomain);
}
