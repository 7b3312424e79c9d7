use serde_json::{Value, json};

use super::*;

const NOW: &str = "2026-01-01T01:00:00Z";

fn ds(spec: Value) -> anyhow::Result<DaemonSet> {
    let mut full = json!({
        "selector": {"matchLabels": {"app": "agent"}},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
        "template": {"metadata": {"labels": {"app": "agent"}},
                     "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    });
    if let (Some(full), Some(spec)) = (full.as_object_mut(), spec.as_object()) {
        full.extend(spec.clone());
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "agent", "namespace": "default", "uid": "d", "generation": 1},
        "spec": full,
    }))?)
}

fn node(name: &str, labels: Value, taints: Value) -> anyhow::Result<Arc<Node>> {
    Ok(Arc::new(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    }))?))
}

/// A daemon pod on `node` at revision `hash`, Ready (for an hour) or not.
fn pod(name: &str, node: &str, hash: &str, ready: bool) -> anyhow::Result<Pod> {
    let status = if ready { "True" } else { "False" };
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "agent", REVISION_HASH_LABEL: hash},
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": status, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    }))?)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn each_fitting_node_gets_one_pod_and_others_lose_theirs() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let gpu = json!({"nodeSelector": {"gpu": "yes"}});
    let template = |extra: Value| {
        let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        json!({"template": {"metadata": {"labels": {"app": "agent"}}, "spec": spec}})
    };
    let no_schedule = json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]);
    let no_execute = json!([{"key": "dedicated", "value": "db", "effect": "NoExecute"}]);
    let cordoned = json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]);
    let tolerate = json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}]});
    // (what, template extras, node labels, node taints, existing pod, creates, deletes)
    let table = [
        (
            "plain node",
            json!({}),
            json!({}),
            json!([]),
            false,
            true,
            false,
        ),
        (
            "already has one",
            json!({}),
            json!({}),
            json!([]),
            true,
            false,
            false,
        ),
        (
            "nodeSelector matches",
            gpu.clone(),
            json!({"gpu": "yes"}),
            json!([]),
            false,
            true,
            false,
        ),
        (
            "nodeSelector misses",
            gpu.clone(),
            json!({}),
            json!([]),
            false,
            false,
            false,
        ),
        (
            "label removed",
            gpu,
            json!({}),
            json!([]),
            true,
            false,
            true,
        ),
        (
            "untolerated NoSchedule",
            json!({}),
            json!({}),
            no_schedule.clone(),
            false,
            false,
            false,
        ),
        (
            "NoSchedule added later: stays",
            json!({}),
            json!({}),
            no_schedule.clone(),
            true,
            false,
            false,
        ),
        (
            "NoExecute evicts",
            json!({}),
            json!({}),
            no_execute,
            true,
            false,
            true,
        ),
        (
            "tolerated",
            tolerate,
            json!({}),
            no_schedule,
            false,
            true,
            false,
        ),
        (
            "cordoned: daemon pods tolerate it",
            json!({}),
            json!({}),
            cordoned,
            false,
            true,
            false,
        ),
    ];
    for (what, extra, labels, taints, existing, creates, deletes) in table {
        let d = ds(template(extra))?;
        let nodes = [node("n1", labels, taints)?];
        let pods: Vec<Pod> = if existing {
            vec![pod("agent-a", "n1", "h1", true)?]
        } else {
            vec![]
        };
        let p = plan(&d, &nodes, &pods, "h1", now);
        assert_eq!(p.create == ["n1"], creates, "{what}: creates");
        assert_eq!(p.delete == ["agent-a"], deletes, "{what}: deletes");
    }
    Ok(())
}

#[test]
fn pods_of_removed_nodes_and_duplicates_go_and_the_status_counts_nodes() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let d = ds(json!({}))?;
    let nodes = [
        node("n1", json!({}), json!([]))?,
        node("n2", json!({}), json!([]))?,
        node("n3", json!({}), json!([]))?,
    ];
    let mut late = pod("agent-late", "n1", "h1", false)?;
    late.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:30:00Z".parse()?,
    ));
    let pods = [
        pod("agent-1", "n1", "h1", true)?,
        late,
        pod("agent-2", "n2", "h1", false)?,
        pod("agent-gone", "n9", "h1", true)?,
    ];
    let p = plan(&d, &nodes, &pods, "h1", now);
    assert_eq!(p.create, ["n3"]);
    assert_eq!(sorted(p.delete), ["agent-gone", "agent-late"]);
    let s = p.status;
    assert_eq!(
        (
            s.desired_number_scheduled,
            s.current_number_scheduled,
            s.number_ready,
            s.number_available,
            s.updated_number_scheduled
        ),
        (3, 2, 1, Some(1), Some(2))
    );
    Ok(())
}

#[test]
fn a_rolling_update_replaces_old_pods_within_max_unavailable() -> anyhow::Result<()> {
    let now: jiff::Timestamp = NOW.parse()?;
    let nodes = [
        node("n1", json!({}), json!([]))?,
        node("n2", json!({}), json!([]))?,
        node("n3", json!({}), json!([]))?,
    ];
    let d = ds(json!({}))?;
    let old = [
        pod("a1", "n1", "old", true)?,
        pod("a2", "n2", "old", true)?,
        pod("a3", "n3", "old", true)?,
    ];
    let p = plan(&d, &nodes, &old, "new", now);
    assert_eq!(p.delete.len(), 1, "maxUnavailable 1: {:?}", p.delete);
    // One new pod not yet ready: no old pod may go.
    let mid = [
        pod("b1", "n1", "new", false)?,
        pod("a2", "n2", "old", true)?,
        pod("a3", "n3", "old", true)?,
    ];
    assert!(plan(&d, &nodes, &mid, "new", now).delete.is_empty());
    // An old pod that is not available goes regardless.
    let broken = [
        pod("b1", "n1", "new", false)?,
        pod("a2", "n2", "old", false)?,
        pod("a3", "n3", "old", true)?,
    ];
    assert_eq!(plan(&d, &nodes, &broken, "new", now).delete, ["a2"]);
    // 100 %: all at once.
    let all = ds(
        json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "100%"}}}),
    )?;
    assert_eq!(plan(&all, &nodes, &old, "new", now).delete.len(), 3);
    // OnDelete: the user deletes them.
    let on_delete = ds(json!({"updateStrategy": {"type": "OnDelete"}}))?;
    assert!(plan(&on_delete, &nodes, &old, "new", now).delete.is_empty());
    Ok(())
}

#[test]
fn a_daemon_pod_is_pinned_to_its_node_and_tolerates_node_trouble() -> anyhow::Result<()> {
    let d = ds(json!({}))?;
    let p = new_pod(&d, "n7", "h1");
    assert_eq!(target_node(&p).as_deref(), Some("n7"));
    assert_eq!(
        p.labels().get(REVISION_HASH_LABEL).map(String::as_str),
        Some("h1")
    );
    let tolerations = p.spec.and_then(|s| s.tolerations).unwrap_or_default();
    let keys: Vec<String> = tolerations.iter().filter_map(|t| t.key.clone()).collect();
    for want in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/unschedulable",
        "node.kubernetes.io/disk-pressure",
    ] {
        assert!(keys.iter().any(|k| k == want), "{want} in {keys:?}");
    }
    Ok(())
}
