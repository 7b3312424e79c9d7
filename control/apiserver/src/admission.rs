//! Admission: what happens to an object between decoding and the store.
//! Kubernetes' defaults, the ServiceAccount plugin (in [`service_account`]),
//! the allocators admission owns (Service cluster IPs from the dual-stack
//! service CIDRs, NodePorts), then validation.
//!
//! Every allocated address and port is held in the store by a key of its
//! own, written in the same transaction as the Service: an
//! [`IPADDRESS_PREFIX`] key per cluster IP (an IPAddress object, as
//! Kubernetes 1.33 records them) and a [`NODE_PORT_PREFIX`] key per
//! NodePort. The transaction creates a key only if it is absent, so two
//! apiservers over one store never hand out the same address: the slower
//! write fails, [`ClusterAdmission::claim_lost`] notes the key, and the
//! create is admitted again. Deleting the Service deletes its keys in the
//! same transaction; a failed write claims nothing (see [`service_claims`]).
//!
//! To pick, the allocators skip what the watch cache of Services shows
//! plus what they handed out moments ago and the cache has not shown yet
//! (for [`PENDING_TTL`]), so collisions are rare and cheap.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures_util::{FutureExt, future::BoxFuture};
use serde_json::{Value, json};
use shoal_api::Kind;

use crate::{
    rest::Admission,
    status::ApiError,
    storage::{Claims, Storage},
    watch_cache::WatchCache,
};

mod mesh_injection;
pub mod service_account;

/// How long a freshly allocated address stays reserved while the write
/// that uses it reaches the watch cache.
pub const PENDING_TTL: Duration = Duration::from_secs(60);

/// How long an address or port found held by another writer is refused
/// when named and skipped when picking: long enough for the retried write
/// to see it, short enough that a request naming it after its owner is
/// deleted is not refused for long.
pub const LOST_TTL: Duration = Duration::from_secs(5);

/// Where the key holding an allocated cluster IP lives: one IPAddress
/// object per address, named by the address.
pub const IPADDRESS_PREFIX: &str = "/registry/ipaddresses/";

/// Where the key holding an allocated NodePort lives.
pub const NODE_PORT_PREFIX: &str = "/registry/servicenodeports/";

/// The NodePort range.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// A CIDR: network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl Cidr {
    /// Parses `10.96.0.0/16` or `fd00:10:96::/112`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (address/prefix)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?}: {a:?} is not an IP address"))?;
        let len: u8 = l
            .parse()
            .map_err(|_| format!("{s:?}: {l:?} is not a prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max || len + 1 >= max {
            return Err(format!("{s:?}: prefix length must be below {}", max - 1));
        }
        Ok(Self { addr, len })
    }

    fn bits(&self) -> u32 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    fn base(&self) -> u128 {
        to_u128(self.addr)
    }

    fn size(&self) -> u128 {
        1u128 << (self.bits() - u32::from(self.len))
    }

    /// Whether `ip` lies inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && {
            let x = to_u128(ip);
            x >= self.base() && x - self.base() < self.size()
        }
    }

    fn nth(&self, n: u128) -> IpAddr {
        from_u128(self.base() + n, self.addr.is_ipv4())
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(x: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((x as u32).into())
    } else {
        IpAddr::V6(x.into())
    }
}

/// The service network: one CIDR per family and addresses kept back.
#[derive(Debug, Clone)]
pub struct ServiceNetwork {
    /// IPv4 service CIDR.
    pub v4: Cidr,
    /// IPv6 service CIDR.
    pub v6: Cidr,
    /// Addresses the allocator never picks (the API's and DNS's).
    pub reserved: Vec<IpAddr>,
}

/// Shoal's admission chain.
pub struct ClusterAdmission {
    storage: Storage,
    cache: Arc<WatchCache>,
    net: ServiceNetwork,
    pending_ips: Mutex<HashMap<IpAddr, Pending>>,
    pending_ports: Mutex<HashMap<u16, Pending>>,
    /// The mesh sidecar's template settings; `None` when the mesh CA's
    /// address is unknown (pods asking for the sidecar are refused).
    sidecar: Option<shoal_sidecar::inject::Injection>,
}

/// An address or port the cache may not show yet.
#[derive(Debug, Clone, Copy)]
struct Pending {
    since: Instant,
    /// Held by another writer (its key was found in the store), not just
    /// handed out here: a request naming it is refused.
    lost: bool,
}

impl Pending {
    fn picked(since: Instant) -> Self {
        Self { since, lost: false }
    }

    fn live(&self, now: Instant) -> bool {
        let ttl = if self.lost { LOST_TTL } else { PENDING_TTL };
        now.duration_since(self.since) < ttl
    }
}

impl ClusterAdmission {
    /// Admission over the given Service network, looking objects up in
    /// `cache` or, when it does not show them yet, in `storage`.
    pub fn new(storage: Storage, cache: Arc<WatchCache>, net: ServiceNetwork) -> Self {
        Self {
            storage,
            cache,
            net,
            pending_ips: Mutex::new(HashMap::new()),
            pending_ports: Mutex::new(HashMap::new()),
            sidecar: None,
        }
    }

    /// Injects the mesh sidecar, with these settings, into pods that ask
    /// for it (see [`mesh_injection`]).
    pub fn with_sidecar_injection(mut self, injection: shoal_sidecar::inject::Injection) -> Self {
        self.sidecar = Some(injection);
        self
    }

    /// Cluster IPs and NodePorts of every Service but `except` (ns/name).
    fn taken(&self, except: &str) -> (HashSet<IpAddr>, HashSet<u16>) {
        let mut ips = HashSet::new();
        let mut ports = HashSet::new();
        let Some(cache) =
            shoal_api::find_resource("", "v1", "services").and_then(|k| self.cache.get(k))
        else {
            return (ips, ports);
        };
        for svc in cache
            .list("/registry/services/")
            .map(|(l, _)| l)
            .unwrap_or_default()
        {
            let v = &svc.value;
            if service_id(v) == except {
                continue;
            }
            for ip in v
                .pointer("/spec/clusterIPs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(ip) = ip.as_str().and_then(|s| s.parse().ok()) {
                    ips.insert(ip);
                }
            }
            for p in v
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(n) = p.get("nodePort").and_then(Value::as_u64) {
                    ports.insert(n as u16);
                }
            }
        }
        (ips, ports)
    }

    fn allocate_service(&self, svc: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        let name = svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let invalid = |field: &str, value: &str, detail: String| {
            ApiError::invalid(
                "",
                "Service",
                &name,
                format!("Service \"{name}\" is invalid: {field}: Invalid value: {value}: {detail}"),
                vec![
                    json!({"reason": "FieldValueInvalid", "message": format!("Invalid value: {value}: {detail}"), "field": field}),
                ],
            )
        };
        let ty = svc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if let Some(old) = old {
            // Allocated fields are kept when an update leaves them out
            // (kubectl apply and replace do).
            for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                let missing = svc
                    .pointer(&format!("/spec/{field}"))
                    .is_none_or(|v| v.is_null() || v == "");
                if missing && let Some(v) = old.pointer(&format!("/spec/{field}")) {
                    svc["spec"][field] = v.clone();
                }
            }
        }
        if ty == "ExternalName" {
            return Ok(());
        }
        let (taken_ips, taken_ports) = self.taken(&service_id(svc));
        // Families: requested ones first, else by policy.
        let policy = svc
            .pointer("/spec/ipFamilyPolicy")
            .and_then(Value::as_str)
            .unwrap_or("SingleStack")
            .to_string();
        let mut requested: Vec<String> = strings(svc, "/spec/clusterIPs");
        if requested.is_empty()
            && let Some(ip) = svc
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        {
            requested.push(ip.to_string());
        }
        let headless = requested.first().is_some_and(|s| s == "None");
        let mut families: Vec<String> = strings(svc, "/spec/ipFamilies");
        if families.is_empty() {
            for ip in requested.iter().filter_map(|s| s.parse::<IpAddr>().ok()) {
                families.push(if ip.is_ipv4() {
                    "IPv4".into()
                } else {
                    "IPv6".into()
                });
            }
        }
        if families.is_empty() {
            families.push("IPv4".into());
        }
        match policy.as_str() {
            "SingleStack" => families.truncate(1),
            "PreferDualStack" | "RequireDualStack" => {
                if families.len() == 1 {
                    let other = if families[0] == "IPv4" {
                        "IPv6"
                    } else {
                        "IPv4"
                    };
                    families.push(other.into());
                }
            }
            other => {
                return Err(invalid(
                    "spec.ipFamilyPolicy",
                    &format!("{other:?}"),
                    "supported values: \"SingleStack\", \"PreferDualStack\", \"RequireDualStack\""
                        .into(),
                ));
            }
        }
        svc["spec"]["ipFamilyPolicy"] = json!(policy);
        svc["spec"]["ipFamilies"] = json!(families);
        if headless {
            svc["spec"]["clusterIP"] = json!("None");
            svc["spec"]["clusterIPs"] = json!(["None"]);
        } else {
            let mut ips = Vec::new();
            let now = Instant::now();
            let mut pending = self
                .pending_ips
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            pending.retain(|_, p| p.live(now));
            let old_ips: Vec<String> = old
                .map(|o| strings(o, "/spec/clusterIPs"))
                .unwrap_or_default();
            for (i, family) in families.iter().enumerate() {
                let cidr = if family == "IPv4" {
                    self.net.v4
                } else {
                    self.net.v6
                };
                match requested.get(i) {
                    Some(ip) => {
                        let parsed: IpAddr = ip.parse().map_err(|_| {
                            invalid(
                                "spec.clusterIPs",
                                &format!("[]string{{{ip:?}}}"),
                                "must be a valid IP address".into(),
                            )
                        })?;
                        if !cidr.contains(parsed) {
                            return Err(invalid(
                                "spec.clusterIPs",
                                &format!("[]string{{{ip:?}}}"),
                                format!(
                                    "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}/{}",
                                    cidr.addr, cidr.len
                                ),
                            ));
                        }
                        let mine = old_ips.iter().any(|o| o == ip);
                        let lost = pending.get(&parsed).is_some_and(|p| p.lost);
                        if !mine && (taken_ips.contains(&parsed) || lost) {
                            return Err(invalid(
                                "spec.clusterIPs",
                                &format!("[]string{{{ip:?}}}"),
                                format!(
                                    "failed to allocate IP {ip}: provided IP is already allocated"
                                ),
                            ));
                        }
                        ips.push(ip.clone());
                    }
                    None => {
                        let ip = pick_ip(cidr, &self.net.reserved, |ip| {
                            taken_ips.contains(&ip) || pending.contains_key(&ip)
                        })
                        .ok_or_else(|| {
                            invalid(
                                "spec.clusterIPs",
                                "[]string{}",
                                format!(
                                    "failed to allocate a serviceIP: range is full ({}/{})",
                                    cidr.addr, cidr.len
                                ),
                            )
                        })?;
                        pending.insert(ip, Pending::picked(now));
                        ips.push(ip.to_string());
                    }
                }
            }
            svc["spec"]["clusterIP"] = json!(ips.first());
            svc["spec"]["clusterIPs"] = json!(ips);
        }
        if ty == "NodePort" || ty == "LoadBalancer" {
            let now = Instant::now();
            let mut pending = self
                .pending_ports
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            pending.retain(|_, p| p.live(now));
            let old_ports: Vec<Value> = old
                .and_then(|o| o.pointer("/spec/ports"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ports = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut);
            for (i, p) in ports.into_iter().flatten().enumerate() {
                if let Some(n) = p.get("nodePort").and_then(Value::as_u64) {
                    let n = n as u16;
                    let mine = old_ports
                        .iter()
                        .any(|o| o.get("nodePort").and_then(Value::as_u64) == Some(u64::from(n)));
                    if !NODE_PORTS.contains(&n) {
                        return Err(invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            &n.to_string(),
                            "provided port is not in the valid range. The range of valid ports is 30000-32767".into(),
                        ));
                    }
                    let lost = pending.get(&n).is_some_and(|p| p.lost);
                    if !mine && (taken_ports.contains(&n) || lost) {
                        return Err(invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            &n.to_string(),
                            "provided port is already allocated".into(),
                        ));
                    }
                    continue;
                }
                let same = old_ports.iter().find(|o| {
                    o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol")
                });
                let n = match same.and_then(|o| o.get("nodePort")).and_then(Value::as_u64) {
                    Some(n) => n as u16,
                    None => pick_port(|n| taken_ports.contains(&n) || pending.contains_key(&n))
                        .ok_or_else(|| {
                            invalid(
                                &format!("spec.ports[{i}].nodePort"),
                                "0",
                                "failed to allocate a nodePort: range is full".into(),
                            )
                        })?,
                };
                pending.insert(n, Pending::picked(now));
                p["nodePort"] = json!(n);
            }
        }
        Ok(())
    }
}

impl ClusterAdmission {
    /// Another writer holds `key` (an address or port this apiserver
    /// picked): the next pick avoids it and a request naming it is refused
    /// until the cache shows its owner.
    fn note_lost(&self, key: &str) {
        let since = Instant::now();
        let lost = Pending { since, lost: true };
        if let Some(ip) = key
            .strip_prefix(IPADDRESS_PREFIX)
            .and_then(|s| s.parse::<IpAddr>().ok())
        {
            self.pending_ips
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(ip, lost);
        } else if let Some(port) = key
            .strip_prefix(NODE_PORT_PREFIX)
            .and_then(|s| s.parse::<u16>().ok())
        {
            self.pending_ports
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(port, lost);
        }
    }
}

/// The cluster IPs and NodePorts a Service holds.
fn allocated(svc: &Value) -> (Vec<IpAddr>, Vec<u16>) {
    let mut ips: Vec<IpAddr> = strings(svc, "/spec/clusterIPs")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    ips.dedup();
    let mut ports: Vec<u16> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
        .filter_map(|n| u16::try_from(n).ok())
        .collect();
    // One port may serve TCP and UDP: it is held once.
    ports.sort_unstable();
    ports.dedup();
    (ips, ports)
}

/// The store key holding cluster IP `ip`.
pub fn ip_key(ip: IpAddr) -> String {
    format!("{IPADDRESS_PREFIX}{ip}")
}

/// The store key holding NodePort `port`.
pub fn node_port_key(port: u16) -> String {
    format!("{NODE_PORT_PREFIX}{port}")
}

/// The keys writing Service `new` over `old` claims and releases: what it
/// gains is claimed, what it gives up is released. A deletion passes
/// `new` = None and releases everything `old` held.
pub fn service_claims(new: Option<&Value>, old: Option<&Value>) -> Claims {
    let (new_ips, new_ports) = new.map(allocated).unwrap_or_default();
    let (old_ips, old_ports) = old.map(allocated).unwrap_or_default();
    let owner = new.or(old).unwrap_or(&Value::Null);
    let parent = json!({
        "group": "",
        "resource": "services",
        "namespace": owner.pointer("/metadata/namespace").cloned().unwrap_or(Value::Null),
        "name": owner.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
        "uid": owner.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
    });
    let mut claims = Claims::default();
    for ip in new_ips.iter().filter(|ip| !old_ips.contains(ip)) {
        let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        // Kubernetes' networking.k8s.io/v1 IPAddress, as its allocator
        // writes one per Service address.
        let record = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IPAddress",
            "metadata": {
                "name": ip.to_string(),
                "labels": {
                    "ipaddress.kubernetes.io/ip-family": family,
                    "ipaddress.kubernetes.io/managed-by": "ipallocator.k8s.io",
                },
            },
            "spec": {"parentRef": parent},
        });
        claims.claim.push((ip_key(*ip), record));
    }
    for port in new_ports.iter().filter(|p| !old_ports.contains(p)) {
        claims.claim.push((
            node_port_key(*port),
            json!({"nodePort": port, "parentRef": parent}),
        ));
    }
    claims.release.extend(
        old_ips
            .iter()
            .filter(|ip| !new_ips.contains(ip))
            .map(|ip| ip_key(*ip)),
    );
    claims.release.extend(
        old_ports
            .iter()
            .filter(|p| !new_ports.contains(p))
            .map(|p| node_port_key(*p)),
    );
    claims
}

/// Priority of the built-in `system-cluster-critical` class.
pub const SYSTEM_CLUSTER_CRITICAL: i64 = 2_000_000_000;
/// Priority of the built-in `system-node-critical` class.
pub const SYSTEM_NODE_CRITICAL: i64 = 2_000_001_000;
/// How long a pod stays on a not-ready or unreachable node unless it says
/// otherwise (kube's DefaultTolerationSeconds admission plugin).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

impl ClusterAdmission {
    /// Pod creation: `spec.priority` from its PriorityClass (Kubernetes'
    /// Priority plugin) and the default NoExecute tolerations for
    /// not-ready and unreachable nodes (DefaultTolerationSeconds).
    fn admit_pod(&self, pod: &mut Value) -> Result<(), ApiError> {
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let classes: Vec<Value> =
            shoal_api::find_resource("scheduling.k8s.io", "v1", "priorityclasses")
                .and_then(|k| self.cache.get(k))
                .and_then(|c| c.list("/registry/priorityclasses/"))
                .map(|(l, _)| l.iter().map(|e| e.value.clone()).collect())
                .unwrap_or_default();
        let class_name = pod
            .pointer("/spec/priorityClassName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let (class, priority, policy) = match class_name {
            Some(c) if c == "system-cluster-critical" => (Some(c), SYSTEM_CLUSTER_CRITICAL, None),
            Some(c) if c == "system-node-critical" => (Some(c), SYSTEM_NODE_CRITICAL, None),
            Some(c) => {
                let found = classes
                    .iter()
                    .find(|pc| pc.pointer("/metadata/name").and_then(Value::as_str) == Some(&c))
                    .ok_or_else(|| {
                        ApiError::forbidden(format!(
                            "pods \"{name}\" is forbidden: no PriorityClass with name {c} was found"
                        ))
                    })?;
                let value = found.get("value").and_then(Value::as_i64).unwrap_or(0);
                let policy = found.get("preemptionPolicy").cloned();
                (Some(c), value, policy)
            }
            None => match classes
                .iter()
                .find(|pc| pc.get("globalDefault").and_then(Value::as_bool) == Some(true))
            {
                Some(pc) => (
                    pc.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    pc.get("value").and_then(Value::as_i64).unwrap_or(0),
                    pc.get("preemptionPolicy").cloned(),
                ),
                None => (None, 0, None),
            },
        };
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        if let Some(given) = spec.get("priority").and_then(Value::as_i64)
            && given != priority
        {
            return Err(ApiError::forbidden(format!(
                "pods \"{name}\" is forbidden: the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name"
            )));
        }
        if let Some(class) = class {
            spec.insert("priorityClassName".into(), json!(class));
        }
        spec.insert("priority".into(), json!(priority));
        if !spec.contains_key("preemptionPolicy") {
            spec.insert(
                "preemptionPolicy".into(),
                policy.unwrap_or_else(|| json!("PreemptLowerPriority")),
            );
        }
        let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
        if let Some(list) = tolerations.as_array_mut() {
            for key in [
                "node.kubernetes.io/not-ready",
                "node.kubernetes.io/unreachable",
            ] {
                let covered = list.iter().any(|t| {
                    let k = t.get("key").and_then(Value::as_str).unwrap_or("");
                    let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
                    let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
                    (k == key || (k.is_empty() && exists))
                        && (effect.is_empty() || effect == "NoExecute")
                });
                if !covered {
                    list.push(json!({
                        "key": key,
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": DEFAULT_TOLERATION_SECONDS,
                    }));
                }
            }
        }
        Ok(())
    }
}

/// The strings of the array at `pointer` (missing or not an array: none).
fn strings(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn service_id(svc: &Value) -> String {
    format!(
        "{}/{}",
        svc.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(""),
        svc.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    )
}

/// A free address, starting from a random offset (as Kubernetes does)
/// and skipping the network and broadcast addresses and the reserved ones.
fn pick_ip(cidr: Cidr, reserved: &[IpAddr], taken: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
    let size = cidr.size();
    let usable = size.saturating_sub(2);
    if usable == 0 {
        return None;
    }
    let start = u128::from_le_bytes(uuid::Uuid::new_v4().into_bytes()) % usable;
    // Scan at most the whole range once; stop early in huge v6 ranges.
    let limit = usable.min(1 << 20);
    (0..limit)
        .map(|i| cidr.nth(1 + (start + i) % usable))
        .find(|ip| !reserved.contains(ip) && !taken(*ip))
}

fn pick_port(taken: impl Fn(u16) -> bool) -> Option<u16> {
    let span = u32::from(NODE_PORTS.end() - NODE_PORTS.start()) + 1;
    let start = u32::from_le_bytes([rand_byte(), rand_byte(), 0, 0]) % span;
    (0..span)
        .map(|i| NODE_PORTS.start() + ((start + i) % span) as u16)
        .find(|p| !taken(*p))
}

/// The finalizer that keeps a claim a pod uses until no pod does
/// (StorageObjectInUseProtection); the PersistentVolume controller removes it.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

/// StorageObjectInUseProtection: every new claim carries [`PVC_PROTECTION`].
fn protect_claim(claim: &mut Value) {
    let Some(meta) = claim.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(list) = finalizers.as_array_mut()
        && !list.iter().any(|f| f == PVC_PROTECTION)
    {
        list.push(json!(PVC_PROTECTION));
    }
}

/// The annotation that makes a StorageClass the default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
const DEFAULT_CLASS_ANNOTATION_BETA: &str = "storageclass.beta.kubernetes.io/is-default-class";

impl ClusterAdmission {
    /// DefaultStorageClass: a claim created without `storageClassName`
    /// (absent, not "") gets the default StorageClass — the newest one
    /// annotated default, as Kubernetes picks among several.
    fn default_storage_class(&self, claim: &mut Value) {
        let unset = claim
            .pointer("/spec/storageClassName")
            .is_none_or(Value::is_null);
        if !unset {
            return;
        }
        let Some(kind) = shoal_api::find_resource("storage.k8s.io", "v1", "storageclasses") else {
            return;
        };
        let classes = self
            .cache
            .get(kind)
            .and_then(|c| c.list(&kind.storage_prefix()))
            .map(|(l, _)| l)
            .unwrap_or_default();
        let default = classes
            .iter()
            .map(|e| &e.value)
            .filter(|c| {
                [DEFAULT_CLASS_ANNOTATION, DEFAULT_CLASS_ANNOTATION_BETA]
                    .iter()
                    .any(|a| {
                        c.pointer("/metadata/annotations")
                            .and_then(|m| m.get(*a))
                            .and_then(Value::as_str)
                            == Some("true")
                    })
            })
            .max_by_key(|c| {
                (
                    c.pointer("/metadata/creationTimestamp")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    c.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .and_then(|c| c.pointer("/metadata/name").and_then(Value::as_str));
        if let Some(name) = default
            && let Some(spec) = claim.get_mut("spec").and_then(Value::as_object_mut)
        {
            spec.insert("storageClassName".into(), json!(name));
        }
    }
}

fn rand_byte() -> u8 {
    uuid::Uuid::new_v4().as_bytes()[0]
}

impl Admission for ClusterAdmission {
    fn admit_create<'a>(
        &'a self,
        kind: &'static Kind,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        async move {
            if kind.group.is_empty() && kind.plural == "pods" {
                mesh_injection::admit_pod(&self.storage, self.sidecar.as_ref(), obj).await?;
                service_account::admit_pod(&self.cache, &self.storage, obj).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn admit(
        &self,
        kind: &'static Kind,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        shoal_api::apply_defaults(kind, obj);
        if kind.group.is_empty() && kind.plural == "services" {
            self.allocate_service(obj, old)?;
        }
        if kind.group.is_empty() && kind.plural == "pods" && old.is_none() {
            self.admit_pod(obj)?;
        }
        if kind.group.is_empty() && kind.plural == "persistentvolumeclaims" && old.is_none() {
            self.default_storage_class(obj);
            protect_claim(obj);
        }
        if crate::certificates::is_csr(kind) {
            crate::certificates::admit(obj, old)?;
        }
        shoal_api::validate(kind, obj, old).map_err(|errors| {
            let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
            let causes = errors
                .iter()
                .map(|e| json!({"reason": e.reason(), "message": e.to_string().split_once(": ").map_or(e.to_string(), |(_, m)| m.to_string()), "field": e.field}))
                .collect();
            ApiError::invalid(kind.group, kind.kind, name, shoal_api::invalid_message(kind, name, &errors), causes)
        })
    }

    fn claims(&self, kind: &'static Kind, new: Option<&Value>, old: Option<&Value>) -> Claims {
        if kind.group.is_empty() && kind.plural == "services" {
            service_claims(new, old)
        } else {
            Claims::default()
        }
    }

    fn claim_lost(&self, key: &str) {
        self.note_lost(key);
    }
}

#[cfg(test)]
mod tests;
