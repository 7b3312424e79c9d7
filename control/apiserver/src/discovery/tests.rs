use super::*;

#[test]
fn kubectl_aggregated_accept_header_is_recognized() {
    let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
    assert!(wants_aggregated(kubectl));
    assert!(!wants_aggregated("application/json, */*"));
}

#[test]
fn core_resource_list_has_pods_with_subresources() {
    let list = resource_list("", "v1").expect("core is served");
    let resources = list["resources"].as_array().cloned().unwrap_or_default();
    let pods = resources
        .iter()
        .find(|r| r["name"] == "pods")
        .cloned()
        .unwrap_or_default();
    assert_eq!(pods["shortNames"], json!(["po"]));
    assert_eq!(pods["namespaced"], json!(true));
    let scale = resource_list("apps", "v1").and_then(|l| {
        l["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == "deployments/scale").cloned())
    });
    assert_eq!(scale.map(|s| s["kind"].clone()), Some(json!("Scale")));
    assert!(resource_list("apps", "v9").is_none());
}

#[test]
fn aggregated_discovery_splits_core_from_groups() {
    let core = aggregated(true);
    assert_eq!(core["items"].as_array().map(Vec::len), Some(1));
    let groups = aggregated(false);
    let names: Vec<_> = groups["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["metadata"]["name"].as_str())
        .collect();
    assert!(names.contains(&"apps") && !names.contains(&""));
}
