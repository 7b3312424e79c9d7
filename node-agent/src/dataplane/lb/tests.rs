use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    rc::Rc,
};

use super::*;

/// Both maps of one family, shared by the two fake handles, so a snapshot
/// after every single map operation shows exactly what a reader could see.
#[derive(Default, Clone)]
struct Kernel {
    services: BTreeMap<Vec<u8>, LbService>,
    backends: BTreeMap<u32, (Vec<u8>, u16)>,
}

#[derive(Default)]
struct Recorder {
    now: Kernel,
    snapshots: Vec<Kernel>,
    fail_next_put: bool,
}

type Shared = Rc<RefCell<Recorder>>;

struct FakeServices(Shared);
struct FakeBackends(Shared);

fn key_bytes(k: &Lb4Key) -> Vec<u8> {
    let mut v = k.address.to_ne_bytes().to_vec();
    v.extend(k.dport.to_ne_bytes());
    v.extend(k.backend_slot.to_ne_bytes());
    v.push(k.proto);
    v.push(k.generation);
    v
}

fn key6_bytes(k: &Lb6Key) -> Vec<u8> {
    let mut v = k.address.to_vec();
    v.extend(k.dport.to_ne_bytes());
    v.extend(k.backend_slot.to_ne_bytes());
    v.push(k.proto);
    v.push(k.generation);
    v
}

impl Recorder {
    fn put_service(&mut self, k: Vec<u8>, v: LbService) -> Result<(), MapWriteError> {
        if std::mem::take(&mut self.fail_next_put) {
            return Err(MapWriteError("map is full".into()));
        }
        self.now.services.insert(k, v);
        self.snapshots.push(self.now.clone());
        Ok(())
    }
    fn delete_service(&mut self, k: &[u8]) {
        self.now.services.remove(k);
        self.snapshots.push(self.now.clone());
    }
}

impl KvMap<Lb4Key, LbService> for FakeServices {
    fn put(&mut self, key: Lb4Key, value: LbService) -> Result<(), MapWriteError> {
        self.0.borrow_mut().put_service(key_bytes(&key), value)
    }
    fn delete(&mut self, key: &Lb4Key) -> Result<(), MapWriteError> {
        self.0.borrow_mut().delete_service(&key_bytes(key));
        Ok(())
    }
}

impl KvMap<Lb6Key, LbService> for FakeServices {
    fn put(&mut self, key: Lb6Key, value: LbService) -> Result<(), MapWriteError> {
        self.0.borrow_mut().put_service(key6_bytes(&key), value)
    }
    fn delete(&mut self, key: &Lb6Key) -> Result<(), MapWriteError> {
        self.0.borrow_mut().delete_service(&key6_bytes(key));
        Ok(())
    }
}

impl KvMap<u32, Lb4Backend> for FakeBackends {
    fn put(&mut self, key: u32, value: Lb4Backend) -> Result<(), MapWriteError> {
        let r = &mut *self.0.borrow_mut();
        r.now
            .backends
            .insert(key, (value.address.to_ne_bytes().to_vec(), value.port));
        r.snapshots.push(r.now.clone());
        Ok(())
    }
    fn delete(&mut self, key: &u32) -> Result<(), MapWriteError> {
        let r = &mut *self.0.borrow_mut();
        r.now.backends.remove(key);
        r.snapshots.push(r.now.clone());
        Ok(())
    }
}

impl KvMap<u32, Lb6Backend> for FakeBackends {
    fn put(&mut self, key: u32, value: Lb6Backend) -> Result<(), MapWriteError> {
        let r = &mut *self.0.borrow_mut();
        r.now
            .backends
            .insert(key, (value.address.to_vec(), value.port));
        r.snapshots.push(r.now.clone());
        Ok(())
    }
    fn delete(&mut self, key: &u32) -> Result<(), MapWriteError> {
        let r = &mut *self.0.borrow_mut();
        r.now.backends.remove(key);
        r.snapshots.push(r.now.clone());
        Ok(())
    }
}

fn writer4() -> (LbWriter<V4, FakeServices, FakeBackends>, Shared) {
    let rec = Shared::default();
    (
        LbWriter::new(FakeServices(rec.clone()), FakeBackends(rec.clone())),
        rec,
    )
}

fn writer6() -> (LbWriter<V6, FakeServices, FakeBackends>, Shared) {
    let rec = Shared::default();
    (
        LbWriter::new(FakeServices(rec.clone()), FakeBackends(rec.clone())),
        rec,
    )
}

/// What the eBPF program would resolve for every slot of a frontend: the
/// set of backends it can reach, or an error naming what was missing.
fn resolve4(k: &Kernel, fe: Frontend) -> Result<Option<BTreeSet<SocketAddr>>, String> {
    let IpAddr::V4(a) = fe.address else {
        return Err("not v4".into());
    };
    let fkey = V4::key(a, fe.port, fe.protocol.number(), 0, 0);
    let Some(front) = k.services.get(&key_bytes(&fkey)) else {
        return Ok(None);
    };
    let mut set = BTreeSet::new();
    for slot in 1..=front.count {
        let skey = V4::key(a, fe.port, fe.protocol.number(), slot, front.generation);
        let s = k
            .services
            .get(&key_bytes(&skey))
            .ok_or(format!("slot {slot} gen {} missing", front.generation))?;
        let (addr, port) = k
            .backends
            .get(&s.backend_id)
            .ok_or(format!("backend {} missing", s.backend_id))?;
        let octets: [u8; 4] = addr.as_slice().try_into().map_err(|_| "bad addr")?;
        set.insert(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(octets)),
            u16::from_be(*port),
        ));
    }
    Ok(Some(set))
}

fn fe4(port: u16) -> Frontend {
    Frontend {
        address: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
        port,
        protocol: Protocol::Tcp,
    }
}

fn backends(list: &[&str]) -> Vec<SocketAddr> {
    list.iter()
        .map(|s| s.parse().expect("test address"))
        .collect()
}

fn set(list: &[&str]) -> BTreeSet<SocketAddr> {
    backends(list).into_iter().collect()
}

/// Every state a reader could observe during `f` resolves to exactly
/// `before` or `after`, never a mix and never a dangling slot or backend.
fn assert_atomic(
    rec: &Shared,
    fe: Frontend,
    before: Option<BTreeSet<SocketAddr>>,
    after: Option<BTreeSet<SocketAddr>>,
    f: impl FnOnce(),
) {
    rec.borrow_mut().snapshots.clear();
    f();
    let snaps = rec.borrow().snapshots.clone();
    assert!(!snaps.is_empty(), "the update wrote nothing");
    for (i, snap) in snaps.iter().enumerate() {
        let seen = resolve4(snap, fe).unwrap_or_else(|e| panic!("step {i}: reader failed: {e}"));
        assert!(
            seen == before || seen == after,
            "step {i}: reader saw {seen:?}, expected {before:?} or {after:?}"
        );
    }
    let last = resolve4(&rec.borrow().now, fe).expect("final state resolves");
    assert_eq!(last, after, "final state");
}

#[test]
fn new_service_appears_whole() {
    let (mut w, rec) = writer4();
    let b = &["10.244.1.2:8080", "10.244.1.3:8080"];
    assert_atomic(&rec, fe4(80), None, Some(set(b)), || {
        w.upsert(fe4(80), &backends(b)).expect("upsert");
    });
}

#[test]
fn switching_backend_sets_is_atomic_for_readers() {
    let (mut w, rec) = writer4();
    let sets: [&[&str]; 5] = [
        &["10.244.1.2:8080", "10.244.1.3:8080"],
        &["10.244.2.9:8080"],
        &["10.244.1.2:8080", "10.244.2.9:8080", "10.244.3.1:8080"],
        &[],
        &["10.244.1.3:8080", "10.244.1.4:8080"],
    ];
    let mut prev = None;
    for s in sets.iter().chain(sets.iter()) {
        let next = Some(set(s));
        assert_atomic(&rec, fe4(80), prev.clone(), next.clone(), || {
            w.upsert(fe4(80), &backends(s)).expect("upsert");
        });
        prev = next;
    }
}

#[test]
fn unreachable_backends_and_slots_are_deleted_one_update_later() {
    let (mut w, rec) = writer4();
    w.upsert(fe4(80), &backends(&["10.244.1.2:8080", "10.244.1.3:8080"]))
        .expect("first");
    w.upsert(fe4(80), &backends(&["10.244.2.9:8080"]))
        .expect("second");
    // Right after the switch the old backends still exist for in-flight readers.
    assert_eq!(rec.borrow().now.backends.len(), 3);
    w.upsert(fe4(80), &backends(&["10.244.2.9:8080"]))
        .expect("third");
    assert_eq!(rec.borrow().now.backends.len(), 1, "old backends collected");
    // frontend + one live slot + one slot of the inactive generation
    assert_eq!(rec.borrow().now.services.len(), 3);
    assert_eq!(w.backend_count(), 1);
}

#[test]
fn backends_shared_between_services_live_while_referenced() {
    let (mut w, rec) = writer4();
    let shared = &["10.244.1.2:8080"];
    w.upsert(fe4(80), &backends(shared)).expect("a");
    w.upsert(fe4(81), &backends(shared)).expect("b");
    assert_eq!(rec.borrow().now.backends.len(), 1, "one backend entry");
    w.remove(fe4(80)).expect("remove a");
    w.collect_retired(fe4(80)).expect("gc");
    assert_eq!(
        resolve4(&rec.borrow().now, fe4(81)).expect("b resolves"),
        Some(set(shared))
    );
    assert_eq!(resolve4(&rec.borrow().now, fe4(80)).expect("a"), None);
    w.remove(fe4(81)).expect("remove b");
    w.collect_retired(fe4(81)).expect("gc");
    let now = rec.borrow().now.clone();
    assert!(now.services.is_empty(), "left: {:?}", now.services);
    assert!(now.backends.is_empty(), "left: {:?}", now.backends);
}

#[test]
fn backends_that_leave_a_service_are_reported_for_the_conntrack_purge() {
    let (mut w, _rec) = writer4();
    let both = &["10.244.1.2:8080", "10.244.1.3:8080"];
    w.upsert(fe4(80), &backends(both)).expect("a");
    w.upsert(fe4(81), &backends(both)).expect("b");
    assert!(w.take_departed().is_empty(), "nothing left yet");
    let rev_nat = |w: &LbWriter<V4, FakeServices, FakeBackends>, port| {
        w.services
            .get(&(Ipv4Addr::new(10, 96, 0, 1), port, IPPROTO_TCP))
            .map(|s| s.rev_nat_index)
    };
    let (rev80, rev81) = (rev_nat(&w, 80), rev_nat(&w, 81));
    let id_of = |w: &LbWriter<V4, FakeServices, FakeBackends>, addr: &str| {
        let a: SocketAddr = addr.parse().expect("test address");
        let ip = match a.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => unreachable!("IPv4 literal"),
        };
        w.backends.get(&(ip, a.port(), IPPROTO_TCP)).map(|b| b.id)
    };
    let left_id = id_of(&w, both[0]).expect("backend id");
    // .2 leaves service 80 only: one departure, of service 80, and the
    // backend still lives on for service 81.
    w.upsert(fe4(80), &backends(&both[1..])).expect("a shrinks");
    let departed = w.take_departed();
    assert_eq!(
        departed,
        vec![Departed {
            rev_nat_index: rev80.expect("service 80"),
            backend_id: left_id,
            backend: both[0].parse().expect("test address"),
            proto: IPPROTO_TCP,
        }]
    );
    assert!(w.take_departed().is_empty(), "taken once");
    // Removing service 81 reports both of its backends.
    w.remove(fe4(81)).expect("remove b");
    let mut departed = w.take_departed();
    departed.sort();
    assert_eq!(departed.len(), 2);
    assert!(
        departed.iter().all(|d| Some(d.rev_nat_index) == rev81),
        "{departed:?}"
    );
}

#[test]
fn removal_is_atomic_for_readers() {
    let (mut w, rec) = writer4();
    let b = &["10.244.1.2:8080", "10.244.1.3:8080"];
    w.upsert(fe4(80), &backends(b)).expect("upsert");
    assert_atomic(&rec, fe4(80), Some(set(b)), None, || {
        w.remove(fe4(80)).expect("remove");
        w.collect_retired(fe4(80)).expect("gc");
    });
}

#[test]
fn wrong_family_backend_is_refused_and_nothing_changes() {
    let (mut w, rec) = writer4();
    let good = &["10.244.1.2:8080"];
    w.upsert(fe4(80), &backends(good)).expect("upsert");
    let before = rec.borrow().now.clone().services;
    let err = w
        .upsert(
            fe4(80),
            &backends(&["10.244.1.3:8080", "[fd00:10:244::5]:8080"]),
        )
        .expect_err("mixed families");
    let msg = err.to_string();
    assert!(msg.contains("[fd00:10:244::5]:8080"), "{msg}");
    assert!(msg.contains("10.96.0.1:80/TCP"), "{msg}");
    assert_eq!(rec.borrow().now.services, before);
}

#[test]
fn a_failed_update_keeps_the_old_backend_set() {
    let (mut w, rec) = writer4();
    let old = &["10.244.1.2:8080"];
    w.upsert(fe4(80), &backends(old)).expect("upsert");
    rec.borrow_mut().fail_next_put = true;
    let err = w
        .upsert(fe4(80), &backends(&["10.244.9.9:8080"]))
        .expect_err("map full");
    assert!(err.to_string().contains("LB4_SERVICES_V1"), "{err}");
    assert_eq!(
        resolve4(&rec.borrow().now, fe4(80)).expect("resolves"),
        Some(set(old))
    );
    // And the next attempt succeeds and cleans up.
    w.upsert(fe4(80), &backends(&["10.244.9.9:8080"]))
        .expect("retry");
    assert_eq!(
        resolve4(&rec.borrow().now, fe4(80)).expect("resolves"),
        Some(set(&["10.244.9.9:8080"]))
    );
}

#[test]
fn ipv6_services_use_the_v6_maps() {
    let (mut w, rec) = writer6();
    let fe = Frontend {
        address: IpAddr::V6("fd00:10:96::1".parse::<Ipv6Addr>().expect("addr")),
        port: 80,
        protocol: Protocol::Udp,
    };
    w.upsert(fe, &backends(&["[fd00:10:244:1::5]:8080"]))
        .expect("upsert");
    let now = rec.borrow().now.clone();
    assert_eq!(now.services.len(), 2);
    let (addr, port) = now.backends.values().next().expect("a backend");
    assert_eq!(
        addr.as_slice(),
        &"fd00:10:244:1::5".parse::<Ipv6Addr>().expect("a").octets()
    );
    assert_eq!(u16::from_be(*port), 8080);
    let err = w
        .upsert(fe4(80), &backends(&["10.244.1.2:8080"]))
        .expect_err("v4 frontend on the v6 writer");
    assert!(matches!(err, LbError::FamilyMismatch { .. }));
}

/// What a restarted agent reads back from the pinned maps.
type Dump = (Vec<(Lb4Key, LbService)>, Vec<(u32, Lb4Backend)>);

fn dump(rec: &Shared) -> Dump {
    let now = rec.borrow().now.clone();
    let services = now
        .services
        .iter()
        .map(|(k, v)| {
            let key = Lb4Key {
                address: u32::from_ne_bytes([k[0], k[1], k[2], k[3]]),
                dport: u16::from_ne_bytes([k[4], k[5]]),
                backend_slot: u16::from_ne_bytes([k[6], k[7]]),
                proto: k[8],
                generation: k[9],
                pad: [0; 2],
            };
            (key, *v)
        })
        .collect();
    let backends = now
        .backends
        .iter()
        .map(|(id, (addr, port))| {
            let b = Lb4Backend {
                address: u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
                port: *port,
                proto: IPPROTO_TCP,
                flags: 0,
            };
            (*id, b)
        })
        .collect();
    (services, backends)
}

#[test]
fn a_restarted_writer_takes_over_the_pinned_maps() {
    let (mut w, rec) = writer4();
    w.upsert(fe4(80), &backends(&["10.244.1.2:8080", "10.244.1.3:8080"]))
        .expect("a");
    w.upsert(fe4(80), &backends(&["10.244.1.3:8080"]))
        .expect("a again");
    w.upsert(fe4(81), &backends(&["10.244.7.7:9090"]))
        .expect("b");
    w.remove(fe4(81)).expect("remove b");
    drop(w);

    // The agent restarts: a new writer over the same (pinned) maps.
    let (services, backends_in_map) = dump(&rec);
    let mut w: LbWriter<V4, _, _> = LbWriter::restore(
        FakeServices(rec.clone()),
        FakeBackends(rec.clone()),
        services,
        backends_in_map,
    );
    assert_eq!(w.service_count(), 1, "only the live service is taken over");
    let kept = Some(set(&["10.244.1.3:8080"]));
    assert_eq!(resolve4(&rec.borrow().now, fe4(80)).expect("a"), kept);

    // A new service neither reuses a live id nor disturbs the old one, and
    // the first update after the restart deletes what nothing refers to.
    w.upsert(fe4(82), &backends(&["10.244.5.5:8080"]))
        .expect("c");
    assert_eq!(resolve4(&rec.borrow().now, fe4(80)).expect("a"), kept);
    assert_eq!(
        resolve4(&rec.borrow().now, fe4(82)).expect("c"),
        Some(set(&["10.244.5.5:8080"]))
    );
    assert_eq!(resolve4(&rec.borrow().now, fe4(81)).expect("b"), None);
    let now = rec.borrow().now.clone();
    assert_eq!(now.backends.len(), 2, "left: {:?}", now.backends);

    // And switching the restored service is still atomic.
    assert_atomic(&rec, fe4(80), kept, Some(set(&["10.244.1.2:8080"])), || {
        w.upsert(fe4(80), &backends(&["10.244.1.2:8080"]))
            .expect("switch");
    });
}

#[test]
fn the_affinity_timeout_is_recorded_in_the_frontend_and_survives_a_restart() {
    let (mut w, rec) = writer4();
    w.upsert_with_affinity(fe4(80), &backends(&["10.244.1.2:8080"]), 600)
        .expect("upsert");
    let frontend_value = |rec: &Shared| {
        rec.borrow()
            .now
            .services
            .iter()
            .find(|(k, _)| u16::from_ne_bytes([k[6], k[7]]) == BACKEND_SLOT_FRONTEND)
            .map(|(_, v)| *v)
            .expect("a frontend entry")
    };
    assert_eq!(frontend_value(&rec).affinity_timeout, 600);
    drop(w);

    let (services, backends_in_map) = dump(&rec);
    let w: LbWriter<V4, _, _> = LbWriter::restore(
        FakeServices(rec.clone()),
        FakeBackends(rec.clone()),
        services,
        backends_in_map,
    );
    assert_eq!(
        w.programmed(),
        [Programmed {
            frontend: fe4(80),
            backends: backends(&["10.244.1.2:8080"]),
            affinity_timeout: 600,
            flags: 0,
        }],
        "a restarted writer reports what the maps hold"
    );
}

/// The affinity match map, shared with the test.
#[derive(Clone, Default)]
struct FakeMatches(std::sync::Arc<std::sync::Mutex<BTreeSet<LbAffinityMatchKey>>>);

impl KvMap<LbAffinityMatchKey, u32> for FakeMatches {
    fn put(&mut self, key: LbAffinityMatchKey, value: u32) -> Result<(), MapWriteError> {
        assert_eq!(value, AFFINITY_MATCH);
        self.0.lock().expect("lock").insert(key);
        Ok(())
    }
    fn delete(&mut self, key: &LbAffinityMatchKey) -> Result<(), MapWriteError> {
        self.0.lock().expect("lock").remove(key);
        Ok(())
    }
}

impl FakeMatches {
    fn now(&self) -> BTreeSet<LbAffinityMatchKey> {
        self.0.lock().expect("lock").clone()
    }
}

/// The backend id the kernel's backends map holds for `addr`.
fn id_of(rec: &Shared, addr: &str) -> u32 {
    let addr: SocketAddr = addr.parse().expect("test address");
    let IpAddr::V4(ip) = addr.ip() else {
        panic!("v4 only")
    };
    rec.borrow()
        .now
        .backends
        .iter()
        .find(|(_, (a, p))| a.as_slice() == ip.octets() && u16::from_be(*p) == addr.port())
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("{addr} is not in the backends map"))
}

#[test]
fn affinity_match_entries_follow_the_live_backends_of_services_with_affinity() {
    let (mut w, rec) = writer4();
    let matches = FakeMatches::default();
    w.set_affinity_match(Box::new(matches.clone()));
    let (a, b, c) = ("10.244.1.2:8080", "10.244.1.3:8080", "10.244.1.4:8080");
    w.upsert_with_affinity(fe4(80), &backends(&[a, b]), 10_800)
        .expect("80");
    w.upsert_with_affinity(fe4(81), &backends(&[a]), 2)
        .expect("81");
    w.upsert(fe4(82), &backends(&[a, c]))
        .expect("82 without affinity");
    let backend_ids = |m: &BTreeSet<LbAffinityMatchKey>| {
        let mut per_service: BTreeMap<u16, BTreeSet<u32>> = BTreeMap::new();
        for k in m {
            per_service
                .entry(k.rev_nat_index)
                .or_default()
                .insert(k.backend_id);
        }
        per_service.into_values().collect::<Vec<_>>()
    };
    let (ia, ib) = (id_of(&rec, a), id_of(&rec, b));
    let now = matches.now();
    assert_eq!(
        backend_ids(&now),
        [BTreeSet::from([ia, ib]), BTreeSet::from([ia])],
        "one match per backend of each service with affinity, none for 82"
    );
    assert_eq!(
        w.affinity_matches(),
        now.iter().copied().collect::<Vec<_>>()
    );

    // b leaves 80: its affine clients must not go to it any more.
    w.upsert_with_affinity(fe4(80), &backends(&[a, c]), 10_800)
        .expect("80 without b");
    let ic = id_of(&rec, c);
    assert_eq!(
        backend_ids(&matches.now()),
        [BTreeSet::from([ia, ic]), BTreeSet::from([ia])]
    );
    // 81 goes: its reverse-NAT id may serve another service next.
    w.remove(fe4(81)).expect("remove 81");
    assert_eq!(backend_ids(&matches.now()), [BTreeSet::from([ia, ic])]);
    // 80 drops affinity.
    w.upsert(fe4(80), &backends(&[a, c]))
        .expect("80 without affinity");
    assert!(matches.now().is_empty(), "{:?}", matches.now());
    assert!(w.affinity_matches().is_empty());
}
