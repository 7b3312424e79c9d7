use super::*;

fn field_at(type_ref: TypeRef<'_>, path: &[&str]) -> Option<&'static Field> {
    let mut schema = for_type(&type_ref)?;
    let mut field = None;
    for name in path {
        let found = schema.field(name)?;
        schema = found.schema;
        field = Some(found);
    }
    field
}

#[test]
fn known_and_unknown_kinds() {
    assert!(TypeRef::new("v1", "Pod").has_patch_schema());
    assert!(TypeRef::new("apps/v1", "Deployment").has_patch_schema());
    assert!(TypeRef::new("v1", "ConfigMap").has_patch_schema());
    assert!(!TypeRef::new("apps/v1beta1", "Deployment").has_patch_schema());
    assert!(!TypeRef::new("example.com/v1", "Widget").has_patch_schema());
    assert!(!TypeRef::new("v1", "pod").has_patch_schema());
}

#[test]
fn merge_keys_follow_the_go_struct_tags() {
    let pod = TypeRef::new("v1", "Pod");
    let cases: &[(TypeRef<'_>, &[&str], Option<&str>)] = &[
        (pod, &["spec", "containers"], Some("name")),
        (pod, &["spec", "containers", "ports"], Some("containerPort")),
        (
            pod,
            &["spec", "initContainers", "volumeMounts"],
            Some("mountPath"),
        ),
        (
            pod,
            &["spec", "ephemeralContainers", "volumeDevices"],
            Some("devicePath"),
        ),
        (pod, &["spec", "hostAliases"], Some("ip")),
        (
            pod,
            &["spec", "topologySpreadConstraints"],
            Some("topologyKey"),
        ),
        (pod, &["status", "conditions"], Some("type")),
        (pod, &["metadata", "ownerReferences"], Some("uid")),
        (pod, &["metadata", "finalizers"], None),
        (
            TypeRef::new("v1", "Service"),
            &["spec", "ports"],
            Some("port"),
        ),
        (
            TypeRef::new("v1", "Node"),
            &["status", "addresses"],
            Some("type"),
        ),
        (
            TypeRef::new("batch/v1", "CronJob"),
            &[
                "spec",
                "jobTemplate",
                "spec",
                "template",
                "spec",
                "containers",
                "env",
            ],
            Some("name"),
        ),
    ];
    for (type_ref, path, key) in cases {
        let field = field_at(*type_ref, path);
        assert_eq!(field.map(|f| f.strategy), Some(Strategy::Merge), "{path:?}");
        assert_eq!(field.and_then(|f| f.merge_key), *key, "{path:?}");
    }
}

#[test]
fn atomic_lists_are_absent_so_they_are_replaced() {
    let pod = TypeRef::new("v1", "Pod");
    for path in [
        &["spec", "tolerations"][..],
        &["spec", "readinessGates"],
        &["spec", "containers", "envFrom"],
        &["spec", "containers", "resizePolicy"],
        &["status", "containerStatuses"],
    ] {
        assert!(field_at(pod, path).is_none(), "{path:?}");
    }
    assert!(field_at(TypeRef::new("v1", "Node"), &["spec", "taints"]).is_none());
    assert!(field_at(TypeRef::new("v1", "Endpoints"), &["subsets"]).is_none());
}

#[test]
fn unions_and_replaced_maps() {
    let strategy = field_at(TypeRef::new("apps/v1", "Deployment"), &["spec", "strategy"]);
    assert!(strategy.is_some_and(|f| f.retain_keys && f.strategy == Strategy::Default));
    let volumes = field_at(TypeRef::new("v1", "Pod"), &["spec", "volumes"]);
    assert!(volumes.is_some_and(|f| f.retain_keys && f.merge_key == Some("name")));
    let selector = field_at(
        TypeRef::new("policy/v1", "PodDisruptionBudget"),
        &["spec", "selector"],
    );
    assert_eq!(selector.map(|f| f.strategy), Some(Strategy::Replace));
}

#[test]
fn type_ref_reads_an_objects_api_version_and_kind() {
    let object = serde_json::json!({"apiVersion": "batch/v1", "kind": "CronJob"});
    assert_eq!(
        TypeRef::of(&object),
        Some(TypeRef::new("batch/v1", "CronJob"))
    );
    assert_eq!(TypeRef::of(&serde_json::json!({"kind": "Pod"})), None);
    assert_eq!(
        TypeRef::of(&serde_json::json!({"apiVersion": 1, "kind": "Pod"})),
        None
    );
}
