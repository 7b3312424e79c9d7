//! Who an address is: pods by IP (every namespace, every node) and the
//! services whose EndpointSlices list an address and port, kept fresh by
//! watches of their own so resolving a flow never waits on the API.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use futures_util::StreamExt as _;
use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};

use super::record::Endpoint;

/// A pod as flows name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// Its uid (so a deleted pod's IP is only forgotten by its own delete).
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Node it is bound to.
    pub node: Option<String>,
}

/// A backend: address, port, protocol (`TCP`, `UDP`, `SCTP`).
type Backend = (IpAddr, u16, String);

/// The agent's view of pods and service endpoints.
#[derive(Debug, Default)]
pub struct Directory {
    pods: HashMap<IpAddr, PodRef>,
    /// slice `namespace/name` → its service and (ip, port, protocol) list.
    slices: HashMap<String, (String, Vec<Backend>)>,
    /// (ip, port, protocol) → services, rebuilt from `slices`.
    backends: HashMap<Backend, Vec<String>>,
}

/// A shared directory.
pub type Shared = Arc<RwLock<Directory>>;

impl Directory {
    /// Records a pod's addresses (host-network pods share the node's and
    /// are left out).
    pub fn put_pod(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if host_network {
            return;
        }
        let r = PodRef {
            uid,
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        };
        let status = pod.status.as_ref();
        let ips = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|p| p.ip.clone())
            .chain(status.and_then(|s| s.pod_ip.clone()));
        for ip in ips {
            if let Ok(ip) = ip.parse::<IpAddr>() {
                self.pods.insert(ip, r.clone());
            }
        }
    }

    /// Forgets a pod's addresses (only those still naming it).
    pub fn delete_pod(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        self.pods.retain(|_, r| r.uid != uid);
    }

    /// Records an EndpointSlice's ready addresses and ports.
    pub fn put_slice(&mut self, slice: &EndpointSlice) {
        let key = slice_key(slice);
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            self.delete_slice(slice);
            return;
        };
        let service = format!(
            "{}/{service}",
            slice.metadata.namespace.as_deref().unwrap_or_default()
        );
        let mut list = Vec::new();
        for ep in &slice.endpoints {
            for a in &ep.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                for p in slice.ports.iter().flatten() {
                    let Some(port) = p.port.and_then(|p| u16::try_from(p).ok()) else {
                        continue;
                    };
                    let proto = p.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
                    list.push((ip, port, proto));
                }
            }
        }
        self.slices.insert(key, (service, list));
        self.rebuild();
    }

    /// Forgets an EndpointSlice.
    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        if self.slices.remove(&slice_key(slice)).is_some() {
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        self.backends.clear();
        for (service, list) in self.slices.values() {
            for b in list {
                let services = self.backends.entry(b.clone()).or_default();
                if !services.contains(service) {
                    services.push(service.clone());
                }
            }
        }
    }

    /// The pod holding `ip`.
    pub fn pod(&self, ip: &IpAddr) -> Option<&PodRef> {
        self.pods.get(ip)
    }

    /// Fills in what is known about `e` (`transport`: `tcp`/`udp`).
    pub fn resolve(&self, e: &mut Endpoint, transport: &str) {
        let Some(ip) = e.ip else { return };
        if let Some(p) = self.pods.get(&ip) {
            e.pod = Some(p.name.clone());
            e.namespace = Some(p.namespace.clone());
            e.node = p.node.clone();
        }
        let key = (ip, e.port, transport.to_uppercase());
        if let Some(services) = self.backends.get(&key) {
            e.services = services.clone();
        }
    }
}

fn slice_key(slice: &EndpointSlice) -> String {
    format!(
        "{}/{}",
        slice.metadata.namespace.as_deref().unwrap_or_default(),
        slice.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Keeps `dir` fresh from Pod and EndpointSlice watches until the task
/// is dropped.
pub async fn watch(client: Client, dir: Shared) {
    let pods = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(|e| Change::Pod(Box::new(e)));
    let slices = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| Change::Slice(Box::new(e)));
    let mut events = std::pin::pin!(futures_util::stream::select(pods, slices));
    while let Some(change) = events.next().await {
        let mut d = dir
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match change {
            Change::Pod(e) => match *e {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => d.put_pod(&p),
                Ok(watcher::Event::Delete(p)) => d.delete_pod(&p),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "flows: pod watch error; retrying"),
            },
            Change::Slice(e) => match *e {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => d.put_slice(&s),
                Ok(watcher::Event::Delete(s)) => d.delete_slice(&s),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "flows: EndpointSlice watch error; retrying"),
            },
        }
    }
}

enum Change {
    Pod(Box<Result<watcher::Event<Pod>, watcher::Error>>),
    Slice(Box<Result<watcher::Event<EndpointSlice>, watcher::Error>>),
}
