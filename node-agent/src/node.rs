//! The agent's Node: registered at start (capacity, allocatable, dual-stack
//! InternalIP addresses, the well-known labels, node info), its conditions
//! (Ready, MemoryPressure, DiskPressure, PIDPressure) measured and posted,
//! and a Lease in `kube-node-lease` renewed so the control plane sees the
//! agent alive, as the kubelet does.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

/// The namespace of node heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How long a Lease stays valid without a renewal (the kubelet's default).
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// Pods a node takes unless told otherwise (the kubelet's default).
pub const DEFAULT_MAX_PODS: u32 = 110;
/// The kubelet version the Node reports (the API's Kubernetes minor).
pub const KUBELET_VERSION: &str = concat!("v1.33.0-shoal.", env!("CARGO_PKG_VERSION"));
/// When the node reports pressure: the kubelet's default hard eviction
/// thresholds (`memory.available<100Mi`, `nodefs.available<10%`) and
/// PIDPressure above 90 % of `pid_max` in use.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// MemoryPressure below this much MemAvailable, in bytes.
    pub memory_available: u64,
    /// DiskPressure below this fraction of free space in the data dir.
    pub nodefs_available: f64,
    /// PIDPressure above this fraction of pid_max in use.
    pub pids_used: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            memory_available: 100 << 20,
            nodefs_available: 0.10,
            pids_used: 0.90,
        }
    }
}

/// What the agent says about its node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The Node's name (`kubernetes.io/hostname` too).
    pub name: String,
    /// InternalIP addresses, IPv4 first by convention.
    pub addresses: Vec<IpAddr>,
    /// CPU capacity as a Kubernetes quantity; the machine's CPUs if none.
    pub capacity_cpu: Option<String>,
    /// Memory capacity as a Kubernetes quantity; MemTotal if none.
    pub capacity_memory: Option<String>,
    /// Most pods the node runs.
    pub max_pods: u32,
    /// Extra labels.
    pub labels: Vec<(String, String)>,
    /// Taints the Node is created with (the kubelet's
    /// `--register-with-taints`); an existing Node keeps its own.
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// The agent's data directory (DiskPressure looks at its filesystem).
    pub data_dir: PathBuf,
    /// How often the Lease is renewed and the conditions posted.
    pub heartbeat: Duration,
    /// When the pressure conditions turn True.
    pub thresholds: Thresholds,
    /// The port of the agent's streaming server (logs, exec), posted as
    /// `status.daemonEndpoints.kubeletEndpoint.Port` for the apiserver.
    pub kubelet_port: u16,
}

impl NodeConfig {
    /// A config with the kubelet's defaults.
    pub fn new(name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            addresses: Vec::new(),
            capacity_cpu: None,
            capacity_memory: None,
            max_pods: DEFAULT_MAX_PODS,
            labels: Vec::new(),
            taints: Vec::new(),
            data_dir: data_dir.into(),
            heartbeat: Duration::from_secs(10),
            thresholds: Thresholds::default(),
            kubelet_port: 10250,
        }
    }
}

/// The Node annotation naming the directory local-path volumes of this
/// node live under (read by the controllers' provisioner).
pub const LOCAL_PATH_ROOT_ANNOTATION: &str = "storage.shoal.io/local-path-root";

/// The Node object the agent registers (metadata and spec; status is
/// posted through `nodes/<name>/status`).
fn node_object(cfg: &NodeConfig) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), json!(cfg.name));
    labels.insert("kubernetes.io/os".into(), json!("linux"));
    labels.insert("kubernetes.io/arch".into(), json!(arch()));
    labels.insert("beta.kubernetes.io/os".into(), json!("linux"));
    labels.insert("beta.kubernetes.io/arch".into(), json!(arch()));
    for (k, v) in &cfg.labels {
        labels.insert(k.clone(), json!(v));
    }
    // Where the controllers' local-path provisioner puts this node's
    // volumes: under the data dir, so agents sharing a host keep theirs
    // apart.
    let storage = cfg.data_dir.join("storage");
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": cfg.name,
            "labels": labels,
            "annotations": {LOCAL_PATH_ROOT_ANNOTATION: storage.to_string_lossy()},
        },
    })
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Reads one `Key: N kB` line of /proc/meminfo, in bytes.
fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".to_string())
}

/// One condition, `status` "True" when the pressure is there.
fn condition(kind: &str, pressure: bool, reason_ok: &str, reason_bad: &str, now: &str) -> Value {
    let (status, reason, message) = if kind == "Ready" {
        ("True", reason_ok, "shoal agent is posting ready status")
    } else if pressure {
        ("True", reason_bad, "the node is under pressure")
    } else {
        ("False", reason_ok, "the node has room")
    };
    json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    })
}

/// What the node measures now.
struct Pressure {
    memory: bool,
    disk: bool,
    pid: bool,
}

fn pressure(cfg: &NodeConfig) -> Pressure {
    let t = cfg.thresholds;
    let memory = meminfo("MemAvailable").is_some_and(|b| b < t.memory_available);
    let disk = nix::sys::statvfs::statvfs(&cfg.data_dir).is_ok_and(|s| {
        let total = s.blocks() as f64;
        total > 0.0 && (s.blocks_available() as f64) / total < t.nodefs_available
    });
    let pid = (|| {
        let max: f64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let used = std::fs::read_dir("/proc")
            .ok()?
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .count() as f64;
        Some(used / max > t.pids_used)
    })()
    .unwrap_or(false);
    Pressure { memory, disk, pid }
}

/// The status the agent posts: capacity, addresses, node info, conditions.
fn node_status(cfg: &NodeConfig, previous: Option<&Node>) -> Value {
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string());
    let cpu = cfg.capacity_cpu.clone().unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .to_string()
    });
    let memory = cfg.capacity_memory.clone().unwrap_or_else(|| {
        meminfo("MemTotal").map_or_else(|| "0".to_string(), |b| format!("{}Ki", b / 1024))
    });
    let resources = json!({"cpu": cpu, "memory": memory, "pods": cfg.max_pods.to_string()});
    let mut addresses: Vec<Value> = cfg
        .addresses
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": cfg.name}));
    let p = pressure(cfg);
    let mut conditions = vec![
        condition("Ready", false, "KubeletReady", "", &now),
        condition(
            "MemoryPressure",
            p.memory,
            "KubeletHasSufficientMemory",
            "KubeletHasInsufficientMemory",
            &now,
        ),
        condition(
            "DiskPressure",
            p.disk,
            "KubeletHasNoDiskPressure",
            "KubeletHasDiskPressure",
            &now,
        ),
        condition(
            "PIDPressure",
            p.pid,
            "KubeletHasSufficientPID",
            "KubeletHasInsufficientPID",
            &now,
        ),
    ];
    // A condition whose status did not change keeps its transition time.
    if let Some(old) = previous
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
    {
        for c in &mut conditions {
            let kind = c["type"].as_str().unwrap_or_default().to_string();
            if let Some(prev) = old.iter().find(|o| o.type_ == kind)
                && Some(prev.status.as_str()) == c["status"].as_str()
                && let Some(t) = &prev.last_transition_time
            {
                c["lastTransitionTime"] = json!(t.0.to_string());
            }
        }
    }
    json!({
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": addresses,
            "conditions": conditions,
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default(),
                "kernelVersion": kernel_version(),
                "osImage": os_image(),
                "containerRuntimeVersion": "runc://shoal",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch(),
            },
            "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.kubelet_port}},
        }
    })
}

/// Creates the Node if it is missing (labels merged in if it exists) and
/// posts its status; returns the Node as stored.
pub async fn register(client: &Client, cfg: &NodeConfig) -> Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let object = node_object(cfg);
    let existing = nodes
        .get_opt(&cfg.name)
        .await
        .with_context(|| format!("reading node {}", cfg.name))?;
    let node = match existing {
        Some(_) => nodes
            .patch(&cfg.name, &PatchParams::default(), &Patch::Merge(&object))
            .await
            .with_context(|| format!("updating node {}", cfg.name))?,
        None => {
            let mut node: Node = serde_json::from_value(object)?;
            if !cfg.taints.is_empty() {
                node.spec.get_or_insert_default().taints = Some(cfg.taints.clone());
            }
            match nodes.create(&PostParams::default(), &node).await {
                Ok(node) => node,
                // Created meanwhile (a restart racing itself): use it.
                Err(kube::Error::Api(e)) if e.code == 409 => nodes.get(&cfg.name).await?,
                Err(e) => {
                    return Err(e).with_context(|| format!("registering node {}", cfg.name));
                }
            }
        }
    };
    let status = node_status(cfg, Some(&node));
    let node = nodes
        .patch_status(&cfg.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("posting the status of node {}", cfg.name))?;
    info!(node = %cfg.name, "registered the node");
    Ok(node)
}

/// Renews the node's Lease (creating it, owned by the Node, if missing).
pub async fn renew_lease(client: &Client, node: &Node, cfg: &NodeConfig) -> Result<Lease> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = jiff::Timestamp::now().to_string();
    let body = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": cfg.name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Node",
                "name": cfg.name,
                "uid": node.metadata.uid.clone().unwrap_or_default(),
            }],
        },
        "spec": {
            "holderIdentity": cfg.name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": now,
        },
    });
    match leases
        .patch(&cfg.name, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Ok(lease) => Ok(lease),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease: Lease = serde_json::from_value(body)?;
            leases
                .create(&PostParams::default(), &lease)
                .await
                .with_context(|| format!("creating the lease of node {}", cfg.name))
        }
        Err(e) => Err(e).with_context(|| format!("renewing the lease of node {}", cfg.name)),
    }
}

/// Removes (each heartbeat) the directories under `root` of provisioned local-path
/// volumes (`pvc-<uid>`) whose PersistentVolume is gone: reclaimPolicy
/// Delete removed it, and pvc-protection kept it until no pod used it.
/// A volume the API cannot be asked about is left alone.
async fn sweep_local_path(client: &Client, root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let volumes: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(client.clone());
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("pvc-") || !entry.path().is_dir() {
            continue;
        }
        match volumes.get_opt(&name).await {
            Ok(None) => match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    info!(volume = %name, path = %entry.path().display(), "removed the directory of a deleted local-path volume")
                }
                Err(e) => warn!(volume = %name, "removing {}: {e}", entry.path().display()),
            },
            Ok(Some(_)) => {}
            Err(e) => debug!(volume = %name, "local-path sweep: {e}"),
        }
    }
}

/// Registers the node, then renews its Lease and posts its conditions
/// every `cfg.heartbeat` until the task is dropped. The Node as last
/// stored (with the podCIDRs node IPAM assigned) goes to `updates`.
pub async fn run(
    client: Client,
    cfg: NodeConfig,
    updates: tokio::sync::watch::Sender<Option<Node>>,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut node = loop {
        match register(&client, &cfg).await {
            Ok(node) => break node,
            Err(e) => {
                warn!("{e:#}; retrying");
                tokio::time::sleep(cfg.heartbeat.min(Duration::from_secs(2))).await;
            }
        }
    };
    let _ = updates.send(Some(node.clone()));
    let mut tick = tokio::time::interval(cfg.heartbeat);
    loop {
        tick.tick().await;
        sweep_local_path(&client, &cfg.data_dir.join("storage")).await;
        if let Err(e) = renew_lease(&client, &node, &cfg).await {
            warn!("{e:#}");
        }
        let status = node_status(&cfg, Some(&node));
        match nodes
            .patch_status(&cfg.name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            Ok(n) => {
                node = n;
                let _ = updates.send(Some(node.clone()));
            }
            // Deleted under the agent: register again, as the kubelet does.
            Err(kube::Error::Api(e)) if e.code == 404 => match register(&client, &cfg).await {
                Ok(n) => node = n,
                Err(e) => warn!("{e:#}"),
            },
            Err(e) => warn!("posting the status of node {}: {e}", cfg.name),
        }
    }
}
