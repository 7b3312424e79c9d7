use serde_json::json;

use super::*;

fn pod() -> Value {
    json!({
        "metadata": {"name": "web-1", "namespace": "demo", "labels": {"app": "web", "tier": "front"}},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": "Running"}
    })
}

#[test]
fn label_selectors_follow_kubectl_syntax() {
    let p = pod();
    let m = |s: &str| LabelSelector::parse(s).expect("parses").matches(&p);
    assert!(m("app=web"));
    assert!(m("app==web,tier"));
    assert!(!m("app!=web"));
    assert!(m("tier in (front, back)"));
    assert!(!m("tier notin (front)"));
    assert!(m("!legacy"));
    assert!(!m("legacy"));
    assert!(m(""));
}

#[test]
fn bad_label_selectors_are_named() {
    let e = LabelSelector::parse("tier in front")
        .err()
        .map(|e| e.message);
    assert!(e.is_some_and(|m| m.contains("tier in front")));
}

#[test]
fn field_selectors_check_supported_fields() {
    let p = pod();
    let f =
        FieldSelector::parse("spec.nodeName=node-1,status.phase!=Pending", "pods").expect("parses");
    assert!(f.matches(&p));
    assert!(
        !FieldSelector::parse("metadata.name=other", "pods")
            .expect("parses")
            .matches(&p)
    );
    let e = FieldSelector::parse("spec.image=x", "pods")
        .err()
        .map(|e| e.message);
    assert_eq!(e.as_deref(), Some("field label not supported: spec.image"));
}
