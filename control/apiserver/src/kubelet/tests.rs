use serde_json::json;

use super::*;

fn pod() -> Value {
    json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "initContainers": [{"name": "setup"}],
            "containers": [{"name": "a"}, {"name": "b"}],
        },
        "status": {"containerStatuses": [
            {"name": "a", "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}},
            {"name": "b", "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
        ]},
    })
}

#[test]
fn a_multi_container_pod_needs_a_container_name_in_kubernetes_words() {
    let e = pick_container(&pod(), "web", None).expect_err("should be refused");
    assert_eq!(e.code, 400);
    assert_eq!(
        e.message,
        "a container name must be specified for pod web, choose one of: [setup a b]"
    );
    let e = pick_container(&pod(), "web", Some("nope")).expect_err("should be refused");
    assert_eq!(e.message, "container nope is not valid for pod web");
    assert_eq!(
        pick_container(&pod(), "web", Some("setup")).expect("should succeed"),
        "setup"
    );
    let one = json!({"spec": {"containers": [{"name": "only"}]}});
    assert_eq!(
        pick_container(&one, "p", None).expect("should succeed"),
        "only"
    );
}

#[test]
fn a_container_that_never_ran_is_waiting_but_a_restarted_one_has_logs() {
    assert_eq!(
        waiting_before_first_start(&pod(), "a").as_deref(),
        Some("ContainerCreating")
    );
    assert_eq!(waiting_before_first_start(&pod(), "b"), None);
}

#[test]
fn log_query_takes_kubectl_parameters_and_names_a_bad_number() {
    let q = LogQuery::parse(Some(
        "container=c&follow=true&previous=1&tailLines=2&limitBytes=10",
    ))
    .expect("should succeed");
    assert_eq!(q.container.as_deref(), Some("c"));
    assert!(q.follow && q.previous);
    assert_eq!((q.tail_lines, q.limit_bytes), (Some(2), Some(10)));
    assert_eq!(
        LogQuery::parse(Some("tailLines=-1"))
            .expect("should succeed")
            .tail_lines,
        None
    );
    let e = LogQuery::parse(Some("tailLines=x")).expect_err("should be refused");
    assert!(e.message.contains("tailLines"), "{}", e.message);
    assert_eq!(
        LogQuery::parse(Some("limitBytes=0"))
            .expect_err("should be refused")
            .code,
        400
    );
}
