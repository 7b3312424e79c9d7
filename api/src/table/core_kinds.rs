//! Printers for the core (`v1`) kinds, and for `events.k8s.io` events,
//! which Kubernetes prints with the core event printer.

use serde_json::{Value, json};

use super::fields::{
    arr_at, bool_at, condition_true, format_labels, human_duration, i64_at, int_cell, is_set,
    len_at, map_at, opt_str_at, parse_time, scalar_text, str_at,
};
use super::{AGE, Clock, Column, NAME, Printer, name, no_conditions};
use crate::kinds::Kind;

/// The printer for a core kind, if Kubernetes has one.
pub(super) fn printer(kind: &Kind) -> Option<&'static Printer> {
    match (kind.group, kind.kind) {
        ("", "Pod") => Some(&POD),
        ("", "Service") => Some(&SERVICE),
        ("", "Endpoints") => Some(&ENDPOINTS),
        ("", "Node") => Some(&NODE),
        ("", "Namespace") => Some(&NAMESPACE),
        ("", "ConfigMap") => Some(&CONFIG_MAP),
        ("", "Secret") => Some(&SECRET),
        ("", "ServiceAccount") => Some(&SERVICE_ACCOUNT),
        ("", "Event") => Some(&EVENT),
        ("events.k8s.io", "Event") => Some(&EVENTS_V1_EVENT),
        ("", "PersistentVolume") => Some(&PERSISTENT_VOLUME),
        ("", "PersistentVolumeClaim") => Some(&PERSISTENT_VOLUME_CLAIM),
        ("", "ResourceQuota") => Some(&RESOURCE_QUOTA),
        _ => None,
    }
}

static POD: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Ready",
            "The aggregate readiness state of this pod for accepting traffic.",
        ),
        Column::string(
            "Status",
            "The aggregate status of the containers in this pod.",
        ),
        Column::string(
            "Restarts",
            "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
        ),
        AGE,
        Column::string(
            "IP",
            "IP address allocated to the pod. Routable at least within the cluster.",
        )
        .wide(),
        Column::string(
            "Node",
            "NodeName indicates in which node this pod is scheduled.",
        )
        .wide(),
        Column::string(
            "Nominated Node",
            "nominatedNodeName is set only when this pod preempts other pods on the node.",
        )
        .wide(),
        Column::string(
            "Readiness Gates",
            "If specified, all readiness gates will be evaluated for pod readiness.",
        )
        .wide(),
    ],
    cells: pod_cells,
    conditions: pod_conditions,
};

/// Whether an init container is a sidecar (`restartPolicy: Always`), which
/// counts as a regular container once started.
fn is_sidecar(init_container: &Value) -> bool {
    str_at(init_container, "/restartPolicy") == "Always"
}

/// When a container last terminated, if it ever did.
fn last_termination(status: &Value) -> Option<i128> {
    parse_time(str_at(status, "/lastState/terminated/finishedAt"))
}

/// Keeps the later of two restart times.
fn keep_latest(slot: &mut Option<i128>, candidate: Option<i128>) {
    if candidate > *slot {
        *slot = candidate;
    }
}

/// A terminated container's reason, or its signal or exit code when the
/// runtime gave none.
fn terminated_reason(prefix: &str, terminated: &Value) -> String {
    let reason = str_at(terminated, "/reason");
    if !reason.is_empty() {
        return format!("{prefix}{reason}");
    }
    let signal = i64_at(terminated, "/signal");
    if signal != 0 {
        return format!("{prefix}Signal:{signal}");
    }
    format!("{prefix}ExitCode:{}", i64_at(terminated, "/exitCode"))
}

fn set<'a>(v: &'a Value, pointer: &str) -> Option<&'a Value> {
    v.pointer(pointer).filter(|f| !f.is_null())
}

/// Kubernetes' `printPod`: readiness counts, the STATUS summary (init
/// progress, the first waiting or terminated reason, Terminating), restarts
/// with the time of the last one.
fn pod_cells(pod: &Value, clock: &Clock) -> Vec<Value> {
    let init_specs = arr_at(pod, "/spec/initContainers");
    // Kubernetes indexes init containers by name; the last of a name wins.
    let sidecar_named = |name: &str| {
        init_specs
            .iter()
            .rev()
            .find(|c| str_at(c, "/name") == name)
            .is_some_and(is_sidecar)
    };
    let total =
        arr_at(pod, "/spec/containers").len() + init_specs.iter().filter(|c| is_sidecar(c)).count();

    let phase = str_at(pod, "/status/phase");
    let status_reason = str_at(pod, "/status/reason");
    let mut reason = if status_reason.is_empty() {
        phase
    } else {
        status_reason
    }
    .to_string();
    let gated = arr_at(pod, "/status/conditions")
        .iter()
        .any(|c| str_at(c, "/type") == "PodScheduled" && str_at(c, "/reason") == "SchedulingGated");
    if gated {
        reason = "SchedulingGated".to_string();
    }

    let mut restarts: i64 = 0;
    let mut sidecar_restarts: i64 = 0;
    let mut last_restart: Option<i128> = None;
    let mut last_sidecar_restart: Option<i128> = None;
    let mut ready = 0usize;
    let mut initializing = false;
    for (i, status) in arr_at(pod, "/status/initContainerStatuses")
        .iter()
        .enumerate()
    {
        let count = i64_at(status, "/restartCount");
        let finished = last_termination(status);
        restarts += count;
        keep_latest(&mut last_restart, finished);
        let sidecar = sidecar_named(str_at(status, "/name"));
        if sidecar {
            sidecar_restarts += count;
            keep_latest(&mut last_sidecar_restart, finished);
        }
        let terminated = set(status, "/state/terminated");
        if terminated.is_some_and(|t| i64_at(t, "/exitCode") == 0) {
            continue;
        }
        if sidecar && bool_at(status, "/started") {
            if bool_at(status, "/ready") {
                ready += 1;
            }
            continue;
        }
        // The first init container not done yet decides the status.
        let waiting = str_at(status, "/state/waiting/reason");
        reason = match terminated {
            Some(t) => terminated_reason("Init:", t),
            None if !waiting.is_empty() && waiting != "PodInitializing" => {
                format!("Init:{waiting}")
            }
            None => format!("Init:{i}/{}", init_specs.len()),
        };
        initializing = true;
        break;
    }

    if !initializing || condition_true(pod, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        // Kubernetes walks the containers backwards, so the first container
        // with a reason is the one shown.
        for status in arr_at(pod, "/status/containerStatuses").iter().rev() {
            restarts += i64_at(status, "/restartCount");
            keep_latest(&mut last_restart, last_termination(status));
            let waiting = str_at(status, "/state/waiting/reason");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = set(status, "/state/terminated") {
                reason = terminated_reason("", t);
            } else if bool_at(status, "/ready") && is_set(status, "/state/running") {
                has_running = true;
                ready += 1;
            }
        }
        // A pod whose other containers still run is not "Completed".
        if reason == "Completed" && has_running {
            let pod_ready = arr_at(pod, "/status/conditions")
                .iter()
                .any(|c| str_at(c, "/type") == "Ready" && str_at(c, "/status") == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.to_string();
        }
    }

    if is_set(pod, "/metadata/deletionTimestamp") {
        if status_reason == "NodeLost" {
            reason = "Unknown".to_string();
        } else if phase != "Failed" && phase != "Succeeded" {
            reason = "Terminating".to_string();
        }
    }

    let restarts = match last_restart {
        Some(at) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(clock.now - at)),
        _ => restarts.to_string(),
    };

    // Kubernetes fills podIPs and podIP together; podIP covers a writer
    // that only set the older field.
    let ip = arr_at(pod, "/status/podIPs")
        .first()
        .map(|p| str_at(p, "/ip"))
        .unwrap_or_else(|| str_at(pod, "/status/podIP"));
    let readiness_gates = arr_at(pod, "/spec/readinessGates");
    let gates = if readiness_gates.is_empty() {
        "<none>".to_string()
    } else {
        let conditions = arr_at(pod, "/status/conditions");
        let passed = readiness_gates
            .iter()
            .filter(|gate| {
                let wanted = str_at(gate, "/conditionType");
                conditions
                    .iter()
                    .find(|c| str_at(c, "/type") == wanted)
                    .is_some_and(|c| str_at(c, "/status") == "True")
            })
            .count();
        format!("{passed}/{}", readiness_gates.len())
    };

    vec![
        name(pod),
        Value::from(format!("{ready}/{total}")),
        Value::from(reason),
        Value::from(restarts),
        clock.age(pod),
        Value::from(or_none(ip)),
        Value::from(or_none(str_at(pod, "/spec/nodeName"))),
        Value::from(or_none(str_at(pod, "/status/nominatedNodeName"))),
        Value::from(gates),
    ]
}

/// Finished pods carry a `Completed` row condition, as in Kubernetes.
fn pod_conditions(pod: &Value) -> Option<Value> {
    let (reason, message) = match str_at(pod, "/status/phase") {
        "Succeeded" => ("Succeeded", "The pod has completed successfully."),
        "Failed" => ("Failed", "The pod failed."),
        _ => return None,
    };
    Some(json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]))
}

/// `s`, or `<none>` when empty.
fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.to_string()
    }
}

static SERVICE: Printer = Printer {
    columns: &[
        NAME,
        Column::string("Type", "type determines how the Service is exposed."),
        Column::string("Cluster-IP", "clusterIP is the IP address of the service."),
        Column::string(
            "External-IP",
            "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
        ),
        Column::string(
            "Port(s)",
            "The list of ports that are exposed by this service.",
        ),
        AGE,
        Column::string(
            "Selector",
            "Route service traffic to pods with label keys and values matching this selector.",
        )
        .wide(),
    ],
    cells: service_cells,
    conditions: no_conditions,
};

/// The service's type; Kubernetes defaults a missing one to ClusterIP.
fn service_type(svc: &Value) -> &str {
    opt_str_at(svc, "/spec/type").unwrap_or("ClusterIP")
}

fn service_cells(svc: &Value, clock: &Clock) -> Vec<Value> {
    // The primary family's address; spec.clusterIP stands in for a service
    // written without the clusterIPs list Kubernetes fills in.
    let cluster_ip = match arr_at(svc, "/spec/clusterIPs").first() {
        Some(first) => first.as_str().unwrap_or("").to_string(),
        None => or_none(str_at(svc, "/spec/clusterIP")),
    };
    let ports: Vec<String> = arr_at(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let port = i64_at(p, "/port");
            // Kubernetes defaults a missing protocol to TCP.
            let protocol = opt_str_at(p, "/protocol").unwrap_or("TCP");
            match i64_at(p, "/nodePort") {
                node_port if node_port > 0 => format!("{port}:{node_port}/{protocol}"),
                _ => format!("{port}/{protocol}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        name(svc),
        Value::from(service_type(svc)),
        Value::from(cluster_ip),
        Value::from(service_external_ip(svc)),
        Value::from(ports),
        clock.age(svc),
        Value::from(format_labels(map_at(svc, "/spec/selector"))),
    ]
}

/// Load-balancer ingress points, IP preferred over hostname, sorted and
/// without repeats.
pub(super) fn load_balancer_addresses(ingress: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = ingress
        .iter()
        .filter_map(|i| {
            let ip = str_at(i, "/ip");
            let host = str_at(i, "/hostname");
            if !ip.is_empty() {
                Some(ip.to_string())
            } else if !host.is_empty() {
                Some(host.to_string())
            } else {
                None
            }
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The EXTERNAL-IP cell: external IPs, load-balancer addresses (`<pending>`
/// until the load balancer reports one), or the external name.
fn service_external_ip(svc: &Value) -> String {
    let external: Vec<&str> = arr_at(svc, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match service_type(svc) {
        "ClusterIP" | "NodePort" if external.is_empty() => "<none>".to_string(),
        "ClusterIP" | "NodePort" => external.join(","),
        "LoadBalancer" => {
            let mut all = load_balancer_addresses(arr_at(svc, "/status/loadBalancer/ingress"));
            if all.is_empty() && external.is_empty() {
                return "<pending>".to_string();
            }
            all.extend(external.iter().map(|s| s.to_string()));
            all.join(",")
        }
        "ExternalName" => str_at(svc, "/spec/externalName").to_string(),
        _ => "<unknown>".to_string(),
    }
}

static ENDPOINTS: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Endpoints",
            "The set of all endpoints is the union of all subsets.",
        ),
        AGE,
    ],
    cells: endpoints_cells,
    conditions: no_conditions,
};

/// `host:port`, with IPv6 hosts in brackets (Go's `net.JoinHostPort`).
fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Kubernetes' `formatEndpoints`: up to three `ip:port` pairs, then
/// ` + N more...`.
fn format_endpoints(ep: &Value) -> String {
    const MAX: usize = 3;
    let subsets = arr_at(ep, "/subsets");
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for subset in subsets {
        let addresses = arr_at(subset, "/addresses");
        let ports = arr_at(subset, "/ports");
        if ports.is_empty() {
            // Headless services may have no ports: list bare addresses.
            count += addresses.len();
            for address in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(str_at(address, "/ip").to_string());
            }
            continue;
        }
        for port in ports {
            count += addresses.len();
            for address in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(join_host_port(
                    str_at(address, "/ip"),
                    i64_at(port, "/port"),
                ));
            }
        }
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count.saturating_sub(MAX))
    } else {
        joined
    }
}

fn endpoints_cells(ep: &Value, clock: &Clock) -> Vec<Value> {
    vec![name(ep), Value::from(format_endpoints(ep)), clock.age(ep)]
}

static NODE: Printer = Printer {
    columns: &[
        NAME,
        Column::string("Status", "The status of the node"),
        Column::string("Roles", "The roles of the node"),
        AGE,
        Column::string("Version", "Kubelet Version reported by the node."),
        Column::string("Internal-IP", "List of addresses reachable to the node.").wide(),
        Column::string("External-IP", "List of addresses reachable to the node.").wide(),
        Column::string("OS-Image", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).").wide(),
        Column::string("Kernel-Version", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).").wide(),
        Column::string(
            "Container-Runtime",
            "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
        )
        .wide(),
    ],
    cells: node_cells,
    conditions: no_conditions,
};

const NODE_ROLE_PREFIX: &str = "node-role.kubernetes.io/";
const NODE_ROLE_LABEL: &str = "kubernetes.io/role";

/// Roles from `node-role.kubernetes.io/<role>` label keys and the older
/// `kubernetes.io/role=<role>` label, sorted.
fn node_roles(node: &Value) -> Vec<String> {
    let mut roles: Vec<String> = map_at(node, "/metadata/labels")
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| {
            if let Some(role) = key.strip_prefix(NODE_ROLE_PREFIX) {
                return (!role.is_empty()).then(|| role.to_string());
            }
            let value = value.as_str().unwrap_or("");
            (key == NODE_ROLE_LABEL && !value.is_empty()).then(|| value.to_string())
        })
        .collect();
    roles.sort_unstable();
    roles.dedup();
    roles
}

/// The first address of a type, or `<none>`.
fn node_address(node: &Value, type_: &str) -> String {
    arr_at(node, "/status/addresses")
        .iter()
        .find(|a| str_at(a, "/type") == type_)
        .map(|a| str_at(a, "/address").to_string())
        .unwrap_or_else(|| "<none>".to_string())
}

fn node_cells(node: &Value, clock: &Clock) -> Vec<Value> {
    // Kubernetes keeps the last condition of each type.
    let ready = arr_at(node, "/status/conditions")
        .iter()
        .rev()
        .find(|c| str_at(c, "/type") == "Ready");
    let mut status = vec![match ready {
        Some(c) if str_at(c, "/status") == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if bool_at(node, "/spec/unschedulable") {
        status.push("SchedulingDisabled");
    }
    let roles = node_roles(node);
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let info = |field: &str| {
        let value = str_at(node, &format!("/status/nodeInfo/{field}"));
        Value::from(if value.is_empty() { "<unknown>" } else { value })
    };
    vec![
        name(node),
        Value::from(status.join(",")),
        Value::from(roles),
        clock.age(node),
        Value::from(str_at(node, "/status/nodeInfo/kubeletVersion")),
        Value::from(node_address(node, "InternalIP")),
        Value::from(node_address(node, "ExternalIP")),
        info("osImage"),
        info("kernelVersion"),
        info("containerRuntimeVersion"),
    ]
}

static NAMESPACE: Printer = Printer {
    columns: &[
        NAME,
        Column::string("Status", "The status of the namespace"),
        AGE,
    ],
    cells: namespace_cells,
    conditions: no_conditions,
};

fn namespace_cells(ns: &Value, clock: &Clock) -> Vec<Value> {
    vec![
        name(ns),
        Value::from(str_at(ns, "/status/phase")),
        clock.age(ns),
    ]
}

static CONFIG_MAP: Printer = Printer {
    columns: &[
        NAME,
        Column::string("Data", "Data contains the configuration data."),
        AGE,
    ],
    cells: config_map_cells,
    conditions: no_conditions,
};

fn config_map_cells(cm: &Value, clock: &Clock) -> Vec<Value> {
    let entries = len_at(cm, "/data") + len_at(cm, "/binaryData");
    vec![name(cm), int_cell(entries), clock.age(cm)]
}

static SECRET: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Type",
            "Used to facilitate programmatic handling of secret data.",
        ),
        Column::string("Data", "Data contains the secret data."),
        AGE,
    ],
    cells: secret_cells,
    conditions: no_conditions,
};

fn secret_cells(secret: &Value, clock: &Clock) -> Vec<Value> {
    vec![
        name(secret),
        Value::from(str_at(secret, "/type")),
        int_cell(len_at(secret, "/data")),
        clock.age(secret),
    ]
}

static SERVICE_ACCOUNT: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Secrets",
            "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
        ),
        AGE,
    ],
    cells: service_account_cells,
    conditions: no_conditions,
};

fn service_account_cells(sa: &Value, clock: &Clock) -> Vec<Value> {
    vec![name(sa), int_cell(len_at(sa, "/secrets")), clock.age(sa)]
}

const EVENT_COLUMNS: &[Column] = &[
    Column::string("Last Seen", "The time at which the most recent occurrence of this event was recorded."),
    Column::string("Type", "Type of this event (Normal, Warning), new types could be added in the future"),
    Column::string("Reason", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
    Column::string("Object", "The object that this event is about."),
    Column::string("Subobject", "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.").wide(),
    Column::string("Source", "The component reporting this event.").wide(),
    Column::string("Message", "A human-readable description of the status of this operation."),
    Column::string("First Seen", "The time at which the event was first recorded.").wide(),
    Column::string("Count", "The number of times this event has occurred.").wide(),
    Column { priority: 1, ..NAME },
];

static EVENT: Printer = Printer {
    columns: EVENT_COLUMNS,
    cells: core_event_cells,
    conditions: no_conditions,
};

/// `events.k8s.io/v1` events name the core fields differently; Kubernetes
/// converts them and prints them alike.
static EVENTS_V1_EVENT: Printer = Printer {
    columns: EVENT_COLUMNS,
    cells: events_v1_event_cells,
    conditions: no_conditions,
};

/// Where an event's fields live in one of the two event APIs.
struct EventFields {
    involved: &'static str,
    message: &'static str,
    source: &'static str,
    first: &'static str,
    last: &'static str,
    count: &'static str,
    reporting_controller: &'static str,
}

fn core_event_cells(ev: &Value, clock: &Clock) -> Vec<Value> {
    event_cells(
        ev,
        clock,
        &EventFields {
            involved: "/involvedObject",
            message: "/message",
            source: "/source",
            first: "/firstTimestamp",
            last: "/lastTimestamp",
            count: "/count",
            reporting_controller: "/reportingComponent",
        },
    )
}

fn events_v1_event_cells(ev: &Value, clock: &Clock) -> Vec<Value> {
    event_cells(
        ev,
        clock,
        &EventFields {
            involved: "/regarding",
            message: "/note",
            source: "/deprecatedSource",
            first: "/deprecatedFirstTimestamp",
            last: "/deprecatedLastTimestamp",
            count: "/deprecatedCount",
            reporting_controller: "/reportingController",
        },
    )
}

/// Kubernetes' `printEvent`: times fall back from the legacy timestamps to
/// `eventTime` and the series; a singleton event counts once.
fn event_cells(ev: &Value, clock: &Clock, at: &EventFields) -> Vec<Value> {
    let field = |suffix: &str| format!("{}{suffix}", at.involved);
    let first = match opt_str_at(ev, at.first).and_then(parse_time) {
        Some(_) => clock.since(str_at(ev, at.first)),
        None => clock.since(str_at(ev, "/eventTime")),
    };
    let mut last = match opt_str_at(ev, at.last).and_then(parse_time) {
        Some(_) => clock.since(str_at(ev, at.last)),
        None => first.clone(),
    };
    let mut count = i64_at(ev, at.count);
    if is_set(ev, "/series") {
        last = clock.since(str_at(ev, "/series/lastObservedTime"));
        count = i64_at(ev, "/series/count");
    } else if count == 0 {
        count = 1;
    }

    let kind = str_at(ev, &field("/kind")).to_lowercase();
    let involved_name = str_at(ev, &field("/name"));
    let target = if involved_name.is_empty() {
        kind
    } else {
        format!("{kind}/{involved_name}")
    };

    let component = first_non_empty(
        str_at(ev, &format!("{}/component", at.source)),
        str_at(ev, at.reporting_controller),
    );
    let instance = first_non_empty(
        str_at(ev, &format!("{}/host", at.source)),
        str_at(ev, "/reportingInstance"),
    );
    let source = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };

    vec![
        Value::from(last),
        Value::from(str_at(ev, "/type")),
        Value::from(str_at(ev, "/reason")),
        Value::from(target),
        Value::from(str_at(ev, &field("/fieldPath"))),
        Value::from(source),
        Value::from(str_at(ev, at.message).trim()),
        Value::from(first),
        Value::from(count),
        name(ev),
    ]
}

fn first_non_empty<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() { b } else { a }
}

static PERSISTENT_VOLUME: Printer = Printer {
    columns: &[
        NAME,
        Column::string("Capacity", "capacity is the description of the persistent volume's resources and capacity."),
        Column::string("Access Modes", "accessModes contains all ways the volume can be mounted."),
        Column::string("Reclaim Policy", "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim."),
        Column::string("Status", "phase indicates if a volume is available, bound to a claim, or released by a claim."),
        Column::string("Claim", "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim."),
        Column::string("StorageClass", "StorageClass of the pv"),
        Column::string("VolumeAttributesClass", "VolumeAttributesClass of the pv"),
        Column::string("Reason", "reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI."),
        AGE,
        Column::string("VolumeMode", "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state.").wide(),
    ],
    cells: persistent_volume_cells,
    conditions: no_conditions,
};

/// `RWO,ROX,RWX,RWOP` for the modes present, in that order.
fn access_modes(modes: &[Value]) -> String {
    const SHORT: [(&str, &str); 4] = [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ];
    SHORT
        .iter()
        .filter(|(mode, _)| modes.iter().any(|m| m.as_str() == Some(mode)))
        .map(|(_, short)| *short)
        .collect::<Vec<_>>()
        .join(",")
}

/// The storage class: the beta annotation wins over the field, as in
/// Kubernetes.
fn storage_class(obj: &Value) -> String {
    map_at(obj, "/metadata/annotations")
        .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
        .map(|v| v.as_str().unwrap_or("").to_string())
        .unwrap_or_else(|| str_at(obj, "/spec/storageClassName").to_string())
}

/// `storage` of a resource list as a quantity, `0` when absent.
fn storage_quantity(obj: &Value, pointer: &str) -> String {
    scalar_text(obj.pointer(pointer)).unwrap_or_else(|| "0".to_string())
}

/// The phase, or `Terminating` once deletion started.
fn phase_or_terminating(obj: &Value) -> String {
    if is_set(obj, "/metadata/deletionTimestamp") {
        "Terminating".to_string()
    } else {
        str_at(obj, "/status/phase").to_string()
    }
}

fn persistent_volume_cells(pv: &Value, clock: &Clock) -> Vec<Value> {
    let claim = if is_set(pv, "/spec/claimRef") {
        format!(
            "{}/{}",
            str_at(pv, "/spec/claimRef/namespace"),
            str_at(pv, "/spec/claimRef/name")
        )
    } else {
        String::new()
    };
    vec![
        name(pv),
        Value::from(storage_quantity(pv, "/spec/capacity/storage")),
        Value::from(access_modes(arr_at(pv, "/spec/accessModes"))),
        Value::from(str_at(pv, "/spec/persistentVolumeReclaimPolicy")),
        Value::from(phase_or_terminating(pv)),
        Value::from(claim),
        Value::from(storage_class(pv)),
        Value::from(opt_str_at(pv, "/spec/volumeAttributesClassName").unwrap_or("<unset>")),
        Value::from(str_at(pv, "/status/reason")),
        clock.age(pv),
        Value::from(opt_str_at(pv, "/spec/volumeMode").unwrap_or("<unset>")),
    ]
}

static PERSISTENT_VOLUME_CLAIM: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Status",
            "phase represents the current phase of PersistentVolumeClaim.",
        ),
        Column::string(
            "Volume",
            "volumeName is the binding reference to the PersistentVolume backing this claim.",
        ),
        Column::string(
            "Capacity",
            "capacity represents the actual resources of the underlying volume.",
        ),
        Column::string(
            "Access Modes",
            "accessModes contains the actual access modes the volume backing the PVC has.",
        ),
        Column::string("StorageClass", "StorageClass of the pvc"),
        Column::string("VolumeAttributesClass", "VolumeAttributesClass of the pvc"),
        AGE,
        Column::string(
            "VolumeMode",
            "volumeMode defines what type of volume is required by the claim.",
        )
        .wide(),
    ],
    cells: persistent_volume_claim_cells,
    conditions: no_conditions,
};

fn persistent_volume_claim_cells(pvc: &Value, clock: &Clock) -> Vec<Value> {
    let volume = str_at(pvc, "/spec/volumeName");
    // Capacity and modes are the bound volume's, so blank until bound.
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (
            storage_quantity(pvc, "/status/capacity/storage"),
            access_modes(arr_at(pvc, "/status/accessModes")),
        )
    };
    vec![
        name(pvc),
        Value::from(phase_or_terminating(pvc)),
        Value::from(volume),
        Value::from(capacity),
        Value::from(modes),
        Value::from(storage_class(pvc)),
        Value::from(opt_str_at(pvc, "/spec/volumeAttributesClassName").unwrap_or("<unset>")),
        clock.age(pvc),
        Value::from(opt_str_at(pvc, "/spec/volumeMode").unwrap_or("<unset>")),
    ]
}

static RESOURCE_QUOTA: Printer = Printer {
    columns: &[
        NAME,
        Column::string(
            "Request",
            "Request represents a minimum amount of cpu/memory that a container may consume.",
        ),
        Column::string(
            "Limit",
            "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
        ),
        AGE,
    ],
    cells: resource_quota_cells,
    conditions: no_conditions,
};

/// `resource: used/hard` for each hard limit, sorted by resource; `limits.*`
/// resources go to the LIMIT column, the rest to REQUEST.
fn resource_quota_cells(quota: &Value, clock: &Clock) -> Vec<Value> {
    let mut hard: Vec<(&String, &Value)> = map_at(quota, "/status/hard")
        .into_iter()
        .flatten()
        .collect();
    hard.sort_by(|a, b| a.0.cmp(b.0));
    let used = map_at(quota, "/status/used");
    let mut requests: Vec<String> = Vec::new();
    let mut limits: Vec<String> = Vec::new();
    for (resource, hard) in hard {
        let used =
            scalar_text(used.and_then(|u| u.get(resource))).unwrap_or_else(|| "0".to_string());
        let hard = scalar_text(Some(hard)).unwrap_or_else(|| "0".to_string());
        let entry = format!("{resource}: {used}/{hard}");
        let mut pieces = resource.split('.');
        if pieces.next() == Some("limits") && pieces.next().is_some() {
            limits.push(entry);
        } else {
            requests.push(entry);
        }
    }
    vec![
        name(quota),
        Value::from(requests.join(", ")),
        Value::from(limits.join(", ")),
        clock.age(quota),
    ]
}
