use super::*;

fn doc(path: &str) -> Value {
    let bytes = serve(path).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

#[test]
fn index_points_at_every_group_version() {
    let idx = doc("v3");
    let url = idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap_or("");
    assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="), "{url}");
    assert!(idx["paths"]["api/v1"].is_object());
    // The hash names the document's content: the same on every call.
    assert_eq!(doc("v3"), idx);
}

#[test]
fn patch_operations_announce_field_validation_and_their_kind() {
    let doc = doc("v3/apis/apps/v1");
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
    let content = &patch["requestBody"]["content"];
    assert!(content["application/merge-patch+json"].is_object());
    // Unannounced, so kubectl's apply uses its own merge keys (the schemas
    // have none).
    assert!(content["application/strategic-merge-patch+json"].is_null());
    assert!(serve("v3/apis/apps/v9").is_none());
    assert!(
        serve("v2").is_none(),
        "v2 is served as protobuf only, so not at all"
    );
}

#[test]
fn kinds_have_kubernetes_schemas_with_descriptions_and_required_fields() {
    let doc = doc("v3/api/v1");
    let schemas = &doc["components"]["schemas"];
    let pod = &schemas["io.k8s.api.core.v1.Pod"];
    assert_eq!(
        pod["x-kubernetes-group-version-kind"],
        json!([{"group": "", "version": "v1", "kind": "Pod"}])
    );
    assert_eq!(
        pod["properties"]["spec"]["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.api.core.v1.PodSpec"
    );
    let container = &schemas["io.k8s.api.core.v1.Container"];
    assert!(
        container["properties"]["name"]["description"]
            .as_str()
            .unwrap_or("")
            .contains("DNS_LABEL")
    );
    assert!(
        container["required"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("name")))
    );
    assert!(schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object());
    // Every reference resolves within the document.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap_or("");
        assert!(schemas[name].is_object(), "dangling reference to {name}");
    }
}

#[test]
fn every_served_kind_has_a_schema_marked_with_its_kind() {
    for (group, versions) in groups() {
        for v in versions {
            let doc = doc(&format!("v3/{}", gv_path(group, v)));
            let marked: Vec<&str> = doc["components"]["schemas"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, s)| s["x-kubernetes-group-version-kind"][0]["kind"].as_str())
                .collect();
            for k in kinds_in(group, v) {
                assert!(marked.contains(&k.kind), "{group}/{v} {}", k.kind);
            }
        }
    }
}

#[test]
fn kinds_without_a_type_get_an_object_schema() {
    let kind = Kind {
        group: "shoal.io",
        version: "v1alpha1",
        kind: "Widget",
        plural: "widgets",
        singular: "widget",
        scope: shoal_api::Scope::Namespaced,
        short_names: &[],
        categories: &[],
        subresources: &[],
    };
    let (defs, names) = schemas(&[&kind]);
    assert_eq!(names, ["io.shoal.v1alpha1.Widget"]);
    let widget = &defs["io.shoal.v1alpha1.Widget"];
    assert_eq!(
        widget["x-kubernetes-group-version-kind"][0]["group"],
        "shoal.io"
    );
    assert_eq!(
        widget["properties"]["metadata"]["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    assert!(defs["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object());
}
