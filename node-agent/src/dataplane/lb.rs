//! The typed writer of the service load-balancing maps.
//!
//! A service's backend set is switched atomically: the new backend slots
//! are written into the generation that no reader uses, then the frontend
//! (slot 0) is flipped to that generation in one map update. Backends and
//! slots that the switch made unreachable are deleted one update later, so
//! a program that read the old frontend an instant before the flip still
//! finds everything it looks up.

use std::{
    collections::HashMap,
    fmt,
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use shoal_ebpf_common::{
    BACKEND_SLOT_FRONTEND, IPPROTO_TCP, IPPROTO_UDP, LB_GENERATIONS, Lb4Backend, Lb4Key,
    Lb6Backend, Lb6Key, LbAffinityMatchKey, LbService, MAX_BACKENDS_PER_SERVICE,
};

/// A transport protocol a service port speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }

    /// The protocol of an IANA protocol number as the maps store it.
    pub fn from_number(number: u8) -> Option<Protocol> {
        match number {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// A service address: what clients connect or send to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// The service IP (ClusterIP and the like).
    pub address: IpAddr,
    /// The service port.
    pub port: u16,
    /// The protocol of that port.
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.address, self.port),
            self.protocol
        )
    }
}

/// Errors of the map writer. Nothing is half-written when one is returned:
/// the service keeps its previous backend set.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// A backend's family differs from the service's.
    #[error("service {frontend}: backend {backend} is not of the service's address family")]
    FamilyMismatch {
        /// The service.
        frontend: Frontend,
        /// The offending backend.
        backend: SocketAddr,
    },
    /// Too many backends for one service.
    #[error(
        "service {frontend}: {count} backends, at most {MAX_BACKENDS_PER_SERVICE} are supported"
    )]
    TooManyBackends {
        /// The service.
        frontend: Frontend,
        /// How many were given.
        count: usize,
    },
    /// Every reverse-NAT id or backend id is in use.
    #[error("no free {what} id left (the maps hold {limit}); remove unused services")]
    IdsExhausted {
        /// Which id space.
        what: &'static str,
        /// Its size.
        limit: u64,
    },
    /// The kernel refused a map update.
    #[error("updating {map} for service {frontend}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// The service being written.
        frontend: Frontend,
        /// What the kernel said.
        #[source]
        source: MapWriteError,
    },
}

/// A failed map operation, as the map backend reports it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MapWriteError(pub String);

/// One kernel map as the writer needs it. aya's `HashMap` in the agent; an
/// in-memory map in unit tests.
pub trait KvMap<K, V> {
    /// Inserts or replaces one entry (atomic for readers).
    fn put(&mut self, key: K, value: V) -> Result<(), MapWriteError>;
    /// Removes one entry; a missing entry is not an error.
    fn delete(&mut self, key: &K) -> Result<(), MapWriteError>;
}

/// What differs between the IPv4 and IPv6 maps.
pub trait Family {
    /// The address type (`Ipv4Addr` / `Ipv6Addr`).
    type Addr: Copy + Eq + Hash + fmt::Debug;
    /// The services map key.
    type Key: Copy;
    /// The backends map value.
    type Backend: Copy;
    /// Name of the services map, for errors.
    const SERVICES: &'static str;
    /// Name of the backends map, for errors.
    const BACKENDS: &'static str;
    /// Name of the affinity match map, for errors.
    const AFFINITY_MATCH: &'static str;
    /// The family's address, if `ip` is of this family.
    fn addr(ip: IpAddr) -> Option<Self::Addr>;
    /// The address as an `IpAddr`.
    fn ip(addr: Self::Addr) -> IpAddr;
    /// A services map key.
    fn key(addr: Self::Addr, port: u16, proto: u8, slot: u16, generation: u8) -> Self::Key;
    /// A backends map value.
    fn backend(addr: Self::Addr, port: u16, proto: u8) -> Self::Backend;
    /// A services map key's parts: (address, port, proto, slot, generation).
    fn parse_key(key: &Self::Key) -> (Self::Addr, u16, u8, u16, u8);
    /// A backends map value's parts: (address, port, proto).
    fn parse_backend(backend: &Self::Backend) -> (Self::Addr, u16, u8);
}

/// IPv4: `LB4_SERVICES_V1`, `LB4_BACKENDS_V1`.
pub enum V4 {}
/// IPv6: `LB6_SERVICES_V1`, `LB6_BACKENDS_V1`.
pub enum V6 {}

impl Family for V4 {
    type Addr = Ipv4Addr;
    type Key = Lb4Key;
    type Backend = Lb4Backend;
    const SERVICES: &'static str = shoal_ebpf_common::LB4_SERVICES;
    const BACKENDS: &'static str = shoal_ebpf_common::LB4_BACKENDS;
    const AFFINITY_MATCH: &'static str = shoal_ebpf_common::LB4_AFFINITY_MATCH;
    fn addr(ip: IpAddr) -> Option<Ipv4Addr> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
    fn ip(addr: Ipv4Addr) -> IpAddr {
        IpAddr::V4(addr)
    }
    fn key(addr: Ipv4Addr, port: u16, proto: u8, slot: u16, generation: u8) -> Lb4Key {
        Lb4Key {
            address: u32::from_ne_bytes(addr.octets()),
            dport: port.to_be(),
            backend_slot: slot,
            proto,
            generation,
            pad: [0; 2],
        }
    }
    fn backend(addr: Ipv4Addr, port: u16, proto: u8) -> Lb4Backend {
        Lb4Backend {
            address: u32::from_ne_bytes(addr.octets()),
            port: port.to_be(),
            proto,
            flags: 0,
        }
    }
    fn parse_key(k: &Lb4Key) -> (Ipv4Addr, u16, u8, u16, u8) {
        (
            Ipv4Addr::from(k.address.to_ne_bytes()),
            u16::from_be(k.dport),
            k.proto,
            k.backend_slot,
            k.generation,
        )
    }
    fn parse_backend(b: &Lb4Backend) -> (Ipv4Addr, u16, u8) {
        (
            Ipv4Addr::from(b.address.to_ne_bytes()),
            u16::from_be(b.port),
            b.proto,
        )
    }
}

impl Family for V6 {
    type Addr = Ipv6Addr;
    type Key = Lb6Key;
    type Backend = Lb6Backend;
    const SERVICES: &'static str = shoal_ebpf_common::LB6_SERVICES;
    const BACKENDS: &'static str = shoal_ebpf_common::LB6_BACKENDS;
    const AFFINITY_MATCH: &'static str = shoal_ebpf_common::LB6_AFFINITY_MATCH;
    fn addr(ip: IpAddr) -> Option<Ipv6Addr> {
        match ip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
    fn ip(addr: Ipv6Addr) -> IpAddr {
        IpAddr::V6(addr)
    }
    fn key(addr: Ipv6Addr, port: u16, proto: u8, slot: u16, generation: u8) -> Lb6Key {
        Lb6Key {
            address: addr.octets(),
            dport: port.to_be(),
            backend_slot: slot,
            proto,
            generation,
            pad: [0; 2],
        }
    }
    fn backend(addr: Ipv6Addr, port: u16, proto: u8) -> Lb6Backend {
        Lb6Backend {
            address: addr.octets(),
            port: port.to_be(),
            proto,
            flags: 0,
        }
    }
    fn parse_key(k: &Lb6Key) -> (Ipv6Addr, u16, u8, u16, u8) {
        (
            Ipv6Addr::from(k.address),
            u16::from_be(k.dport),
            k.proto,
            k.backend_slot,
            k.generation,
        )
    }
    fn parse_backend(b: &Lb6Backend) -> (Ipv6Addr, u16, u8) {
        (Ipv6Addr::from(b.address), u16::from_be(b.port), b.proto)
    }
}

/// (address, port, protocol number): identifies a frontend or a backend.
type Endpoint<A> = (A, u16, u8);

/// A frontend's backend slots of one generation.
type SlotGroup<A> = (Endpoint<A>, u8);

struct ServiceState<A> {
    rev_nat_index: u16,
    generation: u8,
    /// Backends of the live generation: slot i+1 holds endpoints[i]'s id.
    endpoints: Vec<Endpoint<A>>,
    /// How many slots the inactive generation still holds in the map.
    inactive_slots: u16,
    /// ClientIP session-affinity timeout in seconds, 0 = none.
    affinity_timeout: u32,
    /// The frontend's `SVC_FLAG_*`.
    flags: u8,
}

/// A service as the writer has programmed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Programmed {
    /// Its address.
    pub frontend: Frontend,
    /// The live backends, in slot order.
    pub backends: Vec<SocketAddr>,
    /// ClientIP session-affinity timeout in seconds, 0 = none.
    pub affinity_timeout: u32,
    /// The frontend's `SVC_FLAG_*` (external scope, ETP Local).
    pub flags: u8,
}

/// A backend that left a service: the conntrack entries of the service's
/// flows to it are stale (a UDP client sending from the same port would
/// keep reaching it) and are purged by the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Departed {
    /// The service's reverse-NAT id, as its conntrack entries carry it.
    pub rev_nat_index: u16,
    /// The backend's id, as its conntrack entries carry it.
    pub backend_id: u32,
    /// The backend's address and port.
    pub backend: SocketAddr,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
}

struct BackendState {
    id: u32,
    /// How many services' live slots reference this backend.
    refs: u32,
}

/// Something that became unreachable in an update, deleted one update later.
enum Retired<A> {
    Backend(Endpoint<A>),
    Slot(Endpoint<A>, u16, u8),
}

/// The affinity match map of one family (`LB4_AFFINITY_MATCH_V1` /
/// `LB6_AFFINITY_MATCH_V1`): one entry per backend live in a service with
/// ClientIP affinity; the programs ignore affinity entries without one.
pub type AffinityMatchMap = Box<dyn KvMap<LbAffinityMatchKey, u32> + Send>;

/// The value of an affinity match entry.
const AFFINITY_MATCH: u32 = 1;

/// Writes one family's services and backends maps.
pub struct LbWriter<F: Family, S, B> {
    services_map: S,
    backends_map: B,
    services: HashMap<Endpoint<F::Addr>, ServiceState<F::Addr>>,
    backends: HashMap<Endpoint<F::Addr>, BackendState>,
    free_backend_ids: Vec<u32>,
    next_backend_id: u32,
    free_rev_nat: Vec<u16>,
    next_rev_nat: u16,
    retired: Vec<Retired<F::Addr>>,
    affinity_match: Option<AffinityMatchMap>,
    /// Match entries of backends that left a service with affinity, still
    /// to be deleted (retried with every update until they are).
    unmatched: Vec<LbAffinityMatchKey>,
    /// Backends that left a service since the last [`take_departed`](Self::take_departed).
    departed: Vec<Departed>,
}

impl<F, S, B> LbWriter<F, S, B>
where
    F: Family,
    S: KvMap<F::Key, LbService>,
    B: KvMap<u32, F::Backend>,
{
    /// A writer over empty maps.
    pub fn new(services_map: S, backends_map: B) -> Self {
        Self {
            services_map,
            backends_map,
            services: HashMap::new(),
            backends: HashMap::new(),
            free_backend_ids: Vec::new(),
            // Id 0 means "no backend" in a frontend's backend_id field.
            next_backend_id: 1,
            free_rev_nat: Vec::new(),
            next_rev_nat: 1,
            retired: Vec::new(),
            affinity_match: None,
            unmatched: Vec::new(),
            departed: Vec::new(),
        }
    }

    /// The backends that left a service since the last call, for the
    /// conntrack purge.
    pub fn take_departed(&mut self) -> Vec<Departed> {
        std::mem::take(&mut self.departed)
    }

    /// Records that `eps` left the service of `rev_nat_index` (before
    /// their ids can be released).
    fn depart(&mut self, eps: &[Endpoint<F::Addr>], rev_nat_index: u16) {
        for ep in eps {
            if let Some(b) = self.backends.get(ep) {
                self.departed.push(Departed {
                    rev_nat_index,
                    backend_id: b.id,
                    backend: SocketAddr::new(F::ip(ep.0), ep.1),
                    proto: ep.2,
                });
            }
        }
    }

    /// Has the writer keep `map` in step with the services that have
    /// ClientIP affinity: a backend's match entry exists before a program
    /// can pick it and goes once the backend left the service, so affine
    /// clients of a removed backend are sent elsewhere at once. Without
    /// one (unit tests of the slots), affinity entries are never honoured
    /// by the programs.
    pub fn set_affinity_match(&mut self, map: AffinityMatchMap) {
        self.affinity_match = Some(map);
    }

    /// The match entries the live services need: one per backend of a
    /// service with affinity. After a restart the agent reconciles the
    /// pinned match map against it.
    pub fn affinity_matches(&self) -> Vec<LbAffinityMatchKey> {
        let mut out = Vec::new();
        for state in self.services.values() {
            if state.affinity_timeout != 0 {
                out.extend(self.match_keys(&state.endpoints, state.rev_nat_index));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn match_keys(&self, eps: &[Endpoint<F::Addr>], rev_nat_index: u16) -> Vec<LbAffinityMatchKey> {
        eps.iter()
            .filter_map(|ep| self.backends.get(ep))
            .map(|b| LbAffinityMatchKey {
                backend_id: b.id,
                rev_nat_index,
                pad: 0,
            })
            .collect()
    }

    fn put_matches(
        &mut self,
        keys: &[LbAffinityMatchKey],
        frontend: Frontend,
    ) -> Result<(), LbError> {
        let Some(map) = self.affinity_match.as_mut() else {
            return Ok(());
        };
        for key in keys {
            map.put(*key, AFFINITY_MATCH)
                .map_err(|source| LbError::Map {
                    map: F::AFFINITY_MATCH,
                    frontend,
                    source,
                })?;
        }
        Ok(())
    }

    /// Deletes the match entries queued in `unmatched`; what fails stays
    /// queued.
    fn flush_unmatched(&mut self, frontend: Frontend) -> Result<(), LbError> {
        let Some(map) = self.affinity_match.as_mut() else {
            self.unmatched.clear();
            return Ok(());
        };
        while let Some(key) = self.unmatched.last() {
            map.delete(key).map_err(|source| LbError::Map {
                map: F::AFFINITY_MATCH,
                frontend,
                source,
            })?;
            self.unmatched.pop();
        }
        Ok(())
    }

    /// A writer over maps that already hold entries (pinned maps after an
    /// agent restart): it takes over what is there, so the datapath keeps
    /// serving and later updates neither reuse live ids nor leak entries.
    /// Entries nothing live refers to are retired (deleted with the next
    /// update).
    pub fn restore(
        services_map: S,
        backends_map: B,
        services: impl IntoIterator<Item = (F::Key, LbService)>,
        backends: impl IntoIterator<Item = (u32, F::Backend)>,
    ) -> Self {
        let mut w = Self::new(services_map, backends_map);
        let by_id: HashMap<u32, Endpoint<F::Addr>> = backends
            .into_iter()
            .map(|(id, b)| {
                let (addr, port, proto) = F::parse_backend(&b);
                (id, (addr, port, proto))
            })
            .collect();
        let mut frontends = HashMap::new();
        let mut slots: HashMap<SlotGroup<F::Addr>, HashMap<u16, u32>> = HashMap::new();
        for (key, value) in services {
            let (addr, port, proto, slot, generation) = F::parse_key(&key);
            if slot == BACKEND_SLOT_FRONTEND {
                frontends.insert((addr, port, proto), value);
            } else {
                slots
                    .entry(((addr, port, proto), generation))
                    .or_default()
                    .insert(slot, value.backend_id);
            }
        }
        let mut used_rev_nat = std::collections::HashSet::new();
        for (fe, front) in &frontends {
            let live = slots.remove(&(*fe, front.generation)).unwrap_or_default();
            let mut ids = Vec::new();
            let mut endpoints = Vec::new();
            for slot in 1..=front.count {
                // A live slot or backend that is missing would already fail
                // connects; keep what resolves and let the next update repair.
                if let Some(ep) = live
                    .get(&slot)
                    .and_then(|id| by_id.get(id).map(|ep| (*id, *ep)))
                {
                    ids.push(ep.0);
                    endpoints.push(ep.1);
                }
            }
            let other = (front.generation + 1) % LB_GENERATIONS;
            let inactive = slots.remove(&(*fe, other)).unwrap_or_default();
            let inactive_slots = inactive.keys().copied().max().unwrap_or(0);
            for (id, ep) in ids.iter().zip(&endpoints) {
                let id = *id;
                w.backends
                    .entry(*ep)
                    .or_insert(BackendState { id, refs: 0 })
                    .refs += 1;
            }
            used_rev_nat.insert(front.rev_nat_index);
            w.services.insert(
                *fe,
                ServiceState {
                    rev_nat_index: front.rev_nat_index,
                    generation: front.generation,
                    endpoints,
                    inactive_slots,
                    affinity_timeout: front.affinity_timeout,
                    flags: front.flags,
                },
            );
        }
        // Slots of services that no longer have a frontend.
        for ((fe, generation), orphans) in slots {
            if !w.services.contains_key(&fe) {
                for slot in orphans.keys() {
                    w.retired.push(Retired::Slot(fe, *slot, generation));
                }
            }
        }
        // Backends nothing live refers to; ids stay reserved until deleted.
        for (id, ep) in &by_id {
            if !w.backends.contains_key(ep) {
                w.backends.insert(*ep, BackendState { id: *id, refs: 0 });
                w.retired.push(Retired::Backend(*ep));
            }
        }
        w.next_backend_id = by_id
            .keys()
            .copied()
            .max()
            .map_or(1, |m| m.saturating_add(1));
        w.next_rev_nat = used_rev_nat
            .iter()
            .copied()
            .max()
            .map_or(1, |m| m.saturating_add(1));
        w.free_rev_nat = (1..w.next_rev_nat)
            .filter(|i| !used_rev_nat.contains(i))
            .collect();
        w
    }

    /// How many services are programmed.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// How many distinct backends are programmed (live or awaiting deletion).
    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// Every programmed service with its live backends (after a restart:
    /// what was taken over from the pinned maps).
    pub fn programmed(&self) -> Vec<Programmed> {
        self.services
            .iter()
            .filter_map(|(fe, state)| {
                let frontend = Frontend {
                    address: F::ip(fe.0),
                    port: fe.1,
                    protocol: Protocol::from_number(fe.2)?,
                };
                let backends = state
                    .endpoints
                    .iter()
                    .map(|ep| SocketAddr::new(F::ip(ep.0), ep.1))
                    .collect();
                Some(Programmed {
                    frontend,
                    backends,
                    affinity_timeout: state.affinity_timeout,
                    flags: state.flags,
                })
            })
            .collect()
    }

    /// Sets a service's backend set, switching atomically from the previous
    /// one. An empty set makes connects to the service fail at once.
    pub fn upsert(&mut self, frontend: Frontend, backends: &[SocketAddr]) -> Result<(), LbError> {
        self.upsert_with_affinity(frontend, backends, 0)
    }

    /// [`upsert`](Self::upsert) that also records the service's ClientIP
    /// session-affinity timeout (seconds, 0 = none) in the frontend.
    pub fn upsert_with_affinity(
        &mut self,
        frontend: Frontend,
        backends: &[SocketAddr],
        affinity_timeout: u32,
    ) -> Result<(), LbError> {
        self.upsert_with_flags(frontend, backends, affinity_timeout, 0)
    }

    /// [`upsert_with_affinity`](Self::upsert_with_affinity) that also sets
    /// the frontend's `SVC_FLAG_*` flags (external scope, ETP Local).
    pub fn upsert_with_flags(
        &mut self,
        frontend: Frontend,
        backends: &[SocketAddr],
        affinity_timeout: u32,
        flags: u8,
    ) -> Result<(), LbError> {
        let fe = self.frontend_endpoint(frontend)?;
        let proto = fe.2;
        if backends.len() > usize::from(MAX_BACKENDS_PER_SERVICE) {
            return Err(LbError::TooManyBackends {
                frontend,
                count: backends.len(),
            });
        }
        let mut wanted: Vec<Endpoint<F::Addr>> = Vec::with_capacity(backends.len());
        for b in backends {
            let addr = F::addr(b.ip()).ok_or(LbError::FamilyMismatch {
                frontend,
                backend: *b,
            })?;
            let ep = (addr, b.port(), proto);
            if !wanted.contains(&ep) {
                wanted.push(ep);
            }
        }
        self.collect_retired(frontend)?;

        // 1. Every backend exists in the backends map before a slot names it.
        let mut ids = Vec::with_capacity(wanted.len());
        for ep in &wanted {
            match self.ensure_backend(*ep, frontend) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    self.release_unreferenced(&wanted);
                    return Err(e);
                }
            }
        }
        for ep in &wanted {
            if let Some(b) = self.backends.get_mut(ep) {
                b.refs += 1;
            }
        }

        // 2. Fill the generation no reader uses.
        let (rev_nat_index, generation, old_eps, stale_slots, old_affinity) =
            match self.services.get(&fe) {
                Some(s) => (
                    s.rev_nat_index,
                    (s.generation + 1) % LB_GENERATIONS,
                    s.endpoints.clone(),
                    s.inactive_slots,
                    s.affinity_timeout,
                ),
                None => match self.alloc_rev_nat() {
                    Some(id) => (id, 0, Vec::new(), 0, 0),
                    None => {
                        self.unref(&wanted);
                        return Err(LbError::IdsExhausted {
                            what: "reverse-NAT",
                            limit: u64::from(u16::MAX),
                        });
                    }
                },
            };
        let is_new = !self.services.contains_key(&fe);
        let new_matches: Vec<LbAffinityMatchKey> = if affinity_timeout == 0 {
            Vec::new()
        } else {
            ids.iter()
                .map(|id| LbAffinityMatchKey {
                    backend_id: *id,
                    rev_nat_index,
                    pad: 0,
                })
                .collect()
        };
        let old_matches = if old_affinity == 0 {
            Vec::new()
        } else {
            self.match_keys(&old_eps, rev_nat_index)
        };
        // Matches first: a backend is affine-able before a program can pick it.
        let written = self
            .put_matches(&new_matches, frontend)
            .and_then(|()| self.write_slots(fe, generation, &ids, stale_slots, frontend));

        // 3. Flip the frontend: the one update readers see.
        let flipped = written.and_then(|()| {
            let value = LbService {
                backend_id: 0,
                count: ids.len() as u16,
                rev_nat_index,
                flags,
                generation,
                pad: [0; 2],
                affinity_timeout,
            };
            self.services_map
                .put(F::key(fe.0, fe.1, fe.2, BACKEND_SLOT_FRONTEND, 0), value)
                .map_err(|source| LbError::Map {
                    map: F::SERVICES,
                    frontend,
                    source,
                })
        });
        if let Err(e) = flipped {
            // The old set stays live; the slots we wrote are in the inactive
            // generation and are overwritten by the next attempt.
            self.unref(&wanted);
            // Matches the old set does not need go with the next update.
            self.unmatched.extend(
                new_matches
                    .iter()
                    .filter(|k| !old_matches.contains(k))
                    .copied(),
            );
            if is_new {
                self.free_rev_nat.push(rev_nat_index);
            } else if let Some(s) = self.services.get_mut(&fe) {
                s.inactive_slots = s.inactive_slots.max(ids.len() as u16);
            }
            return Err(e);
        }

        // 4. What the old generation referenced is retired, not deleted.
        let old_slots = old_eps.len() as u16;
        let kept: std::collections::HashSet<&Endpoint<F::Addr>> = wanted.iter().collect();
        let left: Vec<Endpoint<F::Addr>> = old_eps
            .iter()
            .filter(|ep| !kept.contains(ep))
            .copied()
            .collect();
        drop(kept);
        self.services.insert(
            fe,
            ServiceState {
                rev_nat_index,
                generation,
                endpoints: wanted,
                inactive_slots: old_slots,
                affinity_timeout,
                flags,
            },
        );
        self.depart(&left, rev_nat_index);
        self.unref(&old_eps);
        // Backends that left: their affine clients pick anew from now on.
        self.unmatched
            .extend(old_matches.into_iter().filter(|k| !new_matches.contains(k)));
        self.flush_unmatched(frontend)
    }

    /// Removes a service: the frontend goes at once, its slots and
    /// unreferenced backends with the next update.
    pub fn remove(&mut self, frontend: Frontend) -> Result<(), LbError> {
        let fe = self.frontend_endpoint(frontend)?;
        self.collect_retired(frontend)?;
        let Some(state) = self.services.get(&fe) else {
            return Ok(());
        };
        self.services_map
            .delete(&F::key(fe.0, fe.1, fe.2, BACKEND_SLOT_FRONTEND, 0))
            .map_err(|source| LbError::Map {
                map: F::SERVICES,
                frontend,
                source,
            })?;
        let live = state.endpoints.len() as u16;
        let inactive = state.inactive_slots;
        let generation = state.generation;
        let old_eps = state.endpoints.clone();
        if state.affinity_timeout != 0 {
            let keys = self.match_keys(&old_eps, state.rev_nat_index);
            self.unmatched.extend(keys);
        }
        let rev_nat_index = state.rev_nat_index;
        self.free_rev_nat.push(rev_nat_index);
        self.services.remove(&fe);
        self.depart(&old_eps, rev_nat_index);
        for slot in 1..=live {
            self.retired.push(Retired::Slot(fe, slot, generation));
        }
        let other = (generation + 1) % LB_GENERATIONS;
        for slot in 1..=inactive {
            self.retired.push(Retired::Slot(fe, slot, other));
        }
        self.unref(&old_eps);
        // Before the reverse-NAT id can be handed to another service.
        self.flush_unmatched(frontend)
    }

    /// Deletes what earlier updates made unreachable. Called at the start
    /// of every update; call it on a timer when updates are rare.
    pub fn collect_retired(&mut self, frontend: Frontend) -> Result<(), LbError> {
        self.flush_unmatched(frontend)?;
        while let Some(r) = self.retired.pop() {
            let res = match &r {
                Retired::Backend(ep) => match self.backends.get(ep) {
                    Some(b) if b.refs == 0 => {
                        let id = b.id;
                        let res = self
                            .backends_map
                            .delete(&id)
                            .map_err(|source| LbError::Map {
                                map: F::BACKENDS,
                                frontend,
                                source,
                            });
                        if res.is_ok() {
                            self.backends.remove(ep);
                            self.free_backend_ids.push(id);
                        }
                        res
                    }
                    // Referenced again since it was retired.
                    _ => Ok(()),
                },
                Retired::Slot(fe, slot, generation) => {
                    if self.services.contains_key(fe) {
                        // The service came back; its slots are managed again.
                        Ok(())
                    } else {
                        self.services_map
                            .delete(&F::key(fe.0, fe.1, fe.2, *slot, *generation))
                            .map_err(|source| LbError::Map {
                                map: F::SERVICES,
                                frontend,
                                source,
                            })
                    }
                }
            };
            if let Err(e) = res {
                self.retired.push(r);
                return Err(e);
            }
        }
        Ok(())
    }

    fn frontend_endpoint(&self, frontend: Frontend) -> Result<Endpoint<F::Addr>, LbError> {
        let addr = F::addr(frontend.address).ok_or(LbError::FamilyMismatch {
            frontend,
            backend: SocketAddr::new(frontend.address, frontend.port),
        })?;
        Ok((addr, frontend.port, frontend.protocol.number()))
    }

    fn write_slots(
        &mut self,
        fe: Endpoint<F::Addr>,
        generation: u8,
        ids: &[u32],
        stale_slots: u16,
        frontend: Frontend,
    ) -> Result<(), LbError> {
        let map_err = |source| LbError::Map {
            map: F::SERVICES,
            frontend,
            source,
        };
        for (i, id) in ids.iter().enumerate() {
            let slot = i as u16 + 1;
            let value = LbService {
                backend_id: *id,
                ..LbService::default()
            };
            self.services_map
                .put(F::key(fe.0, fe.1, fe.2, slot, generation), value)
                .map_err(map_err)?;
        }
        // Slots this generation held two updates ago, beyond the new count.
        for slot in (ids.len() as u16 + 1)..=stale_slots {
            self.services_map
                .delete(&F::key(fe.0, fe.1, fe.2, slot, generation))
                .map_err(map_err)?;
        }
        Ok(())
    }

    fn ensure_backend(
        &mut self,
        ep: Endpoint<F::Addr>,
        frontend: Frontend,
    ) -> Result<u32, LbError> {
        if let Some(b) = self.backends.get(&ep) {
            return Ok(b.id);
        }
        let id = match self.free_backend_ids.pop() {
            Some(id) => id,
            None => {
                if self.next_backend_id == u32::MAX {
                    return Err(LbError::IdsExhausted {
                        what: "backend",
                        limit: u64::from(u32::MAX),
                    });
                }
                let id = self.next_backend_id;
                self.next_backend_id += 1;
                id
            }
        };
        if let Err(source) = self.backends_map.put(id, F::backend(ep.0, ep.1, ep.2)) {
            self.free_backend_ids.push(id);
            return Err(LbError::Map {
                map: F::BACKENDS,
                frontend,
                source,
            });
        }
        self.backends.insert(ep, BackendState { id, refs: 0 });
        Ok(id)
    }

    fn alloc_rev_nat(&mut self) -> Option<u16> {
        if let Some(id) = self.free_rev_nat.pop() {
            return Some(id);
        }
        if self.next_rev_nat == u16::MAX {
            return None;
        }
        let id = self.next_rev_nat;
        self.next_rev_nat += 1;
        Some(id)
    }

    /// Drops one reference from each backend; those left without any are
    /// retired (deleted with the next update).
    fn unref(&mut self, eps: &[Endpoint<F::Addr>]) {
        for ep in eps {
            if let Some(b) = self.backends.get_mut(ep) {
                b.refs = b.refs.saturating_sub(1);
                if b.refs == 0 {
                    self.retired.push(Retired::Backend(*ep));
                }
            }
        }
    }

    /// After a failed update: backends we created but nobody references.
    fn release_unreferenced(&mut self, eps: &[Endpoint<F::Addr>]) {
        for ep in eps {
            if self.backends.get(ep).is_some_and(|b| b.refs == 0) {
                self.retired.push(Retired::Backend(*ep));
            }
        }
    }
}

#[cfg(test)]
mod tests;
