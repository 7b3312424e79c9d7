use super::*;

fn pod(ns: &str, labels: &[(&str, &str)], phase: &str, host_network: bool) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": ns,
                     "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
        "spec": {"containers": [], "hostNetwork": host_network},
        "status": {"phase": phase},
    }))
    .expect("test pod is valid")
}

#[test]
fn running_pods_use_their_label_set_finished_and_host_network_pods_none() {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "prod", "labels": {"team": "blue"}}
    }))
    .expect("test namespace is valid");
    let used = used_sets(
        &[
            pod("prod", &[("app", "web")], "Running", false),
            pod("prod", &[("app", "done")], "Succeeded", false),
            pod("prod", &[("app", "node")], "Running", true),
        ],
        &[ns],
    );
    let web: Labels = [
        ("app", "web"),
        ("io.kubernetes.pod.namespace", "prod"),
        ("shoal.io/namespace.labels.team", "blue"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(used, [web].into());
}
