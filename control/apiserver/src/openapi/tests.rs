use super::*;

#[test]
fn index_points_at_every_group_version() {
    let idx = index();
    let url = idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap_or("");
    assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="), "{url}");
    assert!(idx["paths"]["api/v1"].is_object());
}

#[test]
fn patch_operations_announce_field_validation_and_their_kind() {
    let doc = serve("v3/apis/apps/v1").expect("apps/v1 is served");
    let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"]["kind"],
        "Deployment"
    );
    let params: Vec<&str> = patch["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(params.contains(&"fieldValidation"));
    assert!(patch["requestBody"]["content"]["application/strategic-merge-patch+json"].is_object());
    assert!(serve("v3/apis/apps/v9").is_none());
}
