use serde_json::{Value, json};

use crate::{MergeError, PatchError, PatchType, TypeRef, apply_patch};

const DEPLOYMENT: TypeRef<'static> = TypeRef::new("apps/v1", "Deployment");

/// Absent objects are `Value::Null`.
const ABSENT: &Value = &Value::Null;

fn apply(live: &Value, body: &str) -> Result<Value, PatchError> {
    apply_patch(&DEPLOYMENT, live, body.as_bytes(), PatchType::Apply)
}

const CONFIG: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 2
  strategy:
    type: Recreate
  template:
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 8080
      volumes:
      - name: conf
        configMap:
          name: web
";

fn live() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "uid": "u1", "labels": {"team": "a"}},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {"spec": {
                "containers": [
                    {"name": "web", "image": "nginx:1.25", "ports": [{"containerPort": 80}]},
                    {"name": "added-by-controller", "image": "x"},
                ],
                "volumes": [{"name": "conf", "secret": {"secretName": "s"}}],
            }},
        },
        "status": {"replicas": 1},
    })
}

#[test]
fn creates_the_object_from_yaml() {
    let out = apply(ABSENT, CONFIG).ok();
    let expected = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "strategy": {"type": "Recreate"},
            "template": {"spec": {
                "containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 8080}]}],
                "volumes": [{"name": "conf", "configMap": {"name": "web"}}],
            }},
        },
    });
    assert_eq!(out, Some(expected));
}

#[test]
fn merges_into_the_live_object_by_merge_keys_and_clears_union_members() {
    let out = apply(&live(), CONFIG).ok().unwrap_or_default();
    assert_eq!(
        out["metadata"],
        json!({"name": "web", "uid": "u1", "labels": {"team": "a", "app": "web"}})
    );
    assert_eq!(out["spec"]["replicas"], 2);
    // A Deployment's strategy is a union: the configured member replaces
    // the other.
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    let spec = &out["spec"]["template"]["spec"];
    assert_eq!(
        spec["containers"],
        json!([
            {"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 8080}, {"containerPort": 80}]},
            {"name": "added-by-controller", "image": "x"},
        ])
    );
    assert_eq!(
        spec["volumes"],
        json!([{"name": "conf", "configMap": {"name": "web"}}])
    );
    assert_eq!(out["status"], json!({"replicas": 1}));
}

#[test]
fn json_bodies_and_explicit_nulls() {
    let body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"team": null}},
    });
    let out = apply(&live(), &body.to_string()).ok().unwrap_or_default();
    assert_eq!(out["metadata"]["labels"], json!({}));
    assert_eq!(out["spec"], live()["spec"]);
}

#[test]
fn the_configuration_must_name_the_objects_type() {
    let err = apply(ABSENT, "kind: Deployment\nmetadata: {name: web}\n").err();
    assert_eq!(
        err.map(|e| e.to_string()),
        Some("apply patch: apiVersion: must be set (to \"apps/v1\")".to_owned())
    );
    let err = apply(ABSENT, "apiVersion: apps/v1\nkind: StatefulSet\n").err();
    let Some(err) = err else {
        panic!("a StatefulSet applied as a Deployment");
    };
    assert_eq!(
        err.to_string(),
        "apply patch: kind: is \"StatefulSet\" but the object is \"Deployment\""
    );
    assert_eq!(err.http_status(), 400);
}

#[test]
fn directives_and_managed_fields_are_refused() {
    let body = "apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n      - name: a\n        $patch: delete\n";
    let err = apply(&live(), body).err();
    let Some(PatchError::Merge { path, reason, .. }) = err else {
        panic!("directive accepted: {err:?}");
    };
    assert_eq!(path, "spec.template.spec.containers[0].$patch");
    assert_eq!(reason, MergeError::DirectiveInApply("$patch".to_owned()));

    let body =
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  managedFields:\n  - manager: me\n";
    let err = apply(&live(), body).err();
    assert_eq!(
        err.map(|e| e.to_string()),
        Some(
            "apply patch: metadata.managedFields: must not be set in an apply configuration"
                .to_owned()
        )
    );
}

#[test]
fn bad_yaml_and_non_objects_are_400() {
    for (body, message) in [
        ("apiVersion: [", "apply patch body is not valid YAML: "),
        (
            "- a\n- b\n",
            "apply patch body must be an object, not an array",
        ),
        ("", "apply patch body must be an object, not null"),
    ] {
        let err = apply(ABSENT, body).err();
        let Some(err) = err else {
            panic!("{body:?} applied");
        };
        assert_eq!(err.http_status(), 400, "{err}");
        assert!(err.to_string().starts_with(message), "{err}");
    }
}

#[test]
fn yaml_nesting_is_bounded() {
    let nested = |depth: usize| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nspec: {}1{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    let limit = crate::body::MAX_YAML_DEPTH;
    assert!(apply(ABSENT, &nested(limit - 1)).is_ok());
    for depth in [limit, 200, 100_000] {
        let err = apply(ABSENT, &nested(depth)).err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.to_string().contains("budget breached")
                    || e.to_string().contains("recursion limit")),
            "{depth}: {err:?}"
        );
    }
    // JSON-looking but too deep for JSON falls back to YAML, which stops too.
    let objects = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    assert!(apply(ABSENT, &objects).is_err());
    let block: String = (0..200)
        .map(|i| format!("{}a:\n", "  ".repeat(i)))
        .collect();
    assert!(apply(ABSENT, &block).is_err());
}

#[test]
fn flow_mappings_are_yaml_not_broken_json() {
    let out = apply(
        ABSENT,
        "{apiVersion: apps/v1, kind: Deployment, spec: {replicas: 1}}",
    );
    assert_eq!(
        out.ok(),
        Some(json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 1}}))
    );
    let err = apply(ABSENT, "{\"apiVersion\": ").err();
    assert!(
        matches!(
            err,
            Some(PatchError::InvalidJson {
                ty: PatchType::Apply,
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn unknown_kinds_replace_lists() {
    let widget = TypeRef::new("example.com/v1", "Widget");
    let live = json!({"apiVersion": "example.com/v1", "kind": "Widget", "spec": {"items": [1, 2], "a": 1}});
    let out = apply_patch(
        &widget,
        &live,
        b"apiVersion: example.com/v1\nkind: Widget\nspec:\n  items: [3]\n",
        PatchType::Apply,
    );
    assert_eq!(
        out.ok(),
        Some(
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "spec": {"items": [3], "a": 1}})
        )
    );
}
