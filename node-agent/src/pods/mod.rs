//! Pods on this node, made real: the kubelet's job. The agent watches the
//! pods bound to its node and gives each one a worker ([`worker`]) that
//! builds its sandbox (network namespace, veth, dual-stack addresses), its
//! files (`/etc/hosts`, `/etc/resolv.conf`, volumes), runs its init and app
//! containers through runc or crun, restarts them by the pod's policy with
//! the kubelet's back-off, probes them, posts the pod's status, and tears
//! everything down when the pod is deleted. Routes to other nodes' pod
//! CIDRs follow the Nodes ([`run`] keeps them).
//!
//! Containers are named `<pod uid>.<container>.<attempt>` in the runtime,
//! so an agent that restarts finds its pods' containers again and adopts
//! the running ones instead of restarting them.

mod files;
mod objects;
mod probe;
mod spec;
mod status;
mod tmpfs;
mod worker;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use shoal_runtime::{ExitEvent, ExitWatcher, ImageStore, Runtime};
use shoal_sandbox::{Network, NetworkConfig, PeerRoute};
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{info, warn};

pub use status::CONTAINER_ID_SCHEME;

/// The cluster DNS service's addresses (`kube-system/kube-dns`).
pub const DEFAULT_CLUSTER_DNS: [&str; 2] = ["10.96.0.10", "fd00:10:96::a"];
/// The cluster domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// The kubelet's first restart back-off.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// The kubelet's longest restart back-off.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How the agent runs pods.
#[derive(Clone, Debug)]
pub struct PodsConfig {
    /// This node's name; pods with `spec.nodeName` equal to it are ours.
    pub node_name: String,
    /// The node's own addresses (`status.hostIPs`, hostNetwork pods' IPs).
    pub node_ips: Vec<IpAddr>,
    /// The agent's data directory: images, runtime state, sandboxes,
    /// pods' files and logs live below it.
    pub data_dir: PathBuf,
    /// The OCI runtime binary (`runc` or `crun`).
    pub runtime_binary: PathBuf,
    /// Binaries for RuntimeClass handlers: handler name → binary.
    pub runtime_handlers: HashMap<String, PathBuf>,
    /// The cgroup parent of every pod, e.g. `/shoal/<node>`: pod `U`'s
    /// containers live in `<parent>/pod-U/<container>`.
    pub cgroup_parent: String,
    /// Nameservers pods with `dnsPolicy: ClusterFirst` get.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster domain for search paths.
    pub cluster_domain: String,
    /// An OCI archive imported at start when the store lacks it (the
    /// busybox image `cargo xtask setup` builds).
    pub seed_image: Option<PathBuf>,
    /// The registries images are pulled from (`--registry`,
    /// `--insecure-registry`; loopback ones always).
    pub registries: shoal_runtime::RegistryConfig,
    /// The first restart back-off; doubles up to [`PodsConfig::backoff_max`].
    pub backoff_initial: Duration,
    /// The longest restart back-off.
    pub backoff_max: Duration,
    /// MTU of pod veths; the kernel's default when `None`.
    pub mtu: Option<u32>,
    /// Node-local service addresses put on the node's `lo` once the pod
    /// network is open (the node-local DNS server's).
    pub local_addresses: Vec<IpAddr>,
    /// A container log above this many bytes is rotated (the kubelet's
    /// `containerLogMaxSize`, 10 MiB).
    pub container_log_max_size: u64,
    /// Log files kept per container, the live one included (the
    /// kubelet's `containerLogMaxFiles`, 5).
    pub container_log_max_files: usize,
    /// The stdins and terminals of containers that have one, shared with
    /// the streaming server's attach.
    pub consoles: shoal_runtime::Consoles,
}

impl PodsConfig {
    /// The kubelet's defaults for node `node_name` keeping its state in
    /// `data_dir`.
    pub fn new(node_name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        let node_name = node_name.into();
        Self {
            cgroup_parent: format!("/shoal/{node_name}"),
            node_name,
            node_ips: Vec::new(),
            data_dir: data_dir.into(),
            runtime_binary: PathBuf::from(shoal_runtime::RUNC),
            runtime_handlers: HashMap::from([
                ("runc".to_owned(), PathBuf::from(shoal_runtime::RUNC)),
                ("crun".to_owned(), PathBuf::from(shoal_runtime::CRUN)),
            ]),
            cluster_dns: DEFAULT_CLUSTER_DNS
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_owned(),
            seed_image: shoal_runtime::busybox_archive(),
            registries: shoal_runtime::RegistryConfig::default(),
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            mtu: None,
            local_addresses: Vec::new(),
            container_log_max_size: 10 << 20,
            container_log_max_files: 5,
            consoles: shoal_runtime::Consoles::new(),
        }
    }
}

/// What every pod worker shares.
pub(crate) struct Ctx {
    pub client: Client,
    pub cfg: PodsConfig,
    pub images: ImageStore,
    pub runtimes: HashMap<String, Arc<Runtime>>,
    pub default_runtime: Arc<Runtime>,
    pub network: Network,
    pub exits: ExitWatcher,
    /// Serialises image unpacking (two pods of one image share a rootfs).
    pub unpack: Mutex<()>,
    /// ConfigMaps the pods read, watched.
    pub config_maps: objects::ObjectCache<ConfigMap>,
    /// Secrets the pods read, watched.
    pub secrets: objects::ObjectCache<Secret>,
}

impl Ctx {
    /// The runtime for a pod's `runtimeClassName` handler.
    pub fn runtime_for(&self, handler: Option<&str>) -> &Arc<Runtime> {
        handler
            .and_then(|h| self.runtimes.get(h))
            .unwrap_or(&self.default_runtime)
    }

    /// Where pod `uid` keeps its files.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.cfg.data_dir.join("pods").join(uid)
    }

    /// Where container logs live:
    /// `<ns>_<pod>_<uid>/<container>/<attempt>.log` below it.
    pub fn logs_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("logs")
    }
}

/// Runs the pods bound to this node until the task is dropped: waits for
/// the Node's podCIDRs, opens the pod network, adopts what a previous agent
/// left running, keeps the routes to other nodes' pods, and drives one
/// worker per pod.
pub async fn run(client: Client, cfg: PodsConfig) -> Result<()> {
    shoal_runtime::set_subreaper().context("becoming the child subreaper of container inits")?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let images = ImageStore::open(&cfg.data_dir.join("images"))
        .context("opening the agent's image store")?;
    if let Some(seed) = &cfg.seed_image {
        match images.import_if_missing(shoal_runtime::BUSYBOX_REFERENCE, seed) {
            Ok(_) => {}
            Err(e) => warn!("seeding the image store from {}: {e}", seed.display()),
        }
    }
    let runtime_root = cfg.data_dir.join("runtime");
    let default_runtime = Arc::new(Runtime::new(
        &cfg.runtime_binary,
        runtime_root.join("default"),
    ));
    let runtimes = cfg
        .runtime_handlers
        .iter()
        .map(|(name, bin)| {
            (
                name.clone(),
                Arc::new(Runtime::new(bin, runtime_root.join(name))),
            )
        })
        .collect::<HashMap<_, _>>();

    let node = wait_for_pod_cidrs(&client, &cfg.node_name).await?;
    let mut net = NetworkConfig {
        data_dir: cfg.data_dir.join("net"),
        pod_cidr_v4: None,
        pod_cidr_v6: None,
        mtu: cfg.mtu,
    };
    for cidr in node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
    {
        match cidr.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(v4)) => net.pod_cidr_v4 = Some(v4),
            Ok(ipnet::IpNet::V6(v6)) => net.pod_cidr_v6 = Some(v6),
            Err(e) => warn!("node {}: podCIDR {cidr:?}: {e}", cfg.node_name),
        }
    }
    info!(node = %cfg.node_name, v4 = ?net.pod_cidr_v4, v6 = ?net.pod_cidr_v6, "pod network");
    let network = Network::open(net)
        .await
        .context("opening the pod network")?;
    network
        .add_local_addresses(&cfg.local_addresses)
        .await
        .context("adding the node-local addresses")?;

    let (exits, exit_rx) = ExitWatcher::start(Duration::from_millis(250));
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        cfg,
        images,
        runtimes,
        default_runtime,
        network,
        exits,
        unpack: Mutex::new(()),
        config_maps: objects::ObjectCache::new(client.clone()),
        secrets: objects::ObjectCache::new(client.clone()),
    });

    let peers = tokio::spawn(peer_routes(ctx.clone()));
    let logs = tokio::spawn(rotate_logs(ctx.clone()));
    let result = manage(ctx, exit_rx).await;
    peers.abort();
    logs.abort();
    result
}

/// How often container logs are checked for rotation (the kubelet's
/// `containerLogMonitorInterval`).
const LOG_ROTATION_PERIOD: Duration = Duration::from_secs(10);

/// Rotates every container log under `DATA_DIR/logs` that outgrew
/// `container_log_max_size`, keeping `container_log_max_files` per log.
async fn rotate_logs(ctx: Arc<Ctx>) {
    let root = ctx.logs_dir();
    let (max_bytes, max_files) = (
        ctx.cfg.container_log_max_size,
        ctx.cfg.container_log_max_files,
    );
    let mut tick = tokio::time::interval(LOG_ROTATION_PERIOD);
    loop {
        tick.tick().await;
        let root = root.clone();
        let _ = tokio::task::spawn_blocking(move || {
            // DATA_DIR/logs/<ns>_<pod>_<uid>/<container>/<attempt>.log
            let dirs = |p: &std::path::Path| {
                std::fs::read_dir(p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .collect::<Vec<_>>()
            };
            for container in dirs(&root).iter().flat_map(|pod| dirs(pod)) {
                for log in dirs(&container) {
                    if log.extension().is_none_or(|e| e != "log") {
                        continue;
                    }
                    match shoal_runtime::rotate_log(&log, max_bytes, max_files) {
                        Ok(true) => info!(log = %log.display(), "rotated the container log"),
                        Ok(false) => {}
                        Err(e) => warn!(log = %log.display(), "rotating the container log: {e}"),
                    }
                }
            }
        })
        .await;
    }
}

/// Polls the Node until node IPAM has given it podCIDRs.
async fn wait_for_pod_cidrs(client: &Client, name: &str) -> Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut said = false;
    loop {
        match nodes.get_opt(name).await {
            Ok(Some(node))
                if node
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidrs.as_ref())
                    .is_some_and(|c| !c.is_empty()) =>
            {
                return Ok(node);
            }
            Ok(_) if !said => {
                info!("waiting for node {name} to be registered with podCIDRs");
                said = true;
            }
            Ok(_) => {}
            Err(e) => warn!("reading node {name}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keeps a route to every other node's podCIDRs via its InternalIP of the
/// same family.
async fn peer_routes(ctx: Arc<Ctx>) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let mut stream = watcher(nodes, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut known: HashMap<String, Node> = HashMap::new();
    let mut listing: HashMap<String, Node> = HashMap::new();
    let mut last: Option<Vec<PeerRoute>> = None;
    while let Some(event) = stream.next().await {
        // A relist replaces the whole set at InitDone: routes are never
        // computed from a partial list.
        match event {
            Ok(watcher::Event::Apply(n)) => {
                known.insert(n.metadata.name.clone().unwrap_or_default(), n);
            }
            Ok(watcher::Event::InitApply(n)) => {
                listing.insert(n.metadata.name.clone().unwrap_or_default(), n);
                continue;
            }
            Ok(watcher::Event::Delete(n)) => {
                known.remove(&n.metadata.name.clone().unwrap_or_default());
            }
            Ok(watcher::Event::Init) => {
                listing.clear();
                continue;
            }
            Ok(watcher::Event::InitDone) => known = std::mem::take(&mut listing),
            Err(e) => {
                warn!("watching nodes: {e}");
                continue;
            }
        }
        let routes = desired_peer_routes(&ctx.cfg.node_name, known.values());
        if last.as_ref() == Some(&routes) {
            continue;
        }
        match ctx.network.set_peer_routes(&routes).await {
            Ok(()) => last = Some(routes),
            Err(e) => warn!("setting routes to other nodes' pods: {e}"),
        }
    }
}

/// One route per other node and family it has both a podCIDR and an
/// InternalIP for.
fn desired_peer_routes<'a>(me: &str, nodes: impl Iterator<Item = &'a Node>) -> Vec<PeerRoute> {
    let mut routes = Vec::new();
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        if name == me {
            continue;
        }
        let ips: Vec<IpAddr> = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        for cidr in node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidrs.clone())
            .unwrap_or_default()
        {
            let Ok(cidr) = cidr.parse::<ipnet::IpNet>() else {
                continue;
            };
            if let Some(via) = ips.iter().find(|ip| ip.is_ipv4() == cidr.addr().is_ipv4()) {
                routes.push(PeerRoute {
                    node: name.clone(),
                    pod_cidr: cidr,
                    via: *via,
                });
            }
        }
    }
    routes.sort_by(|a, b| (&a.node, a.pod_cidr).cmp(&(&b.node, b.pod_cidr)));
    routes
}

/// A running pod worker: the latest object goes in, exits are routed to it.
struct Handle {
    pod: watch::Sender<Option<Arc<Pod>>>,
    exits: mpsc::UnboundedSender<ExitEvent>,
    task: tokio::task::JoinHandle<()>,
}

/// Watches this node's pods and routes objects and container exits to one
/// worker per pod uid.
async fn manage(ctx: Arc<Ctx>, mut exit_rx: mpsc::UnboundedReceiver<ExitEvent>) -> Result<()> {
    let adopted = worker::Adopted::recover(&ctx).await;
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.cfg.node_name));
    let mut stream = watcher(pods, config).default_backoff().boxed();
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut adopted = Some(adopted);
    let mut seen_in_list: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        tokio::select! {
            event = stream.next() => {
                let Some(event) = event else { break };
                match event {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                        let uid = pod.metadata.uid.clone().unwrap_or_default();
                        if uid.is_empty() { continue; }
                        seen_in_list.insert(uid.clone());
                        let pod = Arc::new(pod);
                        match workers.get(&uid) {
                            Some(h) if !h.task.is_finished() => { let _ = h.pod.send(Some(pod)); }
                            _ => {
                                let handle = spawn_worker(&ctx, pod, adopted.as_mut());
                                workers.insert(uid, handle);
                            }
                        }
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        let uid = pod.metadata.uid.clone().unwrap_or_default();
                        if let Some(h) = workers.get(&uid) { let _ = h.pod.send(None); }
                    }
                    Ok(watcher::Event::Init) => seen_in_list.clear(),
                    Ok(watcher::Event::InitDone) => {
                        // Pods gone while we were not watching.
                        for (uid, h) in &workers {
                            if !seen_in_list.contains(uid) { let _ = h.pod.send(None); }
                        }
                        // Containers of pods that no longer exist.
                        if let Some(a) = adopted.take() {
                            a.clean_up_orphans(&ctx, &seen_in_list).await;
                        }
                    }
                    Err(e) => warn!("watching the pods of node {}: {e}", ctx.cfg.node_name),
                }
                workers.retain(|_, h| !h.task.is_finished());
            }
            exit = exit_rx.recv() => {
                let Some(exit) = exit else { break };
                let uid = exit.id.split('.').next().unwrap_or_default().to_owned();
                match workers.get(&uid) {
                    Some(h) => { let _ = h.exits.send(exit); }
                    None => tracing::debug!(id = %exit.id, "exit of a container no worker owns"),
                }
            }
        }
    }
    Ok(())
}

fn spawn_worker(ctx: &Arc<Ctx>, pod: Arc<Pod>, adopted: Option<&mut worker::Adopted>) -> Handle {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let containers = adopted.map(|a| a.take(&uid)).unwrap_or_default();
    let (pod_tx, pod_rx) = watch::channel(Some(pod));
    let (exit_tx, exit_rx) = mpsc::unbounded_channel();
    let task =
        tokio::spawn(worker::PodWorker::new(ctx.clone(), uid, containers).run(pod_rx, exit_rx));
    Handle {
        pod: pod_tx,
        exits: exit_tx,
        task,
    }
}

/// `dir` joined with a relative path taken from a pod spec, refusing `..`
/// and absolute paths so a volume item cannot write outside its volume.
pub(crate) fn safe_join(dir: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return None;
    }
    Some(dir.join(rel))
}

#[cfg(test)]
mod tests;

/// Stops and removes everything pods left on this node: every container in
/// the agent's runtime roots, every sandbox (network namespace, veth,
/// addresses), the pods' cgroups and files. For taking a node down for good
/// (k3s' `killall`); a restarted agent would otherwise adopt them.
pub async fn reset(data_dir: &Path, cgroup_parent: &str) -> Result<()> {
    let mut problems = Vec::new();
    let runtime_root = data_dir.join("runtime");
    if let Ok(entries) = std::fs::read_dir(&runtime_root) {
        for e in entries.flatten() {
            let binary = match e.file_name().to_str() {
                Some("crun") => shoal_runtime::CRUN,
                _ => shoal_runtime::RUNC,
            };
            let runtime = Runtime::new(binary, e.path());
            match runtime.list().await {
                Ok(list) => {
                    for c in list {
                        shoal_runtime::release_terminal(&c.bundle);
                        if let Err(e) = runtime.delete(&c.id, true).await {
                            problems.push(format!("container {}: {e}", c.id));
                        }
                    }
                }
                Err(err) => problems.push(format!("listing {}: {err}", e.path().display())),
            }
        }
    }
    let net_dir = data_dir.join("net");
    if net_dir.exists() {
        let network = Network::open(NetworkConfig {
            data_dir: net_dir,
            pod_cidr_v4: None,
            pod_cidr_v6: None,
            mtu: None,
        })
        .await
        .context("opening the pod network (is the agent still running?)")?;
        for s in network.sandboxes().await? {
            if let Err(e) = network.remove_sandbox(&s.pod_uid).await {
                problems.push(format!("sandbox {}: {e}", s.pod_uid));
            }
        }
    }
    let cgroups = shoal_runtime::CgroupMounts::detect().context("finding the cgroup mounts")?;
    if let Err(e) = cgroups.remove(cgroup_parent) {
        problems.push(format!("cgroup {cgroup_parent}: {e}"));
    }
    let pods_dir = data_dir.join("pods");
    if let Ok(entries) = std::fs::read_dir(&pods_dir) {
        for e in entries.flatten() {
            if let Ok(bundles) = std::fs::read_dir(e.path().join("bundles")) {
                for b in bundles.flatten() {
                    let _ = shoal_runtime::Bundle::open(&b.path()).remove();
                }
            }
        }
    }
    tmpfs::unmount_under(&pods_dir);
    let _ = std::fs::remove_dir_all(&pods_dir);
    anyhow::ensure!(
        problems.is_empty(),
        "resetting {} left: {}",
        data_dir.display(),
        problems.join("; ")
    );
    Ok(())
}
