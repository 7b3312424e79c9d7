//! Every content type through `apply_patch`, and patches shaped exactly as
//! `kubectl apply` (client-side, three-way), `kubectl edit`, `kubectl scale`
//! and `kubectl patch` send them.

use serde_json::{Value, json};

use crate::{MAX_DEPTH, PatchError, PatchType, TypeRef, apply_patch};

const DEPLOYMENT: TypeRef<'static> = TypeRef::new("apps/v1", "Deployment");
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "default",
            "resourceVersion": "7",
            "finalizers": ["example.com/a", "example.com/b", "example.com/c"],
            "annotations": {LAST_APPLIED: "{}"},
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "nginx:1.25",
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "env": [
                                {"name": "MODE", "value": "prod"},
                                {"name": "DEBUG", "value": "0"},
                            ],
                        },
                        {"name": "sidecar", "image": "envoy:1"},
                    ],
                    "volumes": [{"name": "conf", "secret": {"secretName": "s"}}],
                },
            },
        },
    })
}

fn run(live: &Value, body: &Value, ty: PatchType) -> Result<Value, PatchError> {
    apply_patch(&DEPLOYMENT, live, body.to_string().as_bytes(), ty)
}

fn ok(live: &Value, body: &Value, ty: PatchType) -> Value {
    match run(live, body, ty) {
        Ok(value) => value,
        Err(err) => panic!("{ty} failed: {err}"),
    }
}

fn containers(object: &Value) -> &Value {
    &object["spec"]["template"]["spec"]["containers"]
}

#[test]
fn kubectl_apply_removing_a_field_from_last_applied_sends_null() {
    let live = deployment();
    let body = json!({
        "metadata": {"annotations": {LAST_APPLIED: "{\"spec\":{}}\n"}},
        "spec": {"replicas": null},
    });
    let out = ok(&live, &body, PatchType::StrategicMerge);
    assert!(out["spec"].get("replicas").is_none());
    assert_eq!(
        out["metadata"]["annotations"][LAST_APPLIED],
        "{\"spec\":{}}\n"
    );
    assert_eq!(out["spec"]["selector"], live["spec"]["selector"]);
}

#[test]
fn kubectl_apply_changing_one_image_sends_name_and_image() {
    let live = deployment();
    let body = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
        "containers": [{"image": "nginx:1.27", "name": "web"}],
    }}}});
    let out = ok(&live, &body, PatchType::StrategicMerge);
    let mut expected = live.clone();
    expected["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.27");
    assert_eq!(out, expected);
}

#[test]
fn kubectl_apply_removing_a_container_sends_a_delete_directive() {
    let live = deployment();
    let body = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "web"}],
        "containers": [{"$patch": "delete", "name": "sidecar"}],
    }}}});
    let out = ok(&live, &body, PatchType::StrategicMerge);
    assert_eq!(
        containers(&out),
        &json!([live["spec"]["template"]["spec"]["containers"][0]])
    );
}

#[test]
fn kubectl_apply_removing_an_env_var_and_adding_a_container() {
    let live = deployment();
    let body = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "init-like"}, {"name": "web"}, {"name": "sidecar"}],
        "containers": [
            {"name": "init-like", "image": "busybox"},
            {
                "$setElementOrder/env": [{"name": "MODE"}],
                "env": [{"$patch": "delete", "name": "DEBUG"}],
                "name": "web",
            },
        ],
    }}}});
    let out = ok(&live, &body, PatchType::StrategicMerge);
    let names: Vec<&str> = containers(&out)
        .as_array()
        .map(|list| list.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["init-like", "web", "sidecar"]);
    assert_eq!(
        containers(&out)[1]["env"],
        json!([{"name": "MODE", "value": "prod"}])
    );
    assert_eq!(containers(&out)[1]["image"], "nginx:1.25");
}

#[test]
fn kubectl_apply_finalizers_use_the_parallel_lists() {
    let live = deployment();
    let body = json!({"metadata": {
        "$deleteFromPrimitiveList/finalizers": ["example.com/b"],
        "$setElementOrder/finalizers": ["example.com/a", "example.com/d", "example.com/c"],
        "finalizers": ["example.com/d"],
    }});
    let out = ok(&live, &body, PatchType::StrategicMerge);
    assert_eq!(
        out["metadata"]["finalizers"],
        json!(["example.com/a", "example.com/d", "example.com/c"])
    );
}

#[test]
fn kubectl_apply_switching_a_union_member_sends_retain_keys() {
    let live = deployment();
    let body = json!({"spec": {
        "strategy": {"$retainKeys": ["type"], "rollingUpdate": null, "type": "Recreate"},
        "template": {"spec": {
            "$setElementOrder/volumes": [{"name": "conf"}],
            "volumes": [{
                "$retainKeys": ["configMap", "name"],
                "configMap": {"name": "cm"},
                "name": "conf",
                "secret": null,
            }],
        }},
    }});
    let out = ok(&live, &body, PatchType::StrategicMerge);
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    assert_eq!(
        out["spec"]["template"]["spec"]["volumes"],
        json!([{"name": "conf", "configMap": {"name": "cm"}}])
    );
}

#[test]
fn kubectl_scale_and_patch_send_merge_and_json_patches() {
    let live = deployment();
    let out = ok(&live, &json!({"spec": {"replicas": 5}}), PatchType::Merge);
    assert_eq!(out["spec"]["replicas"], 5);

    let out = ok(
        &live,
        &json!([
            {"op": "test", "path": "/spec/replicas", "value": 3},
            {"op": "replace", "path": "/spec/replicas", "value": 1},
            {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}},
        ]),
        PatchType::Json,
    );
    assert_eq!(out["spec"]["replicas"], 1);
    assert_eq!(out["metadata"]["labels"], json!({"a": "b"}));
}

#[test]
fn merge_patch_replaces_lists_and_null_deletes() {
    let live = deployment();
    let out = ok(
        &live,
        &json!({
            "metadata": {"finalizers": ["only"], "annotations": null},
            "spec": {"template": {"spec": {"containers": [{"name": "x"}]}}},
        }),
        PatchType::Merge,
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["only"]));
    assert!(out["metadata"].get("annotations").is_none());
    assert_eq!(containers(&out), &json!([{"name": "x"}]));
}

#[test]
fn merge_patch_keeps_directive_keys_as_data() {
    // RFC 7386 knows no directives: this is what Kubernetes does too.
    let out = ok(&json!({}), &json!({"$patch": "delete"}), PatchType::Merge);
    assert_eq!(out, json!({"$patch": "delete"}));
}

#[test]
fn apply_content_type_creates_and_merges() {
    let yaml =
        b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n";
    let created = apply_patch(&DEPLOYMENT, &Value::Null, yaml, PatchType::Apply);
    assert_eq!(
        created.ok(),
        Some(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 2},
        }))
    );
    let live = deployment();
    let out = apply_patch(&DEPLOYMENT, &live, yaml, PatchType::Apply);
    let mut expected = live;
    expected["spec"]["replicas"] = json!(2);
    assert_eq!(out.ok(), Some(expected));
}

#[test]
fn only_apply_creates_objects() {
    for ty in [PatchType::Json, PatchType::Merge, PatchType::StrategicMerge] {
        let err = apply_patch(&DEPLOYMENT, &Value::Null, b"{}", ty).err();
        let Some(err) = err else {
            panic!("{ty} created an object");
        };
        assert_eq!(err.http_status(), 404);
        assert_eq!(
            err.to_string(),
            format!("the object does not exist, and a {ty} cannot create it")
        );
    }
}

#[test]
fn bodies_that_do_not_parse_are_400_naming_the_patch_type() {
    let live = deployment();
    for ty in [PatchType::Json, PatchType::Merge, PatchType::StrategicMerge] {
        let err = apply_patch(&DEPLOYMENT, &live, b"{\"spec\":", ty).err();
        let Some(err) = err else {
            panic!("{ty} accepted a truncated body");
        };
        assert_eq!(err.http_status(), 400);
        assert!(
            err.to_string()
                .starts_with(&format!("{ty} body is not valid JSON: ")),
            "{err}"
        );
    }
}

#[test]
fn merge_errors_are_422() {
    let live = deployment();
    let err = run(
        &live,
        &json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
        PatchType::StrategicMerge,
    )
    .err();
    let Some(err) = err else {
        panic!("a container without a name merged");
    };
    assert_eq!(err.http_status(), 422);
    assert_eq!(
        err.to_string(),
        "strategic merge patch: spec.template.spec.containers[0]: missing merge key \"name\""
    );
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn documents_nested_past_the_limit_are_rejected() {
    let deep = format!("{{\"spec\":{}}}", nested(MAX_DEPTH));
    let err = apply_patch(
        &DEPLOYMENT,
        &json!({}),
        deep.as_bytes(),
        PatchType::StrategicMerge,
    )
    .err();
    assert!(
        matches!(
            err,
            Some(PatchError::TooDeep {
                what: "the patch body",
                ..
            })
        ),
        "{err:?}"
    );
    let at_limit = format!("{{\"spec\":{}}}", nested(MAX_DEPTH - 1));
    for ty in [PatchType::Merge, PatchType::StrategicMerge] {
        let out = apply_patch(&DEPLOYMENT, &json!({}), at_limit.as_bytes(), ty);
        assert!(out.is_ok(), "{ty}: {out:?}");
    }
    let live: Value = serde_json::from_str(&deep).unwrap_or_default();
    let err = apply_patch(&DEPLOYMENT, &live, b"{}", PatchType::Merge).err();
    assert!(
        matches!(
            err,
            Some(PatchError::TooDeep {
                what: "the live object",
                ..
            })
        ),
        "{err:?}"
    );
    // Deeper than serde_json parses at all: an error, not a stack overflow.
    let deepest = nested(10_000);
    for ty in PatchType::ALL {
        let out = apply_patch(&DEPLOYMENT, &json!({}), deepest.as_bytes(), ty);
        assert!(out.is_err(), "{ty}");
    }
}

#[test]
fn arbitrary_bytes_are_errors_not_panics() {
    let live = deployment();
    let bodies: [&[u8]; 9] = [
        b"",
        b"null",
        b"\xff\xfe",
        b"[{\"op\":\"remove\",\"path\":\"\"}]",
        b"[{\"op\":\"move\",\"from\":\"/spec\",\"path\":\"/spec/x\"}]",
        b"{\"$setElementOrder/x\":{},\"x\":[]}",
        b"{\"spec\":{\"template\":{\"spec\":{\"containers\":[[]]}}}}",
        b"- a\n- b\n",
        b"apiVersion: [",
    ];
    for body in bodies {
        for ty in PatchType::ALL {
            let _ = apply_patch(&DEPLOYMENT, &live, body, ty);
            let _ = apply_patch(&DEPLOYMENT, &Value::Null, body, ty);
        }
    }
}

fn nested_objects(depth: usize, leaf: Value) -> Value {
    (0..depth).fold(leaf, |inner, _| json!({ "spec": inner }))
}

#[test]
fn merging_at_the_depth_limit_fits_a_test_thread_stack() {
    // Objects nested to the limit on both sides: the deepest recursion the
    // merges can reach.
    let live = nested_objects(MAX_DEPTH - 1, json!({"a": 1}));
    let body = nested_objects(MAX_DEPTH - 1, json!({"b": 2}));
    for ty in [PatchType::Merge, PatchType::StrategicMerge] {
        let out = run(&live, &body, ty);
        assert!(out.is_ok(), "{ty}: {:?}", out.err());
    }
    let mut applied = nested_objects(MAX_DEPTH - 2, json!({"b": 2}));
    applied["apiVersion"] = json!("apps/v1");
    applied["kind"] = json!("Deployment");
    let out = run(&live, &applied, PatchType::Apply);
    assert!(out.is_ok(), "{:?}", out.err());
}

/// A small deterministic generator (xorshift) for the no-panic sweep.
struct Noise(u64);

/// The depth of the generated documents.
const TOP: usize = 5;

impl Noise {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }

    fn value(&mut self, depth: usize) -> Value {
        const KEYS: [&str; 14] = [
            "spec",
            "containers",
            "name",
            "env",
            "ports",
            "containerPort",
            "finalizers",
            "metadata",
            "$patch",
            "$retainKeys",
            "$setElementOrder/containers",
            "$deleteFromPrimitiveList/finalizers",
            "$setElementOrder",
            "template",
        ];
        const WORDS: [&str; 6] = ["a", "b", "delete", "replace", "merge", "name"];
        let pick = match depth {
            0 => self.next(4),
            // The top level is an object, as objects and patches are.
            TOP => 4,
            _ => self.next(7),
        };
        match pick {
            0 => Value::Null,
            1 => json!(self.next(3)),
            2 => json!(WORDS[self.next(6) as usize]),
            3 => json!(self.next(2) == 0),
            4 | 5 => {
                let len = self.next(4);
                let mut object = serde_json::Map::new();
                for _ in 0..len {
                    let key = KEYS[self.next(KEYS.len() as u64) as usize];
                    object.insert(key.to_owned(), self.value(depth - 1));
                }
                Value::Object(object)
            }
            _ => {
                let len = self.next(4);
                Value::Array((0..len).map(|_| self.value(depth - 1)).collect())
            }
        }
    }
}

#[test]
fn random_documents_never_panic() {
    let mut noise = Noise(0x5eed_1234_abcd_0001);
    let kinds = [
        TypeRef::new("v1", "Pod"),
        DEPLOYMENT,
        TypeRef::new("example.com/v1", "Widget"),
    ];
    let mut merged = 0;
    for round in 0..3_000 {
        let live = noise.value(TOP);
        let body = noise.value(TOP);
        let type_ref = kinds[round % kinds.len()];
        let bytes = body.to_string();
        for ty in PatchType::ALL {
            let out = apply_patch(&type_ref, &live, bytes.as_bytes(), ty);
            if let (PatchType::StrategicMerge, Ok(out)) = (ty, &out) {
                merged += 1;
                assert!(
                    has_directive(&live) || !has_directive(out),
                    "directive left in {out} from {body} on {live}"
                );
            }
        }
    }
    // Most generated patches must merge, or the sweep proves little.
    assert!(merged > 1_000, "only {merged} of 3000 patches merged");
}

fn has_directive(value: &Value) -> bool {
    match value {
        Value::Object(object) => object
            .iter()
            .any(|(key, value)| key.starts_with('$') || has_directive(value)),
        Value::Array(list) => list.iter().any(has_directive),
        _ => false,
    }
}
