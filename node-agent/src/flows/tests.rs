use std::net::IpAddr;

use shoal_ebpf_common::flow::{
    FLOW_FAMILY_V4, FLOW_FAMILY_V6, FLOW_INIT_PEER, FLOW_INIT_POD, FlowKey, FlowValue,
};

use super::{
    Filter, Kind, keeps,
    record::{Clock, from_entry},
    to_log,
};

fn key4(pod: [u8; 4], pod_port: u16, peer: [u8; 4], peer_port: u16) -> FlowKey {
    let mut k = FlowKey {
        pod_port: pod_port.to_be(),
        peer_port: peer_port.to_be(),
        proto: shoal_ebpf_common::IPPROTO_TCP,
        family: FLOW_FAMILY_V4,
        ..FlowKey::default()
    };
    k.pod_addr[..4].copy_from_slice(&pod);
    k.peer_addr[..4].copy_from_slice(&peer);
    k
}

fn value(initiator: u8) -> FlowValue {
    FlowValue {
        first_ns: 1_000,
        last_ns: 2_000,
        packets_out: 5,
        bytes_out: 500,
        packets_in: 4,
        bytes_in: 4_000,
        initiator,
        ..FlowValue::default()
    }
}

#[test]
fn the_initiator_is_the_source_whichever_side_the_pod_is() {
    let clock = Clock { offset: 10 };
    let k = key4([10, 244, 1, 5], 40_000, [10, 244, 2, 7], 80);
    let out = from_entry(&k, &value(FLOW_INIT_POD), Kind::EndFin, 0, clock, 0);
    assert_eq!(
        out.source.ip,
        Some("10.244.1.5".parse::<IpAddr>().expect("a valid literal"))
    );
    assert_eq!(out.destination.port, 80);
    assert_eq!((out.bytes_sent, out.bytes_received), (500, 4_000));
    assert!(out.egress);
    assert_eq!((out.start_ns, out.end_ns), (1_010, 2_010));

    let k = key4([10, 244, 2, 7], 80, [10, 244, 1, 5], 40_000);
    let inn = from_entry(&k, &value(FLOW_INIT_PEER), Kind::EndFin, 0, clock, 0);
    assert_eq!(
        inn.source.ip,
        Some("10.244.1.5".parse::<IpAddr>().expect("a valid literal"))
    );
    assert_eq!(inn.source.port, 40_000);
    assert_eq!((inn.bytes_sent, inn.bytes_received), (4_000, 500));
    assert!(!inn.egress);
}

#[test]
fn ipv6_addresses_use_all_sixteen_bytes() {
    let mut k = key4([0; 4], 1, [0; 4], 2);
    k.family = FLOW_FAMILY_V6;
    k.pod_addr = "fd00:10:244:1::5"
        .parse::<std::net::Ipv6Addr>()
        .expect("a valid literal")
        .octets();
    let r = from_entry(
        &k,
        &value(FLOW_INIT_POD),
        Kind::Start,
        0,
        Clock { offset: 0 },
        0,
    );
    assert_eq!(
        r.source.ip,
        Some(
            "fd00:10:244:1::5"
                .parse::<IpAddr>()
                .expect("a valid literal")
        )
    );
    assert_eq!(r.network_type, "ipv6");
}

#[test]
fn a_flow_between_two_pods_is_kept_once() {
    // Seen leaving the client pod: kept.
    assert!(keeps(true, true, true));
    // Seen entering the server pod, opened by a pod: the client's side keeps it.
    assert!(!keeps(false, true, true));
    // Opened from outside the pods: kept where it enters the pod.
    assert!(keeps(false, false, true));
    // A flow the destination's policy dropped: only that node saw it.
    assert!(keeps(false, true, false));
}

#[test]
fn filters_match_either_end() {
    let k = key4([10, 244, 1, 5], 40_000, [10, 244, 2, 7], 80);
    let mut r = from_entry(
        &k,
        &value(FLOW_INIT_POD),
        Kind::EndFin,
        0,
        Clock { offset: 0 },
        0,
    );
    r.destination.pod = Some("web".into());
    r.destination.namespace = Some("shop".into());
    assert!(
        Filter {
            port: Some(80),
            ..Filter::default()
        }
        .matches(&r)
    );
    assert!(
        Filter {
            pod: Some("web".into()),
            ..Filter::default()
        }
        .matches(&r)
    );
    assert!(
        !Filter {
            namespace: Some("other".into()),
            ..Filter::default()
        }
        .matches(&r)
    );
    assert!(
        !Filter {
            verdict: Some("dropped".into()),
            ..Filter::default()
        }
        .matches(&r)
    );
    let line = super::format_line(&r);
    assert!(
        line.contains("10.244.1.5:40000 -> shop/web (10.244.2.7:80) TCP FORWARDED end"),
        "{line}"
    );
}

#[test]
fn log_records_carry_semantic_convention_attributes() {
    let k = key4([10, 244, 1, 5], 40_000, [10, 244, 2, 7], 80);
    let mut r = from_entry(
        &k,
        &value(FLOW_INIT_POD),
        Kind::EndFin,
        0,
        Clock { offset: 0 },
        0,
    );
    r.source.pod = Some("client".into());
    r.source.namespace = Some("shop".into());
    let log = to_log(&r);
    let has = |key: &str| log.attributes.iter().any(|(k, _)| *k == key);
    for key in [
        "network.transport",
        "network.type",
        "source.address",
        "source.port",
        "destination.address",
        "destination.port",
        "k8s.pod.name",
        "k8s.namespace.name",
        "shoal.flow.verdict",
        "shoal.flow.bytes_sent",
    ] {
        assert!(has(key), "{key} missing from {:?}", log.attributes);
    }
}

#[test]
fn ring_items_decode_in_the_common_layout() {
    let k = key4([10, 244, 1, 5], 40_000, [10, 244, 2, 7], 80);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&k.pod_addr);
    bytes.extend_from_slice(&k.peer_addr);
    bytes.extend_from_slice(&k.pod_port.to_ne_bytes());
    bytes.extend_from_slice(&k.peer_port.to_ne_bytes());
    bytes.extend_from_slice(&[k.proto, k.family, 0, 0]);
    let v = value(FLOW_INIT_POD);
    for x in [
        v.first_ns,
        v.last_ns,
        v.packets_out,
        v.bytes_out,
        v.packets_in,
        v.bytes_in,
    ] {
        bytes.extend_from_slice(&x.to_ne_bytes());
    }
    bytes.extend_from_slice(&7u32.to_ne_bytes());
    bytes.extend_from_slice(&[0x1b, 0x19, FLOW_INIT_POD, 0]);
    bytes.extend_from_slice(&[2, 1, 0, 0, 0, 0, 0, 0]);
    let e = super::record::decode(&bytes).expect("a valid literal");
    assert_eq!(e.key, k);
    assert_eq!(
        (e.value.bytes_in, e.value.ifindex, e.value.flags_out),
        (4_000, 7, 0x1b)
    );
    assert_eq!((e.kind, e.dir), (2, 1));
    assert!(super::record::decode(&bytes[..100]).is_none());
}
