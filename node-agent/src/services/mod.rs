//! Service map sync: watches Services and EndpointSlices in every namespace
//! and programs the dataplane's load-balancing maps from them; also the
//! `hostPort`s of the pods bound to this node ([`hostport`]).
//!
//! Level-triggered and incremental: an event marks its Service dirty, and
//! only a dirty Service's frontends are recomputed and diffed against what
//! the maps hold, so one change costs one Service, not the cluster. Nothing
//! is written before both initial lists are complete (a Service listed
//! before its slices would otherwise be programmed without backends and
//! refuse connections); then frontends the maps hold for Services that no
//! longer exist (pinned maps taken over after a restart) are removed. A
//! periodic full pass repairs anything a failed write or a lost event left
//! behind.

mod desired;
pub mod hostport;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{StreamExt, stream};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};

use crate::dataplane::{
    CtGcConfig, Dataplane, Departed, Frontend, LbError, LbWriter, Programmed, V4, V6,
};
pub use desired::{
    CLUSTER_DNS_SERVICE, DEFAULT_AFFINITY_TIMEOUT_SECONDS, Frontends, NodeView, SERVICE_NAME_LABEL,
    Target, announced, announcer, frontends,
};

/// How often failed writes are retried and retired map entries collected.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How often every Service is recomputed as a safety net.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(60);

/// How the sync loop runs on one node.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// This node's name and addresses.
    pub node: NodeView,
    /// How often failed writes are retried.
    pub retry_interval: Duration,
    /// How often every Service is recomputed.
    pub resync_interval: Duration,
    /// The NodePort conntrack collector (timeouts, and the purge of flows
    /// whose backend left their Service); `None`: no collector.
    pub conntrack: Option<CtGcConfig>,
}

impl SyncConfig {
    /// The defaults for node `name` with its own `addresses` (NodePorts are
    /// served on each).
    pub fn new(name: impl Into<String>, addresses: Vec<IpAddr>) -> Self {
        Self {
            node: NodeView {
                name: name.into(),
                addresses,
                local_dns: Vec::new(),
            },
            retry_interval: DEFAULT_RETRY_INTERVAL,
            resync_interval: DEFAULT_RESYNC_INTERVAL,
            conntrack: None,
        }
    }
}

/// Errors of the sync loop.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A watch stream ended, which kube's watcher never does on its own.
    #[error("the {0} watch ended; restart the service sync")]
    WatchEnded(&'static str),
}

/// The load-balancing maps as the sync loop writes them (both families).
pub trait ServiceMaps {
    /// Programs one frontend, switching its backend set atomically.
    fn upsert(&mut self, frontend: Frontend, target: &Target) -> Result<(), LbError>;
    /// Removes one frontend.
    fn remove(&mut self, frontend: Frontend) -> Result<(), LbError>;
    /// What the maps hold now.
    fn programmed(&self) -> Vec<Programmed>;
    /// Deletes entries earlier updates made unreachable.
    fn collect_retired(&mut self) -> Result<(), LbError>;
    /// Starts (`on`) or stops answering ARP / NDP for a LoadBalancer IP on
    /// the fabric. Maps without an announcer (in-process tests) do nothing.
    fn set_announced(&mut self, _address: IpAddr, _on: bool) -> Result<(), String> {
        Ok(())
    }
    /// The LoadBalancer IPs announced now.
    fn announced(&self) -> Vec<IpAddr> {
        Vec::new()
    }
    /// The backends that left a frontend since the last call (their
    /// conntrack entries are purged).
    fn take_departed(&mut self) -> Vec<Departed> {
        Vec::new()
    }
}

/// The frontend named in errors of a periodic collection, which belongs to
/// no one service.
const COLLECTION: Frontend = Frontend {
    address: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    port: 0,
    protocol: crate::dataplane::Protocol::Tcp,
};

impl<S4, B4, S6, B6> ServiceMaps for (&mut LbWriter<V4, S4, B4>, &mut LbWriter<V6, S6, B6>)
where
    S4: crate::dataplane::KvMap<shoal_ebpf_common::Lb4Key, shoal_ebpf_common::LbService>,
    B4: crate::dataplane::KvMap<u32, shoal_ebpf_common::Lb4Backend>,
    S6: crate::dataplane::KvMap<shoal_ebpf_common::Lb6Key, shoal_ebpf_common::LbService>,
    B6: crate::dataplane::KvMap<u32, shoal_ebpf_common::Lb6Backend>,
{
    fn upsert(&mut self, frontend: Frontend, target: &Target) -> Result<(), LbError> {
        match frontend.address {
            IpAddr::V4(_) => self.0.upsert_with_flags(
                frontend,
                &target.backends,
                target.affinity_timeout,
                target.flags,
            ),
            IpAddr::V6(_) => self.1.upsert_with_flags(
                frontend,
                &target.backends,
                target.affinity_timeout,
                target.flags,
            ),
        }
    }

    fn remove(&mut self, frontend: Frontend) -> Result<(), LbError> {
        match frontend.address {
            IpAddr::V4(_) => self.0.remove(frontend),
            IpAddr::V6(_) => self.1.remove(frontend),
        }
    }

    fn programmed(&self) -> Vec<Programmed> {
        let mut all = self.0.programmed();
        all.extend(self.1.programmed());
        all
    }

    fn collect_retired(&mut self) -> Result<(), LbError> {
        self.0.collect_retired(COLLECTION)?;
        self.1.collect_retired(COLLECTION)
    }

    fn take_departed(&mut self) -> Vec<Departed> {
        let mut all = self.0.take_departed();
        all.extend(self.1.take_departed());
        all
    }
}

impl ServiceMaps for Dataplane {
    fn upsert(&mut self, frontend: Frontend, target: &Target) -> Result<(), LbError> {
        (&mut self.lb4, &mut self.lb6).upsert(frontend, target)
    }

    fn remove(&mut self, frontend: Frontend) -> Result<(), LbError> {
        (&mut self.lb4, &mut self.lb6).remove(frontend)
    }

    fn programmed(&self) -> Vec<Programmed> {
        let mut all = self.lb4.programmed();
        all.extend(self.lb6.programmed());
        all
    }

    fn collect_retired(&mut self) -> Result<(), LbError> {
        (&mut self.lb4, &mut self.lb6).collect_retired()
    }

    fn set_announced(&mut self, address: IpAddr, on: bool) -> Result<(), String> {
        Dataplane::set_announced(self, address, on).map_err(|e| e.to_string())
    }

    fn announced(&self) -> Vec<IpAddr> {
        Dataplane::announced(self)
    }

    fn take_departed(&mut self) -> Vec<Departed> {
        (&mut self.lb4, &mut self.lb6).take_departed()
    }
}

/// Shared with the rest of the agent (which reads verdicts, say): each
/// call holds the lock for one map operation only.
impl<M: ServiceMaps> ServiceMaps for Arc<Mutex<M>> {
    fn upsert(&mut self, frontend: Frontend, target: &Target) -> Result<(), LbError> {
        lock(self).upsert(frontend, target)
    }

    fn remove(&mut self, frontend: Frontend) -> Result<(), LbError> {
        lock(self).remove(frontend)
    }

    fn programmed(&self) -> Vec<Programmed> {
        lock(self).programmed()
    }

    fn collect_retired(&mut self) -> Result<(), LbError> {
        lock(self).collect_retired()
    }

    fn set_announced(&mut self, address: IpAddr, on: bool) -> Result<(), String> {
        lock(self).set_announced(address, on)
    }

    fn announced(&self) -> Vec<IpAddr> {
        lock(self).announced()
    }

    fn take_departed(&mut self) -> Vec<Departed> {
        lock(self).take_departed()
    }
}

fn lock<M>(m: &Mutex<M>) -> std::sync::MutexGuard<'_, M> {
    // A panic elsewhere leaves the writer consistent: every update either
    // completed or kept the previous backend set.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `(namespace, name)` of a Service.
pub type ServiceKey = (String, String);

/// Watches Services and EndpointSlices through `client` and keeps `maps`
/// in step with them until the task is dropped.
pub async fn run<M: ServiceMaps + Send>(
    client: Client,
    mut maps: M,
    config: SyncConfig,
) -> Result<(), SyncError> {
    // Boxed: the two variants differ a lot in size.
    enum Event {
        Service(Box<Result<watcher::Event<Service>, watcher::Error>>),
        Slice(Box<Result<watcher::Event<EndpointSlice>, watcher::Error>>),
        Pod(Box<Result<watcher::Event<Pod>, watcher::Error>>),
    }
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| Event::Service(Box::new(e)))
    .boxed();
    let slices = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| Event::Slice(Box::new(e)))
    .boxed();
    let pods = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={}", config.node.name)),
    )
    .default_backoff()
    .map(|e| Event::Pod(Box::new(e)))
    .boxed();
    let mut events = stream::select(stream::select(services, slices), pods);
    let gc = config.conntrack.clone().map(|ct| {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Departed>>();
        let spawned = std::thread::Builder::new()
            .name("conntrack-gc".into())
            .spawn(move || crate::dataplane::run_gc(&ct, &rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "starting the conntrack GC thread");
        }
        tx
    });
    // Hands what left a frontend to the collector, which purges its flows.
    let purge = |maps: &mut M| {
        let departed = maps.take_departed();
        if let Some(tx) = gc.as_ref()
            && !departed.is_empty()
            && tx.send(departed).is_err()
        {
            tracing::warn!("the conntrack GC stopped; stale flows are not purged");
        }
    };
    let mut state = State::new(config.node.clone(), &maps);
    state.expect_pods();
    // Tells a pod that its hostPort is taken (best effort, never waited on).
    let report = |state: &mut State| {
        // One event per pod, naming every port it was refused.
        let mut by_pod: BTreeMap<(String, String), Vec<Conflict>> = BTreeMap::new();
        for conflict in state.take_conflicts() {
            by_pod
                .entry(conflict.pod.clone())
                .or_default()
                .push(conflict);
        }
        for (pod, conflicts) in by_pod {
            tokio::spawn(post_conflict_event(
                client.clone(),
                config.node.name.clone(),
                pod,
                conflicts,
            ));
        }
    };
    let mut retry = tokio::time::interval(config.retry_interval);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync = tokio::time::interval(config.resync_interval);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick of an interval fires at once; the first pass happens
    // when the lists are done instead.
    resync.tick().await;
    loop {
        tokio::select! {
            event = events.next() => {
                match event {
                    Some(Event::Service(e)) => match *e {
                        Ok(e) => state.service_event(e),
                        Err(e) => tracing::warn!(error = %e, "service watch failed; retrying with backoff"),
                    },
                    Some(Event::Slice(e)) => match *e {
                        Ok(e) => state.slice_event(e),
                        Err(e) => tracing::warn!(error = %e, "endpointslice watch failed; retrying with backoff"),
                    },
                    Some(Event::Pod(e)) => match *e {
                        Ok(e) => state.pod_event(e),
                        Err(e) => tracing::warn!(error = %e, "pod watch (hostPorts) failed; retrying with backoff"),
                    },
                    None => return Err(SyncError::WatchEnded("services/endpointslices/pods")),
                }
                state.flush(&mut maps);
                purge(&mut maps);
                report(&mut state);
            }
            _ = retry.tick() => {
                state.retry_failed();
                state.flush(&mut maps);
                purge(&mut maps);
                report(&mut state);
                if let Err(e) = maps.collect_retired() {
                    tracing::warn!(error = %e, "collecting retired map entries; retrying");
                }
            }
            _ = resync.tick() => {
                state.mark_all();
                state.flush(&mut maps);
                purge(&mut maps);
            }
        }
    }
}

/// The sync loop's memory: the watched objects, what each Service's
/// frontends are, and what the maps hold.
pub struct State {
    node: NodeView,
    services: HashMap<ServiceKey, Service>,
    /// Slices by (namespace, slice name).
    slices: HashMap<ServiceKey, EndpointSlice>,
    /// Slice names by the Service they are labelled with.
    slices_of: HashMap<ServiceKey, BTreeSet<String>>,
    /// Objects of a relist in progress, swapped in at its end.
    services_relist: Option<Vec<Service>>,
    slices_relist: Option<Vec<EndpointSlice>>,
    services_listed: bool,
    slices_listed: bool,
    /// Whether the first full pass (and its garbage collection) ran.
    synced: bool,
    /// What the maps hold, frontend by frontend.
    live: HashMap<Frontend, Target>,
    /// Which Service owns each frontend in `live`.
    owners: HashMap<Frontend, ServiceKey>,
    /// The frontends each Service owns.
    owned: HashMap<ServiceKey, BTreeSet<Frontend>>,
    dirty: BTreeSet<ServiceKey>,
    failed: BTreeSet<ServiceKey>,
    /// LoadBalancer IPs the maps announce, with the Service that wants
    /// them (`None`: found in the pinned maps, not yet claimed).
    announcing: BTreeMap<IpAddr, Option<ServiceKey>>,
    /// The hostPort frontends of this node's pods, by owner key
    /// ([`hostport::owner`]); pods without any are not kept.
    hostports: HashMap<ServiceKey, Frontends>,
    pods_relist: Option<Vec<Pod>>,
    /// Whether the pod list is done (true when pods are not watched).
    pods_listed: bool,
    /// hostPorts refused because another owner holds the frontend, not
    /// yet reported.
    conflicts: Vec<Conflict>,
    /// Refusals reported already, so a pod hears of each once.
    reported: BTreeSet<(ServiceKey, Frontend)>,
}

/// A pod's hostPort that another pod (or Service) holds on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The refused pod's `(namespace, name)`.
    pub pod: (String, String),
    /// The frontend it asked for.
    pub frontend: Frontend,
    /// Who holds it: `namespace/name` of a pod or Service.
    pub holder: String,
}

impl State {
    /// A state that takes over what `maps` already hold (pinned maps after
    /// an agent restart) instead of rewriting it.
    pub fn new(node: NodeView, maps: &impl ServiceMaps) -> Self {
        let live = maps
            .programmed()
            .into_iter()
            .map(|p| {
                let mut backends = p.backends;
                backends.sort();
                (
                    p.frontend,
                    Target {
                        backends,
                        affinity_timeout: p.affinity_timeout,
                        flags: p.flags,
                    },
                )
            })
            .collect();
        Self {
            node,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            services_relist: None,
            slices_relist: None,
            services_listed: false,
            slices_listed: false,
            synced: false,
            live,
            owners: HashMap::new(),
            owned: HashMap::new(),
            dirty: BTreeSet::new(),
            failed: BTreeSet::new(),
            announcing: maps.announced().into_iter().map(|ip| (ip, None)).collect(),
            hostports: HashMap::new(),
            pods_relist: None,
            pods_listed: true,
            conflicts: Vec::new(),
            reported: BTreeSet::new(),
        }
    }

    /// Waits for the list of this node's pods (their hostPorts) too before
    /// the first pass, so hostPort frontends taken over from pinned maps
    /// are not collected as orphans.
    pub fn expect_pods(&mut self) {
        self.pods_listed = false;
    }

    /// Takes in one watch event of this node's pods.
    pub fn pod_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.pods_relist = Some(Vec::new()),
            watcher::Event::InitApply(p) => self.pods_relist.get_or_insert_default().push(p),
            watcher::Event::InitDone => {
                let listed = self.pods_relist.take().unwrap_or_default();
                let old = std::mem::take(&mut self.hostports);
                self.dirty.extend(old.into_keys());
                for p in listed {
                    self.put_pod(&p);
                }
                self.pods_listed = true;
            }
            watcher::Event::Apply(p) => self.put_pod(&p),
            watcher::Event::Delete(p) => {
                if let Some((ns, name)) = key_of(&p.metadata) {
                    let key = hostport::owner(&ns, &name);
                    if self.hostports.remove(&key).is_some() {
                        self.dirty.insert(key.clone());
                    }
                    self.reported.retain(|(k, _)| *k != key);
                }
            }
        }
    }

    fn put_pod(&mut self, pod: &Pod) {
        let Some((ns, name)) = key_of(&pod.metadata) else {
            return;
        };
        let key = hostport::owner(&ns, &name);
        let wanted = hostport::frontends(pod, &self.node);
        let changed = if wanted.is_empty() {
            self.hostports.remove(&key).is_some()
        } else {
            self.hostports.insert(key.clone(), wanted.clone()) != Some(wanted)
        };
        if changed {
            self.dirty.insert(key);
        }
    }

    /// The hostPort refusals not reported yet.
    pub fn take_conflicts(&mut self) -> Vec<Conflict> {
        std::mem::take(&mut self.conflicts)
    }

    /// Whether the first full pass ran (both lists done).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// What the maps hold according to the writes made.
    pub fn live(&self) -> &HashMap<Frontend, Target> {
        &self.live
    }

    /// Takes in one Service watch event.
    pub fn service_event(&mut self, event: watcher::Event<Service>) {
        match event {
            watcher::Event::Init => self.services_relist = Some(Vec::new()),
            watcher::Event::InitApply(s) => self.services_relist.get_or_insert_default().push(s),
            watcher::Event::InitDone => {
                let listed = self.services_relist.take().unwrap_or_default();
                let old = std::mem::take(&mut self.services);
                self.dirty.extend(old.into_keys());
                for s in listed {
                    if let Some(key) = key_of(&s.metadata) {
                        self.dirty.insert(key.clone());
                        self.services.insert(key, s);
                    }
                }
                self.services_listed = true;
            }
            watcher::Event::Apply(s) => {
                if let Some(key) = key_of(&s.metadata) {
                    self.dirty.insert(key.clone());
                    self.services.insert(key, s);
                }
            }
            watcher::Event::Delete(s) => {
                if let Some(key) = key_of(&s.metadata) {
                    self.services.remove(&key);
                    self.dirty.insert(key);
                }
            }
        }
    }

    /// Takes in one EndpointSlice watch event.
    pub fn slice_event(&mut self, event: watcher::Event<EndpointSlice>) {
        match event {
            watcher::Event::Init => self.slices_relist = Some(Vec::new()),
            watcher::Event::InitApply(s) => self.slices_relist.get_or_insert_default().push(s),
            watcher::Event::InitDone => {
                let listed = self.slices_relist.take().unwrap_or_default();
                for key in std::mem::take(&mut self.slices).into_keys() {
                    self.drop_slice(&key);
                }
                for s in listed {
                    self.put_slice(s);
                }
                self.slices_listed = true;
            }
            watcher::Event::Apply(s) => self.put_slice(s),
            watcher::Event::Delete(s) => {
                if let Some(key) = key_of(&s.metadata) {
                    self.drop_slice(&key);
                }
            }
        }
    }

    fn put_slice(&mut self, slice: EndpointSlice) {
        let Some(key) = key_of(&slice.metadata) else {
            return;
        };
        self.drop_slice(&key);
        if let Some(service) = owner_of(&slice) {
            self.slices_of
                .entry(service.clone())
                .or_default()
                .insert(key.1.clone());
            self.dirty.insert(service);
        }
        self.slices.insert(key, slice);
    }

    /// Forgets a slice, marking the Service it belonged to dirty.
    fn drop_slice(&mut self, key: &ServiceKey) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        if let Some(service) = owner_of(&old) {
            if let Some(names) = self.slices_of.get_mut(&service) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.slices_of.remove(&service);
                }
            }
            self.dirty.insert(service);
        }
    }

    /// Marks every known Service dirty (the periodic safety net).
    pub fn mark_all(&mut self) {
        self.dirty.extend(self.services.keys().cloned());
        self.dirty.extend(self.owned.keys().cloned());
        self.dirty.extend(self.hostports.keys().cloned());
    }

    /// Marks Services whose writes failed dirty again.
    pub fn retry_failed(&mut self) {
        self.dirty.append(&mut self.failed);
    }

    /// Writes what the dirty Services need, once both lists are complete;
    /// on the first call after that, also removes frontends that belong to
    /// no Service.
    pub fn flush(&mut self, maps: &mut impl ServiceMaps) {
        if !(self.services_listed && self.slices_listed && self.pods_listed) {
            return;
        }
        let first = !self.synced;
        if first {
            self.mark_all();
        }
        let dirty = std::mem::take(&mut self.dirty);
        let started = std::time::Instant::now();
        for key in &dirty {
            self.sync_service(key, maps);
        }
        if !dirty.is_empty() {
            // What the benchmark's "one change until the map holds it" is
            // made of, visible without one.
            tracing::debug!(
                services = dirty.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "service maps updated"
            );
        }
        if first {
            let orphans: Vec<Frontend> = self
                .live
                .keys()
                .filter(|fe| !self.owners.contains_key(fe))
                .copied()
                .collect();
            if !orphans.is_empty() {
                tracing::info!(
                    count = orphans.len(),
                    "removing frontends of services that no longer exist"
                );
            }
            for fe in orphans {
                match maps.remove(fe) {
                    Ok(()) => {
                        self.live.remove(&fe);
                    }
                    Err(e) => tracing::warn!(error = %e, "removing stale frontend {fe}"),
                }
            }
            let unclaimed: Vec<IpAddr> = self
                .announcing
                .iter()
                .filter(|(_, owner)| owner.is_none())
                .map(|(ip, _)| *ip)
                .collect();
            for ip in unclaimed {
                match maps.set_announced(ip, false) {
                    Ok(()) => {
                        self.announcing.remove(&ip);
                    }
                    Err(e) => tracing::warn!(error = %e, "withdrawing stale announcement of {ip}"),
                }
            }
            self.synced = true;
            tracing::info!(
                services = self.services.len(),
                frontends = self.live.len(),
                "service maps in sync"
            );
        }
    }

    /// Brings one Service's frontends in the maps to what it asks for now.
    fn sync_service(&mut self, key: &ServiceKey, maps: &mut impl ServiceMaps) {
        let hostports =
            hostport::pod_of(key).map(|_| self.hostports.get(key).cloned().unwrap_or_default());
        let (wanted, announce) = match self.services.get(key) {
            _ if hostports.is_some() => (hostports.unwrap_or_default(), Vec::new()),
            Some(service) => {
                let slices = self
                    .slices_of
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter_map(|name| self.slices.get(&(key.0.clone(), name.clone())));
                (
                    frontends(service, slices.clone(), &self.node),
                    announced(service, slices, &self.node),
                )
            }
            None => (BTreeMap::new(), Vec::new()),
        };
        let name = format!("{}/{}", key.0, key.1);
        let mut failed = !self.sync_announced(key, &name, &announce, maps);
        let mut now_owned = BTreeSet::new();
        for (fe, target) in &wanted {
            // A hostPort the maps already serve (pinned, taken over after a
            // restart) for another pod that still wants it stays that pod's.
            let claimant = (hostport::pod_of(key).is_some() && !self.owners.contains_key(fe))
                .then(|| self.live.get(fe))
                .flatten()
                .filter(|held| *held != target)
                .and_then(|held| {
                    self.hostports
                        .iter()
                        .find(|(k, fes)| *k != key && fes.get(fe) == Some(held))
                        .map(|(k, _)| k.clone())
                });
            match self.owners.get(fe).or(claimant.as_ref()) {
                Some(owner) if owner != key => {
                    let holder = match hostport::pod_of(owner) {
                        Some((ns, pod)) => format!("pod {ns}/{pod}"),
                        None => format!("service {}/{}", owner.0, owner.1),
                    };
                    if let Some((ns, pod)) = hostport::pod_of(key) {
                        // Retried every tick: the port is the pod's as
                        // soon as its holder goes.
                        failed = true;
                        if self.reported.insert((key.clone(), *fe)) {
                            tracing::warn!(pod = %format!("{ns}/{pod}"), frontend = %fe, %holder,
                                "hostPort already taken on this node; not served");
                            self.conflicts.push(Conflict {
                                pod: (ns.to_owned(), pod.to_owned()),
                                frontend: *fe,
                                holder,
                            });
                        }
                        continue;
                    }
                    tracing::warn!(
                        service = %name,
                        frontend = %fe,
                        %holder,
                        "frontend already belongs to another service; skipped"
                    );
                    continue;
                }
                _ => {}
            }
            if self.live.get(fe) != Some(target) {
                if let Err(e) = maps.upsert(*fe, target) {
                    tracing::warn!(service = %name, error = %e, "programming frontend; will retry");
                    failed = true;
                    // It may still hold an older set: keep owning it.
                    if self.live.contains_key(fe) {
                        now_owned.insert(*fe);
                        self.owners.insert(*fe, key.clone());
                    }
                    continue;
                }
                tracing::debug!(
                    service = %name,
                    frontend = %fe,
                    backends = target.backends.len(),
                    "frontend programmed"
                );
                self.live.insert(*fe, target.clone());
            }
            now_owned.insert(*fe);
            self.owners.insert(*fe, key.clone());
        }
        for fe in self.owned.remove(key).unwrap_or_default() {
            if now_owned.contains(&fe) {
                continue;
            }
            match maps.remove(fe) {
                Ok(()) => {
                    tracing::debug!(service = %name, frontend = %fe, "frontend removed");
                    self.live.remove(&fe);
                    self.owners.remove(&fe);
                }
                Err(e) => {
                    tracing::warn!(service = %name, error = %e, "removing frontend; will retry");
                    failed = true;
                    now_owned.insert(fe);
                }
            }
        }
        if failed {
            self.failed.insert(key.clone());
        }
        if !now_owned.is_empty() {
            self.owned.insert(key.clone(), now_owned);
        }
    }
}

impl State {
    /// The LoadBalancer IPs announced now, with the Service of each.
    pub fn announcing(&self) -> impl Iterator<Item = (&IpAddr, Option<&ServiceKey>)> {
        self.announcing.iter().map(|(ip, k)| (ip, k.as_ref()))
    }

    /// Brings the announcements of one Service to `wanted`; false if a
    /// write failed (retried with the Service).
    fn sync_announced(
        &mut self,
        key: &ServiceKey,
        name: &str,
        wanted: &[IpAddr],
        maps: &mut impl ServiceMaps,
    ) -> bool {
        let mut ok = true;
        for ip in wanted {
            match self.announcing.get(ip) {
                Some(Some(owner)) if owner != key => {
                    tracing::warn!(service = %name, %ip, owner = %format!("{}/{}", owner.0, owner.1),
                        "LoadBalancer IP already announced for another service; skipped");
                    continue;
                }
                Some(_) => {
                    self.announcing.insert(*ip, Some(key.clone()));
                }
                None => match maps.set_announced(*ip, true) {
                    Ok(()) => {
                        tracing::info!(service = %name, %ip, "announcing LoadBalancer IP (ARP/NDP)");
                        self.announcing.insert(*ip, Some(key.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(service = %name, %ip, error = %e, "announcing LoadBalancer IP; will retry");
                        ok = false;
                    }
                },
            }
        }
        let stale: Vec<IpAddr> = self
            .announcing
            .iter()
            .filter(|(ip, owner)| owner.as_ref() == Some(key) && !wanted.contains(ip))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in stale {
            match maps.set_announced(ip, false) {
                Ok(()) => {
                    tracing::info!(service = %name, %ip, "no longer announcing LoadBalancer IP");
                    self.announcing.remove(&ip);
                }
                Err(e) => {
                    tracing::warn!(service = %name, %ip, error = %e, "withdrawing LoadBalancer IP; will retry");
                    ok = false;
                }
            }
        }
        ok
    }
}

/// Records a Warning event `HostPortConflict` on the refused pod, naming
/// each port and who holds it. Best effort: a failure is logged.
async fn post_conflict_event(
    client: Client,
    node: String,
    (ns, pod): (String, String),
    conflicts: Vec<Conflict>,
) {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    let ports: Vec<String> = conflicts
        .iter()
        .map(|c| {
            let protocol = match c.frontend.protocol {
                crate::dataplane::Protocol::Tcp => "TCP",
                crate::dataplane::Protocol::Udp => "UDP",
            };
            let address = match c.frontend.address {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            };
            format!(
                "{address}:{}/{protocol} (held by {})",
                c.frontend.port, c.holder
            )
        })
        .collect();
    let message = format!(
        "hostPort already taken on this node, not served for this pod: {}",
        ports.join(", ")
    );
    let now = jiff::Timestamp::now();
    let event: Result<CoreEvent, _> = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{pod}.hostport-"), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": pod},
        "reason": "HostPortConflict",
        "message": message,
        "type": "Warning",
        "source": {"component": "shoal-agent", "host": node},
        "reportingComponent": "shoal-agent",
        "reportingInstance": node,
        "firstTimestamp": now.to_string(),
        "lastTimestamp": now.to_string(),
        "count": 1,
    }));
    let posted = match event {
        Ok(event) => Api::<CoreEvent>::namespaced(client, &ns)
            .create(&kube::api::PostParams::default(), &event)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = posted {
        tracing::warn!(pod = %format!("{ns}/{pod}"), error = %e, "recording the HostPortConflict event");
    }
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<ServiceKey> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

/// The Service a slice is labelled with.
fn owner_of(slice: &EndpointSlice) -> Option<ServiceKey> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((slice.metadata.namespace.clone()?, service.clone()))
}

#[cfg(test)]
mod tests;
