//! NetworkPolicy on this node, control side: allocates cluster-wide
//! security identities for the node's pods, compiles every NetworkPolicy
//! into per-endpoint allow entries, and keeps the pinned policy maps
//! (`POLICY_V1`, `ENDPOINTS_V1`, `IPCACHE4_V1`, `IPCACHE6_V1`) equal to the
//! result. The pod-interface programs that enforce them read these maps.
//!
//! Shaped like the service sync: watches (policies, every pod, namespaces,
//! nodes, identities) mark the state dirty; a pass recomputes everything
//! from the watch caches and writes only the entries that changed. A
//! periodic pass repairs what a failed write or a lost event left behind.
//!
//! Identities ([`allocate`]): the agent that runs a pod makes sure its
//! label set has an `Identity` object, create-if-absent at the number the
//! label set hashes to (see `shoal_api::identity`), so every node derives
//! the same number without talking to the others; remote pods' identities
//! are read from the watch. Unused identities are removed by the
//! control plane's identity garbage collector after a grace period.

mod compile;
mod inspect;
mod kernel;
mod writer;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use shoal_api::identity::{self as id, Labels};
use tokio::sync::Notify;

pub use compile::{
    Allow, CidrIdentities, Desired, EndpointPolicy, Inputs, LocalEndpoint, NamedPort, PodView,
    Ports, compile, desired, kube_dns_labels, policy_cidrs, policy_entries, port_blocks,
    protocol_name, protocol_number, reserved_name, selects,
};
pub use inspect::{PolicyRow, format_identities, format_policy, identity_rows, policy_rows};
pub use kernel::{KernelMapError, KernelPolicyMaps};
pub use writer::{Changes, MemoryMaps, PolicyMapError, PolicyMaps, PolicyWriter};

/// How often every pass runs even without events.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// How soon a failed pass (identity not allocated yet, a veth missing,
/// a map write failing) is retried.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How many numbers an allocation tries past its preferred one before
/// giving up (hash collisions are rare; 64 in a row means something else
/// is wrong).
const MAX_PROBES: u32 = 64;

/// How the policy sync runs on one node.
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    /// This node's name.
    pub node: String,
    /// Where the node pins its maps.
    pub pin_dir: PathBuf,
    /// Addresses of the node-local DNS server (the reserved kube-dns
    /// identity).
    pub local_dns: Vec<IpAddr>,
    /// How often everything is recomputed without events.
    pub resync_interval: Duration,
    /// How soon a failed pass is retried.
    pub retry_interval: Duration,
}

impl PolicyConfig {
    /// The defaults for node `node` pinning under `pin_dir`.
    pub fn new(node: impl Into<String>, pin_dir: PathBuf) -> Self {
        Self {
            node: node.into(),
            pin_dir,
            local_dns: Vec::new(),
            resync_interval: DEFAULT_RESYNC_INTERVAL,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }
}

/// Errors of the policy sync and identity allocation.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The pinned maps could not be opened.
    #[error(transparent)]
    Maps(#[from] KernelMapError),
    /// A map write failed.
    #[error(transparent)]
    Write(#[from] PolicyMapError),
    /// The API refused or failed an identity request.
    #[error("allocating the identity of labels {labels}: {source}")]
    Allocate {
        /// The label set, as `k=v,...`.
        labels: String,
        /// What the API said.
        #[source]
        source: Box<kube::Error>,
    },
    /// Every number tried was taken by other label sets.
    #[error(
        "allocating the identity of labels {labels}: {MAX_PROBES} numbers from {first} are all held by other label sets; delete unused Identities (kubectl get identities)"
    )]
    Exhausted {
        /// The label set.
        labels: String,
        /// The first number tried.
        first: u32,
    },
    /// A pass could not finish; retried.
    #[error("{0}")]
    Pass(String),
}

/// The API resource of `shoal.io/v1alpha1` Identity.
pub fn identity_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(id::GROUP, id::VERSION, id::KIND),
        id::PLURAL,
    )
}

fn format_labels(set: &Labels) -> String {
    set.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The identity number of label set `set`, creating its Identity when no
/// node has yet: create-if-absent at the preferred number, and on a
/// conflict the existing object decides (same labels: that number; other
/// labels: the next number). `known` holds what the caller's watch has
/// already seen.
pub async fn allocate(
    api: &Api<DynamicObject>,
    known: &BTreeMap<Labels, u32>,
    set: &Labels,
) -> Result<u32, PolicyError> {
    if let Some(n) = known.get(set) {
        return Ok(*n);
    }
    let fail = |source: kube::Error| PolicyError::Allocate {
        labels: format_labels(set),
        source: Box::new(source),
    };
    let first = id::preferred_number(set);
    let mut n = first;
    let mut tries = 0;
    while tries < MAX_PROBES {
        let obj: DynamicObject = serde_json::from_value(id::object(n, set))
            .map_err(|e| PolicyError::Pass(e.to_string()))?;
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {
                tracing::info!(identity = n, labels = %format_labels(set), "allocated identity");
                return Ok(n);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                match api.get_opt(&n.to_string()).await.map_err(fail)? {
                    Some(existing) if id::labels_of(&existing.data).as_ref() == Some(set) => {
                        return Ok(n);
                    }
                    Some(_) => {
                        n = id::next_number(n);
                        tries += 1;
                    }
                    // Collected between our create and get: try it again.
                    None => tries += 1,
                }
            }
            Err(e) => return Err(fail(e)),
        }
    }
    Err(PolicyError::Exhausted {
        labels: format_labels(set),
        first,
    })
}

/// Runs a reflector for `api` into `writer`, waking `notify` on every
/// event, until the watch ends (it does not on its own).
async fn reflect<K>(api: Api<K>, writer: reflector::store::Writer<K>, notify: Arc<Notify>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    futures_util::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            tracing::debug!(error = %e, "policy watch error; kube's watcher retries");
        }
        notify.notify_one();
    }
}

/// The watch caches a pass reads.
struct Caches {
    policies: Store<NetworkPolicy>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    nodes: Store<Node>,
    identities: Store<DynamicObject>,
}

/// The agent's policy sync: returns only on a fatal error.
pub async fn run(client: Client, config: PolicyConfig) -> Result<(), PolicyError> {
    let maps = KernelPolicyMaps::open_or_create(&config.pin_dir)?;
    let mut writer = PolicyWriter::restore(maps)?;
    let notify = Arc::new(Notify::new());
    let (policies, w_policies) = reflector::store::<NetworkPolicy>();
    let (pods, w_pods) = reflector::store::<Pod>();
    let (namespaces, w_namespaces) = reflector::store::<Namespace>();
    let (nodes, w_nodes) = reflector::store::<Node>();
    let ar = identity_resource();
    let w_identities = reflector::store::Writer::<DynamicObject>::new(ar.clone());
    let identities = w_identities.as_reader();
    tokio::spawn(reflect(
        Api::all(client.clone()),
        w_policies,
        notify.clone(),
    ));
    tokio::spawn(reflect(Api::all(client.clone()), w_pods, notify.clone()));
    tokio::spawn(reflect(
        Api::all(client.clone()),
        w_namespaces,
        notify.clone(),
    ));
    tokio::spawn(reflect(Api::all(client.clone()), w_nodes, notify.clone()));
    let identity_api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    {
        let api = identity_api.clone();
        let notify = notify.clone();
        tokio::spawn(async move {
            let stream = reflector::reflector(
                w_identities,
                watcher::watcher(api, watcher::Config::default()),
            )
            .default_backoff();
            futures_util::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::debug!(error = %e, "identity watch error; kube's watcher retries");
                }
                notify.notify_one();
            }
        });
    }
    let caches = Caches {
        policies,
        pods,
        namespaces,
        nodes,
        identities,
    };
    for ready in [
        caches.policies.wait_until_ready().await.is_ok(),
        caches.pods.wait_until_ready().await.is_ok(),
        caches.namespaces.wait_until_ready().await.is_ok(),
        caches.nodes.wait_until_ready().await.is_ok(),
        caches.identities.wait_until_ready().await.is_ok(),
    ] {
        if !ready {
            return Err(PolicyError::Pass(
                "a policy watch ended before its first list".into(),
            ));
        }
    }
    tracing::info!(pin_dir = %config.pin_dir.display(), "policy sync started");
    let mut cidrs = CidrIdentities::default();
    let mut last: Vec<EndpointPolicy> = Vec::new();
    loop {
        let wait = match pass(&caches, &identity_api, &config, &mut cidrs, &mut writer).await {
            Ok((compiled, complete)) => {
                if compiled != last {
                    for ep in &compiled {
                        tracing::debug!(pod = %ep.pod, endpoint = ep.endpoint, identity = ep.identity, ingress = ?ep.ingress.as_ref().map(BTreeSet::len), egress = ?ep.egress.as_ref().map(BTreeSet::len), "endpoint policy");
                    }
                    last = compiled;
                }
                if complete {
                    config.resync_interval
                } else {
                    config.retry_interval
                }
            }
            Err(e) => {
                tracing::warn!("policy pass: {e}");
                config.retry_interval
            }
        };
        tokio::select! {
            () = notify.notified() => {
                // Coalesce a burst of events into one pass.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The labels of an object's metadata as a sorted map.
fn labels_of_meta(labels: Option<&BTreeMap<String, String>>) -> Labels {
    labels.cloned().unwrap_or_default()
}

/// Whether a pod takes part in policy: it has its own network and is not
/// finished.
fn policy_pod(pod: &Pod) -> bool {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !host_network && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Container ports a pod declares.
fn pod_ports(pod: &Pod) -> Vec<NamedPort> {
    let mut out = Vec::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for p in c.ports.iter().flatten() {
            let (Some(name), Some(protocol), Ok(port)) = (
                p.name.as_ref(),
                protocol_number(p.protocol.as_deref()),
                u16::try_from(p.container_port),
            ) else {
                continue;
            };
            out.push(NamedPort {
                name: name.clone(),
                protocol,
                port,
            });
        }
    }
    out
}

/// One pass: returns what was compiled and whether every local pod got an
/// endpoint (false: retry soon).
async fn pass(
    caches: &Caches,
    identity_api: &Api<DynamicObject>,
    config: &PolicyConfig,
    cidrs: &mut CidrIdentities,
    writer: &mut PolicyWriter<KernelPolicyMaps>,
) -> Result<(Vec<EndpointPolicy>, bool), PolicyError> {
    let namespaces: BTreeMap<String, Labels> = caches
        .namespaces
        .state()
        .iter()
        .map(|ns| {
            (
                ns.metadata.name.clone().unwrap_or_default(),
                labels_of_meta(ns.metadata.labels.as_ref()),
            )
        })
        .collect();
    let mut identities: BTreeMap<u32, Labels> = BTreeMap::new();
    let mut by_labels: BTreeMap<Labels, u32> = BTreeMap::new();
    for obj in caches.identities.state() {
        let (Some(n), Some(set)) = (
            obj.metadata.name.as_deref().and_then(id::parse_name),
            id::labels_of(&obj.data),
        ) else {
            continue;
        };
        // Two objects for one set only after a race with the collector:
        // the lower number wins everywhere.
        by_labels
            .entry(set.clone())
            .and_modify(|m| *m = (*m).min(n))
            .or_insert(n);
        identities.insert(n, set);
    }
    identities.insert(
        shoal_ebpf_common::policy::IDENTITY_KUBE_DNS,
        kube_dns_labels(),
    );
    let empty = Labels::new();
    let mut complete = true;
    let mut pods = Vec::new();
    let mut endpoints = Vec::new();
    for pod in caches.pods.state() {
        if !policy_pod(&pod) {
            continue;
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let labels = labels_of_meta(pod.metadata.labels.as_ref());
        let set = id::security_labels(
            &labels,
            &namespace,
            namespaces.get(&namespace).unwrap_or(&empty),
        );
        let local = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&config.node);
        let identity = if local {
            match allocate(identity_api, &by_labels, &set).await {
                Ok(n) => {
                    by_labels.insert(set.clone(), n);
                    identities.insert(n, set.clone());
                    Some(n)
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    complete = false;
                    None
                }
            }
        } else {
            by_labels.get(&set).copied()
        };
        let ips: Vec<IpAddr> = pod
            .status
            .iter()
            .flat_map(|s| s.pod_ips.iter().flatten())
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        let view = PodView {
            namespace,
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels,
            identity,
            ips,
            ports: pod_ports(&pod),
            local,
        };
        if local {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let veth = shoal_sandbox::host_veth_name(&uid);
            match nix::net::if_::if_nametoindex(veth.as_str()) {
                Ok(ifindex) => endpoints.push(LocalEndpoint {
                    endpoint: ifindex,
                    pod: view.clone(),
                }),
                // The sandbox is not wired yet; a later pass finds it.
                Err(_) => {
                    if !view.ips.is_empty() {
                        complete = false;
                    }
                }
            }
        }
        pods.push(view);
    }
    let mut node_ips = Vec::new();
    let mut remote_node_ips = Vec::new();
    for node in caches.nodes.state() {
        let addrs = node
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse::<IpAddr>().ok());
        if node.metadata.name.as_deref() == Some(&config.node) {
            node_ips.extend(addrs);
        } else {
            remote_node_ips.extend(addrs);
        }
    }
    let policies: Vec<NetworkPolicy> = caches
        .policies
        .state()
        .iter()
        .map(|p| (**p).clone())
        .collect();
    let cidr_identities = cidrs.sync(&policy_cidrs(&policies)).clone();
    let inputs = Inputs {
        policies,
        identities,
        pods,
        endpoints,
        cidr_identities,
        node_ips,
        remote_node_ips,
        local_dns: config.local_dns.clone(),
    };
    let compiled = compile(&inputs);
    let want = desired(&inputs, &compiled);
    let changes = writer.apply(&want)?;
    if changes != Changes::default() {
        tracing::info!(
            written = changes.written,
            deleted = changes.deleted,
            endpoints = compiled.len(),
            "policy maps updated"
        );
    }
    Ok((compiled, complete))
}

#[cfg(test)]
mod tests;
