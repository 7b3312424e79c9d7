use serde_json::json;

use super::*;
use crate::watch_cache::Entry;

#[test]
fn continue_tokens_round_trip_and_garbage_is_a_bad_request() {
    let token = encode_continue(42, "demo/web-7");
    assert_eq!(
        decode_continue(&token).ok(),
        Some((42, "demo/web-7".to_string()))
    );
    let e = decode_continue("not-a-token").err().map(|e| e.code);
    assert_eq!(e, Some(400));
}

#[test]
fn generation_follows_spec_not_metadata_or_status() {
    let old =
        json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 1}, "status": {"x": 1}});
    let relabel =
        json!({"metadata": {"labels": {"a": "2"}}, "spec": {"replicas": 1}, "status": {"x": 2}});
    let scale = json!({"metadata": {}, "spec": {"replicas": 3}});
    assert!(!spec_changed(&old, &relabel));
    assert!(spec_changed(&old, &scale));
}

#[test]
fn scale_reads_and_writes_replicas() {
    let deploy = shoal_api::find_resource("apps", "v1", "deployments").expect("served");
    let d = json!({"metadata": {"name": "web", "namespace": "demo", "resourceVersion": "5"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}}});
    let s = scale_of(deploy, &d);
    assert_eq!(s["spec"]["replicas"], 2);
    assert_eq!(s["status"]["selector"], "app=web");
    let scaled = apply_scale(&d, &json!({"spec": {"replicas": 5}})).expect("valid");
    assert_eq!(scaled["spec"]["replicas"], 5);
    let e = apply_scale(&d, &json!({"spec": {"replicas": -1}}))
        .err()
        .map(|e| e.code);
    assert_eq!(e, Some(422));
}

fn event(change: Change, labels: Value, prev: Option<Value>) -> Event {
    let obj = |l: Value| {
        let v = json!({"metadata": {"name": "p", "labels": l}});
        Arc::new(Entry {
            json: Bytes::from(v.to_string()),
            value: v,
            rev: 2,
        })
    };
    Event {
        change,
        key: "/registry/pods/demo/p".into(),
        rev: 2,
        object: obj(labels),
        prev: prev.map(obj),
    }
}

#[test]
fn watchers_see_objects_enter_and_leave_their_selector() {
    let filter = Filter::parse(Some("app=web"), None, "pods").expect("valid");
    let kind_of = |f: Option<Bytes>| {
        f.and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["type"].as_str().map(str::to_string))
    };
    let enter = event(
        Change::Modified,
        json!({"app": "web"}),
        Some(json!({"app": "db"})),
    );
    assert_eq!(
        kind_of(frame_for(&enter, "/registry/pods/", &filter)).as_deref(),
        Some("ADDED")
    );
    let leave = event(
        Change::Modified,
        json!({"app": "db"}),
        Some(json!({"app": "web"})),
    );
    assert_eq!(
        kind_of(frame_for(&leave, "/registry/pods/", &filter)).as_deref(),
        Some("DELETED")
    );
    let other = event(
        Change::Modified,
        json!({"app": "db"}),
        Some(json!({"app": "db"})),
    );
    assert_eq!(frame_for(&other, "/registry/pods/", &filter), None);
    let elsewhere = event(Change::Added, json!({"app": "web"}), None);
    assert_eq!(
        frame_for(&elsewhere, "/registry/pods/other/", &filter),
        None
    );
}
