use std::time::Duration;

use serde_json::json;

use super::fields::{format_rfc3339, human_duration, parse_time};
use super::*;
use crate::kinds::{KINDS, find_kind};

/// The clock every test reads: 2024-05-01T12:00:00Z.
const NOW: &str = "2024-05-01T12:00:00Z";

fn now() -> SystemTime {
    let nanos = parse_time(NOW)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn kind(api_version: &str, kind: &str) -> &'static Kind {
    find_kind(api_version, kind).unwrap_or_else(|| panic!("{api_version} {kind} is not served"))
}

fn render(api_version: &str, kind_name: &str, objects: &[Value]) -> Value {
    table(
        kind(api_version, kind_name),
        objects,
        json!({"resourceVersion": "42"}),
        now(),
        IncludeObject::Metadata,
    )
}

/// The cells of the one row printed for `obj`.
fn cells(api_version: &str, kind_name: &str, obj: Value) -> Vec<Value> {
    let t = render(api_version, kind_name, &[obj]);
    t["rows"][0]["cells"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Column names with their priorities.
fn columns(api_version: &str, kind_name: &str) -> Vec<(String, u64)> {
    let t = render(api_version, kind_name, &[]);
    t["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_string(),
                c["priority"].as_u64().unwrap_or(99),
            )
        })
        .collect()
}

fn names(api_version: &str, kind_name: &str, priority: u64) -> Vec<String> {
    columns(api_version, kind_name)
        .into_iter()
        .filter(|(_, p)| *p == priority)
        .map(|(n, _)| n)
        .collect()
}

// ---- ages ------------------------------------------------------------------

#[test]
fn ages_read_like_kubectl() {
    let s = |secs: i128| human_duration(secs * 1_000_000_000);
    let cases = [
        (0, "0s"),
        (45, "45s"),
        (119, "119s"),
        (120, "2m"),
        (150, "2m30s"),
        (599, "9m59s"),
        (600, "10m"),
        (3 * 3600 - 1, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 600, "3h10m"),
        (8 * 3600, "8h"),
        (47 * 3600, "47h"),
        (48 * 3600, "2d"),
        (50 * 3600, "2d2h"),
        (8 * 86_400, "8d"),
        (729 * 86_400, "729d"),
        (730 * 86_400, "2y"),
        (731 * 86_400, "2y1d"),
        (8 * 365 * 86_400, "8y"),
        (-1, "0s"),
        (-2, "<invalid>"),
    ];
    for (secs, want) in cases {
        assert_eq!(s(secs), want, "{secs}s");
    }
    // A clock a moment ahead of ours still reads as now.
    assert_eq!(human_duration(-1_500_000_000), "0s");
}

#[test]
fn timestamps_parse_in_every_form_kubernetes_writes() {
    assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_time(NOW), Some(1_714_564_800_000_000_000));
    assert_eq!(parse_time("2024-05-01T14:00:00+02:00"), parse_time(NOW));
    assert_eq!(
        parse_time("2024-05-01T12:00:00.250000Z"),
        Some(1_714_564_800_250_000_000)
    );
    for bad in [
        "",
        "yesterday",
        "2024-05-01",
        "2024-13-01T00:00:00Z",
        "2024-05-01T12:00:00",
        "2024-05-01T12:00:00.Z",
    ] {
        assert_eq!(parse_time(bad), None, "{bad:?}");
    }
    assert_eq!(
        format_rfc3339(parse_time("2024-02-29T23:59:59.9+00:00")),
        "2024-02-29T23:59:59Z"
    );
    assert_eq!(format_rfc3339(None), "0001-01-01T00:00:00Z");
}

// ---- the Table object -------------------------------------------------------

#[test]
fn table_carries_list_metadata_and_column_definitions() {
    let t = render("v1", "ConfigMap", &[json!({"metadata": {"name": "a"}})]);
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(t["metadata"], json!({"resourceVersion": "42"}));
    assert_eq!(
        t["columnDefinitions"][0],
        json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DOC, "priority": 0})
    );
    assert_eq!(t["columnDefinitions"][1]["type"], "string");
    assert_eq!(t["rows"].as_array().map(Vec::len), Some(1));
}

#[test]
fn rows_carry_the_object_kubectl_asked_for() {
    let obj = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "a", "namespace": "default", "resourceVersion": "7", "labels": {"x": "y"}},
        "data": {"k": "v"},
    });
    let pick = |include| {
        table(
            kind("v1", "ConfigMap"),
            std::slice::from_ref(&obj),
            json!({}),
            now(),
            include,
        )
    };

    let meta = pick(IncludeObject::Metadata);
    assert_eq!(
        meta["rows"][0]["object"],
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
    );
    assert_eq!(pick(IncludeObject::Object)["rows"][0]["object"], obj);
    let none = pick(IncludeObject::None);
    assert!(none["rows"][0].get("object").is_none());
    assert_eq!(none["rows"][0]["cells"][0], "a");
}

#[test]
fn include_object_parses_the_query_values() {
    assert_eq!("".parse(), Ok(IncludeObject::Metadata));
    assert_eq!("Metadata".parse(), Ok(IncludeObject::Metadata));
    assert_eq!("Object".parse(), Ok(IncludeObject::Object));
    assert_eq!("None".parse(), Ok(IncludeObject::None));
    assert_eq!(IncludeObject::default(), IncludeObject::Metadata);
    let err = "object".parse::<IncludeObject>().err();
    assert_eq!(
        err,
        Some(InvalidIncludeObject {
            value: "object".to_string()
        })
    );
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("\"object\"") && message.contains("'Metadata'"),
        "{message}"
    );
}

#[test]
fn a_non_object_list_meta_becomes_empty_metadata() {
    let t = table(
        kind("v1", "Pod"),
        &[],
        Value::Null,
        now(),
        IncludeObject::None,
    );
    assert_eq!(t["metadata"], json!({}));
    assert_eq!(t["rows"], json!([]));
}

// ---- pods -------------------------------------------------------------------

#[test]
fn pod_columns_match_kubectl_with_wide_ones_at_priority_1() {
    assert_eq!(
        names("v1", "Pod", 0),
        ["Name", "Ready", "Status", "Restarts", "Age"]
    );
    assert_eq!(
        names("v1", "Pod", 1),
        ["IP", "Node", "Nominated Node", "Readiness Gates"]
    );
    let t = render("v1", "Pod", &[]);
    assert_eq!(
        t["columnDefinitions"][3]["type"], "string",
        "RESTARTS carries '(5m ago)' text"
    );
}

#[test]
fn running_pod_with_a_restarted_container() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "default", "creationTimestamp": "2024-05-01T09:00:00Z"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "nginx"}, {"name": "proxy", "image": "envoy"}]},
        "status": {
            "phase": "Running",
            "podIP": "10.244.1.5",
            "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}],
            "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {"name": "app", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2024-05-01T09:00:05Z"}}},
                {"name": "proxy", "ready": true, "restartCount": 1, "state": {"running": {"startedAt": "2024-05-01T11:55:01Z"}},
                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2024-05-01T11:55:00Z"}}},
            ],
        },
    });
    assert_eq!(
        cells("v1", "Pod", pod),
        json!([
            "web-0",
            "2/2",
            "Running",
            "1 (5m ago)",
            "3h",
            "10.244.1.5",
            "node-a",
            "<none>",
            "<none>"
        ])
        .as_array()
        .cloned()
        .unwrap_or_default()
    );
}

#[test]
fn pending_pod_shows_the_waiting_reason() {
    let creating = json!({
        "metadata": {"name": "web-1", "creationTimestamp": "2024-05-01T11:59:30Z"},
        "spec": {"nodeName": "node-b", "containers": [{"name": "app", "image": "nginx"}]},
        "status": {"phase": "Pending", "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}},
        ]},
    });
    assert_eq!(
        cells("v1", "Pod", creating),
        json!([
            "web-1",
            "0/1",
            "ContainerCreating",
            "0",
            "30s",
            "<none>",
            "node-b",
            "<none>",
            "<none>"
        ])
        .as_array()
        .cloned()
        .unwrap_or_default()
    );

    let unscheduled = json!({
        "metadata": {"name": "web-2", "creationTimestamp": "2024-05-01T11:58:00Z"},
        "spec": {"containers": [{"name": "app"}]},
        "status": {"phase": "Pending", "nominatedNodeName": "node-c"},
    });
    let row = cells("v1", "Pod", unscheduled);
    assert_eq!(row[1..4], [json!("0/1"), json!("Pending"), json!("0")]);
    assert_eq!(row[4], "2m");
    assert_eq!(row[7], "node-c");
}

#[test]
fn crash_looping_pod_shows_back_off_and_the_last_restart() {
    let pod = json!({
        "metadata": {"name": "bad", "creationTimestamp": "2024-04-30T12:00:00Z"},
        "spec": {"containers": [{"name": "app"}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "app", "ready": false, "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "finishedAt": "2024-05-01T11:59:30Z"}},
        }]},
    });
    let row = cells("v1", "Pod", pod);
    assert_eq!(
        row[1..5],
        [
            json!("0/1"),
            json!("CrashLoopBackOff"),
            json!("4 (30s ago)"),
            json!("24h")
        ]
    );
}

#[test]
fn init_containers_show_progress_and_failures() {
    let pod = |init_state: Value| {
        json!({
            "metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "migrate"}, {"name": "warm"}], "containers": [{"name": "app"}]},
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "Initialized", "status": "False"}],
                "initContainerStatuses": [
                    {"name": "migrate", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                    {"name": "warm", "restartCount": 2, "state": init_state},
                ],
                "containerStatuses": [{"name": "app", "state": {"waiting": {"reason": "PodInitializing"}}}],
            },
        })
    };
    let status = |state: Value| cells("v1", "Pod", pod(state))[2].clone();
    assert_eq!(status(json!({"running": {}})), "Init:1/2");
    assert_eq!(
        status(json!({"waiting": {"reason": "PodInitializing"}})),
        "Init:1/2"
    );
    assert_eq!(
        status(json!({"waiting": {"reason": "CrashLoopBackOff"}})),
        "Init:CrashLoopBackOff"
    );
    assert_eq!(
        status(json!({"terminated": {"exitCode": 1, "reason": "Error"}})),
        "Init:Error"
    );
    assert_eq!(
        status(json!({"terminated": {"exitCode": 3}})),
        "Init:ExitCode:3"
    );
    assert_eq!(
        status(json!({"terminated": {"exitCode": 137, "signal": 9}})),
        "Init:Signal:9"
    );
    // Restarts of plain init containers count while the pod initializes.
    assert_eq!(cells("v1", "Pod", pod(json!({"running": {}})))[3], "2");
}

#[test]
fn sidecar_init_containers_count_as_containers() {
    let pod = json!({
        "metadata": {"name": "meshed"},
        "spec": {
            "initContainers": [{"name": "proxy", "restartPolicy": "Always"}],
            "containers": [{"name": "app"}],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
            "initContainerStatuses": [{
                "name": "proxy", "started": true, "ready": true, "restartCount": 2,
                "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T11:50:00Z"}},
            }],
            "containerStatuses": [{"name": "app", "ready": true, "state": {"running": {}}}],
        },
    });
    let row = cells("v1", "Pod", pod);
    assert_eq!(
        row[1..4],
        [json!("2/2"), json!("Running"), json!("2 (10m ago)")]
    );
}

#[test]
fn terminating_pod() {
    let pod = json!({
        "metadata": {"name": "old", "creationTimestamp": "2024-05-01T11:00:00Z", "deletionTimestamp": "2024-05-01T11:59:50Z"},
        "spec": {"containers": [{"name": "app"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "app", "ready": true, "state": {"running": {}}}]},
    });
    assert_eq!(cells("v1", "Pod", pod.clone())[2], "Terminating");

    let mut lost = pod.clone();
    lost["status"]["reason"] = json!("NodeLost");
    assert_eq!(cells("v1", "Pod", lost)[2], "Unknown");

    // A finished pod being deleted keeps its final status.
    let mut finished = pod;
    finished["status"] = json!({"phase": "Succeeded", "containerStatuses": [
        {"name": "app", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
    ]});
    assert_eq!(cells("v1", "Pod", finished)[2], "Completed");
}

#[test]
fn completed_pod_carries_a_completed_row_condition() {
    let pod = json!({
        "metadata": {"name": "once"},
        "spec": {"containers": [{"name": "app"}]},
        "status": {"phase": "Succeeded", "containerStatuses": [
            {"name": "app", "ready": false, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        ]},
    });
    let t = render("v1", "Pod", &[pod]);
    assert_eq!(t["rows"][0]["cells"][1], "0/1");
    assert_eq!(t["rows"][0]["cells"][2], "Completed");
    assert_eq!(
        t["rows"][0]["conditions"],
        json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}])
    );
    let running = render("v1", "Pod", &[json!({"status": {"phase": "Running"}})]);
    assert!(running["rows"][0].get("conditions").is_none());
}

#[test]
fn pod_status_edge_cases() {
    let status = |status: Value| {
        cells(
            "v1",
            "Pod",
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "status": status}),
        )
    };
    // A container exited without a reason: its signal, else its exit code.
    let row = status(
        json!({"phase": "Running", "containerStatuses": [{"name": "a", "state": {"terminated": {"exitCode": 137, "signal": 9}}}]}),
    );
    assert_eq!(row[2], "Signal:9");
    // One container completed while the other still runs.
    let half_done = |ready: &str| {
        status(json!({"phase": "Running", "conditions": [{"type": "Ready", "status": ready}], "containerStatuses": [
            {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            {"name": "b", "ready": true, "state": {"running": {}}},
        ]}))[2]
            .clone()
    };
    assert_eq!(half_done("True"), "Running");
    assert_eq!(half_done("False"), "NotReady");
    // Scheduling gates hold the pod before it is scheduled.
    let gated = status(
        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}),
    );
    assert_eq!(gated[2], "SchedulingGated");
    // An evicted pod shows the pod's reason.
    let evicted = status(json!({"phase": "Failed", "reason": "Evicted"}));
    assert_eq!(evicted[2], "Evicted");
}

#[test]
fn readiness_gates_count_the_true_conditions() {
    let pod = json!({
        "metadata": {"name": "gated"},
        "spec": {"containers": [{"name": "app"}], "readinessGates": [{"conditionType": "example.com/lb"}, {"conditionType": "example.com/dns"}]},
        "status": {"conditions": [{"type": "example.com/lb", "status": "True"}, {"type": "example.com/dns", "status": "False"}]},
    });
    assert_eq!(cells("v1", "Pod", pod)[8], "1/2");
}

// ---- services and endpoints -----------------------------------------------

#[test]
fn service_columns() {
    assert_eq!(
        names("v1", "Service", 0),
        [
            "Name",
            "Type",
            "Cluster-IP",
            "External-IP",
            "Port(s)",
            "Age"
        ]
    );
    assert_eq!(names("v1", "Service", 1), ["Selector"]);
}

#[test]
fn node_port_service() {
    let svc = json!({
        "metadata": {"name": "web", "creationTimestamp": "2024-04-29T12:00:00Z"},
        "spec": {
            "type": "NodePort", "clusterIP": "10.96.12.3", "clusterIPs": ["10.96.12.3"],
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 443, "nodePort": 30443, "protocol": "TCP"}],
            "selector": {"tier": "fe", "app": "web"},
        },
    });
    assert_eq!(
        cells("v1", "Service", svc),
        json!([
            "web",
            "NodePort",
            "10.96.12.3",
            "<none>",
            "80:30080/TCP,443:30443/TCP",
            "2d",
            "app=web,tier=fe"
        ])
        .as_array()
        .cloned()
        .unwrap_or_default()
    );
}

#[test]
fn load_balancer_service_is_pending_until_it_has_an_address() {
    let mut svc = json!({
        "metadata": {"name": "edge"},
        "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.7.7"], "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]},
        "status": {"loadBalancer": {}},
    });
    let row = cells("v1", "Service", svc.clone());
    assert_eq!(
        row[1..5],
        [
            json!("LoadBalancer"),
            json!("10.96.7.7"),
            json!("<pending>"),
            json!("443:31443/TCP")
        ]
    );
    assert_eq!(row[6], "<none>");

    svc["status"]["loadBalancer"]["ingress"] =
        json!([{"hostname": "lb.example.com"}, {"ip": "203.0.113.10"}, {"ip": "203.0.113.10"}]);
    svc["spec"]["externalIPs"] = json!(["198.51.100.1"]);
    assert_eq!(
        cells("v1", "Service", svc)[3],
        "203.0.113.10,lb.example.com,198.51.100.1"
    );
}

#[test]
fn dual_stack_service_shows_its_primary_cluster_ip() {
    let svc = json!({
        "metadata": {"name": "dns"},
        "spec": {
            "type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:10:96::a"],
            "ipFamilies": ["IPv4", "IPv6"],
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
        },
    });
    let row = cells("v1", "Service", svc);
    assert_eq!(
        row[1..5],
        [
            json!("ClusterIP"),
            json!("10.96.0.10"),
            json!("<none>"),
            json!("53/UDP,53/TCP")
        ]
    );
}

#[test]
fn other_service_shapes() {
    let external = json!({"metadata": {"name": "db"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}});
    let row = cells("v1", "Service", external);
    assert_eq!(
        row[1..5],
        [
            json!("ExternalName"),
            json!("<none>"),
            json!("db.example.com"),
            json!("<none>")
        ]
    );

    let headless = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 8080}]}});
    let row = cells("v1", "Service", headless);
    assert_eq!(
        row[1..5],
        [
            json!("ClusterIP"),
            json!("None"),
            json!("<none>"),
            json!("8080/TCP")
        ]
    );

    let with_external_ips = json!({"metadata": {"name": "e"}, "spec": {"type": "ClusterIP", "externalIPs": ["192.0.2.1", "192.0.2.2"]}});
    assert_eq!(
        cells("v1", "Service", with_external_ips)[3],
        "192.0.2.1,192.0.2.2"
    );
}

#[test]
fn endpoints_list_three_then_count_the_rest() {
    let ep = json!({"metadata": {"name": "web"}, "subsets": [{
        "addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
        "ports": [{"port": 8080}, {"port": 9090}],
    }]});
    assert_eq!(
        cells("v1", "Endpoints", ep)[1],
        "10.0.0.1:8080,10.0.0.2:8080,10.0.0.1:9090 + 1 more..."
    );
    let v6 = json!({"metadata": {"name": "v6"}, "subsets": [{"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 80}]}]});
    assert_eq!(cells("v1", "Endpoints", v6)[1], "[fd00::1]:80");
    let headless =
        json!({"metadata": {"name": "h"}, "subsets": [{"addresses": [{"ip": "10.0.0.9"}]}]});
    assert_eq!(cells("v1", "Endpoints", headless)[1], "10.0.0.9");
    assert_eq!(
        cells("v1", "Endpoints", json!({"metadata": {"name": "none"}}))[1],
        "<none>"
    );
}

#[test]
fn endpoint_slices() {
    assert_eq!(
        names("discovery.k8s.io/v1", "EndpointSlice", 0),
        ["Name", "AddressType", "Ports", "Endpoints", "Age"]
    );
    let slice = json!({
        "metadata": {"name": "web-abc12"},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "named"}, {}],
        "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}, {"addresses": ["10.0.0.3"]}, {"addresses": ["10.0.0.4"]}],
    });
    let row = cells("discovery.k8s.io/v1", "EndpointSlice", slice);
    assert_eq!(
        row[1..4],
        [
            json!("IPv4"),
            json!("80,named,*"),
            json!("10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...")
        ]
    );
    let empty = cells(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        json!({"metadata": {"name": "e"}, "addressType": "IPv6"}),
    );
    assert_eq!(empty[2..4], [json!("<unset>"), json!("<unset>")]);
}

// ---- nodes and namespaces ---------------------------------------------------

#[test]
fn node_with_roles() {
    assert_eq!(
        names("v1", "Node", 0),
        ["Name", "Status", "Roles", "Age", "Version"]
    );
    assert_eq!(
        names("v1", "Node", 1),
        [
            "Internal-IP",
            "External-IP",
            "OS-Image",
            "Kernel-Version",
            "Container-Runtime"
        ]
    );
    let node = json!({
        "metadata": {
            "name": "cp-1",
            "creationTimestamp": "2024-04-01T12:00:00Z",
            "labels": {
                "kubernetes.io/hostname": "cp-1",
                "node-role.kubernetes.io/control-plane": "",
                "node-role.kubernetes.io/etcd": "true",
                "node-role.kubernetes.io/": "",
                "kubernetes.io/role": "infra",
            },
        },
        "spec": {"unschedulable": true},
        "status": {
            "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
            "addresses": [{"type": "Hostname", "address": "cp-1"}, {"type": "InternalIP", "address": "192.168.1.10"}],
            "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1.0-18-amd64"},
        },
    });
    assert_eq!(
        cells("v1", "Node", node),
        json!([
            "cp-1",
            "Ready,SchedulingDisabled",
            "control-plane,etcd,infra",
            "30d",
            "v1.32.0",
            "192.168.1.10",
            "<none>",
            "Debian GNU/Linux 12 (bookworm)",
            "6.1.0-18-amd64",
            "<unknown>",
        ])
        .as_array()
        .cloned()
        .unwrap_or_default()
    );
}

#[test]
fn node_readiness_and_missing_roles() {
    let node = |conditions: Value| {
        cells(
            "v1",
            "Node",
            json!({"metadata": {"name": "w"}, "status": {"conditions": conditions}}),
        )
    };
    assert_eq!(
        node(json!([{"type": "Ready", "status": "False"}]))[1..3],
        [json!("NotReady"), json!("<none>")]
    );
    assert_eq!(
        node(json!([{"type": "Ready", "status": "Unknown"}]))[1],
        "NotReady"
    );
    assert_eq!(node(json!([]))[1], "Unknown");
}

#[test]
fn namespaces_show_their_phase() {
    let ns = json!({"metadata": {"name": "team-a", "creationTimestamp": "2024-05-01T11:00:00Z"}, "status": {"phase": "Active"}});
    assert_eq!(
        cells("v1", "Namespace", ns),
        [json!("team-a"), json!("Active"), json!("60m")]
    );
}

// ---- workloads --------------------------------------------------------------

#[test]
fn deployment() {
    assert_eq!(
        names("apps/v1", "Deployment", 0),
        ["Name", "Ready", "Up-to-date", "Available", "Age"]
    );
    assert_eq!(
        names("apps/v1", "Deployment", 1),
        ["Containers", "Images", "Selector"]
    );
    let deploy = json!({
        "metadata": {"name": "web", "creationTimestamp": "2024-05-01T11:57:00Z"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]}]},
            "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}, {"name": "log", "image": "fluent-bit:3"}]}},
        },
        "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
    });
    assert_eq!(
        cells("apps/v1", "Deployment", deploy),
        json!([
            "web",
            "2/3",
            3,
            2,
            "3m",
            "nginx,log",
            "nginx:1.27,fluent-bit:3",
            "app=web,tier in (be,fe)"
        ])
        .as_array()
        .cloned()
        .unwrap_or_default()
    );
    let fresh = cells(
        "apps/v1",
        "Deployment",
        json!({"metadata": {"name": "new"}, "spec": {"selector": {"matchExpressions": [{"key": "x", "operator": "Bogus"}]}}}),
    );
    assert_eq!(fresh[1..4], [json!("0/1"), json!(0), json!(0)]);
    assert_eq!(fresh[7], "<invalid>");
}

#[test]
fn replica_sets_stateful_sets_and_daemon_sets() {
    assert_eq!(
        names("apps/v1", "ReplicaSet", 0),
        ["Name", "Desired", "Current", "Ready", "Age"]
    );
    let rs = json!({
        "metadata": {"name": "web-5d8f"},
        "spec": {"replicas": 3, "selector": {"matchExpressions": [
            {"key": "env", "operator": "NotIn", "values": ["prod"]},
            {"key": "canary", "operator": "DoesNotExist"},
            {"key": "app", "operator": "Exists"},
        ]}},
        "status": {"replicas": 3, "readyReplicas": 1},
    });
    let row = cells("apps/v1", "ReplicaSet", rs);
    assert_eq!(row[1..4], [json!(3), json!(3), json!(1)]);
    assert_eq!(row[7], "app,!canary,env notin (prod)");
    let bad = cells(
        "apps/v1",
        "ReplicaSet",
        json!({"spec": {"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}}),
    );
    assert_eq!(bad[7], "<error>");

    assert_eq!(names("apps/v1", "StatefulSet", 0), ["Name", "Ready", "Age"]);
    let sts = json!({"metadata": {"name": "db"}, "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "pg", "image": "postgres:16"}]}}}, "status": {"readyReplicas": 2}});
    assert_eq!(
        cells("apps/v1", "StatefulSet", sts)[1..],
        [
            json!("2/3"),
            json!("<unknown>"),
            json!("pg"),
            json!("postgres:16")
        ]
    );

    assert_eq!(
        names("apps/v1", "DaemonSet", 0),
        [
            "Name",
            "Desired",
            "Current",
            "Ready",
            "Up-to-date",
            "Available",
            "Node Selector",
            "Age"
        ]
    );
    let ds = json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "a", "image": "shoal"}]}}},
        "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2, "updatedNumberScheduled": 3, "numberAvailable": 2},
    });
    let row = cells("apps/v1", "DaemonSet", ds);
    assert_eq!(
        row[1..7],
        [
            json!(3),
            json!(3),
            json!(2),
            json!(3),
            json!(2),
            json!("kubernetes.io/os=linux")
        ]
    );
    assert_eq!(row[10], "app=agent");
}

#[test]
fn controller_revisions_name_their_owner() {
    let rev = json!({
        "metadata": {"name": "web-6b7c", "ownerReferences": [
            {"apiVersion": "v1", "kind": "Pod", "name": "not-a-controller"},
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "controller": true},
        ]},
        "revision": 2,
    });
    assert_eq!(
        cells("apps/v1", "ControllerRevision", rev)[1..3],
        [json!("statefulset.apps/web"), json!(2)]
    );
    assert_eq!(
        cells("apps/v1", "ControllerRevision", json!({}))[1],
        "<none>"
    );
}

#[test]
fn completed_job() {
    assert_eq!(
        names("batch/v1", "Job", 0),
        ["Name", "Status", "Completions", "Duration", "Age"]
    );
    assert_eq!(
        names("batch/v1", "Job", 1),
        ["Containers", "Images", "Selector"]
    );
    let job = json!({
        "metadata": {"name": "pi", "creationTimestamp": "2024-05-01T11:00:00Z"},
        "spec": {
            "completions": 1, "parallelism": 1,
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "5f1c"}},
            "template": {"spec": {"containers": [{"name": "pi", "image": "perl:5.34"}]}},
        },
        "status": {
            "succeeded": 1,
            "startTime": "2024-05-01T11:00:00Z",
            "completionTime": "2024-05-01T11:00:42Z",
            "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}],
        },
    });
    assert_eq!(
        cells("batch/v1", "Job", job),
        json!([
            "pi",
            "Complete",
            "1/1",
            "42s",
            "60m",
            "pi",
            "perl:5.34",
            "batch.kubernetes.io/controller-uid=5f1c"
        ])
        .as_array()
        .cloned()
        .unwrap_or_default()
    );
}

#[test]
fn job_status_and_completions() {
    let job = |spec: Value, status: Value, meta: Value| {
        cells(
            "batch/v1",
            "Job",
            json!({"metadata": meta, "spec": spec, "status": status}),
        )
    };
    let running = job(
        json!({"parallelism": 3}),
        json!({"succeeded": 1, "startTime": "2024-05-01T11:55:00Z"}),
        json!({}),
    );
    assert_eq!(
        running[1..4],
        [json!("Running"), json!("1/1 of 3"), json!("5m")]
    );
    let failed = job(
        json!({"completions": 5}),
        json!({"failed": 6, "conditions": [{"type": "Failed", "status": "True"}]}),
        json!({}),
    );
    assert_eq!(failed[1..4], [json!("Failed"), json!("0/5"), json!("")]);
    let suspended = job(
        json!({}),
        json!({"conditions": [{"type": "Suspended", "status": "True"}]}),
        json!({}),
    );
    assert_eq!(suspended[1..3], [json!("Suspended"), json!("0/1")]);
    let deleting = job(
        json!({}),
        json!({"conditions": [{"type": "Suspended", "status": "True"}]}),
        json!({"deletionTimestamp": NOW}),
    );
    assert_eq!(deleting[1], "Terminating");
    let failing = job(
        json!({}),
        json!({"conditions": [{"type": "FailureTarget", "status": "True"}]}),
        json!({}),
    );
    assert_eq!(failing[1], "FailureTarget");
}

#[test]
fn cron_jobs() {
    assert_eq!(
        names("batch/v1", "CronJob", 0),
        [
            "Name",
            "Schedule",
            "Timezone",
            "Suspend",
            "Active",
            "Last Schedule",
            "Age"
        ]
    );
    let cj = json!({
        "metadata": {"name": "backup"},
        "spec": {"schedule": "*/5 * * * *", "suspend": false, "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "restic"}]}}}}},
        "status": {"active": [{"name": "backup-1"}], "lastScheduleTime": "2024-05-01T11:55:00Z"},
    });
    let row = cells("batch/v1", "CronJob", cj);
    assert_eq!(
        row[1..6],
        [
            json!("*/5 * * * *"),
            json!("<none>"),
            json!("False"),
            json!(1),
            json!("5m")
        ]
    );
    assert_eq!(row[7..], [json!("b"), json!("restic"), json!("<none>")]);
    let unset = cells(
        "batch/v1",
        "CronJob",
        json!({"spec": {"timeZone": "Etc/UTC"}}),
    );
    assert_eq!(
        unset[2..6],
        [
            json!("Etc/UTC"),
            json!("<unset>"),
            json!(0),
            json!("<none>")
        ]
    );
}

// ---- config and events ------------------------------------------------------

#[test]
fn config_maps_secrets_and_service_accounts_count_their_entries() {
    let cm = json!({"metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
    assert_eq!(cells("v1", "ConfigMap", cm)[1], 3);
    let secret = json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}});
    assert_eq!(
        cells("v1", "Secret", secret)[1..3],
        [json!("kubernetes.io/tls"), json!(2)]
    );
    assert_eq!(names("v1", "ServiceAccount", 0), ["Name", "Secrets", "Age"]);
    assert_eq!(
        cells(
            "v1",
            "ServiceAccount",
            json!({"metadata": {"name": "default"}})
        )[1],
        0
    );
}

#[test]
fn core_events() {
    assert_eq!(
        names("v1", "Event", 0),
        ["Last Seen", "Type", "Reason", "Object", "Message"]
    );
    assert_eq!(
        names("v1", "Event", 1),
        ["Subobject", "Source", "First Seen", "Count", "Name"]
    );
    let ev = json!({
        "metadata": {"name": "web-0.17c2"},
        "involvedObject": {"kind": "Pod", "name": "web-0", "fieldPath": "spec.containers{app}"},
        "reason": "Pulled", "message": "Successfully pulled image \"nginx\"\n", "type": "Normal",
        "source": {"component": "kubelet", "host": "node-a"},
        "firstTimestamp": "2024-05-01T11:50:00Z", "lastTimestamp": "2024-05-01T11:58:00Z", "count": 3,
    });
    assert_eq!(
        cells("v1", "Event", ev),
        json!([
            "2m",
            "Normal",
            "Pulled",
            "pod/web-0",
            "spec.containers{app}",
            "kubelet, node-a",
            "Successfully pulled image \"nginx\"",
            "10m",
            3,
            "web-0.17c2",
        ])
        .as_array()
        .cloned()
        .unwrap_or_default()
    );
    let series = json!({
        "metadata": {"name": "s"},
        "involvedObject": {"kind": "Node"},
        "eventTime": "2024-05-01T11:00:00.000000Z",
        "series": {"count": 7, "lastObservedTime": "2024-05-01T11:59:00.000000Z"},
        "reportingComponent": "kubelet", "reportingInstance": "node-b",
    });
    let row = cells("v1", "Event", series);
    assert_eq!(row[0], "60s");
    assert_eq!(row[3], "node");
    assert_eq!(row[5], "kubelet, node-b");
    assert_eq!(row[7..9], [json!("60m"), json!(7)]);
}

#[test]
fn events_k8s_io_events_print_like_core_events() {
    let ev = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web.1"},
        "regarding": {"kind": "Deployment", "name": "web"},
        "note": "Scaled up replica set web-5d8f to 3", "reason": "ScalingReplicaSet", "type": "Normal",
        "eventTime": "2024-05-01T11:59:00.000000Z",
        "reportingController": "deployment-controller", "reportingInstance": "",
    });
    assert_eq!(
        cells("events.k8s.io/v1", "Event", ev),
        json!([
            "60s",
            "Normal",
            "ScalingReplicaSet",
            "deployment/web",
            "",
            "deployment-controller",
            "Scaled up replica set web-5d8f to 3",
            "60s",
            1,
            "web.1",
        ])
        .as_array()
        .cloned()
        .unwrap_or_default()
    );
}

// ---- storage ----------------------------------------------------------------

#[test]
fn persistent_volumes_and_claims() {
    let pv = json!({
        "metadata": {"name": "pv-1"},
        "spec": {
            "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "standard", "volumeMode": "Filesystem",
            "claimRef": {"namespace": "default", "name": "data"},
        },
        "status": {"phase": "Bound"},
    });
    let row = cells("v1", "PersistentVolume", pv);
    assert_eq!(
        row,
        json!([
            "pv-1",
            "10Gi",
            "RWO,RWX",
            "Retain",
            "Bound",
            "default/data",
            "standard",
            "<unset>",
            "",
            "<unknown>",
            "Filesystem"
        ])
        .as_array()
        .cloned()
        .unwrap_or_default()
    );

    let bound = json!({
        "metadata": {"name": "data", "annotations": {"volume.beta.kubernetes.io/storage-class": "legacy"}},
        "spec": {"volumeName": "pv-1", "storageClassName": "standard", "resources": {"requests": {"storage": "5Gi"}}},
        "status": {"phase": "Bound", "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"]},
    });
    let row = cells("v1", "PersistentVolumeClaim", bound);
    assert_eq!(
        row[1..8],
        [
            json!("Bound"),
            json!("pv-1"),
            json!("10Gi"),
            json!("RWO"),
            json!("legacy"),
            json!("<unset>"),
            json!("<unknown>")
        ]
    );

    let pending = json!({"metadata": {"name": "wait", "deletionTimestamp": NOW}, "spec": {"storageClassName": "fast"}, "status": {"phase": "Pending"}});
    let row = cells("v1", "PersistentVolumeClaim", pending);
    assert_eq!(
        row[1..6],
        [
            json!("Terminating"),
            json!(""),
            json!(""),
            json!(""),
            json!("fast")
        ]
    );
}

#[test]
fn storage_classes_mark_the_default() {
    let sc = json!({
        "metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": true,
    });
    let row = cells("storage.k8s.io/v1", "StorageClass", sc);
    assert_eq!(
        row[..5],
        [
            json!("standard (default)"),
            json!("rancher.io/local-path"),
            json!("Delete"),
            json!("WaitForFirstConsumer"),
            json!(true)
        ]
    );
    let plain = cells(
        "storage.k8s.io/v1",
        "StorageClass",
        json!({"metadata": {"name": "slow"}}),
    );
    assert_eq!(
        plain[..5],
        [
            json!("slow"),
            json!(""),
            json!("Delete"),
            json!("Immediate"),
            json!(false)
        ]
    );
}

#[test]
fn resource_quotas_split_requests_and_limits() {
    let quota = json!({
        "metadata": {"name": "compute"},
        "status": {
            "hard": {"requests.cpu": "1", "limits.memory": "2Gi", "pods": "10", "limits": "5"},
            "used": {"requests.cpu": "500m", "pods": "3"},
        },
    });
    let row = cells("v1", "ResourceQuota", quota);
    assert_eq!(
        row[1..3],
        [
            json!("limits: 0/5, pods: 3/10, requests.cpu: 500m/1"),
            json!("limits.memory: 0/2Gi")
        ]
    );
}

// ---- networking, policy, RBAC and the rest ---------------------------------

#[test]
fn ingresses_and_classes() {
    assert_eq!(
        names("networking.k8s.io/v1", "Ingress", 0),
        ["Name", "Class", "Hosts", "Address", "Ports", "Age"]
    );
    let ing = json!({
        "metadata": {"name": "web"},
        "spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["a.example.com"]}], "rules": [
            {"host": "a.example.com"}, {"host": "b.example.com"}, {}, {"host": "c.example.com"}, {"host": "d.example.com"},
        ]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}},
    });
    let row = cells("networking.k8s.io/v1", "Ingress", ing);
    assert_eq!(
        row[1..5],
        [
            json!("nginx"),
            json!("a.example.com,b.example.com,c.example.com + 2 more..."),
            json!("203.0.113.5"),
            json!("80, 443")
        ]
    );
    let bare = cells(
        "networking.k8s.io/v1",
        "Ingress",
        json!({"spec": {"defaultBackend": {}}}),
    );
    assert_eq!(
        bare[1..5],
        [json!("<none>"), json!("*"), json!(""), json!("80")]
    );

    let class = json!({"metadata": {"name": "lb"}, "spec": {"controller": "example.com/ingress", "parameters": {"apiGroup": "k8s.example.com", "kind": "IngressParameters", "name": "external-lb"}}});
    let row = cells("networking.k8s.io/v1", "IngressClass", class);
    assert_eq!(
        row[1..3],
        [
            json!("example.com/ingress"),
            json!("IngressParameters.k8s.example.com/external-lb")
        ]
    );
}

#[test]
fn network_policies_show_their_pod_selector() {
    let all = json!({"metadata": {"name": "deny-all"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    assert_eq!(
        cells("networking.k8s.io/v1", "NetworkPolicy", all)[1],
        "<none>"
    );
    let db = json!({"metadata": {"name": "db"}, "spec": {"podSelector": {"matchLabels": {"app": "db"}}}});
    assert_eq!(
        cells("networking.k8s.io/v1", "NetworkPolicy", db)[1],
        "app=db"
    );
}

#[test]
fn role_bindings_list_subjects_in_wide_columns() {
    assert_eq!(
        names("rbac.authorization.k8s.io/v1", "RoleBinding", 0),
        ["Name", "Role", "Age"]
    );
    assert_eq!(
        names("rbac.authorization.k8s.io/v1", "RoleBinding", 1),
        ["Users", "Groups", "ServiceAccounts"]
    );
    let rb = json!({
        "metadata": {"name": "devs-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [
            {"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"},
            {"kind": "ServiceAccount", "namespace": "ci", "name": "runner"}, {"kind": "User", "name": "bob"},
        ],
    });
    let row = cells("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", rb);
    assert_eq!(row[1], "ClusterRole/view");
    assert_eq!(
        row[3..],
        [json!("alice, bob"), json!("devs"), json!("ci/runner")]
    );
}

#[test]
fn roles_get_the_default_table() {
    for kind_name in ["Role", "ClusterRole"] {
        let t = render(
            "rbac.authorization.k8s.io/v1",
            kind_name,
            &[
                json!({"metadata": {"name": "reader", "creationTimestamp": "2024-05-01T09:00:00Z"}}),
                json!({"metadata": {"name": "undated"}}),
            ],
        );
        assert_eq!(t["columnDefinitions"][1]["name"], "Created At");
        assert_eq!(t["columnDefinitions"][1]["type"], "date");
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["reader", "2024-05-01T09:00:00Z"])
        );
        assert_eq!(
            t["rows"][1]["cells"],
            json!(["undated", "0001-01-01T00:00:00Z"])
        );
    }
    assert_eq!(names("v1", "LimitRange", 0), ["Name", "Created At"]);
}

#[test]
fn horizontal_pod_autoscalers_show_targets() {
    assert_eq!(
        names("autoscaling/v2", "HorizontalPodAutoscaler", 0),
        [
            "Name",
            "Reference",
            "Targets",
            "MinPods",
            "MaxPods",
            "Replicas",
            "Age"
        ]
    );
    let hpa = json!({
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 10,
            "metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "500Mi"}}},
            ],
        },
        "status": {"currentReplicas": 2, "currentMetrics": [
            {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 35, "averageValue": "70m"}}},
        ]},
    });
    let row = cells("autoscaling/v2", "HorizontalPodAutoscaler", hpa);
    assert_eq!(
        row[1..6],
        [
            json!("Deployment/web"),
            json!("cpu: 35%/80%, memory: <unknown>/500Mi"),
            json!("1"),
            json!(10),
            json!(2)
        ]
    );

    let many = json!({"spec": {"metrics": [
        {"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "1k"}}},
        {"type": "External", "external": {"metric": {"name": "queue"}, "target": {"type": "Value", "value": "30"}}},
        {"type": "Object", "object": {"metric": {"name": "hits"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
    ]}});
    let row = cells("autoscaling/v2", "HorizontalPodAutoscaler", many);
    assert_eq!(
        row[2..4],
        [
            json!("<unknown>/1k, <unknown>/30 + 1 more..."),
            json!("<unset>")
        ]
    );
    let none = cells(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}}}),
    );
    assert_eq!(none[2], "<none>");
}

#[test]
fn disruption_budgets_leases_and_classes() {
    let pdb = json!({"metadata": {"name": "web"}, "spec": {"minAvailable": 2}, "status": {"disruptionsAllowed": 1}});
    assert_eq!(
        cells("policy/v1", "PodDisruptionBudget", pdb)[1..4],
        [json!("2"), json!("N/A"), json!(1)]
    );
    let pct = json!({"metadata": {"name": "db"}, "spec": {"maxUnavailable": "25%"}});
    assert_eq!(
        cells("policy/v1", "PodDisruptionBudget", pct)[1..3],
        [json!("N/A"), json!("25%")]
    );

    let lease =
        json!({"metadata": {"name": "kube-scheduler"}, "spec": {"holderIdentity": "cp-1_6a2f"}});
    assert_eq!(
        cells("coordination.k8s.io/v1", "Lease", lease)[1],
        "cp-1_6a2f"
    );

    assert_eq!(
        names("scheduling.k8s.io/v1", "PriorityClass", 0),
        ["Name", "Value", "Global-Default", "Age", "PreemptionPolicy"]
    );
    let pc = json!({"metadata": {"name": "system-node-critical"}, "value": 2_000_001_000, "preemptionPolicy": "PreemptLowerPriority"});
    let row = cells("scheduling.k8s.io/v1", "PriorityClass", pc);
    assert_eq!(row[1..3], [json!(2_000_001_000), json!(false)]);
    assert_eq!(row[4], "PreemptLowerPriority");

    let rc = json!({"metadata": {"name": "gvisor"}, "handler": "runsc"});
    assert_eq!(cells("node.k8s.io/v1", "RuntimeClass", rc)[1], "runsc");
}

// ---- robustness -------------------------------------------------------------

#[test]
fn every_kind_prints_malformed_objects_without_panicking() {
    let odd = [
        json!({}),
        Value::Null,
        json!("not an object"),
        json!(7),
        json!({"metadata": 5, "spec": [], "status": "broken"}),
        json!({"metadata": {"name": 3, "creationTimestamp": "yesterday", "labels": "x"}, "spec": {"containers": "x", "ports": [1, null]}}),
        json!({"spec": {"selector": {"matchLabels": 1, "matchExpressions": [null, 2]}, "template": null}, "status": {"conditions": [1, "x"], "containerStatuses": [null, {"state": 1}]}}),
    ];
    for kind in KINDS {
        let t = table(kind, &odd, json!({}), now(), IncludeObject::Metadata);
        let width = t["columnDefinitions"].as_array().map(Vec::len).unwrap_or(0);
        assert!(width >= 2, "{} has columns", kind.kind);
        for row in t["rows"].as_array().into_iter().flatten() {
            assert_eq!(
                row["cells"].as_array().map(Vec::len),
                Some(width),
                "{} row width",
                kind.kind
            );
            assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
        }
    }
}

#[test]
fn an_empty_pod_renders_like_kubectl() {
    assert_eq!(
        cells("v1", "Pod", json!({})),
        json!([
            "",
            "0/0",
            "",
            "0",
            "<unknown>",
            "<none>",
            "<none>",
            "<none>",
            "<none>"
        ])
        .as_array()
        .cloned()
        .unwrap_or_default()
    );
}

#[test]
fn wide_columns_come_after_the_default_ones_only_where_kubernetes_puts_them() {
    // Kubernetes marks -o wide columns priority 1; kubectl hides them by
    // default. Check each printer's wide set against the known ones.
    let wide = [
        (
            "v1",
            "Pod",
            &["IP", "Node", "Nominated Node", "Readiness Gates"][..],
        ),
        ("v1", "Service", &["Selector"][..]),
        (
            "v1",
            "Node",
            &[
                "Internal-IP",
                "External-IP",
                "OS-Image",
                "Kernel-Version",
                "Container-Runtime",
            ][..],
        ),
        (
            "apps/v1",
            "Deployment",
            &["Containers", "Images", "Selector"][..],
        ),
        (
            "apps/v1",
            "ReplicaSet",
            &["Containers", "Images", "Selector"][..],
        ),
        ("apps/v1", "StatefulSet", &["Containers", "Images"][..]),
        (
            "apps/v1",
            "DaemonSet",
            &["Containers", "Images", "Selector"][..],
        ),
        (
            "batch/v1",
            "CronJob",
            &["Containers", "Images", "Selector"][..],
        ),
        ("v1", "PersistentVolume", &["VolumeMode"][..]),
        ("v1", "PersistentVolumeClaim", &["VolumeMode"][..]),
        ("v1", "ConfigMap", &[][..]),
    ];
    for (api_version, kind_name, want) in wide {
        assert_eq!(names(api_version, kind_name, 1), want, "{kind_name}");
    }
}
