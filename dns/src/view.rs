//! The cluster view: Services, EndpointSlices and Pods reduced to DNS
//! records, kept in memory so queries never wait on the API.
//!
//! Writers (the watch task, or tests building a view in code) hold a mutex
//! over the Kubernetes-side state and recompute the records of one Service
//! at a time; readers take a read lock over the record index only.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use hickory_proto::rr::{
    Name, RData, Record, RecordType,
    rdata::{A, AAAA, CNAME, PTR, SOA, SRV},
};
use k8s_openapi::api::{core::v1::Pod, core::v1::Service, discovery::v1::EndpointSlice};
use tokio::sync::watch;

use crate::Error;

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the view knows about a name in the cluster domain.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Records of the asked type (or a CNAME), with records for the additional section.
    Records {
        /// The answer section.
        answers: Vec<Record>,
        /// The additional section (addresses of SRV targets).
        additionals: Vec<Record>,
    },
    /// The name exists but holds nothing of that type (NOERROR, no answers).
    NoData,
    /// The name does not exist.
    NxDomain,
}

/// A Service reduced to what DNS needs.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName(Name),
}

#[derive(Debug, Clone, PartialEq)]
struct Port {
    name: String,
    protocol: String,
    port: u16,
}

#[derive(Debug, Clone, PartialEq)]
struct Svc {
    kind: Kind,
    ports: Vec<Port>,
    publish_not_ready: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Endpoint {
    addresses: Vec<IpAddr>,
    hostname: Option<String>,
    ready: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Slice {
    service: String,
    endpoints: Vec<Endpoint>,
    ports: Vec<Port>,
}

/// Object keys: (namespace, name).
type Key = (String, String);

/// The Kubernetes side, only touched by writers.
#[derive(Default)]
struct Objects {
    services: HashMap<Key, Svc>,
    slices: HashMap<Key, Slice>,
    /// (namespace, service) → slice names.
    slices_of: HashMap<Key, BTreeSet<String>>,
    pods: HashMap<Key, Vec<IpAddr>>,
    /// Names and reverse entries each Service put in the index, to take them out again.
    published: HashMap<Key, (Vec<String>, Vec<IpAddr>)>,
}

/// PTR priority: a Service's own address names the Service first.
const PTR_CLUSTER_IP: u8 = 0;
const PTR_ENDPOINT: u8 = 1;

/// What readers see.
#[derive(Default)]
struct Index {
    /// Lowercase FQDN (with the final dot) → its records, every type.
    names: HashMap<String, Arc<Vec<Record>>>,
    /// Lowercase FQDN → how many names below it exist (empty non-terminals answer NODATA).
    below: HashMap<String, u32>,
    /// Address → (priority, owner) → name for PTR answers.
    ptr: HashMap<IpAddr, BTreeMap<(u8, Key), Name>>,
    /// Namespace → pod address → how many pods have it (hostNetwork pods share one).
    pod_ips: HashMap<String, HashMap<IpAddr, u32>>,
    /// Address → pods with it, for PTR answers of pod addresses.
    pods_by_ip: HashMap<IpAddr, BTreeSet<Key>>,
}

struct Inner {
    ttl: u32,
    /// `cluster.local.` (lowercase, final dot).
    apex: String,
    /// `.cluster.local.`, to test suffixes without allocating.
    dot_apex: String,
    apex_name: Name,
    soa: Record,
    index: RwLock<Index>,
    objects: Mutex<Objects>,
    /// Which kinds have been listed once (services, slices, pods).
    synced: watch::Sender<[bool; 3]>,
}

/// The in-memory view of the cluster that answers queries; cheap to clone
/// (clones share one view).
#[derive(Clone)]
pub struct ClusterView {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterView")
            .field("domain", &self.inner.apex)
            .finish_non_exhaustive()
    }
}

/// The kinds the view is fed, for [`ClusterView::mark_synced`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind3 {
    /// Services.
    Services = 0,
    /// EndpointSlices.
    EndpointSlices = 1,
    /// Pods.
    Pods = 2,
}

impl ClusterView {
    /// An empty view of `domain` whose records carry `ttl` seconds.
    pub fn new(domain: &str, ttl: u32) -> Result<Self, Error> {
        let trimmed = domain.trim_end_matches('.').to_ascii_lowercase();
        let apex_name = Name::from_str(&format!("{trimmed}.")).map_err(|e| Error::Domain {
            domain: domain.to_owned(),
            reason: e.to_string(),
        })?;
        if trimmed.is_empty() {
            return Err(Error::Domain {
                domain: domain.to_owned(),
                reason: "the cluster domain is empty".to_owned(),
            });
        }
        let apex = format!("{trimmed}.");
        let ns = Name::from_str(&format!("ns.dns.{apex}")).map_err(|e| Error::Domain {
            domain: domain.to_owned(),
            reason: e.to_string(),
        })?;
        let mbox = Name::from_str(&format!("hostmaster.{apex}")).map_err(|e| Error::Domain {
            domain: domain.to_owned(),
            reason: e.to_string(),
        })?;
        // Refresh, retry and expire as CoreDNS's kubernetes plugin sets them;
        // the minimum is the TTL so negative answers are cached no longer than records.
        let soa = Record::from_rdata(
            apex_name.clone(),
            ttl,
            RData::SOA(SOA::new(ns, mbox, 1, 7200, 1800, 86400, ttl)),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                ttl,
                dot_apex: format!(".{apex}"),
                apex,
                apex_name,
                soa,
                index: RwLock::new(Index::default()),
                objects: Mutex::new(Objects::default()),
                synced: watch::Sender::new([false; 3]),
            }),
        })
    }

    /// The cluster domain as a name (`cluster.local.`).
    pub fn domain(&self) -> &Name {
        &self.inner.apex_name
    }

    /// The zone's SOA record, for the authority section of negative answers.
    pub fn soa(&self) -> &Record {
        &self.inner.soa
    }

    /// Whether every kind has been listed once; before that a missing name may only be unseen.
    pub fn is_synced(&self) -> bool {
        self.inner.synced.borrow().iter().all(|s| *s)
    }

    /// Waits until every kind has been listed once.
    pub async fn wait_synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        // The sender lives in `inner`, which `self` keeps alive, so this only ends when synced.
        let _ = rx.wait_for(|s| s.iter().all(|s| *s)).await;
    }

    /// Records that one kind has been listed in full.
    pub fn mark_synced(&self, kind: Kind3) {
        self.inner.synced.send_modify(|s| s[kind as usize] = true);
    }

    fn objects(&self) -> MutexGuard<'_, Objects> {
        // A writer that panicked left consistent data behind (each update is
        // applied whole under the index lock), so a poisoned lock is still usable.
        self.inner.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.inner.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.inner.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces a Service.
    pub fn apply_service(&self, service: &Service) {
        let (Some(ns), Some(name)) = (
            service.metadata.namespace.clone(),
            service.metadata.name.clone(),
        ) else {
            return;
        };
        let key = (ns, name);
        let svc = svc_from(service);
        let mut objects = self.objects();
        if objects.services.get(&key) == Some(&svc) {
            return;
        }
        objects.services.insert(key.clone(), svc);
        self.publish(&mut objects, &key);
    }

    /// Removes a Service.
    pub fn delete_service(&self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let mut objects = self.objects();
        if objects.services.remove(&key).is_some() {
            self.publish(&mut objects, &key);
        }
    }

    /// Replaces every Service with these (after a relist).
    pub fn replace_services(&self, services: &[Service]) {
        let keep: BTreeSet<Key> = services
            .iter()
            .filter_map(|s| key_of(&s.metadata))
            .collect();
        let gone: Vec<Key> = self
            .objects()
            .services
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.delete_service(&ns, &name);
        }
        for s in services {
            self.apply_service(s);
        }
    }

    /// Adds or replaces an EndpointSlice.
    pub fn apply_endpoint_slice(&self, slice: &EndpointSlice) {
        let Some(key) = key_of(&slice.metadata) else {
            return;
        };
        let new = slice_from(slice);
        let mut objects = self.objects();
        let old = objects.slices.get(&key).cloned();
        if old.as_ref() == new.as_ref() {
            return;
        }
        let mut touched = Vec::new();
        if let Some(old) = old {
            let svc = (key.0.clone(), old.service.clone());
            if let Some(set) = objects.slices_of.get_mut(&svc) {
                set.remove(&key.1);
            }
            touched.push(svc);
        }
        match new {
            Some(new) => {
                let svc = (key.0.clone(), new.service.clone());
                objects
                    .slices_of
                    .entry(svc.clone())
                    .or_default()
                    .insert(key.1.clone());
                objects.slices.insert(key.clone(), new);
                touched.push(svc);
            }
            None => {
                objects.slices.remove(&key);
            }
        }
        touched.dedup();
        for svc in touched {
            self.publish(&mut objects, &svc);
        }
    }

    /// Removes an EndpointSlice.
    pub fn delete_endpoint_slice(&self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let mut objects = self.objects();
        if let Some(old) = objects.slices.remove(&key) {
            let svc = (key.0.clone(), old.service);
            if let Some(set) = objects.slices_of.get_mut(&svc) {
                set.remove(&key.1);
                if set.is_empty() {
                    objects.slices_of.remove(&svc);
                }
            }
            self.publish(&mut objects, &svc);
        }
    }

    /// Replaces every EndpointSlice with these (after a relist).
    pub fn replace_endpoint_slices(&self, slices: &[EndpointSlice]) {
        let keep: BTreeSet<Key> = slices.iter().filter_map(|s| key_of(&s.metadata)).collect();
        let gone: Vec<Key> = self
            .objects()
            .slices
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.delete_endpoint_slice(&ns, &name);
        }
        for s in slices {
            self.apply_endpoint_slice(s);
        }
    }

    /// Adds or replaces a Pod (its addresses answer `a-b-c-d.<ns>.pod.<domain>`).
    pub fn apply_pod(&self, pod: &Pod) {
        let Some(key) = key_of(&pod.metadata) else {
            return;
        };
        let ips = pod_ips(pod);
        let mut objects = self.objects();
        if objects.pods.get(&key) == Some(&ips) {
            return;
        }
        let old = objects
            .pods
            .insert(key.clone(), ips.clone())
            .unwrap_or_default();
        self.set_pod_ips(&key, &old, &ips);
    }

    /// Removes a Pod.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let mut objects = self.objects();
        if let Some(old) = objects.pods.remove(&key) {
            self.set_pod_ips(&key, &old, &[]);
        }
    }

    /// Replaces every Pod with these (after a relist).
    pub fn replace_pods(&self, pods: &[Pod]) {
        let keep: BTreeSet<Key> = pods.iter().filter_map(|p| key_of(&p.metadata)).collect();
        let gone: Vec<Key> = self
            .objects()
            .pods
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.delete_pod(&ns, &name);
        }
        for p in pods {
            self.apply_pod(p);
        }
    }

    fn set_pod_ips(&self, key: &Key, old: &[IpAddr], new: &[IpAddr]) {
        let mut index = self.write();
        for ip in old {
            if let Some(ips) = index.pod_ips.get_mut(&key.0) {
                if let Some(n) = ips.get_mut(ip) {
                    *n -= 1;
                    if *n == 0 {
                        ips.remove(ip);
                    }
                }
                if ips.is_empty() {
                    index.pod_ips.remove(&key.0);
                }
            }
            if let Some(set) = index.pods_by_ip.get_mut(ip) {
                set.remove(key);
                if set.is_empty() {
                    index.pods_by_ip.remove(ip);
                }
            }
        }
        for ip in new {
            *index
                .pod_ips
                .entry(key.0.clone())
                .or_default()
                .entry(*ip)
                .or_default() += 1;
            index.pods_by_ip.entry(*ip).or_default().insert(key.clone());
        }
    }

    /// Recomputes what one Service publishes and swaps it into the index.
    fn publish(&self, objects: &mut Objects, key: &Key) {
        let base = format!("{}.{}.svc.{}", key.1, key.0, self.inner.apex);
        let mut records: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        let mut ptrs: Vec<(IpAddr, u8, Name)> = Vec::new();
        if let Some(svc) = objects.services.get(key)
            && let Ok(base_name) = Name::from_str(&base)
        {
            let ttl = self.inner.ttl;
            // The Service's own name exists even with nothing to answer yet (NODATA, not NXDOMAIN).
            records.entry(base.clone()).or_default();
            match &svc.kind {
                Kind::ClusterIp(ips) => {
                    for ip in ips {
                        records
                            .entry(base.clone())
                            .or_default()
                            .push(address(&base_name, ttl, *ip));
                        ptrs.push((*ip, PTR_CLUSTER_IP, base_name.clone()));
                    }
                    for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                        let owner = format!("_{}._{}.{base}", p.name, p.protocol);
                        if let Ok(owner_name) = Name::from_str(&owner) {
                            records.entry(owner).or_default().push(Record::from_rdata(
                                owner_name,
                                ttl,
                                RData::SRV(SRV::new(0, 100, p.port, base_name.clone())),
                            ));
                        }
                    }
                }
                Kind::ExternalName(target) => {
                    records
                        .entry(base.clone())
                        .or_default()
                        .push(Record::from_rdata(
                            base_name.clone(),
                            ttl,
                            RData::CNAME(CNAME(target.clone())),
                        ));
                }
                Kind::Headless => {
                    let slices = objects
                        .slices_of
                        .get(key)
                        .into_iter()
                        .flatten()
                        .filter_map(|s| objects.slices.get(&(key.0.clone(), s.clone())));
                    for slice in slices {
                        for ep in &slice.endpoints {
                            if !ep.ready && !svc.publish_not_ready {
                                continue;
                            }
                            for ip in &ep.addresses {
                                let label = ep.hostname.clone().unwrap_or_else(|| dashed(*ip));
                                let host = format!("{label}.{base}");
                                let Ok(host_name) = Name::from_str(&host) else {
                                    continue;
                                };
                                records
                                    .entry(base.clone())
                                    .or_default()
                                    .push(address(&base_name, ttl, *ip));
                                records
                                    .entry(host)
                                    .or_default()
                                    .push(address(&host_name, ttl, *ip));
                                ptrs.push((*ip, PTR_ENDPOINT, host_name.clone()));
                                for p in slice.ports.iter().filter(|p| !p.name.is_empty()) {
                                    let owner = format!("_{}._{}.{base}", p.name, p.protocol);
                                    if let Ok(owner_name) = Name::from_str(&owner) {
                                        records.entry(owner).or_default().push(Record::from_rdata(
                                            owner_name,
                                            ttl,
                                            RData::SRV(SRV::new(0, 100, p.port, host_name.clone())),
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    // An endpoint in two slices (during a move between them) is one answer.
                    for set in records.values_mut() {
                        dedup(set);
                    }
                }
            }
        }
        let (old_names, old_ptrs) = objects.published.remove(key).unwrap_or_default();
        let new_names: Vec<String> = records.keys().cloned().collect();
        let new_ptrs: Vec<IpAddr> = ptrs.iter().map(|(ip, _, _)| *ip).collect();

        let mut index = self.write();
        for name in &old_names {
            if index.names.remove(name).is_some() {
                self.count_below(&mut index, name, false);
            }
        }
        for ip in &old_ptrs {
            if let Some(owners) = index.ptr.get_mut(ip) {
                owners.retain(|(_, owner), _| owner != key);
                if owners.is_empty() {
                    index.ptr.remove(ip);
                }
            }
        }
        for (name, set) in records {
            self.count_below(&mut index, &name, true);
            index.names.insert(name, Arc::new(set));
        }
        for (ip, prio, name) in ptrs {
            index
                .ptr
                .entry(ip)
                .or_default()
                .insert((prio, key.clone()), name);
        }
        drop(index);
        if !new_names.is_empty() || !new_ptrs.is_empty() {
            objects.published.insert(key.clone(), (new_names, new_ptrs));
        }
    }

    /// Counts `name` in every ancestor strictly between it and the apex.
    fn count_below(&self, index: &mut Index, name: &str, add: bool) {
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if parent.len() <= self.inner.apex.len() {
                break;
            }
            if add {
                *index.below.entry(parent.to_owned()).or_default() += 1;
            } else if let Some(n) = index.below.get_mut(parent) {
                *n -= 1;
                if *n == 0 {
                    index.below.remove(parent);
                }
            }
            rest = parent;
        }
    }

    /// Whether `name` (lowercase, final dot) is the cluster domain or below it.
    pub fn is_cluster_name(&self, name: &str) -> bool {
        name == self.inner.apex || name.ends_with(&self.inner.dot_apex)
    }

    /// Answers a query for a name in the cluster domain (lowercase, final dot).
    pub fn lookup(&self, name: &str, qtype: RecordType) -> Lookup {
        let inner = &*self.inner;
        if name == inner.apex {
            return if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                Lookup::Records {
                    answers: vec![inner.soa.clone()],
                    additionals: Vec::new(),
                }
            } else {
                Lookup::NoData
            };
        }
        let Some(rel) = name.strip_suffix(&inner.dot_apex) else {
            return Lookup::NxDomain;
        };
        // `svc` and `pod` always exist under the domain, as in every Kubernetes DNS.
        if rel == "svc" || rel == "pod" {
            return Lookup::NoData;
        }
        if let Some(rest) = rel.strip_suffix(".pod") {
            return self.lookup_pod(rest, qtype);
        }
        let index = self.read();
        if let Some(set) = index.names.get(name) {
            let set = Arc::clone(set);
            let names = &index.names;
            let answers: Vec<Record> = set
                .iter()
                .filter(|r| {
                    r.record_type() == qtype
                        || qtype == RecordType::ANY
                        || (r.record_type() == RecordType::CNAME && qtype != RecordType::CNAME)
                })
                .cloned()
                .collect();
            if answers.is_empty() {
                return Lookup::NoData;
            }
            // The addresses of SRV targets, so clients need no second query.
            let mut additionals = Vec::new();
            for r in &answers {
                if let RData::SRV(srv) = r.data() {
                    let target = srv.target().to_ascii().to_ascii_lowercase();
                    if let Some(t) = names.get(&target) {
                        additionals.extend(
                            t.iter()
                                .filter(|r| {
                                    matches!(r.record_type(), RecordType::A | RecordType::AAAA)
                                })
                                .cloned(),
                        );
                    }
                }
            }
            dedup(&mut additionals);
            return Lookup::Records {
                answers,
                additionals,
            };
        }
        if index.below.contains_key(name) {
            Lookup::NoData
        } else {
            Lookup::NxDomain
        }
    }

    /// `<dashed address>.<ns>.pod.<domain>` and `<ns>.pod.<domain>`; `rest` is
    /// what precedes `.pod.<domain>`.
    fn lookup_pod(&self, rest: &str, qtype: RecordType) -> Lookup {
        let index = self.read();
        let Some((label, ns)) = rest.split_once('.') else {
            // `<ns>.pod.<domain>` exists while the namespace has pods.
            return if index.pod_ips.contains_key(rest) {
                Lookup::NoData
            } else {
                Lookup::NxDomain
            };
        };
        let Some(ip) = undashed(label) else {
            return Lookup::NxDomain;
        };
        if !index
            .pod_ips
            .get(ns)
            .is_some_and(|ips| ips.contains_key(&ip))
        {
            return Lookup::NxDomain;
        }
        let wanted = match ip {
            IpAddr::V4(_) => RecordType::A,
            IpAddr::V6(_) => RecordType::AAAA,
        };
        if qtype != wanted && qtype != RecordType::ANY {
            return Lookup::NoData;
        }
        let Ok(owner) = Name::from_str(&format!("{label}.{ns}.pod.{}", self.inner.apex)) else {
            return Lookup::NxDomain;
        };
        Lookup::Records {
            answers: vec![address(&owner, self.inner.ttl, ip)],
            additionals: Vec::new(),
        }
    }

    /// The PTR record for an address the cluster knows (a Service, a headless
    /// endpoint, or a Pod), `None` for any other address.
    pub fn reverse(&self, owner: &Name, ip: IpAddr) -> Option<Record> {
        let index = self.read();
        let target = if let Some(name) = index.ptr.get(&ip).and_then(|o| o.values().next()) {
            name.clone()
        } else {
            let (ns, _) = index.pods_by_ip.get(&ip)?.iter().next()?;
            Name::from_str(&format!("{}.{ns}.pod.{}", dashed(ip), self.inner.apex)).ok()?
        };
        Some(Record::from_rdata(
            owner.clone(),
            self.inner.ttl,
            RData::PTR(PTR(target)),
        ))
    }

    /// How many names the index holds (for tests and metrics).
    pub fn len(&self) -> usize {
        self.read().names.len()
    }

    /// Whether the index holds no names.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Key> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

fn dedup(records: &mut Vec<Record>) {
    let mut seen = BTreeSet::new();
    records.retain(|r| seen.insert(r.to_string()));
}

fn address(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, rdata)
}

/// `10.244.1.5` → `10-244-1-5`; `fd00:10:244::5` → `fd00-10-244--5` (Kubernetes' pod and endpoint labels).
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The address in a dashed label, either family (`fd00-10-244--5` or fully written out).
pub fn undashed(label: &str) -> Option<IpAddr> {
    let parts = label.split('-').count();
    if parts == 4
        && let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>()
    {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa.`, nibbles `.ip6.arpa.`) stands for.
pub fn reverse_ip(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa.") {
        let mut octets = [0u8; 4];
        let labels: Vec<&str> = rest.split('.').collect();
        if labels.len() != 4 {
            return None;
        }
        for (i, l) in labels.iter().rev().enumerate() {
            // `01` is not how an octet is written in a reverse name.
            if l.len() > 1 && l.starts_with('0') {
                return None;
            }
            octets[i] = l.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    let rest = name.strip_suffix(".ip6.arpa.")?;
    let nibbles: Vec<&str> = rest.split('.').collect();
    if nibbles.len() != 32 {
        return None;
    }
    let mut value: u128 = 0;
    for n in nibbles.iter().rev() {
        if n.len() != 1 {
            return None;
        }
        value = (value << 4) | u128::from(u8::from_str_radix(n, 16).ok()?);
    }
    Some(IpAddr::V6(Ipv6Addr::from(value)))
}

fn svc_from(service: &Service) -> Svc {
    let spec = service.spec.clone().unwrap_or_default();
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        match spec
            .external_name
            .as_deref()
            .map(|n| Name::from_str(&format!("{}.", n.trim_end_matches('.'))))
        {
            Some(Ok(target)) => Kind::ExternalName(target),
            // An ExternalName without a usable name publishes nothing, as in Kubernetes.
            _ => Kind::ClusterIp(Vec::new()),
        }
    } else if spec.cluster_ip.as_deref() == Some("None") {
        Kind::Headless
    } else {
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .clone()
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = spec.cluster_ip.as_deref().and_then(|s| s.parse().ok())
        {
            ips.push(ip);
        }
        Kind::ClusterIp(ips)
    };
    let ports = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            Some(Port {
                name: p.name.unwrap_or_default().to_ascii_lowercase(),
                protocol: p
                    .protocol
                    .unwrap_or_else(|| "TCP".to_owned())
                    .to_ascii_lowercase(),
                port: u16::try_from(p.port).ok()?,
            })
        })
        .collect();
    Svc {
        kind,
        ports,
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
    }
}

fn slice_from(slice: &EndpointSlice) -> Option<Slice> {
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    // FQDN slices name no address DNS could answer with.
    if slice.address_type == "FQDN" {
        return None;
    }
    let endpoints = slice
        .endpoints
        .iter()
        .map(|e| Endpoint {
            addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            hostname: e
                .hostname
                .as_ref()
                .map(|h| h.to_ascii_lowercase())
                .filter(|h| !h.is_empty() && !h.contains('.')),
            // Kubernetes: an unset `ready` means ready.
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
        })
        .collect();
    let ports = slice
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            Some(Port {
                name: p.name.unwrap_or_default().to_ascii_lowercase(),
                protocol: p
                    .protocol
                    .unwrap_or_else(|| "TCP".to_owned())
                    .to_ascii_lowercase(),
                port: u16::try_from(p.port?).ok()?,
            })
        })
        .collect();
    Some(Slice {
        service,
        endpoints,
        ports,
    })
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_deref().and_then(|s| s.parse().ok())
    {
        ips.push(ip);
    }
    ips.sort_unstable();
    ips.dedup();
    ips
}
