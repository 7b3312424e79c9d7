use serde_json::{Value, json};

use crate::{MergeError, PatchError, PatchType, TypeRef, apply_patch};

const POD: TypeRef<'static> = TypeRef::new("v1", "Pod");
const DEPLOYMENT: TypeRef<'static> = TypeRef::new("apps/v1", "Deployment");

fn patch(type_ref: TypeRef<'_>, live: &Value, patch: &Value) -> Result<Value, PatchError> {
    apply_patch(
        &type_ref,
        live,
        patch.to_string().as_bytes(),
        PatchType::StrategicMerge,
    )
}

fn patched(type_ref: TypeRef<'_>, live: &Value, body: &Value) -> Value {
    match patch(type_ref, live, body) {
        Ok(value) => value,
        Err(err) => panic!("patch failed: {err}"),
    }
}

fn failure(type_ref: TypeRef<'_>, live: &Value, body: &Value) -> (String, Option<MergeError>) {
    match patch(type_ref, live, body) {
        Ok(value) => panic!("patch succeeded: {value}"),
        Err(err) => {
            let message = err.to_string();
            match err {
                PatchError::Merge { reason, .. } => (message, Some(reason)),
                _ => (message, None),
            }
        }
    }
}

fn pod(containers: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
        "spec": {"containers": containers},
    })
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| e.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn maps_merge_recursively_and_null_deletes() {
    let live = pod(json!([{"name": "a", "image": "a:1"}]));
    let out = patched(
        POD,
        &live,
        &json!({"metadata": {"labels": {"tier": null, "new": "yes"}, "annotations": {"x": "y"}}}),
    );
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "web", "new": "yes"})
    );
    assert_eq!(out["metadata"]["annotations"], json!({"x": "y"}));
    assert_eq!(out["spec"], live["spec"]);
}

#[test]
fn null_for_an_absent_field_is_ignored() {
    let live = pod(json!([{"name": "a", "image": "a:1"}]));
    let out = patched(POD, &live, &json!({"spec": {"nodeName": null}}));
    assert_eq!(out, live);
}

#[test]
fn containers_merge_by_name_and_keep_unpatched_fields() {
    let live = pod(json!([
        {"name": "a", "image": "a:1", "args": ["x"]},
        {"name": "b", "image": "b:1"},
    ]));
    let out = patched(
        POD,
        &live,
        &json!({"spec": {"containers": [{"name": "b", "image": "b:2"}]}}),
    );
    assert_eq!(
        out["spec"]["containers"],
        json!([
            {"name": "a", "image": "a:1", "args": ["x"]},
            {"name": "b", "image": "b:2"},
        ])
    );
}

#[test]
fn new_list_elements_without_an_order_go_first_as_in_kubernetes() {
    let live = pod(json!([{"name": "a"}, {"name": "b"}]));
    let out = patched(
        POD,
        &live,
        &json!({"spec": {"containers": [{"name": "c"}]}}),
    );
    assert_eq!(names(&out["spec"]["containers"]), ["c", "a", "b"]);
    // Patch elements the live list has keep their live order around
    // live-only ones.
    let out = patched(
        POD,
        &live,
        &json!({"spec": {"containers": [{"name": "b"}, {"name": "c"}]}}),
    );
    assert_eq!(names(&out["spec"]["containers"]), ["a", "b", "c"]);
}

#[test]
fn patch_elements_come_in_patch_order_with_live_only_ones_in_place() {
    let live = pod(json!([{"name": "a"}, {"name": "b"}, {"name": "c"}]));
    let out = patched(
        POD,
        &live,
        &json!({"spec": {"containers": [{"name": "d"}, {"name": "a"}]}}),
    );
    assert_eq!(names(&out["spec"]["containers"]), ["d", "a", "b", "c"]);
}

#[test]
fn nested_merge_lists_merge_by_their_own_keys() {
    let live = pod(json!([{
        "name": "a",
        "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}],
        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
        "volumeMounts": [{"mountPath": "/data", "name": "data"}],
    }]));
    let out = patched(
        POD,
        &live,
        &json!({"spec": {"containers": [{
            "name": "a",
            "ports": [{"containerPort": 80, "protocol": "TCP"}],
            "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
            "volumeMounts": [{"mountPath": "/data", "readOnly": true}],
        }]}}),
    );
    let container = &out["spec"]["containers"][0];
    assert_eq!(
        container["ports"],
        json!([{"containerPort": 80, "name": "http", "protocol": "TCP"}, {"containerPort": 443}])
    );
    assert_eq!(
        container["env"],
        json!([
            {"name": "A", "value": "1"},
            {"name": "B", "value": "3"},
            {"name": "C", "value": "4"},
        ])
    );
    assert_eq!(
        container["volumeMounts"],
        json!([{"mountPath": "/data", "name": "data", "readOnly": true}])
    );
}

#[test]
fn numeric_merge_keys_match_by_value() {
    let live = pod(json!([{"name": "a", "ports": [{"containerPort": 80, "name": "http"}]}]));
    let out = patched(
        POD,
        &live,
        &json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80.0, "hostPort": 8080}]}]}}),
    );
    let ports = &out["spec"]["containers"][0]["ports"];
    assert_eq!(ports.as_array().map(Vec::len), Some(1), "{ports}");
    assert_eq!(ports[0]["name"], "http");
    assert_eq!(ports[0]["hostPort"], 8080);
}

#[test]
fn lists_without_a_strategy_are_replaced() {
    let live = pod(
        json!([{"name": "a", "args": ["1", "2"], "envFrom": [{"configMapRef": {"name": "x"}}]}]),
    );
    let mut live = live;
    live["spec"]["tolerations"] = json!([{"key": "a", "operator": "Exists"}]);
    let out = patched(
        POD,
        &live,
        &json!({"spec": {
            "tolerations": [{"key": "b", "operator": "Exists"}],
            "containers": [{"name": "a", "args": ["3"], "envFrom": [{"secretRef": {"name": "y"}}]}],
        }}),
    );
    assert_eq!(
        out["spec"]["tolerations"],
        json!([{"key": "b", "operator": "Exists"}])
    );
    assert_eq!(out["spec"]["containers"][0]["args"], json!(["3"]));
    assert_eq!(
        out["spec"]["containers"][0]["envFrom"],
        json!([{"secretRef": {"name": "y"}}])
    );
}

#[test]
fn delete_directive_removes_the_keyed_element() {
    let live = pod(json!([{"name": "a"}, {"name": "b"}, {"name": "c"}]));
    let out = patched(
        POD,
        &live,
        &json!({"spec": {"containers": [{"$patch": "delete", "name": "b"}]}}),
    );
    assert_eq!(names(&out["spec"]["containers"]), ["a", "c"]);
}

#[test]
fn replace_directive_in_a_list_replaces_it() {
    let live = pod(json!([{"name": "a", "image": "a"}, {"name": "b"}]));
    let out = patched(
        POD,
        &live,
        &json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "z", "image": "z"}]}}),
    );
    assert_eq!(
        out["spec"]["containers"],
        json!([{"name": "z", "image": "z"}])
    );
}

#[test]
fn replace_directive_on_a_map_replaces_it() {
    let mut live = pod(json!([{"name": "a"}]));
    live["spec"]["nodeSelector"] = json!({"disk": "ssd", "zone": "a"});
    let out = patched(
        POD,
        &live,
        &json!({"spec": {"nodeSelector": {"$patch": "replace", "zone": "b"}}}),
    );
    assert_eq!(out["spec"]["nodeSelector"], json!({"zone": "b"}));
}

#[test]
fn delete_directive_on_a_map_empties_it_and_on_a_new_map_adds_nothing() {
    let mut live = pod(json!([{"name": "a"}]));
    live["spec"]["nodeSelector"] = json!({"disk": "ssd"});
    let out = patched(
        POD,
        &live,
        &json!({"spec": {"nodeSelector": {"$patch": "delete"}, "overhead": {"$patch": "delete"}}}),
    );
    assert_eq!(out["spec"]["nodeSelector"], json!({}));
    assert!(out["spec"].get("overhead").is_none());
}

#[test]
fn merge_directive_is_a_no_op_marker() {
    let live = pod(json!([{"name": "a", "image": "a:1"}]));
    let out = patched(
        POD,
        &live,
        &json!({"metadata": {"$patch": "merge", "labels": {"x": "1"}},
                "spec": {"containers": [{"$patch": "merge", "name": "a", "image": "a:2"}]}}),
    );
    assert_eq!(out["metadata"]["labels"]["x"], "1");
    assert_eq!(out["metadata"]["labels"]["app"], "web");
    assert_eq!(
        out["spec"]["containers"],
        json!([{"name": "a", "image": "a:2"}])
    );
}

#[test]
fn unknown_directives_are_errors_naming_the_field() {
    let live = pod(json!([{"name": "a"}]));
    let (message, reason) = failure(
        POD,
        &live,
        &json!({"spec": {"containers": [{"$patch": "explode", "name": "a"}]}}),
    );
    assert_eq!(
        message,
        "strategic merge patch: spec.containers[0].$patch: unknown $patch directive \"explode\": \
         use \"replace\", \"delete\" or \"merge\""
    );
    assert_eq!(
        reason,
        Some(MergeError::UnknownDirective("\"explode\"".to_owned()))
    );
    let (message, _) = failure(POD, &live, &json!({"metadata": {"$patch": 3}}));
    assert!(
        message.starts_with("strategic merge patch: metadata.$patch: unknown $patch directive 3")
    );
}

#[test]
fn missing_merge_key_names_the_element() {
    let live = pod(json!([{"name": "a"}]));
    let (message, reason) = failure(
        POD,
        &live,
        &json!({"spec": {"containers": [{"name": "a"}, {"image": "b"}]}}),
    );
    assert_eq!(
        message,
        "strategic merge patch: spec.containers[1]: missing merge key \"name\""
    );
    assert_eq!(reason, Some(MergeError::MissingMergeKey("name")));
    let (message, _) = failure(
        POD,
        &live,
        &json!({"spec": {"containers": [{"$patch": "delete"}]}}),
    );
    assert_eq!(
        message,
        "strategic merge patch: spec.containers[0]: missing merge key \"name\""
    );
}

#[test]
fn malformed_merge_lists_are_errors() {
    let live = pod(json!([{"name": "a"}]));
    let (message, reason) = failure(POD, &live, &json!({"spec": {"containers": ["a"]}}));
    assert_eq!(reason, Some(MergeError::MixedElements), "{message}");
    assert_eq!(
        message,
        "strategic merge patch: spec.containers: list elements must be all objects or all scalars to be merged"
    );

    let meta = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"finalizers": ["a"]}});
    let (_, reason) = failure(POD, &meta, &json!({"metadata": {"finalizers": [["b"]]}}));
    assert_eq!(reason, Some(MergeError::ListOfLists));
    let (message, reason) = failure(
        POD,
        &meta,
        &json!({"metadata": {"finalizers": [{"$patch": "delete", "x": 1}]}}),
    );
    assert_eq!(reason, Some(MergeError::DeleteWithoutMergeKey), "{message}");
    let (_, reason) = failure(POD, &meta, &json!({"metadata": {"finalizers": [{"x": 1}]}}));
    assert_eq!(reason, Some(MergeError::MixedElements));
    let empty = json!({"metadata": {}});
    let (message, reason) = failure(
        POD,
        &empty,
        &json!({"metadata": {"finalizers": [{"x": 1}]}}),
    );
    assert_eq!(reason, Some(MergeError::NoMergeKey), "{message}");
}

#[test]
fn finalizers_merge_as_an_ordered_set() {
    let live = json!({"metadata": {"finalizers": ["a", "b"]}});
    let out = patched(
        POD,
        &live,
        &json!({"metadata": {"finalizers": ["b", "c", "c"]}}),
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
}

#[test]
fn delete_from_primitive_list() {
    let live = json!({"metadata": {"finalizers": ["a", "b", "c"]}});
    let out = patched(
        POD,
        &live,
        &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b", "zzz"]}}),
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["a", "c"]));
    // Deletions apply after additions in the same patch.
    let out = patched(
        POD,
        &live,
        &json!({"metadata": {"finalizers": ["d"], "$deleteFromPrimitiveList/finalizers": ["a", "d"]}}),
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
    let (message, reason) = failure(
        POD,
        &live,
        &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "b"}}),
    );
    assert_eq!(reason, Some(MergeError::NotAList));
    assert_eq!(
        message,
        "strategic merge patch: metadata.$deleteFromPrimitiveList/finalizers: must be a list"
    );
}

#[test]
fn set_element_order_reorders_and_keeps_live_only_elements() {
    let live = pod(json!([{"name": "a"}, {"name": "b"}, {"name": "c"}]));
    let out = patched(
        POD,
        &live,
        &json!({"spec": {
            "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "a:2"}],
        }}),
    );
    // The live-only b stays ahead of c, which it preceded in the live list.
    assert_eq!(names(&out["spec"]["containers"]), ["b", "c", "a"]);
    assert_eq!(out["spec"]["containers"][2]["image"], "a:2");
    assert!(out["spec"].get("$setElementOrder/containers").is_none());
}

#[test]
fn set_element_order_on_primitives() {
    let live = json!({"metadata": {"finalizers": ["a", "b", "c"]}});
    let out = patched(
        POD,
        &live,
        &json!({"metadata": {"$setElementOrder/finalizers": ["c", "a", "b"]}}),
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["c", "a", "b"]));
}

#[test]
fn set_element_order_must_agree_with_the_patch_list() {
    let live = pod(json!([{"name": "a"}, {"name": "b"}]));
    let (message, reason) = failure(
        POD,
        &live,
        &json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "b"}, {"name": "a"}],
        }}),
    );
    assert_eq!(reason, Some(MergeError::OrderMismatch));
    assert_eq!(
        message,
        "strategic merge patch: spec.$setElementOrder/containers: the patch list is not in the \
         order that $setElementOrder gives"
    );
    let (_, reason) = failure(
        POD,
        &live,
        &json!({"spec": {"$setElementOrder/containers": [{"image": "a"}]}}),
    );
    assert_eq!(reason, Some(MergeError::MissingMergeKey("name")));
    let (message, reason) = failure(POD, &live, &json!({"spec": {"$setElementOrder": []}}));
    assert_eq!(
        reason,
        Some(MergeError::DirectiveWithoutField(
            "$setElementOrder".to_owned()
        )),
        "{message}"
    );
}

#[test]
fn set_element_order_for_a_list_the_object_lacks_creates_it_clean() {
    let live = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
    let out = patched(
        POD,
        &live,
        &json!({"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "b", "env": [{"name": "X", "value": null}]}, {"name": "a"}],
        }}),
    );
    assert_eq!(
        out["spec"],
        json!({"containers": [{"name": "b", "env": [{"name": "X"}]}, {"name": "a"}]})
    );
}

#[test]
fn retain_keys_clears_unlisted_fields() {
    let live = json!({"spec": {"strategy": {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1},
    }}});
    let out = patched(
        DEPLOYMENT,
        &live,
        &json!({"spec": {"strategy": {
            "$retainKeys": ["type"],
            "rollingUpdate": null,
            "type": "Recreate",
        }}}),
    );
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn retain_keys_must_list_every_field_the_patch_sets() {
    let live = json!({"spec": {"strategy": {"type": "Recreate"}}});
    let (message, reason) = failure(
        DEPLOYMENT,
        &live,
        &json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}),
    );
    assert_eq!(
        reason,
        Some(MergeError::NotRetained("rollingUpdate".to_owned()))
    );
    assert_eq!(
        message,
        "strategic merge patch: spec.strategy.$retainKeys: field \"rollingUpdate\" is set in the \
         patch but not listed in $retainKeys"
    );
    let (_, reason) = failure(
        DEPLOYMENT,
        &live,
        &json!({"spec": {"strategy": {"$retainKeys": [1]}}}),
    );
    assert_eq!(reason, Some(MergeError::RetainKeysNotNames));
    let (_, reason) = failure(
        DEPLOYMENT,
        &live,
        &json!({"spec": {"strategy": {"$retainKeys": "type"}}}),
    );
    assert_eq!(reason, Some(MergeError::NotAList));
}

#[test]
fn pod_template_specs_use_the_pod_spec_table() {
    let kinds = [
        (TypeRef::new("apps/v1", "Deployment"), "/spec/template/spec"),
        (TypeRef::new("apps/v1", "ReplicaSet"), "/spec/template/spec"),
        (
            TypeRef::new("apps/v1", "StatefulSet"),
            "/spec/template/spec",
        ),
        (TypeRef::new("apps/v1", "DaemonSet"), "/spec/template/spec"),
        (
            TypeRef::new("v1", "ReplicationController"),
            "/spec/template/spec",
        ),
        (TypeRef::new("v1", "PodTemplate"), "/template/spec"),
        (TypeRef::new("batch/v1", "Job"), "/spec/template/spec"),
        (
            TypeRef::new("batch/v1", "CronJob"),
            "/spec/jobTemplate/spec/template/spec",
        ),
    ];
    for (type_ref, pointer) in kinds {
        let nest = |leaf: Value| {
            pointer
                .rsplit('/')
                .filter(|s| !s.is_empty())
                .fold(leaf, |inner, key| json!({ key: inner }))
        };
        let live = nest(json!({"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "E", "value": "1"}]},
            {"name": "b", "image": "b:1"},
        ]}));
        let body =
            nest(json!({"containers": [{"name": "a", "env": [{"name": "F", "value": "2"}]}]}));
        let out = patched(type_ref, &live, &body);
        let spec = out.pointer(pointer).cloned().unwrap_or_default();
        assert_eq!(names(&spec["containers"]), ["a", "b"], "{type_ref:?}");
        assert_eq!(
            spec["containers"][0]["env"],
            json!([{"name": "F", "value": "2"}, {"name": "E", "value": "1"}]),
            "{type_ref:?}"
        );
        assert_eq!(spec["containers"][0]["image"], "a:1", "{type_ref:?}");
    }
}

#[test]
fn service_ports_merge_by_port() {
    let live = json!({"spec": {"ports": [
        {"port": 80, "targetPort": 8080, "name": "http"},
        {"port": 443, "name": "https"},
    ]}});
    let out = patched(
        TypeRef::new("v1", "Service"),
        &live,
        &json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
    );
    assert_eq!(
        out["spec"]["ports"],
        json!([
            {"port": 80, "targetPort": 9090, "name": "http"},
            {"port": 443, "name": "https"},
        ])
    );
}

#[test]
fn node_addresses_and_conditions_merge_by_type_but_taints_are_replaced() {
    let live = json!({
        "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}], "podCIDRs": ["10.0.0.0/24"]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "n1"}],
            "conditions": [{"type": "Ready", "status": "False"}, {"type": "DiskPressure", "status": "False"}],
        },
    });
    let out = patched(
        TypeRef::new("v1", "Node"),
        &live,
        &json!({
            "spec": {"taints": [{"key": "b", "effect": "NoExecute"}], "podCIDRs": ["fd00::/64"]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "10.0.0.2"}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }),
    );
    assert_eq!(
        out["spec"]["taints"],
        json!([{"key": "b", "effect": "NoExecute"}])
    );
    assert_eq!(out["spec"]["podCIDRs"], json!(["fd00::/64", "10.0.0.0/24"]));
    assert_eq!(
        out["status"]["addresses"],
        json!([{"type": "InternalIP", "address": "10.0.0.2"}, {"type": "Hostname", "address": "n1"}])
    );
    assert_eq!(
        out["status"]["conditions"],
        json!([{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "False"}])
    );
}

#[test]
fn owner_references_merge_by_uid() {
    let live = json!({"metadata": {"ownerReferences": [
        {"uid": "1", "kind": "ReplicaSet", "name": "rs"},
    ]}});
    let out = patched(
        TypeRef::new("v1", "ConfigMap"),
        &live,
        &json!({"metadata": {"ownerReferences": [
            {"uid": "1", "controller": true},
            {"uid": "2", "kind": "Deployment", "name": "d"},
        ]}}),
    );
    assert_eq!(
        out["metadata"]["ownerReferences"],
        json!([
            {"uid": "1", "kind": "ReplicaSet", "name": "rs", "controller": true},
            {"uid": "2", "kind": "Deployment", "name": "d"},
        ])
    );
}

#[test]
fn pod_disruption_budget_selector_is_replaced_whole() {
    let live = json!({"spec": {"selector": {"matchLabels": {"a": "1"}}, "minAvailable": 1}});
    let out = patched(
        TypeRef::new("policy/v1", "PodDisruptionBudget"),
        &live,
        &json!({"spec": {"selector": {"matchExpressions": []}}}),
    );
    assert_eq!(
        out["spec"],
        json!({"selector": {"matchExpressions": []}, "minAvailable": 1})
    );
}

#[test]
fn webhooks_and_their_match_conditions_merge_by_name() {
    let live = json!({"webhooks": [{"name": "w", "matchConditions": [
        {"name": "a", "expression": "true"},
    ]}]});
    let out = patched(
        TypeRef::new(
            "admissionregistration.k8s.io/v1",
            "ValidatingWebhookConfiguration",
        ),
        &live,
        &json!({"webhooks": [{"name": "w", "matchConditions": [
            {"name": "b", "expression": "false"},
        ]}]}),
    );
    assert_eq!(
        out["webhooks"][0]["matchConditions"],
        json!([{"name": "b", "expression": "false"}, {"name": "a", "expression": "true"}])
    );
}

#[test]
fn unknown_kinds_merge_maps_and_replace_lists() {
    let crd = TypeRef::new("example.com/v1", "Widget");
    let live = json!({"spec": {
        "containers": [{"name": "a", "image": "a:1"}, {"name": "b"}],
        "settings": {"x": 1, "y": 2},
    }});
    let out = patched(
        crd,
        &live,
        &json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}],
            "containers": [{"name": "a", "image": "a:2"}],
            "settings": {"y": null, "z": 3},
        }}),
    );
    assert_eq!(
        out["spec"],
        json!({"containers": [{"name": "a", "image": "a:2"}], "settings": {"x": 1, "z": 3}})
    );
}

#[test]
fn list_elements_without_the_merge_key_in_the_live_object_stay_put() {
    let live = pod(json!([{"image": "orphan"}, {"name": "a"}]));
    let out = patched(
        POD,
        &live,
        &json!({"spec": {"containers": [{"name": "a", "image": "a:2"}]}}),
    );
    assert_eq!(
        out["spec"]["containers"],
        json!([{"name": "a", "image": "a:2"}, {"image": "orphan"}])
    );
}

#[test]
fn body_and_live_shapes_are_checked() {
    let live = pod(json!([]));
    let err = patch(POD, &live, &json!([1]));
    assert!(
        matches!(
            err,
            Err(PatchError::WrongBodyShape {
                found: "an array",
                ..
            })
        ),
        "{err:?}"
    );
    let err = patch(POD, &json!("x"), &json!({}));
    assert!(
        matches!(err, Err(PatchError::LiveNotObject { found: "a string" })),
        "{err:?}"
    );
}

#[test]
fn live_only_elements_keep_their_place_between_ordered_ones() {
    // Live 1,2,9,3,4 where 9 is server-only; the order 2,1,4,3 moves the
    // others around it.
    let live = pod(json!([
        {"name": "1"}, {"name": "2"}, {"name": "9"}, {"name": "3"}, {"name": "4"},
    ]));
    let out = patched(
        POD,
        &live,
        &json!({"spec": {"$setElementOrder/containers": [
            {"name": "2"}, {"name": "1"}, {"name": "4"}, {"name": "3"},
        ]}}),
    );
    assert_eq!(names(&out["spec"]["containers"]), ["2", "1", "9", "4", "3"]);
}

#[test]
fn patch_order_wins_over_live_order_for_elements_it_names() {
    let live = pod(json!([{"name": "1"}, {"name": "2"}, {"name": "3"}]));
    let out = patched(
        POD,
        &live,
        &json!({"spec": {"containers": [{"name": "3"}, {"name": "1"}]}}),
    );
    assert_eq!(names(&out["spec"]["containers"]), ["2", "3", "1"]);
    let live = json!({"metadata": {"finalizers": ["1", "2", "3"]}});
    let out = patched(POD, &live, &json!({"metadata": {"finalizers": ["3", "1"]}}));
    assert_eq!(out["metadata"]["finalizers"], json!(["2", "3", "1"]));
}

#[test]
fn delete_directives_remove_every_duplicate() {
    let live =
        pod(json!([{"name": "a", "image": "1"}, {"name": "b"}, {"name": "a", "image": "2"}]));
    let out = patched(
        POD,
        &live,
        &json!({"spec": {"containers": [{"$patch": "delete", "name": "a"}]}}),
    );
    assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
    let live = json!({"metadata": {"finalizers": ["x", "y", "x"]}});
    let out = patched(
        POD,
        &live,
        &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
}

#[test]
fn deleting_from_an_absent_list_does_not_create_it() {
    let live = json!({"metadata": {"name": "p"}});
    let out = patched(
        POD,
        &live,
        &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]},
                "spec": {"containers": [{"$patch": "delete", "name": "a"}]}}),
    );
    assert_eq!(
        out,
        json!({"metadata": {"name": "p"}, "spec": {"containers": []}})
    );
}
