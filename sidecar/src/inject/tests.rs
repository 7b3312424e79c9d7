use serde_json::{Value, json};

use super::*;

fn injection() -> Injection {
    Injection {
        image: IMAGE.to_owned(),
        ca_url: "https://10.0.0.1:15012".to_owned(),
        token_audience: "https://kubernetes.default.svc.cluster.local".to_owned(),
    }
}

fn pod(annotations: Value) -> Value {
    json!({
        "metadata": {"name": "web", "namespace": "team", "annotations": annotations},
        "spec": {
            "initContainers": [{"name": "setup", "image": "busybox"}],
            "containers": [{"name": "app", "image": "busybox"}],
        },
    })
}

fn labels(value: &str) -> serde_json::Map<String, Value> {
    json!({INJECT_KEY: value})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn the_pod_annotation_wins_over_the_namespace_label() {
    let enabled = labels(NAMESPACE_ENABLED);
    let disabled = labels("disabled");
    assert!(wanted(&pod(json!({})), Some(&enabled)));
    assert!(!wanted(&pod(json!({})), Some(&disabled)));
    assert!(!wanted(&pod(json!({})), None));
    assert!(wanted(&pod(json!({INJECT_KEY: "true"})), None));
    assert!(!wanted(&pod(json!({INJECT_KEY: "false"})), Some(&enabled)));
    let mut host = pod(json!({INJECT_KEY: "true"}));
    host["spec"]["hostNetwork"] = json!(true);
    assert!(!wanted(&host, Some(&enabled)));
}

#[test]
fn the_sidecar_is_the_first_init_container_and_restarts_always() {
    let mut p = pod(json!({}));
    assert!(inject(&mut p, &injection()));
    let inits = p["spec"]["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(inits.len(), 2);
    assert_eq!(inits[0]["name"], CONTAINER_NAME);
    assert_eq!(inits[0]["restartPolicy"], "Always");
    assert_eq!(inits[0]["image"], IMAGE);
    assert_eq!(inits[1]["name"], "setup");
    let args: Vec<&str> = inits[0]["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args,
        [
            "--ca-url",
            "https://10.0.0.1:15012",
            "--ca-cert",
            "/var/run/secrets/shoal.io/mesh/ca.crt",
            "--token-path",
            "/var/run/secrets/shoal.io/mesh/token",
            "--mode",
            "permissive",
        ]
    );
    assert_eq!(inits[0]["startupProbe"]["httpGet"]["port"], ADMIN_PORT);
    assert_eq!(
        p["spec"]["volumes"],
        json!([token_volume("https://kubernetes.default.svc.cluster.local")])
    );
    assert_eq!(
        p["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "https://kubernetes.default.svc.cluster.local"
    );
    // The app containers are left as they were.
    assert_eq!(
        p["spec"]["containers"],
        json!([{"name": "app", "image": "busybox"}])
    );
}

#[test]
fn injecting_twice_adds_nothing() {
    let mut p = pod(json!({}));
    assert!(inject(&mut p, &injection()));
    let once = p.clone();
    assert!(!inject(&mut p, &injection()));
    assert_eq!(p, once);
}

#[test]
fn strict_mode_by_annotation() {
    let mut p = pod(json!({MODE_ANNOTATION: "strict"}));
    assert!(inject(&mut p, &injection()));
    let args = &p["spec"]["initContainers"][0]["args"];
    assert_eq!(args[7], "strict");
}
