//! The kubelet's Summary API subset (`GET /stats/summary`): CPU and memory
//! of the node and of every pod and container on it, read from their
//! cgroups (v1 `cpuacct`/`memory` or cgroup2 `cpu.stat`/`memory.*`), as
//! metrics-server and shoal's apiserver read it.
//!
//! `usageNanoCores` is a rate, so it needs two samples: a housekeeping
//! task samples every cgroup periodically (cAdvisor's job in the kubelet)
//! and a request samples again; the rate is the difference over the window
//! between them, kept per cgroup. A cgroup seen for the first time has no
//! rate yet and its `usageNanoCores` is left out, as the kubelet does.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;
use shoal_runtime::CgroupMounts;

#[cfg(test)]
mod tests;

/// How often every cgroup is sampled in the background (cAdvisor's
/// housekeeping interval).
pub const DEFAULT_HOUSEKEEPING: Duration = Duration::from_secs(10);
/// The shortest window a CPU rate is computed over; a request closer than
/// this to the last sample reports the previous rate.
const MIN_WINDOW: Duration = Duration::from_secs(1);

/// `GET /stats/summary`'s answer (kubelet `stats/v1alpha1.Summary`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The node as a whole.
    pub node: NodeStats,
    /// Every pod with a cgroup on the node.
    pub pods: Vec<PodStats>,
}

/// The node's usage.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// The node's name.
    pub node_name: String,
    /// CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

/// Which pod a [`PodStats`] is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PodReference {
    /// The pod's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its uid.
    pub uid: String,
}

/// A pod's usage and its containers'.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// The pod.
    pub pod_ref: PodReference,
    /// Its containers.
    pub containers: Vec<ContainerStats>,
    /// The pod cgroup's CPU (every container and the pod's own processes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// The pod cgroup's memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

/// One container's usage.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContainerStats {
    /// The container's name.
    pub name: String,
    /// CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

/// CPU usage at one time.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// When it was read (RFC 3339).
    pub time: String,
    /// Average use over the last sampling window, in billionths of a core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    /// CPU time used since the cgroup was made, in nanoseconds.
    pub usage_core_nano_seconds: u64,
}

/// Memory usage at one time.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// When it was read (RFC 3339).
    pub time: String,
    /// Memory not in use: capacity minus the working set (node only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// All memory charged, page cache included.
    pub usage_bytes: u64,
    /// Usage minus inactive file pages: what the OOM killer weighs and
    /// what `kubectl top` shows.
    pub working_set_bytes: u64,
}

/// Where the cgroup files are.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    /// The v1 `cpuacct` hierarchy, if mounted.
    cpuacct: Option<PathBuf>,
    /// The v1 `memory` hierarchy, if mounted.
    memory: Option<PathBuf>,
    /// The cgroup2 mount, if any.
    unified: Option<PathBuf>,
    /// `/proc` (for the node's memory).
    proc: PathBuf,
}

impl CgroupFs {
    /// The hierarchies of `mounts`, with `/proc`.
    pub fn new(mounts: &CgroupMounts) -> Self {
        let v1 = |ctrl: &str| {
            mounts
                .v1
                .iter()
                .find(|(_, c)| c.iter().any(|c| c == ctrl))
                .map(|(p, _)| p.clone())
        };
        Self {
            cpuacct: v1("cpuacct"),
            memory: v1("memory"),
            unified: mounts.v2.clone(),
            proc: PathBuf::from("/proc"),
        }
    }

    /// A layout rooted somewhere else (tests).
    #[cfg(test)]
    fn at(
        cpuacct: Option<PathBuf>,
        memory: Option<PathBuf>,
        unified: Option<PathBuf>,
        proc: PathBuf,
    ) -> Self {
        Self {
            cpuacct,
            memory,
            unified,
            proc,
        }
    }

    fn join(root: &Path, cgroup: &str) -> PathBuf {
        let rel = cgroup.trim_matches('/');
        if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        }
    }

    /// CPU time used by `cgroup`, in nanoseconds: v1 `cpuacct.usage`, else
    /// cgroup2 `cpu.stat` `usage_usec`.
    fn cpu_usage_ns(&self, cgroup: &str) -> Option<u64> {
        if let Some(root) = &self.cpuacct
            && let Ok(text) = fs::read_to_string(Self::join(root, cgroup).join("cpuacct.usage"))
        {
            return text.trim().parse().ok();
        }
        let root = self.unified.as_ref()?;
        let text = fs::read_to_string(Self::join(root, cgroup).join("cpu.stat")).ok()?;
        stat_value(&text, "usage_usec").map(|us| us.saturating_mul(1000))
    }

    /// Memory usage and working set of `cgroup`: v1 `memory.usage_in_bytes`
    /// less `total_inactive_file`, else cgroup2 `memory.current` less
    /// `inactive_file`.
    fn memory(&self, cgroup: &str) -> Option<(u64, u64)> {
        if let Some(root) = &self.memory {
            let dir = Self::join(root, cgroup);
            if let Ok(text) = fs::read_to_string(dir.join("memory.usage_in_bytes")) {
                let usage: u64 = text.trim().parse().ok()?;
                let stat = fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
                let inactive = stat_value(&stat, "total_inactive_file").unwrap_or(0);
                return Some((usage, usage.saturating_sub(inactive)));
            }
        }
        let dir = Self::join(self.unified.as_ref()?, cgroup);
        let usage: u64 = fs::read_to_string(dir.join("memory.current"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        let inactive = stat_value(&stat, "inactive_file").unwrap_or(0);
        Some((usage, usage.saturating_sub(inactive)))
    }

    /// The node's memory from `/proc/meminfo` (every layout has it; the
    /// cgroup2 root has no `memory.current`): (capacity, usage, working
    /// set).
    fn node_memory(&self) -> Option<(u64, u64, u64)> {
        let text = fs::read_to_string(self.proc.join("meminfo")).ok()?;
        let kib = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map(|v| v.saturating_mul(1024))
        };
        let total = kib("MemTotal")?;
        let usage = total.saturating_sub(kib("MemFree")?);
        let working_set = usage.saturating_sub(kib("Inactive(file)").unwrap_or(0));
        Some((total, usage, working_set))
    }

    /// The node's CPU time: the root cgroup's, else `/proc/stat`'s busy
    /// time (USER_HZ is 100 on Linux).
    fn node_cpu_ns(&self) -> Option<u64> {
        if let Some(ns) = self.cpu_usage_ns("/") {
            return Some(ns);
        }
        let text = fs::read_to_string(self.proc.join("stat")).ok()?;
        let fields: Vec<u64> = text
            .lines()
            .find_map(|l| l.strip_prefix("cpu "))?
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        let busy: u64 = fields
            .iter()
            .enumerate()
            .filter(|(i, _)| !matches!(i, 3 | 4))
            .take(6)
            .map(|(_, v)| v)
            .sum();
        Some(busy.saturating_mul(10_000_000))
    }

    /// The directories directly under `cgroup` in a hierarchy that has the
    /// memory or CPU accounting.
    fn children(&self, cgroup: &str) -> Vec<String> {
        let roots = [&self.memory, &self.cpuacct, &self.unified];
        let Some(dir) = roots
            .into_iter()
            .flatten()
            .map(|r| Self::join(r, cgroup))
            .find(|d| d.is_dir())
        else {
            return Vec::new();
        };
        let mut out: Vec<String> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        out.sort();
        out
    }
}

/// `key value` lines (memory.stat, cpu.stat).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// One cgroup's last CPU sample and the rate it last gave.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    usage_ns: u64,
    rate: Option<u64>,
}

/// Reads the node's and its pods' cgroups and keeps the previous CPU
/// sample of each.
#[derive(Debug)]
pub struct Collector {
    node_name: String,
    /// `<data dir>/logs`, whose `<ns>_<pod>_<uid>` directories name the
    /// pods behind `pod-<uid>` cgroups.
    logs_dir: PathBuf,
    /// Every pod's cgroup is `<cgroup_parent>/pod-<uid>`.
    cgroup_parent: String,
    cgroups: CgroupFs,
    samples: Mutex<HashMap<String, CpuSample>>,
}

impl Collector {
    /// A collector for `node_name`'s pods under `cgroup_parent`.
    pub fn new(
        node_name: impl Into<String>,
        logs_dir: impl Into<PathBuf>,
        cgroup_parent: impl Into<String>,
        cgroups: CgroupFs,
    ) -> Self {
        Self {
            node_name: node_name.into(),
            logs_dir: logs_dir.into(),
            cgroup_parent: cgroup_parent.into(),
            cgroups,
            samples: Mutex::new(HashMap::new()),
        }
    }

    /// Samples the CPU of `cgroup` now: its usage and the rate since the
    /// previous sample (or the last rate, when that is under a second
    /// old).
    fn cpu(&self, cgroup: &str, now: Instant, time: &str) -> Option<CpuStats> {
        let usage_ns = if cgroup == "/" {
            self.cgroups.node_cpu_ns()?
        } else {
            self.cgroups.cpu_usage_ns(cgroup)?
        };
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rate = match samples.get(cgroup).copied() {
            Some(prev) if now.saturating_duration_since(prev.at) >= MIN_WINDOW => {
                let window = now.saturating_duration_since(prev.at).as_nanos();
                let used = u128::from(usage_ns.saturating_sub(prev.usage_ns));
                let rate = u64::try_from(used * 1_000_000_000 / window).unwrap_or(u64::MAX);
                samples.insert(
                    cgroup.to_string(),
                    CpuSample {
                        at: now,
                        usage_ns,
                        rate: Some(rate),
                    },
                );
                Some(rate)
            }
            // A counter that went backwards is a new cgroup under an old
            // name: start over.
            Some(prev) if usage_ns >= prev.usage_ns => prev.rate,
            _ => {
                samples.insert(
                    cgroup.to_string(),
                    CpuSample {
                        at: now,
                        usage_ns,
                        rate: None,
                    },
                );
                None
            }
        };
        Some(CpuStats {
            time: time.to_string(),
            usage_nano_cores: rate,
            usage_core_nano_seconds: usage_ns,
        })
    }

    fn memory(&self, cgroup: &str, time: &str) -> Option<MemoryStats> {
        let (usage_bytes, working_set_bytes) = self.cgroups.memory(cgroup)?;
        Some(MemoryStats {
            time: time.to_string(),
            available_bytes: None,
            usage_bytes,
            working_set_bytes,
        })
    }

    /// The pods under the cgroup parent, by uid, named from their log
    /// directories (a pod cgroup without one is not reported).
    fn pods(&self) -> Vec<(PodReference, String)> {
        let names: HashMap<String, (String, String)> = fs::read_dir(&self.logs_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| {
                let mut parts = n.splitn(3, '_');
                let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
                Some((uid.to_string(), (ns.to_string(), pod.to_string())))
            })
            .collect();
        let parent = self.cgroup_parent.trim_end_matches('/');
        self.cgroups
            .children(parent)
            .into_iter()
            .filter_map(|dir| {
                let uid = dir.strip_prefix("pod-")?;
                let (namespace, name) = names.get(uid)?.clone();
                Some((
                    PodReference {
                        name,
                        namespace,
                        uid: uid.to_string(),
                    },
                    format!("{parent}/{dir}"),
                ))
            })
            .collect()
    }

    /// The summary as of now.
    pub fn summary(&self) -> Summary {
        self.summary_at(Instant::now())
    }

    fn summary_at(&self, now: Instant) -> Summary {
        let time = jiff::Timestamp::now().to_string();
        let node_memory = self
            .cgroups
            .node_memory()
            .map(|(capacity, usage, ws)| MemoryStats {
                time: time.clone(),
                available_bytes: Some(capacity.saturating_sub(ws)),
                usage_bytes: usage,
                working_set_bytes: ws,
            });
        let node = NodeStats {
            node_name: self.node_name.clone(),
            cpu: self.cpu("/", now, &time),
            memory: node_memory,
        };
        let mut seen = HashSet::from(["/".to_string()]);
        let pods = self
            .pods()
            .into_iter()
            .map(|(pod_ref, cgroup)| {
                let containers = self
                    .cgroups
                    .children(&cgroup)
                    .into_iter()
                    .map(|name| {
                        let path = format!("{cgroup}/{name}");
                        let stats = ContainerStats {
                            cpu: self.cpu(&path, now, &time),
                            memory: self.memory(&path, &time),
                            name,
                        };
                        seen.insert(path);
                        stats
                    })
                    .collect();
                let stats = PodStats {
                    pod_ref,
                    containers,
                    cpu: self.cpu(&cgroup, now, &time),
                    memory: self.memory(&cgroup, &time),
                };
                seen.insert(cgroup);
                stats
            })
            .collect();
        // Forget cgroups that are gone, so the map does not grow with
        // every pod the node ever ran.
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|k, _| seen.contains(k.as_str()));
        Summary { node, pods }
    }
}
