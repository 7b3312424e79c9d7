use serde_json::json;

use super::{bytes_quantity, node_metrics, pod_metrics};

fn summary() -> serde_json::Value {
    json!({
        "node": {
            "nodeName": "n1",
            "cpu": {"time": "2026-12-07T12:00:00Z", "usageNanoCores": 250_000_000, "usageCoreNanoSeconds": 9},
            "memory": {"time": "2026-12-07T12:00:00Z", "usageBytes": 3_221_225_472_u64, "workingSetBytes": 2_147_483_648_u64, "availableBytes": 1}
        },
        "pods": [
            {
                "podRef": {"name": "web", "namespace": "default", "uid": "u1"},
                "containers": [
                    {"name": "app", "cpu": {"time": "2026-12-07T12:00:01Z", "usageNanoCores": 12_000_000, "usageCoreNanoSeconds": 5},
                     "memory": {"time": "2026-12-07T12:00:01Z", "usageBytes": 9_000_000, "workingSetBytes": 5_242_880}},
                    {"name": "side", "cpu": {"time": "2026-12-07T12:00:01Z", "usageNanoCores": 0, "usageCoreNanoSeconds": 1},
                     "memory": {"time": "2026-12-07T12:00:01Z", "usageBytes": 4096, "workingSetBytes": 4095}}
                ]
            },
            {
                "podRef": {"name": "fresh", "namespace": "default", "uid": "u2"},
                "containers": [
                    {"name": "app", "cpu": {"time": "2026-12-07T12:00:01Z", "usageCoreNanoSeconds": 5},
                     "memory": {"time": "2026-12-07T12:00:01Z", "usageBytes": 1, "workingSetBytes": 1}}
                ]
            }
        ]
    })
}

fn pod(name: &str, uid: &str) -> serde_json::Value {
    json!({"metadata": {"name": name, "namespace": "default", "uid": uid, "labels": {"app": name}}, "spec": {"nodeName": "n1"}})
}

#[test]
fn node_metrics_carry_the_node_usage_and_labels() {
    let node = json!({"metadata": {"name": "n1", "labels": {"zone": "a"}}});
    let m = node_metrics(&node, &summary()).expect("metrics for n1");
    assert_eq!(m["metadata"]["name"], "n1");
    assert_eq!(m["metadata"]["labels"]["zone"], "a");
    assert_eq!(m["usage"]["cpu"], "250000000n");
    assert_eq!(m["usage"]["memory"], "2048Mi");
    assert_eq!(m["timestamp"], "2026-12-07T12:00:00Z");
    // No CPU rate yet: no metrics rather than a zero.
    let mut s = summary();
    s["node"]["cpu"]
        .as_object_mut()
        .expect("cpu")
        .remove("usageNanoCores");
    assert!(node_metrics(&node, &s).is_none());
}

#[test]
fn pod_metrics_list_every_container_or_none() {
    let m = pod_metrics(&pod("web", "u1"), &summary()).expect("metrics for web");
    assert_eq!(m["metadata"]["namespace"], "default");
    assert_eq!(m["metadata"]["labels"]["app"], "web");
    let containers = m["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["name"], "app");
    assert_eq!(containers[0]["usage"]["cpu"], "12000000n");
    assert_eq!(containers[0]["usage"]["memory"], "5Mi");
    assert_eq!(containers[1]["usage"]["memory"], "4095");
    // A pod of the same name but another uid is another pod.
    assert!(pod_metrics(&pod("web", "u9"), &summary()).is_none());
    // A container without a CPU rate yet drops the pod, as metrics-server.
    assert!(pod_metrics(&pod("fresh", "u2"), &summary()).is_none());
    assert!(pod_metrics(&pod("absent", "u3"), &summary()).is_none());
}

#[test]
fn quantities_in_canonical_form() {
    assert_eq!(bytes_quantity(0), "0");
    assert_eq!(bytes_quantity(1536), "1536");
    assert_eq!(bytes_quantity(1023), "1023");
    assert_eq!(bytes_quantity(3 * 1024), "3Ki");
    assert_eq!(bytes_quantity(7 * 1024 * 1024), "7Mi");
}

#[test]
fn discovery_lists_the_metrics_group() {
    let groups = crate::discovery::group_list();
    assert!(
        groups["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .any(|g| g["name"] == "metrics.k8s.io"
                && g["preferredVersion"]["groupVersion"] == "metrics.k8s.io/v1beta1")
    );
    let list = crate::discovery::resource_list("metrics.k8s.io", "v1beta1").expect("list");
    assert_eq!(list["resources"][0]["kind"], "NodeMetrics");
    assert_eq!(list["resources"][1]["namespaced"], true);
    assert!(crate::discovery::resource_list("metrics.k8s.io", "v1").is_none());
    let aggregated = crate::discovery::aggregated(false);
    assert!(
        aggregated["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|g| g["metadata"]["name"] == "metrics.k8s.io")
    );
}
