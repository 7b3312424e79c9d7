use serde_json::json;

use super::*;

fn pod(
    name: &str,
    node: Option<&str>,
    phase: &str,
    ready_since: Option<&str>,
) -> anyhow::Result<Pod> {
    let conditions = match ready_since {
        Some(t) => json!([{"type": "Ready", "status": "True", "lastTransitionTime": t}]),
        None => json!([{"type": "Ready", "status": "False"}]),
    };
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": phase, "conditions": conditions}
    }))?)
}

#[test]
fn scaling_down_removes_unscheduled_then_pending_then_unready_then_the_newest_ready()
-> anyhow::Result<()> {
    let now: jiff::Timestamp = "2026-01-01T01:00:00Z".parse()?;
    let mut pods = [
        pod(
            "ready-long",
            Some("n1"),
            "Running",
            Some("2026-01-01T00:01:00Z"),
        )?,
        pod(
            "ready-short",
            Some("n1"),
            "Running",
            Some("2026-01-01T00:59:00Z"),
        )?,
        pod("running-unready", Some("n1"), "Running", None)?,
        pod("pending", Some("n1"), "Pending", None)?,
        pod("unscheduled", None, "Pending", None)?,
    ];
    pods.sort_by_cached_key(|p| deletion_rank(p, now));
    let order: Vec<String> = pods.iter().map(ResourceExt::name_any).collect();
    assert_eq!(
        order,
        [
            "unscheduled",
            "pending",
            "running-unready",
            "ready-short",
            "ready-long"
        ]
    );
    Ok(())
}
