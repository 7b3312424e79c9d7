use super::*;
use shoal_ebpf_common::{CT_FLAG_LOCAL_BACKEND, CT_FLAG_SNAT, IPPROTO_UDP};

fn be4(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

const CLIENT: [u8; 4] = [172, 20, 0, 13];
const NODE: [u8; 4] = [172, 20, 0, 11];
const BACKEND: [u8; 4] = [10, 244, 1, 5];

/// A SNATed UDP flow client:40000 → node:30080 → backend:8080, SNAT port
/// 61000: (original key, original value, reply key, reply value).
fn snat_flow(last_seen: u32, replies: u32) -> (Ct4Key, Ct4Value, Ct4Key, Ct4Value) {
    let key = Ct4Key {
        saddr: be4(CLIENT),
        daddr: be4(NODE),
        sport: 40000u16.to_be(),
        dport: 30080u16.to_be(),
        proto: IPPROTO_UDP,
        dir: CT_DIR_ORIGINAL,
        pad: [0; 2],
    };
    let value = Ct4Value {
        to_saddr: be4(NODE),
        to_daddr: be4(BACKEND),
        to_sport: 61000u16.to_be(),
        to_dport: 8080u16.to_be(),
        backend_id: 7,
        rev_nat_index: 3,
        flags: CT_FLAG_SNAT,
        last_seen,
        packets: 1,
        ..Ct4Value::default()
    };
    let rkey = Ct4Key {
        saddr: be4(BACKEND),
        daddr: be4(NODE),
        sport: 8080u16.to_be(),
        dport: 61000u16.to_be(),
        proto: IPPROTO_UDP,
        dir: CT_DIR_REPLY,
        pad: [0; 2],
    };
    let rvalue = Ct4Value {
        to_saddr: be4(NODE),
        to_daddr: be4(CLIENT),
        to_sport: 30080u16.to_be(),
        to_dport: 40000u16.to_be(),
        backend_id: 7,
        rev_nat_index: 3,
        flags: CT_FLAG_SNAT,
        last_seen,
        packets: replies,
        ..Ct4Value::default()
    };
    (key, value, rkey, rvalue)
}

fn departed(rev_nat_index: u16, backend_id: u32, port: u16) -> DepartedSet {
    departed_set(&[Departed {
        rev_nat_index,
        backend_id,
        backend: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(BACKEND)), port),
        proto: IPPROTO_UDP,
    }])
}

#[test]
fn the_reply_key_is_derived_from_the_original_entry() {
    let (key, value, rkey, rvalue) = snat_flow(100, 1);
    let view = F4::view(&key, &value);
    assert!(view.original);
    assert_eq!(view.reply, Some(rkey), "SNAT: reply to the node's port");
    assert_eq!(view.backend, "10.244.1.5:8080".parse().expect("literal"));
    let reply = F4::view(&rkey, &rvalue);
    assert!(!reply.original);
    assert_eq!(reply.backend, view.backend);

    // A local backend: the reply goes to the client itself.
    let local = Ct4Value {
        to_saddr: 0,
        to_sport: 0,
        flags: CT_FLAG_LOCAL_BACKEND,
        ..value
    };
    let r = F4::view(&key, &local)
        .reply
        .expect("an original entry has a reply key");
    assert_eq!((r.daddr, u16::from_be(r.dport)), (be4(CLIENT), 40000));
}

#[test]
fn flows_of_a_departed_backend_are_purged_others_kept() {
    let t = CtTimeouts::default();
    let (key, value, rkey, rvalue) = snat_flow(100, 1);
    let o = F4::view(&key, &value);
    let r = F4::view(&rkey, &rvalue);
    assert_eq!(
        judge(Some(&o), Some(&r), 101, &t, &departed(3, 7, 8080)),
        Verdict::Purged
    );
    // Same backend id, another service (a backend shared by two).
    assert_eq!(
        judge(Some(&o), Some(&r), 101, &t, &departed(4, 7, 8080)),
        Verdict::Keep
    );
    // The id was handed to another backend since.
    assert_eq!(
        judge(Some(&o), Some(&r), 101, &t, &departed(3, 7, 9090)),
        Verdict::Keep
    );
    // A reply entry alone is purged by its own fields.
    assert_eq!(
        judge(None, Some(&r), 101, &t, &departed(3, 7, 8080)),
        Verdict::Purged
    );
}

#[test]
fn timeouts_follow_the_flow_state() {
    let t = CtTimeouts {
        tcp: Duration::from_secs(1000),
        tcp_fin: Duration::from_secs(10),
        tcp_syn: Duration::from_secs(60),
        any: Duration::from_secs(30),
    };
    let none = DepartedSet::new();
    // UDP: idle 30 s is the limit.
    let (key, value, rkey, rvalue) = snat_flow(100, 1);
    let (o, r) = (F4::view(&key, &value), F4::view(&rkey, &rvalue));
    assert_eq!(judge(Some(&o), Some(&r), 130, &t, &none), Verdict::Keep);
    assert_eq!(judge(Some(&o), Some(&r), 131, &t, &none), Verdict::Expired);
    // The newest of both entries counts.
    let fresh = F4::view(
        &rkey,
        &Ct4Value {
            last_seen: 125,
            ..rvalue
        },
    );
    assert_eq!(judge(Some(&o), Some(&fresh), 131, &t, &none), Verdict::Keep);

    // TCP: no answer yet → SYN timeout; answered → established; FIN → 10 s.
    let tcp = |k: Ct4Key| Ct4Key {
        proto: IPPROTO_TCP,
        ..k
    };
    let (tk, trk) = (tcp(key), tcp(rkey));
    let unanswered = F4::view(
        &trk,
        &Ct4Value {
            packets: 0,
            ..rvalue
        },
    );
    let answered = F4::view(&trk, &rvalue);
    let o = F4::view(&tk, &value);
    assert_eq!(
        judge(Some(&o), Some(&unanswered), 161, &t, &none),
        Verdict::Expired
    );
    assert_eq!(
        judge(Some(&o), Some(&answered), 161, &t, &none),
        Verdict::Keep
    );
    assert_eq!(
        judge(Some(&o), Some(&answered), 1101, &t, &none),
        Verdict::Expired
    );
    let closing = F4::view(
        &tk,
        &Ct4Value {
            flags: value.flags | CT_FLAG_CLOSING,
            ..value
        },
    );
    assert_eq!(
        judge(Some(&closing), Some(&answered), 111, &t, &none),
        Verdict::Expired
    );
    assert_eq!(
        judge(Some(&closing), Some(&answered), 110, &t, &none),
        Verdict::Keep
    );
}

#[test]
fn cilium_like_defaults() {
    let t = CtTimeouts::default();
    assert_eq!(t.of(IPPROTO_TCP, false, true), Duration::from_secs(21_600));
    assert_eq!(t.of(IPPROTO_TCP, true, true), Duration::from_secs(10));
    assert_eq!(t.of(IPPROTO_TCP, false, false), Duration::from_secs(60));
    assert_eq!(t.of(IPPROTO_UDP, false, true), Duration::from_secs(60));
}
