//! LoadBalancer IPAM: every Service of type LoadBalancer without a
//! `spec.loadBalancerClass` gets one address per family of its
//! `spec.ipFamilies` from the LoadBalancer pools, written to
//! `status.loadBalancer.ingress` (`ipMode: VIP`), where the agents'
//! dataplane serves it, as Cilium's LB IPAM and MetalLB do.
//!
//! - A Service asks for particular addresses with `spec.loadBalancerIP`
//!   (deprecated in Kubernetes, still common) or the annotations of Cilium
//!   (`lbipam.cilium.io/ips`) and MetalLB (`metallb.io/loadBalancerIPs`,
//!   `metallb.universe.tf/loadBalancerIPs`): comma-separated, at most one per
//!   family; a family without one gets the lowest free address.
//! - The first and last address of a pool (network and broadcast in IPv4,
//!   the subnet-router anycast and its mirror in IPv6) are never handed out,
//!   as Cilium's default (`allowFirstLastIPs: No`); pools of a /31, /32,
//!   /127 or /128 hand out every address.
//! - The state is the Services: on every (re)list the allocation is rebuilt
//!   from their status; two Services holding one address keep it for the
//!   older (then by namespace/name), the other is given a new one.
//! - A deleted Service, or one no longer of type LoadBalancer, frees its
//!   addresses (the latter's status is cleared); Services waiting for an
//!   address are retried, oldest first.
//! - When a pool has no free address the Service's status stays empty and
//!   a Warning `AllocationFailed` event names the pool.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use futures_util::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use serde_json::json;
use tracing::{info, warn};

use crate::{control_loop::RESYNC, events};

/// The default IPv4 pool (DESIGN.md).
pub const DEFAULT_POOL_V4: &str = "10.250.0.0/24";
/// The default IPv6 pool (DESIGN.md).
pub const DEFAULT_POOL_V6: &str = "fd00:10:250::/120";
/// Cilium's annotation asking for addresses.
pub const CILIUM_IPS_ANNOTATION: &str = "lbipam.cilium.io/ips";
/// MetalLB's annotation asking for addresses.
pub const METALLB_IPS_ANNOTATION: &str = "metallb.io/loadBalancerIPs";
/// MetalLB's older spelling of [`METALLB_IPS_ANNOTATION`].
pub const METALLB_LEGACY_IPS_ANNOTATION: &str = "metallb.universe.tf/loadBalancerIPs";
/// The component named on this controller's events.
const COMPONENT: &str = "lb-ipam-controller";

/// The pools addresses are handed out from.
#[derive(Clone, Debug)]
pub struct Config {
    /// The pools, tried in order within a family.
    pub pools: Vec<IpNet>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pools: [DEFAULT_POOL_V4, DEFAULT_POOL_V6]
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect(),
        }
    }
}

/// An address family, as `spec.ipFamilies` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    fn of_net(net: &IpNet) -> Self {
        Self::of(net.network())
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(Self::V4),
            "IPv6" => Some(Self::V6),
            _ => None,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// Why a Service got no address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every usable address of the family's pools is taken.
    #[error(
        "no free {family} address left in the LoadBalancer pool {pools} ({in_use} in use); delete an unused LoadBalancer Service or widen the pool (shoal server --lb-pool)"
    )]
    Exhausted {
        /// The family.
        family: Family,
        /// The family's pools, comma-separated.
        pools: String,
        /// Addresses of the family in use.
        in_use: usize,
    },
    /// No pool of the family is configured.
    #[error(
        "no LoadBalancer pool for {family} is configured (shoal server --lb-pool); the Service asks for spec.ipFamilies {family}"
    )]
    NoPool {
        /// The family.
        family: Family,
    },
    /// The requested address lies outside every pool.
    #[error("requested address {ip} is not in any LoadBalancer pool ({pools})")]
    OutsidePools {
        /// The address.
        ip: IpAddr,
        /// The pools, comma-separated.
        pools: String,
    },
    /// The requested address is another Service's.
    #[error("requested address {ip} is already allocated to Service {owner}")]
    Taken {
        /// The address.
        ip: IpAddr,
        /// The Service holding it (namespace/name).
        owner: String,
    },
}

/// One pool: its usable addresses as integers.
#[derive(Debug)]
struct Pool {
    net: IpNet,
    first: u128,
    last: u128,
}

impl Pool {
    fn new(net: IpNet) -> Self {
        let net = net.trunc();
        let lo = bits(net.network());
        let hi = bits(net.broadcast());
        // /31 and /32 (/127, /128) have no network or broadcast to skip.
        let (first, last) = if hi - lo >= 2 {
            (lo + 1, hi - 1)
        } else {
            (lo, hi)
        };
        Self { net, first, last }
    }

    fn family(&self) -> Family {
        Family::of_net(&self.net)
    }

    fn usable(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family() && (self.first..=self.last).contains(&bits(ip))
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn addr(family: Family, n: u128) -> Option<IpAddr> {
    match family {
        Family::V4 => u32::try_from(n).ok().map(|v| IpAddr::V4(v.into())),
        Family::V6 => Some(IpAddr::V6(n.into())),
    }
}

/// Which Service holds which pool address.
#[derive(Debug)]
pub struct Allocator {
    pools: Vec<Pool>,
    owner: BTreeMap<IpAddr, String>,
    held: HashMap<String, BTreeSet<IpAddr>>,
}

impl Allocator {
    /// An allocator over `config`'s pools, nothing handed out.
    pub fn new(config: &Config) -> Self {
        Self {
            pools: config.pools.iter().copied().map(Pool::new).collect(),
            owner: BTreeMap::new(),
            held: HashMap::new(),
        }
    }

    fn clear(&mut self) {
        self.owner.clear();
        self.held.clear();
    }

    fn in_pools(&self, ip: IpAddr) -> bool {
        self.pools.iter().any(|p| p.usable(ip))
    }

    fn pools_of(&self, family: Option<Family>) -> String {
        self.pools
            .iter()
            .filter(|p| family.is_none_or(|f| p.family() == f))
            .map(|p| p.net.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The addresses `service` (namespace/name) holds.
    pub fn held(&self, service: &str) -> Vec<IpAddr> {
        self.held
            .get(service)
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }

    fn take(&mut self, service: &str, ip: IpAddr) {
        self.owner.insert(ip, service.to_owned());
        self.held.entry(service.to_owned()).or_default().insert(ip);
    }

    /// Records an address a Service's status shows; false when another
    /// Service holds it (or it is outside the pools), and it is not taken.
    pub fn claim(&mut self, service: &str, ip: IpAddr) -> bool {
        if !self.in_pools(ip) {
            return false;
        }
        match self.owner.get(&ip) {
            Some(o) if o != service => false,
            _ => {
                self.take(service, ip);
                true
            }
        }
    }

    /// Gives `service` one address per family of `families` (keeping those
    /// it holds, honouring `requested`), releasing any other it held.
    /// All or nothing: on an error it holds what it held before.
    pub fn assign(
        &mut self,
        service: &str,
        families: &[Family],
        requested: &[IpAddr],
    ) -> Result<Vec<IpAddr>, AllocError> {
        let before = self.held(service);
        let mut out = Vec::new();
        let mut new = Vec::new();
        let result = (|| {
            for &family in families {
                let ip = match requested.iter().find(|ip| Family::of(**ip) == family) {
                    Some(&ip) => {
                        if !self.in_pools(ip) {
                            return Err(AllocError::OutsidePools {
                                ip,
                                pools: self.pools_of(None),
                            });
                        }
                        if let Some(owner) = self.owner.get(&ip).filter(|o| *o != service) {
                            return Err(AllocError::Taken {
                                ip,
                                owner: owner.clone(),
                            });
                        }
                        ip
                    }
                    None => match before.iter().find(|ip| Family::of(**ip) == family) {
                        Some(&ip) => ip,
                        None => self.lowest_free(family)?,
                    },
                };
                if !before.contains(&ip) {
                    new.push(ip);
                }
                self.take(service, ip);
                out.push(ip);
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                for ip in before.iter().filter(|ip| !out.contains(ip)) {
                    self.owner.remove(ip);
                }
                self.held
                    .insert(service.to_owned(), out.iter().copied().collect());
                Ok(out)
            }
            Err(e) => {
                for ip in new {
                    self.owner.remove(&ip);
                }
                self.held
                    .insert(service.to_owned(), before.into_iter().collect());
                Err(e)
            }
        }
    }

    fn lowest_free(&self, family: Family) -> Result<IpAddr, AllocError> {
        let pools: Vec<&Pool> = self.pools.iter().filter(|p| p.family() == family).collect();
        if pools.is_empty() {
            return Err(AllocError::NoPool { family });
        }
        for pool in &pools {
            let mut n = pool.first;
            // The owners are sorted: walk the taken ones of this pool.
            let lo = addr(family, pool.first);
            let hi = addr(family, pool.last);
            if let (Some(lo), Some(hi)) = (lo, hi) {
                for ip in self.owner.range(lo..=hi).map(|(ip, _)| bits(*ip)) {
                    if ip != n {
                        break;
                    }
                    n += 1;
                }
            }
            if n <= pool.last
                && let Some(ip) = addr(family, n)
            {
                return Ok(ip);
            }
        }
        Err(AllocError::Exhausted {
            family,
            pools: self.pools_of(Some(family)),
            in_use: self
                .owner
                .keys()
                .filter(|ip| Family::of(**ip) == family)
                .count(),
        })
    }

    /// Frees everything `service` holds.
    pub fn release(&mut self, service: &str) {
        for ip in self.held.remove(service).unwrap_or_default() {
            if self.owner.get(&ip).map(String::as_str) == Some(service) {
                self.owner.remove(&ip);
            }
        }
    }
}

fn key_of(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

/// Whether this controller gives `svc` addresses.
fn managed(svc: &Service) -> bool {
    svc.metadata.deletion_timestamp.is_none()
        && svc.spec.as_ref().is_some_and(|s| {
            s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
        })
}

/// The addresses `status.loadBalancer.ingress` shows.
fn status_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn families(svc: &Service) -> Vec<Family> {
    let fams: Vec<Family> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| Family::parse(f))
        .collect();
    if fams.is_empty() {
        vec![Family::V4]
    } else {
        fams
    }
}

/// The addresses a Service asks for; an unparseable one is an error naming
/// where it came from.
fn requested(svc: &Service) -> Result<Vec<IpAddr>, String> {
    let mut sources: Vec<(String, &str)> = Vec::new();
    if let Some(ip) = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
        .filter(|s| !s.is_empty())
    {
        sources.push(("spec.loadBalancerIP".into(), ip));
    }
    for a in [
        CILIUM_IPS_ANNOTATION,
        METALLB_IPS_ANNOTATION,
        METALLB_LEGACY_IPS_ANNOTATION,
    ] {
        if let Some(v) = svc.annotations().get(a) {
            sources.push((format!("annotation {a}"), v.as_str()));
        }
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for (from, list) in sources {
        for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let ip: IpAddr = s
                .parse()
                .map_err(|_| format!("{from}: {s:?} is not an IP address"))?;
            if !out.contains(&ip) {
                if out.iter().any(|o| Family::of(*o) == Family::of(ip)) {
                    return Err(format!(
                        "{from}: {ip} asks for a second {} address; a Service gets one per family",
                        Family::of(ip)
                    ));
                }
                out.push(ip);
            }
        }
    }
    Ok(out)
}

/// The controller's state between events.
struct Controller {
    client: Client,
    alloc: Allocator,
    /// Services waiting for an address → why (told once per reason).
    waiting: BTreeMap<String, String>,
    /// The managed Services last seen (retried when addresses free up).
    services: BTreeMap<String, Service>,
}

/// Runs the controller until its watch ends (it retries with back-off on
/// errors, so in practice until the task is dropped).
pub async fn run(client: Client, config: Config) {
    let api: Api<Service> = Api::all(client.clone());
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ctl = Controller {
        client,
        alloc: Allocator::new(&config),
        waiting: BTreeMap::new(),
        services: BTreeMap::new(),
    };
    let mut listing: Vec<Service> = Vec::new();
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = resync.tick() => {
                // The safety net: a status write that failed is redone.
                let services: Vec<Service> = ctl.services.values().cloned().collect();
                for svc in services {
                    ctl.apply(svc).await;
                }
                continue;
            }
        };
        let Some(event) = event else { break };
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                warn!("LB IPAM: watching Services: {e}");
                continue;
            }
        };
        match event {
            Event::Init => listing.clear(),
            Event::InitApply(svc) => listing.push(svc),
            Event::InitDone => ctl.rebuild(std::mem::take(&mut listing)).await,
            Event::Apply(svc) => ctl.apply(svc).await,
            Event::Delete(svc) => {
                let key = key_of(&svc);
                ctl.services.remove(&key);
                ctl.waiting.remove(&key);
                if !ctl.alloc.held(&key).is_empty() {
                    ctl.alloc.release(&key);
                    info!(service = %key, "LB IPAM: released the addresses of a deleted Service");
                    ctl.retry_waiting().await;
                }
            }
        }
    }
}

/// Oldest first, then by namespace/name: who wins an address two claim.
fn age_order(svc: &Service) -> (String, String) {
    (
        svc.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        key_of(svc),
    )
}

impl Controller {
    async fn rebuild(&mut self, mut services: Vec<Service>) {
        self.alloc.clear();
        self.waiting.clear();
        self.services.clear();
        services.sort_by_key(age_order);
        for svc in &services {
            if managed(svc) {
                let key = key_of(svc);
                for ip in status_ips(svc) {
                    if !self.alloc.claim(&key, ip) {
                        warn!(service = %key, %ip, "LB IPAM: the address is another Service's (or outside the pools); this Service gets another");
                    }
                }
            }
        }
        for svc in services {
            self.apply(svc).await;
        }
    }

    async fn apply(&mut self, svc: Service) {
        let key = key_of(&svc);
        if !managed(&svc) {
            self.services.remove(&key);
            self.waiting.remove(&key);
            let held = !self.alloc.held(&key).is_empty();
            self.alloc.release(&key);
            // A Service that stopped being ours (type changed, a class set)
            // loses the addresses we gave it.
            let ours = status_ips(&svc).iter().any(|ip| self.alloc.in_pools(*ip));
            let other_class = svc
                .spec
                .as_ref()
                .is_some_and(|s| s.load_balancer_class.is_some());
            if svc.metadata.deletion_timestamp.is_none() && ours && !other_class {
                self.write_status(&svc, &[]).await;
            }
            if held {
                info!(service = %key, "LB IPAM: released the addresses of a Service no longer of type LoadBalancer");
                self.retry_waiting().await;
            }
            return;
        }
        self.services.insert(key.clone(), svc.clone());
        if self.alloc.held(&key).is_empty() {
            // Addresses another leader gave it stay its own when free.
            for ip in status_ips(&svc) {
                self.alloc.claim(&key, ip);
            }
        }
        let requested = match requested(&svc) {
            Ok(r) => r,
            Err(why) => {
                self.fail(&svc, why).await;
                return;
            }
        };
        match self.alloc.assign(&key, &families(&svc), &requested) {
            Ok(ips) => {
                self.waiting.remove(&key);
                if status_ips(&svc) != ips {
                    self.write_status(&svc, &ips).await;
                }
            }
            Err(e) => {
                // Whatever the status shows that is not ours goes.
                let shown = status_ips(&svc);
                let held = self.alloc.held(&key);
                if shown.iter().any(|ip| !held.contains(ip)) {
                    self.write_status(&svc, &held).await;
                }
                self.fail(&svc, e.to_string()).await;
            }
        }
    }

    async fn fail(&mut self, svc: &Service, why: String) {
        let key = key_of(svc);
        if self.waiting.get(&key) == Some(&why) {
            return;
        }
        warn!(service = %key, "LB IPAM: {why}");
        events::warning(&self.client, COMPONENT, svc, "AllocationFailed", &why).await;
        self.waiting.insert(key, why);
    }

    /// Services that found no address, tried again oldest first.
    async fn retry_waiting(&mut self) {
        let mut waiting: Vec<Service> = self
            .waiting
            .keys()
            .filter_map(|k| self.services.get(k).cloned())
            .collect();
        waiting.sort_by_key(age_order);
        for svc in waiting {
            Box::pin(self.apply(svc)).await;
        }
    }

    async fn write_status(&mut self, svc: &Service, ips: &[IpAddr]) {
        let key = key_of(svc);
        let ingress: Vec<serde_json::Value> = ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
            .collect();
        let patch = if ingress.is_empty() {
            json!({"status": {"loadBalancer": {"ingress": null}}})
        } else {
            json!({"status": {"loadBalancer": {"ingress": ingress}}})
        };
        let api: Api<Service> =
            Api::namespaced(self.client.clone(), &svc.namespace().unwrap_or_default());
        match api
            .patch_status(
                &svc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) if ips.is_empty() => {
                info!(service = %key, "LB IPAM: cleared the ingress addresses")
            }
            Ok(_) => {
                let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
                info!(service = %key, ips = ?list, "LB IPAM: assigned");
                events::normal(
                    &self.client,
                    COMPONENT,
                    svc,
                    "IPAllocated",
                    &format!("Assigned IP {list:?}"),
                )
                .await;
            }
            // Gone meanwhile: its delete event releases the addresses.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => warn!(service = %key, "LB IPAM: writing status.loadBalancer: {e}"),
        }
    }
}

#[cfg(test)]
mod tests;
