use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::json;

use super::*;

fn service(publish_not_ready: bool) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid"},
        "spec": {
            "selector": {"app": "web"},
            "ipFamilies": ["IPv4", "IPv6"],
            "clusterIP": "10.96.0.20",
            "publishNotReadyAddresses": publish_not_ready,
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": 9090, "targetPort": 9091, "appProtocol": "http"}
            ]
        }
    }))?)
}

fn pod(name: &str, n: u16, ready: bool, terminating: bool, http_port: i32) -> anyhow::Result<Pod> {
    let mut meta = json!({"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}});
    if terminating {
        meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    Ok(serde_json::from_value(json!({
        "metadata": meta,
        "spec": {
            "nodeName": "node-1",
            "hostname": name,
            "subdomain": "web",
            "containers": [{"name": "c", "image": "busybox", "ports": [{"name": "http", "containerPort": http_port}]}]
        },
        "status": {
            "phase": "Running",
            "podIPs": [{"ip": format!("10.244.0.{n}")}, {"ip": format!("fd00:10:244::{n:x}")}],
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
        }
    }))?)
}

fn conditions(e: &Endpoint) -> (Option<bool>, Option<bool>, Option<bool>) {
    let c = e.conditions.clone().unwrap_or_default();
    (c.ready, c.serving, c.terminating)
}

#[test]
fn one_slice_per_family_with_conditions_and_resolved_ports() -> anyhow::Result<()> {
    let svc = service(false)?;
    let pods = vec![
        pod("a", 1, true, false, 8080)?,
        pod("b", 2, false, false, 8080)?,
        pod("c", 3, true, true, 8080)?,
    ];
    let slices = desired_slices(&svc, &pods);
    assert_eq!(slices.len(), 2, "{slices:#?}");
    assert_eq!(slices[0].address_type, "IPv4");
    assert_eq!(slices[1].address_type, "IPv6");
    let v4 = &slices[0];
    let ports: Vec<(Option<String>, Option<i32>, Option<String>)> = v4
        .ports
        .iter()
        .map(|p| (p.name.clone(), p.port, p.app_protocol.clone()))
        .collect();
    assert_eq!(
        ports,
        vec![
            (Some("http".into()), Some(8080), None),
            (Some("metrics".into()), Some(9091), Some("http".into()))
        ]
    );
    let addrs: Vec<&str> = v4
        .endpoints
        .iter()
        .map(|e| e.addresses[0].as_str())
        .collect();
    assert_eq!(addrs, ["10.244.0.1", "10.244.0.2", "10.244.0.3"]);
    assert_eq!(
        conditions(&v4.endpoints[0]),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(
        conditions(&v4.endpoints[1]),
        (Some(false), Some(false), Some(false))
    );
    assert_eq!(
        conditions(&v4.endpoints[2]),
        (Some(false), Some(true), Some(true)),
        "a terminating ready pod serves but is not ready"
    );
    assert_eq!(v4.endpoints[0].hostname.as_deref(), Some("a"));
    assert_eq!(v4.endpoints[0].node_name.as_deref(), Some("node-1"));
    assert_eq!(slices[1].endpoints[0].addresses, ["fd00:10:244::1"]);
    Ok(())
}

#[test]
fn publish_not_ready_marks_everything_ready() -> anyhow::Result<()> {
    let svc = service(true)?;
    let slices = desired_slices(&svc, &[pod("b", 2, false, true, 8080)?]);
    assert_eq!(
        conditions(&slices[0].endpoints[0]),
        (Some(true), Some(true), Some(true))
    );
    Ok(())
}

#[test]
fn pods_with_other_ports_get_their_own_slice_and_big_sets_are_cut_at_100() -> anyhow::Result<()> {
    let svc = service(false)?;
    let mut pods = Vec::new();
    for n in 0..150u16 {
        pods.push(pod(&format!("p{n:03}"), n, true, false, 8080)?);
    }
    pods.push(pod("other", 200, true, false, 8081)?);
    let slices = desired_slices(&svc, &pods);
    let v4: Vec<&DesiredSlice> = slices.iter().filter(|s| s.address_type == "IPv4").collect();
    let sizes: Vec<usize> = v4.iter().map(|s| s.endpoints.len()).collect();
    assert_eq!(sizes, [100, 50, 1]);
    Ok(())
}

#[test]
fn a_family_without_endpoints_keeps_an_empty_slice_and_endpoints_are_single_stack()
-> anyhow::Result<()> {
    let svc = service(false)?;
    let slices = desired_slices(&svc, &[]);
    assert_eq!(slices.len(), 2);
    assert!(
        slices
            .iter()
            .all(|s| s.endpoints.is_empty() && s.ports.is_empty())
    );

    let subsets = desired_subsets(
        &svc,
        &[
            pod("a", 1, true, false, 8080)?,
            pod("b", 2, false, false, 8080)?,
            pod("c", 3, true, true, 8080)?,
        ],
    );
    assert_eq!(subsets.len(), 1);
    let ips = |l: &Option<Vec<EndpointAddress>>| -> Vec<String> {
        l.iter().flatten().map(|a| a.ip.clone()).collect()
    };
    assert_eq!(ips(&subsets[0].addresses), ["10.244.0.1"]);
    assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.244.0.2"]);
    Ok(())
}
