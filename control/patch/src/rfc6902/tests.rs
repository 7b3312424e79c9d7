use serde_json::{Value, json};

use crate::{PatchError, PatchType, TypeRef, apply_patch};

fn run(live: &Value, ops: &Value) -> Result<Value, PatchError> {
    apply_patch(
        &TypeRef::new("apps/v1", "Deployment"),
        live,
        ops.to_string().as_bytes(),
        PatchType::Json,
    )
}

fn error(live: &Value, ops: &Value) -> PatchError {
    match run(live, ops) {
        Ok(value) => panic!("patch applied: {value}"),
        Err(err) => err,
    }
}

fn live() -> Value {
    json!({"metadata": {"name": "web", "labels": {"a/b": "1"}}, "spec": {"list": [1, 2, 3]}})
}

#[test]
fn every_operation_applies_in_order() {
    let out = run(
        &live(),
        &json!([
            {"op": "add", "path": "/spec/replicas", "value": 2},
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "remove", "path": "/spec/list/0"},
            {"op": "add", "path": "/spec/list/-", "value": 4},
            {"op": "copy", "from": "/spec/list", "path": "/spec/copy"},
            {"op": "move", "from": "/metadata/labels/a~1b", "path": "/metadata/labels/c"},
            {"op": "test", "path": "/spec/copy", "value": [2, 3, 4]},
        ]),
    );
    assert_eq!(
        out.ok(),
        Some(json!({
            "metadata": {"name": "web", "labels": {"c": "1"}},
            "spec": {"replicas": 3, "list": [2, 3, 4], "copy": [2, 3, 4]},
        }))
    );
}

#[test]
fn a_missing_path_names_the_operation() {
    let err = error(
        &json!({"spec": {}}),
        &json!([
            {"op": "add", "path": "/metadata", "value": {}},
            {"op": "test", "path": "/metadata", "value": {}},
            {"op": "replace", "path": "/spec/replicas", "value": 1},
        ]),
    );
    assert_eq!(
        err.to_string(),
        "json patch operation 2 (replace /spec/replicas): path not found"
    );
    assert_eq!(err.http_status(), 422);
}

#[test]
fn failures_say_why() {
    let cases = [
        (
            json!({"op": "remove", "path": "/spec/list/7"}),
            "json patch operation 0 (remove /spec/list/7): array index 7 is out of bounds (length 3)",
        ),
        (
            json!({"op": "add", "path": "/spec/list/4", "value": 0}),
            "json patch operation 0 (add /spec/list/4): array index 4 is out of bounds (length 3)",
        ),
        (
            json!({"op": "replace", "path": "/spec/list/x", "value": 0}),
            "json patch operation 0 (replace /spec/list/x): \"x\" is not an array index",
        ),
        (
            json!({"op": "add", "path": "/metadata/name/x", "value": 0}),
            "json patch operation 0 (add /metadata/name/x): path not found: a string is not an object or array",
        ),
        (
            json!({"op": "add", "path": "/nope/x", "value": 0}),
            "json patch operation 0 (add /nope/x): path not found",
        ),
        (
            json!({"op": "test", "path": "/metadata/name", "value": "db"}),
            "json patch operation 0 (test /metadata/name): test failed: the value differs",
        ),
        (
            json!({"op": "move", "from": "/nope", "path": "/x"}),
            "json patch operation 0 (move /x): from /nope: path not found",
        ),
        (
            json!({"op": "copy", "from": "/spec/list/9", "path": "/x"}),
            "json patch operation 0 (copy /x): from /spec/list/9: array index 9 is out of bounds (length 3)",
        ),
        (
            json!({"op": "move", "from": "/spec", "path": "/spec/inner"}),
            "json patch operation 0 (move /spec/inner): cannot move a value into one of its own children",
        ),
        (
            json!({"op": "remove", "path": ""}),
            "json patch operation 0 (remove ): the whole document cannot be removed",
        ),
    ];
    for (op, message) in cases {
        assert_eq!(error(&live(), &json!([op])).to_string(), message);
    }
}

#[test]
fn malformed_operations_are_400() {
    let err = error(
        &live(),
        &json!([{"op": "add", "path": "/a", "value": 1}, {"op": "frob", "path": "/a"}]),
    );
    assert!(
        err.to_string()
            .starts_with("json patch operation 1: unknown variant `frob`"),
        "{err}"
    );
    assert_eq!(err.http_status(), 400);
    let err = error(
        &live(),
        &json!([{"op": "add", "path": "no-slash", "value": 1}]),
    );
    assert!(
        matches!(err, PatchError::InvalidOperation { index: 0, .. }),
        "{err}"
    );
    let err = error(&live(), &json!({"op": "add"}));
    assert_eq!(
        err.to_string(),
        "json patch body must be a JSON array of operations, not an object"
    );
}

#[test]
fn too_many_operations_are_refused() {
    let ops = vec![json!({"op": "test", "path": "", "value": null}); super::MAX_OPERATIONS + 1];
    let err = error(&live(), &Value::Array(ops));
    assert!(matches!(
        err,
        PatchError::TooManyOperations {
            count: 10_001,
            max: 10_000
        }
    ));
    assert_eq!(err.http_status(), 413);
}

#[test]
fn copying_the_document_into_itself_is_bounded() {
    // Each copy doubles the document; without a budget 40 of them would
    // need terabytes.
    let mut ops = Vec::new();
    for i in 0..40 {
        ops.push(json!({"op": "copy", "from": "/spec", "path": format!("/spec/c{i}")}));
    }
    let err = error(
        &json!({"spec": {"a": [1, 2, 3, 4, 5, 6, 7, 8]}}),
        &Value::Array(ops),
    );
    assert!(
        err.to_string()
            .ends_with("the patch copies more than 1048576 values in all"),
        "{err}"
    );
}

#[test]
fn results_nested_past_the_limit_are_refused() {
    // Moving a subtree under a deep path, repeatedly, would otherwise nest
    // without bound.
    let mut ops = vec![json!({"op": "add", "path": "/a", "value": {}})];
    let mut path = String::from("/a");
    for _ in 0..crate::MAX_DEPTH {
        ops.push(json!({"op": "add", "path": format!("{path}/b"), "value": {}}));
        path.push_str("/b");
    }
    let err = error(&json!({}), &Value::Array(ops));
    assert!(
        err.to_string()
            .ends_with("the result would nest deeper than 100 levels"),
        "{err}"
    );
}
